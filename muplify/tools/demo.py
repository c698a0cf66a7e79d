"""The README's demo: ``python -m muplify demo [--out DIR] [--quick]``.

1. builds the built-in GPT (``muplify.models.GPT``: plain nanoGPT-style code, GPT-2 init, tied embedding/readout),
   muplifies it with the defaults and prints ``mu.plan``;
2. runs the coordinate check with its defaults, standard parametrization vs μP, on the built-in text corpus (the
   Python standard library's own files as bytes: real text, no download);
3. saves the picture and the JSON and says what they show.

Full run: widths 64..1024, 2 seeds; ``--quick``: widths 64..512, 1 seed.  Both: 2 layers, head_dim 32 (heads grow
with width), AdamW lr 3e-3, 3 steps, batches of 2 x 16 bytes (the coordinate check's defaults).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch.nn as nn

from .lint_once import lint_once
from .coord_check import CoordCheckResult, coord_check

N_LAYER = 2


def gpt_factory(n_layer: int = N_LAYER) -> Callable[[int], nn.Module]:
    """``width -> GPT(d_model=width, n_layer=n_layer)`` with the GPT's defaults (tied readout, GPT-2 init)."""
    from muplify.models import GPT

    def make(width: int) -> nn.Module:
        return GPT(vocab_size=256, d_model=width, n_layer=n_layer)

    return make


@lint_once
def run_demo(out: str = "muplify-out", quick: bool = False, *, verbose: bool = True) -> CoordCheckResult:
    """Run the demo; returns the coordinate check's result."""
    from muplify import muplify

    def say(*a):
        if verbose:
            print(*a, flush=True)

    widths, seeds = ([64, 128, 256, 512], 1) if quick else ([64, 128, 256, 512, 1024], 2)
    factory = gpt_factory()
    t0 = time.perf_counter()
    mu = muplify(factory(widths[-1]), base_width=widths[0])
    say(f"== muplify(GPT(d_model={widths[-1]}, n_layer={N_LAYER}), base_width={widths[0]})")
    say(mu.plan)
    say()
    say(f"== coordinate check: GPT, widths {widths}, {seeds} seed(s), SP vs μP")
    res = coord_check(factory, widths=widths, seeds=seeds, progress=None if verbose else False)
    elapsed = time.perf_counter() - t0
    say(res.table())
    png = res.plot(os.path.join(out, "coord_check_gpt.png"),
                   title="coordinate check: muplify.models.GPT, standard parametrization (top) vs μP (bottom)")
    js = res.to_json(os.path.join(out, "coord_check_gpt.json"))
    say()
    say(f"picture: {png}   (data: {js})")
    say(explain(res))
    say(f"({elapsed:.0f}s)")
    return res


def explain(res: CoordCheckResult) -> str:
    """What the picture shows, in two sentences."""
    n = len(res.slopes["sp"])
    sp_f, mu_f = res.failures("sp"), res.failures("mup")
    worst_sp = max((v for s in res.slopes["sp"].values() for v in s if v == v), default=0.0)
    first = (f"It shows the mean |activation| of every layer against width (log-log), one panel per training step: "
             f"under standard parametrization {len(sp_f)} of {n} curves grow with width (slopes up to "
             f"{worst_sp:+.2f}, i.e. ~{2 ** worst_sp:.1f}x per doubling); ")
    first += ("under μP they stay flat, and the readout starts at Θ(1/√width) as μP prescribes."
              if res.passed("mup") else f"under μP {len(mu_f)} of {len(res.slopes['mup'])} still change.")
    second = (f"Verdict: SP {'PASS' if res.passed('sp') else 'FAIL'}, μP {'PASS' if res.passed('mup') else 'FAIL'}"
              + ("." if res.passed("mup") else f" - likely cause: {res.likely_cause('mup')}"))
    return first + "\n" + second
