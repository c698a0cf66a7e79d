"""Issue 18 items 1, 3 and 5: the proxy and the target get the same roles (tune/transfer read them from two widths,
and hp tuned under other roles are refused wherever they are applied, plain muplify(hp=) included), a scalar head is
a readout (a router is what a top-k selects along, or what a softmax over the experts weights their outputs with),
learned tables added to the stream are input-like and per-head biases vector-like."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("optuna")

from muplify import RolesMismatchError, muplify  # noqa: E402
from muplify.tools.tune.roles import tuned_roles  # noqa: E402
from muplify.tools.tune.trial import transfer  # noqa: E402
from muplify_dev.kv_heads import GQALM, MQAFusedLM  # noqa: E402
from muplify_dev.soft_moe import SoftmaxClassifier, SoftMoE  # noqa: E402

VOCAB = 50


def GQA(w, kv_heads=None):
    return GQALM(w, kv_heads=kv_heads, vocab=VOCAB)


def gqa_fixed_kv(w):
    return GQA(w, kv_heads=1)


def MQAFused(w):
    return MQAFusedLM(w, vocab=VOCAB)


class ValueHead(nn.Module):
    """An MLP with a scalar value / regression head nn.Linear(w, 1)."""

    def __init__(self, w):
        super().__init__()
        self.inp, self.hid, self.v = nn.Linear(8, w), nn.Linear(w, w), nn.Linear(w, 1)

    def forward(self, x):
        return self.v(F.relu(self.hid(F.relu(self.inp(x)))))


class UNet1d(nn.Module):
    """A 1-D conv net ending in a one-channel Conv1d(w, 1, 1) output."""

    def __init__(self, w):
        super().__init__()
        self.inc, self.mid = nn.Conv1d(2, w, 3, padding=1), nn.Conv1d(w, w, 3, padding=1)
        self.out = nn.Conv1d(w, 1, 1)

    def forward(self, x):
        return self.out(F.relu(self.mid(F.relu(self.inc(x)))))


class TopKMoE(nn.Module):
    """A router Linear(w, 4) whose logits a top-k selects experts along: output-like, not the readout."""

    def __init__(self, w, experts=4):
        super().__init__()
        self.emb = nn.Linear(8, w)
        self.router = nn.Linear(w, experts, bias=False)
        self.experts = nn.ModuleList([nn.Linear(w, w) for _ in range(experts)])
        self.head = nn.Linear(w, 3)

    def forward(self, x):
        h = self.emb(x)
        probs = self.router(h).softmax(-1)
        top, idx = probs.topk(2, dim=-1)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            gate = (top * (idx == e)).sum(-1, keepdim=True)
            out = out + gate * expert(h)
        return self.head(h + out)


class Tied(nn.Module):
    """An LM whose readout is the embedding (one parameter, two names)."""

    def __init__(self, w):
        super().__init__()
        self.emb, self.hid = nn.Embedding(VOCAB, w), nn.Linear(w, w)
        self.head = nn.Linear(w, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(F.relu(self.hid(self.emb(ids))))


class PosTable(nn.Module):
    """Token embedding plus a learned positional table of shape (1, N, w)."""

    def __init__(self, w, n=6):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, w)
        self.pos = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.hid, self.head = nn.Linear(w, w), nn.Linear(w, VOCAB)

    def forward(self, ids):
        return self.head(F.relu(self.hid(self.emb(ids) + self.pos)))


IDS = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


def _mu(model, base, *inputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return muplify(model, base_width=base, example_inputs=inputs, **kw)


# ------------------------------------------------------------------------------------------------ item 1
def test_one_width_cannot_tell_a_single_kv_head_and_says_so():
    """At the proxy width 64 the one K/V head reads as output (fan_out 32 fixed), at 128 as hidden: a single
    instance cannot tell, so the proxy's reading is a named guess pointing to base= / two widths."""
    small, big = _mu(GQA(64), 64, IDS), _mu(GQA(128), 64, IDS)
    assert small.plan["k.weight"].role == "output" and big.plan["k.weight"].role == "hidden"
    assert small.plan["k.weight"].decided_by.startswith("guess") and "one attention head" in \
        small.plan["k.weight"].decided_by
    assert big.plan["q.weight"].decided_by == "graph"


def test_several_kv_heads_at_one_width_are_a_named_guess():
    """Two K/V heads repeated to the query heads read as growing with width (hidden), which a family that keeps its
    K/V head count (Llama 3) contradicts: named as a guess at one width; base= reads them exactly."""
    with pytest.warns(UserWarning, match=r"guessed the role of 2 parameter\(s\): k\.weight, v\.weight"):
        mu = muplify(GQA(256, kv_heads=2), base_width=64, example_inputs=(IDS,))
    k = mu.plan["k.weight"]
    assert k.role == "hidden" and k.guessed and "K/V heads repeated to the query heads" in k.decided_by
    assert not mu.plan["q.weight"].guessed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = muplify(GQA(256, kv_heads=2), base=GQA(64, kv_heads=2), example_inputs=(IDS,))
    assert exact.plan["k.weight"].role == "output" and not exact.plan["k.weight"].guessed


def test_transfer_gives_the_proxy_the_targets_roles():
    """tune's trials and transfer() read the roles from two widths: at the proxy width k/v are hidden, as at every
    target, so lr_mult["output"] tuned there acts on the readout alone, as at the target."""
    cfg = {"lr": 1e-3, "hp": {"lr_mult": {"output": 4.0}}, "width": 64, "muplify": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proxy, popt = transfer(GQA, cfg)
        target, topt = transfer(GQA, cfg, width=256)
    roles = lambda mu: {n: p.role for n, p in mu.plan.params.items()}  # noqa: E731
    assert roles(proxy) == roles(target)
    assert proxy.plan["k.weight"].role == "hidden" and proxy.plan["k.weight"].decided_by == "override"
    lr = {id(p): g["lr"] * g.get("lr_mult", 1.0) for g in popt.param_groups for p in g["params"]}
    named = dict(proxy.named_parameters())
    # at the proxy width every multiplier is 1: only lr_mult["output"] separates the readout from k/v
    assert lr[id(named["head.weight"])] == pytest.approx(4e-3)
    assert lr[id(named["k.weight"])] == pytest.approx(1e-3) == lr[id(named["q.weight"])]


@pytest.mark.parametrize("where", ["hp", "old best.json"])
def test_transfer_refuses_a_target_with_other_roles(where):
    """Values tuned on a proxy whose K/V heads grow act on other weights in a target whose K/V heads are fixed:
    transfer names the parameters and refuses (the roles in best["hp"], or in best["roles"] of an older tune)."""
    roles = tuned_roles(GQA, 64, {})
    assert roles["k.weight"] == ["hidden", True, True]
    cfg = {"lr": 1e-3, "hp": {"tuned_roles": roles}, "width": 64, "muplify": {}} if where == "hp" else \
        {"lr": 1e-3, "hp": {}, "width": 64, "muplify": {}, "roles": roles}
    with pytest.raises(RolesMismatchError, match=r"k\.weight: tuned as hidden, the target reads output") as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transfer(gqa_fixed_kv, cfg, width=256)
    assert "v.weight" in str(e.value) and "q.weight" not in str(e.value)
    with warnings.catch_warnings():  # the same architecture transfers
        warnings.simplefilter("ignore")
        mu, _ = transfer(GQA, cfg, width=256)
    assert mu.plan.hp.tuned_roles["k.weight"] == ("hidden", True, True)


def _tuned_hp():
    """What tune leaves in result.best["hp"]: the values and the roles they were tuned under (K/V heads growing)."""
    return {"output_mult": 2.0, "lr_mult": {"output": 4.0}, "tuned_roles": tuned_roles(GQA, 64, {})}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_plain_muplify_refuses_hp_tuned_under_other_roles_and_leaves_the_model_untouched():
    """muplify(model, hp=best["hp"]) with no tune in sight: a target whose K/V are one fixed head reads them as
    output, the proxy tuned them as hidden -- refused naming k/v with the roles and what to pass, before any change."""
    torch.manual_seed(0)
    target = gqa_fixed_kv(256)
    before, y0 = _state(target), target(IDS).detach()
    with pytest.raises(RolesMismatchError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            muplify(target, base_width=64, example_inputs=(IDS,), hp=_tuned_hp())
    msg = str(e.value)
    assert "k.weight: tuned as hidden, the target reads output" in msg and "v.weight: tuned as hidden" in msg
    assert "q.weight" not in msg and "head.weight" not in msg and "2 parameters" in msg
    assert "fan_in scale here, fan_in and fan_out scale at the proxy" in msg
    assert "base=" in msg and "overrides={'k.weight': {'role': 'hidden'}, 'v.weight': {'role': 'hidden'}}" in msg
    assert type(target) is GQALM and not hasattr(target, "plan")  # untouched: class, values, forward
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(target(IDS), y0, rtol=0, atol=0)
    with warnings.catch_warnings():  # the overrides the message names make it agree
        warnings.simplefilter("ignore")
        mu = muplify(target, base_width=64, example_inputs=(IDS,), hp=_tuned_hp(),
                     overrides={"k.weight": {"role": "hidden"}, "v.weight": {"role": "hidden"}})
    assert mu.plan["k.weight"].role == "hidden"


@pytest.mark.parametrize("route", ["base_width", "base="])
def test_plain_muplify_applies_hp_tuned_under_the_same_roles(route):
    kw = {"base_width": 64} if route == "base_width" else {"base": GQA(64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(GQA(256), example_inputs=(IDS,), hp=_tuned_hp(), **kw)
    assert mu.plan.hp.output_mult == 2.0 and mu.plan.hp.tuned_roles["k.weight"][0] == "hidden"
    text = str(mu.plan)
    hp_line = next(line for line in text.splitlines() if line.startswith("hp: "))
    assert "output_mult" in hp_line and "tuned_roles" not in hp_line  # the values; the roles in one line of their own
    assert "hp tuned under the roles of 7 parameters (hp['tuned_roles']): this model's agree" in text


def test_hp_without_tuned_roles_is_applied_unchecked():
    """A plain hp dict (or the hp of a best.json from an older tune) carries no roles: applied as before."""
    hp = {k: v for k, v in _tuned_hp().items() if k != "tuned_roles"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(gqa_fixed_kv(256), base_width=64, example_inputs=(IDS,), hp=hp)
    assert mu.plan["k.weight"].role == "output" and mu.plan.hp.tuned_roles is None
    assert "tuned_roles" not in mu.plan.hp.to_dict()


def test_tuned_roles_are_validated_and_round_trip():
    from muplify import HyperParams, PlanError

    hp = HyperParams.from_dict(_tuned_hp())
    assert HyperParams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
    assert HyperParams.from_dict({"tuned_roles": {"a": ["hidden", True, True]}}).is_default()  # no value tuned
    for bad in ({"a": ["hiden", True, True]}, {"a": ["hidden", 1, True]}, ["hidden"], {"a": ["hidden"]}):
        with pytest.raises(PlanError, match="tuned_roles"):
            HyperParams.from_dict({"tuned_roles": bad})


def test_renamed_deeper_and_tied_parameters():
    """Names are matched exactly, a tied weight under any of its names, and block indices (a deeper target) against
    the same parameter of the other model's blocks; a parameter only one side has is reported, not skipped."""
    from muplify.tuned_roles import mismatches, role_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = muplify(GQA(128), base=GQA(64), example_inputs=(IDS,)).plan
    sig = role_signature(plan)
    assert mismatches(sig, plan) == []
    renamed = {("lm_head.weight" if n == "head.weight" else n): s for n, s in sig.items()}
    assert mismatches(renamed, plan) == [
        "head.weight: absent at the proxy (output where it is; its role cannot be compared)",
        "lm_head.weight: absent in the target (output where it is; its role cannot be compared)"]
    deep = {f"layers.{i}.w": ["hidden", True, True] for i in range(2)}
    assert _mismatches_of_names(deep, {f"layers.{i}.w": "hidden" for i in range(4)}) == []
    assert _mismatches_of_names(deep, {"layers.0.w": "hidden", "layers.3.w": "output"}) == [
        "layers.1.w: absent in the target (hidden where it is; its role cannot be compared)",
        "layers.3.w: absent at the proxy (output where it is; its role cannot be compared)"]


def _mismatches_of_names(tuned, roles):
    """mismatches() against a stand-in plan with these roles (all fans scaling)."""
    import sympy

    from muplify.tuned_roles import mismatches

    w = sympy.Symbol("w")
    P = type("P", (), {})
    plan = P()
    plan.width_symbol, plan.params = w, {}
    for n, r in roles.items():
        p = P()
        p.role, p.fan_in, p.fan_out, p.decided_by, p.aliases = r, w, w, "graph", [n]
        plan.params[n] = p
    return mismatches(tuned, plan)


def test_tied_weight_is_matched_under_any_of_its_names():
    from muplify.tuned_roles import mismatches

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = muplify(Tied(64), base_width=32, example_inputs=(IDS,)).plan
    (name, p), = [(n, p) for n, p in plan.params.items() if len(p.aliases) > 1]
    other = next(a for a in p.aliases if a != name)
    sig = {(other if n == name else n): [q.role, True, True] for n, q in plan.params.items()}
    sig[other] = [p.role, bool(p.fan_in.has(plan.width_symbol)), bool(p.fan_out.has(plan.width_symbol))]
    assert mismatches(sig, plan) == []


def test_tune_records_the_roles_it_tuned_under(tmp_path):
    from muplify.tools import tune as T

    def objective(model, optimizer, report, steps: int = 2):
        x = IDS
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
            loss.backward()
            optimizer.step()
        return float(loss)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = T.tune(GQA, 64, objective, trials=1, space={"lr": T.Fixed(1e-3)}, defaults=False,
                        storage=None, progress=False)
    roles = result.best["hp"]["tuned_roles"]  # in the hp: muplify(hp=best["hp"]) checks them anywhere
    assert roles["k.weight"][0] == "hidden" and roles["head.weight"][0] == "output" and "roles" not in result.best
    assert "tuned_roles" not in str(result)  # the summary prints the values, not a line per parameter
    loaded = T.load_result(result.storage, result.study.study_name) if result.storage else None
    assert loaded is None or loaded.best["hp"]["tuned_roles"] == roles


@pytest.mark.parametrize("route", ["one width", "base="])
def test_fused_qkv_with_fixed_kv_rows_is_a_named_guess(route):
    """One role for Q rows that scale and K/V rows that do not is a guess, named at one width and by the exact
    two-width route alike (base=: the two sizes, 96 and 160, read as w + 32, not as 5*w/4)."""
    kw = {"base_width": 64} if route == "one width" else {"base": MQAFused(64)}
    with pytest.warns(UserWarning, match=r"guessed the role of 1 parameter\(s\): qkv\.weight"):
        p = muplify(MQAFused(128), example_inputs=(IDS,), **kw).plan["qkv.weight"]
    assert p.role == "hidden" and str(p.fan_out) == "w + 32" and p.base_fan_out == 96
    assert p.guessed and "fused rows w + 32" in p.decided_by


@pytest.mark.parametrize("route", ["one width", "base="])
def test_falcon_multi_query_qkv_is_a_named_guess(route):
    """HF Falcon (multi_query, old architecture) picks its K/V rows with a list index, which one instance reads as a
    fixed axis (the whole matrix output-like): named as a guess pointing to base=, since its query rows make the
    heads.  The exact route reads the fused rows from the two sizes (w + 32) and names the one role as a guess."""
    T = pytest.importorskip("transformers")

    def falcon(w):
        c = T.FalconConfig(vocab_size=VOCAB, hidden_size=w, num_hidden_layers=1, num_attention_heads=w // 16,
                           multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False)
        return T.FalconForCausalLM(c)

    kw = {"base_width": 64} if route == "one width" else {"base": lambda: falcon(64)}
    with pytest.warns(UserWarning, match=r"guessed the role of 1 parameter\(s\): .*query_key_value\.weight"):
        plan = muplify(falcon(128), **kw).plan
    p = plan["transformer.h.0.self_attention.query_key_value.weight"]
    if route == "base=":
        assert (p.role, str(p.fan_out), p.base_fan_out) == ("hidden", "w + 32", 96)
        assert p.guessed and "fused rows w + 32" in p.decided_by
    else:
        assert (p.role, str(p.fan_out)) == ("output", "160") and p.guessed
        assert "fused rows: 128 of its 160 rows are the query" in p.decided_by and "base=" in p.decided_by
    assert not plan["transformer.h.0.self_attention.dense.weight"].guessed


# ------------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize("make,inputs,name", [
    (ValueHead, (torch.randn(3, 8),), "v"),
    (UNet1d, (torch.randn(3, 2, 10),), "out"),
])
def test_scalar_head_is_the_readout_and_output_mult_reaches_it(make, inputs, name):
    torch.manual_seed(0)
    m = make(64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    mu1 = _mu(m, 32, *inputs)
    assert mu1.plan[f"{name}.weight"].role == "output" and mu1.plan[f"{name}.weight"].readout
    m2 = make(64)
    m2.load_state_dict(state)
    mu2 = _mu(m2, 32, *inputs, hp={"output_mult": 2.0})
    mu1.load_state_dict(mu2.state_dict())  # the same values: only the multiplier differs
    bias = getattr(mu1, name).bias.detach().reshape(-1, *([1] * (inputs[0].dim() - 2)))
    with torch.no_grad():
        y1, y2 = mu1(*inputs) - bias, mu2(*inputs) - bias
    torch.testing.assert_close(y2, 2 * y1)


def test_a_router_is_what_a_topk_selects_along():
    mu = _mu(TopKMoE(64), 32, torch.randn(3, 8))
    r = mu.plan["router.weight"]
    assert r.role == "output" and not r.readout and "router" in r.note and "topk" in r.note
    assert mu.plan["head.weight"].readout


def _router_outputs(mu, x):
    seen = []
    handle = mu.router.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        y = mu(x)
    handle.remove()
    return seen[0], y


@pytest.mark.parametrize("mix", ["stack", "einsum", "loop"])
def test_a_soft_router_is_output_like_not_the_readout(mix):
    """No top-k: a softmax over the experts whose probabilities weight the experts' outputs, summed over the expert
    axis (a sum, an einsum, or adds expert by expert), is what makes Linear(w, E) a router: output-like, its lr and
    init by the output rules, but output_mult (the readout's multiplier) does not reach it; the plan says why."""
    x = torch.randn(2, 5, 8)
    torch.manual_seed(0)
    model = SoftMoE(64, mix=mix)
    state = _state(model)
    mu1 = _mu(model, 32, x)
    r = mu1.plan["router.weight"]
    assert (r.role, str(r.fan_out), r.readout) == ("output", "4", False)
    assert "router: its outputs weight the experts (a softmax over them" in r.note
    assert "router: its outputs weight the experts" in str(mu1.plan)
    assert mu1.plan["head.weight"].readout and "router" not in mu1.plan["head.weight"].note
    model2 = SoftMoE(64, mix=mix)
    model2.load_state_dict(state)
    mu2 = _mu(model2, 32, x, hp={"output_mult": 2.0})
    mu2.load_state_dict(mu1.state_dict())
    (r1, y1), (r2, y2) = _router_outputs(mu1, x), _router_outputs(mu2, x)
    torch.testing.assert_close(r2, r1, rtol=0, atol=0)  # output_mult does not touch the router ...
    bias = mu1.head.bias.detach()
    torch.testing.assert_close(y2 - bias, 2 * (y1 - bias))  # ... and doubles the readout's input


def test_a_readouts_softmax_is_not_a_router():
    """A classifier whose output is the softmax of its readout (class probabilities reaching the model output) and a
    scalar value head stay readouts: no expert outputs are weighted."""
    x = torch.randn(3, 8)
    mu = _mu(SoftmaxClassifier(64), 32, x)
    p = mu.plan["head.weight"]
    assert p.role == "output" and p.readout and "router" not in p.note
    v = _mu(ValueHead(64), 32, x).plan["v.weight"]
    assert v.role == "output" and v.readout and "router" not in v.note


# ------------------------------------------------------------------------------------------------ item 5
def test_positional_table_is_input_like_and_input_hps_reach_it():
    mu = _mu(PosTable(64), 32, IDS, hp={"lr_mult": {"input": 3.0}})
    p = mu.plan["pos"]
    assert (p.role, str(p.fan_in), str(p.fan_out)) == ("input", "6", "w")
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    lr = {id(q): g["lr"] * g.get("lr_mult", 1.0) for g in opt.param_groups for q in g["params"]}
    named = dict(mu.named_parameters())
    assert lr[id(named["pos"])] == pytest.approx(3e-3) == lr[id(named["emb.weight"])]
    assert lr[id(named["hid.bias"])] == pytest.approx(1e-3)


def test_xlnet_per_head_biases_are_vector_like():
    T = pytest.importorskip("transformers")
    c = T.XLNetConfig(vocab_size=VOCAB, d_model=128, n_layer=1, n_head=8, d_inner=256, dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = muplify(T.XLNetLMHeadModel(c), base_width=64).plan
    for n in ("r_w_bias", "r_r_bias", "r_s_bias", "seg_embed"):
        p = plan[f"transformer.layer.0.rel_attn.{n}"]
        assert p.role == "vector", (n, p.role, p.decided_by)
    assert str(plan["transformer.layer.0.rel_attn.seg_embed"].fan_out) == "2*w"
    assert plan["transformer.layer.0.rel_attn.r_s_bias"].base_fan_out == 64


def test_cli_transfer_refuses_a_best_json_tuned_under_other_roles(tmp_path, capsys, monkeypatch):
    import json
    import os

    from muplify.cli import main

    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    roles = tuned_roles(GQA, 64, {})
    for record in ({"hp": {"tuned_roles": roles}}, {"hp": {}, "roles": roles}):  # this tune's best.json, an older one
        best = tmp_path / "best.json"
        best.write_text(json.dumps({**record, "lr": 1e-3, "width": 64}))
        argv = ["transfer", "test_roles_agree:gqa_fixed_kv", "--width", "128", "--hp", str(best)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error: this model's roles differ" in err and "k.weight: tuned as hidden, the target reads output" in err
        assert main(["transfer", "test_roles_agree:GQA", "--width", "128", "--hp", str(best)]) == 0
        capsys.readouterr()


def _needs_real_tensors(w):
    """A factory that reads a value while building (``.item()``): it cannot build on the meta device."""
    model = GQA(w)
    if torch.zeros(1).item() != 0.0:
        raise AssertionError
    return model


def test_transfer_falls_back_when_the_factory_cannot_build_on_meta():
    """Only the meta build of the proxy is caught (warned, then the target's own one-width analysis); muplify's own
    errors still reach the user."""
    cfg = {"lr": 1e-3, "hp": {}, "width": 64, "muplify": {}}
    with pytest.warns(UserWarning, match="could not build the proxy on the meta device"):
        target, _ = transfer(_needs_real_tensors, cfg, width=128)
    assert target.plan.width == 128 and target.plan.base_width == 64
    bad = dict(cfg, hp={"lr_mult": {"no_such_role": 2.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="no_such_role"):
            transfer(GQA, bad, width=128)
