#!/usr/bin/env python
"""μTransfer end to end (issue 10 §2): tune on a width-64 proxy, transfer to widths 128-512, compare with SP tuned at
every target, and count what each arm's tuning cost.

The task is the LR benchmark's (``benchmarks/lr_transfer.py``): the byte-level pre-LN
``muplify.models.GPT(vocab_size=256, d_model=W, n_layer=2, head_dim=32, tie_weights=False, init="gpt2")`` on the
built-in corpus (the interpreter's standard library, split by file), trained with the library's loop
``muplify.tools.train.train`` (AdamW, betas 0.9/0.95, no weight decay, linear warmup over 10 % of the steps, cosine to
10 %), validation loss in nats/byte on the LR benchmark's fixed held-out batches.  Three arms:

* **μTransfer**: ``muplify.tune`` at the proxy width (= base width) over ``lr`` and three ``hp`` axes (below); every
  target is then trained once per seed with ``muplify.tools.tune.transfer(make_model, result.best, AdamW, width=W)``.
* **μP, lr only**: a grid sweep of ``lr`` alone at the proxy (half-octave steps, hp at their defaults), transferred the
  same way (this is what ``lr_transfer.py`` shows).
* **SP tuned at the target**: the plain model and plain AdamW, a log2-lr sweep at each target width (5 points,
  spacing 1, centred on the SP optima of the LR benchmark's table: 2^-9 at 128, 2^-11 at 256, 2^-10 at 512; one
  more point outward, up to 3 times, while the optimum sits on an edge of the grid); the sweep runs at seed 0 and its
  best lr is then trained at the other seeds (the seed-0 run is reused: its lr was chosen on it, a selection bias
  that can only favour SP).

Search space of the μTransfer arm (4 axes for 48 TPE trials, about 10 random start-up trials + ~10 per axis):

* ``lr`` ∈ [2^-12, 2^-4]: the hidden weights' lr (the LR benchmark's μP optimum at width 64 is 2^-8);
* ``hp.lr_mult.input+vector+gain`` ∈ [1/4, 32]: the lr of embeddings, biases and norm gains relative to the hidden
  weights: the axis the issue's own measurement found to matter most after lr (best ×4), where Kalra & Barkeshli
  (2026) put most of μP's gain over SP, and the one Lingle (2024) found transfer needs when norm gains are trainable
  (all three roles follow TP-V's input rule, so they share one factor);
* ``hp.lr_mult.output`` ∈ [1/8, 8]: the readout's lr apart from the embeddings' (its μP rule differs: the 1/m
  multiplier), so a readout that wants a smaller lr than the embeddings is not forced to share theirs;
* ``hp.output_mult`` ∈ [1/8, 8]: TP-V's α_out, the first multiplier TP-V tunes.

Not searched: ``attn_mult`` (head_dim is fixed at 32 and heads grow, so the standard 1/√32 scale is already μP and
the base scale the usual one), ``embed_mult`` (with Adam it overlaps the input lr factor), ``init_mult`` (three more
axes a 48-trial budget cannot afford).  Pruning: Optuna's median pruner from the second half of a trial on (early
in a cosine schedule a low-lr trial still looks worse than it ends).

Length: 400 steps at batch 16 × 128 (0.8M bytes per run).  At 200 steps the loss is still leaving the ~3.4 nats
plateau and wider is not yet better (the LR benchmark; the issue's measurement); at 600 steps it is, but 3 arms × 3
seeds × widths 128-512 plus SP's 5-point sweeps at 600 steps is about 110 minutes on 2 cores; 400 steps is the
longest that fits the 60-90 minute budget with 48 proxy trials (``--dry-run`` prints the estimate).

Tuning compute is counted as TP-V counts its "7 %": the optimizer steps of every proxy trial (a pruned trial counts
the steps it ran, a failed one the full length) × the proxy's cost per step, as a fraction of one target training run
(its steps × the target's cost per step).  The cost per step is given both as FLOPs (6 · tokens · matmul
parameters + attention, the usual estimate) and as measured wall time (median ms/step of the final runs at each
width).  SP's tuning compute is its sweep at that target.

    python benchmarks/mutransfer.py --quick                        # CI smoke run (~1 minute)
    python benchmarks/mutransfer.py --dry-run                      # the plan and the time estimate
    python benchmarks/mutransfer.py --jobs 2 --threads 1 --workers 2 --out benchmarks/results/mutransfer

Outputs in ``--out``: ``results.json`` (every finished run, keyed by its configuration: a re-run skips it; the
summary, compute and targets), ``tune.db`` (the two Optuna studies: a re-run resumes them), ``tune_mutransfer.json``
and ``tune_lr_only.json`` (every proxy trial), ``mutransfer.png`` (loss vs width for the three arms with seed
spread, SP's sweeps, the tuning compute), ``tune_params.png`` / ``tune_importance.png`` (the μTransfer sweep) and
``tune_lr_only.png``.
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import lr_transfer  # noqa: E402
from common import ResultStore, env_info, finite_or_none, set_threads  # noqa: E402

from muplify.models import GPT  # noqa: E402
from muplify.tools.corpus import stdlib_corpus  # noqa: E402
from muplify.tools.train import TrainOptions, train  # noqa: E402

ARMS = ("mutransfer", "lr_only", "sp")
LABELS = {"mutransfer": "μTransfer (lr + hp tuned at the proxy)", "lr_only": "μP, lr only (tuned at the proxy)",
          "sp": "SP tuned at the target"}
SHORT = {"mutransfer": "μTransfer", "lr_only": "μP lr only", "sp": "SP tuned@target"}
COLORS = {"mutransfer": "tab:red", "lr_only": "tab:blue", "sp": "tab:gray"}
DATA_SEED = 1000  # training stream of seed s: corpus.batches(..., seed=DATA_SEED + s), as in lr_transfer.py
STUDIES = {"mutransfer": "mutransfer", "lr_only": "lr-only"}

PRESETS = {
    # 75 minutes estimated (lr_transfer's 2-thread step times), 82 measured on 2 cores with --jobs 2 --threads 1
    # --workers 2: sweeps 8.8 + 2.6 min, 51 final runs 70.5 min (1-thread w512 steps 1155 ms)
    "full": dict(proxy=64, targets=[128, 256, 512], steps=400, seeds=3, batch_size=16, seq_len=128,
                 eval_batches=8, eval_every=50, trials=48,
                 lr_range=(-12.0, -4.0), lr_only_range=(-11.0, -5.0), lr_only_step=0.5,
                 sp_centers={128: -9.0, 256: -11.0, 512: -10.0}, sp_points=5, sp_extend=3,
                 jobs=2, threads=1, workers=2, out="out/mutransfer"),
    # CI smoke run: every phase once, tiny; not meant to show anything
    "quick": dict(proxy=32, targets=[64, 128], steps=24, seeds=2, batch_size=4, seq_len=32,
                  eval_batches=2, eval_every=8, trials=5,
                  lr_range=(-10.0, -5.0), lr_only_range=(-8.0, -6.0), lr_only_step=1.0,
                  sp_centers={64: -7.0, 128: -7.0}, sp_points=3, sp_extend=1,
                  jobs=1, threads=1, workers=1, out="out/mutransfer_quick"),
}


# ----------------------------------------------------------------------------------------------------------------------
# the model, the proxy objective, the search spaces
# ----------------------------------------------------------------------------------------------------------------------
def make_gpt(width: int, *, n_layer: int, seq_len: int) -> GPT:
    """The LR benchmark's model at any width (module level: the sweep's worker processes import it by name)."""
    return GPT(vocab_size=256, d_model=width, n_layer=n_layer, head_dim=32, block_size=seq_len, attn="sdpa",
               tie_weights=False, init="gpt2")


def example_inputs(seq_len: int) -> tuple:
    return (torch.arange(2 * seq_len).remainder(256).view(2, seq_len),)


@functools.lru_cache(maxsize=4)
def _val_batches(n: int, batch_size: int, seq_len: int) -> list:
    return lr_transfer.validation_batches(stdlib_corpus(), n, batch_size, seq_len)


def objective(model, optimizer, report, *, steps: int, warmup: int, schedule: str, batch_size: int, seq_len: int,
              eval_batches: int, eval_every: int) -> float:
    """One proxy trial: the same loop, data stream (seed 0's) and validation batches as the target runs."""
    cfg = dict(steps=steps, warmup=warmup, schedule=schedule, grad_clip=0)
    options = lr_transfer.train_options(cfg)
    options.eval_every = eval_every
    batches = stdlib_corpus().batches("train", batch_size, seq_len, seed=DATA_SEED)
    return train(model, optimizer, batches, options, val_batches=_val_batches(eval_batches, batch_size, seq_len),
                 report=report).val_loss


def fixed_part(common: dict, eval_every: int) -> dict:
    """Search-space entries every trial shares (recorded in result.best, so the transfer uses them too)."""
    from muplify.tools.tune import Fixed

    obj = {k: common[k] for k in ("steps", "warmup", "schedule", "batch_size", "seq_len", "eval_batches")}
    return {"optimizer.betas": Fixed([0.9, 0.95]), "optimizer.weight_decay": Fixed(common["weight_decay"]),
            **{f"objective.{k}": Fixed(v) for k, v in obj.items()}, "objective.eval_every": Fixed(eval_every)}


def mutransfer_space(p: dict, common: dict) -> dict:
    from muplify.tools.tune import LogUniform

    lo, hi = p["lr_range"]
    return {"lr": LogUniform(2.0 ** lo, 2.0 ** hi), "hp.output_mult": LogUniform(1 / 8, 8),
            "hp.lr_mult.input+vector+gain": LogUniform(1 / 4, 32), "hp.lr_mult.output": LogUniform(1 / 8, 8),
            **fixed_part(common, p["eval_every"])}


def lr_only_space(p: dict, common: dict) -> dict:
    from muplify.tools.tune import LogUniform

    lo, hi = p["lr_only_range"]
    return {"lr": LogUniform(2.0 ** lo, 2.0 ** hi, grid_step=2.0 ** p["lr_only_step"]),
            **fixed_part(common, p["eval_every"])}


def run_sweep(arm: str, p: dict, common: dict, out: Path, workers: int, progress: bool = True):
    """The proxy sweep of one arm (resumes the study in OUT/tune.db)."""
    import optuna

    import muplify

    make_model = functools.partial(make_gpt, n_layer=common["n_layer"], seq_len=common["seq_len"])
    mkw = {"example_inputs": example_inputs(common["seq_len"])}
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    try:  # a finished study: no worker processes to start (tune() still checks the study matches this sweep)
        from muplify.tools.tune import load_result

        c = load_result(storage, STUDIES[arm]).counts()
        if c["complete"] + c["pruned"] + c["failed"] >= (p["trials"] if arm == "mutransfer" else
                                                         len(lr_only_space(p, common)["lr"].grid())):
            workers = 1
    except Exception:  # no study yet
        pass
    if arm == "mutransfer":
        # median pruner, but only from the second half of a trial on
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=common["steps"] // 2)
        return muplify.tune(make_model, p["proxy"], objective, torch.optim.AdamW, trials=p["trials"],
                            space=mutransfer_space(p, common), defaults=False, sampler="tpe", pruner=pruner,
                            storage=storage, study_name=STUDIES[arm], workers=workers, seed=0, muplify_kwargs=mkw,
                            progress=progress)
    space = lr_only_space(p, common)
    n_grid = len(space["lr"].grid())
    # one worker process with all the threads: muplify.tune gives every worker (and every resume) its own sampler
    # seed, and Optuna's GridSampler shuffles its grid with that seed, so two workers visit some lrs twice and skip
    # others (seen here: 13 trials covered 10 of the 13 grid points)
    return muplify.tune(make_model, p["proxy"], objective, torch.optim.AdamW, trials=n_grid, space=space,
                        defaults=False, sampler="grid", pruner=None, storage=storage, study_name=STUDIES[arm],
                        workers=1, threads=max(1, workers * p["threads"]), seed=0, muplify_kwargs=mkw,
                        progress=progress)


# ----------------------------------------------------------------------------------------------------------------------
# target runs
# ----------------------------------------------------------------------------------------------------------------------
def run_target(cfg: dict, corpus, eval_batches) -> dict:
    """One final run.  SP: ``lr_transfer.run_one`` (plain model, plain AdamW).  μP arms: ``transfer()`` of the
    proxy's configuration to ``cfg["width"]``, then the shared training loop on seed ``cfg["seed"]``'s stream."""
    if cfg["arm"] == "sp":
        return lr_transfer.run_one(dict(cfg, param="sp"), corpus, eval_batches, None)
    from muplify.tools.tune import transfer

    t0 = time.perf_counter()
    config = {"lr": cfg["lr"], "hp": cfg["hp"], "optimizer": cfg["optimizer_kwargs"], "width": cfg["base_width"]}
    make_model = functools.partial(make_gpt, n_layer=cfg["n_layer"], seq_len=cfg["seq_len"])
    mu, opt = transfer(make_model, config, torch.optim.AdamW, width=cfg["width"], seed=cfg["seed"],
                       example_inputs=example_inputs(cfg["seq_len"]))
    batches = corpus.batches("train", cfg["batch_size"], cfg["seq_len"], seed=DATA_SEED + cfg["seed"])
    res = train(mu, opt, batches, lr_transfer.train_options(cfg), val_batches=eval_batches)
    return {
        "status": "diverged" if res.diverged else "ok",
        "val_loss": finite_or_none(res.val_loss),
        "train_loss_last": finite_or_none(res.train_loss),
        "diverged": res.diverged,
        "steps_done": res.steps_done,
        "train_curve": [[s, finite_or_none(v)] for s, v in res.curve],
        "seconds": time.perf_counter() - t0,
        "ms_per_step": res.ms_per_step,
        "n_params": sum(q.numel() for q in mu.parameters()),
        "lr_multipliers": sorted({round(g.get("lr_mult", 1.0), 8) for g in opt.param_groups}),
    }


def safe_run(cfg: dict, corpus, eval_batches) -> dict:
    try:
        return run_target(cfg, corpus, eval_batches)
    except Exception as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


_POOL: dict = {}


def _pool_init(threads: int, n_eval: int, batch_size: int, seq_len: int) -> None:
    import warnings

    warnings.filterwarnings("ignore", message="muplify: ")
    set_threads(threads)
    _POOL.update(corpus=stdlib_corpus(), eval_batches=_val_batches(n_eval, batch_size, seq_len))


def _pool_run(cfg: dict):
    return cfg, safe_run(cfg, _POOL["corpus"], _POOL["eval_batches"])


def _done(rec) -> bool:
    return rec is not None and rec.get("status") in ("ok", "diverged")


def _loss(rec) -> float:
    return math.inf if rec["diverged"] or rec["val_loss"] is None else rec["val_loss"]


class Plan:
    """Which final runs are wanted, given what is finished (SP's grid grows while its optimum sits on an edge)."""

    def __init__(self, p: dict, common: dict, store: ResultStore, best: dict):
        self.p, self.common, self.store, self.best = p, common, store, best
        self.seeds = list(range(p["seeds"]))
        self.widths = [p["proxy"], *p["targets"]]

    def mup_cfg(self, arm: str, width: int, seed: int) -> dict:
        b = self.best[arm]
        return dict(self.common, arm=arm, width=width, seed=seed, base_width=self.p["proxy"], lr=b["lr"], hp=b["hp"],
                    optimizer_kwargs=b["optimizer"], log2_lr=math.log2(b["lr"]))

    def sp_cfg(self, width: int, seed: int, log2_lr: float) -> dict:
        return dict(self.common, arm="sp", width=width, seed=seed, log2_lr=float(log2_lr))

    def sp_sweep(self, width: int) -> tuple[list[float], float | None]:
        """SP's grid at ``width`` so far and its best log2 lr (None until the grid is finished and bracketed, or
        the extensions are used up)."""
        c, n = self.p["sp_centers"][width], self.p["sp_points"]
        grid = [c + k - (n - 1) // 2 for k in range(n)]
        while True:
            recs = [self.store.get(self.sp_cfg(width, 0, x)) for x in grid]
            if not all(_done(r) for r in recs):
                return grid, None
            losses = [_loss(r) for r in recs]
            if all(v == math.inf for v in losses):
                return grid, None
            i = losses.index(min(losses))
            lo_ext = self.p["sp_centers"][width] - (n - 1) // 2 - grid[0]
            hi_ext = grid[-1] - (self.p["sp_centers"][width] + n - 1 - (n - 1) // 2)
            if i == 0 and lo_ext < self.p["sp_extend"]:
                grid = [grid[0] - 1, *grid]
            elif i == len(grid) - 1 and hi_ext < self.p["sp_extend"]:
                grid = [*grid, grid[-1] + 1]
            else:
                return grid, grid[i]

    def wanted(self) -> list[dict]:
        runs = []
        for arm in ("mutransfer", "lr_only"):
            if self.best.get(arm):
                runs += [self.mup_cfg(arm, w, s) for w in self.widths for s in self.seeds]
        for w in self.p["targets"]:
            grid, best = self.sp_sweep(w)
            runs += [self.sp_cfg(w, 0, x) for x in grid]
            if best is not None:
                runs += [self.sp_cfg(w, s, best) for s in self.seeds if s != 0]
        return runs


def est_seconds(cfg: dict) -> float:
    return cfg["steps"] * lr_transfer.est_step_seconds(cfg["width"], cfg["batch_size"], cfg["seq_len"], cfg["n_layer"])


def run_targets(plan: Plan, jobs: int, threads: int, corpus, eval_batches, log=print) -> dict:
    """Run every wanted final run not yet in the store; at most ``jobs`` at a time, the longest first (SP's sweep
    points before other runs of the same width, so its extensions and final seeds are known early)."""
    from tqdm import tqdm

    store, key = plan.store, ResultStore.key
    errors: dict = {}
    pool = None
    if jobs > 1:
        import multiprocessing as mp

        c = plan.common
        pool = mp.get_context("spawn").Pool(jobs, initializer=_pool_init,
                                            initargs=(threads, c["eval_batches"], c["batch_size"], c["seq_len"]))
    in_flight: dict = {}
    t0 = time.perf_counter()
    bar = tqdm(desc="final runs", unit="run", dynamic_ncols=True, total=0)
    spent = 0.0
    try:
        while True:
            wanted = plan.wanted()
            todo = [c for c in wanted if not _done(store.get(c)) and key(c) not in in_flight and key(c) not in errors]
            bar.total = bar.n + len(in_flight) + len(todo)
            bar.refresh()
            todo.sort(key=lambda c: (-est_seconds(c), c["arm"] != "sp" or c["seed"] != 0, c["arm"], c["seed"]))
            if pool is None:
                if not todo:
                    break
                finished = [(todo[0], safe_run(todo[0], corpus, eval_batches))]
            else:
                while todo and len(in_flight) < jobs:
                    c = todo.pop(0)
                    in_flight[key(c)] = pool.apply_async(_pool_run, (c,))
                if not in_flight:
                    break
                while not any(r.ready() for r in in_flight.values()):
                    time.sleep(0.2)
                finished = [in_flight.pop(k).get() for k in [k for k, r in in_flight.items() if r.ready()]]
            for cfg, rec in finished:
                store.put(cfg, rec)
                bar.update(1)
                spent += est_seconds(cfg)
                tag = f"{SHORT[cfg['arm']]:>15} w={cfg['width']:<4} lr=2^{cfg['log2_lr']:.2f} seed={cfg['seed']}"
                if rec["status"] == "error":
                    errors[key(cfg)] = rec["error"]
                    tqdm.write(f"ERROR {tag}: {rec.get('traceback', rec['error'])}")
                    continue
                val = "diverged" if rec["diverged"] else f"{rec['val_loss']:.4f}"
                left = sum(est_seconds(c) for c in plan.wanted() if not _done(store.get(c)))
                eta = left * (time.perf_counter() - t0) / max(spent, 1e-9)
                tqdm.write(f"{tag}: val {val}  {rec['seconds']:.0f}s ({rec['ms_per_step']:.0f} ms/step)  "
                           f"ETA {eta / 60:.1f} min (+ SP extensions)")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return errors


# ----------------------------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------------------------
def step_flops(width: int, n_layer: int, batch_size: int, seq_len: int, vocab: int = 256, mlp_ratio: int = 4) -> float:
    """Training FLOPs of one step: 6 × tokens × (matmul parameters + attention's 2·T·d per layer); the embedding
    lookups are free, norms and biases negligible."""
    d = width
    matmul = n_layer * (4 + 2 * mlp_ratio) * d * d + d * vocab
    return 6.0 * batch_size * seq_len * (matmul + 2 * seq_len * d * n_layer)


def mean_sd(xs: list[float]) -> dict:
    fin = [x for x in xs if math.isfinite(x)]
    out = {"values": [finite_or_none(x) for x in xs], "n": len(xs), "diverged": len(xs) - len(fin)}
    if len(fin) == len(xs) and xs:
        out.update(mean=statistics.fmean(xs), sd=statistics.stdev(xs) if len(xs) > 1 else 0.0,
                   min=min(xs), max=max(xs))
    return out


def sweep_stats(result) -> dict:
    """Counts, steps run (a failed trial counts the full length), wall time and trials per hour of a proxy sweep."""
    full = result.best["objective"]["steps"] if result.best else None
    steps = 0
    for t in result.trials:
        if t.state == "complete":
            steps += t.steps or full
        elif t.state == "pruned":
            steps += t.steps or full
        elif t.state == "failed":
            steps += full
    times = [(t.datetime_start, t.datetime_complete) for t in result.study.get_trials(deepcopy=False)
             if t.datetime_start is not None and t.datetime_complete is not None]
    wall = (max(b for _, b in times) - min(a for a, _ in times)).total_seconds() if times else None
    counts = result.counts()
    finished = counts["complete"] + counts["pruned"] + counts["failed"]
    return {"counts": counts, "steps": steps, "wall_seconds": wall,
            "trials_per_hour": finished / (wall / 3600) if wall else None,
            "trial_seconds": [t.seconds for t in result.trials if t.seconds is not None]}


def analyze(plan: Plan, sweeps: dict) -> dict:
    p, c, store = plan.p, plan.common, plan.store
    widths = plan.widths
    summary: dict = {"loss": {}, "sp_sweep": {}, "tuned": {}, "compute": {}, "targets": {}}
    for arm in ARMS:
        for w in widths:
            if arm == "sp":
                if w not in p["targets"]:
                    continue
                grid, best = plan.sp_sweep(w)
                sweep = {x: store.get(plan.sp_cfg(w, 0, x)) for x in grid}
                summary["sp_sweep"][w] = {"log2_lrs": grid, "best_log2_lr": best,
                                          "loss": [None if not _done(r) else finite_or_none(_loss(r))
                                                   for r in sweep.values()],
                                          "extended": len(grid) - p["sp_points"],
                                          "edge": best is not None and best in (grid[0], grid[-1])}
                if best is None:
                    continue
                cfgs = [plan.sp_cfg(w, s, best) for s in plan.seeds]
            else:
                if not plan.best.get(arm):
                    continue
                cfgs = [plan.mup_cfg(arm, w, s) for s in plan.seeds]
            recs = [store.get(x) for x in cfgs]
            if all(_done(r) for r in recs):
                summary["loss"].setdefault(arm, {})[w] = mean_sd([_loss(r) for r in recs])
    for arm in ("mutransfer", "lr_only"):
        b = plan.best.get(arm)
        if b:
            summary["tuned"][arm] = {"lr": b["lr"], "log2_lr": math.log2(b["lr"]), "hp": b["hp"],
                                     "proxy_value": b["value"], "trial": b["trial"], **sweeps.get(arm, {})}

    # compute: FLOPs and measured wall time per step, per width
    flops = {w: step_flops(w, c["n_layer"], c["batch_size"], c["seq_len"]) for w in widths}
    ms = {}
    for w in widths:
        xs = [r["ms_per_step"] for r in store.data["runs"].values()
              if r["config"].get("width") == w and _done(r) and r["config"].get("steps") == c["steps"]
              and r["config"].get("batch_size") == c["batch_size"]]
        ms[w] = statistics.median(xs) if xs else None
    comp: dict = {"flops_per_step": flops, "ms_per_step": ms, "target_run_steps": c["steps"], "per_target": {}}
    proxy = p["proxy"]
    for w in p["targets"]:
        row: dict = {}
        run_flops, run_ms = c["steps"] * flops[w], (c["steps"] * ms[w] if ms[w] else None)
        for arm in ("mutransfer", "lr_only"):
            if arm in sweeps:
                st = sweeps[arm]["steps"]
                row[arm] = {"steps": st, "flops_frac": st * flops[proxy] / run_flops,
                            "wall_frac": st * ms[proxy] / run_ms if ms[proxy] and run_ms else None}
        sw = summary["sp_sweep"].get(w)
        if sw:
            st = sum(store.get(plan.sp_cfg(w, 0, x))["steps_done"] for x in sw["log2_lrs"]
                     if _done(store.get(plan.sp_cfg(w, 0, x))))
            row["sp"] = {"steps": st, "flops_frac": st * flops[w] / run_flops,
                         "wall_frac": st * ms[w] / run_ms if run_ms else None, "runs": len(sw["log2_lrs"])}
        if "mutransfer" in row and "sp" in row:
            row["mutransfer_over_sp"] = {k: (row["mutransfer"][k] / row["sp"][k]
                                             if row["mutransfer"][k] is not None and row["sp"][k] else None)
                                         for k in ("flops_frac", "wall_frac")}
        comp["per_target"][w] = row
    # one proxy sweep serves every target; SP pays its sweep at each of them
    if "mutransfer" in sweeps and all("sp" in comp["per_target"][w] for w in p["targets"]):
        sp_all = sum(comp["per_target"][w]["sp"]["steps"] * flops[w] for w in p["targets"])
        comp["all_targets_flops_ratio"] = sweeps["mutransfer"]["steps"] * flops[proxy] / sp_all
        if ms[proxy] and all(ms[w] for w in p["targets"]):
            comp["all_targets_wall_ratio"] = (sweeps["mutransfer"]["steps"] * ms[proxy]
                                              / sum(comp["per_target"][w]["sp"]["steps"] * ms[w] for w in p["targets"]))
    summary["compute"] = comp

    # targets
    def target(name, ok, detail):
        summary["targets"][name] = {"status": "N/A" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail}

    L = summary["loss"]
    top = max(p["targets"])
    mt, sp = L.get("mutransfer", {}).get(top), L.get("sp", {}).get(top)
    if mt and sp and "mean" in mt and "mean" in sp:
        d = mt["mean"] - sp["mean"]
        target("mutransfer_le_sp_at_target", d <= 0,
               f"width {top}: μTransfer {mt['mean']:.4f} ± {mt['sd']:.4f} vs SP tuned at {top} {sp['mean']:.4f} ± "
               f"{sp['sd']:.4f} (mean ± sd over {mt['n']} seeds): difference {d:+.4f} (target: <= 0)")
    else:
        target("mutransfer_le_sp_at_target", None, f"width {top}: incomplete")
    others = []
    for w in p["targets"]:
        a, b = L.get("mutransfer", {}).get(w), L.get("sp", {}).get(w)
        if a and b and "mean" in a and "mean" in b:
            others.append(f"{w}: {a['mean'] - b['mean']:+.4f}")
    summary["mutransfer_minus_sp"] = others
    ms_ = [L.get("mutransfer", {}).get(w, {}).get("mean") for w in widths]
    if all(v is not None for v in ms_):
        target("mutransfer_monotone_in_width", all(b < a for a, b in zip(ms_[:-1], ms_[1:])),
               "μTransfer mean loss " + " > ".join(f"{v:.4f}@{w}" for v, w in zip(ms_, widths))
               + " (target: strictly decreasing)")
    else:
        target("mutransfer_monotone_in_width", None, "incomplete")
    row = comp["per_target"].get(top, {})
    if "mutransfer_over_sp" in row:
        r = row["mutransfer_over_sp"]
        wall = f"; wall time {r['wall_frac']:.1%}" if r["wall_frac"] is not None else ""
        target("mutransfer_compute_small", r["flops_frac"] <= 0.25,
               f"μTransfer's proxy sweep = {row['mutransfer']['flops_frac']:.2f} target runs at {top} (FLOPs), SP's "
               f"sweep = {row['sp']['flops_frac']:.2f}: ratio {r['flops_frac']:.1%} in FLOPs{wall} "
               "(target: <= 25 % in FLOPs)")
    else:
        target("mutransfer_compute_small", None, "incomplete")
    return summary


def fmt_cell(s: dict | None) -> str:
    if not s:
        return "—"
    if "mean" not in s:
        return f"div ({s['diverged']}/{s['n']})"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def format_tables(summary: dict, widths: list[int], p: dict) -> str:
    out = ["", f"Validation loss (nats/byte), mean ± sd over seeds; proxy width {p['proxy']} = base width",
           "| arm | " + " | ".join(f"w{w}" for w in widths) + " |", "|---|" + "---|" * len(widths)]
    for arm in ARMS:
        cells = []
        for w in widths:
            if arm == "sp" and w == p["proxy"]:
                cells.append("(= μP at base)")
            else:
                cells.append(fmt_cell(summary["loss"].get(arm, {}).get(w)))
        out.append(f"| {SHORT[arm]} | " + " | ".join(cells) + " |")
    out.append("")
    for arm, t in summary["tuned"].items():
        extra = f", hp {t['hp']}" if t["hp"] else ""
        out.append(f"{SHORT[arm]}: proxy best lr 2^{t['log2_lr']:.2f}{extra} (proxy loss {t['proxy_value']:.4f}, "
                   f"trial {t['trial']}); sweep {t['counts']['complete']} complete / {t['counts']['pruned']} pruned / "
                   f"{t['counts']['failed']} failed, {t['steps']} steps"
                   + (f", {t['wall_seconds']:.0f} s, {t['trials_per_hour']:.0f} trials/hour"
                      if t.get("wall_seconds") else ""))
    for w, sw in summary["sp_sweep"].items():
        pts = ", ".join(f"2^{x:g}: {'—' if v is None else f'{v:.3f}'}" for x, v in zip(sw["log2_lrs"], sw["loss"]))
        note = (f"; extended {sw['extended']}x" if sw["extended"] else "") + ("; OPTIMUM ON THE EDGE" if sw["edge"]
                                                                              else "")
        out.append(f"SP sweep w{w} (seed 0): {pts}; best 2^{sw['best_log2_lr']}{note}")
    comp = summary["compute"]
    if comp.get("per_target"):
        out += ["", "Tuning compute in units of one target training run (FLOPs; measured wall time in brackets)",
                "| arm | " + " | ".join(f"w{w}" for w in comp["per_target"]) + " |",
                "|---|" + "---|" * len(comp["per_target"])]
        for arm in ARMS:
            cells = []
            for w, row in comp["per_target"].items():
                r = row.get(arm)
                cells.append("—" if not r else f"{r['flops_frac']:.3f}"
                             + (f" [{r['wall_frac']:.3f}]" if r.get("wall_frac") is not None else ""))
            out.append(f"| {SHORT[arm]} | " + " | ".join(cells) + " |")
        if "all_targets_flops_ratio" in comp:
            out.append(f"one μTransfer sweep vs SP's sweeps at all {len(comp['per_target'])} targets: "
                       f"{comp['all_targets_flops_ratio']:.1%} (FLOPs)"
                       + (f", {comp['all_targets_wall_ratio']:.1%} (wall)" if "all_targets_wall_ratio" in comp else ""))
    return "\n".join(out)


def plot(summary: dict, plan: Plan, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    widths, p = plan.widths, plan.p
    fig = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 3, 1)
    for k, arm in enumerate(ARMS):
        data = summary["loss"].get(arm, {})
        ws = [w for w in widths if "mean" in data.get(w, {})]
        if not ws:
            continue
        xs = [math.log2(w) + (k - 1) * 0.04 for w in ws]
        ax.errorbar(xs, [data[w]["mean"] for w in ws], yerr=[data[w]["sd"] for w in ws], fmt="-o", capsize=4,
                    color=COLORS[arm], label=LABELS[arm], ms=5)
        for x, w in zip(xs, ws):
            ax.plot([x] * len(data[w]["values"]), data[w]["values"], ".", color=COLORS[arm], alpha=0.35, ms=4)
    ax.set_xticks([math.log2(w) for w in widths], [str(w) for w in widths])
    ax.set_xlabel("width (d_model)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(f"final runs: mean ± sd over {p['seeds']} seeds (dots: seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(1, 3, 2)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for k, (w, sw) in enumerate(summary["sp_sweep"].items()):
        color = cmap(k / max(1, len(summary["sp_sweep"]) - 1))
        pts = [(x, v) for x, v in zip(sw["log2_lrs"], sw["loss"]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), "-o", color=color, ms=4, label=f"SP w{w}")
        if sw["best_log2_lr"] is not None:
            v = sw["loss"][sw["log2_lrs"].index(sw["best_log2_lr"])]
            ax.plot([sw["best_log2_lr"]], [v], "*", color=color, ms=14, mec="k")
        mt = summary["loss"].get("mutransfer", {}).get(w)
        if mt and "mean" in mt:
            ax.axhline(mt["mean"], color=color, ls="--", lw=1)
    ax.set_xlabel("log2(lr)")
    ax.set_title("SP lr sweeps at the targets (seed 0; ★ best);\ndashed: μTransfer mean at that width", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(1, 3, 3)
    per = summary["compute"].get("per_target", {})
    tw = list(per)
    for k, arm in enumerate(ARMS):
        vals = [per[w].get(arm, {}).get("flops_frac") for w in tw]
        xs = [i + (k - 1) * 0.27 for i in range(len(tw))]
        ax.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width=0.25, color=COLORS[arm],
               label=SHORT[arm])
        for x, v in zip(xs, vals):
            if v:
                ax.text(x, v, f"{v:.2g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tw)), [f"target w{w}" for w in tw])
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel("tuning compute / one target run (FLOPs)")
    ax.set_title("tuning compute (proxy sweeps serve every target)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CI smoke run (~1 minute on 2 cores)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    ap.add_argument("--out", type=str)
    ap.add_argument("--trials", type=int, help="μTransfer proxy trials (a larger number resumes the study)")
    ap.add_argument("--steps", type=int, help="steps of every run, proxy and target")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--targets", type=int, nargs="+", help="target widths (each needs an SP centre: --sp-center)")
    ap.add_argument("--sp-center", nargs="+", metavar="W:LOG2LR", help="SP grid centre per width, e.g. 1024:-12")
    ap.add_argument("--jobs", type=int, help="worker processes for the final runs")
    ap.add_argument("--threads", type=int, help="torch threads per final-run job")
    ap.add_argument("--workers", type=int, help="muplify.tune worker processes for the proxy sweeps")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    p = dict(PRESETS["quick" if args.quick else "full"])
    p["sp_centers"] = dict(p["sp_centers"])
    for tok in args.sp_center or []:
        w, _, x = tok.partition(":")
        p["sp_centers"][int(w)] = float(x)
    for k in ("trials", "steps", "seeds", "targets", "jobs", "threads", "workers", "out"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    p["targets"] = sorted(p["targets"])
    missing = [w for w in p["targets"] if w not in p["sp_centers"]]
    if missing:
        ap.error(f"no SP grid centre for widths {missing}: pass --sp-center W:LOG2LR")
    p["sp_centers"] = {w: p["sp_centers"][w] for w in p["targets"]}
    out = Path(p["out"])
    threads = set_threads(p["threads"])
    steps = p["steps"]
    common = dict(steps=steps, batch_size=p["batch_size"], seq_len=p["seq_len"], n_layer=2,
                  warmup=max(1, round(0.1 * steps)), schedule="cosine", weight_decay=0.0, grad_clip=0.0,
                  tie_weights=False, eval_batches=p["eval_batches"], data="stdlib-bytes-v1",
                  optimizer="AdamW(betas=0.9,0.95)")

    store = ResultStore(out / "results.json")
    plan = Plan(p, common, store, {})
    # the time estimate (2-core reference timings; SP extensions not included)
    proxy_run = steps * lr_transfer.est_step_seconds(p["proxy"], p["batch_size"], p["seq_len"], 2)
    n_lr_only = len(lr_only_space(p, common)["lr"].grid())
    fake = {"lr": 2.0 ** -8, "hp": {}, "optimizer": {}}
    plan.best = {"mutransfer": fake, "lr_only": fake}
    finals = [c for c in plan.wanted()]
    finals += [plan.sp_cfg(w, s, p["sp_centers"][w]) for w in p["targets"] for s in plan.seeds if s]
    plan.best = {}
    est_final = sum(est_seconds(c) for c in finals if not _done(store.get(c)))
    print(f"μTransfer benchmark: proxy width {p['proxy']}, targets {p['targets']}, {steps} steps, batch "
          f"{p['batch_size']}x{p['seq_len']}, {p['seeds']} seeds; μTransfer sweep {p['trials']} TPE trials "
          f"(lr + 3 hp), μP-lr-only grid {n_lr_only} lrs, SP grid {p['sp_points']} lrs per target "
          f"(centres {p['sp_centers']}, extended up to {p['sp_extend']}x)")
    print(f"estimate (2-core reference step times, no pruning, no SP extension): proxy sweeps "
          f"{(p['trials'] + n_lr_only) * proxy_run / 60:.1f} min, final runs ({len(finals)}) {est_final / 60:.1f} min, "
          f"total {((p['trials'] + n_lr_only) * proxy_run + est_final) / 60:.1f} min; one SP extension at the "
          f"largest target adds {est_seconds(plan.sp_cfg(max(p['targets']), 0, 0)) / 60:.1f} min")
    if args.dry_run:
        per_w = {w: sum(est_seconds(c) for c in finals if c["width"] == w) / 60 for w in plan.widths}
        print("final-run minutes per width: " + ", ".join(f"{w}: {v:.1f}" for w, v in per_w.items()))
        return 0

    import warnings

    warnings.filterwarnings("ignore", message="muplify: ")
    t_start = time.perf_counter()
    corpus = stdlib_corpus()
    eval_batches = _val_batches(p["eval_batches"], p["batch_size"], p["seq_len"])
    store.data["meta"] = {"env": env_info(), "corpus": corpus.describe(),
                          "argv": sys.argv[1:] if argv is None else argv, "preset": dict(p), "common": common,
                          "threads": threads}
    store.save()
    out.mkdir(parents=True, exist_ok=True)

    # 1. the proxy sweeps (resumed from OUT/tune.db)
    phase: dict = {}
    results, sweeps = {}, {}
    for arm in ("lr_only", "mutransfer"):
        t0 = time.perf_counter()
        print(f"\n[{SHORT[arm]}] proxy sweep at width {p['proxy']} ({p['workers']} worker(s))", flush=True)
        results[arm] = run_sweep(arm, p, common, out, p["workers"])
        phase[f"sweep_{arm}"] = time.perf_counter() - t0
        results[arm].to_json(str(out / f"tune_{arm}.json"))
        sweeps[arm] = sweep_stats(results[arm])
        print(results[arm])
    plan.best = {arm: r.best for arm, r in results.items()}

    # 2. the final runs (SP's sweeps at the targets, every arm at every width and seed)
    t0 = time.perf_counter()
    print(f"\nfinal runs ({p['jobs']} job(s) x {p['threads']} thread(s))", flush=True)
    errors = run_targets(plan, p["jobs"], p["threads"], corpus, eval_batches)
    phase["final_runs"] = time.perf_counter() - t0

    summary = analyze(plan, sweeps)
    summary["errors"] = errors
    summary["wall_seconds_this_invocation"] = {**phase, "total": time.perf_counter() - t_start}
    store.data["summary"] = summary
    store.save()

    print(format_tables(summary, plan.widths, p))
    print("\nTargets" + (" (quick mode: too small to be meaningful)" if args.quick else "") + ":")
    for name, t in summary["targets"].items():
        print(f"  [{t['status']}] {name}: {t['detail']}")
    if summary["mutransfer_minus_sp"]:
        print("  μTransfer − SP tuned at the target, per width: " + ", ".join(summary["mutransfer_minus_sp"]))
    if errors:
        print("\nErrors:\n" + "\n".join(f"  {k}: {v}" for k, v in errors.items()))
    if not args.no_plot:
        title = (f"μTransfer on the byte-level GPT (2 layers): proxy width {p['proxy']}, {steps} steps, batch "
                 f"{p['batch_size']}x{p['seq_len']}, {p['trials']} proxy trials, {p['seeds']} seeds")
        plot(summary, plan, out / "mutransfer.png", title)
        results["mutransfer"].plot(str(out / "tune_params.png"))
        try:
            results["mutransfer"].plot_importance(str(out / "tune_importance.png"))
        except Exception as e:  # too few completed trials (quick mode)
            print(f"no importance plot: {e}")
        results["lr_only"].plot(str(out / "tune_lr_only.png"))
        print(f"\nplots: {out / 'mutransfer.png'}, tune_params.png, tune_importance.png, tune_lr_only.png")
    print(f"results: {out / 'results.json'}  ({summary['wall_seconds_this_invocation']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
