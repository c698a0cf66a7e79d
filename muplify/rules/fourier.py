"""Op rules: Fourier transforms (``torch.fft``: long convolutions of Hyena / FNO / FNet layers).  The axes not
transformed pass through, and so does a transformed axis that keeps its length (FNet mixes its hidden axis with a
same-length ``fft``: that axis keeps the width); a transformed axis whose length changes (``rfft``'s n//2+1
frequencies, an ``n=`` that pads) is a set of positions on both sides, fixed as the model widens."""
from __future__ import annotations

import torch

from .call import OUT, Call
from .graph import DimGraph, _norm_axis
from .table import rule

aten = torch.ops.aten


def _transformed(call: Call, ndim: int) -> set[int]:
    target = call.node.target
    if target.overloadpacket in (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c):
        return {_norm_axis(a, ndim) for a in call.arg("dim")}
    if target.overloadpacket in (aten.fft_fftn, aten.fft_ifftn, aten.fft_rfftn, aten.fft_irfftn):
        dims, sizes = call.get("dim"), call.get("s")
        if dims is None:
            return set(range(ndim - len(sizes), ndim)) if sizes else set(range(ndim))
        return {_norm_axis(a, ndim) for a in dims}
    return {_norm_axis(call.get("dim", -1), ndim)}


@rule(aten.fft_fft, aten.fft_ifft, aten.fft_rfft, aten.fft_irfft, aten.fft_hfft, aten.fft_ihfft, aten.fft_fftn,
      aten.fft_ifftn, aten.fft_rfftn, aten.fft_irfftn, aten._fft_r2c, aten._fft_c2r, aten._fft_c2c,
      needs=("input", OUT))
def _fft(g: DimGraph, call: Call) -> None:
    node, src = call.node, call.arg("input")
    di, do = call.dims(src), call.out
    if len(di) != len(do):
        return
    axes = _transformed(call, len(di))
    for i in range(len(di)):
        if i not in axes or g.size[di[i]] == g.size[do[i]]:
            g.eq(di[i], do[i])
        else:  # a length change (rfft's n//2+1, padding to n=): positions, not features (FNet's same-length
            # transform over the hidden axis keeps the width: the branch above)
            op = str(node.target).split('.')[1]
            g.finite(do[i], f"frequency axis of {op}")
            g.finite(di[i], f"positions {op} transforms to another length")
    g.derive(node, src, [None if i in axes and g.size[di[i]] != g.size[do[i]] else i for i in range(len(do))])
