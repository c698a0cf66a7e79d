"""muplify + FSDP2, minimal: meta-device build, μP analysis, sharding, training, distributed checkpoint.

    torchrun --nproc_per_node 2 examples/fsdp2_example.py                  # gloo on CPU, nccl on GPUs
    torchrun --nproc_per_node 2 examples/fsdp2_example.py --ckpt /tmp/ckpt --out losses.json

Every rank builds the model on the meta device (no parameter memory) and muplifies it there: the analysis runs on
fake tensors.  Rank 0 alone materialises the initial μP weights (the same call on a CPU model) and broadcasts them
into the shards, so the run equals one process on the whole batch up to fp32 rounding (tests/test_distributed.py
checks it).  To initialise a model too large for one host, replace that step by ``mu.mup_init()`` on the sharded
model (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from muplify import muplify  # noqa: E402
from muplify.models import GPT  # noqa: E402

WIDTH, BASE_WIDTH, VOCAB, SEQ, BATCH = 128, 64, 256, 32, 8


def build(device: str = "meta"):
    """The muplified model (seed the RNG first for reproducible weights; a meta model has none)."""
    with torch.device(device):
        model = GPT(vocab_size=VOCAB, d_model=WIDTH, n_layer=2, block_size=SEQ, tie_weights=False, init="torch")
    return muplify(model, base_width=BASE_WIDTH)


def batches(steps: int, seed: int = 0) -> list[torch.Tensor]:
    """A toy task: memorise one fixed batch of random tokens (the loss must go down)."""
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))
    return [x] * steps


def train(mu, opt, data, rank: int = 0, world: int = 1) -> list[float]:
    """One optimizer step per batch; each rank takes its slice of the batch.  Returns the global losses."""
    losses = []
    for x in data:
        x = x.chunk(world)[rank].to(next(mu.parameters()).device)
        _, loss = mu(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            loss = loss.detach().clone()
            dist.all_reduce(loss)  # mean over ranks = loss of the whole batch (equal slices)
            loss /= world
        losses.append(loss.item())
    return losses


def shard(mu) -> None:
    for block in mu.blocks:
        fully_shard(block)
    fully_shard(mu)


def main(argv=None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ckpt", default=None, help="save model + optimizer here with torch.distributed.checkpoint")
    ap.add_argument("--out", default=None, help="write the losses here (JSON), from rank 0")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    mu = build("meta")  # μP analysis on fake tensors: no parameter memory
    shard(mu)  # DTensor parameters, still on meta
    mu.to_empty(device=device)  # allocate this rank's shards (uninitialised)
    full = {}
    if rank == 0:  # the initial μP weights, materialised on one host only
        torch.manual_seed(0)
        full = build("cpu").state_dict()
    set_model_state_dict(mu, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    opt = mu.optimizer(torch.optim.AdamW, lr=args.lr, weight_decay=0.1)  # μP groups on the sharded parameters
    losses = train(mu, opt, batches(args.steps), rank, world)

    if args.ckpt:
        model_sd, optim_sd = get_state_dict(mu, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.ckpt)
    if rank == 0:
        print("losses:", " ".join(f"{v:.5f}" for v in losses))
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"losses": losses, "world_size": world, "groups": [
                    {"lr_mult": g["lr_mult"], "wd_mult": g["wd_mult"], "roles": g["mup_roles"]}
                    for g in opt.param_groups]}, fh)
    dist.barrier()  # tear down together: gloo can abort a rank whose peer has already gone
    dist.destroy_process_group()
    return losses


def reference(steps: int = 5, lr: float = 3e-3) -> list[float]:
    """The same run in one process on the whole batch, no distribution."""
    torch.manual_seed(0)
    mu = build("cpu")
    return train(mu, mu.optimizer(torch.optim.AdamW, lr=lr, weight_decay=0.1), batches(steps))


if __name__ == "__main__":
    main()
