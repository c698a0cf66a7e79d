"""Kinds of forward-multiplier sites: each bundles where its sites come from (its finder in
:mod:`muplify.sites`), the ``hp`` constant it carries and its factor rule, so a new kind of multiplier is one
:class:`SiteKind` object passed to :func:`register_site_kind`.

A kind's :meth:`SiteKind.factor` is its full μP value (width / depth factor times its ``hp`` constant, 1 at base);
with ``widths=False`` (the standard parametrization) only the ``hp`` constant.  Which of them become module hooks
and which are absorbed into parameters is the parametrization's choice (:mod:`muplify.policy.parametrizations`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PlanError
from ..plan import ParamPlan, Plan, Site

__all__ = ["SiteKind", "SiteUse", "SITE_KINDS", "register_site_kind", "depth_mult"]


@dataclass(frozen=True)
class SiteUse:
    """One site of a kind, with the parameter it belongs to (None for a branch) and kind-specific context."""

    site: Site
    param: ParamPlan | None
    context: Any = None


class SiteKind:
    """A kind of multiplier site.  ``name`` is the ``Site.kind`` its finder emits; ``hp_key`` the ``hp`` constant it
    carries (None: none); ``finder``: a site finder (``fn(SiteContext) -> list[Site]``) registered with
    :func:`muplify.sites.site_finder` under ``name`` when the kind is registered (None: the built-in finder of that
    name).  Override :meth:`factor` (and :meth:`uses`, :meth:`unsited` where needed)."""

    name: str = ""
    hp_key: str | None = None
    reason_text: str = ""
    finder: Callable | None = None

    def uses(self, plan: Plan) -> list[SiteUse]:
        """The sites of this kind in ``plan``."""
        return [SiteUse(s, plan.params.get(s.param)) for s in plan.sites if s.kind == self.name]

    def factor(self, plan: Plan, use: SiteUse, widths: bool) -> float | None:
        """The multiplier at ``use`` (None: inactive here, no hook).  ``widths=False``: the hp constant only."""
        raise NotImplementedError

    def reason(self, use: SiteUse) -> str:
        return self.reason_text or self.name

    def unsited(self, plan: Plan, widths: bool) -> dict[str, float]:
        """Multipliers this kind needs on parameters that no site of it carries, as parameter scaling (TP-V Table 3
        form): {parameter: factor}."""
        return {}

    def __repr__(self) -> str:
        return f"<site kind {self.name!r} (hp {self.hp_key})>"


def depth_mult(plan: Plan) -> float:
    """m_L = depth / base_depth (1 without CompleteP)."""
    o = plan.options
    if o.base_depth is None or o.depth is None:
        return 1.0
    return o.depth / o.base_depth


class ReadoutKind(SiteKind):
    name, hp_key = "readout", "output_mult"

    def uses(self, plan):
        return [u for u in super().uses(plan) if u.param is not None and u.param.role == "output"]

    def factor(self, plan, use, widths):
        p = use.param
        # TP-V Table 8: the readout's input × 1/m_in (× α_out for the model's readout)
        f = (plan.hp.output_mult if p.readout else 1.0) / (p.width_mult_in if widths else 1.0)
        return f if (widths or f != 1.0) else None

    def reason(self, use):
        return "readout" if use.param.readout else "router"

    def unsited(self, plan, widths):
        sited = {s.param for s in plan.sites if s.kind == self.name}
        return {n: (plan.hp.output_mult if p.readout else 1.0) / (p.width_mult_in if widths else 1.0)
                for n, p in plan.params.items() if p.role == "output" and n not in sited}


class EmbeddingKind(SiteKind):
    name, hp_key = "embedding", "embed_mult"

    def factor(self, plan, use, widths):
        return plan.hp.embed_mult if plan.hp.embed_mult != 1.0 else None

    def unsited(self, plan, widths):
        sited = {s.param for s in plan.sites if s.kind == self.name}
        return {n: plan.hp.embed_mult for n, p in plan.params.items() if p.role == "input" and n not in sited}


class QueryKind(SiteKind):
    """The attention query: TP-V's 1/d_head logits as q × √(b_head/d_head), times α_attn.  Its sites come with the
    attention ops (``plan.attention``)."""

    name, hp_key, reason_text = "query", "attn_mult", "attention"

    def uses(self, plan):
        return [SiteUse(a.query, plan.params.get(a.query.param) if a.query is not None else None, a)
                for a in plan.attention]

    def factor(self, plan, use, widths):
        a, hp = use.context, plan.hp
        needs_scale = widths and plan.options.head_scaling == "head_dim" and a.head_dim.has(plan.width_symbol)
        if not needs_scale and hp.attn_mult == 1.0:
            return None
        scale = math.sqrt(a.base_head_dim / _size(plan, a.head_dim)) if needs_scale else 1.0
        if a.query is None:
            need = "the attention scale (1/d_head)" if needs_scale else f"attn_mult={hp.attn_mult}"
            raise PlanError(f"{need} needs the query projection of the attention in '{a.module}', but "
                            f"{a.missing or 'no module boundary carries the query alone'}. What to do: use "
                            "head_scaling='heads' (head_dim fixed) and attn_mult=1, or compute q with an nn.Linear.")
        return scale * hp.attn_mult


class BranchKind(SiteKind):
    """CompleteP (Dey et al. 2025): every residual branch × (base_depth/depth)^α."""

    name = "branch"

    def uses(self, plan):
        return [u for u in super().uses(plan) if u.site.module] if plan.options.base_depth is not None else []

    def factor(self, plan, use, widths):
        return depth_mult(plan) ** (-plan.options.depth_alpha) if widths else None

    def unsited(self, plan, widths):
        m_l = depth_mult(plan)
        if plan.options.base_depth is None or m_l == 1.0 or not widths:
            return {}
        out: dict[str, float] = {}
        for s in plan.sites:
            if s.kind == self.name and not s.module:  # no module boundary: CompleteP's multiplier in the weights
                if not s.fold:
                    raise PlanError("a residual branch has no module boundary carrying it alone and no weight "
                                    "producing it linearly, so its CompleteP multiplier cannot be applied; compute "
                                    "the branch in a submodule, or omit base_depth")
                for f in s.fold:
                    out[f.param] = out.get(f.param, 1.0) * m_l ** (-plan.options.depth_alpha)
        return out


def _size(plan: Plan, expr) -> int:
    return int(expr.subs(plan.width_symbol, plan.width)) if expr.has(plan.width_symbol) else int(expr)


SITE_KINDS: dict[str, SiteKind] = {}


def register_site_kind(kind: SiteKind) -> SiteKind:
    """Register a kind of multiplier site (and its finder, when it brings one).  A taken name raises."""
    if not isinstance(kind, SiteKind) or not kind.name:
        raise PlanError("register_site_kind needs a SiteKind instance with a name")
    if kind.name in SITE_KINDS:
        raise PlanError(f"a site kind named {kind.name!r} is already registered ({SITE_KINDS[kind.name]!r})")
    if kind.hp_key is not None:
        from ..options import HP_SCALARS

        if kind.hp_key not in HP_SCALARS:
            raise PlanError(f"site kind {kind.name!r}: hp_key must be one of {list(HP_SCALARS)} or None, got "
                            f"{kind.hp_key!r}")
    if kind.finder is not None:
        from ..sites import site_finder

        site_finder(kind.name)(kind.finder)
    SITE_KINDS[kind.name] = kind
    return kind


for _k in (ReadoutKind(), EmbeddingKind(), QueryKind(), BranchKind()):
    register_site_kind(_k)
del _k
