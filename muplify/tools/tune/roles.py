"""The proxy's roles are the target's (issue 18): read which axes scale from two widths, not one instance.

A single model at the proxy width cannot always tell a fixed axis from a scaling one: a Llama-style model whose KV
heads grow with width has *one* KV head at a narrow proxy, so k/v read as ``output`` there (fan_out fixed) and
``hidden`` at the target.  Hyperparameters tuned per role (``lr_mult["output"]``, ``init_mult``, ``output_mult``) then
act on different weights at the proxy and at the target.  :func:`transfer` and every trial have the model factory, so:

* :func:`reference_roles` builds the model at the proxy width and at twice it on the meta device and reads each
  parameter's role from the exact two-width comparison (``muplify(base=)``: an axis scales exactly when its size
  differs);
* :func:`proxy_overrides` is what the proxy's own analysis gets wrong against that reference: passed to the proxy's
  ``muplify(overrides=)`` (each named in the plan as an override with the reason);
* :func:`tuned_roles` is what the values were tuned under: recorded in ``result.best["hp"]["tuned_roles"]``, so
  that every ``muplify(..., hp=best["hp"])`` checks it (:mod:`muplify.tuned_roles`: :func:`role_signature`,
  :func:`check_roles`) and refuses a target whose roles differ, naming the parameters, before changing the model.
  A ``best.json`` of an older tune has them in ``best["roles"]`` (:func:`hp_with_roles` moves them into the hp).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from ...options import TUNED_ROLES
from ...tuned_roles import check_roles, mismatches, role_signature

__all__ = ["check_roles", "hp_with_roles", "mismatches", "proxy_overrides", "reference_roles", "role_signature"]

ROLES_KEY = "roles"  # best["roles"] of a tune before the roles moved into best["hp"]["tuned_roles"] (still read)
_ANALYSIS_KWARGS = ("example_inputs", "example_kwargs", "width", "head_scaling", "capture", "parametrization")
_CACHE: dict = {}


def hp_with_roles(config: Mapping) -> dict:
    """``config["hp"]`` carrying the roles the values were tuned under: its own ``"tuned_roles"``, else those a
    ``best.json`` of an older tune keeps in ``config["roles"]``, else none (applied unchecked)."""
    hp = dict(config.get("hp") or {})
    if hp.get(TUNED_ROLES) is None and config.get(ROLES_KEY):
        hp[TUNED_ROLES] = config[ROLES_KEY]
    return hp


def with_roles(best: dict, roles: Mapping) -> dict:
    """``best`` whose ``hp`` records ``roles`` (a copy of the hp: the trial's config is not changed)."""
    best["hp"] = {**dict(best.get("hp") or {}), TUNED_ROLES: dict(roles)}
    return best


def _factory_key(make_model):
    """The factory as a cache key (an unhashable callable -- the CLI's factory object -- by identity)."""
    try:
        hash(make_model)
        return make_model
    except TypeError:
        return ("id", id(make_model))


def _options_key(muplify_kwargs: Mapping | None) -> str:
    """The analysis options that can change a role (not the data: example inputs are the same kind each trial)."""
    return repr(sorted((k, repr(v)) for k, v in dict(muplify_kwargs or {}).items()
                       if k not in ("example_inputs", "example_kwargs", "hp")))


def _on_meta(x):
    """Example inputs for a model built on meta: tensors moved to meta (integer ids keep their dtype)."""
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_on_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _on_meta(v) for k, v in x.items()}
    return x


def build_on_meta(make_model: Callable[[int], nn.Module], width: int) -> nn.Module:
    """``make_model(width)`` on the meta device (no memory, no init): the shapes a two-width reading needs."""
    with torch.device("meta"):
        return make_model(width)


def reference_roles(make_model: Callable[[int], nn.Module], width: int,
                    muplify_kwargs: Mapping | None = None) -> dict[str, list] | None:
    """Roles at ``width`` read from two widths (``make_model(2 * width)`` against ``make_model(width)``, both on the
    meta device, muplify's exact ``base=`` route).  None (with a warning) when the factory cannot build on meta or
    the two builds are not the same architecture at two widths."""
    key = (_factory_key(make_model), int(width), _options_key(muplify_kwargs))
    if key in _CACHE:
        return _CACHE[key]
    from ...core import analyze

    kw = {k: _on_meta(v) for k, v in dict(muplify_kwargs or {}).items() if k in _ANALYSIS_KWARGS and k != "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = analyze(build_on_meta(make_model, 2 * width), base=lambda: make_model(width), **kw)
        sig = role_signature(plan)
    except Exception as e:  # noqa: BLE001 - the reference is a cross-check; the sweep runs without it
        warnings.warn(f"muplify.tune: could not read the roles from two widths ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}); the proxy's roles come from its own analysis, which cannot "
                      "tell a fixed axis from one that scales when its size is the same at every width (one KV head)",
                      stacklevel=3)
        sig = None
    _CACHE[key] = sig
    return sig


def proxy_overrides(plan, reference: Mapping[str, list] | None) -> dict[str, dict]:
    """``overrides=`` that give the proxy's plan the reference roles (only where they differ)."""
    if not reference:
        return {}
    out = {}
    for n, p in plan.params.items():
        ref = reference.get(n)
        if ref is not None and ref[0] != p.role:
            out[n] = {"role": ref[0], "note": f"role from two widths ({ref[0]}); one instance at the proxy width "
                                              f"reads it as {p.role} (an axis whose size is the same at both)"}
    return out


def proxy_fixes(make_model: Callable[[int], nn.Module], model: nn.Module, width: int,
                muplify_kwargs: Mapping) -> dict[str, dict]:
    """The overrides the proxy at ``width`` needs to carry the two-width roles (cached per factory and width: every
    trial builds the same architecture)."""
    key = (_factory_key(make_model), int(width), _options_key(muplify_kwargs), "fixes")
    if key not in _CACHE:
        from ...core import analyze

        reference = reference_roles(make_model, width, muplify_kwargs)
        kw = {k: v for k, v in muplify_kwargs.items() if k not in ("hp", "overrides")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CACHE[key] = proxy_overrides(analyze(model, base_width=width, **kw), reference) if reference else {}
    return _CACHE[key]


def tuned_roles(make_model: Callable[[int], nn.Module], width: int, muplify_kwargs: Mapping) -> dict[str, list]:
    """The signature recorded in ``best["hp"]["tuned_roles"]``: the two-width roles, else the proxy's own
    analysis."""
    ref = reference_roles(make_model, width, muplify_kwargs)
    if ref is not None:
        return ref
    from ...core import analyze

    kw = {k: v for k, v in muplify_kwargs.items() if k not in ("hp",)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return role_signature(analyze(make_model(width), base_width=width, **kw))


ROLES_ATTR = "muplify.roles"  # study attribute: the roles best["hp"] records (load_result reads them back)


def record_roles(study, roles: Mapping) -> None:
    """Keep the roles with the study, so that a result loaded from the storage carries them too."""
    try:
        study.set_user_attr(ROLES_ATTR, dict(roles))
    except Exception:  # noqa: BLE001 - a storage that refuses attributes: best.json still has them
        pass
