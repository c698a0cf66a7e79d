"""Coordinate check: does the size of every activation stay constant in width during the first training steps?

This is the test the μP papers and the `mup` package use to validate a parametrization: build the model at several
widths, train each for a few steps on the same data, and record the mean absolute value of every layer's output.
Under standard parametrization (SP) the curves grow with width (the wider model blows up); under μP they are flat.

    >>> from muplify.coord_check import coord_check
    >>> from muplify.models import GPT
    >>> res = coord_check(lambda w: GPT(d_model=w, n_layer=2), (idx, targets), widths=[64, 128, 256, 512])
    >>> print(res.table()); res.plot("coord_check.png")
    >>> assert res.passed("mup") and not res.passed("sp")

What is recorded (``CoordCheckResult.records``), per parametrization, width, seed, step and layer:

* ``size = mean(|x|)`` of the output of every module (forward hooks; a module returning a tuple/list/dict is
  represented by its first floating-point tensor).  A module called several times in one forward gets the names
  ``name``, ``name#2``, ...
* ``"<module>:attn_logits"``: the attention logits of every ``F.scaled_dot_product_attention`` call, which no module
  hook can see.  They are recomputed for the record as ``(q @ k^T) * scale`` with the call's own ``scale=`` (default
  ``1/sqrt(head_dim)``), over the positions the mask allows (``is_causal``, boolean or ``-inf`` float masks).
* ``"<module>:softmax_in"``: the input of every ``softmax`` (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``),
  i.e. the attention logits of hand-written attention; ``-inf`` (masked) entries are left out of the mean.
* ``"<output>"``: the model's final output (the readout logits; ``.logits`` of a HF ModelOutput, the first tensor
  of a tuple).

``<module>`` is the name of the innermost module whose forward made the call (``"<model>"`` for the root).  Ops
called from inside other Python-level ``torch.nn.functional`` functions (e.g. the attention inside
``nn.MultiheadAttention``'s ``F.multi_head_attention_forward``) are not visible to a ``TorchFunctionMode`` and are
not recorded.

Step ``t`` is recorded by the forward pass that precedes the ``t``-th optimizer step, i.e. it shows the activations
after ``t`` updates (``t = 0`` is the initialisation); ``steps=4`` records ``t = 0..3`` and makes 4 updates.

Verdict: for every (parametrization, layer, step) the sizes are averaged over seeds and the slope of ``log(size)``
against ``log(width)`` is fitted by least squares over all widths.  A parametrization passes when every
``|slope| <= tol``.  The default ``tol = log(1.2)/log(2) ≈ 0.263`` is the `mup` package's own test criterion (the
ratio of the sizes at two widths must stay within 1.2) expressed per doubling of width: a curve that changes by less
than 1.2x each time the width doubles passes.  (`mup`'s test applies 1.2 across a 4x width span, 1000 vs 4000, i.e.
a slope of 0.13; at the small widths a CPU check can afford, finite-width noise needs the per-doubling reading.)
SP typically shows slopes of +0.5 (hidden layers at init under a fixed-std init) to +1..2 (after a few Adam steps);
μP should show slopes near 0.  Layers whose size is exactly zero at every width (e.g. a zero-initialised readout at
step 0) have slope 0; zero at some widths only gives an infinite slope (a failure).

The criterion is two-sided, like `mup`'s: a shrinking curve fails too.  Under μP the logits at initialisation shrink
like 1/sqrt(width) unless the readout is zero-initialised (``muplify_kwargs={"readout_zero_init": True}``, which
`mup`'s own coordinate checks use), so expect ``<output>`` to fail at step 0 without it.  Prefer small batches (no
more tokens than the smallest width): with many more, Adam's first updates carry a part that shrinks like
1/sqrt(width) at small widths (`mup`'s examples use batch size 1).
"""
from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["coord_check", "CoordCheckResult", "Batch", "DEFAULT_TOL", "DEFAULT_WIDTHS", "PARAM_LABELS"]

#: `mup`'s criterion (a 1.2x ratio between two widths) per doubling of width: |slope of log size vs log width|.
DEFAULT_TOL = math.log(1.2) / math.log(2)
DEFAULT_WIDTHS = (64, 128, 256, 512)
PARAM_LABELS = {"sp": "SP", "mup": "μP"}
OUTPUT_NAME = "<output>"
ROOT_NAME = "<model>"


# --------------------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One training batch: ``model(*args, **kwargs)``; ``labels`` are given to the loss, not to the model."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    labels: Any = None


def _as_batch(item: Any, labels: Any = None) -> Batch:
    if isinstance(item, Batch):
        b = item
    elif isinstance(item, (tuple, list)):
        b = Batch(args=tuple(item))
    elif isinstance(item, Mapping):
        b = Batch(kwargs=dict(item))
    elif isinstance(item, torch.Tensor):
        b = Batch(args=(item,))
    else:
        raise TypeError(
            f"a batch must be a tuple of forward args, a dict of forward kwargs, a tensor or a Batch; got {type(item)}"
        )
    if b.labels is None and labels is not None:
        b = Batch(b.args, b.kwargs, labels)
    return b


def _n_required_positional(fn: Callable) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


def _materialize_batches(batch: Any, steps: int, labels: Any = None) -> list[Batch]:
    """Turn ``batch`` into ``steps`` concrete batches, drawn once so that every run sees exactly the same data.

    A tuple / dict / tensor / Batch is reused at every step.  A callable is called once per step (with the step index
    if it takes a positional argument) under a fixed seed; an iterator or other iterable (a DataLoader, a list of
    batches) is read for ``steps`` items, cycling if it runs out.
    """
    if isinstance(batch, (Batch, tuple, Mapping, torch.Tensor)):
        return [_as_batch(batch, labels)] * steps
    items: list[Any] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if callable(batch) and not isinstance(batch, (Iterator, nn.Module)):
            takes_step = _n_required_positional(batch) >= 1
            items = [batch(t) if takes_step else batch() for t in range(steps)]
        elif isinstance(batch, Iterable):
            it = iter(batch)
            for _ in range(steps):
                try:
                    items.append(next(it))
                except StopIteration:
                    break
            if not items:
                raise ValueError("the batch iterator is empty")
            items = [items[t % len(items)] for t in range(steps)]
        else:
            raise TypeError(f"batch must be a tuple of forward args, a callable or an iterable; got {type(batch)}")
    return [_as_batch(item, labels) for item in items]


def _to_device(obj: Any, device: torch.device | None) -> Any:
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------------- outputs, loss
def _first_float_tensor(obj: Any, _depth: int = 0) -> torch.Tensor | None:
    """The tensor that represents a module's output: itself, ``.logits``, or the first floating tensor inside."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() or obj.is_complex() else None
    if _depth > 4:
        return None
    if isinstance(obj, Mapping):  # HF ModelOutput is an OrderedDict
        if isinstance(obj.get("logits", None), torch.Tensor):
            return _first_float_tensor(obj["logits"], _depth + 1)
        for k, v in obj.items():
            if k == "loss":
                continue
            t = _first_float_tensor(v, _depth + 1)
            if t is not None:
                return t
        return None
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_float_tensor(v, _depth + 1)
            if t is not None:
                return t
    return None


def default_loss(output: Any, labels: Any = None) -> torch.Tensor:
    """The loss used when ``loss_fn`` is None, in this order:

    1. the model computed one: ``output.loss`` (HF ModelOutput, or a dict with ``"loss"``), or the second element of
       a tuple/list output when it is a scalar tensor (``(logits, loss)``, the nanoGPT convention);
    2. labels were given: cross entropy of the output's last dim against integer labels (``(N, C)`` or ``(B, T, V)``
       outputs), mean squared error against floating labels;
    3. otherwise ``output.mean()`` (of the output's first floating tensor).
    """
    if isinstance(output, Mapping) or hasattr(output, "loss"):
        loss = output.get("loss", None) if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.dim() == 0:
            return loss
    if isinstance(output, (tuple, list)) and len(output) >= 2:
        second = output[1]
        if isinstance(second, torch.Tensor) and second.dim() == 0 and second.is_floating_point():
            return second
    out = _first_float_tensor(output)
    if out is None:
        raise ValueError("cannot derive a loss from the model output; pass loss_fn=")
    if labels is not None:
        labels = torch.as_tensor(labels, device=out.device)
        if labels.is_floating_point():
            return F.mse_loss(out.float(), labels.float().reshape(out.shape))
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), labels.reshape(-1))
    return out.float().mean()


def _call_loss(loss_fn: Callable, output: Any, labels: Any) -> torch.Tensor:
    """``loss_fn(output, labels)`` if it accepts two positional arguments, else ``loss_fn(output)``."""
    try:
        inspect.signature(loss_fn).bind(output, labels)
    except TypeError:
        return loss_fn(output)
    except ValueError:  # no signature (builtins): assume (output, labels)
        pass
    return loss_fn(output, labels)


# -------------------------------------------------------------------------------------------------------- recording
def _mean_abs(x: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    x = x.detach()
    if x.is_complex():
        x = x.abs()
    x = x.float().abs()
    if keep is not None:
        x = x[keep.expand_as(x)] if keep.shape != x.shape else x[keep]
    if x.numel() == 0:
        return float("nan")
    return x.mean().item()


_SDPA = torch._C._nn.scaled_dot_product_attention
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SOFTMAXES = {F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax}


def _sdpa_logits_size(args: tuple, kwargs: dict) -> float:
    a = dict(zip(_SDPA_ARGS, args))
    a.update(kwargs)
    q, k = a["query"].detach(), a["key"].detach()
    scale = a.get("scale", None)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    if q.dim() >= 3 and k.dim() >= 3 and q.size(-3) != k.size(-3) and q.size(-3) % k.size(-3) == 0:  # GQA
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    logits = (q.float() @ k.float().transpose(-2, -1)) * scale
    L, S = logits.shape[-2:]
    keep = None
    mask = a.get("attn_mask", None)
    if a.get("is_causal", False):
        keep = torch.ones(L, S, dtype=torch.bool, device=logits.device).tril(diagonal=S - L)
    elif isinstance(mask, torch.Tensor):
        keep = mask.detach() if mask.dtype == torch.bool else torch.isfinite(mask.detach())
    if keep is not None:
        keep = torch.broadcast_to(keep, logits.shape)
    return _mean_abs(logits, keep)


class _Recorder(TorchFunctionMode):
    """Forward hooks on every module + a TorchFunctionMode for SDPA and softmax; collects {name: size} per forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stack: list[str] = []
        self.sizes: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self._seen: set[str] = set()
        self.active = False
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))
            self.handles.append(mod.register_forward_hook(self._post_hook(name)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _put(self, name: str, value: float) -> None:
        n = self.calls.get(name, 0) + 1
        self.calls[name] = n
        key = name if n == 1 else f"{name}#{n}"
        self.sizes[key] = value

    def _pre_hook(self, name: str):
        def hook(module, args):
            self.stack.append(name)

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            if not self.active:
                return
            t = _first_float_tensor(output)
            if t is not None:
                with torch._C.DisableTorchFunction():
                    self._put(OUTPUT_NAME if name == "" else name, _mean_abs(t))

        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA or func is F.scaled_dot_product_attention:
            with torch._C.DisableTorchFunction():
                self._put(f"{self._where()}:attn_logits", _sdpa_logits_size(args, kwargs))
        elif func in _SOFTMAXES:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor):
                with torch._C.DisableTorchFunction():
                    self._put(f"{self._where()}:softmax_in", _mean_abs(x, torch.isfinite(x.detach())))
        return func(*args, **kwargs)

    def _where(self) -> str:
        return (self.stack[-1] or ROOT_NAME) if self.stack else ROOT_NAME

    def forward(self, model: nn.Module, batch: Batch) -> tuple[Any, dict[str, float]]:
        self.stack.clear()
        self.sizes, self.calls = {}, {}
        self.active = True
        try:
            with self:
                out = model(*batch.args, **batch.kwargs)
        finally:
            self.active = False
        sizes = self.sizes
        # the root's forward hook fires last; show the final output last in the table too
        if OUTPUT_NAME in sizes:
            sizes[OUTPUT_NAME] = sizes.pop(OUTPUT_NAME)
        for k in sizes:
            if k not in self._seen:
                self._seen.add(k)
                self.order.append(k)
        return out, sizes


# ------------------------------------------------------------------------------------------------------------ result
def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) vs log(x); 0 when y is 0 everywhere, nan when it cannot be judged."""
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


def _ok(slope: float, tol: float) -> bool:
    return abs(slope) <= tol  # False for nan


class CoordCheckResult:
    """Records and verdict of a coordinate check.

    ``records``: list of dicts ``{param, width, seed, step, layer, size}``.
    ``slopes``: ``{param: {layer: [slope at step 0, 1, ...]}}`` (slope of log mean|x| vs log width, seeds averaged).
    """

    def __init__(self, records: list[dict], *, widths: Sequence[int], steps: int, seeds: Sequence[int],
                 parametrizations: Sequence[str], tol: float = DEFAULT_TOL, layers: Sequence[str] | None = None,
                 config: dict | None = None):
        self.records = list(records)
        self.widths = sorted(int(w) for w in widths)
        self.steps = int(steps)
        self.seeds = list(seeds)
        self.parametrizations = list(parametrizations)
        self.tol = float(tol)
        self.config = dict(config or {})
        seen: dict[str, None] = dict.fromkeys(layers or ())
        for r in self.records:
            seen.setdefault(r["layer"], None)
        self.layers = list(seen)
        self.slopes = self._compute_slopes()

    # -- verdict
    def mean_sizes(self, param: str) -> dict[str, dict[int, list[float]]]:
        """``{layer: {width: [seed-averaged size at step 0, 1, ...]}}``."""
        acc: dict[tuple, list[float]] = {}
        for r in self.records:
            if r["param"] == param:
                acc.setdefault((r["layer"], r["width"], r["step"]), []).append(r["size"])
        out: dict[str, dict[int, list[float]]] = {}
        for layer in self.layers:
            for w in self.widths:
                vals = []
                for t in range(self.steps):
                    v = acc.get((layer, w, t))
                    vals.append(sum(v) / len(v) if v else float("nan"))
                if any(not math.isnan(v) for v in vals):
                    out.setdefault(layer, {})[w] = vals
        return out

    def _compute_slopes(self) -> dict[str, dict[str, list[float]]]:
        slopes: dict[str, dict[str, list[float]]] = {}
        for p in self.parametrizations:
            sizes = self.mean_sizes(p)
            per = {}
            for layer, by_w in sizes.items():
                ws = sorted(by_w)
                per[layer] = [_slope(ws, [by_w[w][t] for w in ws]) for t in range(self.steps)]
            slopes[p] = per
        return slopes

    def failures(self, param: str = "mup") -> dict[str, list[float]]:
        """Failing layers (forward order) with their slopes per step; empty when ``param`` passes."""
        return {layer: s for layer, s in self.slopes[param].items() if not all(_ok(v, self.tol) for v in s)}

    def passed(self, param: str = "mup") -> bool:
        if param not in self.slopes:
            raise KeyError(f"{param!r} was not run; have {list(self.slopes)}")
        return bool(self.slopes[param]) and not self.failures(param)

    def verdict(self) -> dict[str, dict]:
        return {
            p: {"passed": self.passed(p), "n_layers": len(self.slopes[p]), "failures": self.failures(p)}
            for p in self.parametrizations
        }

    def summary(self) -> str:
        parts = []
        for p in self.parametrizations:
            n, f = len(self.slopes[p]), len(self.failures(p))
            parts.append(f"{PARAM_LABELS.get(p, p)} {'PASS' if self.passed(p) else 'FAIL'} "
                         f"({f}/{n} layers with |slope| > {self.tol:.3f})")
        return ", ".join(parts)

    # -- reporting
    def table(self, max_layers: int | None = None) -> str:
        """One row per layer: slope per step for each parametrization, and ok/FAIL."""
        params = self.parametrizations
        layers = [layer for layer in self.layers if any(layer in self.slopes[p] for p in params)]
        if max_layers is not None and len(layers) > max_layers:
            layers = layers[:max_layers]
        name_w = max([len("layer")] + [len(x) for x in layers])
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
            f"coordinate check: widths {' '.join(map(str, self.widths))}, steps {self.steps}, "
            f"seeds {len(self.seeds)}; pass when |slope of log mean|x| vs log width| <= {self.tol:.3f} "
            f"(1.2x per doubling)",
            head1, head2, "-" * len(head2),
        ]
        for layer in layers:
            cols = []
            for p in params:
                s = self.slopes[p].get(layer)
                if s is None:
                    cols.append("-".ljust(col_w))
                    continue
                flag = "  ok " if all(_ok(v, self.tol) for v in s) else " FAIL"
                cols.append((" ".join(fmt(v) for v in s) + flag).ljust(col_w))
            lines.append(layer.ljust(name_w) + " | " + " | ".join(cols))
        lines.append("-" * len(head2))
        lines.append("verdict: " + self.summary())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CoordCheckResult(widths={self.widths}, steps={self.steps}, {self.summary()})"

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "widths": self.widths, "steps": self.steps, "seeds": self.seeds, "tol": self.tol,
            "parametrizations": self.parametrizations, "config": self.config, "layers": self.layers,
            "verdict": {p: {"passed": v["passed"], "n_layers": v["n_layers"],
                            "failures": {k: [clean(x) for x in s] for k, s in v["failures"].items()}}
                        for p, v in self.verdict().items()},
            "slopes": {p: {k: [clean(x) for x in s] for k, s in d.items()} for p, d in self.slopes.items()},
            "records": [{**r, "size": clean(r["size"])} for r in self.records],
        }

    def to_json(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=str)
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "CoordCheckResult":
        with open(path) as f:
            d = json.load(f)
        records = [{**r, "size": float("nan") if r["size"] is None else r["size"]} for r in d["records"]]
        return cls(records, widths=d["widths"], steps=d["steps"], seeds=d["seeds"],
                   parametrizations=d["parametrizations"], tol=d["tol"], layers=d.get("layers"),
                   config=d.get("config"))

    def plot(self, path: str | os.PathLike, *, title: str | None = None, dpi: int = 110) -> str:
        """PNG: one row per parametrization (SP above μP), one panel per step; x = width (log2), y = mean |x| (log),
        one line per layer (failing layers drawn bold).  Uses matplotlib's Agg canvas, no pyplot state."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib import colormaps
        from matplotlib.lines import Line2D

        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        params = self.parametrizations
        nrows, ncols = len(params), self.steps
        n_layers = len(self.layers)
        legend_cols = 1 if n_layers <= 30 else 2
        fig = Figure(figsize=(3.0 * ncols + 2.4 * legend_cols, 2.8 * nrows + 0.9))
        FigureCanvasAgg(fig)
        cmap = colormaps["turbo"]
        colors = {layer: cmap(0.05 + 0.9 * i / max(1, n_layers - 1)) for i, layer in enumerate(self.layers)}
        gs = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1.0] * ncols + [0.85 * legend_cols])
        axes = [[fig.add_subplot(gs[i, t]) for t in range(ncols)] for i in range(nrows)]
        all_sizes = {p: self.mean_sizes(p) for p in params}
        vals = [v for sz in all_sizes.values() for by_w in sz.values() for vs in by_w.values() for v in vs
                if v > 0 and math.isfinite(v)]
        lo, hi = (min(vals), max(vals)) if vals else (1e-3, 1.0)  # one y range for all panels: rows comparable
        for i, p in enumerate(params):
            sizes = all_sizes[p]
            fails = self.failures(p)
            label = PARAM_LABELS.get(p, p)
            verdict = "PASS" if self.passed(p) else f"FAIL ({len(fails)}/{len(self.slopes[p])} layers)"
            for t in range(ncols):
                ax = axes[i][t]
                for layer, by_w in sizes.items():
                    ws = sorted(by_w)
                    ys = [by_w[w][t] for w in ws]
                    pts = [(w, y) for w, y in zip(ws, ys) if y > 0 and math.isfinite(y)]
                    if not pts:
                        continue
                    bad = layer in fails
                    ax.plot([w for w, _ in pts], [y for _, y in pts], color=colors[layer],
                            lw=1.6 if bad else 0.9, alpha=1.0 if bad else 0.75, marker="o", ms=2.5 if bad else 1.5)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_ylim(lo / 1.6, hi * 1.6)
                ax.set_xticks(self.widths)
                ax.set_xticklabels([str(w) for w in self.widths], fontsize=7)
                ax.tick_params(axis="y", labelsize=7)
                ax.minorticks_off()
                ax.grid(True, alpha=0.25)
                ax.set_title(f"{label}  step {t}", fontsize=9)
                if t == 0:
                    ax.set_ylabel(f"{label}: {verdict}\nmean |activation|", fontsize=9,
                                  color="tab:green" if self.passed(p) else "tab:red")
                if i == nrows - 1:
                    ax.set_xlabel("width", fontsize=8)
        handles = [Line2D([], [], color=colors[layer], lw=1.2) for layer in self.layers]
        lax = fig.add_subplot(gs[:, ncols])
        lax.axis("off")
        lax.legend(handles, self.layers, loc="center left", fontsize=6 if n_layers <= 40 else 5,
                   ncol=legend_cols, frameon=False, title="layer", title_fontsize=7, borderaxespad=0.0)
        sup = title or "coordinate check: mean |activation| vs width over the first training steps"
        fig.suptitle(f"{sup}\n{self.summary()}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        return path


# -------------------------------------------------------------------------------------------------------- the check
def _get_muplify() -> Callable:
    from muplify import muplify  # imported lazily: muplify/__init__ may import this module

    return muplify


def _resolve_optimizer(optimizer: Any) -> Callable:
    if isinstance(optimizer, str):
        name = optimizer
        for cand in (name, name.capitalize(), name.upper()):
            if hasattr(torch.optim, cand):
                return getattr(torch.optim, cand)
        lowered = {k.lower(): getattr(torch.optim, k) for k in dir(torch.optim)}
        if name.lower() in lowered:
            return lowered[name.lower()]
        raise ValueError(f"unknown optimizer {optimizer!r} (not in torch.optim)")
    return optimizer


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError("seeds must be >= 1")
        return list(range(seeds))
    return [int(s) for s in seeds]


def coord_check(
    factory: Callable[[int], nn.Module],
    batch: Any,
    *,
    widths: Sequence[int] | None = None,
    optimizer: Any = torch.optim.AdamW,
    lr: float = 1e-2,
    steps: int = 4,
    seeds: int | Iterable[int] = 2,
    base_width: int | None = None,
    loss_fn: Callable | None = None,
    muplify_kwargs: dict | None = None,
    parametrizations: Sequence[str] = ("sp", "mup"),
    labels: Any = None,
    tol: float = DEFAULT_TOL,
    optimizer_kwargs: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> CoordCheckResult:
    """Run the coordinate check of ``factory`` under SP and/or μP.

    Args:
        factory: ``width -> nn.Module``; called under ``torch.manual_seed(seed)`` (same seed per (width, seed) for
            every parametrization).  ``width`` is the size of the model's width dimension (e.g. ``d_model``).
        batch: forward inputs: a tuple of positional args, a dict of keyword args, a tensor, a :class:`Batch`
            (args, kwargs, labels), or a callable (``fn()`` or ``fn(step)``) / iterable giving such batches, one per
            step.  Batches are drawn once (under seed 0), so every run sees the same data.
        widths: at least two widths; default ``DEFAULT_WIDTHS`` (64..512).
        optimizer: optimizer class (or name in ``torch.optim``).  SP: ``optimizer(model.parameters(), lr=lr)``;
            μP: ``mu.optimizer(optimizer, lr=lr)``.
        lr, steps: learning rate and number of recorded steps (step ``t`` = after ``t`` updates, ``t < steps``).
        seeds: number of seeds (0..n-1) or the seeds; sizes are averaged over seeds before fitting slopes.
        base_width: μP base width; default the smallest width.
        loss_fn: ``loss_fn(output)`` or ``loss_fn(output, labels) -> scalar``; default :func:`default_loss`
            (the model's own loss if it returns one, cross entropy against ``labels`` if given, else output mean).
        muplify_kwargs: extra keyword args for ``muplify(model, base_width=..., ...)``; by default
            ``example_inputs``/``example_kwargs`` are the first batch.
        parametrizations: any of ``"sp"``, ``"mup"``.
        labels: labels for the default loss, used when the batch does not carry its own.
        tol: pass threshold on ``|slope|`` (default ``log(1.2)/log(2)``, see the module docstring).
        optimizer_kwargs: extra keyword args for the optimizer (e.g. ``weight_decay``).
        device: where to run (default CPU / wherever the factory puts the model).
        progress: print one line per run to stderr.
    """
    widths = sorted({int(w) for w in (widths or DEFAULT_WIDTHS)})
    if len(widths) < 2:
        raise ValueError("a coordinate check needs at least two widths")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    for p in parametrizations:
        if p not in ("sp", "mup"):
            raise ValueError(f"unknown parametrization {p!r}; use 'sp' and/or 'mup'")
    base_width = int(base_width or widths[0])
    seed_list = _seed_list(seeds)
    opt_cls = _resolve_optimizer(optimizer)
    opt_kwargs = dict(optimizer_kwargs or {})
    dev = torch.device(device) if device is not None else None
    batches = [Batch(_to_device(b.args, dev), _to_device(b.kwargs, dev), _to_device(b.labels, dev))
               for b in _materialize_batches(batch, steps, labels)]
    loss_fn = loss_fn or default_loss
    mk = dict(muplify_kwargs or {})

    records: list[dict] = []
    layer_order: dict[str, None] = {}
    for param in parametrizations:
        for width in widths:
            for seed in seed_list:
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                model = factory(width)
                if dev is not None:
                    model = model.to(dev)
                if param == "mup":
                    kw = dict(mk)
                    if "example_inputs" not in kw and "example_kwargs" not in kw:
                        kw["example_inputs"] = batches[0].args
                        if batches[0].kwargs:
                            kw["example_kwargs"] = batches[0].kwargs
                    model = _get_muplify()(model, base_width=base_width, **kw)
                    opt = model.optimizer(opt_cls, lr=lr, **opt_kwargs)
                else:
                    opt = opt_cls(model.parameters(), lr=lr, **opt_kwargs)
                model.train()
                rec = _Recorder(model)
                try:
                    for t in range(steps):
                        b = batches[t]
                        opt.zero_grad(set_to_none=True)
                        out, sizes = rec.forward(model, b)
                        for layer, size in sizes.items():
                            records.append({"param": param, "width": width, "seed": seed, "step": t,
                                            "layer": layer, "size": size})
                        loss = _call_loss(loss_fn, out, b.labels)
                        loss.backward()
                        opt.step()
                finally:
                    rec.remove()
                for layer in rec.order:
                    layer_order.setdefault(layer, None)
                if progress:
                    print(f"  coord_check {PARAM_LABELS.get(param, param):>2} width {width:>5} seed {seed}: "
                          f"{time.perf_counter() - t0:.1f}s, final loss {loss.item():.4f}", file=sys.stderr)
                del model, opt
    config = {"optimizer": getattr(opt_cls, "__name__", str(opt_cls)), "lr": lr, "base_width": base_width,
              "optimizer_kwargs": opt_kwargs, "muplify_kwargs": {k: v for k, v in mk.items()
                                                                  if k not in ("example_inputs", "example_kwargs")}}
    return CoordCheckResult(records, widths=widths, steps=steps, seeds=seed_list,
                            parametrizations=list(parametrizations), tol=tol, layers=list(layer_order), config=config)
