"""Depth transfer (CompleteP, Dey et al. 2025): residual branches found in the graph, their multipliers, the depth
rules of the optimizer families, identity at the base depth, and export."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import MuplifyError, PlanError, muplify
from muplify.models import GPT
from muplify_dev.zoo import build

VOCAB, SEQ = 64, 16


def _gpt(n_layer: int, width: int = 32, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=VOCAB, d_model=width, n_layer=n_layer, head_dim=16, block_size=SEQ, tie_weights=False, **kw)


def _batch(i: int = 0):
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    return x, torch.roll(x, -1, 1)


def _branches(mu) -> list[tuple[str, float]]:
    return [(f.module, f.factor) for f in mu.plan.forward if f.reason == "branch"]


class ParallelBlock(nn.Module):
    """GPT-J / PaLM style: x + attn(ln(x)) + mlp(ln(x)) in one add chain."""

    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, d // 16, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln(x)
        return x + self.attn(h, h, h, need_weights=False)[0] + self.mlp(h)


class ParallelLM(nn.Module):
    def __init__(self, d=32, n_layer=3):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(ParallelBlock(d) for _ in range(n_layer))
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _hf_neox_parallel(d=32, n_layer=3):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=d // 16,
                        intermediate_size=4 * d, max_position_embeddings=SEQ, use_parallel_residual=True,
                        attn_implementation="sdpa")
    return GPTNeoXForCausalLM(cfg)


# ------------------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("name, expect_depth, per_block", [
    ("gpt_sdpa", 2, ["blocks.{i}.attn", "blocks.{i}.mlp"]),
    ("gpt_manual", 2, ["blocks.{i}.attn", "blocks.{i}.mlp"]),
    ("hf_llama", 2, ["model.layers.{i}.self_attn", "model.layers.{i}.mlp"]),
    ("hf_gpt2", 2, ["transformer.h.{i}.attn", "transformer.h.{i}.mlp"]),
    # post-LN: the branch is what enters LayerNorm(x + branch), i.e. the sublayer's last projection (+ dropout)
    ("hf_bert", 2, ["bert.encoder.layer.{i}.attention.output.dropout", "bert.encoder.layer.{i}.output.dropout"]),
    ("timm_vit", 2, ["blocks.{i}.attn", "blocks.{i}.mlp"]),
    ("torch_transformer_encoder", 2, ["encoder.layers.{i}.dropout1", "encoder.layers.{i}.dropout2"]),
])
def test_branches_found_in_the_graph(name, expect_depth, per_block):
    model, args, kwargs = build(name, 32 if name != "hf_llama" else 64)
    mu = muplify(model, base_width=32 if name != "hf_llama" else 64, example_inputs=args, example_kwargs=kwargs,
                 base_depth=1)
    assert mu.plan.options.depth == expect_depth
    want = [p.format(i=i) for i in range(expect_depth) for p in per_block]
    assert _branches(mu) == [(m, 1 / expect_depth) for m in want]
    text = str(mu.plan)
    assert f"depth L = {expect_depth}, base_depth = 1" in text and "branch" in text


def test_resnet_branches_and_projection_shortcuts():
    model, args, _ = build("timm_resnet", 16)
    mu = muplify(model, base_width=16, example_inputs=args, base_depth=5)
    # resnet18: 8 BasicBlocks, 3 of them downsampling with a projection shortcut (conv+bn on both sides)
    assert mu.plan.options.depth == 5
    assert any("3 projection-shortcut adds" in n for n in mu.plan.notes)
    mu2 = muplify(build("timm_resnet", 16)[0], base_width=16, example_inputs=args, base_depth=1)
    assert [m for m, _ in _branches(mu2)] == ["layer1.0.bn2", "layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2",
                                              "layer4.1.bn2"]


@pytest.mark.parametrize("make", [ParallelLM, _hf_neox_parallel], ids=["hand_written", "hf_neox"])
def test_parallel_blocks_give_two_branches_per_add(make):
    model = make()
    x, _ = _batch()
    mu = muplify(model, base_width=32, example_inputs=(x,), base_depth=1)
    assert mu.plan.options.depth == 3
    mods = [m for m, _ in _branches(mu)]
    assert len(mods) == 6 and all(f == pytest.approx(1 / 3) for _, f in _branches(mu))


class ScaledBlock(nn.Module):
    """Granite style: each branch is multiplied by a constant after its module (``residual_multiplier``)."""

    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, d // 16, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0] * 0.25
        return x + 0.25 * self.mlp(self.ln2(x))


class GatedBlock(ScaledBlock):
    """DiT / adaLN style: each branch is multiplied by a gate computed from a conditioning signal."""

    def __init__(self, d):
        super().__init__(d)
        self.gate = nn.Linear(d, 2 * d)

    def forward(self, x):
        g1, g2 = self.gate(x.mean(1, keepdim=True)).sigmoid().chunk(2, dim=-1)
        h = self.ln1(x)
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        return x + g2 * self.mlp(self.ln2(x))


class GPTJBlock(ParallelBlock):
    """GPT-J / CodeGen order: attn + mlp first, the residual last (the inner add has weights on both sides)."""

    def forward(self, x):
        h = self.ln(x)
        return self.attn(h, h, h, need_weights=False)[0] + self.mlp(h) + x


class SkipLM(ParallelLM):
    """A long skip over whole residual blocks (U-Net, Funnel's decoder): h0 + blocks(h0) is not a branch."""

    def __init__(self, d=32, n_layer=3, block=ScaledBlock):
        super().__init__(d, n_layer)
        self.blocks = nn.ModuleList(block(d) for _ in range(n_layer))
        self.mix = nn.Linear(d, d)

    def forward(self, idx):
        h0 = self.emb(idx)
        x = h0
        for b in self.blocks:
            x = b(x)
        return self.head(self.mix(x) + h0)


@pytest.mark.parametrize("block, modules", [(ScaledBlock, ["attn", "mlp"]), (GatedBlock, ["attn", "mlp"]),
                                           (GPTJBlock, ["attn", "mlp"])])
def test_constant_scaled_branches_long_skips_and_gptj_order(block, modules):
    model = SkipLM(block=block)
    ref = copy.deepcopy(model)
    x, _ = _batch()
    mu = muplify(model, base_width=32, example_inputs=(x,), base_depth=1)
    assert mu.plan.options.depth == 3
    assert [m for m, _ in _branches(mu)] == [f"blocks.{i}.{m}" for i in range(3) for m in modules]
    assert any("skip connection(s) over whole residual blocks" in n for n in mu.plan.notes), mu.plan.notes
    assert not any("projection-shortcut" in n for n in mu.plan.notes), mu.plan.notes
    # the hook on the module before the constant: the same as scaling the branch by hand
    for b in ref.blocks:
        for name in modules:
            getattr(b, name).register_forward_hook(lambda _m, _i, out: (out[0] / 3, *out[1:])
                                                   if isinstance(out, tuple) else out / 3)
    torch.testing.assert_close(mu(x), ref(x))


def test_gelu_polynomial_is_not_a_branch():
    """x + 0.044715·x³ (tanh-GELU) has x as an ancestor of the other side but no weight on the way."""
    model = _gpt(2)
    for blk in model.blocks:
        blk.mlp[1] = nn.GELU(approximate="tanh")
    mu = muplify(model, base_width=32, base_depth=1)
    assert len(_branches(mu)) == 4


def test_no_branches_is_an_error_and_bad_depth_arguments():
    from muplify.models import MLP

    with pytest.raises(PlanError, match="no residual branch"):
        muplify(MLP(width=32), base_width=32, base_depth=2)
    for kw, match in (({"base_depth": 0}, "base_depth must be a positive int"),
                      ({"base_depth": 2, "depth_alpha": 2.0}, "depth_alpha must be in"),
                      ({"depth": 4}, "depth= needs base_depth=")):
        model = _gpt(2)
        with pytest.raises(MuplifyError, match=match):
            muplify(model, base_width=32, **kw)
        assert type(model) is GPT


# ------------------------------------------------------------------------------------------------ rules
def test_identity_at_base_depth():
    ref = _gpt(4)
    mu = muplify(copy.deepcopy(ref), base_width=32, base_depth=4)
    assert _branches(mu) == [(m, 1.0) for m, _ in _branches(mu)] and len(_branches(mu)) == 8
    assert not any(m._forward_hooks for m in mu.modules())  # factor 1: no hooks
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1)
    opt_mu = mu.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    for s in range(3):
        x, y = _batch(s)
        l_ref = F.cross_entropy(ref(x).flatten(0, 1), y.flatten())
        l_mu = F.cross_entropy(mu(x).flatten(0, 1), y.flatten())
        assert l_ref.item() == l_mu.item()
        l_ref.backward(); l_mu.backward()  # noqa: E702
        opt_ref.step(); opt_mu.step()  # noqa: E702
        opt_ref.zero_grad(); opt_mu.zero_grad()  # noqa: E702
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mu.parameters()))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_branch_multiplier_and_adam_rules(alpha):
    """Branch × m_L^-α; Adam-like: in-branch hidden and vector lr × m_L^(α−1), ε × m_L^-α (CompleteP Table 1);
    embeddings, readout and the final norm untouched."""
    L, L0 = 8, 2
    mu = muplify(_gpt(L), base_width=32, base_depth=L0, depth_alpha=alpha)
    m = L / L0
    assert all(f == pytest.approx(m ** -alpha) for _, f in _branches(mu)) and len(_branches(mu)) == 2 * L
    p = mu.plan
    assert p["blocks.3.mlp.0.weight"].in_branch and p["blocks.3.ln_1.weight"].in_branch
    assert not p["ln_f.weight"].in_branch and not p["wte.weight"].in_branch and not p["lm_head.weight"].in_branch
    for name in ("blocks.3.mlp.0.weight", "blocks.3.ln_1.weight", "blocks.0.attn.c_attn.bias"):
        assert p[name].lr_mult["adam"] == pytest.approx(m ** (alpha - 1)), name
        assert p[name].eps_mult["adam"] == pytest.approx(m ** -alpha), name
        assert p[name].lr_mult["sgd"] == pytest.approx(m ** (2 * alpha - 1)), name
        assert p[name].wd_mult["adam"] == pytest.approx(m ** (1 - alpha)), name  # coupled: lr·wd per step kept
    for name in ("wte.weight", "lm_head.weight", "ln_f.weight"):
        assert (p[name].lr_mult["adam"], p[name].eps_mult["adam"]) == (1.0, 1.0), name
    # first Adam step: ±lr·lr_mult per entry
    opt = mu.optimizer(torch.optim.Adam, lr=1e-2, eps=1e-12)
    before = {n: q.detach().clone() for n, q in mu.named_parameters()}
    x, y = _batch()
    F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    for n, q in mu.named_parameters():
        d = (q.detach() - before[n]).abs()
        d = d[d > 0]
        if d.numel():
            assert d.median().item() == pytest.approx(1e-2 * p[n].lr_mult["adam"], rel=1e-3), n


def test_export_folds_the_branch_multipliers():
    mu = muplify(_gpt(6, width=64), base_width=32, base_depth=2)
    std = mu.to_standard()
    assert type(std) is GPT and not any(m._forward_hooks or m._forward_pre_hooks for m in std.modules())
    x, _ = _batch()
    torch.testing.assert_close(std(x), mu(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.blocks[2].attn.c_proj.weight, mu.blocks[2].attn.c_proj.weight / 3)


def test_plan_json_round_trips_depth(tmp_path):
    mu = muplify(_gpt(6), base_width=32, base_depth=2)
    path = str(tmp_path / "plan.json")
    mu.plan.to_json(path)
    again = muplify(_gpt(6, seed=4), plan=path)
    assert (again.plan.options.depth, again.plan.options.base_depth) == (6, 2)
    assert _branches(again) == _branches(mu)
    again.load_state_dict(mu.state_dict())
    x, _ = _batch()
    assert torch.equal(again(x), mu(x))


def test_residual_stream_stays_flat_in_depth_only_with_completep():
    """The point of CompleteP: after a few Adam steps the residual stream's size does not grow with depth."""
    def stream_size(L, **kw):
        torch.manual_seed(0)
        mu = muplify(_gpt(L), base_width=32, **kw)
        opt = mu.optimizer(torch.optim.Adam, lr=3e-2)
        for s in range(4):
            x, y = _batch(s)
            F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad()
        out = {}

        def record(m, a, o):
            out["x"] = a[0].abs().mean().item()
        h = mu.ln_f.register_forward_hook(record)
        mu(_batch(9)[0])
        h.remove()
        return out["x"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grow = stream_size(16) / stream_size(2)
        flat = stream_size(16, base_depth=2) / stream_size(2, base_depth=2)
    assert grow > 2.0 and flat < 1.5, (grow, flat)


def test_encoder_decoder_counts_blocks_not_sublayers():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2,
                                             num_heads=2, d_kv=16))
    x, _ = _batch()
    mu = muplify(t5, base_width=32, base_depth=2, example_inputs=(x,), example_kwargs={"decoder_input_ids": x})
    # 2 encoder blocks (attention, MLP) + 2 decoder blocks (self-attention, cross-attention, MLP)
    assert mu.plan.options.depth == 4 and len(_branches(mu)) == 2 * 2 + 2 * 3
    assert any("config declares 2 layers" in n for n in mu.plan.notes)


# ------------------------------------------------------------------------------------------------ coordinate check
def _llama(L):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=L,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        max_position_embeddings=32, tie_word_embeddings=False))


@pytest.mark.parametrize("make", [lambda L: GPT(vocab_size=256, d_model=64, n_layer=L, head_dim=16, block_size=16),
                                  _llama], ids=["gpt", "hf_llama"])
def test_depth_coordinate_check_passes_with_completep_only(make):
    from muplify import coord_check

    res = coord_check(make, axis="depth", depths=[2, 4, 8, 16], progress=False)
    assert res.passed("completep"), res.table()
    assert not res.passed("mup")
    assert "<last block>" in res.failures("mup")  # the residual stream grows with depth without CompleteP
    s = res.slopes["completep"]["<last block>"]
    assert all(abs(v) < res.tol for v in s)
