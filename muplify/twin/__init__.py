"""Shallow twin: analyse a repeated block once, not once per layer.

:func:`shallow_plan` finds the stacks of structurally identical blocks (:mod:`muplify.twin.stacks`), swaps each
stack's children for a few representatives (the first two periods of every run; the user's container gets its own
children back in a ``finally``), runs the normal analysis on that twin, and expands the twin's plan to the full model
(:mod:`muplify.twin.expand`): every block gets the facts of its representative, renamed; the depth facts (residual
blocks, CompleteP's depth and its notes) are recomputed from the full stack.  When no stack is found, a stack is
refused (blocks carry their index, shared blocks) or the twin's capture fails, the full capture runs and
``plan.notes`` says why.  ``muplify(..., capture="full")`` forces the full capture.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable

import torch.nn as nn

from .stacks import Segment, Stack, find_stacks

__all__ = ["shallow_plan", "twin_of", "find_stacks", "Stack", "Segment", "CAPTURE_MODES"]

CAPTURE_MODES = ("shallow", "full")


@contextmanager
def twin_of(stacks: list[Stack]):
    """Temporarily replace each stack's children by its representatives (renumbered 0..k-1); always restored."""
    saved = [(s.container, s.container._modules) for s in stacks]
    try:
        for s in stacks:
            old = s.container._modules
            children = list(old.values())
            s.container._modules = OrderedDict((str(j), children[i]) for j, i in enumerate(s.kept))
        yield
    finally:
        for container, modules in saved:
            container._modules = modules


def _shared_across(model: nn.Module, stacks: list[Stack]) -> str:
    """A parameter of a stack also reachable under another block's name (tied across depth): '' if none."""
    where: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        where.setdefault(id(p), set()).add(name)
    prefixes = [s.path + "." if s.path else "" for s in stacks]
    for names in where.values():
        if len(names) < 2:
            continue
        blocks = set()
        for n in names:
            for pre in prefixes:
                if n.startswith(pre) and n[len(pre):].split(".")[0].isdigit():
                    blocks.add(pre + n[len(pre):].split(".")[0])
        if blocks:
            return f"parameter tied across blocks ({sorted(names)[:2]})"
    return ""


def shallow_plan(model: nn.Module, derive: Callable, depth_given: bool):
    """Plan ``model`` from a shallow twin when it has stacks, else from the full model.

    ``derive(model, to_full)`` runs capture -> analysis -> plan on ``model`` as it currently is; ``to_full`` maps a
    parameter name of the twin to the full model's name (identity without a twin)."""
    from .expand import expand_plan

    stacks, refusals = find_stacks(model)
    reason = "; ".join(refusals)
    if stacks and not reason:
        reason = _shared_across(model, stacks)
    if not stacks or reason:
        plan = derive(model, lambda n: n)
        plan.notes.append("capture: full model (" + (reason or "no stack of 3 or more identical blocks") + ")")
        return plan
    to_full = _name_map(stacks)
    try:
        with twin_of(stacks), _quiet_fake_tensor_errors():
            twin_plan = derive(model, to_full)
    except Exception as e:  # noqa: BLE001 - the full capture decides: it raises the user's error if it is one
        plan = derive(model, lambda n: n)
        plan.notes.append(f"capture: full model (the shallow twin failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})")
        return plan
    return expand_plan(twin_plan, model, stacks, depth_given)


@contextmanager
def _quiet_fake_tensor_errors():
    """A twin that cannot run (a forward that zips a stack with a tensor of the full count, e.g. a soft MoE's gates
    with its experts) fails under fake tensors, and torch logs that failure as an ERROR before muplify falls back to
    the full model: keep that log quiet (the plan notes the fallback; the full capture logs and raises real errors)."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _name_map(stacks: list[Stack]) -> Callable[[str], str]:
    table = [(s.path + "." if s.path else "", s.kept) for s in stacks]

    def to_full(name: str) -> str:
        for pre, kept in table:
            if name.startswith(pre):
                head, _, rest = name[len(pre):].partition(".")
                if head.isdigit():
                    return f"{pre}{kept[int(head)]}" + (f".{rest}" if rest else "")
        return name
    return to_full
