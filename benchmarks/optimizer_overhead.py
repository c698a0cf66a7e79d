#!/usr/bin/env python
"""What does a μP optimizer step cost per optimizer family?  μP step time / plain step time, side by side.

For each family the same muplified GPT's parameters get the same gradients; the plain optimizer is the one a user
would write without muplify (one group, or for Muon: Muon on the hidden matrices + AdamW on the rest, stepped one
after the other), the μP optimizer is ``mu.optimizer(...)`` (μP groups, step hooks; for Muon one CombinedOptimizer).
Rounds alternate the order (A,B / B,A); medians are compared.  Also counts Newton–Schulz calls per Muon step (must
equal the number of matrices Muon holds: the combined optimizer must not orthogonalise twice).

    python benchmarks/optimizer_overhead.py --quick     # ~1 minute
    python benchmarks/optimizer_overhead.py             # GPT d_model 256, 4 layers (3.3M params), 2 threads

Writes ``OUT/optimizer_overhead.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

from common import env_info, interleaved_timings, median, set_threads, write_json  # noqa: E402

from muplify import muplify, register_rule  # noqa: E402
from muplify.models import GPT  # noqa: E402
from muplify_dev.optimizers import Lion  # noqa: E402


register_rule(Lion, "sign")

FAMILIES = {
    "adam (AdamW, foreach)": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.1, "foreach": True}, None),
    "sgd (SGD momentum, foreach)": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "foreach": True}, None),
    "sign (Lion, foreach)": (Lion, {"lr": 1e-4, "weight_decay": 0.1}, None),
    "adafactor (Adafactor, foreach)": (torch.optim.Adafactor, {"lr": 1e-2, "foreach": True}, None),
    "muon (Muon + AdamW fallback)": (torch.optim.Muon, {"lr": 0.02}, (torch.optim.AdamW, {"lr": 1e-3})),
}


def plain_step(model, mu_plan, cls, kw, fallback):
    """The optimizer a user would write without muplify, as one step function."""
    if fallback is None:
        opt = cls(model.parameters(), **kw)
        return opt.step
    named = dict(model.named_parameters())
    hidden = [p for n, p in named.items() if mu_plan[n].role == "hidden" and p.dim() == 2]
    rest = [p for n, p in named.items() if not (mu_plan[n].role == "hidden" and p.dim() == 2)]
    a, b = cls(hidden, **kw), fallback[0](rest, **fallback[1])

    def step():
        a.step()
        b.step()
    return step


def count_ns_calls(mu, opt) -> tuple[int, int]:
    """(Newton–Schulz calls in one step, matrices on Muon)."""
    import torch.optim._muon as muon_mod

    calls = [0]
    orig = muon_mod._zeropower_via_newtonschulz

    def counting(*a, **k):
        calls[0] += 1
        return orig(*a, **k)
    muon_mod._zeropower_via_newtonschulz = counting
    try:
        opt.step()
    finally:
        muon_mod._zeropower_via_newtonschulz = orig
    n_muon = sum(len(g["params"]) for g in opt.param_groups if g.get("mup_family") == "muon")
    return calls[0], n_muon


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/optimizer_overhead")
    a = ap.parse_args(argv)
    d_model, n_layer, rounds, inner = (128, 2, 10, 3) if a.quick else (256, 4, 30, 5)
    threads = set_threads(a.threads or (1 if a.quick else 2))
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = GPT(vocab_size=256, d_model=d_model, n_layer=n_layer, head_dim=32, block_size=128, tie_weights=False)
    mu = muplify(model, base_width=64)
    n_params = sum(p.numel() for p in mu.parameters())
    rows = []
    for name, (cls, kw, fallback) in FAMILIES.items():
        plain_model, mu_model = copy.deepcopy(mu), copy.deepcopy(mu)
        for m in (plain_model, mu_model):
            g = torch.Generator().manual_seed(1)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g) * 1e-3
        plain = plain_step(plain_model, mu.plan, cls, kw, fallback)
        opt = mu_model.optimizer(cls, fallback=fallback, **kw) if fallback else mu_model.optimizer(cls, **kw)
        for _ in range(3):  # warm up (state allocation)
            plain()
            opt.step()
        t = interleaved_timings({"plain": plain, "mup": opt.step}, rounds, inner)
        tp, tm = median(t["plain"]), median(t["mup"])
        row = {"family": name, "plain_ms": tp * 1e3, "mup_ms": tm * 1e3, "ratio": tm / tp,
               "groups": len(opt.param_groups)}
        if fallback is not None:
            row["ns_calls_per_step"], row["muon_matrices"] = count_ns_calls(mu_model, opt)
        rows.append(row)
        print(f"{name}: plain {tp * 1e3:.2f} ms, μP {tm * 1e3:.2f} ms, ratio {tm / tp:.3f}", flush=True)
    print(f"\nGPT d_model {d_model}, {n_layer} layers ({n_params / 1e6:.1f}M params), {threads} threads, "
          f"{rounds} rounds x {inner} steps, medians\n")
    print("| family | plain step | μP step | ratio | param groups |")
    print("|---|---|---|---|---|")
    for r in rows:
        extra = (f" (Newton–Schulz calls per step: {r['ns_calls_per_step']} for {r['muon_matrices']} matrices)"
                 if "ns_calls_per_step" in r else "")
        print(f"| {r['family']} | {r['plain_ms']:.2f} ms | {r['mup_ms']:.2f} ms | {r['ratio']:.3f} | "
              f"{r['groups']}{extra} |")
    out = Path(a.out)
    write_json(out / "optimizer_overhead.json", {"env": env_info(), "d_model": d_model, "n_layer": n_layer,
                                                 "n_params": n_params, "rounds": rounds, "inner": inner,
                                                 "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
