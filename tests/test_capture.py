"""Capture (muplify.capture): example inputs for transformers families, nn.Transformer with masks, short capture
errors (moved from test_analysis_issue8)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import muplify.core as core
from muplify import CaptureError, muplify
from muplify.capture import capture, default_example_inputs
from muplify.width import analyse
from muplify_dev.oracle import infinite_axes, oracle_roles
from muplify_dev.zoo import build, widths_for

from analysis_support import X8, analysis, analysis_of, quiet_muplify  # noqa: F401


# ------------------------------------------------------------------------------------------------ 6. inputs
@pytest.mark.parametrize("name,keys", [
    ("hf_t5", {"input_ids", "decoder_input_ids"}), ("hf_bart", {"input_ids", "decoder_input_ids"}),
    ("hf_clip", {"input_ids", "pixel_values"}), ("hf_siglip", {"input_ids", "pixel_values"}),
    ("hf_whisper", {"input_features", "decoder_input_ids"}), ("hf_wav2vec2", {"input_values"}),
])
def test_transformers_example_inputs(name, keys):
    model, _, _ = build(name, 32)
    args, kwargs = default_example_inputs(model)
    assert args == () and keys <= set(kwargs)
    if name == "hf_whisper":  # exactly 2 * max_source_positions frames
        assert kwargs["input_features"].shape == (2, 16, 32)
    with torch.no_grad():
        model(*args, **kwargs)


def test_bare_call_on_a_two_input_torch_model():
    model, _, _ = build("torch_transformer", 64)
    assert len(default_example_inputs(model)[0]) == 2
    assert quiet_muplify(model, base_width=32).plan.width == 64


# ------------------------------------------------------------------------------------------------ 7. nn.Transformer
def test_transformer_with_masks_captures_and_restores_torch():
    import torch.nn.modules.transformer as tr

    before = tr._detect_is_causal_mask
    for name in ("torch_causal_encoder", "torch_transformer"):
        model, args, _ = build(name, 64)
        cap = capture(model, args)
        assert any("scaled_dot_product_attention" in str(n.target) for n in cap.graph.nodes)
    assert tr._detect_is_causal_mask is before


from torch.nn.modules.transformer import _detect_is_causal_mask as _own_copy  # noqa: E402


class OwnCausalCheck(nn.Module):
    """Copies torch's mask-value check into its own forward: capture cannot answer it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)

    def forward(self, idx):
        mask = nn.Transformer.generate_square_subsequent_mask(idx.shape[1])
        return self.layer(self.embed(idx), src_mask=mask, is_causal=_own_copy(mask))


def test_mask_check_that_cannot_be_captured_names_the_working_call():
    with pytest.raises(CaptureError) as ei:
        capture(OwnCausalCheck(), (torch.zeros(2, 8, dtype=torch.long),))
    assert "is_causal=True" in str(ei.value)


# ------------------------------------------------------------------------------------------------ 8. errors
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h * 2
        return self.b(h)


def test_capture_error_is_short_and_first(capfd):
    with pytest.raises(CaptureError) as ei:
        capture(DataDependent(), (X8,))
    msg = str(ei.value)
    lines = msg.splitlines()
    assert lines[0].startswith("could not capture DataDependent with torch.export") and len(lines) <= 4
    assert lines[1].startswith("What to try:") and "MUPLIFY_DEBUG=1" in msg
    assert "Traceback" in ei.value.details and "def forward" not in msg
    out, err = capfd.readouterr()
    assert "def forward" not in err and "def forward" not in out  # torch's graph dump stays off the terminal


def test_capture_error_details_behind_the_debug_flag():
    code = ("import sys; sys.path[:0] = [{root!r}, {tests!r}]\n"
            "import torch\nfrom test_capture import DataDependent, X8\nfrom muplify.capture import capture\n"
            "try:\n    capture(DataDependent(), (X8,))\nexcept Exception as e:\n    print(len(str(e).splitlines()))\n")
    here = os.path.dirname(os.path.abspath(__file__))
    code = code.format(root=os.path.dirname(here), tests=here)
    env = dict(os.environ, MUPLIFY_DEBUG="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert int(out.stdout.strip().splitlines()[-1]) > 20, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ 9. cost (issue 20)
def test_lean_export_restores_torch_settings_and_keeps_the_graph():
    """The capture leaves out export's generated source and per-node stack traces, and puts torch's settings back
    (after a failed capture too); the graph is the one a plain export gives."""
    import contextlib

    import torch.fx._lazy_graph_module as lazy

    import muplify.capture as mc

    before = (torch.fx.config.do_not_emit_stack_traces, lazy._use_lazy_graph_module_flag)
    model, args, kwargs = build("hf_llama", 32)
    lean = capture(model, args, kwargs)
    assert (torch.fx.config.do_not_emit_stack_traces, lazy._use_lazy_graph_module_flag) == before
    with pytest.raises(CaptureError):
        capture(DataDependent(), (X8,))
    assert (torch.fx.config.do_not_emit_stack_traces, lazy._use_lazy_graph_module_flag) == before
    real = mc._lean_export
    mc._lean_export = contextlib.nullcontext
    try:
        plain = capture(model, args, kwargs)
    finally:
        mc._lean_export = real

    def nodes(cap):
        return [(n.name, n.op, str(n.target), str(n.args), str(n.meta.get("nn_module_stack")), str(n.meta.get("val")))
                for n in cap.graph.nodes]
    assert nodes(lean) == nodes(plain)


def test_distinct_channels_is_unique():
    from muplify.sites import _distinct_channels

    g = torch.Generator().manual_seed(0)
    t = torch.arange(48, dtype=torch.float64).expand(2, 3, 48).contiguous()
    for sel in (t[..., 8:40], t[..., torch.randperm(48, generator=g)[:20]], t.reshape(2, 3, 6, 8)[..., 2, :],
                t.transpose(0, 2)[5:9]):
        assert torch.equal(_distinct_channels(sel, 48).to(torch.float64), torch.unique(sel))
    for odd in (t - 1, t + 0.5, t * 2):  # outside [0, total) or not whole: torch.unique itself
        assert torch.equal(_distinct_channels(odd, 48), torch.unique(odd))
    with torch.device("meta"):  # a model built under a meta default device: the indices stay on the CPU
        assert _distinct_channels(t[..., 3:7], 48).tolist() == [3, 4, 5, 6]


def test_garbage_collection_resumes_after_the_analysis():
    import gc

    from muplify import analyze

    model, args, kwargs = build("mlp", 32)
    assert gc.isenabled()
    analyze(model, 16, example_inputs=args)
    assert gc.isenabled()
    with pytest.raises(CaptureError):
        analyze(DataDependent(), 16, example_inputs=(X8,))
    assert gc.isenabled()
    gc.disable()
    try:
        analyze(model, 16, example_inputs=args)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
