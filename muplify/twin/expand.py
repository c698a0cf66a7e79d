"""Expand the plan of a shallow twin to the full model: every block gets its representative's facts, renamed; the
depth facts (residual blocks, CompleteP's depth and its notes, parameter-axis counts) come from the full stack."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch.nn as nn

from ..classify import detect_init_rules
from ..plan import ParamPlan, Plan
from .stacks import Stack

__all__ = ["expand_plan"]


def _rebuild(v: Any, fix) -> Any:
    """``v`` (plan data: dicts, lists, strings, numbers) rebuilt with ``fix`` applied to every string (tuples and other
    values are kept as they are)."""
    if isinstance(v, str):
        return fix(v)
    if isinstance(v, list):
        return [_rebuild(x, fix) for x in v]
    if isinstance(v, dict):
        return {a: _rebuild(b, fix) for a, b in v.items()}
    return v


_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(ParamPlan))


def _renamed(p: ParamPlan, fix) -> ParamPlan:
    """A copy of ``p`` (outside any plan) with ``fix`` applied to every string of its facts (names, aliases, uses,
    notes); the rest (shapes, layout, fan expressions) is shared: immutable."""
    out = ParamPlan.__new__(ParamPlan)
    src = p.__dict__
    out.__dict__.update({f: _rebuild(src[f], fix) for f in _PARAM_FIELDS})
    out.__dict__["_plan"] = None
    return out


class _Stacks:
    """Name bookkeeping: twin index j <-> full indices i of every stack."""

    def __init__(self, stacks: list[Stack]):
        self.stacks = stacks
        self.pre = [s.path + "." if s.path else "" for s in stacks]
        self.kept = [s.kept for s in stacks]  # (a property computed from the segments: once here)
        # twin index of the representative of every full child
        self.twin_of = []
        for s, kept in zip(stacks, self.kept):
            where = {i: j for j, i in enumerate(kept)}
            self.twin_of.append([where[s.rep(i)] for i in range(s.size)])
        self._patterns: dict[tuple[int, int], tuple[str, re.Pattern]] = {}  # (k, j) -> (text, its pattern)
        self._outside = None

    def locate(self, name: str) -> tuple[int, int] | None:
        """(stack number, index in the container) of a module/parameter path inside a stack, else None."""
        for k, pre in enumerate(self.pre):
            if name.startswith(pre):
                head = name[len(pre):].split(".")[0]
                if head.isdigit():
                    return k, int(head)
        return None

    def fixer(self, k: int, j: int, i: int):
        """The string function renaming block ``j`` of stack ``k`` (twin) to block ``i`` (full)."""
        key = (k, j)
        if key not in self._patterns:
            self._patterns[key] = (self.pre[k] + str(j),
                                   re.compile(r"(?<![\w.])" + re.escape(self.pre[k] + str(j)) + r"(?!\d)"))
        old, pat = self._patterns[key]
        rep = self.pre[k] + str(i)
        return lambda v: pat.sub(rep, v) if old in v else v

    def rename(self, value: Any, k: int, j: int, i: int) -> Any:
        """Every mention of block ``j`` of stack ``k`` (twin) in ``value`` renamed to block ``i`` (full).  A new
        value (lists and dicts rebuilt, strings immutable): no copy of ``value`` needed before."""
        return _rebuild(value, self.fixer(k, j, i))

    def outside_fixer(self):
        """The string function for an item outside every stack that names a block (the head's fold into the last
        block's norm): a block of a shortened run's second period stands for the last block of its kind in the run,
        others for themselves."""
        if self._outside is None:
            subs = []
            for k, stack in enumerate(self.stacks):
                full = {}
                for j, i0 in enumerate(self.kept[k]):
                    seg = next((s for s in stack.segments if s.start + s.period <= i0 < s.start + 2 * s.period), None)
                    full[j] = max(i for i in range(seg.start, seg.stop) if seg.rep(i) == i0) if seg else i0
                pat = re.compile(r"(?<![\w.])" + re.escape(self.pre[k]) + r"(\d+)(?!\d)")
                sub = lambda m, full=full, pre=self.pre[k]: pre + str(full.get(int(m.group(1)), int(m.group(1))))  # noqa
                subs.append((self.pre[k], pat, sub))

            def fix(v: str) -> str:
                for pre, pat, sub in subs:
                    if pre in v:
                        v = pat.sub(sub, v)
                return v
            self._outside = fix
        return self._outside

    def outside(self, value: Any) -> Any:
        """:meth:`outside_fixer` applied to every string of ``value``."""
        return _rebuild(value, self.outside_fixer())

    def expand_list(self, items: list, key, blocks: list[str] | None = None) -> list:
        """The full model's list from the twin's: within each maximal run of consecutive items of one stack, the
        items of each shortened segment become, for every full block of the segment in order, the items of that
        block's representative, renamed; items of blocks outside the segments keep their place.  An item without a
        name (a branch no module carries) between two items of one block belongs to that block."""
        locs = [self.locate(key(x)) for x in items]
        for n, loc in enumerate(locs):
            if loc is None and 0 < n and locs[n - 1] is not None:
                nxt = next((lc for lc in locs[n + 1:] if lc is not None), None)
                if not key(items[n]) and (nxt is None or nxt[0] == locs[n - 1][0]):
                    locs[n] = locs[n - 1]
        unnamed = [n for n, x in enumerate(items) if locs[n] is None and not key(x)]
        block_locs = [self.locate(b) for b in blocks or []]
        if unnamed and len(unnamed) == len(block_locs) and all(b is not None for b in block_locs):
            for n, b in zip(unnamed, block_locs):  # one branch no module carries per residual block (Falcon)
                locs[n] = b
        out, n = [], 0
        while n < len(items):
            if locs[n] is None:
                out.append(self.outside(items[n]))
                n += 1
                continue
            k, m = locs[n][0], n
            while m < len(items) and locs[m] is not None and locs[m][0] == k:
                m += 1
            stack, kept = self.stacks[k], self.kept[k]
            seg_of = {i: s for s in stack.segments for i in range(s.start, s.stop)}
            group = lambda a: id(seg_of.get(kept[locs[a][1]]))  # noqa: E731
            a = n
            while a < m:
                b = a
                while b < m and group(b) == group(a):
                    b += 1
                seg = seg_of.get(kept[locs[a][1]])
                if seg is None:
                    out += [self.rename(items[c], k, locs[c][1], kept[locs[c][1]])
                            for c in range(a, b)]
                else:
                    for i in range(seg.start, seg.stop):
                        j = self.twin_of[k][i]
                        out += [self.rename(items[c], k, j, i) for c in range(a, b) if locs[c][1] == j]
                a = b
            n = m
        return out


def expand_plan(twin: Plan, model: nn.Module, stacks: list[Stack], depth_given: bool) -> Plan:
    """The full model's plan from the twin's (``twin``'s names are the twin's: stacks renumbered 0..k-1)."""
    st = _Stacks(stacks)
    d = twin.to_dict()
    d["params"] = []  # the parameters are copied as objects (their fan expressions shared), renamed
    by_name = twin.params
    params, extra = {}, {}  # extra: twin name -> copies beyond the first (for the axis counts)
    for full_name, _ in model.named_parameters():
        loc = st.locate(full_name)
        if loc is None:
            params[full_name] = _renamed(by_name[full_name], st.outside_fixer())
            continue
        k, i = loc
        j = st.twin_of[k][i]
        tname = st.pre[k] + str(j) + full_name[len(st.pre[k]) + len(str(i)):]
        params[full_name] = _renamed(by_name[tname], st.fixer(k, j, i))
        extra[tname] = extra.get(tname, -1) + 1
    d["sites"] = st.expand_list(d["sites"], lambda s: s["module"], d["blocks"])
    d["attention"] = st.expand_list(d["attention"], lambda a: a["module"])
    twin_blocks = list(d["blocks"])
    d["blocks"] = st.expand_list(twin_blocks, lambda b: b)
    d["scaling_dims"] = _expand_axes(d["scaling_dims"], by_name, extra, twin.width == twin.base_width)
    notes = list(d["notes"])
    opts = twin.options
    if opts.base_depth is not None:
        from ..classify import _depth  # the same rule, on the full stack's blocks
        base = dataclasses.replace(opts, depth=opts.depth if depth_given else None)
        _, twin_notes = _depth(base, twin_blocks, model)
        full_opts, full_notes = _depth(base, d["blocks"], model)
        at = next((n for n, x in enumerate(notes) if x in twin_notes), len(notes))
        notes = [x for x in notes if x not in twin_notes]
        notes[at:at] = full_notes
        d["options"]["depth"] = full_opts.depth
    sizes = ", ".join(f"{s.path or type(model).__name__}: {s.size} blocks as {len(s.kept)}" for s in stacks)
    notes.append(f"capture: shallow twin ({sizes}); every block has its representative's facts "
                 "(capture='full' to capture every block)")
    ignored = sorted({a for s in stacks for a in s.ignored})
    if ignored:
        notes.append(f"capture: per-block {', '.join(ignored[:3])} only addresses the KV cache (off in capture)")
    d["notes"] = notes
    plan = Plan.from_dict(d)
    plan.params = params
    for p in params.values():
        p.__dict__["_plan"] = plan
    detect_init_rules(plan, model)  # read off the full model's values (a statistic over all of them)
    plan.capture_seconds = twin.capture_seconds
    plan.lint = list(twin.lint)
    return plan


def _expand_axes(dims: list, by_name: dict, extra: dict, same_width: bool) -> list:
    """(size, expression, parameter axes): the axes of the blocks the twin left out counted too."""
    out = []
    for size, expr, n in dims:
        for tname, copies in extra.items():
            if copies <= 0:
                continue
            p = by_name[tname]
            hits = sum(1 for a, s in enumerate(p.shape) if s == size and (same_width or p.base_shape[a] != s))
            n += hits * copies
        out.append([size, expr, n])
    return out
