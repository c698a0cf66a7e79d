"""Stage 2's evidence: which dims of the dim graph are finite, from the tiers listed in :mod:`muplify.width`
(``hard``, ``convention``, ``readout``, ``source``, marked ``guess``), and which dim is the width.

:func:`solve` runs :data:`STEPS`, an ordered list of functions, one per kind of evidence, over one shared record of
what is known so far; supporting a new kind of evidence is one function and its place in the list."""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .capture import Capture
from .errors import WidthError
from .evidence_state import CONVENTION, GUESS, HARD, READOUT, SOURCE, Evidence, Solver
from .flow import flat_dims, flow_of, input_dependent, roots
from .named_guesses import concatenated_embeddings, kv_heads_repeated, returned_latents, own_size_embeddings
from .rules import CONTRACTING_KINDS, DimGraph


# ---------------------------------------------------------------------------------------------------- the tiers
def _input_axes(ev: Evidence) -> None:
    """hard: axes of the model's inputs, and what the op rules fixed (kernels, indexed/counted axes, loss classes,
    expert stacks, spatial axes)."""
    S, g = ev.S, ev.g
    for n in ev.cap.user_inputs:
        for d in flat_dims(g.node_dims.get(n)):
            S.mark(d, f"axis of model input '{n.name}'", HARD)
            ev.input_roots.add(g.find(d))
    for d, why in g.finite_reasons.items():
        S.mark(d, why, HARD)
    S.propagate()


def _head_convention(ev: Evidence) -> None:
    """convention: head_dim (``head_scaling="heads"``) or the head count (``"head_dim"``) at every attention op."""
    S, g = ev.S, ev.g
    if ev.head_scaling == "heads":
        for a in g.attention:
            # with a single head, head_dim *is* the model width: only a real head axis can take the growth
            if a.heads is not None and g.size[a.heads] > 1:
                S.mark(a.head_dim, "head_dim (fixed by head_scaling='heads')", CONVENTION)
    elif ev.head_scaling == "head_dim":
        for a in g.attention:
            if a.heads is not None:
                S.mark(a.heads, "number of heads (fixed by head_scaling='head_dim')", CONVENTION)
    else:
        raise ValueError(f"head_scaling must be 'heads' or 'head_dim', got {ev.head_scaling!r}")
    S.propagate()


def _position_tables(ev: Evidence) -> None:
    """hard: a parameter's axis sliced to the length of a model input's axis is a table of positions read up to the
    sequence length (``pos[:, :T]``): its rows are fixed like an embedding's, whatever their size."""
    S, g = ev.S, ev.g
    param_roots = {g.find(d) for axes in ev.param_axes.values() for d in axes}
    for out, src in g.slices.items():
        r = g.find(out)
        if g.find(src) in param_roots and r in ev.input_roots and r in S.finite:
            S.mark(src, f"rows of a table sliced to the length of an input axis ({S.finite[r]})", HARD)
    S.propagate()


def _group_widths(ev: Evidence) -> None:
    """convention (guess on one channel count): grouped convs with channel counts that differ and one per-group
    width share a fixed group width (RegNet's); a shared group count means the group width scales (ResNeXt's
    cardinality).  One channel count only: a group count the config declares is fixed, else the group width is
    taken as fixed, marked as a guess.  A conv whose group width is fixed is a bank of small filters: its uses are
    elementwise from here on (new records; the rules' stay as they were)."""
    S, g = ev.S, ev.g
    convs = [(u, per, g.size[per], g.size[c], groups) for u, per, c, groups in g.grouped_convs if g.size[per] > 1]
    channels = {c for _, _, _, c, _ in convs}
    widths = {s for _, _, s, _, _ in convs}
    counts = {gr for *_, gr in convs}
    if convs and len(channels) > 1 and len(widths) == 1:
        for _, per, s, _, _ in convs:
            S.mark(per, f"group width {s} shared by grouped convs of {sorted(channels)} channels", CONVENTION)
        S.propagate()
    elif convs and not (len(channels) > 1 and len(counts) == 1 or counts <= ev.cap.hints.group_counts):
        for _, per, s, c, gr in convs:
            if S.mark(per, f"group width {s} of a grouped conv ({c} channels in {gr} groups)", GUESS):
                ev.guesses[g.find(per)] = (f"the group width {s} of grouped convs ({c} channels in {gr} groups) is "
                                           "taken as fixed (seen at one channel count only)")
        S.propagate()
    # else: none, or a fixed group count (ResNeXt's cardinality): the group width scales
    for u, per, _c, _groups in g.grouped_convs:
        if g.size[per] <= 1 or g.find(per) in S.finite:
            g.replace_use(u, dataclasses.replace(u, kind="elementwise", fan_in_axes=(), detail="grouped_conv"))


def _weights_flow(ev: Evidence) -> None:
    """Which dims the weights read and write, which reach the model's outputs, and the terminal ones (produced,
    read by no layer, reaching an output or a selection): what the width choice and the readout tier look at."""
    g, S = ev.g, ev.S
    ev.flow = flow_of(g, ev.param_axes, input_dependent(ev.cap.graph, ev.cap))
    for n in ev.cap.user_outputs:
        for r in roots(g, g.node_dims.get(n)):
            ev.out_roots.setdefault(r, []).append(ev.cap.output_names.get(n.name) or n.name)
    ev.terminal = {r for r in set(ev.out_roots) | {g.find(d) for d in g.selected}
                   if r not in S.finite and r not in ev.flow.consumed and g.size[r] > 1}


def _choose_width(ev: Evidence) -> None:
    """The width: the model's own width first (a config's hidden size, a timm attribute), then ``width=``, then the
    dim most parameter axes use (terminal dims left out: a readout's classes are not the width)."""
    g, cap, hints = ev.g, ev.cap, ev.cap.hints
    ev.counts = counts = count_axes(g, cap, ev.param_axes, ev.S.finite,
                                     exclude=ev.terminal if ev.width is None else set())
    if ev.width is not None:
        ev.root, ev.source = _pick_width(g, counts, ev.width), "width="
    elif hints.width is not None and _pick_width(g, counts, hints.width) is not None:
        ev.root, ev.source = _pick_width(g, counts, hints.width), hints.width_source
    else:
        if hints.width is not None:
            ev.notes.append(f"the model states its width as {hints.width_source}={hints.width}, but no scaling "
                            "dimension has that size; the width is the dimension most parameter axes use")
        ev.root = _pick_width(g, counts, None)
    if ev.root is not None:
        ev.S.forced.add(ev.root)


def _readouts(ev: Evidence) -> None:
    """readout: terminal dims.  An output the model names as a feature (hidden states, pooled features) of the
    width's size scales; named logits/loss, or any other size, are readouts; an unnamed output of the width's size
    is taken as a readout, marked as a guess; a selection's axis read by no layer is a router's choice."""
    g, S = ev.g, ev.S
    wsize = g.size[ev.root]
    selected = {g.find(d): why for d, why in g.selected.items()}
    for r in sorted(ev.terminal):
        if r in S.finite or r in S.forced:
            continue
        names = ev.out_roots.get(r, [])
        shown = ", ".join(f"'{n}'" for n in names[:2])
        kinds = {_output_kind(n) for n in names}
        if not names:
            S.mark(r, f"{selected[r]} and read by no layer (a router's choice axis)", READOUT)
        elif "readout" in kinds or g.size[r] != wsize:
            S.mark(r, f"reaches model output {shown} and no layer reads it (readout-like)", READOUT)
        elif "feature" in kinds:
            continue  # a feature output of the width's size: it scales
        elif S.mark(r, f"reaches model output {shown} and no layer reads it (readout-like)", READOUT):
            ev.guesses[r] = (f"output {shown} has the width's size ({g.size[r]}) and no layer reads it: taken as a "
                             "readout (fixed); pass width= to make it scale")
    S.propagate()


def _state_dims(ev: Evidence) -> None:
    """convention: dims of an activation x activation product outside attention (an SSM state) are fixed, like
    head_dim."""
    g, S = ev.g, ev.S
    sites = {a.node for a in g.attention}
    for node, d in g.act_contractions:
        r = g.find(d)
        if node not in sites and r not in ev.flow.consumed:
            S.mark(r, f"contracted between activations by {node.target} (a state / inner dim, like head_dim)",
                   CONVENTION)
    S.propagate()


def _learned_constants(ev: Evidence) -> None:
    """source: feature axes of parameters fed as data, or of tables read at fixed positions (a relative-position
    table), that no input-dependent layer produces, like the model's inputs."""
    g, S, flow = ev.g, ev.S, ev.flow
    data_roots = set()
    for ph, uses in g.uses.items():
        if any(u.detail == "data" for u in uses):
            data_roots |= {g.find(d) for d in ev.param_axes.get(ph, []) if g.size[d] > 1}
    constant = {r for r, prods in flow.producers.items() if not any(dep for *_, dep in prods)}
    for r in sorted((data_roots - flow.produced) | constant):
        if r not in S.forced and r not in flow.related:
            S.mark(r, "feature axis of a learned constant (a table or parameter fed as data) that no "
                      "input-dependent layer produces", SOURCE)


def _created_axes(ev: Evidence) -> None:
    """guess: axes of tensors the forward creates from a constant size (the arange of DiT's sinusoidal timestep
    features) that no layer produces are inputs in all but name -- unless what they build has a scaling dim's size
    (Funnel builds its sinusoidal position features at d_model): a size-based call, so a marked guess, named on
    every dim it fixed (the Linear reading ``cat([cos, sin])``)."""
    g, S = ev.g, ev.S
    wsize = g.size[ev.root]
    factors = {g.find(d) for kind, out, parts in g.relations if kind == "prod" for d in (out, *parts)}
    built_from: dict[int, set[int]] = {}
    for kind, out, parts in g.relations:
        if kind in ("sum", "scale"):
            for p in parts:
                built_from.setdefault(g.find(p), set()).add(g.find(out))
    built: list[tuple[int, set[int]]] = []
    for r in sorted({g.find(d) for d in g.created} - ev.flow.produced - factors):
        reach, todo = {r}, [r]
        while todo:
            for o in built_from.get(todo.pop(), ()):
                if o not in reach:
                    reach.add(o)
                    todo.append(o)
        scaling_sizes = {g.size[x] for x in ev.counts if x not in S.finite and x not in reach} | {wsize}
        if r in S.finite or r in S.forced or any(g.size[x] in scaling_sizes for x in reach):
            continue
        if S.mark(r, "axis of a tensor the forward creates (arange, zeros, a literal) that no layer produces",
                  GUESS):
            built.append((r, reach))
    S.propagate()
    for r, reach in built:
        for x in reach:
            if x in S.finite:
                ev.guesses.setdefault(x, f"dim of size {g.size[x]} is built in the forward from a constant of size "
                                         f"{g.size[r]} (arange, zeros, a literal) that no layer produces: taken as "
                                         "fixed, like an input")


def _input_bottlenecks(ev: Evidence) -> None:
    """guess: an input-side dim computed from finite inputs only, whose size the config states apart from the width
    (ALBERT's ``embedding_size``), is fixed."""
    g, S, flow, hints = ev.g, ev.S, ev.flow, ev.cap.hints
    wsize = g.size[ev.root]
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
                    ev.guesses[r] = (f"dim of size {g.size[r]} is computed from the inputs by input layers and the "
                                     f"config states it apart from the width ({attrs}): taken as fixed")
                    changed = True


def _timm_head(ev: Evidence) -> None:
    """guess: a dim of timm's ``head_hidden_size`` (apart from ``num_features``) read only by readouts is a head of
    its own size, fixed."""
    g, S, flow, hints = ev.g, ev.S, ev.flow, ev.cap.hints
    wsize = g.size[ev.root]
    if hints.head_hidden_size is not None:
        for r in list(ev.counts):
            r = g.find(r)
            read_by_readouts = flow.readers.get(r) and all(all(o in S.finite for o in outs)
                                                           for outs in flow.readers[r])
            if g.size[r] == hints.head_hidden_size and g.size[r] != wsize and read_by_readouts and S.mark(
                    r, f"timm head_hidden_size={g.size[r]} (a head of its own size)", GUESS):
                ev.guesses[r] = (f"dim of size {g.size[r]} = the model's head_hidden_size (apart from "
                                 "num_features): taken as fixed")
    S.propagate()


def _one_scaling_axis_per_fan(ev: Evidence) -> None:
    """convention: a fan spread over several scaling axes would grow as width² (XLNet/Funnel store projections as
    (d_model, n_head, d_head) and contract heads × head_dim together, with no attention op to fix head_dim).  μP
    widths grow linearly, so one axis of such a fan scales: the head count (the outer axis) with
    ``head_scaling="heads"``, the inner axis with ``"head_dim"``; the others are fixed, by the same convention that
    fixes head_dim at an attention op."""
    g, S, head_scaling = ev.g, ev.S, ev.head_scaling
    # dims that multiply into one size: the factors of a reshaped dim ((…, 3w) -> (…, 3, heads, head_dim) with no
    # attention op), the axes of one multi-axis fan
    groups = [(parts, f"a dim of size {g.size[out]}") for kind, out, parts in g.relations if kind == "prod"]
    for ph, uses in g.uses.items():
        dims = ev.param_axes.get(ph, [])
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
        ev.notes.append(f"{len(names)} fan(s) or reshaped dim(s) (e.g. {names[0]}) span axes of sizes {list(sizes)} "
                        f"that would all scale (width²): size {kept} scales, {list(fixed)} fixed "
                        f"(head_scaling={head_scaling!r}); pass base= to read every fan from a base model")


@dataclass(frozen=True)
class Step:
    """One step of the solver: ``tier`` is the evidence tier its marks carry (:mod:`muplify.width`'s list), or
    ``"flow"`` / ``"width"`` for the two steps that decide no dim; ``run`` reads and writes the evidence."""

    tier: str
    run: Callable[[Evidence], None]


# The order is the precedence: a dim keeps the first reason that marks it, so hard evidence runs first and the named
# guesses last.  The width is chosen once the hard facts and conventions are in (a readout's classes are not the
# width), and the tiers after it compare sizes with the width's.
STEPS: tuple[Step, ...] = (
    Step(HARD, _input_axes),
    Step(CONVENTION, _head_convention),
    Step(HARD, _position_tables),
    Step(CONVENTION, _group_widths),
    Step("flow", _weights_flow),
    Step("width", _choose_width),  # no width found: the solver stops here
    Step(READOUT, _readouts),
    Step(CONVENTION, _state_dims),
    Step(SOURCE, _learned_constants),
    Step(GUESS, _created_axes),
    Step(GUESS, _input_bottlenecks),
    Step(GUESS, concatenated_embeddings),
    Step(GUESS, _timm_head),
    Step(CONVENTION, _one_scaling_axis_per_fan),
    Step(GUESS, kv_heads_repeated),
    Step(GUESS, returned_latents),
    Step(GUESS, own_size_embeddings),
)


@dataclass(frozen=True)
class Solution:
    """What the solver decided: the finite dims (root -> why, root -> tier), the width's dim (None: no width
    found) and where it came from, the named guesses (root -> what was guessed) and the notes."""

    finite: dict[int, str]
    kind: dict[int, str]
    root: int | None
    source: str
    guesses: dict[int, str]
    notes: list[str]


def solve(g: DimGraph, cap: Capture, param_axes: dict[str, list[int]], head_scaling: str, width: int | None = None,
          forced: set[int] = frozenset()) -> Solution:
    """Run :data:`STEPS` in order; ``forced`` dims (``width=``'s) are never made finite."""
    ev = Evidence(g, cap, param_axes, head_scaling, width, Solver(g, set(forced)))
    for step in STEPS:
        step.run(ev)
        if step.tier == "width" and ev.root is None:
            break
    return Solution(ev.S.finite, ev.S.kind, ev.root, ev.source, ev.guesses, ev.notes)


def _pick_width(g: DimGraph, counts: Counter, size: int | None) -> int | None:
    roots = [r for r in counts if size is None or g.size[r] == size]
    if not roots:
        return None
    best = max(counts[r] for r in roots)
    return min((r for r in roots if counts[r] == best), key=lambda r: (g.size[r], r))


def count_axes(g: DimGraph, cap: Capture, param_axes: dict[str, list[int]], finite: Mapping[int, str],
               exclude: set[int] = frozenset()) -> Counter:
    """root -> how many axes of the (used) parameters are that dim, finite dims and ``exclude`` left out."""
    counts: Counter = Counter()
    for ph, dims in param_axes.items():
        if cap.param_names[ph][0] in cap.unused_params:
            continue
        for d in dims:
            r = g.find(d)
            if g.size[d] > 1 and r not in finite and r not in exclude:
                counts[r] += 1
    return counts



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


def forced_for(g: DimGraph, param_axes: dict[str, list[int]], width: int, S: Solution) -> set[int]:
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
