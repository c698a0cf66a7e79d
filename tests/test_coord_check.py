"""Coordinate check: SP must fail and μP must pass on the built-in models and on HF GPT-2, plus unit tests of the
recorder (attention logits, softmax inputs, output), the slope verdict and the result object.

Widths 32..256 (GPT 64..512, CNN 16..128), 3 steps, 2 seeds; each model's check is run once per module (fixture) and shared by its tests.

Setting (the `mup` package's own coord-check setting): untied readout with ``readout_zero_init=True`` (and
``query_zero_init=True`` for attention).  With a non-zero readout the logits at init shrink like 1/sqrt(width)
(slope -0.5 at step 0), which the two-sided criterion flags; a tied embedding/readout cannot be zero-initialised.
Sizes that collide with a width (vocabulary, positions, input features) are avoided: width inference is numeric.
Language-model batches hold 2x16 = 32 tokens, no more than the smallest width: with many more tokens than width,
Adam's first updates are dominated by a part that shrinks like 1/sqrt(width) (a finite-width effect, not a μP bug;
`mup`'s own coordinate checks use batch size 1).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify.coord_check import (DEFAULT_TOL, Batch, CoordCheckResult, _slope, coord_check, default_loss)
from muplify.models import CNN, GPT, MLP

WIDTHS = [32, 64, 128, 256]
STEPS = 3
MUP = {"readout_zero_init": True}
MUP_ATTN = {"readout_zero_init": True, "query_zero_init": True}


def _have_core() -> bool:
    try:
        from muplify import muplify  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_CORE = _have_core()
PARAMS = ("sp", "mup") if HAVE_CORE else ("sp",)


def _describe(res: CoordCheckResult, param: str) -> str:
    fails = res.failures(param)
    return f"{param} failures: " + "; ".join(
        f"{k}: {' '.join(f'{v:+.2f}' for v in s)}" for k, s in fails.items()) + "\n" + res.table()


# --------------------------------------------------------------------------------------------------- batches
def _tokens(vocab=256, batch=2, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


# ------------------------------------------------------------------------------------------------ model checks
@pytest.fixture(scope="module")
def gpt_result():
    # widths from 64: at 32..256 the step-2 attention logits of the second block scatter (max |slope| 0.09..0.47 over
    # four data/model seeds, vs 0.10..0.22 at 64..512)
    return coord_check(lambda w: GPT(d_model=w, n_layer=2, head_dim=16, block_size=40, tie_weights=False), _tokens(),
                       widths=[64, 128, 256, 512], steps=STEPS, parametrizations=PARAMS, muplify_kwargs=MUP_ATTN)


@pytest.fixture(scope="module")
def mlp_result():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
    return coord_check(lambda w: MLP(in_features=20, width=w, out_features=10, depth=3), x, labels=y,
                       widths=WIDTHS, steps=STEPS, parametrizations=PARAMS, muplify_kwargs=MUP)


@pytest.fixture(scope="module")
def cnn_result():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    return coord_check(lambda w: CNN(width=w), x, labels=y, widths=[16, 32, 64, 128], steps=STEPS,
                       parametrizations=PARAMS, muplify_kwargs=MUP)


def _hf_gpt2(width: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_positions=40, n_embd=width, n_layer=2, n_head=width // 16, use_cache=False,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                     tie_word_embeddings=False)
    return GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def gpt2_result():
    pytest.importorskip("transformers")
    idx, _ = _tokens(vocab=100)
    return coord_check(_hf_gpt2, {"input_ids": idx, "labels": idx}, widths=WIDTHS, steps=STEPS,
                       parametrizations=PARAMS, muplify_kwargs=MUP_ATTN)


MODEL_RESULTS = ["gpt_result", "mlp_result", "cnn_result", "gpt2_result"]


@pytest.mark.parametrize("fixture", MODEL_RESULTS)
def test_sp_fails(fixture, request):
    res = request.getfixturevalue(fixture)
    assert not res.passed("sp"), res.table()
    assert len(res.failures("sp")) >= 2
    # the failure is growth with width, not noise: the worst SP slope is clearly positive
    worst = max(v for s in res.failures("sp").values() for v in s)
    assert worst > 0.5, res.table()


@pytest.mark.skipif(not HAVE_CORE, reason="muplify core not importable yet")
@pytest.mark.parametrize("fixture", MODEL_RESULTS)
def test_mup_passes(fixture, request):
    res = request.getfixturevalue(fixture)
    assert res.passed("mup"), _describe(res, "mup")


def test_gpt_records_attention_logits_and_output(gpt_result):
    layers = set(gpt_result.layers)
    assert {"blocks.0.attn:attn_logits", "blocks.1.attn:attn_logits", "<output>", "blocks.0.attn.c_attn",
            "lm_head"} <= layers
    # SP with GPT-2's fixed-std init: q and k coordinates each grow like sqrt(width) (head_dim fixed), so the
    # attention logits grow like width
    assert gpt_result.slopes["sp"]["blocks.0.attn:attn_logits"][0] > 0.7


def test_gpt2_records_sdpa_logits(gpt2_result):
    names = [n for n in gpt2_result.layers if n.endswith(":attn_logits") or n.endswith(":softmax_in")]
    assert len(names) == 2, gpt2_result.layers
    assert "<output>" in gpt2_result.layers


# ------------------------------------------------------------------------------------------- recorder details
class _Attn(nn.Module):
    def __init__(self, mode: str, scale=None):
        super().__init__()
        self.mode, self.scale = mode, scale
        self.proj = nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.proj(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
        s = self.scale if self.scale is not None else 1 / math.sqrt(8)
        if self.mode == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        att = (q @ k.transpose(-2, -1)) * s
        att = att.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
        return F.softmax(att, dim=-1) @ v


@pytest.mark.parametrize("scale", [None, 0.05])
def test_sdpa_logits_match_manual_softmax_input(scale):
    from muplify.coord_check import _Recorder

    x = torch.randn(2, 5, 16)
    sizes = {}
    for mode in ("sdpa", "manual"):
        torch.manual_seed(0)
        m = _Attn(mode, scale)
        rec = _Recorder(m)
        out, sizes[mode] = rec.forward(m, Batch((x,)))
        rec.remove()
    a, b = sizes["sdpa"]["<model>:attn_logits"], sizes["manual"]["<model>:softmax_in"]
    assert a == pytest.approx(b, rel=1e-5)
    assert sizes["sdpa"]["<output>"] == pytest.approx(sizes["manual"]["<output>"], rel=1e-5)
    assert set(sizes["sdpa"]) == {"proj", "<model>:attn_logits", "<output>"}


def test_recorder_names_repeated_calls_and_removes_hooks():
    from muplify.coord_check import _Recorder

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x)), x.sum()

    m = Twice()
    rec = _Recorder(m)
    _, sizes = rec.forward(m, Batch((torch.randn(3, 4),)))
    rec.remove()
    assert list(sizes) == ["lin", "lin#2", "<output>"]
    assert not m._forward_hooks and not m.lin._forward_pre_hooks


# ------------------------------------------------------------------------------------------------ verdict, result
def test_default_tolerance_is_mups_criterion_per_doubling():
    assert DEFAULT_TOL == pytest.approx(math.log(1.2) / math.log(2))
    assert _slope([32, 64], [1.0, 1.2]) == pytest.approx(DEFAULT_TOL)


def test_slope_edge_cases():
    assert _slope([1, 2, 4], [3.0, 3.0, 3.0]) == pytest.approx(0.0)
    assert _slope([1, 2, 4], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert _slope([1, 2, 4], [0.0, 0.0, 0.0]) == 0.0  # zero-initialised readout at step 0
    assert math.isnan(_slope([1, 2], [1.0, float("nan")]))
    assert _slope([1, 2], [0.0, 1.0]) == float("inf")


def _synthetic(slope_sp=1.0, slope_mup=0.05):
    records = []
    for p, s in (("sp", slope_sp), ("mup", slope_mup)):
        for w in (32, 64, 128):
            for t in range(2):
                records.append(dict(param=p, width=w, seed=0, step=t, layer="a", size=0.1 * (w / 32) ** (s * t)))
                records.append(dict(param=p, width=w, seed=0, step=t, layer="b", size=0.5))
    return CoordCheckResult(records, widths=[32, 64, 128], steps=2, seeds=[0], parametrizations=["sp", "mup"])


def test_result_verdict_table_json_plot(tmp_path):
    res = _synthetic()
    assert not res.passed("sp") and res.passed("mup")
    assert list(res.failures("sp")) == ["a"]
    assert res.slopes["sp"]["a"] == pytest.approx([0.0, 1.0])
    assert res.failures("mup") == {}
    table = res.table()
    assert "FAIL" in table and "SP FAIL (1/2" in table and "μP PASS" in table
    path = res.to_json(tmp_path / "cc.json")
    d = json.loads(open(path).read())
    assert d["verdict"]["sp"]["passed"] is False and d["verdict"]["mup"]["passed"] is True
    assert {"param", "width", "seed", "step", "layer", "size"} <= set(d["records"][0])
    again = CoordCheckResult.from_json(path)
    assert again.slopes == res.slopes
    png = res.plot(tmp_path / "cc.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):
        res.passed("nope")


def test_default_loss_conventions():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = torch.tensor(1.5)
    assert default_loss((logits, loss)) is loss

    class Out(dict):
        pass

    assert default_loss(Out(loss=loss, logits=logits)) is loss
    y = torch.randint(0, 5, (2, 3))
    assert default_loss(logits, y).item() == pytest.approx(F.cross_entropy(logits.reshape(6, 5), y.reshape(6)).item())
    assert default_loss(logits).item() == pytest.approx(logits.mean().item())


def test_batches_from_callable_and_iterator_are_drawn_once():
    calls = []

    def make(step):
        calls.append(step)
        return (torch.randn(4, 8),)

    res = coord_check(lambda w: MLP(in_features=8, width=w, out_features=3), make, widths=[8, 16], steps=2,
                      seeds=1, parametrizations=("sp",))
    assert calls == [0, 1]
    assert {r["step"] for r in res.records} == {0, 1}
    it = iter([Batch((torch.randn(4, 8),), labels=torch.randint(0, 3, (4,)))])  # cycles when shorter than steps
    res2 = coord_check(lambda w: MLP(in_features=8, width=w, out_features=3), it, widths=[8, 16], steps=2,
                       seeds=[3], optimizer="SGD", lr=0.1, parametrizations=("sp",))
    assert {r["seed"] for r in res2.records} == {3}


def test_same_seed_same_model_across_runs():
    x = torch.randn(4, 8)
    a = coord_check(lambda w: MLP(in_features=8, width=w), x, widths=[8, 16], steps=2, seeds=1,
                    parametrizations=("sp",))
    b = coord_check(lambda w: MLP(in_features=8, width=w), x, widths=[8, 16], steps=2, seeds=1,
                    parametrizations=("sp",))
    assert [r["size"] for r in a.records] == [r["size"] for r in b.records]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        coord_check(lambda w: MLP(width=w), torch.randn(2, 32), widths=[32])
    with pytest.raises(ValueError):
        coord_check(lambda w: MLP(width=w), torch.randn(2, 32), widths=[32, 64], parametrizations=("ntk",))
