"""Run a function on N local processes the way ``torchrun`` does (gloo, CPU) — and never hang.

    >>> from dist_worker import launch
    >>> results = launch("dist_jobs:ddp_gpt", world_size=2, timeout=90)   # one JSON value per rank

Each rank is a fresh ``python tests/dist_worker.py`` process with torchrun's environment variables (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and OMP_NUM_THREADS=1.  The worker joins a gloo process group
(collective timeout ``coll_timeout`` s), calls ``module:function(**kwargs)``, writes the JSON-able return value to
``<dir>/rank<r>.json`` and exits.  On an exception it writes the traceback to ``<dir>/rank<r>.err`` and exits with
status 1 at once (``os._exit``: no atexit handlers that could wait on the other ranks).

The parent polls the ranks: the first rank that exits non-zero makes :func:`launch` kill every other rank (each is the
leader of its own process group, so its children go too) and raise :class:`RankFailed` with that rank's traceback;
past ``timeout`` seconds every rank is killed and :class:`RankFailed` says so.  Only the processes it started are
signalled, by their ids.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)

__all__ = ["launch", "RankFailed", "free_port"]


class RankFailed(RuntimeError):
    """A rank raised, died, or the job ran past its timeout.  ``pids``: the processes launch() started."""

    def __init__(self, msg: str, pids: list[int], rank: int | None = None):
        super().__init__(msg)
        self.pids, self.rank = pids, rank


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-n:]
    except OSError:
        return ""


def _mtime(d: str, r: int) -> float:
    for name in (f"rank{r}.err", f"rank{r}.log"):
        try:
            return os.path.getmtime(os.path.join(d, name))
        except OSError:
            pass
    return float("inf")


def _kill(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)  # the rank leads its own session: pgid == pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def launch(target: str, world_size: int = 2, timeout: float = 120.0, kwargs: dict | None = None,
           coll_timeout: float = 60.0, env: dict | None = None) -> list:
    """Run ``target`` ("module:function", importable from tests/ or the repo root) on ``world_size`` ranks."""
    with tempfile.TemporaryDirectory(prefix="muplify-dist-") as d:
        base_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        base_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world_size),
                        LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1",
                        PYTHONPATH=os.pathsep.join([_TESTS, _ROOT, base_env.get("PYTHONPATH", "")]))
        base_env.update(env or {})
        procs: list[subprocess.Popen] = []
        payload = json.dumps({"target": target, "kwargs": kwargs or {}, "coll_timeout": coll_timeout, "dir": d})
        try:
            for r in range(world_size):
                log = open(os.path.join(d, f"rank{r}.log"), "w")
                procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), payload],
                                              env={**base_env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                              stdout=log, stderr=subprocess.STDOUT, cwd=_ROOT,
                                              start_new_session=True))
                log.close()
            pids = [p.pid for p in procs]
            deadline = time.monotonic() + timeout
            while True:
                codes = [p.poll() for p in procs]
                bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    # the first failure is the cause; the others (if any) are usually 'peer closed connection'
                    r = min(bad, key=lambda i: _mtime(d, i))
                    _kill(procs)
                    err = _tail(os.path.join(d, f"rank{r}.err")) or _tail(os.path.join(d, f"rank{r}.log"))
                    raise RankFailed(f"{target}: rank {r} failed (exit {codes[r]}):\n{err}", pids, r)
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    _kill(procs)
                    logs = "\n".join(f"--- rank {i} ---\n{_tail(os.path.join(d, f'rank{i}.log'), 1500)}"
                                     for i in range(world_size))
                    raise RankFailed(f"{target}: timed out after {timeout:.0f}s; killed all ranks\n{logs}", pids)
                time.sleep(0.05)
            out = []
            for r in range(world_size):
                with open(os.path.join(d, f"rank{r}.json")) as fh:
                    out.append(json.load(fh))
            return out
        finally:
            _kill(procs)


def _worker(payload: str) -> None:
    cfg = json.loads(payload)
    rank = int(os.environ["RANK"])
    for p in (_TESTS, _ROOT):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        from datetime import timedelta

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(seconds=cfg["coll_timeout"]))
        mod_name, fn_name = cfg["target"].split(":")
        result = getattr(importlib.import_module(mod_name), fn_name)(**cfg["kwargs"])
        with open(os.path.join(cfg["dir"], f"rank{rank}.json"), "w") as fh:
            json.dump(result, fh)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, then a hard exit
        with open(os.path.join(cfg["dir"], f"rank{rank}.err"), "w") as fh:
            fh.write(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(sys.argv[1])
