"""Human-readable output of the policy: ``print(plan)`` (the facts and what the parametrization derived from them)
and the lint (what in the model or configuration is known to break μTransfer, each with what to do)."""
from __future__ import annotations

from ..plan import Plan
from .derive import forward_multipliers
from .parametrizations import parametrization_of
from .site_kinds import depth_mult

__all__ = ["describe", "lint"]


# ------------------------------------------------------------------------------------------------ lint
def lint(plan: Plan) -> list[str]:
    """What in the model or configuration is known to break μTransfer, each with what to do."""
    out = []
    scales = parametrization_of(plan).widths  # the standard parametrization transfers nothing: no transfer lint
    gains = [n for n, p in plan.params.items() if p.gain and p.role == "vector"]
    if scales and gains and not ({"gain", "norm"} & set(plan.hp.lr_mult)):  # "norm": the gains' module kind
        out.append(f"{len(gains)} trainable norm gains (e.g. {gains[0]}): Lingle 2024 found learning-rate transfer "
                   "fails with trainable gains. What to do: tune hp={'lr_mult': {'gain': x}} on the proxy with the "
                   "other hyperparameters (0 freezes them), or build the norms without an elementwise affine.")
    if scales and plan.options.weight_decay == "scaled":
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
def _kinds_lines(plan: Plan) -> list[str]:
    """One line per module kind: its module keys (per-module hp keys), '(name)' where a name hint decided it."""
    by_kind: dict[str, dict[str, str]] = {}
    for p in plan.params.values():
        if p.role == "fixed" or not p.module_kind or p.module_kind_by == "role":
            continue
        how = p.module_kind_by.partition(":")[0]
        by_kind.setdefault(p.module_kind, {}).setdefault(p.module_key, how)
    if not by_kind:
        return []
    out = ["", "module kinds (hp keys: kind or module key; decided by the graph unless marked (name)):"]
    for kind, keys in by_kind.items():
        out.append(f"  {kind}: " + ", ".join(k + (" (name)" if how == "name" else "") for k, how in keys.items()))
    return out


def describe(plan: Plan) -> str:
    """``print(plan)``: the facts and what the policy derived from them."""
    w = plan.width_symbol
    o = plan.options
    head = (f"muplify plan for {plan.model_class or 'model'}: width {w} = {plan.width}"
            + (f" ({plan.width_source})" if plan.width_source else "")
            + f", base_width = {plan.base_width} (width_mult {plan.width_mult:g}); head_scaling={o.head_scaling}, "
              f"init={o.init}, weight_decay={o.weight_decay}, eps={o.eps}, parametrization={o.parametrization}")
    lines = [head]
    if o.base_depth is not None:
        lines.append(f"depth L = {o.depth}, base_depth = {o.base_depth} (m_L {depth_mult(plan):g}), "
                     f"alpha = {o.depth_alpha:g} (CompleteP: branches × m_L^-alpha)")
    if getattr(o, "base_batch_size", None) is not None or getattr(o, "base_steps", None) is not None:
        from .regime import regime_summary

        lines.append(f"regime: base_batch_size = {o.base_batch_size}, base_steps = {o.base_steps}; "
                     "mu.optimizer(..., batch_size=B, steps=S) applies " + regime_summary())
    if len(plan.scaling_dims) > 1:
        lines.append("scaling dims: " + ", ".join(f"{size} = {expr} ({n} axes)" for size, expr, n in plan.scaling_dims))
    if not plan.hp.is_default():
        lines.append(f"hp: {plan.hp.values()}")
    if plan.hp.tuned_roles:
        lines.append(f"hp tuned under the roles of {len(plan.hp.tuned_roles)} parameters (hp['tuned_roles']): "
                     "this model's agree")
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
        lines += [f"  {n}: {p.note}" for n, p in plan.params.items()  # why (a router: what weights the experts)
                  if p.role == "output" and not p.readout and p.note]
    lines += _kinds_lines(plan)
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
