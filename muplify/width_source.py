"""Is ``base_width`` what the user meant?  A check of ``base_width`` against the dimensions that scale.

The width analysis picks the model's width from what the model states (``config.hidden_size``, timm's
``feature_info[0]``) or, failing that, the dimension most parameter axes use.  On a stage-width model (Swin, an
EfficientNet, a ResNet, a CNN with stages of w and 2w channels) that pick and the user's ``base_width`` may refer to
different dimensions, and μP would then apply a width_mult the user never meant (×4 at the base model, ×0.5 at the
base model).  Which dimension is the width must not depend on ``base_width`` (a proxy and its target would otherwise
be measured on different dimensions, and the values tuned on one would act on another there), so :func:`decide` changes the width only on a
base-independent fact and otherwise warns with the candidates:

* the width was the most-used dimension and the model names exactly one width attribute (``self.width``,
  ``config.embed_dim``) that is another scaling dimension: that dimension is the width;
* ``base_width`` equals the size of another scaling dimension (Swin built at ``embed_dim=32`` with
  ``base_width=32`` while the width is ``config.hidden_size``=128; a timm EfficientNet whose ``feature_info[0]`` is
  narrower than the 32-channel stem; a CNN with stages of w and 2w channels): a warning naming every scaling
  dimension and what to pass;
* ``base_width`` larger than the width: a warning (width_mult < 1);
* the width taken from a config/timm attribute while the model names another width attribute that is a different
  scaling dimension (Swin's ``embed_dim`` beside ``hidden_size``): a warning saying which one is measured.

The plan header names where the width came from (``plan.width_source``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

__all__ = ["WidthChoice", "reconsider_width", "width_attributes"]

# attribute names that state a model's width (exact, lower-case): a FFN size (DistilBERT's hidden_dim, intermediate_size)
# or a head count is not one
_WIDTH_NAMES = frozenset({"width", "base_width", "embed_dim", "d_model", "hidden_size", "dim", "n_embd", "model_dim",
                          "channels", "base_channels", "stem_width", "stem_chs", "num_channels"})


@dataclass
class WidthChoice:
    """What :func:`reconsider_width` decided: ``width`` to re-analyse with (None: keep the pick), the source to
    record, and lint lines (a warning with the candidates)."""

    width: int | None = None
    source: str = ""
    lint: list[str] = field(default_factory=list)


def _widthish(name: str) -> bool:
    return name.lower() in _WIDTH_NAMES


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
    """The decision, from the scaling dimensions and the model's width-named attributes; which dimension is the
    width never depends on ``base_width`` (the proxy and the target must measure on the same one), only the
    warnings do."""
    width = wa.width_size
    dims, axes = {}, {}  # several dims may share a size: the first one's expression, their axes summed
    for d in getattr(wa, "scaling_dims", []):
        dims.setdefault(d.size, d)
        axes[d.size] = axes.get(d.size, 0) + d.param_axes
    named = {k: v for k, v in width_attributes(model).items() if v in dims and v != width}
    if wa.width_source == "most-used" and len(set(named.values())) == 1:
        # the model names its width (self.width = 32) and nothing else stated one: measure on it
        k, v = sorted(named.items())[0]
        return WidthChoice(v, f"{k} (the model's width-named attribute; the most-used dimension is {width})")
    lint: list[str] = []
    # sizes and expressions only: an axis count would differ between a shallow twin and the full model
    listing = ", ".join(f"{s} ({dims[s].expr})" for s in sorted(dims))
    picked = f"width {width} ({wa.width_source})"
    # a config's stated width (config.hidden_size) with no other width-named attribute is what the user means: a base
    # half the width that happens to equal another dim (GQA's K/V width w/2) is the ordinary proxy, not a mix-up.  The
    # most-used dim and timm's first feature stage are picks from a stage-width model, where it may be one
    ambiguous = not wa.width_source.startswith("config.") or bool(named)
    if base_width != width and base_width in dims and ambiguous:
        lint.append(
            f"base_width={base_width} is the size of another scaling dimension ({dims[base_width].expr} of the "
            f"{picked}), so μP applies width_mult {width / base_width:g}"
            + (" < 1" if width < base_width else "") + f". What to do: if this model is built at its base size "
            f"(width_mult 1), pass width={base_width} here and width=<that dimension's size> for every other "
            f"model (the proxy and the target measured alike; README: stage-width models); if {width} is the "
            f"width and {base_width} was the base model's, pass width={width} to say so. Scaling dimensions: "
            f"{listing}.")
    elif base_width > width:
        lint.append(
            f"base_width={base_width} is larger than the {picked}: μP applies width_mult {width / base_width:g} < 1 "
            f"(the model narrower than the one the hyperparameters were tuned at). What to do: pass the base "
            f"model's size of the dimension you mean as base_width, or width=<size> to pick another dimension. "
            f"Scaling dimensions: {listing}.")
    if named and wa.width_source.startswith(("config.", "timm ")) and not lint:
        k, v = sorted(named.items())[0]
        lint.append(
            f"the width is {wa.width_source}={width}, and the model also names {k}={v} ({dims[v].expr}), another "
            f"scaling dimension (a stage-width model): width_mult {width / base_width:g} is measured on "
            f"{wa.width_source}. What to do: if base_width={base_width} is the base model's {k}, pass width={v} "
            f"(the same way for the proxy and the target; README: stage-width models).")
    return WidthChoice(lint=lint)


def _relative(a: int, b: int) -> str:
    return f"{a // b}×" if a % b == 0 else f"{a / b:g}×"


def rounded_dim_notes(wa, base_width: int) -> list[str]:
    """Notes on scaling dimensions whose ratio to the width is close to a simple fraction but not equal to it: a
    size rounded to a multiple (a SwiGLU hidden size 8w/3 rounded to a multiple of 8: 680 at w = 256).  Its base
    size is taken symbolically (680·64/256 = 170) while a model built at the base width rounds on its own (168)."""
    import sympy

    notes, seen = [], set()
    sym = wa.width_symbol
    for d in getattr(wa, "scaling_dims", []):
        if d.size in seen:
            continue
        seen.add(d.size)
        coef = sympy.nsimplify(d.expr / sym) if d.expr.has(sym) else None
        if coef is None or not coef.is_Rational:
            continue
        c = float(coef)
        for q in (1, 2, 3, 4):
            p = round(c * q)
            if p > 0 and sympy.Rational(p, q) != coef and abs(p / q - c) / c < 0.03:
                simple = sympy.Rational(p, q)
                notes.append(
                    f"the scaling dimension {d.size} = {d.expr} is close to {simple}·w but not equal (a size rounded "
                    f"to a multiple, e.g. a SwiGLU hidden size): its base size is taken as {d.expr.subs(sym, base_width)}"
                    f" (symbolic), while a model built at base_width={base_width} may round it differently "
                    f"(≈{float(simple * base_width):g}); pass base=<the model built at the base width> for exact base "
                    f"fans.")
                break
    return notes
