"""Stage 3's options and hyperparameters: :class:`Options` (how muplify analyses a model and which rules it
applies, validated from the annotations) and :class:`HyperParams` (the μP hyperparameters a proxy sweep tunes),
both plain frozen records a :class:`muplify.plan.Plan` carries."""
from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, Union, get_args, get_origin, get_type_hints

from .errors import MuplifyError, PlanError

__all__ = ["Options", "HyperParams", "HP_SCALARS", "HP_PER_ROLE", "GAIN", "ROLES", "Role"]

Role = Literal["input", "hidden", "output", "vector", "fixed"]
ROLES: tuple[str, ...] = get_args(Role)

# The μP rules live in muplify.policy, a later stage; it registers itself here on import so that options can name
# the registered parametrizations and a plan can show what the rules derive from its facts, without importing them.
POLICY = None


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


class HpTarget(Protocol):
    """What a per-parameter hp lookup reads of a plan entry (:class:`muplify.plan.ParamPlan` has it)."""

    role: str
    module_kind: str
    module_key: str
    gain: bool


HP_SCALARS = ("output_mult", "attn_mult", "embed_mult")
HP_PER_ROLE = ("init_mult", "lr_mult")
GAIN = "gain"  # per-role hp dicts also take "gain": the trainable norm gains (a subset of "vector")
TUNED_ROLES = "tuned_roles"  # hp key: the roles the values were tuned under (checked by muplify.tuned_roles)


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
    # what the values were tuned under (muplify.tune writes it into result.best["hp"]): {parameter: (role, fan_in
    # scales, fan_out scales)}; muplify() refuses a model whose roles differ (muplify.tuned_roles).  None: unchecked
    tuned_roles: Mapping[str, tuple] | None = None

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
        allowed = HP_SCALARS + HP_PER_ROLE + (TUNED_ROLES,)
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
        if hp.get(TUNED_ROLES) is not None:
            out[TUNED_ROLES] = _tuned_roles(hp[TUNED_ROLES])
        return cls(**out)

    def to_dict(self) -> dict:
        """Plain JSON-able data; ``HyperParams.from_dict(hp.to_dict()) == hp``."""
        d = {"output_mult": self.output_mult, "attn_mult": self.attn_mult, "embed_mult": self.embed_mult,
             "init_mult": dict(self.init_mult), "lr_mult": dict(self.lr_mult)}
        if self.tuned_roles is not None:
            d[TUNED_ROLES] = {n: list(s) for n, s in self.tuned_roles.items()}
        return d

    def values(self) -> dict:
        """:meth:`to_dict` without the tuned roles: the values themselves (what a plan prints)."""
        d = self.to_dict()
        d.pop(TUNED_ROLES, None)
        return d

    def role_init(self, role: str, gain: bool = False) -> float:
        """The init factor of a parameter with this role (a norm gain: the "gain" entry first)."""
        return self.init_mult.get(GAIN, self.init_mult.get(role, 1.0)) if gain else self.init_mult.get(role, 1.0)

    def role_lr(self, role: str, gain: bool = False) -> float:
        """The lr factor of a parameter with this role (a norm gain: the "gain" entry first)."""
        return self.lr_mult.get(GAIN, self.lr_mult.get(role, 1.0)) if gain else self.lr_mult.get(role, 1.0)

    def param_init(self, p: HpTarget) -> float:
        """The init factor of a plan entry: its module key's, else its module kind's, else its role's."""
        return _lookup(self.init_mult, p)

    def param_lr(self, p: HpTarget) -> float:
        """The lr factor of a plan entry: its module key's, else its module kind's, else its role's."""
        return _lookup(self.lr_mult, p)

    def per_module_keys(self) -> set[str]:
        """The keys of ``init_mult`` / ``lr_mult`` that are not roles (module kinds or module keys)."""
        return {k for d in (self.init_mult, self.lr_mult) for k in d if k not in ROLES + (GAIN,)}

    def is_default(self) -> bool:
        """Whether every hyperparameter is 1 (μP as derived, nothing tuned)."""
        return self.values() == HyperParams().values()


def _tuned_roles(sig: Any) -> dict[str, tuple]:
    """Validate ``hp["tuned_roles"]``: ``{parameter: [role, fan_in scales, fan_out scales]}``."""
    if not isinstance(sig, Mapping):
        raise PlanError(f"hp[{TUNED_ROLES!r}] maps parameter names to [role, fan_in scales, fan_out scales] (as "
                        f"muplify.tune records it); got {type(sig).__name__}")
    out = {}
    for n, s in sig.items():
        ok = isinstance(n, str) and isinstance(s, (list, tuple)) and len(s) == 3 and s[0] in ROLES and \
            all(isinstance(x, bool) for x in s[1:])
        if not ok:
            raise PlanError(f"hp[{TUNED_ROLES!r}][{n!r}] must be [role, fan_in scales, fan_out scales] with a role "
                            f"of {list(ROLES)} and two booleans; got {s!r}")
        out[n] = tuple(s)
    return out


_HP_KEY = re.compile(r"[A-Za-z_*][\w*]*(\.[\w*]+)*")


def _lookup(d: Mapping[str, float], p: HpTarget) -> float:
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
