"""Reuse one width's analysis for the others (issue 20): tools that call ``muplify()`` many times on the same
architecture — :func:`muplify.coord_check` at every width and seed, ``tune`` at every trial — capture once.

The plan is symbolic in the width (fans like ``4*w``, every scaling dimension an expression in ``w``), so the plan of
a model of the same structure at another width is the analysed plan evaluated there.  Inside :func:`reusing`, the
first :func:`muplify.analyze` (and so :func:`muplify.muplify`) of a structure is analysed as usual and remembered;
a later call on a model with the same *structure key* (model class, module tree, parameter names, ranks, dtypes and
ties, buffers, options, base width, example inputs' shapes; not ``hp`` nor ``overrides``, which apply afterwards)
re-evaluates it at that model's width:

* the new width is solved from a parameter axis of a scaling dimension ``c*w``; every parameter's shape predicted
  from the scaling dimensions must equal the model's (and every fan the layout reads must equal the fan
  expression at the new width), or the call falls back to a fresh analysis (``ReuseStats.fallbacks`` says why);
* channel slices of fused projections (a query inside a fused qkv) scale with their tensor's axis, exactly or not at
  all (a fallback);
* the init rule is read again from the new model's values (a fact of the values, not of the structure);
* ``plan.notes`` keeps the analysed width's lines and says the plan was reused (``capture_seconds`` is 0).

Outside :func:`reusing` nothing is cached: ``muplify()`` always analyses.

    >>> from muplify import muplify, reuse
    >>> from muplify.models import MLP
    >>> with reuse.reusing() as cache:
    ...     plans = [muplify(MLP(width=w), base_width=32).plan for w in (64, 128)]
    >>> cache.stats.hits, plans[1].width, str(plans[1]["net.2.weight"].fan_in)
    (1, 128, 'w')
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Hashable

import sympy
import torch
import torch.nn as nn

from .options import HyperParams, Options
from .plan import Plan, _evaluate, _parse

__all__ = ["reusing", "plan_for", "respecialize", "structure_key", "ReuseCache", "ReuseStats", "REUSE_NOTE"]

REUSE_NOTE = "capture: reused the analysis of width {w0} at width {w1} (muplify.reuse: same structure)"
MAX_ENTRIES = 16  # structures remembered per cache (a coord_check has one per parametrization)
MAX_SCOPES = 4  # named caches kept per process (tune: one per study)


@dataclass
class ReuseStats:
    """What a cache did: analyses reused, analyses run, and why a reuse was refused."""

    hits: int = 0
    misses: int = 0
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    plan: dict  # the analysed plan's facts (Plan.to_dict), before overrides
    lint: list[str]
    names: frozenset  # parameter names (guards a key collision)


@dataclass
class ReuseCache:
    """Analysed plans by structure key (the latest :data:`MAX_ENTRIES`)."""

    entries: OrderedDict = field(default_factory=OrderedDict)
    stats: ReuseStats = field(default_factory=ReuseStats)


_ACTIVE: contextvars.ContextVar[ReuseCache | None] = contextvars.ContextVar("muplify_reuse", default=None)
_SCOPES: OrderedDict[Hashable, ReuseCache] = OrderedDict()


@contextlib.contextmanager
def reusing(scope: Hashable | None = None):
    """Within the block, ``muplify()``/``analyze()`` reuse the analysis of a structure already analysed.  Nested
    blocks share the outer cache.  ``scope``: a name whose cache outlives the block (the latest
    :data:`MAX_SCOPES` in the process; tune workers keep one per study across trials)."""
    cache = _ACTIVE.get()
    if cache is None:
        if scope is None:
            cache = ReuseCache()
        else:
            cache = _SCOPES.pop(scope, None) or ReuseCache()
            _SCOPES[scope] = cache
            while len(_SCOPES) > MAX_SCOPES:
                _SCOPES.popitem(last=False)
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def _input_signature(value: Any) -> tuple:
    leaves, spec = torch.utils._pytree.tree_flatten(value)
    sig = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            sig.append(("tensor", tuple(x.shape), x.dtype, x.device.type))
        elif isinstance(x, (int, float, str, bool, type(None))):
            sig.append((type(x).__name__, x))
        else:
            sig.append((type(x).__qualname__, id(x)))  # unknown objects: the same object only
    return str(spec), tuple(sig)


def structure_key(model: nn.Module, *, base_width: int | None, width: int | None, example_inputs: Any,
                  example_kwargs: Any, base_shapes: dict | None, options: Options) -> tuple:
    """What must be equal for one analysis to stand for another (everything but the width's sizes and ``hp``):
    class, module tree and plain non-int attributes, parameter names/ranks/dtypes/ties, buffers, the options, the
    base width or base model's shapes, and the example inputs' structure and shapes."""
    first: dict[int, str] = {}
    params = tuple((n, p.dim(), p.dtype, p.requires_grad, first.setdefault(id(p), n))
                   for n, p in model.named_parameters(remove_duplicate=False))
    modules = []
    for name, m in model.named_modules():
        attrs = tuple(sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and (
            isinstance(v, (str, bool, type(None))) or (isinstance(v, float) and not isinstance(v, bool)))))
        modules.append((name, type(m), attrs))
    buffers = tuple((n, b.dim(), b.dtype) for n, b in model.named_buffers())
    return (type(model), tuple(modules), params, buffers, base_width, width, options,
            None if base_shapes is None else tuple(sorted(base_shapes.items())),
            _input_signature(example_inputs), _input_signature(example_kwargs))


def plan_for(model: nn.Module, compute: Callable[[], Plan], *, hp: HyperParams, **key_parts: Any) -> Plan:
    """``compute()`` (the analysis), or inside :func:`reusing` the cached analysis of the same structure evaluated
    at this model's width (a fresh analysis when it does not fit).  ``key_parts``: :func:`structure_key`'s."""
    cache = _ACTIVE.get()
    if cache is None:
        return compute()
    key = structure_key(model, **key_parts)
    entry = cache.entries.get(key)
    if entry is not None:
        plan, why = respecialize(entry, model, hp)
        if plan is not None:
            cache.entries.move_to_end(key)
            cache.stats.hits += 1
            return plan
        cache.stats.fallbacks.append(why)
    plan = compute()
    cache.stats.misses += 1
    cache.entries[key] = _Entry(plan.to_dict(), list(plan.lint), frozenset(plan.params))
    while len(cache.entries) > MAX_ENTRIES:
        cache.entries.popitem(last=False)
    return plan


def _scaled(v: int, t0: int, t1: int) -> int | None:
    """``v`` (a channel boundary on an axis of size ``t0``) on the same axis at size ``t1``; None unless exact."""
    x = Fraction(v * t1, t0) if t0 else Fraction(v)
    return int(x) if x.denominator == 1 else None


def respecialize(entry: _Entry, model: nn.Module, hp: HyperParams) -> tuple[Plan | None, str]:
    """The cached plan evaluated at ``model``'s width, or (None, why it does not fit)."""
    from .classify import detect_init_rules

    d = copy.deepcopy(entry.plan)
    named = dict(model.named_parameters())
    if frozenset(named) != entry.names:
        return None, "parameter names differ"
    sym = sympy.Symbol(d.get("width_symbol", "w"), positive=True, integer=True)
    w0 = d["width"]
    exprs = {int(size): _parse(str(e), sym) for size, e, _ in d["scaling_dims"]}
    # the new width, from the axes of every linear scaling dimension c*w
    votes: Counter = Counter()
    for p in d["params"]:
        actual = tuple(named[p["name"]].shape)
        if len(actual) != len(p["shape"]):
            return None, f"{p['name']}: rank {len(actual)}, analysed {len(p['shape'])}"
        for s, a in zip(p["shape"], actual):
            e = exprs.get(s)
            if e is not None and e.has(sym):
                c = sympy.simplify(e / sym)
                if c.is_Rational and c > 0:
                    w = Fraction(a) / Fraction(int(c.p), int(c.q))
                    if w.denominator == 1:
                        votes[int(w)] += 1
    if exprs and not votes:
        return None, "no parameter axis gives the width"
    w1 = votes.most_common(1)[0][0] if votes else w0

    def at(size: int) -> int:
        e = exprs.get(size)
        return _evaluate(e, sym, w1) if e is not None else size

    for p in d["params"]:
        actual = list(named[p["name"]].shape)
        predicted = [at(s) for s in p["shape"]]
        if predicted != actual:
            return None, f"{p['name']}: shape {tuple(actual)}, predicted {tuple(predicted)} at width {w1}"
        lay = p.get("layout")
        if lay is not None:
            for axes, fan in ((lay[0], p["fan_in"]), (lay[1], p["fan_out"])):
                prod = 1
                for a in axes:
                    prod *= actual[a]
                if axes and prod != _evaluate(_parse(str(fan), sym), sym, w1):
                    return None, f"{p['name']}: fan {fan} is not the product of its axes at width {w1}"
        p["shape"] = actual
    shape0 = {p["name"]: p for p in entry.plan["params"]}

    def site(s: dict | None) -> bool:
        if s is None:
            return True
        if s.get("channels"):
            a, b, t0 = s["channels"]
            t1 = at(t0)
            a1, b1 = _scaled(a, t0, t1), _scaled(b, t0, t1)
            if a1 is None or b1 is None:
                return False
            s["channels"] = (a1, b1, t1)
        for f in s.get("fold", []):
            if f.get("axis") is None:
                continue
            t0 = shape0[f["param"]]["shape"][f["axis"]]
            t1 = named[f["param"]].shape[f["axis"]]
            a1, b1 = _scaled(f["start"], t0, t1), _scaled(f["stop"], t0, t1)
            if a1 is None or b1 is None:
                return False
            f["start"], f["stop"] = a1, b1
        return True

    for s in d["sites"]:
        if not site(s):
            return None, f"channels of {s['module']} do not scale exactly"
    for a in d["attention"]:
        if not site(a.get("query")):
            return None, f"query channels of {a['module']} do not scale exactly"
    d["width"] = w1
    d["scaling_dims"] = [[at(int(size)), e, n] for size, e, n in d["scaling_dims"]]
    d["hp"] = hp.to_dict()
    d["notes"] = [n for n in d["notes"] if not n.startswith("init of ")]
    d["notes"].append(REUSE_NOTE.format(w0=w0, w1=w1))
    plan = Plan.from_dict(d)
    detect_init_rules(plan, model)  # a fact of this model's values
    plan.capture_seconds = 0.0
    plan.lint = list(entry.lint)
    return plan, ""
