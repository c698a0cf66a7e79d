"""Issue #3, "fit into real training code": checkpoint/resume, plan files, export, and the everyday training-loop
features (autocast, clipping, accumulation, zero_grad, frozen layers, dtype moves, deepcopy).

Each test fails when the feature it names breaks: resumed training is compared bit for bit with uninterrupted training,
exported models are compared with the μP model they came from, and so on.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from muplify import Plan, PlanError, is_muplified, muplify
from muplify.models import GPT
from muplify.rewrite import MuScale
from muplify_dev.zoo import build

BASE, WIDE = 32, 64
VOCAB = 128


# ------------------------------------------------------------------------------------------------ helpers
def _gpt(seed: int = 0, *, tie: bool = True, plan=None, **kw):
    """The zoo GPT (tied by default) at WIDE, muplified at BASE, or re-muplified from ``plan``."""
    torch.manual_seed(seed)
    model, args, _ = build("gpt_sdpa" if tie else "gpt_untied", WIDE)
    if plan is not None:
        return muplify(model, plan=plan)
    return muplify(model, base_width=BASE, example_inputs=args, **kw)


def _batch(i: int, n: int = 2, seq: int = 8):
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randint(0, VOCAB, (n, seq), generator=g)
    return x, torch.roll(x, -1, dims=1)


def _lm_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def _make_opt(mu):
    opt = mu.optimizer(torch.optim.AdamW, lr=3e-3, weight_decay=0.1)
    # warmup then cosine: a schedule with state (last_epoch) that must be resumed too
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=8, pct_start=0.25)
    return opt, sched


def _train_step(mu, opt, sched, i):
    x, y = _batch(i)
    loss = _lm_loss(mu, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(mu.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _mu_hooks(model):
    """(module name, kind, factor, channels) of every muplify hook."""
    out = []
    for name, mod in model.named_modules():
        for kind, d in (("pre", mod._forward_pre_hooks), ("post", mod._forward_hooks)):
            out += [(name, kind, h.factor, h.channels) for h in d.values() if isinstance(h, MuScale)]
    return sorted(out, key=str)


def _no_mu_anything(model):
    assert not is_muplified(model)
    assert not type(model).__name__.startswith("Mu")
    assert "_mup_plan" not in model.__dict__
    assert _mu_hooks(model) == []
    for mod in model.modules():
        for d in (mod._forward_pre_hooks, mod._forward_hooks):
            for h in d.values():
                assert "muplify" not in getattr(type(h), "__module__", ""), (mod, h)


def _logits(out):
    if isinstance(out, tuple):
        out = out[0]
    return out.logits if hasattr(out, "logits") else out


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("resume", ["muplify_again", "plan_json"])
def test_checkpoint_resume_is_bit_identical(tmp_path, resume):
    """3 steps, save (model, optimizer, scheduler, plan JSON), fresh model, resume 3 steps == 6 uninterrupted steps."""
    mu, opt, sched = (m := _gpt()), *_make_opt(m)
    ref_losses = [_train_step(mu, opt, sched, i) for i in range(6)]
    ref_params = {n: p.detach().clone() for n, p in mu.named_parameters()}

    mu, opt, sched = (m := _gpt()), *_make_opt(m)
    losses = [_train_step(mu, opt, sched, i) for i in range(3)]
    torch.save({"model": mu.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ck.pt")
    mu.plan.to_json(str(tmp_path / "plan.json"))
    del mu, opt, sched

    # a different seed: everything that matters must come from the checkpoint
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)  # plain tensors/floats/strings: no pickled classes
    if resume == "plan_json":
        mu2 = _gpt(seed=123, plan=str(tmp_path / "plan.json"))
    else:
        mu2 = _gpt(seed=123)
    opt2, sched2 = _make_opt(mu2)
    mu2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert mu2.lm_head.weight is mu2.wte.weight  # the tie survives load_state_dict
    assert {g["mup_roles"]: g["lr_mult"] for g in opt2.param_groups}["hidden"] == BASE / WIDE
    losses += [_train_step(mu2, opt2, sched2, i) for i in range(3, 6)]

    assert losses == ref_losses
    for n, p in mu2.named_parameters():
        assert torch.equal(p, ref_params[n]), n


def test_plan_json_round_trip_reapplies_to_fresh_model(tmp_path):
    mu = _gpt(head_scaling="heads")
    path = tmp_path / "plan.json"
    text = mu.plan.to_json(str(path))
    raw = path.read_text()
    assert raw.lstrip().startswith("{") and "\n" in raw  # human-readable JSON, not a pickle
    d = json.loads(raw)
    assert d["format"] == "muplify-plan/2" and d["base_width"] == BASE and d["width"] == WIDE
    roles = {e["name"]: e["role"] for e in d["params"]}
    assert roles["blocks.0.mlp.0.weight"] == "hidden" and roles["wte.weight"] == "output"
    assert Plan.from_json(str(path)).to_json() == text == Plan.from_json(text).to_json()

    for plan in (str(path), Plan.from_json(str(path))):  # a path or a Plan object
        fresh = _gpt(seed=7, plan=plan)
        assert is_muplified(fresh) and fresh.plan.to_json() == text
        assert _mu_hooks(fresh) == _mu_hooks(mu)
        fresh.load_state_dict(mu.state_dict())
        x, _ = _batch(0)
        assert torch.equal(fresh(x), mu(x))


def test_plan_reapplication_does_not_rescale_init():
    torch.manual_seed(5)
    model, _, _ = build("gpt_sdpa", WIDE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mu = muplify(model, plan=_gpt().plan)
    for k, v in mu.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("other", ["wider", "other_architecture"])
def test_plan_for_another_model_fails_loudly(tmp_path, other):
    path = str(tmp_path / "plan.json")
    _gpt().plan.to_json(path)
    model, _, _ = build("gpt_sdpa", 2 * WIDE) if other == "wider" else build("mlp", WIDE)
    cls, before = type(model), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match="does not match") as ei:
        muplify(model, plan=path)
    msg = str(ei.value)
    assert ("shape mismatches" in msg and "wte.weight" in msg) if other == "wider" else \
        ("not in the model" in msg and "net.0.weight" in msg)
    assert type(model) is cls and not is_muplified(model) and _mu_hooks(model) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ export
def _hf_gpt2_head_dim():
    """GPT-2 whose head_dim grows with width (2 heads fixed): head_scaling='head_dim' folds an attention multiplier."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=WIDE, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                     attn_implementation="sdpa")
    x = _batch(0)[0]
    return GPT2LMHeadModel(cfg), (x,), {"use_cache": False}


EXPORT_CASES = {
    "gpt_tied": lambda: (*build("gpt_sdpa", WIDE), {}),
    "gpt_untied": lambda: (*build("gpt_untied", WIDE), {}),
    "hf_gpt2_head_dim": lambda: (*_hf_gpt2_head_dim(), {"head_scaling": "head_dim"}),
    "hf_llama": lambda: (*build("hf_llama", WIDE), {}),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_to_standard_is_plain_and_equal(case, tmp_path):
    torch.manual_seed(0)
    model, args, kwargs, opts = EXPORT_CASES[case]()
    orig_cls = type(model)
    mu = muplify(model, base_width=BASE, example_inputs=args, example_kwargs=kwargs, **opts)
    mu.eval()
    hooks_before = _mu_hooks(mu)
    assert hooks_before, "the case must have a multiplier to fold"
    std = mu.to_standard()
    assert type(std) is orig_cls
    _no_mu_anything(std)
    assert is_muplified(mu) and _mu_hooks(mu) == hooks_before  # the μP model itself is left as it was
    with torch.no_grad():
        want = _logits(mu(*args, **kwargs))
        got = _logits(std(*args, **kwargs))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    notes = std.mup_export_notes
    assert not any("untied" in n for n in notes), notes
    if case in ("gpt_tied", "hf_gpt2_head_dim"):
        # a tied readout: the multiplier folds into the final norm's gain and bias (its output feeds only the
        # readout), so the tie survives the export
        ln_mu, ln_std = (mu.ln_f, std.ln_f) if case == "gpt_tied" else (mu.transformer.ln_f, std.transformer.ln_f)
        wte = std.wte.weight if case == "gpt_tied" else std.transformer.wte.weight
        assert std.lm_head.weight is wte and torch.equal(std.lm_head.weight, mu.lm_head.weight)
        torch.testing.assert_close(ln_std.weight, ln_mu.weight * (BASE / WIDE))
        torch.testing.assert_close(ln_std.bias, ln_mu.bias * (BASE / WIDE))
    else:
        assert not torch.equal(std.lm_head.weight, mu.lm_head.weight)  # the readout multiplier is folded in
    if case == "hf_gpt2_head_dim":
        assert any(f.reason == "attention" for f in mu.plan.forward)
        assert std.config.tie_word_embeddings is True
        W_mu, W_std = mu.transformer.h[0].attn.c_attn.weight, std.transformer.h[0].attn.c_attn.weight  # (in, 3*out)
        f = next(f for f in mu.plan.forward if f.reason == "attention")
        torch.testing.assert_close(W_std[:, :WIDE], W_mu[:, :WIDE] * f.factor)  # q slice scaled ...
        assert torch.equal(W_std[:, WIDE:], W_mu[:, WIDE:])  # ... k and v untouched

    if case.startswith("hf_"):
        from transformers import AutoModelForCausalLM

        out_dir = tmp_path / "exported"
        std.save_pretrained(str(out_dir))
        cfg = json.loads((out_dir / "config.json").read_text())
        assert cfg["architectures"] == [orig_cls.__name__]
        loaded = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
        assert type(loaded) is orig_cls
        if case == "hf_gpt2_head_dim":
            assert loaded.lm_head.weight is loaded.transformer.wte.weight
        with torch.no_grad():
            again = _logits(loaded(*args, **kwargs))
        torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ loop features
def test_autocast_bf16_forward_backward_step():
    mu = _gpt(tie=False)
    std = mu.to_standard()
    stripped = copy.deepcopy(std)
    stripped.lm_head.weight.data.copy_(mu.lm_head.weight)  # the original function: no readout multiplier
    x, y = _batch(0)
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = mu(x)
        ref_std, ref_plain = std(x), stripped(x)
        assert logits.dtype == torch.bfloat16
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    # the multiplier applies under autocast: equals the folded export, not the un-multiplied function
    scale = logits.float().abs().max()
    assert (logits.float() - ref_std.float()).abs().max() < 0.02 * scale
    assert (logits.float() - ref_plain.float()).abs().max() > 0.5 * scale  # un-multiplied logits are 2x
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in mu.parameters())
    torch.nn.utils.clip_grad_norm_(mu.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(p.dtype == torch.float32 for p in mu.parameters())
    assert all(not torch.equal(p, before[n]) for n, p in mu.named_parameters())


def test_clip_grad_norm_keeps_mup_learning_rates():
    """First AdamW step after clipping: every entry moves by lr * lr_mult (Adam normalises), per μP group."""
    mu = _gpt(tie=False)
    lr = 1e-3
    opt = mu.optimizer(torch.optim.AdamW, lr=lr, weight_decay=0.0, eps=1e-12)
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    x, y = _batch(0)
    _lm_loss(mu, x, y).backward()
    total = torch.nn.utils.clip_grad_norm_(mu.parameters(), max_norm=0.05)
    assert total > 0.05
    after_clip = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in mu.parameters()]))
    assert after_clip == pytest.approx(0.05, rel=1e-4)
    opt.step()
    for g in opt.param_groups:
        assert g["lr"] == lr  # the μP multiplier applied inside step() only
    for n, p in mu.named_parameters():
        d = (p.detach() - before[n]).abs()
        moved = d[p.grad.abs() > 1e-9]
        want = lr * mu.plan[n].lr_mult["adam"]
        torch.testing.assert_close(moved.max().item(), want, rtol=1e-3, atol=0, msg=n)
    assert mu.plan["blocks.0.mlp.0.weight"].lr_mult["adam"] == BASE / WIDE


def test_gradient_accumulation_equals_big_batch():
    """2 micro-batches of 2 (loss / 2 each) == one batch of 4: the same gradients, and the same μP-SGD steps.
    (SGD, not Adam, for the parameter check: Adam's first step is ~lr·sign(g), which float noise flips for g ≈ 0.)"""
    big, acc = _gpt(tie=True), _gpt(tie=True)
    assert all(torch.equal(a, b) for a, b in zip(big.parameters(), acc.parameters()))
    opt_big = big.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.01)
    opt_acc = acc.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.01)
    assert len({g["lr_mult"] for g in opt_acc.param_groups}) > 1  # μP-SGD groups really differ
    for step in range(3):
        x, y = _batch(step, n=4)
        _lm_loss(big, x, y).backward()
        for xs, ys in zip(x.chunk(2), y.chunk(2)):
            (_lm_loss(acc, xs, ys) / 2).backward()
        for (n, a), b in zip(big.named_parameters(), acc.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=n)
        opt_big.step()
        opt_acc.step()
        opt_big.zero_grad(set_to_none=True)
        opt_acc.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in acc.parameters())
    for (n, a), b in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)


def test_zero_grad_set_to_none_matches_zeroing():
    runs = []
    for set_to_none in (True, False):
        mu = _gpt(tie=True)
        opt, sched = _make_opt(mu)
        losses = []
        for i in range(3):
            x, y = _batch(i)
            loss = _lm_loss(mu, x, y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=set_to_none)
            losses.append(loss.item())
            for p in mu.parameters():
                assert (p.grad is None) if set_to_none else (p.grad is not None and not p.grad.any())
        runs.append((losses, [p.detach().clone() for p in mu.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][0][0] != runs[0][0][-1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_frozen_parameters():
    torch.manual_seed(0)
    model, args, _ = build("gpt_untied", WIDE)
    frozen = {"wpe.weight"} | {n for n, _ in model.named_parameters() if n.startswith("blocks.0.")}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    mu = muplify(model, base_width=BASE, example_inputs=args)
    reference = _gpt(tie=False)
    assert {n: p.role for n, p in mu.plan.items()} == {n: p.role for n, p in reference.plan.items()}
    assert all(p.requires_grad == (n not in frozen) for n, p in mu.named_parameters())  # muplify keeps the flags

    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    names = {id(p): n for n, p in mu.named_parameters()}
    assert {names[i] for i in in_opt} == set(names.values()) - frozen
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    for i in range(2):
        x, y = _batch(i)
        _lm_loss(mu, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n, p in mu.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n

    # freezing after muplify(): the optimizer made later skips them too; explicit params work as well
    mu.lm_head.weight.requires_grad_(False)
    opt2 = mu.optimizer(torch.optim.SGD, lr=0.1)
    assert all(p is not mu.lm_head.weight for g in opt2.param_groups for p in g["params"])
    opt3 = mu.optimizer(torch.optim.AdamW, [p for p in mu.parameters() if p.requires_grad], lr=1e-3)
    assert sum(len(g["params"]) for g in opt3.param_groups) == sum(len(g["params"]) for g in opt2.param_groups)


def _gpt_head_dim(seed=0):
    """Built-in GPT with 2 heads whose head_dim grows: both hook kinds (readout input, q-slice output)."""
    torch.manual_seed(seed)
    model = GPT(vocab_size=VOCAB, d_model=WIDE, n_layer=2, n_head=2, block_size=32, tie_weights=False)
    x = _batch(0)[0]
    return muplify(model, base_width=BASE, example_inputs=(x,), head_scaling="head_dim"), x


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_moves_keep_multipliers(dtype):
    mu, x = _gpt_head_dim()
    assert {f.reason for f in mu.plan.forward} == {"readout", "attention"}
    ref32 = mu(x).detach()
    plain = mu.to_standard()
    for f in mu.plan.forward:  # undo the folding: the un-multiplied original function
        mod = plain.get_submodule(f.module)
        with torch.no_grad():
            if f.channels is None:
                mod.weight.div_(f.factor)
            else:
                mod.weight[f.channels[0]:f.channels[1]].div_(f.factor)
                mod.bias[f.channels[0]:f.channels[1]].div_(f.factor)
    plain32 = plain(x).detach()
    assert (ref32 - plain32).abs().max() > 0.05

    hooks = _mu_hooks(mu)
    out_mu = mu.to(dtype)
    assert out_mu is mu and is_muplified(mu) and _mu_hooks(mu) == hooks
    assert all(p.dtype == dtype for p in mu.parameters())
    y = mu(x)
    assert y.dtype == dtype
    err_mu, err_plain = (y.float() - ref32).abs().max().item(), (y.float() - plain32).abs().max().item()
    assert err_mu < (1e-6 if dtype == torch.float64 else 0.03), err_mu
    assert err_plain > 10 * err_mu, (err_mu, err_plain)  # still the μP function, not the un-multiplied one

    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    F.cross_entropy(y.flatten(0, 1).float(), x.flatten()).backward()
    opt.step()
    assert all(p.dtype == dtype for p in mu.parameters())
    assert torch.isfinite(mu(x).float()).all()


def test_deepcopy_is_still_mup_and_independent():
    mu = _gpt(tie=True)
    c = copy.deepcopy(mu)
    assert is_muplified(c) and type(c) is type(mu)
    assert c.plan.to_json() == mu.plan.to_json() and c.plan is not mu.plan
    assert _mu_hooks(c) == _mu_hooks(mu) and _mu_hooks(c)
    assert c.lm_head.weight is c.wte.weight and c.wte.weight is not mu.wte.weight
    x, y = _batch(0)
    assert torch.equal(c(x), mu(x))

    snapshot = {k: v.clone() for k, v in mu.state_dict().items()}
    opt = c.optimizer(torch.optim.AdamW, lr=1e-2)
    assert {id(p) for g in opt.param_groups for p in g["params"]}.isdisjoint({id(p) for p in mu.parameters()})
    for i in range(2):
        x, y = _batch(i)
        _lm_loss(c, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(v, snapshot[k]) for k, v in mu.state_dict().items())
    assert all(p.grad is None for p in mu.parameters())
    assert not torch.equal(c.wte.weight, mu.wte.weight)
    with pytest.raises(PlanError, match="read-only"):  # an applied plan cannot drift from the installed hooks
        c.plan.override("blocks.0.mlp.0.weight", lr_mult=1.0)
    assert mu.plan["blocks.0.mlp.0.weight"].lr_mult["adam"] == BASE / WIDE
