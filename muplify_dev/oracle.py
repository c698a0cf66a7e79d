"""Test oracle for muplify: which axes of each parameter grow with width, and the μP role that follows.

This is deliberately the *naive, independent* method -- the one the ``mup`` package uses (``make_base_shapes``):
build the model at two widths and diff parameter shapes name by name.  Roles then come from a hand-written table of
module layouts (which axis of a stored weight is fan-in and which is fan-out), not from the graph, so it can check
muplify's graph-based inference.

    >>> from muplify_dev.oracle import infinite_axes, oracle_role, oracle_roles
    >>> axes = infinite_axes("gpt_sdpa", 32, 64)        # or infinite_axes(build_fn, w0, w1)
    >>> axes["blocks.0.attn.c_attn.weight"]
    (True, True)
    >>> oracle_roles("gpt_sdpa")["wte.weight"]          # tied to lm_head: the readout role dominates
    'output'

Layouts known to :func:`param_layout` (``in``/``out`` = axes holding fan-in / fan-out channels):
``nn.Linear`` (out, in); ``nn.Bilinear`` (out, in1, in2); ``nn.Embedding``/``EmbeddingBag`` (num_embeddings=fan_in,
dim=fan_out); HF ``Conv1D`` (in, out); ``ConvNd`` (out, in/groups, *kernel) and ``ConvTransposeNd``
(in, out/groups, *kernel) -- kernel axes are fan-in but never grow; ``nn.MultiheadAttention`` ``*_proj_weight``
(out, in); RNN/LSTM/GRU ``weight_*`` (out, in); HF expert stacks ``(E, out, in)`` (``(E, in, out)`` when the experts
module says ``is_transposed``), HF routers' raw ``(E, in)`` weight, per-expert bias stacks ``(E, out)`` (rows read by
expert index, like an embedding table) and timm ``relative_position_bias_table`` (positions, heads); weight norm: the
direction (``weight_v``, parametrization ``original1``) has the layout of the weight it parametrizes, the magnitude
(``weight_g``, ``original0``) is elementwise; HF SSM mixers' ``A_log``/``D``/``dt_bias`` are elementwise; a module
class may document its raw Parameters in a ``_layouts`` dict (attribute -> (in_axes, out_axes), or None for
elementwise / used as data).  Elementwise: every
0-/1-D parameter (biases, norm gains, scalars) and any parameter of an unknown owner whose first axis is 1
(broadcast-shaped, e.g. timm ``cls_token`` (1, 1, D), ``pos_embed`` (1, N, D)).  Anything else raises
``ValueError`` rather than guess.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Union

import torch
import torch.nn as nn

__all__ = ["infinite_axes", "param_layout", "oracle_role", "oracle_roles", "canonical_names", "owners"]

Build = Callable[[int], tuple]
BuildLike = Union[str, Build]
Layout = Union[tuple[tuple[int, ...], tuple[int, ...]], None]  # (in_axes, out_axes), or None for elementwise


def _zoo():
    from muplify_dev import zoo

    return zoo


def _resolve(build: BuildLike) -> Build:
    return _zoo().ZOO[build].build if isinstance(build, str) else build


def _model(built) -> nn.Module:
    return built[0] if isinstance(built, tuple) else built


def _build_meta(build: Build, width: int) -> nn.Module:
    """Build on the meta device (no memory, no init cost); fall back to CPU if a builder cannot run on meta."""
    try:
        with torch.device("meta"):
            return _model(build(width))
    except (NotImplementedError, RuntimeError):
        return _model(build(width))


def infinite_axes(build: BuildLike, w0: int, w1: int) -> dict[str, tuple[bool, ...]]:
    """Per parameter (deduplicated, first name of tied parameters), whether each axis differs between widths w0 and
    w1.  ``build`` is a zoo name or a ``build(width) -> model | (model, ...)`` callable."""
    if w0 == w1:
        raise ValueError("need two different widths")
    fn = _resolve(build)
    s0 = {n: tuple(p.shape) for n, p in _build_meta(fn, w0).named_parameters()}
    s1 = {n: tuple(p.shape) for n, p in _build_meta(fn, w1).named_parameters()}
    if list(s0) != list(s1):
        raise ValueError(f"parameter names differ between widths {w0} and {w1}: "
                         f"{sorted(set(s0) ^ set(s1))[:10]}")
    out = {}
    for n, a in s0.items():
        b = s1[n]
        if len(a) != len(b):
            raise ValueError(f"{n}: rank changes with width ({a} vs {b})")
        out[n] = tuple(x != y for x, y in zip(a, b))
    return out


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every parameter name, tied aliases included, -> the first name ``model.named_parameters()`` gives it."""
    first: dict[int, str] = {}
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        out[n] = first.setdefault(id(p), n)
    return out


def owners(model: nn.Module, param: nn.Parameter) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, attribute) for every module that directly holds ``param``."""
    res = []
    for mname, mod in model.named_modules():
        for attr, q in mod._parameters.items():
            if q is param:
                res.append((mname, mod, attr))
    return res


def _is_hf_conv1d(mod: nn.Module) -> bool:
    t = type(mod)
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in t.__mro__)


def _n_experts(module: nn.Module) -> int | None:
    for a in ("num_experts", "n_routed_experts", "num_local_experts"):
        v = getattr(module, a, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _is_weight_norm_magnitude(module: nn.Module, attr: str) -> bool:
    """The magnitude g of weight norm: ``weight_g`` (utils.weight_norm) or ``original0`` of a parametrization."""
    if attr == "weight_g" and hasattr(module, "weight_v"):
        return True
    return type(module).__name__ == "ParametrizationList" and attr == "original0"


def _is_hf_ssm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers") and "Mixer" in type(module).__name__


def _weight_norm_direction(model: nn.Module, mname: str, module: nn.Module, attr: str):
    """For ``original1`` (the direction v) of a weight-norm parametrization: the module it parametrizes and the
    parametrized attribute, whose layout v shares."""
    if type(module).__name__ == "ParametrizationList" and attr == "original1":
        owner_name, _, pname = mname.rpartition(".parametrizations.")
        return model.get_submodule(owner_name), pname
    if attr == "weight_v":
        return module, "weight"
    return None


def param_layout(module: nn.Module, attr: str, param: torch.Tensor) -> Layout:
    """(in_axes, out_axes) of ``module.<attr>`` by the module's storage convention; None when used elementwise.

    Raises ValueError for a >=2-D parameter of an unknown owner that is not broadcast-shaped."""
    nd = param.dim()
    if nd <= 1:
        return None
    if isinstance(module, nn.Linear) and attr == "weight":
        return (1,), (0,)
    if isinstance(module, nn.Bilinear) and attr == "weight":
        return (1, 2), (0,)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and attr == "weight":
        return (0,), (1,)
    if _is_hf_conv1d(module) and attr == "weight":
        return (0,), (1,)
    if isinstance(module, nn.modules.conv._ConvNd) and attr == "weight":
        kernel = tuple(range(2, nd))
        return ((0,) + kernel, (1,)) if module.transposed else ((1,) + kernel, (0,))
    if isinstance(module, nn.MultiheadAttention) and attr.endswith("proj_weight"):
        return (1,), (0,)
    if isinstance(module, nn.RNNBase) and attr.startswith("weight_"):
        return (1,), (0,)
    declared = getattr(type(module), "_layouts", None)  # a model documenting its own raw Parameters
    if declared is not None and attr in declared:
        return declared[attr]
    n_exp = _n_experts(module)
    if n_exp is not None and param.shape[0] == n_exp:
        if nd == 3:  # HF expert stacks: (E, out, in), or (E, in, out) where the module says is_transposed
            return ((1,), (2,)) if getattr(module, "is_transposed", False) else ((2,), (1,))
        if nd == 2 and attr == "weight":  # HF routers: a raw (E, in) matrix used as F.linear(h, weight)
            return (1,), (0,)
        if nd == 2:  # per-expert bias stacks (E, out), read by expert index like an embedding table
            return (0,), (1,)
    if attr == "relative_position_bias_table":  # timm Swin-style (relative positions, heads), read by index
        return (0,), (1,)
    if _is_weight_norm_magnitude(module, attr):
        return None
    if _is_hf_ssm(module) and attr in ("A_log", "D", "dt_bias"):  # SSM decay / skip / step parameters
        return None
    if param.shape[0] == 1 and nd == 3 and param.shape[1] > 1:  # a learned positional table (1, N, w): rows, features
        return (1,), (2,)
    if param.shape[0] == 1:  # broadcast-shaped: cls/dist/reg tokens, MHA bias_k/bias_v, ...
        return None
    raise ValueError(f"oracle does not know the layout of {type(module).__qualname__}.{attr} "
                     f"{tuple(param.shape)}; extend muplify_dev/oracle.py:param_layout")


def _role_from_layout(layout: Layout, axes: tuple[bool, ...], module: nn.Module) -> str:
    if layout is None:
        return "vector" if any(axes) else "fixed"
    in_axes, out_axes = layout
    stray = [i for i, inf in enumerate(axes) if inf and i not in in_axes and i not in out_axes]
    if stray:
        raise ValueError(f"axes {stray} grow with width but are neither fan-in nor fan-out")
    fan_in = any(axes[i] for i in in_axes)
    fan_out = any(axes[i] for i in out_axes)
    if fan_in and fan_out:
        return "hidden"
    if fan_out:
        # depthwise / grouped conv whose per-group fan-in stays fixed: a per-channel filter, vector-like
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            return "vector"
        return "input"
    if fan_in:
        return "output"
    return "fixed"


def oracle_role(model: nn.Module, name: str, inf_axes) -> str:
    """μP role ("input" | "hidden" | "output" | "vector" | "fixed") of parameter ``name`` of ``model``.

    ``inf_axes`` is the mapping from :func:`infinite_axes` (looked up by the canonical name, so a tied alias such as
    ``lm_head.weight`` works) or this parameter's own tuple of booleans.  A parameter held by several modules (weight
    tying) gets one role: "output" if any owner reads it out (embedding + readout => output), else the owners must
    agree."""
    canon = canonical_names(model)
    if name not in canon:
        raise KeyError(f"{name!r} is not a parameter of {type(model).__name__}")
    first = canon[name]
    axes = tuple(inf_axes[first]) if isinstance(inf_axes, Mapping) else tuple(inf_axes)
    param = model.get_parameter(first)
    if len(axes) != param.dim():
        raise ValueError(f"{first}: {len(axes)} axis flags for a {param.dim()}-D parameter")
    roles = set()
    for mname, mod, attr in owners(model, param):
        direction = _weight_norm_direction(model, mname, mod, attr)
        if direction is not None:
            mod, attr = direction
        roles.add(_role_from_layout(param_layout(mod, attr, param), axes, mod))
    if not roles:
        raise ValueError(f"no module holds {first}")
    if "output" in roles:
        return "output"
    if len(roles) > 1:
        raise ValueError(f"{first}: owners disagree on the role: {sorted(roles)}")
    return roles.pop()


def oracle_roles(build: BuildLike, w0: int | None = None, w1: int | None = None,
                 model: nn.Module | None = None) -> dict[str, str]:
    """Roles of every (deduplicated) parameter.  ``build`` is a zoo name (widths default to ``widths_for(name)``)
    or a builder callable with explicit widths.  Roles are read off ``model`` if given, else a meta build at w0."""
    if w0 is None or w1 is None:
        if not isinstance(build, str):
            raise ValueError("pass w0 and w1 with a builder callable")
        w0, w1 = _zoo().widths_for(build)
    axes = infinite_axes(build, w0, w1)
    model = _build_meta(_resolve(build), w0) if model is None else model
    return {n: oracle_role(model, n, axes) for n, _ in model.named_parameters()}
