"""Is ``base_width`` what the user meant?  A check of ``base_width`` against the dimensions that scale.

The width analysis picks the model's width from what the model states (``config.hidden_size``, timm's
``feature_info[0]``) or, failing that, the dimension most parameter axes use.  On a stage-width model (Swin, an
EfficientNet, a ResNet, a CNN with stages of w and 2w channels) that pick and the user's ``base_width`` may refer to
different dimensions, and μP would then apply a width_mult the user never meant (×4 at the base model, ×0.5 at the
base model).  :func:`reconsider_width` decides, from the scaling dimensions alone (a shape-only fact):

* ``base_width`` equals the size of another scaling dimension and is larger than the width picked: the model is at
  (or above) its base on that dimension, and a width_mult < 1 is not what anyone tunes for: that dimension is the
  width (EfficientNet's 32-channel stem against ``feature_info[0]``'s 16).
* ``base_width`` equals the size of another scaling dimension that the model or its config names as a width
  (``config.embed_dim``, ``self.width``...): that dimension is the width (Swin built at ``embed_dim=32``).
* ``base_width`` equals another scaling dimension that nothing names: ambiguous, a warning with the candidates.
* ``base_width`` larger than the width and equal to no scaling dimension: a warning (width_mult < 1).

The plan header names where the width came from (``plan.width_source``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

__all__ = ["WidthChoice", "reconsider_width", "width_attributes"]

_WIDTH_WORDS = ("width", "dim", "channel", "chs", "hidden", "embd", "embed", "d_model", "features", "planes")
_NOT_WIDTH = ("head", "vocab", "layer", "depth", "patch", "image", "window", "kernel", "stride", "position", "label",
              "class", "intermediate", "max_", "num_", "n_", "mlp_ratio", "seq", "token")


@dataclass
class WidthChoice:
    """What :func:`reconsider_width` decided: ``width`` to re-analyse with (None: keep the pick), the source to
    record, and lint lines (a warning with the candidates)."""

    width: int | None = None
    source: str = ""
    lint: list[str] = field(default_factory=list)


def _widthish(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in _WIDTH_WORDS) and not any(x in n for x in _NOT_WIDTH)


def width_attributes(model: nn.Module) -> dict[str, int]:
    """Integer attributes of the model and its config whose names say they are a width (``embed_dim``,
    ``hidden_size``, ``width``, ``base_channels``...): ``{"config.embed_dim": 32, "width": 64}``."""
    out: dict[str, int] = {}
    cfg = getattr(model, "config", None)
    items: dict = {}
    if cfg is not None:
        try:
            items = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
        except TypeError:
            items = {}
    for k, v in items.items():
        if isinstance(v, int) and not isinstance(v, bool) and _widthish(k):
            out[f"config.{k}"] = v
    for k, v in vars(model).items():
        if not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool) and _widthish(k):
            out[k] = v
    return out


def reconsider_width(wa, model: nn.Module, base_width: int, reanalyse: Callable[[int], object]):
    """Return ``(wa, lint)``: the width analysis to build the plan from (``reanalyse(width)`` when the width is
    re-picked, with its ``width_source`` saying why) and lint lines for the plan's warnings."""
    choice = decide(wa, model, base_width)
    if choice.width is not None:
        wa = reanalyse(choice.width)
        wa.width_source = choice.source
    return wa, choice.lint


def decide(wa, model: nn.Module, base_width: int) -> WidthChoice:
    width = wa.width_size
    dims = {d.size: d for d in getattr(wa, "scaling_dims", [])}
    if base_width == width:
        return WidthChoice()
    listing = ", ".join(f"{s} ({dims[s].expr}, {dims[s].param_axes} axes)" for s in sorted(dims))
    picked = f"width {width} ({wa.width_source})"
    if base_width in dims:
        expr = dims[base_width].expr
        if base_width > width:
            return WidthChoice(base_width, f"the {expr} dimension, equal to base_width={base_width} (the width "
                                           f"analysis picked {wa.width_source}={width}, which would give width_mult "
                                           f"{width / base_width:g} < 1)")
        named = sorted(k for k, v in width_attributes(model).items() if v == base_width)
        if named:
            return WidthChoice(base_width, f"{named[0]} = base_width (the model is built at its base size; "
                                           f"{wa.width_source}={width} is {_relative(width, base_width)} of it)")
        return WidthChoice(lint=[
            f"base_width={base_width} is the size of another scaling dimension ({expr} of the {picked}), so μP "
            f"applies width_mult {width / base_width:g}. What to do: if this model is built at its base size, pass "
            f"width={base_width}; if {width} is the width and {base_width} was the base model's, pass width={width} "
            f"to say so. Scaling dimensions: {listing}."])
    if base_width > width:
        return WidthChoice(lint=[
            f"base_width={base_width} is larger than the {picked}: μP applies width_mult {width / base_width:g} < 1 "
            f"(the model narrower than the one the hyperparameters were tuned at). What to do: pass the base "
            f"model's size of the dimension you mean as base_width, or width=<size> to pick another dimension. "
            f"Scaling dimensions: {listing}."])
    return WidthChoice()


def _relative(a: int, b: int) -> str:
    return f"{a // b}×" if a % b == 0 else f"{a / b:g}×"
