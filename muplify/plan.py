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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Iterator, Literal

import sympy

from . import options as _options
from .errors import PlanError
from .options import ROLES, HyperParams, Options, Role, _positive

__all__ = ["Decision", "decided_by_text", "Plan", "ParamPlan", "Site", "FoldTarget", "Attention", "Role", "ROLES",
           "role_from_fans", "PLAN_FORMAT"]

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


def _policy():
    """The μP policy (:mod:`muplify.policy` registers itself in :mod:`muplify.options` on import)."""
    if _options.POLICY is None:
        raise PlanError("the μP policy is not loaded: import muplify (or muplify.policy) first")
    return _options.POLICY


def role_from_fans(fan_in_inf: bool, fan_out_inf: bool) -> Role:
    """TP-V Table 3: the role of a weight from whether its fan-in / fan-out grow with width."""
    return {(False, True): "input", (True, True): "hidden", (True, False): "output", (False, False): "fixed"}[
        (fan_in_inf, fan_out_inf)]


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
