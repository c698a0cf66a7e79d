"""What a coordinate check trains on (:mod:`muplify.tools.coord_check`): the batches, drawn once so that every width
and seed sees the same data (the built-in corpus for a language model), and the loss of each step."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from .batch import Batch, as_batch, first_float_tensor, output_loss, own_loss
from ..inputs import embedding_fed_by_input

__all__ = ["LM_BATCH_SIZE", "LM_SEQ_LEN", "Loss", "OutputLoss", "corpus_batches", "language_model_vocab",
           "materialize_batches", "tokens_per_batch"]

LM_BATCH_SIZE, LM_SEQ_LEN = 2, 16  # tokens per batch <= the smallest default width (see coord_check's docstring)
OutputLoss = Callable[..., torch.Tensor]  # loss_fn(output) or loss_fn(output, labels) -> scalar


# --------------------------------------------------------------------------------------------------------- data
def language_model_vocab(model: nn.Module) -> int | None:
    """The vocabulary size when ``model`` reads token ids (HF ``input_ids`` models, a first parametrized layer that
    is an ``nn.Embedding``, or any model whose input reaches an ``nn.Embedding``); None otherwise."""
    config = getattr(model, "config", None)
    if getattr(model, "main_input_name", None) == "input_ids" and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    for mod in model.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            if isinstance(mod, nn.Embedding):
                return mod.num_embeddings
            break
    # the first parametrized module is not an embedding (a top-level scalar such as a logit temperature, or an
    # embedding defined after the layers): whether the input reaches an nn.Embedding decides
    emb = embedding_fed_by_input(model)
    return emb.num_embeddings if emb is not None else None


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for obj, attr in ((config, "max_position_embeddings"), (config, "n_positions"), (model, "block_size")):
        if isinstance(getattr(obj, attr, None), int):
            return getattr(obj, attr)
    return None


def corpus_batches(model: nn.Module, steps: int) -> tuple[list[Batch], str]:
    from .corpus import VOCAB_SIZE, stdlib_corpus

    vocab = language_model_vocab(model)
    if vocab is None:
        raise ValueError(f"coord_check needs a batch for {type(model).__name__}: the built-in text corpus serves only "
                         "language models (token ids into an nn.Embedding); pass batch=(inputs,) and labels=")
    seq_len = min(LM_SEQ_LEN, _max_positions(model) or LM_SEQ_LEN)
    stream = stdlib_corpus().batches("train", LM_BATCH_SIZE, seq_len, seed=0, vocab_size=min(vocab, VOCAB_SIZE))
    mod = f" mod {vocab}" if vocab < VOCAB_SIZE else ""
    return ([next(stream) for _ in range(steps)],
            f"built-in corpus (Python stdlib bytes{mod}), {steps} batches of {LM_BATCH_SIZE}x{seq_len} tokens, "
            "next-token labels")


def _n_required_positional(fn: Callable) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


def materialize_batches(batch: Any, steps: int, labels: Any = None) -> list[Batch]:
    """``steps`` concrete batches, drawn once so that every run sees exactly the same data.

    A tuple / dict / tensor / Batch is reused at every step.  A callable is called once per step (with the step index
    if it takes a positional argument) under a fixed seed; an iterator or other iterable (a DataLoader, a list of
    batches) is read for ``steps`` items, cycling if it runs out.
    """
    if isinstance(batch, (Batch, tuple, Mapping, torch.Tensor)):
        return [as_batch(batch, labels)] * steps
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
    return [as_batch(item, labels) for item in items]


def tokens_per_batch(b: Batch) -> int | None:
    """Tokens (integer inputs) or samples (float inputs) in a batch: what Adam's first update averages over."""
    first = next((t for t in (*b.args, *b.kwargs.values()) if isinstance(t, torch.Tensor)), None)
    if first is None:
        return None
    return first.numel() if not first.is_floating_point() else first.shape[0]


# ----------------------------------------------------------------------------------------------------------- loss
class Loss:
    """The loss of one step: the user's ``loss_fn``, else :func:`output_loss`; without labels and without a loss of
    the model's own, cross-entropy against random labels (drawn once per step, the same for every run)."""

    def __init__(self, loss_fn: OutputLoss | None):
        self.loss_fn = loss_fn
        self.random_labels: dict[int, torch.Tensor] = {}
        self.kind: str | None = "custom loss_fn" if loss_fn is not None else None

    def __call__(self, output: Any, labels: Any, step: int) -> torch.Tensor:
        if self.loss_fn is not None:
            return _call_loss(self.loss_fn, output, labels)
        if labels is None and own_loss(output) is None:
            out = first_float_tensor(output)
            if out is None:
                raise ValueError("cannot derive a loss from the model output; pass labels= or loss_fn=")
            if step not in self.random_labels:
                g = torch.Generator().manual_seed(10_000 + step)
                self.random_labels[step] = torch.randint(0, out.shape[-1], out.shape[:-1], generator=g)
            labels = self.random_labels[step].to(out.device)
            self.kind = self.kind or f"cross-entropy against random labels over the output's last dim " \
                                     f"({out.shape[-1]} classes; no labels given)"
        elif self.kind is None:
            self.kind = "the model's own loss" if labels is None else (
                "mean squared error against the labels" if torch.as_tensor(labels).is_floating_point()
                else "cross-entropy against the labels")
        return output_loss(output, labels)


def _call_loss(loss_fn: Callable, output: Any, labels: Any) -> torch.Tensor:
    """``loss_fn(output, labels)`` if it accepts two positional arguments, else ``loss_fn(output)``."""
    try:
        inspect.signature(loss_fn).bind(output, labels)
    except TypeError:
        return loss_fn(output)
    except ValueError:  # no signature (builtins): assume (output, labels)
        pass
    return loss_fn(output, labels)
