"""Coordinate check: does the size of every activation stay constant in width during the first training steps?

The test the μP papers and the `mup` package use to validate a parametrization: build the model at several widths,
train each for a few steps on the same data, and record the mean absolute value of every layer's output
(:mod:`muplify.tools.coord_record`).  Under standard parametrization (SP) the curves grow with width; under μP they
are flat, except a non-zero readout, which starts at Θ(1/√width) as μP prescribes (:mod:`muplify.tools.coord_result`
has the verdict).

    >>> from muplify import coord_check
    >>> from muplify.models import GPT
    >>> res = coord_check(lambda w: GPT(d_model=w, n_layer=2))      # a language model: the built-in text corpus
    >>> print(res.table()); res.plot("coord_check.png")
    >>> assert res.passed("mup") and not res.passed("sp")

Step ``t`` is recorded by the forward pass that precedes the ``t``-th optimizer step, i.e. it shows the activations
after ``t`` updates (``t = 0`` is the initialisation); ``steps=3`` records ``t = 0..2`` and makes 3 updates.  Every
run trains with the shared loop (:func:`muplify.tools.train.train`); a run whose loss becomes non-finite stops and
its remaining steps count as infinite sizes (a failure).

Defaults, and why: widths 64..512 and AdamW lr 3e-3 (about the best lr of the built-in GPT at width 64, see
``benchmarks/lr_transfer.py``; at 1e-2 the second block's attention logits of a correct μP GPT shrink by up to
width^-0.6 at these widths, a finite-width effect that fades at 128..1024), 3 steps, 2 seeds.  Language-model batches
hold 2 x 16 tokens, no more than the smallest width: with many more tokens, Adam's first updates carry a part that
shrinks like 1/√width at small widths (`mup`'s own examples use batch size 1).
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn

from .batch import Batch, to_device
from .lint_once import lint_once
from .coord_data import Loss, OutputLoss, corpus_batches, language_model_vocab, materialize_batches, tokens_per_batch
from .coord_record import OUTPUT_NAME, ROOT_NAME, Recorder
from .coord_result import DEFAULT_TOL, PARAM_LABELS, CoordCheckResult
from .train import TrainOptions, train
from ..errors import CaptureError
from ..optim import resolve_optimizer
from ..reuse import reusing

__all__ = ["coord_check", "CoordCheckResult", "Batch", "DEFAULT_TOL", "DEFAULT_WIDTHS", "DEFAULT_DEPTHS", "DEFAULT_LR",
           "DEFAULT_STEPS", "Parametrization", "readout_modules", "language_model_vocab"]

DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_DEPTHS = (2, 4, 8, 16)
LAST_BLOCK = "<last block>"  # along depth: the residual stream after the last block (its module name varies)
DEFAULT_LR = 3e-3
DEFAULT_STEPS = 3
# coordinate-check arms run through muplify with another parametrization than μP
_MUPLIFY_PARAMETRIZATION = {"spectral": "spectral", "sp-muplify": "sp"}
Parametrization = Literal["sp", "mup", "completep", "spectral", "sp-muplify"]
Axis = Literal["width", "depth"]


# -------------------------------------------------------------------------------------------------------- readouts
def readout_modules(model: nn.Module, plan: Any) -> list[str]:
    """Names of the layers that carry the plan's readout: the module applying a readout forward multiplier to its
    input and every module owning an output-role parameter, except embedding lookups (a tied embedding's own output
    is an input layer's activation).  A readout computed functionally (the multiplier scales the output of the
    module feeding it, or no module owns the readout weight but an embedding) is the model's output ``<output>``."""
    readout_fms = [fm for fm in getattr(plan, "forward", ()) if getattr(fm, "reason", None) == "readout"]
    names = {fm.module for fm in readout_fms if getattr(fm, "where", "input") == "input"}
    outputs = {alias for _, pp in plan.items() if pp.role == "output" for alias in pp.aliases}
    owned = set()
    for mod_name, mod in model.named_modules():
        for p, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p}" if mod_name else p
            if full in outputs and not isinstance(mod, nn.Embedding):
                names.add(mod_name or ROOT_NAME)
                owned.add(full)
    functional = any(getattr(fm, "where", "input") == "output" for fm in readout_fms) or any(
        not (set(pp.aliases) & owned) for _, pp in plan.items() if pp.role == "output")
    return sorted(names | ({OUTPUT_NAME} if functional else set()))


def _probe(factory: Callable[[int], nn.Module], width: int) -> nn.Module:
    """The model at ``width`` for a look at its structure: on the meta device when its constructor allows."""
    try:
        with torch.device("meta"):
            return factory(width)
    except Exception:  # noqa: BLE001 - a constructor that needs real tensors: build it for real
        with torch.random.fork_rng(devices=[]):
            return factory(width)


def _readouts_without_mup(model: nn.Module, base_width: int, batch: Batch, muplify_kwargs: dict) -> list[str]:
    kw = _capture_kwargs(muplify_kwargs, batch)
    if "overrides" in muplify_kwargs:
        kw["overrides"] = muplify_kwargs["overrides"]
    try:
        return readout_modules(model, _analyze_fn()(model, base_width, **kw))
    except Exception:  # noqa: BLE001 - SP alone does not need μP: then no layer gets the readout band
        return []


def _muplify_fn() -> Callable:
    from muplify import muplify  # imported lazily: muplify/__init__ imports this module

    return muplify


def _analyze_fn() -> Callable:
    from muplify import analyze

    return analyze


# ------------------------------------------------------------------------------------------------------- the check
def _plain_optimizer(model: nn.Module, opt_cls: type, lr: float, kwargs: dict,
                     base_width: int, batch: Batch, mk: dict) -> torch.optim.Optimizer:
    """The optimizer a user would write without μP: ``opt_cls(model.parameters())``, or for an optimizer that takes
    only some parameters (Muon) the same split as μP's (hidden matrices vs the rest on ``fallback``) with no μP
    multipliers."""
    from muplify.optim import CombinedOptimizer, _fallback
    from muplify.policy import family_for

    kwargs = dict(kwargs)
    fallback = kwargs.pop("fallback", None)
    if fallback is None:
        return opt_cls(model.parameters(), lr=lr, **kwargs)
    plan = _analyze_fn()(model, base_width, **_capture_kwargs(mk, batch))
    family = family_for(opt_cls)
    named = dict(model.named_parameters())
    mine = [p for n, p in named.items() if family.accepts(plan[n], plan) is None]
    rest = [p for n, p in named.items() if family.accepts(plan[n], plan) is not None]
    fb_cls, fb_kwargs = _fallback(fallback)
    return CombinedOptimizer([opt_cls(mine, lr=lr, **kwargs), fb_cls(rest, **fb_kwargs)])


def _capture_kwargs(mk: dict, batch: Batch) -> dict:
    kw = {k: v for k, v in mk.items() if k in ("width", "head_scaling", "example_inputs", "example_kwargs")}
    kw.setdefault("example_inputs", batch.args)
    if batch.kwargs:
        kw.setdefault("example_kwargs", batch.kwargs)
    return kw


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError("seeds must be >= 1")
        return list(range(seeds))
    return [int(s) for s in seeds]


def _progress_bar(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="coord_check", unit="run", file=sys.stderr, dynamic_ncols=True, leave=False)


def _one_run(model, param, value, mk, batches, base_width, base_depth, opt_cls, lr, opt_kwargs, loss):
    """Muplify (μP / CompleteP / spectral / SP through muplify) or not (SP), build the optimizer, train: ``(model, sizes per step)``."""
    if param != "sp":
        kw = dict(mk)
        if "example_inputs" not in kw and "example_kwargs" not in kw:
            kw["example_inputs"] = batches[0].args
            if batches[0].kwargs:
                kw["example_kwargs"] = batches[0].kwargs
        if param in _MUPLIFY_PARAMETRIZATION:
            kw["parametrization"] = _MUPLIFY_PARAMETRIZATION[param]
        if param == "completep":
            kw["base_depth"] = base_depth or value
        model = _muplify_fn()(model, base_width=base_width, **kw)
        opt = model.optimizer(opt_cls, lr=lr, **opt_kwargs)
    else:
        opt = _plain_optimizer(model, opt_cls, lr, opt_kwargs, base_width, batches[0], mk)
    return model, _run(model, opt, batches, loss)


@contextlib.contextmanager
def _inputs_hint(model: nn.Module, data: str, first: bool):
    """On the first run, an error raised by the model on its inputs (a dtype, a shape, a missing argument) says what
    to pass instead of only torch's message."""
    try:
        yield
    except (RuntimeError, TypeError, IndexError, CaptureError) as e:
        if not first:
            raise
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"coord_check could not run {type(model).__name__} on its inputs ({data}): {type(e).__name__}: {line}. "
            "What to pass: batch=(inputs,) or (args, kwargs) matching one ordinary forward call, and labels= "
            "(or loss_fn=); from the command line, --batch module:callable returning them; a language model "
            "taking token ids into an nn.Embedding needs neither (the built-in corpus).") from e


def _reusing_analysis(fn: Callable) -> Callable:
    """Every muplify()/analyze() inside ``fn`` reuses the analysis of a structure analysed at another width or seed
    (:mod:`muplify.reuse`: the model is built at every width and seed; it is captured once per parametrization)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with reusing():
            return fn(*args, **kwargs)
    return wrapper


@lint_once
@_reusing_analysis
def coord_check(
    factory: Callable[[int], nn.Module],
    batch: Any = None,
    *,
    widths: Sequence[int] | None = None,
    optimizer: Any = torch.optim.AdamW,
    lr: float = DEFAULT_LR,
    steps: int = DEFAULT_STEPS,
    seeds: int | Iterable[int] = 2,
    base_width: int | None = None,
    loss_fn: OutputLoss | None = None,
    muplify_kwargs: dict | None = None,
    parametrizations: Sequence[Parametrization] | None = None,
    labels: Any = None,
    tol: float = DEFAULT_TOL,
    optimizer_kwargs: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    axis: Axis = "width",
    depths: Sequence[int] | None = None,
) -> CoordCheckResult:
    """Run the coordinate check of ``factory`` under SP and/or μP, along width (default) or depth.

    Args:
        factory: ``width -> nn.Module`` (``depth -> nn.Module`` with ``axis="depth"``); called under
            ``torch.manual_seed(seed)`` (same seed per (size, seed) for every parametrization).  ``width`` is the
            size of the model's width dimension (e.g. ``d_model``); ``depth`` its number of residual blocks.
        batch: forward inputs: a tuple of positional args, a dict of keyword args, a tensor, a :class:`Batch`
            (args, kwargs, labels), or a callable (``fn()`` or ``fn(step)``) / iterable giving such batches, one per
            step.  Batches are drawn once (under seed 0), so every run sees the same data.  None: for a language
            model, the built-in text corpus (:mod:`muplify.tools.corpus`) with next-token labels.
        widths: at least two widths; default ``DEFAULT_WIDTHS`` (64..512).
        optimizer: optimizer class (or name in ``torch.optim``).  SP: ``optimizer(model.parameters(), lr=lr)``
            (with ``optimizer_kwargs={"fallback": ...}``: the same parameter split as μP's, without μP);
            μP: ``mu.optimizer(optimizer, lr=lr, **optimizer_kwargs)``.
        lr, steps: learning rate and number of recorded steps (step ``t`` = after ``t`` updates, ``t < steps``).
        seeds: number of seeds (0..n-1) or the seeds; sizes are averaged over seeds before fitting slopes.
        base_width: μP base width; default the smallest width (along depth: the model's own width).
        loss_fn: ``loss_fn(output)`` or ``loss_fn(output, labels) -> scalar``.  Default: cross-entropy against the
            labels (MSE for floating labels); without labels the model's own loss (``output.loss``, ``(logits,
            loss)``), else cross-entropy against fixed random labels.  Never a statistic of the output.
        muplify_kwargs: extra keyword args for ``muplify(model, base_width=..., ...)`` (e.g. ``hp=``); by default
            ``example_inputs``/``example_kwargs`` are the first batch.
        parametrizations: any of ``"sp"`` (the plain model and optimizer), ``"mup"``, ``"completep"`` (μP with
            ``base_depth=``), ``"spectral"`` (``muplify(..., parametrization="spectral")``) and ``"sp-muplify"``
            (``muplify(..., parametrization="sp")``: SP through muplify's plan and optimizer); default
            ``("sp", "mup")`` along width, ``("mup", "completep")`` along depth.
        labels: labels for the default loss, used when the batch does not carry its own.
        tol: pass threshold on ``|slope|`` (default ``log(1.2)/log(2)``, see :mod:`muplify.tools.coord_result`).
        optimizer_kwargs: extra keyword args for the optimizer (e.g. ``weight_decay``, ``fallback=`` for Muon).
        device: where to run (default CPU / wherever the factory puts the model).
        progress: a progress bar on stderr; default: when stderr is a terminal.
        axis: ``"width"``, or ``"depth"``: the factory varies the number of residual blocks at a fixed width,
            the slopes are against log(depth) and the base depth is the smallest one (``muplify_kwargs`` may set
            ``base_depth``).  Along depth, blocks are compared at the same relative position: the first block, and
            the last one as ``"<last block>..."`` (``"<last block>"`` itself: the residual stream the readout reads,
            which must stay flat in depth under CompleteP and grows without it); layers outside the blocks as they
            are.  Block i of L sits at depth fraction i/L, so the blocks in between are not compared.
        depths: the depths for ``axis="depth"`` (default ``DEFAULT_DEPTHS``, 2..16).
    """
    if axis not in ("width", "depth"):
        raise ValueError(f"axis must be 'width' or 'depth', got {axis!r}")
    sizes_given = depths if axis == "depth" and depths is not None else widths
    values = sorted({int(w) for w in (sizes_given or (DEFAULT_DEPTHS if axis == "depth" else DEFAULT_WIDTHS))})
    if len(values) < 2:
        raise ValueError(f"a coordinate check needs at least two {axis}s, got {values}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if parametrizations is None:
        parametrizations = ("mup", "completep") if axis == "depth" else ("sp", "mup")
    for p in parametrizations:
        if p not in PARAM_LABELS:
            raise ValueError(f"unknown parametrization {p!r}; use any of {list(PARAM_LABELS)}")
    seed_list = _seed_list(seeds)
    opt_cls = resolve_optimizer(optimizer)
    opt_kwargs = dict(optimizer_kwargs or {})
    mk = dict(muplify_kwargs or {})

    data = "given batches"
    if batch is None:
        batches, data = corpus_batches(_probe(factory, values[0]), steps)
    else:
        batches = materialize_batches(batch, steps, labels)
    batches = [to_device(b, device) for b in batches]
    loss = Loss(loss_fn)

    base_depth = None
    blocks_at: dict[int, list[str]] = {}  # along depth: the residual blocks of the model at each depth
    if axis == "depth":
        base_depth = int(mk.pop("base_depth", None) or values[0])
        base_width = int(base_width or _own_width(_probe(factory, values[0]), batches[0], mk))
        for v in values:
            blocks_at[v] = _analyze_fn()(_probe(factory, v), base_width, base_depth=1,
                                         **_capture_kwargs(mk, batches[0])).blocks
    base_width = int(base_width or values[0])

    records: list[dict] = []
    layer_order: dict[str, None] = {}
    readouts: list[str] | None = None
    bar = _progress_bar(len(parametrizations) * len(values) * len(seed_list), progress)
    try:
        for param in parametrizations:
            for value in values:
                for seed in seed_list:
                    if bar is not None:
                        bar.set_postfix_str(f"{PARAM_LABELS[param]} {axis} {value} seed {seed}")
                    torch.manual_seed(seed)
                    model = factory(value)
                    if device is not None:
                        model = model.to(device)
                    with _inputs_hint(model, data, first=not records):
                        model, sizes_per_step = _one_run(model, param, value, mk, batches, base_width, base_depth,
                                                         opt_cls, lr, opt_kwargs, loss)
                    if readouts is None and axis == "width" and param != "sp":
                        readouts = readout_modules(model, model.plan)
                    for t in range(steps):
                        # a diverged run stopped early: its remaining steps count as infinite sizes
                        sizes = sizes_per_step[t] if t < len(sizes_per_step) else dict.fromkeys(
                            sizes_per_step[-1], math.inf)
                        if blocks_at.get(value):
                            sizes = _by_relative_position(sizes, blocks_at[value])
                        for layer, size in sizes.items():
                            layer_order.setdefault(layer, None)
                            records.append({"param": param, "width": value, "seed": seed, "step": t,
                                            "layer": layer, "size": size})
                    if bar is not None:
                        bar.update(1)
                    del model
    finally:
        if bar is not None:
            bar.close()
    if axis == "depth":  # judge what exists at every depth
        present = {(r["param"], r["layer"]): set() for r in records}
        for r in records:
            present[(r["param"], r["layer"])].add(r["width"])
        records = [r for r in records if len(present[(r["param"], r["layer"])]) == len(values)]
        layer_order = {k: None for k in layer_order if any(r["layer"] == k for r in records)}
        readouts = []
    if readouts is None:  # no μP arm: the plan is still what says which layers are the readout
        readouts = _readouts_without_mup(factory(values[0]), base_width, batches[0], mk)
    config = {"axis": axis, "optimizer": getattr(opt_cls, "__name__", str(opt_cls)), "lr": lr,
              "base_width": base_width, "base_depth": base_depth, "optimizer_kwargs": _plain(opt_kwargs),
              "data": data, "loss": loss.kind, "tokens_per_batch": tokens_per_batch(batches[0]),
              "muplify_kwargs": _plain({k: v for k, v in mk.items() if k not in ("example_inputs", "example_kwargs")})}
    return CoordCheckResult(records, widths=values, steps=steps, seeds=seed_list, parametrizations=list(parametrizations),
                            tol=tol, layers=list(layer_order), config=config, readouts=readouts)


def _by_relative_position(sizes: dict[str, float], blocks: list[str]) -> dict[str, float]:
    """Along depth, a block is comparable across depths only at the same relative position: the first block's layers
    (their input is the embedding at every depth) keep their names, the last block's layers are renamed ``<last block>...``
    (its output is the residual stream the readout reads), the blocks in between are left out (block i sits at
    depth fraction i/L, which changes with L)."""
    first, last = blocks[0], blocks[-1]
    out = {}
    for name, size in sizes.items():
        owner = next((b for b in blocks if name == b or name.startswith((b + ".", b + ":", b + "#"))), None)
        if owner is None or (owner == first and name != first and not name.startswith(first + "#")):
            out[name] = size  # (the first block's own output is the stream at depth fraction 1/L: left out)
        if owner == last:
            out[LAST_BLOCK + name[len(last):]] = size
    return out


def _own_width(model: nn.Module, batch: Batch, mk: dict) -> int:
    """The width muplify detects for ``model`` (the base width of a depth check: width_mult 1)."""
    return _analyze_fn()(model, 1, **_capture_kwargs(mk, batch)).width


def _plain(d: dict) -> dict:
    """JSON-able config values (optimizer classes by name)."""
    def enc(v):
        if isinstance(v, type):
            return v.__name__
        if isinstance(v, (tuple, list)):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        return v
    return enc(d)


def _run(model: nn.Module, opt: torch.optim.Optimizer, batches: list[Batch], loss: Loss) -> list[dict[str, float]]:
    """Train one model with the shared loop, recording every layer's size in each training forward."""
    recorder = Recorder(model)
    per_step: list[dict[str, float]] = []

    def recording_loss(m: nn.Module, b: Batch) -> torch.Tensor:
        out, sizes = recorder.forward(m, b)
        per_step.append(sizes)
        return loss(out, b.labels, len(per_step) - 1)

    try:
        train(model, opt, batches, TrainOptions(steps=len(batches), seed=None), loss_fn=recording_loss)
    finally:
        recorder.remove()
    return per_step
