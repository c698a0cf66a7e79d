"""A zoo of tiny models for muplify's tests: every entry builds a model at a given width.

    >>> from zoo import ZOO, ZOO_NAMES, build, widths_for
    >>> model, args, kwargs = build("hf_llama", 64)
    >>> out = model(*args, **kwargs)

Each builder is ``build(width) -> (model, example_inputs, example_kwargs)``: random init, no downloads (HF models come
from config objects, timm models from ``pretrained=False``), CPU-sized (widths 16..64, resnet stages up to 8w, 2 layers,
vocab 128, batch 2, sequence 8, images 32x32).  ``width`` is the model's natural hidden size; unless an entry says
otherwise the head dimension is fixed at 16 and the number of heads grows with width (muplify's default
``head_scaling="heads"``).
Dropout is 0 everywhere so forwards are deterministic; models are left in train mode, as constructed.

Example inputs are drawn from a fixed-seed CPU generator and moved to ``torch.get_default_device()``, so building
inside ``with torch.device("meta"):`` gives a meta model *and* meta inputs.  Builders do not touch the global RNG
seed: seed it yourself if you need identical weights across calls.

timm needs torchvision at import time; tests/conftest.py installs a minimal stand-in when the real one cannot be
imported (see tests/README-timm.md).  :func:`ensure_torchvision` does the same for scripts that import this module
outside pytest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["ZooEntry", "ZOO", "ZOO_NAMES", "build", "widths_for", "ensure_torchvision", "HEAD_DIM", "VOCAB", "SEQ",
           "BATCH"]

Built = tuple[nn.Module, tuple, dict]

HEAD_DIM = 16  # fixed head dimension of every attention model in the zoo
VOCAB = 128  # vocabulary of every language model in the zoo (finite: does not scale)
SEQ = 8  # example sequence length
BATCH = 2  # example batch size
MAX_POS = 32  # positional tables (finite: do not scale)
NUM_CLASSES = 10  # classifier outputs (finite)
IMG = 32  # example image side

def ensure_torchvision() -> bool:
    """Let ``import timm`` work without a working torchvision (tests/torchvision_shim); a no-op when the real one
    imports.  Returns True when timm gets the stand-in.  Idempotent; tests/conftest.py calls it first thing."""
    try:
        import torchvision_shim
    except ImportError:  # zoo imported as tests.zoo
        from tests import torchvision_shim
    return torchvision_shim.install()


# ---------------------------------------------------------------------------------------------------- inputs
def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _dev(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.get_default_device())


def _tokens(vocab: int = VOCAB, seq: int = SEQ) -> torch.Tensor:
    return _dev(torch.randint(0, vocab, (BATCH, seq), generator=_gen()))


def _images(side: int = IMG) -> torch.Tensor:
    return _dev(torch.randn(BATCH, 3, side, side, generator=_gen()))


def _heads(width: int, per: int = HEAD_DIM) -> int:
    if width % per or width < per:
        raise ValueError(f"width must be a positive multiple of {per}, got {width}")
    return width // per


# ---------------------------------------------------------------------------------------------------- builders
def _gpt(width: int, attn: str, tie: bool) -> Built:
    from muplify.models import GPT

    model = GPT(vocab_size=VOCAB, d_model=width, n_layer=2, n_head=_heads(width), head_dim=HEAD_DIM,
                block_size=MAX_POS, attn=attn, tie_weights=tie, dropout=0.0)
    return model, (_tokens(),), {}


def build_gpt_sdpa(width: int) -> Built:
    return _gpt(width, "sdpa", True)


def build_gpt_manual(width: int) -> Built:
    return _gpt(width, "manual", True)


def build_gpt_untied(width: int) -> Built:
    return _gpt(width, "sdpa", False)


def build_mlp(width: int) -> Built:
    from muplify.models import MLP

    model = MLP(in_features=16, width=width, out_features=NUM_CLASSES, depth=3)
    return model, (_dev(torch.randn(BATCH, 16, generator=_gen())),), {}


def build_cnn(width: int) -> Built:
    from muplify.models import CNN

    return CNN(in_channels=3, width=width, num_classes=NUM_CLASSES), (_images(),), {}


class TorchEncoderLM(nn.Module):
    """nn.Embedding -> nn.TransformerEncoder (post-LN, batch_first) -> nn.Linear readout (untied)."""

    def __init__(self, vocab: int, width: int, n_layer: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(d_model=width, nhead=_heads(width), dim_feedforward=4 * width,
                                           dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=n_layer)
        self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.readout(self.encoder(self.embed(idx)))


def build_torch_transformer_encoder(width: int) -> Built:
    return TorchEncoderLM(VOCAB, width), (_tokens(),), {}


def build_hf_gpt2(width: int) -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=width, n_layer=2, n_head=_heads(width),
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=VOCAB - 1,
                     eos_token_id=VOCAB - 1, attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg), (_tokens(),), {"use_cache": False}


def _llama_intermediate(width: int) -> int:
    return int(8 * round(2.75 * width / 8))


def build_hf_llama(width: int) -> Built:
    from transformers import LlamaConfig, LlamaForCausalLM

    if width % (2 * HEAD_DIM):
        raise ValueError(f"hf_llama width must be a multiple of {2 * HEAD_DIM} (GQA with 2 query heads per kv head)")
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=_llama_intermediate(width),
                      num_hidden_layers=2, num_attention_heads=_heads(width), num_key_value_heads=width // 32,
                      head_dim=HEAD_DIM, max_position_embeddings=MAX_POS, attention_dropout=0.0,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg), (_tokens(),), {"use_cache": False}


def build_hf_bert(width: int) -> Built:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=2, num_attention_heads=_heads(width),
                     intermediate_size=4 * width, max_position_embeddings=MAX_POS, type_vocab_size=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
                     attn_implementation="sdpa")
    ids = _tokens()
    return BertForMaskedLM(cfg), (ids,), {"attention_mask": torch.ones_like(ids)}


def build_timm_vit(width: int) -> Built:
    ensure_torchvision()
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=width, num_heads=_heads(width),
                              depth=2, img_size=IMG, patch_size=8, num_classes=NUM_CLASSES)
    return model, (_images(),), {}


def build_timm_resnet(width: int) -> Built:
    """timm ``resnet18`` (BasicBlock, layers 2-2-2-2) with stem and stage widths ``(w, w, 2w, 4w, 8w)``.

    timm's ResNet scales the stages through ``channels=`` but hard-codes the plain 7x7 stem at 64 channels
    (``stem_width`` only applies to the 'deep' stems), so for ``width != 64`` the stem (``conv1``, ``bn1``) and the
    first block of ``layer1`` are rebuilt at ``width`` and timm's own ``init_weights`` is re-run.  At ``width == 64``
    this is exactly timm's resnet18 (with a 10-class head).
    """
    ensure_torchvision()
    import timm
    from timm.models.resnet import BasicBlock

    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    model = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES,
                              channels=(width, 2 * width, 4 * width, 8 * width))
    if width != 64:
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        model.layer1[0] = BasicBlock(width, width)
        model.feature_info[0]["num_chs"] = width
        model.init_weights(zero_init_last=True)
    return model, (_images(),), {}


# ---------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[int], Built]
    base_width: int  # the small width tests use as base; widths_for() gives (base, 2*base)
    width_step: int  # widths must be positive multiples of this
    family: str  # "muplify" | "torch" | "hf" | "timm"
    scales: str  # what grows with width (human-readable)
    tied: tuple[str, ...] = field(default=())  # names of tied weights, first name first (as named_parameters gives)


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("gpt_sdpa", build_gpt_sdpa, 32, HEAD_DIM, "muplify",
             "d_model=w, n_head=w/16 (head_dim 16), MLP 4w; vocab 128 and block_size 32 fixed; wte tied to lm_head",
             ("wte.weight", "lm_head.weight")),
    ZooEntry("gpt_manual", build_gpt_manual, 32, HEAD_DIM, "muplify",
             "as gpt_sdpa, attention written as q@k^T/sqrt(d) -> mask -> softmax",
             ("wte.weight", "lm_head.weight")),
    ZooEntry("gpt_untied", build_gpt_untied, 32, HEAD_DIM, "muplify", "as gpt_sdpa with untied lm_head"),
    ZooEntry("mlp", build_mlp, 32, 1, "muplify", "16 -> w -> w -> 10 (ReLU); input and class counts fixed"),
    ZooEntry("cnn", build_cnn, 16, 1, "muplify",
             "conv channels w, w, 2w (BatchNorm), linear 2w -> 10; RGB input and 3x3 kernels fixed"),
    ZooEntry("torch_transformer_encoder", build_torch_transformer_encoder, 32, HEAD_DIM, "torch",
             "nn.Embedding(128, w) -> 2x nn.TransformerEncoderLayer(d_model=w, nhead=w/16, ff=4w, post-LN) -> "
             "nn.Linear(w, 128)"),
    ZooEntry("hf_gpt2", build_hf_gpt2, 32, HEAD_DIM, "hf",
             "n_embd=w, n_head=w/16, MLP 4w (Conv1D, (in, out) layout); wte tied to lm_head",
             ("transformer.wte.weight", "lm_head.weight")),
    ZooEntry("hf_llama", build_hf_llama, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, heads=w/16, kv_heads=w/32 (GQA, k/v proj out = w/2), head_dim 16, "
             "intermediate=8*round(2.75w/8); untied lm_head"),
    ZooEntry("hf_bert", build_hf_bert, 32, HEAD_DIM, "hf",
             "hidden=w, heads=w/16, intermediate 4w; word embeddings tied to the MLM decoder; MLM bias (vocab) fixed",
             ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")),
    ZooEntry("timm_vit", build_timm_vit, 32, HEAD_DIM, "timm",
             "vit_tiny_patch16_224 arch: embed_dim=w, num_heads=w/16, MLP 4w, depth 2, img 32, patch 8, 10 classes"),
    ZooEntry("timm_resnet", build_timm_resnet, 16, 1, "timm",
             "resnet18 arch: stem conv 3->w (7x7), stages w, 2w, 4w, 8w (BasicBlock 2-2-2-2), fc 8w -> 10"),
]}

ZOO_NAMES: list[str] = list(ZOO)


def build(name: str, width: int | None = None) -> Built:
    """Build zoo model ``name`` at ``width`` (default: its base width)."""
    entry = ZOO[name]
    return entry.build(entry.base_width if width is None else width)


def widths_for(name: str) -> tuple[int, int]:
    """Two widths for the oracle and for width-scaling tests: (base, 2 * base)."""
    b = ZOO[name].base_width
    return b, 2 * b
