"""One sweep: the checks and the preflight build every phase shares (:func:`prepare`), and one study at one width over
one box (:func:`run_sweep`)."""
from __future__ import annotations

import inspect
import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ...errors import MuplifyError
from ...module_kinds import kinds_present, module_keys_present
from ...options import HyperParams
from ...plan import Plan
from .space import (DISTS, HP_ACTS_ON, Dist, TuneError, assemble, check_key, default_space, encode_point, is_number,
                    plan_roles, searched, space_to_dict)
from .samplers import make_pruner, make_sampler
from .storage import _create_study, open_storage
from .result import _result
from .workers import _run_here, _run_workers, cores
from .trial import INPUT_KWARGS, SPEC_FORMAT, _Job, seed_everything, takes_seed
from .result import TuneResult


# ================================================================================================ tune
@dataclass(frozen=True)
class Sweep:
    """What every phase of a sweep shares: the checked arguments, the full search space (decided by the proxy's plan
    once), the storage."""

    make_model: Callable[[int], nn.Module]
    objective: Callable[..., float]
    optimizer: Any
    opt_name: str  # module.qualname of the optimizer class (recorded)
    space: dict  # key -> Dist, the global box
    storage: Any  # URL, Optuna storage object or InMemoryStorage
    muplify_kwargs: dict  # passed to every muplify() call
    recorded: dict  # muplify_kwargs without the data (example inputs): recorded in best["muplify"]
    workers: int
    threads: int | None
    seed: int
    data_seed: bool  # the objective takes seed= (its data seed)
    regime: dict | None = None  # the proxy's {"batch_size", "steps"} (recorded: transfer applies the regime rules)


def prepare(make_model: Callable[[int], nn.Module], width: int, objective: Callable[..., float], optimizer: Any, *,
            trials: int, space: Mapping[str, Dist] | None, defaults: bool, storage: Any, workers: int,
            threads: int | None, seed: int, timeout: float | None, muplify_kwargs: Mapping[str, Any] | None,
            seeds_per_trial: int = 1, regime: Mapping[str, int] | None = None,
            per_module: bool = False) -> Sweep:
    """Check the arguments, build the proxy once (its plan decides the default space) and check the space."""
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
    full = dict(default_space(plan, optimizer, per_module)) if defaults else {}
    for key, d in (space or {}).items():
        check_key(key)
        if not isinstance(d, tuple(DISTS.values())):
            raise TuneError(f"space[{key!r}] must be LogUniform, Uniform, IntRange, Choice or Fixed, got {d!r}")
        full[key] = d
    _check_space(full, plan, make_model, width, objective, optimizer, seed, mkw)
    data_seed = seeds_per_trial > 1 and takes_seed(objective) and "objective.seed" not in full
    return Sweep(make_model, objective, optimizer, opt_name, full, storage, mkw, recorded, workers, threads, seed,
                 data_seed, check_regime(regime))


def check_regime(regime: Mapping[str, Any] | None) -> dict | None:
    """The proxy's regime ``{"batch_size": B, "steps": S}`` (either may be absent), checked; None when empty."""
    out = {}
    for k, v in (regime or {}).items():
        if k not in ("batch_size", "steps"):
            raise TuneError(f"the proxy regime has batch_size and steps, got {k!r}")
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            what = "batch size" if k == "batch_size" else "number of optimizer steps"
            raise TuneError(f"{k} must be an int >= 1 (the proxy's {what}, recorded for the transfer), got {v!r}")
        out[k] = v
    return out or None


def run_sweep(sw: Sweep, *, width: int, base_width: int, space: Mapping[str, Dist], trials: int, sampler: Any,
              pruner: Any, study_name: str, seed: int, seeds_per_trial: int = 1, phase: str = "global",
              enqueue: Sequence[Mapping[str, Any]] = (), deadline: float | None = None,
              progress: bool = True, horizon: int | None = None) -> TuneResult:
    """One study: ``trials`` finished trials at ``width`` (relative to ``base_width``) over the box ``space``
    (``horizon``: the steps its objective trains for, ``tune(..., horizons=)``; its trials are tagged with it)."""
    budget = trials
    if sampler == "grid":
        n_grid = math.prod(len(d.grid()) for d in searched(space).values())
        budget = min(trials, n_grid)
    make_sampler(sampler, space, seed, budget)  # a bad name fails here, not in every worker
    make_pruner(pruner)
    spec = {"format": SPEC_FORMAT, "width": base_width, "optimizer": sw.opt_name, "space": space_to_dict(space),
            "muplify": sw.recorded, "seed": seed}
    # only what differs from a plain sweep is recorded: a study made before these options resumes as it was
    if width != base_width:
        spec["trial_width"] = width
    if seeds_per_trial > 1:
        spec["seeds_per_trial"] = seeds_per_trial
    if phase != "global":
        spec["phase"] = phase
    if sw.regime:
        spec["regime"] = dict(sw.regime)
    if horizon is not None:
        spec["horizon"] = horizon
    points = [encode_point(space, p) for p in enqueue]
    storage_obj = open_storage(sw.storage)
    study = _create_study(storage_obj, study_name, spec)
    for p in points:
        study.enqueue_trial(p, skip_if_exists=True)
    workers = sw.workers
    threads = sw.threads if workers == 1 else (sw.threads or max(1, cores() // workers))
    job = _Job(sw.make_model, sw.objective, width, sw.optimizer, dict(space), sw.storage, study_name, sampler, pruner,
               budget, seed, threads, deadline, sw.muplify_kwargs, base_width, seeds_per_trial, sw.data_seed)
    if workers == 1:
        _run_here(job, study, storage_obj, progress)
    else:
        _run_workers(job, study, workers, progress)
    return _result(study, spec, sw.storage if isinstance(sw.storage, str) else None)


def _check_args(make_model, width, objective, optimizer, trials, workers, threads, seed, timeout) -> str:
    from ...optim import resolve_optimizer

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
    from ...core import muplify

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
    kinds, keys = kinds_present(plan), module_keys_present(plan)
    for key in space:
        head, _, rest = key.partition(".")
        name, _, role = rest.partition(".")
        if head == "hp" and name in HP_ACTS_ON and not HP_ACTS_ON[name][0](plan):
            raise TuneError(f"space key {key!r}: {HP_ACTS_ON[name][1]}, so it would change nothing; drop it")
        for r in role.split("+") if head == "hp" and role else ():
            if r not in roles and r not in kinds and r not in keys:
                raise TuneError(f"bad search-space key {key!r}: no parameter of this model has role {r!r}, nor is it "
                                f"a module kind or module key of it (roles present: {', '.join(roles)}; module kinds: "
                                f"{', '.join(kinds)}; module keys: {', '.join(keys)})")
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
    from ...optim import resolve_optimizer

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


