"""Command line: ``python -m muplify {coord-check, plan, demo}``.

    python -m muplify coord-check muplify.models:GPT --widths 64 128 256 --steps 4 --out muplify-out/gpt
    python -m muplify coord-check mypkg.model:make_model --batch mypkg.data:batch --optimizer AdamW --lr 1e-2
    python -m muplify plan muplify.models:GPT --width 512 --base-width 128
    python -m muplify demo --quick

FACTORY is ``module:callable`` (``module:Class.method`` works too); it is called with the width, either as the keyword
named by ``--width-arg`` or, by default, as the first of its keyword parameters named ``width``, ``d_model``,
``n_embd``, ``hidden_size``, ``hidden_dim``, ``embed_dim``, ``dim`` (so ``muplify.models:GPT``/``MLP``/``CNN`` work
as they are), else positionally.  ``--arg key=value`` adds keyword arguments (values parsed as Python literals).

``--batch module:callable`` gives the forward inputs: it is called as ``fn()`` or ``fn(step)`` and returns a tuple
of positional args, a dict of keyword args, a tensor or a :class:`muplify.coord_check.Batch`.  Without it a small
random batch is made from the model's first layer (token ids for an embedding, ``randn`` for a Linear/Conv; HF
models get ``input_ids`` and, when their forward takes them, ``labels``).

Exit status of ``coord-check``: 0 when μP passes (or, with ``--params sp``, when SP passes), 1 when it fails,
2 on usage errors.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn

WIDTH_NAMES = ("width", "d_model", "n_embd", "hidden_size", "hidden_dim", "embed_dim", "dim")


class CLIError(Exception):
    pass


# ------------------------------------------------------------------------------------------------------ helpers
def load_object(spec: str) -> Any:
    """``"pkg.module:attr.sub"`` -> the object."""
    if ":" not in spec:
        raise CLIError(f"expected module:callable, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise CLIError(f"cannot import {mod_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise CLIError(f"{mod_name!r} has no attribute {attr!r}") from e
    return obj


def parse_kv(items: list[str] | None) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise CLIError(f"expected key=value, got {item!r}")
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def make_factory(fn: Callable, width_arg: str | None = None, extra: dict | None = None) -> tuple[Callable, str]:
    """Wrap ``fn`` into ``width -> nn.Module``; returns it and a description of how the width is passed."""
    extra = dict(extra or {})
    if width_arg is None:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        kw_ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for name in WIDTH_NAMES:
            if name in params and params[name].kind in kw_ok and name not in extra:
                width_arg = name
                break
    if width_arg is None:
        return (lambda w: fn(w, **extra)), "as the first positional argument"
    return (lambda w: fn(**{width_arg: w}, **extra)), f"as {width_arg}="


def example_batch(model: nn.Module, batch_size: int = 4, seq_len: int = 16) -> tuple[tuple, dict]:
    """A small random forward call ``(args, kwargs)`` for common model families (deterministic: seed 0)."""
    g = torch.Generator().manual_seed(0)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    config = getattr(model, "config", None)
    main_input = getattr(model, "main_input_name", None)
    if config is not None and main_input is not None:  # HF transformers
        kwargs: dict = {}
        try:
            fwd_params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            fwd_params = {}
        if getattr(config, "use_cache", None) is not None and "use_cache" in fwd_params:
            kwargs["use_cache"] = False
        if main_input == "input_ids":
            vocab = getattr(config, "vocab_size", None) or 2
            n_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            T = min(seq_len, n_pos) if n_pos else seq_len
            ids = torch.randint(0, vocab, (batch_size, T), generator=g).to(dev)
            kwargs["input_ids"] = ids
            if "labels" in fwd_params:
                kwargs["labels"] = ids
            return (), kwargs
        if main_input == "pixel_values":
            size = getattr(config, "image_size", 32)
            size = size if isinstance(size, int) else size[0]
            x = torch.randn(batch_size, getattr(config, "num_channels", 3), size, size, generator=g).to(dev)
            return (x,), kwargs
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            T = min([seq_len] + [e.num_embeddings for e in embeddings if e is not mod])
            return (torch.randint(0, mod.num_embeddings, (batch_size, T), generator=g).to(dev),), {}
        if isinstance(mod, nn.Linear):
            return (torch.randn(2 * batch_size, mod.in_features, generator=g).to(dev),), {}
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            n = mod.weight.dim() - 2
            size = {1: 64, 2: 16, 3: 8}[n]
            return (torch.randn(batch_size, mod.in_channels, *([size] * n), generator=g).to(dev),), {}
    try:  # the core's guesser knows more families (timm, nn.Transformer layers)
        from muplify.capture import default_example_inputs

        return default_example_inputs(model)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot guess a batch for {type(model).__name__}: pass --batch module:callable ({e})")


# ----------------------------------------------------------------------------------------------------- commands
def cmd_coord_check(a: argparse.Namespace) -> int:
    from muplify.coord_check import Batch, coord_check

    fn = load_object(a.factory)
    factory, how = make_factory(fn, a.width_arg, parse_kv(a.arg))
    widths = sorted(set(a.widths))
    if a.batch:
        batch: Any = load_object(a.batch)
    else:
        torch.manual_seed(0)
        args, kwargs = example_batch(factory(widths[0]), a.batch_size, a.seq_len)
        batch = Batch(args, kwargs)
    params = tuple(a.params)
    if not a.quiet:
        print(f"coord-check {a.factory} (width passed {how}) widths {widths}, {a.optimizer} lr {a.lr}, "
              f"{a.steps} steps, {a.seeds} seeds: {', '.join(params)}", file=sys.stderr)
    t0 = time.perf_counter()
    res = coord_check(factory, batch, widths=widths, optimizer=a.optimizer, lr=a.lr, steps=a.steps, seeds=a.seeds,
                      base_width=a.base_width, muplify_kwargs=parse_kv(a.muplify_arg), parametrizations=params,
                      tol=a.tol, device=a.device, progress=not a.quiet)
    elapsed = time.perf_counter() - t0
    print(res.table())
    if a.out:
        stem = a.name or a.factory.replace(":", ".").split(".")[-1].lower()
        png = res.plot(os.path.join(a.out, f"coord_check_{stem}.png"), title=f"coordinate check: {a.factory}")
        js = res.to_json(os.path.join(a.out, f"coord_check_{stem}.json"))
        print(f"plot: {png}\njson: {js}")
    if not a.quiet:
        print(f"({elapsed:.1f}s)", file=sys.stderr)
    judged = "mup" if "mup" in params else params[0]
    return 0 if res.passed(judged) else 1


def cmd_plan(a: argparse.Namespace) -> int:
    from muplify import muplify

    fn = load_object(a.factory)
    factory, _ = make_factory(fn, a.width_arg, parse_kv(a.arg))
    torch.manual_seed(0)
    model = factory(a.width)
    kw = parse_kv(a.muplify_arg)
    if a.batch:
        from muplify.coord_check import _as_batch

        obj = load_object(a.batch)
        b = _as_batch(obj() if callable(obj) else obj)
        kw.setdefault("example_inputs", b.args)
        if b.kwargs:
            kw.setdefault("example_kwargs", b.kwargs)
    mu = muplify(model, base_width=a.base_width, **kw)
    print(mu.plan)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from muplify.demo import run_demo

    res = run_demo(out=a.out, quick=a.quick)
    return 0 if res.passed("mup") else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m muplify", description="automatic μP for PyTorch models")
    sub = p.add_subparsers(dest="command", required=True, metavar="{coord-check,plan,demo}")

    def factory_args(sp):
        sp.add_argument("factory", help="module:callable building the model from a width")
        sp.add_argument("--width-arg", default=None,
                        help=f"keyword the width is passed as (default: first of {', '.join(WIDTH_NAMES)} in the "
                             "signature, else positional)")
        sp.add_argument("--arg", action="append", metavar="KEY=VALUE", help="extra keyword argument of the factory")
        sp.add_argument("--muplify-arg", action="append", metavar="KEY=VALUE",
                        help="extra keyword argument of muplify(), e.g. readout_zero_init=True")
        sp.add_argument("--batch", default=None, metavar="MODULE:CALLABLE",
                        help="callable returning the forward args (tuple), kwargs (dict) or a Batch")

    cc = sub.add_parser("coord-check", help="coordinate check SP vs μP; exit 0 when μP passes",
                        description="Train the model for a few steps at several widths and check that every "
                                    "activation's size stays constant in width (μP) - see muplify.coord_check.")
    factory_args(cc)
    cc.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    cc.add_argument("--steps", type=int, default=4)
    cc.add_argument("--seeds", type=int, default=2)
    cc.add_argument("--lr", type=float, default=1e-2)
    cc.add_argument("--optimizer", default="AdamW", help="name in torch.optim (default AdamW)")
    cc.add_argument("--base-width", type=int, default=None, help="μP base width (default: smallest width)")
    cc.add_argument("--params", nargs="+", choices=["sp", "mup"], default=["sp", "mup"])
    cc.add_argument("--tol", type=float, default=None, help="pass threshold on |slope| (default log(1.2)/log(2))")
    cc.add_argument("--batch-size", type=int, default=4, help="size of the guessed batch")
    cc.add_argument("--seq-len", type=int, default=16, help="sequence length of the guessed batch")
    cc.add_argument("--device", default=None)
    cc.add_argument("--out", default="muplify-out", help="directory for the plot and JSON ('' to skip)")
    cc.add_argument("--name", default=None, help="file stem of the outputs")
    cc.add_argument("--quiet", action="store_true")
    cc.set_defaults(func=cmd_coord_check)

    pl = sub.add_parser("plan", help="print the μP plan of a model")
    factory_args(pl)
    pl.add_argument("--width", type=int, required=True)
    pl.add_argument("--base-width", type=int, required=True)
    pl.set_defaults(func=cmd_plan)

    de = sub.add_parser("demo", help="muplify the built-in GPT and run its coordinate check")
    de.add_argument("--out", default="muplify-out", help="directory for the plot and JSON")
    de.add_argument("--quick", action="store_true", help="smaller widths, fewer steps and seeds (seconds)")
    de.set_defaults(func=cmd_demo)
    from muplify.tools.tune_cli import add_commands  # tune, transfer
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if getattr(a, "tol", None) is None and hasattr(a, "tol"):
        from muplify.coord_check import DEFAULT_TOL

        a.tol = DEFAULT_TOL
    try:
        return a.func(a)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
