"""The export's question: which parameters, scaled by ``c``, scale a given tensor by ``c`` (a layer's weight and bias,
a norm's gain and bias, an elementwise gain), read through views, a bias add and scalar factors."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from .plan import FoldTarget
from .rules import table as ops

aten = torch.ops.aten

__all__ = ["fold_targets"]


@dataclass
class _FoldCtx:
    origin: dict  # node -> (param placeholder, axis map)
    names: dict[str, str]  # param placeholder -> canonical parameter name


def _param_of(ctx: _FoldCtx, x) -> tuple[str, list] | None:
    if not isinstance(x, fx.Node) or x not in ctx.origin:
        return None
    ph, amap = ctx.origin[x]
    return (ctx.names[ph], amap) if ph in ctx.names else None


def _target(ctx: _FoldCtx, name: str, amap: list, out_axis: int | None, channels) -> FoldTarget | None:
    """Fold into ``name``; with ``channels`` only its slice on the stored axis that holds the output channels."""
    if channels is None:
        return FoldTarget(name)
    if out_axis is None or out_axis >= len(amap) or amap[out_axis] is None:
        return None
    return FoldTarget(name, amap[out_axis], channels[0], channels[1])


def _keeps_last_axis(node: fx.Node) -> bool:
    """Whether a view-like op leaves the last axis (the channel axis of a projection's output) in place."""
    if ops.keeps_axes(node.target):
        return True
    src = node.args[0]
    try:
        a, b = src.meta["val"], node.meta["val"]
    except (AttributeError, KeyError):
        return False
    if node.target == aten.permute.default:
        return list(node.args[1])[-1] % a.dim() == a.dim() - 1
    if node.target == aten.transpose.int:
        return all(d % a.dim() != a.dim() - 1 for d in node.args[1:3])
    return a.dim() > 0 and b.dim() > 0 and a.shape[-1] == b.shape[-1]


def fold_targets(node: fx.Node, ctx: _FoldCtx, channels: tuple[int, int, int] | None = None,
                 depth: int = 0) -> tuple[FoldTarget, ...]:
    """Parameters whose scaling by c scales ``node`` (on ``channels`` of its last axis) by c; () if none can.

    Follows views, a bias add and scalar factors back to a linear op (weight and bias), a norm (gain and bias) or an
    elementwise gain; anything else (a residual add, a nonlinearity, a product of activations) cannot be folded."""
    if depth > 12 or not isinstance(node, fx.Node) or node.op != "call_function":
        return ()
    t, args = node.target, node.args
    if ops.is_view_like(t) and isinstance(args[0], fx.Node):
        if channels is not None and not _keeps_last_axis(node):
            return ()
        return fold_targets(args[0], ctx, channels, depth + 1)
    if t is operator.getitem and isinstance(args[0], fx.Node) and args[1] == 0:
        return fold_targets(args[0], ctx, channels, depth + 1)  # native_layer_norm returns (out, mean, rstd)
    layer, norm = ops.layer_slots(t), ops.norm_slots(t)
    if layer is not None:
        w_slot, b_slot = layer.weight, layer.bias
        w = _param_of(ctx, args[w_slot])
        if w is None:
            return ()
        # the weight operand's axis that becomes the output's channels: (out, in) for linear/conv, (in, out) for
        # addmm (GPT-2's Conv1D), (num, dim) for an embedding; the origin map turns it into the stored axis
        targets = [_target(ctx, w[0], w[1], layer.out_axis, channels)]
        b = _param_of(ctx, args[b_slot]) if b_slot is not None and len(args) > b_slot else None
        if b is not None:
            targets.append(_target(ctx, b[0], b[1], len(b[1]) - 1, channels))
        return () if None in targets else tuple(targets)
    if ops.product_operands(t) == (0, 1):  # mm, bmm, matmul: x @ W
        w = _param_of(ctx, args[1])
        if w is None or _param_of(ctx, args[0]) is not None:
            return ()
        tgt = _target(ctx, w[0], w[1], len(w[1]) - 1, channels)
        return () if tgt is None else (tgt,)
    if norm is not None:
        w_slot, b_slot = norm.weight, norm.bias
        w = _param_of(ctx, args[w_slot]) if len(args) > w_slot else None
        if w is None:
            return ()  # no gain to fold into
        targets = [_target(ctx, w[0], w[1], len(w[1]) - 1, channels)]
        b = _param_of(ctx, args[b_slot]) if b_slot is not None and len(args) > b_slot else None
        if b is not None:
            targets.append(_target(ctx, b[0], b[1], len(b[1]) - 1, channels))
        return () if None in targets else tuple(targets)
    if t == aten.mul.Tensor:
        for x in args[:2]:
            got = _param_of(ctx, x)
            if got is not None and got[1]:  # an elementwise gain (HF RMSNorm: weight * x)
                tgt = _target(ctx, got[0], got[1], len(got[1]) - 1, channels)
                return () if tgt is None else (tgt,)
        return ()
    if t in (aten.mul.Scalar, aten.div.Scalar) or (t == aten.div.Tensor and not isinstance(args[1], fx.Node)):
        return fold_targets(args[0], ctx, channels, depth + 1)  # x · const is linear in x
    if t == aten.add.Tensor:
        params = [x for x in args[:2] if _param_of(ctx, x) is not None]
        others = [x for x in args[:2] if _param_of(ctx, x) is None]
        if len(params) != 1 or len(others) != 1:
            return ()  # only "x + bias": a sum of computed tensors may share inputs (a residual add)
        got = _param_of(ctx, params[0])
        tgt = _target(ctx, got[0], got[1], len(got[1]) - 1, channels)
        sub = fold_targets(others[0], ctx, channels, depth + 1)
        return (*sub, tgt) if sub and tgt is not None else ()
    return ()
