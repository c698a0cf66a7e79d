"""Running trials: in this process or in worker processes sharing the storage; the progress bar."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch

from .space import TuneError
from .storage import COUNTED, _detects_dead_workers, _open_study, _pending, _recover, open_storage, trial_state
from .trial import FAILURE_ATTR, POLL_S, WAIT_S, _Job, _one_line, _run_trial


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


