"""The policy layer (issue: one μP policy): the μP hyperparameters ``hp``, optimizer families beyond Adam/SGD (Muon,
Adafactor, sign methods, a user-registered family), Adam ε, the combined optimizer, and the μP lint.

Every rule is checked against theory or against the same model with the constants written by hand."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import HyperParams, OptimizerFamily, PlanError, muplify, register_family
from muplify.models import GPT, MLP
from muplify.optim import FAMILIES, OPTIMIZER_FAMILIES, CombinedOptimizer
from muplify_dev.optimizers import Lion

BASE, WIDE = 32, 64
VOCAB, SEQ = 64, 16
HP = {"output_mult": 2.0, "attn_mult": 0.5, "embed_mult": 3.0, "init_mult": {"hidden": 0.5, "input": 2.0},
      "lr_mult": {"input": 4.0, "output": 0.5, "hidden": 2.0, "vector": 0.25}}


def _gpt(width: int, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=VOCAB, d_model=width, n_layer=2, head_dim=16, block_size=SEQ, tie_weights=False, **kw)


def _batch(i: int = 0):
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    return x, torch.roll(x, -1, 1)


def _hand_forward(m: GPT, idx: torch.Tensor, hp: dict) -> torch.Tensor:
    """muplify.models.GPT.forward with the hp constants written by hand (what a user would do at base width)."""
    e = hp.get("embed_mult", 1.0)
    pos = torch.arange(idx.shape[1])
    x = m.wte(idx) * e + m.wpe(pos) * e
    for blk in m.blocks:
        a = blk.attn
        B, T, _ = x.shape
        q, k, v = a.c_attn(blk.ln_1(x)).split(a.n_head * a.head_dim, dim=2)
        q, k, v = (t.view(B, T, a.n_head, a.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hp.get("attn_mult", 1.0) / math.sqrt(a.head_dim))
        x = x + a.c_proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.head_dim))
        x = x + blk.mlp(blk.ln_2(x))
    return m.lm_head(m.ln_f(x) * hp.get("output_mult", 1.0))


def _role_groups(model, plan, lr, hp):
    groups = {}
    for n, p in model.named_parameters():
        groups.setdefault(plan[n].role, []).append(p)
    return [{"params": ps, "lr": lr * hp["lr_mult"].get(r, 1.0)} for r, ps in groups.items()]


# ------------------------------------------------------------------------------------------------ hp
def test_hp_at_base_width_is_the_model_with_constants_written_by_hand():
    ref = _gpt(BASE)
    mu = muplify(copy.deepcopy(ref), base_width=BASE, hp=HP)
    # init_mult: the initial values of each role times its factor, exactly
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.mul_(HP["init_mult"].get(mu.plan[n].role, 1.0))
    for (n, a), (_, b) in zip(ref.named_parameters(), mu.named_parameters()):
        assert torch.equal(a, b), n
    opt_ref = torch.optim.AdamW(_role_groups(ref, mu.plan, 1e-3, HP), lr=1e-3, weight_decay=0.1)
    opt_mu = mu.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    for step in range(3):
        x, y = _batch(step)
        l_ref = F.cross_entropy(_hand_forward(ref, x, HP).flatten(0, 1), y.flatten())
        l_mu = F.cross_entropy(mu(x).flatten(0, 1), y.flatten())
        # q × attn_mult vs logits × attn_mult: equal up to rounding
        assert l_mu.item() == pytest.approx(l_ref.item(), rel=1e-6, abs=1e-6), step
        l_ref.backward(); l_mu.backward()  # noqa: E702
        opt_ref.step(); opt_mu.step()  # noqa: E702
        opt_ref.zero_grad(); opt_mu.zero_grad()  # noqa: E702
    for (n, a), (_, b) in zip(ref.named_parameters(), mu.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_hp_keeps_its_meaning_at_other_widths():
    mu = muplify(_gpt(WIDE), base_width=BASE, hp=HP)
    m = WIDE / BASE
    f = {x.reason: x for x in mu.plan.forward}
    assert f["readout"].factor == pytest.approx(HP["output_mult"] / m)  # α_out × the μP 1/m_in
    assert f["attention"].factor == pytest.approx(HP["attn_mult"])  # heads grow: μP leaves attention alone
    assert f["embedding"].factor == pytest.approx(HP["embed_mult"])
    hidden, inp = mu.plan["blocks.0.mlp.0.weight"], mu.plan["wpe.weight"]
    assert hidden.lr_mult["adam"] == pytest.approx(HP["lr_mult"]["hidden"] / m)
    assert hidden.wd_mult["adam"] == pytest.approx(m)  # coupled decay: the μP factor only, not the tuned one
    assert inp.lr_mult["adam"] == HP["lr_mult"]["input"] and inp.lr_mult["sgd"] == HP["lr_mult"]["input"] * m
    ref = _gpt(WIDE)
    # hidden init: fixed-std GPT-2 init → σ/√m (μP) × init_mult
    torch.testing.assert_close(mu.blocks[0].mlp[0].weight, ref.blocks[0].mlp[0].weight * 0.5 / math.sqrt(m))
    torch.testing.assert_close(mu.wpe.weight, ref.wpe.weight * 2.0)
    assert mu.plan.hp == HyperParams.from_dict(HP) and mu.plan.hp.to_dict()["lr_mult"] == HP["lr_mult"]


@pytest.mark.parametrize("hp, match", [
    ({"output_mul": 2.0}, "unknown hp keys"),
    ({"lr_mult": {"hiden": 2.0}}, "unknown roles"),
    ({"output_mult": -1.0}, "finite and > 0"),
    ({"attn_mult": float("nan")}, "finite and > 0"),
    ({"embed_mult": True}, "must be a number"),
    ({"init_mult": {"hidden": 0.0}}, "finite and > 0"),
    ({"lr_mult": 2.0}, "must map roles"),
    ("lr=3", "must be a dict"),
])
def test_bad_hp_is_refused_and_the_model_untouched(hp, match):
    model = _gpt(WIDE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PlanError, match=match):
        muplify(model, base_width=BASE, hp=hp)
    assert type(model) is GPT and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hp_round_trips_through_the_plan_file_and_folds_into_the_export(tmp_path):
    mu = muplify(_gpt(WIDE), base_width=BASE, hp=HP)
    path = str(tmp_path / "plan.json")
    mu.plan.to_json(path)
    again = muplify(_gpt(WIDE, seed=3), plan=path)
    assert again.plan.hp == mu.plan.hp
    assert [(f.reason, f.factor) for f in again.plan.forward] == [(f.reason, f.factor) for f in mu.plan.forward]
    again.load_state_dict(mu.state_dict())
    x, _ = _batch()
    assert torch.equal(again(x), mu(x))
    std = mu.to_standard()  # readout, attention and embedding multipliers folded into weights
    assert type(std) is GPT and not any(m._forward_hooks or m._forward_pre_hooks for m in std.modules())
    torch.testing.assert_close(std(x), mu(x), rtol=1e-5, atol=1e-5)


def _rotate_every_two(x):  # GPT-J / CodeGen / Cohere RoPE: linear in x, built with stack
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class RopeStackAttention(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.e, self.q, self.k, self.v = nn.Embedding(VOCAB, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, VOCAB)
        self.sin = torch.sin(torch.arange(SEQ * 16.0).view(SEQ, 16) / 7)

    def forward(self, idx):
        x = self.e(idx)
        heads = [m(x).view(2, SEQ, -1, 16).transpose(1, 2) for m in (self.q, self.k, self.v)]
        q, k = (t * (1 - self.sin) + _rotate_every_two(t) * self.sin for t in heads[:2])
        return self.out(F.scaled_dot_product_attention(q, k, heads[2]).transpose(1, 2).reshape(2, SEQ, -1))


def _timm_vit(width):
    from muplify_dev.zoo import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=width,
                             depth=1, num_heads=width // 16, num_classes=10)


@pytest.mark.parametrize("case", ["timm_fused_qkv_unbind", "rope_with_stack"])
def test_attn_mult_finds_the_query_through_selections_and_rope(case):
    """attn_mult at the base width equals the model with the query rows of its projection scaled by hand: timm's
    qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)[0] is channels [0, C) of the fused projection;
    GPT-J's rotate_every_two (stack of strided slices) is linear in q."""
    if case == "timm_fused_qkv_unbind":
        model, x, q_rows = _timm_vit(64), torch.randn(2, 3, 32, 32), ("blocks.0.attn.qkv", slice(0, 64))
    else:
        torch.manual_seed(0)
        model, x, q_rows = RopeStackAttention(), _batch()[0], ("q", slice(None))
    ref = copy.deepcopy(model)
    mu = muplify(model, base_width=64, example_inputs=(x,), hp={"attn_mult": 0.5})
    lin = ref.get_submodule(q_rows[0])
    with torch.no_grad():
        lin.weight[q_rows[1]] *= 0.5
        lin.bias[q_rows[1]] *= 0.5
    torch.testing.assert_close(mu(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu.to_standard()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_attn_mult_without_a_query_site_is_refused():
    class OddAttention(nn.Module):  # the query is q_proj(x) * k_proj(x): no module carries it alone
        def __init__(self, d=32):
            super().__init__()
            self.e = nn.Embedding(VOCAB, d)
            self.q, self.k, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, VOCAB)

        def forward(self, idx):
            x = self.e(idx)
            q = (self.q(x) * self.k(x)).view(2, SEQ, 2, -1).transpose(1, 2)
            kv = x.view(2, SEQ, 2, -1).transpose(1, 2)
            return self.out(F.scaled_dot_product_attention(q, kv, kv).transpose(1, 2).reshape(2, SEQ, -1))

    x, _ = _batch()
    with pytest.raises(PlanError, match="attn_mult=0.5 needs the query projection"):
        muplify(OddAttention(64), base_width=32, example_inputs=(x,), hp={"attn_mult": 0.5})
    muplify(OddAttention(64), base_width=32, example_inputs=(x,))  # without attn_mult nothing needs the site


class FunctionalEmbedding(nn.Module):
    """An input weight used functionally (no module boundary carries its output): embed_mult is absorbed into
    the weight's init and learning rate (TP-V Table 3 form)."""

    def __init__(self, width: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, width))
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, idx, mult: float = 1.0):
        return self.head(torch.relu(self.hidden(F.embedding(idx, self.table) * mult)))


def test_embed_mult_absorbed_without_a_module_boundary_matches_by_hand():
    torch.manual_seed(0)
    ref = FunctionalEmbedding(BASE)
    x, y = _batch()
    mu = muplify(copy.deepcopy(ref), base_width=BASE, example_inputs=(x,), hp={"embed_mult": 4.0})
    assert "absorbed" in str(mu.plan) and mu.plan["table"].init_scale == 4.0
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt_mu = mu.optimizer(torch.optim.Adam, lr=1e-2)
    for _ in range(3):
        l_ref = F.cross_entropy(ref(x, 4.0).flatten(0, 1), y.flatten())
        l_mu = F.cross_entropy(mu(x).flatten(0, 1), y.flatten())
        assert l_mu.item() == pytest.approx(l_ref.item(), rel=1e-5)
        l_ref.backward(); l_mu.backward()  # noqa: E702
        opt_ref.step(); opt_mu.step()  # noqa: E702
        opt_ref.zero_grad(); opt_mu.zero_grad()  # noqa: E702
    torch.testing.assert_close(mu.table, ref.table * 4.0, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ Adam ε
def _captured(opt, key, param):
    seen = []

    def hook(o, args, kwargs):  # registered after muplify's own pre-hook: sees the effective values
        seen.append(next(g[key] for g in o.param_groups if any(p is param for p in g["params"])))
    opt.register_step_pre_hook(hook)
    return seen


def test_adam_eps_follows_the_gradient_scale():
    x, y = _batch()
    for width, want in ((BASE, 1e-8), (4 * BASE, 1e-8 / 4)):
        mu = muplify(_gpt(width), base_width=BASE)
        opt = mu.optimizer(torch.optim.Adam, lr=1e-3, eps=1e-8)
        seen = _captured(opt, "eps", mu.blocks[0].mlp[0].weight)
        F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        assert seen[0] == pytest.approx(want)
        assert all(g["eps"] == 1e-8 for g in opt.param_groups)  # restored after the step
    mu = muplify(_gpt(4 * BASE), base_width=BASE, eps="fixed")
    assert all(g["eps_mult"] == 1.0 for g in mu.optimizer(torch.optim.Adam, lr=1e-3).param_groups)


def test_hidden_gradients_shrink_like_the_eps_rule_says():
    """The theory behind ε's rule: under μP, hidden-weight gradients shrink like 1/width."""
    x, y = _batch()
    med = {}
    for width in (BASE, 4 * BASE):
        mu = muplify(_gpt(width), base_width=BASE)
        F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
        med[width] = mu.blocks[0].mlp[2].weight.grad.abs().median().item()
    assert med[4 * BASE] / med[BASE] == pytest.approx(1 / 4, rel=0.35)


# ------------------------------------------------------------------------------------------------ families
def _first_step_delta(mu, opt):
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    x, y = _batch()
    F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    return {n: (p.detach() - before[n]) for n, p in mu.named_parameters()}


@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_muon_spectral_rule(adjust):
    """Muon on hidden matrices: ‖ΔW‖₂ ∝ √(fan_out/fan_in) relative to base, whatever adjust_lr_fn; the rest on the
    fallback with its own μP rule; one Optimizer."""
    norms = {}
    for width in (BASE, 4 * BASE):
        mu = muplify(_gpt(width), base_width=BASE)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = mu.optimizer(torch.optim.Muon, lr=0.02, adjust_lr_fn=adjust, weight_decay=0.0,
                               fallback=(torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.0}))
        assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
        assert (adjust == "match_rms_adamw") == any("match_rms_adamw" in str(w.message) for w in caught)
        fams = {g["mup_family"] for g in opt.param_groups}
        assert fams == {"muon", "adam"}
        on_muon = {id(p) for g in opt.param_groups if g["mup_family"] == "muon" for p in g["params"]}
        assert on_muon == {id(p) for n, p in mu.named_parameters() if mu.plan[n].role == "hidden"}
        d = _first_step_delta(mu, opt)
        norms[width] = {n: torch.linalg.matrix_norm(d[n], ord=2).item() for n in
                        ("blocks.0.attn.c_proj.weight", "blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight")}
        if width == BASE:
            assert norms[width]["blocks.0.attn.c_proj.weight"] == pytest.approx(
                0.02 * (0.2 * math.sqrt(BASE) if adjust else 1.0), rel=0.35)  # NS gives singular values ≈ 1
    for n in norms[BASE]:  # every hidden matrix here has fan_out/fan_in constant in width: same spectral norm
        assert norms[4 * BASE][n] / norms[BASE][n] == pytest.approx(1.0, rel=0.2), n


def test_muon_needs_a_fallback_and_says_which_parameters():
    mu = muplify(_gpt(WIDE), base_width=BASE)
    with pytest.raises(Exception, match="fallback=\\(torch.optim.AdamW"):
        mu.optimizer(torch.optim.Muon, lr=0.02)


def test_combined_optimizer_checkpoint_scheduler_and_compile():
    def run(resume_at=None, steps=4):
        mu = muplify(_gpt(WIDE), base_width=BASE)
        opt = mu.optimizer(torch.optim.Muon, lr=0.02, fallback=(torch.optim.AdamW, {"lr": 1e-3}))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        losses = []
        for s in range(steps):
            if s == resume_at:
                ck = {"m": copy.deepcopy(mu.state_dict()), "o": copy.deepcopy(opt.state_dict()),
                      "s": sched.state_dict()}
                mu = muplify(_gpt(WIDE, seed=9), base_width=BASE)
                mu.load_state_dict(ck["m"])
                opt = mu.optimizer(torch.optim.Muon, lr=0.02, fallback=(torch.optim.AdamW, {"lr": 1e-3}))
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
                opt.load_state_dict(ck["o"]); sched.load_state_dict(ck["s"])  # noqa: E702
            x, y = _batch(s)
            loss = F.cross_entropy(mu(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step(); sched.step(); opt.zero_grad(set_to_none=True)  # noqa: E702
            losses.append(loss.item())
        return losses, opt
    straight, opt = run()
    assert run(resume_at=2)[0] == straight  # resumed == uninterrupted, bit for bit
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-3 / 5, 0.02 / 5])  # both optimizers scheduled
    assert all(o.param_groups[0] is opt.param_groups[i] for o, i in zip(opt.optimizers, (0, len(opt.optimizers[0].param_groups))))

    mu = muplify(_gpt(WIDE), base_width=BASE)
    opt = mu.optimizer(torch.optim.Muon, lr=0.02, fallback=(torch.optim.AdamW, {"lr": 1e-3}))
    x, y = _batch()
    F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
    before = mu.blocks[0].mlp[0].weight.detach().clone()
    torch.compile(opt.step, backend="eager")()
    assert not torch.equal(before, mu.blocks[0].mlp[0].weight)


def test_adafactor_first_step_follows_adams_rule():
    """Adafactor's step is lr·RMS(W)-relative: μP's hidden init shrinks RMS(W) by 1/√m, so the hidden lr needs only
    1/√m to give Adam's 1/m per-entry update."""
    med = {}
    for width in (BASE, 4 * BASE):
        mu = muplify(_gpt(width), base_width=BASE)
        opt = mu.optimizer(torch.optim.Adafactor, lr=1e-2)
        lr_mult = next(g["lr_mult"] for g in opt.param_groups if any(p is mu.blocks[0].mlp[0].weight
                                                                       for p in g["params"]))
        assert lr_mult == pytest.approx(math.sqrt(BASE / width))
        d = _first_step_delta(mu, opt)
        med[width] = {n: d[n].abs().median().item() for n in ("blocks.0.mlp.0.weight", "wpe.weight")}
    assert med[4 * BASE]["blocks.0.mlp.0.weight"] / med[BASE]["blocks.0.mlp.0.weight"] == pytest.approx(1 / 4, rel=0.15)
    assert med[4 * BASE]["wpe.weight"] / med[BASE]["wpe.weight"] == pytest.approx(1.0, rel=0.15)


def test_sign_family_rule_and_lint():
    register_rule = __import__("muplify").register_rule
    register_rule(Lion, "sign")
    try:
        mu = muplify(_gpt(4 * BASE), base_width=BASE)
        with pytest.warns(UserWarning, match="Lingle 2024 found learning-rate transfer fails with Lion"):
            opt = mu.optimizer(Lion, lr=1e-3)
        assert any("Lion" in w for w in mu.plan.warnings)
        d = _first_step_delta(mu, opt)
        for n in ("blocks.0.mlp.0.weight", "wpe.weight"):  # sign updates: every moved entry moves by lr·lr_mult
            moved = d[n][d[n] != 0].abs()
            torch.testing.assert_close(moved, torch.full_like(moved, 1e-3 * mu.plan[n].lr_mult["sign"]))
        assert mu.plan["blocks.0.mlp.0.weight"].lr_mult["sign"] == 0.25
        quiet = muplify(_gpt(4 * BASE), base_width=BASE)
        quiet.optimizer(torch.optim.AdamW, lr=1e-3)
        assert not any("Lion" in w for w in quiet.plan.warnings)
    finally:
        OPTIMIZER_FAMILIES.pop(Lion)


class ShampooLike(torch.optim.SGD):
    """Stands in for a Shampoo-type optimizer with one preconditioner per side (k=1): its μP rule is
    (dout/din)^(1-E) with E = 2k... here simply a distinct shape rule, registered by the user."""


class ShampooFamily(OptimizerFamily):
    name = "shampoo_like"
    description = "test: a user-defined family with its own shape rule"
    absorb_power = 1.0

    def width_lr(self, p, plan, options):
        return (p.width_mult_out / p.width_mult_in) ** -1.0 if p.role == "hidden" else 1.0


def test_user_defined_family_is_one_registration():
    register_family(ShampooFamily(), ShampooLike)
    try:
        mu = muplify(MLP(width=128), base_width=32)
        opt = mu.optimizer(ShampooLike, lr=0.1)
        assert {g["mup_family"] for g in opt.param_groups} == {"shampoo_like"}
        assert mu.plan["net.2.weight"].lr_mult["shampoo_like"] == 1.0  # square hidden: (4/4)^-1
        assert sorted(g["lr_mult"] for g in opt.param_groups) == [1.0]
    finally:
        OPTIMIZER_FAMILIES.pop(ShampooLike)
        FAMILIES.pop("shampoo_like")


def test_optimizer_by_name():
    mu = muplify(_gpt(WIDE), base_width=BASE)
    assert type(mu.optimizer("AdamW", lr=1e-3)) is torch.optim.AdamW
    assert type(mu.optimizer("sgd", lr=1e-3)) is torch.optim.SGD
    with pytest.raises(Exception, match="unknown optimizer name 'Adamw2'.*AdamW"):
        mu.optimizer("Adamw2", lr=1e-3)


# ------------------------------------------------------------------------------------------------ lint
class NoNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)


def _lint(model, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mu = muplify(model, **kw)
    return mu, " ".join(str(w.message) for w in caught if "μP lint" in str(w.message))


def test_lint_trainable_gains():
    mu, text = _lint(_gpt(WIDE), base_width=BASE)
    assert "trainable norm gains" in text and "lr_mult': {'gain'" in text and "warnings:" in str(mu.plan)
    assert {n for n, p in mu.plan.items() if p.gain} == {n for n in mu.plan if "ln" in n and n.endswith("weight")}
    _, text = _lint(_gpt(WIDE), base_width=BASE, hp={"lr_mult": {"gain": 0.5}})  # addressed: silent
    assert "gains" not in text
    _, text = _lint(NoNorm(64), base_width=32)
    assert text == ""


def test_gain_lr_mult_reaches_only_the_gains():
    mu = muplify(_gpt(WIDE), base_width=BASE, hp={"lr_mult": {"gain": 0.0}})
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.0)
    d = _first_step_delta(mu, opt)
    for n, p in mu.plan.items():
        assert bool((d[n] != 0).any()) != p.gain, n  # zero lr freezes the gains, everything else moves


def test_lint_scaled_weight_decay():
    _, text = _lint(NoNorm(64), base_width=32, weight_decay="scaled")
    assert "weight_decay='scaled'" in text
    _, text = _lint(NoNorm(64), base_width=32)
    assert "weight_decay" not in text


def test_lint_guessed_roles():
    class Unused(NoNorm):
        def __init__(self, width):
            super().__init__(width)
            self.spare = nn.Parameter(torch.randn(width, width))  # never used by forward: no evidence

    mu, text = _lint(Unused(64), base_width=32)
    assert "guessed the role of 1 parameter(s): spare" in text and mu.plan["spare"].guessed
    assert "GUESS" in str(mu.plan)
    _, text = _lint(NoNorm(64), base_width=32)
    assert "guess" not in text


def test_lint_plain_optimizer_at_first_step():
    mu = muplify(NoNorm(64), base_width=32)
    x = torch.randn(4, 16)
    plain = torch.optim.AdamW(mu.parameters(), lr=1e-3)
    mu(x).sum().backward()
    with pytest.warns(UserWarning, match="without μP param groups"):
        plain.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.step()  # once per optimizer
        good = mu.optimizer(torch.optim.AdamW, lr=1e-3)
        good.step()
        other = torch.optim.AdamW(NoNorm(64).parameters(), lr=1e-3)  # not a muplified model: silent
        other.step()


def test_combined_optimizer_orthogonalises_each_matrix_once(monkeypatch):
    import torch.optim._muon as muon_mod

    calls = []
    orig = muon_mod._zeropower_via_newtonschulz
    monkeypatch.setattr(muon_mod, "_zeropower_via_newtonschulz", lambda *a, **k: calls.append(1) or orig(*a, **k))
    mu = muplify(_gpt(WIDE), base_width=BASE)
    opt = mu.optimizer(torch.optim.Muon, lr=0.02, fallback=(torch.optim.AdamW, {"lr": 1e-3}))
    x, y = _batch()
    F.cross_entropy(mu(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    assert len(calls) == sum(len(g["params"]) for g in opt.param_groups if g["mup_family"] == "muon") == 8


# ------------------------------------------------------------------------------------------------ coordinate checks
_CC_CASES = {
    "hp": dict(muplify_kwargs={"hp": {"output_mult": 2.0, "attn_mult": 0.5, "embed_mult": 2.0,
                                      "lr_mult": {"input": 2.0, "hidden": 0.5}}}),
    # torch's Muon orthogonalises in bfloat16, slow on CPU (10 s a step for one 2048x512 matrix): widths to 128
    "muon": dict(optimizer=torch.optim.Muon, lr=0.02, widths=(32, 64, 128),
                 optimizer_kwargs={"fallback": (torch.optim.AdamW, {"lr": 3e-3})}),
    "adafactor": dict(optimizer=torch.optim.Adafactor, lr=1e-2),
    "sgd": dict(optimizer=torch.optim.SGD, lr=0.3),
}


@pytest.mark.parametrize("case", list(_CC_CASES))
def test_coordinate_check_flat_with_hp_and_every_family(case):
    from muplify import coord_check

    res = coord_check(lambda w: GPT(vocab_size=256, d_model=w, n_layer=2, head_dim=16, block_size=16),
                      progress=False, **_CC_CASES[case])
    assert res.passed("mup"), res.table()
    assert not res.passed("sp")
