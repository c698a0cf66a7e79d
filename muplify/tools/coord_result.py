"""The coordinate check's records, its verdict, the likely cause of a failure, and the printed table.

Verdict: for every (parametrization, layer, step) the sizes are averaged over seeds and the slope of ``log(size)``
against ``log(width)`` is fitted by least squares over all widths.  The default ``tol = log(1.2)/log(2) ≈ 0.263`` is
the `mup` package's own criterion (the sizes at two widths within 1.2x) read per doubling of width.  A layer passes
when every step's slope lies in its band:

* every layer: ``|slope| <= tol`` (μP: activations Θ(1) in width);
* readout layers: ``-0.5 - tol <= slope <= tol``.  Under μP a non-zero readout starts at Θ(1/√width) (its init
  variance is the base model's, and the output multiplier is 1/m), so the logits at step 0 shrink with slope −0.5;
  a readout bias and the updates add Θ(1) parts, so later the slope moves from −0.5 towards 0.  A zero-initialised
  readout gives exactly 0 at step 0 (slope 0).  Readout layers are the modules applying the plan's readout (the
  output-role parameters' modules and the readout multiplier's module, e.g. a MoE router), the probes recorded
  inside them (a router's ``:softmax_in``) and every layer recording exactly the same sizes (the model's output, a
  container returning the logits).

Sizes that are exactly zero at every width (a zero-initialised layer) have slope 0; zero at some widths only, or a
non-finite size (a diverged run), gives an infinite slope: a failure.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .coord_record import PARAM_LABELS, READOUT_INIT_SLOPE, same_series

__all__ = ["CoordCheckResult", "DEFAULT_TOL", "READOUT_INIT_SLOPE", "PARAM_LABELS", "slope"]

#: `mup`'s criterion (a 1.2x ratio between two widths) per doubling of width: |slope of log size vs log width|.
DEFAULT_TOL = math.log(1.2) / math.log(2)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) vs log(x); 0 when y is 0 everywhere, ±inf when y is 0 or infinite at some x
    only, nan when fewer than two points are finite."""
    pts = [(x, y) for x, y in zip(xs, ys) if not math.isnan(y)]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return float("nan")
    if all(y == 0 for _, y in pts):
        return 0.0
    if any(y <= 0 or math.isinf(y) for _, y in pts):
        return float("inf") if pts[-1][1] > pts[0][1] else float("-inf")
    lx = [math.log(x) for x, _ in pts]
    ly = [math.log(y) for _, y in pts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


# ----------------------------------------------------------------------------------------------- likely causes
@dataclass(frozen=True)
class _Failure:
    layer: str  # the layer outside its band
    step: int  # at this step
    slope: float  # with this slope
    readout: bool  # whether it is judged against the readout band


@dataclass(frozen=True)
class _Cause:
    applies: Callable[["CoordCheckResult", list[_Failure]], bool]  # does this cause fit the failures?
    sentence: Callable[["CoordCheckResult", list[_Failure]], str]  # one sentence naming the cause and the fix


def _worst(fails: list[_Failure], pred: Callable[[_Failure], bool] = lambda f: True) -> _Failure:
    return max((f for f in fails if pred(f)), key=lambda f: abs(f.slope) if math.isfinite(f.slope) else math.inf)


def _first_growing(fails: list[_Failure]) -> _Failure:
    """The earliest layer (forward order) that grows, at its steepest step: the closest to the cause."""
    layer = next(f.layer for f in fails if f.slope > 0)
    return max((f for f in fails if f.layer == layer and f.slope > 0), key=lambda f: f.slope)


def _is_attention(f: _Failure) -> bool:
    return f.layer.endswith((":attn_logits", ":softmax_in"))


def _many_tokens(r: "CoordCheckResult") -> bool:
    tokens = r.config.get("tokens_per_batch")
    return bool(tokens) and tokens > min(r.widths)


# Ordered: the first cause whose test fits the failing (layer, step) slopes is the one printed.
CAUSES: list[_Cause] = [
    _Cause(lambda r, fs: any(not math.isfinite(f.slope) for f in fs),
           lambda r, fs: f"{_worst(fs).layer} is non-finite or exactly zero at some widths only: a run diverged or a "
                         f"layer is dead; try a smaller lr (now {r.config.get('lr')}) or look at that layer."),
    _Cause(lambda r, fs: any(f.step == 0 and not f.readout for f in fs),
           lambda r, fs: (lambda w: f"{w.layer} is already off at step 0 (slope {w.slope:.2f} before any update): "
                                    "the initial values are scaled wrong (a parameter feeding it has the wrong init "
                                    "rule or role), not the learning rate; check the 'init' and 'role' columns of "
                                    "print(mu.plan) (the init rule is read off each weight's values; see any 'init of "
                                    "...: GUESS' note) and fix it with muplify(..., init='fan_in'|'fan_out'|'fixed') "
                                    "or overrides=....")(_worst(fs, lambda f: f.step == 0
                                                                                     and not f.readout))),
    _Cause(lambda r, fs: any(f.readout and f.slope < 0 for f in fs),
           lambda r, fs: f"The readout ({_worst(fs, lambda f: f.readout).layer}) shrinks faster than 1/√width: its "
                         "learning rate or output multiplier is scaled down too much; check the 'output' rows of "
                         "mu.plan and that the optimizer comes from mu.optimizer(...)."),
    _Cause(lambda r, fs: all(_is_attention(f) and f.slope > 0 for f in fs),
           lambda r, fs: f"The attention logits ({_worst(fs).layer}) grow with width: if the head dimension grows "
                         "with width (a fixed number of heads), muplify(..., head_scaling='head_dim') applies μP's "
                         "1/d attention scale."),
    _Cause(lambda r, fs: any(f.slope > 0 for f in fs),
           lambda r, fs: (lambda w: f"{w.layer} grows like width^{w.slope:.2f} at step {w.step} (within its band "
                                    "at step 0, so it grows with training: a learning rate, not the init): a "
                                    "parameter feeding it (it is the first layer that grows) does not get the "
                                    "learning rate μP prescribes; check its role in mu.plan (fix it "
                                    "with muplify(..., overrides=...)) and that the optimizer is mu.optimizer(...), "
                                    "not one built on model.parameters().")(_first_growing(fs))),
    _Cause(lambda r, fs: _many_tokens(r),
           lambda r, fs: f"{_worst(fs).layer} shrinks with width (slope {_worst(fs).slope:.2f} at step "
                         f"{_worst(fs).step}): a batch holds {r.config.get('tokens_per_batch')} tokens, more than "
                         f"the smallest width ({min(r.widths)}), and Adam's first updates then carry a part that "
                         "shrinks like 1/√width at small widths; use fewer tokens per batch or larger widths."),
    _Cause(lambda r, fs: True,
           lambda r, fs: f"{_worst(fs).layer} shrinks with width (slope {_worst(fs).slope:.2f} at step "
                         f"{_worst(fs).step}): finite-width effects do this at small widths and large learning "
                         "rates; re-check at larger widths or a smaller lr, and if it stays, a parameter feeding it "
                         "has too small a learning rate in mu.plan."),
]


# ------------------------------------------------------------------------------------------------------ result
class CoordCheckResult:
    """Records and verdict of a coordinate check.

    ``records``: list of dicts ``{param, width, seed, step, layer, size}``.
    ``slopes``: ``{param: {layer: [slope at step 0, 1, ...]}}`` (slope of log mean|x| vs log width, seeds averaged).
    ``readouts``: the layers judged against the readout band (see the module docstring).
    ``config``: how the check was run (optimizer, lr, loss, data, ...), for the table and the JSON.
    """

    def __init__(self, records: list[dict], *, widths: Sequence[int], steps: int, seeds: Sequence[int],
                 parametrizations: Sequence[str], tol: float = DEFAULT_TOL, layers: Sequence[str] | None = None,
                 config: dict | None = None, readouts: Sequence[str] = ()):
        self.records = list(records)
        self.widths = sorted(int(w) for w in widths)
        self.steps = int(steps)
        self.seeds = list(seeds)
        self.parametrizations = list(parametrizations)
        self.tol = float(tol)
        self.config = dict(config or {})
        self.axis = self.config.get("axis", "width")  # what the sizes vary along: "width" or "depth"
        seen: dict[str, None] = dict.fromkeys(layers or ())
        for r in self.records:
            seen.setdefault(r["layer"], None)
        self.layers = list(seen)
        self._sizes = {p: self._mean_sizes(p) for p in self.parametrizations}
        self.readouts = self._readout_layers(readouts)
        self.slopes = {p: {layer: [slope(sorted(by_w), [by_w[w][t] for w in sorted(by_w)]) for t in range(self.steps)]
                           for layer, by_w in self._sizes[p].items()} for p in self.parametrizations}

    # -- sizes and bands
    def _mean_sizes(self, param: str) -> dict[str, dict[int, list[float]]]:
        acc: dict[tuple, list[float]] = {}
        for r in self.records:
            if r["param"] == param:
                acc.setdefault((r["layer"], r["width"], r["step"]), []).append(r["size"])
        out: dict[str, dict[int, list[float]]] = {}
        for layer in self.layers:
            for w in self.widths:
                vals = [sum(v) / len(v) if (v := acc.get((layer, w, t))) else float("nan") for t in range(self.steps)]
                if any(not math.isnan(v) for v in vals):
                    out.setdefault(layer, {})[w] = vals
        return out

    def mean_sizes(self, param: str) -> dict[str, dict[int, list[float]]]:
        """``{layer: {width: [seed-averaged size at step 0, 1, ...]}}``."""
        return self._sizes[param]

    def _readout_layers(self, declared: Sequence[str]) -> list[str]:
        """The declared readout modules, the probes recorded inside them (a router's ``:softmax_in`` is its logits),
        and every layer with exactly the same sizes (in the μP run if there is one: the plan that named the readouts
        is μP's)."""
        ref = "mup" if "mup" in self._sizes else (self.parametrizations[0] if self.parametrizations else None)
        sizes = self._sizes.get(ref, {})
        base = [layer for layer in declared if layer in sizes]
        return [layer for layer in self.layers
                if layer in base or layer.partition(":")[0] in declared
                or (layer in sizes and any(same_series(sizes[layer], sizes[b]) for b in base))]

    def band(self, layer: str) -> tuple[float, float]:
        """The interval the layer's slope must lie in at every step."""
        low = READOUT_INIT_SLOPE - self.tol if layer in self.readouts else -self.tol
        return low, self.tol

    def _ok(self, layer: str, value: float) -> bool:
        low, high = self.band(layer)
        return low <= value <= high  # False for nan

    # -- verdict
    def failures(self, param: str = "mup") -> dict[str, list[float]]:
        """Failing layers (forward order) with their slopes per step; empty when ``param`` passes."""
        return {layer: s for layer, s in self.slopes[param].items() if not all(self._ok(layer, v) for v in s)}

    def passed(self, param: str = "mup") -> bool:
        """Whether every layer of ``param`` (``"sp"``, ``"mup"`` or ``"completep"``) stays in its band at every
        step."""
        if param not in self.slopes:
            raise KeyError(f"{param!r} was not run; have {list(self.slopes)}")
        return bool(self.slopes[param]) and not self.failures(param)

    def likely_cause(self, param: str = "mup") -> str | None:
        """One sentence on the most likely cause of ``param``'s failure; None when it passes."""
        fails = [_Failure(layer, t, v, layer in self.readouts) for layer, s in self.failures(param).items()
                 for t, v in enumerate(s) if not self._ok(layer, v)]
        if not fails:
            return None
        if self.axis == "depth":
            w = _worst(fails)
            return (f"{w.layer} {'grows' if w.slope > 0 else 'shrinks'} with depth (slope {w.slope:.2f} at step "
                    f"{w.step}): without depth scaling the residual stream grows with the number of blocks; "
                    "muplify(..., base_depth=...) applies CompleteP; if it does, check the branches in print(mu.plan).")
        return next(c.sentence(self, fails) for c in CAUSES if c.applies(self, fails))

    def verdict(self) -> dict[str, dict]:
        """``{param: {"passed", "n_layers", "failures"}}`` for every parametrization run."""
        return {p: {"passed": self.passed(p), "n_layers": len(self.slopes[p]), "failures": self.failures(p)}
                for p in self.parametrizations}

    def summary(self) -> str:
        """One line: PASS/FAIL and the number of failing layers per parametrization."""
        parts = []
        for p in self.parametrizations:
            n, f = len(self.slopes[p]), len(self.failures(p))
            parts.append(f"{PARAM_LABELS.get(p, p)} {'PASS' if self.passed(p) else 'FAIL'} ({f}/{n} layers outside "
                         f"their band)")
        return ", ".join(parts)

    # -- reporting
    def table(self, max_layers: int | None = None) -> str:
        """One row per layer: slope per step for each parametrization, and ok/FAIL; then the verdict and, for a
        failing μP, the likely cause."""
        params = self.parametrizations
        layers = [layer for layer in self.layers if any(layer in self.slopes[p] for p in params)]
        if max_layers is not None and len(layers) > max_layers:
            layers = layers[:max_layers]
        name_w = max([len("layer")] + [len(x) + (2 if x in self.readouts else 0) for x in layers])
        cell = 6
        col_w = self.steps * (cell + 1) + 5

        def fmt(v: float) -> str:
            if math.isnan(v):
                return "nan".rjust(cell)
            if math.isinf(v):
                return ("+inf" if v > 0 else "-inf").rjust(cell)
            return f"{v:+.2f}".rjust(cell)

        head1 = " " * name_w + " | " + " | ".join(
            f"{PARAM_LABELS.get(p, p)} slope at step 0..{self.steps - 1}".ljust(col_w) for p in params)
        head2 = "layer".ljust(name_w) + " | " + " | ".join(
            (" ".join(f"t={t}".rjust(cell) for t in range(self.steps)) + "     ").ljust(col_w) for p in params)
        lines = [
            f"coordinate check: {self.axis}s {' '.join(map(str, self.widths))}, steps {self.steps}, seeds "
            f"{len(self.seeds)}, {self.config.get('optimizer', '?')} lr {self.config.get('lr', '?')}",
        ]
        for key in ("data", "loss"):
            if self.config.get(key):
                lines.append(f"{key}: {self.config[key]}")
        lines += [
            f"slope of log mean|x| vs log {self.axis}; step t = the forward pass after t optimizer updates (t=0: init)",
            f"pass: every slope in [{-self.tol:+.2f}, {self.tol:+.2f}] (1.2x per doubling of {self.axis})"
            + (f"; readout layers (*) in [{READOUT_INIT_SLOPE - self.tol:+.2f}, {self.tol:+.2f}]: a non-zero readout "
               "starts at Θ(1/√width) under μP" if self.readouts else ""),
            head1, head2, "-" * len(head2),
        ]
        for layer in layers:
            cols = []
            for p in params:
                s = self.slopes[p].get(layer)
                if s is None:
                    cols.append("-".ljust(col_w))
                    continue
                flag = "  ok " if all(self._ok(layer, v) for v in s) else " FAIL"
                cols.append((" ".join(fmt(v) for v in s) + flag).ljust(col_w))
            name = f"{layer} *" if layer in self.readouts else layer
            lines.append(name.ljust(name_w) + " | " + " | ".join(cols))
        lines.append("-" * len(head2))
        lines.append("verdict: " + self.summary())
        judged = "completep" if "completep" in params else "mup"
        if judged in params and (cause := self.likely_cause(judged)):
            lines.append("likely cause: " + cause)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CoordCheckResult(widths={self.widths}, steps={self.steps}, {self.summary()})"

    def to_dict(self) -> dict:
        """Everything (records, slopes, verdict, likely causes, config) as plain JSON-able data."""
        def clean(v):  # JSON has no inf/nan: they are written as the strings "inf", "-inf", "nan"
            return str(v) if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "widths": self.widths, "steps": self.steps, "seeds": self.seeds, "tol": self.tol,
            "parametrizations": self.parametrizations, "config": self.config, "layers": self.layers,
            "readouts": self.readouts,
            "verdict": {p: {"passed": v["passed"], "n_layers": v["n_layers"],
                            "failures": {k: [clean(x) for x in s] for k, s in v["failures"].items()},
                            "likely_cause": self.likely_cause(p)}
                        for p, v in self.verdict().items()},
            "slopes": {p: {k: [clean(x) for x in s] for k, s in d.items()} for p, d in self.slopes.items()},
            "records": [{**r, "size": clean(r["size"])} for r in self.records],
        }

    def to_json(self, path: str | os.PathLike) -> str:
        """Write :meth:`to_dict` to ``path`` (folders created); returns the path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=str)
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "CoordCheckResult":
        """Read a result written by :meth:`to_json`."""
        with open(path) as f:
            d = json.load(f)
        records = [{**r, "size": float(r["size"])} for r in d["records"]]
        return cls(records, widths=d["widths"], steps=d["steps"], seeds=d["seeds"],
                   parametrizations=d["parametrizations"], tol=d["tol"], layers=d.get("layers"),
                   config=d.get("config"), readouts=d.get("readouts", ()))

    def plot(self, path: str | os.PathLike, *, title: str | None = None, dpi: int = 110) -> str:
        """Write the PNG (see :mod:`muplify.tools.coord_plot`); returns its path."""
        from .coord_plot import plot

        return plot(self, path, title=title, dpi=dpi)
