#!/usr/bin/env python
"""What does muplify cost?  Side-by-side timings in one run, reported as ratios.

1. Training step (forward + backward + optimizer step + zero_grad) of a muplified GPT vs the original model, in eager
   mode and under ``torch.compile`` (inductor).  Original: ``torch.optim.AdamW(foreach=True)``; muplified:
   ``mu.optimizer(torch.optim.AdamW, foreach=True)``.  Compile time (first steps) is reported separately and excluded.
2. Optimizer step alone: ``mu.optimizer(AdamW)`` (μP param groups) vs one plain ``AdamW`` on the same parameters
   and the same gradients, with ``foreach=True`` and with the default implementation.
3. ``muplify()`` itself: wall time and peak RSS on a GPT-2-small-sized HF ``GPT2LMHeadModel`` (random init), on a
   ~7B-parameter Llama built on the meta device, and on a smaller meta Llama at 4 / 16 / 64 layers (linear scaling).
   Each model runs in a fresh subprocess; peak RSS is the kernel's high-water mark (VmHWM) reset just before the call.

The two variants of every A/B pair are timed in alternating rounds (A,B / B,A / ...) and the medians are compared.

    python benchmarks/overhead.py --quick        # < 1 minute, eager only (add --compile to include inductor)
    python benchmarks/overhead.py                # full run (a few minutes on 2 CPU cores)

Writes ``OUT/overhead.json``, ``OUT/overhead.csv`` and prints markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from common import (  # noqa: E402
    env_info,
    import_muplify,
    interleaved_timings,
    median,
    proc_mem_kb,
    reset_peak_rss,
    set_threads,
    write_json,
)

from muplify.models import GPT  # noqa: E402

PRESETS = {
    "full": dict(d_model=256, n_layer=4, batch_size=16, seq_len=128, base_width=64, rounds=12, inner=3,
                 opt_rounds=30, opt_inner=5, compile=True, muplify_reps=3, muplify_isolate=True, threads=2,
                 muplify_cases=["gpt2-small", "llama-7b-meta", "llama-meta-L4", "llama-meta-L16", "llama-meta-L64"],
                 out="out/overhead"),
    "quick": dict(d_model=128, n_layer=2, batch_size=8, seq_len=64, base_width=64, rounds=8, inner=3,
                  opt_rounds=10, opt_inner=3, compile=False, muplify_reps=1, muplify_isolate=False, threads=1,
                  muplify_cases=["gpt2-small-L2", "llama-meta-L2", "llama-meta-L4"],
                  out="out/overhead_quick"),
}

COLUMNS = ["section", "case", "baseline", "candidate", "baseline_ms", "candidate_ms", "ratio", "baseline_compile_s",
           "candidate_compile_s", "muplify_s", "build_s", "peak_rss_mb", "rss_delta_mb", "n_params", "notes", "error"]


# ----------------------------------------------------------------------------------------------------------------------
# muplify() cost, one model per subprocess
# ----------------------------------------------------------------------------------------------------------------------
def build_case(name: str):
    """(model, description, base_width) for a muplify-timing case."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if name.startswith("gpt2-small"):
        n_layer = int(name.split("-L")[1]) if "-L" in name else 12
        cfg = GPT2Config(n_layer=n_layer)  # n_embd=768, n_head=12, vocab 50257: GPT-2 small (124M) at 12 layers
        return GPT2LMHeadModel(cfg), f"HF GPT2LMHeadModel, n_embd 768, {n_layer} layers (random init, CPU)", 256
    if name == "llama-7b-meta":
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_hidden_layers=32,
                          vocab_size=32000)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        return model, "HF LlamaForCausalLM 7B config (hidden 4096, 32 layers) on meta", 256
    if name.startswith("llama-meta-L"):
        n_layer = int(name.split("-L")[1])
        cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_hidden_layers=n_layer,
                          vocab_size=32000)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        return model, f"HF LlamaForCausalLM hidden 1024, {n_layer} layers on meta", 256
    raise ValueError(name)


def _warmup(muplify) -> float:
    """One muplify() call on a tiny model: the one-time costs of a fresh process (lazy imports, export machinery)."""
    m = GPT(vocab_size=64, d_model=64, n_layer=1, block_size=16)
    t0 = time.perf_counter()
    muplify(m, base_width=32)
    return time.perf_counter() - t0


def worker_case(name: str, reps: int, muplify) -> dict:
    rec: dict = {"case": name}
    times, builds = [], []
    build_case(name)  # first build pays transformers' lazy imports; not timed
    for rep in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        model, desc, base_width = build_case(name)
        builds.append(time.perf_counter() - t0)
        rec.update(description=desc, base_width=base_width, n_params=sum(p.numel() for p in model.parameters()))
        gc.collect()
        before = proc_mem_kb()
        can_reset = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            mu = muplify(model, base_width=base_width)
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()
            return rec
        times.append(time.perf_counter() - t0)
        after = proc_mem_kb()
        if rep == 0:
            rec["rss_before_mb"] = before["rss"] / 1024 if before["rss"] else None
            rec["peak_rss_mb"] = after["hwm"] / 1024  # since the reset; process-lifetime peak if reset unsupported
            if can_reset and before["rss"]:
                rec["rss_delta_mb"] = (after["hwm"] - before["rss"]) / 1024
            try:
                rec["n_plan_entries"] = len(mu.plan)
                roles: dict = {}
                for _, pp in mu.plan.items():
                    roles[pp.role] = roles.get(pp.role, 0) + 1
                rec["roles"] = roles
            except Exception as e:  # informative only
                rec["plan_error"] = f"{type(e).__name__}: {e}"
        del model, mu
    rec["muplify_s_all"] = times
    rec["muplify_s"] = median(times)
    rec["build_s"] = median(builds)
    return rec


def worker(names: list[str], reps: int, threads: int) -> list[dict]:
    set_threads(threads)
    muplify, err = import_muplify()
    import transformers  # noqa: F401  (import cost outside the timings)

    if err:
        return [{"case": n, "error": f"import: {err}"} for n in names]
    try:
        warm = _warmup(muplify)
    except Exception as e:
        return [{"case": n, "error": f"warm-up muplify() on a tiny GPT failed: {type(e).__name__}: {e}"}
                for n in names]
    recs = []
    for n in names:
        r = worker_case(n, reps, muplify)
        r["process_warmup_s"] = warm
        recs.append(r)
    return recs


def run_worker(names: list[str], reps: int, threads: int, timeout: float) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", ",".join(names), "--reps", str(reps),
           "--threads", str(threads)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"case": n, "error": f"timeout after {timeout:.0f} s"} for n in names]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("[")]
    if p.returncode != 0 or not lines:
        return [{"case": n, "error": f"worker exit {p.returncode}: {p.stderr.strip()[-2000:]}"} for n in names]
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------------------------------
# training step and optimizer step
# ----------------------------------------------------------------------------------------------------------------------
def make_gpt_pair(cfg: dict, muplify_fn):
    """The original GPT, a muplified deep copy of it, and one fixed batch (all from seed 0)."""
    torch.manual_seed(0)
    orig = GPT(vocab_size=256, d_model=cfg["d_model"], n_layer=cfg["n_layer"], head_dim=32, block_size=cfg["seq_len"],
               tie_weights=False)
    x = torch.randint(0, 256, (cfg["batch_size"], cfg["seq_len"]))
    y = torch.randint(0, 256, (cfg["batch_size"], cfg["seq_len"]))
    mu = muplify_fn(copy.deepcopy(orig), base_width=cfg["base_width"], example_inputs=(x[:2],))
    return orig, mu, x, y


def make_step(model, opt, x, y):
    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def compile_worker(variant: str, cfg: dict, threads: int) -> dict:
    """Compile time of one variant in a fresh process with an empty inductor cache (set by the parent)."""
    set_threads(threads)
    muplify_fn, err = import_muplify()
    if err:
        return {"error": f"import: {err}"}
    orig, mu, x, y = make_gpt_pair(cfg, muplify_fn)
    model = orig if variant == "orig" else mu
    opt = (torch.optim.AdamW(orig.parameters(), lr=1e-4, foreach=True) if variant == "orig"
           else mu.optimizer(torch.optim.AdamW, lr=1e-4, foreach=True))
    step = make_step(torch.compile(model), opt, x, y)
    c0 = dynamo_counts()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    steady = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        steady.append(time.perf_counter() - t0)
    c1 = dynamo_counts()
    return {"first_step_s": first, "steady_step_s": median(steady), "compile_s": first - median(steady),
            **{k: c1[k] - c0[k] for k in c1}}


def run_compile_worker(variant: str, cfg: dict, threads: int, timeout: float) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="muplify-inductor-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-worker", variant, "--worker-cfg",
               json.dumps(cfg), "--threads", str(threads)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"compile worker exit {p.returncode}: {p.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def step_benchmarks(cfg: dict, muplify_fn, rows: list, extra: dict, threads: int, timeout: float) -> None:
    t0 = time.perf_counter()
    orig, mu, x, y = make_gpt_pair(cfg, muplify_fn)
    extra["gpt_pair_setup_s"] = time.perf_counter() - t0
    case = (f"GPT d_model {cfg['d_model']}, {cfg['n_layer']} layers, batch {cfg['batch_size']}x{cfg['seq_len']}, "
            f"μP base width {cfg['base_width']}")
    lr = 1e-4

    modes = ["eager"] + (["compile"] if cfg["compile"] else [])
    for mode in modes:
        opt_a = torch.optim.AdamW(orig.parameters(), lr=lr, foreach=True)
        opt_b = mu.optimizer(torch.optim.AdamW, lr=lr, foreach=True)
        row = {"section": f"train step ({mode})", "case": case, "baseline": "original + AdamW(foreach)",
               "candidate": "muplified + mu.optimizer(AdamW, foreach)"}
        try:
            if mode == "eager":
                ma, mb = orig, mu
            else:
                # compile time: each variant in a fresh process with an empty inductor cache (cold, symmetric)
                cold = {v: run_compile_worker(v, {k: cfg[k] for k in ("d_model", "n_layer", "batch_size", "seq_len",
                                                                         "base_width")}, threads, timeout)
                        for v in ("orig", "mu")}
                extra["compile_cold"] = cold
                torch._dynamo.reset()
                ma, mb = torch.compile(orig), torch.compile(mu)
            fa, fb = make_step(ma, opt_a, x, y), make_step(mb, opt_b, x, y)
            for f in (fa, fb):  # warm-up (under compile: compilation, here with warm caches, not reported)
                for _ in range(3):
                    f()
            t = interleaved_timings({"a": fa, "b": fb}, reps=cfg["rounds"], inner=cfg["inner"])
            a, b = median(t["a"]), median(t["b"])
            row.update(baseline_ms=a * 1e3, candidate_ms=b * 1e3, ratio=b / a)
            row["notes"] = f"{cfg['rounds']} rounds x {cfg['inner']} steps"
            if mode == "compile":
                ca, cb = cold["orig"], cold["mu"]
                row.update(baseline_compile_s=ca.get("compile_s"), candidate_compile_s=cb.get("compile_s"))
                row["notes"] += (f"; compile s = first step - steady step, fresh process, empty inductor cache; "
                                 f"graphs/breaks: original {ca.get('graphs')}/{ca.get('graph_breaks')}, "
                                 f"muplified {cb.get('graphs')}/{cb.get('graph_breaks')}")
                errs = [f"{v}: {c['error']}" for v, c in cold.items() if c.get("error")]
                if errs:
                    row["error"] = "; ".join(errs)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            extra[f"traceback_{mode}"] = traceback.format_exc()
        rows.append(row)
    torch._dynamo.reset()

    # optimizer step alone, same parameters and gradients
    params = list(mu.parameters())
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    for label, kw in (("foreach=True", dict(foreach=True)), ("default impl", {})):
        row = {"section": "optimizer step", "case": f"{len(params)} tensors, "
               f"{sum(p.numel() for p in params) / 1e6:.2f}M params ({label})",
               "baseline": f"AdamW({label})", "candidate": f"mu.optimizer(AdamW, {label})"}
        try:
            plain = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.1, **kw)
            muopt = mu.optimizer(torch.optim.AdamW, lr=1e-6, weight_decay=0.1, **kw)
            for _ in range(2):
                plain.step()
                muopt.step()
            t = interleaved_timings({"a": plain.step, "b": muopt.step}, reps=cfg["opt_rounds"], inner=cfg["opt_inner"])
            a, b = median(t["a"]), median(t["b"])
            row.update(baseline_ms=a * 1e3, candidate_ms=b * 1e3, ratio=b / a,
                       notes=f"param groups: {len(plain.param_groups)} vs {len(muopt.param_groups)}")
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            extra["traceback_opt"] = traceback.format_exc()
        rows.append(row)


# ----------------------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}"):
    return "—" if v is None else fmt.format(v)


def markdown(rows: list) -> str:
    out = ["| section | case | baseline | candidate | baseline ms | candidate ms | ratio | compile s (base / cand) | notes |",
           "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["section"] == "muplify()":
            continue
        comp = ("—" if r.get("baseline_compile_s") is None
                else f"{r['baseline_compile_s']:.1f} / {r['candidate_compile_s']:.1f}")
        note = r.get("error") and f"**ERROR** {r['error'][:200]}" or r.get("notes", "")
        out.append(f"| {r['section']} | {r['case']} | {r['baseline']} | {r['candidate']} | {_f(r.get('baseline_ms'))} "
                   f"| {_f(r.get('candidate_ms'))} | {_f(r.get('ratio'), '{:.3f}')} | {comp} | {note} |")
    out += ["", "| muplify() on | params | build s | muplify() s (median) | peak RSS MB | RSS delta MB | notes |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["section"] != "muplify()":
            continue
        note = r.get("error") and f"**ERROR** {r['error'][:200]}" or r.get("notes", "")
        n = r.get("n_params")
        out.append(f"| {r['case']} | {'—' if n is None else f'{n / 1e6:,.1f}M'} | {_f(r.get('build_s'))} "
                   f"| {_f(r.get('muplify_s'), '{:.3f}')} | {_f(r.get('peak_rss_mb'), '{:.0f}')} "
                   f"| {_f(r.get('rss_delta_mb'), '{:.0f}')} | {note} |")
    return "\n".join(out)


def scaling_note(recs: dict) -> dict | None:
    pts = sorted((int(k.split("-L")[1]), v["muplify_s"]) for k, v in recs.items()
                 if k.startswith("llama-meta-L") and v.get("muplify_s") is not None)
    if len(pts) < 2:
        return None
    incr = [((b[1] - a[1]) / (b[0] - a[0])) * 1e3 for a, b in zip(pts[:-1], pts[1:])]
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    icpt = my - slope * mx
    ss_res = sum((p[1] - (icpt + slope * p[0])) ** 2 for p in pts)
    ss_tot = sum((p[1] - my) ** 2 for p in pts) or 1e-12
    return {"layers": [p[0] for p in pts], "seconds": [p[1] for p in pts],
            "incremental_ms_per_layer": incr, "fit_ms_per_layer": slope * 1e3, "fit_intercept_s": icpt,
            "r2": 1 - ss_res / ss_tot}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small model, eager only, tiny muplify() cases (< 1 min)")
    ap.add_argument("--out", type=str)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (full: 2, quick: 1)")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None, help="include torch.compile")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--cases", nargs="*", help="muplify() cases (gpt2-small[-L<n>], llama-7b-meta, llama-meta-L<n>)")
    ap.add_argument("--worker-timeout", type=float, default=900)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--compile-worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-cfg", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker.split(","), args.reps, args.threads), default=str))
        return 0
    if args.compile_worker:
        print(json.dumps(compile_worker(args.compile_worker, json.loads(args.worker_cfg), args.threads), default=str))
        return 0

    cfg = dict(PRESETS["quick" if args.quick else "full"])
    if args.compile is not None:
        cfg["compile"] = args.compile
    if args.cases is not None:
        cfg["muplify_cases"] = args.cases
    out = Path(args.out or cfg.pop("out"))
    cfg.pop("out", None)
    out.mkdir(parents=True, exist_ok=True)
    args.threads = args.threads or cfg["threads"]
    set_threads(args.threads)
    env = env_info()
    print(f"torch {env['torch']} on {env['device']} ({env['cpu']}, {env['cpu_count']} CPUs, "
          f"{env['torch_threads']} threads)")
    t_start = time.perf_counter()

    rows: list = []
    extra: dict = {}
    muplify_fn, err = import_muplify()
    if err:
        print(f"`from muplify import muplify` failed: {err}")
        rows.append({"section": "train step (eager)", "case": "GPT", "baseline": "original",
                     "candidate": "muplified", "error": f"import: {err}"})
    else:
        print("timing training and optimizer steps ...", flush=True)
        try:
            step_benchmarks(cfg, muplify_fn, rows, extra, args.threads, args.worker_timeout)
        except Exception as e:
            rows.append({"section": "train step", "case": "GPT", "baseline": "original", "candidate": "muplified",
                         "error": f"{type(e).__name__}: {e}"})
            extra["traceback_setup"] = traceback.format_exc()

    recs = {}
    # full: one fresh subprocess per model (isolated peak RSS); quick: one subprocess for all (one import of torch)
    batches = [[n] for n in cfg["muplify_cases"]] if cfg["muplify_isolate"] else [cfg["muplify_cases"]]
    for names in batches:
        print(f"timing muplify() on {', '.join(names)} (subprocess) ...", flush=True)
        for rec in run_worker(names, cfg["muplify_reps"], args.threads, args.worker_timeout * len(names)):
            recs[rec["case"]] = rec
            notes = f"{cfg['muplify_reps']} rep(s) after a warm-up call ({rec.get('process_warmup_s', 0):.2f} s)"
            if rec.get("roles"):
                notes += f"; roles {rec['roles']}"
            rows.append({"section": "muplify()", "case": rec.get("description", rec["case"]),
                         "muplify_s": rec.get("muplify_s"), "build_s": rec.get("build_s"),
                         "peak_rss_mb": rec.get("peak_rss_mb"), "rss_delta_mb": rec.get("rss_delta_mb"),
                         "n_params": rec.get("n_params"), "notes": notes, "error": rec.get("error")})
    scaling = scaling_note(recs)

    print()
    print(markdown(rows))
    if scaling:
        print(f"\nmuplify() scaling with depth (meta Llama, hidden 1024): layers {scaling['layers']} -> "
              f"{', '.join(f'{s:.3f}' for s in scaling['seconds'])} s; incremental ms/layer "
              f"{', '.join(f'{v:.1f}' for v in scaling['incremental_ms_per_layer'])}; linear fit "
              f"{scaling['fit_ms_per_layer']:.1f} ms/layer + {scaling['fit_intercept_s']:.3f} s, R² {scaling['r2']:.4f}")
    errors = [r for r in rows if r.get("error")]
    if errors:
        print("\nErrors:")
        for r in errors:
            print(f"  {r['section']} / {r['case']}: {r['error'][:500]}")

    result = {"env": env, "config": cfg, "rows": rows, "muplify_cases": recs, "scaling": scaling, "extra": extra,
              "wall_seconds": time.perf_counter() - t_start}
    write_json(out / "overhead.json", result)
    with open(out / "overhead.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    print(f"\nwrote {out / 'overhead.json'} and {out / 'overhead.csv'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
