"""What a batch is for the tools, and the loss a model's output gives against it.

A :class:`Batch` is one forward call ``model(*args, **kwargs)`` plus the labels the loss compares the output with.
:func:`output_loss` is the default loss of every tool (training loop, coordinate check): the model's own loss when it
returns one, else cross-entropy (integer labels) or mean squared error (floating labels).  It never falls back to a
statistic of the output: a loss that is not a loss makes a coordinate check or a training run meaningless.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Batch", "as_batch", "to_device", "first_float_tensor", "output_loss", "model_loss"]


@dataclass
class Batch:
    """One training batch: ``model(*args, **kwargs)``; ``labels`` go to the loss, never to the model."""

    args: tuple = ()  # positional arguments of the forward call
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the forward call
    labels: Any = None  # targets of the loss (class indices or values); None when the model computes its own loss


def as_batch(item: Any, labels: Any = None) -> Batch:
    """A :class:`Batch` from a Batch, a tuple/list of positional args, a dict of keyword args or a single tensor."""
    if isinstance(item, Batch):
        b = item
    elif isinstance(item, (tuple, list)):
        b = Batch(args=tuple(item))
    elif isinstance(item, Mapping):
        b = Batch(kwargs=dict(item))
    elif isinstance(item, torch.Tensor):
        b = Batch(args=(item,))
    else:
        raise TypeError(f"a batch must be a Batch, a tuple of forward args, a dict of forward kwargs or a tensor; "
                        f"got {type(item).__name__}")
    if b.labels is None and labels is not None:
        b = Batch(b.args, b.kwargs, labels)
    return b


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def to_device(batch: Batch, device: str | torch.device | None) -> Batch:
    """The batch with every tensor moved to ``device`` (unchanged for None)."""
    if device is None:
        return batch
    device = torch.device(device)
    return Batch(_move(batch.args, device), _move(batch.kwargs, device), _move(batch.labels, device))


def first_float_tensor(obj: Any, _depth: int = 0) -> torch.Tensor | None:
    """The tensor that stands for a model's or module's output: itself, ``.logits`` (HF ModelOutput), or the first
    floating-point tensor inside a tuple/list/dict (a ``"loss"`` entry is skipped)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() or obj.is_complex() else None
    if _depth > 4:
        return None
    if isinstance(obj, Mapping):  # HF ModelOutput is an OrderedDict
        if isinstance(obj.get("logits", None), torch.Tensor):
            return first_float_tensor(obj["logits"], _depth + 1)
        for k, v in obj.items():
            if k != "loss" and (t := first_float_tensor(v, _depth + 1)) is not None:
                return t
        return None
    if isinstance(obj, (tuple, list)):
        for v in obj:
            if (t := first_float_tensor(v, _depth + 1)) is not None:
                return t
    return None


def own_loss(output: Any) -> torch.Tensor | None:
    """The loss the model computed itself: ``output.loss`` (HF ModelOutput, dict) or the scalar second element of a
    tuple ``(logits, loss)`` (the nanoGPT convention); None when there is none."""
    if isinstance(output, Mapping) or hasattr(output, "loss"):
        loss = output.get("loss", None) if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.dim() == 0:
            return loss
    if isinstance(output, (tuple, list)) and len(output) >= 2:
        second = output[1]
        if isinstance(second, torch.Tensor) and second.dim() == 0 and second.is_floating_point():
            return second
    return None


def output_loss(output: Any, labels: Any = None) -> torch.Tensor:
    """The default loss: cross-entropy of the output's last dim against integer ``labels`` (``(N, C)`` or
    ``(B, T, V)`` outputs), mean squared error against floating ``labels``; without labels, the model's own loss
    (:func:`own_loss`).  Raises ``ValueError`` when there is neither."""
    if labels is None:
        loss = own_loss(output)
        if loss is None:
            raise ValueError("no loss: the batch has no labels and the model output carries no loss; give labels "
                             "(Batch(..., labels=y)) or a loss_fn")
        return loss
    out = first_float_tensor(output)
    if out is None:
        raise ValueError(f"cannot compare the model output ({type(output).__name__}) with labels: no floating-point "
                         "tensor in it; pass a loss_fn")
    labels = torch.as_tensor(labels, device=out.device)
    if labels.is_floating_point():
        return F.mse_loss(out.float(), labels.float().reshape(out.shape))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), labels.reshape(-1))


def model_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The default ``loss_fn`` of the tools: ``output_loss(model(*batch.args, **batch.kwargs), batch.labels)``."""
    return output_loss(model(*batch.args, **batch.kwargs), batch.labels)
