"""Stand-in ``torchvision.ops.misc`` with a working ``FrozenBatchNorm2d``."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed affine parameters and statistics, all stored as buffers (nothing is trainable).

    Same state-dict layout and arithmetic as torchvision's class: ``weight``, ``bias``, ``running_mean`` and
    ``running_var`` buffers; ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, the same in train
    and eval mode.  A ``num_batches_tracked`` entry coming from an ``nn.BatchNorm2d`` state dict is dropped on load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **dd))
        self.register_buffer("bias", torch.zeros(num_features, **dd))
        self.register_buffer("running_mean", torch.zeros(num_features, **dd))
        self.register_buffer("running_var", torch.ones(num_features, **dd))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"
