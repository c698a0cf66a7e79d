"""Capture time and classification of every model in the test zoo, checked against the two-width oracle.

    python benchmarks/zoo_capture.py [--out benchmarks/results/zoo_capture]

Prints a markdown table (model, parameters, muplify() and capture seconds, role counts, oracle agreement) and writes
it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from muplify import muplify  # noqa: E402
from oracle import oracle_roles  # noqa: E402
from zoo import ZOO, ZOO_NAMES, build, ensure_torchvision, widths_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo_capture"))
    args = ap.parse_args()
    ensure_torchvision()
    torch.manual_seed(0)
    rows = []
    for name in ZOO_NAMES:
        base, wide = widths_for(name)
        expected = oracle_roles(name, base, wide)
        model, a, kw = build(name, wide)
        t0 = time.perf_counter()
        mu = muplify(model, base_width=base, example_inputs=a, example_kwargs=kw)
        total = time.perf_counter() - t0
        got = {n: mu.plan[n].role for n in expected}
        rows.append(dict(model=name, family=ZOO[name].family, width=wide, base_width=base,
                         n_params=sum(p.numel() for p in mu.parameters()), n_tensors=len(mu.plan),
                         muplify_s=round(total, 3), capture_s=mu.plan.capture_seconds,
                         roles=mu.plan.summary(), oracle_agrees=got == expected,
                         disagreements={n: [got[n], expected[n]] for n in expected if got[n] != expected[n]}))
    header = "| model | params | muplify() s | capture s | input | hidden | output | vector | fixed | = oracle |"
    print(header)
    print("|" + "---|" * 10)
    for r in rows:
        ro = r["roles"]
        print(f"| {r['model']} | {r['n_params']:,} | {r['muplify_s']:.2f} | {r['capture_s']:.2f} | {ro['input']} | "
              f"{ro['hidden']} | {ro['output']} | {ro['vector']} | {ro['fixed']} | "
              f"{'yes' if r['oracle_agrees'] else 'NO ' + str(r['disagreements'])} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "zoo_capture.json"), "w") as fh:
        json.dump({"torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
