"""Command line: ``python -m muplify {coord-check, plan, demo, tune, transfer}``.

    python -m muplify coord-check muplify.models:GPT --widths 64 128 256 --out muplify-out/gpt   # SP vs μP, exit 0/1
    python -m muplify plan muplify.models:GPT --width 512 --base-width 128                       # the μP plan
    python -m muplify demo --quick                                             # the built-in GPT's coordinate check
    python -m muplify tune muplify.models:GPT --objective muplify.tools.objectives:byte_lm --width 64 --trials 32 \\
        --seeds-per-trial 2 --refine 8 --widths 64 128 --out best.json          # the proxy sweep (muplify.tune)
    python -m muplify transfer muplify.models:GPT --width 1024 --hp best.json   # the target's plan and optimizer call

Commands: ``coord-check`` (:mod:`muplify.cli.model`) trains a few steps at several widths (or depths) and checks that
every activation's size stays constant; ``plan`` prints the μP plan of a model; ``demo`` runs the coordinate check of
the built-in GPT; ``tune`` (:mod:`muplify.cli.tune`) sweeps lr and the μP hyperparameters on a proxy with Optuna and
writes the best as JSON; ``transfer`` muplifies the target with them and prints the optimizer call.

More examples:

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
import sys
import traceback

from muplify.tools.factory import CLIError, detect_width_arg  # noqa: F401  (public: tests and users import them here)

from .model import cmd_coord_check, cmd_demo, cmd_plan, example_batch  # noqa: F401
from .tune import add_commands as add_tune_commands

COMMANDS = ("coord-check", "plan", "demo", "tune", "transfer")


def factory_args(sp: argparse.ArgumentParser, *, batch: bool = True) -> None:
    """The arguments every command that builds a model from ``module:callable`` takes (defined once)."""
    sp.add_argument("factory", help="module:callable building the model from a width")
    sp.add_argument("--width-arg", default=None,
                    help="keyword the width is passed as (default: the integer argument whose change scales the "
                         "hidden weights, found on the meta device)")
    sp.add_argument("--arg", action="append", metavar="KEY=VALUE", help="extra keyword argument of the factory")
    sp.add_argument("--muplify-arg", action="append", metavar="KEY=VALUE",
                    help="extra keyword argument of muplify(), e.g. readout_zero_init=True")
    if batch:
        sp.add_argument("--batch", default=None, metavar="MODULE:CALLABLE",
                        help="callable returning the forward args (tuple), kwargs (dict) or a Batch")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show the full traceback of an error")



def build_parser() -> argparse.ArgumentParser:
    from muplify.tools.coord_check import DEFAULT_LR, DEFAULT_STEPS, DEFAULT_TOL, DEFAULT_WIDTHS

    p = argparse.ArgumentParser(prog="python -m muplify", description="automatic μP for PyTorch models")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

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
    add_tune_commands(sub, factory_args)
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
