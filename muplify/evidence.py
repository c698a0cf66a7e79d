"""Stage 2's evidence: which dims of the dim graph are finite, from the tiers listed in :mod:`muplify.width`
(``hard``, ``convention``, ``readout``, ``source``, marked ``guess``), and which dim is the width."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch.fx as fx

from .capture import Capture
from .errors import WidthError
from .rules import CONTRACTING_KINDS, DimGraph

HARD, CONVENTION, READOUT, SOURCE, GUESS = "hard", "convention", "readout", "source", "guess"


def _flat(x):
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [d for item in x for d in _flat(item)]


# ---------------------------------------------------------------------------------------------------- the solver
class _Solver:
    """Finite dims with their reasons and kinds; ``forced`` dims (the width, ``width=``) are never made finite."""

    def __init__(self, g: DimGraph, forced: set[int]):
        self.g, self.forced = g, forced
        self.finite: dict[int, str] = {}
        self.kind: dict[int, str] = {}

    def mark(self, d: int, why: str, kind: str) -> bool:
        r = self.g.find(d)
        if r in self.finite or r in self.forced or self.g.size[d] <= 1:
            return False
        self.finite[r], self.kind[r] = why, kind
        return True

    def propagate(self) -> None:
        """Through products, sums and fixed multiples until nothing changes."""
        g = self.g
        changed = True
        while changed:
            changed = False
            for kind, out, parts in g.relations:
                ro, rparts = g.find(out), [g.find(p) for p in parts]
                if kind == "scale":
                    a, b = ro, rparts[0]
                    if a in self.finite and b not in self.finite:
                        changed |= self.mark(b, self.finite[a], self.kind[a])
                    elif b in self.finite and a not in self.finite:
                        changed |= self.mark(a, self.finite[b], self.kind[b])
                elif ro in self.finite:
                    for p in parts:
                        changed |= self.mark(p, self.finite[ro] + " (factor of a finite dim)", self.kind[ro])
                elif rparts and all(p in self.finite for p in rparts):
                    kinds = {self.kind[p] for p in rparts}
                    changed |= self.mark(out, "product/sum of finite dims",
                                         next((k for k in (GUESS, SOURCE, READOUT, CONVENTION) if k in kinds), HARD))


def _roots(g: DimGraph, dims) -> set[int]:
    return {g.find(d) for d in _flat(dims) if g.size[d] > 1}


def _use_roots(g: DimGraph, param_axes: dict[str, list[int]], ph: str, axes) -> set[int]:
    dims = param_axes.get(ph) or []
    return {g.find(dims[a]) for a in axes if a < len(dims) and g.size[dims[a]] > 1}


@dataclass
class _Flow:
    """Which dims the model's weights read (contract) and write (produce), and from what."""

    consumed: set[int]
    produced: set[int]
    # root -> [(param, fan-in roots of that producing use, whether its input depends on the model's inputs)]
    producers: dict[int, list[tuple[str, set[int], bool]]]
    related: set[int]  # roots in a product/sum/multiple relation (heads x head_dim, splits of a fused output)
    readers: dict[int, list[set[int]]]  # root -> fan-out roots of every layer that reads it


def _input_dependent(graph: fx.Graph, cap: Capture) -> set[fx.Node]:
    dep = set(cap.user_inputs)
    for n in graph.nodes:
        if n.op == "call_function" and any(a in dep for a in _nodes_in(n.args) + _nodes_in(n.kwargs)):
            dep.add(n)
    return dep


def _nodes_in(x) -> list[fx.Node]:
    if isinstance(x, fx.Node):
        return [x]
    if isinstance(x, (list, tuple)):
        return [n for a in x for n in _nodes_in(a)]
    if isinstance(x, dict):
        return [n for a in x.values() for n in _nodes_in(a)]
    return []


def _flow(g: DimGraph, param_axes: dict[str, list[int]], dep: set[fx.Node]) -> _Flow:
    consumed, produced, producers, readers = set(), set(), {}, {}
    for ph, uses in g.uses.items():
        for u in uses:
            if u.kind not in CONTRACTING_KINDS:
                continue
            fin = _use_roots(g, param_axes, ph, u.fan_in_axes)
            fout = _use_roots(g, param_axes, ph, u.fan_out_axes)
            if u.kind != "embedding":  # an embedding's fan-in is indexed, not read as features
                consumed |= fin
                for r in fin:
                    readers.setdefault(r, []).append(fout)
            produced |= fout
            for r in fout:
                producers.setdefault(r, []).append((ph, fin if u.kind != "embedding" else set(), u.node in dep))
    related = {g.find(d) for _, out, parts in g.relations for d in (out, *parts)}
    changed = True
    while changed:  # the parts of a dim a layer reads are read too (heads x head_dim into o_proj)
        changed = False
        for kind, out, parts in g.relations:
            ro, rparts = g.find(out), {g.find(p) for p in parts}
            if ro in consumed and not rparts <= consumed:
                consumed |= rparts
                changed = True
            if kind == "scale" and rparts & consumed and ro not in consumed:
                consumed.add(ro)
                changed = True
    return _Flow(consumed, produced, producers, related, readers)


def _hard_and_conventions(S: _Solver, g: DimGraph, cap: Capture, head_scaling: str) -> None:
    for n in cap.user_inputs:
        for d in _flat(g.node_dims.get(n)):
            S.mark(d, f"axis of model input '{n.name}'", HARD)
    for d, why in g.finite_reasons.items():
        S.mark(d, why, HARD)
    S.propagate()
    if head_scaling == "heads":
        for a in g.attention:
            # with a single head, head_dim *is* the model width: only a real head axis can take the growth
            if a.heads is not None and g.size[a.heads] > 1:
                S.mark(a.head_dim, "head_dim (fixed by head_scaling='heads')", CONVENTION)
    elif head_scaling == "head_dim":
        for a in g.attention:
            if a.heads is not None:
                S.mark(a.heads, "number of heads (fixed by head_scaling='head_dim')", CONVENTION)
    else:
        raise ValueError(f"head_scaling must be 'heads' or 'head_dim', got {head_scaling!r}")
    S.propagate()


def _position_tables(S: _Solver, g: DimGraph, param_axes: dict[str, list[int]]) -> None:
    """A parameter's axis sliced to the length of a model input's axis is a table of positions read up to the
    sequence length (``pos[:, :T]``): its rows are fixed like an embedding's, whatever their size."""
    param_roots = {g.find(d) for axes in param_axes.values() for d in axes}
    for out, src in g.slices.items():
        r = g.find(out)
        if g.find(src) in param_roots and S.kind.get(r) == HARD and S.finite[r].startswith("axis of model input"):
            S.mark(src, f"rows of a table sliced to the length of an input axis ({S.finite[r]})", HARD)
    S.propagate()


def _group_widths(S: _Solver, g: DimGraph, guesses: dict[int, str], declared: set[int]) -> None:
    """Grouped convs: with channel counts that differ, a per-group width shared by all of them is fixed (RegNet's
    group width) and a shared group count means the group width scales (ResNeXt's cardinality).  One channel count
    only: a group count the config declares is fixed, else the group width is taken as fixed, marked as a guess."""
    convs = [(u, per, g.size[per], g.size[c], groups) for u, per, c, groups in g.grouped_convs if g.size[per] > 1]
    if not convs:
        return
    channels = {c for _, _, _, c, _ in convs}
    widths = {s for _, _, s, _, _ in convs}
    counts = {gr for *_, gr in convs}
    if len(channels) > 1 and len(widths) == 1:
        for _, per, s, _, _ in convs:
            S.mark(per, f"group width {s} shared by grouped convs of {sorted(channels)} channels", CONVENTION)
    elif len(channels) > 1 and len(counts) == 1 or counts <= declared:
        return  # a fixed group count (cardinality): the group width scales
    else:
        for _, per, s, c, gr in convs:
            if S.mark(per, f"group width {s} of a grouped conv ({c} channels in {gr} groups)", GUESS):
                guesses[g.find(per)] = (f"the group width {s} of grouped convs ({c} channels in {gr} groups) is "
                                        "taken as fixed (seen at one channel count only)")
    S.propagate()


def _pick_width(g: DimGraph, counts: Counter, size: int | None) -> int | None:
    roots = [r for r in counts if size is None or g.size[r] == size]
    if not roots:
        return None
    best = max(counts[r] for r in roots)
    return min((r for r in roots if counts[r] == best), key=lambda r: (g.size[r], r))


def _count_axes(g: DimGraph, cap: Capture, param_axes: dict[str, list[int]], finite: dict[int, str],
                exclude: set[int] = frozenset()) -> Counter:
    counts: Counter = Counter()
    for ph, dims in param_axes.items():
        if cap.param_names[ph][0] in cap.unused_params:
            continue
        for d in dims:
            r = g.find(d)
            if g.size[d] > 1 and r not in finite and r not in exclude:
                counts[r] += 1
    return counts


def _solve(g: DimGraph, cap: Capture, param_axes: dict[str, list[int]], head_scaling: str, width: int | None,
           forced: set[int]):
    """Every finiteness decision; returns (solver, width root, width source, guesses, notes)."""
    guesses: dict[int, str] = {}
    notes: list[str] = []
    S = _Solver(g, set(forced))
    _hard_and_conventions(S, g, cap, head_scaling)
    _position_tables(S, g, param_axes)
    _group_widths(S, g, guesses, cap.hints.group_counts)
    for u, per, _c, _groups in g.grouped_convs:  # a fixed group width: each output channel is a small filter
        if g.size[per] <= 1 or g.find(per) in S.finite:
            u.kind, u.fan_in_axes, u.detail = "elementwise", (), "grouped_conv"
    flow = _flow(g, param_axes, _input_dependent(cap.graph, cap))

    out_roots: dict[int, list[str]] = {}
    for n in cap.user_outputs:
        for r in _roots(g, g.node_dims.get(n)):
            out_roots.setdefault(r, []).append(cap.output_names.get(n.name) or n.name)
    terminal = {r for r in set(out_roots) | {g.find(d) for d in g.selected}
                if r not in S.finite and r not in flow.consumed and g.size[r] > 1}

    # the width: the model's own width first, then width=, then the dim most parameter axes use
    counts = _count_axes(g, cap, param_axes, S.finite, exclude=terminal if width is None else set())
    hints = cap.hints
    source = "most-used"
    if width is not None:
        root, source = _pick_width(g, counts, width), "width="
    elif hints.width is not None and _pick_width(g, counts, hints.width) is not None:
        root, source = _pick_width(g, counts, hints.width), hints.width_source
    else:
        if hints.width is not None:
            notes.append(f"the model states its width as {hints.width_source}={hints.width}, but no scaling "
                         "dimension has that size; the width is the dimension most parameter axes use")
        root = _pick_width(g, counts, None)
    if root is None:
        return S, None, source, guesses, notes
    S.forced.add(root)
    wsize = g.size[root]

    # readout-like dims: produced, never read by a layer, reaching an output or a routing selection.  An output the
    # model names as a feature (hidden states, pooled features) of the width's size scales; named logits/loss, or
    # any other size, are readouts; an unnamed output of the width's size is taken as a readout, marked as a guess
    selected = {g.find(d): why for d, why in g.selected.items()}
    for r in sorted(terminal):
        if r in S.finite or r in S.forced:
            continue
        names = out_roots.get(r, [])
        shown = ", ".join(f"'{n}'" for n in names[:2])
        kinds = {_output_kind(n) for n in names}
        if not names:
            S.mark(r, f"{selected[r]} and read by no layer (a router's choice axis)", READOUT)
        elif "readout" in kinds or g.size[r] != wsize:
            S.mark(r, f"reaches model output {shown} and no layer reads it (readout-like)", READOUT)
        elif "feature" in kinds:
            continue  # a feature output of the width's size: it scales
        elif S.mark(r, f"reaches model output {shown} and no layer reads it (readout-like)", READOUT):
            guesses[r] = (f"output {shown} has the width's size ({g.size[r]}) and no layer reads it: taken as a "
                          "readout (fixed); pass width= to make it scale")
    S.propagate()

    # dims of an activation x activation product outside attention (an SSM state): fixed, like head_dim
    sites = {a.node for a in g.attention}
    for node, d in g.act_contractions:
        r = g.find(d)
        if node not in sites and r not in flow.consumed:
            S.mark(r, f"contracted between activations by {node.target} (a state / inner dim, like head_dim)",
                   CONVENTION)
    S.propagate()

    # learned constants: feature axes of parameters fed as data, or of tables read at fixed positions (a
    # relative-position table), that no input-dependent layer produces are sources, like the model's inputs
    data_roots = set()
    for ph, uses in g.uses.items():
        if any(u.detail == "data" for u in uses):
            data_roots |= {g.find(d) for d in param_axes.get(ph, []) if g.size[d] > 1}
    constant = {r for r, prods in flow.producers.items() if not any(dep for *_, dep in prods)}
    for r in sorted((data_roots - flow.produced) | constant):
        if r not in S.forced and r not in flow.related:
            S.mark(r, "feature axis of a learned constant (a table or parameter fed as data) that no "
                      "input-dependent layer produces", SOURCE)
    # axes of tensors the forward creates from a constant size (the arange of DiT's sinusoidal timestep features)
    # that no layer produces are inputs in all but name -- unless what they build has a scaling dim's size (Funnel
    # builds its sinusoidal position features at d_model): a size-based call, so a marked guess
    factors = {g.find(d) for kind, out, parts in g.relations if kind == "prod" for d in (out, *parts)}
    built_from: dict[int, set[int]] = {}
    for kind, out, parts in g.relations:
        if kind in ("sum", "scale"):
            for p in parts:
                built_from.setdefault(g.find(p), set()).add(g.find(out))
    built: list[tuple[int, set[int]]] = []
    for r in sorted({g.find(d) for d in g.created} - flow.produced - factors):
        reach, todo = {r}, [r]
        while todo:
            for o in built_from.get(todo.pop(), ()):
                if o not in reach:
                    reach.add(o)
                    todo.append(o)
        scaling_sizes = {g.size[x] for x in counts if x not in S.finite and x not in reach} | {wsize}
        if r in S.finite or r in S.forced or any(g.size[x] in scaling_sizes for x in reach):
            continue
        if S.mark(r, "axis of a tensor the forward creates (arange, zeros, a literal) that no layer produces",
                  GUESS):
            built.append((r, reach))
    S.propagate()
    for r, reach in built:  # the guess is named on every dim it fixed (the Linear reading cat([cos, sin]))
        for x in reach:
            if x in S.finite:
                guesses.setdefault(x, f"dim of size {g.size[x]} is built in the forward from a constant of size "
                                      f"{g.size[r]} (arange, zeros, a literal) that no layer produces: taken as "
                                      "fixed, like an input")

    # input-side bottlenecks whose size the config states apart from the width; timm heads of their own size
    changed = True
    while changed:
        changed = False
        for r, prods in flow.producers.items():
            r = g.find(r)
            if r in S.finite or r in S.forced or r in flow.related or r not in flow.consumed or \
                    g.size[r] == wsize or g.size[r] not in hints.sizes:
                continue
            if any(dep and all(f in S.finite for f in fin) for _, fin, dep in prods):
                attrs = ", ".join(hints.sizes[g.size[r]][:2])
                if S.mark(r, f"input-side dim of size {g.size[r]} = {attrs}", GUESS):
                    guesses[r] = (f"dim of size {g.size[r]} is computed from the inputs by input layers and the "
                                  f"config states it apart from the width ({attrs}): taken as fixed")
                    changed = True
    # an embedding's feature axis of a size the config states apart from the width, concatenated with other dims
    # into a scaling one (MobileBERT's readout: [embedding (e) ; extra (w - e)]): if e is fixed, the other part is
    # w - e, which no proportional expression states -- so the scaling reading is a guess, named
    for kind, out, parts in g.relations:
        if kind != "sum" or g.find(out) in S.finite:
            continue
        for p in parts:
            r = g.find(p)
            prods = flow.producers.get(r, [])
            if r not in S.finite and g.size[r] != wsize and g.size[r] in hints.sizes and prods and \
                    all(not fin for _, fin, _dep in prods):
                attrs = ", ".join(hints.sizes[g.size[r]][:2])
                guesses.setdefault(r, f"embedding dim of size {g.size[r]} (= {attrs}) is concatenated into a "
                                      f"scaling dim of size {g.size[g.find(out)]}: taken to scale; if it is fixed "
                                      "the other part is width minus it, not proportional: pass base=")
    if hints.head_hidden_size is not None:  # a head read only by the readout
        for r in list(counts):
            r = g.find(r)
            read_by_readouts = flow.readers.get(r) and all(all(o in S.finite for o in outs)
                                                           for outs in flow.readers[r])
            if g.size[r] == hints.head_hidden_size and g.size[r] != wsize and read_by_readouts and S.mark(
                    r, f"timm head_hidden_size={g.size[r]} (a head of its own size)", GUESS):
                guesses[r] = (f"dim of size {g.size[r]} = the model's head_hidden_size (apart from num_features): "
                              "taken as fixed")
    S.propagate()
    _one_scaling_axis_per_fan(S, g, param_axes, head_scaling, notes)
    _kv_head_guesses(S, g, guesses)
    return S, root, source, guesses, notes


def _kv_head_guesses(S: _Solver, g: DimGraph, guesses: dict[int, str]) -> None:
    """K/V heads repeated to the query heads (GQA: ``repeat_interleave``, or expand + reshape) are read as a fixed
    fraction of the query heads, so they scale; a model family may instead keep its K/V head count at every width
    (Llama 3: 8), and one width cannot tell: a named guess on the K/V axis and the projection axes built from it."""
    heads = {g.find(a.heads) for a in g.attention if a.heads is not None}
    kv: set[int] = set()  # K/V head roots
    for kind, out, parts in g.relations:
        ro = g.find(out)
        if ro not in heads or kind not in ("scale", "prod") or ro in S.finite:
            continue
        for p in parts:
            r = g.find(p)
            if r != ro and g.size[r] > 1 and r not in S.finite and g.size[r] < g.size[ro]:
                kv.add(r)
    # no sizes in the text: a plan reused at another width (muplify.reuse) keeps it
    why = ("K/V heads repeated to the query heads (GQA): taken to grow with width (a fixed group size); if the model "
           "keeps its K/V head count at every width (Llama 3 keeps 8), they are fixed and K/V are output-like. One "
           "width cannot tell: pass base=<the model at the base width> (tune and transfer read it from two widths)")
    for r in kv:
        guesses.setdefault(r, why)
    for kind, out, parts in g.relations:
        if kv and kind == "prod" and g.find(out) not in S.finite and any(g.find(p) in kv for p in parts):
            guesses.setdefault(g.find(out), why)


def _one_scaling_axis_per_fan(S: _Solver, g: DimGraph, param_axes: dict[str, list[int]], head_scaling: str,
                              notes: list[str]) -> None:
    """A fan spread over several scaling axes would grow as width² (XLNet/Funnel store projections as
    (d_model, n_head, d_head) and contract heads × head_dim together, with no attention op to fix head_dim).  μP
    widths grow linearly, so one axis of such a fan scales: the head count (the outer axis) with
    ``head_scaling="heads"``, the inner axis with ``"head_dim"``; the others are fixed, by the same convention that
    fixes head_dim at an attention op."""
    # dims that multiply into one size: the factors of a reshaped dim ((…, 3w) -> (…, 3, heads, head_dim) with no
    # attention op), the axes of one multi-axis fan
    groups = [(parts, f"a dim of size {g.size[out]}") for kind, out, parts in g.relations if kind == "prod"]
    for ph, uses in g.uses.items():
        dims = param_axes.get(ph, [])
        groups += [([dims[a] for a in sorted(a % len(dims) for a in axes)], f"of {ph.removeprefix('p_')}")
                   for u in uses if u.kind in CONTRACTING_KINDS and dims for axes in (u.fan_in_axes, u.fan_out_axes)]
    seen: dict[tuple, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for dims, where in groups:
            roots = [r for r in dict.fromkeys(g.find(d) for d in dims if g.size[d] > 1) if r not in S.finite]
            if len(roots) < 2:
                continue
            keep = next((r for r in roots if r in S.forced), roots[0] if head_scaling == "heads" else roots[-1])
            sizes = tuple(g.size[r] for r in roots)
            fixed = tuple(g.size[r] for r in roots if r != keep and S.mark(
                r, f"one of several scaling axes multiplied together (sizes {list(sizes)}, {where}): fixed by "
                   f"head_scaling={head_scaling!r}", CONVENTION))
            if fixed:
                changed = True
                seen.setdefault((sizes, g.size[keep], fixed), []).append(where)
        S.propagate()
    for (sizes, kept, fixed), names in seen.items():
        notes.append(f"{len(names)} fan(s) or reshaped dim(s) (e.g. {names[0]}) span axes of sizes {list(sizes)} "
                     f"that would all scale (width²): size {kept} scales, {list(fixed)} fixed "
                     f"(head_scaling={head_scaling!r}); pass base= to read every fan from a base model")


_READOUT_NAMES = ("logit", "loss", "score", "prediction")
_FEATURE_NAMES = ("hidden", "pooler", "embed", "feature", "state")


def _output_kind(path: str) -> str:
    """What a model's own name for an output says it is: the last key of its path ("logits",
    "text_model_output.pooler_output")."""
    last = path.rsplit(".", 1)[-1].lower()
    if any(k in last for k in _READOUT_NAMES):
        return "readout"
    if any(k in last for k in _FEATURE_NAMES):
        return "feature"
    return ""


def _forced_for(g: DimGraph, param_axes: dict[str, list[int]], width: int, S: _Solver) -> set[int]:
    """``width=``: every dim of that size scales unless hard evidence fixes it (an input axis, a kernel, an index)."""
    sized = {g.find(d) for dims in param_axes.values() for d in dims if g.size[d] == width}
    if not sized:
        sizes = sorted({g.size[d] for dims in param_axes.values() for d in dims})
        raise WidthError(f"width={width} matches no parameter dimension; parameter dimension sizes are {sizes}")
    forced = {r for r in sized if S.kind.get(r) != HARD}
    if not forced:
        why = "; ".join(sorted({S.finite[r] for r in sized}))
        raise WidthError(f"width={width}: every dimension of that size is fixed ({why}); pass the size of a "
                         "hidden dimension")
    return forced
