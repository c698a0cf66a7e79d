"""``muplify.tune``: the phases of a sweep and how the best is named.

1. **global**: ``trials`` trials over the whole box at the proxy width (TPE by default);
2. **refine** (``refine=n``): ``n`` trials in a box narrowed around the incumbent (each searched axis shrunk to
   ``refine_shrink`` of its range, in log space for log entries, kept inside the global box; choices fixed), a fresh
   sampler on that box (TPE restart by default, ``refine_sampler="cmaes"`` for Optuna's CMA-ES); the incumbent is
   its first trial (a second, independent measurement of it);
3. **telescope** (``widths=[64, 128, ...]``): at each larger width, ``telescope_trials`` trials in a box narrowed
   around the incumbent transferred there (``base_width`` stays the smallest width, so every phase tunes the same
   μP hyperparameters), the transferred incumbent first;
4. **re-evaluation** (``reeval_top=n, reeval_seeds=s``): the ``n`` best configurations at the last width run again
   on ``s`` fresh seeds (the same seeds for every candidate); the best is the lowest mean of those runs.

``horizons=[S₁, S₂, S₃]``: the objective gets ``steps=S``; phases 1–4 run at the largest horizon (the main study),
phases 1–2 again at each shorter one (studies ``<study_name>.s<S>``, seeds of their own, so that the samplers try
other points), and the optimum of each searched continuous value is fitted against S as a power law (:mod:`.horizons`).

``seeds_per_trial=k`` makes every trial's value the mean of ``k`` runs (init seed, and data seed when the objective
takes ``seed=``).  The result states the budget split (:meth:`TuneResult.budget`), the best value with its seed
spread and how many trials lie within it, and a :class:`Convergence` report.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch.nn as nn

from .result import Convergence, PhaseRecord, ReevalRecord, TrialRecord, TuneResult
from .samplers import SamplerName
from .horizons import FIT_ATTR, FIT_KEY, FITTED, check_horizons, fit_horizons
from .roles import record_roles, tuned_roles, with_roles
from .space import Choice, Dist, Fixed, IntRange, LogUniform, TuneError, Uniform, config_value, searched, space_to_dict
from .sweep import prepare, run_sweep
from .trial import DEFAULT_STORAGE, DEFAULT_STUDY, SEED_STRIDE, evaluate, takes_seed

log = logging.getLogger("muplify.tune")

PHASE_SEED = 1_000_000  # phase i's trials run under seed + i * PHASE_SEED + trial number (no seed is reused)
HORIZON_PHASE = 100  # the shorter horizon k's global and refine phases are phases 100 + 2k and 101 + 2k
REEVAL_SEED = 50_000_000  # re-evaluation seed j: seed + REEVAL_SEED + j * SEED_STRIDE (fresh, shared by candidates)


# ------------------------------------------------------------------------------------------------ the narrowed box
def narrow(space: Mapping[str, Dist], config: Mapping, shrink: float) -> dict[str, Dist]:
    """The box around ``config``: every searched range shrunk to ``shrink`` of its width (log width for log
    entries), centred on the config's value and shifted to stay inside the range; a Choice fixed at its value."""
    if not (0 < shrink <= 1):
        raise TuneError(f"the shrink factor must be in (0, 1], got {shrink!r}")
    out: dict[str, Dist] = {}
    for key, d in space.items():
        if isinstance(d, Fixed):
            out[key] = d
            continue
        v = config_value(config, key)
        if isinstance(d, Choice):
            out[key] = Fixed(tuple(v) if isinstance(v, list) else v)
            continue
        log_scale = isinstance(d, LogUniform) or (isinstance(d, IntRange) and d.log)
        f, g = (math.log, math.exp) if log_scale else ((lambda x: float(x)), (lambda x: x))
        lo, hi, c = f(d.lo), f(d.hi), f(v)
        half = shrink * (hi - lo) / 2
        a, b = c - half, c + half
        if a < lo:
            a, b = lo, min(hi, lo + 2 * half)
        if b > hi:
            a, b = max(lo, hi - 2 * half), hi
        if isinstance(d, LogUniform):
            out[key] = LogUniform(max(d.lo, g(a)), min(d.hi, g(b)), d.grid_step)
        elif isinstance(d, Uniform):
            out[key] = Uniform(max(d.lo, a), min(d.hi, b), d.grid_points)
        else:  # IntRange: at least the value itself
            ia, ib = max(d.lo, math.floor(g(a))), min(d.hi, math.ceil(g(b)))
            out[key] = (IntRange(min(ia, int(v)), max(ib, int(v)), step=d.step, log=d.log) if ia < ib
                        else Fixed(int(v)))
    return out


def flat_point(space: Mapping[str, Dist], config: Mapping) -> dict[str, Any]:
    """The searched keys' values of ``config`` (what ``enqueue`` takes)."""
    return {k: config_value(config, k) for k in searched(space)}


# ------------------------------------------------------------------------------------------------ tune
def tune(make_model: Callable[[int], nn.Module], width: int | None, objective: Callable[..., float],
         optimizer: Any = "AdamW", *, trials: int = 64, space: Mapping[str, Dist] | None = None,
         defaults: bool = True, sampler: SamplerName | Any = "tpe", pruner: str | Any | None = "median",
         storage: Any = DEFAULT_STORAGE, study_name: str = DEFAULT_STUDY, workers: int = 1,
         threads: int | None = None, seed: int = 0, timeout: float | None = None,
         muplify_kwargs: Mapping[str, Any] | None = None, enqueue: Sequence[Mapping[str, Any]] = (),
         progress: bool = True, seeds_per_trial: int = 1, reeval_top: int = 0, reeval_seeds: int = 3,
         refine: int = 0, refine_shrink: float = 0.3, refine_sampler: SamplerName | str = "tpe",
         widths: Sequence[int] | None = None, telescope_trials: int | None = None,
         telescope_shrink: float = 0.5, batch_size: int | None = None, steps: int | None = None,
         per_module: bool = False, horizons: Sequence[int] | None = None) -> TuneResult:
    """Tune μP hyperparameters on the proxy ``make_model(width)`` and return the best (``result.best``).

    Every trial: ``torch.manual_seed(seed + trial number)``, ``model = make_model(width)``,
    ``mu = muplify(model, base_width=width, hp=...)``, ``opt = mu.optimizer(optimizer, lr=..., **options)``,
    ``value = objective(mu, opt, report, **objective_options)`` (lower is better).  ``report(step, value)`` gives
    the pruner intermediate values (and fails the trial on NaN/inf).  A trial that raises, returns or reports NaN or
    inf is recorded as failed and the sweep goes on.

    - ``space``: ``{"lr": LogUniform(1e-4, 1e-1), "hp.output_mult": Fixed(1.0), "optimizer.weight_decay":
      Choice([0.0, 0.1]), "objective.warmup": IntRange(0, 100)}``, merged into :func:`default_space` of the proxy
      (``defaults=False``: only ``space``).  ``objective.*`` keys are passed as keywords the objective must take.
    - ``sampler``: "tpe" (default), "random", "grid" (LogUniform entries on a powers-of-two grid), "cmaes" (needs
      the ``cmaes`` package) or an Optuna sampler; ``pruner``: "median" (default), "hyperband", None, or an Optuna
      pruner.
    - ``storage``: an Optuna storage URL (default: the SQLite file ``muplify-tune.db`` here), an Optuna storage
      object, or None (in memory: nothing is kept, ``workers=1`` only).  Re-running
      with the same storage and ``study_name`` resumes: the study ends up with ``trials`` finished trials (complete,
      pruned or failed) in total; interrupted trials are run again with the same parameters and seed.  Later
      phases are studies of their own, ``<study_name>.refine`` and ``<study_name>.w<width>``.
    - ``workers``: processes on this machine, each with ``threads`` torch threads (default: the cores this process
      may use divided by ``workers``, at least 1); they coordinate through the storage, so with ``workers > 1``
      ``make_model`` and ``objective`` must be importable (module-level functions, not lambdas).  ``workers=1`` runs
      in this process and leaves its torch threads alone unless ``threads`` is given.
    - ``timeout``: seconds after which no new trial starts (over all phases).
    - ``enqueue``: points to try first, e.g. ``[{"lr": 3e-3}]`` (flat keys; the others are sampled), such as a known
      good configuration; a point the study already holds is not queued again.
    - ``muplify_kwargs``: other arguments of :func:`muplify.muplify` (e.g. ``{"readout_zero_init": True}``), used
      for every trial and recorded in ``result.best["muplify"]`` for the transfer (except ``example_inputs`` and
      ``example_kwargs``, which are passed to every trial but are data, not parametrization).

    Against a noisy objective and an imprecise optimum (see the module docstring and docs/tune.md):

    - ``seeds_per_trial=k``: a trial's value is the mean over ``k`` seeds (init seed; data seed too when the
      objective takes ``seed=``); the per-seed values are in ``TrialRecord.seed_values``.
    - ``reeval_top=n, reeval_seeds=s``: the ``n`` best configurations run again on ``s`` fresh seeds; the best is
      the lowest mean there, ``result.spread`` its seed standard deviation.
    - ``refine=n``: ``n`` more trials in a box narrowed to ``refine_shrink`` of each range around the incumbent,
      sampled by a fresh ``refine_sampler`` ("tpe" or "cmaes").
    - ``widths=[64, 128]``: telescoping: the phases above at ``widths[0]`` (= ``width``), then
      ``telescope_trials`` (default ``max(2, trials // 8)``) trials at each larger width in a box narrowed to
      ``telescope_shrink`` around the transferred incumbent; ``base_width`` is ``widths[0]`` throughout and
      ``result.best["tuned_at"]`` names the width the best was measured at.

    ``batch_size=`` / ``steps=``: the proxy's training regime (what the objective trains with), recorded in the
    study and in ``result.best["regime"]``; ``transfer(..., batch_size=B, steps=S)`` then applies the batch-size
    and duration rules of the optimizer's family (docs/rules.md) from it.
    - ``per_module=True``: the default space searches per-module-kind multipliers (``hp.lr_mult.query``,
      ``hp.init_mult.mlp_out``, ... for the kinds the proxy's plan has; see :func:`default_space`) instead of
      per-role ones; ``result.best["hp"]`` carries them and the transfer applies them by kind.
    - ``horizons=[S1, S2, S3]``: the horizon fit (docs/tune.md, "Horizons").  The objective must take ``steps=``
      (each trial gets its horizon); the global (and refine) phase runs at every horizon, the main study at the
      largest (telescoping and re-evaluation there; ``result.best`` is its best and ``best["regime"]["steps"]`` is
      it), and each searched LogUniform/Uniform value's optimum is fitted as ``a * S**b`` into
      ``result.best["horizon_fit"]`` (and the main study's ``muplify.horizon_fit`` attribute), which
      ``transfer(..., steps=S)`` extrapolates.  ``result.plot_horizons(path)`` draws it.
    """
    widths = _check_widths(width, widths)
    width = widths[0]
    hs = check_horizons(horizons, steps, objective, space)
    main_h = hs[-1] if hs else None
    if hs:  # the main study trains for the largest horizon; objective.steps carries it to the objective
        steps, space = main_h, {**(space or {}), "objective.steps": Fixed(main_h)}
    for name, v, lo in (("seeds_per_trial", seeds_per_trial, 1), ("reeval_top", reeval_top, 0),
                        ("reeval_seeds", reeval_seeds, 1), ("refine", refine, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise TuneError(f"{name} must be an int >= {lo}, got {v!r}")
    if telescope_trials is None:
        telescope_trials = max(2, trials // 8) if isinstance(trials, int) else 2
    if not isinstance(telescope_trials, int) or telescope_trials < 1:
        raise TuneError(f"telescope_trials must be an int >= 1, got {telescope_trials!r}")
    sw = prepare(make_model, width, objective, optimizer, trials=trials, space=space, defaults=defaults,
                 storage=storage, workers=workers, threads=threads, seed=seed, timeout=timeout,
                 muplify_kwargs=muplify_kwargs, seeds_per_trial=seeds_per_trial,
                 regime={"batch_size": batch_size, "steps": steps}, per_module=per_module)
    if hs and not any(isinstance(d, FITTED) for d in searched(sw.space).values()):
        raise TuneError("horizons= fits the optimum of searched LogUniform/Uniform values against the horizon, but "
                        "the space searches none (e.g. space={'lr': LogUniform(1e-4, 1e-1)})")
    deadline = None if timeout is None else time.time() + timeout
    plan = _plan(trials, refine, widths, telescope_trials, seeds_per_trial, reeval_top, reeval_seeds, hs)
    _say(progress, f"tune: budget {plan}")

    def phase(name: str, i: int, w: int, box: Mapping[str, Dist], n: int, smp: Any, study: str,
              points: Sequence[Mapping[str, Any]], run: Any = sw,
              horizon: int | None = main_h) -> tuple[TuneResult, PhaseRecord]:
        res = run_sweep(run, width=w, base_width=width, space=box, trials=n, sampler=smp, pruner=pruner,
                        study_name=study, seed=seed + i * PHASE_SEED, seeds_per_trial=seeds_per_trial, phase=name,
                        enqueue=points, deadline=deadline, progress=progress, horizon=horizon)
        best = res.best["value"] if res.best is not None else None
        return res, PhaseRecord(name, w, n, study, space_to_dict(box), best, n * seeds_per_trial, horizon)

    def explore(run: Any, study: str, horizon: int | None, i: int) -> tuple[list[TuneResult], list[PhaseRecord], dict]:
        """The global phase and the refinement (phases i, i + 1) at the proxy width: the results, their records, the
        incumbent."""
        res, rec = phase("global", i, width, run.space, trials, sampler, study, enqueue, run, horizon)
        if res.best is None:
            _no_trial(res, study)
        out, recs, incumbent = [res], [rec], res.best
        if refine:
            box = narrow(run.space, incumbent, refine_shrink)
            _say(progress, f"tune: refine: {refine} trials at width {width}, box {_box_text(box, run.space)} around "
                           f"trial {incumbent['trial']} ({incumbent['value']:.4g})")
            res, rec = phase("refine", i + 1, width, box, refine, refine_sampler, f"{study}.refine",
                             [flat_point(box, incumbent)], run, horizon)
            out.append(res)
            recs.append(rec)
            if res.best is not None and res.best["value"] < incumbent["value"]:
                incumbent = res.best
        return out, recs, incumbent

    results, records, incumbent = explore(sw, study_name, main_h, 0)
    shorter: list[TuneResult] = []  # the other horizons' studies (same seeds: paired with the main one's trials)
    for k, h in enumerate((hs or [])[:-1]):
        _say(progress, f"tune: horizon {h} steps: {trials} trials at width {width}")
        run = replace(sw, space={**sw.space, "objective.steps": Fixed(h)}, regime={**sw.regime, "steps": h})
        res_h, rec_h, _ = explore(run, f"{study_name}.s{h}", h, HORIZON_PHASE + 2 * k)
        shorter += res_h
        records += rec_h
    for k, w in enumerate(widths[1:]):
        box = narrow(sw.space, incumbent, telescope_shrink)
        _say(progress, f"tune: telescope: {telescope_trials} trials at width {w} (base width {width}), box "
                       f"{_box_text(box, sw.space)} around the transferred incumbent")
        res, rec = phase("telescope", 2 + k, w, box, telescope_trials, sampler, f"{study_name}.w{w}",
                         [flat_point(box, incumbent)])
        if res.best is None:
            _no_trial(res, f"{study_name}.w{w}")
        results.append(res)
        records.append(rec)
        incumbent = res.best

    final_width = widths[-1]
    trials_all: list[TrialRecord] = [t for r in results + shorter for t in r.trials]
    pool = [t for t in trials_all if t.state == "complete" and t.config is not None and t.width == final_width
            and t.horizon == main_h]
    first = results[0]
    reeval: list[ReevalRecord] = []
    spread = None
    if reeval_top:
        reeval = _reeval(sw, pool, reeval_top, reeval_seeds, final_width, width, seed, progress)
        top = min(reeval, key=lambda r: (r.mean, r.trial))
        chosen = next(t for t in pool if (t.phase, t.number) == (top.phase, top.trial))
        value, spread = top.mean, top.std
    else:
        chosen = min(pool, key=lambda t: (t.value, t.width != width, t.number))
        value = chosen.value
        if chosen.seed_values and len(chosen.seed_values) > 1:
            spread = statistics.stdev(chosen.seed_values)
    best = {**chosen.config, "optimizer_class": sw.opt_name, "muplify": dict(sw.recorded), "value": value,
            "trial": chosen.number, "seed": chosen.seed, "width": width}
    roles = tuned_roles(make_model, width, sw.muplify_kwargs)  # what the values act on (issue 18)
    with_roles(best, roles)  # in best["hp"]: muplify(hp=best["hp"]) checks them wherever the values are applied
    record_roles(first.study, roles)
    if chosen.phase != "global" or final_width != width:
        best.update(phase=chosen.phase, tuned_at=final_width)
    if sw.regime:
        best["regime"] = dict(sw.regime)
    if hs:
        best[FIT_KEY] = _fit(sw.space, trials_all, hs, width, progress)
        first.study.set_user_attr(FIT_ATTR, best[FIT_KEY])
    if reeval_top:
        best["value_in_sweep"] = chosen.value
    if spread is not None:
        best["value_spread"] = spread
    within = None if spread is None else sum(t.value <= value + spread for t in pool)
    conv = _convergence(results[0], results[1] if refine else None, spread)
    out = TuneResult(best, first.study, trials_all, sw.space, width, first.storage, first.spec, records, reeval,
                     spread, within, conv,
                     {"make_model": make_model, "objective": objective, "optimizer": optimizer,
                      "muplify_kwargs": sw.muplify_kwargs, "storage": sw.storage, "study_name": study_name,
                      "seed": seed, "sampler": sampler, "pruner": pruner, "data_seed": takes_seed(objective)})
    log.info("%s", out)
    return out


def _check_widths(width: int | None, widths: Sequence[int] | None) -> list[int]:
    if widths is None:
        return [width]
    ws = list(widths)
    if not ws or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in ws) or ws != sorted(set(ws)):
        raise TuneError(f"widths must be increasing ints >= 1, smallest first (the proxy), got {widths!r}")
    if width is not None and width != ws[0]:
        raise TuneError(f"width={width} but widths starts at {ws[0]}: the proxy width is widths[0] (pass width=None "
                        "or the same value)")
    return ws


def _fit(space: Mapping[str, Dist], trials: Sequence[TrialRecord], hs: list[int], width: int,
         progress: bool) -> dict:
    """The horizon fit: each horizon's optimum from its finished trials at the proxy width (global and refine),
    fitted key by key."""
    done = {h: [(t.config, t.value) for t in sorted(trials, key=lambda t: t.number)
                if t.horizon == h and t.width == width and t.state == "complete" and t.config] for h in hs}
    fits = fit_horizons(space, done)
    for f in fits.values():
        _say(progress, f"tune: horizon fit: {f}")
    return {k: f.to_dict() for k, f in fits.items()}


def _plan(trials, refine, widths, telescope_trials, k, reeval_top, reeval_seeds, hs=None) -> str:
    parts = [f"global {trials} trials @{widths[0]}"]
    if refine:
        parts.append(f"refine {refine} @{widths[0]}")
    parts += [f"telescope {telescope_trials} @{w}" for w in widths[1:]]
    n_h = len(hs) if hs else 1
    if hs:
        parts.insert(1 + bool(refine), f"{'both ' if refine else ''}at each horizon {', '.join(map(str, hs))}")
    runs = ((trials + refine) * n_h + telescope_trials * (len(widths) - 1)) * k + reeval_top * reeval_seeds
    text = ", ".join(parts) + (f", x{k} seeds per trial" if k > 1 else "")
    if reeval_top:
        text += f", re-evaluate top {reeval_top} on {reeval_seeds} seeds"
    return text + f" ({runs} objective runs at most)"


def _say(progress: bool, text: str) -> None:
    log.info("%s", text)
    if progress:
        print(text, file=sys.stderr)


def _box_text(box: Mapping[str, Dist], full: Mapping[str, Dist]) -> str:
    parts = []
    for k, d in box.items():
        if isinstance(full.get(k), Fixed):
            continue
        if isinstance(d, Fixed):
            parts.append(f"{k}={d.value!r}")
        else:
            parts.append(f"{k} [{d.lo:.3g}, {d.hi:.3g}]")
    return "{" + ", ".join(parts) + "}"


def _no_trial(res: TuneResult, study_name: str) -> None:
    c = res.counts()
    first = next((t.note for t in res.trials if t.state == "failed"), "")
    raise TuneError(f"no trial completed ({c['failed']} failed, {c['pruned']} pruned, {c['lost']} lost)"
                    + (f"; first failure: {first}" if first else "")
                    + f"; the study {study_name!r} is kept in the storage (load_result() reads it)")


def _reeval(sw, pool: list[TrialRecord], top: int, seeds: int, width: int, base_width: int, seed: int,
            progress: bool) -> list[ReevalRecord]:
    """The ``top`` best distinct configurations run again on ``seeds`` fresh seeds (the same for all)."""
    from .workers import _quiet

    seen, cands = set(), []
    for t in sorted(pool, key=lambda t: (t.value, t.number)):
        key = json.dumps(t.config, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            cands.append(t)
        if len(cands) == top:
            break
    _say(progress, f"tune: re-evaluating the top {len(cands)} on {seeds} fresh seeds at width {width}")
    data_seed = takes_seed(sw.objective) and "objective.seed" not in sw.space
    out = []
    with _quiet():
        for t in cands:
            vals = []
            for j in range(seeds):
                try:
                    vals.append(evaluate(sw.make_model, sw.objective, sw.optimizer, t.config, width=width,
                                         base_width=base_width, seed=seed + REEVAL_SEED + j * SEED_STRIDE,
                                         data_seed=data_seed, muplify_kwargs=sw.muplify_kwargs))
                except ArithmeticError:
                    vals.append(math.inf)  # diverged on this seed: never the best
            finite = [v for v in vals if math.isfinite(v)]
            mean = sum(vals) / len(vals)
            std = statistics.stdev(finite) if len(finite) > 1 and len(finite) == len(vals) else None
            out.append(ReevalRecord(t.number, t.phase, t.value, vals, mean, std))
    return out


def _convergence(glob: TuneResult, ref: TuneResult | None, spread: float | None) -> Convergence:
    done = sorted((t for t in glob.trials if t.state == "complete" and t.value is not None),
                  key=lambda t: t.number)
    vals = [t.value for t in done]
    n = len(vals)
    best = min(vals)
    best_at = vals.index(best)
    q = (3 * n) // 4
    gain = (min(vals[:q]) - best) if q > 0 else 0.0
    last = best_at >= n - max(1, math.ceil(0.1 * n))
    moving = gain > (spread if spread is not None else 0.0)
    ref_gain = None
    if ref is not None and ref.best is not None:
        ref_gain = best - ref.best["value"]
    words = [f"the global phase's best came at completed trial {best_at + 1} of {n}"
             + (" (in the last tenth: the search had not settled)" if last else "")]
    words.append(f"its last quarter improved the best by {gain:.3g}"
                 + (f" (seed spread {spread:.3g})" if spread is not None else "")
                 + ("; still moving: more trials or refine= would likely pay" if moving else "; settled"))
    if ref_gain is not None:
        words.append(f"refinement {'gained' if ref_gain > 0 else 'did not improve on it'} "
                     f"({ref_gain:+.3g}, single measurements: compare with the spread)")
    return Convergence(n, best_at, gain, last, moving, ref_gain, "; ".join(words))
