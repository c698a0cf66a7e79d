"""Stand-in ``torchvision.transforms.functional``: the real ``InterpolationMode`` enum; image functions raise
TorchvisionShimError when called."""
from enum import Enum

from .._shim import unavailable_function


class InterpolationMode(Enum):
    """Same members and values as torchvision's enum."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_NAMES = ("to_tensor", "pil_to_tensor", "to_pil_image", "normalize", "resize", "crop", "center_crop", "resized_crop",
          "pad", "hflip", "vflip", "get_dimensions", "get_image_size", "get_image_num_channels")
for _n in _NAMES:
    globals()[_n] = unavailable_function(_n, __name__)
del _n

__all__ = ["InterpolationMode", *_NAMES]
