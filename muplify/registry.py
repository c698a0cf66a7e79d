"""One way to register a function by name: a decorator over a dict that refuses a taken name (a silent overwrite
would replace a built-in rule without a word; delete the entry first to replace it on purpose)."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def register_in(table: dict[str, F], what: str, name: str) -> Callable[[F], F]:
    """A decorator putting its function in ``table[name]``; a ``ValueError`` naming the registered one if taken."""
    def register(fn: F) -> F:
        old = table.get(name)
        if old is not None:
            raise ValueError(f"a {what} for {name!r} is already registered ({old.__module__}."
                             f"{getattr(old, '__qualname__', old)}); delete it from the table first to replace it")
        table[name] = fn
        return fn
    return register
