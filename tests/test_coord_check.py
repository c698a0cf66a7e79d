"""Coordinate check: with its defaults (no muplify options, default lr/steps/seeds, a real loss, the built-in corpus
for language models), SP must fail and a correct μP must pass on the built-in GPT (tied and untied readout), an MLP,
a CNN and HF GPT-2; plus the recorder, the readout band, the likely cause, progress, the verdict and the figure.

Each model's check runs once per module (fixture) and is shared by its tests.  None of them zero-initialises the
readout: a non-zero readout starts at Θ(1/√width) under μP, and the check must recognise it as such.
"""
from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import coord_check
from muplify.models import CNN, GPT, MLP
from muplify.tools.batch import Batch, output_loss
from muplify.tools.coord_plot import figure
from muplify.tools.coord_record import Recorder
from muplify.tools.coord_result import DEFAULT_TOL, READOUT_INIT_SLOPE, CoordCheckResult, slope


def _describe(res: CoordCheckResult, param: str) -> str:
    fails = res.failures(param)
    return f"{param} failures: " + "; ".join(
        f"{k}: {' '.join(f'{v:+.2f}' for v in s)}" for k, s in fails.items()) + "\n" + res.table()


# ------------------------------------------------------------------------------------------------ model checks
@pytest.fixture(scope="module")
def gpt_untied_result():
    return coord_check(lambda w: GPT(d_model=w, n_layer=2, tie_weights=False))


@pytest.fixture(scope="module")
def gpt_tied_result():
    return coord_check(lambda w: GPT(d_model=w, n_layer=2))


@pytest.fixture(scope="module")
def mlp_result():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
    return coord_check(lambda w: MLP(in_features=20, width=w, out_features=10, depth=3), x, labels=y)


@pytest.fixture(scope="module")
def cnn_result():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    return coord_check(lambda w: CNN(width=w), x, labels=y, widths=[16, 32, 64, 128])


def _hf_gpt2(width: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_positions=40, n_embd=width, n_layer=2, n_head=width // 16, use_cache=False,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def gpt2_result():
    pytest.importorskip("transformers")
    return coord_check(_hf_gpt2)  # tied lm_head; token ids: the corpus bytes modulo the vocabulary


MODEL_RESULTS = ["gpt_untied_result", "gpt_tied_result", "mlp_result", "cnn_result", "gpt2_result"]


@pytest.mark.parametrize("fixture", MODEL_RESULTS)
def test_sp_fails(fixture, request):
    res = request.getfixturevalue(fixture)
    assert not res.passed("sp"), res.table()
    # the failure is growth with width, not noise: the worst SP slope is clearly positive
    worst = max(v for s in res.failures("sp").values() for v in s)
    assert worst > 0.5, res.table()


@pytest.mark.parametrize("fixture", MODEL_RESULTS)
def test_mup_passes_by_default(fixture, request):
    res = request.getfixturevalue(fixture)
    assert res.passed("mup"), _describe(res, "mup")
    assert res.config["muplify_kwargs"] == {}


@pytest.mark.parametrize("fixture", ["gpt_untied_result", "gpt_tied_result", "gpt2_result"])
def test_readout_starts_at_inverse_sqrt_width_and_is_recognised(fixture, request):
    res = request.getfixturevalue(fixture)
    assert {"lm_head", "<output>"} <= set(res.readouts)
    assert not any(r.endswith("wte") for r in res.readouts)  # a tied embedding's lookup is an input layer
    assert res.slopes["mup"]["lm_head"][0] == pytest.approx(READOUT_INIT_SLOPE, abs=0.1)
    # without the readout band the same records fail: the band is what recognises the known init slope
    plain = CoordCheckResult(res.records, widths=res.widths, steps=res.steps, seeds=res.seeds,
                             parametrizations=res.parametrizations, readouts=())
    assert not plain.passed("mup") and "lm_head" in plain.failures("mup")
    assert "lm_head *" in res.table() and "readout layers (*)" in res.table()


class _FunctionalReadoutLM(nn.Module):
    """The readout is ``F.linear`` with the embedding's weight: muplify scales the output of ``ln`` instead."""

    def __init__(self, width: int, vocab: int = 256):
        super().__init__()
        self.wte, self.h, self.ln = nn.Embedding(vocab, width), nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, x):
        return F.linear(self.ln(self.h(self.wte(x)).relu()), self.wte.weight)


def test_a_functional_readout_is_the_model_output_and_its_multiplier_site_is_not_an_activation():
    res = coord_check(_FunctionalReadoutLM, seeds=1)
    assert res.readouts == ["<output>"]
    assert abs(res.slopes["mup"]["ln"][0]) < 0.05  # recorded before muplify's 1/m hook on its output
    assert res.passed("mup") and not res.passed("sp"), res.table()


def test_default_data_and_loss_are_real(gpt_tied_result, mlp_result, gpt2_result):
    assert "built-in corpus" in gpt_tied_result.config["data"]
    assert gpt_tied_result.config["loss"] == "cross-entropy against the labels"
    assert "mod 100" in gpt2_result.config["data"]
    assert mlp_result.config["loss"] == "cross-entropy against the labels"
    # never a statistic of the output: without labels and without a loss of the model's own, there is none
    with pytest.raises(ValueError, match="no labels"):
        output_loss(torch.randn(2, 3))


def test_without_labels_the_loss_is_cross_entropy_against_random_labels():
    res = coord_check(lambda w: MLP(in_features=8, width=w, out_features=3), torch.randn(4, 8), widths=[8, 16],
                      steps=2, seeds=1, parametrizations=("sp",))
    assert res.config["loss"].startswith("cross-entropy against random labels")


def test_gpt_records_attention_logits_and_output(gpt_untied_result):
    layers = set(gpt_untied_result.layers)
    assert {"blocks.0.attn:attn_logits", "blocks.1.attn:attn_logits", "<output>", "blocks.0.attn.c_attn",
            "lm_head"} <= layers
    # SP with GPT-2's fixed-std init: q and k coordinates each grow like sqrt(width) (head_dim fixed), so the
    # attention logits grow like width
    assert gpt_untied_result.slopes["sp"]["blocks.0.attn:attn_logits"][0] > 0.7


def test_gpt2_records_sdpa_logits(gpt2_result):
    names = [n for n in gpt2_result.layers if n.endswith(":attn_logits") or n.endswith(":softmax_in")]
    assert len(names) == 2, gpt2_result.layers


def test_a_broken_mup_fails_with_its_cause():
    # a hidden weight declared an input layer keeps the SP learning rate: its output grows with width
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
    res = coord_check(lambda w: MLP(in_features=20, width=w), x, labels=y, parametrizations=("mup",), seeds=1,
                      muplify_kwargs={"overrides": {"net.2.weight": {"role": "input"}}})
    assert not res.passed("mup")
    cause = res.likely_cause("mup")
    # the input role keeps the SP init too, so the layer is off before any update: the init, not the learning rate
    assert cause.split()[0] in ("net.2", "net.3") and "already off at step 0" in cause and "mu.plan" in cause
    assert "likely cause: net." in res.table()


def test_a_diverged_run_fails_and_says_so():
    res = coord_check(lambda w: MLP(in_features=8, width=w, out_features=3), torch.randn(16, 8),
                      labels=torch.randint(0, 3, (16,)), widths=[8, 16], steps=3, seeds=1, optimizer="SGD", lr=1e30,
                      parametrizations=("mup",))
    assert not res.passed("mup")
    assert any(math.isinf(r["size"]) for r in res.records)  # the steps after the divergence count as infinite
    assert "diverged" in res.likely_cause("mup")


# --------------------------------------------------------------------------------------------------- progress
def test_progress_is_on_when_stderr_is_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    def run():
        coord_check(lambda w: MLP(in_features=8, width=w, out_features=3), torch.randn(4, 8), widths=[8, 16],
                    steps=1, seeds=1, parametrizations=("sp",))

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    run()
    assert "coord_check" in tty.getvalue() and "/2 [" in tty.getvalue() and "SP width 8" in tty.getvalue()
    pipe = io.StringIO()  # not a terminal (a log file, CI): quiet
    monkeypatch.setattr("sys.stderr", pipe)
    run()
    assert pipe.getvalue() == ""


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
    x = torch.randn(2, 5, 16)
    sizes = {}
    for mode in ("sdpa", "manual"):
        torch.manual_seed(0)
        m = _Attn(mode, scale)
        rec = Recorder(m)
        out, sizes[mode] = rec.forward(m, Batch((x,)))
        rec.remove()
    a, b = sizes["sdpa"]["<model>:attn_logits"], sizes["manual"]["<model>:softmax_in"]
    assert a == pytest.approx(b, rel=1e-5)
    assert sizes["sdpa"]["<output>"] == pytest.approx(sizes["manual"]["<output>"], rel=1e-5)
    assert set(sizes["sdpa"]) == {"proj", "<model>:attn_logits", "<output>"}


def test_recorder_names_repeated_calls_and_removes_hooks():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x)), x.sum()

    m = Twice()
    rec = Recorder(m)
    _, sizes = rec.forward(m, Batch((torch.randn(3, 4),)))
    rec.remove()
    assert list(sizes) == ["lin", "lin#2", "<output>"]
    assert not m._forward_hooks and not m.lin._forward_pre_hooks


# ------------------------------------------------------------------------------------------------ verdict, result
def test_default_tolerance_is_mups_criterion_per_doubling():
    assert DEFAULT_TOL == pytest.approx(math.log(1.2) / math.log(2))
    assert slope([32, 64], [1.0, 1.2]) == pytest.approx(DEFAULT_TOL)


def test_slope_edge_cases():
    assert slope([1, 2, 4], [3.0, 3.0, 3.0]) == pytest.approx(0.0)
    assert slope([1, 2, 4], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert slope([1, 2, 4], [0.0, 0.0, 0.0]) == 0.0  # zero-initialised readout at step 0
    assert math.isnan(slope([1, 2], [1.0, float("nan")]))
    assert slope([1, 2], [0.0, 1.0]) == float("inf")


def _synthetic(n_layers=3, slope_sp=1.0, slope_mup=0.05, readout_slope=-0.5, zero_layer=False):
    """Records with known slopes: layer "a" grows under SP, "b" is flat, "c" = "c2" (identical series), the
    readout "head" (and "<output>", identical) shrinks like width^readout_slope, "z" is exactly zero."""
    records = []
    for p, s in (("sp", slope_sp), ("mup", slope_mup)):
        for w in (32, 64, 128):
            for t in range(2):
                rows = {"a": 0.1 * (w / 32) ** (s * t), "b": 0.5, "c": 0.2 * (w / 32) ** (s * t),
                        "c2": 0.2 * (w / 32) ** (s * t),
                        "head": 0.3 * (w / 32) ** readout_slope, "<output>": 0.3 * (w / 32) ** readout_slope}
                rows.update({f"extra.{k}": 0.011 * (1 + k) for k in range(n_layers)})
                if zero_layer:
                    rows["z"] = 0.0
                records += [dict(param=p, width=w, seed=0, step=t, layer=k, size=v) for k, v in rows.items()]
    return CoordCheckResult(records, widths=[32, 64, 128], steps=2, seeds=[0], parametrizations=["sp", "mup"],
                            readouts=["head"])


def test_result_verdict_table_json(tmp_path):
    res = _synthetic()
    assert res.readouts == ["head", "<output>"]  # "<output>" joins by carrying exactly the readout's sizes
    assert not res.passed("sp") and res.passed("mup")
    assert set(res.failures("sp")) == {"a", "c", "c2"}
    assert res.slopes["sp"]["a"] == pytest.approx([0.0, 1.0])
    table = res.table()
    assert "FAIL" in table and "SP FAIL (3/" in table and "μP PASS" in table and "step t = " in table
    path = res.to_json(tmp_path / "cc.json")
    d = json.loads(open(path).read())
    assert d["verdict"]["sp"]["passed"] is False and d["verdict"]["mup"]["passed"] is True
    assert d["readouts"] == ["head", "<output>"]
    again = CoordCheckResult.from_json(path)
    assert again.slopes == res.slopes and again.readouts == res.readouts
    with pytest.raises(KeyError):
        res.passed("nope")


def test_a_readout_shrinking_faster_than_its_init_fails_with_its_cause():
    res = _synthetic(readout_slope=-1.0)  # e.g. the readout lr divided by the width
    assert not res.passed("mup") and set(res.failures("mup")) == {"head", "<output>"}
    assert res.likely_cause("mup").startswith("The readout (head) shrinks faster than 1/√width")


def test_probes_inside_a_readout_module_get_the_readout_band():
    """A MoE router is output-like: the softmax it applies inside its module (PhiMoE's sparsemixer) sees its logits,
    which start at Θ(1/√width) like any readout's."""
    records = []
    for w in (32, 64, 128):
        for layer, size in (("router", (w / 32) ** -0.6), ("router:softmax_in", (w / 32) ** -0.65),
                            ("router_norm:softmax_in", (w / 32) ** -0.5), ("mlp", 1.0)):
            records.append(dict(param="mup", width=w, seed=0, step=0, layer=layer, size=size))
    res = CoordCheckResult(records, widths=[32, 64, 128], steps=1, seeds=[0], parametrizations=["mup"],
                           readouts=["router"])
    assert res.readouts == ["router", "router:softmax_in"]  # not a module that merely starts with the same name
    assert set(res.failures("mup")) == {"router_norm:softmax_in"}


def test_infinite_sizes_survive_json(tmp_path):
    res = _synthetic()
    res.records.append(dict(param="mup", width=64, seed=0, step=1, layer="b", size=math.inf))
    res = CoordCheckResult(res.records, widths=res.widths, steps=2, seeds=[0], parametrizations=["sp", "mup"])
    again = CoordCheckResult.from_json(res.to_json(tmp_path / "inf.json"))
    assert not again.passed("mup") and again.slopes == res.slopes


# ---------------------------------------------------------------------------------------------------- the figure
def test_figure_names_failing_layers_greys_passing_ones_and_draws_the_band(tmp_path):
    res = _synthetic(n_layers=30, zero_layer=True)
    fig = figure(res)
    sp_axes = [ax for ax in fig.axes if ax.get_title().startswith("SP, step")]
    legend_texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    # failing layers are named (identical series together), the passing ones counted, in the SP legend
    assert any(t.endswith("a") for t in legend_texts) and any("c = c2" in t for t in legend_texts)
    assert any(t.startswith("34 passing layers") for t in legend_texts), legend_texts
    ax = sp_axes[1]  # step 1: "a" and "c" grow
    data_lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    grey = [ln for ln in data_lines if ln.get_color() == "#a8a8a8"]
    colored = [ln for ln in data_lines if ln.get_color() != "#a8a8a8"]
    assert len(colored) == 2  # "a" and the merged "c = c2"
    assert len(grey) == 30 + 3  # extras, "b", "z", the merged readout
    assert all(ln.get_linewidth() > g.get_linewidth() for ln in colored for g in grey)
    assert any(t.get_text() == "1" for t in ax.texts)  # failing lines are numbered at their end
    # exact zeros are drawn on the marked strip at the bottom, labelled 0
    assert "0" in [t.get_text() for t in ax.get_yticklabels()]
    zero_y = ax.get_yticks()[0]
    assert any(list(ln.get_ydata()) == [zero_y] * 3 for ln in grey)
    assert ax.collections  # the pass band (a shaded cone)
    captions = " ".join(t.get_text() for t in fig.texts)
    assert "step t: the forward pass after t optimizer updates" in captions and "exactly 0" in captions
    png = res.plot(tmp_path / "cc.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------- arguments
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
    with pytest.raises(ValueError, match="at least two widths"):
        coord_check(lambda w: MLP(width=w), torch.randn(2, 32), widths=[32])
    with pytest.raises(ValueError):
        coord_check(lambda w: MLP(width=w), torch.randn(2, 32), widths=[32, 64], parametrizations=("ntk",))
    with pytest.raises(ValueError, match="only language models"):
        coord_check(lambda w: MLP(width=w), widths=[32, 64])  # no batch, and not a language model
