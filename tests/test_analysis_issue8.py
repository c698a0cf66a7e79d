"""One focused test per class of silent wrong μP of issue 8 (the analysis part); each fails if its fix is reverted.

1. fixed internal dims read as width (routers, expert stacks, counted/selected axes, SSM states, input bottlenecks,
   token mixing over patches, fixed heads); 2. model outputs freezing the width; 3. the width is the one the model
   declares, every scaling dim is listed, a warning when the width is a guess; 4. parameters whose use was not
   recorded; 5. grouped convs; 6. example inputs for transformers families; 7. nn.Transformer with masks;
   8. short capture errors.
"""
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

X8 = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def quiet_muplify(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(model, **kw)


def analysis(model, *args, width=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = capture(model, tuple(args), kwargs) if args or kwargs else capture(model)
        return analyse(cap, width=width)


def analysis_of(name: str, size: int, width: int | None = None):
    model, args, kwargs = build(name, size)
    return model, analysis(model, *args, width=width, **kwargs)


# ------------------------------------------------------------------------------------------------ 1. fixed dims
def _select(op: str, logits: torch.Tensor) -> torch.Tensor:
    """A per-row weight computed from ``logits`` (B, n) by one selection / counting / indexing op (the counting and
    indexing ones take constant indices, so that only the op itself ties the axis)."""
    n = logits.shape[-1]
    idx = torch.arange(logits.shape[0], device=logits.device) % n
    if op == "topk":
        return logits.topk(2, dim=-1).values
    if op == "sort":
        return logits.sort(-1).values[:, -1:]
    if op == "argsort":
        return logits.argsort(-1)[:, -1:].float()
    if op == "argmax":
        return logits.argmax(-1, keepdim=True).float()
    if op == "max":
        return logits.max(-1, keepdim=True).values
    if op == "select":
        return logits[:, 0] * logits[:, 1]
    if op == "one_hot":
        return F.one_hot(idx, n) * logits
    if op == "histc":
        return logits * torch.histc(idx.float(), bins=n, min=0, max=n - 1)
    if op == "scatter":
        return torch.zeros_like(logits).scatter(1, idx[:, None], 1.0) * logits
    if op == "index_add":
        return torch.zeros_like(logits).index_add(1, torch.tensor([0, 1]), torch.ones_like(logits[:, :2])) * logits
    if op == "gather":
        return logits.gather(1, idx[:, None])
    raise ValueError(op)


class Probe(nn.Module):
    """A Linear(d, 4) whose output axis is only selected / counted / indexed: a router (output-like)."""

    def __init__(self, op: str, d: int = 64, n: int = 4):
        super().__init__()
        self.op = op
        self.inp, self.mid, self.proj, self.out = nn.Linear(8, d), nn.Linear(d, d), nn.Linear(d, n), nn.Linear(d, 3)

    def forward(self, x):
        h = self.mid(torch.relu(self.inp(x)))
        return self.out(h) * _select(self.op, self.proj(h)).sum(-1, keepdim=True)


@pytest.mark.parametrize("op", ["topk", "sort", "argsort", "argmax", "max", "select", "one_hot", "histc", "scatter",
                                "index_add", "gather"])
def test_selected_counted_or_indexed_axis_is_fixed(op):
    mu = quiet_muplify(Probe(op), base_width=32, example_inputs=(X8,))
    p = mu.plan["proj.weight"]
    assert p.role == "output" and p.fan_out == 4 and p.fan_in == mu.plan.width_symbol, (op, p.role, p.fan_out)
    assert mu.plan["mid.weight"].role == "hidden"


def test_router_output_like_and_expert_stacks_hidden():
    base, wide = widths_for("hf_mixtral")
    model, wa = analysis_of("hf_mixtral", wide)
    w = wa.width_symbol
    router = wa.params["model.layers.0.mlp.gate.weight"]
    assert router.axis_exprs == [4, w] and router.decided_by == "graph"
    gate_up = wa.params["model.layers.0.mlp.experts.gate_up_proj"]  # (E, 2*ff, d) through grouped matmul
    assert gate_up.axis_exprs == [4, 4 * w, w]
    assert {(u.fan_in_axes, u.fan_out_axes) for u in gate_up.uses if u.kind == "matmul"} == {((2,), (1,))}
    plan = quiet_muplify(model, base_width=base).plan
    assert plan["model.layers.0.mlp.gate.weight"].role == "output"
    assert plan["model.layers.0.mlp.experts.down_proj"].role == "hidden"
    assert str(plan["model.layers.0.mlp.experts.down_proj"].fan_in) == "2*w"


class GroupedMM(nn.Module):
    """Expert stacks through torch._grouped_mm (bf16: its CPU kernel's dtype), experts selected by a sort."""

    def __init__(self, d: int = 64, n: int = 4):
        super().__init__()
        self.router = nn.Linear(d, n, dtype=torch.bfloat16)
        self.up = nn.Parameter(torch.randn(n, d, 2 * d, dtype=torch.bfloat16) / d ** 0.5)
        self.down = nn.Parameter(torch.randn(n, 2 * d, d, dtype=torch.bfloat16) / d ** 0.5)
        self.inp, self.out = nn.Linear(8, d, dtype=torch.bfloat16), nn.Linear(d, 3, dtype=torch.bfloat16)

    def forward(self, x):
        h = self.inp(x.to(torch.bfloat16))
        expert = self.router(h).argmax(-1)
        order = expert.argsort()
        offs = torch.cumsum(torch.bincount(expert, minlength=self.up.shape[0]), 0).to(torch.int32)
        y = torch._grouped_mm(torch.relu(torch._grouped_mm(h[order], self.up, offs=offs)), self.down, offs=offs)
        return self.out(h + y[order.argsort()])


def test_grouped_mm_expert_stacks():
    wa = analysis(GroupedMM(), X8)
    w = wa.width_symbol
    assert wa.params["up"].axis_exprs == [4, w, 2 * w] and wa.params["down"].axis_exprs == [4, 2 * w, w]
    assert all(wa.params[n].decided_by == "graph" for n in ("up", "down", "router.weight"))
    assert wa.params["router.weight"].axis_exprs == [4, w]


def test_ssm_state_and_fused_projection_expressions():
    _, wa = analysis_of("hf_mamba", 64)
    w = wa.width_symbol
    mixer = "backbone.layers.0.mixer."
    assert wa.params[mixer + "A_log"].axis_exprs == [2 * w, 16]  # (d_inner, d_state): the state is fixed
    assert wa.params[mixer + "x_proj.weight"].axis_exprs == [w / 16 + 32, 2 * w]  # dt_rank + 2 * d_state
    assert wa.width_source == "config.hidden_size"


def test_input_side_bottleneck_from_config_is_a_marked_guess():
    model, wa = analysis_of("hf_albert", 64)
    emb = wa.params["albert.embeddings.position_embeddings.weight"]
    assert emb.axis_exprs == [32, 16]
    assert emb.decided_by.startswith("guess:") and "config.embedding_size" in emb.decided_by
    plan = quiet_muplify(model, base_width=32).plan
    assert plan["albert.encoder.embedding_hidden_mapping_in.weight"].role == "input"
    assert plan["predictions.dense.weight"].role == "output"


def test_token_mixing_over_patches_is_fixed():
    model, wa = analysis_of("timm_mixer", 64)
    fc1 = wa.params["blocks.0.mlp_tokens.fc1.weight"]  # Linear(16 patches, w/2)
    assert fc1.axis_exprs == [wa.width_symbol / 2, 16] and fc1.decided_by == "graph"
    roles = quiet_muplify(model, base_width=32).plan
    assert roles["blocks.0.mlp_tokens.fc1.weight"].role == "input"
    assert roles["blocks.0.mlp_tokens.fc2.weight"].role == "output"


def test_fixed_head_after_pooling_is_a_marked_guess():
    _, wa = analysis_of("timm_mobilenetv3", 64)
    head = wa.params["conv_head.weight"]
    assert head.axis_exprs[0] == 96 and head.decided_by.startswith("guess:") and "head_hidden_size" in head.decided_by


# ------------------------------------------------------------------------------------------------ 2. outputs
class FeatureEncoder(nn.Module):
    """Returns its hidden states (no readout): nothing may be frozen by the output."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.embed = nn.Embedding(100, d)
        layer = nn.TransformerEncoderLayer(d, d // 16, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, idx):
        return self.norm(self.encoder(self.embed(idx)))


def test_feature_outputs_keep_the_width():
    mu = quiet_muplify(FeatureEncoder(64), base_width=32)
    assert mu.plan.width == 64
    assert mu.plan["embed.weight"].role == "input"
    assert {mu.plan[n].role for n in mu.plan if n.startswith("encoder.") and n.endswith("weight")} == {"hidden",
                                                                                                      "vector"}
    assert not mu.plan.by_role("output")


@pytest.mark.parametrize("name,hidden,output", [
    ("hf_t5", "encoder.block.0.layer.1.DenseReluDense.wo.weight", "shared.weight"),
    ("hf_clip", "text_model.encoder.layers.0.mlp.fc2.weight", "text_projection.weight"),
    ("hf_whisper", "model.encoder.layers.0.fc2.weight", "model.decoder.embed_tokens.weight"),
    ("hf_wav2vec2", "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight", "lm_head.weight"),
])
def test_named_feature_outputs_do_not_freeze_d_model(name, hidden, output, monkeypatch):
    """T5/Whisper return encoder_last_hidden_state, CLIP last_hidden_state and pooler_output: d_model scales; the
    logits (and CLIP's fixed projection_dim) stay readouts, from graph evidence."""
    base, wide = widths_for(name)
    model, _, _ = build(name, wide)
    seen = []
    real = core.analyse
    monkeypatch.setattr(core, "analyse", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    plan = quiet_muplify(model, base_width=base).plan
    assert plan.width == wide
    assert plan[hidden].role == "hidden" and plan[output].role == "output"
    assert seen[0].params[output].decided_by == "graph"


class TwoLayer(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.a, self.b = nn.Linear(8, d), nn.Linear(d, d)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_width_argument_rescues_an_output_of_the_width_size():
    wa = analysis(TwoLayer(), X8)
    assert wa.params["b.weight"].decided_by.startswith("guess:")  # an unnamed output of the width's size
    with pytest.warns(UserWarning, match=r"guessed the role of 2 parameter\(s\): b\.weight, b\.bias"):
        mu = muplify(TwoLayer(), base_width=32, example_inputs=(X8,))
    assert mu.plan["b.weight"].role == "output"
    wa = analysis(TwoLayer(), X8, width=64)
    assert wa.params["b.weight"].decided_by == "graph" and wa.width_source == "width="
    mu = quiet_muplify(TwoLayer(), base_width=32, width=64, example_inputs=(X8,))
    assert mu.plan["b.weight"].role == "hidden"


def test_width_argument_wins_over_conventions_of_the_same_size():
    """T5-like: inner dim = heads * d_kv has d_model's size; width= makes every non-fixed dim of that size scale."""
    _, wa = analysis_of("hf_t5", 64, width=64)
    assert wa.width_source == "width=" and wa.width_size == 64
    assert wa.params["encoder.block.0.layer.0.SelfAttention.q.weight"].axis_exprs == [wa.width_symbol] * 2


# ------------------------------------------------------------------------------------------------ 3. the width
def test_declared_width_beats_the_most_used_dim(monkeypatch):
    """EfficientNet-style stages w, 1.5w, 2.5w: the dim most axes use is 2.5w; the model's first stage is w."""
    model, args, _ = build("timm_efficientnet", 32)
    declared = analysis(model, *args)
    assert declared.width_size == 32 and declared.width_source.startswith("timm feature_info")
    import muplify.capture as cap_mod

    monkeypatch.setattr(cap_mod, "model_hints", lambda m: cap_mod.ModelHints())
    guessed = analysis(model, *args)
    assert guessed.width_source == "most-used" and guessed.width_size != 32
    assert {s.size for s in declared.scaling_dims} == {s.size for s in guessed.scaling_dims}


def test_scaling_dims_are_listed_with_expressions():
    _, wa = analysis_of("hf_llama", 64)
    w = wa.width_symbol
    dims = {(s.size, s.expr) for s in wa.scaling_dims}
    assert {(64, w), (32, w / 2), (176, 11 * w / 4)} == dims  # hidden, k/v projections (GQA), intermediate
    assert wa.scaling_dims[0].why == "width" and wa.scaling_dims[0].size == 64
    assert all(s.examples and s.param_axes > 0 for s in wa.scaling_dims)


def test_warns_once_when_the_width_is_the_most_used_guess():
    model, args, _ = build("gpt_untied", 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        muplify(model, base_width=32, example_inputs=args)
    msgs = [str(w.message) for w in caught if "most parameter axes use" in str(w.message)]
    assert len(msgs) == 1 and "[192, 256]" in msgs[0]
    for kw in ({"width": 64}, {}):  # width= given, or a model declaring its width: no warning
        m = build("gpt_untied", 64)[0] if kw else build("hf_gpt2", 64)[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            muplify(m, base_width=32, example_inputs=build("gpt_untied", 64)[1], **kw)
        assert not [w for w in caught if "most parameter axes use" in str(w.message)]


@pytest.mark.parametrize("name", ["hf_llama", "timm_resnet", "hf_mixtral"])
def test_two_analyses_compare_axis_by_axis(name):
    """The analysis of a model at two widths agrees, axis by axis, with the two-width shape diff."""
    base, wide = widths_for(name)
    tables = []
    for w in (base, wide):
        model, args, kwargs = build(name, w)
        tables.append(analysis(model, *args, **kwargs).axis_table())
    assert tables[0].keys() == tables[1].keys()
    truth = infinite_axes(name, base, wide)
    for (p, a), (size, scales) in tables[1].items():
        if p in truth:
            assert truth[p][a] == (size != tables[0][(p, a)][0]), (p, a)
            assert scales == truth[p][a] or size == 1, (p, a)


# ------------------------------------------------------------------------------------------------ 4. uses
def test_functional_readout_keeps_its_readout_treatment():
    model, wa = analysis_of("functional_readout", 64)
    args = build("functional_readout", 64)[1]
    assert all(p.decided_by == "graph" for p in wa.params.values())
    plan = quiet_muplify(model, base_width=32, example_inputs=args).plan
    assert plan["unembed"].role == "output" and plan["w_in"].role == "hidden" and plan["emb"].role == "input"
    # no module boundary carries the readout's input (the model is one module): TP-V's Table-3 form, the readout
    # multiplier 1/m_in absorbed into the weight's init and learning rate
    assert not [f for f in plan.forward if f.param == "unembed"]
    assert plan.rules()["unembed"].absorbed == 0.5 and plan["unembed"].lr_mult["adam"] == 0.5
    mu = quiet_muplify(build("functional_readout", 64)[0], base_width=32, example_inputs=args)
    assert torch.isfinite(mu(*args)).all()


@pytest.mark.parametrize("name,param,role", [
    ("weight_norm", "conv2.parametrizations.weight.original1", "hidden"),
    ("weight_norm", "conv2.parametrizations.weight.original0", "vector"),
    ("weight_norm", "head.weight_v", "output"),
    ("lstm_lm", "rnn.weight_hh_l1", "hidden"),
    ("gru_lm", "rnn.weight_ih_l1_reverse", "hidden"),
    ("relpos_mask_token", "rel_table", "fixed"),
    ("relpos_mask_token", "rel_proj.weight", "input"),
    ("relpos_mask_token", "mask_token", "vector"),
    ("loop_moe", "w1", "hidden"),
    ("bmm_moe", "w_up", "hidden"),
    ("hf_gpt_oss", "model.layers.0.mlp.experts.gate_up_proj_bias", "input"),
    ("hf_deberta_v2", "deberta.encoder.rel_embeddings.weight", "input"),
])
def test_uses_that_used_to_be_shape_guesses(name, param, role):
    base, wide = widths_for(name)
    model, args, kwargs = build(name, wide)
    wa = analysis(model, *args, **kwargs)
    assert wa.params[param].decided_by == "graph", wa.params[param].decided_by
    plan = quiet_muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs).plan
    assert plan[param].role == role


def test_unused_mask_token_is_a_marked_guess():
    model, args, _ = build("relpos_mask_token", 64)
    wa = analysis(model, *args)  # no mask: the torch.where branch is not captured
    assert wa.params["mask_token"].decided_by.startswith("guess: not used")
    with pytest.warns(UserWarning, match=r"guessed the role of 1 parameter\(s\): mask_token"):
        muplify(model, base_width=32, example_inputs=args)


class UnknownOp(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.a, self.centers, self.out = nn.Linear(8, d), nn.Parameter(torch.randn(d, d)), nn.Linear(d, 3)

    def forward(self, x):
        return self.out(torch.cdist(self.a(x), self.centers))


def test_parameter_used_only_by_an_op_without_rule_is_a_marked_guess():
    wa = analysis(UnknownOp(), X8)
    assert wa.params["centers"].decided_by.startswith("guess: used only by ops without a shape rule (aten.cdist")
    with pytest.warns(UserWarning, match="centers"):
        muplify(UnknownOp(), base_width=32, example_inputs=(X8,))


# ------------------------------------------------------------------------------------------------ 5. grouped convs
class GroupedCNN(nn.Module):
    """Two stages (w, 2w) of 3x3 grouped convs: ``per_group`` fixed (RegNet) or ``groups`` fixed (ResNeXt)."""

    def __init__(self, w: int = 32, style: str = "group_width", stages: int = 2):
        super().__init__()
        layers, c_in = [nn.Conv2d(3, w, 3, padding=1)], w
        for k in range(stages):
            c = w * 2 ** k
            groups = c // 8 if style == "group_width" else 4
            layers += [nn.Conv2d(c_in, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1, groups=c)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("style,role", [("group_width", "vector"), ("groups", "hidden")])
def test_grouped_conv_group_width_or_group_count(style, role):
    oracle = oracle_roles(lambda w: GroupedCNN(w, style), 32, 64)
    mu = quiet_muplify(GroupedCNN(64, style), base_width=32, example_inputs=(IMG,))
    assert {n: mu.plan[n].role for n in oracle} == oracle
    assert mu.plan["features.3.weight"].role == role  # the grouped 3x3 conv of stage 1
    assert mu.plan["features.5.weight"].role == "vector"  # depthwise: per-channel filters


def test_grouped_conv_seen_at_one_channel_count_is_a_marked_guess():
    wa = analysis(GroupedCNN(32, "group_width", stages=1), IMG)
    assert wa.params["features.3.weight"].decided_by.startswith("guess: the group width 8")


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
            "import torch\nfrom test_analysis_issue8 import DataDependent, X8\nfrom muplify.capture import capture\n"
            "try:\n    capture(DataDependent(), (X8,))\nexcept Exception as e:\n    print(len(str(e).splitlines()))\n")
    here = os.path.dirname(os.path.abspath(__file__))
    code = code.format(root=os.path.dirname(here), tests=here)
    env = dict(os.environ, MUPLIFY_DEBUG="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert int(out.stdout.strip().splitlines()[-1]) > 20, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ spy on core
def test_headline_call_uses_the_analysis_fields(monkeypatch):
    """plan.width is the analysis' width (core reads WidthAnalysis.width_size)."""
    seen = []
    real = core.analyse
    monkeypatch.setattr(core, "analyse", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model, _, _ = build("hf_qwen2_moe", 64)
    plan = quiet_muplify(model, base_width=32).plan
    assert plan.width == seen[0].width_size == 64 and seen[0].width_source == "config.hidden_size"
    assert isinstance(seen[0].scaling_dims[0].expr, sympy.Expr)


def test_expert_stacks_gathered_per_token_are_hidden(monkeypatch):
    """transformers' batched_mm experts: gate_up_proj[expert_ids] (a matrix per token) then torch.bmm."""
    import transformers

    def make(w):
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            vocab_size=128, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=1, num_attention_heads=w // 16,
            num_key_value_heads=w // 32, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            max_position_embeddings=32, experts_implementation="batched_mm"))

    oracle = oracle_roles(make, 32, 64)
    seen = []
    real = core.analyse
    monkeypatch.setattr(core, "analyse", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    mu = quiet_muplify(make(64), base_width=32)
    assert {n: mu.plan[n].role for n in oracle} == oracle
    stack = seen[0].params["model.layers.0.mlp.experts.gate_up_proj"]
    assert stack.axis_exprs[0] == 4 and stack.decided_by == "graph"
    assert mu.plan["model.layers.0.mlp.experts.gate_up_proj"].role == "hidden"


class PartialRotaryQNorm(nn.Module):
    """Attention with a per-head q/k RMSNorm (head_dim 16, fixed) and rotary on 4 of the 16 channels: the rotated
    and the passed slices are concatenated back, which must be the head_dim again."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.h = d // 16
        self.embed, self.q, self.k, self.v, self.o = (nn.Embedding(100, d), nn.Linear(d, d), nn.Linear(d, d),
                                                      nn.Linear(d, d), nn.Linear(d, d))
        self.q_norm, self.k_norm = nn.RMSNorm(16), nn.RMSNorm(16)
        self.readout = nn.Linear(d, 100)

    def rotate(self, x):
        rot, rest = x[..., :4], x[..., 4:]
        rot = torch.cat([-rot[..., 2:], rot[..., :2]], dim=-1)
        return torch.cat([rot, rest], dim=-1)

    def forward(self, idx):
        x = self.embed(idx)
        B, T, _ = x.shape
        q = self.rotate(self.q_norm(self.q(x).view(B, T, self.h, 16)).transpose(1, 2))
        k = self.rotate(self.k_norm(self.k(x).view(B, T, self.h, 16)).transpose(1, 2))
        v = self.v(x).view(B, T, self.h, 16).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        return self.readout(x + self.o(y))


def test_partial_rotary_slices_reassemble_the_head_dim():
    oracle = oracle_roles(PartialRotaryQNorm, 32, 64)
    mu = quiet_muplify(PartialRotaryQNorm(64), base_width=32)
    assert {n: mu.plan[n].role for n in oracle} == oracle
    assert mu.plan["q_norm.weight"].role == "fixed" and mu.plan["k_norm.weight"].role == "fixed"


# ------------------------------------------------------------------- found on models outside the zoo (general fixes)
class NoGradRouterMoE(nn.Module):
    """A router whose logits enter a ``torch.no_grad()`` block (PhiMoE's sparsemixer computes its mask there):
    torch.export turns the block into a subgraph whose placeholder carries the outer value's name."""

    def __init__(self, d: int = 64, n_experts: int = 3):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.router = nn.Linear(d, n_experts, bias=False)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        x = self.inp(x)
        logits = self.router(x)
        with torch.no_grad():
            top, _ = logits.max(dim=-1, keepdim=True)
            drop = (top - logits) > 0.5
        gates = logits.masked_fill(drop, float("-inf")).softmax(-1)
        choice = gates.max(dim=-1).values
        return self.down(F.gelu(self.up(x))) * choice[..., None]


def test_router_logits_entering_a_no_grad_block_stay_linked_to_the_router():
    mu = quiet_muplify(NoGradRouterMoE(), base_width=32, example_inputs=(torch.randn(2, 5, 8),))
    assert mu.plan["router.weight"].role == "output"
    assert mu.plan["router.weight"].fan_out == 3


def test_phimoe_router_is_output_like():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.PhimoeConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=4, num_local_experts=3,
                                    num_experts_per_tok=2, max_position_embeddings=32, bos_token_id=1,
                                    eos_token_id=2, pad_token_id=0)
    mu = quiet_muplify(transformers.PhimoeForCausalLM(cfg), base_width=32)
    assert mu.plan["model.layers.0.mlp.router.weight"].role == "output"
    assert mu.plan["model.layers.0.mlp.experts.gate_up_proj"].role == "hidden"


def _relative_attention_lm(kind: str, width: int):
    import transformers

    common = dict(vocab_size=128, d_model=width, n_head=width // 16, d_inner=4 * width)
    if kind == "xlnet":
        return transformers.XLNetLMHeadModel(transformers.XLNetConfig(n_layer=1, d_head=16, dropout=0.0, **common))
    return transformers.FunnelForMaskedLM(transformers.FunnelConfig(
        block_sizes=[1, 1], d_head=16, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **common))


@pytest.mark.parametrize("kind, proj", [("xlnet", "transformer.layer.0.rel_attn.o"),
                                        ("funnel", "funnel.encoder.blocks.0.0.attention.r_kernel")])
def test_heads_times_head_dim_fans_scale_linearly(kind, proj):
    """XLNet/Funnel store projections as (d_model, n_head, d_head) and contract heads x head_dim in einsums, with no
    attention op to fix head_dim: the fan must be w (heads scale, head_dim fixed), never w**2, and the plan says so.
    Funnel's per-head segment table (2, n_head, d_head) is split into single elements: its segment axis is fixed."""
    pytest.importorskip("transformers")
    mu = quiet_muplify(_relative_attention_lm(kind, 64), base_width=32, example_kwargs={
        "input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))})
    w = mu.plan.width_symbol
    fans = {mu.plan[proj].fan_in, mu.plan[proj].fan_out}
    assert fans == {w}, fans
    assert any("would all scale" in n and "head_scaling='heads'" in n for n in mu.plan.notes), mu.plan.notes
    assert sorted(size for size, _expr, _n in mu.plan.scaling_dims) == [4, 64, 256]
    if kind == "funnel":
        seg = mu.plan["funnel.encoder.blocks.0.0.attention.seg_embed"]
        assert (seg.fan_in, seg.fan_out, seg.role) == (16, 2, "fixed")


class TimestepConditioned(nn.Module):
    """DiT/diffusion-style conditioning: sinusoidal features of a scalar timestep, built in the forward from
    ``arange(16)``, enter a Linear(32, w); nothing but that arange fixes the 32."""

    def __init__(self, w: int = 64):
        super().__init__()
        self.inp = nn.Linear(6, w)
        self.t_mlp = nn.Linear(32, w)
        self.hidden = nn.Linear(w, w)
        self.out = nn.Linear(w, 3)

    def forward(self, x, t):
        freqs = torch.exp(-torch.arange(16, dtype=torch.float32) / 16)
        tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
        return self.out(F.silu(self.hidden(F.silu(self.inp(x) + self.t_mlp(tf)))))


def test_axes_of_tensors_the_forward_creates_are_fixed():
    mu = quiet_muplify(TimestepConditioned(), base_width=32, example_inputs=(torch.randn(2, 6), torch.rand(2)))
    t_mlp = mu.plan["t_mlp.weight"]
    assert (t_mlp.role, t_mlp.fan_in, t_mlp.fan_out) == ("input", 32, mu.plan.width_symbol)
    assert t_mlp.decided_by.startswith("guess") and "built in the forward" in t_mlp.decided_by
    assert [size for size, _e, _n in mu.plan.scaling_dims] == [64]


def test_reshaped_dim_with_two_scaling_factors_scales_linearly():
    """timm CaiT's talking-heads attention mixes the heads with Linear(heads, heads): no attention op fixes head_dim,
    so (…, 3w) -> (…, 3, heads, head_dim) had two scaling factors and qkv's fan_out read 3*w**2/64."""
    from muplify_dev.zoo import ensure_torchvision

    ensure_torchvision()
    import timm

    model = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=1,
                              num_heads=4, num_classes=10)
    mu = quiet_muplify(model, base_width=32)
    w = mu.plan.width_symbol
    assert mu.plan["blocks.0.attn.qkv.weight"].fan_out == 3 * w
    assert not any("**" in str(expr) for _s, expr, _n in mu.plan.scaling_dims), mu.plan.scaling_dims
    assert any("reshaped dim" in n and "[16] fixed" in n for n in mu.plan.notes), mu.plan.notes


def test_embedding_concatenated_into_the_width_is_a_named_guess():
    """MobileBERT's readout multiplies by cat([word_embeddings.T (embedding_size), dense.weight (hidden - e)]): with
    e fixed the other part is w - e, which a proportional expression cannot state, so reading e as scaling is a
    guess that must be named (base= gets it right)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MobileBertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, embedding_size=24, intra_bottleneck_size=32,
                                        true_hidden_size=32, max_position_embeddings=32)
    with pytest.warns(UserWarning, match="mobilebert.embeddings.word_embeddings.weight"):
        mu = muplify(transformers.MobileBertForMaskedLM(cfg), base_width=32)
    assert "concatenated into a scaling dim" in mu.plan["mobilebert.embeddings.word_embeddings.weight"].decided_by
    assert mu.plan["mobilebert.encoder.layer.0.attention.self.query.weight"].decided_by == "graph"
