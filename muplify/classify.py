"""Stage 3: from the width analysis to the plan's facts.

For every parameter: its role from how the graph uses it (TP-V Table 3: which fans grow with width), its fans and
base fans, its layout, whether it is the model's readout or a norm gain, the layer a bias belongs to, the rule that
drew its current values; then the forward-multiplier sites (:mod:`muplify.sites`).  Nothing here decides what μP
does with these facts: that is :mod:`muplify.policy`.

    >>> from muplify.capture import capture
    >>> from muplify.width import analyse
    >>> from muplify.models import MLP
    >>> model = MLP(width=128)
    >>> plan = build_plan(analyse(capture(model)), model, base_width=64, options=Options())
    >>> plan["net.4.weight"].role, plan["net.4.weight"].readout
    ('output', True)
"""
from __future__ import annotations

import dataclasses
import math

import sympy
import torch
import torch.fx as fx
import torch.nn as nn

from .errors import PlanError
from .initialization import note_init_reading, read_init
from .options import HyperParams, Options
from .plan import Decision, Layout, ParamPlan, Plan, decided_by_text, role_from_fans
from .rules import CONTRACTING_KINDS, Use, found_upstream
from .rules import table as ops
from .module_kinds import assign_module_kinds
from .readouts import routing_selection, single_unit_reaches_output, soft_routing
from .sites import SiteContext, find_sites, module_of

__all__ = ["build_plan", "detect_init_rules"]

aten = torch.ops.aten

def _prod(exprs, axes) -> sympy.Expr:
    return sympy.Mul(*[exprs[a] for a in axes]) if axes else sympy.Integer(1)


def _at(expr: sympy.Expr, sym: sympy.Symbol, width: int) -> int:
    return int(expr.subs(sym, width)) if expr.has(sym) else int(expr)


def _output_roots(wa) -> set[int]:
    """Dim ids of every axis of the model's outputs, and of class dims read by a loss."""
    roots: set[int] = set()
    out = next((n for n in wa.graph.nodes if n.op == "output"), None)
    if out is not None:
        for a in out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]:
            if isinstance(a, fx.Node):
                roots.update(wa.roots(a))
    return roots | wa.loss_roots()


def _added_table(pd, wa, exprs) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(row axes, feature axes) of a learned table added to the activation stream: a positional table
    ``(1, N, w)`` -- elementwise uses, one of them an add, axes of fixed size > 1 that are not a head_dim / state
    axis (those make a per-head bias, vector-like) next to scaling feature axes.  TP-V: an input weight (fan_in the
    rows, finite; fan_out the features), so ``embed_mult`` and ``lr_mult["input"]`` reach it."""
    sym = wa.width_symbol
    adds = [u for u in pd.uses if ops.is_add(u.node.target)]
    if not adds:
        return None
    rows = tuple(a for a, e in enumerate(exprs) if pd.shape[a] > 1 and not e.has(sym))
    # rows picked by a constant index before the add (``b[e]`` in a loop over experts) make a stack of biases, not a
    # table whose rows line up with the activation's positions: vector-like
    rows = tuple(a for a in rows if all(a in _axes_reaching(wa, u, len(exprs)) for u in adds))
    feats = tuple(a for a, e in enumerate(exprs) if e.has(sym))
    if not rows or not feats:
        return None
    kinds = [wa.finite_kinds.get(pd.axis_roots[a]) if a < len(pd.axis_roots) else None for a in rows]
    if any(k == "convention" for k in kinds):
        return None
    return rows, feats


def _axes_reaching(wa, use: Use, ndim: int) -> set[int]:
    """The parameter's axes that survive as axes of the operand ``use`` reads (all of them when it reads the
    parameter itself)."""
    operand = use.node.args[use.operand] if use.operand < len(use.node.args) else None
    origin = wa.origin(operand) if isinstance(operand, fx.Node) else None
    if origin is None:
        return set(range(ndim))
    return {a for a in origin[1] if a is not None}


def _mark_guess(pd, why: str) -> str:
    """Record a guess made here on the analysis too (its ``guessed_params`` feed the plan's one warning)."""
    if pd.decision is Decision.GRAPH:
        pd.decision, pd.why = Decision.GUESS, why
    return decided_by_text(Decision.GUESS, why)


def _fused_blocks(fan_out: sympy.Expr, sym: sympy.Symbol) -> str | None:
    """A fused projection whose output rows are blocks that scale differently (Falcon's multi-query qkv: ``w`` Q rows
    that scale, ``2 * head_dim`` K/V rows fixed): one role for the whole matrix is a guess, named in the plan."""
    e = sympy.expand(fan_out)
    if not isinstance(e, sympy.Add):
        return None
    fixed = [t for t in e.args if not t.has(sym)]
    scaling = [t for t in e.args if t.has(sym)]
    if not fixed or not scaling:
        return None
    return (f"fused rows {sympy.Add(*scaling)} + {sympy.Add(*fixed)}: the scaling block (e.g. Q) is hidden, the fixed "
            f"block ({sympy.Add(*fixed)} rows, e.g. one K/V head) would be output-like; the whole matrix is taken as "
            "hidden (its fixed rows get hidden's init and lr scaling). Split the projection for per-block treatment")


def _fixed_rows_around_a_query(wa, params: dict[str, ParamPlan], attention, axes) -> None:
    """A fused projection read as fixed as a whole (output-like) although part of its rows is an attention query of
    a scaling size: HF Falcon's multi-query ``query_key_value`` picks its K/V rows with a list index
    (``x[..., [-2], :]``), which makes the whole row axis read as fixed at one width, while its Q rows (``w`` of ``w
    + 2 * head_dim``) make the heads.  One width cannot read the blocks: a named guess pointing to ``base=``."""
    scaling = {int(size) for size, _, _ in _scaling_dims(wa, axes)}
    for a in attention:
        q = a.query
        p = params.get(q.param) if q is not None and q.channels else None
        if p is None or p.role != "output" or p.readout or p.decision is not Decision.GRAPH:
            continue
        start, stop, total = q.channels
        if stop - start in scaling and stop - start < total:
            p.decided_by = _mark_guess(wa.params[q.param], (
                f"fused rows: {stop - start} of its {total} rows are the query of '{a.module}' (a size that scales "
                f"with width), the other {total - stop + start} read as fixed (e.g. multi-query K/V), and so the whole "
                "matrix as output-like; one width cannot read the blocks. Pass base=<the model at the base width> "
                "(tune and transfer read it from two widths): it reads the rows as scaling Q + fixed K/V"))


def _is_gain(pd, uses: list[Use]) -> bool:
    """A vector that scales a normalised activation: a norm op's weight, or ``weight * x`` right after a
    normalisation (HF RMSNorm)."""
    for u in uses:
        norm = ops.norm_slots(u.node.target)
        if norm is not None and u.operand == norm.weight:
            return True
        if u.node.target == aten.mul.Tensor:
            other = u.node.args[1 - u.operand] if u.operand in (0, 1) else None
            if _normalised(other):
                return True
    return False


def _normalised(node) -> bool:
    return found_upstream(node, lambda n: n.target == aten.rsqrt.default or ops.is_norm(n.target))


def _bias_of(name: str, uses: list[Use], wa, names_by_ph: dict[str, str]) -> str | None:
    """The weight a bias is added with: the weight operand of the same linear/conv op (name pattern as fallback)."""
    for u in uses:
        layer = ops.layer_slots(u.node.target)
        if layer is not None and layer.bias is not None and u.operand == layer.bias:
            w = u.node.args[layer.weight] if len(u.node.args) > layer.weight else None
            found = wa.origin(w) if isinstance(w, fx.Node) else None
            if found is not None:
                return names_by_ph.get(found[0])
    mod, _, leaf = name.rpartition(".")
    return f"{mod}.weight" if leaf == "bias" and f"{mod}.weight" in wa.params else None


def _unused_like_siblings(params: dict[str, ParamPlan], wa) -> None:
    """An unused parameter's shape guess takes a used sibling's reading: XLNet's ``r_s_bias`` (heads, head_dim) and
    ``seg_embed`` (2, heads, head_dim) are unused without segment ids, while ``r_w_bias`` of the same shape in the same
    module is read by the graph as a per-head bias (vector-like).  A matrix guess ('hidden' from two axes of
    width-like sizes) would rescale their init and lr although they are added to activations like biases."""
    used = [(n, p) for n, p in params.items() if n not in wa.unused and wa.params[n].uses
            and wa.params[n].decision is Decision.GRAPH and p.role == "vector" and len(p.shape) > 1]
    for name, p in params.items():
        if not (name in wa.unused or not wa.params[name].uses) or p.role not in ("hidden", "vector"):
            continue
        mod = name.rpartition(".")[0]
        for other, q in used:
            k = len(q.shape)
            if other.rpartition(".")[0] != mod or len(p.shape) < k or tuple(p.shape[-k:]) != tuple(q.shape):
                continue
            lead = len(p.shape) - k
            p.role, p.fan_in, p.base_fan_in = "vector", sympy.Integer(1), 1
            p.fan_out = sympy.Mul(*[sympy.Integer(s) for s in p.shape[:lead]]) * q.fan_out
            p.base_shape = tuple(p.shape[:lead]) + tuple(q.base_shape)
            p.base_fan_out = max(1, math.prod(p.base_shape))
            p.decided_by = decided_by_text(Decision.GUESS, f"not used by the captured forward (pass example inputs "
                                                            f"that use it); read like '{other}' of the same trailing "
                                                            "shape in the same module: vector-like")
            break


def detect_init_rules(plan: Plan, model: nn.Module) -> None:
    """Record, per parameter, the rule that drew its current values (a fact read off the values: fixed std vs fan
    scaled; 'deferred' on the meta device).  ``plan.options.init`` forces a rule or (None) keeps every value."""
    option = plan.options.init
    named = dict(model.named_parameters())
    readings = {}
    with plan._editable():
        for n, p in plan.params.items():
            t = named.get(n)
            if p.decision is Decision.DTYPE or t is None:
                p.init_rule = "keep"
                continue
            if option is None:
                p.init_rule = "keep"
            elif option != "auto":
                p.init_rule = option if (p.role not in ("vector", "fixed") or p.bias_of) else "keep"
            else:
                layer = plan.params.get(p.bias_of) if p.bias_of else None
                if layer is not None:
                    r = read_init(t, layer._size(layer.fan_in), (), in_scales=layer.fan_in.has(plan.width_symbol),
                                  prior=getattr(readings.get(p.bias_of), "initializer", None))
                elif p.role in ("vector", "fixed"):
                    r = read_init(t, 1, ())
                else:
                    shape = tuple(t.shape)
                    conv_fan_out = t.numel() // max(1, shape[1]) if len(shape) > 2 else 1
                    r = read_init(t, p._size(p.fan_in), (p._size(p.fan_out), conv_fan_out),
                                  in_scales=p.fan_in.has(plan.width_symbol), out_scales=p.fan_out.has(plan.width_symbol))
                p.init_rule, readings[n] = r.rule, r
                note_init_reading(plan, n, r)


def axis_facts(wa, base_width: int, base_shapes: dict[str, tuple[int, ...]] | None):
    """Per parameter: (axis expressions in ``w``, axis sizes at the base model).

    Without a base model the width analysis decides which axes grow and the base sizes follow from ``base_width``;
    with one (``base=``), an axis grows exactly when its size differs from the base model's (the `mup` package's
    base shapes, but fans still come from the graph) and the base sizes are read, not computed.  A growing axis keeps
    the graph's own expression where the base model confirms it (its value at the base width is the base size): a
    fused ``w + 32`` (scaling Q rows, one fixed K/V head) stays a sum of blocks, not ``5*w/4``."""
    sym, width = wa.width_symbol, wa.width_size
    out = {}
    for name, pd in wa.params.items():
        if base_shapes is None:
            out[name] = (list(pd.axis_exprs), [max(1, _at(e, sym, base_width)) for e in pd.axis_exprs])
            continue
        base = base_shapes[name]
        exprs = [sympy.Integer(n) if n == b else
                 e if e.has(sym) and _at(e, sym, base_width) == b else
                 _two_size_expr(n, b, width, base_width, sym) if not e.has(sym) else sympy.Rational(n, width) * sym
                 for n, b, e in zip(pd.shape, base, pd.axis_exprs)]
        out[name] = (exprs, [max(1, int(b)) for b in base])
    return out


def _two_size_expr(n: int, b: int, width: int, base_width: int, sym: sympy.Symbol) -> sympy.Expr:
    """A growing axis that one instance read as fixed, from its sizes at two widths: ``k*w + c`` when they say whole
    blocks of ``w`` plus a fixed block (HF Falcon's multi-query qkv, whose K/V rows a list index picks: 96 rows at 64,
    160 at 128 is ``w + 32``), else proportional (``n/width*w``).  An axis the graph reads as growing but not as the
    base model has it (a size rounded to a multiple) stays proportional."""
    if width != base_width:
        k = sympy.Rational(n - b, width - base_width)
        c = n - k * width
        if k.is_integer and k > 0 and c.is_integer and c > 0:
            return k * sym + c
    return sympy.Rational(n, width) * sym


def build_plan(wa, model: nn.Module, base_width: int, *, options: Options, hp: HyperParams | None = None,
               base_shapes: dict[str, tuple[int, ...]] | None = None) -> Plan:
    """Turn a :class:`~muplify.width.WidthAnalysis` into the plan's facts (roles, fans, layouts, sites, init rules).
    ``base_shapes`` (parameter name -> shape at the base model) makes every base fan exact (``muplify(base=)``)."""
    sym, width = wa.width_symbol, wa.width_size
    axes = axis_facts(wa, base_width, base_shapes)
    tensors = dict(model.named_parameters())
    names_by_ph = {pd.placeholder: n for n, pd in wa.params.items()}
    out_roots = _output_roots(wa)
    params: dict[str, ParamPlan] = {}
    chosen_use: dict[str, Use] = {}
    notes = list(wa.notes)
    for name, pd in wa.params.items():
        t = tensors.get(name)
        exprs, base_sizes = axes[name]
        base_prod = lambda ax: max(1, int(math.prod(base_sizes[a] for a in ax)))  # noqa: E731
        contracting = [u for u in pd.uses if u.kind in CONTRACTING_KINDS]
        layout, readout, note = None, False, ""
        if t is not None and not (t.is_floating_point() or t.is_complex()):
            # an integer/bool Parameter gets no gradient and no init: μP leaves it alone
            role, fan_in, fan_out = "fixed", sympy.Integer(1), sympy.Integer(max(1, t.numel()))
            decided = decided_by_text(Decision.DTYPE)
            base_fans = (1, max(1, t.numel()))
            note = f"non-float parameter ({t.dtype}): fixed, left untouched"
        elif contracting:
            cands = []
            for u in contracting:
                fi, fo = _prod(exprs, u.fan_in_axes), _prod(exprs, u.fan_out_axes)
                cands.append((role_from_fans(fi.has(sym), fo.has(sym)), fi, fo, u))
            role, fan_in, fan_out, use = next((c for c in cands if c[0] == "output"), cands[0])
            chosen_use[name] = use
            base_fans = (base_prod(use.fan_in_axes), base_prod(use.fan_out_axes))
            layout, decided = Layout(use.fan_in_axes, use.fan_out_axes), decided_by_text(Decision.GRAPH)
            if pd.decision is not Decision.GRAPH and base_shapes is None:
                decided = pd.decided_by  # the analysis fixed or scaled one of its axes by a marked guess
            if len({c[0] for c in cands}) > 1:
                note = "tied: " + " + ".join(sorted({c[0] for c in cands})) + "; the readout use sets the role"
            if role == "output" and decided == decided_by_text(Decision.GRAPH):
                one_head = [a for a in use.fan_out_axes if a < len(pd.axis_why) and "head_dim" in pd.axis_why[a]]
                if one_head and len(one_head) == len(use.fan_out_axes):
                    decided = _mark_guess(pd, (
                        f"its output is one attention head ({pd.shape[one_head[0]]} = head_dim): fixed (output-like, "
                        "multi-query K/V) if the model keeps one K/V head at every width, hidden if K/V heads grow "
                        "with width; one width cannot tell. Pass base=<the model at the base width> for the exact "
                        "reading (tune and transfer read it from two widths)"))
            fused = _fused_blocks(fan_out, sym)
            if fused is not None and role == "hidden":
                decided = _mark_guess(pd, fused)
            if role == "output":
                dims = wa.roots(pd.placeholder)
                readout = any(dims[a] in out_roots for a in use.fan_out_axes if a < len(dims))
                router = routing_selection(wa, dims, use.fan_out_axes)
                soft = None if router is not None else soft_routing(wa, use.node, dims, use.fan_out_axes)
                if router is not None or soft is not None:
                    readout = False
                    note = (note + "; " if note else "") + (
                        f"router: its outputs are {router}" if router is not None else
                        f"router: its outputs weight the experts (a softmax over them, {soft}): output-like, not "
                        "the readout")
                elif not readout and all(pd.shape[a] <= 1 for a in use.fan_out_axes):
                    # a single output unit has no dim to follow to the output: follow the tensor
                    readout = single_unit_reaches_output(use.node)
        elif pd.uses and all(u.kind == "elementwise" for u in pd.uses):
            fan_in, fan_out = sympy.Integer(1), sympy.Mul(*exprs)
            role, decided = ("vector" if fan_out.has(sym) else "fixed"), decided_by_text(Decision.GRAPH)
            if pd.decision is not Decision.GRAPH and base_shapes is None:
                decided = pd.decided_by
            base_fans = (1, base_prod(range(len(exprs))))
            table = _added_table(pd, wa, exprs) if not _is_gain(pd, pd.uses) else None
            if table is not None:
                rows, feats = table
                role, fan_in, fan_out = "input", _prod(exprs, rows), _prod(exprs, feats)
                base_fans, layout = (base_prod(rows), base_prod(feats)), Layout(rows, feats)
                note = "a learned table added to the activations (rows fixed, features scale): input-like"
        else:
            fan_in, fan_out = sympy.Integer(1), sympy.Mul(*exprs)
            base_fans = (1, base_prod(range(len(exprs))))
            role = "fixed"
            why = "not used by the captured forward" if name in wa.unused or not pd.uses else \
                f"used by ops without a rule ({', '.join(sorted({str(u.node.target) for u in pd.uses}))})"
            if fan_out.has(sym):
                role = "vector" if len(pd.shape) <= 1 else "hidden"
                fan_in = exprs[-1] if len(pd.shape) > 1 else sympy.Integer(1)
                fan_out = exprs[0]
                base_fans = (base_sizes[-1] if len(pd.shape) > 1 else 1, base_sizes[0])
            decided = pd.decided_by if pd.decision is Decision.GUESS else \
                decided_by_text(Decision.GUESS, f"{why}; role from its shape")
        params[name] = ParamPlan(
            name=name, aliases=list(pd.aliases), shape=tuple(pd.shape), role=role, fan_in=fan_in, fan_out=fan_out,
            base_fan_in=base_fans[0], base_fan_out=base_fans[1], base_shape=tuple(base_sizes), layout=layout,
            decided_by=decided, uses=[f"{u.kind} in '{module_of(u.node)}'" for u in pd.uses], readout=readout,
            note=note)
    _unused_like_siblings(params, wa)
    for name, p in params.items():
        pd = wa.params[name]
        if p.role == "vector":
            p.gain = _is_gain(pd, pd.uses)
        bias_of = _bias_of(name, pd.uses, wa, names_by_ph)
        if bias_of in params and params[bias_of].role in ("input", "hidden", "output") and bias_of != name:
            p.bias_of = bias_of

    leaf_modules = {n for n, m in model.named_modules() if not any(True for _ in m.children())}
    ctx = SiteContext(wa, params, chosen_use, leaf_modules, base_width, {n: e for n, (e, _) in axes.items()},
                      find_branches=options.base_depth is not None)
    sites, attention, site_notes = find_sites(ctx)
    notes += site_notes
    if base_shapes is None:
        _fixed_rows_around_a_query(wa, params, attention, axes)
    if options.base_depth is not None:
        options, depth_notes = _depth(options, ctx.blocks, model)
        notes += depth_notes
    with_site = {s.param for s in sites if s.kind == "readout"}
    for name, p in params.items():
        if p.role == "output" and name not in with_site and len(p.aliases) > 1:
            raise PlanError(
                f"the tied readout weight {name} is used by '{module_of(chosen_use[name].node)}' on a tensor that no "
                "module boundary carries alone, so muplify cannot insert the readout multiplier there. Compute the "
                "readout with an nn.Linear (sharing the embedding weight), or override the role of this weight.")
    source = "exact: base fans read from the base model" if base_shapes is not None else getattr(wa, "width_source", "")
    plan = Plan(base_width, width, params, sites, attention, options, hp or HyperParams(), notes, sym,
                type(model).__name__, source, _scaling_dims(wa, axes, base_shapes is not None), list(ctx.blocks))
    assign_module_kinds(plan, ctx)  # module kinds from the graph (attention operands), the facts, then names
    detect_init_rules(plan, model)
    return plan


_DEPTH_ATTRS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "depth")


def _depth(options: Options, blocks: list[str], model: nn.Module) -> tuple[Options, list[str]]:
    """The depth CompleteP scales with: the number of residual blocks found in the graph (or ``depth=``)."""
    notes = []
    config = getattr(model, "config", None)
    declared = next((getattr(config, a) for a in _DEPTH_ATTRS if isinstance(getattr(config, a, None), int)), None)
    if options.depth is None:
        if not blocks:
            raise PlanError("base_depth= was given but no residual branch (x + f(x) with weights in f) was found in "
                            "the graph; pass depth=<number of blocks> if the model has residual blocks that muplify "
                            "cannot see, or omit base_depth for width-only μP")
        depth = len(blocks)
        notes.append(f"depth {depth}: residual blocks found in the graph ({blocks[0]} ... {blocks[-1]})")
    else:
        depth = options.depth
        if blocks and len(blocks) != depth:
            notes.append(f"depth={depth} given; the graph has {len(blocks)} residual blocks")
    if declared is not None and declared != depth and options.depth is None:
        notes.append(f"the config declares {declared} layers, the graph has {depth} residual blocks (encoder-decoder "
                     "and hybrid models count every block); pass depth= to use another count")
    return dataclasses.replace(options, depth=depth), notes


def _scaling_dims(wa, axes: dict, exact: bool = False) -> list[tuple[int, str, int]]:
    """(size, expression, parameter axes) of every size that grows with width, the width first."""
    if not exact and getattr(wa, "scaling_dims", None):
        merged: dict[tuple[int, str], int] = {}
        for d in wa.scaling_dims:
            key = (int(d.size), str(d.expr))
            merged[key] = merged.get(key, 0) + int(d.param_axes)
        return [(size, expr, n) for (size, expr), n in merged.items()]
    by_size: dict[int, int] = {}
    for name, (exprs, _) in axes.items():
        if name in wa.unused:
            continue
        for size, e in zip(wa.params[name].shape, exprs):
            if e.has(wa.width_symbol):
                by_size[int(size)] = by_size.get(int(size), 0) + 1
    return [(size, str(sympy.Rational(size, wa.width_size) * wa.width_symbol), n)
            for size, n in sorted(by_size.items(), key=lambda t: (-t[1], t[0]))]
