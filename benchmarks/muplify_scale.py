#!/usr/bin/env python
"""How long does ``muplify()`` take, and how much memory, on deep models built on the meta device (issue 20)?

Every case runs in a fresh Python process, as a user runs it (the first muplify() of the process, imports not
counted in the time): ``muplify(model, base_width=256, example_inputs=16 tokens)`` with the default shallow capture
(:mod:`muplify.twin`), and, in another fresh process, a plain ``torch.export.export`` of the same model with the same
inputs (``use_cache=False``), the cost muplify paid before the shallow twin.  Cases:

* HF ``LlamaForCausalLM`` with the Llama-2-7B layer shapes (hidden 4096, intermediate 11008, 32 heads, vocab 32000)
  at 2 / 8 / 32 / 64 / 126 layers (32 layers: the 7B model itself);
* a 126-layer Llama with the Llama-3.1-405B shapes (hidden 16384, intermediate 53248, 128 heads, 8 KV heads, vocab
  128256);
* DeepSeek-V3: ``DeepseekV3ForCausalLM(DeepseekV3Config())`` (61 layers, the first 3 dense, 256 routed experts).

Recorded per case: wall time of the call, ``capture_s`` (the capture inside it: ``mu.plan.capture_seconds``), peak
RSS of the process (``ru_maxrss``, imports and model building included), whether every parameter stayed on meta.
Targets (issue 20): 7B <= 1.5 s, 405B <= 2 s, DeepSeek-V3 <= 3 s, peak RSS <= 1 GiB; the cost of depth 2 -> 126
stated as a ratio (goal <= 1.3x).  Writes ``muplify_scale.json`` and ``muplify_scale.png`` (time vs depth, both).

    python benchmarks/muplify_scale.py --out benchmarks/results/muplify_scale     # ~5 minutes on 2 cores
    python benchmarks/muplify_scale.py --quick                                    # 2 and 8 layers only

``--profile 8 64`` counts the work instead of timing it (for a loaded machine): in one fresh process per depth,
after a warm-up muplify() of a 1-layer model (imports done), cProfile runs over muplify() *with the capture left out*
(the profiler is paused inside ``torch.export``), and prints the function calls and cumulative seconds of each stage
after the capture: stack finding, plan expansion, policy derivation, rewrite, init detection, lint.

    python benchmarks/muplify_scale.py --profile 8 64

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
LLAMA_405B = dict(vocab_size=128256, hidden_size=16384, intermediate_size=53248, num_attention_heads=128,
                  num_key_value_heads=8, num_hidden_layers=126)
TOKENS = 16
BASE_WIDTH = 256
TARGETS = {"llama_7b_s": 1.5, "llama_405b_s": 2.0, "deepseek_v3_s": 3.0, "peak_rss_mib": 1024.0,
           "depth_2_to_126_ratio": 1.3}


def _maxrss_mib() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _build(kind: str, config: dict, layers: int | None):
    import torch

    if kind == "deepseek_v3":
        from transformers import DeepseekV3Config as C, DeepseekV3ForCausalLM as M
        cfg = C(**config)
    else:
        from transformers import LlamaConfig as C, LlamaForCausalLM as M
        cfg = C(**{**LLAMA_7B, **config})
    if layers is not None:
        cfg.num_hidden_layers = layers
    with torch.device("meta"):
        model = M(cfg)
        ids = torch.zeros(1, TOKENS, dtype=torch.long)
    return model, ids


def _child(spec: dict) -> dict:
    """Runs in a fresh process: build the meta model(s) and muplify (or export) each, one after the other."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec.get("threads", 1))
    from transformers.utils import logging as hf_logging

    from muplify import muplify

    hf_logging.set_verbosity_error()
    out = {"import_s": time.perf_counter() - t0, "runs": []}

    def one(layers) -> dict:
        t = time.perf_counter()
        model, ids = _build(spec.get("kind", "llama"), spec.get("config", {}), layers)
        build_s = time.perf_counter() - t
        rss_before = _maxrss_mib()
        rec = {"layers": model.config.num_hidden_layers, "params": sum(p.numel() for p in model.parameters()),
               "build_s": build_s, "mode": spec.get("mode", "muplify")}
        t = time.perf_counter()
        if rec["mode"] == "export":
            torch.export.export(model, (ids,), {"use_cache": False}, strict=False)
            rec["export_s"] = time.perf_counter() - t
            rec["all_meta"] = all(p.is_meta for p in model.parameters())
        else:
            mu = muplify(model, base_width=spec.get("base_width", BASE_WIDTH), example_inputs=(ids,),
                         capture=spec.get("capture", "shallow"))
            rec["muplify_s"] = time.perf_counter() - t
            rec["capture_s"] = mu.plan.capture_seconds
            rec["all_meta"] = all(p.is_meta for p in mu.parameters())
            rec["roles"] = mu.plan.summary()
            rec["twin"] = next((n for n in mu.plan.notes if n.startswith("capture: ")), "")
        rec["peak_rss_mib"] = _maxrss_mib()
        rec["rss_growth_mib"] = rec["peak_rss_mib"] - rss_before
        return rec

    if spec.get("warmup"):
        out["warmup"] = one(1)
    for layers in spec["layers"]:
        out["runs"].append(one(layers))
    return out


# stages reported by --profile: (label, file suffix, function name)
PROFILE_STAGES = [("find_stacks", "twin/stacks.py", "find_stacks"), ("expand_plan", "twin/expand.py", "expand_plan"),
                  ("build_plan (twin)", "muplify/classify.py", "build_plan"),
                  ("width analysis (twin)", "muplify/width.py", "analyse"),
                  ("Plan.from_dict", "muplify/plan.py", "from_dict"), ("policy derive", "policy/derive.py", "derive"),
                  ("rewrite.apply_plan", "muplify/rewrite.py", "apply_plan"),
                  ("detect_init_rules", "muplify/classify.py", "detect_init_rules"),
                  ("plan.warnings (lint)", "muplify/plan.py", "warnings"),
                  ("watch_plain_optimizers", "muplify/optim.py", "watch_plain_optimizers")]


def _profile_child(layers: int) -> dict:
    """One depth, in this (fresh) process: cProfile over muplify() with the capture paused; calls and seconds."""
    import cProfile
    import pstats

    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    import muplify.core as core
    from muplify import muplify

    hf_logging.set_verbosity_error()
    model, ids = _build("llama", {}, 1)
    muplify(model, base_width=BASE_WIDTH, example_inputs=(ids,))  # warm-up: imports, first-call caches
    model, ids = _build("llama", {}, layers)
    prof = cProfile.Profile()
    real_capture, captured = core._capture, []

    def paused_capture(*a, **k):
        prof.disable()
        try:
            t = time.perf_counter()
            return real_capture(*a, **k)
        finally:
            captured.append(time.perf_counter() - t)
            prof.enable()

    core._capture = paused_capture
    t = time.perf_counter()
    prof.enable()
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            muplify(model, base_width=BASE_WIDTH, example_inputs=(ids,))
    finally:
        prof.disable()
        core._capture = real_capture
    wall = time.perf_counter() - t
    st = pstats.Stats(prof).stats
    rec = {"layers": layers, "wall_s": wall, "capture_s": sum(captured), "captures": len(captured),
           "calls_outside_capture": sum(v[1] for v in st.values()),
           "seconds_outside_capture": wall - sum(captured), "stages": {}}
    for label, suffix, fn in PROFILE_STAGES:
        hits = [(v[1], v[3]) for (f, _, name), v in st.items() if f.endswith(suffix) and name == fn]
        if hits:
            rec["stages"][label] = {"calls": sum(h[0] for h in hits), "cum_s": sum(h[1] for h in hits)}
    # total function calls made inside each stage's subtree are not in cProfile's data; the callee counts of the
    # costliest leaf functions show what grows with depth
    top = sorted(((v[1], f"{f.rsplit('site-packages/', 1)[-1].rsplit('/muplify/', 1)[-1]}:{name}")
                  for (f, _, name), v in st.items()), reverse=True)[:12]
    rec["most_called"] = [{"calls": c, "function": n} for c, n in top]
    return rec


def profile(depths: list[int], timeout: float = 900.0) -> list[dict]:
    """:func:`_profile_child` for each depth in a fresh process."""
    out = []
    for n in depths:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--profile-child", str(n)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
        if proc.returncode != 0:
            raise RuntimeError(f"muplify_scale profile child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def _print_profile(recs: list[dict]) -> None:
    print(f"{'stage':28s}" + "".join(f"{r['layers']:>9d} L calls  cum s" for r in recs))
    labels = [lab for lab, _, _ in PROFILE_STAGES if any(lab in r["stages"] for r in recs)]
    for lab in labels:
        print(f"{lab:28s}" + "".join(
            f"{r['stages'].get(lab, {}).get('calls', 0):>17d} {r['stages'].get(lab, {}).get('cum_s', 0.0):6.3f}"
            for r in recs))
    print(f"{'all calls outside capture':28s}" + "".join(f"{r['calls_outside_capture']:>17d} "
                                                          f"{r['seconds_outside_capture']:6.3f}" for r in recs))
    print(f"{'capture (not profiled)':28s}" + "".join(f"{r['captures']:>17d} {r['capture_s']:6.3f}" for r in recs))
    for r in recs:
        print(f"most called at {r['layers']} layers: "
              + ", ".join(f"{m['function']} {m['calls']}" for m in r["most_called"][:6]))


def measure(layers: list, *, warmup: bool = False, config: dict | None = None, timeout: float = 600.0,
            threads: int = 1, kind: str = "llama", mode: str = "muplify", capture: str = "shallow") -> dict:
    """Run :func:`_child` in a fresh Python process (so that ru_maxrss is this measurement's own) and return its
    result.  ``layers``: layer counts measured one after the other in that process (None: the config's)."""
    spec = {"layers": list(layers), "warmup": warmup, "config": config or {}, "threads": threads, "kind": kind,
            "mode": mode, "capture": capture}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"muplify_scale child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plot(series: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["layers"] for r in series]
    ax.plot(xs, [r["muplify_s"] for r in series], "o-", label="muplify() (shallow twin)")
    ax.plot(xs, [r["export_s"] for r in series], "s--", label="torch.export.export (whole model)")
    ax.set_xlabel("layers (Llama 7B layer shapes, meta device, 16 tokens)")
    ax.set_ylabel("seconds (fresh process)")
    ax.set_title("muplify() time vs depth")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--out", default=None, help="directory for muplify_scale.json and muplify_scale.png")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32, 64, 126], help="depths of the 7B series")
    ap.add_argument("--quick", action="store_true", help="2 and 8 layers only, no 405B / DeepSeek-V3")
    ap.add_argument("--no-export", action="store_true", help="skip the plain torch.export comparison")
    ap.add_argument("--repeats", type=int, default=1,
                    help="fresh processes per muplify() case; the median is reported (a shared machine is noisy)")
    ap.add_argument("--profile", type=int, nargs="+", default=None, metavar="LAYERS",
                    help="count the work after the capture at these depths (cProfile) instead of timing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return {}
    if args.profile_child is not None:
        print(json.dumps(_profile_child(args.profile_child)))
        return {}
    if args.profile:
        recs = profile(args.profile)
        _print_profile(recs)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(Path(args.out) / "muplify_profile.json", "w") as fh:
                json.dump({"command": "python benchmarks/muplify_scale.py --profile "
                           + " ".join(map(str, args.profile)), "runs": recs}, fh, indent=1)
        return {"profile": recs}

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import env_info, write_json

    t0 = time.perf_counter()
    depths = [2, 8] if args.quick else args.layers
    cases = [("llama_7b_shapes", "llama", {}, n) for n in depths]
    if not args.quick:
        cases += [("llama_405b", "llama", LLAMA_405B, None), ("deepseek_v3", "deepseek_v3", {}, None)]
    rows = []
    for tag, kind, config, n in cases:
        reps = [measure([n], kind=kind, config=config)["runs"][0] for _ in range(max(1, args.repeats))]
        r = sorted(reps, key=lambda x: x["muplify_s"])[len(reps) // 2]  # the median run (its capture, its RSS)
        if len(reps) > 1:
            r["muplify_s_runs"] = [x["muplify_s"] for x in reps]
            r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in reps)
        if not args.no_export:
            e = measure([n], kind=kind, config=config, mode="export")["runs"][0]
            r["export_s"], r["export_peak_rss_mib"] = e["export_s"], e["peak_rss_mib"]
        r["case"] = tag
        rows.append(r)
        print(f"{tag:16s} {r['layers']:4d} layers  muplify {r['muplify_s']:6.2f} s (capture {r['capture_s']:.2f} s)"
              + (f"  torch.export {r['export_s']:6.2f} s" if "export_s" in r else "")
              + f"  peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    series = [r for r in rows if r["case"] == "llama_7b_shapes"]
    by = {(r["case"], r["layers"]): r for r in rows}
    result = {"meta": env_info(), "tokens": TOKENS, "base_width": BASE_WIDTH, "config_7b": LLAMA_7B,
              "config_405b": LLAMA_405B, "rows": rows, "targets": TARGETS,
              "command": "python benchmarks/muplify_scale.py" + (" --quick" if args.quick else "")
              + (" --no-export" if args.no_export else "") + (f" --repeats {args.repeats}" if args.repeats > 1 else ""),
              "repeats": args.repeats}
    first, last = series[0], series[-1]
    result["depth_ratio"] = {"from": first["layers"], "to": last["layers"],
                             "muplify": last["muplify_s"] / first["muplify_s"],
                             "export": (last["export_s"] / first["export_s"]) if "export_s" in last else None}
    checks = {}
    if ("llama_7b_shapes", 32) in by:
        checks["llama_7b_s"] = by[("llama_7b_shapes", 32)]["muplify_s"]
    if ("llama_405b", 126) in by:
        checks["llama_405b_s"] = by[("llama_405b", 126)]["muplify_s"]
    if ("deepseek_v3", 61) in by:
        checks["deepseek_v3_s"] = by[("deepseek_v3", 61)]["muplify_s"]
    checks["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
    if first["layers"] == 2 and last["layers"] == 126:
        checks["depth_2_to_126_ratio"] = result["depth_ratio"]["muplify"]
    result["pass"] = {k: v <= TARGETS[k] for k, v in checks.items()}
    result["measured"] = checks

    print(f"\ndepth {first['layers']} -> {last['layers']}: muplify x{result['depth_ratio']['muplify']:.2f}"
          + (f", torch.export x{result['depth_ratio']['export']:.2f}" if result["depth_ratio"]["export"] else ""))
    for k, v in checks.items():
        print(f"{k}: {v:.2f} (target <= {TARGETS[k]}: {'ok' if result['pass'][k] else 'MISSED'})")
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(Path(args.out) / "muplify_scale.json", result)
        if all("export_s" in r for r in series) and _plot(series, Path(args.out) / "muplify_scale.png"):
            print(f"wrote {Path(args.out) / 'muplify_scale.png'}")
        print(f"wrote {Path(args.out) / 'muplify_scale.json'}")
    return result


if __name__ == "__main__":
    main()
