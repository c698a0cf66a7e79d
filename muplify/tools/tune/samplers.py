"""Samplers and pruners by name (Optuna's)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from .space import Dist, TuneError, searched


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


def _cmaes(space, seed, budget):
    import optuna

    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise TuneError("sampler 'cmaes' is Optuna's CmaEsSampler, which needs the cmaes package: pip install cmaes "
                        "(or use 'tpe')") from None
    # categorical entries (Choice) fall back to independent sampling; a refined box has them fixed
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=min(4, max(1, budget // 4)),
                                        warn_independent_sampling=False)


SAMPLERS: dict[str, Callable] = {"tpe": _tpe, "random": _random, "grid": _grid, "cmaes": _cmaes}
SamplerName = Literal["tpe", "random", "grid", "cmaes"]


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


