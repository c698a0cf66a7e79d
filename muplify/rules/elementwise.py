"""Op rules: elementwise and shape-preserving ops, factories, and the properties of pointwise ops.

Ops tagged ``pointwise`` by ATen need no rule (:func:`pointwise` applies); they are declared here only when a later
stage asks something of them (``mul`` is linear in each operand and scales it).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .call import Call, Rule
from .graph import DimGraph, _ndim
from .table import declare, lookup, rule

aten = torch.ops.aten

__all__ = ["pointwise", "POINTWISE"]


def pointwise(g: DimGraph, call: Call) -> None:
    """The default rule of ops tagged pointwise: right-aligned broadcasting; a parameter operand is used
    elementwise."""
    node = call.node
    tensors = [a for a in node.args if isinstance(a, fx.Node)] + [
        v for v in node.kwargs.values() if isinstance(v, fx.Node)
    ]
    g.broadcast(node, *tensors)
    for i, a in enumerate(node.args):
        if g.is_param_derived(a):
            nd = _ndim(g, a)
            g.use(node, i, "elementwise", (), tuple(range(nd)))


POINTWISE = Rule(pointwise)

declare("mul.Tensor", "div.Tensor", linear_combination=True, scaling=True)
declare("mul.Scalar", "div.Scalar", scaling=True)
declare("add.Tensor", linear_combination=True, add=True)
declare("add_.Tensor", add=True)  # non-strict export keeps `x += f(x)` in place
declare("sub.Tensor", "neg", linear_combination=True)


# casts and copies: the same values on the same axes (a view of a parameter stays a view of it)
@rule("clone", "contiguous", "to.dtype", "_to_copy", cast=True, view_like=True, keeps_axes=True, softmax_path=True)
@rule("alias", "detach", "to.dtype_layout", "type_as", cast=True, view_like=True, keeps_axes=True)
@rule("to.device", "to.other", "lift_fresh_copy", cast=True, keeps_axes=True)
@rule("dropout", view_like=True, keeps_axes=True, softmax_path=True)
@rule("real", "imag", "conj", "_conj", "conj_physical", "resolve_conj", "resolve_neg", "angle", keeps_axes=True)
@rule("softmax.int", "_softmax", "_safe_softmax", softmax=True)
@rule("native_dropout", "tril", "triu", "cumsum", "log_softmax.int", "_log_softmax", "ones_like", "zeros_like",
      "full_like", "empty_like", "rand_like", "randn_like", "flip", "roll", "cumprod", "logcumsumexp", "cummax",
      "cummin", "bernoulli.p", "bernoulli", "uniform_", "normal_", "exponential_", "feature_dropout",
      "alpha_dropout", "hardtanh_", "relu_", "silu_", "gelu_", "sigmoid_", "tanh_", "hardswish", "hardsigmoid",
      "hardtanh", "mish", "softplus", "elu", "leaky_relu", "celu", "selu", "log_sigmoid", "bernoulli_.float",
      "bernoulli_.Tensor")
def _same_shape(g: DimGraph, call: Call) -> None:
    node, src, out = call.node, call.at(0), call.outs
    if out and not isinstance(out[0], int):  # native_dropout returns (out, mask)
        for o in out:
            if isinstance(o, list):
                for a, b in zip(g.dims(src) or [], o):
                    g.eq(a, b)
        return
    g.eq_axes(src, node)
    if lookup(node.target).cast:
        g.derive(node, src, list(range(_ndim(g, node))))
    elif g.is_param_derived(src):
        g.use(node, 0, "elementwise", (), tuple(range(_ndim(g, src))))


@rule("masked_fill.Scalar", "masked_fill.Tensor", softmax_path=True)
@rule("where.self", "where.ScalarSelf", "where.ScalarOther", "masked_fill_.Scalar", "masked_fill_.Tensor", "copy_",
      "copy", "fill_.Scalar", "fill_.Tensor", "zero_", "clamp_min_", "clamp_max_", "greater.Tensor",
      "greater_equal.Tensor", "less.Tensor", "less_equal.Tensor", "not_equal.Tensor", "polar", "complex")
def _masked(g: DimGraph, call: Call) -> None:
    pointwise(g, call)


@rule("__and__.Tensor", "__or__.Tensor", "__xor__.Tensor", "logical_and", "logical_or", "floor_divide",
      "floor_divide.Scalar", "remainder.Tensor", "remainder.Scalar", "bitwise_and.Tensor", "bitwise_or.Tensor")
def _logical(g: DimGraph, call: Call) -> None:
    pointwise(g, call)


@rule("diff")
def _diff(g: DimGraph, call: Call) -> None:
    g.eq_axes(call.arg("input"), call.node)  # the differenced axis shrinks by one, so eq() skips it


@rule("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
def _no_op(g: DimGraph, call: Call) -> None:
    pass


@rule("arange", "arange.start", "arange.start_step", "ones", "zeros", "full", "empty.memory_format", "new_ones",
      "new_zeros", "new_full", "new_empty", "scalar_tensor", "randn", "rand", "eye", "sym_size.int")
def _created(g: DimGraph, call: Call) -> None:
    """Record the axes of a tensor the forward creates (``arange(16)`` for sinusoidal features, a literal table):
    the width analysis fixes those no layer produces, as it fixes the model's inputs."""
    if call.target != aten.sym_size.int:
        dims = call.outs
        if dims and isinstance(dims[0], int):
            g.created.update(d for d in dims if g.size[d] > 1)
