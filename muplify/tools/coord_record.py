"""What the coordinate check records: the mean absolute value of every layer's output in one forward pass.

* ``size = mean(|x|)`` of the output of every module (forward hooks, run before any other forward hook, so a
  multiplier hook muplify put on a module's output is not counted as the module's own; a module returning a
  tuple/list/dict is represented by its first floating-point tensor).  A module called several times in one forward gets the names
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
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .batch import Batch, first_float_tensor

__all__ = ["Recorder", "OUTPUT_NAME", "ROOT_NAME", "PARAM_LABELS", "READOUT_INIT_SLOPE", "same_series"]

OUTPUT_NAME = "<output>"
ROOT_NAME = "<model>"
PARAM_LABELS = {"sp": "SP", "mup": "μP", "completep": "μP+CompleteP", "spectral": "spectral",
                "sp-muplify": "SP (muplify)"}  # how each parametrization is printed
#: slope of a non-zero readout's output at initialisation under μP (Θ(1/√width)).
READOUT_INIT_SLOPE = -0.5


def same_series(a: dict[int, list[float]], b: dict[int, list[float]]) -> bool:
    return a.keys() == b.keys() and all(
        len(a[w]) == len(b[w]) and all(x == y or math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a[w], b[w]))
        for w in a)


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


class Recorder(TorchFunctionMode):
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
            # prepend: record the module's own output, before a hook that rescales it (muplify's multiplier on the
            # output of the module feeding a functional readout would otherwise show up as a 1/width shrink)
            self.handles.append(mod.register_forward_hook(self._post_hook(name), prepend=True))

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
            t = first_float_tensor(output)
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
