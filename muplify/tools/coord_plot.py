"""The coordinate check's figure: one row per parametrization (SP above μP), one panel per step.

Each panel: x = width (log2), y = mean |activation| (log), one line per layer.  Made to be read at 30+ layers:

* passing layers are thin grey lines; failing layers are coloured, thicker, numbered at their right end, and named
  in the row's legend (the worst first; past ``MAX_NAMED`` the legend says how many more);
* layers with exactly the same sizes (a container returning its last child's output, the model output = the
  readout) are drawn once and named together;
* the pass band is drawn as a shaded cone (slope within ±tol of flat) from the panel's median size at the smallest
  width; a dashed line marks the readout's init slope (−0.5);
* sizes that are exactly 0 sit on a hatched strip at the bottom, non-finite ones (a diverged run) on a strip at the top;
* the caption defines step t and the marks.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from .coord_record import PARAM_LABELS, READOUT_INIT_SLOPE, same_series

if TYPE_CHECKING:
    from .coord_result import CoordCheckResult

__all__ = ["plot", "figure", "MAX_NAMED"]

MAX_NAMED = 14  # failing layer groups named in a row's legend
_PASS_COLOR = "#a8a8a8"
_UNNAMED_COLOR = "#555555"  # failing layers past MAX_NAMED
_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd"]
_STYLES = ["-", "--", "-.", ":"]


def _groups(sizes: dict[str, dict[int, list[float]]]) -> list[list[str]]:
    """Layers with identical series, in forward order (the first layer names the group)."""
    groups: list[list[str]] = []
    for layer, series in sizes.items():
        for g in groups:
            if same_series(sizes[g[0]], series):
                g.append(layer)
                break
        else:
            groups.append([layer])
    return groups


def _label(group: list[str], readouts: list[str]) -> str:
    star = " *" if any(layer in readouts for layer in group) else ""
    if len(group) == 1:
        return group[0] + star
    if len(group) == 2:
        return f"{group[0]} = {group[1]}{star}"
    return f"{group[0]} (= {len(group) - 1} more){star}"


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label positions (log10 units) at least ``gap`` apart, each as close to its line's end as possible."""
    order = sorted(range(len(ys)), key=lambda k: ys[k])
    out = list(ys)
    for a, b in zip(order, order[1:]):
        out[b] = max(out[b], out[a] + gap)
    shift = (sum(out) - sum(ys)) / max(1, len(ys))  # re-centre the pushed-up stack on the lines
    return [v - shift for v in out]


def plot(result: "CoordCheckResult", path: str | os.PathLike, *, title: str | None = None, dpi: int = 110) -> str:
    """Write the PNG to ``path`` (folders created); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure(result, title=title).savefig(path, dpi=dpi)
    return path


def figure(result: "CoordCheckResult", *, title: str | None = None):
    """The matplotlib ``Figure`` (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    params = result.parametrizations
    nrows, ncols = len(params), result.steps
    widths = result.widths
    all_sizes = {p: result.mean_sizes(p) for p in params}
    finite = [v for sz in all_sizes.values() for by_w in sz.values() for vs in by_w.values() for v in vs
              if v > 0 and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (1e-3, 1.0)
    every = [v for sz in all_sizes.values() for by_w in sz.values() for vs in by_w.values() for v in vs]
    has_zero, has_inf = any(v == 0 for v in every), any(math.isinf(v) for v in every)
    y_zero, y_inf = lo / 4, hi * 4  # where exact zeros and non-finite sizes are drawn, on strips of their own
    y_min, y_max = (lo / 8 if has_zero else lo / 1.6), (hi * 8 if has_inf else hi * 1.6)

    fig = Figure(figsize=(2.9 * ncols + 3.6, 2.9 * nrows + 1.5))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1.0] * ncols + [1.25], left=0.085, right=0.99,
                          top=1 - 0.75 / (2.9 * nrows + 1.5), bottom=1.05 / (2.9 * nrows + 1.5), wspace=0.28,
                          hspace=0.38)
    for i, p in enumerate(params):
        sizes = all_sizes[p]
        fails = result.failures(p)
        groups = _groups(sizes)
        failing = [g for g in groups if any(layer in fails for layer in g)]

        def worst(g: list[str]) -> float:
            return max((abs(v) if math.isfinite(v) else math.inf) for v in fails[next(x for x in g if x in fails)])

        failing.sort(key=worst, reverse=True)
        passing = [g for g in groups if g not in failing]
        named = failing[:MAX_NAMED]
        style = {tuple(g): (_PALETTE[k % len(_PALETTE)], _STYLES[(k // len(_PALETTE)) % len(_STYLES)])
                 for k, g in enumerate(named)}
        label = PARAM_LABELS.get(p, p)
        verdict = "PASS" if result.passed(p) else f"FAIL, {len(fails)}/{len(result.slopes[p])} layers"
        for t in range(ncols):
            ax = fig.add_subplot(gs[i, t])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            if has_zero:
                ax.axhspan(y_min, lo / 2, facecolor="#f2f2f2", edgecolor="#c8c8c8", hatch="///", lw=0, zorder=0)
            if has_inf:
                ax.axhspan(hi * 2, y_max, facecolor="#fbe3e3", lw=0, zorder=0)
            at_w0 = sorted(v for by_w in sizes.values() for v in [by_w.get(widths[0], [math.nan] * ncols)[t]]
                           if v > 0 and math.isfinite(v))
            if at_w0:  # the pass band as a cone from the panel's median size at the smallest width
                y0 = at_w0[len(at_w0) // 2]
                ws = [widths[0], widths[-1]]
                up = [y0 * (w / widths[0]) ** result.tol for w in ws]
                down = [y0 * (w / widths[0]) ** -result.tol for w in ws]
                ax.fill_between(ws, down, up, color="#2ca02c", alpha=0.13, lw=0, zorder=0.5)
                if result.readouts:
                    ax.plot(ws, [y0 * (w / widths[0]) ** READOUT_INIT_SLOPE for w in ws], color="#2ca02c", lw=0.8,
                            ls=(0, (4, 3)), alpha=0.7, zorder=0.6)
            ends: list[tuple[float, float, str, str]] = []  # (x, y, number, colour) of the failing lines' ends
            for rank, g in enumerate(failing + passing):
                by_w = sizes[g[0]]
                ws = sorted(by_w)
                ys = [by_w[w][t] for w in ws]
                pts = [(w, y_zero if y == 0 else (y_inf if not math.isfinite(y) else y)) for w, y in zip(ws, ys)
                       if not math.isnan(y)]
                if not pts:
                    continue
                xs, yv = [w for w, _ in pts], [y for _, y in pts]
                if g in named:
                    color, ls = style[tuple(g)]
                    ax.plot(xs, yv, color=color, ls=ls, lw=1.7, marker="o", ms=3, zorder=3)
                    ends.append((xs[-1], yv[-1], str(rank + 1), color))
                elif g in failing:
                    ax.plot(xs, yv, color=_UNNAMED_COLOR, lw=1.2, marker="o", ms=2, zorder=2.5)
                else:
                    ax.plot(xs, yv, color=_PASS_COLOR, lw=0.8, alpha=0.8, marker="o", ms=1.5, zorder=2)
            span = math.log10(y_max) - math.log10(y_min)
            spread = _spread([math.log10(e[1]) for e in ends], min(0.055 * span, 0.95 * span / max(1, len(ends))))
            if spread:  # keep the stack of numbers inside the panel
                spread = [v - max(0.0, max(spread) - math.log10(y_max) + 0.02 * span)
                          + max(0.0, math.log10(y_min) + 0.02 * span - min(spread)) for v in spread]
            for (x, y, num, color), ly in zip(ends, spread):
                ax.text(x * 1.07, 10 ** ly, num, fontsize=6.5, color=color, va="center", zorder=4)
            ax.set_ylim(y_min, y_max)
            ax.set_xlim(widths[0] / 1.25, widths[-1] * 1.6)
            ax.set_xticks(widths)
            ax.set_xticklabels([str(w) for w in widths], fontsize=7)
            ax.minorticks_off()
            ticks = [v for v in ax.get_yticks() if lo / 2 < v < hi * 2]
            labels = [f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e") for v in ticks]
            ax.set_yticks(([y_zero] if has_zero else []) + ticks + ([y_inf] if has_inf else []))
            ax.set_yticklabels((["0"] if has_zero else []) + labels + (["inf"] if has_inf else []), fontsize=7)
            ax.grid(True, alpha=0.25)
            ax.set_title(f"{label}, step {t}", fontsize=9)
            if t == 0:
                ax.set_ylabel(f"{label}: {verdict}\nmean |activation|", fontsize=8.5,
                              color="tab:green" if result.passed(p) else "tab:red")
            if i == nrows - 1:
                ax.set_xlabel(result.axis, fontsize=8)
        handles, names = [], []
        for rank, g in enumerate(named):
            color, ls = style[tuple(g)]
            handles.append(Line2D([], [], color=color, ls=ls, lw=1.7))
            names.append(f"{rank + 1}  {_label(g, result.readouts)}")
        if len(failing) > MAX_NAMED:
            handles.append(Line2D([], [], color=_UNNAMED_COLOR, lw=1.2))
            names.append(f"... and {len(failing) - MAX_NAMED} more failing (see the table)")
        n_pass = sum(len(g) for g in passing)
        handles.append(Line2D([], [], color=_PASS_COLOR, lw=1.2))
        names.append(f"{n_pass} passing layer{'s' if n_pass != 1 else ''}")
        handles.append(Patch(color="#2ca02c", alpha=0.25))
        names.append(f"pass band: slope within ±{result.tol:.2f}")
        if result.readouts:
            handles.append(Line2D([], [], color="#2ca02c", lw=0.8, ls=(0, (4, 3))))
            names.append(f"slope {READOUT_INIT_SLOPE:g}: a non-zero readout at init")
        lax = fig.add_subplot(gs[i, ncols])
        lax.axis("off")
        lax.legend(handles, names, loc="center left", fontsize=6.5, frameon=False, borderaxespad=0.0,
                   title=f"{label}: failing layers (worst first)" if failing else f"{label}: all layers pass",
                   title_fontsize=7.5, handlelength=2.4)
    readout = (f"  Dashed: slope {READOUT_INIT_SLOPE:g}, where a non-zero readout (*) starts under μP; readout layers "
               f"pass down to {READOUT_INIT_SLOPE - result.tol:.2f}." if result.readouts else "")
    caption = (f"step t: the forward pass after t optimizer updates (t = 0: at initialisation).  Shaded cone: the "
               f"pass band, |slope of log size vs log {result.axis}| ≤ {result.tol:.2f} (1.2x per doubling)."
               f"{readout}\nGrey: passing layers; coloured and numbered: failing layers "
               "(named on the right).  Hatched strip at the bottom: exactly 0; red strip at the top: non-finite "
               "(diverged).  Layers with identical sizes are drawn once.")
    fig.text(0.07, 0.012, caption, fontsize=7, va="bottom", ha="left", wrap=True)
    sup = title or f"coordinate check: mean |activation| vs {result.axis} over the first training steps"
    fig.suptitle(f"{sup}\n{result.summary()}", fontsize=10)
    return fig
