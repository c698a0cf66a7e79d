"""The μP rules: the one place that turns a plan's facts into what muplify does.

From a parameter's role, fans (relative to the base model), the optimizer family, the μP hyperparameters ``hp``
and (with CompleteP) the depth, the policy derives

* the **init factor** the current values are multiplied by,
* the **learning-rate**, **weight-decay** and **Adam ε multipliers** of each optimizer family,
* the **forward multipliers** at the plan's sites (readout input, attention query, embedding output, branches).

Every rule is relative to the base model, so every multiplier is exactly 1 at ``width == base_width`` (and
``depth == base_depth``); the ``hp`` constants then act exactly as if written into the model by hand.

Optimizer families are registered objects (:class:`OptimizerFamily`): which parameters the optimizer takes and the
per-parameter learning-rate rule from the fans.  A new family is one subclass and one :func:`register_family` call.

Sources: TP-V = Tensor Programs V (Yang et al. 2022), Tables 3 and 8; spectral μP = Yang, Simon & Bernstein 2023;
CompleteP = Dey et al. 2025; Lingle 2024 = "A large-scale exploration of μ-transfer".  ``m_in = fan_in/base_fan_in``,
``m_out`` likewise, ``m = width/base_width``, ``m_L = depth/base_depth``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import OptimizerRuleError, PlanError
from .plan import FoldTarget, ParamPlan, Plan, Site

__all__ = ["ParamRules", "ForwardMultiplier", "OptimizerFamily", "FAMILIES", "OPTIMIZER_FAMILIES", "register_family",
           "register_rule", "family_for", "derive", "forward_multipliers", "param_rules", "lint", "describe",
           "width_init_factor"]


# ------------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class ParamRules:
    """What μP does to one parameter."""

    init_scale: float  # factor on the current values (0.0: zero-init)
    lr_mult: Mapping[str, float]  # per family name: factor on the learning rate
    wd_mult: Mapping[str, float]  # per family name: factor on the weight decay
    eps_mult: Mapping[str, float]  # per family name: factor on ε (1 where the family has none)
    zero_channels: tuple[int, int, int] | None = None  # (axis, start, stop) zeroed by query_zero_init
    absorbed: float = 1.0  # a forward multiplier applied as parameter scaling (no module boundary carries it)


@dataclass(frozen=True)
class ForwardMultiplier:
    """A constant the rewrite applies at a site (a module hook)."""

    module: str
    where: str  # "input" | "output"
    factor: float
    reason: str  # "readout" | "router" | "attention" | "embedding" | "branch"
    param: str  # the parameter the multiplier belongs to
    channels: tuple[int, int, int] | None = None
    fold: tuple[FoldTarget, ...] = ()  # where export folds it


# ------------------------------------------------------------------------------------------------ optimizer families
class OptimizerFamily:
    """How one kind of optimizer must scale with width.  Subclass and :func:`register_family`.

    ``width_lr`` is the learning-rate multiplier of a parameter relative to the base model (1 at base width).
    ``absorb_power``: when a forward multiplier ``c`` is applied as parameter scaling instead (init × c), the
    learning rate must follow as ``c ** absorb_power`` for the training dynamics to be the same.
    ``eps_key``: the param-group key of an ε that is added to a gradient-scale quantity (None: no such ε).
    """

    name: str = ""
    description: str = ""
    absorb_power: float = 1.0
    eps_key: str | None = None

    def accepts(self, p: ParamPlan, plan: Plan) -> str | None:
        """None if this optimizer takes ``p``; otherwise why not (it then goes to a fallback optimizer)."""
        return None

    def width_lr(self, p: ParamPlan, plan: Plan, options: Mapping[str, Any]) -> float:
        """The learning-rate multiplier of ``p`` relative to the base model (1 at base width), given the
        optimizer's options (``adjust_lr_fn`` for Muon, ...)."""
        raise NotImplementedError

    def warnings(self, options: Mapping[str, Any]) -> list[str]:
        """Lint for this family with these optimizer options."""
        return []

    def __repr__(self) -> str:
        return f"<optimizer family {self.name!r}: {self.description}>"


class AdamFamily(OptimizerFamily):
    name, eps_key = "adam", "eps"
    description = "entry-wise normalised updates (Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax)"

    def width_lr(self, p, plan, options):
        # TP-V Table 3: hidden Adam lr ∝ 1/fan_in; input, output (with its 1/m_in multiplier), vector: unchanged
        return 1.0 / p.width_mult_in if p.role == "hidden" else 1.0


class SignFamily(AdamFamily):
    name, eps_key = "sign", None
    description = "sign updates (Lion, signSGD): Adam's ε→0 limit, the same relative rule"

    def warnings(self, options):
        return ["sign-based optimizer (Lion-like): it follows Adam's μP rule (hidden lr ∝ 1/fan_in), but Lingle 2024 "
                "found learning-rate transfer fails with Lion under this rule. What to do: run the coordinate check "
                "and a short LR sweep at two widths before trusting the transfer, or use AdamW."]


class SGDFamily(OptimizerFamily):
    name, absorb_power = "sgd", 2.0
    description = "updates proportional to the gradient (SGD with momentum/Nesterov, ASGD)"

    def width_lr(self, p, plan, options):
        # the `mup` package's MuSGD (TP-V Table 3, SGD column)
        return {"input": p.width_mult_out, "vector": p.width_mult_out, "hidden": p.width_mult_out / p.width_mult_in,
                "output": p.width_mult_in, "fixed": 1.0}[p.role]


class AdafactorFamily(OptimizerFamily):
    name, absorb_power = "adafactor", 0.0
    description = "torch.optim.Adafactor: normalised updates times the parameter's RMS (relative step)"

    def width_lr(self, p, plan, options):
        # Δ ≈ lr·RMS(W) per entry; μP wants Adam's Δ (hidden 1/m_in) and μP init gives hidden RMS(W) ∝ 1/√m_in,
        # so hidden lr ∝ 1/√m_in; roles whose init does not shrink keep lr.  (A parameter-form multiplier rescales
        # RMS(W) itself, hence absorb_power 0.)  Holds while lr·lr_mult < 1/√t, Adafactor's own step cap.
        return 1.0 / math.sqrt(p.width_mult_in) if p.role == "hidden" else 1.0


def _muon_adjust(fn: str | None, shape: tuple[int, ...]) -> float:
    """torch.optim.Muon's per-matrix lr adjustment (torch/optim/_muon.py::_adjust_lr)."""
    a, b = shape[:2]
    if fn is None or fn == "original":
        return math.sqrt(max(1.0, a / b))
    if fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return 1.0


class MuonFamily(OptimizerFamily):
    name = "muon"
    description = "orthogonalised matrix updates (torch.optim.Muon): hidden 2-D weights only"

    def accepts(self, p, plan):
        if p.role != "hidden":
            return f"{p.role} role (Muon is for hidden matrices; embeddings, readout and vectors use the fallback)"
        if len(p.shape) != 2:
            return f"{len(p.shape)}-D weight (torch's Muon takes matrices; conv kernels and expert stacks use the " \
                   "fallback)"
        return None

    def width_lr(self, p, plan, options):
        # spectral μP: ‖ΔW‖₂ ∝ √(fan_out/fan_in); Muon's update has ‖O‖₂ ≈ 1 times lr·adjust(shape), so undo the
        # adjustment's own width dependence and apply the spectral ratio relative to base
        fn = options.get("adjust_lr_fn")
        return math.sqrt(p.width_mult_out / p.width_mult_in) * _muon_adjust(fn, p.base_shape) / _muon_adjust(fn, p.shape)

    def warnings(self, options):
        if options.get("adjust_lr_fn") == "match_rms_adamw":
            return ["Muon with adjust_lr_fn='match_rms_adamw' gives every matrix an update RMS independent of width "
                    "(0.2·√max(A, B)), which is not μP; muplify divides that factor out per matrix and applies the "
                    "spectral rule √(fan_out/fan_in) relative to base, so μP holds. What to do: nothing, or use the "
                    "default adjust_lr_fn (the tuned lr then means the same at every width either way)."]
        return []


FAMILIES: dict[str, OptimizerFamily] = {}
OPTIMIZER_FAMILIES: dict[type, str] = {}  # optimizer class -> family name


def register_family(family: OptimizerFamily, *classes: type) -> OptimizerFamily:
    """Register an optimizer family (its rules) and the optimizer classes that follow it."""
    if not isinstance(family, OptimizerFamily) or not family.name:
        raise OptimizerRuleError("register_family needs an OptimizerFamily instance with a name")
    FAMILIES[family.name] = family
    for cls in classes:
        OPTIMIZER_FAMILIES[cls] = family.name
    return family


def register_rule(cls: type, family: str) -> None:
    """Declare that optimizer class ``cls`` follows the rules of a registered family ('adam', 'sgd', 'sign', ...)."""
    if family not in FAMILIES:
        raise OptimizerRuleError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    OPTIMIZER_FAMILIES[cls] = family


def family_for(cls: type, rule: str | None = None) -> OptimizerFamily:
    if rule is not None:
        if rule not in FAMILIES:
            raise OptimizerRuleError(f"rule must be one of {sorted(FAMILIES)} (e.g. 'adam' or 'sgd'), got {rule!r}")
        return FAMILIES[rule]
    for k in getattr(cls, "__mro__", ()):
        if k in OPTIMIZER_FAMILIES:
            return FAMILIES[OPTIMIZER_FAMILIES[k]]
    raise OptimizerRuleError(
        f"muplify has no μP rule for {getattr(cls, '__name__', cls)}. Pass rule='adam' if it normalises updates "
        "entry-wise (Adam-like), rule='sign' for sign updates (Lion), rule='sgd' if updates are proportional to the "
        "gradient, or call muplify.register_rule(YourOptimizer, 'adam') (muplify.register_family for a new rule). "
        "Known: " + ", ".join(sorted(c.__name__ for c in OPTIMIZER_FAMILIES)))


_o = __import__("torch").optim
register_family(AdamFamily(), _o.Adam, _o.AdamW, _o.RMSprop, _o.Adagrad, _o.NAdam, _o.RAdam, _o.Adamax,
                _o.SparseAdam)
register_family(SGDFamily(), _o.SGD, _o.ASGD)
register_family(SignFamily())
register_family(AdafactorFamily(), *([_o.Adafactor] if hasattr(_o, "Adafactor") else []))
register_family(MuonFamily(), *([_o.Muon] if hasattr(_o, "Muon") else []))
del _o


# ------------------------------------------------------------------------------------------------ init
def width_init_factor(rule: str, role: str, m_in: float, m_out: float) -> float:
    """Factor turning values drawn by ``rule`` at this width into μP values relative to the base init.

    TP-V Table 8: hidden var σ²_base/m_in; input and output σ²_base; vectors unchanged.  σ_base is what the user's
    rule draws at base width: a fixed-std rule (GPT-2's 0.02) the same σ, a fan-in scaled rule σ·√m_in, a fan-out
    scaled one σ·√m_out."""
    if rule not in ("fan_in", "fan_out", "fixed") or role in ("vector", "fixed"):
        return 1.0
    base_over_now = {"fixed": 1.0, "fan_in": math.sqrt(m_in), "fan_out": math.sqrt(m_out)}[rule]
    target_over_base = 1.0 / math.sqrt(m_in) if role == "hidden" else 1.0
    return base_over_now * target_over_base


# ------------------------------------------------------------------------------------------------ derivation
def _sites_by_param(plan: Plan, kind: str) -> dict[str, list[Site]]:
    out: dict[str, list[Site]] = {}
    for s in plan.sites:
        if s.kind == kind:
            out.setdefault(s.param, []).append(s)
    return out


def _depth_mult(plan: Plan) -> float:
    o = plan.options
    if o.base_depth is None or o.depth is None:
        return 1.0
    return o.depth / o.base_depth


def _depth_lr(p: ParamPlan, plan: Plan, family: OptimizerFamily) -> float:
    """CompleteP (Dey et al. 2025, Table 1): Adam-like hidden and vector lr × m_L^(α−1)."""
    m_l = _depth_mult(plan)
    if m_l == 1.0 or p.role not in ("hidden", "vector") or not p.in_branch:
        return 1.0
    alpha = plan.options.depth_alpha
    if family.name == "sgd":
        # SGD: the branch multiplier m_L^-α scales both the branch's gradient and its effect on the output, so
        # an SGD update moves the output by lr·m_L^(-2α); CompleteP's per-branch ΔF ∝ 1/L needs lr × m_L^(2α−1)
        return m_l ** (2 * alpha - 1)
    return m_l ** (alpha - 1)


def _absorbed(plan: Plan) -> dict[str, float]:
    """Forward multipliers that no site carries, applied as parameter scaling (TP-V Table 3 form)."""
    out: dict[str, float] = {}
    readout_sites = _sites_by_param(plan, "readout")
    embed_sites = _sites_by_param(plan, "embedding")
    for n, p in plan.params.items():
        c = 1.0
        if p.role == "output" and n not in readout_sites:
            c *= (plan.hp.output_mult if p.readout else 1.0) / p.width_mult_in
        if p.role == "input" and n not in embed_sites:
            c *= plan.hp.embed_mult
        if c != 1.0:
            out[n] = c
    m_l = _depth_mult(plan)
    if plan.options.base_depth is not None and m_l != 1.0:
        for s in plan.sites:
            if s.kind == "branch" and not s.module:  # no module boundary: CompleteP's multiplier in the weights
                if not s.fold:
                    raise PlanError("a residual branch has no module boundary carrying it alone and no weight "
                                    "producing it linearly, so its CompleteP multiplier cannot be applied; compute "
                                    "the branch in a submodule, or omit base_depth")
                for f in s.fold:
                    out[f.param] = out.get(f.param, 1.0) * m_l ** (-plan.options.depth_alpha)
    return out


def param_rules(plan: Plan, p: ParamPlan, family: OptimizerFamily, options: Mapping[str, Any] | None = None,
                absorbed: float = 1.0) -> tuple[float, float, float]:
    """(lr multiplier, weight-decay multiplier, ε multiplier) of ``p`` under ``family`` with these optimizer
    options."""
    options = options or {}
    if p.role == "fixed" and p.decided_by == "dtype":
        return 1.0, 1.0, 1.0
    structural = family.width_lr(p, plan, options) * _depth_lr(p, plan, family) * absorbed ** family.absorb_power
    lr = structural * plan.hp.role_lr(p.role, p.gain) * p.user_lr_mult
    # coupled: lr·wd per step as at base (the `mup` package's AdamW: hidden wd × m_in); the parameter form of a
    # multiplier divides wd by c^power either way, which keeps the by-hand equivalence exact
    wd = 1.0 / structural if plan.options.weight_decay == "coupled" else 1.0 / absorbed ** family.absorb_power
    eps = 1.0
    if family.eps_key is not None:
        eps = _eps_width(p, plan) / absorbed
    return lr, wd, eps


def _eps_width(p: ParamPlan, plan: Plan) -> float:
    """Adam ε relative to the gradient scale: under μP every gradient below the readout shrinks like 1/m (the
    backpropagated signal carries the readout's 1/m), so a fixed ε would grow relative to it (Megatron, CompleteP
    scale ε down with width).  Fixed-role parameters (e.g. the readout bias) see Θ(1) gradients.  CompleteP adds
    ε × m_L^-α for parameters inside residual branches."""
    if plan.options.eps != "scaled" or p.role == "fixed":
        return 1.0
    eps = 1.0 / plan.width_mult
    m_l = _depth_mult(plan)
    if m_l != 1.0 and p.in_branch:
        eps *= m_l ** (-plan.options.depth_alpha)
    return eps


def derive(plan: Plan) -> dict[str, ParamRules]:
    """Per parameter, the μP rules for every registered family (raises PlanError when a needed site is missing)."""
    forward_multipliers(plan)  # validates sites (e.g. attn_mult without a query site)
    absorbed = _absorbed(plan)
    zero = _zero_channels(plan)
    readouts = {n for n, p in plan.params.items() if p.readout}
    out: dict[str, ParamRules] = {}
    for n, p in plan.params.items():
        c = absorbed.get(n, 1.0)
        lrs, wds, epss = {}, {}, {}
        for fam in FAMILIES.values():
            if fam.accepts(p, plan) is None:  # e.g. Muon: hidden matrices only
                lrs[fam.name], wds[fam.name], epss[fam.name] = param_rules(plan, p, fam, {}, c)
        out[n] = ParamRules(_init_scale(plan, p, c, readouts), lrs, wds, epss, zero.get(n), c)
    return out


def _init_scale(plan: Plan, p: ParamPlan, absorbed: float, readouts: set[str]) -> float:
    if p.decided_by == "dtype":
        return 1.0
    o = plan.options
    if o.readout_zero_init and (p.name in readouts or p.bias_of in readouts):
        owner = plan.params[p.bias_of] if p.bias_of in readouts else p
        if len(owner.aliases) == 1:  # a readout tied to the embedding keeps its values (the embedding needs them)
            return 0.0
    if o.init is None:
        width = 1.0
    elif p.bias_of is not None and p.bias_of in plan.params:
        # PyTorch draws a bias from U(±1/√fan_in of its layer): restore its base-width scale
        width = math.sqrt(plan.params[p.bias_of].width_mult_in) if p.init_rule == "fan_in" else 1.0
    else:
        width = width_init_factor(p.init_rule, p.role, p.width_mult_in, p.width_mult_out)
    # the depth rule for init is the branch multiplier itself (CompleteP keeps per-layer init)
    return width * absorbed * plan.hp.role_init(p.role, p.gain) * p.user_init_mult


def _zero_channels(plan: Plan) -> dict[str, tuple[int, int, int]]:
    if not plan.options.query_zero_init:
        return {}
    out: dict[str, tuple[int, int, int]] = {}
    for a in plan.attention:
        if a.query is None:
            continue
        for f in a.query.fold:
            p = plan.params.get(f.param)
            if p is None:
                continue
            if f.axis is None:
                out[f.param] = (0, 0, p.shape[0]) if p.shape else (0, 0, 0)
            else:
                out[f.param] = (f.axis, f.start, f.stop)
    return out


def forward_multipliers(plan: Plan) -> list[ForwardMultiplier]:
    """The forward multipliers μP needs at this width and depth, with these hp (active ones only: a multiplier
    whose rule is identically 1 in this configuration is not listed)."""
    out: list[ForwardMultiplier] = []
    hp, o = plan.hp, plan.options
    seen: set = set()

    def add(site: Site, factor: float, reason: str) -> None:
        key = (site.module, site.where, site.channels, reason)
        if key not in seen:  # a tied readout used twice gets one multiplier
            seen.add(key)
            out.append(ForwardMultiplier(site.module, site.where, float(factor), reason, site.param, site.channels,
                                         site.fold))

    for s in plan.sites:
        p = plan.params.get(s.param)
        if s.kind == "readout" and p is not None and p.role == "output":
            # TP-V Table 8: the readout's input × 1/m_in (× α_out for the model's readout)
            add(s, (hp.output_mult if p.readout else 1.0) / p.width_mult_in, "readout" if p.readout else "router")
        elif s.kind == "embedding" and hp.embed_mult != 1.0:
            add(s, hp.embed_mult, "embedding")
    for a in plan.attention:
        needs_scale = o.head_scaling == "head_dim" and a.head_dim.has(plan.width_symbol)
        if not needs_scale and hp.attn_mult == 1.0:
            continue
        # TP-V: logits ∝ 1/d_head; √b_head/d_head keeps the base model unchanged: q × √(b_head/d_head)
        scale = math.sqrt(a.base_head_dim / _size(plan, a.head_dim)) if needs_scale else 1.0
        if a.query is None:
            need = "the attention scale (1/d_head)" if needs_scale else f"attn_mult={hp.attn_mult}"
            raise PlanError(f"{need} needs the query projection of the attention in '{a.module}', but "
                            f"{a.missing or 'no module boundary carries the query alone'}. What to do: use "
                            "head_scaling='heads' (head_dim fixed) and attn_mult=1, or compute q with an nn.Linear.")
        add(a.query, scale * hp.attn_mult, "attention")
    m_l = _depth_mult(plan)
    if o.base_depth is not None:
        for s in plan.sites:
            if s.kind == "branch" and s.module:
                add(s, m_l ** (-o.depth_alpha), "branch")  # CompleteP: branch × (L_base/L)^α
    return out


def _size(plan: Plan, expr) -> int:
    return int(expr.subs(plan.width_symbol, plan.width)) if expr.has(plan.width_symbol) else int(expr)


# ------------------------------------------------------------------------------------------------ lint
def lint(plan: Plan) -> list[str]:
    """What in the model or configuration is known to break μTransfer, each with what to do."""
    out = []
    gains = [n for n, p in plan.params.items() if p.gain and p.role == "vector"]
    if gains and "gain" not in plan.hp.lr_mult:
        out.append(f"{len(gains)} trainable norm gains (e.g. {gains[0]}): Lingle 2024 found learning-rate transfer "
                   "fails with trainable gains. What to do: tune hp={'lr_mult': {'gain': x}} on the proxy with the "
                   "other hyperparameters (0 freezes them), or build the norms without an elementwise affine.")
    if plan.options.weight_decay == "scaled":
        out.append("weight_decay='scaled' keeps wd while the hidden lr shrinks, so lr·wd per step (AdamW's decay "
                   "timescale) shrinks as width grows and breaks transfer of wd. What to do: use the default "
                   "weight_decay='coupled'.")
    guessed = [n for n, p in plan.params.items() if p.guessed]
    if guessed:
        shown = ", ".join(guessed[:6]) + (f" and {len(guessed) - 6} more" if len(guessed) > 6 else "")
        first = plan.params[guessed[0]].decided_by.removeprefix("guess: ")
        out.append(f"muplify guessed the role of {len(guessed)} parameter(s): {shown} (e.g. {first}). What to do: "
                   "check them in print(mu.plan) (decided by GUESS) and confirm or correct with overrides={name: "
                   "{'role': ...}}, or pass base=<the model built at the base width>.")
    if plan.width_source == "most-used" and not plan.options.width_given:
        others = sorted({size for size, _, _ in plan.scaling_dims if size != plan.width})
        if others:
            out.append(f"muplify took width={plan.width} (the dimension most parameter axes use); dimensions of sizes "
                       f"{others} scale too, as multiples of it. What to do: if the width you mean is another one, "
                       "pass width=<its size> (or base=); the plan's header lists every scaling dimension.")
    return out


# ------------------------------------------------------------------------------------------------ printing
def describe(plan: Plan) -> str:
    """``print(plan)``: the facts and what the policy derived from them."""
    w = plan.width_symbol
    o = plan.options
    head = (f"muplify plan for {plan.model_class or 'model'}: width {w} = {plan.width}"
            + (f" ({plan.width_source})" if plan.width_source else "")
            + f", base_width = {plan.base_width} (width_mult {plan.width_mult:g}); head_scaling={o.head_scaling}, "
              f"init={o.init}, weight_decay={o.weight_decay}, eps={o.eps}")
    lines = [head]
    if o.base_depth is not None:
        lines.append(f"depth L = {o.depth}, base_depth = {o.base_depth} (m_L {_depth_mult(plan):g}), "
                     f"alpha = {o.depth_alpha:g} (CompleteP: branches × m_L^-alpha)")
    if len(plan.scaling_dims) > 1:
        lines.append("scaling dims: " + ", ".join(f"{size} = {expr} ({n} axes)" for size, expr, n in plan.scaling_dims))
    if not plan.hp.is_default():
        lines.append(f"hp: {plan.hp.to_dict()}")
    rules = plan.rules()
    rows = [("parameter", "shape", "role", "fan_in", "fan_out", "init", "adam lr", "sgd lr", "decided by")]
    for n, p in plan.params.items():
        r = rules[n]
        init = p.init_rule if r.init_scale == 1.0 else f"{p.init_rule} x{r.init_scale:.3g}"
        name = n + (f" (= {', '.join(p.aliases[1:])})" if len(p.aliases) > 1 else "")
        role = p.role + ("*" if p.role == "output" and not p.readout else "")
        rows.append((name, "x".join(map(str, p.shape)), role, str(p.fan_in), str(p.fan_out), init,
                     f"x{r.lr_mult['adam']:.4g}", f"x{r.lr_mult['sgd']:.4g}",
                     p.decided_by if not p.guessed else "GUESS"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[k]) for k, c in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * x for x in widths))
    if any(p.role == "output" and not p.readout for p in plan.params.values()):
        lines.append("(output* = output-like but not the model's readout, e.g. a MoE router: 1/m_in, no output_mult)")
    fwd = forward_multipliers(plan)
    absorbed = {n: r.absorbed for n, r in rules.items() if r.absorbed != 1.0}
    if fwd or absorbed:
        lines += ["", "forward multipliers:"]
        for f in fwd:
            ch = f" on channels [{f.channels[0]}:{f.channels[1]}] of {f.channels[2]}" if f.channels else ""
            lines.append(f"  {f.reason:9s} x{f.factor:.4g} on the {f.where} of '{f.module}'{ch}  ({f.param or 'branch'})")
        for n, c in absorbed.items():
            lines.append(f"  {'absorbed':9s} x{c:.4g} in {n}'s init and learning rate (no module boundary carries it; "
                         "TP-V Table 3 form)")
    if plan.notes:
        lines += ["", "notes:"] + [f"  - {s}" for s in plan.notes]
    warns = plan.warnings
    if warns:
        lines += ["", "warnings:"] + [f"  - {s}" for s in warns]
    return "\n".join(lines)


def _register() -> None:
    import sys

    from . import plan as _plan

    _plan.POLICY = sys.modules[__name__]


_register()
