"""Which rule drew a weight's current values: a fact read off the values, for the policy's init rule.

A fixed-std init (GPT-2's 0.02, timm's trunc_normal .02) has σ_base = σ_now; a fan-in scaled init (PyTorch's default
kaiming_uniform(a=√5), LeCun, Kaiming) has σ_base = σ_now·√m_in; a fan-out scaled one σ_now·√m_out
(:func:`muplify.policy.width_init_factor`).  The rule is read off the values: σ·√fan matching a known init constant
means fan-scaled, anything else is fixed.  :func:`read_init` recognises the initialisers torch and the big
libraries use (:data:`INITIALIZERS`) and names a guess when two that imply different rules are within noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["detect_rule", "read_init", "note_init_reading", "noise_tolerance", "InitReading", "Initializer", "INITIALIZERS", "RULES"]

RULES = ("fan_in", "fan_out", "fixed")


@dataclass(frozen=True)
class Initializer:
    """A known way to draw a weight: the std it gives for (fan_in, fan_out), and the width rule it follows.

    ``kind``: 'fan_in' (σ = c/√fan_in), 'fan_out' (σ = c/√fan_out), 'xavier' (σ = c·√(2/(fan_in+fan_out))),
    'fixed' (σ = c)."""

    name: str
    kind: str
    c: float

    def std(self, fan_in: int, fan_out: int) -> float:
        if self.kind == "fan_in":
            return self.c / math.sqrt(fan_in)
        if self.kind == "fan_out":
            return self.c / math.sqrt(fan_out)
        if self.kind == "xavier":
            return self.c * math.sqrt(2.0 / (fan_in + fan_out))
        return self.c


_TRUNC = 0.8796  # std of N(0, 1) truncated at ±2σ (timm/JAX truncated normal without the variance correction)

# Ordered by how common: when two initialisers give the same std within noise (and imply different width rules),
# the first one listed is the named guess.
INITIALIZERS: tuple[Initializer, ...] = (
    Initializer("kaiming_uniform(a=√5) (torch's default Linear/Conv)", "fan_in", 1 / math.sqrt(3)),
    # a round fixed std is a convention somebody wrote; a fan-based σ lands on 0.02 at one width only (Xavier on a
    # 1024 x 4096 weight is 0.0198): in a tie the fixed std is the reading
    Initializer("fixed std 0.02 (GPT-2/BERT/timm trunc_normal(.02))", "fixed", 0.02),
    Initializer("fixed std 0.01", "fixed", 0.01),
    Initializer("xavier/glorot (uniform or normal)", "xavier", 1.0),
    Initializer("lecun_normal / kaiming(linear)", "fan_in", 1.0),
    Initializer("kaiming(relu) fan_in", "fan_in", math.sqrt(2)),
    Initializer("kaiming(relu) fan_out", "fan_out", math.sqrt(2)),
    Initializer("N(0, 1) (torch's default Embedding)", "fixed", 1.0),
    Initializer("kaiming(linear) fan_out", "fan_out", 1.0),
    Initializer("kaiming(tanh) fan_in", "fan_in", 5 / 3),
    Initializer("xavier/glorot gain √2 (relu)", "xavier", math.sqrt(2)),
    Initializer("truncated lecun_normal (±2σ)", "fan_in", _TRUNC),
    Initializer("truncated kaiming(relu) (±2σ)", "fan_in", _TRUNC * math.sqrt(2)),
    Initializer("truncated kaiming(relu) fan_out (±2σ)", "fan_out", _TRUNC * math.sqrt(2)),
    Initializer("variance_scaling(1/3) (JAX/flax default uniform)", "fan_in", math.sqrt(2 / 3)),
)


@dataclass(frozen=True)
class InitReading:
    """What :func:`read_init` concluded: the width rule, the std read, the initialiser recognised (None: none
    within noise, read as a fixed std), and, when initialisers implying different rules are within noise of each
    other, the named guess (``guess`` names the alternatives; the decision depends on the shape only, never on
    the draw)."""

    rule: str
    std: float
    initializer: str | None = None
    guess: str = ""


def _stats(t: torch.Tensor) -> tuple[int, float, float | None]:
    if _is_dtensor(t):  # FSDP2 / tensor-parallel shard: global statistics, the same answer on every rank
        return _global_stats(t)
    x = t.detach().float().flatten()
    numel = x.numel()
    std = float(x.std()) if numel >= 2 else 0.0
    amax = float(x.abs().max()) if std == 0.0 and numel else None
    return numel, std, amax


def noise_tolerance(numel: int) -> float:
    """Relative error within which a sample std of ``numel`` draws matches a predicted std: 4 standard errors of a
    normal sample's std (1/√(2n); a uniform's is smaller), at least 1 %."""
    return max(0.01, 4.0 / math.sqrt(2 * numel))


def _rule_of(init: Initializer, in_scales: bool, out_scales: bool) -> tuple[str, str]:
    """(width rule, note) for an initialiser on a weight whose fan_in / fan_out do or do not grow with width."""
    if init.kind != "xavier":
        return init.kind, ""
    if in_scales == out_scales:  # both or neither grow: σ ∝ 1/√m exactly (or not at all)
        return ("fan_in" if in_scales else "fixed"), ""
    rule = "fan_in" if in_scales else "fan_out"
    return rule, (f"{init.name}: σ ∝ 1/√(fan_in+fan_out) with only the {rule.replace('_', '-')} growing, taken as "
                  f"the {rule} rule (exact when the fixed fan is small against the growing one)")


def _equivalent(a: str, b: str, in_scales: bool, out_scales: bool) -> bool:
    if a == b:
        return True
    same_scaling = {"fan_in": in_scales, "fan_out": out_scales, "fixed": False}
    return {a, b} <= set(same_scaling) and same_scaling[a] == same_scaling[b]


def read_init(t: torch.Tensor, fan_in: int, fan_outs: tuple[int, ...] = (), *, in_scales: bool = True,
              out_scales: bool = False, prior: str | None = None) -> InitReading:
    """Recognise the initialiser that drew ``t`` and the width rule it implies.

    Every known initialiser (:data:`INITIALIZERS`) predicts a std from the fans; the nearest prediction within
    :func:`noise_tolerance` names it.  Predictions closer to each other than twice the tolerance form one cluster
    (the draw cannot tell them apart); a cluster whose members imply different width rules gives the first member's
    rule as a named guess, so the reading never depends on the seed.  ``prior`` names an initialiser known to have
    drawn a related tensor (a bias: its layer's weight, drawn by the same ``reset_parameters``); when it is in the
    cluster it decides, without a guess.  No prediction within noise: a fixed std."""
    if t.is_meta or t.numel() == 0:
        return InitReading("deferred", float("nan"))
    numel, std, amax = _stats(t)
    if numel < 2:
        return InitReading("const", 0.0)
    if std == 0.0:
        return InitReading("zero" if not amax else "const", 0.0)
    tol = noise_tolerance(numel)
    outs = tuple(f for f in dict.fromkeys(fan_outs) if f > 1) or (1,)
    cands: list[tuple[float, int, Initializer, str, str]] = []  # (log std, priority, init, rule, note)
    for prio, init in enumerate(INITIALIZERS):
        if init.kind == "fan_in" and fan_in <= 1:
            continue
        if init.kind in ("fan_out", "xavier") and not fan_outs:
            continue
        for fo in (outs if init.kind in ("fan_out", "xavier") else (1,)):
            if init.kind == "fan_out" and fo <= 1:
                continue
            rule, note = _rule_of(init, in_scales, out_scales)
            cands.append((math.log(init.std(max(fan_in, 1), fo)), prio, init, rule, note))
    if not cands:
        return InitReading("fixed", std)
    x = math.log(std)
    nearest = min(cands, key=lambda c: (abs(c[0] - x), c[1]))
    if abs(nearest[0] - x) > math.log1p(tol):
        return InitReading("fixed", std)
    # the cluster of `nearest`: single linkage at twice the tolerance (a shape-only fact)
    cands.sort(key=lambda c: c[0])
    i = cands.index(nearest)
    lo = hi = i
    gap = 2 * math.log1p(tol)
    while lo > 0 and cands[lo][0] - cands[lo - 1][0] < gap:
        lo -= 1
    while hi < len(cands) - 1 and cands[hi + 1][0] - cands[hi][0] < gap:
        hi += 1
    cluster = sorted(cands[lo:hi + 1], key=lambda c: (c[2].name != prior, c[1]))
    first = cluster[0]
    others = [c for c in cluster if not _equivalent(c[3], first[3], in_scales, out_scales)]
    if not others or (prior is not None and first[2].name == prior):
        return InitReading(first[3], std, first[2].name, first[4])
    alts = ", ".join(dict.fromkeys(f"{c[2].name} ({c[3]})" for c in others))
    guess = (f"σ = {std:.4g} matches {first[2].name} ({first[3]}) and, within sampling noise ({tol:.1%}), {alts}; "
             f"taken as {first[2].name} — pass muplify(..., init='fan_in'|'fan_out'|'fixed') if it was the other")
    return InitReading(first[3], std, first[2].name, guess)


def note_init_reading(plan, name: str, reading: InitReading) -> None:
    """Keep ``plan.notes`` holding one line per parameter whose init rule is a named guess (or an approximation),
    replacing the line an earlier reading (e.g. before the model left the meta device) left."""
    prefix = f"init of {name}: "
    plan.notes[:] = [s for s in plan.notes if not s.startswith(prefix)]
    if reading.guess:
        plan.notes.append(prefix + "GUESS: " + reading.guess)


def detect_rule(t: torch.Tensor, fan_in: int, fan_outs: tuple[int, ...]) -> tuple[str, float]:
    """Return (rule, std): rule is 'fan_in', 'fan_out', 'fixed', 'zero', 'const', or 'deferred' (no values)."""
    r = read_init(t, fan_in, fan_outs, in_scales=True, out_scales=bool(fan_outs))
    return r.rule, r.std


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
