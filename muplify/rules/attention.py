"""Op rules: attention (SDPA, and a hand-written ``softmax(q @ k^T) @ v`` found from the softmax it reaches)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from .call import OUT, Call
from .graph import AttentionSite, DimGraph
from .table import is_pointwise, is_softmax, is_softmax_path, rule

aten = torch.ops.aten

__all__ = ["found_upstream", "maybe_manual_attention"]


@rule("scaled_dot_product_attention", needs=("query", "key", "value", OUT))
def _sdpa(g: DimGraph, call: Call) -> None:
    node = call.node
    dq, dk, dv, do = call.dims("query"), call.dims("key"), call.dims("value"), call.out
    g.eq(dq[-1], dk[-1])
    g.eq(dk[-2], dv[-2])
    g.eq(do[-1], dv[-1])
    for i in range(len(dq) - 1):
        g.eq(dq[i], do[i])
    for i in range(len(dk) - 2):
        g.eq(dk[i], dq[i])
        g.eq(dv[i], dq[i])
    dm = call.dims("attn_mask")
    if dm is not None:  # mask broadcasts to (..., L, S)
        target = dq[:-1] + [dk[-2]]
        off = len(target) - len(dm)
        for i, d in enumerate(dm):
            if 0 <= off + i < len(target):
                g.eq(d, target[off + i])
    _positions(g, dq[-2], dk[-2])
    heads = dq[-3] if len(dq) >= 3 else None
    g.attention.append(AttentionSite(node, "sdpa", dq[-1], heads))
    g.attention.append(AttentionSite(node, "sdpa-v", dv[-1], dv[-3] if len(dv) >= 3 else None))


def _positions(g: DimGraph, queries: int, keys: int) -> None:
    """The query and key axes of an attention op are positions (tokens, patches, latents), not features: fixed as
    the model widens, even where no model input sets them (a Perceiver's learned latents, a set transformer's seed
    vectors, memory tokens)."""
    g.finite(queries, "query positions of an attention op")
    g.finite(keys, "key positions of an attention op")


def _reaches_softmax(node: fx.Node, depth: int = 6) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if is_softmax(u.target):
                    return True
                if u.op == "call_function" and (is_softmax_path(u.target) or is_pointwise(u.target)):
                    nxt.append(u)
        frontier = nxt
    return False


def found_upstream(node, match: Callable[[fx.Node], bool], through: Callable[[fx.Node], bool] = lambda n: True,
                   depth: int = 4) -> bool:
    """Whether an op ``match``-ing is among ``node``'s producers at most ``depth`` ops back, walking only through
    ops that pass ``through``."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if not isinstance(n, fx.Node) or n.op != "call_function":
                continue
            if match(n):
                return True
            if through(n):
                nxt.extend(a for a in n.args if isinstance(a, fx.Node))
        frontier = nxt
    return False


def _from_softmax(node, depth: int = 4) -> bool:
    return found_upstream(node, lambda n: is_softmax(n.target),
                          lambda n: is_softmax_path(n.target) or is_pointwise(n.target), depth)


def maybe_manual_attention(g: DimGraph, node: fx.Node, a, b) -> bool:
    da, db = g.dims(a), g.dims(b)
    if da is None or db is None or len(da) < 3:
        return False
    if _reaches_softmax(node):
        _positions(g, da[-2], db[-1])
        g.attention.append(AttentionSite(node, "manual", da[-1], da[-3] if len(da) >= 3 else None))
    elif _from_softmax(a) and len(db) >= 3:
        _positions(g, da[-2], db[-2])
        g.attention.append(AttentionSite(node, "manual-v", db[-1], db[-3] if len(db) >= 3 else None))
    else:
        return False
    return True
