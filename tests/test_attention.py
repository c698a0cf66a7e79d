"""Attention under μP: with head_scaling="head_dim" the logits scale as √b/d (TP-V), for SDPA with or without
``scale=`` and for hand-written q @ kᵀ / √d -> softmax; with the default (head_dim fixed) attention is untouched."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from muplify import muplify
from muplify.models import GPT
from muplify_dev.hand_written import LearnedQueries

BASE, WIDE, HEADS = 32, 128, 2  # heads fixed: head_dim 16 -> 64


class RecordLogits(TorchFunctionMode):
    """Records attention logits: (q kᵀ)·scale for SDPA calls, the softmax input for manual attention."""

    def __init__(self):
        super().__init__()
        self.logits = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            scale = kwargs.get("scale") or 1 / math.sqrt(q.shape[-1])
            if k.shape[-3] != q.shape[-3]:  # GQA
                k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            self.logits.append((q @ k.transpose(-2, -1) * scale).detach())
        if func in (torch.softmax, F.softmax, torch.Tensor.softmax):
            self.logits.append(args[0].detach())
        return func(*args, **kwargs)


def _logits(model, *args, **kwargs):
    with RecordLogits() as rec:
        model(*args, **kwargs)
    assert rec.logits, "no attention op seen"
    return rec.logits


def _builders():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = torch.randint(0, 64, (2, 8))
    return {
        "gpt_sdpa": (lambda w: GPT(vocab_size=64, d_model=w, n_head=HEADS, n_layer=1, block_size=16), (ids,), {}),
        "gpt_manual": (lambda w: GPT(vocab_size=64, d_model=w, n_head=HEADS, n_layer=1, block_size=16,
                                     attn="manual"), (ids,), {}),
        "hf_gpt2": (lambda w: GPT2LMHeadModel(GPT2Config(n_embd=w, n_head=HEADS, n_layer=1, vocab_size=64,
                                                         n_positions=16)), (ids,), {"use_cache": False}),
        "hf_llama": (lambda w: LlamaForCausalLM(LlamaConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=1,
                                                            num_attention_heads=HEADS, num_key_value_heads=HEADS,
                                                            vocab_size=64, max_position_embeddings=16)),
                     (ids,), {"use_cache": False}),
    }


@pytest.mark.parametrize("name", ["gpt_sdpa", "gpt_manual", "hf_gpt2", "hf_llama"])
def test_head_dim_scaling_gives_sqrt_b_over_d_logits(name):
    make, args, kwargs = _builders()[name]
    torch.manual_seed(0)
    model = make(WIDE).eval()  # HF configs default to dropout 0.1
    ref = copy.deepcopy(model)
    mu = muplify(model, base_width=BASE, head_scaling="head_dim", init=None, example_inputs=args,
                 example_kwargs=kwargs)
    att = [f for f in mu.plan.forward if f.reason == "attention"]
    assert att, mu.plan
    factor = math.sqrt(BASE / WIDE)  # √b/d ÷ 1/√d = √(b/d)
    assert all(f.factor == pytest.approx(factor) for f in att)
    got, want = _logits(mu, *args, **kwargs), _logits(ref, *args, **kwargs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        finite = torch.isfinite(w)
        torch.testing.assert_close(g[finite], w[finite] * factor, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt_sdpa", "gpt_manual", "hf_gpt2", "hf_llama"])
def test_default_head_scaling_leaves_attention_alone(name):
    make, args, kwargs = _builders()[name]
    torch.manual_seed(0)
    model = make(WIDE).eval()  # HF configs default to dropout 0.1
    ref = copy.deepcopy(model)
    mu = muplify(model, base_width=BASE, init=None, example_inputs=args, example_kwargs=kwargs, width=WIDE)
    assert not [f for f in mu.plan.forward if f.reason == "attention"]
    for g, w in zip(_logits(mu, *args, **kwargs), _logits(ref, *args, **kwargs)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", ["gpt_sdpa", "hf_gpt2", "hf_llama"])
def test_query_zero_init_zeroes_only_the_query(name):
    make, args, kwargs = _builders()[name]
    torch.manual_seed(0)
    mu = muplify(make(WIDE).eval(), base_width=BASE, query_zero_init=True, example_inputs=args, example_kwargs=kwargs)
    for g in _logits(mu, *args, **kwargs):  # q = 0 -> every logit 0 (masked ones stay -inf)
        assert torch.all((g == 0) | torch.isinf(g))
    assert torch.isfinite(mu(*args, **kwargs)[0] if isinstance(mu(*args, **kwargs), tuple)
                          else torch.as_tensor(0.0)).all()


@pytest.mark.parametrize("head_scaling", ["heads", "head_dim"])
def test_head_convention_in_width_analysis(head_scaling):
    """Default: head_dim is finite and the head count scales; head_scaling='head_dim' the reverse."""
    from muplify.capture import capture
    from muplify.width import analyse

    make, args, kwargs = _builders()["hf_llama"]
    wa = analyse(capture(make(WIDE), args, kwargs), head_scaling=head_scaling)
    site = next(a for a in wa.attention if a.kind == "sdpa")
    w = wa.width_symbol
    head_dim, heads = wa.dim_expr(site.head_dim), wa.dim_expr(site.heads)
    if head_scaling == "heads":
        assert not head_dim.has(w) and heads.has(w), (head_dim, heads)
    else:
        assert head_dim.has(w) and not heads.has(w), (head_dim, heads)


@pytest.mark.parametrize("residual", [True, False], ids=["perceiver_latents", "set_transformer_seeds"])
def test_learned_queries_keep_their_rows_and_the_batch_fixed(residual):
    """One width reads what two widths read: the query rows (positions of an attention op) are fixed, so the
    learned rows are a table (fan_in n, fan_out w); the out-projection stays hidden (the batch the views split again
    is the keys' batch, not a scaling axis)."""
    import warnings

    from muplify import analyze

    x = (torch.randn(3, 7, 12),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = analyze(LearnedQueries(128, residual=residual), base_width=64, example_inputs=x)
        two = analyze(LearnedQueries(128, residual=residual), base=LearnedQueries(64, residual=residual),
                      example_inputs=x)
    for n in two.params:
        assert (one[n].role, str(one[n].fan_in), str(one[n].fan_out)) == \
            (two[n].role, str(two[n].fan_in), str(two[n].fan_out)), n
    assert one["attn.out_proj.weight"].role == "hidden"
    assert str(one["lat"].fan_in) == "5" and str(one["lat"].fan_out) == "w"  # rows fixed, features scale
