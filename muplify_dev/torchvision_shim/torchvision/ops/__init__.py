"""Stand-in ``torchvision.ops``: only ``misc.FrozenBatchNorm2d`` (see the package docstring)."""
from . import misc
from .misc import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "misc"]
