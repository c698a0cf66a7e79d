"""Does a model take token ids?  Read from what the input reaches, not from the order modules are defined in.

A model whose first directly-owned parameter is a top-level scalar (a learnable logit temperature), or whose
``nn.Embedding`` is defined after its transformer layers (the `mup` package's example Transformer), still feeds its
input into an ``nn.Embedding``.  :func:`embedding_fed_by_input` runs one tiny forward call with token ids (no grad,
eval mode, training flags restored) and returns the embedding whose input *is* the ids (the same storage: a transpose
or a reshape on the way still counts)."""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

__all__ = ["embedding_fed_by_input", "token_inputs"]

_BATCH, _SEQ = 2, 8


def _required_positional(model: nn.Module) -> int:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is inspect.Parameter.empty)


def token_inputs(model: nn.Module, vocab: int, device=None) -> tuple[torch.Tensor, ...]:
    """Token ids for every required positional argument (a seq2seq model's source and target)."""
    return tuple(torch.randint(0, vocab, (_BATCH, _SEQ), device=device) for _ in range(max(1, _required_positional(model))))


def embedding_fed_by_input(model: nn.Module) -> nn.Embedding | None:
    """The ``nn.Embedding`` a forward call with token ids feeds those ids into; None when the model has no
    embedding, the call fails, or the ids reach no embedding."""
    embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embs:
        return None
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = token_inputs(model, min(e.num_embeddings for e in embs), dev)
    meta = dev.type == "meta"  # meta tensors have no storage to compare: identity (or a view's base) only
    ptrs = set() if meta else {t.untyped_storage().data_ptr() for t in ids}
    hit: list[nn.Embedding] = []

    def reached(x) -> bool:
        if any(x is t or x._base is t for t in ids):
            return True
        return not meta and x.untyped_storage().data_ptr() in ptrs

    def pre(mod, args):
        x = args[0] if args else None
        if not hit and isinstance(x, torch.Tensor) and not x.is_floating_point() and reached(x):
            hit.append(mod)

    modes = {m: m.training for m in model.modules()}
    handles = [e.register_forward_pre_hook(pre) for e in embs]
    try:
        model.eval()
        with torch.no_grad():
            model(*ids)
    except Exception:  # noqa: BLE001 - a model that does not take ids: not a token model
        pass
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return hit[0] if hit else None
