#!/usr/bin/env python
"""How much of a coordinate check's and a tune sweep's time is muplify()'s analysis, with and without reusing one
width's analysis for the others (muplify/reuse.py, issue 20)?

Each case runs twice in this process (after one warm-up muplify() of each model, so that neither pays the imports), ``before`` with the reuse switched off (every muplify()
captures, as before muplify.reuse), ``after`` as shipped.  Recorded: the wall time of the whole call, the time spent
inside muplify() (summed over its calls), the number of calls, and how many of them reused an analysis.

* ``coord_check``: ``muplify.models.GPT`` (2 layers) at widths 64 / 128 / 256 (``--quick``: 64 / 128), 2 seeds,
  parametrizations sp and mup, 2 steps: muplify() runs at every width and seed.
* ``tune``: an MLP proxy (``muplify.models.MLP``, width 64), 12 trials (``--quick``: 6) of a 5-step regression in
  this process (``workers=1``): muplify() runs at every trial, at the same width with another ``hp``.

    python benchmarks/reuse_startup.py --out benchmarks/results/reuse_startup
    python benchmarks/reuse_startup.py --quick --out benchmarks/results/reuse_startup
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from muplify_dev.tasks import fit_regression  # noqa: E402


@contextlib.contextmanager
def counted(enabled: bool):
    """Time every muplify() call; with ``enabled`` False the reuse cache is bypassed (every call captures)."""
    import muplify
    import muplify.core as core
    import muplify.reuse as reuse

    real_muplify, real_plan_for = core.muplify, reuse.plan_for
    rec = {"muplify_calls": 0, "muplify_s": 0.0, "reused": 0}

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            out = real_muplify(*a, **k)
        finally:
            rec["muplify_s"] += time.perf_counter() - t
            rec["muplify_calls"] += 1
        rec["reused"] += any(n.startswith("capture: reused") for n in out.plan.notes)
        return out

    core.muplify = muplify.muplify = timed
    if not enabled:
        core.reuse.plan_for = lambda model, compute, **kw: compute()
    try:
        yield rec
    finally:
        core.muplify = muplify.muplify = real_muplify
        core.reuse.plan_for = real_plan_for


def _gpt(width: int):
    from muplify.models import GPT

    return GPT(vocab_size=128, d_model=width, n_layer=2, head_dim=16, block_size=16)


def run_coord_check(quick: bool) -> dict:
    from muplify import coord_check

    widths = [64, 128] if quick else [64, 128, 256]
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 128, (4, 16), generator=g)
    t = time.perf_counter()
    coord_check(_gpt, batch, widths=widths, steps=2, seeds=2, parametrizations=("sp", "mup"), progress=False)
    return {"wall_s": time.perf_counter() - t, "widths": widths}


def _mlp(width: int):
    from muplify.models import MLP

    return MLP(in_features=8, width=width, out_features=4, depth=3)


def _objective(model, optimizer, report, steps: int = 5) -> float:
    return fit_regression(model, optimizer, report, seed=1, steps=steps, n=64)


def run_tune(quick: bool) -> dict:
    import tempfile

    from muplify.tools import tune as T

    trials = 6 if quick else 12
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        T.tune(_mlp, 64, _objective, torch.optim.AdamW, trials=trials, pruner=None, progress=False,
               storage=f"sqlite:///{tmp}/tune.db")
    return {"wall_s": time.perf_counter() - t, "trials": trials}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="fewer widths and trials")
    ap.add_argument("--out", default=None, help="directory for reuse_startup.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import env_info, write_json

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from muplify import muplify

    for make in (_gpt, _mlp):  # imports and first-call costs paid before either mode is timed
        muplify(make(64), base_width=32)
    rows = []
    for name, fn in (("coord_check", run_coord_check), ("tune", run_tune)):
        for mode, enabled in (("before", False), ("after", True)):
            torch.manual_seed(0)
            with counted(enabled) as rec:
                rec.update(fn(args.quick))
            rec.update(case=name, mode=mode)
            rows.append(rec)
            print(f"{name:12s} {mode:6s} wall {rec['wall_s']:6.2f} s  muplify() {rec['muplify_calls']:3d} calls "
                  f"{rec['muplify_s']:6.2f} s  reused {rec['reused']}", flush=True)
    by = {(r["case"], r["mode"]): r for r in rows}
    summary = {c: {"muplify_s_before": by[(c, "before")]["muplify_s"], "muplify_s_after": by[(c, "after")]["muplify_s"],
                   "speedup_muplify": by[(c, "before")]["muplify_s"] / max(by[(c, "after")]["muplify_s"], 1e-9),
                   "wall_s_before": by[(c, "before")]["wall_s"], "wall_s_after": by[(c, "after")]["wall_s"]}
               for c in ("coord_check", "tune")}
    for c, s in summary.items():
        print(f"{c}: muplify() time {s['muplify_s_before']:.2f} s -> {s['muplify_s_after']:.2f} s "
              f"(x{s['speedup_muplify']:.1f}); whole call {s['wall_s_before']:.2f} s -> {s['wall_s_after']:.2f} s")
    result = {"meta": env_info(), "rows": rows, "summary": summary,
              "command": "python benchmarks/reuse_startup.py" + (" --quick" if args.quick else "")}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(Path(args.out) / ("reuse_startup_quick.json" if args.quick else "reuse_startup.json"), result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
