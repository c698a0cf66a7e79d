#!/usr/bin/env python
"""How long does ``muplify()`` take, and how much memory, on a 7B-parameter model built on the meta device?

1. HF ``LlamaForCausalLM`` with the Llama-2-7B shape (hidden 4096, intermediate 11008, 32 heads, 32 layers, vocab
   32000: 6.74e9 parameters) built under ``torch.device("meta")``, then ``muplify(model, base_width=256)``.  Measured
   in a fresh subprocess: wall time of the call (the first muplify() in the process, as a user sees it) and peak RSS
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, whole process, imports included) plus its growth during the call.
   Targets: <= 10 s and <= 2 GiB.  The parameters would take 27 GB in fp32; none is allocated.
2. Scaling with depth: the same width at 4 / 16 / 64 layers (one fresh subprocess each, after a 1-layer warm-up call
   so that one-time costs are excluded).  The time should grow at most linearly in the number of layers.

    python benchmarks/muplify_scale.py                    # ~1-2 minutes on 2 CPU cores
    python benchmarks/muplify_scale.py --out results/     # also writes results/muplify_scale.json

The child mode (``--child SPEC``) is what :func:`measure` runs; tests/test_meta.py uses :func:`measure` too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                num_key_value_heads=32, num_hidden_layers=32)


def _maxrss_mib() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _child(spec: dict) -> dict:
    """Runs in a fresh process: build meta Llamas and muplify them, one after the other."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec.get("threads", 1))
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from muplify import muplify

    hf_logging.set_verbosity_error()
    out = {"import_s": time.perf_counter() - t0, "runs": []}

    def one(layers: int) -> dict:
        cfg = LlamaConfig(**{**LLAMA_7B, **spec.get("config", {}), "num_hidden_layers": layers})
        t = time.perf_counter()
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        build_s = time.perf_counter() - t
        rss_before = _maxrss_mib()
        t = time.perf_counter()
        mu = muplify(model, base_width=spec.get("base_width", 256))
        sec = time.perf_counter() - t
        rss_after = _maxrss_mib()
        return {"layers": layers, "params": sum(p.numel() for p in mu.parameters()),
                "all_meta": all(p.is_meta for p in mu.parameters()), "build_s": build_s, "muplify_s": sec,
                "capture_s": mu.plan.capture_seconds, "peak_rss_mib": rss_after,
                "rss_growth_mib": rss_after - rss_before, "roles": mu.plan.summary()}

    if spec.get("warmup"):
        out["warmup"] = one(1)
    for layers in spec["layers"]:
        out["runs"].append(one(layers))
    return out


def measure(layers: list[int], *, warmup: bool = False, config: dict | None = None, timeout: float = 300.0,
            threads: int = 1) -> dict:
    """Run :func:`_child` in a fresh Python process (so that ru_maxrss is this measurement's own) and return its
    result.  ``layers``: layer counts measured one after the other in that process."""
    spec = {"layers": list(layers), "warmup": warmup, "config": config or {}, "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"muplify_scale child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--out", default=None, help="directory for muplify_scale.json")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 16, 64], help="depths for the scaling series")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return {}

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import env_info, write_json

    t0 = time.perf_counter()
    big = measure([LLAMA_7B["num_hidden_layers"]])["runs"][0]
    series = [measure([n], warmup=True)["runs"][0] for n in args.layers]
    result = {"meta": env_info(), "config": LLAMA_7B, "base_width": 256, "llama_7b": big, "scaling": series,
              "targets": {"muplify_s": 10.0, "peak_rss_mib": 2048.0}}

    rows = [("model", "layers", "params", "muplify s", "capture s", "s / layer", "peak RSS MiB", "RSS growth MiB")]
    for tag, r in [("7B (cold)", big)] + [("7B width (warm)", r) for r in series]:
        rows.append((tag, str(r["layers"]), f"{r['params'] / 1e9:.2f}e9", f"{r['muplify_s']:.2f}",
                     f"{r['capture_s']:.2f}", f"{r['muplify_s'] / r['layers']:.3f}", f"{r['peak_rss_mib']:.0f}",
                     f"{r['rss_growth_mib']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\nmuplify() on a meta-device HF Llama (hidden 4096, intermediate 11008, vocab 32000), base_width=256\n")
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    ratios = {f"{b['layers']}/{a['layers']}": {"time_ratio": b["muplify_s"] / a["muplify_s"],
                                               "layer_ratio": b["layers"] / a["layers"]}
              for a, b in zip(series, series[1:])}
    result["ratios"] = ratios
    ok_time, ok_rss = big["muplify_s"] <= 10.0, big["peak_rss_mib"] <= 2048.0
    result["pass"] = {"time": ok_time, "rss": ok_rss,
                      "linear": all(v["time_ratio"] <= 1.25 * v["layer_ratio"] for v in ratios.values())}
    print(f"\n7B: muplify {big['muplify_s']:.2f} s (target <= 10: {'ok' if ok_time else 'MISSED'}), peak RSS "
          f"{big['peak_rss_mib']:.0f} MiB (target <= 2048: {'ok' if ok_rss else 'MISSED'}), every parameter still "
          f"on meta: {big['all_meta']}")
    for k, v in ratios.items():
        print(f"layers {k}: time x{v['time_ratio']:.2f} for x{v['layer_ratio']:.0f} layers")
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(Path(args.out) / "muplify_scale.json", result)
        print(f"wrote {Path(args.out) / 'muplify_scale.json'}")
    return result


if __name__ == "__main__":
    main()
