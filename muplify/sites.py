"""Where in the module tree a forward multiplier can act, and which parameters it folds into.

The folding itself is :mod:`muplify.fold`, the residual-branch search :mod:`muplify.branches`, the node questions
they share :mod:`muplify.nodes`.

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
from .branches import Branch, find_branches  # noqa: F401 - re-exported
from .fold import _FoldCtx, _param_of, fold_targets
from .nodes import _flat_args, _inside, _is_module_output, _walk_views_back, module_of, param_dependent_nodes
from .rules import CONTRACTING_KINDS, Use
from .registry import register_in
from .rules import table as ops

aten = torch.ops.aten

__all__ = ["SiteContext", "SITE_FINDERS", "site_finder", "find_sites", "readout_site", "query_site", "module_of",
           "fold_targets", "param_dependent_nodes"]


# ------------------------------------------------------------------------------------------------ graph helpers
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
    dep: set[fx.Node] = field(init=False)

    def __post_init__(self):
        wa = self.analysis
        names = {pd.placeholder: n for n, pd in wa.params.items()}
        self.fold = _FoldCtx(wa.view_origins, names)
        self.dep = param_dependent_nodes(wa.graph, set(names))


SiteFinder = Callable[[SiteContext], list]
SITE_FINDERS: dict[str, SiteFinder] = {}


def site_finder(kind: str) -> Callable[[SiteFinder], SiteFinder]:
    """Register the site finder of ``kind`` (``@site_finder("readout")``); a taken kind raises."""
    return register_in(SITE_FINDERS, "site finder", kind)


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
    chans = _distinct_channels(t, total)
    a, b = int(chans[0]), int(chans[-1]) + 1
    if len(chans) != b - a or (a, b) == (0, total):
        return None
    return n, module_of(n), (a, b, total)


def _distinct_channels(t: torch.Tensor, total: int) -> torch.Tensor:
    """``torch.unique(t)`` (sorted distinct values) for a tensor of channel indices in ``[0, total)``, by marking
    them instead of sorting every entry (the tensors are a whole activation's worth of indices)."""
    flat = t.reshape(-1)
    lo, hi = torch.aminmax(flat)
    if lo >= 0 and hi < total:
        idx = flat.long()
        if torch.equal(idx.to(flat.dtype), flat):  # whole numbers only (else torch.unique says what is there)
            seen = torch.zeros(total, dtype=torch.bool, device=t.device)  # (not the default device: meta)
            seen[idx] = True
            return seen.nonzero().reshape(-1)
    return torch.unique(t)


def query_site(attn_node: fx.Node, param_dependent: set[fx.Node]) -> tuple[str, tuple | None, fx.Node] | str:
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
        if n in seen:
            continue
        seen.add(n)
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
            args = [a for a in _flat_args(n.args) if isinstance(a, fx.Node) and a in param_dependent]
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
        if site.kind not in ("sdpa", "manual") or site.node in done:
            continue
        done.add(site.node)
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
