"""The width analysis (muplify.width): which dims are finite and which scale, which one is the width, every scaling
dim listed; grouped convs; outputs that must not freeze the width (moved from test_analysis_issue8)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import muplify.core as core
from muplify import muplify
from muplify_dev.hand_written import DLRM, VAE, FiLM
from muplify_dev.oracle import infinite_axes, oracle_roles
from muplify_dev.zoo import build, widths_for

from analysis_support import X8, analysis, analysis_of, quiet_muplify  # noqa: F401


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


def test_the_solver_runs_its_evidence_steps_in_order(monkeypatch):
    """The finiteness decisions are the ordered list ``evidence.STEPS``, each step labelled with a tier the module
    docstring lists: taking the readout step out makes a classifier's classes scale (its readout reads as hidden);
    a step added to the list is run, in its place, with what the earlier steps decided."""
    import muplify.evidence as evidence
    import muplify.width as width_stage
    from muplify.models import MLP

    tiers = {evidence.HARD, evidence.CONVENTION, evidence.READOUT, evidence.SOURCE, evidence.GUESS}
    assert {s.tier for s in evidence.STEPS} == tiers | {"flow", "width"}
    assert all(f"``{t}``" in width_stage.__doc__ for t in tiers)
    names = [s.run.__name__ for s in evidence.STEPS]
    assert names.index("_choose_width") < names.index("_readouts")  # the readouts compare sizes with the width's

    def roles():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {n: p.role for n, p in core.analyze(MLP(16, 64, 10, depth=3), base_width=32).params.items()}

    assert roles()["net.4.weight"] == "output"
    seen = []
    added = evidence.Step(evidence.GUESS, lambda ev: seen.append((ev.g.size[ev.root], sorted(ev.S.finite.values()))))
    monkeypatch.setattr(evidence, "STEPS", tuple(s for s in evidence.STEPS if s.run is not evidence._readouts)
                        + (added,))
    assert roles()["net.4.weight"] == "hidden"  # the classes scale once no step reads them as a readout
    assert seen and seen[0][0] == 64 and not any("readout" in why for why in seen[0][1])


def test_a_returned_latent_narrower_than_the_width_is_a_named_guess():
    """One width reads a VAE's 4-channel latent as w/16 (nothing in the graph fixes it): a named guess on the
    layers that write and read it, in the one warning; base= reads it exactly (fixed: to_lat output-like, from_lat
    input-like), unmarked."""
    x = (torch.randn(2, 3, 16, 16),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = core.analyze(VAE(64), base_width=32, example_inputs=x)
        mu = muplify(VAE(64), base_width=32, example_inputs=x)
    for n in ("to_lat.weight", "from_lat.weight"):
        assert plan[n].decided_by.startswith("guess") and "latent" in plan[n].decided_by, plan[n].decided_by
    assert not plan["e2.weight"].decided_by.startswith("guess")
    assert any("guessed the role" in str(w.message) and "from_lat.weight" in str(w.message) for w in caught)
    exact = quiet_muplify(VAE(64), base=VAE(32), example_inputs=x).plan
    assert (exact["to_lat.weight"].role, exact["from_lat.weight"].role) == ("output", "input")
    assert not any(exact[n].decided_by.startswith("guess") for n in ("to_lat.weight", "from_lat.weight"))
    assert mu.plan["to_lat.weight"].role == "hidden"


def test_an_embedding_of_its_own_size_feeding_a_layer_is_a_named_guess():
    """One width reads a 16-wide conditioning embedding as w/4: named as a guess on the embedding and the layer that
    reads it; base= reads it fixed (cond fixed, film input-like), unmarked.  A relative-position bias per head (T5,
    Swin: an embedding whose size is the head count) is not such a guess (the zoo's plans are unchanged)."""
    args = (torch.randn(4, 8), torch.randint(0, 10, (4,)))
    one = core.analyze(FiLM(64), base_width=32, example_inputs=args)
    for n in ("cond.weight", "film.weight"):
        assert one[n].decided_by.startswith("guess") and "conditioning" in one[n].decided_by, one[n].decided_by
    assert not one["hid.weight"].decided_by.startswith("guess")
    exact = core.analyze(FiLM(64), base=FiLM(32), example_inputs=args)
    assert (exact["cond.weight"].role, exact["film.weight"].role) == ("fixed", "input")
    assert not any(exact[n].decided_by.startswith("guess") for n in ("cond.weight", "film.weight"))


def test_embedding_bag_rows_are_fixed_and_its_small_features_a_named_guess():
    """nn.EmbeddingBag has a shape rule (its rows are indexed: fixed); a DLRM's 8-wide tables concatenated with the
    bottom MLP's output into the top MLP read as w/8 at one width, named as a guess on every layer that touches the
    concatenation; base= reads them fixed, unmarked."""
    args = (torch.randn(4, 13), torch.randint(0, 100, (4, 3, 2)))
    one = core.analyze(DLRM(64), base_width=32, example_inputs=args)
    assert not any("embedding_bag" in n for n in one.notes), one.notes
    assert (one["tabs.0.weight"].role, str(one["tabs.0.weight"].fan_in)) == ("input", "100")
    for n in ("tabs.0.weight", "bot.2.weight", "top.0.weight"):
        assert one[n].decided_by.startswith("guess"), (n, one[n].decided_by)
    exact = core.analyze(DLRM(64), base=DLRM(32), example_inputs=args)
    assert [str(exact[n].fan_out) for n in ("tabs.0.weight", "bot.2.weight")] == ["8", "8"]
    assert str(exact["top.0.weight"].fan_in) == "32"
    assert not any(p.decided_by.startswith("guess") for p in exact.params.values())
