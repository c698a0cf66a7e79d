#!/usr/bin/env python
"""Transfer to a bigger batch and a longer run (issue 17 §3) on muplify's byte-level GPT.

The proxy (width W, batch B₀, S₀ steps, AdamW with β = (0.9, 0.95), ε = 1e-8, wd = 0.1, warmup + cosine) is tuned by
an lr sweep on a half-octave grid.  Each target changes one regime axis (×κ_B batch, or ×κ_S steps; ``--targets``)
and is trained under two arms over the same grid of *proxy* learning rates:

* **naive**: the proxy's values applied unchanged (what muplify did before issue 17);
* **rules**: ``mu.optimizer(AdamW, ..., batch_size=B, steps=S)`` with ``muplify(..., base_batch_size=B₀,
  base_steps=S₀)``: lr × √κ_B, β → β^κ_B, ε ÷ √κ_B, wd ÷ (√κ_B·κ_S) (docs/rules.md).

The naive arm's grid is the target tuned directly in the proxy's search space (lr, with the proxy's betas, ε and wd):
its minimum is the "tuned at target" baseline, which costs a full sweep at the target.  The summary states, per
target, the loss of the proxy's best lr under each arm against that baseline (and the rules arm's own minimum).

    python benchmarks/regime_transfer.py --quick        # seconds: a smoke run (CI); not meant to show anything
    python benchmarks/regime_transfer.py                # the committed run (sizes in results.json "meta")

Outputs in ``--out``: ``results.json`` (every run, resumable, and the summary), ``regime_transfer.png`` (val loss vs
log2 of the proxy lr per target and arm), a printed table.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from common import ResultStore, env_info, finite_or_none, import_muplify, set_threads  # noqa: E402

import_muplify()
from muplify import muplify  # noqa: E402
from muplify.models import GPT  # noqa: E402
from muplify.tools.corpus import stdlib_corpus  # noqa: E402
from muplify.tools.train import TrainOptions, train  # noqa: E402

PRESETS = {
    # sized for a loaded 2-core machine (~190 ms per step at batch 8 x seq 64 there): about 25 minutes
    "full": dict(width=64, layers=2, seq_len=32, base_batch=4, base_steps=150, kappa=4,
                 lrs=[-10.5, -10.0, -9.5, -9.0, -8.5, -8.0, -7.5, -7.0, -6.5], targets=["batch"], seeds=1,
                 eval_batches=8, out="benchmarks/results/regime_transfer"),
    "quick": dict(width=32, layers=1, seq_len=16, base_batch=2, base_steps=8, kappa=2, lrs=[-8.0, -7.0],
                  targets=["batch", "steps"], seeds=1, eval_batches=2, out="out/regime_transfer_quick"),
}
BETAS, EPS, WD = (0.9, 0.95), 1e-8, 0.1


def run_one(cfg: dict, corpus) -> dict:
    """One training run: cfg has width, layers, seq_len, base_batch, base_steps, batch, steps, lr, arm, seed."""
    torch.manual_seed(cfg["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(GPT(d_model=cfg["width"], n_layer=cfg["layers"], block_size=cfg["seq_len"]),
                     base_width=cfg["width"], base_batch_size=cfg["base_batch"], base_steps=cfg["base_steps"])
        regime = dict(batch_size=cfg["batch"], steps=cfg["steps"]) if cfg["arm"] == "rules" else {}
        opt = mu.optimizer(torch.optim.AdamW, lr=2.0 ** cfg["lr"], betas=BETAS, eps=EPS, weight_decay=WD, **regime)
    opts = TrainOptions(steps=cfg["steps"], warmup_steps=max(1, cfg["steps"] // 10), schedule="cosine",
                        seed=cfg["seed"])
    val = corpus.fixed_batches("val", cfg["eval_batches"], 16, cfg["seq_len"], seed=12345)
    r = train(mu, opt, corpus.batches("train", cfg["batch"], cfg["seq_len"], seed=cfg["seed"]), opts,
              val_batches=val)
    g = opt.param_groups[0]
    return {"val_loss": finite_or_none(r.val_loss), "diverged": r.diverged, "seconds": round(r.seconds, 2),
            "ms_per_step": round(r.ms_per_step, 1), "betas": list(g["betas"]), "regime": g.get("mup_regime", "")}


def targets_of(p: dict) -> dict[str, tuple[int, int]]:
    """name -> (batch, steps) of each target."""
    k, b, s = p["kappa"], p["base_batch"], p["base_steps"]
    table = {"batch": (k * b, s), "steps": (b, k * s), "both": (k * b, k * s)}
    return {t: table[t] for t in p["targets"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", nargs="+", choices=["batch", "steps", "both"], default=None)
    ap.add_argument("--lrs", type=float, nargs="+", default=None, help="log2 of the proxy learning rates")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    p = dict(PRESETS["quick" if a.quick else "full"])
    for k in ("out", "targets", "lrs", "seeds"):
        if getattr(a, k) is not None:
            p[k] = getattr(a, k)
    set_threads(a.threads)
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "results.json")
    store.data["meta"] = {"preset": "quick" if a.quick else "full", **{k: v for k, v in p.items() if k != "out"},
                          "betas": BETAS, "eps": EPS, "weight_decay": WD, "env": env_info(),
                          "command": "python benchmarks/regime_transfer.py " + " ".join(sys.argv[1:] if argv is None
                                                                                         else argv)}
    corpus = stdlib_corpus()
    base = {k: p[k] for k in ("width", "layers", "seq_len", "base_batch", "base_steps", "eval_batches")}
    jobs = [("proxy", "naive", p["base_batch"], p["base_steps"])]
    for name, (b, s) in targets_of(p).items():
        jobs += [(name, "naive", b, s), (name, "rules", b, s)]
    t0 = time.time()
    for target, arm, b, s in jobs:
        for lr in p["lrs"]:
            for seed in range(p["seeds"]):
                cfg = {**base, "batch": b, "steps": s, "lr": lr, "arm": arm, "seed": seed}
                if store.get(cfg) is None:
                    rec = run_one(cfg, corpus)
                    store.put(cfg, rec)
                    print(f"[{time.time() - t0:6.0f}s] {target:5s} {arm:5s} B={b} S={s} lr=2^{lr:g} seed {seed}: "
                          f"{rec['val_loss']} ({rec['ms_per_step']} ms/step)", flush=True)
    summary = summarize(store, base, p, jobs)
    store.data["summary"] = summary
    store.save()
    print_table(summary)
    if not a.no_plot:
        plot(summary, out / "regime_transfer.png")
    return 0


def _curve(store, base, p, arm, b, s) -> dict[float, float]:
    out = {}
    for lr in p["lrs"]:
        vals = [store.get({**base, "batch": b, "steps": s, "lr": lr, "arm": arm, "seed": k}) for k in range(p["seeds"])]
        losses = [v["val_loss"] for v in vals if v is not None]
        out[lr] = (sum(x if x is not None else math.log(256) for x in losses) / len(losses)) if losses else None
    return out


def summarize(store, base, p, jobs) -> dict:
    proxy = _curve(store, base, p, "naive", p["base_batch"], p["base_steps"])
    best_lr = min((lr for lr in proxy if proxy[lr] is not None), key=lambda lr: proxy[lr])
    out = {"proxy": {"curve": proxy, "best_lr_log2": best_lr, "loss": proxy[best_lr]}, "targets": {}}
    for name, (b, s) in targets_of(p).items():
        naive = _curve(store, base, p, "naive", b, s)
        rules = _curve(store, base, p, "rules", b, s)
        tuned_lr = min((lr for lr in naive if naive[lr] is not None), key=lambda lr: naive[lr])
        rules_min = min((lr for lr in rules if rules[lr] is not None), key=lambda lr: rules[lr])
        edge = tuned_lr in (p["lrs"][0], p["lrs"][-1])
        out["targets"][name] = {
            "batch": b, "steps": s, "kappa_b": b / p["base_batch"], "kappa_s": s / p["base_steps"],
            "naive_curve": naive, "rules_curve": rules,
            "naive": naive[best_lr], "rules": rules[best_lr],
            "tuned_at_target": naive[tuned_lr], "tuned_lr_log2": tuned_lr, "tuned_on_grid_edge": edge,
            "rules_curve_min": rules[rules_min], "rules_curve_argmin_log2": rules_min,
            "rules_minus_tuned": rules[best_lr] - naive[tuned_lr], "naive_minus_tuned": naive[best_lr] - naive[tuned_lr],
            "rules_effective_lr_log2": best_lr + 0.5 * math.log2(b / p["base_batch"]),
        }
    return out


def print_table(summary: dict) -> None:
    px = summary["proxy"]
    print(f"\nproxy: best lr 2^{px['best_lr_log2']:g}, val loss {px['loss']:.4f}")
    print(f"{'target':8s} {'kB':>4s} {'kS':>4s} {'naive':>8s} {'rules':>8s} {'tuned':>8s} {'tuned lr':>9s} "
          f"{'rules-tuned':>12s} {'naive-tuned':>12s} {'rules min':>10s} {'at lr':>8s}")
    for name, t in summary["targets"].items():
        print(f"{name:8s} {t['kappa_b']:4g} {t['kappa_s']:4g} {t['naive']:8.4f} {t['rules']:8.4f} "
              f"{t['tuned_at_target']:8.4f} {'2^' + format(t['tuned_lr_log2'], 'g'):>9s} "
              f"{t['rules_minus_tuned']:+12.4f} {t['naive_minus_tuned']:+12.4f} {t['rules_curve_min']:10.4f} "
              f"{'2^' + format(t['rules_curve_argmin_log2'], 'g'):>8s}"
              + ("  (tuned lr on the grid's edge)" if t["tuned_on_grid_edge"] else ""))
    print("naive: the proxy's values at the target; rules: muplify's regime rules from the proxy's best lr; tuned: "
          "the naive arm's grid minimum (the target swept in the proxy's search space); rules min: the rules "
          "arm's grid minimum (lr is the proxy lr, before x√κ_B)")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = summary["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4), squeeze=False)
    px = summary["proxy"]
    for ax, (name, t) in zip(axes[0], targets.items()):
        for key, label, style in (("naive_curve", "naive (proxy values)", "o-"),
                                  ("rules_curve", "regime rules", "s-")):
            xs = [float(k) for k, v in t[key].items() if v is not None]
            ys = [v for v in t[key].values() if v is not None]
            ax.plot(xs, ys, style, label=label)
        pc = px["curve"]
        ax.plot([float(k) for k, v in pc.items() if v is not None], [v for v in pc.values() if v is not None], "k:",
                alpha=0.5, label="proxy")
        ax.axvline(px["best_lr_log2"], color="grey", lw=0.8, ls="--")
        ax.set_title(f"target {name}: batch x{t['kappa_b']:g}, steps x{t['kappa_s']:g}")
        ax.set_xlabel("log2(proxy lr) (rules arm: x√κ_B inside step())")
        ax.set_ylabel("val loss (nats/byte)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
