"""Issue 18 item 7: noise and friction.  The μP lint is shown once per coordinate check (not once per width),
``mu.optimizer`` says what is wrong with a non-optimizer argument without dumping a repr, and a scaling dimension
rounded to a multiple (SwiGLU's 8w/3 to a multiple of 8) gets a note on its symbolic base size."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from muplify import analyze, coord_check, muplify
from muplify.errors import OptimizerRuleError
from muplify.models import MLP


class GainMLP(nn.Module):
    """Trainable LayerNorm gains: a μP lint warning on every muplify of it."""

    def __init__(self, w):
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(8, w), nn.LayerNorm(w), nn.Linear(w, 4)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.inp(x))))


def test_coord_check_shows_the_lint_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no once-per-location filter hides a repeat: only lint_once may
        coord_check(GainMLP, torch.randn(16, 8), labels=torch.randint(0, 4, (16,)), widths=[16, 32, 64], steps=1,
                    seeds=2, progress=False)
    lint = [w for w in caught if str(w.message).startswith("muplify: μP lint")]
    assert len(lint) == 1, [str(w.message)[:80] for w in lint]
    assert "trainable norm gains" in str(lint[0].message)
    with warnings.catch_warnings(record=True) as caught:  # outside a tool, every muplify still warns
        warnings.simplefilter("always")
        for w in (16, 32):
            muplify(GainMLP(w), base_width=16, example_inputs=(torch.randn(2, 8),))
    assert len([w for w in caught if str(w.message).startswith("muplify: μP lint")]) == 2


def test_the_demo_shows_the_lint_at_most_once(monkeypatch, tmp_path):
    from muplify.tools import demo

    calls = []
    real = demo.coord_check

    def small(factory, **kw):  # the demo's own flow, at two small widths
        calls.append(kw)
        return real(factory, widths=[32, 64], seeds=1, steps=1, progress=False)

    monkeypatch.setattr(demo, "coord_check", small)
    monkeypatch.setattr(demo, "gpt_factory", lambda: (lambda w: GainMLPLM(w)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            demo.run_demo(out=str(tmp_path), quick=True, verbose=False)
        except Exception:
            pass  # the plot/explain of a toy model may differ; the lint count is what is checked
    assert len([w for w in caught if str(w.message).startswith("muplify: μP lint")]) == 1 and calls


class GainMLPLM(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.emb, self.norm, self.out = nn.Embedding(256, w), nn.LayerNorm(w), nn.Linear(w, 256)

    def forward(self, x):
        return self.out(self.norm(self.emb(x)))


def _mu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(MLP(in_features=4, width=64), base_width=32)


def test_optimizer_rejects_a_module_class_clearly():
    with pytest.raises(OptimizerRuleError, match=r"torch\.nn\.modules\.linear\.Linear is not an optimizer class") as e:
        _mu().optimizer(nn.Linear, lr=1e-3)
    assert "no μP rule" not in str(e.value)


def test_optimizer_instance_is_named_briefly():
    inst = torch.optim.AdamW(nn.Linear(300, 300).parameters(), lr=1e-3)
    with pytest.raises(OptimizerRuleError) as e:
        _mu().optimizer(inst, lr=1e-3)
    msg = str(e.value)
    assert "an instance of AdamW (1 param group)" in msg and "mu.optimizer(torch.optim.AdamW, lr=...)" in msg
    assert "Parameter Group" not in msg and "amsgrad" not in msg and len(msg) < 300, msg
    assert _mu().optimizer(torch.optim.AdamW, lr=1e-3).__class__ is torch.optim.AdamW
    assert _mu().optimizer("sgd", lr=1e-3).__class__ is torch.optim.SGD


class SwiGLU(nn.Module):
    def __init__(self, w, multiple_of=8):
        super().__init__()
        h = multiple_of * (int(8 * w / 3) // multiple_of)
        self.inp, self.out = nn.Linear(16, w), nn.Linear(w, 16)
        self.gate, self.up, self.down = nn.Linear(w, h, bias=False), nn.Linear(w, h, bias=False), nn.Linear(h, w)

    def forward(self, x):
        x = self.inp(x)
        return self.out(self.down(nn.functional.silu(self.gate(x)) * self.up(x)))


def test_swiglu_hidden_rounded_to_a_multiple_gets_a_note():
    x = (torch.randn(2, 16),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = analyze(SwiGLU(256), base_width=64, example_inputs=x)  # 680 at w = 256; 168 at 64, not 170
        exact = analyze(SwiGLU(384), base_width=96, example_inputs=x)  # 1024 = 8/3 · 384 exactly
    notes = [s for s in plan.notes if "680 = 85*w/32" in s]
    assert notes and "8/3·w" in notes[0] and "170" in notes[0] and "base=" in notes[0], plan.notes
    assert notes[0] in str(plan)
    assert plan["gate.weight"].base_fan_out == 170  # the symbolic base fan the note is about
    assert not [s for s in exact.notes if "close to" in s]
