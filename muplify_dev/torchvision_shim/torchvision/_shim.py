"""Helpers for the stand-in ``torchvision`` package used by muplify's tests (see tests/README-timm.md)."""
from __future__ import annotations

__all__ = ["TorchvisionShimError", "unavailable_class", "unavailable_function"]

_WHY = (
    "is not available: this is muplify's minimal torchvision stand-in (muplify_dev/torchvision_shim), which only "
    "provides what timm needs to build and run models (torchvision.ops.misc.FrozenBatchNorm2d). "
    "Install a torchvision that matches your torch to use data transforms or datasets."
)


class TorchvisionShimError(ImportError):
    """Raised when code actually uses a torchvision feature the stand-in does not implement."""


def _fail(qualname: str):
    raise TorchvisionShimError(f"{qualname} {_WHY}")


def unavailable_class(name: str, module: str) -> type:
    """A class that can be imported and subclassed, but raises TorchvisionShimError when instantiated."""

    def __init__(self, *args, **kwargs):
        _fail(f"{module}.{name}")

    return type(name, (), {"__init__": __init__, "__module__": module, "__doc__": f"Unavailable stand-in: {name}."})


def unavailable_function(name: str, module: str):
    """A function that raises TorchvisionShimError when called."""

    def fn(*args, **kwargs):
        _fail(f"{module}.{name}")

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = module
    fn.__doc__ = f"Unavailable stand-in: {name}."
    return fn
