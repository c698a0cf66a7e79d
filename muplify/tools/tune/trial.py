"""One trial: the seeds, the proxy build (:func:`transfer`), the objective call and its reporter; the trial and
study attributes every other part reads."""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ...reuse import reusing
from .space import Fixed, TuneError, assemble


log = logging.getLogger("muplify.tune")

DEFAULT_STORAGE = "sqlite:///muplify-tune.db"
DEFAULT_STUDY = "muplify-tune"
SPEC_FORMAT = "muplify-tune/1"
# RDB storages made from a URL get Optuna's heartbeat: a trial whose worker stopped beating for GRACE_S seconds
# (killed process, lost machine) is failed and run again with the same parameters and seed
HEARTBEAT_S = 20
GRACE_S = 90
SQLITE_TIMEOUT_S = 120  # how long a worker waits for another worker's write lock on the SQLite file
POLL_S = 1.0  # how often the parent re-reads the study to move the progress bar
MAX_RERUNS = 2  # a lost trial's parameters are queued again at most this many times
WAIT_S = 1.0  # a worker with nothing left to start re-checks the trials still running this often

# per-trial user attributes (visible in optuna-dashboard)
SEED_ATTR = "muplify.seed"  # the seed the proxy was built and trained under
WORKER_ATTR = "muplify.worker"  # "host:pid" of the process that ran the trial
FAILURE_ATTR = "muplify.failure"  # why the objective failed (exception, NaN, divergence): the trial's verdict
RETRY_ATTR = "muplify.retry_of"  # number of the interrupted trial this one re-runs
SPEC_ATTR = "muplify.tune"  # study attribute: what the sweep was made for (width, space, optimizer, ...)
VALUES_ATTR = "muplify.seed_values"  # seeds_per_trial > 1: the value under each seed (the trial's is their mean)
SEED_STRIDE = 100_003  # seed j of a trial is its seed + j * SEED_STRIDE (no collision with other trials' seeds)
INPUT_KWARGS = ("example_inputs", "example_kwargs")  # muplify() arguments that are data, not parametrization


class Diverged(ArithmeticError):
    """The objective reported or returned NaN/inf; the trial is recorded as failed (raise it yourself for other
    signs of divergence)."""


# ================================================================================================ one trial
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2 ** 32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def transfer(make_model: Callable[[int], nn.Module], config: Mapping, optimizer: Any = "AdamW", *,
             width: int | None = None, base_width: int | None = None, seed: int | None = None,
             batch_size: int | None = None, steps: int | None = None,
             **muplify_kwargs) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Build ``make_model(width)`` (under ``seed`` when given), muplify it relative to ``base_width`` with
    ``config["hp"]`` and make its optimizer with ``config["lr"]`` and ``config["optimizer"]``.

    ``config`` is ``result.best`` (or a trial's configuration); ``width`` and ``base_width`` default to its
    ``"width"`` (the proxy width), ``muplify_kwargs`` to its ``"muplify"``.  At the proxy width this is exactly what a
    trial ran (the same seed reproduces it); at a larger width it is the μTransfer.

    ``batch_size=`` / ``steps=``: the target run's regime; the proxy's is ``config["regime"]`` (recorded by
    ``tune(..., batch_size=, steps=)``, or pass ``base_batch_size=`` / ``base_steps=``), and the optimizer family's
    batch-size and duration rules scale lr, ε, weight decay and the betas (docs/rules.md).

    With a horizon fit (``tune(..., horizons=)``: ``config["horizon_fit"]``), ``steps=S`` first sets each fitted
    value to its power law at S (a fitted value gets no duration rule on top; docs/tune.md, "Horizons"); the fits
    and their uncertainty are logged and written to every param group's ``"mup_horizon"`` and ``mu.plan.notes``;
    a warning when S is beyond 10x the largest tuned horizon.
    """
    from .horizons import at_horizon

    proxy = config.get("width")
    width = width if width is not None else proxy
    base_width = base_width if base_width is not None else proxy
    if width is None or base_width is None:
        raise TuneError("transfer() needs width= and base_width= (or a config with 'width', e.g. result.best)")
    kwargs = {**dict(config.get("muplify") or {}), **muplify_kwargs}
    config, rule_steps, fit_text = at_horizon(config, steps)
    recorded = dict(config.get("regime") or {})
    for key, given in (("batch_size", batch_size), ("steps", steps)):
        base_key = f"base_{key}"
        if recorded.get(key) is not None:
            kwargs.setdefault(base_key, recorded[key])
        if given is not None and kwargs.get(base_key) is None:
            raise TuneError(f"transfer(..., {key}={given!r}) needs the proxy's {key.replace('_', ' ')}: the config "
                            f"records none (tune(..., {key}=) records it in result.best['regime']); pass "
                            f"{base_key}=")
    if seed is not None:
        seed_everything(seed)
    model = make_model(width)
    if not isinstance(model, nn.Module):
        raise TuneError(f"make_model({width}) returned {type(model).__name__}, not an nn.Module")
    mu = _muplify_as_tuned(make_model, model, config, width, base_width, kwargs)
    regime = {k: v for k, v in (("batch_size", batch_size), ("steps", rule_steps)) if v is not None}
    opt = mu.optimizer(optimizer, lr=config["lr"], **dict(config.get("optimizer") or {}), **regime)
    if fit_text is not None:
        log.info("%s", fit_text)
        mu.plan.notes.append(fit_text)
        for g in opt.param_groups:
            g["mup_horizon"] = fit_text
    return mu, opt


def _muplify_as_tuned(make_model, model, config: Mapping, width: int, base_width: int, kwargs: dict):
    """muplify ``model`` with the roles read from two widths (the proxy's are the target's, :mod:`.roles`); the hp
    carries the roles the values were tuned under (``config["hp"]["tuned_roles"]``, or an older ``best.json``'s
    ``config["roles"]``), so muplify itself refuses a target whose roles differ, before changing it."""
    from ...core import muplify
    from .roles import build_on_meta, hp_with_roles, proxy_fixes

    hp = hp_with_roles(config)
    if "plan" in kwargs or "base" in kwargs:  # the user fixed the analysis: only the check
        return muplify(model, base_width=base_width, hp=hp, **kwargs)
    if width != base_width:  # the exact route: an axis scales exactly when its size differs from the proxy's
        try:
            base = build_on_meta(make_model, base_width)
        except Exception as e:  # noqa: BLE001 - only the meta build: a factory that needs real tensors
            warnings.warn(f"muplify.tune: the factory could not build the proxy on the meta device "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); the target's "
                          "roles come from its own analysis at base_width, then checked against the tuned ones",
                          stacklevel=4)
            base = None
        if base is not None:
            return muplify(model, base=base, hp=hp, **kwargs)
        return muplify(model, base_width=base_width, hp=hp, **kwargs)
    fixes = proxy_fixes(make_model, model, base_width, kwargs)
    overrides = {**fixes, **dict(kwargs.pop("overrides", None) or {})}
    return muplify(model, base_width=base_width, hp=hp, overrides=overrides or None, **kwargs)


class _Reporter:
    """The ``report(step, value)`` an objective gets: intermediate values for the pruner (``trial`` None, or a
    trial's second and later seeds: only the NaN/inf check)."""

    def __init__(self, trial, prune: bool = True):
        self.trial, self.prune = trial, prune and trial is not None

    def __call__(self, step: int, value: float) -> None:
        import optuna

        v = float(value)
        if not math.isfinite(v):
            raise Diverged(f"reported {v} at step {step}")
        if not self.prune:
            return
        self.trial.report(v, int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {v:.4g})")


def takes_keyword(objective: Callable, name: str) -> bool:
    """Whether the objective takes the keyword ``name`` (or ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(objective).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def takes_seed(objective: Callable) -> bool:
    """Whether the objective takes a ``seed`` keyword (its data seed, e.g. the built-in ``byte_lm``)."""
    return takes_keyword(objective, "seed")


def evaluate(make_model: Callable[[int], nn.Module], objective: Callable[..., float], optimizer: Any, config: Mapping,
             *, width: int, base_width: int, seed: int, data_seed: bool, muplify_kwargs: Mapping, report=None) -> float:
    """One run of the objective on ``config`` at ``width`` (relative to ``base_width``) under ``seed``: the init
    seed always, the data seed too (``objective(..., seed=seed)``) when ``data_seed``.  NaN/inf raise Diverged."""
    mu, opt = transfer(make_model, config, optimizer, width=width, base_width=base_width, seed=seed, **muplify_kwargs)
    kwargs = dict(config.get("objective") or {})
    if data_seed:
        kwargs["seed"] = seed
    value = float(objective(mu, opt, report if report is not None else _Reporter(None), **kwargs))
    if not math.isfinite(value):
        raise Diverged(f"the objective returned {value}")
    return value


def _one_line(e: BaseException) -> str:
    where = ""
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        last = tb[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})"
    msg = " ".join(str(e).split())
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return (text[:400] + "...") if len(text) > 400 else text + where


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class _Job:
    """Everything a worker process needs (pickled to it)."""

    make_model: Callable[[int], nn.Module]
    objective: Callable[..., float]
    width: int  # the width trials build
    optimizer: Any  # class or torch.optim name
    space: dict  # key -> Dist
    storage: Any  # URL or an Optuna storage object
    study_name: str
    sampler: Any  # name in SAMPLERS or an Optuna sampler
    pruner: Any  # name in PRUNERS, None, or an Optuna pruner
    budget: int  # finished trials (complete + pruned + failed) the study should hold
    seed: int
    threads: int | None  # torch threads in this worker (None: leave as is)
    deadline: float | None  # time.time() after which no trial starts
    muplify_kwargs: dict
    base_width: int | None = None  # the μP base width (None: = width, the proxy itself)
    seeds_per_trial: int = 1  # a trial's value is the mean over this many seeds
    data_seed: bool = False  # pass each seed to the objective as seed= too


def _run_trial(job: _Job, trial) -> float:
    import optuna

    seed = trial.user_attrs.get(SEED_ATTR)
    if seed is None:  # a retried trial keeps the seed of the run it replaces
        seed = job.seed + trial.number
        trial.set_user_attr(SEED_ATTR, seed)
    trial.set_user_attr(WORKER_ATTR, _worker_id())
    base = job.base_width if job.base_width is not None else job.width
    try:
        values = {k: (d.value if isinstance(d, Fixed) else d.suggest(trial, k)) for k, d in job.space.items()}
        cfg = assemble(values)
        runs = []
        # every trial of this worker builds the same model at the same width: analysed once (muplify.reuse)
        with reusing(scope=("tune", job.study_name, job.width)):
            for j in range(job.seeds_per_trial):  # the first seed reports to the pruner; the others add to the mean
                runs.append(evaluate(job.make_model, job.objective, job.optimizer, cfg, width=job.width,
                                     base_width=base, seed=seed + j * SEED_STRIDE, data_seed=job.data_seed,
                                     muplify_kwargs=job.muplify_kwargs, report=_Reporter(trial, prune=j == 0)))
        if job.seeds_per_trial > 1:
            trial.set_user_attr(VALUES_ATTR, runs)
        value = sum(runs) / len(runs)
    except optuna.TrialPruned:
        raise
    except Exception as e:
        trial.set_user_attr(FAILURE_ATTR, _one_line(e))
        raise
    return value
