"""The README's demo: ``python -m muplify demo [--out DIR] [--quick]``.

1. builds the built-in GPT (``muplify.models.GPT``, plain nanoGPT-style code, GPT-2 init), muplifies it and prints
   ``mu.plan``;
2. runs the coordinate check, standard parametrization vs μP, on byte-level text (the Python standard library's own
   source files, read as bytes: real text, no download);
3. saves the picture and the JSON and says what they show.

The GPT has 2 layers, head_dim 32 (heads grow with width) and an untied readout; muplify gets
``readout_zero_init=True, query_zero_init=True`` (see ``DEMO_MUPLIFY_KWARGS``).
Full run: widths 64..1024, batches of 4 x 64 bytes, AdamW lr 1e-2, 4 steps, 2 seeds (about 45 s on one CPU
thread).  ``--quick``: widths 64..512, 3 steps, 1 seed (about 10 s).
"""
from __future__ import annotations

import glob
import os
import sys
import time

import torch

from muplify.coord_check import Batch, CoordCheckResult, coord_check

#: muplify options of the demo: the `mup` package's coordinate-check setting (zero readout and query at init), which
#: needs an untied readout (a tied embedding cannot be zero-initialised).  Without it the logits at initialisation
#: shrink like 1/sqrt(width) under μP (slope -0.5 at step 0), which the two-sided check reports.
DEMO_MUPLIFY_KWARGS: dict = {"readout_zero_init": True, "query_zero_init": True}


def stdlib_text(max_bytes: int = 4_000_000) -> bytes:
    """The Python standard library's ``*.py`` files, concatenated (sorted, so the same on every run)."""
    root = os.path.dirname(os.__file__)
    data = bytearray()
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        try:
            with open(path, "rb") as f:
                data += f.read()
        except OSError:
            continue
        if len(data) >= max_bytes:
            break
    if len(data) < 10_000:  # no sources shipped (zipped stdlib): fall back to random bytes
        data = bytearray(torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(0)).tolist())
    return bytes(data[:max_bytes])


def text_batches(n: int, batch_size: int = 8, seq_len: int = 64, seed: int = 0) -> list[Batch]:
    """``n`` batches ``(idx, targets)`` of random windows of :func:`stdlib_text` (next-byte prediction)."""
    data = torch.frombuffer(bytearray(stdlib_text()), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        chunk = torch.stack([data[s: s + seq_len + 1] for s in starts.tolist()])
        out.append(Batch(args=(chunk[:, :-1], chunk[:, 1:])))
    return out


def gpt_factory(n_layer: int = 2, seq_len: int = 64):
    from muplify.models import GPT

    def make(width: int):
        return GPT(vocab_size=256, d_model=width, n_layer=n_layer, block_size=seq_len, tie_weights=False)

    return make


def run_demo(out: str = "muplify-out", quick: bool = False, *, verbose: bool = True) -> CoordCheckResult:
    from muplify import muplify

    def say(*a):
        if verbose:
            print(*a, flush=True)

    if quick:
        widths, steps, seeds, batch_size, seq_len = [64, 128, 256, 512], 3, 1, 4, 64
    else:
        widths, steps, seeds, batch_size, seq_len = [64, 128, 256, 512, 1024], 4, 2, 4, 64
    lr = 1e-2
    factory = gpt_factory(n_layer=2, seq_len=seq_len)
    batches = text_batches(steps, batch_size=batch_size, seq_len=seq_len)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = factory(widths[-1])
    opts = ", ".join(f"{k}={v}" for k, v in DEMO_MUPLIFY_KWARGS.items())
    say(f"== muplify(GPT(d_model={widths[-1]}, n_layer=2, tie_weights=False), base_width={widths[0]}, {opts})")
    mu = muplify(model, base_width=widths[0], example_inputs=batches[0].args, **DEMO_MUPLIFY_KWARGS)
    say(mu.plan)
    say()

    say(f"== coordinate check: GPT on Python stdlib source bytes, widths {widths}, AdamW lr {lr}, "
        f"{steps} steps, {seeds} seed(s), SP vs μP")
    res = coord_check(factory, batches, widths=widths, optimizer=torch.optim.AdamW, lr=lr, steps=steps, seeds=seeds,
                      base_width=widths[0], muplify_kwargs=dict(DEMO_MUPLIFY_KWARGS), progress=verbose)
    elapsed = time.perf_counter() - t0
    say(res.table())
    png = res.plot(os.path.join(out, "coord_check_gpt.png"),
                   title="coordinate check: muplify.models.GPT, standard parametrization (top) vs μP (bottom)")
    js = res.to_json(os.path.join(out, "coord_check_gpt.json"))
    say()
    say(f"picture: {png}   (data: {js})")
    say(_explain(res))
    say(f"({elapsed:.0f}s)")
    return res


def _explain(res: CoordCheckResult) -> str:
    sp_ok, mu_ok = res.passed("sp"), res.passed("mup")
    sp_f, mu_f = res.failures("sp"), res.failures("mup")
    n = len(res.slopes["sp"])
    worst_sp = max((abs(v) for s in res.slopes["sp"].values() for v in s if v == v), default=0.0)
    lines = [
        "It shows the mean |activation| of every layer against width (log-log), one panel per training step: "
        f"under standard parametrization {len(sp_f)} of {n} curves grow with width (slopes up to "
        f"{worst_sp:+.2f}, i.e. ~{2 ** worst_sp:.1f}x per doubling), "
        + ("under μP they stay flat." if mu_ok else f"under μP {len(mu_f)} of {len(res.slopes['mup'])} still change."),
        f"Verdict (|slope| <= {res.tol:.3f}, i.e. within 1.2x per doubling): "
        f"SP {'PASS' if sp_ok else 'FAIL'}, μP {'PASS' if mu_ok else 'FAIL'}"
        + ("" if mu_ok else f" - failing under μP: {', '.join(list(mu_f)[:8])}") + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    run_demo(quick=quick)
