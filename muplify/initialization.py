"""Init policy: what rule drew each weight, and how to rescale it to μP relative to the base width.

μP (TP-V Table 8) wants, relative to the base model's init σ_base: hidden weights σ_base/√m_in, input and output
weights σ_base (output: or zero), vector-like params unchanged.  What σ_base is depends on the user's init rule: a
fixed-std init (GPT-2's 0.02, timm's trunc_normal .02) has σ_base = σ_now; a fan-in scaled init (PyTorch's default
kaiming_uniform(a=√5), LeCun, Kaiming) has σ_base = σ_now·√m_in; a fan-out scaled one σ_now·√m_out.  The rule is
read off the values: σ·√fan matching a known init constant means fan-scaled, anything else is fixed.
"""
from __future__ import annotations

import math

import torch

__all__ = ["detect_rule", "init_scale", "RULES"]

RULES = ("fan_in", "fan_out", "fixed")

# σ·√fan of common fan-scaled inits: kaiming_uniform(a=√5) (torch default), LeCun, Kaiming(relu), and their
# truncated-normal (±2σ) variants (σ shrinks by 0.8796).
_FAN_CONSTANTS = (1 / math.sqrt(3), 1.0, math.sqrt(2), 0.8796, 0.8796 * math.sqrt(2), math.sqrt(2 / 3))


def detect_rule(t: torch.Tensor, fan_in: int, fan_outs: tuple[int, ...]) -> tuple[str, float]:
    """Return (rule, std): rule is 'fan_in', 'fan_out', 'fixed', 'zero', 'const', or 'deferred' (no values)."""
    if t.is_meta or t.numel() == 0:
        return "deferred", float("nan")
    if _is_dtensor(t):  # FSDP2 / tensor-parallel shard: global statistics, the same answer on every rank
        numel, std, amax = _global_stats(t)
    else:
        x = t.detach().float().flatten()
        numel = x.numel()
        std = float(x.std()) if numel >= 2 else 0.0
        amax = None
    if numel < 2:
        return "const", 0.0
    if std == 0.0:
        amax = float(x.abs().max()) if amax is None else amax
        return ("zero" if amax == 0.0 else "const"), 0.0
    tol = max(0.015, 3.0 / math.sqrt(2 * numel))
    for rule, fans in (("fan_in", (fan_in,)), ("fan_out", fan_outs)):
        for fan in fans:
            if fan <= 1:
                continue
            r = std * math.sqrt(fan)
            if any(abs(r / c - 1) < tol for c in _FAN_CONSTANTS):
                return rule, std
    return "fixed", std


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local") and hasattr(t, "device_mesh")


def _global_stats(t) -> tuple[int, float, float]:
    """(numel, unbiased std, max |x|) of a DTensor from its local shards, reduced over every mesh dimension
    (replicated dims scale all sums alike, so mean and variance stay exact)."""
    import torch.distributed as dist

    x = t.to_local().detach().double().flatten()
    sums = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), x.pow(2).sum()])
    amax = x.abs().max() if x.numel() else torch.zeros((), dtype=torch.float64)
    mesh = t.device_mesh
    sums, amax = sums.to(mesh.device_type), amax.to(mesh.device_type)
    for d in range(mesh.ndim):
        group = mesh.get_group(d)
        dist.all_reduce(sums, group=group)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
    n, s1, s2 = (float(v) for v in sums.cpu())
    var = max(0.0, (s2 - s1 * s1 / n) / (n - 1)) if n > 1 else 0.0
    return int(t.numel()), math.sqrt(var), float(amax)


def init_scale(rule: str, role: str, m_in: float, m_out: float) -> float:
    """Factor to multiply the current values by so that they follow μP relative to the base width."""
    if rule not in RULES or role in ("vector", "fixed"):
        return 1.0
    base_over_now = {"fixed": 1.0, "fan_in": math.sqrt(m_in), "fan_out": math.sqrt(m_out)}[rule]
    target_over_base = 1.0 / math.sqrt(m_in) if role == "hidden" else 1.0  # TP-V Table 8: hidden var σ²/m_in
    return base_over_now * target_over_base


def _size(expr, plan) -> int:
    sym = plan.width_symbol
    return int(expr.subs(sym, plan.width)) if expr.has(sym) else int(expr)


def decide(entry, t: torch.Tensor | None, plan, option: str | None) -> tuple[str, float]:
    """The init rule of one parameter and the factor that makes its current values μP (times ``entry.init_extra``).

    ``option`` is the plan's init policy: ``"auto"`` detects the rule from the values; ``"fan_in"``, ``"fan_out"``,
    ``"fixed"`` force it; ``None`` keeps the values.  A bias is judged by its layer's fan_in (PyTorch draws it from
    U(±1/√fan_in) of the layer), so a fan-in scaled bias is restored to its base-width scale.
    """
    if option is None or t is None or not (t.is_floating_point() or t.is_complex()):
        return "keep", 1.0 * entry.init_extra  # (a non-float Parameter has no init to rescale)
    layer = plan.params.get(entry.bias_of) if entry.bias_of else None
    fan_in = _size(layer.fan_in if layer is not None else entry.fan_in, plan)
    if option == "auto":
        if layer is not None:
            rule, _ = detect_rule(t, fan_in, ())
        elif entry.role in ("vector", "fixed"):
            rule, _ = detect_rule(t, 1, ())
        else:
            shape = tuple(t.shape)
            conv_fan_out = t.numel() // max(1, shape[1]) if len(shape) > 2 else 1
            rule, _ = detect_rule(t, fan_in, (_size(entry.fan_out, plan), conv_fan_out))
    else:
        rule = option if (entry.role not in ("vector", "fixed") or layer is not None) else "keep"
    if layer is not None:
        scale = math.sqrt(layer.width_mult_in) if rule == "fan_in" else 1.0
    else:
        scale = init_scale(rule, entry.role, entry.width_mult_in, entry.width_mult_out)
    return rule, scale * entry.init_extra
