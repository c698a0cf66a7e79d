"""Helpers shared by the analysis tests (test_rules, test_width, test_classify, test_capture): run the capture and
the width analysis on a model, muplify without warnings."""
from __future__ import annotations

import warnings

import torch

from muplify import muplify
from muplify.capture import capture
from muplify.width import analyse
from muplify_dev.zoo import build

__all__ = ["X8", "quiet_muplify", "analysis", "analysis_of"]

X8 = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def quiet_muplify(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(model, **kw)


def analysis(model, *args, width=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = capture(model, tuple(args), kwargs) if args or kwargs else capture(model)
        return analyse(cap, width=width)


def analysis_of(name: str, size: int, width: int | None = None):
    model, args, kwargs = build(name, size)
    return model, analysis(model, *args, width=width, **kwargs)

