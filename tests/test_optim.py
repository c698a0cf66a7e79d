"""μP optimizer: groups, rules checked against theory, every built-in LR scheduler, Tensor lr under compile."""
from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as S

from muplify import OptimizerRuleError, muplify
from muplify.models import GPT
from muplify_dev.optimizers import Lion

BASE, WIDE = 32, 128  # width_mult 4


def _mu(**kw):
    torch.manual_seed(0)
    return muplify(GPT(d_model=WIDE, n_layer=2, head_dim=16, vocab_size=64, block_size=16), base_width=BASE, **kw)


def _step(mu, opt):
    x = torch.randint(0, 64, (2, 16))
    loss = mu(x, x)[1]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def test_groups_are_merged_and_carry_multipliers():
    mu = _mu()
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    assert len(opt.param_groups) == 2  # {input, output, vector} x1 and hidden x1/4
    by_role = {g["mup_roles"]: g for g in opt.param_groups}
    assert by_role["hidden"]["lr_mult"] == pytest.approx(BASE / WIDE)
    assert by_role["hidden"]["wd_mult"] == pytest.approx(WIDE / BASE)
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)  # schedule lr; multipliers apply inside step()
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(mu.parameters()))


def test_adam_first_step_matches_theory():
    """Adam's first update is ±lr per entry (m/√v = sign(g)); μP: lr/m_in for hidden weights, lr elsewhere."""
    mu = _mu()
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    opt = mu.optimizer(torch.optim.Adam, lr=1e-2, eps=1e-12)
    _step(mu, opt)
    for n, p in mu.named_parameters():
        delta = (p.detach() - before[n]).abs()
        nonzero = delta[delta > 0]
        if nonzero.numel() == 0:
            continue
        expected = 1e-2 * mu.plan[n].lr_mult["adam"]
        assert nonzero.median().item() == pytest.approx(expected, rel=1e-3), n


def test_sgd_rule_matches_theory():
    """SGD: Δ = lr·mult·g; compare with a plain SGD step on a copy scaled per parameter."""
    mu = _mu()
    opt = mu.optimizer(torch.optim.SGD, lr=0.1)
    x = torch.randint(0, 64, (2, 16))
    mu(x, x)[1].backward()
    grads = {n: p.grad.clone() for n, p in mu.named_parameters()}
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    opt.step()
    for n, p in mu.named_parameters():
        mult = mu.plan[n].lr_mult["sgd"]
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * mult * grads[n])
    roles = {mu.plan[n].role: mu.plan[n].lr_mult["sgd"] for n in mu.plan}
    assert roles == {"output": 4.0, "input": 4.0, "vector": 4.0, "hidden": 1.0}


def test_coupled_weight_decay_keeps_lr_times_wd():
    """With zero gradients AdamW only decays: p -= lr·lr_mult·wd·wd_mult·p, the same for every role."""
    mu = _mu()
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    for p in mu.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in mu.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] * (1 - 1e-2 * 0.5))


def test_scaled_weight_decay_policy():
    mu = _mu(weight_decay="scaled")
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.5)
    assert all(g["wd_mult"] == 1.0 for g in opt.param_groups)


def test_user_param_groups_are_respected():
    mu = _mu()
    decay = [p for n, p in mu.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in mu.named_parameters() if p.dim() < 2]
    opt = mu.optimizer(torch.optim.AdamW, [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                       lr=1e-3, weight_decay=0.1)
    for g in opt.param_groups:
        if any(p.dim() < 2 for p in g["params"]):
            assert g["weight_decay"] == 0.0
        else:
            assert g["weight_decay"] == 0.1
    assert {g["lr_mult"] for g in opt.param_groups} == {1.0, BASE / WIDE}
    _step(mu, opt)


def test_frozen_parameters_are_skipped():
    mu = _mu()
    mu.wpe.weight.requires_grad_(False)
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    assert all(p is not mu.wpe.weight for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
                                 torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax, torch.optim.SGD])
def test_known_optimizers_train(cls):
    mu = _mu()
    opt = mu.optimizer(cls, lr=1e-3)
    assert type(opt) is cls
    losses = [_step(mu, opt) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_foreach_and_fused(flag):
    mu = _mu()
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3, **{flag: True})
    assert all(g[flag] for g in opt.param_groups)
    _step(mu, opt)


def test_unknown_optimizer_needs_rule():
    mu = _mu()
    with pytest.raises(OptimizerRuleError, match="rule='adam'"):
        mu.optimizer(Lion, lr=1e-3)
    opt = mu.optimizer(Lion, lr=1e-3, rule="adam")
    assert {g["lr_mult"] for g in opt.param_groups} == {1.0, BASE / WIDE}
    _step(mu, opt)


def _schedulers(opt):
    return {
        "LambdaLR": lambda: S.LambdaLR(opt, lambda s: 1 / (s + 1)),
        "MultiplicativeLR": lambda: S.MultiplicativeLR(opt, lambda s: 0.9),
        "StepLR": lambda: S.StepLR(opt, 2, 0.5),
        "MultiStepLR": lambda: S.MultiStepLR(opt, [1, 3], 0.5),
        "ConstantLR": lambda: S.ConstantLR(opt, 0.5, total_iters=2),
        "LinearLR": lambda: S.LinearLR(opt, 0.1, 1.0, total_iters=3),
        "ExponentialLR": lambda: S.ExponentialLR(opt, 0.9),
        "PolynomialLR": lambda: S.PolynomialLR(opt, total_iters=5),
        "CosineAnnealingLR": lambda: S.CosineAnnealingLR(opt, 5, eta_min=1e-5),
        "CosineAnnealingWarmRestarts": lambda: S.CosineAnnealingWarmRestarts(opt, 2, eta_min=1e-5),
        "CyclicLR": lambda: S.CyclicLR(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=2),
        "OneCycleLR": lambda: S.OneCycleLR(opt, max_lr=1e-2, total_steps=10),
        "SequentialLR": lambda: S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=2), S.ExponentialLR(opt, 0.9)],
                                               milestones=[2]),
        "ChainedScheduler": lambda: S.ChainedScheduler([S.ExponentialLR(opt, 0.9), S.StepLR(opt, 2, 0.5)]),
        "ReduceLROnPlateau": lambda: S.ReduceLROnPlateau(opt, patience=0, factor=0.5, min_lr=1e-5),
    }


@pytest.mark.parametrize("name", list(_schedulers(None)))
def test_every_builtin_scheduler_keeps_mup_ratios(name):
    """The lr each group actually uses inside step() keeps the μP ratio, even for absolute-lr schedulers."""
    mu = _mu()
    opt = mu.optimizer(torch.optim.SGD, lr=1e-3, momentum=0.9)  # CyclicLR needs momentum
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
    sched = _schedulers(opt)[name]()
    mults = [g["lr_mult"] for g in opt.param_groups]
    assert len(set(mults)) > 1
    for _ in range(5):
        loss = _step(mu, opt)
        sched.step(loss) if name == "ReduceLROnPlateau" else sched.step()
    assert len(seen) == 5
    for lrs in seen:
        schedule_lr = lrs[0] / mults[0]
        for lr, m in zip(lrs, mults):
            assert lr == pytest.approx(schedule_lr * m, rel=1e-12)
    # and the schedule moved the lr at least once (the test would not catch a frozen lr otherwise)
    assert len({round(s[0], 15) for s in seen}) > 1 or name == "ReduceLROnPlateau"


def test_tensor_lr_compiled_step_does_not_recompile():
    import torch._dynamo

    torch._dynamo.reset()
    mu = _mu()
    opt = mu.optimizer(torch.optim.AdamW, lr=torch.tensor(1e-3), foreach=False)  # foreach+Tensor lr needs capturable (GPU)
    assert all(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)
    sched = S.LambdaLR(opt, lambda s: 1 / (s + 1))
    step = torch.compile(opt.step, backend="eager")
    x = torch.randint(0, 64, (2, 16))
    def one_step():
        mu(x, x)[1].backward()
        step()
        opt.zero_grad()
        sched.step()

    for _ in range(2):  # the first calls compile (optimizer state is created lazily), as for any optimizer
        one_step()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):  # the schedule changes lr every step: no recompilation
            one_step()
    assert all(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)
    assert opt.param_groups[0]["lr"].item() == pytest.approx(1e-3 / 6)
