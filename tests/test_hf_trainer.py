"""Issue #3: a muplified HF model trains under ``transformers.Trainer`` with the μP optimizer and an HF scheduler."""
from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from muplify import muplify  # noqa: E402
from muplify_dev.zoo import build  # noqa: E402

BASE, WIDE = 32, 64


def _dataset(n: int = 8, seq: int = 8, vocab: int = 128):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (seq,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def test_trainer_trains_muplified_gpt2_with_mup_lrs(tmp_path):
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

    torch.manual_seed(0)
    model, args, kwargs = build("hf_gpt2", WIDE)
    mu = muplify(model, base_width=BASE, example_inputs=args, example_kwargs=kwargs)
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}

    lr, wd = 1e-3, 0.1
    opt = mu.optimizer(torch.optim.AdamW, lr=lr, weight_decay=wd)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=4)
    seen = []  # what AdamW actually uses inside step(): registered after muplify's own pre-hook

    def capture(o, _args, _kwargs):
        seen.append({"lrs": [g["lr"] for g in o.param_groups], "wds": [g["weight_decay"] for g in o.param_groups],
                     "sched": list(sched.get_last_lr())})

    opt.register_step_pre_hook(capture)
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, report_to=[],
                              use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = Trainer(model=mu, args=targs, train_dataset=_dataset(), optimizers=(opt, sched))
    result = trainer.train()

    assert result.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in mu.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before), set(before) - set(changed)

    mults = [g["lr_mult"] for g in opt.param_groups]
    wd_mults = [g["wd_mult"] for g in opt.param_groups]
    assert sorted(mults) == [BASE / WIDE, 1.0]  # hidden Adam lr x1/m, everything else x1
    assert len(seen) == 3
    for s in seen:
        for lr_used, lr_sched, m in zip(s["lrs"], s["sched"], mults):
            assert lr_used == pytest.approx(lr_sched * m, rel=1e-12)
        for wd_used, wm in zip(s["wds"], wd_mults):
            assert wd_used == pytest.approx(wd * wm, rel=1e-12)
    moving = [s for s in seen if s["sched"][0] > 0]  # step 1 is warmup at lr 0
    assert len(moving) == 2
    for s in moving:
        ratios = [x / s["lrs"][0] for x in s["lrs"]]
        assert ratios == pytest.approx([m / mults[0] for m in mults])
    # after training the groups hold the schedule's lr again (the multiplier is applied inside step() only)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(sched.get_last_lr())
    assert trainer.model is mu and type(mu).__name__ == "MuGPT2LMHeadModel"

    # Trainer.save_model -> a normal HF directory (architectures names the real class); from_pretrained + the saved
    # plan gives back the trained μP model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "final"
    trainer.save_model(str(out))
    mu.plan.to_json(str(out / "mup_plan.json"))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    again = muplify(loaded, plan=str(out / "mup_plan.json"))
    mu.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(again(*args, **kwargs).logits, mu(*args, **kwargs).logits)
