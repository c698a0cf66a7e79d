"""Stand-in ``torchvision.datasets``: importable names that raise TorchvisionShimError when instantiated."""
from .._shim import unavailable_class

_NAMES = ("CIFAR10", "CIFAR100", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder", "Places365", "INaturalist",
          "QMNIST", "ImageNet")
for _n in _NAMES:
    globals()[_n] = unavailable_class(_n, __name__)
del _n

__all__ = list(_NAMES)
