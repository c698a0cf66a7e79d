"""Stage 1: capture the model's computation as an ATen-level torch.fx graph.

We use ``torch.export`` (non-strict) on fake tensors: it runs the model's own Python (so ``**kwargs``, tensor-dependent
branches and ``torch.ones(T, T)`` all work), keeps parameter names, and never touches parameter values, so a model on
the meta device captures in seconds.  The graph is used only for *analysis*: the user's forward keeps running as is,
which is why train/eval mode and the call signature fixed at capture time do not restrict the muplified model.

    >>> from muplify.models import MLP
    >>> cap = capture(MLP(width=64))
    >>> sorted(cap.param_names.values())[0]
    ['net.0.bias']
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import CaptureError

__all__ = ["Capture", "capture", "default_example_inputs"]


@dataclass
class Capture:
    """What the analysis needs from one forward call."""

    graph: fx.Graph
    param_names: dict[str, list[str]]  # placeholder name -> every FQN of that Parameter (canonical first)
    buffer_nodes: set[str]
    user_inputs: list[fx.Node]
    user_outputs: list[fx.Node]
    seconds: float
    unused_params: list[str] = field(default_factory=list)  # canonical names of parameters the forward never used
    graph_module: torch.nn.Module | None = None  # owner of the graph's subgraphs (higher-order ops)


def _param_aliases(model: nn.Module) -> dict[int, list[str]]:
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    canonical = {id(p): n for n, p in model.named_parameters()}
    for pid, names in aliases.items():
        names.sort(key=lambda n: n != canonical[pid])
    return aliases


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def default_example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """A small, valid forward call for common model families, or a CaptureError saying to pass one."""
    dev = _device_of(model)
    config = getattr(model, "config", None)
    main_input = getattr(model, "main_input_name", None)
    if config is not None and main_input is not None:  # HF transformers
        kwargs: dict = {}
        if getattr(config, "use_cache", None) is not None:
            kwargs["use_cache"] = False
        if main_input == "input_ids":
            vocab = getattr(config, "vocab_size", None) or 2
            return (torch.randint(0, vocab, (2, 8), device=dev),), kwargs
        if main_input == "pixel_values":
            size = getattr(config, "image_size", 32)
            size = size if isinstance(size, int) else size[0]
            return (torch.randn(2, getattr(config, "num_channels", 3), size, size, device=dev),), kwargs
    patch_embed = getattr(model, "patch_embed", None)  # timm ViTs
    if patch_embed is not None and getattr(patch_embed, "img_size", None) is not None:
        h, w = patch_embed.img_size
        chans = patch_embed.proj.in_channels
        return (torch.randn(2, chans, h, w, device=dev),), {}
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            return (torch.randint(0, mod.num_embeddings, (2, 8), device=dev),), {}
        if isinstance(mod, nn.Linear):
            return (torch.randn(2, mod.in_features, device=dev),), {}
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            n = mod.weight.dim() - 2
            size = 32 if n < 3 else 8
            return (torch.randn(2, mod.in_channels, *([size] * n), device=dev),), {}
        if isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            d = mod.linear1.in_features
            shape = (2, 8, d) if mod.self_attn.batch_first else (8, 2, d)
            return (torch.randn(*shape, device=dev),), {}
    raise CaptureError(
        f"muplify cannot guess a forward call for {type(model).__name__}: pass example_inputs=(...) "
        "(and example_kwargs={...}) matching one ordinary call of the model; any small batch works."
    )


@contextlib.contextmanager
def _module_stack_tracker(stack: list[str], names: dict[int, str]):
    def pre(mod, args):
        stack.append(names.get(id(mod), type(mod).__name__))

    def post(mod, args, out):
        if stack:
            stack.pop()

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def capture(model: nn.Module, example_inputs: tuple | None = None, example_kwargs: dict | None = None) -> Capture:
    """Export one forward call of ``model`` (in its current mode; modes are restored afterwards) to an ATen graph."""
    if example_inputs is None and example_kwargs is None:
        example_inputs, example_kwargs = default_example_inputs(model)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    example_kwargs = dict(example_kwargs or {})
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None and "use_cache" not in example_kwargs:
        # HF caches (DynamicCache) are not pytrees torch.export can return; the analysis does not need them
        example_kwargs["use_cache"] = False
    was_training = {m: m.training for m in model.modules()}
    stack: list[str] = []
    names = {id(m): (n or type(model).__name__) for n, m in model.named_modules()}
    t0 = time.perf_counter()
    try:
        # capture in the current mode: eval mode can switch nn.TransformerEncoderLayer to a fused fast path
        # that hides how each weight is used
        with _module_stack_tracker(stack, names):
            ep = torch.export.export(model, example_inputs, example_kwargs, strict=False)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        where = f" inside module '{stack[-1]}' ({'/'.join(stack)})" if stack else ""
        raise CaptureError(
            f"could not capture {type(model).__name__} with torch.export{where}: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}\n"
            "What to try: pass example_inputs/example_kwargs that match an ordinary call; avoid data-dependent "
            "Python control flow on tensor values in that module (e.g. `if x.sum() > 0`); or report the op."
        ) from e
    finally:
        for m, t in was_training.items():
            m.training = t
    seconds = time.perf_counter() - t0

    sig = ep.graph_signature
    aliases = _param_aliases(model)
    fqn_to_id = {n: pid for pid, ns in aliases.items() for n in ns}
    param_names = {ph: aliases[fqn_to_id[fqn]] for ph, fqn in sig.inputs_to_parameters.items()}
    buffer_nodes = set(sig.inputs_to_buffers) | set(getattr(sig, "inputs_to_lifted_tensor_constants", {}))
    graph = ep.graph_module.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    user_inputs = [placeholders[n] for n in sig.user_inputs if n in placeholders]
    out_node = next(n for n in graph.nodes if n.op == "output")
    user_out_names = set(sig.user_outputs)
    user_outputs = [a for a in out_node.args[0] if isinstance(a, fx.Node) and a.name in user_out_names]
    unused = [ns[0] for ph, ns in param_names.items() if not placeholders[ph].users]
    return Capture(graph, param_names, buffer_nodes, user_inputs, user_outputs, seconds, unused, ep.graph_module)
