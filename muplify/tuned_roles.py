"""The roles hyperparameters were tuned under, and the check that a plan applying them has the same (issue 18).

Per-role values (``lr_mult["output"]``, ``init_mult["hidden"]``, ``output_mult``) act on the parameters that have
that role.  If the model they are applied to reads a parameter in another role than the proxy they were tuned on
(one KV head at the proxy reads as ``output``, several at the target as ``hidden``), the values act on other weights
there, silently.  So tuned hyperparameters carry their *role signature* (``hp["tuned_roles"]``, written by
:func:`muplify.tools.tune.tune` into ``result.best["hp"]``): ``{parameter: [role, fan_in scales, fan_out scales]}``,
and :func:`muplify.muplify` compares it with the plan's facts right after the plan is built, before the model is
touched, and refuses a mismatch naming the parameters.

Matching is by parameter name (a tied weight under any of its names).  Names that differ only in block indices
(``blocks.3.attn.k.weight`` of a deeper target) are matched against the same parameter of every block of the other
model (their roles must agree).  A parameter on one side only (renamed, a weight tied at one side and not at the
other, a layer added) cannot be checked: it is reported as a mismatch too.  Hyperparameters without the key (a plain
dict, a ``best.json`` of an older tune) are applied unchecked.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import RolesMismatchError
from .options import TUNED_ROLES

__all__ = ["role_signature", "mismatches", "check_roles"]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def role_signature(plan) -> dict[str, list]:
    """``{parameter: [role, fan_in scales, fan_out scales]}`` of a plan's facts: what hyperparameters tuned on it act
    on (non-float parameters, which μP leaves alone, are left out)."""
    w = plan.width_symbol
    return {n: [p.role, bool(p.fan_in.has(w)), bool(p.fan_out.has(w))] for n, p in plan.params.items()
            if p.decided_by != "dtype"}


def _fans(sig) -> str:
    _, fi, fo = (list(sig) + [None, None])[:3]
    if fi is None or fo is None:
        return ""
    scales = [k for k, v in (("fan_in", fi), ("fan_out", fo)) if v]
    return f"{' and '.join(scales)} scale" if scales else "no fan scales"


def _block_key(name: str) -> str:
    return _INDEX.sub("*", name)


def mismatches(tuned: Mapping[str, list], plan) -> list[str]:
    """One line per parameter whose role differs between the tuned signature and ``plan``, or that only one of them
    has (see the module docstring for how names are matched)."""
    now = role_signature(plan)
    names = {n: [a for a in plan.params[n].aliases if a != n] for n in now}  # a tied weight under its other names
    known = {a: n for n, other in names.items() for a in other}
    roles_of = lambda sig: {k: {list(s)[0] for n, s in sig.items() if _block_key(n) == k}  # noqa: E731
                            for k in {_block_key(n) for n in sig}}
    tuned_blocks, now_blocks = roles_of(tuned), roles_of(now)
    out = []
    for n in sorted(set(tuned) | set(now)):
        if n not in now and n in known:  # tuned under another name of a weight tied here: compared under that one
            continue
        a = tuned.get(n) if n in tuned else next((tuned[x] for x in names.get(n, ()) if x in tuned), None)
        b = now.get(n)
        if a is not None and b is not None:
            if list(a)[0] != b[0]:
                out.append(f"{n}: tuned as {a[0]}, the target reads {b[0]} ({_fans(b)} here, {_fans(a)} at the "
                           "proxy)")
            continue
        role = list(a if a is not None else b)[0]
        other = now_blocks if a is not None else tuned_blocks
        if other.get(_block_key(n)) == {role}:  # another block of the same stack (a deeper or shallower model)
            continue
        out.append(f"{n}: {'absent at the proxy' if a is None else 'absent in the target'} ({role} where it is; "
                   "its role cannot be compared)")
    return out


def check_roles(tuned: Mapping[str, list] | None, plan) -> None:
    """Refuse ``plan`` when its roles differ from those the hyperparameters were tuned under (``hp["tuned_roles"]``):
    per-role values (``lr_mult[role]``, ``init_mult[role]``, ``output_mult``) would act on other weights.  The error
    lists the parameters and says what to pass.  ``tuned`` None or empty: nothing to check."""
    if not tuned:
        return
    bad = mismatches(tuned, plan)
    if not bad:
        return
    shown = "; ".join(bad[:12]) + (f"; ... ({len(bad) - 12} more)" if len(bad) > 12 else "")
    fix = {}
    for n in sorted(tuned):
        p = plan.params.get(n)
        if p is not None and p.role != list(tuned[n])[0] and len(fix) < 3:
            fix[n] = {"role": list(tuned[n])[0]}
    overrides = f" (e.g. overrides={fix!r})" if fix else ""
    raise RolesMismatchError(
        f"this model's roles differ from those the hyperparameters were tuned under ({len(bad)} parameters: {shown}). "
        "Per-role values would act on other weights than at the proxy, so nothing was changed. Build the model with "
        "the proxy's factory and pass base=<the model at the proxy width> (the exact two-width reading tune and "
        "transfer use), or give these parameters the tuned roles with overrides="
        f"{overrides}; or tune on a proxy of the same architecture (the same fixed and scaling dimensions). Dropping "
        f"hp[{TUNED_ROLES!r}] applies the values unchecked.")
