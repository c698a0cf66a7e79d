"""Shared helpers for the muplify benchmarks (environment info, resumable result files, timing).

The data and the training loop come from the library: ``muplify.tools.corpus`` and ``muplify.tools.train``.

Only the standard library, torch and numpy are needed here; matplotlib/tqdm are imported by the scripts that use them.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # make `import muplify` work when run as `python benchmarks/x.py`
    sys.path.insert(0, str(REPO_ROOT))


# ----------------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------------
def set_threads(n: int | None) -> int:
    """Pin torch's intra-op thread pool (the benchmarks are sized for a 2-core CPU)."""
    if n is not None and n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover - optional
        pass
    return info


def import_muplify():
    """Return ``(muplify_fn, None)`` or ``(None, "ExceptionType: message")`` when the core cannot be imported."""
    try:
        from muplify import muplify  # noqa: WPS433

        return muplify, None
    except Exception as e:  # ImportError while the core is being written, or anything it raises on import
        return None, f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def write_json(path: str | Path, obj) -> None:
    """Atomic write (tmp file + rename): an interrupted run never leaves a truncated results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default, allow_nan=False)
    os.replace(tmp, path)


def finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


class ResultStore:
    """A JSON file ``{"meta": ..., "runs": {key: record}, "summary": ...}``; ``put`` writes it at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = {"meta": {}, "runs": {}, "summary": {}}
        if self.path.exists():
            with open(self.path) as f:
                loaded = json.load(f)
            self.data.update(loaded)
            self.data.setdefault("runs", {})

    @staticmethod
    def key(cfg: dict) -> str:
        return json.dumps(cfg, sort_keys=True, separators=(",", ":"))

    def get(self, cfg: dict):
        return self.data["runs"].get(self.key(cfg))

    def put(self, cfg: dict, record: dict) -> None:
        self.data["runs"][self.key(cfg)] = {"config": cfg, **record}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


# ----------------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------------
def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def interleaved_timings(fns: dict, reps: int, inner: int = 1) -> dict:
    """Time each callable ``inner`` times per round, rounds alternating the order (A,B / B,A / ...).

    Returns ``{name: [seconds per call, one per round]}``; take the median.
    """
    names = list(fns)
    out = {n: [] for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            out[n].append((time.perf_counter() - t0) / inner)
    return out


def proc_mem_kb() -> dict:
    """VmRSS / VmHWM (peak RSS) of this process in KiB (Linux), falling back to getrusage."""
    try:
        s = open("/proc/self/status").read()
        return {
            "rss": int(re.search(r"VmRSS:\s+(\d+)", s).group(1)),
            "hwm": int(re.search(r"VmHWM:\s+(\d+)", s).group(1)),
        }
    except (OSError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss": None, "hwm": peak}


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False when unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def fmt_ms(s) -> str:
    return "—" if s is None else f"{s * 1e3:.2f}"
