"""Meta-device workflow (issue #4): build on meta -> muplify (no parameter memory) -> to_empty -> mu.mup_init().

With the same RNG seed the result must equal muplifying the model built directly on the CPU.  mup_init() replays the
model's own init in constructor order (reset_parameters children-first; HF ``init_weights`` at the end of every
PreTrainedModel), so the equality is exact for models whose construction draws only through those.  Where the
constructor draws elsewhere (HF GPT-2's Conv1D calls ``normal_`` in ``__init__``; ``nn.TransformerEncoder``
deep-copies one layer so every layer starts identical) the RNG streams cannot line up; there the test compares the
plan's init decisions and per-tensor statistics instead.
"""
from __future__ import annotations

import math

import psutil
import pytest
import torch
import torch.nn as nn

from muplify import muplify
from muplify_dev.zoo import HEAD_DIM, MAX_POS, VOCAB, build, widths_for


def _llama_tied(width: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=width // HEAD_DIM, num_key_value_heads=width // HEAD_DIM, head_dim=HEAD_DIM,
                      max_position_embeddings=MAX_POS, tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg), (torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
                                   .to(torch.get_default_device()),), {"use_cache": False}


def _gpt_torch_init(tie: bool):
    def make(width):
        from muplify.models import GPT

        model = GPT(vocab_size=VOCAB, d_model=width, n_layer=2, block_size=MAX_POS, tie_weights=tie, init="torch")
        return model, (torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
                       .to(torch.get_default_device()),), {}
    return make


# name -> (builder(width) -> (model, args, kwargs), base_width, width)
EXACT = {
    "mlp": (lambda w: build("mlp", w), *widths_for("mlp")),
    "cnn": (lambda w: build("cnn", w), *widths_for("cnn")),
    "gpt_torch_init_tied": (_gpt_torch_init(True), 32, 64),
    "gpt_torch_init_untied": (_gpt_torch_init(False), 32, 64),
    "hf_llama": (lambda w: build("hf_llama", w), *widths_for("hf_llama")),
    "hf_llama_tied": (_llama_tied, 32, 64),
    "hf_bert": (lambda w: build("hf_bert", w), *widths_for("hf_bert")),
}


def _cpu_and_meta(make, base, width, seed=0):
    torch.manual_seed(seed)
    model, args, kwargs = make(width)
    ref = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs)
    with torch.device("meta"):
        model, margs, mkwargs = make(width)
    mu = muplify(model, base_width=base, example_inputs=margs, example_kwargs=mkwargs)
    assert all(p.is_meta for p in mu.parameters()) and all(b.is_meta for b in mu.buffers())
    mu.to_empty(device="cpu")
    torch.manual_seed(seed)
    mu.mup_init()
    return ref, mu, args, kwargs


def _aliases_tied(mu) -> bool:
    named = dict(mu.named_parameters(remove_duplicate=False))
    return all(named[a] is named[n] for n, p in mu.plan.items() for a in p.aliases)


@pytest.mark.parametrize("case", list(EXACT))
def test_meta_then_mup_init_equals_cpu_build(case):
    make, base, width = EXACT[case]
    ref, mu, args, kwargs = _cpu_and_meta(make, base, width)
    ref_sd, mu_sd = ref.state_dict(), mu.state_dict()
    assert list(ref_sd) == list(mu_sd)
    bad = [k for k in ref_sd if not torch.equal(ref_sd[k], mu_sd[k])]
    assert not bad, f"{case}: differs from the CPU build: {bad[:5]}"
    for (n, a), (_, b) in zip(ref.named_buffers(), mu.named_buffers()):  # incl. non-persistent (rotary tables)
        assert torch.equal(a, b), n
    assert {n: (p.init_rule, p.init_scale) for n, p in ref.plan.items()} == \
        {n: (p.init_rule, p.init_scale) for n, p in mu.plan.items()}
    assert _aliases_tied(mu) and _aliases_tied(ref)
    with torch.no_grad():
        out_ref, out_mu = ref(*args, **kwargs), mu(*args, **kwargs)
    out_ref, out_mu = (getattr(o, "logits", o) for o in (out_ref, out_mu))
    assert torch.equal(out_ref, out_mu)


def _stats_match(ref, mu, tol=0.15):
    rules_ref = {n: (p.init_rule, round(p.init_scale, 9)) for n, p in ref.plan.items()}
    rules_mu = {n: (p.init_rule, round(p.init_scale, 9)) for n, p in mu.plan.items()}
    assert rules_ref == rules_mu
    for (n, a), (_, b) in zip(ref.state_dict().items(), mu.state_dict().items()):
        a, b = a.float(), b.float()
        if a.numel() < 2 or float(a.std()) == 0.0:
            assert torch.equal(a, b), n  # constants (norm gains, zero biases, masks) are exact
        else:
            assert math.isclose(float(a.std()), float(b.std()), rel_tol=tol), (n, float(a.std()), float(b.std()))
            assert abs(float(a.mean()) - float(b.mean())) < 4 * float(a.std()) / math.sqrt(a.numel()) + 1e-6, n


def test_meta_hf_gpt2_statistics():
    """HF GPT-2's Conv1D draws normal_() in __init__ as well as in _init_weights: the RNG order of a CPU build cannot
    be replayed, so compare the plan's init decisions and the per-tensor statistics."""
    base, width = widths_for("hf_gpt2")
    ref, mu, args, kwargs = _cpu_and_meta(lambda w: build("hf_gpt2", w), base, width)
    _stats_match(ref, mu)
    assert mu.lm_head.weight is mu.transformer.wte.weight
    with torch.no_grad():
        assert torch.isfinite(mu(*args, **kwargs).logits).all()


def test_meta_torch_transformer_encoder():
    """nn.TransformerEncoder deep-copies one layer (all layers start equal on CPU); mup_init draws each layer
    afresh, nn.MultiheadAttention through its _reset_parameters.  The first layer is exact, the rest statistical."""
    base, width = widths_for("torch_transformer_encoder")
    ref, mu, _, _ = _cpu_and_meta(lambda w: build("torch_transformer_encoder", w), base, width)
    ref_sd, mu_sd = ref.state_dict(), mu.state_dict()
    first = [k for k in ref_sd if k.startswith(("embed.", "encoder.layers.0."))]
    assert first and all(torch.equal(ref_sd[k], mu_sd[k]) for k in first)
    _stats_match(ref, mu, tol=0.2)


def test_meta_muplify_allocates_no_parameter_memory():
    """A ~150M-parameter GPT (600 MB in fp32) on meta: muplify leaves every parameter on meta and the process
    grows by far less than the parameters would take."""
    from muplify.models import GPT

    proc = psutil.Process()
    with torch.device("meta"):
        model = GPT(vocab_size=32000, d_model=1024, n_layer=12, block_size=256, tie_weights=False)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert nbytes > 500e6
    rss0 = proc.memory_info().rss
    mu = muplify(model, base_width=256)
    grown = proc.memory_info().rss - rss0
    assert all(p.is_meta for p in mu.parameters())
    assert grown < 0.2 * nbytes, f"muplify grew RSS by {grown / 2**20:.0f} MiB for {nbytes / 2**20:.0f} MiB of meta params"
    assert mu.plan["blocks.0.mlp.0.weight"].role == "hidden"
    assert mu.plan["blocks.0.mlp.0.weight"].init_rule == "deferred"  # no values to read yet: mup_init decides


def test_to_empty_keeps_ties_and_mup_init_reties():
    """nn.Module.to_empty() from meta gives every module its own new Parameter (ties broken);
    the muplified model's to_empty() and mup_init() restore the ties the plan recorded."""
    from muplify.models import GPT

    with torch.device("meta"):
        plain = GPT(d_model=64)
    plain.to_empty(device="cpu")
    assert plain.lm_head.weight is not plain.wte.weight  # what PyTorch does

    with torch.device("meta"):
        mu = muplify(GPT(d_model=64), base_width=32)
    mu.to_empty(device="cpu")
    assert mu.lm_head.weight is mu.wte.weight

    with torch.device("meta"):
        mu = muplify(GPT(d_model=64), base_width=32)
    nn.Module.to_empty(mu, device="cpu")  # bypass the override: ties broken ...
    assert mu.lm_head.weight is not mu.wte.weight
    mu.mup_init()  # ... and restored by mup_init
    assert mu.lm_head.weight is mu.wte.weight
    assert len(list(mu.parameters())) == len(mu.plan)


class SinusoidLM(nn.Module):
    """A model with a non-persistent buffer computed in __init__ (as rotary / sinusoidal tables are)."""

    def __init__(self, width=64, vocab=VOCAB, seq=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.register_buffer("pe", self.table(seq, width), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.out = nn.Linear(width, vocab)

    @staticmethod
    def table(seq, width):
        pos = torch.arange(seq, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
        return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1)

    def forward(self, idx):
        x = self.embed(idx) + self.pe[: idx.shape[1]]
        return self.out(x + self.mlp(x))


def test_non_persistent_buffers_are_recomputed_by_the_user():
    """reset_parameters() does not know a module's computed buffers and to_empty() leaves them uninitialised: the
    documented recipe recomputes them (μP never touches buffers, so before or after mup_init)."""
    torch.manual_seed(0)
    ref = muplify(SinusoidLM(width=64), base_width=32)
    with torch.device("meta"):
        mu = muplify(SinusoidLM(width=64), base_width=32)
    mu.to_empty(device="cpu")
    torch.manual_seed(0)
    mu.mup_init()
    mu.pe.copy_(SinusoidLM.table(*mu.pe.shape))  # the recipe
    for (n, a), (_, b) in zip(ref.state_dict().items(), mu.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(ref.pe, mu.pe)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(ref(x), mu(x))
