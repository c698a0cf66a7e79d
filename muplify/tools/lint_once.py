"""Print μP lint once per run of a tool, not once per model it builds.

A coordinate check muplifies one model per width (and per seed); each prints the same lint, differing only in the
numbers (``width=128``, ``width=256``...).  Inside :func:`lint_once` each distinct μP lint warning is shown once
(told apart by its text with every number blanked); other warnings pass through unchanged.  Nested uses (the demo runs a coordinate check) dedupe across both."""
from __future__ import annotations

import functools
import re
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["lint_once", "LINT_PREFIX"]

LINT_PREFIX = "muplify: μP lint"
_NUMBER = re.compile(r"\d+(\.\d+)?")


@contextmanager
def _deduped() -> Iterator[None]:
    """Forward each warning to the current ``warnings.showwarning`` at once, dropping a μP lint warning whose text
    (numbers blanked) was shown already inside this context."""
    forward = warnings.showwarning
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith(LINT_PREFIX):
            key = _NUMBER.sub("#", text)
            if key in seen:
                return
            seen.add(key)
        forward(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def lint_once(fn: Callable) -> Callable:
    """Decorator: inside ``fn``, each distinct μP lint warning is shown once."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _deduped():
            return fn(*args, **kwargs)

    return wrapper
