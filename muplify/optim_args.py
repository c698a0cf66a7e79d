"""What ``mu.optimizer(x)`` says when ``x`` is not an optimizer class: a sentence naming what it got, briefly.

``mu.optimizer(nn.Linear)`` used to answer that there is "no μP rule for Linear", and an optimizer *instance* put its
whole repr (every param group, every option) into the message."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .errors import OptimizerRuleError

__all__ = ["brief", "check_optimizer_class"]


def brief(obj: Any) -> str:
    """A short name for anything passed where an optimizer class belongs: a class by its qualified name, an
    optimizer instance by its class and group count, anything else by its type (never a full repr)."""
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, torch.optim.Optimizer):
        n = len(obj.param_groups)
        return f"an instance of {type(obj).__name__} ({n} param group{'s' * (n != 1)})"
    if isinstance(obj, nn.Module):
        return f"an nn.Module instance ({type(obj).__name__})"
    text = repr(obj)
    return f"{type(obj).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_optimizer_class(obj: Any) -> None:
    """Raise an :class:`OptimizerRuleError` a user can act on unless ``obj`` is a class that can be an optimizer
    (a ``torch.optim.Optimizer`` subclass, or any class with a ``step`` method that is not a module)."""
    if isinstance(obj, type):
        if issubclass(obj, torch.optim.Optimizer) or (hasattr(obj, "step") and not issubclass(obj, nn.Module)):
            return
        what = f"{brief(obj)} is not an optimizer class"
    elif isinstance(obj, torch.optim.Optimizer):
        cls = type(obj)
        path = "torch.optim" if cls.__module__.startswith("torch.optim") else cls.__module__
        raise OptimizerRuleError(
            f"mu.optimizer takes an optimizer class, got {brief(obj)}: μP needs its own param groups, so pass the "
            f"class and its options, e.g. mu.optimizer({path}.{cls.__name__}, lr=...)")
    else:
        what = f"got {brief(obj)}"
    raise OptimizerRuleError(f"mu.optimizer takes a torch.optim.Optimizer class or its name in torch.optim "
                             f"(e.g. torch.optim.AdamW or 'adamw'); {what}")
