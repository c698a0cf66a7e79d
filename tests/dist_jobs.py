"""Jobs that tests/test_distributed.py runs on 2 gloo ranks through :func:`dist_worker.launch`.

Each job runs inside an initialised process group and returns plain JSON (the test asserts on it), so one
process launch covers many checks: process start-up (importing torch and transformers) is the expensive part.
"""
from __future__ import annotations

import copy
import os
import time

import torch
import torch.distributed as dist

from muplify import muplify
from muplify.optim import _strip, make_optimizer

STEPS, SAVE_AT = 4, 2


# ------------------------------------------------------------------------------------------------------- models
def build(name: str, device: str = "cpu", plan=None):
    """(muplified model, batch of tokens, blocks to shard, loss function); seed the RNG first."""
    with torch.device(device):
        if name == "gpt":
            from muplify.models import GPT

            model = GPT(vocab_size=128, d_model=64, n_layer=2, block_size=16)  # tied wte / lm_head, GPT-2 init
            blocks = lambda m: list(m.blocks)
            loss_fn = lambda m, x: m(x, x)[1]
        elif name == "llama":
            from muplify_dev import zoo

            model, _, _ = zoo.build("hf_llama", 64)
            blocks = lambda m: list(m.model.layers)
            loss_fn = lambda m, x: m(input_ids=x, labels=x, use_cache=False).loss
        else:
            raise ValueError(name)
    mu = muplify(model, base_width=32, plan=plan)
    x = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    return mu, x, blocks, loss_fn


def gpt2_init(model) -> None:
    """GPT(init="gpt2") draws its weights in a loop at the end of __init__, not in reset_parameters: replay it."""
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            torch.nn.init.normal_(p, std=0.02)
        elif n.endswith("bias"):
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.ones_(p)


def shard(mu, blocks) -> None:
    from torch.distributed.fsdp import fully_shard

    for b in blocks(mu):
        fully_shard(b)
    fully_shard(mu)


def groups_by_name(model, opt) -> dict[str, list[float]]:
    """{parameter name without wrapper prefixes: [lr_mult, wd_mult]} for every parameter the optimizer holds."""
    names = {id(p): _strip(n) for n, p in model.named_parameters()}
    return {names[id(p)]: [g["lr_mult"], g["wd_mult"]] for g in opt.param_groups for p in g["params"]}


def run_steps(mu, opt, x, loss_fn, steps: int, rank: int, world: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = loss_fn(mu, x.chunk(world)[rank])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
    return losses


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _opt(model, **kw):
    return model.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.1, **kw)


# --------------------------------------------------------------------------------------------------------- jobs
def parity(name: str, ckpt: str) -> dict:
    """DDP and FSDP2 training vs one process on the whole batch; μP groups; DCP save -> load into a fresh sharded
    meta-built model -> identical continuation; sharded meta-device mup_init."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict = {}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    base, x, blocks, loss_fn = build(name)
    out["t_build"] = time.perf_counter() - t0

    # single process, whole batch (every rank computes it: the ranks stay in step)
    ref = copy.deepcopy(base)
    ref_opt = _opt(ref)
    out["ref_groups"] = groups_by_name(ref, ref_opt)
    out["ref"] = run_steps(ref, ref_opt, x, loss_fn, STEPS, 0, 1)
    ref_final = {n: p.detach().clone() for n, p in ref.named_parameters()}

    # DDP: the optimizer three ways
    inner = copy.deepcopy(base)
    out["ddp_groups_before_wrap"] = groups_by_name(inner, _opt(inner))
    ddp = DDP(inner)
    out["ddp_groups_inner"] = groups_by_name(ddp.module, _opt(ddp.module))
    opt = make_optimizer(ddp, inner.plan, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)  # "module." names
    out["ddp_groups_wrapper"] = groups_by_name(ddp, opt)
    out["ddp_wrapper_names"] = sorted(n for n, _ in ddp.named_parameters())[:2]
    out["ddp"] = run_steps(ddp, opt, x, loss_fn, STEPS, rank, world)
    out["ddp_max_param_diff"] = max(float((p - ref_final[n]).abs().max()) for n, p in inner.named_parameters())

    # FSDP2: fully_shard each block, then the root, on the muplified model
    fs = copy.deepcopy(base)
    shard(fs, blocks)
    out["fsdp_class"] = type(fs).__name__
    out["fsdp_param_types"] = sorted({type(p).__name__ for p in fs.parameters()})
    opt = _opt(fs)
    out["fsdp_groups"] = groups_by_name(fs, opt)
    out["fsdp"] = run_steps(fs, opt, x, loss_fn, SAVE_AT, rank, world)
    model_sd, optim_sd = get_state_dict(fs, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt)
    out["fsdp"] += run_steps(fs, opt, x, loss_fn, STEPS - SAVE_AT, rank, world)
    out["fsdp_max_param_diff"] = max(float((_full(p) - ref_final[n]).abs().max()) for n, p in fs.named_parameters())
    tied = getattr(fs, "lm_head", None)
    out["fsdp_tied"] = tied is not None and name == "gpt" and fs.lm_head.weight is fs.wte.weight

    # resume: a fresh model built on the meta device, re-using the plan; to_empty + mup_init (non-persistent buffers
    # such as HF rotary tables are not in the checkpoint), then dcp.load
    t1 = time.perf_counter()
    fresh, _, _, _ = build(name, "meta", plan=base.plan)
    out["fresh_all_meta"] = all(p.is_meta for p in fresh.parameters())
    shard(fresh, blocks)
    fresh.to_empty(device="cpu")
    torch.manual_seed(1234 + rank)  # CPU DTensors draw from each rank's own generator
    fresh.mup_init(init_fn=gpt2_init if name == "gpt" else None)  # HF: its own _init_weights
    out["fresh_init_rules"] = {n: [p.init_rule, p.init_scale] for n, p in fresh.plan.items()}
    out["ref_init_rules"] = {n: [p.init_rule, p.init_scale] for n, p in ref.plan.items()}
    out["fresh_init_std"] = {n: float(_full(p).float().std()) for n, p in fresh.named_parameters() if p.dim() > 1}
    out["ref_init_std"] = {n: float(p.float().std()) for n, p in base.named_parameters() if p.dim() > 1}
    fopt = _opt(fresh)
    model_sd, optim_sd = get_state_dict(fresh, fopt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(fresh, fopt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    out["resumed_groups"] = groups_by_name(fresh, fopt)
    out["resumed_group_keys"] = sorted({k for g in fopt.param_groups for k in ("lr_mult", "wd_mult") if k in g})
    out["resumed"] = run_steps(fresh, fopt, x, loss_fn, STEPS - SAVE_AT, rank, world)
    out["t_resume"] = time.perf_counter() - t1
    out["t_total"] = time.perf_counter() - t0
    return out


def fail(bad_rank: int = 1) -> None:
    """One rank raises while the others wait in a collective that it will never join."""
    if dist.get_rank() == bad_rank:
        raise ValueError(f"deliberate failure on rank {bad_rank}")
    t = torch.zeros(1)
    dist.all_reduce(t)
    time.sleep(600)


def hang() -> None:
    """No rank fails, nothing finishes: only the launcher's timeout can end this."""
    if dist.get_rank() == 0:
        dist.all_reduce(torch.zeros(1))
    time.sleep(600)


def pid() -> int:
    return os.getpid()
