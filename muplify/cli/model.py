"""``coord-check``, ``plan`` and ``demo``: the commands about one model (see :mod:`muplify.cli`)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
import torch.nn as nn

from muplify.tools.factory import CLIError, check_args, load_object, make_factory, parse_kv


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
