"""Find the stacks of structurally identical blocks in a module tree.

A *stack* is a ``nn.ModuleList`` / ``nn.Sequential`` whose children repeat a pattern of block *kinds*: two blocks
are of the same kind when they have the same class, the same parameter and buffer names, shapes and dtypes, the same
plain attributes (ints, floats, strings: e.g. a sliding window set on every other layer) and, recursively, the same
submodules.  Hybrids (Jamba's attention/Mamba, DeepSeek's dense-then-MoE) give several kinds; a run of period ``p``
(``A B A B ...``: p = 2) is kept as its first two periods.  Blocks whose plain attributes differ by their index (a
``layer_idx`` read in ``forward``) are not interchangeable: the stack is refused with the reason, except for the HF
cache index ``layer_idx`` of transformers modules, which only addresses the KV cache (off during capture).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

__all__ = ["Segment", "Stack", "find_stacks", "MIN_RUN_PERIODS", "MAX_PERIOD"]

MIN_RUN_PERIODS = 3  # a run is replaced when it holds at least this many periods (two are kept)
MAX_PERIOD = 8  # longest interleaving pattern looked for
_PLAIN = (int, float, str, bool, type(None))
# attributes that hold a block's index but only address a KV cache in transformers' modules (use_cache=False there)
_CACHE_INDEX_ATTRS = ("layer_idx",)
_INDEX_NAMES = ("idx", "index", "layer_id", "layer_num", "layer_number", "block_id", "depth_id")


@dataclass
class Segment:
    """Children ``[start, stop)`` of a container repeat with period ``period``; the first two periods are kept."""

    start: int
    stop: int
    period: int

    def rep(self, i: int) -> int:
        """Index (in the full container) of the block that represents child ``i``."""
        k = i - self.start
        return self.start + k % self.period + (self.period if k >= self.period else 0)

    @property
    def kept(self) -> range:
        return range(self.start, self.start + 2 * self.period)


@dataclass
class Stack:
    """A container whose children are replaced in the twin by ``kept`` (full indices, in order)."""

    path: str  # module path of the container, as in named_modules()
    container: nn.Module
    size: int  # number of children in the full model
    segments: list[Segment]
    ignored: list[str] = field(default_factory=list)  # cache-index attributes that differ by block (allowed)

    @property
    def kept(self) -> list[int]:
        seg_of = {i: s for s in self.segments for i in range(s.start, s.stop)}
        return [i for i in range(self.size) if i not in seg_of or i in seg_of[i].kept]

    def rep(self, i: int) -> int:
        """Full index of the representative of child ``i``."""
        for s in self.segments:
            if s.start <= i < s.stop:
                return s.rep(i)
        return i


def _plain_attrs(m: nn.Module, ignore: tuple[str, ...] | set[str] | frozenset[str]) -> tuple:
    out = []
    for k, v in vars(m).items():
        if k.startswith("_") or k in ignore:
            continue
        # issubclass(type(v), ...): isinstance would ask a config object for its __class__ (a costly getattr)
        if issubclass(type(v), _PLAIN) or (issubclass(type(v), tuple) and all(isinstance(x, _PLAIN) for x in v)):
            out.append((k, v))
    out.sort(key=_first)  # by name (names are unique)
    return tuple(out)


def _first(kv: tuple):
    return kv[0]


def _ignored_here(m: nn.Module) -> tuple[str, ...]:
    return _CACHE_INDEX_ATTRS if type(m).__module__.startswith("transformers.") else ()


def signature(m: nn.Module, skip: frozenset = frozenset()) -> tuple:
    """A hashable description of ``m``'s structure: two blocks with equal signatures are of the same kind.
    ``skip``: plain attribute names left out (the block's index, judged separately)."""
    return (type(m),
            tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m._parameters.items() if p is not None),
            tuple((n, tuple(b.shape), b.dtype) for n, b in m._buffers.items() if b is not None),
            _plain_attrs(m, skip.union(_ignored_here(m))),
            tuple((n, signature(c, skip)) for n, c in m._modules.items() if c is not None))


def _index_attrs(children: list[nn.Module]) -> tuple[list[str], list[str]]:
    """Plain int attributes (at any depth) that differ between the children and grow with their index:
    (refused: read by forward as far as we know, allowed: transformers' cache index)."""
    refused, allowed = [], []
    per_child = []
    for c in children:
        vals = {}
        for name, m in c.named_modules():
            for k, v in vars(m).items():
                if not k.startswith("_") and issubclass(type(v), int) and not issubclass(type(v), bool):
                    vals[(name, k, k in _ignored_here(m))] = v
        per_child.append(vals)
    keys = set.intersection(*(set(v) for v in per_child)) if per_child else set()
    for key in sorted(keys):
        seq = [v[key] for v in per_child]
        if len(set(seq)) == len(seq) and all(b > a for a, b in zip(seq, seq[1:])):
            where = f"{key[0]}.{key[1]}" if key[0] else key[1]
            (allowed if key[2] else refused).append(where)
    return refused, allowed


def _segments(kinds: list[int]) -> list[Segment]:
    """Maximal periodic runs of ``kinds`` (at least MIN_RUN_PERIODS periods), for the period that saves most."""
    n, best, best_saved = len(kinds), [], 0
    for p in range(1, MAX_PERIOD + 1):
        segs, a, saved = [], 0, 0
        while a < n:
            b = a + p
            if b > n:
                break
            while b < n and kinds[b] == kinds[b - p]:
                b += 1
            if b - a >= MIN_RUN_PERIODS * p and (p == 1 or len(set(kinds[a:a + p])) > 1):
                segs.append(Segment(a, b, p))
                saved += b - a - 2 * p
                a = b
            else:
                a += 1
        if saved > best_saved:
            best, best_saved = segs, saved
    return best


def find_stacks(model: nn.Module) -> tuple[list[Stack], list[str]]:
    """The stacks of ``model`` (outermost first, none nested in another) and the reasons stacks were refused."""
    stacks: list[Stack] = []
    refusals: list[str] = []

    def visit(path: str, m: nn.Module) -> None:
        children = list(m._modules.values())
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(children) >= MIN_RUN_PERIODS and \
                all(c is not None for c in children) and list(m._modules) == [str(i) for i in range(len(children))]:
            refused, allowed = _index_attrs(children)
            skip = frozenset(a.rsplit(".", 1)[-1] for a in refused + allowed)
            sigs: dict[tuple, int] = {}
            kinds = [sigs.setdefault(signature(c, skip), len(sigs)) for c in children]
            segs = _segments(kinds)
            if segs:
                reason = _not_interchangeable(path, children) or (
                    f"{path}: blocks carry their index in {refused[0]!r}, which forward may read (the structure does "
                    "not show how)" if refused else "")
                if reason:
                    refusals.append(reason)
                else:
                    stacks.append(Stack(path, m, len(children), segs, allowed))
                    return  # nothing nested in a stack is looked at (its children are renumbered in the twin)
        for name, c in m._modules.items():
            if c is not None:
                visit(f"{path}.{name}" if path else name, c)

    visit("", model)
    return stacks, refusals


def _not_interchangeable(path: str, children: list[nn.Module]) -> str:
    """Why the blocks cannot stand for one another ('' when they can)."""
    ids = [id(c) for c in children]
    if len(set(ids)) != len(ids):
        return f"{path}: the same block object appears twice (weights shared across depth)"
    return ""
