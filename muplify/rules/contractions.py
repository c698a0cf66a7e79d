"""Op rules: contractions, which define fan_in / fan_out (linear, matmul, einsum, conv, grouped matmul, recurrent
layers, weight norm).  A layer op declares its weight / bias / input slots (``layer=Layer(...)``), a product of two
operands which they are (``product=(a, b)``): sites and classify read them from the table."""
from __future__ import annotations

import torch
import torch.fx as fx

from .attention import maybe_manual_attention
from .call import OUT, OUTS, Call
from .graph import DimGraph, _ndim
from .table import Layer, rule

aten = torch.ops.aten


@rule("linear", layer=Layer(weight=1, bias=2, input=0), needs=("input", "weight", OUT))
def _linear(g: DimGraph, call: Call) -> None:
    node, b = call.node, call.arg("bias")
    dx, dw, do = call.dims("input"), call.dims("weight"), call.out
    g.eq(dx[-1], dw[-1])
    if len(dw) == 2:
        g.eq(do[-1], dw[0])
    for i in range(len(dx) - 1):
        g.eq(dx[i], do[i])
    g.use(node, 1, "matmul", (1,), (0,))
    if isinstance(b, fx.Node):
        g.broadcast(node, b)
        g.use(node, 2, "elementwise", (), (0,))


def _matmul_dims(g: DimGraph, node: fx.Node, a, b, out) -> None:
    da, db, do = g.dims(a), g.dims(b), g.dims(out)
    if da is None or db is None or do is None:
        return
    if len(da) == 1 or len(db) == 1:
        g.eq(da[-1], db[0] if len(db) == 1 else db[-2])
        return
    g.eq(da[-1], db[-2])
    g.eq(da[-2], do[-2])
    g.eq(db[-1], do[-1])
    # batch dims broadcast
    for x in (da, db):
        for i in range(len(x) - 2):
            k = len(do) - len(x) + i
            if 0 <= k < len(do) - 2:
                g.eq(x[i], do[k])


def _record_matmul(g: DimGraph, call: Call, ia: int, ib: int) -> None:
    node, a, b = call.node, call.at(ia), call.at(ib)
    if g.is_param_derived(b):
        g.use(node, ib, "matmul", (-2,), (-1,))
        _stack_axes(g, b, 2, "a batched matmul")
    if g.is_param_derived(a):
        g.use(node, ia, "matmul", (-1,), (-2,))
        _stack_axes(g, a, 2, "a batched matmul")
    if not g.is_param_derived(a) and not g.is_param_derived(b):
        if not maybe_manual_attention(g, node, a, b):
            da = g.dims(a)
            if da:
                g.act_contractions.append((node, da[-1]))


def _stack_axes(g: DimGraph, w, n_matrix: int, how: str) -> None:
    """Leading axes of a parameter used as a stack of independent matrices (experts): a fixed count."""
    dw = g.dims(w)
    for d in (dw or [])[:-n_matrix]:
        g.finite(d, f"stack axis of a weight used as independent matrices ({how})")


@rule("mm", "bmm", "matmul", product=(0, 1))
def _mm(g: DimGraph, call: Call) -> None:
    _matmul_dims(g, call.node, call.at(0), call.at(1), call.node)
    _record_matmul(g, call, 0, 1)


@rule("addmm", product=(1, 2), layer=Layer(weight=2, bias=0, input=1, out_axis=1))  # GPT-2's Conv1D: x @ W + b
@rule("baddbmm", product=(1, 2))
@rule("addbmm")
def _addmm(g: DimGraph, call: Call) -> None:
    node, bias, a, b = call.node, call.at(0), call.at(1), call.at(2)
    _matmul_dims(g, node, a, b, node)
    g.broadcast(node, bias)
    _record_matmul(g, call, 1, 2)
    if g.is_param_derived(bias):
        g.use(node, 0, "elementwise", (), tuple(range(_ndim(g, bias))))


@rule("einsum")
def _einsum(g: DimGraph, call: Call) -> None:
    node, eq, operands = call.node, call.arg("equation"), call.arg("tensors")
    lhs, _, out = eq.replace(" ", "").partition("->")
    specs = lhs.split(",")
    if "..." in eq or len(specs) != len(operands):
        g.unknown_ops["einsum with ellipsis"] = g.unknown_ops.get("einsum with ellipsis", 0) + 1
        return
    letter_dims: dict[str, int] = {}
    do = g.dims(node)
    for letter, d in zip(out, do or []):
        letter_dims[letter] = d
    for spec, op in zip(specs, operands):
        d = g.dims(op)
        if d is None:
            continue
        for letter, di in zip(spec, d):
            if letter in letter_dims:
                g.eq(letter_dims[letter], di)
            else:
                letter_dims[letter] = di
    if not any(g.is_param_derived(op) for op in operands):
        for c, d in letter_dims.items():
            if c not in out and sum(c in s for s in specs) > 1:
                g.act_contractions.append((node, d))
    for k, (spec, op) in enumerate(zip(specs, operands)):
        if g.is_param_derived(op):
            others = "".join(s for j, s in enumerate(specs) if j != k)
            fan_in = tuple(i for i, c in enumerate(spec) if c in others and c not in out)
            fan_out = tuple(i for i, c in enumerate(spec) if c in out and c not in others)
            g.use(node, 1, "matmul", fan_in, fan_out, "einsum", arg=op)
            dop = g.dims(op) or []
            for i, c in enumerate(spec):  # in the other operands and in the output: a stack (batch) axis
                if c in others and c in out and i < len(dop):
                    if any(kind == "prod" and g.find(dop[i]) in {g.find(p) for p in parts}
                           for kind, _o, parts in g.relations):
                        # a factor of a regrouped axis (the heads of a (heads, head_dim) view of the width): per-
                        # head matrices, whose count follows the product, not a fixed stack of experts
                        continue
                    g.finite(dop[i], "stack axis of a weight used as independent matrices (einsum batch index)")


@rule("conv1d", "conv2d", "conv3d", "convolution", "conv1d.padding", "conv2d.padding", "conv3d.padding",
      layer=Layer(weight=1, bias=2, input=0), needs=("input", "weight", OUT))
@rule("conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input", needs=("input", "weight", OUT))
def _conv(g: DimGraph, call: Call) -> None:
    node, b = call.node, call.arg("bias")
    dx, dw, do = call.dims("input"), call.dims("weight"), call.out
    transposed = node.target in (aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                 aten.conv_transpose3d.input) or (
        node.target == aten.convolution.default and bool(call.arg("transposed")))
    groups = 1 if transposed else call.arg("groups")
    batched = len(dx) == len(dw)
    c_axis = 1 if batched else 0
    in_ax, out_ax = (0, 1) if transposed else (1, 0)
    if groups == 1:
        g.eq(dx[c_axis], dw[in_ax])
    # grouped: in_channels = groups * (in/groups); whether the group count or the group width is fixed is decided
    # in the width analysis, from all the grouped convs of the model
    g.eq(do[c_axis], dw[out_ax])
    if batched:
        g.eq(dx[0], do[0])
    for k in range(2, len(dw)):
        g.finite(dw[k], "kernel size")
    if groups > 1 and g.size[dw[in_ax]] == 1:  # depthwise: each output channel filters one input channel
        g.scale(do[c_axis], dx[c_axis])
    for k in range(c_axis + 1, len(dx)):  # output positions are an affine function of the input positions
        if k < len(do):
            g.scale(do[k], dx[k])
    for u in g.use(node, 1, "conv", (in_ax, *range(2, len(dw))), (out_ax,), groups=groups):
        if groups > 1:
            g.grouped_convs.append((u, dw[in_ax], dx[c_axis], groups))
    if isinstance(b, fx.Node):
        g.eq(g.dims(b)[0], do[c_axis])
        g.use(node, 2, "elementwise", (), (0,))


@rule("_grouped_mm", needs=(0, 1, OUT))
# transformers' CPU/compile fallback custom op (torch.ops.transformers.grouped_mm_fallback), matched by name
@rule("transformers.grouped_mm_fallback.default", needs=(0, 1, OUT))
def _grouped_mm(g: DimGraph, call: Call) -> None:
    """``out[s] = x[s] @ w[e(s)]``: (S, K) x (E, K, N) -> (S, N), rows grouped by expert through ``offs``."""
    node, x, w, offs = call.node, call.at(0), call.at(1), call.arg("offs")  # (input, weight | mat2, offs)
    dx, dw, do = g.dims(x), g.dims(w), call.out
    if len(dw) == 3 and len(dx) == 2:
        g.eq(dx[-1], dw[1])
        g.eq(do[-1], dw[2])
        g.eq(dx[0], do[0])
        doffs = g.dims(offs)
        if doffs:
            g.eq(doffs[0], dw[0])
        g.use(node, 1, "matmul", (1,), (2,), "grouped_mm")
        _stack_axes(g, w, 2, "grouped matmul")
    else:  # 2-D x 2-D / 3-D x 3-D grouped forms: an ordinary (batched) matmul per group
        _matmul_dims(g, node, x, w, node)
        _record_matmul(g, call, 0, 1)


@rule("lstm.input", "gru.input", "rnn_tanh.input", "rnn_relu.input", needs=("input", OUTS))
def _rnn(g: DimGraph, call: Call) -> None:
    """``aten.lstm/gru/rnn_*(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)``: per layer and direction (w_ih (G*H, in), w_hh (G*H, H)[, b_ih, b_hh][, w_hr (H, P)])."""
    node, params = call.node, call.arg("params")
    has_bias, layers, bidir = bool(call.arg("has_biases")), int(call.arg("num_layers")), bool(call.arg("bidirectional"))
    dirs = 2 if bidir else 1
    per = len(params) // max(1, layers * dirs)
    outs, dx = call.outs, call.dims("input")
    if per not in (2, 3, 4, 5):
        return
    out, h_n = outs[0], outs[1]
    for a, b in zip(dx[:-1], out[:-1]):
        g.eq(a, b)
    h = h_n[-1]  # hidden (or projection) size
    if bidir:
        g.scale(out[-1], h)
    else:
        g.eq(out[-1], h)
    hx = call.arg("hx")
    for t in hx if isinstance(hx, (list, tuple)) else [hx]:
        dt = g.dims(t)
        if dt is not None:
            for a, b in zip(dt, h_n):
                g.eq(a, b)
    for k in range(layers * dirs):
        layer = k // dirs
        group = params[k * per:(k + 1) * per]
        w_ih, w_hh = group[0], group[1]
        dih, dhh = g.dims(w_ih), g.dims(w_hh)
        if dih is None or dhh is None:
            continue
        g.eq(dih[1], dx[-1] if layer == 0 else out[-1])
        g.eq(dih[0], dhh[0])
        g.eq(dhh[1], h)
        hidden = h
        if per in (3, 5):  # LSTM proj_size: w_hr (P, H) maps the cell state (H) to the output (P)
            w_hr = group[-1]
            dhr = g.dims(w_hr)
            if dhr is not None:
                g.eq(dhr[0], h)
                hidden = dhr[1]
                g.use(node, 2, "matmul", (1,), (0,), "rnn projection", arg=w_hr)
        g.scale(dih[0], hidden)  # gates * hidden
        for p in (w_ih, w_hh):
            g.use(node, 2, "matmul", (1,), (0,), "rnn", arg=p)
        if has_bias and per >= 4:
            for b in group[2:4]:
                db = g.dims(b)
                if db is not None:
                    g.eq(db[0], dih[0])
                    g.use(node, 2, "elementwise", (), (0,), "rnn bias", arg=b)


@rule("_weight_norm")
def _weight_norm(g: DimGraph, call: Call) -> None:
    """``w = g * v / ||v||`` (norm over every axis but ``dim``): later uses of w are uses of the direction v; the
    magnitude g scales each slice of w, elementwise."""
    node, v, mag = call.node, call.arg("v"), call.arg("g")
    dv, dg = g.dims(v), g.dims(mag)
    g.eq_axes(v, node)
    if dg is not None and dv is not None and len(dg) == len(dv):
        for a, b in zip(dg, dv):
            g.eq(a, b)
        g.use(node, 1, "elementwise", (), tuple(i for i, d in enumerate(dg) if g.size[d] > 1), "weight_norm")
    g.derive(node, v, list(range(_ndim(g, v))))
