"""Issue 20: the shallow twin (muplify/twin) gives the plan the full capture gives, restores the model, and falls back
(with the reason in plan.notes) where blocks are not interchangeable.

The zoo's models have 1-2 layers, too few for a stack; :func:`deepened` builds every zoo entry with 3x its layers
(HF config layer counts, timm depth/depths, torch.nn transformer layers, muplify.models GPT/MLP), so that every
stack the twin shortens is compared with the full capture.  The whole zoo runs when ``MUPLIFY_SLOW=1`` (about
3-5 minutes on 2 cores); by default a subset spanning the kinds of stack (dense, MoE, hybrid, encoder-decoder,
timm, torch.nn, hand-written) runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings

import pytest
import torch
import torch.nn as nn

import muplify.core as core
from muplify import analyze, muplify
from muplify.twin import find_stacks, twin_of
from muplify_dev.zoo import ZOO, ZOO_NAMES, build, widths_for

FACTOR = 3
_LAYER_KEYS = {"num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers", "encoder_layers",
               "decoder_layers"}


_DEEPENED: dict[int, tuple] = {}  # id(config) -> (config, keys already multiplied); the config held so ids stay unique
_ACTIVE = [False]  # wrappers captured by a config class created inside deepened() pass values through afterwards


@contextlib.contextmanager
def deepened(monkeypatch_ctx=None):
    """Every model built inside has FACTOR times its layers (each config key multiplied once per config object).

    transformers' strict config classes capture their base class's ``__setattr__`` when the class is created (on
    first import), so the wrapper goes on PreTrainedConfig *and* on every config class already imported, and it
    only multiplies while the context is active (a class first imported inside keeps a pass-through)."""
    import transformers

    _DEEPENED.clear()
    mp = pytest.MonkeyPatch()

    def wrap(real):
        def setattr_(self, key, value):
            if _ACTIVE[0] and key in _LAYER_KEYS and isinstance(value, int) and not isinstance(value, bool) and \
                    value > 0:
                done = _DEEPENED.setdefault(id(self), (self, set()))[1]
                if key not in done:
                    done.add(key)
                    value = value * FACTOR
            real(self, key, value)
        return setattr_

    base = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig
    todo, seen = [base], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if "__setattr__" in cls.__dict__:
            mp.setattr(cls, "__setattr__", wrap(cls.__dict__["__setattr__"]))
        todo.extend(cls.__subclasses__())
    _ACTIVE[0] = True
    try:
        import timm
        real_create = timm.create_model

        def create(name, *a, **kw):
            if isinstance(kw.get("depth"), int):
                kw["depth"] *= FACTOR
            if isinstance(kw.get("depths"), (tuple, list)):
                kw["depths"] = type(kw["depths"])(d * FACTOR for d in kw["depths"])
            return real_create(name, *a, **kw)
        mp.setattr(timm, "create_model", create)
    except ImportError:
        pass
    for cls, keys in ((nn.TransformerEncoder, ("num_layers",)), (nn.TransformerDecoder, ("num_layers",)),
                      (nn.Transformer, ("num_encoder_layers", "num_decoder_layers"))):
        real_init = cls.__init__

        def init(self, *a, _real=real_init, _keys=keys, **kw):
            for k in _keys:
                if isinstance(kw.get(k), int):
                    kw[k] *= FACTOR
            _real(self, *a, **kw)
        mp.setattr(cls, "__init__", init)
    import muplify.models as mm
    for cls, key in ((mm.GPT, "n_layer"), (mm.MLP, "depth")):
        real_init = cls.__init__

        def init(self, *a, _real=real_init, _key=key, **kw):
            if isinstance(kw.get(_key), int):
                kw[_key] = kw[_key] * FACTOR if _key == "n_layer" else kw[_key] + FACTOR
            _real(self, *a, **kw)
        mp.setattr(cls, "__init__", init)
    try:
        yield
    finally:
        _ACTIVE[0] = False
        _DEEPENED.clear()
        mp.undo()


def _facts(plan) -> dict:
    """Everything the plan says, notes with the twin's own lines dropped and counts blanked (a width-analysis note
    counts the fans it saw: the twin sees fewer)."""
    d = plan.to_dict()
    d["notes"] = [re.sub(r"\d+", "N", n) for n in d["notes"] if not n.startswith("capture: ")]
    d["warnings"] = list(plan.warnings)
    d["options"].pop("capture")  # how the facts were captured is the one option the two routes differ in
    for a in d["attention"]:  # why a query site is missing names a graph node, numbered by the graph's size
        a["missing"] = re.sub(r"'[a-z_]+_\d+'", "'node'", a["missing"])
    return d


def _compare(name: str, **kw):
    base, width = widths_for(name)
    with deepened():
        torch.manual_seed(0)
        try:
            model, args, kwargs = build(name, width)
        except Exception as e:  # noqa: BLE001 - the config validates per-layer lists (layer_types) against the layer count
            pytest.skip(f"{name} cannot be built with {FACTOR}x its layers by this test: {e}")
    stacks, refusals = find_stacks(model)
    call = dict(example_inputs=args, example_kwargs=kwargs, **kw)
    before = {n: p for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            full = analyze(model, base, capture="full", **call)
        except Exception as e:  # noqa: BLE001 - a model the analysis refuses (e.g. base_depth without branches)
            with pytest.raises(type(e)):
                analyze(model, base, **call)
            return None
        shallow = analyze(model, base, **call)
    assert {n: p for n, p in model.named_parameters()} == before  # the same modules, in the same places
    a, b = _facts(shallow), _facts(full)
    for key in b:
        assert a[key] == b[key], f"{name}: {key} differs"
    return shallow, stacks, refusals


SUBSET = ["gpt_sdpa", "mlp", "torch_transformer_encoder", "hf_llama", "hf_gpt2", "hf_bert", "timm_vit",
          "hf_deepseek_v3", "hf_jamba", "hf_t5", "hf_mixtral"]
NAMES = ZOO_NAMES if os.environ.get("MUPLIFY_SLOW") else [n for n in SUBSET if n in ZOO]


@pytest.mark.parametrize("name", NAMES)
def test_shallow_plan_equals_full_plan(name):
    """Roles, fans, layouts, sites, branches (base_depth), attention, scaling dims and warnings: equal."""
    res = _compare(name, base_depth=2)
    if res is None:
        res = _compare(name)
    shallow, stacks, refusals = res
    if stacks and not refusals:
        assert any(n.startswith("capture: shallow twin") for n in shallow.notes), shallow.notes
    else:
        assert any(n.startswith("capture: full model") for n in shallow.notes), shallow.notes


def test_twin_is_taken_on_llama_and_counts_depth_from_the_full_stack():
    with deepened():
        model, args, kwargs = build("hf_llama", 32)
    assert len(model.model.layers) == 2 * FACTOR
    plan = analyze(model, 16, example_inputs=args, example_kwargs=kwargs, base_depth=1)
    assert plan.options.depth == 2 * FACTOR  # one residual block per layer, every layer counted
    assert plan.blocks == [f"model.layers.{i}" for i in range(2 * FACTOR)]
    assert any("model.layers: 6 blocks as 2" in n for n in plan.notes), plan.notes
    assert plan.capture_seconds is not None and plan.capture_seconds > 0


class Block(nn.Module):
    def __init__(self, w, idx=None, kind="a"):
        super().__init__()
        self.fc = nn.Linear(w, w) if kind == "a" else nn.Sequential(nn.Linear(w, w), nn.Tanh())
        if idx is not None:
            self.idx = idx

    def forward(self, x):
        y = self.fc(x)
        if getattr(self, "idx", 0) % 2:  # forward depends on the index: not interchangeable
            y = y * 0.5
        return x + y


class Net(nn.Module):
    def __init__(self, w=32, n=6, idx=False, pattern="a"):
        super().__init__()
        self.inp = nn.Linear(8, w)
        self.blocks = nn.ModuleList(Block(w, i if idx else None, pattern[i % len(pattern)]) for i in range(n))
        self.out = nn.Linear(w, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def test_interleaved_kinds_keep_two_periods():
    net = Net(n=8, pattern="ab")
    (stack,), refusals = find_stacks(net)
    assert not refusals and stack.path == "blocks" and stack.kept == [0, 1, 2, 3]
    assert [stack.rep(i) for i in range(8)] == [0, 1, 2, 3, 2, 3, 2, 3]
    x = torch.randn(2, 8)
    a = analyze(net, 16, example_inputs=(x,), base_depth=1)
    b = analyze(net, 16, example_inputs=(x,), base_depth=1, capture="full")
    assert _facts(a) == _facts(b)
    assert a.options.depth == 8


def test_index_dependent_blocks_fall_back_with_the_reason():
    net = Net(n=6, idx=True)
    stacks, refusals = find_stacks(net)
    assert not stacks and "'idx'" in refusals[0]
    plan = analyze(net, 16, example_inputs=(torch.randn(2, 8),))
    assert any(n.startswith("capture: full model") and "idx" in n for n in plan.notes), plan.notes


def test_shared_block_falls_back():
    net = Net(n=4)
    net.blocks[3] = net.blocks[1]
    plan = analyze(net, 16, example_inputs=(torch.randn(2, 8),))
    assert any("same block object" in n for n in plan.notes), plan.notes


def test_model_restored_when_capture_raises(monkeypatch):
    net = Net(n=6)
    modules, children = net.blocks._modules, list(net.blocks)
    seen = []

    def boom(model, *a, **k):
        seen.append(len(model.blocks))
        raise RuntimeError("injected")
    monkeypatch.setattr(core, "_capture", boom)
    with pytest.raises(RuntimeError, match="injected"):
        analyze(net, 16, example_inputs=(torch.randn(2, 8),))
    assert seen == [2, 6]  # the twin, then the full model (which raises the error to the user)
    assert net.blocks._modules is modules and list(net.blocks) == children


def test_twin_context_restores_on_error():
    net = Net(n=5)
    (stack,), _ = find_stacks(net)
    modules = net.blocks._modules
    with pytest.raises(ValueError):
        with twin_of([stack]):
            assert len(net.blocks) == 2
            raise ValueError
    assert net.blocks._modules is modules and len(net.blocks) == 5


def test_capture_option_is_checked_and_muplify_takes_it():
    net = Net(n=4)
    with pytest.raises(Exception, match="capture must be .shallow. or .full."):
        analyze(net, 16, example_inputs=(torch.randn(2, 8),), capture="deep")
    mu = muplify(net, 16, example_inputs=(torch.randn(2, 8),), capture="full")
    assert not any(n.startswith("capture: shallow") for n in mu.plan.notes)
