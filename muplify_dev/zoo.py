"""A zoo of tiny models for muplify's tests: every entry builds a model at a given width.

    >>> from muplify_dev.zoo import ZOO, ZOO_NAMES, build, widths_for
    >>> model, args, kwargs = build("hf_llama", 64)
    >>> out = model(*args, **kwargs)

Each builder is ``build(width) -> (model, example_inputs, example_kwargs)``: random init, no downloads (HF models come
from config objects, timm models from ``pretrained=False``), CPU-sized (widths 16..64, resnet stages up to 8w, 1-2
layers, vocab 128, batch 2, sequence 8, images 32x32).  ``width`` is the model's natural hidden size; unless an entry
says otherwise the head dimension is fixed at 16 and the number of heads grows with width (muplify's default
``head_scaling="heads"``).  Each entry says what scales (``scales``) and which attribute of the model holds its width
(``width_attr``: "config.hidden_size", timm's "embed_dim", ...; empty for models without one, whose width muplify
takes as the most-used dimension); :func:`declared_width` reads it.  ``CORE_NAMES`` are the original eleven, on which
the heavier per-model tests run; tests/test_zoo_wide.py runs the whole zoo (issue 8: decoder-only, MoE, SSM/hybrid,
encoders, encoder-decoders, dual encoders, speech, timm ViTs/CNNs, torch.nn with masks, RNNs, hand-written patterns).
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

__all__ = ["ZooEntry", "ZOO", "ZOO_NAMES", "CORE_NAMES", "build", "declared_width", "widths_for", "ensure_torchvision",
           "HEAD_DIM", "VOCAB", "SEQ", "BATCH"]

Built = tuple[nn.Module, tuple, dict]

HEAD_DIM = 16  # fixed head dimension of every attention model in the zoo
VOCAB = 128  # vocabulary of every language model in the zoo (finite: does not scale)
SEQ = 8  # example sequence length
BATCH = 2  # example batch size
MAX_POS = 32  # positional tables (finite: do not scale)
NUM_CLASSES = 10  # classifier outputs (finite)
IMG = 32  # example image side

def ensure_torchvision() -> bool:
    """Let ``import timm`` work without a working torchvision (muplify_dev/torchvision_shim); a no-op when the real one
    imports.  Returns True when timm gets the stand-in.  Idempotent; tests/conftest.py calls it first thing."""
    from muplify_dev import torchvision_shim

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


# ---------------------------------------------------------------------------------------------------- the wide zoo
# transformers families: one builder per family from a tiny config (1-2 layers, hidden w, heads w/16 of dim 16,
# vocab 128, no dropout, no layerdrop); the config's own hidden-size attribute is the width.
_NO_DROP = dict(attention_dropout=0.0)


def _hf(model_cls: str, config_cls: str, inputs: dict, **cfg) -> Built:
    import transformers

    config = getattr(transformers, config_cls)(**cfg)
    model = getattr(transformers, model_cls)(config)
    return model, (), inputs


def _lm_inputs() -> dict:
    return {"input_ids": _tokens(), "use_cache": False}


def _decoder_cfg(width: int, kv_div: int = 1, layers: int = 2) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=_heads(width),
                num_key_value_heads=_heads(width) // kv_div, head_dim=HEAD_DIM, max_position_embeddings=MAX_POS,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                attn_implementation="sdpa", **_NO_DROP)


def build_hf_mistral(width: int) -> Built:
    return _hf("MistralForCausalLM", "MistralConfig", _lm_inputs(), intermediate_size=3 * width, sliding_window=4,
               **_decoder_cfg(width, kv_div=2))


def build_hf_qwen2(width: int) -> Built:
    return _hf("Qwen2ForCausalLM", "Qwen2Config", _lm_inputs(), intermediate_size=3 * width,
               **_decoder_cfg(width, kv_div=2))


def build_hf_qwen3(width: int) -> Built:
    cfg = _decoder_cfg(width)
    cfg["tie_word_embeddings"] = True
    return _hf("Qwen3ForCausalLM", "Qwen3Config", _lm_inputs(), intermediate_size=3 * width, **cfg)


def build_hf_gemma(width: int) -> Built:
    cfg = _decoder_cfg(width)
    cfg["tie_word_embeddings"] = True
    return _hf("GemmaForCausalLM", "GemmaConfig", _lm_inputs(), intermediate_size=4 * width, **cfg)


def build_hf_gemma2(width: int) -> Built:
    cfg = _decoder_cfg(width, kv_div=2)
    cfg.update(tie_word_embeddings=True, attn_implementation="eager")
    return _hf("Gemma2ForCausalLM", "Gemma2Config", _lm_inputs(), intermediate_size=4 * width, sliding_window=4,
               query_pre_attn_scalar=HEAD_DIM, **cfg)


def build_hf_phi(width: int) -> Built:
    cfg = _decoder_cfg(width)
    cfg.pop("head_dim")
    return _hf("PhiForCausalLM", "PhiConfig", _lm_inputs(), intermediate_size=4 * width, resid_pdrop=0.0,
               embd_pdrop=0.0, partial_rotary_factor=0.5, **cfg)


def build_hf_phi3(width: int) -> Built:
    cfg = _decoder_cfg(width)
    cfg.pop("head_dim")
    return _hf("Phi3ForCausalLM", "Phi3Config", _lm_inputs(), intermediate_size=3 * width, resid_pdrop=0.0,
               embd_pdrop=0.0, **cfg)


def build_hf_gpt_neox(width: int) -> Built:
    return _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", _lm_inputs(), vocab_size=VOCAB, hidden_size=width,
               num_hidden_layers=2, num_attention_heads=_heads(width), intermediate_size=4 * width,
               max_position_embeddings=MAX_POS, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0,
               bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")


def build_hf_opt(width: int) -> Built:
    return _hf("OPTForCausalLM", "OPTConfig", _lm_inputs(), vocab_size=VOCAB, hidden_size=width,
               word_embed_proj_dim=width, num_hidden_layers=2, num_attention_heads=_heads(width), ffn_dim=4 * width,
               max_position_embeddings=MAX_POS, dropout=0.0, attention_dropout=0.0, layerdrop=0.0, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")


def build_hf_falcon(width: int) -> Built:
    return _hf("FalconForCausalLM", "FalconConfig", _lm_inputs(), vocab_size=VOCAB, hidden_size=width,
               num_hidden_layers=2, num_attention_heads=_heads(width), num_kv_heads=_heads(width) // 2,
               new_decoder_architecture=True, hidden_dropout=0.0, attention_dropout=0.0,
               max_position_embeddings=MAX_POS, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")


# MoE: the router is Linear(w, n_experts) (n_experts fixed); expert stacks (E, ., .) have fans in the width
def build_hf_mixtral(width: int) -> Built:
    return _hf("MixtralForCausalLM", "MixtralConfig", _lm_inputs(), intermediate_size=2 * width,
               num_local_experts=4, num_experts_per_tok=2, **_decoder_cfg(width, kv_div=2, layers=1))


def build_hf_qwen2_moe(width: int) -> Built:
    return _hf("Qwen2MoeForCausalLM", "Qwen2MoeConfig", _lm_inputs(), intermediate_size=2 * width,
               moe_intermediate_size=width, shared_expert_intermediate_size=2 * width, num_experts=4,
               num_experts_per_tok=2, **_decoder_cfg(width, layers=1))


def build_hf_qwen3_moe(width: int) -> Built:
    return _hf("Qwen3MoeForCausalLM", "Qwen3MoeConfig", _lm_inputs(), intermediate_size=2 * width,
               moe_intermediate_size=width, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
               **_decoder_cfg(width, kv_div=2, layers=1))


def build_hf_olmoe(width: int) -> Built:
    cfg = _decoder_cfg(width, layers=1)
    cfg.pop("head_dim")
    return _hf("OlmoeForCausalLM", "OlmoeConfig", _lm_inputs(), intermediate_size=width, num_experts=4,
               num_experts_per_tok=2, **cfg)


def build_hf_deepseek_v3(width: int) -> Built:
    """MLA attention (q/kv LoRA ranks w and w/2, nope/rope/v head dims 16/8/16) and a group-limited MoE layer
    (4 routed experts in 2 groups, 1 shared expert) after one dense layer."""
    cfg = _decoder_cfg(width, layers=2)
    cfg.pop("head_dim")
    return _hf("DeepseekV3ForCausalLM", "DeepseekV3Config", _lm_inputs(), intermediate_size=2 * width,
               moe_intermediate_size=width, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
               topk_group=1, first_k_dense_replace=1, q_lora_rank=width, kv_lora_rank=width // 2,
               qk_rope_head_dim=8, qk_nope_head_dim=HEAD_DIM, v_head_dim=HEAD_DIM, **cfg)


def build_hf_gpt_oss(width: int) -> Built:
    cfg = _decoder_cfg(width, kv_div=2, layers=2)
    cfg["attn_implementation"] = "eager"
    return _hf("GptOssForCausalLM", "GptOssConfig", _lm_inputs(), intermediate_size=width, num_local_experts=4,
               num_experts_per_tok=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"], **cfg)


# SSM and hybrids: d_inner = 2w, SSM state 16 (fixed), Mamba2 heads of dim 16 (heads grow)
def build_hf_mamba(width: int) -> Built:
    return _hf("MambaForCausalLM", "MambaConfig", _lm_inputs(), vocab_size=VOCAB, hidden_size=width, state_size=16,
               num_hidden_layers=2, expand=2, conv_kernel=4, time_step_rank=width // 16, bos_token_id=1,
               eos_token_id=2, pad_token_id=0, use_mambapy=False)


def build_hf_mamba2(width: int) -> Built:
    return _hf("Mamba2ForCausalLM", "Mamba2Config", _lm_inputs(), vocab_size=VOCAB, hidden_size=width,
               state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4, head_dim=HEAD_DIM,
               num_heads=2 * width // HEAD_DIM, n_groups=1, chunk_size=4, bos_token_id=1, eos_token_id=2,
               pad_token_id=0, tie_word_embeddings=False)


def build_hf_jamba(width: int) -> Built:
    """Mamba layer (d_inner 2w, dt_rank w/16) with a 4-expert MoE, then an attention layer with a dense MLP."""
    cfg = _decoder_cfg(width, kv_div=2, layers=2)
    cfg.pop("head_dim")
    return _hf("JambaForCausalLM", "JambaConfig", _lm_inputs(), intermediate_size=2 * width, num_experts=4,
               num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=0, attn_layer_period=2,
               attn_layer_offset=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=width // 16,
               use_mamba_kernels=False, **cfg)


def build_hf_bamba(width: int) -> Built:
    cfg = _decoder_cfg(width, kv_div=2, layers=2)
    cfg.pop("head_dim")
    return _hf("BambaForCausalLM", "BambaConfig", _lm_inputs(), intermediate_size=2 * width,
               attn_layer_indices=[1], mamba_n_heads=2 * width // HEAD_DIM, mamba_d_head=HEAD_DIM,
               mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=4, **cfg)


# encoders: BERT-style MLM heads, the decoder tied to the word embeddings
def _encoder_inputs() -> dict:
    ids = _tokens()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _bert_cfg(width: int) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=2, num_attention_heads=_heads(width),
                intermediate_size=4 * width, max_position_embeddings=MAX_POS, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=0)


def build_hf_roberta(width: int) -> Built:
    return _hf("RobertaForMaskedLM", "RobertaConfig", _encoder_inputs(), type_vocab_size=1, bos_token_id=1,
               eos_token_id=2, attn_implementation="sdpa", **_bert_cfg(width))


def build_hf_albert(width: int) -> Built:
    """ALBERT: the factorised embedding stays at embedding_size=16 (fixed) while hidden_size=w grows."""
    return _hf("AlbertForMaskedLM", "AlbertConfig", _encoder_inputs(), embedding_size=16, type_vocab_size=2,
               classifier_dropout_prob=0.0, **_bert_cfg(width))


def build_hf_deberta_v2(width: int) -> Built:
    """DeBERTa-v2: disentangled attention with a relative-position embedding table (position_buckets 8)."""
    return _hf("DebertaV2ForMaskedLM", "DebertaV2Config", _encoder_inputs(), relative_attention=True,
               position_buckets=8, max_relative_positions=MAX_POS, pos_att_type=["p2c", "c2p"], type_vocab_size=0,
               norm_rel_ebd="layer_norm", share_att_key=True, **_bert_cfg(width))


def build_hf_electra(width: int) -> Built:
    """ELECTRA generator-style MLM: embedding_size 16 (fixed) projected to hidden_size=w."""
    return _hf("ElectraForMaskedLM", "ElectraConfig", _encoder_inputs(), embedding_size=16, type_vocab_size=2,
               **_bert_cfg(width))


def build_hf_distilbert(width: int) -> Built:
    return _hf("DistilBertForMaskedLM", "DistilBertConfig", _encoder_inputs(), vocab_size=VOCAB, dim=width,
               n_layers=2, n_heads=_heads(width), hidden_dim=4 * width, max_position_embeddings=MAX_POS,
               dropout=0.0, attention_dropout=0.0, pad_token_id=0, attn_implementation="sdpa")


# encoder-decoders
def _seq2seq_inputs() -> dict:
    ids = _tokens()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": _tokens(seq=SEQ // 2),
            "use_cache": False}


def build_hf_t5(width: int) -> Built:
    """T5 v1.1-style (gated-gelu): d_model=w, d_kv 16, heads w/16, d_ff 2w, relative position
    buckets 8 (fixed)."""
    return _hf("T5ForConditionalGeneration", "T5Config", _seq2seq_inputs(), vocab_size=VOCAB, d_model=width,
               d_kv=HEAD_DIM, d_ff=2 * width, num_layers=1, num_decoder_layers=1, num_heads=_heads(width),
               relative_attention_num_buckets=8, relative_attention_max_distance=MAX_POS, dropout_rate=0.0,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)


def build_hf_bart(width: int) -> Built:
    return _hf("BartForConditionalGeneration", "BartConfig", _seq2seq_inputs(), vocab_size=VOCAB, d_model=width,
               encoder_layers=1, decoder_layers=1, encoder_attention_heads=_heads(width),
               decoder_attention_heads=_heads(width), encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width,
               max_position_embeddings=MAX_POS, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
               encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               decoder_start_token_id=2, forced_eos_token_id=None, attn_implementation="sdpa")


# dual encoders: text and vision towers both at width w; CLIP's contrastive projection_dim 16 is fixed
def _dual_inputs() -> dict:
    ids = _tokens()
    return {"input_ids": ids, "pixel_values": _images(), "attention_mask": torch.ones_like(ids)}


def _tower(width: int, **kw) -> dict:
    return dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                num_attention_heads=_heads(width), attention_dropout=0.0, **kw)


def build_hf_clip(width: int) -> Built:
    text = _tower(width, vocab_size=VOCAB, max_position_embeddings=MAX_POS, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    vision = _tower(width, image_size=IMG, patch_size=8, num_channels=3)
    return _hf("CLIPModel", "CLIPConfig", _dual_inputs(), text_config=text, vision_config=vision,
               projection_dim=16, attn_implementation="sdpa")


def build_hf_siglip(width: int) -> Built:
    """SigLIP: the text head projects to projection_size = w (SigLIP's default, = hidden_size); the vision tower
    pools with a multi-head attention probe."""
    text = _tower(width, vocab_size=VOCAB, max_position_embeddings=SEQ, projection_size=width, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    vision = _tower(width, image_size=IMG, patch_size=8, num_channels=3)
    return _hf("SiglipModel", "SiglipConfig", {"input_ids": _tokens(), "pixel_values": _images()},
               text_config=text, vision_config=vision, attn_implementation="sdpa")


# speech
N_MELS = 16
AUDIO = 400  # raw samples for wav2vec2


def build_hf_whisper(width: int) -> Built:
    """Whisper: 16 mel bins, 16 source positions (32 frames), decoder vocab 128, proj_out tied to the decoder
    embeddings."""
    feats = _dev(torch.randn(BATCH, N_MELS, 32, generator=_gen()))
    return _hf("WhisperForConditionalGeneration", "WhisperConfig",
               {"input_features": feats, "decoder_input_ids": _tokens(seq=SEQ // 2), "use_cache": False},
               vocab_size=VOCAB, num_mel_bins=N_MELS, d_model=width, encoder_layers=1, decoder_layers=1,
               encoder_attention_heads=_heads(width), decoder_attention_heads=_heads(width),
               encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width, max_source_positions=16,
               max_target_positions=MAX_POS, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
               encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               decoder_start_token_id=1, begin_suppress_tokens=None, suppress_tokens=None,
               attn_implementation="sdpa")


def build_hf_wav2vec2(width: int) -> Built:
    """wav2vec2 CTC: the conv feature encoder keeps conv_dim 24 (fixed) and is projected to hidden_size=w; the
    positional conv (kernel 8, 2 groups, weight-normed) and the transformer grow; CTC vocab 32."""
    audio = _dev(torch.randn(BATCH, AUDIO, generator=_gen()))
    return _hf("Wav2Vec2ForCTC", "Wav2Vec2Config", {"input_values": audio}, vocab_size=32, hidden_size=width,
               num_hidden_layers=1, num_attention_heads=_heads(width), intermediate_size=4 * width,
               conv_dim=(24, 24), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
               num_conv_pos_embedding_groups=2, hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
               feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
               mask_feature_prob=0.0, do_stable_layer_norm=True, feat_extract_norm="layer", pad_token_id=0,
               attn_implementation="sdpa")


# timm vision models: the model's own width attribute (embed_dim, or the stem/first-stage channels) is w
def _timm(arch: str, **kw) -> nn.Module:
    ensure_torchvision()
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES, **kw)


def build_timm_deit(width: int) -> Built:
    """DeiT with a distillation token and head (two classifier heads averaged in train mode: returns a tuple)."""
    model = _timm("deit_tiny_distilled_patch16_224", embed_dim=width, num_heads=_heads(width), depth=2,
                  img_size=IMG, patch_size=8)
    return model, (_images(),), {}


def build_timm_swin(width: int) -> Built:
    """Swin: two stages (w, 2w; patch merging 4w -> 2w), windows of 4x4 with relative-position bias tables."""
    model = _timm("swin_tiny_patch4_window7_224", embed_dim=width, depths=(1, 1),
                  num_heads=(_heads(width), _heads(2 * width)), window_size=4, img_size=IMG, patch_size=4)
    return model, (_images(),), {}


def build_timm_convnext(width: int) -> Built:
    """ConvNeXt: stages w, 2w, 4w, 8w, depthwise 7x7 convs, layer scale (gamma)."""
    model = _timm("convnext_atto", dims=(width, 2 * width, 4 * width, 8 * width), depths=(1, 1, 1, 1),
                  ls_init_value=1e-6)
    return model, (_images(),), {}


def build_timm_mixer(width: int) -> Built:
    """MLP-Mixer: patch embedding to w channels; token-mixing MLPs over the 16 patches (16 -> w/2 -> 16) and
    channel-mixing MLPs (w -> 4w -> w)."""
    ensure_torchvision()
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=NUM_CLASSES, img_size=IMG, patch_size=8, num_blocks=2, embed_dim=width)
    return model, (_images(),), {}


def _tiny_regnet_cls():
    ensure_torchvision()
    from timm.models.regnet import RegNet

    class TinyRegNet(RegNet):
        """timm RegNet with explicit stage widths (w, 2w, 4w, 8w), one block each, group width 8 (fixed)."""

        def _get_stage_args(self, cfg, default_stride=2, output_stride=32, drop_path_rate=0.0):
            w = cfg.stem_width
            args = [dict(out_chs=c, stride=2, dilation=1, depth=1, bottle_ratio=1.0, group_size=8,
                         drop_path_rates=[0.0]) for c in (w, 2 * w, 4 * w, 8 * w)]
            common = dict(downsample=cfg.downsample, se_ratio=cfg.se_ratio, linear_out=cfg.linear_out,
                          act_layer=cfg.act_layer, norm_layer=cfg.norm_layer)
            return args, common

    return TinyRegNet


def build_timm_regnet(width: int) -> Built:
    """RegNetY-style: stem w, stages w, 2w, 4w, 8w with grouped 3x3 convs of group width 8 (groups = c/8: the
    per-group channel count is fixed) and squeeze-excitation (se_ratio 0.25 of the block input)."""
    from timm.models.regnet import RegNetCfg

    cls = _tiny_regnet_cls()
    model = cls(RegNetCfg(stem_width=width, group_size=8, se_ratio=0.25), num_classes=NUM_CLASSES)
    return model, (_images(),), {}


def _effnet_kwargs(width: int) -> dict:
    from functools import partial

    from timm.models._efficientnet_builder import round_channels

    if width % 16:
        raise ValueError(f"width must be a multiple of 16, got {width}")
    return dict(round_chs_fn=partial(round_channels, multiplier=width / 16, round_limit=0.0),
                num_classes=NUM_CLASSES)


def build_timm_efficientnet(width: int) -> Built:
    """EfficientNet-style (channel multiplier w/16): stem 2w, depthwise-separable and inverted-residual blocks with
    depthwise convs and squeeze-excitation, stage channels w, 1.5w, 2.5w, head 8w."""
    ensure_torchvision()
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"], ["ir_r2_k5_s2_e4_c40_se0.25"]]
    kw = _effnet_kwargs(width)
    model = EfficientNet(block_args=decode_arch_def(arch), stem_size=32, num_features=kw["round_chs_fn"](128),
                         **kw)
    return model, (_images(),), {}


def build_timm_mobilenetv3(width: int) -> Built:
    """MobileNetV3-style (channel multiplier w/16, hard-swish, SE with hard-sigmoid gates): the conv head after
    global pooling keeps 96 channels (fixed, as MobileNetV3's 1280)."""
    ensure_torchvision()
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    arch = [["ds_r1_k3_s1_e1_c16_nre"], ["ir_r1_k3_s2_e4_c24_se0.25_nre"], ["ir_r1_k5_s2_e3_c40_se0.25"],
            ["cn_r1_k1_s1_c96"]]
    se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    model = MobileNetV3(block_args=decode_arch_def(arch), num_features=96, stem_size=16,
                        act_layer=get_act_layer("hard_swish"), se_layer=se, **_effnet_kwargs(width))
    return model, (_images(),), {}


# torch.nn built-ins called with masks
class TorchSeq2Seq(nn.Module):
    """nn.Transformer (1+1 layers, batch_first) called with a causal tgt_mask and a key-padding mask."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.src_embed, self.tgt_embed = nn.Embedding(vocab, width), nn.Embedding(vocab, width)
        self.transformer = nn.Transformer(d_model=width, nhead=_heads(width), num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=4 * width, dropout=0.0,
                                          batch_first=True)
        self.readout = nn.Linear(width, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        pad = src == 0
        h = self.transformer(self.src_embed(src), self.tgt_embed(tgt), tgt_mask=tgt_mask, src_key_padding_mask=pad,
                             memory_key_padding_mask=pad)
        return self.readout(h)


def build_torch_transformer(width: int) -> Built:
    return TorchSeq2Seq(VOCAB, width), (_tokens(), _tokens(seq=SEQ // 2)), {}


class TorchCausalEncoderLM(nn.Module):
    """nn.TransformerEncoder (pre-LN, 2 layers) called with a float causal mask, as the PyTorch tutorial does."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, MAX_POS, width))
        layer = nn.TransformerEncoderLayer(d_model=width, nhead=_heads(width), dim_feedforward=4 * width,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        return self.readout(self.encoder(self.embed(idx) + self.pos[:, :T], mask=mask))


def build_torch_causal_encoder(width: int) -> Built:
    return TorchCausalEncoderLM(VOCAB, width), (_tokens(),), {}


# recurrent language models
class RNNLM(nn.Module):
    """Embedding -> nn.LSTM / nn.GRU (2 layers, hidden w; the GRU is bidirectional) -> Linear readout."""

    def __init__(self, vocab: int, width: int, cell: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        bi = cell == "gru"
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(width, width, num_layers=2, batch_first=True,
                                                            bidirectional=bi)
        self.readout = nn.Linear(2 * width if bi else width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(idx))
        return self.readout(out)


def build_lstm_lm(width: int) -> Built:
    return RNNLM(VOCAB, width, "lstm"), (_tokens(),), {}


def build_gru_lm(width: int) -> Built:
    return RNNLM(VOCAB, width, "gru"), (_tokens(),), {}


# hand-written models.  ``_layouts`` documents how a custom Parameter is stored, for the oracle:
# attribute -> (fan-in axes, fan-out axes), or None for a parameter used elementwise / as data.
class FunctionalReadoutLM(nn.Module):
    """Raw Parameters used functionally: embedding lookup ``E[idx]``, an MLP block ``F.linear``, an RMSNorm, and
    the readout written ``h @ W.T`` with its own (vocab, w) matrix."""

    _layouts = {"emb": ((0,), (1,)), "w_in": ((1,), (0,)), "w_out": ((1,), (0,)), "gain": None,
                "unembed": ((1,), (0,))}

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.emb = nn.Parameter(torch.randn(vocab, width) * 0.02)
        self.w_in = nn.Parameter(torch.randn(4 * width, width) / width ** 0.5)
        self.w_out = nn.Parameter(torch.randn(width, 4 * width) / (4 * width) ** 0.5)
        self.gain = nn.Parameter(torch.ones(width))
        self.unembed = nn.Parameter(torch.randn(vocab, width) / width ** 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb[idx]
        h = h + torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(h, self.w_in)), self.w_out)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain
        return h @ self.unembed.T


def build_functional_readout(width: int) -> Built:
    return FunctionalReadoutLM(VOCAB, width), (_tokens(),), {}


class WeightNormNet(nn.Module):
    """A 1-D conv net over 8 input channels with weight norm both ways: ``parametrizations.weight_norm`` on the
    convs and the classic ``utils.weight_norm`` (weight_g / weight_v) on the readout."""

    def __init__(self, width: int):
        super().__init__()
        from torch.nn.utils import parametrizations

        self.conv1 = parametrizations.weight_norm(nn.Conv1d(8, width, 3, padding=1))
        self.conv2 = parametrizations.weight_norm(nn.Conv1d(width, width, 3, padding=1))
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            self.head = torch.nn.utils.weight_norm(nn.Linear(width, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.mean(-1))


def build_weight_norm(width: int) -> Built:
    return WeightNormNet(width), (_dev(torch.randn(BATCH, 8, 16, generator=_gen())),), {}


class RelPosEncoder(nn.Module):
    """Manual attention with a learned relative-position table used as data: table (2T-1, 16) gathered by a
    relative-index buffer, layer-normed, projected to one bias per head (heads = w/16) and added to the logits.
    A mask token replaces the masked positions' embeddings (``torch.where``)."""

    _layouts = {"rel_table": None, "mask_token": None}

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.h = _heads(width)
        self.embed = nn.Embedding(vocab, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.rel_table = nn.Parameter(torch.randn(2 * SEQ - 1, 16) * 0.02)
        self.rel_norm = nn.LayerNorm(16)
        self.rel_proj = nn.Linear(16, self.h)
        pos = torch.arange(SEQ)
        self.register_buffer("rel_index", pos[:, None] - pos[None, :] + SEQ - 1, persistent=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = idx.shape
        x = self.embed(idx)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token, x)
        bias = self.rel_proj(self.rel_norm(self.rel_table[self.rel_index[:T, :T]])).permute(2, 0, 1)
        q, k, v = self.qkv(x).view(B, T, 3, self.h, HEAD_DIM).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * HEAD_DIM ** -0.5 + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.proj(y)
        return self.readout(self.norm(x))


def build_relpos_mask_token(width: int) -> Built:
    idx = _tokens()
    mask = _dev(torch.rand(BATCH, SEQ, generator=_gen()) < 0.3)
    return RelPosEncoder(VOCAB, width), (idx,), {"mask": mask}


class LoopMoE(nn.Module):
    """A dense mixture of 4 experts stored as stacks (E, 2w, w) and (E, w, 2w), applied in a Python loop over the
    experts, weighted by a softmax router ``Linear(w, E)``; the per-expert bias stack (E, w) is added too."""

    _layouts = {"w1": ((2,), (1,)), "w2": ((2,), (1,)), "b2": None}

    def __init__(self, vocab: int, width: int, n_experts: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.router = nn.Linear(width, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(n_experts, 2 * width, width) / width ** 0.5)
        self.w2 = nn.Parameter(torch.randn(n_experts, width, 2 * width) / (2 * width) ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(n_experts, width))
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        gates = self.router(x).softmax(-1)
        y = torch.zeros_like(x)
        for e in range(self.w1.shape[0]):
            h = torch.nn.functional.gelu(torch.nn.functional.linear(x, self.w1[e]))
            y = y + gates[..., e, None] * (torch.nn.functional.linear(h, self.w2[e]) + self.b2[e])
        return self.readout(self.norm(x + y))


def build_loop_moe(width: int) -> Built:
    return LoopMoE(VOCAB, width), (_tokens(),), {}


class BmmMoE(nn.Module):
    """Top-1 routed experts computed densely with ``torch.bmm`` over (E, w, 2w) / (E, 2w, w) stacks stored (in, out),
    combined with a one-hot dispatch mask built from the router's argmax (``scatter``)."""

    _layouts = {"w_up": ((1,), (2,)), "w_down": ((1,), (2,))}

    def __init__(self, vocab: int, width: int, n_experts: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.router = nn.Linear(width, n_experts)
        self.w_up = nn.Parameter(torch.randn(n_experts, width, 2 * width) / width ** 0.5)
        self.w_down = nn.Parameter(torch.randn(n_experts, 2 * width, width) / (2 * width) ** 0.5)
        self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        logits = self.router(flat)
        top = logits.argmax(-1, keepdim=True)
        dispatch = torch.zeros_like(logits).scatter(1, top, 1.0) * logits.softmax(-1)  # (N, E)
        xe = flat.unsqueeze(0).expand(self.w_up.shape[0], B * T, D)  # (E, N, D)
        ye = torch.bmm(torch.relu(torch.bmm(xe, self.w_up)), self.w_down)  # (E, N, D)
        y = torch.einsum("ne,end->nd", dispatch, ye).reshape(B, T, D)
        return self.readout(x + y)


def build_bmm_moe(width: int) -> Built:
    return BmmMoE(VOCAB, width), (_tokens(),), {}


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
    # which attribute of the model holds its width: "config.<attr>" (transformers), a timm attribute, or "" when
    # the model has none (muplify then takes the dimension most parameter axes use)
    width_attr: str = ""
    bare: bool = True  # muplify(model, base_width=...) can build the example inputs itself


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
             ("transformer.wte.weight", "lm_head.weight"), width_attr="config.n_embd"),
    ZooEntry("hf_llama", build_hf_llama, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, heads=w/16, kv_heads=w/32 (GQA, k/v proj out = w/2), head_dim 16, "
             "intermediate=8*round(2.75w/8); untied lm_head", width_attr="config.hidden_size"),
    ZooEntry("hf_bert", build_hf_bert, 32, HEAD_DIM, "hf",
             "hidden=w, heads=w/16, intermediate 4w; word embeddings tied to the MLM decoder; MLM bias (vocab) fixed",
             ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
             width_attr="config.hidden_size"),
    ZooEntry("timm_vit", build_timm_vit, 32, HEAD_DIM, "timm",
             "vit_tiny_patch16_224 arch: embed_dim=w, num_heads=w/16, MLP 4w, depth 2, img 32, patch 8, 10 classes",
             width_attr="embed_dim"),
    ZooEntry("timm_resnet", build_timm_resnet, 16, 1, "timm",
             "resnet18 arch: stem conv 3->w (7x7), stages w, 2w, 4w, 8w (BasicBlock 2-2-2-2), fc 8w -> 10",
             width_attr="feature_info[0].num_chs"),
    # ---- the wide zoo (issue 8): width_attr says which attribute of the model is its width
    ZooEntry("hf_mistral", build_hf_mistral, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, heads w/16, kv heads w/32, intermediate 3w; sliding window 4", width_attr="config.hidden_size"),
    ZooEntry("hf_qwen2", build_hf_qwen2, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, heads w/16 (q/k/v biases), kv heads w/32, intermediate 3w", width_attr="config.hidden_size"),
    ZooEntry("hf_qwen3", build_hf_qwen3, 32, HEAD_DIM, "hf",
             "hidden=w, heads w/16 with q/k RMSNorm over head_dim 16 (fixed), intermediate 3w; tied lm_head",
             ("model.embed_tokens.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_gemma", build_hf_gemma, 32, HEAD_DIM, "hf",
             "hidden=w (embeddings scaled by sqrt(w)), heads w/16, intermediate 4w; tied lm_head",
             ("model.embed_tokens.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_gemma2", build_hf_gemma2, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, heads w/16, kv w/32, intermediate 4w, logit soft-capping, pre/post norms; tied lm_head",
             ("model.embed_tokens.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_phi", build_hf_phi, 32, HEAD_DIM, "hf",
             "hidden=w, heads w/16, partial rotary (half of head_dim), parallel attention+MLP 4w, lm_head bias",
             width_attr="config.hidden_size"),
    ZooEntry("hf_phi3", build_hf_phi3, 32, HEAD_DIM, "hf",
             "hidden=w, fused qkv_proj (3w) and gate_up_proj (6w), intermediate 3w", width_attr="config.hidden_size"),
    ZooEntry("hf_gpt_neox", build_hf_gpt_neox, 32, HEAD_DIM, "hf",
             "hidden=w, fused query_key_value 3w (head-interleaved), rotary on half of head_dim, MLP 4w",
             width_attr="config.hidden_size"),
    ZooEntry("hf_opt", build_hf_opt, 32, HEAD_DIM, "hf",
             "hidden=w, learned positions (offset 2), ffn 4w; lm_head tied to the token embeddings",
             ("model.decoder.embed_tokens.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_falcon", build_hf_falcon, 32, 2 * HEAD_DIM, "hf",
             "hidden=w, new decoder architecture (GQA, kv heads w/32, fused qkv), MLP 4w; tied lm_head",
             ("transformer.word_embeddings.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_mixtral", build_hf_mixtral, 32, 2 * HEAD_DIM, "hf",
             "hidden=w; top-2 of 4 experts: router Linear(w, 4) (output-like), expert stacks (4, 4w, w) and "
             "(4, w, 2w) through grouped matmul", width_attr="config.hidden_size"),
    ZooEntry("hf_qwen2_moe", build_hf_qwen2_moe, 32, HEAD_DIM, "hf",
             "hidden=w; top-2 of 4 experts (moe_intermediate w) + a shared expert (2w) with a sigmoid gate "
             "Linear(w, 1)", width_attr="config.hidden_size"),
    ZooEntry("hf_qwen3_moe", build_hf_qwen3_moe, 32, 2 * HEAD_DIM, "hf",
             "hidden=w; top-2 of 4 experts (moe_intermediate w), normalised top-k, q/k norms",
             width_attr="config.hidden_size"),
    ZooEntry("hf_olmoe", build_hf_olmoe, 32, HEAD_DIM, "hf",
             "hidden=w; top-2 of 4 experts (intermediate w), q/k norms over the full projection (w)",
             width_attr="config.hidden_size"),
    ZooEntry("hf_deepseek_v3", build_hf_deepseek_v3, 32, HEAD_DIM, "hf",
             "hidden=w; MLA (q_lora_rank w, kv_lora_rank w/2, heads w/16, qk nope 16 + rope 8, v 16); layer 2: "
             "group-limited sigmoid router over 4 experts (2 groups) + shared expert", width_attr="config.hidden_size"),
    ZooEntry("hf_gpt_oss", build_hf_gpt_oss, 32, 2 * HEAD_DIM, "hf",
             "hidden=w; attention sinks (per head), sliding/full layers; router Linear(w, 4) with bias; expert "
             "stacks stored (E, in, out) with bias stacks (E, .)", width_attr="config.hidden_size"),
    ZooEntry("hf_mamba", build_hf_mamba, 32, HEAD_DIM, "hf",
             "hidden=w, d_inner 2w, dt_rank w/16, state 16 (fixed), depthwise conv kernel 4; tied lm_head",
             ("backbone.embeddings.weight", "lm_head.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_mamba2", build_hf_mamba2, 32, HEAD_DIM, "hf",
             "hidden=w, d_inner 2w in heads of 16 (heads w/8), state 16 and 1 group (fixed), gated RMSNorm",
             width_attr="config.hidden_size"),
    ZooEntry("hf_jamba", build_hf_jamba, 32, 2 * HEAD_DIM, "hf",
             "hidden=w; a Mamba layer (d_inner 2w, dt_rank w/16, state 16) with a 4-expert MoE router Linear(w, 4), "
             "then an attention layer (GQA) with a dense MLP 2w", width_attr="config.hidden_size"),
    ZooEntry("hf_bamba", build_hf_bamba, 32, 2 * HEAD_DIM, "hf",
             "hidden=w; a Mamba2 layer (heads 2w/16 of 16, state 16) then an attention layer; MLP 2w",
             width_attr="config.hidden_size"),
    ZooEntry("hf_roberta", build_hf_roberta, 32, HEAD_DIM, "hf",
             "hidden=w, heads w/16, intermediate 4w; MLM decoder tied to the word embeddings",
             ("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight"), width_attr="config.hidden_size"),
    ZooEntry("hf_albert", build_hf_albert, 32, HEAD_DIM, "hf",
             "hidden=w, embedding_size 16 (fixed: a factorised embedding, projected to w), shared layer weights; "
             "MLM decoder (16 -> vocab) tied to the word embeddings",
             ("albert.embeddings.word_embeddings.weight", "predictions.decoder.weight"),
             width_attr="config.hidden_size"),
    ZooEntry("hf_deberta_v2", build_hf_deberta_v2, 32, HEAD_DIM, "hf",
             "hidden=w, disentangled attention with relative embeddings (16 x w, layer-normed, shared keys), "
             "intermediate 4w; MLM decoder tied",
             ("deberta.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
             width_attr="config.hidden_size"),
    ZooEntry("hf_electra", build_hf_electra, 32, HEAD_DIM, "hf",
             "hidden=w, embedding_size 16 (fixed) projected to w; generator head w -> 16 -> vocab tied to the "
             "embeddings", ("electra.embeddings.word_embeddings.weight", "generator_lm_head.weight"),
             width_attr="config.hidden_size"),
    ZooEntry("hf_distilbert", build_hf_distilbert, 32, HEAD_DIM, "hf",
             "dim=w, heads w/16, hidden_dim 4w; vocab projector tied to the word embeddings",
             ("distilbert.embeddings.word_embeddings.weight", "vocab_projector.weight"), width_attr="config.dim"),
    ZooEntry("hf_t5", build_hf_t5, 32, HEAD_DIM, "hf",
             "d_model=w, d_kv 16, heads w/16, gated d_ff 2w, relative attention bias (8 buckets x heads); "
             "returns logits and encoder_last_hidden_state; transformers 5 always ties lm_head to the shared "
             "embeddings (tie_word_embeddings=False only drops the d_model**-0.5 output scaling)",
             ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"),
             width_attr="config.d_model"),
    ZooEntry("hf_bart", build_hf_bart, 32, HEAD_DIM, "hf",
             "d_model=w, heads w/16, ffn 4w, learned positions; shared embeddings tied to lm_head; final_logits_bias "
             "(buffer)", ("model.shared.weight", "model.encoder.embed_tokens.weight",
                          "model.decoder.embed_tokens.weight", "lm_head.weight"), width_attr="config.d_model"),
    ZooEntry("hf_clip", build_hf_clip, 32, HEAD_DIM, "hf",
             "text and vision towers hidden=w (heads w/16, MLP 4w, patch 8 on 32x32); projections to "
             "projection_dim 16 (fixed); logit_scale scalar", width_attr="config.text_config.hidden_size"),
    ZooEntry("hf_siglip", build_hf_siglip, 32, HEAD_DIM, "hf",
             "text and vision towers hidden=w; text head Linear(w, w) (projection_size = hidden_size); vision "
             "attention-pooling head with a probe (1, 1, w)", width_attr="config.text_config.hidden_size"),
    ZooEntry("hf_whisper", build_hf_whisper, 32, HEAD_DIM, "hf",
             "d_model=w: conv stem (16 mels -> w -> w), sinusoidal encoder positions (buffer-like, frozen), decoder "
             "positions 32 x w; proj_out tied to the decoder embeddings",
             ("model.decoder.embed_tokens.weight", "proj_out.weight"), width_attr="config.d_model"),
    ZooEntry("hf_wav2vec2", build_hf_wav2vec2, 32, HEAD_DIM, "hf",
             "hidden=w; conv feature encoder conv_dim 24 (fixed, layer-normed) projected to w; positional conv "
             "(w, w/2, 8) with weight norm over the kernel axis; CTC head w -> 32", width_attr="config.hidden_size"),
    ZooEntry("timm_deit", build_timm_deit, 32, HEAD_DIM, "timm",
             "embed_dim=w, heads w/16, MLP 4w; cls + distillation tokens, two heads", width_attr="embed_dim"),
    ZooEntry("timm_swin", build_timm_swin, 32, HEAD_DIM, "timm",
             "embed_dim=w: stages w, 2w (patch merging 4w -> 2w), heads w/16 and w/8, window 4 with relative "
             "position bias tables (49 x heads)", width_attr="embed_dim"),
    ZooEntry("timm_convnext", build_timm_convnext, 16, 1, "timm",
             "stages w, 2w, 4w, 8w (depthwise 7x7, MLP 4x, layer scale), stem patchify 4x4", 
             width_attr="feature_info[0].num_chs"),
    ZooEntry("timm_mixer", build_timm_mixer, 32, 2, "timm",
             "embed_dim=w; token-mixing MLP over 16 patches (16 -> w/2 -> 16), channel MLP w -> 4w -> w",
             width_attr="embed_dim"),
    ZooEntry("timm_regnet", build_timm_regnet, 16, 8, "timm",
             "stem w, stages w, 2w, 4w, 8w; grouped 3x3 convs with group width 8 (fixed), SE 0.25",
             width_attr="feature_info[0].num_chs"),
    ZooEntry("timm_efficientnet", build_timm_efficientnet, 32, 16, "timm",
             "channel multiplier w/16: stem 2w, stages w, 1.5w, 2.5w (depthwise + SE), head 8w",
             width_attr="feature_info[0].num_chs"),
    ZooEntry("timm_mobilenetv3", build_timm_mobilenetv3, 32, 16, "timm",
             "channel multiplier w/16: stages w, 1.5w, 2.5w, 6w (depthwise + hard-sigmoid SE); conv head after "
             "pooling 6w -> 96 (fixed)", width_attr="feature_info[0].num_chs"),
    ZooEntry("torch_transformer", build_torch_transformer, 32, HEAD_DIM, "torch",
             "nn.Transformer d_model=w (1+1 layers, nhead w/16, ff 4w) with causal tgt_mask and key-padding masks"),
    ZooEntry("torch_causal_encoder", build_torch_causal_encoder, 32, HEAD_DIM, "torch",
             "nn.TransformerEncoder (pre-LN) d_model=w called with mask=causal float mask; learned positions "
             "(1, 32, w)"),
    ZooEntry("lstm_lm", build_lstm_lm, 32, 1, "torch", "Embedding(128, w) -> 2-layer nn.LSTM(w, w) -> Linear(w, 128)"),
    ZooEntry("gru_lm", build_gru_lm, 32, 1, "torch",
             "Embedding(128, w) -> 2-layer bidirectional nn.GRU(w, w) -> Linear(2w, 128)"),
    ZooEntry("functional_readout", build_functional_readout, 32, 1, "custom",
             "raw Parameters: E[idx] (128, w), F.linear MLP w -> 4w -> w, RMS gain w, readout h @ W.T (128, w); no "
             "submodule to infer example inputs from (bare=False)", bare=False),
    ZooEntry("weight_norm", build_weight_norm, 32, 1, "custom",
             "Conv1d 8 -> w -> w with parametrizations.weight_norm, Linear(w, 10) with utils.weight_norm"),
    ZooEntry("relpos_mask_token", build_relpos_mask_token, 32, HEAD_DIM, "custom",
             "manual attention d=w, heads w/16; relative-position table (15, 16) used as data -> LayerNorm(16) -> "
             "Linear(16, heads); mask token (w,) through torch.where"),
    ZooEntry("loop_moe", build_loop_moe, 32, 1, "custom",
             "router Linear(w, 4); expert stacks (4, 2w, w), (4, w, 2w) and biases (4, w) applied in a Python loop"),
    ZooEntry("bmm_moe", build_bmm_moe, 32, 1, "custom",
             "router Linear(w, 4), argmax + scatter dispatch; expert stacks (4, w, 2w), (4, 2w, w) stored (in, out) "
             "through torch.bmm"),
]}

ZOO_NAMES: list[str] = list(ZOO)
# the original eleven: the heavier per-model tests (training, torch.compile) run on these; tests/test_zoo_wide.py runs
# the whole zoo
CORE_NAMES: list[str] = ZOO_NAMES[:ZOO_NAMES.index("timm_resnet") + 1]


def build(name: str, width: int | None = None) -> Built:
    """Build zoo model ``name`` at ``width`` (default: its base width)."""
    entry = ZOO[name]
    return entry.build(entry.base_width if width is None else width)


def declared_width(name: str, model: nn.Module) -> int:
    """The width ``model`` (a build of zoo entry ``name``) states through its ``width_attr``; the builder's width
    for entries without one."""
    attr = ZOO[name].width_attr
    if not attr:
        raise ValueError(f"zoo entry {name} declares no width attribute")
    obj = model
    for part in attr.split("."):
        key, _, index = part.partition("[")
        obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
        if index:
            obj = obj[int(index.rstrip("]"))]
    return int(obj)


def widths_for(name: str) -> tuple[int, int]:
    """Two widths for the oracle and for width-scaling tests: (base, 2 * base)."""
    b = ZOO[name].base_width
    return b, 2 * b
