"""Stage 3: the plan — the *facts* muplify established about one model, plain and printable.

Per parameter: its names, shape, role, fans (sympy, in the width symbol ``w``) and base fans, layout (which stored
axes hold fan-in / fan-out channels), its uses in the graph, how the role was decided, and the rule that drew its
current values.  Per model: the forward-multiplier *sites* (module boundaries where the readout input, the attention
query, an embedding output or a residual branch can be scaled), the options and the μP hyperparameters ``hp``.

What μP *does* with these facts (init factors, learning-rate / weight-decay / ε multipliers, forward multipliers)
is derived by :mod:`muplify.policy`, the one place the μP rules live.  The derived values are exposed read-only on
each entry (``plan[name].lr_mult["adam"]``, ``.init_scale``) and as ``plan.forward``; an override changes a fact and
everything is derived again.  Once applied to a model the plan is frozen: edits raise :class:`PlanError`.

    >>> from muplify import analyze
    >>> from muplify.models import MLP
    >>> plan = analyze(MLP(width=128), base_width=64)
    >>> plan["net.2.weight"].role, str(plan["net.2.weight"].fan_in), plan["net.2.weight"].lr_mult["adam"]
    ('hidden', 'w', 0.5)
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Iterator, Literal, Union, get_args, get_origin, get_type_hints

import sympy

from .errors import MuplifyError, PlanError

__all__ = ["Decision", "decided_by_text", "Plan", "ParamPlan", "Site", "FoldTarget", "Attention", "Options", "HyperParams", "Role", "ROLES",
           "role_from_fans", "PLAN_FORMAT"]

Role = Literal["input", "hidden", "output", "vector", "fixed"]
ROLES: tuple[str, ...] = get_args(Role)
SiteKind = Literal["readout", "query", "embedding", "branch"]
Where = Literal["input", "output"]
PLAN_FORMAT = "muplify-plan/2"


class Decision(StrEnum):
    """How a parameter's role was decided (``ParamPlan.decided_by`` is its text: the value, and for a guess why)."""

    GRAPH = "graph"  # every fact the role rests on comes from the graph
    GUESS = "guess"  # a marked guess: the plan's warnings name it, with why
    OVERRIDE = "override"  # the user set the role
    DTYPE = "dtype"  # a non-float parameter: fixed, left untouched


def decided_by_text(decision: Decision, why: str = "") -> str:
    """The plan's ``decided_by`` field: ``"graph"``, ``"override"``, ``"dtype"`` or ``"guess: <why>"``."""
    return f"{decision.value}: {why}" if decision is Decision.GUESS else decision.value


def role_from_fans(fan_in_inf: bool, fan_out_inf: bool) -> Role:
    """TP-V Table 3: the role of a weight from whether its fan-in / fan-out grow with width."""
    return {(False, True): "input", (True, True): "hidden", (True, False): "output", (False, False): "fixed"}[
        (fan_in_inf, fan_out_inf)]


# The μP rules live in muplify.policy, a later stage; it registers itself here on import so that a plan can show
# what the rules derive from its facts without this module importing the rules.
POLICY = None


def _policy():
    if POLICY is None:
        raise PlanError("the μP policy is not loaded: import muplify (or muplify.policy) first")
    return POLICY


# ------------------------------------------------------------------------------------------------ options and hp
def _positive_int(v: Any) -> str | None:
    return None if v is None or v > 0 else "a positive int (a number of residual blocks)"


def _positive_count(v: Any) -> str | None:
    return None if v is None or v > 0 else "a positive int"


def _alpha(v: Any) -> str | None:
    return None if 0 < v <= 1 else "in (0, 1] (1.0: CompleteP, 0.5: depth-μP)"


def _registered_parametrization(v: Any) -> str | None:
    if POLICY is None or v in POLICY.PARAMETRIZATIONS:
        return None
    return f"one of {sorted(POLICY.PARAMETRIZATIONS)} (or a registered muplify.policy.Parametrization)"


def _opt(default: Any, doc: str, check: Any = None) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check})


@dataclass(frozen=True)
class Options:
    """How muplify was asked to parametrize (the keyword options of :func:`muplify.muplify`).  Each field is
    validated from its annotation (a ``Literal`` lists the allowed values) and, where a type is not enough, its
    ``check``; a bad value raises :class:`MuplifyError` naming the option and what it accepts."""

    head_scaling: Literal["heads", "head_dim"] = _opt(
        "heads", "'heads': head_dim fixed, heads grow; 'head_dim': the reverse")
    init: Literal["auto", "fan_in", "fan_out", "fixed"] | None = _opt(
        "auto", "how the current init rule is read; None: keep the current values")
    weight_decay: Literal["coupled", "scaled"] = _opt("coupled", "coupled: lr·wd per step kept as at base width")
    eps: Literal["scaled", "fixed"] = _opt("scaled", "scaled: Adam ε follows the gradient scale (1/width_mult)")
    readout_zero_init: bool = _opt(False, "zero the readout (and its bias) at init")
    query_zero_init: bool = _opt(False, "zero the query projection (rows of a fused qkv) at init")
    base_depth: int | None = _opt(None, "CompleteP: depth the hyperparameters were tuned at (None: width only)",
                                  _positive_int)
    depth: int | None = _opt(None, "number of residual blocks (inferred from the graph)", _positive_int)
    depth_alpha: float = _opt(1.0, "CompleteP exponent: branches × (base_depth/depth)^alpha", _alpha)
    parametrization: str = _opt("mup", "'mup', 'sp' (standard), 'spectral', or a registered Parametrization's name",
                                _registered_parametrization)
    capture: Literal["shallow", "full"] = _opt(
        "shallow", "'shallow': capture a twin with two blocks of each repeated stack; 'full': every block")
    base_batch_size: int | None = _opt(None, "batch size the hyperparameters were tuned at (mu.optimizer(..., "
                                       "batch_size=) then applies the batch-size rules)", _positive_count)
    base_steps: int | None = _opt(None, "number of optimizer steps the hyperparameters were tuned at "
                                  "(mu.optimizer(..., steps=) then applies the duration rules)", _positive_count)
    width_given: bool = _opt(False, "the user passed width= (so the width is not a guess)")

    def __post_init__(self):
        hints = _option_types()
        for f in fields(self):
            v = getattr(self, f.name)
            why = _type_error(hints[f.name], v)
            if why is None and f.metadata.get("check") is not None:
                why = f.metadata["check"](v)
            if why is not None:
                raise MuplifyError(f"{f.name} must be {why}, got {v!r} ({f.metadata['doc']})")
        if self.depth is not None and self.base_depth is None:
            raise MuplifyError("depth= needs base_depth= (the depth the hyperparameters were tuned at)")

    @classmethod
    def from_kwargs(cls, **options: Any) -> "Options":
        """Options from keyword arguments; an unknown name raises, listing the valid ones."""
        names = [f.name for f in fields(cls) if f.name != "width_given"]
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise MuplifyError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                               f"muplify's options are {', '.join(names)}")
        return cls(**options)


def _option_types() -> dict[str, Any]:
    global _OPTION_TYPES
    if _OPTION_TYPES is None:
        _OPTION_TYPES = get_type_hints(Options)
    return _OPTION_TYPES


_OPTION_TYPES: dict[str, Any] | None = None


def _type_error(tp: Any, v: Any) -> str | None:
    """None if ``v`` fits the annotation ``tp``; otherwise what the annotation allows, in words."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return None if v in args and type(v) is type(next(a for a in args if a == v)) else \
            " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        wants = [_type_error(a, v) for a in args]
        return None if any(w is None for w in wants) else " or ".join(w for w in wants)
    if tp is type(None):
        return None if v is None else "None"
    if tp is bool:
        return None if isinstance(v, bool) else "True or False"
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "an int"
    if tp is float:
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "a number"
    if tp is str:
        return None if isinstance(v, str) else "a string"
    return None if isinstance(v, tp) else f"a {getattr(tp, '__name__', tp)}"


HP_SCALARS = ("output_mult", "attn_mult", "embed_mult")
HP_PER_ROLE = ("init_mult", "lr_mult")
GAIN = "gain"  # per-role hp dicts also take "gain": the trainable norm gains (a subset of "vector")


@dataclass(frozen=True)
class HyperParams:
    """The μP hyperparameters a proxy sweep tunes (TP-V Table 1), base-anchored: at ``width == base_width`` each is
    exactly the constant a user would write into the model by hand; at other widths it keeps that meaning."""

    output_mult: float = 1.0  # α_out: multiplies the readout's input
    attn_mult: float = 1.0  # α_attn: multiplies the attention logits (before softmax), on top of the μP scale
    embed_mult: float = 1.0  # α_emb: multiplies the output of every input-role layer (embeddings, first layer)
    # keys: a role (or "gain"), a module kind ("query", "mlp_in", ...) or a module key ("blocks.*.attn.c_attn"); per
    # parameter the most specific wins: module key > module kind > "gain" (norm gains) > role (muplify.module_kinds)
    init_mult: Mapping[str, float] = field(default_factory=dict)  # role / kind / module key -> factor on init values
    lr_mult: Mapping[str, float] = field(default_factory=dict)  # role / kind / module key -> factor on the lr

    @classmethod
    def from_dict(cls, hp: Mapping | "HyperParams" | None) -> "HyperParams":
        """Validate plain data (``{"output_mult": 2.0, "lr_mult": {"input": 4.0}}``); bad keys, roles or values
        raise PlanError naming the entry and what is allowed."""
        if hp is None:
            return cls()
        if isinstance(hp, HyperParams):
            return hp
        if not isinstance(hp, Mapping):
            raise PlanError(f"hp must be a dict like {{'output_mult': 2.0, 'lr_mult': {{'input': 4.0}}}}, got "
                            f"{type(hp).__name__}")
        allowed = HP_SCALARS + HP_PER_ROLE
        bad = [k for k in hp if k not in allowed]
        if bad:
            raise PlanError(f"unknown hp keys {bad}; allowed: {list(allowed)}")
        out: dict[str, Any] = {}
        for k in HP_SCALARS:
            if k in hp:
                out[k] = _positive(f"hp[{k!r}]", hp[k])
        for k in HP_PER_ROLE:
            if k not in hp:
                continue
            d = hp[k]
            if not isinstance(d, Mapping):
                raise PlanError(f"hp[{k!r}] must map roles to factors, e.g. {{'hidden': 0.5}}; got {d!r}")
            # roles, module kinds or module keys: which exist is checked against the plan (muplify.policy.derive)
            unknown = [r for r in d if not (isinstance(r, str) and _HP_KEY.fullmatch(r))]
            if unknown:
                raise PlanError(f"hp[{k!r}] has unknown roles {unknown}; keys are roles {list(ROLES + (GAIN,))}, "
                                "module kinds (e.g. 'query', 'mlp_in') or module keys (e.g. 'blocks.*.attn.c_attn')")
            # a zero learning rate freezes a role (e.g. norm gains); a zero init is readout_zero_init's job
            out[k] = {r: _positive(f"hp[{k!r}][{r!r}]", v, allow_zero=(k == "lr_mult")) for r, v in d.items()}
        return cls(**out)

    def to_dict(self) -> dict:
        """Plain JSON-able data; ``HyperParams.from_dict(hp.to_dict()) == hp``."""
        return {"output_mult": self.output_mult, "attn_mult": self.attn_mult, "embed_mult": self.embed_mult,
                "init_mult": dict(self.init_mult), "lr_mult": dict(self.lr_mult)}

    def role_init(self, role: str, gain: bool = False) -> float:
        """The init factor of a parameter with this role (a norm gain: the "gain" entry first)."""
        return self.init_mult.get(GAIN, self.init_mult.get(role, 1.0)) if gain else self.init_mult.get(role, 1.0)

    def role_lr(self, role: str, gain: bool = False) -> float:
        """The lr factor of a parameter with this role (a norm gain: the "gain" entry first)."""
        return self.lr_mult.get(GAIN, self.lr_mult.get(role, 1.0)) if gain else self.lr_mult.get(role, 1.0)

    def param_init(self, p: "ParamPlan") -> float:
        """The init factor of a plan entry: its module key's, else its module kind's, else its role's."""
        return _lookup(self.init_mult, p)

    def param_lr(self, p: "ParamPlan") -> float:
        """The lr factor of a plan entry: its module key's, else its module kind's, else its role's."""
        return _lookup(self.lr_mult, p)

    def per_module_keys(self) -> set[str]:
        """The keys of ``init_mult`` / ``lr_mult`` that are not roles (module kinds or module keys)."""
        return {k for d in (self.init_mult, self.lr_mult) for k in d if k not in ROLES + (GAIN,)}

    def is_default(self) -> bool:
        """Whether every hyperparameter is 1 (μP as derived, nothing tuned)."""
        return self == HyperParams()


_HP_KEY = re.compile(r"[A-Za-z_*][\w*]*(\.[\w*]+)*")


def _lookup(d: Mapping[str, float], p: "ParamPlan") -> float:
    """Precedence: module key > module kind > "gain" (norm gains) > role."""
    if p.module_key and p.module_key in d:
        return d[p.module_key]
    if p.module_kind and p.module_kind in d:
        return d[p.module_kind]
    if p.gain and GAIN in d:
        return d[GAIN]
    return d.get(p.role, 1.0)


def _positive(what: str, v: Any, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v > 0 or (allow_zero and v == 0))
    if not ok:
        need = "finite and >= 0" if allow_zero else "finite and > 0"
        raise PlanError(f"{what} must be a number, {need}; got {v!r}")
    return float(v)


# ------------------------------------------------------------------------------------------------ facts
@functools.lru_cache(maxsize=4096)
def _evaluate(expr: sympy.Expr, sym: sympy.Symbol, width: int) -> int:
    """``expr`` at ``sym = width``, as an int (cached: a deep model's blocks share a handful of fan expressions, and
    sympy's ``subs`` costs ~0.1 ms a call)."""
    return int(expr.subs(sym, width)) if expr.has(sym) else int(expr)


@functools.lru_cache(maxsize=4096)
def _parse(text: str, sym: sympy.Symbol) -> sympy.Expr:
    """A plan's fan expression from its text (cached: parsing costs ~1.5 ms, and a deep model repeats a handful)."""
    return sympy.sympify(text, locals={str(sym): sym})


@dataclass(frozen=True)
class FoldTarget:
    """Scaling ``param`` (or only ``[start:stop]`` of its ``axis``) reproduces a multiplier at a site (export)."""

    param: str
    axis: int | None = None  # None: the whole tensor
    start: int = 0
    stop: int = 0


@dataclass(frozen=True)
class Site:
    """A module boundary whose tensor carries exactly one μP quantity, where a forward multiplier can act."""

    kind: SiteKind  # readout input | attention query | embedding (input-layer) output | residual branch output
    module: str  # module path, as in named_modules()
    where: Where  # "input": the module's first tensor argument; "output": the tensor it returns
    param: str  # the parameter the site belongs to ("" for a branch)
    channels: tuple[int, int, int] | None = None  # (start, stop, total) of the last axis, for fused projections
    fold: tuple[FoldTarget, ...] = ()  # parameters a multiplier here folds into (export); () when none can


@dataclass(frozen=True)
class Attention:
    """One attention op: its head dimension and where its query can be scaled."""

    module: str  # module that calls the attention op
    op: str  # "sdpa" | "manual"
    head_dim: sympy.Expr  # in the width symbol: grows only under head_scaling="head_dim"
    base_head_dim: int
    query: Site | None  # None: no module boundary carries the query alone
    missing: str = ""  # why the query site was not found


@dataclass(frozen=True)
class Layout:
    """Which axes of the stored tensor are contracted (fan-in) and which survive (fan-out), read from its use."""

    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]


_DERIVED = ("init_scale", "lr_mult", "wd_mult", "eps_mult", "zero_channels")


@dataclass
class ParamPlan:
    """The facts about one parameter (tied parameters: one entry, every name in ``aliases``)."""

    name: str  # canonical name: the first in named_parameters()
    aliases: list[str]
    shape: tuple[int, ...]
    role: Role
    fan_in: sympy.Expr  # in the width symbol, e.g. 4*w
    fan_out: sympy.Expr
    base_fan_in: int  # the same fans at the base model
    base_fan_out: int
    base_shape: tuple[int, ...]
    layout: Layout | None  # None: used elementwise (biases, gains, tokens)
    decided_by: str  # decided_by_text(Decision, why): "graph" | "guess: <why>" | "override" | "dtype"
    uses: list[str] = field(default_factory=list)
    readout: bool = False  # an output-role weight producing the model's prediction (not e.g. a MoE router)
    gain: bool = False  # a vector that multiplies a normalised activation (LayerNorm/RMSNorm/BatchNorm weight)
    in_branch: bool = False  # inside a residual branch (CompleteP's depth rules apply)
    bias_of: str | None = None  # for a bias: the weight of its layer (its init is judged by that layer's fan_in)
    init_rule: str = "keep"  # rule that drew the current values: fan_in|fan_out|fixed|zero|const|deferred|keep
    user_lr_mult: float = 1.0  # set by overrides: an extra factor on this parameter's lr
    user_init_mult: float = 1.0  # set by overrides: an extra factor on this parameter's initial values
    note: str = ""
    module_key: str = ""  # module path with block indices as '*' (muplify.module_kinds): a per-module hp key
    module_kind: str = ""  # embedding | query | key | value | qkv | attn_out | mlp_in | mlp_out | norm | readout | role
    module_kind_by: str = ""  # how the kind was decided: "graph: <evidence>" | "name: <hint>" | "role"

    def __post_init__(self):
        object.__setattr__(self, "_plan", None)

    def __setattr__(self, key, value):
        plan = self.__dict__.get("_plan")
        if plan is not None and plan.frozen:
            raise PlanError(f"the plan is applied to a model and read-only (tried to set {self.name}.{key}); "
                            "build the model again and pass overrides= to muplify(), or edit a saved plan file "
                            "and pass plan= to a fresh model")
        object.__setattr__(self, key, value)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_plan"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__["_plan"] = None

    # facts that are plain arithmetic on other facts
    @property
    def width_mult_in(self) -> float:
        """m_in = fan_in / base_fan_in."""
        return self._size(self.fan_in) / self.base_fan_in

    @property
    def width_mult_out(self) -> float:
        """m_out = fan_out / base_fan_out."""
        return self._size(self.fan_out) / self.base_fan_out

    def _size(self, expr: sympy.Expr) -> int:
        plan = self.__dict__["_plan"]
        return _evaluate(expr, plan.width_symbol, plan.width) if plan is not None else int(expr)

    @property
    def guessed(self) -> bool:
        """Whether the role was decided without graph evidence (named in the plan's warnings)."""
        return self.decision is Decision.GUESS

    @property
    def decision(self) -> Decision:
        """``decided_by`` as a :class:`Decision` (the field stays text in saved plans)."""
        return Decision(self.decided_by.partition(":")[0])

    # what the policy derives (read-only views)
    def _rules(self):
        plan = self.__dict__["_plan"]
        if plan is None:
            raise PlanError(f"{self.name} is not part of a plan: the policy needs the plan's width and options")
        return plan.rules()[self.name]

    @property
    def init_scale(self) -> float:
        """Factor the rewrite multiplies the current values by (0.0: zero-init)."""
        return self._rules().init_scale

    @property
    def lr_mult(self) -> dict[str, float]:
        """Learning-rate multiplier per registered optimizer family."""
        return dict(self._rules().lr_mult)

    @property
    def wd_mult(self) -> dict[str, float]:
        """Weight-decay multiplier per registered optimizer family (coupled policy: 1 / the μP lr factor)."""
        return dict(self._rules().wd_mult)

    @property
    def eps_mult(self) -> dict[str, float]:
        """Multiplier of the optimizer's ε per family (1 where the family has no gradient-scale ε)."""
        return dict(self._rules().eps_mult)

    @property
    def zero_channels(self) -> tuple[int, int, int] | None:
        """(axis, start, stop) zeroed by query_zero_init."""
        return self._rules().zero_channels


@dataclass
class Plan(Mapping):
    """Facts about one model at one width; what μP does with them is ``muplify.policy``'s (``plan.forward``,
    ``plan[name].lr_mult`` ...)."""

    base_width: int
    width: int
    params: dict[str, ParamPlan]
    sites: list[Site]
    attention: list[Attention]
    options: Options
    hp: HyperParams = field(default_factory=HyperParams)
    notes: list[str] = field(default_factory=list)
    width_symbol: sympy.Symbol = field(default_factory=lambda: sympy.Symbol("w", positive=True, integer=True))
    model_class: str = ""
    width_source: str = ""  # how the width was chosen: config attribute, most-used dim, width=, base model
    scaling_dims: list[tuple[int, str, int]] = field(default_factory=list)  # (size, expression, parameter axes)
    blocks: list[str] = field(default_factory=list)  # residual blocks found (with base_depth), in graph order
    capture_seconds: float | None = None
    frozen: bool = False
    lint: list[str] = field(default_factory=list)  # warnings found after the plan was made (optimizer, first step)

    def __post_init__(self):
        for p in self.params.values():
            p.__dict__["_plan"] = self
        self.__dict__["_rules_cache"] = None

    def __setattr__(self, key, value):
        if self.__dict__.get("frozen") and key not in ("frozen",):
            raise PlanError(f"the plan is applied to a model and read-only (tried to set plan.{key}); build the "
                            "model again and pass the change to muplify()")
        object.__setattr__(self, key, value)
        if key in ("params", "sites", "attention", "options", "hp", "width", "base_width"):
            self.__dict__["_rules_cache"] = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_rules_cache"] = None
        return d

    def __setstate__(self, state):
        self.__dict__.update(state)
        for p in self.params.values():
            p.__dict__["_plan"] = self

    # Mapping interface -------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> ParamPlan:
        if name in self.params:
            return self.params[name]
        for p in self.params.values():
            if name in p.aliases:
                return p
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def width_mult(self) -> float:
        """m = width / base_width."""
        return self.width / self.base_width

    def by_role(self, role: str) -> list[str]:
        """Names of the parameters with this role."""
        return [n for n, p in self.params.items() if p.role == role]

    def summary(self) -> dict[str, int]:
        """How many parameters have each role."""
        out = {r: 0 for r in ROLES}
        for p in self.params.values():
            out[p.role] += 1
        return out

    # derived -----------------------------------------------------------------------------------------------------
    def rules(self):
        """Per parameter, what the policy derives (cached until a fact changes)."""
        if self.__dict__.get("_rules_cache") is None:
            self.__dict__["_rules_cache"] = _policy().derive(self)
        return self.__dict__["_rules_cache"]

    def invalidate(self) -> None:
        """Forget derived values (after a fact changed in place, e.g. a re-detected init rule)."""
        self.__dict__["_rules_cache"] = None

    @property
    def forward(self):
        """The forward multipliers the policy derives from the sites (:class:`muplify.policy.ForwardMultiplier`)."""
        return _policy().forward_multipliers(self)

    @property
    def warnings(self) -> list[str]:
        """μP lint: what in this model or configuration is known to break μTransfer, each with what to do."""
        return _policy().lint(self) + list(self.lint)

    @contextlib.contextmanager
    def _editable(self):
        was = self.frozen
        object.__setattr__(self, "frozen", False)
        try:
            yield self
        finally:
            object.__setattr__(self, "frozen", was)
            self.invalidate()

    # overrides ---------------------------------------------------------------------------------------------------
    OVERRIDABLE = ("role", "lr_mult", "init_mult", "readout", "note")

    def override(self, pattern: str, **changes) -> list[str]:
        """Change the facts of every entry whose name (or alias) matches the glob ``pattern`` (before the plan is
        applied; pass ``overrides=`` to :func:`muplify`).  Everything derived follows: init, learning rates, weight
        decay, ε and forward multipliers.  Returns the names changed.

        ``role=`` sets the role; ``lr_mult=`` / ``init_mult=`` are extra factors on this parameter's learning rate /
        initial values on top of μP; ``readout=`` marks an output-role weight as the model's readout (or not).
        """
        if self.frozen:
            raise PlanError("the plan is applied to a model and read-only; build the model again and pass "
                            "overrides= to muplify(), or edit a saved plan file and pass plan= to a fresh model")
        bad = sorted(set(changes) - set(self.OVERRIDABLE))
        if bad:
            raise PlanError(f"cannot override {bad}; allowed fields: {sorted(self.OVERRIDABLE)}")
        hits = [n for n, p in self.params.items() if any(fnmatch.fnmatchcase(a, pattern) for a in [n, *p.aliases])]
        if not hits:
            raise PlanError(f"override pattern {pattern!r} matches no parameter; names look like {list(self)[:3]}")
        if "role" in changes and changes["role"] not in ROLES:
            raise PlanError(f"role must be one of {ROLES}, got {changes['role']!r}")
        for k in ("lr_mult", "init_mult"):
            if k in changes:
                changes[k] = _positive(f"override {pattern!r} {k}", changes[k], allow_zero=(k == "lr_mult"))
        for n in hits:
            p = self.params[n]
            if "role" in changes:
                p.role = changes["role"]
                p.readout = changes.get("readout", p.readout and p.role == "output")
            elif "readout" in changes:
                p.readout = bool(changes["readout"]) and p.role == "output"
            if "lr_mult" in changes:
                p.user_lr_mult = changes["lr_mult"]
            if "init_mult" in changes:
                p.user_init_mult = changes["init_mult"]
            p.decided_by = Decision.OVERRIDE.value if "role" in changes else p.decided_by
            p.note = (p.note + "; " if p.note else "") + changes.get("note", f"overridden: {sorted(changes)}")
        self.invalidate()
        return hits

    # printing ----------------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return _policy().describe(self)

    __repr__ = __str__

    # serialisation -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The facts as plain JSON-able data (format ``muplify-plan/2``); derived values are not stored."""
        def enc_param(p: ParamPlan) -> dict:
            d = {f.name: getattr(p, f.name) for f in fields(p)}
            d["fan_in"], d["fan_out"] = str(p.fan_in), str(p.fan_out)
            d["shape"], d["base_shape"] = list(p.shape), list(p.base_shape)
            d["layout"] = None if p.layout is None else [list(p.layout.fan_in_axes), list(p.layout.fan_out_axes)]
            return d

        def enc_site(s: Site) -> dict:
            d = asdict(s)
            d["fold"] = [asdict(f) for f in s.fold]
            return d

        return {
            "format": PLAN_FORMAT,
            "model_class": self.model_class,
            "base_width": self.base_width,
            "width": self.width,
            "width_symbol": str(self.width_symbol),
            "width_source": self.width_source,
            "scaling_dims": [list(d) for d in self.scaling_dims],
            "blocks": list(self.blocks),
            "options": asdict(self.options),
            "hp": self.hp.to_dict(),
            "notes": self.notes,
            "params": [enc_param(p) for p in self.params.values()],
            "sites": [enc_site(s) for s in self.sites],
            "attention": [{"module": a.module, "op": a.op, "head_dim": str(a.head_dim),
                           "base_head_dim": a.base_head_dim, "query": None if a.query is None else enc_site(a.query),
                           "missing": a.missing} for a in self.attention],
        }

    def to_json(self, path: str | None = None) -> str:
        """The plan as human-readable JSON; written to ``path`` when given.  Re-apply with ``muplify(model, plan=path)``."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """A plan from :meth:`to_dict`'s data; PlanError for anything else."""
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            fmt = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise PlanError(f"not a muplify plan (format {fmt!r}); expected {PLAN_FORMAT!r} (save one with "
                            "mu.plan.to_json(path))")
        try:
            return cls._decode(d)
        except (KeyError, TypeError, ValueError, sympy.SympifyError) as e:
            raise PlanError(f"malformed muplify plan: {type(e).__name__}: {e}") from e

    @classmethod
    def _decode(cls, d: Mapping) -> "Plan":
        sym = sympy.Symbol(d.get("width_symbol", "w"), positive=True, integer=True)
        expr = lambda s: _parse(str(s), sym)  # noqa: E731 - plain arithmetic strings only

        def dec_site(s: Mapping) -> Site:
            return Site(s["kind"], s["module"], s["where"], s["param"],
                        tuple(s["channels"]) if s.get("channels") else None,
                        tuple(FoldTarget(**f) for f in s.get("fold", ())))

        params = {}
        for e in d["params"]:
            e = dict(e)
            e["fan_in"], e["fan_out"] = expr(e["fan_in"]), expr(e["fan_out"])
            e["shape"], e["base_shape"] = tuple(e["shape"]), tuple(e["base_shape"])
            e["layout"] = None if e.get("layout") is None else Layout(tuple(e["layout"][0]), tuple(e["layout"][1]))
            params[e["name"]] = ParamPlan(**e)
        attention = [Attention(a["module"], a["op"], expr(a["head_dim"]), a["base_head_dim"],
                               None if a["query"] is None else dec_site(a["query"]), a.get("missing", ""))
                     for a in d.get("attention", [])]
        return cls(d["base_width"], d["width"], params, [dec_site(s) for s in d.get("sites", [])], attention,
                   Options(**d["options"]), HyperParams.from_dict(d.get("hp")), list(d.get("notes", [])), sym,
                   d.get("model_class", ""), d.get("width_source", ""),
                   [tuple(x) for x in d.get("scaling_dims", [])], list(d.get("blocks", [])))

    @classmethod
    def from_json(cls, path_or_text: str) -> "Plan":
        """A plan from a JSON file path or JSON text (:meth:`to_json`)."""
        text = path_or_text
        if not path_or_text.lstrip().startswith("{"):
            try:
                with open(path_or_text) as fh:
                    text = fh.read()
            except OSError as e:
                raise PlanError(f"cannot read the plan file {path_or_text!r}: {e}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"the plan file is not JSON: {e}") from e
        return cls.from_dict(data)

    def copy(self) -> "Plan":
        """An unfrozen copy (the facts; derived values are recomputed)."""
        out = Plan.from_dict(json.loads(self.to_json()))
        out.capture_seconds = self.capture_seconds
        return out

    def replace(self, **changes) -> "Plan":
        """An unfrozen copy with some top-level facts changed (``hp=``, ``options=``)."""
        out = self.copy()
        for k, v in changes.items():
            setattr(out, k, v)
        return out
