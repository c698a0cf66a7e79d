"""The rules' argument prologue: an op call's arguments normalised once against its schema, and the dims of its
operands, handed to the rule as a :class:`Call`; a rule registered with ``needs=`` runs only when the dims it needs
are known (:class:`Rule`, what the op table holds)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from .graph import DimGraph

__all__ = ["Call", "Rule", "OUT", "OUTS"]

# in a rule's ``needs``: the dims of the op's result, a tensor (OUT) or a tensor or a tuple of tensors (OUTS)
OUT = "->"
OUTS = "->*"


class Call:
    """One op call as its rule reads it: ``node``, its arguments by schema name (as
    ``torch.fx.operator_schemas.normalize_function`` spells them: ATen's ``self`` is ``input``) or by position, and
    the dims of its operands and result in the dim graph ``g``.  An op without a schema (``operator.getitem``) has
    its positional and keyword arguments as given."""

    def __init__(self, g: DimGraph, node: fx.Node) -> None:
        self.g, self.node = g, node

    @property
    def target(self):
        """The op."""
        return self.node.target

    @cached_property
    def named(self) -> dict[str, Any] | None:
        """Schema name -> value, in schema order (defaults filled in); None when the op has no schema."""
        if not isinstance(self.node.target, torch._ops.OpOverload):
            return None
        try:
            pair = normalize_function(self.node.target, self.node.args, self.node.kwargs,
                                      normalize_to_only_use_kwargs=True)
        except Exception:  # noqa: BLE001 - arguments the schema does not bind: the raw ones are still there
            return None
        return None if pair is None else dict(pair.kwargs)

    @cached_property
    def _given(self) -> set[str]:
        return set(list(self.named or ())[:len(self.node.args)]) | set(self.node.kwargs)

    def arg(self, name: str) -> Any:
        """The argument ``name`` as the op receives it: passed, or the schema's default; KeyError if the op has no
        such argument."""
        named = self.named
        if named is not None and name in named:
            return named[name]
        if named is None and name in self.node.kwargs:
            return self.node.kwargs[name]
        has = f"it has: {', '.join(named)}" if named is not None else "its arguments have no schema names here: " \
            "read them by position"
        raise KeyError(f"{self.node.target} has no argument {name!r} ({has})")

    def get(self, name: str, default: Any = None) -> Any:
        """The argument ``name`` if the call passes it, else ``default``."""
        if self.named is None:
            return self.node.kwargs.get(name, default)
        return self.named[name] if name in self._given else default

    def at(self, i: int) -> Any:
        """The argument at schema position ``i`` (the op table's ``Norm``/``Layer`` slots), passed or defaulted."""
        named = self.named
        if named is None:
            return self.node.args[i] if i < len(self.node.args) else None
        if not 0 <= i < len(named):
            raise IndexError(f"{self.node.target} has no argument at position {i} (it has: {', '.join(named)})")
        return list(named.values())[i]

    def dims(self, x: str | int | fx.Node) -> list[int] | None:
        """The dims of an operand: a name, a position or a node (None: not a tensor of known dims)."""
        if isinstance(x, str):
            x = self.arg(x)
        elif isinstance(x, int):
            x = self.at(x)
        return self.g.dims(x)

    @property
    def out(self) -> list[int] | None:
        """The dims of the result, when it is one tensor."""
        return self.g.dims(self.node)

    @property
    def outs(self) -> list | None:
        """The dims of the result as allocated: a list of dims, or for a tuple a list of them (None: none)."""
        return self.g.node_dims.get(self.node)

    def _known(self, need: str | int) -> bool:
        if need == OUT:
            return self.out is not None
        if need == OUTS:
            return bool(self.outs)
        return self.dims(need) is not None


@dataclass(frozen=True, eq=False)
class Rule:
    """A dimension rule as the op table holds it: called with ``(g, node)``, it builds the node's :class:`Call` and
    runs ``fn(g, call)`` when every operand in ``needs`` has known dims."""

    fn: Callable[[DimGraph, Call], None]
    needs: tuple = ()

    def __call__(self, g: DimGraph, node: fx.Node) -> None:
        call = Call(g, node)
        if all(call._known(n) for n in self.needs):
            self.fn(g, call)
