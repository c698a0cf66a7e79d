"""Where in the module tree a forward multiplier can act, and which parameters it folds into.

The rewrite acts at module boundaries (a hook scaling a module's first input or its output), so that the user's own
forward keeps running unchanged.  Site finders are registered per kind (``@site_finder("readout")``); each returns
:class:`~muplify.plan.Site` records for the plan.  :func:`fold_targets` answers the export's question: which
parameters, scaled by ``c``, scale a given tensor by ``c`` (a Linear's weight and bias, a norm's gain and bias).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx

from .plan import Attention, FoldTarget, ParamPlan, Site
from .rules import CONTRACTING_KINDS, Use
from .rules import table as ops

aten = torch.ops.aten

__all__ = ["SiteContext", "SITE_FINDERS", "site_finder", "find_sites", "readout_site", "query_site", "module_of",
           "fold_targets", "param_dependent_nodes"]


# ------------------------------------------------------------------------------------------------ graph helpers
def module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # export records FQNs; strip any "L['self']." style prefixes defensively
    return path.replace("L['self'].", "").replace("L__self__.", "")


def _inside(child: str, parent: str) -> bool:
    return parent == "" or child == parent or child.startswith(parent + ".")


def _is_module_output(node: fx.Node, mod: str) -> bool:
    return mod != "" and all(not _inside(module_of(u), mod) for u in node.users if u.op != "output")


def _flat_args(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat_args(a)
        else:
            yield a


def param_dependent_nodes(graph: fx.Graph, param_placeholders: set[str]) -> set[str]:
    dep: set[str] = set(param_placeholders)
    for n in graph.nodes:
        if n.op == "call_function" and any(isinstance(a, fx.Node) and a.name in dep for a in _flat_args(n.args)):
            dep.add(n.name)
    return dep


def _activation_operand(use: Use) -> fx.Node | None:
    node, k = use.node, use.operand
    pair, layer = ops.product_operands(node.target), ops.layer_slots(node.target)
    if pair is not None and k in pair:
        idx = pair[1] if k == pair[0] else pair[0]  # the other factor of the product
    elif layer is not None and layer.input is not None:
        idx = layer.input
    else:
        return None
    a = node.args[idx]
    return a if isinstance(a, fx.Node) else None


def _walk_views_back(node: fx.Node) -> fx.Node:
    while node.op == "call_function" and ops.is_view_like(node.target) and len(node.users) == 1:
        src = node.args[0]
        if not isinstance(src, fx.Node):
            break
        node = src
    return node


# ------------------------------------------------------------------------------------------------ folding
@dataclass
class _FoldCtx:
    origin: dict  # node name -> (param placeholder, axis map)
    names: dict[str, str]  # param placeholder -> canonical parameter name


def _param_of(ctx: _FoldCtx, x) -> tuple[str, list] | None:
    if not isinstance(x, fx.Node) or x.name not in ctx.origin:
        return None
    ph, amap = ctx.origin[x.name]
    return (ctx.names[ph], amap) if ph in ctx.names else None


def _target(ctx: _FoldCtx, name: str, amap: list, out_axis: int | None, channels) -> FoldTarget | None:
    """Fold into ``name``; with ``channels`` only its slice on the stored axis that holds the output channels."""
    if channels is None:
        return FoldTarget(name)
    if out_axis is None or out_axis >= len(amap) or amap[out_axis] is None:
        return None
    return FoldTarget(name, amap[out_axis], channels[0], channels[1])


def _keeps_last_axis(node: fx.Node) -> bool:
    """Whether a view-like op leaves the last axis (the channel axis of a projection's output) in place."""
    if ops.keeps_axes(node.target):
        return True
    src = node.args[0]
    try:
        a, b = src.meta["val"], node.meta["val"]
    except (AttributeError, KeyError):
        return False
    if node.target == aten.permute.default:
        return list(node.args[1])[-1] % a.dim() == a.dim() - 1
    if node.target == aten.transpose.int:
        return all(d % a.dim() != a.dim() - 1 for d in node.args[1:3])
    return a.dim() > 0 and b.dim() > 0 and a.shape[-1] == b.shape[-1]


def fold_targets(node: fx.Node, ctx: _FoldCtx, channels: tuple[int, int, int] | None = None,
                 depth: int = 0) -> tuple[FoldTarget, ...]:
    """Parameters whose scaling by c scales ``node`` (on ``channels`` of its last axis) by c; () if none can.

    Follows views, a bias add and scalar factors back to a linear op (weight and bias), a norm (gain and bias) or an
    elementwise gain; anything else (a residual add, a nonlinearity, a product of activations) cannot be folded."""
    if depth > 12 or not isinstance(node, fx.Node) or node.op != "call_function":
        return ()
    t, args = node.target, node.args
    if ops.is_view_like(t) and isinstance(args[0], fx.Node):
        if channels is not None and not _keeps_last_axis(node):
            return ()
        return fold_targets(args[0], ctx, channels, depth + 1)
    if t is operator.getitem and isinstance(args[0], fx.Node) and args[1] == 0:
        return fold_targets(args[0], ctx, channels, depth + 1)  # native_layer_norm returns (out, mean, rstd)
    layer, norm = ops.layer_slots(t), ops.norm_slots(t)
    if layer is not None:
        w_slot, b_slot = layer.weight, layer.bias
        w = _param_of(ctx, args[w_slot])
        if w is None:
            return ()
        # the weight operand's axis that becomes the output's channels: (out, in) for linear/conv, (in, out) for
        # addmm (GPT-2's Conv1D), (num, dim) for an embedding; the origin map turns it into the stored axis
        targets = [_target(ctx, w[0], w[1], layer.out_axis, channels)]
        b = _param_of(ctx, args[b_slot]) if b_slot is not None and len(args) > b_slot else None
        if b is not None:
            targets.append(_target(ctx, b[0], b[1], len(b[1]) - 1, channels))
        return () if None in targets else tuple(targets)
    if ops.product_operands(t) == (0, 1):  # mm, bmm, matmul: x @ W
        w = _param_of(ctx, args[1])
        if w is None or _param_of(ctx, args[0]) is not None:
            return ()
        tgt = _target(ctx, w[0], w[1], len(w[1]) - 1, channels)
        return () if tgt is None else (tgt,)
    if norm is not None:
        w_slot, b_slot = norm.weight, norm.bias
        w = _param_of(ctx, args[w_slot]) if len(args) > w_slot else None
        if w is None:
            return ()  # no gain to fold into
        targets = [_target(ctx, w[0], w[1], len(w[1]) - 1, channels)]
        b = _param_of(ctx, args[b_slot]) if b_slot is not None and len(args) > b_slot else None
        if b is not None:
            targets.append(_target(ctx, b[0], b[1], len(b[1]) - 1, channels))
        return () if None in targets else tuple(targets)
    if t == aten.mul.Tensor:
        for x in args[:2]:
            got = _param_of(ctx, x)
            if got is not None and got[1]:  # an elementwise gain (HF RMSNorm: weight * x)
                tgt = _target(ctx, got[0], got[1], len(got[1]) - 1, channels)
                return () if tgt is None else (tgt,)
        return ()
    if t in (aten.mul.Scalar, aten.div.Scalar) or (t == aten.div.Tensor and not isinstance(args[1], fx.Node)):
        return fold_targets(args[0], ctx, channels, depth + 1)  # x · const is linear in x
    if t == aten.add.Tensor:
        params = [x for x in args[:2] if _param_of(ctx, x) is not None]
        others = [x for x in args[:2] if _param_of(ctx, x) is None]
        if len(params) != 1 or len(others) != 1:
            return ()  # only "x + bias": a sum of computed tensors may share inputs (a residual add)
        got = _param_of(ctx, params[0])
        tgt = _target(ctx, got[0], got[1], len(got[1]) - 1, channels)
        sub = fold_targets(others[0], ctx, channels, depth + 1)
        return (*sub, tgt) if sub and tgt is not None else ()
    return ()


# ------------------------------------------------------------------------------------------------ site finders
@dataclass
class SiteContext:
    """What site finders read: the width analysis, the classified parameters, the model's module tree."""

    analysis: object  # muplify.width.WidthAnalysis
    params: dict[str, ParamPlan]
    chosen_use: dict[str, Use]  # parameter -> the use that decided its role
    leaf_modules: set[str]
    base_width: int
    axis_exprs: dict[str, list]  # parameter -> per-axis expression in w (which axes grow)
    find_branches: bool = False  # residual branches are looked for only when depth scaling is asked for
    blocks: list[str] = field(default_factory=list)  # set by the branch finder: the residual blocks found
    fold: _FoldCtx = field(init=False)
    dep: set[str] = field(init=False)

    def __post_init__(self):
        wa = self.analysis
        names = {pd.placeholder: n for n, pd in wa.params.items()}
        self.fold = _FoldCtx(wa.dim_graph.origin, names)
        self.dep = param_dependent_nodes(wa.graph, set(names))


SiteFinder = Callable[[SiteContext], list]
SITE_FINDERS: dict[str, SiteFinder] = {}


def site_finder(kind: str) -> Callable[[SiteFinder], SiteFinder]:
    def register(fn: SiteFinder) -> SiteFinder:
        SITE_FINDERS[kind] = fn
        return fn

    return register


def find_sites(ctx: SiteContext) -> tuple[list[Site], list[Attention], list[str]]:
    """Run every registered finder; returns (sites, attention ops, notes)."""
    sites: list[Site] = []
    attention: list[Attention] = []
    notes: list[str] = []
    for kind, fn in SITE_FINDERS.items():
        for item in fn(ctx):
            if isinstance(item, Site):
                sites.append(item)
            elif isinstance(item, Attention):
                attention.append(item)
            else:
                notes.append(str(item))
    return sites, attention, notes


def readout_site(use: Use, aliases: list[str], leaf_modules: set[str]) -> tuple[str, str, fx.Node | None] | None:
    """(module, where, tensor node) of the boundary carrying the readout input: the owning leaf module's input, or a
    child module's output feeding a functional readout."""
    op = use.node
    mod = module_of(op)
    owners = {a.rpartition(".")[0] for a in aliases}
    act = _activation_operand(use)
    if mod in owners and mod in leaf_modules and act is not None and (
            act.op == "placeholder" or not _inside(module_of(act), mod)):
        return mod, "input", act  # the module's own input is the readout's input (an nn.Linear readout)
    if act is None:
        return None
    src = _walk_views_back(act)
    src_mod = module_of(src)
    if src_mod != mod and _inside(src_mod, mod) and len(src.users) == 1 and _is_module_output(src, src_mod):
        n = act
        while n is not src:
            if len(n.users) != 1:
                return None
            n = n.args[0]
        return src_mod, "output", src
    return None


def _weight_fold(use: Use, ctx: _FoldCtx) -> tuple[FoldTarget, ...]:
    """Where a multiplier on a layer's input folds when the weight is reparametrized: weight norm computes
    W = g·v/‖v‖, so scaling v does nothing and the magnitude g carries the factor."""
    w = use.node.args[use.operand] if use.operand < len(use.node.args) else None
    while isinstance(w, fx.Node) and w.op == "call_function" and ops.is_view_like(w.target):
        w = w.args[0]
    if isinstance(w, fx.Node) and w.op == "call_function" and w.target == aten._weight_norm.default:
        g = _param_of(ctx, w.args[1])
        return (FoldTarget(g[0]),) if g is not None else ()
    return ()


@site_finder("readout")
def _readouts(ctx: SiteContext) -> list[Site]:
    out = []
    for name, p in ctx.params.items():
        use = ctx.chosen_use.get(name)
        if p.role != "output" or use is None:
            continue
        found = readout_site(use, p.aliases, ctx.leaf_modules)
        if found is None:
            continue
        module, where, node = found
        if where == "input":
            fold: tuple[FoldTarget, ...] = _weight_fold(use, ctx.fold) or (FoldTarget(name),)
            if len(p.aliases) > 1 and node is not None and len(node.users) == 1:
                # a tied readout: fold into the affine gain producing its input when that tensor feeds only the
                # readout (no untying needed); otherwise the export unties the readout's copy
                fold = fold_targets(_walk_views_back(node), ctx.fold) or fold
        else:
            fold = fold_targets(node, ctx.fold)
        out.append(Site("readout", module, where, name, None, fold))
    return out


@site_finder("embedding")
def _embeddings(ctx: SiteContext) -> list[Site]:
    """The output of every input-like use (finite fan-in, growing fan-out) that is a leaf module's output."""
    out, seen = [], set()
    w = ctx.analysis.width_symbol
    for name, p in ctx.params.items():
        pd = ctx.analysis.params[name]
        owners = {a.rpartition(".")[0] for a in p.aliases}
        for u in pd.uses:
            if u.kind not in CONTRACTING_KINDS:
                continue
            fi = _prod(ctx.axis_exprs[name], u.fan_in_axes)
            fo = _prod(ctx.axis_exprs[name], u.fan_out_axes)
            if fi.has(w) or not fo.has(w):
                continue
            mod = module_of(u.node)
            if mod in owners and mod in ctx.leaf_modules and _is_module_output(u.node, mod) and mod not in seen:
                seen.add(mod)
                out.append(Site("embedding", mod, "output", name, None, fold_targets(u.node, ctx.fold)))
    return out


def _prod(exprs, axes):
    import sympy

    return sympy.Mul(*[exprs[a] for a in axes]) if axes else sympy.Integer(1)




def _traced_channels(n: fx.Node, attn_mod: str) -> tuple[fx.Node, str, tuple[int, int, int]] | None:
    """(module output, module, (start, end, total)) when ``n`` is a contiguous block of the last-axis channels of a
    module output inside ``attn_mod``, reached through data movement and at least one selection."""
    chain = []
    while isinstance(n, fx.Node) and n.op == "call_function" and (ops.is_view_like(n.target) or ops.is_selection(n.target)):
        chain.append(n)
        n = n.args[0]
        if isinstance(n, fx.Node):
            nm = module_of(n)
            if nm != attn_mod and _inside(nm, attn_mod) and _is_module_output(n, nm):
                break
    else:
        return None
    if not isinstance(n, fx.Node) or not any(ops.is_selection(c.target) for c in chain):
        return None
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return None
    total = int(val.shape[-1])
    t = torch.arange(total, dtype=torch.float64, device="cpu").expand(*[int(s) for s in val.shape]).contiguous()
    try:
        for c in reversed(chain):
            args = [t, *c.args[1:]]
            try:
                t = c.target(*args, **c.kwargs)
            except RuntimeError:  # a view of a permuted tensor: the same entries through reshape
                t = aten.reshape.default(t.contiguous(), *c.args[1:]) if ops.is_view_like(c.target) else None
                if t is None:
                    return None
    except Exception:
        return None
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return None
    chans = torch.unique(t)
    a, b = int(chans[0]), int(chans[-1]) + 1
    if len(chans) != b - a or (a, b) == (0, total):
        return None
    return n, module_of(n), (a, b, total)


def query_site(attn_node: fx.Node, param_dependent: set[str]) -> tuple[str, tuple | None, fx.Node] | str:
    """(module, channels, node) of the module output the attention query is a linear function of (projection,
    or q-norm), or a string saying why there is none."""
    q = attn_node.args[0]
    if not isinstance(q, fx.Node):
        return "the query is not a tensor of the graph"
    attn_mod = module_of(attn_node)
    sources: dict[tuple[str, tuple | None], fx.Node] = {}
    stack, seen = [q], set()
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        nm = module_of(n)
        if nm != attn_mod and _inside(nm, attn_mod) and _is_module_output(n, nm):
            sources[(nm, None)] = n
            continue
        if n.op != "call_function":
            return f"the query comes from {n.op} '{n.name}', not from a submodule"
        traced = _traced_channels(n, attn_mod)
        if traced is not None:
            src, sm, chans = traced
            sources[(sm, chans)] = src
            continue
        if n.target is operator.getitem and isinstance(n.args[0], fx.Node) and n.args[0].target in (
                aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
            split, idx = n.args[0], n.args[1]
            src = split.args[0]
            sm = module_of(src)
            if sm != attn_mod and _inside(sm, attn_mod) and _is_module_output(src, sm):
                total = src.meta["val"].shape[-1]
                dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
                if dim % src.meta["val"].dim() != src.meta["val"].dim() - 1:
                    return "the fused projection is split on an axis other than the last"
                sizes = [o.shape[-1] for o in split.meta["val"]]
                start = sum(sizes[:idx])
                sources[(sm, (start, start + sizes[idx], int(total)))] = src
                continue
            stack.append(src)
            continue
        if ops.is_view_like(n.target) or ops.is_linear_combination(n.target):
            args = [a for a in _flat_args(n.args) if isinstance(a, fx.Node) and a.name in param_dependent]
            if n.target in (aten.mul.Tensor, aten.div.Tensor) and len(args) != 1:
                return f"the query passes through a product of two computed tensors ('{n.name}')"
            stack.extend(args)
            continue
        return f"the query passes through {n.target} ('{n.name}'), which is not linear in it"
    if len(sources) != 1:
        return f"the query combines {len(sources)} module outputs" if sources else "no submodule computes the query"
    (mod, chans), node = next(iter(sources.items()))
    return mod, chans, node


@site_finder("query")
def _queries(ctx: SiteContext) -> list:
    wa = ctx.analysis
    out, done = [], set()
    for site in wa.attention:
        if site.kind not in ("sdpa", "manual") or site.node.name in done:
            continue
        done.add(site.node.name)
        hd = wa.dim_expr(site.head_dim)
        base_hd = int(hd.subs(wa.width_symbol, ctx.base_width)) if hd.has(wa.width_symbol) else int(hd)
        found = query_site(site.node, ctx.dep)
        module = module_of(site.node)
        if isinstance(found, str):
            out.append(Attention(module, site.kind, hd, base_hd, None, found))
            continue
        qmod, chans, node = found
        fold = fold_targets(node, ctx.fold, (chans[0], chans[1], chans[2]) if chans else None)
        param = fold[0].param if fold else ""
        out.append(Attention(module, site.kind, hd, base_hd, Site("query", qmod, "output", param, chans, fold)))
    return out


# ------------------------------------------------------------------------------------------------ residual branches
def _scope(node: fx.Node) -> list[str]:
    """Module paths enclosing ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0].replace("L['self'].", "").replace("L__self__.", "") for v in stack.values()]


def _bounded_ancestors(node: fx.Node, floor: int, order: dict) -> list[fx.Node]:
    """Ancestors of ``node`` (itself included) no earlier than position ``floor`` in the graph, in graph order."""
    seen, stack = {node}, [node]
    while stack:
        n = stack.pop()
        for a in _flat_args(n.args):
            if isinstance(a, fx.Node) and a not in seen and order[a] >= floor:
                seen.add(a)
                stack.append(a)
    return sorted(seen, key=order.__getitem__)


def _between(stream: fx.Node, branch: fx.Node, order: dict) -> list[fx.Node]:
    """Nodes on a path from ``stream`` to ``branch``: descendants of the stream among the branch's ancestors."""
    on: set[fx.Node] = {stream}
    for n in _bounded_ancestors(branch, order[stream], order):
        if n is not stream and any(isinstance(a, fx.Node) and a in on for a in _flat_args(n.args)):
            on.add(n)
    on.discard(stream)
    return [n for n in on]


def _uses_params(nodes, origin: dict) -> set[str]:
    """Parameter placeholders used (not merely viewed) by ``nodes``."""
    used = set()
    for n in nodes:
        if n.name in origin:
            continue  # a view of a parameter, not a use
        for a in _flat_args(n.args):
            if isinstance(a, fx.Node) and a.name in origin:
                used.add(origin[a.name][0])
    return used


def _branch_terms(node: fx.Node, stream: fx.Node, order: dict, origin: dict) -> list[fx.Node]:
    """A parallel block adds several branches (x + attn(ln(x)) + mlp(ln(x))): split a sum of independent
    parameterised terms into its terms."""
    if ops.is_add(node.target) and all(isinstance(a, fx.Node) for a in node.args[:2]):
        a, b = node.args[:2]
        anc_a = set(_bounded_ancestors(a, order[stream], order))
        anc_b = set(_bounded_ancestors(b, order[stream], order))
        if a not in anc_b and b not in anc_a and all(_uses_params(_between(stream, t, order), origin)
                                                     for t in (a, b)):
            return _branch_terms(a, stream, order, origin) + _branch_terms(b, stream, order, origin)
    return [node]


def _walk_scalings_back(node: fx.Node) -> list[fx.Node]:
    """``node`` and the factors it is a product of, through views: a constant (Granite's ``branch *
    residual_multiplier``) or a computed gate (DiT's adaLN ``gate * proj(h)``).  A multiplier on a factor that feeds
    nothing else is the same multiplier on the product, so the module computing that factor can carry it."""
    out, todo = [], [node]
    while todo:
        node = todo.pop(0)
        out.append(node)  # the node itself may be the module output (a view returned by the module)
        node = _walk_views_back(node)
        out.append(node)
        if not (node.op == "call_function" and ops.is_scaling(node.target) and len(node.users) == 1):
            continue
        a, b = node.args[:2]
        if isinstance(a, fx.Node) and isinstance(b, (int, float)):
            todo.append(a)
        elif isinstance(b, fx.Node) and isinstance(a, (int, float)) and node.target in (aten.mul.Tensor,
                                                                                    aten.mul.Scalar):
            todo.append(b)
        elif node.target == aten.mul.Tensor and isinstance(a, fx.Node) and isinstance(b, fx.Node):
            todo += [f for f in (b, a) if len(f.users) == 1]  # the later operand first: usually the branch's layer
    return list(dict.fromkeys(out))


def _branch_module(term: fx.Node, add: fx.Node) -> str | None:
    """The outermost module whose output is the branch term alone (before or after views and constant factors)
    and that does not contain the add."""
    add_scope = set(_scope(add))
    for node in _walk_scalings_back(term):
        for path in _scope(node):
            if path not in add_scope and path != "" and _is_module_output(node, path):
                return path
    return None


def _block_key(add: fx.Node, module: str | None) -> str:
    """Which block a residual add belongs to: the outermost enclosing module indexed in a container
    (``blocks.3``, ``model.layers.3``, ``layer2.1``; T5's ``block.3`` rather than its sublayer ``block.3.layer.1``),
    else the module holding the add, else the branch's."""
    for path in _scope(add):
        if path.rpartition(".")[2].isdigit():
            return path
    if module:
        parts = module.split(".")
        for i in range(len(parts)):
            if parts[i].isdigit():
                return ".".join(parts[: i + 1])
    scope = _scope(add)
    return scope[-1] if scope and scope[-1] else (module or add.name)


def _fork(a: fx.Node, b: fx.Node, order: dict) -> fx.Node | None:
    """The latest common ancestor of ``a`` and ``b`` (searched in growing windows before them)."""
    lo = min(order[a], order[b])
    window = 64
    while True:
        floor = max(0, lo - window)
        common = set(_bounded_ancestors(a, floor, order)) & set(_bounded_ancestors(b, floor, order))
        if common:
            return max(common, key=order.__getitem__)
        if floor == 0:
            return None
        window *= 4


def _stream_candidates(side: fx.Node, depth: int = 3) -> list[fx.Node]:
    """The stream a branch was added to: ``side`` itself or, for ``(x + f(x)) + g(x)`` (a parallel block written
    left to right), the operands of the earlier adds."""
    out = [side]
    if depth and side.op == "call_function" and ops.is_add(side.target):
        for a in side.args[:2]:
            if isinstance(a, fx.Node):
                out += _stream_candidates(a, depth - 1)
    return out


@dataclass
class Branch:
    """One residual branch ``x + f(x)`` found in the graph."""

    add: fx.Node
    stream: fx.Node
    term: fx.Node
    module: str | None  # the module whose output is the branch alone (None: no such boundary)
    block: str  # the block it belongs to (for the depth count)
    params: set[str]  # placeholders of the parameters used inside the branch


def find_branches(ctx: SiteContext) -> tuple[list[Branch], list[str]]:
    """Residual adds: ``add(x, f)`` where ``x`` is an ancestor of ``f`` and a parameter is used on the way (a
    plain ``x + g(x)`` without weights, e.g. GELU's tanh polynomial, is not a branch).  An add whose two sides are
    both computed from a common input with weights (a projection shortcut) is not a residual add: the block is a
    transition and keeps its scale.  Returns (branches, notes)."""
    graph = ctx.analysis.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    origin = ctx.analysis.dim_graph.origin
    out: list[Branch] = []
    notes: list[str] = []
    shortcuts: list[str] = []
    long_skips: list[str] = []
    adds: set[fx.Node] = set()  # residual adds found so far (graph order: inner blocks first)
    inside: set[fx.Node] = set()  # nodes inside the branches found (a parallel block's attn + mlp sum)
    for node in graph.nodes:
        if node.op != "call_function" or not ops.is_add(node.target) or len(node.args) < 2:
            continue
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        va, vb = a.meta.get("val"), b.meta.get("val")
        if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)) or va.shape != vb.shape:
            continue
        found = False
        for side, branch in ((a, b), (b, a)):
            for stream in _stream_candidates(side):
                if order[branch] < order[stream] or stream not in set(
                        _bounded_ancestors(branch, order[stream], order)):
                    continue
                path = _between(stream, branch, order)
                if not _uses_params(path, origin):
                    continue
                if any(n in adds for n in path):  # a skip over whole residual blocks (U-Net, Funnel's decoder)
                    long_skips.append(module_of(node) or node.name)
                    found = True
                    break
                for term in _branch_terms(branch, stream, order, origin):
                    mod = _branch_module(term, node)
                    out.append(Branch(node, stream, term, mod, _block_key(node, mod),
                                      _uses_params(_between(stream, term, order), origin)))
                adds.add(node)
                inside.update(path)
                inside.add(branch)
                found = True
                break
            if found:
                break
        if not found and a.name in ctx.dep and b.name in ctx.dep:
            fork = _fork(a, b, order)
            if fork is not None and all(_uses_params(_between(fork, t, order), origin) for t in (a, b)):
                shortcuts.append(node)
    if long_skips:
        notes.append(f"{len(long_skips)} skip connection(s) over whole residual blocks (e.g. in '{long_skips[0]}'): "
                     "not a residual branch; not scaled, not counted in depth")
    shortcuts = [module_of(n) or n.name for n in shortcuts if n not in inside]
    if shortcuts:
        notes.append(f"{len(shortcuts)} projection-shortcut adds (weights on both sides, e.g. in "
                     f"'{shortcuts[0]}'): transition blocks, not residual branches; not scaled, not counted in depth")
    return out, notes


@site_finder("branch")
def _branches(ctx: SiteContext) -> list:
    if not ctx.find_branches:
        return []
    branches, notes = find_branches(ctx)
    names = {pd.placeholder: n for n, pd in ctx.analysis.params.items()}
    out: list = list(notes)
    for br in branches:
        for ph in br.params:
            if ph in names:
                ctx.params[names[ph]].in_branch = True
        fold = fold_targets(br.term, ctx.fold)
        out.append(Site("branch", br.module or "", "output", "", None, fold))
    ctx.blocks = list(dict.fromkeys(br.block for br in branches))  # graph order
    return out
