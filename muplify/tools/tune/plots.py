"""The sweep's plots (PNG, no pyplot): value against each searched hyperparameter, hyperparameter importance, and the
phases of a multi-phase sweep."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .space import Choice, Dist, IntRange, LogUniform, TuneError, Uniform, config_value, searched

if TYPE_CHECKING:
    from .result import TuneResult


def plot_params(self: TuneResult, path: str, dpi: int = 110) -> str:
    """Final value against each searched hyperparameter (one panel each): completed trials coloured by trial
    number, pruned ones as grey crosses at their last reported value, the best as a red star.  PNG, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(searched(self.space))
    if not keys:
        raise TuneError("nothing was searched (every space entry is Fixed): there is nothing to plot")
    main_h = max((t.horizon for t in self.trials if t.horizon is not None), default=None)  # horizons=: the main one
    here = [t for t in self.trials if t.width in (None, self.width) and t.horizon == main_h]  # not other widths
    done = [t for t in here if t.state == "complete" and t.config is not None]
    pruned = [t for t in here if t.state == "pruned" and t.config is not None and t.value is not None]
    star = self.best is not None and self.best.get("tuned_at", self.width) == self.width
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.7 * nrows + 0.7))
    FigureCanvasAgg(fig)
    vals = sorted(t.value for t in done)
    ylim = None
    if len(vals) >= 3:  # diverging trials at 1e3 would flatten everything else: cut at a robust top
        lo, q = vals[0], vals[int(0.9 * (len(vals) - 1))]
        ylim = (lo - 0.05 * (q - lo + 1e-12), q + 0.35 * (q - lo + 1e-12))
    n_max = max((t.number for t in self.trials), default=1) or 1
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        d = self.space[key]
        xs = lambda ts: [_plot_x(d, config_value(t.config, key)) for t in ts]  # noqa: E731
        if pruned:
            ax.scatter(xs(pruned), [t.value for t in pruned], marker="x", s=14, c="0.6",
                       label="pruned (last report)")
        if done:
            ax.scatter(xs(done), [t.value for t in done], s=16, c=[t.number / n_max for t in done],
                       cmap="viridis", vmin=0, vmax=1, label="complete")
        if star:
            ax.scatter([_plot_x(d, config_value(self.best, key))], [self.best["value"]], marker="*", s=140, c="red",
                       edgecolors="k", linewidths=0.5, zorder=5, label="best")
        if isinstance(d, LogUniform) or (isinstance(d, IntRange) and d.log):
            ax.set_xscale("log", base=2)
        if isinstance(d, (LogUniform, Uniform, IntRange)) and d.lo < d.hi:  # the whole searched range
            pad = (d.hi / d.lo) ** 0.03 if isinstance(d, LogUniform) or getattr(d, "log", False) else None
            ax.set_xlim(*((d.lo / pad, d.hi * pad) if pad else (d.lo - 0.03 * (d.hi - d.lo),
                                                               d.hi + 0.03 * (d.hi - d.lo))))
        if isinstance(d, Choice):
            ax.set_xticks(range(len(d.values)), [str(v) for v in d.values], fontsize=7, rotation=20)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("objective (lower is better)", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    c = self.counts()
    fig.suptitle(f"proxy sweep at width {self.width}: {c['complete']} complete, {c['pruned']} pruned, "
                 f"{c['failed']} failed (colour: trial number, later = yellow)", fontsize=10)
    fig.tight_layout()
    _makedirs_for(path)
    fig.savefig(path, dpi=dpi)
    return path

def plot_importance(self: TuneResult, path: str, dpi: int = 110) -> str:
    """Bar chart of :meth:`importance` (PNG, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    imp = self.importance()
    names = list(imp)[::-1]
    fig = Figure(figsize=(6.4, 0.38 * len(names) + 1.3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(imp[n], y, f" {imp[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(imp.values()) * 1.18 + 1e-9)
    ax.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_title(f"hyperparameter importance, proxy width {self.width} "
                 f"({self.counts()['complete']} complete trials)", fontsize=10)
    fig.tight_layout()
    _makedirs_for(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_horizons(self: TuneResult, path: str, dpi: int = 110) -> str:
    """``tune(..., horizons=)``: each fitted value's optimum against the horizon (log-log), its power law drawn
    across the tuned horizons and a decade beyond (dashed: extrapolation), the exponent and its error in the title.
    PNG, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fits = self.horizon_fit
    if not fits:
        raise TuneError("no horizon fit to plot: tune(..., horizons=[S1, S2, S3]) makes one")
    ncols = min(3, len(fits))
    nrows = -(-len(fits) // ncols)
    fig = Figure(figsize=(max(4.8, 3.6 * ncols), 2.9 * nrows + 0.5))
    FigureCanvasAgg(fig)
    for i, f in enumerate(fits.values()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        lo, hi = min(f.horizons), max(f.horizons)
        inside = [lo * (hi / lo) ** (j / 40) for j in range(41)]
        beyond = [hi * 10 ** (j / 20) for j in range(21)]
        ax.plot(inside, [f.at(s) for s in inside], c="tab:blue", label=f"{f.coef:.3g}·S^{f.exponent:.3f}")
        ax.plot(beyond, [f.at(s) for s in beyond], c="tab:blue", ls="--", alpha=0.6, label="extrapolated")
        ax.scatter(f.horizons, f.optima, c="red", zorder=5, s=22,
                   label="optimum (" + "/".join(sorted(set(f.optimum_from or ["best trial"]))) + ")")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"{f.key}: exponent {f.exponent:+.3f} {f.uncertainty().split(' (')[0]}", fontsize=9)
        ax.set_xlabel("horizon (optimizer steps)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"optimum vs horizon, width {self.width} (fit: least squares in log-log)", fontsize=10)
    fig.tight_layout()
    _makedirs_for(path)
    fig.savefig(path, dpi=dpi)
    return path


def _makedirs_for(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def _plot_x(d: Dist, v: Any) -> Any:
    if isinstance(d, Choice):
        return d.values.index(tuple(v) if isinstance(v, list) and tuple(v) in d.values else v)
    return v
