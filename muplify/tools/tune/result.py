"""The result of a sweep: decoded trials, the best, JSON I/O (``best.json``), :func:`load_result`."""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from .space import Dist, Fixed, TuneError, assemble, searched, space_from_dict, space_to_dict
from .trial import (DEFAULT_STORAGE, DEFAULT_STUDY, FAILURE_ATTR, RETRY_ATTR, SEED_ATTR, SPEC_ATTR, VALUES_ATTR,
                    WORKER_ATTR)
from .storage import TrialStateName, open_storage, trial_state
from .plots import _makedirs_for
from .horizons import FIT_ATTR, FIT_KEY
from .roles import ROLES_ATTR, with_roles
from ...options import TUNED_ROLES


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
    phase: str = "global"  # "global", "refine" or "telescope" (see TuneResult.phases)
    width: int | None = None  # the width the trial trained at (the proxy's, or a telescoping width)
    seed_values: list | None = None  # seeds_per_trial > 1: the value under each seed (value is their mean)
    horizon: int | None = None  # tune(..., horizons=): the steps the objective trained for (its steps=)


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of a sweep: one study at one width over one box."""

    name: str  # "global" | "refine" | "telescope"
    width: int  # the width its trials trained at
    trials: int  # its budget (finished trials)
    study: str  # the study name in the storage
    box: dict  # the search space it sampled (space_to_dict), narrowed around the incumbent after "global"
    best_value: float | None  # the best value among its completed trials
    evaluations: int  # objective runs (trials x seeds_per_trial)
    horizon: int | None = None  # tune(..., horizons=): the steps its trials trained for


@dataclass(frozen=True)
class ReevalRecord:
    """A top candidate run again on fresh seeds before the best is named (``reeval_top``/``reeval_seeds``)."""

    trial: int  # its trial number in its phase's study
    phase: str
    value: float  # the value the sweep measured (single seed, or the mean of seeds_per_trial)
    values: list  # the objective under each fresh seed
    mean: float
    std: float | None  # sample standard deviation of values (None with one seed)


@dataclass(frozen=True)
class Convergence:
    """Is the global phase's best still moving, and what did refinement gain (see docs/tune.md)."""

    global_trials: int  # completed trials of the global phase
    best_at: int  # position (0-based, in completion order) of the global phase's best among its completed trials
    last_quarter_gain: float  # running best before the last quarter of the global phase minus its final best
    best_in_last_tenth: bool  # the best came in the last 10 % of the trials: the search had not settled
    still_moving: bool  # last_quarter_gain exceeds the seed spread (or 0 when no spread is known)
    refine_gain: float | None  # global best minus the best after refinement (same width); None without refine
    verdict: str


@dataclass
class TuneResult:
    """What :func:`tune` found.  ``best`` is plain JSON: ``{"lr", "hp", "optimizer", "objective", "optimizer_class",
    "muplify", "value", "trial", "seed", "width"}``; pass ``hp`` to ``muplify(..., base_width=width)`` and ``lr`` and
    ``optimizer`` to ``mu.optimizer`` (or call :func:`transfer`).  After a refine or telescoping phase it also
    names ``"phase"`` and ``"tuned_at"`` (the width ``value`` was measured at); with ``tune(..., batch_size=,
    steps=)`` ``"regime"`` (the proxy's batch size and steps, which :func:`transfer` scales from); with a known seed spread
    ``"value_spread"``; after re-evaluation ``"value_in_sweep"`` (``value`` is then the fresh-seed mean); with
    ``tune(..., horizons=)`` ``"horizon_fit"`` (``{key: {"exponent", "stderr", "coef", "horizons", "optima", "optimum_from"}}``,
    see :attr:`horizon_fit`; ``value`` and the rest are the largest horizon's)."""

    best: dict | None  # None when no trial completed
    study: Any  # the optuna.Study (storage-backed: open it in optuna-dashboard)
    trials: list[TrialRecord]
    space: dict[str, Dist]
    width: int  # the proxy (= base) width
    storage: str | None = None  # the storage URL, when the study lives in one
    spec: dict = field(default_factory=dict)  # what the sweep was made for (study attribute muplify.tune)
    phases: list[PhaseRecord] = field(default_factory=list)  # the budget split (global, refine, telescope)
    reeval: list[ReevalRecord] = field(default_factory=list)  # top candidates re-run on fresh seeds
    spread: float | None = None  # the best's seed standard deviation (None: single-seed, no re-evaluation)
    within_spread: int | None = None  # completed trials (at the best's width) within best value + spread
    convergence: Convergence | None = None
    context: dict = field(default_factory=dict, repr=False)  # make_model, objective, ... (for check_transfer)

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
                "best": self.best, "spread": self.spread, "within_spread": self.within_spread,
                "phases": [asdict(p) for p in self.phases], "reeval": [asdict(r) for r in self.reeval],
                "convergence": None if self.convergence is None else asdict(self.convergence),
                "counts": self.counts(), "trials": [asdict(t) for t in self.trials]}

    def budget(self) -> str:
        """The budget split over the phases, one line: ``global 24 x1 @64, refine 8 @64, telescope 4 @128``."""
        parts = [f"{p.name} {p.trials} trials @{p.width}{'' if p.horizon is None else f' S={p.horizon}'} "
                 f"({p.evaluations} runs)" for p in self.phases]
        if self.reeval:
            parts.append(f"re-evaluation {len(self.reeval)} x {len(self.reeval[0].values)} seeds "
                         f"({sum(len(r.values) for r in self.reeval)} runs)")
        return ", ".join(parts)

    def check_transfer(self, width: int, trials: int = 8, **kwargs) -> Any:
        """The transferred configuration at ``width`` against a short local sweep there: see
        :func:`muplify.tools.tune.check.check_transfer` (returns a :class:`~muplify.tools.tune.check.TransferCheck`)."""
        from .check import check_transfer

        return check_transfer(self, width, trials, **kwargs)

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
        value = f"{self.best['value']:.6g}"
        if self.spread is not None:
            value += f" ± {self.spread:.3g} (seed std; {self.within_spread} trials within it)"
        where = f"{self.best.get('phase', 'global')} trial {self.best['trial']}"
        if self.best.get("tuned_at", self.width) != self.width:
            where += f", at width {self.best['tuned_at']}"
        lines = [head, f"best value {value} ({where}): " + json.dumps(
            {k: _values(self.best[k]) if k == "hp" else self.best[k]
             for k in ("lr", "hp", "optimizer", "objective")})]
        if len(self.phases) > 1 or self.reeval:
            lines.append("budget: " + self.budget())
        if self.convergence is not None:
            lines.append("convergence: " + self.convergence.verdict)
        lines += [f"horizon fit: {f}" for f in self.horizon_fit.values()]
        return "\n".join(lines)

    @property
    def horizon_fit(self) -> dict:
        """``tune(..., horizons=)``: one :class:`~muplify.tools.tune.horizons.PowerLaw` per fitted key (empty
        without horizons)."""
        from .horizons import horizon_fits

        return horizon_fits(self.best or {})

    # plots (muplify.tools.tune.plots) ----------------------------------------------------------------------------
    def plot(self, path: str, dpi: int = 110) -> str:
        """Final value against each searched hyperparameter (one panel each): completed trials coloured by trial
        number, pruned ones as grey crosses at their last reported value, the best as a red star.  PNG, no pyplot."""
        from .plots import plot_params

        return plot_params(self, path, dpi)

    def plot_importance(self, path: str, dpi: int = 110) -> str:
        """Bar chart of :meth:`importance` (PNG, no pyplot)."""
        from .plots import plot_importance

        return plot_importance(self, path, dpi)

    def plot_horizons(self, path: str, dpi: int = 110) -> str:
        """``tune(..., horizons=)``: each fitted value's optimum against the horizon (log-log) with its power law
        (PNG, no pyplot)."""
        from .plots import plot_horizons

        return plot_horizons(self, path, dpi)


def _record(t, space: Mapping[str, Dist], phase: str = "global", width: int | None = None,
            horizon: int | None = None) -> TrialRecord:
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
                       str(t.user_attrs.get(WORKER_ATTR, "")), note, phase, width, t.user_attrs.get(VALUES_ATTR),
                       horizon)


def _values(hp: Any) -> Any:
    """A best's hp as printed: the values, without the roles they were tuned under (a line per parameter)."""
    return {k: v for k, v in hp.items() if k != TUNED_ROLES} if isinstance(hp, Mapping) else hp


def _result(study, spec: Mapping, storage: str | None) -> TuneResult:
    space = space_from_dict(spec["space"])
    phase, width = spec.get("phase", "global"), spec.get("trial_width", spec["width"])
    records = [_record(t, space, phase, width, spec.get("horizon")) for t in study.get_trials(deepcopy=False)]
    done = [r for r in records if r.state == "complete" and r.config is not None]
    best = None
    if done:
        b = min(done, key=lambda r: (r.value, r.number))
        best = {**b.config, "optimizer_class": spec.get("optimizer"), "muplify": dict(spec.get("muplify") or {}),
                "value": b.value, "trial": b.number, "seed": b.seed, "width": spec["width"]}
        roles = study.user_attrs.get(ROLES_ATTR)  # what the values were tuned under (tune/roles.py)
        if roles is not None:
            with_roles(best, roles)
        if phase != "global" or width != spec["width"]:
            best.update(phase=phase, tuned_at=width)
        if spec.get("regime"):
            best["regime"] = dict(spec["regime"])
        fit = study.user_attrs.get(FIT_ATTR)  # tune(..., horizons=) recorded it on the main study
        if fit is not None:
            best[FIT_KEY] = fit
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

