"""The training loop every tool shares (demo, coordinate check, benchmarks, tuning).

    opts = TrainOptions(steps=600, warmup_steps=60, schedule="cosine", eval_every=100)
    result = train(mu, mu.optimizer(torch.optim.AdamW, lr=3e-3), corpus.batches("train", 16, 128, seed=0), opts,
                   val_batches=corpus.fixed_batches("val", 8, 16, 128, seed=12345), report=report)
    result.val_loss          # lower is better; inf when the run diverged

One step: ``zero_grad`` -> forward + ``loss_fn`` -> stop if the loss is not finite -> backward -> optional
gradient clipping -> ``optimizer.step()`` -> ``scheduler.step()``.  The schedule (linear warmup, then constant or
cosine) is a ``torch.optim.lr_scheduler.LambdaLR``: it scales every param group's lr by the same factor, so the
μP per-group ratios of ``mu.optimizer`` stay as they are.  A run is deterministic given its seeds: the model's
(seeded by the caller), the batches' (their own generators) and ``TrainOptions.seed`` (dropout and any other draw
from torch's global generator during training).

``report(step, value)`` is called after every evaluation (``eval_every``); raising from it stops the run and the
exception propagates, which is how a tuner prunes a hopeless trial.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from .batch import Batch, as_batch, model_loss

__all__ = ["TrainOptions", "TrainResult", "train", "evaluate", "lr_factor", "make_scheduler", "LossFn", "Report"]

LossFn = Callable[[nn.Module, Batch], torch.Tensor]  # (model, batch) -> scalar loss
Report = Callable[[int, float], None]  # (steps done, value) -> None; may raise to stop the run


@dataclass
class TrainOptions:
    """How :func:`train` trains: length, schedule, clipping, evaluation period, seed."""

    steps: int = 200  # optimizer steps
    warmup_steps: int = 0  # linear warmup: the lr factor is (s + 1) / warmup_steps for step s < warmup_steps
    schedule: Literal["constant", "cosine"] = "constant"  # the lr factor after warmup
    final_lr_frac: float = 0.1  # where "cosine" ends, as a fraction of the peak lr
    grad_clip: float | None = None  # clip the global gradient norm to this value; None: no clipping
    eval_every: int = 0  # evaluate (and report) every this many steps and at the end; 0: at the end only
    log_every: int = 0  # keep the training loss every this many steps in TrainResult.curve; 0: about 20 points
    seed: int | None = 0  # torch.manual_seed(seed) before the first step (dropout); None: leave the RNG alone


@dataclass
class TrainResult:
    """What :func:`train` returns; ``val_loss`` is the objective of a sweep."""

    val_loss: float  # mean loss over val_batches after the last step; inf when diverged, nan without val_batches
    train_loss: float  # the last training loss (non-finite when the run diverged)
    diverged: bool  # a non-finite training or validation loss stopped the run
    steps_done: int  # optimizer steps taken
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss), every log_every steps
    evals: list[tuple[int, float]] = field(default_factory=list)  # (steps done, validation loss) per evaluation
    seconds: float = 0.0  # wall time of the whole run, evaluations included
    ms_per_step: float = 0.0  # training time per step, evaluations excluded


def lr_factor(step: int, options: TrainOptions) -> float:
    """The schedule's factor on the peak lr at ``step`` (0-based): linear warmup, then constant or cosine decay."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    if options.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps))
    return options.final_lr_frac + (1 - options.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer,
                   options: TrainOptions) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The ``LambdaLR`` of the options' schedule; None for a constant lr without warmup."""
    if options.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {options.schedule!r}")
    if options.warmup_steps <= 0 and options.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, options))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn = model_loss) -> float:
    """Mean loss over ``batches`` in eval mode (the model's mode is restored); nan for no batches."""
    was_training = model.training
    model.eval()
    try:
        losses = [float(loss_fn(model, as_batch(b))) for b in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses) if losses else float("nan")


def _batch_source(batches: Iterable[Any] | Callable[[int], Any]) -> Callable[[int], Batch]:
    if callable(batches) and not isinstance(batches, Iterable):
        return lambda step: as_batch(batches(step))
    it = iter(batches)

    def next_batch(step: int) -> Batch:
        try:
            return as_batch(next(it))
        except StopIteration:
            raise ValueError(f"the batches ran out after {step} steps; give at least TrainOptions.steps of them "
                             "(or an endless iterator such as ByteCorpus.batches)") from None

    return next_batch


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any] | Callable[[int], Any],
          options: TrainOptions | None = None, *, val_batches: Sequence[Any] = (), loss_fn: LossFn = model_loss,
          report: Report | None = None) -> TrainResult:
    """Train ``model`` with ``optimizer`` for ``options.steps`` steps and evaluate it on ``val_batches``.

    Args:
        model: any ``nn.Module`` (plain or muplified); put it in the mode you want before (``train()`` is called).
        optimizer: any ``torch.optim.Optimizer``, e.g. ``mu.optimizer(torch.optim.AdamW, lr=...)``.
        batches: one batch per step: an iterable (read one item per step; an endless iterator such as
            ``ByteCorpus.batches``) or a callable ``step -> batch``.  A batch is a :class:`Batch`, a tuple of forward
            args, a dict of forward kwargs or a tensor.
        options: steps, schedule, clipping, evaluation period, seed (:class:`TrainOptions`).
        val_batches: the batches :func:`evaluate` averages over.
        loss_fn: ``(model, batch) -> scalar``; default :func:`muplify.tools.batch.model_loss` (the model's own loss,
            else cross-entropy / MSE against ``batch.labels``).
        report: called as ``report(steps_done, val_loss)`` after every evaluation (without ``val_batches``: the mean
            training loss since the previous report).  An exception raised in it propagates (pruning).

    Returns:
        :class:`TrainResult`; ``val_loss`` is the objective (lower is better, ``inf`` when the run diverged).
    """
    options = options or TrainOptions()
    if options.steps < 1:
        raise ValueError(f"TrainOptions.steps must be >= 1, got {options.steps}")
    next_batch = _batch_source(batches)
    scheduler = make_scheduler(optimizer, options)
    log_every = options.log_every or max(1, options.steps // 20)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    result = TrainResult(val_loss=float("nan"), train_loss=float("nan"), diverged=False, steps_done=0)
    since_report: list[float] = []
    t_start = time.perf_counter()
    t_eval = 0.0

    def evaluation(steps_done: int) -> float:
        nonlocal t_eval
        t0 = time.perf_counter()
        if val_batches:
            value = evaluate(model, val_batches, loss_fn)
            result.evals.append((steps_done, value))
        else:
            value = sum(since_report) / len(since_report) if since_report else float("nan")
        since_report.clear()
        t_eval += time.perf_counter() - t0
        return value

    model.train()
    for step in range(options.steps):
        batch = next_batch(step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        result.train_loss = loss.detach().item()
        if not math.isfinite(result.train_loss):
            result.diverged = True
            result.curve.append((step, result.train_loss))
            break
        loss.backward()
        if options.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        result.steps_done = step + 1
        since_report.append(result.train_loss)
        if step % log_every == 0 or step == options.steps - 1:
            result.curve.append((step, result.train_loss))
        if options.eval_every and result.steps_done % options.eval_every == 0 and result.steps_done < options.steps:
            value = evaluation(result.steps_done)
            if not math.isfinite(value):
                result.diverged = True
                break
            if report is not None:
                report(result.steps_done, value)
    train_seconds = time.perf_counter() - t_start - t_eval
    if not result.diverged:
        value = evaluation(result.steps_done)
        result.diverged = bool(val_batches) and not math.isfinite(value)
        result.val_loss = value if val_batches else float("nan")
        if report is not None and not result.diverged:
            report(result.steps_done, value)
    if result.diverged:
        result.val_loss = math.inf
    result.seconds = time.perf_counter() - t_start
    result.ms_per_step = 1e3 * train_seconds / max(1, result.steps_done + (1 if result.diverged else 0))
    return result
