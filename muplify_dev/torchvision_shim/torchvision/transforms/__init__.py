"""Stand-in ``torchvision.transforms``: the class names timm imports, each raising TorchvisionShimError when
instantiated, plus the real ``InterpolationMode`` enum."""
from .._shim import unavailable_class
from . import functional
from .functional import InterpolationMode

_NAMES = ("Compose", "ToTensor", "PILToTensor", "Normalize", "Resize", "CenterCrop", "RandomCrop",
          "RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomApply", "RandomChoice",
          "RandomGrayscale", "ColorJitter", "GaussianBlur", "Lambda", "Pad", "ToPILImage")
for _n in _NAMES:
    globals()[_n] = unavailable_class(_n, __name__)
del _n

__all__ = ["InterpolationMode", "functional", *_NAMES]
