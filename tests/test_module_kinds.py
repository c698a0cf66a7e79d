"""Module kinds (issue 19, part 3): which part of the network each parameter belongs to, decided from the graph (and
names only as a marked fallback), and per-module hyperparameters keyed by kind or module key (Complete(d)P,
arXiv 2512.22382): precedence module key > kind > role, exact factors in the optimizer groups and the init, base-width
identity, JSON round trip, and ``tune(per_module=True)``."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from muplify import PlanError, analyze, muplify
from muplify.models import GPT
from muplify.plan import Plan

BASE, WIDE = 32, 64
VOCAB, SEQ = 100, 16


def _gpt(width: int, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=VOCAB, d_model=width, n_layer=2, head_dim=16, block_size=SEQ, tie_weights=False, **kw)


class _Attn(nn.Module):
    """Separate query / key / value / output projections under names that say nothing (the graph must decide)."""

    def __init__(self, d: int, hd: int = 16):
        super().__init__()
        self.hd = hd
        self.p1, self.p2, self.p3, self.p4 = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (m(x).view(B, T, D // self.hd, self.hd).transpose(1, 2) for m in (self.p2, self.p3, self.p1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.p4(y.transpose(1, 2).reshape(B, T, D))


class _Blk(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(d), _Attn(d), nn.LayerNorm(d)
        self.a, self.b = nn.Linear(d, 3 * d), nn.Linear(3 * d, d)

    def forward(self, x):
        x = x + self.att(self.n1(x))
        return x + self.b(F.gelu(self.a(self.n2(x))))


class _Net(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.e = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList(_Blk(d) for _ in range(2))
        self.up_proj = nn.Linear(d, d)  # a square hidden layer: no fan ratio, only its name says what it is
        self.h = nn.Linear(d, VOCAB)

    def forward(self, idx):
        x = self.e(idx)
        for blk in self.layers:
            x = blk(x)
        return self.h(F.relu(self.up_proj(x)))


def _net(width: int, seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net(width)


def _idx():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))


def _kinds(plan):
    return {p.module_key: (p.module_kind, p.module_kind_by.partition(":")[0]) for p in plan.values()}


# ------------------------------------------------------------------------------------------------ kinds
def test_kinds_come_from_the_graph_not_the_names():
    plan = analyze(_net(WIDE), base_width=BASE, example_inputs=(_idx(),))
    k = _kinds(plan)
    assert k["layers.*.att.p2"] == ("query", "graph")  # the operands of the attention op, traced
    assert k["layers.*.att.p3"] == ("key", "graph")
    assert k["layers.*.att.p1"] == ("value", "graph")
    assert k["layers.*.att.p4"] == ("attn_out", "graph")
    assert k["layers.*.a"] == ("mlp_in", "graph") and k["layers.*.b"] == ("mlp_out", "graph")
    assert k["layers.*.n1"] == ("norm", "graph") and k["e"] == ("embedding", "graph") and k["h"] == ("readout", "graph")
    assert k["up_proj"] == ("mlp_in", "name")  # the marked fallback: the graph gives nothing for a square layer
    # the bias shares its module's kind and key; one key across the blocks
    assert plan["layers.1.att.p2.bias"].module_key == "layers.*.att.p2"
    assert plan["layers.1.att.p2.bias"].module_kind == "query"
    text = str(plan)
    assert "module kinds" in text and "query: layers.*.att.p2" in text and "up_proj (name)" in text


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
def test_fused_qkv_and_sequential_mlp_indices(attn):
    plan = analyze(_gpt(WIDE, attn=attn), base_width=BASE)
    k = _kinds(plan)
    assert k["blocks.*.attn.c_attn"] == ("qkv", "graph") and k["blocks.*.attn.c_proj"] == ("attn_out", "graph")
    # the Sequential's indices 0 and 2 hold different shapes: not block indices, so they stay apart
    assert k["blocks.*.mlp.0"] == ("mlp_in", "graph") and k["blocks.*.mlp.2"] == ("mlp_out", "graph")
    assert k["wte"] == ("embedding", "graph") and k["lm_head"] == ("readout", "graph")


def test_shallow_twin_and_full_capture_agree_on_kinds():
    make = lambda: GPT(vocab_size=VOCAB, d_model=WIDE, n_layer=5, head_dim=16, block_size=SEQ)  # noqa: E731
    torch.manual_seed(0)
    shallow = analyze(make(), base_width=BASE)
    torch.manual_seed(0)
    full = analyze(make(), base_width=BASE, capture="full")
    assert [(p.module_key, p.module_kind) for p in shallow.values()] == \
        [(p.module_key, p.module_kind) for p in full.values()]


# ------------------------------------------------------------------------------------------------ hp per module
def _lrs(mu, lr=1e-3):
    """Each parameter's effective learning rate (the group's lr × the μP lr_mult the optimizer applies)."""
    opt = mu.optimizer(torch.optim.AdamW, lr=lr)
    out = {}
    for g in opt.param_groups:
        for p in g["params"]:
            out[id(p)] = g["lr"] * g["lr_mult"]
    return {n: out[id(p)] for n, p in mu.named_parameters()}


HP_PM = {"lr_mult": {"hidden": 3.0, "attn_out": 0.25, "mlp_out": 0.5, "blocks.*.mlp.2": 7.0},
         "init_mult": {"hidden": 2.0, "qkv": 0.5, "blocks.*.mlp.0": 4.0}}


def _expected(name: str, table: dict) -> float:
    key = {"c_proj": "attn_out", "mlp.2": "blocks.*.mlp.2", "mlp.0": "blocks.*.mlp.0", "c_attn": "qkv"}
    for frag, k in key.items():
        if f".{frag}.weight" in name and k in table:
            return table[k]
    if ".mlp.2.weight" in name and "mlp_out" in table:
        return table["mlp_out"]
    return table.get("hidden", 1.0)


def test_per_module_factors_reach_the_optimizer_and_the_init_exactly():
    plain = muplify(_gpt(WIDE), base_width=BASE)
    tuned = muplify(_gpt(WIDE), base_width=BASE, hp=HP_PM)
    lp, lt = _lrs(plain), _lrs(tuned)
    hidden = [n for n in lp if tuned.plan[n].role == "hidden"]
    assert len(hidden) == 8
    for n in hidden:
        # module key (mlp.2: 7) > kind (c_proj: attn_out 0.25) > role (c_attn, mlp.0: hidden 3)
        assert lt[n] / lp[n] == pytest.approx(_expected(n, HP_PM["lr_mult"]), rel=1e-12), n
    assert lt["blocks.1.mlp.2.weight"] / lp["blocks.1.mlp.2.weight"] == pytest.approx(7.0)
    assert lt["blocks.1.attn.c_proj.weight"] / lp["blocks.1.attn.c_proj.weight"] == pytest.approx(0.25)
    assert lt["blocks.0.attn.c_attn.weight"] / lp["blocks.0.attn.c_attn.weight"] == pytest.approx(3.0)
    # biases follow their module's kind / key (role vector, but module kind attn_out, key blocks.*.mlp.2)
    assert lt["blocks.0.attn.c_proj.bias"] / lp["blocks.0.attn.c_proj.bias"] == pytest.approx(0.25)
    assert lt["blocks.0.mlp.2.bias"] / lp["blocks.0.mlp.2.bias"] == pytest.approx(7.0)
    assert lt["wte.weight"] == lp["wte.weight"] and lt["lm_head.weight"] == lp["lm_head.weight"]
    sp, st = dict(plain.named_parameters()), dict(tuned.named_parameters())
    for n in hidden:
        want = _expected(n, HP_PM["init_mult"])
        torch.testing.assert_close(st[n], sp[n] * want, rtol=1e-6, atol=0), n
    assert tuned.plan["blocks.0.mlp.0.weight"].init_scale / plain.plan["blocks.0.mlp.0.weight"].init_scale == 4.0


def test_per_module_hp_are_base_anchored():
    """At the base width every μP factor is 1, so per-module hp act exactly as constants written by hand (=1: the
    model and its learning rates untouched)."""
    ref = _net(BASE)
    ones = {"lr_mult": {"query": 1.0, "layers.*.att.p4": 1.0}, "init_mult": {"mlp_in": 1.0}}
    mu = muplify(_net(BASE), base_width=BASE, hp=ones, example_inputs=(_idx(),))
    for (n, p), q in zip(mu.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    assert set(_lrs(mu).values()) == {1e-3}
    torch.testing.assert_close(mu(_idx()), ref(_idx()), rtol=0, atol=0)
    hp = {"lr_mult": {"query": 0.5, "layers.*.att.p4": 2.0, "hidden": 3.0}}
    lrs = _lrs(muplify(_net(BASE), base_width=BASE, hp=hp, example_inputs=(_idx(),)))
    assert lrs["layers.0.att.p2.weight"] == pytest.approx(5e-4) and lrs["layers.1.att.p4.weight"] == pytest.approx(2e-3)
    assert lrs["layers.1.a.weight"] == pytest.approx(3e-3) and lrs["e.weight"] == pytest.approx(1e-3)


@pytest.mark.parametrize("hp, listed", [
    ({"lr_mult": {"query": 2.0}}, "'qkv'"),  # a fused projection: no separate query kind in this model
    ({"lr_mult": {"blocks.*.attn.wq": 2.0}}, "'blocks.*.attn.c_attn'"),
    ({"init_mult": {"hiden": 2.0}}, "'hidden'"),
])
def test_unknown_per_module_keys_raise_listing_the_valid_ones(hp, listed):
    model = _gpt(WIDE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PlanError, match="unknown roles, module kinds or module keys") as e:
        muplify(model, base_width=BASE, hp=hp)
    assert listed in str(e.value) and "mlp_in" in str(e.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_plan_with_kinds_and_per_module_hp_round_trips_through_json(tmp_path):
    mu = muplify(_net(WIDE), base_width=BASE, hp={"lr_mult": {"query": 0.5, "layers.*.att.p2": 2.0}},
                 example_inputs=(_idx(),))
    path = str(tmp_path / "plan.json")
    mu.plan.to_json(path)
    back = Plan.from_json(path)
    assert [(p.module_key, p.module_kind, p.module_kind_by) for p in back.values()] == \
        [(p.module_key, p.module_kind, p.module_kind_by) for p in mu.plan.values()]
    assert back.hp == mu.plan.hp
    assert {n: r.lr_mult for n, r in back.rules().items()} == {n: r.lr_mult for n, r in mu.plan.rules().items()}
    again = muplify(_net(WIDE), plan=path, example_inputs=(_idx(),))
    assert _lrs(again) == _lrs(mu)
    # an older plan file without kinds: kinds from the facts (no graph: attention kinds by name or role)
    import json

    d = json.loads(mu.plan.to_json())
    for e in d["params"]:
        for f in ("module_key", "module_kind", "module_kind_by"):
            e.pop(f)
    d.pop("hp")  # its 'query' key names a kind only the graph finds (p1..p4 say nothing by name)
    assert all(not p.module_kind for p in Plan.from_dict(d).values())  # the plan is facts: loading decides nothing
    old = muplify(_net(WIDE), plan=d, example_inputs=(_idx(),)).plan
    assert old["layers.0.a.weight"].module_kind == "mlp_in" and old["h.weight"].module_kind == "readout"
    assert old["layers.0.att.p2.weight"].module_key == "layers.*.att.p2"


def test_tuned_per_module_factors_transfer_with_the_target_width():
    """A kind's factor multiplies the μP rule at every width: lr(w) / lr_plain(w) is the factor at both widths."""
    hp = {"lr_mult": {"key": 0.5, "mlp_out": 4.0}}
    for w in (BASE, 2 * WIDE):
        plain = _lrs(muplify(_net(w), base_width=BASE, example_inputs=(_idx(),)))
        tuned = _lrs(muplify(_net(w), base_width=BASE, hp=hp, example_inputs=(_idx(),)))
        assert tuned["layers.0.att.p3.weight"] / plain["layers.0.att.p3.weight"] == pytest.approx(0.5)
        assert tuned["layers.1.b.weight"] / plain["layers.1.b.weight"] == pytest.approx(4.0)
        assert tuned["layers.1.att.p2.weight"] == plain["layers.1.att.p2.weight"]
    assert plain["layers.1.b.weight"] == pytest.approx(1e-3 * BASE / (2 * WIDE))  # the μP rule under the factor


# ------------------------------------------------------------------------------------------------ tune(per_module=True)
TUNE_W, TUNE_VOCAB = 16, 50


def tiny_gpt(width: int) -> GPT:
    return GPT(vocab_size=TUNE_VOCAB, d_model=width, n_layer=2, head_dim=8, block_size=8)


def lm_objective(model, optimizer, report, steps: int = 4) -> float:
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, TUNE_VOCAB, (4, 8), generator=g)
    y = torch.roll(x, -1, 1)
    for s in range(steps):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model(x, y)[1].item()


def test_tune_per_module_searches_kinds_and_the_best_transfers():
    pytest.importorskip("optuna")
    from muplify.tools import tune as T
    from muplify.tools.tune import Fixed, LogUniform

    result = T.tune(tiny_gpt, TUNE_W, lm_objective, torch.optim.AdamW, trials=3, pruner=None, storage=None,
                    progress=False, per_module=True)
    space = result.space
    kinds = ("embedding", "qkv", "attn_out", "mlp_out", "norm", "readout")
    assert {f"hp.lr_mult.{k}" for k in kinds} <= set(space) and space["hp.lr_mult.mlp_in"] == Fixed(1.0)
    assert {f"hp.init_mult.{k}" for k in kinds if k != "norm"} | {"hp.init_mult.mlp_in"} <= set(space)
    assert not any(k.endswith((".input", ".hidden", ".output", ".vector", ".gain")) for k in space)  # no role axes
    assert space["hp.lr_mult.qkv"] == LogUniform(1 / 8, 8)
    best = result.best
    assert set(best["hp"]["lr_mult"]) == set(kinds) | {"mlp_in"} and best["hp"]["lr_mult"]["mlp_in"] == 1.0
    # the proxy trial reproduces exactly with the per-module hp
    mu, opt = T.transfer(tiny_gpt, best, torch.optim.AdamW, seed=best["seed"])
    assert lm_objective(mu, opt, lambda s, v: None) == best["value"]
    # the transfer to a wider model applies each kind's factor on top of the μP rule at that width
    big, opt = T.transfer(tiny_gpt, best, torch.optim.AdamW, width=2 * TUNE_W)
    plain = muplify(tiny_gpt(2 * TUNE_W), base_width=TUNE_W)
    lt, lp = _lrs(big), _lrs(plain)
    for name, kind in (("blocks.1.attn.c_attn.weight", "qkv"), ("blocks.0.attn.c_proj.weight", "attn_out"),
                       ("blocks.0.mlp.2.weight", "mlp_out"), ("blocks.0.ln_2.weight", "norm")):
        assert lt[name] / lp[name] == pytest.approx(best["hp"]["lr_mult"][kind], rel=1e-9), name
    init = big.plan["blocks.0.mlp.2.weight"].init_scale / plain.plan["blocks.0.mlp.2.weight"].init_scale
    assert init == pytest.approx(best["hp"]["init_mult"]["mlp_out"])
