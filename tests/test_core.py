"""muplify() the call (muplify/core.py): symbolic fans, training eager and compiled, inductor keeps the multipliers,
pickle/deepcopy, overrides, meta-device plans, the printed plan.  Roles vs the oracle and base-width identity over the
whole zoo are in test_zoo_wide.py."""
from __future__ import annotations

import copy

import pytest
import sympy
import torch

from muplify import muplify
from muplify_dev.zoo import CORE_NAMES, build, widths_for


def _loss(out):
    if isinstance(out, tuple):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    return out.float().pow(2).mean()


@pytest.mark.parametrize("name", CORE_NAMES)
def test_fans_are_sympy_in_width(name):
    base, wide = widths_for(name)
    model, args, kwargs = build(name, wide)
    mu = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs)
    w = mu.plan.width_symbol
    for n, p in mu.plan.items():
        assert isinstance(p.fan_in, sympy.Expr) and isinstance(p.fan_out, sympy.Expr)
        if p.role == "hidden":
            assert p.fan_in.has(w) and p.fan_out.has(w), n
            assert p.width_mult_in == pytest.approx(wide / base)
        if p.role == "input":
            assert not p.fan_in.has(w) and p.fan_out.has(w), n


@pytest.mark.parametrize("name", CORE_NAMES)
def test_trains_eager_and_compiled(name):
    base, wide = widths_for(name)
    torch.manual_seed(0)
    model, args, kwargs = build(name, wide)
    mu = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs)
    eager_out = _loss(mu(*args, **kwargs)).item()
    compiled = torch.compile(mu, backend="aot_eager")
    assert _loss(compiled(*args, **kwargs)).item() == pytest.approx(eager_out, rel=1e-5)
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    losses = []
    for _ in range(3):
        loss = _loss(compiled(*args, **kwargs))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] != losses[0]


@pytest.mark.parametrize("name", ["gpt_sdpa", "hf_gpt2"])
def test_inductor_keeps_multipliers(name):
    """torch.compile(mu) with inductor computes the μP function, not the original one."""
    base, wide = widths_for(name)
    torch.manual_seed(0)
    model, args, kwargs = build(name, wide)
    ref = copy.deepcopy(model)
    mu = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs)
    assert any(f.factor != 1.0 for f in mu.plan.forward)
    out_mu = _loss(mu(*args, **kwargs))
    out_ref = _loss(ref(*args, **kwargs))
    compiled = _loss(torch.compile(mu)(*args, **kwargs))
    assert compiled.item() == pytest.approx(out_mu.item(), rel=1e-4)
    assert abs(out_mu.item() - out_ref.item()) > 1e-3 * abs(out_ref.item())


def test_pickle_and_deepcopy_stay_mup():
    import io

    from muplify import is_muplified

    model, args, kwargs = build("gpt_sdpa", 64)
    mu = muplify(model, base_width=32, example_inputs=args)
    out = mu(*args)
    buf = io.BytesIO()
    torch.save(mu, buf)
    buf.seek(0)
    for other in (torch.load(buf, weights_only=False), copy.deepcopy(mu)):
        assert is_muplified(other) and type(other).__name__ == "MuGPT"
        assert other.plan.to_json() == mu.plan.to_json()
        assert torch.equal(other(*args), out)


def test_overrides_edit_the_plan_before_the_rewrite():
    model, args, kwargs = build("gpt_untied", 64)
    mu = muplify(model, base_width=32, example_inputs=args,
                 overrides={"blocks.*.mlp.2.weight": {"role": "input"}, "wpe.weight": {"lr_mult": 0.5}})
    assert mu.plan["blocks.0.mlp.2.weight"].role == "input"
    assert mu.plan["blocks.0.mlp.2.weight"].lr_mult["adam"] == 1.0
    # lr_mult= is a factor on top of μP: wpe is an input (Adam x1, SGD x m_out = 2)
    assert (mu.plan["wpe.weight"].lr_mult["adam"], mu.plan["wpe.weight"].lr_mult["sgd"]) == (0.5, 1.0)
    opt = mu.optimizer(torch.optim.Adam, lr=1.0)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert group_of[id(mu.wpe.weight)]["lr_mult"] == 0.5


def test_meta_device_model_gives_the_same_plan():
    model, args, _ = build("hf_llama", 64)
    plan_cpu = muplify(model, base_width=32, example_inputs=args, init=None).plan
    with torch.device("meta"):
        meta_model, meta_args, _ = build("hf_llama", 64)
    mu = muplify(meta_model, base_width=32, example_inputs=tuple(a.to("meta") for a in meta_args), init=None)
    assert all(p.is_meta for p in mu.parameters())
    assert {n: (p.role, str(p.fan_in), str(p.fan_out)) for n, p in mu.plan.items()} == \
        {n: (p.role, str(p.fan_in), str(p.fan_out)) for n, p in plan_cpu.items()}


def test_plan_prints_as_a_table():
    model, args, _ = build("hf_gpt2", 64)
    text = str(muplify(model, base_width=32, example_inputs=args).plan)
    assert "transformer.wte.weight (= lm_head.weight)" in text
    assert "readout" in text and "x0.5 on the input of 'lm_head'" in text
    for role in ("input", "hidden", "output", "vector"):
        assert f" {role} " in text
