"""The state the width solver's steps share (:mod:`muplify.evidence`, :mod:`muplify.named_guesses`): the finite dims
with their reasons and tiers, and what each step has found so far."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .capture import Capture
from .flow import Flow
from .rules import DimGraph

__all__ = ["CONVENTION", "GUESS", "HARD", "READOUT", "SOURCE", "Evidence", "Solver"]

HARD, CONVENTION, READOUT, SOURCE, GUESS = "hard", "convention", "readout", "source", "guess"


class Solver:
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


@dataclass
class Evidence:
    """What the steps of :data:`STEPS` read (the graph, the capture, the options) and write (the solver's marks,
    the guesses and notes, the weights' flow, the width)."""

    g: DimGraph
    cap: Capture
    param_axes: dict[str, list[int]]
    head_scaling: str
    width: int | None  # width= (the size that must scale), None to choose
    S: Solver
    guesses: dict[int, str] = field(default_factory=dict)  # root -> what was guessed (named in the plan)
    notes: list[str] = field(default_factory=list)
    flow: Flow | None = None
    out_roots: dict[int, list[str]] = field(default_factory=dict)  # root -> names of the model outputs it reaches
    input_roots: set[int] = field(default_factory=set)  # roots of the model inputs' axes
    terminal: set[int] = field(default_factory=set)  # produced, read by no layer, reaching an output or a selection
    counts: Counter = field(default_factory=Counter)  # root -> parameter axes of it (the width's candidates)
    relation_groups: list[set[int]] | None = None  # the roots of each relation (named_guesses, once)
    root: int | None = None  # the width's dim
    source: str = "most-used"  # where the width came from
