"""``muplify.tune``: sweep μP hyperparameters on a small proxy with Optuna, then transfer them to the target.

    def objective(model, optimizer, report):       # your own training loop on the proxy
        ...; report(step, val_loss)                 # lets the pruner stop hopeless trials early
        return val_loss                             # lower is better

    result = muplify.tune(make_model, width=64, objective=objective, optimizer=torch.optim.AdamW,
                          trials=64, storage="sqlite:///tune.db", workers=2)
    mu = muplify(make_model(1024), base_width=64, hp=result.best["hp"])                   # the transfer
    opt = mu.optimizer(torch.optim.AdamW, lr=result.best["lr"], **result.best["optimizer"])

Each trial builds ``make_model(width)`` under its own seed, muplifies it with ``base_width=width`` (so the proxy *is*
the base model and what is tuned is exactly what transfers), makes ``mu.optimizer(optimizer, lr=..., **options)``
and calls the objective.  Optuna does the rest: the study, the sampler (TPE by default), the pruner (median), the
storage (a SQLite file by default; any Optuna storage URL, e.g. PostgreSQL, for workers on several machines).
The search space, its default ranges, how workers share the cores and how a sweep resumes are in ``docs/tune.md``.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import multiprocessing
import os
import pickle
import random
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn as nn

from ..errors import MuplifyError
from ..plan import HyperParams, Plan
from .tune_space import (DISTS, HP_ACTS_ON, Choice, Dist, Fixed, IntRange, LogUniform, TuneError, Uniform, assemble,
                         check_key, default_space, encode_point, is_number, parse_dist, plan_roles, searched,
                         space_from_dict, space_to_dict)

__all__ = ["tune", "transfer", "load_result", "default_space", "parse_dist", "TuneResult", "TrialRecord",
           "LogUniform", "Uniform", "IntRange", "Choice", "Fixed", "TuneError", "Diverged", "DEFAULT_STORAGE",
           "DEFAULT_STUDY"]

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
             **muplify_kwargs) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Build ``make_model(width)`` (under ``seed`` when given), muplify it relative to ``base_width`` with
    ``config["hp"]`` and make its optimizer with ``config["lr"]`` and ``config["optimizer"]``.

    ``config`` is ``result.best`` (or a trial's configuration); ``width`` and ``base_width`` default to its
    ``"width"`` (the proxy width), ``muplify_kwargs`` to its ``"muplify"``.  At the proxy width this is exactly what a
    trial ran (the same seed reproduces it); at a larger width it is the μTransfer.
    """
    from ..core import muplify

    proxy = config.get("width")
    width = width if width is not None else proxy
    base_width = base_width if base_width is not None else proxy
    if width is None or base_width is None:
        raise TuneError("transfer() needs width= and base_width= (or a config with 'width', e.g. result.best)")
    kwargs = {**dict(config.get("muplify") or {}), **muplify_kwargs}
    if seed is not None:
        seed_everything(seed)
    model = make_model(width)
    if not isinstance(model, nn.Module):
        raise TuneError(f"make_model({width}) returned {type(model).__name__}, not an nn.Module")
    mu = muplify(model, base_width=base_width, hp=config.get("hp") or {}, **kwargs)
    opt = mu.optimizer(optimizer, lr=config["lr"], **dict(config.get("optimizer") or {}))
    return mu, opt


class _Reporter:
    """The ``report(step, value)`` an objective gets: intermediate values for the pruner."""

    def __init__(self, trial):
        self.trial = trial

    def __call__(self, step: int, value: float) -> None:
        import optuna

        v = float(value)
        if not math.isfinite(v):
            raise Diverged(f"reported {v} at step {step}")
        self.trial.report(v, int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {v:.4g})")


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
    width: int
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


def _run_trial(job: _Job, trial) -> float:
    import optuna

    seed = trial.user_attrs.get(SEED_ATTR)
    if seed is None:  # a retried trial keeps the seed of the run it replaces
        seed = job.seed + trial.number
        trial.set_user_attr(SEED_ATTR, seed)
    trial.set_user_attr(WORKER_ATTR, _worker_id())
    try:
        values = {k: (d.value if isinstance(d, Fixed) else d.suggest(trial, k)) for k, d in job.space.items()}
        cfg = assemble(values)
        mu, opt = transfer(job.make_model, cfg, job.optimizer, width=job.width, base_width=job.width, seed=seed,
                           **job.muplify_kwargs)
        value = float(job.objective(mu, opt, _Reporter(trial), **cfg["objective"]))
        if not math.isfinite(value):
            raise Diverged(f"the objective returned {value}")
    except optuna.TrialPruned:
        raise
    except Exception as e:
        trial.set_user_attr(FAILURE_ATTR, _one_line(e))
        raise
    return value


# ================================================================================================ storage & study
def _is_sqlite(storage: Any) -> bool:
    return isinstance(storage, str) and storage.startswith("sqlite")


def open_storage(storage: Any):
    """An Optuna storage from a URL (RDB with heartbeat; SQLite waits for locks and uses WAL) or the object."""
    if not isinstance(storage, str):
        return storage
    import optuna
    import sqlalchemy

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if _is_sqlite(storage) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            st = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                            grace_period=GRACE_S)
    except ImportError as e:
        raise TuneError(f"cannot open storage {storage!r}: its database driver is missing ({e}); for PostgreSQL: "
                        "pip install psycopg2-binary") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError, ValueError) as e:
        msg = " ".join(str(e).split())[:300]
        raise TuneError(f"cannot open storage {storage!r}: {msg} (use e.g. sqlite:///tune.db or "
                        "postgresql://user@host:5432/db)") from None
    if _is_sqlite(storage) and ":memory:" not in storage:
        # WAL: the progress reader and the workers do not block each other (the mode is stored in the file)
        with st.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return st


def _open_study(job: _Job, storage_obj, worker: int):
    import numpy as np
    import optuna

    study = optuna.load_study(study_name=job.study_name, storage=storage_obj)
    # seeds differ per worker and per resume (the count of trials at start), or two workers, or a resumed run,
    # would draw the same parameters again
    n0 = len(study.get_trials(deepcopy=False))
    sampler_seed = int(np.random.SeedSequence([job.seed, worker, n0]).generate_state(1)[0])
    if job.sampler == "grid":
        # Optuna's GridSampler shuffles the grid with its seed and stores grid ids: every worker and every resume
        # must share one seed, or the same id names different points (points repeated, others skipped)
        sampler_seed = job.seed
    study.sampler = make_sampler(job.sampler, job.space, sampler_seed, job.budget)
    study.pruner = make_pruner(job.pruner)
    return study


def _tpe(space, seed, budget):
    import optuna

    # multivariate: lr and the per-role multipliers interact; constant_liar: parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=max(4, min(10, budget // 4)))


def _random(space, seed, budget):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space, seed, budget):
    import optuna

    return optuna.samplers.GridSampler({k: d.grid() for k, d in searched(space).items()}, seed=seed)


SAMPLERS: dict[str, Callable] = {"tpe": _tpe, "random": _random, "grid": _grid}
SamplerName = Literal["tpe", "random", "grid"]


def make_sampler(spec: Any, space: Mapping[str, Dist], seed: int, budget: int):
    import optuna

    if isinstance(spec, optuna.samplers.BaseSampler):
        spec.reseed_rng()  # a copy in each worker: do not draw the same sequence twice
        return spec
    if spec not in SAMPLERS:
        raise TuneError(f"sampler must be one of {sorted(SAMPLERS)} or an optuna sampler, got {spec!r}")
    return SAMPLERS[spec](space, seed, budget)


def _median():
    import optuna

    # no pruning before 5 trials finished (a median of fewer is noise), nor on a trial's first report
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _hyperband():
    import optuna

    return optuna.pruners.HyperbandPruner()


def _nop():
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable] = {"median": _median, "hyperband": _hyperband, "none": _nop}


def make_pruner(spec: Any):
    import optuna

    if spec is None:
        return _nop()
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    if spec not in PRUNERS:
        raise TuneError(f"pruner must be one of {sorted(PRUNERS)}, None or an optuna pruner, got {spec!r}")
    return PRUNERS[spec]()


# ------------------------------------------------------------------------------------------------ trial states
TrialStateName = Literal["complete", "pruned", "failed", "lost", "running", "waiting"]


def trial_state(t) -> TrialStateName:
    """complete | pruned | failed (the objective failed: exception, NaN, divergence) | lost (interrupted:
    Ctrl-C, a killed worker; run again on resume) | running | waiting (queued)."""
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL:
        return "failed" if FAILURE_ATTR in t.user_attrs else "lost"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
            TrialState.WAITING: "waiting"}[t.state]


COUNTED = ("complete", "pruned", "failed")  # "finished": what the budget `trials` counts


def _pending(trials) -> int:
    """Finished trials plus running ones (which will finish): a worker starts a trial only below the budget."""
    return sum(trial_state(t) in COUNTED + ("running",) for t in trials)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) still answers kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _detects_dead_workers(storage: Any) -> bool:
    """Whether a trial whose worker died will be noticed (our URL storages beat; a user's object may not)."""
    if isinstance(storage, str):
        return True
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def _recover(study, job: _Job) -> None:
    """Fail running trials whose worker is gone (heartbeat; on a SQLite file also a dead local pid), then queue
    every lost trial once more with its parameters and seed: nothing interrupted is lost, nothing finished repeats."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if _is_sqlite(job.storage):  # one machine: a worker pid that no longer exists cannot finish its trial
        host = socket.gethostname()
        for t in trials:
            w = str(t.user_attrs.get(WORKER_ATTR, ""))
            h, _, pid = w.rpartition(":")
            if t.state == TrialState.RUNNING and h == host and pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, ValueError):
                    study.tell(t.number, state=TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    by_number = {t.number: t for t in trials}

    def reruns(t) -> int:  # how many times these parameters were lost already
        n = 0
        while RETRY_ATTR in t.user_attrs and t.user_attrs[RETRY_ATTR] in by_number:
            t, n = by_number[t.user_attrs[RETRY_ATTR]], n + 1
        return n

    for t in trials:
        # a configuration that took its worker down MAX_RERUNS + 1 times (a segfault, sys.exit) is not tried again
        if trial_state(t) == "lost" and t.number not in retried and reruns(t) < MAX_RERUNS:
            attrs = {RETRY_ATTR: t.number}
            if SEED_ATTR in t.user_attrs:
                attrs[SEED_ATTR] = t.user_attrs[SEED_ATTR]
            study.enqueue_trial(dict(t.params), user_attrs=attrs)


# ================================================================================================ workers
@contextlib.contextmanager
def _quiet():
    """Optuna's per-trial log lines and experimental warnings, and muplify's lint on every proxy build, would bury
    the progress bar (the lint was shown once by the preflight; failures are printed one line each)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="muplify: ")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _work(job: _Job, worker: int, lock, storage_obj=None, on_trial: Callable[[], None] | None = None) -> None:
    """Run trials until the study holds ``job.budget`` finished trials (or the deadline passes).  When the trials
    still needed are running elsewhere, wait for them: if their worker dies they are lost and run here again."""
    import optuna

    study = _open_study(job, storage_obj if storage_obj is not None else open_storage(job.storage), worker)
    watch = _detects_dead_workers(job.storage)
    while job.deadline is None or time.time() < job.deadline:
        lock.acquire()
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                lock.release()

        def func(trial) -> float:
            release()  # Optuna asked for this trial under the lock: the budget check and the ask are one step
            return _run_trial(job, trial)

        try:
            _recover(study, job)
            trials = study.get_trials(deepcopy=False)
            if sum(trial_state(t) in COUNTED for t in trials) >= job.budget:
                return
            idle = _pending(trials) >= job.budget
            if idle and not watch:
                return
            if not idle:
                try:
                    study.optimize(func, n_trials=1, catch=(Exception,), gc_after_trial=False)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker declared this trial stale meanwhile; it is queued again
        finally:
            release()
        if on_trial is not None:
            on_trial()
        if idle:  # the last trials run elsewhere: wait for them, and re-run any whose worker dies
            time.sleep(WAIT_S)


def _worker_main(job: _Job, worker: int, lock, errors) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter, no forked threads or DB connections)."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    try:
        with _quiet():
            _work(job, worker, lock)
    except KeyboardInterrupt:
        errors.put((worker, "interrupted"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        errors.put((worker, _one_line(e)))
        raise


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class _Progress:
    """tqdm bar over finished trials (of the whole study: other machines' trials count too), with the best value;
    prints one line per failed trial."""

    def __init__(self, study, budget: int, enabled: bool):
        from tqdm.auto import tqdm

        self.study, self.budget, self.enabled = study, budget, enabled
        trials = study.get_trials(deepcopy=False)
        self.seen = {t.number for t in trials if trial_state(t) == "failed"}
        done = min(budget, sum(trial_state(t) in COUNTED for t in trials))
        self.bar = tqdm(total=budget, initial=done, desc="tune", unit="trial", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)
        self.poll()

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        states = [trial_state(t) for t in trials]
        done = min(self.budget, sum(s in COUNTED for s in states))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        best = min((t.value for t, s in zip(trials, states) if s == "complete"), default=None)
        self.bar.set_postfix_str(f"best {best:.4g}, pruned {states.count('pruned')}, failed {states.count('failed')}"
                                 if best is not None else f"failed {states.count('failed')}", refresh=True)
        for t, s in zip(trials, states):
            if s == "failed" and t.number not in self.seen:
                self.seen.add(t.number)
                if self.enabled:
                    self.bar.write(f"trial {t.number} failed: {t.user_attrs.get(FAILURE_ATTR)}", file=sys.stderr)

    def close(self) -> None:
        self.poll()
        self.bar.close()


# ================================================================================================ tune
def tune(make_model: Callable[[int], nn.Module], width: int, objective: Callable[..., float],
         optimizer: Any = "AdamW", *, trials: int = 64, space: Mapping[str, Dist] | None = None,
         defaults: bool = True, sampler: SamplerName | Any = "tpe", pruner: str | Any | None = "median",
         storage: Any = DEFAULT_STORAGE, study_name: str = DEFAULT_STUDY, workers: int = 1,
         threads: int | None = None, seed: int = 0, timeout: float | None = None,
         muplify_kwargs: Mapping[str, Any] | None = None, enqueue: Sequence[Mapping[str, Any]] = (),
         progress: bool = True) -> "TuneResult":
    """Tune μP hyperparameters on the proxy ``make_model(width)`` and return the best (``result.best``).

    Every trial: ``torch.manual_seed(seed + trial number)``, ``model = make_model(width)``,
    ``mu = muplify(model, base_width=width, hp=...)``, ``opt = mu.optimizer(optimizer, lr=..., **options)``,
    ``value = objective(mu, opt, report, **objective_options)`` (lower is better).  ``report(step, value)`` gives
    the pruner intermediate values (and fails the trial on NaN/inf).  A trial that raises, returns or reports NaN or
    inf is recorded as failed and the sweep goes on.

    - ``space``: ``{"lr": LogUniform(1e-4, 1e-1), "hp.output_mult": Fixed(1.0), "optimizer.weight_decay":
      Choice([0.0, 0.1]), "objective.warmup": IntRange(0, 100)}``, merged into :func:`default_space` of the proxy
      (``defaults=False``: only ``space``).  ``objective.*`` keys are passed as keywords the objective must take.
    - ``sampler``: "tpe" (default), "random", "grid" (LogUniform entries on a powers-of-two grid) or an Optuna
      sampler; ``pruner``: "median" (default), "hyperband", None, or an Optuna pruner.
    - ``storage``: an Optuna storage URL (default: the SQLite file ``muplify-tune.db`` here), an Optuna storage
      object, or None (in memory: nothing is kept, ``workers=1`` only).  Re-running
      with the same storage and ``study_name`` resumes: the study ends up with ``trials`` finished trials (complete,
      pruned or failed) in total; interrupted trials are run again with the same parameters and seed.
    - ``workers``: processes on this machine, each with ``threads`` torch threads (default: the cores this process
      may use divided by ``workers``, at least 1); they coordinate through the storage, so with ``workers > 1``
      ``make_model`` and ``objective`` must be importable (module-level functions, not lambdas).  ``workers=1`` runs
      in this process and leaves its torch threads alone unless ``threads`` is given.
    - ``timeout``: seconds after which no new trial starts.
    - ``enqueue``: points to try first, e.g. ``[{"lr": 3e-3}]`` (flat keys; the others are sampled), such as a known
      good configuration; a point the study already holds is not queued again.
    - ``muplify_kwargs``: other arguments of :func:`muplify.muplify` (e.g. ``{"readout_zero_init": True}``), used
      for every trial and recorded in ``result.best["muplify"]`` for the transfer (except ``example_inputs`` and
      ``example_kwargs``, which are passed to every trial but are data, not parametrization).
    """
    import optuna

    opt_name = _check_args(make_model, width, objective, optimizer, trials, workers, threads, seed, timeout)
    mkw = dict(muplify_kwargs or {})
    recorded = {k: v for k, v in mkw.items() if k not in INPUT_KWARGS}
    try:
        json.dumps(recorded, allow_nan=False)
    except (TypeError, ValueError):
        raise TuneError("muplify_kwargs other than example inputs must be JSON-able (they are recorded in "
                        f"result.best for the transfer): got {recorded!r}") from None
    if isinstance(storage, str) and ":memory:" in storage:
        raise TuneError("an in-memory SQLite storage disappears with its connection: use a file, e.g. "
                        "storage='sqlite:///tune.db', or storage=None (in memory, workers=1)")
    if storage is None or isinstance(storage, optuna.storages.InMemoryStorage):
        if workers > 1:
            raise TuneError(f"workers={workers} coordinate through the storage: use a file (sqlite:///tune.db) or "
                            "a database URL, not an in-memory storage")
        storage = storage or optuna.storages.InMemoryStorage()
    elif not isinstance(storage, str) and workers > 1:
        try:
            pickle.dumps(storage)
        except Exception as e:  # noqa: BLE001
            raise TuneError(f"workers={workers} need a storage every process can open: pass its URL ({e})") from None

    plan = _preflight(make_model, width, seed, mkw)
    full = dict(default_space(plan, optimizer)) if defaults else {}
    for key, d in (space or {}).items():
        check_key(key)
        if not isinstance(d, tuple(DISTS.values())):
            raise TuneError(f"space[{key!r}] must be LogUniform, Uniform, IntRange, Choice or Fixed, got {d!r}")
        full[key] = d
    _check_space(full, plan, make_model, width, objective, optimizer, seed, mkw)

    budget = trials
    if sampler == "grid":
        n_grid = math.prod(len(d.grid()) for d in searched(full).values())
        budget = min(trials, n_grid)
    make_sampler(sampler, full, seed, budget)  # a bad name fails here, not in every worker
    make_pruner(pruner)
    spec = {"format": SPEC_FORMAT, "width": width, "optimizer": opt_name, "space": space_to_dict(full),
            "muplify": recorded, "seed": seed}
    points = [encode_point(full, p) for p in enqueue]
    storage_obj = open_storage(storage)
    study = _create_study(storage_obj, study_name, spec)
    for p in points:
        study.enqueue_trial(p, skip_if_exists=True)

    job = _Job(make_model, objective, width, optimizer, full, storage, study_name,
               sampler, pruner, budget, seed, threads if workers == 1 else (threads or max(1, cores() // workers)),
               None if timeout is None else time.time() + timeout, mkw)
    if workers == 1:
        _run_here(job, study, storage_obj, progress)
    else:
        _run_workers(job, study, workers, progress)
    result = _result(study, spec, storage if isinstance(storage, str) else None)
    if result.best is None:
        c = result.counts()
        first = next((t.note for t in result.trials if t.state == "failed"), "")
        raise TuneError(f"no trial completed ({c['failed']} failed, {c['pruned']} pruned, {c['lost']} lost)"
                        + (f"; first failure: {first}" if first else "")
                        + f"; the study {study_name!r} is kept in the storage (load_result() reads it)")
    return result


def _check_args(make_model, width, objective, optimizer, trials, workers, threads, seed, timeout) -> str:
    from ..optim import resolve_optimizer

    if not callable(make_model):
        raise TuneError(f"make_model must be a callable width -> nn.Module, got {make_model!r}")
    if not callable(objective):
        raise TuneError(f"objective must be a callable (model, optimizer, report) -> float, got {objective!r}")
    for name, v, lo in (("width", width, 1), ("trials", trials, 1), ("workers", workers, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise TuneError(f"{name} must be an int >= {lo}, got {v!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise TuneError(f"threads must be an int >= 1 or None, got {threads!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TuneError(f"seed must be an int, got {seed!r}")
    if timeout is not None and not (is_number(timeout) and timeout > 0):
        raise TuneError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        cls = resolve_optimizer(optimizer)
    except MuplifyError as e:
        raise TuneError(str(e)) from None
    return f"{cls.__module__}.{cls.__qualname__}"


def _preflight(make_model, width: int, seed: int, mkw: dict) -> Plan:
    """Build the proxy once: its plan decides the default space (and muplify's lint is shown here, once)."""
    from ..core import muplify

    seed_everything(seed)
    model = make_model(width)
    if not isinstance(model, nn.Module):
        raise TuneError(f"make_model({width}) returned {type(model).__name__}, not an nn.Module")
    return muplify(model, base_width=width, **mkw).plan


def _check_space(space, plan, make_model, width, objective, optimizer, seed, mkw) -> None:
    """Catch what would fail every trial before the sweep starts: a role the model lacks, an hp the model cannot
    take (attn_mult without a query projection), an unknown optimizer option or objective keyword."""
    if "lr" not in space:
        raise TuneError("the search space needs 'lr' (e.g. space={'lr': Fixed(1e-3)} with defaults=False)")
    roles = plan_roles(plan)
    for key in space:
        head, _, rest = key.partition(".")
        name, _, role = rest.partition(".")
        if head == "hp" and name in HP_ACTS_ON and not HP_ACTS_ON[name][0](plan):
            raise TuneError(f"space key {key!r}: {HP_ACTS_ON[name][1]}, so it would change nothing; drop it")
        for r in role.split("+") if head == "hp" and role else ():
            if r not in roles:
                raise TuneError(f"space key {key!r}: no parameter of this model has role {r!r} (roles present: "
                                f"{', '.join(roles)})")
    cfg = assemble({k: d.center() for k, d in space.items()})
    try:
        plan.replace(hp=HyperParams.from_dict(cfg["hp"])).rules()
    except MuplifyError as e:
        raise TuneError(f"the search space's hp do not fit this model: {e}") from None
    try:
        sig = inspect.signature(objective)
        sig.bind(None, None, None, **cfg["objective"])
    except TypeError as e:
        keys = [f"objective.{k}" for k in cfg["objective"]]
        raise TuneError(f"the objective must take (model, optimizer, report{', ' if keys else ''}"
                        f"{', '.join(k.split('.', 1)[1] + '=' for k in keys)}): {e}") from None
    except ValueError:  # no signature (a builtin): nothing to check
        pass
    from ..optim import resolve_optimizer

    try:
        params = inspect.signature(resolve_optimizer(optimizer)).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in cfg["optimizer"] if params and not takes_any and k not in params]
    if unknown:
        name = resolve_optimizer(optimizer).__name__
        raise TuneError(f"space keys {[f'optimizer.{k}' for k in unknown]}: {name} takes no option {unknown[0]!r} "
                        f"(it takes {', '.join(p for p in params if p != 'params')})")


def _create_study(storage_obj, study_name: str, spec: dict):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(storage=storage_obj, study_name=study_name, direction="minimize",
                                        load_if_exists=True)
        finally:
            optuna.logging.set_verbosity(level)
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise TuneError(f"study {study_name!r} maximizes; muplify.tune minimizes: choose another study_name")
    spec = json.loads(json.dumps(spec))
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise TuneError(f"study {study_name!r} exists in the storage and was not made by muplify.tune: choose "
                            "another study_name")
        study.set_user_attr(SPEC_ATTR, spec)
    elif stored != spec:
        diff = [f"{k}: stored {stored.get(k)!r}, now {spec.get(k)!r}" for k in spec if stored.get(k) != spec.get(k)]
        raise TuneError(f"study {study_name!r} in this storage was made for another sweep ({'; '.join(diff)[:600]}); "
                        "resume it with the same arguments, or pass a new study_name=")
    return study


def _run_here(job: _Job, study, storage_obj, progress: bool) -> None:
    bar = _Progress(study, job.budget, progress)
    old = torch.get_num_threads()
    try:
        if job.threads is not None:
            torch.set_num_threads(job.threads)
        with _quiet():
            _work(job, 0, threading.Lock(), storage_obj, on_trial=bar.poll)
    finally:
        torch.set_num_threads(old)
        bar.close()


def _run_workers(job: _Job, study, workers: int, progress: bool) -> None:
    try:
        pickle.dumps(job)
    except Exception as e:  # noqa: BLE001
        raise TuneError(f"workers={workers} run trials in separate processes, so make_model, objective and the "
                        f"search space must be picklable: module-level functions, not lambdas or closures ({e})") \
            from None
    ctx = multiprocessing.get_context("spawn")
    lock, errors = ctx.Lock(), ctx.SimpleQueue()
    bar = _Progress(study, job.budget, progress)
    procs = [ctx.Process(target=_worker_main, args=(job, i, lock, errors), name=f"muplify-tune-{i}")
             for i in range(workers)]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=POLL_S / workers)
            bar.poll()
    except KeyboardInterrupt:
        for p in procs:  # the workers got the same SIGINT: their running trials are recorded as lost
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    finally:
        bar.close()
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    failed += [(i, f"exit code {p.exitcode}") for i, p in enumerate(procs) if p.exitcode and
               all(i != j for j, _ in failed)]
    if failed:
        detail = "; ".join(f"worker {i}: {msg}" for i, msg in sorted(failed))[:600]
        if sum(trial_state(t) in COUNTED for t in study.get_trials(deepcopy=False)) >= job.budget:
            # the others finished the sweep (and re-ran the dead worker's trial): say so, keep the result
            warnings.warn(f"muplify.tune: {len(failed)} of {workers} workers stopped ({detail}); the other workers "
                          "finished the sweep", RuntimeWarning, stacklevel=3)
            return
        raise TuneError(f"{len(failed)} of {workers} workers stopped ({detail}); finished trials are kept in the "
                        "storage: run again to resume (make_model and objective must be importable by a fresh "
                        "process: defined in a module, not in a notebook)")


# ================================================================================================ result
@dataclass(frozen=True)
class TrialRecord:
    """One trial of the study, decoded."""

    number: int  # Optuna's trial number
    state: TrialStateName
    value: float | None  # final value (complete), last reported value (pruned), else None
    config: dict | None  # {"lr", "hp", "optimizer", "objective"} the trial ran with; None before its draw
    seed: int | None  # the seed the proxy was built and trained under
    seconds: float | None  # wall time, start to finish
    steps: int | None  # the last step the objective reported
    worker: str  # "host:pid" of the process that ran it
    note: str  # why it failed, or which lost trial it re-runs


@dataclass
class TuneResult:
    """What :func:`tune` found.  ``best`` is plain JSON: ``{"lr", "hp", "optimizer", "objective", "optimizer_class",
    "muplify", "value", "trial", "seed", "width"}``; pass ``hp`` to ``muplify(..., base_width=width)`` and ``lr`` and
    ``optimizer`` to ``mu.optimizer`` (or call :func:`transfer`)."""

    best: dict | None  # None when no trial completed
    study: Any  # the optuna.Study (storage-backed: open it in optuna-dashboard)
    trials: list[TrialRecord]
    space: dict[str, Dist]
    width: int  # the proxy (= base) width
    storage: str | None = None  # the storage URL, when the study lives in one
    spec: dict = field(default_factory=dict)  # what the sweep was made for (study attribute muplify.tune)

    def counts(self) -> dict[str, int]:
        """Trials per state (complete, pruned, failed, lost, running, waiting)."""
        out = {s: 0 for s in get_args(TrialStateName)}
        for t in self.trials:
            out[t.state] += 1
        return out

    def importance(self) -> dict[str, float]:
        """Hyperparameter importance over the completed trials (Optuna's PED-ANOVA evaluator), summing to 1."""
        import optuna

        done = [t for t in self.trials if t.state == "complete"]
        if len(done) < 4 or not searched(self.space):
            raise TuneError(f"importance needs at least 4 completed trials and a searched key (have {len(done)})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.importance.get_param_importances(
                self.study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())

    def to_dict(self) -> dict:
        """Plain JSON-able data: the study and storage, proxy width, search space, best, counts and every trial."""
        return {"format": "muplify-tune-result/1", "study": getattr(self.study, "study_name", None),
                "storage": self.storage, "width": self.width, "space": space_to_dict(self.space),
                "best": self.best, "counts": self.counts(), "trials": [asdict(t) for t in self.trials]}

    def to_json(self, path: str | None = None) -> str:
        """:meth:`to_dict` as JSON text, also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            _makedirs_for(path)
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    def __str__(self) -> str:
        c = self.counts()
        head = (f"tune: proxy width {self.width}, {len(self.trials)} trials ({c['complete']} complete, "
                f"{c['pruned']} pruned, {c['failed']} failed, {c['lost']} lost)")
        if self.best is None:
            return head + "; no trial completed"
        return head + f"\nbest value {self.best['value']:.6g} (trial {self.best['trial']}): " + json.dumps(
            {k: self.best[k] for k in ("lr", "hp", "optimizer", "objective")})

    # plots -------------------------------------------------------------------------------------------------------
    def plot(self, path: str, dpi: int = 110) -> str:
        """Final value against each searched hyperparameter (one panel each): completed trials coloured by trial
        number, pruned ones as grey crosses at their last reported value, the best as a red star.  PNG, no pyplot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = list(searched(self.space))
        if not keys:
            raise TuneError("nothing was searched (every space entry is Fixed): there is nothing to plot")
        done = [t for t in self.trials if t.state == "complete" and t.config is not None]
        pruned = [t for t in self.trials if t.state == "pruned" and t.config is not None and t.value is not None]
        ncols = min(4, len(keys))
        nrows = -(-len(keys) // ncols)
        fig = Figure(figsize=(3.3 * ncols, 2.7 * nrows + 0.7))
        FigureCanvasAgg(fig)
        vals = sorted(t.value for t in done)
        ylim = None
        if len(vals) >= 3:  # diverging trials at 1e3 would flatten everything else: cut at a robust top
            lo, q = vals[0], vals[int(0.9 * (len(vals) - 1))]
            ylim = (lo - 0.05 * (q - lo + 1e-12), q + 0.35 * (q - lo + 1e-12))
        n_max = max((t.number for t in self.trials), default=1) or 1
        for i, key in enumerate(keys):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            d = self.space[key]
            xs = lambda ts: [_plot_x(d, _leaf(t.config, key)) for t in ts]  # noqa: E731
            if pruned:
                ax.scatter(xs(pruned), [t.value for t in pruned], marker="x", s=14, c="0.6",
                           label="pruned (last report)")
            if done:
                ax.scatter(xs(done), [t.value for t in done], s=16, c=[t.number / n_max for t in done],
                           cmap="viridis", vmin=0, vmax=1, label="complete")
            if self.best is not None:
                ax.scatter([_plot_x(d, _leaf(self.best, key))], [self.best["value"]], marker="*", s=140, c="red",
                           edgecolors="k", linewidths=0.5, zorder=5, label="best")
            if isinstance(d, LogUniform) or (isinstance(d, IntRange) and d.log):
                ax.set_xscale("log", base=2)
            if isinstance(d, (LogUniform, Uniform, IntRange)) and d.lo < d.hi:  # the whole searched range
                pad = (d.hi / d.lo) ** 0.03 if isinstance(d, LogUniform) or getattr(d, "log", False) else None
                ax.set_xlim(*((d.lo / pad, d.hi * pad) if pad else (d.lo - 0.03 * (d.hi - d.lo),
                                                                   d.hi + 0.03 * (d.hi - d.lo))))
            if isinstance(d, Choice):
                ax.set_xticks(range(len(d.values)), [str(v) for v in d.values], fontsize=7, rotation=20)
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.set_xlabel(key, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i % ncols == 0:
                ax.set_ylabel("objective (lower is better)", fontsize=8)
            if i == 0:
                ax.legend(fontsize=7, loc="upper right")
        c = self.counts()
        fig.suptitle(f"proxy sweep at width {self.width}: {c['complete']} complete, {c['pruned']} pruned, "
                     f"{c['failed']} failed (colour: trial number, later = yellow)", fontsize=10)
        fig.tight_layout()
        _makedirs_for(path)
        fig.savefig(path, dpi=dpi)
        return path

    def plot_importance(self, path: str, dpi: int = 110) -> str:
        """Bar chart of :meth:`importance` (PNG, no pyplot)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        imp = self.importance()
        names = list(imp)[::-1]
        fig = Figure(figsize=(6.4, 0.38 * len(names) + 1.3))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        for y, n in enumerate(names):
            ax.text(imp[n], y, f" {imp[n]:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(imp.values()) * 1.18 + 1e-9)
        ax.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_title(f"hyperparameter importance, proxy width {self.width} "
                     f"({self.counts()['complete']} complete trials)", fontsize=10)
        fig.tight_layout()
        _makedirs_for(path)
        fig.savefig(path, dpi=dpi)
        return path


def _makedirs_for(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def _leaf(config: Mapping, key: str) -> Any:
    cur: Any = config
    for part in key.split("."):
        cur = cur[part.split("+")[0]]  # "input+output" share one value
    return cur


def _plot_x(d: Dist, v: Any) -> Any:
    if isinstance(d, Choice):
        return d.values.index(tuple(v) if isinstance(v, list) and tuple(v) in d.values else v)
    return v


def _record(t, space: Mapping[str, Dist]) -> TrialRecord:
    state = trial_state(t)
    config = None
    if all(k in t.params for k in searched(space)):
        config = assemble({k: (d.value if isinstance(d, Fixed) else d.decode(t.params[k])) for k, d in space.items()})
    value = t.value
    if state == "pruned" and value is None and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]
    if state not in ("complete", "pruned"):
        value = None
    seconds = None
    if t.datetime_start is not None and t.datetime_complete is not None:
        seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    note = t.user_attrs.get(FAILURE_ATTR, "")
    if RETRY_ATTR in t.user_attrs:
        note = (note + "; " if note else "") + f"re-runs lost trial {t.user_attrs[RETRY_ATTR]}"
    return TrialRecord(t.number, state, value, config, t.user_attrs.get(SEED_ATTR), seconds,
                       max(t.intermediate_values) if t.intermediate_values else None,
                       str(t.user_attrs.get(WORKER_ATTR, "")), note)


def _result(study, spec: Mapping, storage: str | None) -> TuneResult:
    space = space_from_dict(spec["space"])
    records = [_record(t, space) for t in study.get_trials(deepcopy=False)]
    done = [r for r in records if r.state == "complete" and r.config is not None]
    best = None
    if done:
        b = min(done, key=lambda r: (r.value, r.number))
        best = {**b.config, "optimizer_class": spec.get("optimizer"), "muplify": dict(spec.get("muplify") or {}),
                "value": b.value, "trial": b.number, "seed": b.seed, "width": spec["width"]}
    return TuneResult(best, study, records, space, spec["width"], storage, dict(spec))


def load_result(storage: Any = DEFAULT_STORAGE, study_name: str = DEFAULT_STUDY) -> TuneResult:
    """The result of a sweep stored in ``storage`` (e.g. while it is still running on other machines)."""
    import optuna

    storage_obj = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_obj)
    except KeyError:
        names = optuna.get_all_study_names(storage_obj)
        raise TuneError(f"no study {study_name!r} in {storage!r} (studies there: {names})") from None
    spec = study.user_attrs.get(SPEC_ATTR)
    if spec is None:
        raise TuneError(f"study {study_name!r} was not made by muplify.tune")
    return _result(study, spec, storage if isinstance(storage, str) else None)
