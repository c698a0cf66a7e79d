"""Storage (a SQLite file by default, any Optuna URL such as PostgreSQL), the study, trial states and the recovery
of trials lost with their worker."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from typing import Any, Literal

from .space import TuneError
from .trial import (FAILURE_ATTR, GRACE_S, HEARTBEAT_S, MAX_RERUNS, RETRY_ATTR, SEED_ATTR, SPEC_ATTR, SQLITE_TIMEOUT_S,
                    WORKER_ATTR, _Job)
from .samplers import make_pruner, make_sampler


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


