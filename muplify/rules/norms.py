"""Op rules: normalisations.  Each declares the argument slots of its gain and bias (``norm=Norm(weight, bias)``):
classify reads a gain from them, the export folds a multiplier into them."""
from __future__ import annotations

import torch
import torch.fx as fx

from .call import Call
from .graph import DimGraph, _ndim
from .table import Norm, norm_slots, rule

aten = torch.ops.aten


@rule("layer_norm", "native_layer_norm", norm=Norm(weight=2, bias=3))
@rule("rms_norm", norm=Norm(weight=2))
def _layer_norm(g: DimGraph, call: Call) -> None:
    node, x = call.node, call.arg("input")
    out = node if call.out is not None else None
    if out is None:
        outs = call.outs
        if outs:
            for a, b in zip(g.dims(x) or [], outs[0]):
                g.eq(a, b)
    else:
        g.eq_axes(x, node)
    slots = norm_slots(node.target)
    for i in (slots.weight, slots.bias):
        p = call.at(i) if i is not None else None
        if isinstance(p, fx.Node):
            dp, dx = g.dims(p), g.dims(x)
            if dp is not None and dx is not None:
                for k in range(1, len(dp) + 1):
                    g.eq(dp[-k], dx[-k])
            g.use(node, i, "elementwise", (), tuple(range(_ndim(g, p))))


@rule("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
      "_native_batch_norm_legit", "native_batch_norm", "instance_norm", norm=Norm(weight=1, bias=2, stats=(3, 4)),
      needs=("input",))
@rule("group_norm", norm=Norm(weight=2, bias=3), needs=("input",))
@rule("native_group_norm", norm=Norm(weight=1, bias=2), needs=("input",))
def _batch_norm(g: DimGraph, call: Call) -> None:
    node, dx, outs = call.node, call.dims("input"), call.outs
    first = outs if outs and isinstance(outs[0], int) else (outs[0] if outs else None)
    if isinstance(first, list):
        for a, b in zip(dx, first):
            g.eq(a, b)
    slots = norm_slots(node.target)
    for i in (slots.weight, slots.bias, *slots.stats):
        p = call.at(i)
        dp = g.dims(p)
        if dp is not None and len(dp) == 1 and len(dx) > 1:
            g.eq(dp[0], dx[1])
            if g.is_param_derived(p):
                g.use(node, i, "elementwise", (), (0,))
