#!/usr/bin/env python
"""Transfer of the learning rate across depth: width-only μP vs μP + CompleteP (Dey et al. 2025).

The byte-level GPT at a fixed width, depths 2 -> 16 (8x), a log2 grid of AdamW learning rates, 2 seeds.  Arms:

* μP: ``muplify(model, base_width=W)`` (at the base width: the plain model), ``mu.optimizer(AdamW)``;
* μP+CompleteP: ``muplify(model, base_width=W, base_depth=2)``: every residual branch × (2/L), in-branch lr and ε
  rules (docs/rules.md).

Targets: the optimum moves at most one grid step over 8x depth with CompleteP and at least two without; the best
loss improves with depth under CompleteP.  This is ``benchmarks/lr_transfer.py --axis depth`` (the same runner,
corpus and training loop) with depth presets:

    python benchmarks/depth_transfer.py --quick                   # CI smoke run (seconds)
    python benchmarks/depth_transfer.py --jobs 2 --threads 1      # the full sweep (~15-25 minutes on 2 cores)
"""
from __future__ import annotations

import sys
from pathlib import Path

import lr_transfer  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--axis" not in argv:
        argv = ["--axis", "depth", *argv]
    return lr_transfer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
