#!/usr/bin/env python
"""What only an accelerator can measure (issue 20), in one script of <= 8 minutes on one GPU.

Sections (each a row set in ``gpu_suite.json``; a section that fails records its error and the rest still run):

1. ``adamw``: train-step time (forward + backward + step) μP / plain for AdamW ``fused=True`` and ``foreach=True``;
2. ``muon``: the same for ``torch.optim.Muon`` on the hidden matrices + AdamW on the rest (μP: one
   ``mu.optimizer(Muon, fallback=...)``; plain: the two optimizers a user would write);
3. ``bf16``: the AdamW (foreach) step under ``torch.autocast(dtype=torch.bfloat16)``, μP / plain;
4. ``compile``: ``torch.compile`` of the μP and the plain model: first-step (compile) time, steady step time and the
   number of graphs / recompiles over the run (μP's forward multipliers must not add recompiles);
5. ``mutransfer``: GPT at widths up to 2048 (base width 256), AdamW at a few learning rates, on a fixed bigram
   Markov stream (learnable, no download): final loss per (width, lr), the best lr per width (μTransfer: the same
   at every width) and real throughput (tokens/s).

    bash benchmarks/gpu_suite.sh                          # CUDA, full sizes, writes benchmarks/results/gpu_suite/
    python benchmarks/gpu_suite.py --device cpu --quick   # the same code path on a CPU, tiny sizes (~1-2 min)
    python benchmarks/gpu_suite.py --device cpu --smoke   # every section at the smallest size, < 60 s (tested)

On a CPU with ``--quick`` the compile section uses the ``aot_eager`` backend (no C++ toolchain needed), with
``--smoke`` dynamo's ``eager`` backend; on CUDA it uses inductor.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_info, write_json  # noqa: E402

from muplify import muplify  # noqa: E402
from muplify.reuse import reusing  # noqa: E402
from muplify.models import GPT  # noqa: E402

VOCAB = 256


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make(width: int, n_layer: int, seq: int, device: str, base: int, seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(vocab_size=VOCAB, d_model=width, n_layer=n_layer, head_dim=32 if width >= 64 else 16,
                block_size=seq, attn="sdpa", tie_weights=False)
    plain = copy.deepcopy(model).to(device)
    x = torch.zeros(2, seq, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(model, base_width=base, example_inputs=(x,)).to(device)
    return plain, mu


class Bigram:
    """A fixed random Markov chain over VOCAB tokens (each token has 4 likely successors): learnable, endless."""

    def __init__(self, device: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        logits = torch.full((VOCAB, VOCAB), -4.0)
        nxt = torch.randint(0, VOCAB, (VOCAB, 4), generator=g)
        logits.scatter_(1, nxt, 2.0)
        self.probs = logits.softmax(-1).to(device)
        self.device = device
        self.g = torch.Generator(device=device).manual_seed(seed + 1)

    def batch(self, bs: int, seq: int) -> torch.Tensor:
        tok = torch.randint(0, VOCAB, (bs,), device=self.device, generator=self.g)
        out = [tok]
        for _ in range(seq):
            tok = torch.multinomial(self.probs[tok], 1, generator=self.g).squeeze(1)
            out.append(tok)
        return torch.stack(out, 1)


def loss_fn(model, batch):
    logits = model(batch[:, :-1])
    logits = logits[0] if isinstance(logits, tuple) else logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def step_fn(model, opt, batch, autocast: torch.dtype | None, device: str):
    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is not None:
            with torch.autocast(device_type=device.split(":")[0], dtype=autocast):
                loss = loss_fn(model, batch)
        else:
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        return loss
    return step


def timed(fn, n: int, device: str) -> float:
    """Median seconds per call over n calls (after the caller's warm-up)."""
    ts = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def pair(cfg, device, make_opts, autocast=None, compile_backend=None) -> dict:
    """Step time of the plain model with the plain optimizer(s) and of the μP model with mu.optimizer()."""
    plain, mu = make(cfg["width"], cfg["layers"], cfg["seq"], device, cfg["base"])
    batch = Bigram(device).batch(cfg["batch"], cfg["seq"])
    row = {}
    for tag, model in (("plain", plain), ("mup", mu)):
        opt = make_opts(tag, model, mu.plan)
        fwd = model
        if compile_backend is not None:
            torch._dynamo.reset()
            from torch._dynamo.utils import counters
            counters.clear()
            fwd = torch.compile(model, backend=compile_backend)
        step = step_fn(fwd, opt, batch, autocast, device)
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        row[f"{tag}_first_step_s"] = time.perf_counter() - t
        for _ in range(cfg["warmup"]):
            step()
        row[f"{tag}_step_ms"] = timed(step, cfg["steps"], device) * 1e3
        if compile_backend is not None:
            from torch._dynamo.utils import counters
            row[f"{tag}_graphs"] = int(counters["stats"]["unique_graphs"])
            row[f"{tag}_recompiles"] = int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0
    row["ratio"] = row["mup_step_ms"] / row["plain_step_ms"]
    return row


def adamw(kind: str, lr: float = 1e-3):
    flag = {"fused": {"fused": True}, "foreach": {"foreach": True}}[kind]

    def opts(tag, model, plan):
        if tag == "plain":
            return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, **flag)
        return model.optimizer(torch.optim.AdamW, lr=lr, weight_decay=0.1, **flag)
    return opts


def muon_opts(tag, model, plan):
    if tag == "mup":
        return model.optimizer(torch.optim.Muon, lr=0.02, fallback=(torch.optim.AdamW, {"lr": 1e-3}))
    named = dict(model.named_parameters())
    hidden = [p for n, p in named.items() if plan[n].role == "hidden" and p.dim() == 2]
    rest = [p for n, p in named.items() if not (plan[n].role == "hidden" and p.dim() == 2)]
    a, b = torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-3)

    class Both:
        def zero_grad(self, set_to_none=True):
            a.zero_grad(set_to_none=set_to_none)
            b.zero_grad(set_to_none=set_to_none)

        def step(self):
            a.step()
            b.step()
    return Both()


def mutransfer(cfg, device) -> list[dict]:
    rows = []
    for width in cfg["widths"]:
        for lr in cfg["lrs"]:
            _, mu = make(width, cfg["layers"], cfg["seq"], device, cfg["base"])
            opt = mu.optimizer(torch.optim.AdamW, lr=lr, weight_decay=0.0, foreach=True)
            data = Bigram(device, seed=0)
            amp = torch.bfloat16 if device.startswith("cuda") else None
            step = None
            losses = []
            sync(device)
            t = time.perf_counter()
            for _ in range(cfg["train_steps"]):
                batch = data.batch(cfg["batch"], cfg["seq"])
                step = step_fn(mu, opt, batch, amp, device)
                losses.append(float(step().detach()))
            sync(device)
            sec = time.perf_counter() - t
            tail = losses[-max(1, len(losses) // 5):]
            final = sum(tail) / len(tail)
            rows.append({"width": width, "lr": lr, "final_loss": final if math.isfinite(final) else None,
                         "tokens_per_s": cfg["train_steps"] * cfg["batch"] * cfg["seq"] / sec, "seconds": sec})
            print(f"  mutransfer width {width} lr {lr:g}: loss {final:.3f}, "
                  f"{rows[-1]['tokens_per_s']:.0f} tok/s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="every section at the smallest size (one step each): checks the code path in < 60 s on a CPU")
    ap.add_argument("--out", default="benchmarks/results/gpu_suite")
    ap.add_argument("--only", nargs="*", default=None, help="sections to run (default: all)")
    a = ap.parse_args(argv)
    dev = a.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --quick to test the script", file=sys.stderr)
        return 2
    if a.smoke:
        cfg = dict(width=32, layers=1, seq=8, batch=2, base=16, warmup=0, steps=1)
        mt = dict(widths=[16, 32], lrs=[1e-2], layers=1, seq=8, batch=2, base=16, train_steps=2)
    elif a.quick:
        cfg = dict(width=64, layers=2, seq=32, batch=4, base=32, warmup=2, steps=5)
        mt = dict(widths=[32, 64], lrs=[1e-3, 1e-2], layers=2, seq=32, batch=4, base=32, train_steps=20)
    else:
        cfg = dict(width=1024, layers=8, seq=512, batch=16, base=256, warmup=5, steps=20)
        mt = dict(widths=[256, 512, 1024, 2048], lrs=[3e-4, 1e-3, 3e-3, 1e-2], layers=4, seq=256, batch=32,
                  base=256, train_steps=150)
    # CPU: aot_eager (no C++ toolchain needed); --smoke: dynamo's eager backend (graphs and recompiles still counted)
    backend = "inductor" if dev.startswith("cuda") else ("eager" if a.smoke else "aot_eager")
    bf16_ok = dev.startswith("cuda") or dev == "cpu"
    sections = {
        "adamw_fused": lambda: pair(cfg, dev, adamw("fused")),
        "adamw_foreach": lambda: pair(cfg, dev, adamw("foreach")),
        "muon": lambda: pair(cfg, dev, muon_opts),
        "bf16_autocast": lambda: pair(cfg, dev, adamw("foreach"), autocast=torch.bfloat16) if bf16_ok else None,
        "compile": lambda: {**pair(cfg, dev, adamw("foreach"), compile_backend=backend), "backend": backend},
        "mutransfer": lambda: mutransfer(mt, dev),
    }
    result = {"env": env_info(), "device": dev, "device_name": torch.cuda.get_device_name() if dev.startswith("cuda")
              else "cpu", "quick": a.quick, "config": cfg, "mutransfer_config": mt, "sections": {}}
    t0 = time.perf_counter()
    with reusing():  # every make() after the first reuses its analysis (muplify.reuse): one capture per structure
        _run_sections(sections, a.only, result)
    if "mutransfer" in result["sections"] and result["sections"]["mutransfer"]["ok"]:
        best = {}
        for r in result["sections"]["mutransfer"]["result"]:
            if r["final_loss"] is not None and (r["width"] not in best or r["final_loss"] < best[r["width"]][1]):
                best[r["width"]] = (r["lr"], r["final_loss"])
        result["sections"]["mutransfer"]["best_lr"] = {str(w): v[0] for w, v in best.items()}
        print("mutransfer best lr per width:", result["sections"]["mutransfer"]["best_lr"])
    result["seconds"] = time.perf_counter() - t0
    write_json(Path(a.out) / "gpu_suite.json", result)
    print(f"wrote {Path(a.out) / 'gpu_suite.json'} ({result['seconds']:.0f} s)")
    return 0 if all(s["ok"] for s in result["sections"].values()) else 1


def _run_sections(sections: dict, only, result: dict) -> None:
    """Run each section (all, or those in ``only``); a failing one records its error and the rest still run."""
    for name, fn in sections.items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        try:
            res = fn()
            result["sections"][name] = {"ok": True, "result": res, "seconds": time.perf_counter() - t}
            if isinstance(res, dict):
                print(f"{name}: plain {res['plain_step_ms']:.2f} ms, μP {res['mup_step_ms']:.2f} ms, ratio "
                      f"{res['ratio']:.3f}" + (f", graphs {res['plain_graphs']}/{res['mup_graphs']}, recompiles "
                                               f"{res['plain_recompiles']}/{res['mup_recompiles']}, first step "
                                               f"{res['plain_first_step_s']:.1f}/{res['mup_first_step_s']:.1f} s"
                                               if "mup_graphs" in res else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - a failing section is recorded, the others still run
            result["sections"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                        "traceback": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
