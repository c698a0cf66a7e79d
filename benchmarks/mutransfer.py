#!/usr/bin/env python
"""μTransfer end to end (issue 10 §2, extended for issue 19): tune on a width-64 proxy, transfer to widths 128-512,
compare with SP tuned at every target and with the same search space tuned at the target, and count what each arm's
tuning cost.

The task is the LR benchmark's (``benchmarks/lr_transfer.py``): the byte-level pre-LN
``muplify.models.GPT(vocab_size=256, d_model=W, n_layer=2, head_dim=32, tie_weights=False, init="gpt2")`` on the
built-in corpus (the interpreter's standard library, split by file), trained with the library's loop
``muplify.tools.train.train`` (AdamW, betas 0.9/0.95, no weight decay, linear warmup over 10 % of the steps, cosine to
10 %), validation loss in nats/byte on the LR benchmark's fixed held-out batches.  Six arms (``--arms`` picks the
ones a run works on; the ``full`` preset has the first three of issue 10, ``proof`` all six):

* **μTransfer**: ``muplify.tune`` at the proxy width (= base width) over ``lr`` and three ``hp`` axes (below); every
  target is then trained once per seed with ``muplify.tools.tune.transfer(make_model, result.best, AdamW, width=W)``.
* **μP, lr only**: a grid sweep of ``lr`` alone at the proxy (half-octave steps, hp at their defaults), transferred the
  same way (this is what ``lr_transfer.py`` shows).
* **SP tuned at the target**: the plain model and plain AdamW, a log2-lr sweep at each target width (5 points,
  spacing 1, centred on the SP optima of the LR benchmark's table: 2^-9 at 128, 2^-11 at 256, 2^-10 at 512; one
  more point outward, up to 3 times, while the optimum sits on an edge of the grid); the sweep runs at seed 0 and its
  best lr is then trained at the other seeds (the seed-0 run is reused: its lr was chosen on it, a selection bias
  that can only favour SP).
* **improved** (issue 19): the μTransfer arm's space tuned at the proxy with the noise-aware and refinement features,
  ``muplify.tune(..., seeds_per_trial=2, refine=8, widths=[64, 128], telescope_trials=4)`` on 32 global trials: every
  trial is the mean of two seeds (init and data stream: its objective takes ``seed=``), the refinement is a fresh
  TPE in the box shrunk to 0.3 of each range around the incumbent (a quarter of the global trials), the telescoping
  phase 4 trials at the first target width in a box shrunk to 0.5 around the transferred incumbent (base width 64
  throughout).  Sized for issue 19's compute target (≤ 25 % of one sweep of the same space at the target): 80
  objective runs at 64 + 8 at 128 = 8.9 runs at 256 = 18.5 % of a 48-trial sweep at 256 before pruning (at 128 it is
  32 runs = 67 % of the 48-trial sweep there: a telescoping step at 128 with 2 seeds alone is 17 %, so the target is
  evaluated at the largest tuned-at-target width and the 128 ratio reported beside it).
* **per-module** (issue 19): the μTransfer arm at module-kind granularity, ``tune(..., per_module=True)``: the lr
  multipliers of the kinds (embedding, qkv, attn_out, mlp_out, norm, readout; mlp_in is the anchor, its lr is
  ``lr``) instead of the roles', with the role-level ranges (embedding and norm the input+vector+gain axis's
  [1/4, 32], readout the output axis's [1/8, 8], the hidden kinds [1/8, 8]) and what the role-level space does not
  search fixed at 1 (init multipliers, attn_mult, embed_mult): the same models, 8 searched axes instead of 4, same
  48 trials.
* **tuned at the target** (issue 19's fair baseline): the μTransfer arm's space, trial count, sampler and pruner, tuned
  directly at each width of ``tat_widths`` (128 and 256) with base_width still 64, so an hp value means the same
  thing in every sweep (at the base width the μP model is the plain model: this is SP with these hyperparameters
  tuned at the target).  Its best is trained at every seed at its own width, and transferred *down* to the proxy
  width (issue 19: it should be no better there than the proxy's pick).  ``muplify.tune`` always tunes at its base
  width, so this arm runs the library's one-study building blocks (``prepare`` / ``run_sweep``, as
  ``result.check_transfer`` does).  Its sampler seed is the μTransfer arm's, so its start-up trials are the same
  points (common random numbers between the two).

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

Tuning compute is counted as TP-V counts its "7 %": the optimizer steps of every trial (a pruned trial counts
the steps it ran, a failed one the full length; a complete trial of the improved arm both seeds, a pruned one the
steps of its first seed, the one the pruner watches) × the cost per step at the width it ran at (the proxy's; the
first target's for the improved arm's telescoping trials; the target's for the tuned-at-target sweeps), as a fraction
of one target training run (its steps × the target's cost per step).  The cost per step is given both as FLOPs
(6 · tokens · matmul parameters + attention, the usual estimate) and as measured wall time (median ms/step of the
final runs at each width).  SP's tuning compute is its sweep at that target.

Summary (issue 19): per tuned-at-target width, the **transfer gap** of every proxy arm (and SP): its loss there minus
the same space tuned there, paired by seed (same data stream and init seed), mean ± sd over seeds; and issue 19's
targets as PASS/FAIL/N/A with their numbers: ``gap_<arm>`` (≤ 0.01 nats/byte at every tuned-at-target width, for
μTransfer, improved and per-module), ``improved_compute_small`` (improved sweep ≤ 25 % of one sweep of the same
space at the largest tuned-at-target width, measured, or nominal 48 unpruned trials when that arm has not run),
``tuned_down_no_better_<arm>`` (the tuned-at-target configuration at the proxy width no better than μTransfer's /
improved's pick by more than the larger seed sd), ``<arm>_monotone_in_width`` (wider is better), beside issue 10's.

    python benchmarks/mutransfer.py --quick                        # CI smoke run, every arm (~1 minute)
    python benchmarks/mutransfer.py --dry-run                      # the plan and the time estimate per arm
    python benchmarks/mutransfer.py --jobs 2 --threads 1 --workers 2 --out benchmarks/results/mutransfer
    # issue 19's proof (targets 128 and 256, 3 seeds, 400 steps; about 2.3 h estimated), a few arms at a time:
    python benchmarks/mutransfer.py --preset proof --dry-run
    python benchmarks/mutransfer.py --preset proof --arms mutransfer improved per_module lr_only sp \\
        --out benchmarks/results/mutransfer_proof
    python benchmarks/mutransfer.py --preset proof --arms tuned_at_target --out benchmarks/results/mutransfer_proof

An arm not in ``--arms`` is not run, but its finished sweep (``results.json``'s ``sweeps``) and final runs are read
from the store, so the summary and the plots always cover every arm finished so far.  400 steps for the proof too:
the length at which the issue's gap was measured, and the tuned-at-target sweeps (48 trials at 128 and at 256) are
already 70 of its ~140 estimated minutes.

Outputs in ``--out``: ``results.json`` (every finished run, keyed by its configuration: a re-run skips it; every
sweep's best and step counts; the summary, compute and targets), ``tune.db`` (the Optuna studies: a re-run resumes
them), ``tune_<arm>.json`` (every trial; ``tune_tuned_at_target_w<W>.json`` per width), ``mutransfer.png`` (loss vs
width for every arm with seed spread and the tuned-at-target configurations transferred down, SP's sweeps, the
transfer gap, the tuning compute), ``tune_params.png`` / ``tune_importance.png`` (the μTransfer sweep),
``tune_lr_only.png``, ``tune_improved.png``, ``tune_per_module.png``.
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

ARMS = ("mutransfer", "improved", "per_module", "tuned_at_target", "lr_only", "sp")
PROXY_ARMS = ("mutransfer", "improved", "per_module", "lr_only")  # tuned at the proxy, then transferred
LABELS = {"mutransfer": "μTransfer (lr + hp tuned at the proxy)",
          "improved": "improved tune (2 seeds/trial, refine, telescope)",
          "per_module": "μTransfer, per-module lr multipliers",
          "tuned_at_target": "same space tuned at the target (○: transferred down)",
          "lr_only": "μP, lr only (tuned at the proxy)", "sp": "SP tuned at the target"}
SHORT = {"mutransfer": "μTransfer", "improved": "improved", "per_module": "per-module",
         "tuned_at_target": "tuned@target", "lr_only": "μP lr only", "sp": "SP tuned@target"}
COLORS = {"mutransfer": "tab:red", "improved": "tab:green", "per_module": "tab:purple", "tuned_at_target": "k",
          "lr_only": "tab:blue", "sp": "tab:gray"}
DATA_SEED = 1000  # training stream of seed s: corpus.batches(..., seed=DATA_SEED + s), as in lr_transfer.py
STUDIES = {"mutransfer": "mutransfer", "lr_only": "lr-only", "improved": "improved", "per_module": "per-module"}
GAP_TARGET = 0.01  # issue 19: transferred vs tuned at the target, nats/byte
IMPROVED_COMPUTE_TARGET = 0.25  # issue 19: the improved tune's compute / one sweep of the same space at the target

_FULL = dict(proxy=64, targets=[128, 256, 512], steps=400, seeds=3, batch_size=16, seq_len=128,
             eval_batches=8, eval_every=50, trials=48,
             lr_range=(-12.0, -4.0), lr_only_range=(-11.0, -5.0), lr_only_step=0.5,
             sp_centers={128: -9.0, 256: -11.0, 512: -10.0}, sp_points=5, sp_extend=3,
             improved_trials=32, improved_refine=8, improved_telescope=4, improved_seeds=2,
             tat_widths=[128, 256], jobs=2, threads=1, workers=2)
PRESETS = {
    # the original three arms (issue 10); 75 minutes estimated (lr_transfer's 2-thread step times), 82 measured on 2
    # cores with --jobs 2 --threads 1 --workers 2: sweeps 8.8 + 2.6 min, 51 final runs 70.5 min (1-thread w512 steps
    # 1155 ms)
    "full": dict(_FULL, arms=["mutransfer", "lr_only", "sp"], out="out/mutransfer"),
    # issue 19's proof: every arm, targets 128 and 256, the same space tuned at both (--dry-run prints the estimate)
    "proof": dict(_FULL, targets=[128, 256], arms=list(ARMS), out="out/mutransfer_proof"),
    # CI smoke run: every arm and phase once, tiny; not meant to show anything
    "quick": dict(proxy=32, targets=[64, 128], steps=24, seeds=2, batch_size=4, seq_len=32,
                  eval_batches=2, eval_every=8, trials=5,
                  lr_range=(-10.0, -5.0), lr_only_range=(-8.0, -6.0), lr_only_step=1.0,
                  sp_centers={64: -7.0, 128: -7.0}, sp_points=3, sp_extend=1,
                  improved_trials=4, improved_refine=1, improved_telescope=1, improved_seeds=2,
                  tat_widths=[64, 128], arms=list(ARMS), jobs=1, threads=1, workers=1, out="out/mutransfer_quick"),
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


def objective_seeded(model, optimizer, report, *, seed: int = 0, steps: int, warmup: int, schedule: str,
                     batch_size: int, seq_len: int, eval_batches: int, eval_every: int) -> float:
    """The improved arm's objective: as :func:`objective`, on seed ``seed``'s data stream (``muplify.tune`` passes the
    trial's seed when ``seeds_per_trial > 1``, so a trial's seeds differ in data as well as in init)."""
    cfg = dict(steps=steps, warmup=warmup, schedule=schedule, grad_clip=0)
    options = lr_transfer.train_options(cfg)
    options.eval_every = eval_every
    batches = stdlib_corpus().batches("train", batch_size, seq_len, seed=DATA_SEED + seed)
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


# the GPT's module kinds (muplify.module_kinds; default_space(per_module=True) lists them): the biases follow their
# module's kind, the norm gains and biases are "norm", token and position embeddings "embedding"
WEIGHT_KINDS = ("embedding", "qkv", "attn_out", "mlp_in", "mlp_out", "readout")


def per_module_space(p: dict, common: dict) -> dict:
    """The μTransfer space at module-kind granularity (``tune(..., per_module=True)`` builds the per-kind lr axes:
    ``hp.lr_mult.<kind>`` for embedding, qkv, attn_out, mlp_out, norm, readout, with mlp_in the anchor, Fixed(1)).
    The ranges are the role-level space's: the kinds of the input / vector / gain roles (embedding, norm) get that
    axis's [1/4, 32], the readout the output axis's [1/8, 8], the hidden kinds the library's [1/8, 8]; the axes the
    role-level space does not search (init multipliers, attn_mult, embed_mult) are fixed at 1, so the two spaces hold
    the same models and differ only in how finely the lr multipliers are split (8 searched axes instead of 4)."""
    from muplify.tools.tune import Fixed, LogUniform

    lo, hi = p["lr_range"]
    return {"lr": LogUniform(2.0 ** lo, 2.0 ** hi), "hp.output_mult": LogUniform(1 / 8, 8),
            "hp.attn_mult": Fixed(1.0), "hp.embed_mult": Fixed(1.0),
            "hp.lr_mult.embedding": LogUniform(1 / 4, 32), "hp.lr_mult.norm": LogUniform(1 / 4, 32),
            "hp.lr_mult.readout": LogUniform(1 / 8, 8), **{f"hp.init_mult.{k}": Fixed(1.0) for k in WEIGHT_KINDS},
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

        need = {"mutransfer": p["trials"], "per_module": p["trials"],
                "lr_only": len(lr_only_space(p, common)["lr"].grid())}.get(arm)  # improved: later phases too
        c = load_result(storage, STUDIES[arm]).counts()
        if need is not None and c["complete"] + c["pruned"] + c["failed"] >= need:
            workers = 1
    except Exception:  # no study yet
        pass
    # median pruner, but only from the second half of a trial on
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=common["steps"] // 2)
    if arm == "mutransfer":
        return muplify.tune(make_model, p["proxy"], objective, torch.optim.AdamW, trials=p["trials"],
                            space=mutransfer_space(p, common), defaults=False, sampler="tpe", pruner=pruner,
                            storage=storage, study_name=STUDIES[arm], workers=workers, seed=0, muplify_kwargs=mkw,
                            progress=progress)
    if arm == "per_module":
        return muplify.tune(make_model, p["proxy"], objective, torch.optim.AdamW, trials=p["trials"],
                            space=per_module_space(p, common), defaults=True, per_module=True, sampler="tpe",
                            pruner=pruner, storage=storage, study_name=STUDIES[arm], workers=workers, seed=0,
                            muplify_kwargs=mkw, progress=progress)
    if arm == "improved":
        # global TPE phase at the proxy, a refinement in the narrowed box, then a few trials at the first target
        # (telescoping); every trial the mean of improved_seeds seeds (data and init)
        return muplify.tune(make_model, p["proxy"], objective_seeded, torch.optim.AdamW, trials=p["improved_trials"],
                            space=mutransfer_space(p, common), defaults=False, sampler="tpe", pruner=pruner,
                            storage=storage, study_name=STUDIES[arm], workers=workers, seed=0, muplify_kwargs=mkw,
                            progress=progress, seeds_per_trial=p["improved_seeds"], refine=p["improved_refine"],
                            widths=[p["proxy"], p["targets"][0]], telescope_trials=p["improved_telescope"])
    space = lr_only_space(p, common)
    n_grid = len(space["lr"].grid())
    # one worker process with all the threads: muplify.tune gives every worker (and every resume) its own sampler
    # seed, and Optuna's GridSampler shuffles its grid with that seed, so two workers visit some lrs twice and skip
    # others (seen here: 13 trials covered 10 of the 13 grid points)
    return muplify.tune(make_model, p["proxy"], objective, torch.optim.AdamW, trials=n_grid, space=space,
                        defaults=False, sampler="grid", pruner=None, storage=storage, study_name=STUDIES[arm],
                        workers=1, threads=max(1, workers * p["threads"]), seed=0, muplify_kwargs=mkw,
                        progress=progress)


def run_tat_sweep(width: int, p: dict, common: dict, out: Path, workers: int, progress: bool = True):
    """The fair baseline: the μTransfer arm's space (same box, same trial count, sampler and pruner) tuned directly at
    ``width``, with base_width the proxy's, so a value means what it means in the proxy's sweep (at the proxy width
    the μP model is the plain model: this is SP with those hyperparameters tuned at the target).  ``muplify.tune``
    always tunes at its base width, so this runs its one-study building blocks (``prepare`` / ``run_sweep``, as
    ``result.check_transfer`` does)."""
    import optuna

    from muplify.tools.tune.sweep import prepare
    from muplify.tools.tune.sweep import run_sweep as one_study

    make_model = functools.partial(make_gpt, n_layer=common["n_layer"], seq_len=common["seq_len"])
    mkw = {"example_inputs": example_inputs(common["seq_len"])}
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=common["steps"] // 2)
    sw = prepare(make_model, p["proxy"], objective, torch.optim.AdamW, trials=p["trials"],
                 space=mutransfer_space(p, common), defaults=False, storage=storage, workers=workers, threads=None,
                 seed=0, timeout=None, muplify_kwargs=mkw)
    return one_study(sw, width=width, base_width=p["proxy"], space=sw.space, trials=p["trials"], sampler="tpe",
                     pruner=pruner, study_name=f"tuned-at-w{width}", seed=0, progress=progress)


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

    def mup_cfg(self, arm: str, width: int, seed: int, tuned_at: int | None = None) -> dict:
        """A μP final run: arm's best (tuned_at_target: the one tuned at width ``tuned_at``) at ``width``."""
        b = self.best[arm] if tuned_at is None else self.best[arm][tuned_at]
        extra = {} if tuned_at is None else {"tuned_at": tuned_at}
        return dict(self.common, arm=arm, width=width, seed=seed, base_width=self.p["proxy"], lr=b["lr"], hp=b["hp"],
                    optimizer_kwargs=b["optimizer"], log2_lr=math.log2(b["lr"]), **extra)

    def tat_widths(self) -> list[int]:
        return [w for w in self.p["tat_widths"] if w in self.p["targets"]]

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
        """The final runs of the arms this invocation runs (``p["arms"]``; the others' runs stay in the store)."""
        runs, arms = [], self.p["arms"]
        for arm in PROXY_ARMS:
            if arm in arms and self.best.get(arm):
                runs += [self.mup_cfg(arm, w, s) for w in self.widths for s in self.seeds]
        if "tuned_at_target" in arms:
            for w, b in self.best.get("tuned_at_target", {}).items():
                if b:  # at its own width, and transferred down to the proxy
                    runs += [self.mup_cfg("tuned_at_target", x, s, tuned_at=w) for x in (w, self.p["proxy"])
                             for s in self.seeds]
        for w in (self.p["targets"] if "sp" in arms else []):
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


def sweep_stats(result, seeds_per_trial: int = 1, width: int | None = None) -> dict:
    """Counts, optimizer steps run per width (a complete trial counts its seeds, a pruned one the steps of its first
    seed, the one the pruner watches; a failed one the full length of every seed), wall time and trials per hour of
    a sweep (every phase of a multi-phase tune)."""
    full = result.best["objective"]["steps"] if result.best else None
    by_w: dict = {}
    for t in result.trials:
        w = t.width or width or result.width
        if t.state == "complete":
            n = seeds_per_trial * (t.steps or full)
        elif t.state == "pruned":
            n = t.steps or full
        elif t.state == "failed":
            n = seeds_per_trial * full
        else:
            continue
        by_w[w] = by_w.get(w, 0) + n
    times = [(t.datetime_start, t.datetime_complete) for t in result.study.get_trials(deepcopy=False)
             if t.datetime_start is not None and t.datetime_complete is not None]
    wall = (max(b for _, b in times) - min(a for a, _ in times)).total_seconds() if times else None
    counts = {k: sum(t.state == k for t in result.trials) for k in ("complete", "pruned", "failed")}
    finished = sum(counts.values())
    out = {"counts": counts, "steps": sum(by_w.values()), "steps_by_width": by_w, "seeds_per_trial": seeds_per_trial,
           "wall_seconds": wall, "trials_per_hour": finished / (wall / 3600) if wall else None,
           "trial_seconds": [t.seconds for t in result.trials if t.seconds is not None]}
    if getattr(result, "phases", None):
        out["phases"] = [{"name": ph.name, "width": ph.width, "trials": ph.trials, "best_value": ph.best_value}
                         for ph in result.phases]
    if getattr(result, "spread", None) is not None:
        out["spread"], out["within_spread"] = result.spread, result.within_spread
    return out


def _by_width(stats: dict) -> dict:
    return {int(w): n for w, n in stats["steps_by_width"].items()}  # JSON keys are strings after a reload


def paired(a: list, b: list) -> dict | None:
    """mean and sd over seeds of a − b (the same seed: same data stream and init seed), None unless all finite."""
    if not a or len(a) != len(b) or not all(x is not None and math.isfinite(x) for x in a + b):
        return None
    d = [x - y for x, y in zip(a, b)]
    return {"mean": statistics.fmean(d), "sd": statistics.stdev(d) if len(d) > 1 else 0.0}


def analyze(plan: Plan, sweeps: dict) -> dict:
    p, c, store = plan.p, plan.common, plan.store
    widths, proxy = plan.widths, p["proxy"]
    summary: dict = {"loss": {}, "tuned_down": {}, "gap": {}, "sp_sweep": {}, "tuned": {}, "compute": {},
                     "targets": {}}

    def losses(cfgs):
        recs = [store.get(x) for x in cfgs]
        return mean_sd([_loss(r) for r in recs]) if all(_done(r) for r in recs) else None

    for arm in ARMS:
        for w in widths:
            if arm == "sp":
                if w not in p["targets"]:
                    continue
                grid, best = plan.sp_sweep(w)
                sweep = {x: store.get(plan.sp_cfg(w, 0, x)) for x in grid}
                if any(_done(r) for r in sweep.values()):
                    summary["sp_sweep"][w] = {"log2_lrs": grid, "best_log2_lr": best,
                                              "loss": [None if not _done(r) else finite_or_none(_loss(r))
                                                       for r in sweep.values()],
                                              "extended": len(grid) - p["sp_points"],
                                              "edge": best is not None and best in (grid[0], grid[-1])}
                if best is None:
                    continue
                cfgs = [plan.sp_cfg(w, s, best) for s in plan.seeds]
            elif arm == "tuned_at_target":
                if not plan.best.get(arm, {}).get(w):
                    continue
                cfgs = [plan.mup_cfg(arm, w, s, tuned_at=w) for s in plan.seeds]
                down = losses([plan.mup_cfg(arm, proxy, s, tuned_at=w) for s in plan.seeds])
                if down:
                    summary["tuned_down"][w] = down
            else:
                if not plan.best.get(arm):
                    continue
                cfgs = [plan.mup_cfg(arm, w, s) for s in plan.seeds]
            ls = losses(cfgs)
            if ls:
                summary["loss"].setdefault(arm, {})[w] = ls
    L = summary["loss"]
    for arm in PROXY_ARMS:
        b = plan.best.get(arm)
        if b:
            summary["tuned"][arm] = {"lr": b["lr"], "log2_lr": math.log2(b["lr"]), "hp": b["hp"],
                                     "proxy_value": b["value"], "trial": b["trial"],
                                     "tuned_at": b.get("tuned_at", proxy), "phase": b.get("phase", "global"),
                                     **sweeps.get(arm, {})}
    for w, b in plan.best.get("tuned_at_target", {}).items():
        summary["tuned"][f"tuned_at_target@{w}"] = {
            "lr": b["lr"], "log2_lr": math.log2(b["lr"]), "hp": b["hp"], "proxy_value": b["value"],
            "trial": b["trial"], "tuned_at": w, **sweeps.get("tuned_at_target", {}).get(w, {})}
    # the transfer gap: each arm at a target minus the same space tuned at that target, paired by seed
    for w in plan.tat_widths():
        ref = L.get("tuned_at_target", {}).get(w)
        for arm in (*PROXY_ARMS, "sp"):
            a = L.get(arm, {}).get(w)
            if ref and a:
                d = paired(a["values"], ref["values"])
                if d:
                    summary["gap"].setdefault(arm, {})[w] = {**d, "arm": a["mean"], "arm_sd": a["sd"],
                                                             "tuned_at_target": ref["mean"],
                                                             "tuned_at_target_sd": ref["sd"]}

    # compute: FLOPs and measured wall time per step, per width
    sweep_widths = {w for st in [*(sweeps[a] for a in PROXY_ARMS if a in sweeps),
                                 *sweeps.get("tuned_at_target", {}).values()] for w in _by_width(st)}
    all_w = sorted({*widths, *sweep_widths})
    flops = {w: step_flops(w, c["n_layer"], c["batch_size"], c["seq_len"]) for w in all_w}
    ms = {}
    for w in all_w:
        xs = [r["ms_per_step"] for r in store.data["runs"].values()
              if r["config"].get("width") == w and _done(r) and r["config"].get("steps") == c["steps"]
              and r["config"].get("batch_size") == c["batch_size"]]
        ms[w] = statistics.median(xs) if xs else None

    def cost(stats):  # (FLOPs, ms or None) of a sweep
        bw = _by_width(stats)
        fl = sum(n * flops[w] for w, n in bw.items())
        wall = sum(n * ms[w] for w, n in bw.items()) if all(ms.get(w) for w in bw) else None
        return fl, wall

    comp: dict = {"flops_per_step": flops, "ms_per_step": ms, "target_run_steps": c["steps"], "per_target": {}}
    for w in p["targets"]:
        row: dict = {}
        run_flops, run_ms = c["steps"] * flops[w], (c["steps"] * ms[w] if ms[w] else None)
        for arm in PROXY_ARMS:
            if arm in sweeps:
                fl, wall = cost(sweeps[arm])
                row[arm] = {"steps": sweeps[arm]["steps"], "flops_frac": fl / run_flops,
                            "wall_frac": wall / run_ms if wall is not None and run_ms else None}
        tat = sweeps.get("tuned_at_target", {}).get(w)
        if tat:
            fl, wall = cost(tat)
            row["tuned_at_target"] = {"steps": tat["steps"], "flops_frac": fl / run_flops,
                                      "wall_frac": wall / run_ms if wall is not None and run_ms else None}
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
        if "improved" in row:
            # one sweep of the same space at this target: measured when the tuned-at-target arm ran here, else
            # nominal (trials x steps, no pruning)
            ref = row.get("tuned_at_target", {}).get("flops_frac")
            row["improved_over_target_sweep"] = {
                "flops_frac": row["improved"]["flops_frac"] / (ref or p["trials"]),
                "target_sweep": "measured" if ref else f"nominal ({p['trials']} unpruned trials)"}
        comp["per_target"][w] = row
    # one proxy sweep serves every target; SP pays its sweep at each of them
    if "mutransfer" in sweeps and all("sp" in comp["per_target"][w] for w in p["targets"]):
        sp_all = sum(comp["per_target"][w]["sp"]["steps"] * flops[w] for w in p["targets"])
        comp["all_targets_flops_ratio"] = cost(sweeps["mutransfer"])[0] / sp_all
        wall = cost(sweeps["mutransfer"])[1]
        if wall is not None and all(ms[w] for w in p["targets"]):
            comp["all_targets_wall_ratio"] = wall / sum(comp["per_target"][w]["sp"]["steps"] * ms[w]
                                                        for w in p["targets"])
    summary["compute"] = comp

    # targets
    def target(name, ok, detail):
        summary["targets"][name] = {"status": "N/A" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail}

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
    # wider is better: every μP arm's mean loss strictly decreasing over the proxy and the targets
    for arm in ("mutransfer", "improved", "per_module"):
        ms_ = [L.get(arm, {}).get(w, {}).get("mean") for w in widths]
        if all(v is not None for v in ms_):
            target(f"{arm}_monotone_in_width", all(b < a for a, b in zip(ms_[:-1], ms_[1:])),
                   f"{SHORT[arm]} mean loss " + " > ".join(f"{v:.4f}@{w}" for v, w in zip(ms_, widths))
                   + " (target: strictly decreasing)")
        else:
            target(f"{arm}_monotone_in_width", None, "incomplete")
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
    # issue 19: the transfer gap at every tuned-at-target width
    tw = plan.tat_widths()
    for arm in ("mutransfer", "improved", "per_module"):
        gs = [summary["gap"].get(arm, {}).get(w) for w in tw]
        if tw and all(gs):
            target(f"gap_{arm}", all(g["mean"] <= GAP_TARGET for g in gs),
                   "; ".join(f"w{w}: {SHORT[arm]} {g['arm']:.4f} − tuned@{w} {g['tuned_at_target']:.4f} = "
                             f"{g['mean']:+.4f} ± {g['sd']:.4f}" for w, g in zip(tw, gs))
                   + f" (paired by seed, mean ± sd; target: <= {GAP_TARGET} at every width)")
        else:
            target(f"gap_{arm}", None, "incomplete")
    # issue 19: the improved tune's compute vs one sweep of the same space at the target (the largest tuned-at-target
    # width: the sweep the proxy replaces where it matters; the other widths in the detail)
    rows = {w: comp["per_target"][w].get("improved_over_target_sweep") for w in tw}
    if tw and rows[max(tw)]:
        target("improved_compute_small", rows[max(tw)]["flops_frac"] <= IMPROVED_COMPUTE_TARGET,
               "; ".join(f"w{w}: improved = {comp['per_target'][w]['improved']['flops_frac']:.2f} target runs = "
                         f"{r['flops_frac']:.1%} of one {r['target_sweep']} sweep at {w}"
                         for w, r in rows.items() if r)
               + f" (target: <= {IMPROVED_COMPUTE_TARGET:.0%} at w{max(tw)}, in FLOPs)")
    else:
        target("improved_compute_small", None, "incomplete")
    # issue 19: the configuration tuned at a target, transferred down to the proxy, is no better than the proxy's
    # pick within the seed spread (the larger of the two seed sds)
    for arm in ("mutransfer", "improved"):
        pick = L.get(arm, {}).get(proxy)
        parts, oks = [], []
        for w in tw:
            down = summary["tuned_down"].get(w)
            if not (pick and down and "mean" in pick and "mean" in down):
                oks.append(None)
                continue
            spread = max(pick["sd"], down["sd"])
            d = down["mean"] - pick["mean"]
            oks.append(d >= -spread)
            parts.append(f"tuned@{w} at w{proxy}: {down['mean']:.4f} ± {down['sd']:.4f} vs {SHORT[arm]}'s pick "
                         f"{pick['mean']:.4f} ± {pick['sd']:.4f}: {d:+.4f} (spread {spread:.4f})")
        ok = None if not oks or None in oks else all(oks)
        target(f"tuned_down_no_better_{arm}", ok,
               ("; ".join(parts) if parts else "incomplete") + " (target: difference >= −spread)")
    return summary


def fmt_cell(s: dict | None) -> str:
    if not s:
        return "—"
    if "mean" not in s:
        return f"div ({s['diverged']}/{s['n']})"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _hp_text(hp: dict) -> str:
    return str({k: v for k, v in hp.items() if k != "tuned_roles"})  # tuned_roles: which parameter had which role


def format_tables(summary: dict, widths: list[int], p: dict) -> str:
    out = ["", f"Validation loss (nats/byte), mean ± sd over seeds; proxy width {p['proxy']} = base width",
           "| arm | " + " | ".join(f"w{w}" for w in widths) + " |", "|---|" + "---|" * len(widths)]
    for arm in ARMS:
        cells = []
        for w in widths:
            if arm == "sp" and w == p["proxy"]:
                cells.append("(= μP at base)")
            elif arm == "tuned_at_target" and w == p["proxy"]:
                down = summary["tuned_down"]
                cells.append(", ".join(f"{fmt_cell(down[x])} (tuned@{x})" for x in down) or "—")
            else:
                cells.append(fmt_cell(summary["loss"].get(arm, {}).get(w)))
        out.append(f"| {SHORT[arm]} | " + " | ".join(cells) + " |")
    gap = summary["gap"]
    if gap:
        tw = sorted({int(w) for g in gap.values() for w in g})
        out += ["", "Transfer gap: arm − the same space tuned at that width (nats/byte; paired by seed, mean ± sd; "
                f"target <= {GAP_TARGET} for the proxy sweeps)",
                "| arm | " + " | ".join(f"w{w}" for w in tw) + " |", "|---|" + "---|" * len(tw)]
        for arm, g in gap.items():
            out.append(f"| {SHORT[arm]} | " + " | ".join(
                f"{g[w]['mean']:+.4f} ± {g[w]['sd']:.4f}" if w in g else "—" for w in tw) + " |")
    out.append("")
    for arm, t in summary["tuned"].items():
        extra = f", hp {_hp_text(t['hp'])}" if _hp_text(t["hp"]) != "{}" else ""
        name = SHORT.get(arm, arm.replace("tuned_at_target@", SHORT["tuned_at_target"] + " w"))
        where = (f"best at w{t['tuned_at']}" if t.get("tuned_at") != p["proxy"] else "proxy best")
        counts = t.get("counts", {})
        spread = (f" ± {t['spread']:.4f} (seed sd; {t['within_spread']} trials within it)"
                  if t.get("spread") is not None else "")
        out.append(f"{name}: {where} lr 2^{t['log2_lr']:.2f}{extra} (sweep value {t['proxy_value']:.4f}{spread}, "
                   f"{t.get('phase', 'global')} trial {t['trial']}); sweep {counts.get('complete', '?')} complete / "
                   f"{counts.get('pruned', '?')} pruned / {counts.get('failed', '?')} failed, {t.get('steps', '?')} "
                   "steps" + (f", {t['wall_seconds']:.0f} s, {t['trials_per_hour']:.0f} trials/hour"
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
            if any(x != "—" for x in cells):
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
    fig = Figure(figsize=(21, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 4, 1)
    for k, arm in enumerate(ARMS):
        data = summary["loss"].get(arm, {})
        ws = [w for w in widths if "mean" in data.get(w, {})]
        if not ws:
            continue
        xs = [math.log2(w) + (k - 2.5) * 0.03 for w in ws]
        # tuned@target: a different configuration at each width, so no line between them
        ax.errorbar(xs, [data[w]["mean"] for w in ws], yerr=[data[w]["sd"] for w in ws],
                    fmt="s" if arm == "tuned_at_target" else "-o", capsize=4, color=COLORS[arm], label=LABELS[arm],
                    ms=5)
        for x, w in zip(xs, ws):
            ax.plot([x] * len(data[w]["values"]), data[w]["values"], ".", color=COLORS[arm], alpha=0.35, ms=4)
    for j, (w, d) in enumerate(summary["tuned_down"].items()):  # tuned at a target, transferred down to the proxy
        if "mean" in d:
            x = math.log2(p["proxy"]) + (j + 3.5) * 0.03
            ax.errorbar([x], [d["mean"]], yerr=[d["sd"]], fmt="o", mfc="none", capsize=3,
                        color=COLORS["tuned_at_target"], ms=6)
            ax.annotate(f"tuned@{w}", (x, d["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xticks([math.log2(w) for w in widths], [str(w) for w in widths])
    ax.set_xlabel("width (d_model)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(f"final runs: mean ± sd over {p['seeds']} seeds (dots: seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    ax = fig.add_subplot(1, 4, 2)
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

    ax = fig.add_subplot(1, 4, 3)
    gap = summary["gap"]
    gw = sorted({w for g in gap.values() for w in g})
    for k, arm in enumerate(a for a in (*PROXY_ARMS, "sp") if a in gap):
        xs = [i + (k - 2) * 0.16 for i in range(len(gw))]
        pts = [(x, gap[arm][w]) for x, w in zip(xs, gw) if w in gap[arm]]
        ax.bar([x for x, _ in pts], [g["mean"] for _, g in pts], yerr=[g["sd"] for _, g in pts], width=0.15,
               color=COLORS[arm], label=SHORT[arm], capsize=3)
    ax.axhline(GAP_TARGET, color="k", ls="--", lw=1, label=f"target {GAP_TARGET}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(gw)), [f"w{w}" for w in gw])
    ax.set_ylabel("loss − same space tuned at that width (nats/byte)")
    ax.set_title("transfer gap (paired by seed, mean ± sd)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(1, 4, 4)
    per = summary["compute"].get("per_target", {})
    tw = list(per)
    shown = [a for a in ARMS if any(per[w].get(a) for w in tw)]
    bw = 0.8 / max(1, len(shown))
    for k, arm in enumerate(shown):
        vals = [per[w].get(arm, {}).get("flops_frac") for w in tw]
        xs = [i + (k - (len(shown) - 1) / 2) * bw for i in range(len(tw))]
        ax.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width=bw * 0.9, color=COLORS[arm],
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
    ax.set_title("tuning compute (a proxy sweep serves every target)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
def estimate(plan: Plan, store: ResultStore) -> dict:
    """Minutes per arm (2-core reference step times: lr_transfer.est_step_seconds; no pruning, no SP extension;
    final runs already in the store left out): {arm: {"sweep": min, "finals": min, "n_finals": n}}."""
    p, common = plan.p, plan.common
    steps = common["steps"]

    def run_s(w):
        return steps * lr_transfer.est_step_seconds(w, p["batch_size"], p["seq_len"], common["n_layer"])

    fake = {"lr": 2.0 ** -8, "hp": {}, "optimizer": {}}
    saved = plan.best
    plan.best = {**{a: fake for a in PROXY_ARMS}, "tuned_at_target": {w: fake for w in plan.tat_widths()}}
    finals = plan.wanted()
    if "sp" in p["arms"]:
        finals += [plan.sp_cfg(w, s, p["sp_centers"][w]) for w in p["targets"] for s in plan.seeds if s]
    plan.best = saved
    n_lr_only = len(lr_only_space(p, common)["lr"].grid())
    k = p["improved_seeds"]
    sweep = {"mutransfer": p["trials"] * run_s(p["proxy"]), "per_module": p["trials"] * run_s(p["proxy"]),
             "improved": ((p["improved_trials"] + p["improved_refine"]) * k * run_s(p["proxy"])
                          + p["improved_telescope"] * k * run_s(p["targets"][0])),
             "tuned_at_target": sum(p["trials"] * run_s(w) for w in plan.tat_widths()),
             "lr_only": n_lr_only * run_s(p["proxy"]), "sp": 0.0}  # SP's sweep runs are final runs at seed 0
    out = {}
    for arm in p["arms"]:
        todo = [c for c in finals if c["arm"] == arm and not _done(store.get(c))]
        out[arm] = {"sweep": sweep[arm] / 60, "finals": sum(est_seconds(c) for c in todo) / 60, "n_finals": len(todo)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CI smoke run, every arm (~1 minute on 2 cores)")
    ap.add_argument("--preset", choices=[k for k in PRESETS if k != "quick"], default="full",
                    help="full: the original three arms at 128-512 (issue 10); proof: issue 19's proof, every arm "
                         "at 128 and 256")
    ap.add_argument("--arms", nargs="+", choices=ARMS,
                    help="the arms to run now (default: the preset's); the others' finished sweeps and runs are read "
                         "from the store for the summary, so a session can run a few arms at a time")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate per arm, run nothing")
    ap.add_argument("--out", type=str)
    ap.add_argument("--trials", type=int, help="μTransfer / per-module / tuned-at-target trials (a larger number "
                                               "resumes the studies)")
    ap.add_argument("--steps", type=int, help="steps of every run, proxy and target")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--targets", type=int, nargs="+", help="target widths (each needs an SP centre: --sp-center)")
    ap.add_argument("--tuned-at", type=int, nargs="+", dest="tat_widths",
                    help="widths the tuned-at-target arm tunes at (among the targets)")
    ap.add_argument("--sp-center", nargs="+", metavar="W:LOG2LR", help="SP grid centre per width, e.g. 1024:-12")
    ap.add_argument("--jobs", type=int, help="worker processes for the final runs")
    ap.add_argument("--threads", type=int, help="torch threads per final-run job")
    ap.add_argument("--workers", type=int, help="muplify.tune worker processes for the sweeps")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    p = dict(PRESETS["quick" if args.quick else args.preset])
    p["sp_centers"] = dict(p["sp_centers"])
    for tok in args.sp_center or []:
        w, _, x = tok.partition(":")
        p["sp_centers"][int(w)] = float(x)
    for k in ("trials", "steps", "seeds", "targets", "tat_widths", "jobs", "threads", "workers", "out", "arms"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    p["targets"] = sorted(p["targets"])
    p["arms"] = [a for a in ARMS if a in p["arms"]]
    missing = [w for w in p["targets"] if w not in p["sp_centers"]]
    if missing:
        ap.error(f"no SP grid centre for widths {missing}: pass --sp-center W:LOG2LR")
    p["sp_centers"] = {w: p["sp_centers"][w] for w in p["targets"]}
    p["tat_widths"] = sorted(w for w in p["tat_widths"] if w in p["targets"])
    out = Path(p["out"])
    threads = set_threads(p["threads"])
    steps = p["steps"]
    common = dict(steps=steps, batch_size=p["batch_size"], seq_len=p["seq_len"], n_layer=2,
                  warmup=max(1, round(0.1 * steps)), schedule="cosine", weight_decay=0.0, grad_clip=0.0,
                  tie_weights=False, eval_batches=p["eval_batches"], data="stdlib-bytes-v1",
                  optimizer="AdamW(betas=0.9,0.95)")

    store = ResultStore(out / "results.json")
    plan = Plan(p, common, store, {})
    est = estimate(plan, store)
    n_lr_only = len(lr_only_space(p, common)["lr"].grid())
    print(f"μTransfer benchmark: proxy width {p['proxy']}, targets {p['targets']}, {steps} steps, batch "
          f"{p['batch_size']}x{p['seq_len']}, {p['seeds']} seeds; arms now: {', '.join(p['arms'])}\n"
          f"  μTransfer / per-module sweeps {p['trials']} TPE trials; improved: {p['improved_trials']} trials + "
          f"refine {p['improved_refine']} at {p['proxy']}, telescope {p['improved_telescope']} at {p['targets'][0]}, "
          f"x{p['improved_seeds']} seeds each; tuned at the target: {p['trials']} trials at each of "
          f"{plan.tat_widths()}; μP-lr-only grid {n_lr_only} lrs; SP grid {p['sp_points']} lrs per target "
          f"(centres {p['sp_centers']}, extended up to {p['sp_extend']}x)")
    print("estimate per arm (2-core reference step times, no pruning, no SP extension; minutes):")
    for arm, e in est.items():
        print(f"  {arm:>15}: sweep {e['sweep']:6.1f}, final runs ({e['n_finals']:3d}) {e['finals']:6.1f}, "
              f"total {e['sweep'] + e['finals']:6.1f}")
    total = sum(e["sweep"] + e["finals"] for e in est.values())
    print(f"  {'all':>15}: {total:.1f} min ({total / 60:.1f} h); one SP extension at the largest target adds "
          f"{est_seconds(plan.sp_cfg(max(p['targets']), 0, 0)) / 60:.1f} min")
    if args.dry_run:
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

    # 1. the sweeps (resumed from OUT/tune.db); an arm not run now takes its best from the store's record
    phase: dict = {}
    results: dict = {}
    kept = store.data.setdefault("sweeps", {})
    sweeps: dict = {}
    plan.best = {"tuned_at_target": {}}
    todo = [(a, None) for a in ("lr_only", "mutransfer", "per_module", "improved") if a in p["arms"]]
    todo += [("tuned_at_target", w) for w in plan.tat_widths() if "tuned_at_target" in p["arms"]]
    for arm, w in todo:
        name = arm if w is None else f"{arm}@{w}"
        t0 = time.perf_counter()
        where = f"width {w} (base width {p['proxy']})" if w else f"width {p['proxy']}"
        print(f"\n[{SHORT[arm]}] sweep at {where} ({p['workers']} worker(s))", flush=True)
        res = run_sweep(arm, p, common, out, p["workers"]) if w is None else \
            run_tat_sweep(w, p, common, out, p["workers"])
        phase[f"sweep_{name}"] = time.perf_counter() - t0
        res.to_json(str(out / f"tune_{name.replace('@', '_w')}.json"))
        stats = sweep_stats(res, p["improved_seeds"] if arm == "improved" else 1, width=w or p["proxy"])
        kept[name] = {"best": res.best, "stats": stats}
        store.save()
        results[name] = res
        print(res)
    for name, rec in kept.items():
        arm, _, w = name.partition("@")
        if not rec.get("best"):
            continue
        if w:
            if int(w) in plan.tat_widths():
                plan.best["tuned_at_target"][int(w)] = rec["best"]
                sweeps.setdefault("tuned_at_target", {})[int(w)] = rec["stats"]
        elif arm in PROXY_ARMS:
            plan.best[arm], sweeps[arm] = rec["best"], rec["stats"]

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
        made = ["mutransfer.png"]
        for name, png in (("mutransfer", "tune_params.png"), ("lr_only", "tune_lr_only.png"),
                          ("improved", "tune_improved.png"), ("per_module", "tune_per_module.png")):
            if name in results:
                results[name].plot(str(out / png))
                made.append(png)
        if "mutransfer" in results:
            try:
                results["mutransfer"].plot_importance(str(out / "tune_importance.png"))
                made.append("tune_importance.png")
            except Exception as e:  # too few completed trials (quick mode)
                print(f"no importance plot: {e}")
        print(f"\nplots in {out}: {', '.join(made)}")
    print(f"results: {out / 'results.json'}  ({summary['wall_seconds_this_invocation']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
