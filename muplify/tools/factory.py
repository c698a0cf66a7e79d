"""Build a model from a ``module:callable`` spec at a given width: the shared part of every command line
(``python -m muplify coord-check/plan/tune/transfer``).

The width goes to the argument named by ``width_arg``; without it, :func:`detect_width_arg` builds the model on the
meta device at two values of each integer argument and keeps the one whose change scales the hidden weight matrices
(both dims grow).  When no argument or more than one does, it stops and lists them.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["CLIError", "load_object", "parse_kv", "check_args", "WidthArg", "detect_width_arg", "make_factory",
           "PROBE_VALUE"]

PROBE_VALUE = 64  # the value an integer argument without a default gets while probing which argument is the width


class CLIError(Exception):
    """A usage error: the message says what to change on the command line."""


# ------------------------------------------------------------------------------------------------------ helpers
def load_object(spec: str) -> Any:
    """``"pkg.module:attr.sub"`` -> the object."""
    if ":" not in spec:
        raise CLIError(f"expected module:callable, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise CLIError(f"cannot import {mod_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise CLIError(f"{mod_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise CLIError(f"{spec} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def parse_kv(items: list[str] | None) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise CLIError(f"expected key=value, got {item!r}")
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _named(params: dict[str, inspect.Parameter]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in params.items() if p.kind in kinds]


def check_args(fn: Callable, spec: str, extra: dict, width_arg: str | None) -> None:
    """Refuse ``--arg`` / ``--width-arg`` names the factory does not take (unless it takes ``**kwargs``)."""
    params = _parameters(fn)
    if not params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = _named(params)
    unknown = [k for k in [*extra, *([width_arg] if width_arg else [])] if k not in names]
    if unknown:
        raise CLIError(f"{spec} has no argument {', '.join(map(repr, unknown))}; its arguments are: "
                       f"{', '.join(names) or '(none)'}")


@dataclass
class WidthArg:
    name: str  # the keyword the width is passed as
    how: str  # how it was chosen, for the message


def _shapes(fn: Callable, kwargs: dict) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            model = fn(**kwargs)
    except Exception:  # noqa: BLE001 - a value this argument cannot take: not the width
        return None
    if not isinstance(model, nn.Module):
        return None
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def detect_width_arg(fn: Callable, spec: str, extra: dict) -> WidthArg:
    """The integer argument whose doubling doubles both dims of hidden weight matrices (built on the meta device);
    a CLIError listing the arguments when none or several do."""
    params = _parameters(fn)
    names = _named(params)
    required = {n: PROBE_VALUE for n in names if params[n].default is inspect.Parameter.empty and n not in extra}
    candidates = [n for n in names if n not in extra and (
        n in required or (isinstance(params[n].default, int) and not isinstance(params[n].default, bool)))]
    scores: dict[str, int] = {}
    for name in candidates:
        v = required.get(name, params[name].default)
        if not v or v < 1:
            continue
        small = _shapes(fn, {**required, **extra, name: v})
        large = _shapes(fn, {**required, **extra, name: 2 * v})
        if small is None or large is None:
            continue
        # a hidden matrix: at least two of its dims double with the argument (vocabulary, layer counts: none)
        scores[name] = sum(1 for k, s in small.items() if k in large and len(s) == len(large[k])
                           and sum(b == 2 * a for a, b in zip(s, large[k])) >= 2)
    ranked = sorted((s, n) for n, s in scores.items() if s > 0)
    listing = ", ".join(f"{n} ({params[n].default if n not in required else 'required'})" for n in names) or "(none)"
    if not ranked:
        raise CLIError(f"cannot tell which argument of {spec} sets the width: doubling none of its integer arguments "
                       f"doubles a hidden weight matrix. Pass --width-arg NAME; its arguments are: {listing}")
    if len(ranked) > 1 and ranked[-1][0] == ranked[-2][0]:
        tied = [n for s, n in ranked if s == ranked[-1][0]]
        raise CLIError(f"several arguments of {spec} scale the hidden weights alike ({', '.join(tied)}); pass "
                       f"--width-arg NAME; its arguments are: {listing}")
    score, name = ranked[-1]
    return WidthArg(name, f"as {name}= (doubling it doubles {score} hidden weight matrices)")


def make_factory(fn: Callable, spec: str, width_arg: str | None = None,
                 extra: dict | None = None) -> tuple[Callable[[int], nn.Module], str]:
    """Wrap ``fn`` into ``width -> nn.Module``; returns it and how the width is passed."""
    extra = dict(extra or {})
    check_args(fn, spec, extra, width_arg)
    chosen = WidthArg(width_arg, f"as {width_arg}= (--width-arg)") if width_arg else detect_width_arg(fn, spec, extra)
    params = _parameters(fn)
    missing = [n for n in _named(params) if params[n].default is inspect.Parameter.empty
               and n != chosen.name and n not in extra]
    if missing:
        raise CLIError(f"{spec} needs {', '.join(missing)} besides the width ({chosen.name}); pass "
                       + " ".join(f"--arg {n}=..." for n in missing))
    return (lambda w: fn(**{chosen.name: w}, **extra)), chosen.how
