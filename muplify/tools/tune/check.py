"""``result.check_transfer(width=128, trials=8)``: does the proxy's optimum hold at a larger width?

The transferred configuration (``result.best`` at ``width``, ``base_width`` the proxy's) runs on ``seeds`` seeds;
a short local sweep at ``width`` searches a box narrowed around it (the transferred point is its first trial); the
local sweep's best runs on the same seeds.  The gap is transferred mean minus local mean: within the seed spread,
the transfer holds; beyond it, the proxy optimum is imprecise or does not transfer — an early warning before the
target run.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .space import TuneError
from .trial import SEED_STRIDE, evaluate

if TYPE_CHECKING:
    from .result import TuneResult

CHECK_SEED = 70_000_000  # the check's seeds: seed + CHECK_SEED (+ j * SEED_STRIDE): none a sweep used


@dataclass(frozen=True)
class TransferCheck:
    """The transferred configuration against a short local sweep at ``width``."""

    width: int  # where it was checked
    proxy_width: int  # where it was tuned (the base width)
    trials: int  # the local sweep's budget
    seeds: int  # seeds each of the two configurations ran on
    transferred: float  # mean value of the transferred configuration
    transferred_values: list
    local_best: float  # mean value of the local sweep's best on the same seeds
    local_values: list
    local_config: dict  # the local sweep's best configuration
    local_is_transferred: bool  # the local sweep found nothing better than the transferred point itself
    gap: float  # transferred - local_best (> 0: the local sweep found better)
    spread: float | None  # the larger of the two seed standard deviations
    transfers: bool  # gap within the spread (or <= 0)
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return self.verdict


def check_transfer(result: TuneResult, width: int, trials: int = 8, *, seeds: int = 2, shrink: float = 0.5,
                   make_model: Callable | None = None, objective: Callable | None = None, optimizer: Any = None,
                   storage: Any = None, progress: bool = False) -> TransferCheck:
    """Check ``result.best`` at ``width`` against ``trials`` local trials there (see the module docstring).

    ``make_model``, ``objective`` and ``optimizer`` default to those the sweep ran with (a result read back by
    :func:`load_result` needs them passed).  ``storage``: where the local sweep's study goes (default in memory;
    a URL keeps it as ``<study>.check-w<width>`` and a re-run resumes it)."""
    from .phases import flat_point, narrow
    from .sweep import prepare, run_sweep
    from .workers import _quiet

    ctx = result.context
    make_model = make_model or ctx.get("make_model")
    objective = objective or ctx.get("objective")
    optimizer = optimizer or ctx.get("optimizer") or (result.best or {}).get("optimizer_class") or "AdamW"
    if make_model is None or objective is None:
        raise TuneError("check_transfer needs make_model= and objective= (a result read by load_result() does not "
                        "carry them)")
    if result.best is None:
        raise TuneError("no best configuration to check: no trial completed")
    for name, v, lo in (("width", width, 1), ("trials", trials, 1), ("seeds", seeds, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise TuneError(f"{name} must be an int >= {lo}, got {v!r}")
    proxy = result.width
    seed = int(ctx.get("seed", 0))
    mkw = dict(ctx.get("muplify_kwargs") or result.best.get("muplify") or {})
    sw = prepare(make_model, proxy, objective, optimizer, trials=trials, space=result.space, defaults=False,
                 storage=storage, workers=1, threads=None, seed=seed, timeout=None, muplify_kwargs=mkw)
    box = narrow(result.space, result.best, shrink)
    study = f"{ctx.get('study_name', 'muplify-tune')}.check-w{width}"
    local = run_sweep(sw, width=width, base_width=proxy, space=box, trials=trials, sampler=ctx.get("sampler", "tpe"),
                      pruner=ctx.get("pruner", "median"), study_name=study, seed=seed + CHECK_SEED, phase="check",
                      enqueue=[flat_point(box, result.best)], progress=progress)
    if local.best is None:
        raise TuneError(f"no trial of the local sweep at width {width} completed")
    data_seed = ctx.get("data_seed", False) and "objective.seed" not in result.space

    def runs(cfg) -> list[float]:
        out = []
        with _quiet():
            for j in range(seeds):
                try:
                    out.append(evaluate(make_model, objective, optimizer, cfg, width=width, base_width=proxy,
                                        seed=seed + CHECK_SEED + 500_000 + j * SEED_STRIDE, data_seed=data_seed,
                                        muplify_kwargs=mkw))
                except ArithmeticError:
                    out.append(math.inf)
        return out

    local_cfg = {k: local.best[k] for k in ("lr", "hp", "optimizer", "objective")}
    same = local.best["trial"] == 0  # trial 0 is the enqueued transferred point
    t_vals = runs(result.best)
    l_vals = t_vals if same else runs(local_cfg)
    t_mean, l_mean = sum(t_vals) / seeds, sum(l_vals) / seeds
    stds = [statistics.stdev(v) for v in (t_vals, l_vals) if seeds > 1 and all(map(math.isfinite, v))]
    spread = max(stds) if stds else None
    gap = t_mean - l_mean if math.isfinite(t_mean - l_mean) else math.inf
    transfers = gap <= (spread if spread is not None else 0.0)
    head = (f"transfer check at width {width} (tuned at {proxy}; {trials} local trials, {seeds} seeds each): "
            f"transferred {t_mean:.4g}, local best {l_mean:.4g}, gap {gap:+.3g}"
            + (f" (seed spread {spread:.3g})" if spread is not None else ""))
    if same:
        tail = "the local sweep found nothing better than the transferred configuration: it transfers"
    elif transfers:
        tail = "the gap is within the seed spread: the transferred configuration holds at this width"
    else:
        tail = (f"the local sweep at {width} beats the transferred configuration by more than the seed spread: the "
                "proxy optimum is imprecise or does not transfer — tune with seeds_per_trial=, refine= or "
                f"widths=[{proxy}, {width}] (telescoping)")
    return TransferCheck(width, proxy, trials, seeds, t_mean, t_vals, l_mean, l_vals, local_cfg, same, gap, spread,
                         transfers, f"{head}. {tail}.")
