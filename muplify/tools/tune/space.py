"""The search space of :func:`muplify.tune`: typed entries (``LogUniform``, ``Uniform``, ``IntRange``, ``Choice``,
``Fixed``), flat keys naming one leaf of a trial's configuration (``"lr"``, ``"hp.lr_mult.input"``,
``"optimizer.weight_decay"``, ``"objective.warmup"``; ``"hp.lr_mult.input+output"`` gives several roles one sampled
value) and the default space read from a proxy's plan.

    >>> from muplify.tools.tune.space import parse_dist, assemble
    >>> parse_dist("LogUniform(1e-4, 1e-1)")
    LogUniform(lo=0.0001, hi=0.1, grid_step=2.0)
    >>> assemble({"lr": 1e-3, "hp.lr_mult.input+output": 4.0, "optimizer.weight_decay": 0.1})
    {'lr': 0.001, 'hp': {'lr_mult': {'input': 4.0, 'output': 4.0}}, 'optimizer': {'weight_decay': 0.1}, 'objective': {}}
"""
from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ...errors import MuplifyError
from ...options import _HP_KEY, GAIN, HP_PER_ROLE, HP_SCALARS, ROLES
from ...plan import Plan

__all__ = ["Entry", "LogUniform", "Uniform", "IntRange", "Choice", "Fixed", "Dist", "DISTS", "parse_dist", "check_key",
           "assemble", "default_space", "plan_roles", "plan_kinds", "space_to_dict", "space_from_dict", "searched", "TuneError",
           "MULT", "INIT", "lr_range", "HP_ACTS_ON", "is_number", "encode_point"]


class TuneError(MuplifyError, ValueError):
    """Bad arguments to :func:`muplify.tune`, a study that does not match them, or a sweep with no completed
    trial."""


_PRIMITIVE = (type(None), bool, int, float, str)


class Entry:
    """What every search-space entry does (the subclasses are the entries)."""

    def suggest(self, trial, name: str) -> Any:
        """Draw this entry's value for ``trial`` (an ``optuna.Trial``) under the parameter name ``name``."""
        raise NotImplementedError

    def grid(self) -> list:
        """The values ``sampler="grid"`` visits (as Optuna stores them)."""
        raise NotImplementedError

    def center(self) -> Any:
        """A representative value: what the checks before a sweep build the proxy with."""
        raise NotImplementedError

    def encode(self, v: Any) -> Any:
        """A value -> the parameter Optuna stores for it (``enqueue=`` points); TuneError when out of range."""
        raise NotImplementedError

    def decode(self, raw: Any) -> Any:
        """The parameter Optuna stored -> the value."""
        raise NotImplementedError


@dataclass(frozen=True)
class LogUniform(Entry):
    """A positive value, uniform in log space over [lo, hi].  Under ``sampler="grid"``: lo, lo·step, lo·step², …
    up to hi (powers of two by default, the usual μP sweep grid)."""

    lo: float  # smallest value, > 0
    hi: float  # largest value, >= lo
    grid_step: float = 2.0  # ratio of neighbouring grid points (sampler="grid")

    def __post_init__(self):
        if not (is_number(self.lo) and is_number(self.hi) and 0 < self.lo <= self.hi):
            raise TuneError(f"LogUniform needs 0 < lo <= hi, got LogUniform({self.lo!r}, {self.hi!r})")
        if not (is_number(self.grid_step) and self.grid_step > 1):
            raise TuneError(f"LogUniform grid_step must be > 1, got {self.grid_step!r}")

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.lo, self.hi, log=True)

    def grid(self) -> list:
        n = int(math.floor(math.log(self.hi / self.lo) / math.log(self.grid_step) + 1e-9))
        return [min(self.hi, self.lo * self.grid_step ** k) for k in range(n + 1)]  # rounding must not pass hi

    def center(self) -> float:
        return math.sqrt(self.lo * self.hi)

    def encode(self, v: Any) -> float:
        return _in_range(self, v)

    def decode(self, raw: Any) -> float:
        return float(raw)


@dataclass(frozen=True)
class Uniform(Entry):
    """A value uniform over [lo, hi] (e.g. a warmup fraction).  Under ``sampler="grid"``: grid_points evenly
    spaced values."""

    lo: float
    hi: float
    grid_points: int = 5  # number of grid values (sampler="grid")

    def __post_init__(self):
        if not (is_number(self.lo) and is_number(self.hi) and self.lo <= self.hi):
            raise TuneError(f"Uniform needs lo <= hi, got Uniform({self.lo!r}, {self.hi!r})")
        if not (isinstance(self.grid_points, int) and self.grid_points >= 1):
            raise TuneError(f"Uniform grid_points must be an int >= 1, got {self.grid_points!r}")

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.lo, self.hi)

    def grid(self) -> list:
        if self.grid_points == 1 or self.lo == self.hi:
            return [self.lo]
        return [self.lo + (self.hi - self.lo) * k / (self.grid_points - 1) for k in range(self.grid_points)]

    def center(self) -> float:
        return (self.lo + self.hi) / 2

    def encode(self, v: Any) -> float:
        return _in_range(self, v)

    def decode(self, raw: Any) -> float:
        return float(raw)


@dataclass(frozen=True)
class IntRange(Entry):
    """An integer in [lo, hi] (e.g. warmup steps); ``log=True`` samples it in log space."""

    lo: int
    hi: int
    step: int = 1  # spacing of the values (and of the grid)
    log: bool = False

    def __post_init__(self):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.lo, self.hi, self.step))
        if not (ok and self.lo <= self.hi and self.step >= 1 and (not self.log or self.lo >= 1)):
            raise TuneError(f"IntRange needs ints lo <= hi, step >= 1 (and lo >= 1 with log=True), got {self!r}")

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.lo, self.hi, step=self.step, log=self.log)

    def grid(self) -> list:
        return list(range(self.lo, self.hi + 1, self.step))

    def center(self) -> int:
        return self.lo + (self.hi - self.lo) // (2 * self.step) * self.step

    def encode(self, v: Any) -> int:
        if not (isinstance(v, int) and not isinstance(v, bool) and self.lo <= v <= self.hi
                and (v - self.lo) % self.step == 0):
            raise TuneError(f"{v!r} is not a value of {self!r}")
        return v

    def decode(self, raw: Any) -> int:
        return int(raw)


@dataclass(frozen=True)
class Choice(Entry):
    """One of a list of values (JSON-able: numbers, strings, booleans, None, lists such as Adam betas)."""

    values: tuple  # the candidates; lists and tuples are stored by their JSON text in the study

    def __post_init__(self):
        vals = tuple(self.values) if isinstance(self.values, (list, tuple)) else None
        if not vals:
            raise TuneError(f"Choice needs a non-empty list of values, got {self.values!r}")
        for v in vals:
            try:
                json.dumps(v, allow_nan=False)
            except (TypeError, ValueError):
                raise TuneError(f"Choice values must be JSON-able (numbers, strings, lists), got {v!r}") from None
        object.__setattr__(self, "values", vals)
        tokens = self.tokens()
        if len(set(map(repr, tokens))) != len(tokens):
            raise TuneError(f"Choice has duplicate values: {list(vals)}")

    def tokens(self) -> list:
        """The values as Optuna stores them: lists and tuples as their JSON text (categorical values must be
        primitives)."""
        return [v if isinstance(v, _PRIMITIVE) else json.dumps(v) for v in self.values]

    def suggest(self, trial, name: str) -> Any:
        return self.decode(trial.suggest_categorical(name, self.tokens()))

    def grid(self) -> list:
        return self.tokens()

    def center(self) -> Any:
        return self.values[0]

    def encode(self, v: Any) -> Any:
        for tok, c in zip(self.tokens(), self.values):
            if json.dumps(c) == json.dumps(v):
                return tok
        raise TuneError(f"{v!r} is not one of the choices {list(self.values)}")

    def decode(self, raw: Any) -> Any:
        for tok, v in zip(self.tokens(), self.values):
            if tok == raw and type(tok) is type(raw):
                return v
        raise TuneError(f"{raw!r} is not one of the choices {list(self.values)}")


@dataclass(frozen=True)
class Fixed(Entry):
    """A value that is not searched (it is still recorded in ``result.best``)."""

    value: Any  # JSON-able

    def __post_init__(self):
        try:
            json.dumps(self.value, allow_nan=False)
        except (TypeError, ValueError):
            raise TuneError(f"Fixed values must be JSON-able, got {self.value!r}") from None

    def center(self) -> Any:
        return self.value


Dist = LogUniform | Uniform | IntRange | Choice | Fixed
DISTS: dict[str, type] = {c.__name__: c for c in (LogUniform, Uniform, IntRange, Choice, Fixed)}


def _in_range(d: "LogUniform | Uniform", v: Any) -> float:
    if not (is_number(v) and d.lo <= v <= d.hi):
        raise TuneError(f"{v!r} is not in {d!r}")
    return float(v)


def encode_point(space: Mapping[str, "Dist"], point: Mapping[str, Any]) -> dict:
    """``{"lr": 3e-3, "hp.output_mult": 2.0}`` -> the raw Optuna parameters of that point of ``space`` (for
    ``study.enqueue_trial``); keys left out are sampled as usual."""
    out = {}
    for key, v in point.items():
        d = space.get(key)
        if d is None:
            raise TuneError(f"enqueued key {key!r} is not in the search space ({', '.join(space)})")
        if isinstance(d, Fixed):
            raise TuneError(f"enqueued key {key!r} is Fixed({d.value!r}) in the search space: leave it out")
        out[key] = d.encode(v)
    return out


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def dist_to_dict(d: Dist) -> dict:
    out = {"kind": type(d).__name__}
    for f in fields(d):
        v = getattr(d, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def dist_from_dict(d: Mapping) -> Dist:
    d = dict(d)
    cls = DISTS.get(d.pop("kind", None))
    if cls is None:
        raise TuneError(f"not a search-space entry: {d!r}")
    return cls(**d)


def parse_dist(text: str) -> Dist:
    """``"LogUniform(1e-4, 1e-1)"``, ``"Choice([(0.9, 0.95), (0.9, 0.999)])"``, ``"Fixed(0.1)"`` or a bare literal
    (taken as ``Fixed``) -> the entry.  Only these constructors and Python literals are accepted (no eval)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise TuneError(f"cannot parse search-space entry {text!r}: {e.msg}") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = DISTS.get(node.func.id)
        if cls is None:
            raise TuneError(f"unknown search-space kind {node.func.id!r} in {text!r}; use one of {sorted(DISTS)}")
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            return cls(*args, **kwargs)
        except (ValueError, TypeError, SyntaxError) as e:
            raise TuneError(f"bad arguments in {text!r}: {e}") from None
    try:
        return Fixed(ast.literal_eval(node))
    except ValueError:
        raise TuneError(f"cannot parse search-space entry {text!r}: write e.g. LogUniform(1e-4, 1e-1), "
                        "Choice([0.0, 0.1]) or Fixed(0.1)") from None


# ------------------------------------------------------------------------------------------------ keys
# "lr" | "hp.<output_mult|attn_mult|embed_mult>" | "hp.<lr_mult|init_mult>.<role|gain>" | "optimizer.<kwarg>" |
# "objective.<kwarg>": a flat key names one leaf of the trial's configuration
SECTIONS = ("lr", "hp", "optimizer", "objective")


def check_key(key: str) -> None:
    """TuneError unless ``key`` names a leaf of a trial's configuration (see the module docstring)."""
    head, _, rest = key.partition(".")
    ok = False
    if head == "lr":
        ok = rest == ""
    elif head == "hp":
        name, _, roles = rest.partition(".")
        ok = (name in HP_SCALARS and not roles) or (  # roles, module kinds, module keys (checked on the proxy)
            name in HP_PER_ROLE and bool(roles) and all(_HP_KEY.fullmatch(r) for r in roles.split("+")))
    elif head in ("optimizer", "objective"):
        ok = rest.isidentifier() and not (head == "optimizer" and rest == "lr")
    if not ok:
        raise TuneError(
            f"bad search-space key {key!r}; keys are 'lr', 'hp.output_mult', 'hp.attn_mult', 'hp.embed_mult', "
            f"'hp.lr_mult.<role>', 'hp.init_mult.<role>' (roles {', '.join(ROLES + (GAIN,))}, or a module kind "
            "such as 'query' or a module key such as 'blocks.*.attn.c_attn'; 'hp.lr_mult.input+output' gives several "
            "one value), "
            "'optimizer.<option>' (e.g. optimizer.weight_decay) or 'objective.<keyword of your objective>'")


def assemble(values: Mapping[str, Any]) -> dict:
    """Flat ``{"lr": .., "hp.lr_mult.input": ..}`` -> ``{"lr", "hp", "optimizer", "objective"}``."""
    cfg: dict[str, Any] = {"lr": None, "hp": {}, "optimizer": {}, "objective": {}}
    for key, v in values.items():
        head, _, rest = key.partition(".")
        if head == "lr":
            cfg["lr"] = v
        elif head == "hp":
            name, _, roles = rest.partition(".")
            if roles:
                for role in roles.split("+"):  # "input+output": one value for several roles
                    cfg["hp"].setdefault(name, {})[role] = v
            else:
                cfg["hp"][name] = v
        else:
            cfg[head][rest] = v
    return cfg


# ------------------------------------------------------------------------------------------------ default space
MULT = LogUniform(1 / 8, 8)  # output/attention/embedding multipliers and per-role lr multipliers
INIT = LogUniform(1 / 4, 4)  # per-role init multipliers (8x the init std of every hidden layer rarely trains)
LR_FALLBACK = LogUniform(1e-5, 1.0)  # an optimizer muplify has no family for (the space is built before it refuses)
ROLE_ORDER = ("input", "hidden", "output", "vector", GAIN)


def config_value(config: Mapping, key: str) -> Any:
    """The value of the flat space key ``key`` in a nested configuration (the inverse of :func:`assemble`:
    ``"hp.lr_mult.input+output"`` reads the value the two roles share)."""
    cur: Any = config
    for part in key.split("."):
        cur = cur[part.split("+")[0]]
    return cur


def plan_roles(plan: Plan) -> list[str]:
    """Roles (with "gain" for norm gains, apart from other vectors) that some parameter of the plan has; fixed
    parameters (μP leaves them alone) are not listed."""
    present = set()
    for p in plan.values():
        if p.role == "fixed":
            continue
        present.add(GAIN if p.gain else p.role)
    return [r for r in ROLE_ORDER if r in present]


# the forward multipliers and what in the model they act on (a multiplier with nothing to act on is a wasted axis)
HP_ACTS_ON: dict[str, tuple[Callable[[Plan], bool], str]] = {
    "output_mult": (lambda plan: any(p.readout for p in plan.values()),
                    "the model has no readout (an output-role weight producing its prediction)"),
    "attn_mult": (lambda plan: bool(plan.attention), "the model has no attention op"),
    "embed_mult": (lambda plan: bool(plan.by_role("input")), "the model has no input-role layer"),
}


def lr_range(optimizer: Any) -> LogUniform:
    """The global lr's search range: the optimizer family's own ``lr_range`` (muplify.policy's registry; wide, log
    scale), or :data:`LR_FALLBACK` for an optimizer with no family."""
    from ...optim import resolve_optimizer
    from ...policy import family_for

    try:
        return LogUniform(*family_for(resolve_optimizer(optimizer)).lr_range)
    except MuplifyError:
        return LR_FALLBACK


def default_space(plan: Plan, optimizer: Any = "AdamW", per_module: bool = False) -> dict[str, Dist]:
    """The default search space for the model of ``plan`` (see docs/tune.md):

    - ``lr``: log-uniform over the optimizer family's wide range (Adam-like 1e-5..1, SGD 1e-4..10, sign 1e-6..0.1);
      it is the hidden weights' learning rate, the other roles' are relative to it;
    - ``hp.output_mult`` (when the model has a readout), ``hp.attn_mult`` (when every attention op has a query
      projection muplify can scale), ``hp.embed_mult`` (when it has input-role layers): log-uniform over [1/8, 8];
    - ``hp.lr_mult.<role>`` for every role present except the anchor (hidden, else the first present; its lr is
      ``lr`` itself, a second factor on it would only duplicate ``lr``): log-uniform over [1/8, 8]; norm gains get
      their own key ``gain`` (Lingle 2024: trainable gains break lr transfer unless their lr is tuned);
    - ``hp.init_mult.<role>`` for the weight roles present (input, hidden, output; not the readout when it is
      zero-initialised): log-uniform over [1/4, 4].

    ``per_module=True`` (Complete(d)P's per-module multipliers): the per-role axes are replaced by per-*kind* axes
    for the module kinds present (:func:`plan_kinds`; a parameter without a kind keeps its role's axis):
    ``hp.lr_mult.<kind>`` for every kind but the anchor (``mlp_in`` where present, else the first hidden kind: its
    lr is ``lr``) and ``hp.init_mult.<kind>`` for the kinds holding weight matrices (not norms; not the readout when
    it is zero-initialised).  One axis per kind, not per module key: the same kind across layers shares one value.
    """
    space: dict[str, Dist] = {"lr": lr_range(optimizer)}
    for name, (acts_on, _) in HP_ACTS_ON.items():
        scalable = name != "attn_mult" or all(a.query is not None for a in plan.attention)
        if acts_on(plan) and scalable:
            space[f"hp.{name}"] = MULT
    if per_module:
        return {**space, **_per_module_axes(plan)}
    roles = plan_roles(plan)
    anchor = "hidden" if "hidden" in roles else (roles[0] if roles else None)
    for r in roles:
        if r != anchor:
            space[f"hp.lr_mult.{r}"] = MULT
    for r in ("input", "hidden", "output"):
        if r in roles and not (r == "output" and plan.options.readout_zero_init):
            space[f"hp.init_mult.{r}"] = INIT
    return space


def plan_kinds(plan: Plan) -> list[str]:
    """The module kinds present in the plan (a parameter without a kind: its role, "gain" for a norm gain), in the
    order of :data:`muplify.module_kinds.MODULE_KINDS`, roles after them; fixed parameters left out."""
    from ...module_kinds import MODULE_KINDS

    present = set()
    for p in plan.values():
        if p.role == "fixed":
            continue
        present.add(p.module_kind if p.module_kind in MODULE_KINDS else (GAIN if p.gain else p.role))
    return [k for k in MODULE_KINDS if k in present] + [r for r in ROLE_ORDER if r in present]


WEIGHT_KINDS = ("embedding", "query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out", "readout", "input",
                "hidden", "output")


def _per_module_axes(plan: Plan) -> dict[str, Dist]:
    kinds = plan_kinds(plan)
    hidden_kinds = [k for k in kinds if any(p.role == "hidden" and (p.module_kind == k or (
        p.module_kind_by == "role" and p.role == k)) for p in plan.values())]
    anchor = "mlp_in" if "mlp_in" in kinds else (hidden_kinds[0] if hidden_kinds else (kinds[0] if kinds else None))
    out: dict[str, Dist] = {}
    for k in kinds:  # the anchor is Fixed(1) (a role key such as "hidden" must not reach it)
        out[f"hp.lr_mult.{k}"] = MULT if k != anchor else Fixed(1.0)
    for k in kinds:
        if k in WEIGHT_KINDS and not (k in ("readout", "output") and plan.options.readout_zero_init):
            out[f"hp.init_mult.{k}"] = INIT
    return out


def space_to_dict(space: Mapping[str, Dist]) -> dict:
    return {k: dist_to_dict(d) for k, d in space.items()}


def space_from_dict(d: Mapping) -> dict[str, Dist]:
    return {k: dist_from_dict(v) for k, v in d.items()}


def searched(space: Mapping[str, Dist]) -> dict[str, Dist]:
    return {k: d for k, d in space.items() if not isinstance(d, Fixed)}
