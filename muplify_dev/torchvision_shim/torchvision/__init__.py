"""muplify test stand-in for ``torchvision`` -- NOT the real package.

tests/conftest.py puts this directory's parent on ``sys.path`` only when ``import torchvision`` fails (the CPU-only
torch here has no matching torchvision wheel).  It implements what timm needs to *build and run* models:

* ``torchvision.ops.misc.FrozenBatchNorm2d`` -- a real, working implementation;
* ``torchvision.transforms`` / ``.transforms.functional`` / ``torchvision.datasets`` -- the names timm imports at
  import time, as stand-ins that raise :class:`TorchvisionShimError` (an ``ImportError``) when used;
* ``torchvision.transforms.InterpolationMode`` -- the real enum (it is plain data).

Anything else (``torchvision.models``, ``torchvision.utils``, ...) is absent, so ``import`` fails as usual and timm's
own ``try: ... except ImportError`` fallbacks apply (e.g. FX feature extraction is reported as unavailable).
"""
from ._shim import TorchvisionShimError

__version__ = "0.0.0+muplify.test.shim"
__muplify_shim__ = True

from . import datasets, ops, transforms  # noqa: E402  (after __version__, like the real package)

__all__ = ["TorchvisionShimError", "datasets", "ops", "transforms"]
