#!/usr/bin/env python
"""μTransfer of the learning rate (Tensor Programs V, Figure 1 style) on muplify's built-in GPT.

For every width and every learning rate on a log2 grid, train a small byte-level GPT for a fixed number of steps under

* SP: the plain model and a plain ``torch.optim.AdamW``;
* μP: ``mu = muplify(model, base_width=B)`` and ``mu.optimizer(torch.optim.AdamW, ...)``,

then evaluate the validation loss on a fixed set of held-out batches.  Under SP the best learning rate falls as the
model widens; under μP it stays put and wider is better.  The data is the running interpreter's standard library
(``.py`` and ``.txt`` files, split into train/validation by file), one byte per token: nothing is downloaded.

    python benchmarks/lr_transfer.py --quick              # ~1 minute smoke run (CI)
    python benchmarks/lr_transfer.py                      # the full sweep (~40 minutes on 2 CPU cores)
    python benchmarks/lr_transfer.py --widths 64 128 --lrs -10 -9 -8 --steps 300 --seeds 2 --out out/my_sweep

Every finished run is written to ``OUT/results.json`` at once; re-running with the same settings skips it.  Outputs:
``results.json`` (runs + summary), ``lr_transfer.png`` (loss vs log2(lr), SP and μP side by side), a printed table.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from common import ResultStore, env_info, finite_or_none, import_muplify, set_threads  # noqa: E402

from muplify.models import GPT  # noqa: E402
from muplify.tools.corpus import ByteCorpus, stdlib_corpus  # noqa: E402
from muplify.tools.train import TrainOptions, lr_factor, train  # noqa: E402

UNIFORM_LOSS = math.log(256)  # loss of the uniform byte predictor: the "capped" loss for diverged runs in plots

# --axis depth: widths are replaced by layer counts at a fixed width (benchmarks/depth_transfer.py)
DEPTH_PRESETS = {
    "full": dict(depths=[2, 4, 8, 16], lrs=[-11, -10, -9, -8, -7, -6, -5], steps=300, seeds=2, batch_size=8,
                 seq_len=64, eval_batches=8, out="out/depth_transfer"),
    "quick": dict(depths=[2, 4], lrs=[-9, -8, -7], steps=30, seeds=1, batch_size=4, seq_len=32, eval_batches=2,
                  out="out/depth_transfer_quick"),
}

PRESETS = {
    # Sized for ~40 minutes on 2 CPU cores (measured fwd+bwd+AdamW step at batch 16, seq 128, 2 layers:
    # w64 ~26 ms, w128 ~62 ms, w256 ~155 ms, w512 ~520 ms).
    "full": dict(widths=[64, 128, 256, 512], lrs=[-13, -12, -11, -10, -9, -8, -7, -6], steps=200, seeds=1,
                 base_width=64, batch_size=16, seq_len=128, eval_batches=8, threads=2, out="out/lr_transfer"),
    # CI smoke run: tiny widths, few lrs and steps.  Not meant to show transfer.
    "quick": dict(widths=[64, 128], lrs=[-9, -8, -7, -6, -5], steps=40, seeds=1,
                  base_width=64, batch_size=8, seq_len=64, eval_batches=2, threads=1, out="out/lr_transfer_quick"),
}

# measured step times (ms) at batch 16, seq 128, 2 layers, 2 threads; used only for the printed time estimate / ETA
_MS_PER_STEP = {32: 11.0, 64: 26.0, 128: 62.0, 256: 155.0, 512: 520.0}


def est_step_seconds(width: int, batch_size: int, seq_len: int, n_layer: int) -> float:
    ws = sorted(_MS_PER_STEP)
    lw = math.log2(width)
    lo = max([w for w in ws if w <= width] or [ws[0]])
    hi = min([w for w in ws if w >= width] or [ws[-1]])
    if lo == hi:
        lo, hi = (ws[0], ws[1]) if width < ws[0] else (ws[-2], ws[-1]) if width > ws[-1] else (lo, hi)
    if lo == hi:
        ms = _MS_PER_STEP[lo]
    else:  # log-log interpolation / extrapolation
        a, b = math.log2(_MS_PER_STEP[lo]), math.log2(_MS_PER_STEP[hi])
        ms = 2 ** (a + (b - a) * (lw - math.log2(lo)) / (math.log2(hi) - math.log2(lo)))
    return ms / 1e3 * (batch_size * seq_len) / (16 * 128) * n_layer / 2


def parse_lr(tok: str) -> float:
    """A grid point as log2(lr): ``-10`` or ``2^-10`` means 2**-10; a positive number (``0.001``) is an lr."""
    tok = tok.strip()
    if tok.startswith("2^") or tok.startswith("2**"):
        return float(tok.split("^")[-1] if "^" in tok else tok[3:])
    v = float(tok)
    return v if v <= 0 else math.log2(v)


# ----------------------------------------------------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------------------------------------------------
def _optimizer(cfg: dict, model, lr: float, mu: bool):
    """AdamW, or Muon on the hidden matrices with an AdamW fallback (SP: the same split, no μP rules)."""
    adamw = dict(weight_decay=cfg["weight_decay"], betas=(0.9, 0.95))
    if cfg.get("optimizer") != "muon":
        return model.optimizer(torch.optim.AdamW, lr=lr, **adamw) if mu else \
            torch.optim.AdamW(model.parameters(), lr=lr, **adamw)
    fallback = (torch.optim.AdamW, dict(lr=2.0 ** cfg["fallback_log2_lr"], **adamw))
    if mu:
        return model.optimizer(torch.optim.Muon, lr=lr, weight_decay=cfg["weight_decay"], fallback=fallback)
    from muplify.optim import CombinedOptimizer

    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("wte", "wpe", "lm_head"))]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("wte", "wpe", "lm_head")))]
    return CombinedOptimizer([torch.optim.Muon(hidden, lr=lr, weight_decay=cfg["weight_decay"]),
                              fallback[0](rest, **fallback[1])])


def make_model_and_opt(cfg: dict, muplify_fn):
    torch.manual_seed(cfg["seed"])
    model = GPT(vocab_size=256, d_model=cfg["width"], n_layer=cfg["n_layer"], head_dim=32, block_size=cfg["seq_len"],
                attn="sdpa", tie_weights=cfg["tie_weights"], init="gpt2")
    lr = 2.0 ** cfg["log2_lr"]
    info: dict = {}
    if cfg["param"] == "sp":
        opt = _optimizer(cfg, model, lr, mu=False)
    else:
        example = (torch.randint(0, 256, (2, cfg["seq_len"])),)
        depth = {"base_depth": cfg["base_depth"]} if cfg["param"] == "completep" else {}
        t0 = time.perf_counter()
        model = muplify_fn(model, base_width=cfg["base_width"], example_inputs=example,
                           readout_zero_init=cfg["readout_zero_init"], query_zero_init=cfg["query_zero_init"], **depth)
        info["muplify_seconds"] = time.perf_counter() - t0
        opt = _optimizer(cfg, model, lr, mu=True)
        try:
            roles: dict = {}
            for _, pp in model.plan.items():
                roles[pp.role] = roles.get(pp.role, 0) + 1
            info["roles"] = roles
            info["width_mult"] = float(model.plan.width_mult)
        except Exception as e:  # informative only
            info["plan_error"] = f"{type(e).__name__}: {e}"
    info["n_params"] = sum(p.numel() for p in model.parameters())
    info["n_param_groups"] = len(opt.param_groups)
    # muplify keeps group["lr"] = the schedule's lr and applies group["lr_mult"] inside step() (see muplify/optim.py)
    info["lr_multipliers"] = sorted({round(g["lr"] * g.get("lr_mult", 1.0) / lr, 8) for g in opt.param_groups})
    info["param_groups"] = [{"roles": g.get("mup_roles"), "lr_mult": g.get("lr_mult"), "wd_mult": g.get("wd_mult"),
                             "n_tensors": len(g["params"])} for g in opt.param_groups]
    return model, opt, info


def train_options(cfg: dict) -> TrainOptions:
    return TrainOptions(steps=cfg["steps"], warmup_steps=cfg["warmup"], schedule=cfg["schedule"],
                        grad_clip=cfg["grad_clip"] or None, seed=None)


def run_one(cfg: dict, corpus: ByteCorpus, eval_batches, muplify_fn) -> dict:
    t_start = time.perf_counter()
    model, opt, info = make_model_and_opt(cfg, muplify_fn)
    options = train_options(cfg)
    # probe the learning rates the optimizer actually uses inside step() (after muplify's own pre-hook, which
    # multiplies group["lr"] by group["lr_mult"] for the duration of the step)
    seen: dict = {}
    opt.register_step_pre_hook(lambda o, a, k: seen.__setitem__("lrs", [g["lr"] for g in o.param_groups]))
    # the same batches for every width / lr / param at a seed
    batches = corpus.batches("train", cfg["batch_size"], cfg["seq_len"], seed=1000 + cfg["seed"])
    res = train(model, opt, batches, options, val_batches=eval_batches)
    # the μP per-group ratios must survive the scheduler: at the last step, every group's effective lr must be
    # base lr x schedule factor x its μP multiplier
    ratios_ok = None
    if res.steps_done > 0 and "lrs" in seen:
        f = lr_factor(res.steps_done - 1, options)
        ratios_ok = all(math.isclose(eff, f * g.get("initial_lr", g["lr"]) * g.get("lr_mult", 1.0), rel_tol=1e-6)
                        for eff, g in zip(seen["lrs"], opt.param_groups))
    return {
        "status": "diverged" if res.diverged else "ok",
        "val_loss": finite_or_none(res.val_loss),
        "train_loss_last": finite_or_none(res.train_loss),
        "diverged": res.diverged,
        "steps_done": res.steps_done,
        "train_curve": [[step, finite_or_none(loss)] for step, loss in res.curve],
        "seconds": time.perf_counter() - t_start,
        "ms_per_step": res.ms_per_step,
        "schedule_ratios_preserved": ratios_ok,
        **info,
    }


def safe_run(cfg: dict, corpus, eval_batches, muplify_fn, import_error) -> dict:
    if cfg["param"] != "sp" and muplify_fn is None:
        return {"status": "error", "error": f"import: {import_error}"}
    try:
        return run_one(cfg, corpus, eval_batches, muplify_fn)
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


_POOL: dict = {}


def validation_batches(corpus: ByteCorpus, n: int, batch_size: int, seq_len: int) -> list:
    """The fixed held-out batches every run is evaluated on."""
    return corpus.fixed_batches("val", n, batch_size, seq_len, seed=12345)


def _pool_init(threads: int, batch_size: int, seq_len: int, eval_batches_n: int) -> None:
    set_threads(threads)
    corpus = stdlib_corpus()
    _POOL.update(corpus=corpus, eval_batches=validation_batches(corpus, eval_batches_n, batch_size, seq_len))
    _POOL["muplify_fn"], _POOL["import_error"] = import_muplify()


def _pool_run(cfg: dict):
    return cfg, safe_run(cfg, _POOL["corpus"], _POOL["eval_batches"], _POOL["muplify_fn"], _POOL["import_error"])


# ----------------------------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------------------------
LABELS = {"sp": "SP", "mup": "μP", "completep": "μP+CompleteP"}
TITLES = {"sp": "SP: plain model", "mup": "μP: muplify + mu.optimizer",
          "completep": "μP+CompleteP: muplify(base_depth=) + mu.optimizer"}


def size_key(cfg: dict) -> str:
    """What the sweep varies: the width, or (``axis="depth"``) the number of layers."""
    return "n_layer" if cfg.get("axis") == "depth" else "width"


def collect(store: ResultStore, cfgs: list[dict]):
    """losses[param][size][log2_lr] = mean val loss over seeds (inf if any seed diverged; None if incomplete)."""
    per: dict = {}
    for cfg in cfgs:
        rec = store.get(cfg)
        slot = per.setdefault(cfg["param"], {}).setdefault(cfg[size_key(cfg)], {}).setdefault(cfg["log2_lr"], [])
        if rec is None or rec.get("status") not in ("ok", "diverged"):
            slot.append(None)
        else:
            slot.append(math.inf if rec["diverged"] or rec["val_loss"] is None else rec["val_loss"])
    losses: dict = {}
    for p, by_w in per.items():
        for w, by_lr in by_w.items():
            for lr, vals in by_lr.items():
                v = None if any(x is None for x in vals) else sum(vals) / len(vals)
                losses.setdefault(p, {}).setdefault(w, {})[lr] = v
    return losses


def analyze(losses: dict, widths: list[int], lrs: list[float], base_width: int, axis: str = "width") -> dict:
    """Optima per size, how far they move, whether the best loss improves with size, and the targets: along width
    μP's optimum stays (≤ 1 grid step) while SP's moves (≥ 2); along depth the same for μP+CompleteP vs μP."""
    summary: dict = {"params": {}, "targets": {}}
    lo_w, hi_w = min(widths), max(widths)
    for p, by_w in losses.items():
        ps: dict = {"best": {}, "shift_steps": {}, "edge_optimum": []}
        for w in widths:
            row = by_w.get(w, {})
            vals = [(row.get(lr), i) for i, lr in enumerate(lrs)]
            if any(v is None for v, _ in vals) or all(v == math.inf for v, _ in vals):
                continue  # incomplete column (or everything diverged): no optimum
            v, i = min(vals)
            ps["best"][w] = {"log2_lr": lrs[i], "index": i, "val_loss": v}
            if i in (0, len(lrs) - 1):
                ps["edge_optimum"].append(w)
        ws = [w for w in widths if w in ps["best"]]
        for a, b in zip(ws[:-1], ws[1:]):
            ps["shift_steps"][f"{a}->{b}"] = ps["best"][b]["index"] - ps["best"][a]["index"]
        if lo_w in ps["best"] and hi_w in ps["best"]:
            ps["shift_total_steps"] = ps["best"][hi_w]["index"] - ps["best"][lo_w]["index"]
            ps["shift_total_log2"] = ps["best"][hi_w]["log2_lr"] - ps["best"][lo_w]["log2_lr"]
        best_losses = [ps["best"][w]["val_loss"] for w in ws]
        ps["best_loss_monotone"] = (all(b < a for a, b in zip(best_losses[:-1], best_losses[1:]))
                                    if len(ws) == len(widths) else None)
        summary["params"][p] = ps

    def target(name, ok, detail):
        summary["targets"][name] = {"status": "N/A" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail}

    stay, move = ("completep", "mup") if axis == "depth" else ("mup", "sp")
    good, bad = summary["params"].get(stay, {}), summary["params"].get(move, {})
    s = good.get("shift_total_steps")
    target(f"{stay}_optimum_shift_le_1", None if s is None else abs(s) <= 1,
           f"{LABELS[stay]} optimum moves {s} grid steps from {axis} {lo_w} to {hi_w} (target: |shift| <= 1)")
    s = bad.get("shift_total_steps")
    target(f"{move}_optimum_shift_ge_2", None if s is None else abs(s) >= 2,
           f"{LABELS[move]} optimum moves {s} grid steps from {axis} {lo_w} to {hi_w} (target: |shift| >= 2)")
    complete = good and len(good.get("best", {})) == len(widths)
    target(f"{stay}_best_loss_monotone", good.get("best_loss_monotone") if complete else None,
           f"{LABELS[stay]} best validation loss " + " > ".join(
               f"{good['best'][w]['val_loss']:.4f}@{w}" for w in widths if w in good.get("best", {}))
           + f" (target: strictly decreasing with {axis})")
    # identity at the base size: μP at base width trains exactly like SP (CompleteP at base depth like μP)
    if base_width in widths and move in losses and stay in losses:
        diffs = []
        for lr in lrs:
            a, b = losses[move].get(base_width, {}).get(lr), losses[stay].get(base_width, {}).get(lr)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
                diffs.append(abs(a - b))
        summary["base_width_max_abs_diff"] = max(diffs) if diffs else None
    return summary


def format_table(losses: dict, widths, lrs, summary, axis: str = "width") -> str:
    out = []
    tag = "L" if axis == "depth" else "w"
    for p in LABELS:
        if p not in losses:
            continue
        best = summary["params"].get(p, {}).get("best", {})
        out.append(f"\n{TITLES[p]}: validation loss")
        out.append("log2(lr) | " + " | ".join(f"{tag}={w:>5}" for w in widths))
        out.append("-" * (9 + 10 * len(widths)))
        for i, lr in enumerate(lrs):
            cells = []
            for w in widths:
                v = losses[p].get(w, {}).get(lr)
                c = "     -" if v is None else ("   div" if v == math.inf else f"{v:6.3f}")
                cells.append(c + ("*" if best.get(w, {}).get("index") == i else " "))
            out.append(f"{lr:8g} | " + " | ".join(f"{c:>8}" for c in cells))
        ps = summary["params"].get(p, {})
        out.append("argmin log2(lr): " + ", ".join(f"{tag}={w}: {best[w]['log2_lr']:g}" for w in widths if w in best))
        if ps.get("shift_steps"):
            out.append("optimum shift (grid steps): " + ", ".join(f"{k}: {v:+d}" for k, v in ps["shift_steps"].items())
                       + (f"; total {ps['shift_total_steps']:+d}" if "shift_total_steps" in ps else ""))
        out.append(f"best loss monotonically improves with {axis}: {ps.get('best_loss_monotone')}")
        if ps.get("edge_optimum"):
            out.append(f"WARNING: optimum at the edge of the grid for widths {ps['edge_optimum']} (not bracketed)")
    return "\n".join(out)


def plot(losses: dict, widths, lrs, summary, path: Path, title: str, axis: str = "width") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in LABELS if p in losses]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), sharey=True, squeeze=False)
    finite = [v for p in panels for w in widths for v in losses[p].get(w, {}).values()
              if v is not None and math.isfinite(v)]
    lo = min(finite) if finite else 0.0
    cap = min(max(finite), UNIFORM_LOSS + 0.5) if finite else UNIFORM_LOSS
    cmap = plt.get_cmap("viridis")
    for ax, p in zip(axes[0], panels):
        for k, w in enumerate(widths):
            color = cmap(k / max(1, len(widths) - 1))
            row = losses[p].get(w, {})
            xs = [lr for lr in lrs if row.get(lr) is not None]
            ys = [min(row[lr], cap) for lr in xs]
            ax.plot(xs, ys, "-o", color=color, label=f"{axis} {w}", ms=4)
            div = [lr for lr in xs if row[lr] == math.inf]
            ax.plot(div, [cap] * len(div), "x", color=color, ms=8)
            b = summary["params"].get(p, {}).get("best", {}).get(w)
            if b:
                ax.plot([b["log2_lr"]], [b["val_loss"]], "*", color=color, ms=14, mec="k")
        ax.set_title(TITLES[p], fontsize=9)
        ax.set_xlabel("log2(learning rate)")
        ax.grid(alpha=0.3)
        ax.set_ylim(lo - 0.05 * (cap - lo + 1e-3), cap + 0.05 * (cap - lo + 1e-3))
    axes[0][0].set_ylabel("validation loss (nats/byte)")
    axes[0][-1].legend(title="× = diverged, ★ = best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CI smoke run (~1 minute on 2 cores)")
    ap.add_argument("--widths", type=int, nargs="+")
    ap.add_argument("--lrs", nargs="+", help="grid as log2(lr) (e.g. -10 -9 -8, or 2^-10); positive values are lrs")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    ap.add_argument("--out", type=str)
    ap.add_argument("--params", nargs="+", choices=list(LABELS), default=None,
                    help="default: sp mup (width), mup completep (depth)")
    ap.add_argument("--axis", choices=["width", "depth"], default="width",
                    help="depth: sweep the number of layers at a fixed --width (width-only μP vs μP+CompleteP)")
    ap.add_argument("--depths", type=int, nargs="+", help="with --axis depth: the layer counts")
    ap.add_argument("--width", type=int, default=64, help="with --axis depth: the fixed width (= μP base width)")
    ap.add_argument("--base-depth", type=int, help="with --axis depth: CompleteP's base depth (default: smallest)")
    ap.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                    help="muon: torch.optim.Muon on the hidden matrices (lr from the grid) + AdamW fallback")
    ap.add_argument("--fallback-lr", type=float, default=-8.0, help="log2 lr of Muon's AdamW fallback")
    ap.add_argument("--base-width", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--eval-batches", type=int)
    ap.add_argument("--warmup-frac", type=float, default=0.1, help="linear warmup over this fraction of the steps")
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine", help="after warmup (cosine: to 10%%)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=0.0, help="0 = no clipping")
    ap.add_argument("--tie-weights", action="store_true", help="tie embedding and readout (default: untied)")
    ap.add_argument("--readout-zero-init", action="store_true", help="μP: muplify(readout_zero_init=True)")
    ap.add_argument("--query-zero-init", action="store_true", help="μP: muplify(query_zero_init=True)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (full: 2, quick: 1, which is robust to other "
                    "processes competing for the cores)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each with --threads, default 1 thread); "
                    "e.g. --jobs 2 --threads 1 on a 2-core machine")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    args = ap.parse_args(argv)

    preset = dict(PRESETS["quick" if args.quick else "full"])
    if args.axis == "depth":
        preset.update(DEPTH_PRESETS["quick" if args.quick else "full"])
    params = args.params or (["mup", "completep"] if args.axis == "depth" else ["sp", "mup"])
    args.params = params
    depth = args.axis == "depth"
    widths = sorted((args.depths or preset["depths"]) if depth else (args.widths or preset["widths"]))
    lrs = sorted(parse_lr(t) for t in args.lrs) if args.lrs else [float(x) for x in preset["lrs"]]
    steps = args.steps or preset["steps"]
    n_seeds = args.seeds or preset["seeds"]
    base_width = args.width if depth else (args.base_width or preset["base_width"])
    base_depth = args.base_depth or widths[0]
    batch_size = args.batch_size or preset["batch_size"]
    seq_len = args.seq_len or preset["seq_len"]
    eval_batches_n = args.eval_batches or preset["eval_batches"]
    out = Path(args.out or preset["out"])
    threads = set_threads(args.threads or preset["threads"])
    spacing = max((b - a for a, b in zip(lrs[:-1], lrs[1:])), default=0)
    if spacing > 1:
        print(f"WARNING: lr grid spacing {spacing:g} > 1 in log2: the transfer targets assume spacing <= 1")

    muplify_fn, import_error = import_muplify() if "mup" in args.params else (None, None)
    if import_error:
        print(f"μP path unavailable: `from muplify import muplify` failed: {import_error}")

    corpus = stdlib_corpus()
    eval_batches = validation_batches(corpus, eval_batches_n, batch_size, seq_len)

    common = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, n_layer=args.n_layer,
                  warmup=max(1, round(args.warmup_frac * steps)), schedule=args.schedule,
                  weight_decay=args.weight_decay, grad_clip=args.grad_clip, tie_weights=args.tie_weights,
                  eval_batches=eval_batches_n, data="stdlib-bytes-v1")
    if args.optimizer == "muon":
        common.update(optimizer="muon", fallback_log2_lr=args.fallback_lr)
    else:
        common["optimizer"] = "AdamW(betas=0.9,0.95)"
    if depth:
        common.update(axis="depth", width=args.width)
    cfgs = []
    for seed in range(n_seeds):
        for w in widths:
            for lr in lrs:
                for p in args.params:
                    cfg = dict(common, param=p, log2_lr=lr, seed=seed, **({"n_layer": w} if depth else {"width": w}))
                    if p != "sp":
                        cfg.update(base_width=base_width, readout_zero_init=args.readout_zero_init,
                                   query_zero_init=args.query_zero_init)
                    if p == "completep":
                        cfg["base_depth"] = base_depth
                    cfgs.append(cfg)

    store = ResultStore(out / "results.json")
    store.data["meta"] = {"env": env_info(), "corpus": corpus.describe(), "argv": sys.argv[1:] if argv is None else argv,
                          "widths": widths, "log2_lrs": lrs, "seeds": n_seeds, "base_width": base_width,
                          "params": args.params, "common": common, "threads": threads, "jobs": args.jobs}
    if not args.dry_run:
        store.save()
    todo = [c for c in cfgs if (store.get(c) or {}).get("status") not in ("ok", "diverged")]
    est = lambda c: c["steps"] * est_step_seconds(c["width"], batch_size, seq_len, c["n_layer"])  # noqa: E731
    est_total = sum(est(c) for c in todo)
    what = f"depths {widths} at width {args.width}" if depth else f"widths {widths}, {args.n_layer} layers"
    print(f"lr transfer: {what}, log2(lr) {[f'{x:g}' for x in lrs]}, {steps} steps, {n_seeds} seed(s), "
          f"params {args.params}, {args.optimizer}, batch {batch_size}x{seq_len}, {threads} threads")
    print(f"{len(cfgs)} runs, {len(cfgs) - len(todo)} already done in {out / 'results.json'}; "
          f"estimated {est_total / 60:.1f} min for the rest (2-core CPU reference timings)")

    if args.dry_run:
        per_w = {w: sum(est(c) for c in todo if c[size_key(c)] == w) for w in widths}
        print("estimated minutes per width: " + ", ".join(f"{w}: {v / 60:.1f}" for w, v in per_w.items()))
        return 0

    from tqdm import tqdm

    if args.jobs > 1:  # worker processes, one thread each; this process only records results
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(
            args.jobs, initializer=_pool_init, initargs=(args.threads or 1, batch_size, seq_len, eval_batches_n))
        results = pool.imap_unordered(_pool_run, todo)
    else:
        pool = None
        results = ((cfg, safe_run(cfg, corpus, eval_batches, muplify_fn, import_error)) for cfg in todo)

    t0, spent_est = time.perf_counter(), 0.0
    errors: dict = {}
    bar = tqdm(total=len(todo), desc="runs", unit="run", dynamic_ncols=True)
    try:
        for cfg, rec in results:
            tag = f"{cfg['param']:>3} {size_key(cfg)}={cfg[size_key(cfg)]:<4} lr=2^{cfg['log2_lr']:g} seed={cfg['seed']}"
            store.put(cfg, rec)
            spent_est += est(cfg)
            bar.update(1)
            if rec["status"] == "error":
                if not errors:
                    tqdm.write(f"ERROR {tag}:\n{rec.get('traceback', rec['error'])}")
                errors.setdefault(f"{cfg['param']} {size_key(cfg)}={cfg[size_key(cfg)]}", rec["error"])
                continue
            elapsed = time.perf_counter() - t0
            eta = (est_total - spent_est) * elapsed / max(spent_est, 1e-9)
            val = "diverged" if rec["diverged"] else f"{rec['val_loss']:.4f}"
            tqdm.write(f"{tag}: val {val}  {rec['seconds']:.1f}s ({rec['ms_per_step']:.0f} ms/step)  "
                       f"ETA {eta / 60:.1f} min")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    losses = collect(store, cfgs)
    summary = analyze(losses, widths, lrs, base_width if not depth else base_depth, args.axis)
    summary["errors"] = errors
    summary["wall_seconds_this_invocation"] = time.perf_counter() - t0
    store.data["summary"] = summary
    store.save()

    print(format_table(losses, widths, lrs, summary, args.axis))
    if summary.get("base_width_max_abs_diff") is not None:
        print(f"\nidentity at the base {args.axis}: max |loss difference| between the arms at {args.axis} "
              f"{base_depth if depth else base_width}: "
              f"{summary['base_width_max_abs_diff']:.2e} (expected ~0)")
    print("\nTargets" + (" (quick mode: too small to be meaningful)" if args.quick else "") + ":")
    for name, t in summary["targets"].items():
        print(f"  [{t['status']}] {name}: {t['detail']}")
    if errors:
        print("\nErrors:")
        for k, v in errors.items():
            print(f"  {k}: {v}")
    if not args.no_plot:
        png = out / ("depth_transfer.png" if depth else "lr_transfer.png")
        head = (f"byte-level GPT, width {args.width}, CompleteP base depth {base_depth}" if depth else
                f"byte-level GPT, {args.n_layer} layers, μP base width {base_width}")
        plot(losses, widths, lrs, summary, png, f"{head}, {args.optimizer}, {steps} steps, batch {batch_size}x{seq_len}, "
             f"{n_seeds} seed(s)", args.axis)
        print(f"\nplot: {png}")
    print(f"results: {out / 'results.json'}  ({summary['wall_seconds_this_invocation']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
