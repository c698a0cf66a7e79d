#!/usr/bin/env python
"""Plain vs improved ``muplify.tune`` at an equal budget of objective runs, on the built-in task.

The task: ``muplify.models.GPT(vocab_size=256, d_model=W, n_layer=2, head_dim=32, tie_weights=False)`` trained by the
built-in objective ``muplify.tools.objectives.byte_lm`` (next-byte prediction on the interpreter's standard library,
AdamW with warmup and cosine decay, validation loss in nats/byte), search space ``lr`` ∈ [2^-12, 2^-4] and
``hp.output_mult`` ∈ [1/8, 8].  Two arms, the same number of objective runs R:

* **plain**: ``tune(trials=R)``: R single-seed TPE trials (what ``muplify.tune`` did before ``seeds_per_trial``,
  ``refine`` and ``reeval_top``);
* **improved**: ``tune(trials=G, seeds_per_trial=2, refine=F, reeval_top=n, reeval_seeds=s)`` with
  2·G + 2·F + n·s = R: fewer, averaged trials, a local phase around the incumbent, the top n re-run on fresh seeds
  (full: G = 12, F = 5, n = 3, s = 2, R = 40; quick: G = 2, F = 1, n = 2, s = 2, R = 10 — a smoke run of the
  pipeline, too small to rank the arms).

Each arm's pick is then trained on 3 fresh seeds (quick: 2; data and init) at the proxy width and transferred to
twice the proxy width: the mean and seed std of the validation loss are the result (lower is better), beside the
arm's own claim (its best value) — the plain arm's claim is a single-seed minimum, biased low.

    python benchmarks/tune_budget.py --quick         # width 32 -> 64, 20 steps, R = 10
    python benchmarks/tune_budget.py                 # width 64 -> 128, 200 steps, R = 40

Outputs in ``--out`` (default ``benchmarks/results/tune_budget[_quick]``): ``results.json`` (both arms: picks, budget
split, final runs) and ``tune_budget.png`` (final loss per arm at both widths with seed spread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import muplify  # noqa: E402
from muplify.models import GPT  # noqa: E402
from muplify.tools.objectives import byte_lm  # noqa: E402
from muplify.tools.tune import Fixed, LogUniform, transfer  # noqa: E402

SETTINGS = {
    "quick": dict(width=32, steps=20, batch_size=8, seq_len=64, eval_every=10, runs=10, global_trials=2, refine=1,
                  reeval_top=2, reeval_seeds=2, final_seeds=2, out="benchmarks/results/tune_budget_quick"),
    "full": dict(width=64, steps=200, batch_size=16, seq_len=128, eval_every=50, runs=40, global_trials=12, refine=5,
                 reeval_top=3, reeval_seeds=2, final_seeds=3, out="benchmarks/results/tune_budget"),
}
FINAL_SEED = 9_000  # the final runs' seeds: 9000, 9001, ... (no sweep used them)


def make_gpt(width: int) -> GPT:
    return GPT(vocab_size=256, d_model=width, n_layer=2, head_dim=32, block_size=128, tie_weights=False, init="gpt2")


def space(s: dict) -> dict:
    return {"lr": LogUniform(2 ** -12, 2 ** -4), "hp.output_mult": LogUniform(1 / 8, 8),
            "objective.steps": Fixed(s["steps"]), "objective.batch_size": Fixed(s["batch_size"]),
            "objective.seq_len": Fixed(s["seq_len"]), "objective.warmup": Fixed(max(1, s["steps"] // 10)),
            "objective.eval_every": Fixed(s["eval_every"]), "objective.eval_batches": Fixed(4)}


def final_runs(best: dict, width: int, seeds: int) -> list[float]:
    out = []
    for j in range(seeds):
        mu, opt = transfer(make_gpt, best, torch.optim.AdamW, width=width, seed=FINAL_SEED + j)
        kw = dict(best["objective"])
        kw["seed"] = FINAL_SEED + j
        out.append(byte_lm(mu, opt, lambda step, v: None, **kw))
    return out


def arm(name: str, s: dict, seed: int) -> dict:
    kw = dict(trials=s["runs"])
    if name == "improved":
        kw = dict(trials=s["global_trials"], seeds_per_trial=2, refine=s["refine"], reeval_top=s["reeval_top"],
                  reeval_seeds=s["reeval_seeds"])
    t0 = time.perf_counter()
    r = muplify.tune(make_gpt, s["width"], byte_lm, torch.optim.AdamW, space=space(s), defaults=False, storage=None,
                     seed=seed, progress=False, **kw)
    tune_s = time.perf_counter() - t0
    runs = sum(p.evaluations for p in r.phases) + sum(len(x.values) for x in r.reeval)
    finals = {w: final_runs(r.best, w, s["final_seeds"]) for w in (s["width"], 2 * s["width"])}
    print(f"{name}: {runs} runs, {r.budget()}; best {r.best['value']:.4f}; pick lr {r.best['lr']:.3g} "
          f"output_mult {r.best['hp']['output_mult']:.3g}", flush=True)
    return {"arm": name, "objective_runs": runs, "budget": r.budget(), "claimed": r.best["value"],
            "spread": r.spread, "within_spread": r.within_spread, "pick": {"lr": r.best["lr"], "hp": r.best["hp"]},
            "convergence": None if r.convergence is None else r.convergence.verdict, "tune_seconds": round(tune_s, 1),
            "final": {str(w): {"values": v, "mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1
                               else None} for w, v in finals.items()}}


def plot(results: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    arms = results["arms"]
    widths = list(arms[0]["final"])
    for k, a in enumerate(arms):
        xs = [i + (k - 0.5) * 0.3 for i in range(len(widths))]
        ax.errorbar(xs, [a["final"][w]["mean"] for w in widths], yerr=[a["final"][w]["std"] or 0 for w in widths],
                    fmt="o", capsize=4, label=f"{a['arm']} ({a['objective_runs']} runs)")
    ax.set_xticks(range(len(widths)), [f"width {w}" for w in widths])
    ax.set_ylabel(f"validation loss (nats/byte), {results['settings']['final_seeds']} fresh seeds")
    ax.set_title(f"plain vs improved muplify.tune at equal runs ({results['mode']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small widths, short runs (minutes)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0, help="the sweeps' seed")
    a = ap.parse_args()
    mode = "quick" if a.quick else "full"
    s = SETTINGS[mode]
    out = a.out or os.path.join(ROOT, s["out"])
    os.makedirs(out, exist_ok=True)
    assert 2 * s["global_trials"] + 2 * s["refine"] + s["reeval_top"] * s["reeval_seeds"] == s["runs"], \
        "the arms must have equal objective runs"
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results = {"mode": mode, "settings": s, "command": "python benchmarks/tune_budget.py" + (" --quick" * a.quick),
               "arms": [arm("plain", s, a.seed), arm("improved", s, a.seed)]}
    for r in results["arms"]:
        f = r["final"]
        print(f"{r['arm']:9s} claimed {r['claimed']:.4f}  final " + "  ".join(
            f"@{w}: {v['mean']:.4f} ± {v['std']:.4f}" for w, v in f.items()))
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    plot(results, os.path.join(out, "tune_budget.png"))
    print(f"wrote {out}/results.json, {out}/tune_budget.png")


if __name__ == "__main__":
    main()
