"""Issue 20: reusing one width's analysis at another width (muplify/reuse.py) gives the plan a fresh capture gives,
and falls back to a fresh analysis whenever the structure does not fit."""
from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn as nn

from muplify import analyze, muplify, reuse
from muplify.models import MLP
from muplify_dev.zoo import build, widths_for


def _facts(plan) -> dict:
    """Everything the plan says; notes without the capture lines, numbers blanked (a width-analysis note counts
    the sizes it saw at the analysed width) and unordered (the init reading's lines are re-made)."""
    d = plan.to_dict()
    d["notes"] = sorted(re.sub(r"\d+(\.\d+)?", "N", n) for n in d["notes"] if not n.startswith("capture: "))
    d["warnings"] = sorted(re.sub(r"\d+(\.\d+)?", "N", n) for n in plan.warnings)
    return d


def _analyze(name: str, width: int, base: int, **kw):
    torch.manual_seed(0)
    model, args, kwargs = build(name, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(model, base, example_inputs=args, example_kwargs=kwargs, **kw)


@pytest.mark.parametrize("name", ["mlp", "gpt_sdpa", "hf_llama", "hf_bert", "timm_vit", "cnn"])
def test_reused_plan_equals_fresh_plan_at_another_width(name):
    base, width = widths_for(name)
    other = 2 * width
    fresh = _analyze(name, other, base)
    with reuse.reusing() as cache:
        first = _analyze(name, width, base)
        reused = _analyze(name, other, base, hp={"output_mult": 2.0})
    assert cache.stats.misses == 1 and cache.stats.hits == 1, cache.stats
    assert first.width == width and reused.width == other
    assert any(n.startswith("capture: reused the analysis of width") for n in reused.notes)
    assert reused.capture_seconds == 0.0
    a, b = _facts(reused), _facts(fresh)
    assert a["hp"]["output_mult"] == 2.0  # hp is not part of the structure: the call's own applies
    a["hp"] = b["hp"]
    for key in b:
        assert a[key] == b[key], f"{name}: {key} differs"
    # what the policy derives from the facts is the same too
    assert {n: (r.init_scale, dict(r.lr_mult)) for n, r in reused.replace(hp=fresh.hp).rules().items()} == \
        {n: (r.init_scale, dict(r.lr_mult)) for n, r in fresh.rules().items()}


def test_same_width_reuse_rereads_the_init_from_the_values():
    with reuse.reusing() as cache:
        a = muplify(MLP(width=64), base_width=32)
        m = MLP(width=64)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.02)  # a fixed-std init now: the rule is read from these values
        b = muplify(m, base_width=32)
    assert cache.stats.hits == 1
    assert a.plan["net.2.weight"].init_rule == "fan_in" and b.plan["net.2.weight"].init_rule == "fixed"


class Odd(nn.Module):
    """Hidden width w, but a second layer whose size does not follow the first one's expression."""

    def __init__(self, w: int, extra: int):
        super().__init__()
        self.a = nn.Linear(8, w)
        self.b = nn.Linear(w, extra)
        self.c = nn.Linear(extra, 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_shape_the_symbolic_plan_does_not_predict_falls_back():
    x = torch.randn(2, 8)
    with reuse.reusing() as cache:
        muplify(Odd(64, 128), base_width=32, example_inputs=(x,))  # extra = 2w
        mu = muplify(Odd(128, 192), base_width=32, example_inputs=(x,))  # extra = 1.5w: not what 2*w predicts
    assert cache.stats.hits == 0 and cache.stats.misses == 2
    assert "predicted" in cache.stats.fallbacks[0], cache.stats.fallbacks
    fresh = muplify(Odd(128, 192), base_width=32, example_inputs=(x,))
    assert mu.plan.to_dict() == fresh.plan.to_dict()


def test_other_structure_or_options_are_other_entries():
    x = torch.randn(2, 8)
    with reuse.reusing() as cache:
        muplify(Odd(64, 128), base_width=32, example_inputs=(x,))
        muplify(Odd(64, 128), base_width=32, example_inputs=(torch.randn(3, 8),))  # other input shapes
        muplify(Odd(64, 128), base_width=32, example_inputs=(x,), parametrization="spectral")
        muplify(MLP(width=64), base_width=32)
    assert cache.stats.hits == 0 and cache.stats.misses == 4


def test_nothing_is_cached_outside_reusing():
    plans = [muplify(MLP(width=w), base_width=32).plan for w in (64, 64)]
    assert not any("reused" in n for p in plans for n in p.notes)


def test_scoped_cache_outlives_the_block():
    with reuse.reusing(scope=("test", 1)):
        muplify(MLP(width=64), base_width=32)
    with reuse.reusing(scope=("test", 1)) as cache:
        mu = muplify(MLP(width=128), base_width=32)
    assert cache.stats.hits == 1 and mu.plan.width == 128
