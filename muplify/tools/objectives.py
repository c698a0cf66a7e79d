"""Built-in objectives for ``muplify.tune``: a proxy training run on the built-in corpus, ready to sweep.

    python -m muplify tune muplify.models:GPT --objective muplify.tools.objectives:byte_lm --width 64 --trials 32

Each is an ordinary objective ``(model, optimizer, report, **options) -> validation loss``; its keyword options are
what a sweep can fix or search as ``objective.<name>`` (e.g. ``--space objective.steps=Fixed(600)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .corpus import stdlib_corpus
from .train import Report, TrainOptions, train

__all__ = ["byte_lm"]


def byte_lm(model: nn.Module, optimizer: torch.optim.Optimizer, report: Report, *, steps: int = 300,
            batch_size: int = 16, seq_len: int = 128, warmup: int = 30, eval_every: int = 100,
            eval_batches: int = 8, seed: int = 0) -> float:
    """Next-byte prediction on the Python standard library's own files (vocab 256): ``steps`` AdamW-style steps
    with linear warmup and cosine decay, validation loss (nats/byte) on held-out files, reported every
    ``eval_every`` steps so that the pruner can stop a hopeless trial.  The model takes byte ids ``(B, T)`` and
    returns logits ``(B, T, V)`` with ``V >= 256`` (``muplify.models.GPT`` does)."""
    corpus = stdlib_corpus()
    options = TrainOptions(steps=steps, warmup_steps=min(warmup, steps), schedule="cosine", eval_every=eval_every,
                           seed=seed)
    result = train(model, optimizer, corpus.batches("train", batch_size, seq_len, seed=seed), options,
                   val_batches=corpus.fixed_batches("val", eval_batches, batch_size, seq_len, seed=12345),
                   report=report)
    return result.val_loss
