"""Module kinds: which part of the network a parameter belongs to (embedding, query, key, value, attention output,
MLP in / out, norm, readout), a fact of the plan the per-module hyperparameters are keyed by (Complete(d)P, Mlodozeniec
et al. 2025, arXiv 2512.22382: per-module learning-rate and init multipliers tuned on a small proxy transfer).

Every parameter gets

* ``module_key``: its module path with block indices replaced by ``*`` (``blocks.*.attn.c_attn``), so the same
  module across layers shares one key (a parameter directly on the root module: its own name); an index is a block
  index when a sibling index holds the same parameters with the same shapes (:func:`module_keys`);
* ``module_kind``: a :class:`ModuleKind` value, or, where nothing decides one, its role (``"hidden"``, ...);
* ``module_kind_by``: how the kind was decided — ``"graph: <evidence>"`` (the attention op's query / key / value
  operands traced to the module computing them, the readout and embedding facts, norm gains, the fan ratio of an
  MLP projection), ``"name: <hint>"`` (a marked fallback: the module's name, used only where the graph gave
  nothing), or ``"role"`` (no kind: the role stands in).

A module's kind is its weight's; its bias (and every other parameter of that module) shares it.  The rules are a
registry (:data:`KIND_RULES`, tried in order; the first that names a kind decides).

    >>> from muplify import analyze
    >>> from muplify.models import GPT
    >>> plan = analyze(GPT(d_model=64, n_layer=2), base_width=32)
    >>> p = plan["blocks.1.mlp.0.weight"]
    >>> p.module_key, p.module_kind, p.module_kind_by
    ('blocks.*.mlp.0', 'mlp_in', 'graph: fan_out = 4·fan_in (an expansion)')
"""
from __future__ import annotations

import re
import types
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sympy

from .registry import register_in

if TYPE_CHECKING:
    from .plan import ParamPlan, Plan

__all__ = ["ModuleKind", "MODULE_KINDS", "KIND_RULES", "kind_rule", "module_keys", "module_path", "assign_module_kinds",
           "kinds_present", "module_keys_present", "NAME_HINTS"]


class ModuleKind(StrEnum):
    """The kinds of module a per-module hyperparameter can be keyed by."""

    EMBEDDING = "embedding"  # an input-role layer (token / position embedding, a network's first layer)
    QUERY = "query"  # the projection computing the attention query
    KEY = "key"
    VALUE = "value"
    QKV = "qkv"  # a fused projection computing more than one of query / key / value
    ATTN_OUT = "attn_out"  # the other projection(s) inside the module calling the attention op
    MLP_IN = "mlp_in"  # a hidden projection expanding the width (fan_out = k·fan_in, k > 1)
    MLP_OUT = "mlp_out"  # a hidden projection contracting it back (fan_in = k·fan_out, k > 1)
    NORM = "norm"  # a normalisation layer's gain (and bias)
    READOUT = "readout"  # the weight producing the model's prediction


MODULE_KINDS: tuple[str, ...] = tuple(k.value for k in ModuleKind)

def module_path(name: str) -> str:
    """The module a parameter belongs to (``blocks.0.attn.c_attn.weight`` -> ``blocks.0.attn.c_attn``); a parameter
    on the root module: ``""``."""
    return name.rpartition(".")[0]


def module_keys(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Parameter name -> its module key: the module path with every *block* index replaced by ``*`` (a parameter on
    the root module: its own name).  An index is a block index when a sibling index under the same parent holds the
    same parameters with the same shapes (``blocks.0`` / ``blocks.1``), so ``mlp.0`` and ``mlp.2`` of a
    ``Sequential`` (different shapes) keep their indices.  ``shapes``: every parameter's name and shape."""
    sig: dict[tuple[str, str], list] = {}  # (parent, index) -> [(rest of the name, shape)]
    for name, shape in shapes.items():
        parts = name.split(".")
        for k, part in enumerate(parts[:-1]):
            if part.isdigit():
                sig.setdefault((".".join(parts[:k]), part), []).append((".".join(parts[k + 1:]), tuple(shape)))
    groups: dict[tuple[str, tuple], int] = {}
    frozen = {key: tuple(sorted(v)) for key, v in sig.items()}
    for (parent, _), v in frozen.items():
        groups[(parent, v)] = groups.get((parent, v), 0) + 1
    out = {}
    for name in shapes:
        parts = name.split(".")
        path = parts[:-1] if len(parts) > 1 else parts
        key = [("*" if p.isdigit() and groups.get((".".join(parts[:k]), frozen[(".".join(parts[:k]), p)]), 0) > 1
                else p) for k, p in enumerate(path)]
        out[name] = ".".join(key)
    return out


# ------------------------------------------------------------------------------------------------ the rules
# a rule: (plan, parameter entry, graph evidence) -> (kind, why) or None.  Graph evidence: module path -> (kind, why)
Evidence = dict[str, tuple[str, str]]
KindRule = Callable[["Plan", "ParamPlan", Evidence], "tuple[str, str] | None"]
KIND_RULES: dict[str, KindRule] = {}


def kind_rule(name: str) -> Callable[[KindRule], KindRule]:
    """Register a rule deciding module kinds (tried in registration order); a taken name raises."""
    return register_in(KIND_RULES, "module-kind rule", name)


@kind_rule("readout")
def _readout(plan, p, ev):
    if p.readout:
        return ModuleKind.READOUT.value, "graph: the model's readout"
    return None


@kind_rule("norm")
def _norm(plan, p, ev):
    if p.gain:
        return ModuleKind.NORM.value, "graph: multiplies a normalised activation"
    return None


@kind_rule("attention")
def _attention(plan, p, ev):
    hit = ev.get(module_path(p.name))
    return (hit[0], "graph: " + hit[1]) if hit is not None else None


@kind_rule("embedding")
def _embedding(plan, p, ev):
    if p.role == "input":
        return ModuleKind.EMBEDDING.value, "graph: input role (fan_in fixed, fan_out grows)"
    return None


@kind_rule("mlp")
def _mlp(plan, p, ev):
    if p.role != "hidden" or p.layout is None:
        return None
    ratio = sympy.simplify(p.fan_out / p.fan_in)
    if not ratio.is_number or ratio == 1:
        return None
    if ratio > 1:
        return ModuleKind.MLP_IN.value, f"graph: fan_out = {_num(ratio)}·fan_in (an expansion)"
    return ModuleKind.MLP_OUT.value, f"graph: fan_in = {_num(1 / ratio)}·fan_out (a contraction)"


def _num(x: sympy.Expr) -> str:
    return str(int(x)) if x.is_integer else f"{float(x):g}"


# name hints: a marked fallback where the graph decided nothing (the kind is then shown as decided by "name")
NAME_HINTS: tuple[tuple[str, re.Pattern], ...] = tuple((k, re.compile(p)) for k, p in (
    (ModuleKind.QKV.value, r"(^|[._])(qkv|c_attn|in_proj|query_key_value|wqkv)$"),
    (ModuleKind.QUERY.value, r"(^|[._])(q_proj|wq|query|q|to_q)$"),
    (ModuleKind.KEY.value, r"(^|[._])(k_proj|wk|key|k|to_k)$"),
    (ModuleKind.VALUE.value, r"(^|[._])(v_proj|wv|value|v|to_v)$"),
    (ModuleKind.ATTN_OUT.value, r"(^|[._])(o_proj|out_proj|wo|dense|to_out)$"),
    (ModuleKind.MLP_IN.value, r"(^|[._])(fc1|up_proj|gate_proj|w1|w3|c_fc|fc_in|dense_h_to_4h)$"),
    (ModuleKind.MLP_OUT.value, r"(^|[._])(fc2|down_proj|w2|fc_out|dense_4h_to_h)$"),
    (ModuleKind.NORM.value, r"(^|[._])(\w*norm\w*|ln\w*)$"),
    (ModuleKind.EMBEDDING.value, r"(^|[._])(\w*embed\w*|wte|wpe)$"),
))


@kind_rule("name")
def _name(plan, p, ev):
    if p.role == "fixed":
        return None
    path = module_path(p.name)
    last = path.rpartition(".")[2] if path else ""
    for kind, pat in NAME_HINTS:
        if last and pat.search(last):
            return kind, f"name: module name '{last}'"
    return None


# ------------------------------------------------------------------------------------------------ assignment
def attention_evidence(ctx: Any) -> Evidence:
    """Module path -> (kind, why) for the projections the attention ops' query / key / value operands are linear
    functions of (traced in the graph), and the other parameterised modules inside the module calling the op
    (attention output).  ``ctx``: the classifier's :class:`muplify.sites.SiteContext`."""
    from .nodes import _inside, module_of
    from .sites import query_site

    found: dict[str, set[str]] = {}
    attn_modules: set[str] = set()
    for site in getattr(ctx.analysis, "attention", []):
        node = site.node
        operands = {"sdpa": ((0, "query"), (1, "key"), (2, "value")), "manual": ((0, "query"), (1, "key")),
                    "manual-v": ((1, "value"),), "sdpa-v": ()}.get(site.kind, ())
        if site.kind in ("sdpa", "manual"):
            attn_modules.add(module_of(node))
        for idx, what in operands:
            if len(node.args) <= idx:
                continue
            proxy = types.SimpleNamespace(args=(node.args[idx],), meta=node.meta, op=node.op, name=node.name)
            try:
                src = query_site(proxy, ctx.dep)
            except Exception:  # noqa: BLE001 - evidence only: a trace that fails leaves the name hints
                continue
            if isinstance(src, tuple):
                found.setdefault(src[0], set()).add(what)
    ev: Evidence = {}
    for mod, whats in found.items():
        if len(whats) == 1:
            (what,) = whats
            ev[mod] = (what, f"the attention op's {what} is computed by it")
        else:
            ev[mod] = (ModuleKind.QKV.value, f"the attention op's {' / '.join(sorted(whats))} are computed by it")
    for name in ctx.params:
        mod = module_path(name)
        if mod in ev or not mod:
            continue
        p = ctx.params[name]
        if p.layout is None or p.role != "hidden":
            continue
        owner = next((a for a in attn_modules if a != mod and _inside(mod, a)), None)
        if owner is not None:
            ev[mod] = (ModuleKind.ATTN_OUT.value, f"inside '{owner}' (which calls the attention op), not its "
                                                 "query / key / value")
    return ev


def assign_module_kinds(plan: "Plan", ctx: Any = None) -> None:
    """Set ``module_key``, ``module_kind`` and ``module_kind_by`` of every entry of ``plan`` (graph evidence from
    the classifier's context ``ctx`` when given).  A module's kind is decided by its weights (a bias, a norm's bias
    follow the module)."""
    ev = attention_evidence(ctx) if ctx is not None else {}
    keys = module_keys({n: p.shape for n, p in plan.params.items()})
    by_module: dict[str, tuple[str, str]] = {}
    order = sorted(plan.params.values(), key=lambda p: (p.layout is None and not p.gain, p.bias_of is not None))
    for p in order:  # weights (and gains) first: they decide their module's kind
        decided = None
        mod = module_path(p.name)
        if mod and mod in by_module:
            decided = by_module[mod]
        else:
            for rule in KIND_RULES.values():
                decided = rule(plan, p, ev)
                if decided is not None:
                    break
            if decided is not None and mod and (p.layout is not None or p.gain):
                by_module[mod] = decided
        kind, why = decided if decided is not None else (p.role, "role")
        p.module_key = keys[p.name]
        p.module_kind = kind
        p.module_kind_by = why


def kinds_present(plan: "Plan") -> list[str]:
    """The module kinds (and role stand-ins) of the plan's parameters, in a stable order (``fixed`` left out)."""
    seen = {p.module_kind for p in plan.params.values() if p.module_kind and p.role != "fixed"}
    return [k for k in MODULE_KINDS if k in seen] + sorted(seen - set(MODULE_KINDS))


def module_keys_present(plan: "Plan") -> list[str]:
    """The module keys of the plan's parameters, in parameter order, without repeats (``fixed`` left out)."""
    return list(dict.fromkeys(p.module_key for p in plan.params.values() if p.module_key and p.role != "fixed"))
