"""Stage 3: the plan — plain, printable data saying what μP does to each parameter.

Every later stage (rewrite, init, optimizer, export) reads only the plan.  ``print(plan)`` is a table; ``plan[name]``
is a :class:`ParamPlan`; ``plan.override("*.c_proj.weight", role="hidden")`` changes entries before the rewrite;
``plan.to_json()`` / ``Plan.from_json()`` round-trip it through a human-readable file.

Rules (relative to the base model, every multiplier is 1 at base width; see shared mup-rules.md §2):

=========  ========================  =====================  ==================  =====================
role       fan_in / fan_out          Adam-like lr           SGD-like lr         forward multiplier
=========  ========================  =====================  ==================  =====================
input      finite / infinite         η                      η·m_out             1
hidden     infinite / infinite       η/m_in (TP-V Table 3)  η·m_out/m_in        1
output     infinite / finite         η                      η·m_in              1/m_in on its input
vector     — / infinite              η                      η·m_out             1
fixed      finite / finite           η                      η                   1
=========  ========================  =====================  ==================  =====================

Weight decay (policy "coupled", the default): the per-step decay lr·wd of every parameter is kept as at base width,
so wd_mult = 1/lr_mult (hidden AdamW weights: wd·m_in, as the `mup` package does).  Policy "scaled": wd_mult = 1.
"""
from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

import sympy

from .errors import PlanError

__all__ = ["Plan", "ParamPlan", "ForwardMultiplier", "ROLES", "lr_mults", "role_from_fans"]

ROLES = ("input", "hidden", "output", "vector", "fixed")
_VOLATILE_OPTIONS = ("capture_seconds",)  # run-to-run diagnostics: kept off the JSON so a plan file is deterministic
FAMILIES = ("adam", "sgd")


@dataclass
class ForwardMultiplier:
    module: str  # module path, as in named_modules()
    where: str  # "input" (first positional argument) | "output" (returned tensor)
    factor: float
    reason: str  # "readout" | "attention"
    param: str  # the parameter the multiplier belongs to
    channels: tuple[int, int, int] | None = None  # (start, stop, total) of the last axis, for fused projections


@dataclass
class ParamPlan:
    name: str
    aliases: list[str]
    shape: tuple[int, ...]
    role: str
    fan_in: sympy.Expr
    fan_out: sympy.Expr
    width_mult_in: float  # m_in = fan_in(width) / fan_in(base_width)
    width_mult_out: float
    init_rule: str  # the rule that drew the current values: fan_in | fan_out | fixed | zero | const | deferred
    init_scale: float  # factor the rewrite multiplies the values by (0.0: zero-init)
    lr_mult: dict[str, float]
    wd_mult: dict[str, float]
    uses: list[str] = field(default_factory=list)
    zero_channels: tuple[int, int, int] | None = None  # (axis, start, stop) zeroed by query_zero_init
    note: str = ""
    bias_of: str | None = None  # for a bias: the weight of its layer (its init is judged by that layer's fan_in)
    init_extra: float = 1.0  # 0.0: zero-init (readout_zero_init); 1/m_in: Table-3 readout form


def role_from_fans(fan_in_inf: bool, fan_out_inf: bool) -> str:
    return {(False, True): "input", (True, True): "hidden", (True, False): "output", (False, False): "fixed"}[
        (fan_in_inf, fan_out_inf)]


def lr_mults(role: str, m_in: float, m_out: float) -> dict[str, float]:
    adam = 1.0 / m_in if role == "hidden" else 1.0  # TP-V Table 3: hidden Adam lr ∝ 1/fan_in
    sgd = {"input": m_out, "vector": m_out, "hidden": m_out / m_in, "output": m_in, "fixed": 1.0}[role]
    return {"adam": adam, "sgd": sgd}


def wd_mults(lr_mult: dict[str, float], policy: str) -> dict[str, float]:
    if policy == "coupled":
        return {k: 1.0 / v for k, v in lr_mult.items()}
    if policy == "scaled":
        return {k: 1.0 for k in lr_mult}
    raise PlanError(f"weight_decay policy must be 'coupled' or 'scaled', got {policy!r}")


@dataclass
class Plan(Mapping):
    """Per-parameter μP decisions plus the forward multipliers, for one model at one width."""

    base_width: int
    width: int
    params: dict[str, ParamPlan]
    forward: list[ForwardMultiplier]
    options: dict
    notes: list[str] = field(default_factory=list)
    width_symbol: sympy.Symbol = field(default_factory=lambda: sympy.Symbol("w", positive=True, integer=True))
    model_class: str = ""

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
        return self.width / self.base_width

    def by_role(self, role: str) -> list[str]:
        return [n for n, p in self.params.items() if p.role == role]

    # overrides ---------------------------------------------------------------------------------------------------
    def override(self, pattern: str, **fields) -> list[str]:
        """Change every entry whose name (or alias) matches the glob ``pattern``; returns the names changed.

        ``role=`` recomputes the lr/wd multipliers for that role; ``lr_mult=``, ``wd_mult=`` (dicts or floats),
        ``init_scale=`` set values directly.
        """
        hits = [n for n, p in self.params.items() if any(fnmatch.fnmatchcase(a, pattern) for a in [n, *p.aliases])]
        if not hits:
            raise PlanError(f"override pattern {pattern!r} matches no parameter; names look like {list(self)[:3]}")
        allowed = {"role", "lr_mult", "wd_mult", "init_scale", "note"}
        bad = set(fields) - allowed
        if bad:
            raise PlanError(f"cannot override {sorted(bad)}; allowed fields: {sorted(allowed)}")
        for n in hits:
            p = self.params[n]
            if "role" in fields:
                role = fields["role"]
                if role not in ROLES:
                    raise PlanError(f"role must be one of {ROLES}, got {role!r}")
                p.role = role
                p.lr_mult = lr_mults(role, p.width_mult_in, p.width_mult_out)
                p.wd_mult = wd_mults(p.lr_mult, self.options.get("weight_decay", "coupled"))
                if role != "output":
                    self.forward = [f for f in self.forward if not (f.param == n and f.reason == "readout")]
            for k in ("lr_mult", "wd_mult"):
                if k in fields:
                    v = fields[k]
                    setattr(p, k, {f: float(v) for f in FAMILIES} if isinstance(v, (int, float)) else dict(v))
            if "init_scale" in fields:
                p.init_scale = float(fields["init_scale"])
            p.note = (p.note + "; " if p.note else "") + fields.get("note", f"overridden: {sorted(fields)}")
        return hits

    # printing ----------------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        w = self.width_symbol
        head = (f"muplify plan for {self.model_class or 'model'}: width {w} = {self.width}, base_width = "
                f"{self.base_width} (width_mult {self.width_mult:g}); head_scaling={self.options.get('head_scaling')}, "
                f"init={self.options.get('init')}, weight_decay={self.options.get('weight_decay')}")
        rows = [("parameter", "shape", "role", "fan_in", "fan_out", "init", "adam lr", "sgd lr")]
        for n, p in self.params.items():
            init = p.init_rule if p.init_scale == 1.0 else f"{p.init_rule} x{p.init_scale:.3g}"
            name = n + (f" (= {', '.join(p.aliases[1:])})" if len(p.aliases) > 1 else "")
            rows.append((name, "x".join(map(str, p.shape)), p.role, str(p.fan_in), str(p.fan_out), init,
                         f"x{p.lr_mult['adam']:.4g}", f"x{p.lr_mult['sgd']:.4g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head, ""]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(widths[k]) for k, c in enumerate(r)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * x for x in widths))
        if self.forward:
            lines += ["", "forward multipliers:"]
            for f in self.forward:
                ch = f" on channels [{f.channels[0]}:{f.channels[1]}] of {f.channels[2]}" if f.channels else ""
                lines.append(f"  {f.reason:9s} x{f.factor:.4g} on the {f.where} of '{f.module}'{ch}  ({f.param})")
        if self.notes:
            lines += ["", "notes:"] + [f"  - {s}" for s in self.notes]
        return "\n".join(lines)

    __repr__ = __str__

    def summary(self) -> dict[str, int]:
        out = {r: 0 for r in ROLES}
        for p in self.params.values():
            out[p.role] += 1
        return out

    # serialisation -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def enc(p: ParamPlan) -> dict:
            d = asdict(p)
            d["fan_in"], d["fan_out"] = str(p.fan_in), str(p.fan_out)
            d["shape"] = list(p.shape)
            return d

        return {
            "format": "muplify-plan/1",
            "model_class": self.model_class,
            "base_width": self.base_width,
            "width": self.width,
            "width_symbol": str(self.width_symbol),
            "options": {k: v for k, v in self.options.items() if k not in _VOLATILE_OPTIONS},
            "notes": self.notes,
            "params": [enc(p) for p in self.params.values()],
            "forward": [asdict(f) for f in self.forward],
        }

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("format") != "muplify-plan/1":
            raise PlanError(f"not a muplify plan (format {d.get('format')!r}); expected 'muplify-plan/1'")
        sym = sympy.Symbol(d.get("width_symbol", "w"), positive=True, integer=True)
        params = {}
        for e in d["params"]:
            e = dict(e)
            e["fan_in"] = sympy.sympify(e["fan_in"], locals={str(sym): sym})  # plain arithmetic strings only
            e["fan_out"] = sympy.sympify(e["fan_out"], locals={str(sym): sym})
            e["shape"] = tuple(e["shape"])
            if e.get("zero_channels") is not None:
                e["zero_channels"] = tuple(e["zero_channels"])
            params[e["name"]] = ParamPlan(**e)
        fwd = [ForwardMultiplier(**{**f, "channels": tuple(f["channels"]) if f.get("channels") else None})
               for f in d["forward"]]
        return cls(d["base_width"], d["width"], params, fwd, d["options"], d.get("notes", []), sym,
                   d.get("model_class", ""))

    @classmethod
    def from_json(cls, path_or_text: str) -> "Plan":
        text = path_or_text
        if not path_or_text.lstrip().startswith("{"):
            with open(path_or_text) as fh:
                text = fh.read()
        return cls.from_dict(json.loads(text))

    def copy(self) -> "Plan":
        return Plan.from_dict(json.loads(self.to_json()))


def _m(expr: sympy.Expr, sym: sympy.Symbol, width: int, base: int) -> float:
    if not expr.has(sym):
        return 1.0
    return float(expr.subs(sym, width) / expr.subs(sym, base))


def build_plan(wa, model, base_width: int, *, head_scaling: str, init: str | None, weight_decay: str,
               readout_zero_init: bool, query_zero_init: bool) -> Plan:
    """Turn a :class:`~muplify.width.WidthAnalysis` into a plan (roles, fans, multipliers, init actions)."""
    from . import initialization as ini
    from .sites import param_dependent_nodes, query_site, readout_site

    sym, width = wa.width_symbol, wa.width_size
    leaf_modules = {n for n, m in model.named_modules() if not any(True for _ in m.children())}
    params: dict[str, ParamPlan] = {}
    forward: list[ForwardMultiplier] = []
    notes = list(wa.notes)
    tensors = dict(model.named_parameters())
    for name, pd in wa.params.items():
        prod = lambda axes: sympy.Mul(*[pd.axis_exprs[a] for a in axes]) if axes else sympy.Integer(1)
        contracting = [u for u in pd.uses if u.kind in ("matmul", "conv", "embedding")]
        note, chosen = "", None
        t = tensors.get(name)
        if t is not None and not (t.is_floating_point() or t.is_complex()):
            # an integer/bool Parameter gets no gradient and no init: μP leaves it alone
            role, fan_in, fan_out = "fixed", sympy.Integer(1), sympy.Integer(max(1, t.numel()))
            note = f"non-float parameter ({t.dtype}): fixed, left untouched"
        elif contracting:
            cands = []
            for u in contracting:
                fi, fo = prod(u.fan_in_axes), prod(u.fan_out_axes)
                cands.append((role_from_fans(fi.has(sym), fo.has(sym)), fi, fo, u))
            chosen = next((c for c in cands if c[0] == "output"), cands[0])
            role, fan_in, fan_out, _ = chosen
            if len({c[0] for c in cands}) > 1:
                note = "tied: " + " + ".join(sorted({c[0] for c in cands})) + "; the readout use sets the role"
        elif pd.uses and all(u.kind == "elementwise" for u in pd.uses):
            fan_in, fan_out = sympy.Integer(1), sympy.Mul(*pd.axis_exprs)
            role = "vector" if fan_out.has(sym) else "fixed"
        else:
            fan_in, fan_out = sympy.Integer(1), sympy.Mul(*pd.axis_exprs)
            role = "fixed"
            why = "not used by the captured forward" if name in wa.unused or not pd.uses else \
                f"used by ops without a rule ({', '.join(sorted({str(u.node.target) for u in pd.uses}))})"
            if fan_out.has(sym):
                role = "vector" if len(pd.shape) <= 1 else "hidden"
                fan_in = pd.axis_exprs[-1] if len(pd.shape) > 1 else sympy.Integer(1)
                fan_out = pd.axis_exprs[0]
            note = f"{why}; role guessed from its shape — check it or override"
            notes.append(f"{name}: {note}")
        m_in, m_out = _m(fan_in, sym, width, base_width), _m(fan_out, sym, width, base_width)
        lr = lr_mults(role, m_in, m_out)
        uses = [f"{u.kind} in '{_mod(u.node)}'" for u in pd.uses]

        params[name] = ParamPlan(name, list(pd.aliases), tuple(pd.shape), role, fan_in, fan_out, m_in, m_out,
                                 "keep", 1.0, lr, wd_mults(lr, weight_decay), uses, None, note)

        if role == "output" and chosen is not None:
            site = readout_site(chosen[3], pd.aliases, leaf_modules)
            if site is not None:
                forward.append(ForwardMultiplier(site.module, site.where, 1.0 / m_in, "readout", name))
            elif len(pd.aliases) == 1:
                # No module boundary carries the readout input: use the equivalent TP-V Table 3 form instead
                # (init var ∝ 1/fan_in², Adam lr η/m_in; exact for Adam up to epsilon).
                p = params[name]
                p.init_extra = 1.0 / m_in
                p.lr_mult = {"adam": 1.0 / m_in, "sgd": 1.0 / m_in}
                p.wd_mult = wd_mults(p.lr_mult, weight_decay)
                p.note += "readout applied in Table-3 form (no module boundary carries its input)"
            else:
                raise PlanError(
                    f"the tied readout weight {name} is used by '{_mod(chosen[3].node)}' on a tensor that no module "
                    "boundary carries alone, so muplify cannot insert the readout multiplier there. Compute the "
                    "readout with an nn.Linear (sharing the embedding weight), or override the role of this weight.")

    # attention: query sites (1/d scaling when head_dim grows; query zero-init)
    dep = None
    done: set[str] = set()
    for site in wa.attention:
        if site.kind not in ("sdpa", "manual") or site.node.name in done:
            continue
        done.add(site.node.name)
        hd_expr = wa.dim_expr(site.head_dim)
        needs_scale = head_scaling == "head_dim" and hd_expr.has(sym)
        if not (needs_scale or query_zero_init):
            continue
        if dep is None:
            dep = param_dependent_nodes(wa.graph, {pd.placeholder for pd in wa.params.values()})
        q = query_site(site.node, dep)
        if q is None:
            msg = (f"could not find the query projection feeding the attention op in '{_mod(site.node)}'; "
                   "the attention scale" + (" (1/d_head)" if needs_scale else "") + " is left unchanged there")
            if needs_scale:
                raise PlanError(msg + ". Use head_scaling='heads' (head_dim fixed) or compute q with an nn.Linear.")
            notes.append(msg)
            continue
        qparam = _weight_of(model, q.module)
        if needs_scale:
            m_hd = _m(hd_expr, sym, width, base_width)
            # TP-V: attention logits 1/d_head; √b_head/d_head keeps the base model unchanged -> q × √(b/d)
            forward.append(ForwardMultiplier(q.module, "output", 1.0 / math.sqrt(m_hd), "attention",
                                             qparam or q.module, q.channels))
        if query_zero_init and qparam in params:
            p = params[qparam]
            axis = _out_axis(wa.params[qparam])
            total = p.shape[axis]
            start, stop = (q.channels[0], q.channels[1]) if q.channels is not None else (0, total)
            p.zero_channels = (axis, start, stop)
    # biases: judged by their layer's fan_in; readout_zero_init zeroes an untied readout and its bias
    for name, p in params.items():
        mod, _, leaf = name.rpartition(".")
        w = params.get(f"{mod}.weight") if leaf == "bias" else None
        if w is not None and w.role in ("input", "hidden", "output"):
            p.bias_of = w.name
    readouts = {n for n, p in params.items() if p.role == "output"}
    if readout_zero_init:
        for n, p in params.items():
            if n in readouts or p.bias_of in readouts:
                if len(params[p.bias_of or n].aliases) > 1:
                    if n in readouts:
                        notes.append(f"readout_zero_init: {n} is tied to an input embedding, so it is not zeroed "
                                     "(its logits start at Θ(1/√width), as μP with a non-zero readout does)")
                    continue
                p.init_extra = 0.0
    for name, p in params.items():
        p.init_rule, p.init_scale = ini.decide(p, tensors.get(name), _PlanView(params, sym, width), init)
        if p.init_extra == 0.0:
            p.init_rule += " -> zero (readout_zero_init)"
    # one hook per (module, where, channels): tied readouts used twice get one multiplier
    uniq, seen = [], set()
    for f in forward:
        key = (f.module, f.where, f.channels, f.reason)
        if key not in seen:
            seen.add(key)
            uniq.append(f)
    options = {"head_scaling": head_scaling, "init": init, "weight_decay": weight_decay,
               "readout_zero_init": readout_zero_init, "query_zero_init": query_zero_init}
    return Plan(base_width, width, params, uniq, options, notes, sym, type(model).__name__)


@dataclass
class _PlanView:  # what initialization.decide needs before the Plan object exists
    params: dict
    width_symbol: sympy.Symbol
    width: int


def _weight_of(model, module_path: str) -> str | None:
    try:
        mod = model.get_submodule(module_path)
    except AttributeError:
        return None
    w = getattr(mod, "weight", None)
    if w is None:
        return None
    for n, p in model.named_parameters():
        if p is w:
            return n
    return None


def _out_axis(pd) -> int:
    for u in pd.uses:
        if u.fan_out_axes:
            return u.fan_out_axes[0]
    return 0


def _mod(node) -> str:
    from .sites import module_of

    return module_of(node)
