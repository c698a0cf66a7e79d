"""Tests of the test infrastructure: the model zoo, the role oracle and the torchvision stand-in."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn as nn

import conftest
from muplify_dev.oracle import canonical_names, infinite_axes, oracle_role, oracle_roles, param_layout
from muplify_dev.zoo import CORE_NAMES, ZOO, ZOO_NAMES, build, widths_for

ROLES = {"input", "hidden", "output", "vector", "fixed"}


def _logits(out) -> torch.Tensor:
    """The model's main output: ``logits`` if it has them, else its first floating tensor (CLIP's
    logits_per_image, a tuple's first element)."""
    if hasattr(out, "logits"):
        return out.logits
    import torch.utils._pytree as pytree

    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())


# ------------------------------------------------------------------------------------------------ the zoo
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_builds_and_runs_at_two_widths(name):
    n_params = []
    for w in widths_for(name):
        model, args, kwargs = build(name, w)
        assert isinstance(model, nn.Module) and isinstance(args, tuple) and isinstance(kwargs, dict)
        with torch.no_grad():
            y = _logits(model(*args, **kwargs))
        assert y.shape[0] == 2 and torch.isfinite(y).all(), name
        n_params.append(sum(p.numel() for p in model.parameters()))
    assert n_params[1] > n_params[0]


def test_registry_shape():
    assert ZOO_NAMES == list(ZOO) and len(set(ZOO_NAMES)) == len(ZOO_NAMES)
    assert {"gpt_sdpa", "gpt_manual", "gpt_untied", "mlp", "cnn", "torch_transformer_encoder", "hf_gpt2", "hf_llama",
            "hf_bert", "timm_vit", "timm_resnet"} <= set(ZOO_NAMES)
    for name in ZOO_NAMES:
        w0, w1 = widths_for(name)
        assert w1 == 2 * w0 and w0 % ZOO[name].width_step == 0


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_meta_build_gives_meta_model_and_inputs(name):
    with torch.device("meta"):
        model, args, kwargs = build(name)
    assert all(p.is_meta for p in model.parameters())
    assert all(a.is_meta for a in args if isinstance(a, torch.Tensor))
    assert all(v.is_meta for v in kwargs.values() if isinstance(v, torch.Tensor))


def test_heads_grow_head_dim_fixed():
    m, _, _ = build("hf_llama", 64)
    attn = m.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (64, 32, 64)
    assert m.config.head_dim == 16 and m.config.num_key_value_heads == 2 and m.config.intermediate_size == 176
    g, _, _ = build("hf_gpt2", 64)
    assert g.config.n_head == 4
    v, _, _ = build("timm_vit", 64)
    assert v.blocks[0].attn.num_heads == 4 and v.blocks[0].attn.head_dim == 16
    e, _, _ = build("torch_transformer_encoder", 64)
    assert e.encoder.layers[0].self_attn.num_heads == 4


def test_timm_resnet_width_knob():
    m, _, _ = build("timm_resnet", 16)
    assert m.conv1.out_channels == 16 and m.layer1[0].conv1.in_channels == 16 and m.layer1[0].downsample is None
    assert [getattr(m, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [16, 32, 64, 128]
    assert m.fc.in_features == 128
    r64, _, _ = build("timm_resnet", 64)  # width 64 is timm's resnet18 untouched
    assert r64.conv1.out_channels == 64 and r64.fc.in_features == 512


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if ZOO[n].tied])
def test_declared_ties_are_real(name):
    model, _, _ = build(name)
    first, *others = ZOO[name].tied
    canon = canonical_names(model)
    assert all(canon[o] == first for o in others)
    assert all(model.get_parameter(o) is model.get_parameter(first) for o in others)


# ------------------------------------------------------------------------------------------------ the oracle
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_oracle_covers_every_model(name):
    roles = oracle_roles(name)
    model, _, _ = build(name)
    assert list(roles) == [n for n, _ in model.named_parameters()]
    assert set(roles.values()) <= ROLES
    # the original eleven have every role; tied models have no separate input layer, feature encoders no readout
    needed = {"input", "hidden", "output", "vector"} if name in CORE_NAMES else {"hidden"}
    assert needed <= set(roles.values()), name


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_infinite_axes_agree_with_mup_package(name):
    from mup.shape import make_base_shapes

    w0, w1 = widths_for(name)
    with torch.device("meta"):
        m0, m1 = build(name, w0)[0], build(name, w1)[0]
    ref = {n: tuple(d.isinf() for d in s) for n, s in make_base_shapes(m0, m1).items()}
    assert infinite_axes(name, w0, w1) == ref


HAND_CHECKED = {
    "gpt_sdpa": {"wte.weight": "output", "lm_head.weight": "output", "wpe.weight": "input",
                 "blocks.0.attn.c_attn.weight": "hidden", "blocks.0.attn.c_attn.bias": "vector",
                 "blocks.1.mlp.2.weight": "hidden", "ln_f.weight": "vector", "ln_f.bias": "vector"},
    "gpt_untied": {"wte.weight": "input", "lm_head.weight": "output"},
    "mlp": {"net.0.weight": "input", "net.0.bias": "vector", "net.2.weight": "hidden", "net.4.weight": "output",
            "net.4.bias": "fixed"},
    "cnn": {"features.0.weight": "input", "features.3.weight": "hidden", "features.4.weight": "vector",
            "classifier.weight": "output", "classifier.bias": "fixed"},
    "torch_transformer_encoder": {"embed.weight": "input", "encoder.layers.0.self_attn.in_proj_weight": "hidden",
                                  "encoder.layers.0.self_attn.in_proj_bias": "vector",
                                  "encoder.layers.0.self_attn.out_proj.weight": "hidden",
                                  "readout.weight": "output", "readout.bias": "fixed"},
    "hf_gpt2": {"transformer.h.0.attn.c_attn.weight": "hidden", "transformer.h.0.mlp.c_proj.weight": "hidden",
                "transformer.wte.weight": "output", "lm_head.weight": "output", "transformer.wpe.weight": "input",
                "transformer.ln_f.weight": "vector"},
    "hf_llama": {"model.embed_tokens.weight": "input", "model.layers.0.self_attn.k_proj.weight": "hidden",
                 "model.layers.0.mlp.down_proj.weight": "hidden", "model.norm.weight": "vector",
                 "lm_head.weight": "output"},
    "hf_bert": {"bert.embeddings.word_embeddings.weight": "output", "cls.predictions.decoder.weight": "output",
                "bert.embeddings.token_type_embeddings.weight": "input", "cls.predictions.bias": "fixed",
                "cls.predictions.transform.dense.weight": "hidden"},
    "timm_vit": {"patch_embed.proj.weight": "input", "patch_embed.proj.bias": "vector", "cls_token": "vector",
                 "pos_embed": "input", "blocks.0.attn.qkv.weight": "hidden", "head.weight": "output",
                 "head.bias": "fixed"},
    "timm_resnet": {"conv1.weight": "input", "bn1.weight": "vector", "layer1.0.conv1.weight": "hidden",
                    "layer2.0.downsample.0.weight": "hidden", "fc.weight": "output", "fc.bias": "fixed"},
}


@pytest.mark.parametrize("name", list(HAND_CHECKED))
def test_oracle_hand_checked_roles(name):
    axes = infinite_axes(name, *widths_for(name))
    model, _, _ = build(name)
    got = {p: oracle_role(model, p, axes) for p in HAND_CHECKED[name]}
    assert got == HAND_CHECKED[name]


def test_infinite_axes_hand_checked():
    g = infinite_axes("hf_gpt2", 32, 64)
    assert g["transformer.h.0.mlp.c_fc.weight"] == (True, True)  # Conv1D (in=w, out=4w)
    assert g["transformer.wte.weight"] == (False, True)  # (vocab, w); lm_head.weight is the same parameter
    assert "lm_head.weight" not in g
    v = infinite_axes("timm_vit", 32, 64)
    assert v["patch_embed.proj.weight"] == (True, False, False, False)  # (w, 3, 8, 8)
    assert v["pos_embed"] == (False, False, True)
    r = infinite_axes("timm_resnet", 16, 32)
    assert r["conv1.weight"] == (True, False, False, False) and r["fc.weight"] == (False, True)


def test_conv1d_layout_is_in_out():
    from transformers.pytorch_utils import Conv1D

    m = nn.Sequential(Conv1D(nf=32, nx=16), Conv1D(nf=10, nx=32))  # weights (16, 32) and (32, 10): (in, out)
    assert param_layout(m[0], "weight", m[0].weight) == ((0,), (1,))
    axes = {"0.weight": (False, True), "0.bias": (True,), "1.weight": (True, False), "1.bias": (False,)}
    assert [oracle_role(m, n, axes) for n in axes] == ["input", "vector", "output", "fixed"]
    lin = nn.Linear(16, 32)  # the same shapes under nn.Linear's (out, in) layout read the other way round
    assert oracle_role(lin, "weight", (True, False)) == "input"


def test_conv_layouts():
    conv = nn.Conv2d(3, 8, 3)
    assert param_layout(conv, "weight", conv.weight) == ((1, 2, 3), (0,))
    tconv = nn.ConvTranspose2d(8, 3, 3)  # weight (in, out/groups, k, k)
    assert param_layout(tconv, "weight", tconv.weight) == ((0, 2, 3), (1,))
    assert oracle_role(tconv, "weight", (True, False, False, False)) == "output"
    dw = nn.Conv2d(8, 8, 3, groups=8)  # depthwise (C, 1, k, k): per-channel filter
    assert oracle_role(dw, "weight", (True, False, False, False)) == "vector"


def test_oracle_refuses_unknown_layouts():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.mat = nn.Parameter(torch.zeros(4, 4))
            self.tok = nn.Parameter(torch.zeros(1, 1, 4))

    m = Custom()
    assert oracle_role(m, "tok", (False, False, True)) == "vector"
    assert oracle_role(m, "tok", (False, False, False)) == "fixed"
    with pytest.raises(ValueError, match="layout"):
        oracle_role(m, "mat", (True, True))
    with pytest.raises(KeyError):
        oracle_role(m, "nope", (True,))


# ------------------------------------------------------------------------------------------------ torchvision
def _load_standin_misc():
    from muplify_dev import torchvision_shim

    path = os.path.join(torchvision_shim.SHIM_DIR, "torchvision", "ops", "misc.py")
    spec = importlib.util.spec_from_file_location("_standin_tv_ops_misc", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_standin_frozen_batchnorm_matches_batchnorm():
    FrozenBatchNorm2d = _load_standin_misc().FrozenBatchNorm2d
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, strict load passes
    assert not list(frozen.parameters())
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(frozen.train()(x), bn(x))
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_timm_gets_a_working_torchvision():
    import timm.layers.norm_act as norm_act

    assert norm_act.FrozenBatchNorm2d(4)(torch.ones(1, 4, 2, 2)).shape == (1, 4, 2, 2)
    if conftest.TORCHVISION_SHIM:
        # the stand-in is visible to timm's modules only: transformers' find_spec probe must not see it
        assert importlib.util.find_spec("torchvision") is None
        assert norm_act.FrozenBatchNorm2d.__module__ == "torchvision.ops.misc"
        from timm.data.transforms import MaybeToTensor

        with pytest.raises(ImportError, match="stand-in"):
            MaybeToTensor()
    else:
        import torchvision

        assert not getattr(torchvision, "__muplify_shim__", False)
