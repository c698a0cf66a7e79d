"""muplify() over the whole test zoo, the way a new user calls it, checked against the two-width oracle.

    python benchmarks/zoo_capture.py [--out benchmarks/results/zoo_capture] [--only NAME ...]

For every zoo model (built at twice its base width): the headline call ``muplify(model, base_width=...)`` without
example inputs (with the zoo's inputs for models that have no submodule to build inputs from), its time and capture
time, the role counts, how the roles were decided (graph evidence vs marked guesses), the width and where it came
from (the config's hidden size, a timm attribute, the most-used dimension), and agreement with the oracle.  Prints a
markdown table and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import common  # noqa: E402,F401  (puts the repository root, hence muplify and muplify_dev, on sys.path)
import torch  # noqa: E402

import muplify.core as core  # noqa: E402
from muplify import muplify  # noqa: E402
from muplify_dev.oracle import oracle_roles  # noqa: E402
from muplify_dev.zoo import ZOO, ZOO_NAMES, build, ensure_torchvision, widths_for  # noqa: E402


def run_one(name: str) -> dict:
    entry = ZOO[name]
    base, wide = widths_for(name)
    expected = oracle_roles(name, base, wide)
    model, a, kw = build(name, wide)
    seen = []
    real = core.analyse
    core.analyse = lambda *x, **k: seen.append(real(*x, **k)) or seen[-1]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            if entry.bare:
                mu = muplify(model, base_width=base)
            else:
                mu = muplify(model, base_width=base, example_inputs=a, example_kwargs=kw)
            total = time.perf_counter() - t0
    finally:
        core.analyse = real
    wa = seen[0]
    got = {n: mu.plan[n].role for n in expected}
    guessed = wa.guessed_params()
    return dict(model=name, family=entry.family, width=wide, base_width=base, bare_call=entry.bare,
                n_params=sum(p.numel() for p in mu.parameters()), n_tensors=len(mu.plan),
                muplify_s=round(total, 3), capture_s=mu.plan.capture_seconds, roles=mu.plan.summary(),
                decided_by={"graph": len(wa.params) - len(guessed), "guess": len(guessed)},
                guesses={n: why for n, why in guessed.items()},
                plan_width=mu.plan.width, width_source=wa.width_source, declared_width_attr=entry.width_attr,
                scaling_dims=[[s.size, str(s.expr)] for s in wa.scaling_dims],
                warnings=[str(w.message) for w in caught if issubclass(w.category, UserWarning)],
                oracle_agrees=got == expected,
                disagreements={n: [got[n], expected[n]] for n in expected if got[n] != expected[n]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo_capture"))
    ap.add_argument("--only", nargs="*", help="zoo names (default: the whole zoo)")
    args = ap.parse_args()
    ensure_torchvision()
    torch.manual_seed(0)
    rows = [run_one(n) for n in (args.only or ZOO_NAMES)]
    header = ("| model | params | muplify() s | capture s | input | hidden | output | vector | fixed | graph | guess "
              "| width | width from | = oracle |")
    print(header)
    print("|" + "---|" * 14)
    for r in rows:
        ro, d = r["roles"], r["decided_by"]
        print(f"| {r['model']} | {r['n_params']:,} | {r['muplify_s']:.2f} | {r['capture_s']:.2f} | {ro['input']} | "
              f"{ro['hidden']} | {ro['output']} | {ro['vector']} | {ro['fixed']} | {d['graph']} | {d['guess']} | "
              f"{r['plan_width']} | {r['width_source']} | "
              f"{'yes' if r['oracle_agrees'] else 'NO ' + str(r['disagreements'])} |")
    agree = sum(r["oracle_agrees"] for r in rows)
    print(f"\n{agree}/{len(rows)} models agree with the oracle; {sum(r['decided_by']['guess'] for r in rows)} "
          f"parameters decided by a marked guess in {sum(1 for r in rows if r['decided_by']['guess'])} models; "
          f"total muplify() time {sum(r['muplify_s'] for r in rows):.1f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "zoo_capture.json"), "w") as fh:
        json.dump({"torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
