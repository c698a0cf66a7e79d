"""Stage 1: capture the model's computation as an ATen-level torch.fx graph.

We use ``torch.export`` (non-strict) on fake tensors: it runs the model's own Python (so ``**kwargs``, tensor-dependent
branches and ``torch.ones(T, T)`` all work), keeps parameter names, and never touches parameter values, so a model on
the meta device captures in seconds.  The graph is used only for *analysis*: the user's forward keeps running as is,
which is why train/eval mode and the call signature fixed at capture time do not restrict the muplified model.

Besides the graph, the capture records what the model says about itself (:class:`ModelHints`): the width attribute of
a transformers config or a timm model, and the config's other sizes, which the width analysis uses as evidence.

    >>> from muplify.models import MLP
    >>> cap = capture(MLP(width=64))
    >>> sorted(cap.param_names.values())[0]
    ['net.0.bias']
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import CaptureError
from .inputs import _required_positional, embedding_fed_by_input, token_inputs

__all__ = ["Capture", "ModelHints", "capture", "default_example_inputs", "model_hints"]

# config attributes that name the hidden size, most specific first (transformers' attribute_map aliases resolve
# through getattr: GPT-2's hidden_size is n_embd, DistilBERT's is dim)
_WIDTH_ATTRS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "hidden_dim", "model_dim", "width")
# sub-configs of composite models, in the order their width is preferred
_SUB_CONFIGS = ("text_config", "decoder", "encoder", "vision_config", "audio_config", "speech_config",
                "language_config", "llm_config")


@dataclass
class ModelHints:
    """What a model states about its own sizes (not read from the graph)."""

    width: int | None = None  # the model's declared width
    width_source: str = ""  # e.g. "config.hidden_size", "config.text_config.hidden_size", "timm embed_dim"
    sizes: dict[int, list[str]] = field(default_factory=dict)  # other declared channel sizes: value -> attributes
    head_hidden_size: int | None = None  # timm: features of a conv/linear head after pooling, if not num_features
    group_counts: set[int] = field(default_factory=set)  # values of config attributes naming a number of groups


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
    hints: ModelHints = field(default_factory=ModelHints)
    output_names: dict[str, str] = field(default_factory=dict)  # output node name -> its key path ("logits", ...)


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


# --------------------------------------------------------------------------------------------------- model hints
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _config_width(config, prefix: str = "config") -> tuple[int | None, str]:
    for attr in _WIDTH_ATTRS:
        try:
            v = getattr(config, attr, None)
        except Exception:  # noqa: BLE001 - some configs compute attributes lazily and may raise
            v = None
        if _is_int(v) and v > 0:
            return v, f"{prefix}.{attr}"
    v = getattr(config, "hidden_sizes", None)  # CNN configs: per-stage widths; the first stage is the width
    if isinstance(v, (list, tuple)) and v and _is_int(v[0]):
        return v[0], f"{prefix}.hidden_sizes[0]"
    for sub in _SUB_CONFIGS:
        c = getattr(config, sub, None)
        if c is not None and hasattr(c, "to_dict"):
            w, src = _config_width(c, f"{prefix}.{sub}")
            if w is not None:
                return w, src
    return None, ""


# a config attribute names a channel size if its name says so and is not the size of something else
_CHANNEL_WORDS = ("size", "dim", "embed", "hidden", "channel", "width", "rank", "feature")
_OTHER_WORDS = ("image", "patch", "vocab", "position", "window", "kernel", "stride", "layer", "head", "label", "bucket",
                "seq", "length", "token", "group", "expert", "chunk", "batch", "num_", "max_", "min_")


def _config_sizes(d: dict, prefix: str, out: dict[int, list[str]], width_attr: str, width: int | None,
                  groups: set[int]) -> None:
    for k, v in d.items():
        k = str(k)  # id2label-style dicts have int keys
        if isinstance(v, dict):
            _config_sizes(v, f"{prefix}.{k}", out, width_attr, width, groups)
            continue
        low = k.lower()
        if "group" in low and _is_int(v) and v > 1:
            groups.add(v)
        if k.startswith("_") or not any(w in low for w in _CHANNEL_WORDS) or any(w in low for w in _OTHER_WORDS):
            continue
        name = f"{prefix}.{k}"
        if _is_int(v) and v > 1:
            out.setdefault(v, []).append(name)
        elif isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v):
            if width_attr.startswith(name + "[") or width in v:
                continue  # per-stage widths (hidden_sizes, a list holding the width): siblings that scale with it
            for i, x in enumerate(v):
                if x > 1:
                    out.setdefault(x, []).append(f"{name}[{i}]")


def _is_timm(model: nn.Module) -> bool:
    return any(c.__module__.startswith("timm.") for c in type(model).__mro__)


def model_hints(model: nn.Module) -> ModelHints:
    """The width a model declares (transformers: its config's hidden size; timm: ``embed_dim``, else the channels
    of its first feature stage) and its other declared sizes."""
    hints = ModelHints()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        hints.width, hints.width_source = _config_width(config)
        try:
            _config_sizes(config.to_dict(), "config", hints.sizes, hints.width_source, hints.width,
                          hints.group_counts)
        except Exception:  # noqa: BLE001 - a config that cannot serialise gives no extra sizes
            pass
    elif _is_timm(model):
        embed = getattr(model, "embed_dim", None)
        info = getattr(model, "feature_info", None)
        if _is_int(embed):
            hints.width, hints.width_source = embed, "timm embed_dim"
        elif isinstance(info, list) and info and _is_int(info[0].get("num_chs") if isinstance(info[0], dict) else None):
            hints.width = info[0]["num_chs"]
            hints.width_source = f"timm feature_info[0] num_chs ('{info[0].get('module', '')}')"
        elif _is_int(getattr(model, "num_features", None)):
            hints.width, hints.width_source = model.num_features, "timm num_features"
        head, feats = getattr(model, "head_hidden_size", None), getattr(model, "num_features", None)
        if _is_int(head) and _is_int(feats) and head != feats:
            hints.head_hidden_size = head
    return hints


# --------------------------------------------------------------------------------------------------- example inputs
_BATCH, _SEQ = 2, 8


def _cfg_get(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _sub(config, *names):
    for n in names:
        c = getattr(config, n, None)
        if c is not None:
            return c
    return config


def _tokens(config, dev, seq: int = _SEQ) -> torch.Tensor:
    vocab = _cfg_get(config, "vocab_size", default=None) or 2
    max_pos = _cfg_get(config, "max_position_embeddings", "n_positions", "max_target_positions", default=None)
    if _is_int(max_pos) and max_pos > 0:
        seq = min(seq, max_pos)
    return torch.randint(0, vocab, (_BATCH, seq), device=dev)


def _pixels(config, dev) -> torch.Tensor:
    c = _sub(config, "vision_config")
    size = _cfg_get(c, "image_size", default=32)
    size = size if _is_int(size) else size[0]
    return torch.randn(_BATCH, _cfg_get(c, "num_channels", default=3), size, size, device=dev)


def _audio_features(config, dev) -> torch.Tensor:
    n = _cfg_get(config, "num_mel_bins", "feature_size", "input_feat_per_channel", default=80)
    src = _cfg_get(config, "max_source_positions", default=None)
    # Whisper-style encoders need exactly 2 * max_source_positions frames (two convs, the second of stride 2)
    frames = 2 * src if _is_int(src) else 32
    return torch.randn(_BATCH, n, frames, device=dev)


def _waveform(config, dev) -> torch.Tensor:
    kernels = list(_cfg_get(config, "conv_kernel", default=[10]) or [10])
    strides = list(_cfg_get(config, "conv_stride", default=[5]) or [5])
    length = 8  # frames after the conv feature encoder
    for k, s in zip(reversed(kernels), reversed(strides)):
        length = (length - 1) * s + k
    return torch.randn(_BATCH, length, device=dev)


def _hf_example_inputs(model: nn.Module, dev) -> tuple[tuple, dict] | None:
    """A forward call built from what transformers states: ``main_input_name``, the forward signature, the config
    (encoder-decoders get decoder inputs, dual encoders text and pixels, speech models features or waveforms)."""
    config, main = model.config, model.main_input_name
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    builders = {
        "input_ids": lambda: _tokens(_sub(config, "text_config", "decoder"), dev),
        "pixel_values": lambda: _pixels(config, dev),
        "input_features": lambda: _audio_features(config, dev),
        "input_values": lambda: _waveform(config, dev),
    }
    if main not in builders:
        return None
    kwargs: dict = {main: builders[main]()}
    if main == "input_ids" and "attention_mask" in params:  # some families index it without a None check
        kwargs["attention_mask"] = torch.ones_like(kwargs[main])
    if main == "input_ids" and "pixel_values" in params and hasattr(config, "vision_config"):
        kwargs["pixel_values"] = _pixels(config, dev)  # dual encoders (CLIP, SigLIP)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        kwargs["decoder_input_ids"] = _tokens(_sub(config, "decoder"), dev, _SEQ // 2)
    if getattr(config, "use_cache", None) is not None and "use_cache" in params:
        kwargs["use_cache"] = False
    return (), kwargs


def default_example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """A small, valid forward call for common model families, or a CaptureError saying to pass one."""
    dev = _device_of(model)
    if getattr(model, "config", None) is not None and getattr(model, "main_input_name", None) is not None:
        built = _hf_example_inputs(model, dev)
        if built is not None:
            return built
    for mod in model.modules():  # timm ViT-style patch embeddings (and any module stating a fixed image size)
        img = getattr(mod, "img_size", None)
        proj = getattr(mod, "proj", None)
        if isinstance(img, (tuple, list)) and len(img) == 2 and all(_is_int(s) for s in img) and \
                isinstance(proj, nn.Conv2d):
            return (torch.randn(_BATCH, proj.in_channels, *img, device=dev),), {}
    n_args = max(1, _required_positional(model))
    first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear, nn.Conv1d, nn.Conv2d,
                                                                nn.Conv3d, nn.TransformerEncoderLayer,
                                                                nn.TransformerDecoderLayer))), None)
    if first is not None and not isinstance(first, nn.Embedding) and (emb := embedding_fed_by_input(model)):
        return token_inputs(model, emb.num_embeddings, dev), {}  # token ids reach an embedding defined later
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            # every required argument of a token model gets tokens (a seq2seq model's source and target)
            return tuple(torch.randint(0, mod.num_embeddings, (_BATCH, _SEQ), device=dev) for _ in range(n_args)), {}
        if isinstance(mod, nn.Linear):
            return (torch.randn(_BATCH, mod.in_features, device=dev),), {}
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            n = mod.weight.dim() - 2
            size = 32 if n < 3 else 8
            return (torch.randn(_BATCH, mod.in_channels, *([size] * n), device=dev),), {}
        if isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            d = mod.linear1.in_features
            shape = (_BATCH, _SEQ, d) if mod.self_attn.batch_first else (_SEQ, _BATCH, d)
            return (torch.randn(*shape, device=dev),), {}
    raise CaptureError(
        f"muplify cannot guess a forward call for {type(model).__name__}: pass example_inputs=(...) "
        "(and example_kwargs={...}) matching one ordinary call of the model; any small batch works."
    )


# --------------------------------------------------------------------------------------------------- capture
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


def _no_causal_probe(mask, is_causal=None, size=None) -> bool:
    # torch.nn.Transformer* compare the mask's *values* with a causal mask to pick a fast path; on the fake tensors
    # of a capture that comparison has no answer.  Either answer computes the same function (the mask is applied
    # explicitly), so during capture the mask is taken as given.
    return is_causal is True


@contextlib.contextmanager
def _capture_patches():
    import torch.nn.modules.transformer as tr

    saved = getattr(tr, "_detect_is_causal_mask", None)
    if saved is not None:
        tr._detect_is_causal_mask = _no_causal_probe
    try:
        yield
    finally:
        if saved is not None:
            tr._detect_is_causal_mask = saved


@contextlib.contextmanager
def _lean_export():
    """Leave out what ``torch.export`` makes for people reading or running its graph and the analysis never reads:
    the Python source of every graph module, regenerated and compiled after each of export's passes (lazy graph
    modules generate it on first use instead), and a formatted stack trace per node (``node.meta["stack_trace"]``).
    The graph, its node names and the rest of the metadata (``nn_module_stack``, ``val``) are the same; together
    this is about 40% of a warm export of a transformer (issue 20)."""
    import torch.fx

    config = getattr(torch.fx, "config", None)
    saved = getattr(config, "do_not_emit_stack_traces", None)
    try:
        from torch.fx._lazy_graph_module import _use_lazy_graph_module
        lazy = _use_lazy_graph_module(True)
    except ImportError:  # an older torch: its export as it is
        lazy = contextlib.nullcontext()
    if saved is not None:
        config.do_not_emit_stack_traces = True
    try:
        with lazy:
            yield
    finally:
        if saved is not None:
            config.do_not_emit_stack_traces = saved


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            self.lines.append(f"[{record.name}] {record.getMessage()}")
        except Exception:  # noqa: BLE001
            pass


@contextlib.contextmanager
def _quiet_torch_output():
    """A failing export logs warnings and prints the partial graph (hundreds of lines) to stderr: keep them for
    ``CaptureError.details``.  What a successful capture writes (the model's own prints, warnings) is passed on."""
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch._export",
                                               "torch.export", "torch._dynamo", "torch._functorch")]
    saved = [(lg, lg.propagate, list(lg.handlers)) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]  # torch attaches its own stream handlers to these loggers
        lg.propagate = False
    out, err = io.StringIO(), io.StringIO()
    ok = False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield handler
        ok = True
    finally:
        for lg, prop, handlers in saved:
            lg.handlers = handlers
            lg.propagate = prop
        handler.lines += [s for s in (out.getvalue(), err.getvalue()) if s]
        if ok:
            sys.stdout.write(out.getvalue())
            sys.stderr.write(err.getvalue())


def _first_line(e: BaseException) -> str:
    for line in str(e).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("def ", "#", "File ")):
            return line[:300]
    return type(e).__name__


def _hint_for(e: BaseException, tb: str) -> str:
    if "_detect_is_causal_mask" in tb or "is_causal" in tb:
        return ("nn.Transformer/nn.TransformerEncoder inspect the mask's values; call them with is_causal=True "
                "(and the causal mask) or build the mask as a model input.")
    if "GuardOnDataDependentSymNode" in type(e).__name__ or "data-dependent" in str(e):
        return ("a Python branch or loop depends on tensor values (e.g. `if x.sum() > 0`, `for i in t.nonzero()`); "
                "pass example inputs that avoid it, or use torch.where / torch.cond there.")
    if isinstance(e, TypeError) and "argument" in str(e):
        return "the example inputs do not match the forward signature: pass example_inputs/example_kwargs."
    return ("pass example_inputs/example_kwargs that match an ordinary call; avoid data-dependent Python control flow "
            "on tensor values (e.g. `if x.sum() > 0`) in that module; or report the op.")


def capture(model: nn.Module, example_inputs: tuple | None = None, example_kwargs: dict | None = None) -> Capture:
    """Export one forward call of ``model`` (in its current mode; modes are restored afterwards) to an ATen graph.

    On failure raises :class:`CaptureError` whose first line says what failed and where, the next what to try;
    the torch traceback and logs are on ``err.details`` (and in the message when ``MUPLIFY_DEBUG=1``)."""
    if example_inputs is None and example_kwargs is None:
        example_inputs, example_kwargs = default_example_inputs(model)
    if example_inputs is None:  # example_kwargs alone: the call takes keywords only
        example_inputs = ()
    elif not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    example_kwargs = dict(example_kwargs or {})
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None and "use_cache" not in example_kwargs:
        # HF caches (DynamicCache) are not pytrees torch.export can return; the analysis does not need them
        example_kwargs["use_cache"] = False
    was_training = {m: m.training for m in model.modules()}
    stack: list[str] = []
    names = {id(m): (n or type(model).__name__) for n, m in model.named_modules()}
    types = {id(m): type(m).__name__ for m in model.modules()}
    t0 = time.perf_counter()
    try:
        # capture in the current mode: eval mode can switch nn.TransformerEncoderLayer to a fused fast path
        # that hides how each weight is used
        with _quiet_torch_output() as logs, _capture_patches(), _module_stack_tracker(stack, names), _lean_export():
            ep = torch.export.export(model, example_inputs, example_kwargs, strict=False)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        tb = traceback.format_exc()
        where = ""
        if stack:
            mod = stack[-1]
            cls = next((types[i] for i, n in names.items() if n == mod), "")
            where = f" inside module '{mod}'" + (f" ({cls})" if cls else "")
        details = tb + ("\n".join(["", "torch logs and output:"] + logs.lines) if logs.lines else "")
        msg = (f"could not capture {type(model).__name__} with torch.export{where}: {type(e).__name__}: "
               f"{_first_line(e)}\nWhat to try: {_hint_for(e, tb)}\n"
               "(torch's full error is on err.details; set MUPLIFY_DEBUG=1 to print it here)")
        if os.environ.get("MUPLIFY_DEBUG", "") not in ("", "0"):
            msg += "\n\n" + details
        err = CaptureError(msg)
        err.details = details
        err.module = stack[-1] if stack else None
        raise err from None
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
    # a tied parameter may get one placeholder per name, only one of them used: unused means no placeholder used
    used = {ns[0] for ph, ns in param_names.items() if placeholders[ph].users}
    unused = list(dict.fromkeys(ns[0] for ns in param_names.values() if ns[0] not in used))
    return Capture(graph, param_names, buffer_nodes, user_inputs, user_outputs, seconds, unused, ep.graph_module,
                   model_hints(model), _output_names(ep, user_outputs))


def _output_names(ep, user_outputs: list[fx.Node]) -> dict[str, str]:
    """Output node -> its key path in the model's returned structure ("logits", "encoder_last_hidden_state")."""
    import torch.utils._pytree as pytree

    try:
        spec = ep.call_spec.out_spec
        leaves = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(leaves)[0]]
        specs = [s for s in ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    except Exception:  # noqa: BLE001 - names are for messages only
        return {}
    if len(paths) != len(specs):
        return {}
    return {getattr(s.arg, "name", ""): p.replace("['", ".").replace("']", "").replace("[", ".").replace("]", "")
            .lstrip(".") for s, p in zip(specs, paths)}
