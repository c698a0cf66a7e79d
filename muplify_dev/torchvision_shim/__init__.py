"""Let timm import when torchvision cannot be imported (see tests/README-timm.md).

This directory holds a minimal stand-in package, ``torchvision/`` (a real ``ops.misc.FrozenBatchNorm2d``; transform
and dataset names that raise ``TorchvisionShimError`` when used).  :func:`install` -- called by tests/conftest.py --
does nothing if ``import torchvision`` works.  Otherwise it adds a meta-path hook that makes the stand-in importable
*only while a ``timm`` module executes*, and parks it outside ``sys.modules`` in between.  Keeping it hidden the rest
of the time matters: transformers probes ``importlib.util.find_spec("torchvision")`` and, when it sees one, imports
``torchvision.io`` and other parts the stand-in does not have.
"""
from __future__ import annotations

import importlib.abc
import os
import sys
import threading

__all__ = ["install", "installed", "SHIM_DIR"]

SHIM_DIR = os.path.dirname(os.path.abspath(__file__))

_lock = threading.RLock()
_depth = 0
_parked: dict[str, object] = {}  # the stand-in's modules while hidden, so every timm module sees the same classes
_hook: "_TimmFinder | None" = None


def _is_tv(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def _show() -> None:
    global _depth
    _lock.acquire()
    if _depth == 0:
        sys.path.insert(0, SHIM_DIR)
        sys.modules.update(_parked)
    _depth += 1


def _hide() -> None:
    global _depth
    try:
        _depth -= 1
        if _depth == 0:
            if SHIM_DIR in sys.path:
                sys.path.remove(SHIM_DIR)
            for name in [n for n in sys.modules if _is_tv(n)]:
                _parked[name] = sys.modules.pop(name)
    finally:
        _lock.release()


class _ShimDuringExec(importlib.abc.Loader):
    """Wraps a timm module's loader: the stand-in is importable while the module body runs."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _show()
        try:
            self._loader.exec_module(module)
        finally:
            _hide()

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ...
        return getattr(self._loader, name)


class _TimmFinder(importlib.abc.MetaPathFinder):
    muplify_timm_shim_hook = True  # marker: one hook even if this file is imported under two module names

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" and not fullname.startswith("timm."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ShimDuringExec(spec.loader)
        return spec


def _real_torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or e.g. RuntimeError "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if _is_tv(n)]:
            del sys.modules[name]  # drop a half-imported real package
        return False
    return not getattr(torchvision, "__muplify_shim__", False)


def install() -> bool:
    """Idempotent.  Returns True when timm gets the stand-in, False when the real torchvision is used."""
    global _hook
    if _hook is not None or any(getattr(f, "muplify_timm_shim_hook", False) for f in sys.meta_path):
        return True
    if _real_torchvision_works():
        return False
    _hook = _TimmFinder()
    sys.meta_path.insert(0, _hook)
    return True


def installed() -> bool:
    """True when the stand-in hook is active (in this process)."""
    return any(getattr(f, "muplify_timm_shim_hook", False) for f in sys.meta_path)
