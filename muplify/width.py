"""Stage 2: symbolic width analysis.

Runs the per-op rules of :mod:`muplify.rules` over the captured graph, then decides (:mod:`muplify.evidence`) which
dims are *finite* (fixed as the model widens) and which are *infinite* (scale with width), from evidence, strongest
first (``evidence.STEPS``: one function per kind of evidence, each labelled with its tier, run in order; a dim keeps
the first reason that marks it):

1. ``hard``: axes of the model's inputs; kernel sizes; axes indexed, counted or selected by integers (embedding rows,
   ``one_hot`` classes, ``histc`` bins, ``scatter``/``index_add`` targets, ``x[..., i]``); the class axis of a loss;
   the stack axis of a weight used as independent matrices (experts); spatial axes (affine in the input's); the
   query and key positions of an attention op (a Perceiver's learned latents too); the
   rows of a table sliced to an input axis's length (``pos[:, :T]``); and
   everything these determine through products, sums and fixed multiples.
2. ``convention``: head_dim (or the head count) by ``head_scaling``; the group width of grouped convs; and where
   a fan or a reshaped dim would be a product of several scaling axes (width², e.g. heads × head_dim with no
   attention op to fix head_dim), all but one of them (the heads with ``head_scaling="heads"``), said in the notes.
3. ``readout``: a dim that a layer produces but no layer reads (no weight contracts it) and that reaches a model
   output (logits, a contrastive embedding) or a routing selection (``topk``/``argmax`` over experts).  A model
   output that layers also read (hidden states, pooled features) keeps the width.
4. ``source``: the feature axis of a parameter fed as data (a learned table) that no layer produces.
5. ``guess`` (marked): an input-side bottleneck produced only from finite inputs whose size the model's config
   states separately from its width (ALBERT's ``embedding_size``); a timm ``head_hidden_size``; a group width seen
   on one channel count only; a readout-like dim the size of the width, taken to scale; axes of tensors the forward
   creates (``arange`` for sinusoidal features) that no layer produces, unless what they build has a scaling size;
   K/V heads repeated to the query heads (GQA), taken to scale (a family may keep its K/V head count fixed); a dim
   narrower than the width that layers write and read and the model returns (a VAE's latent), and an embedding of
   its own size that a layer reads (a conditioning embedding), both taken to scale.

Every other dim scales; an infinite dim gets the sympy expression ``(size / width_size) * w``, so an MLP
down-projection has ``fan_in = 4*w``; finite dims are integers.  The width itself is the model's declared width
(transformers config, timm attribute) when it has one, else ``width=``, else the dim most parameter axes use.

    >>> from muplify.capture import capture
    >>> from muplify.models import MLP
    >>> wa = analyse(capture(MLP(width=64)))
    >>> wa.params["net.2.weight"].axis_exprs
    [w, w]
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx as fx

from .capture import Capture
from .errors import WidthError
from .evidence import count_axes, forced_for, solve
from .plan import Decision, decided_by_text
from .rules import AttentionSite, DimGraph, Selection, Use, apply_rule

__all__ = ["WidthAnalysis", "ParamDims", "ScalingDim", "analyse", "W"]

W = sympy.Symbol("w", positive=True, integer=True)



@dataclass
class ParamDims:
    name: str  # canonical name (first in named_parameters())
    aliases: list[str]
    shape: tuple[int, ...]
    axis_exprs: list[sympy.Expr]  # per axis, in the width symbol
    uses: list[Use]
    placeholder: str
    decision: Decision = Decision.GRAPH  # GRAPH when every fact the role rests on comes from the graph
    why: str = ""  # for a GUESS: what was guessed
    axis_roots: list[int] = field(default_factory=list)  # per axis: the dim id (comparable across axes/params)
    axis_why: list[str] = field(default_factory=list)  # per axis: why it is finite, or which scaling dim it is

    @property
    def decided_by(self) -> str:
        return decided_by_text(self.decision, self.why)


@dataclass
class ScalingDim:
    """One dim that grows with width (several may share a size)."""

    root: int
    size: int
    expr: sympy.Expr
    param_axes: int  # how many parameter axes use it
    examples: list[str]  # a few "param[axis]"
    why: str = ""  # "width", or why it is taken to scale


@dataclass
class WidthAnalysis:
    width_symbol: sympy.Symbol
    width_size: int
    params: dict[str, ParamDims]
    attention: list[AttentionSite]
    graph: fx.Graph
    dim_graph: DimGraph
    candidates: list[tuple[int, int]] = field(default_factory=list)  # (size, parameter-axis count) of infinite dims
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    finite_roots: dict[int, str] = field(default_factory=dict)  # union-find root -> why it is finite
    # how the width was chosen: "width=" | "config.<attr>" | "timm <attr>" | "most-used"
    width_source: str = "most-used"
    width_root: int = -1
    scaling_dims: list[ScalingDim] = field(default_factory=list)  # every dim that scales, the width first
    finite_kinds: dict[int, str] = field(default_factory=dict)  # root -> hard | convention | readout | source | guess
    guesses: dict[int, str] = field(default_factory=dict)  # root -> the guess made about it (finite or scaling)

    def dim_expr(self, d: int) -> sympy.Expr:
        """The expression of any dim of the graph (parameter axis or not)."""
        return _dim_expr(self.dim_graph, self.finite_roots, self.width_size, d, self._composed)

    @property
    def _composed(self) -> dict[int, sympy.Expr]:
        if "_composed_exprs" not in self.__dict__:
            self.__dict__["_composed_exprs"] = _composed_exprs(self.dim_graph, self.finite_roots, self.width_size)
        return self.__dict__["_composed_exprs"]

    # -- the queries later stages ask (instead of reading the dim graph's union-find) ---------------------------------
    def roots(self, node: fx.Node | str) -> list[int]:
        """The dim ids (union-find roots) of every axis of ``node`` (tuple values flattened); a parameter may be
        named by its placeholder (the plan's name for it)."""
        g = self.dim_graph

        def flat(x):
            if isinstance(x, int):
                yield x
            elif isinstance(x, list):
                for y in x:
                    yield from flat(y)

        return [g.find(d) for d in flat(g.node_dims.get(self._placeholder(node)))]

    def selection(self, root: int) -> Selection | None:
        """How an op selects along dim ``root`` (top-k / argmax / sort, or an integer index), if one does."""
        g = self.dim_graph
        return next((sel for d, sel in g.selected.items() if g.find(d) == root), None)

    def loss_roots(self) -> set[int]:
        """Dim ids of class dims a loss reads by its target."""
        return {self.dim_graph.find(d) for d in self.dim_graph.loss_dims}

    @property
    def view_origins(self) -> Mapping[fx.Node, tuple[str, list]]:
        """Node -> (parameter placeholder, axis map) of every tensor that is a view of a parameter (read-only)."""
        return MappingProxyType(self.dim_graph.origin)

    def origin(self, node: fx.Node | str) -> tuple[str, list] | None:
        """(parameter placeholder, axis map) when ``node`` is a view of a parameter, else None."""
        return self.dim_graph.origin.get(self._placeholder(node))

    def _placeholder(self, node: fx.Node | str) -> fx.Node | None:
        if not isinstance(node, str):
            return node
        if "_placeholders" not in self.__dict__:
            self.__dict__["_placeholders"] = {n.name: n for n in self.graph.nodes if n.op == "placeholder"}
        return self.__dict__["_placeholders"].get(node)

    def is_infinite(self, name: str, axes) -> bool:
        exprs = self.params[name].axis_exprs
        return any(exprs[a].has(self.width_symbol) for a in axes)

    def guessed_params(self) -> dict[str, str]:
        """Parameters whose role rests on a guess, with the reason."""
        return {n: p.decided_by for n, p in self.params.items() if p.decision is not Decision.GRAPH}

    def axis_table(self) -> dict[tuple[str, int], tuple[int, bool]]:
        """(parameter, axis) -> (size, scales): what a second analysis of the same model at another width (a base
        model) is compared with, axis by axis."""
        return {(n, a): (p.shape[a], bool(p.axis_exprs[a].has(self.width_symbol)))
                for n, p in self.params.items() for a in range(len(p.shape))}


def _dim_expr(g: DimGraph, finite: dict[int, str], width_size: int, d: int,
              composed: dict[int, sympy.Expr] | None = None) -> sympy.Expr:
    if g.size[d] <= 1 or g.find(d) in finite:
        return sympy.Integer(max(g.size[d], 1))
    if composed and g.find(d) in composed:
        return composed[g.find(d)]
    return sympy.Rational(g.size[d], width_size) * W


def _composed_exprs(g: DimGraph, finite: dict[int, str], width_size: int) -> dict[int, sympy.Expr]:
    """Exact expressions for scaling dims made of finite and scaling parts: a fused projection's output
    ``w/16 + 32`` (dt_rank + 2 * d_state), rather than its size as a multiple of the width."""
    out: dict[int, sympy.Expr] = {}
    for kind, o, parts in g.relations:
        ro = g.find(o)
        if kind not in ("sum", "prod") or ro in finite or ro in out:
            continue
        rparts = [g.find(p) for p in parts]
        if all(p not in finite for p in rparts):
            continue  # only scaling parts: the plain multiple of the width says the same
        exprs = [_dim_expr(g, finite, width_size, p) for p in rparts]
        e = sympy.Add(*exprs) if kind == "sum" else sympy.Mul(*exprs)
        if e.has(W) and e.subs(W, width_size) == g.size[ro]:
            out[ro] = sympy.expand(e)
    return out


# ---------------------------------------------------------------------------------------------------- the graph
def _run_rules(g: DimGraph, graph: fx.Graph, gm: torch.nn.Module | None, cap: Capture | None) -> None:
    for node in graph.nodes:
        g.alloc(node)
        if node.op == "placeholder" and cap is not None and node.name in cap.param_names:
            g.origin[node] = (node.name, list(range(len(g.dims(node) or []))))
        elif node.op == "call_function":
            apply_rule(g, node, lambda n: _recurse(g, n, gm))


def _recurse(g: DimGraph, node: fx.Node, gm) -> None:
    """Higher-order ops (e.g. ``wrap_with_set_grad_enabled``) carry a subgraph: analyse it in place."""
    sub_node = next((a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"), None)
    if sub_node is None or gm is None:
        return
    sub = getattr(gm, sub_node.target, None)
    if not isinstance(sub, fx.GraphModule):
        return
    inputs = [a for a in node.args if isinstance(a, fx.Node) and a is not sub_node]
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    for outer, inner in zip(inputs, placeholders):  # parameters passed in stay parameters inside
        g.alloc(inner)
        if outer in g.origin:
            g.origin[inner] = g.origin[outer]
            if outer in g.more_origins:
                g.more_origins[inner] = g.more_origins[outer]
    _run_rules(g, sub.graph, sub, None)
    for outer, inner in zip(inputs, placeholders):
        g.eq_axes(outer, inner)
    out = next(n for n in sub.graph.nodes if n.op == "output")
    outs = out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
    mine = g.node_dims.get(node)
    if mine and isinstance(mine[0], list):
        for inner, dims in zip(outs, mine):
            di = g.dims(inner)
            if di is not None and isinstance(dims, list):
                for a, b in zip(di, dims):
                    g.eq(a, b)




# ---------------------------------------------------------------------------------------------------- analyse
def analyse(cap: Capture, width: int | None = None, head_scaling: str = "heads",
            gm: torch.nn.Module | None = None) -> WidthAnalysis:
    """Assign every parameter axis a sympy expression in the width symbol ``w``."""
    if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width <= 0):
        raise WidthError(f"width must be a positive int (the size of the width dimension), got {width!r}")
    g = DimGraph()
    _run_rules(g, cap.graph, gm if gm is not None else cap.graph_module, cap)
    g.unify_factorizations()
    ph_nodes = {n.name: n for n in cap.graph.nodes if n.op == "placeholder"}
    placeholders = _one_placeholder_per_param(g, cap, ph_nodes)
    param_axes = {ph: g.node_dims[ph_nodes[ph]] for ph in placeholders}

    forced: set[int] = set()
    if width is not None:
        forced = forced_for(g, param_axes, width, solve(g, cap, param_axes, head_scaling))
    sol = solve(g, cap, param_axes, head_scaling, width, forced)
    finite, root, source, guesses, notes = sol.finite, sol.root, sol.source, sol.guesses, sol.notes
    if root is None:
        shapes = {ns[0]: tuple(g.size[d] for d in param_axes[ph]) for ph, ns in placeholders.items()}
        raise WidthError(
            "no width dimension found: every parameter dimension is tied to the model's inputs or outputs, a kernel, "
            f"or a head_dim. Parameter shapes: {_short(shapes)}. If the model has a hidden size that should scale, "
            "pass width=<its size> (dimensions of that size then scale even if they reach an output)."
        )
    width_size = g.size[root]
    counts = count_axes(g, cap, param_axes, finite)
    if source == "most-used":
        best = counts[root]
        top = sorted({g.size[r] for r, c in counts.items() if c == best})
        if len(top) > 1:
            notes.append(f"width dims {top} are used equally often; chose the smallest ({top[0]}); pass width= to "
                         "choose")

    for ph, uses in g.uses.items():  # a table fed whole as data (rows of fixed count x scaling features)
        dims = param_axes.get(ph, [])
        for i, u in enumerate(uses):
            if u.detail != "data":
                continue
            rows = tuple(a for a in u.fan_out_axes if g.size[dims[a]] > 1 and g.find(dims[a]) in finite)
            feats = tuple(a for a in u.fan_out_axes if g.size[dims[a]] > 1 and g.find(dims[a]) not in finite)
            if rows and feats:  # a new record: the rules' records stay what the rules said
                uses[i] = dataclasses.replace(u, kind="embedding", fan_in_axes=rows, fan_out_axes=feats)

    composed = _composed_exprs(g, finite, width_size)
    expr = lambda d: _dim_expr(g, finite, width_size, d, composed)  # noqa: E731
    params: dict[str, ParamDims] = {}
    for ph, names in placeholders.items():
        dims = param_axes[ph]
        uses = g.uses.get(ph, [])
        if not uses and len(dims) > 1 and g.size[dims[0]] == 1 and ph in ph_nodes:
            # unused and broadcast-shaped (a mask token (1, d), a cls token): the shape guess is "vector", marked as
            # a guess by decided_by; any other unused parameter gets the plan's shape guess
            uses = [Use("elementwise", ph_nodes[ph], -1, (), tuple(a for a, d in enumerate(dims) if g.size[d] > 1),
                        "shape guess: unused, broadcast-shaped")]
        why = [finite.get(g.find(d), "") if g.size[d] > 1 else "size 1" for d in dims]
        why = [w or ("width" if g.find(d) == root else f"scales (size {g.size[d]})") for w, d in zip(why, dims)]
        pd = ParamDims(names[0], names, tuple(g.size[d] for d in dims), [expr(d) for d in dims], uses, ph,
                       axis_roots=[g.find(d) for d in dims], axis_why=why)
        pd.decision, pd.why = _decided_by(pd, cap, g, guesses)
        params[names[0]] = pd

    scaling = _scaling_dims(g, cap, param_axes, counts, root, width_size, guesses, composed)
    candidates = sorted(((g.size[r], c) for r, c in counts.items()), key=lambda t: -t[1])
    if g.unknown_ops:
        notes.append("ops without a shape rule (their dims are unconstrained): " +
                     ", ".join(f"{k} x{v}" for k, v in sorted(g.unknown_ops.items())))
    wa = WidthAnalysis(W, width_size, params, g.attention, cap.graph, g, candidates, notes, list(cap.unused_params),
                       finite, source, root, scaling, dict(sol.kind), guesses)
    return wa


def _one_placeholder_per_param(g: DimGraph, cap: Capture, ph_nodes: dict[str, fx.Node]) -> dict[str, list[str]]:
    """A tied parameter can come as one placeholder per name: keep one, with every use and unified axes."""
    groups: dict[str, list[str]] = {}
    for ph, names in cap.param_names.items():
        groups.setdefault(names[0], []).append(ph)
    keep: dict[str, list[str]] = {}
    for canon, phs in groups.items():
        main = max(phs, key=lambda p: len(g.uses.get(p, [])))
        for other in phs:
            if other != main:
                for a, b in zip(g.node_dims.get(ph_nodes[other]) or [], g.node_dims[ph_nodes[main]]):
                    g.eq(a, b)
                g.uses.setdefault(main, []).extend(g.uses.pop(other, []))
        keep[main] = cap.param_names[main]
    return keep


def _decided_by(pd: ParamDims, cap: Capture, g: DimGraph, guesses: dict[int, str]) -> tuple[Decision, str]:
    if pd.name in cap.unused_params or not pd.uses or all(u.detail.startswith("shape guess") for u in pd.uses):
        return Decision.GUESS, "not used by the captured forward (pass example inputs that use it); role from its shape"
    known = [u for u in pd.uses if u.kind != "unknown"]
    if not known:
        ops = ", ".join(sorted({str(u.node.target) for u in pd.uses}))
        return Decision.GUESS, f"used only by ops without a shape rule ({ops}); role from its shape"
    why = [guesses[r] for r in dict.fromkeys(pd.axis_roots) if r in guesses]
    return (Decision.GUESS, "; ".join(why)) if why else (Decision.GRAPH, "")


def _scaling_dims(g, cap, param_axes, counts, root, width_size, guesses, composed) -> list[ScalingDim]:
    examples: dict[int, list[str]] = {}
    for ph, dims in param_axes.items():
        for a, d in enumerate(dims):
            r = g.find(d)
            if r in counts and len(examples.setdefault(r, [])) < 3:
                examples[r].append(f"{cap.param_names[ph][0]}[{a}]")  # noqa: PERF401
    out = []
    for r in sorted(counts, key=lambda r: (r != root, -counts[r], g.size[r])):
        why = "width" if r == root else guesses.get(r, "")
        out.append(ScalingDim(r, g.size[r], _dim_expr(g, {}, width_size, r, composed), counts[r],
                              examples.get(r, []), why))
    return out


def _short(d: dict, n: int = 8) -> str:
    items = list(d.items())
    s = ", ".join(f"{k}: {v}" for k, v in items[:n])
    return "{" + s + (f", ... ({len(items) - n} more)" if len(items) > n else "") + "}"
