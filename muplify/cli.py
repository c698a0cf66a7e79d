"""Command line: ``python -m muplify {coord-check, plan, demo}``.

    python -m muplify coord-check muplify.models:GPT --widths 64 128 256 --out muplify-out/gpt
    python -m muplify coord-check mypkg.model:make_model --batch mypkg.data:batch --optimizer AdamW --lr 3e-3
    python -m muplify plan muplify.models:GPT --width 512 --base-width 128
    python -m muplify demo --quick

FACTORY is ``module:callable`` (``module:Class.method`` works too).  The width goes to the argument named by
``--width-arg``; without it, muplify finds the argument that sets the model's width: it builds the model on the meta
device at two values of each integer argument and keeps the one whose change scales the hidden weight matrices (both
dims grow).  When no argument or more than one does, it stops and lists them.  ``--arg key=value`` adds keyword
arguments (values parsed as Python literals).

``--batch module:callable`` gives the forward inputs: it is called as ``fn()`` or ``fn(step)`` and returns a tuple
of positional args, a dict of keyword args, a tensor or a :class:`muplify.tools.batch.Batch`.  Without it, a language
model (token ids into an embedding) reads the built-in text corpus with next-token labels, and other models get a
small random batch made from their first layer, with cross-entropy against random labels.

Exit status: 0 when μP passes (with ``--params sp``: when SP passes), 1 when it fails, 2 on any error, reported
in one line (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

import torch
import torch.nn as nn

from muplify.tools.factory import (PROBE_VALUE, CLIError, WidthArg, check_args, detect_width_arg,  # noqa: F401
                                    load_object, make_factory, parse_kv)


def example_batch(model: nn.Module, batch_size: int = 4) -> tuple[tuple, dict]:
    """A small random forward call ``(args, kwargs)`` for a model that does not read token ids (seed 0): HF and timm
    models through the core's guesser, others from their first Linear / Conv layer."""
    from muplify.capture import default_example_inputs

    g = torch.Generator().manual_seed(0)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if getattr(model, "main_input_name", None) is None and first is not None:
        if isinstance(first, nn.Linear):
            return (torch.randn(2 * batch_size, first.in_features, generator=g).to(dev),), {}
        n = first.weight.dim() - 2
        size = {1: 64, 2: 16, 3: 8}[n]
        return (torch.randn(batch_size, first.in_channels, *([size] * n), generator=g).to(dev),), {}
    try:
        return default_example_inputs(model)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot guess a batch for {type(model).__name__}: pass --batch module:callable ({e})") from e


# ----------------------------------------------------------------------------------------------------- commands
def cmd_coord_check(a: argparse.Namespace) -> int:
    from muplify.tools.batch import Batch
    from muplify.tools.coord_check import coord_check, language_model_vocab

    depth = a.axis == "depth"
    widths = sorted(set(a.depths if depth else a.widths))
    if len(widths) < 2:
        raise CLIError(f"--{a.axis}s needs at least two different {a.axis}s, got {' '.join(map(str, widths))}")
    fn = load_object(a.factory)
    if depth:
        if not a.depth_arg:
            raise CLIError("--axis depth needs --depth-arg NAME: the constructor argument holding the number of "
                           "residual blocks (e.g. n_layer, num_hidden_layers)")
        extra = parse_kv(a.arg)
        check_args(fn, a.factory, extra, a.depth_arg)
        factory, how = (lambda L: fn(**{a.depth_arg: L}, **extra)), f"as {a.depth_arg}="
    else:
        factory, how = make_factory(fn, a.factory, a.width_arg, parse_kv(a.arg))
    batch: Any = None
    if a.batch:
        batch = load_object(a.batch)
    else:
        torch.manual_seed(0)
        model = factory(widths[0])
        if language_model_vocab(model) is None:
            args, kwargs = example_batch(model, a.batch_size)
            batch = Batch(args, kwargs)
    params = tuple(a.params or (("mup", "completep") if depth else ("sp", "mup")))
    if not a.quiet:
        print(f"coord-check {a.factory} ({a.axis} passed {how}) {a.axis}s {widths}, {a.optimizer} lr {a.lr}, "
              f"{a.steps} steps, {a.seeds} seeds: {', '.join(params)}", file=sys.stderr)
    t0 = time.perf_counter()
    res = coord_check(factory, batch, widths=widths, optimizer=a.optimizer, lr=a.lr, steps=a.steps, seeds=a.seeds,
                      base_width=a.base_width, muplify_kwargs=parse_kv(a.muplify_arg), parametrizations=params,
                      tol=a.tol, device=a.device, progress=False if a.quiet else None, axis=a.axis)
    print(res.table())
    if a.out:
        stem = a.name or a.factory.replace(":", ".").split(".")[-1].lower()
        png = res.plot(os.path.join(a.out, f"coord_check_{stem}.png"), title=f"coordinate check: {a.factory}")
        js = res.to_json(os.path.join(a.out, f"coord_check_{stem}.json"))
        print(f"plot: {png}\njson: {js}")
    if not a.quiet:
        print(f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    judged = next((p for p in ("completep", "mup") if p in params), params[0])
    return 0 if res.passed(judged) else 1


def cmd_plan(a: argparse.Namespace) -> int:
    from muplify import muplify
    from muplify.tools.batch import as_batch

    fn = load_object(a.factory)
    factory, how = make_factory(fn, a.factory, a.width_arg, parse_kv(a.arg))
    print(f"plan of {a.factory} at width {a.width} (passed {how}), base_width {a.base_width}", file=sys.stderr)
    torch.manual_seed(0)
    model = factory(a.width)
    kw = parse_kv(a.muplify_arg)
    if a.batch:
        obj = load_object(a.batch)
        b = as_batch(obj() if callable(obj) else obj)
        kw.setdefault("example_inputs", b.args)
        if b.kwargs:
            kw.setdefault("example_kwargs", b.kwargs)
    mu = muplify(model, base_width=a.base_width, **kw)
    print(mu.plan)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from muplify.tools.demo import run_demo

    res = run_demo(out=a.out, quick=a.quick)
    return 0 if res.passed("mup") else 1


def build_parser() -> argparse.ArgumentParser:
    from muplify.tools.coord_check import DEFAULT_LR, DEFAULT_STEPS, DEFAULT_TOL, DEFAULT_WIDTHS

    p = argparse.ArgumentParser(prog="python -m muplify", description="automatic μP for PyTorch models")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="{coord-check,plan,demo}")

    def factory_args(sp):
        sp.add_argument("factory", help="module:callable building the model from a width")
        sp.add_argument("--width-arg", default=None,
                        help="keyword the width is passed as (default: the integer argument whose change scales the "
                             "hidden weights, found on the meta device)")
        sp.add_argument("--arg", action="append", metavar="KEY=VALUE", help="extra keyword argument of the factory")
        sp.add_argument("--muplify-arg", action="append", metavar="KEY=VALUE",
                        help="extra keyword argument of muplify(), e.g. readout_zero_init=True")
        sp.add_argument("--batch", default=None, metavar="MODULE:CALLABLE",
                        help="callable returning the forward args (tuple), kwargs (dict) or a Batch")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")

    cc = sub.add_parser("coord-check", help="coordinate check SP vs μP; exit 0 when μP passes",
                        description="Train the model for a few steps at several widths and check that every "
                                    "activation's size stays constant in width (μP) - see muplify.tools.coord_check.")
    factory_args(cc)
    cc.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    cc.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    cc.add_argument("--seeds", type=int, default=2)
    cc.add_argument("--lr", type=float, default=DEFAULT_LR)
    cc.add_argument("--optimizer", default="AdamW", help="name in torch.optim (default AdamW)")
    cc.add_argument("--base-width", type=int, default=None, help="μP base width (default: smallest width)")
    cc.add_argument("--params", nargs="+", choices=["sp", "mup", "completep"], default=None,
                    help="default: sp mup (width), mup completep (depth)")
    cc.add_argument("--axis", choices=["width", "depth"], default="width",
                    help="depth: vary the number of residual blocks at a fixed width (CompleteP)")
    cc.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    cc.add_argument("--depth-arg", default=None, help="with --axis depth: the constructor argument of the depth")
    cc.add_argument("--tol", type=float, default=DEFAULT_TOL, help="pass threshold on |slope| (log(1.2)/log(2))")
    cc.add_argument("--batch-size", type=int, default=4, help="size of the guessed batch of a non-language model")
    cc.add_argument("--device", default=None)
    cc.add_argument("--out", default="muplify-out", help="directory for the plot and JSON ('' to skip)")
    cc.add_argument("--name", default=None, help="file stem of the outputs")
    cc.add_argument("--quiet", action="store_true", help="no progress bar and no header on stderr")
    cc.set_defaults(func=cmd_coord_check)

    pl = sub.add_parser("plan", help="print the μP plan of a model")
    factory_args(pl)
    pl.add_argument("--width", type=int, required=True)
    pl.add_argument("--base-width", type=int, required=True)
    pl.set_defaults(func=cmd_plan)

    de = sub.add_parser("demo", help="muplify the built-in GPT and run its coordinate check")
    de.add_argument("--out", default="muplify-out", help="directory for the plot and JSON")
    de.add_argument("--quick", action="store_true", help="smaller widths, one seed (seconds)")
    de.set_defaults(func=cmd_demo)
    from muplify.tools.tune_cli import add_commands  # tune, transfer
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line; --debug shows where it came from
        if getattr(a, "debug", False):
            traceback.print_exc()
            return 2
        lines = str(e).strip().splitlines() or [""]
        kind = "" if isinstance(e, CLIError) else f"{type(e).__name__}: "
        more = f" [{len(lines) - 1} more lines]" if len(lines) > 1 else ""
        hint = "" if isinstance(e, CLIError) else " (--debug shows the traceback)"
        print(f"error: {kind}{lines[0]}{more}{hint}", file=sys.stderr)
        return 2
