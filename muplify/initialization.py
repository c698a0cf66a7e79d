"""Which rule drew a weight's current values: a fact read off the values, for the policy's init rule.

A fixed-std init (GPT-2's 0.02, timm's trunc_normal .02) has σ_base = σ_now; a fan-in scaled init (PyTorch's default
kaiming_uniform(a=√5), LeCun, Kaiming) has σ_base = σ_now·√m_in; a fan-out scaled one σ_now·√m_out
(:func:`muplify.policy.width_init_factor`).  The rule is read off the values: σ·√fan matching a known init constant
means fan-scaled, anything else is fixed.
"""
from __future__ import annotations

import math

import torch

__all__ = ["detect_rule", "RULES"]

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
