"""``python -m muplify tune`` and ``python -m muplify transfer``: the proxy sweep and the transfer from a shell.

    python -m muplify tune mymodels:make_model --objective mytrain:objective --width 64 --trials 64 \\
        --storage sqlite:///tune.db --workers 2 --out best.json
    python -m muplify tune mymodels:make_model --objective mytrain:objective --width 64 --trials 32 \\
        --seeds-per-trial 2 --refine 8 --reeval-top 3 --widths 64 128 --check-width 256 --out best.json
    python -m muplify transfer mymodels:make_model --width 1024 --base-width 64 --hp best.json
    python -m muplify transfer mymodels:make_model --width 1024 --hp best.json --batch-size 256 --steps 40000
    python -m muplify tune mymodels:make_model --objective mytrain:objective --width 64 --horizons 250 500 1000 \
        --out best.json                       # the horizon fit; transfer --steps then extrapolates it
    optuna-dashboard sqlite:///tune.db          # the study in a browser (pip install optuna-dashboard)

``muplify.cli`` registers these with :func:`add_commands` (with its ``factory_args``). FACTORY is
``module:callable`` called with the width (see ``python -m muplify plan --help``); the objective is
``module:callable`` taking ``(model, optimizer, report)`` (plus a keyword for every ``objective.*`` key of the
search space). Usage errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

DASHBOARD = "optuna-dashboard {storage}  (the study in a browser; pip install optuna-dashboard)"


@dataclass(frozen=True)
class CLIFactory:
    """``module:callable`` -> ``width -> nn.Module``, picklable (worker processes import the module themselves)."""

    spec: str  # module:callable
    width_arg: str  # keyword the width is passed as
    extra: dict = field(default_factory=dict)  # more keyword arguments of the callable

    @classmethod
    def resolve(cls, spec: str, width_arg: str | None, extra: dict) -> "CLIFactory":
        """Check the arguments and find the width argument once (``muplify.cli``'s rules), not in every trial."""
        from muplify.tools.factory import detect_width_arg, load_object, make_factory

        fn = load_object(spec)
        make_factory(fn, spec, width_arg, extra)  # a CLIError names what to change on the command line
        return cls(spec, width_arg or detect_width_arg(fn, spec, extra).name, dict(extra))

    def __call__(self, width: int):
        from muplify.tools.factory import load_object

        return load_object(self.spec)(**{self.width_arg: width}, **self.extra)


def _space(items: list[str] | None) -> dict:
    from muplify.tools.tune import TuneError, parse_dist

    out = {}
    for item in items or ():
        key, sep, expr = item.partition("=")
        if not sep:
            raise TuneError(f"--space takes KEY=ENTRY, e.g. 'lr=LogUniform(1e-4, 1e-1)', got {item!r}")
        out[key.strip()] = parse_dist(expr)
    return out


def _outputs(out: str) -> dict[str, str]:
    stem = os.path.splitext(out)[0]
    return {"best": out, "trials": f"{stem}_trials.json", "params": f"{stem}_params.png",
            "importance": f"{stem}_importance.png", "horizons": f"{stem}_horizons.png"}


def cmd_tune(a: argparse.Namespace) -> int:
    from muplify.tools.factory import CLIError, load_object, parse_kv
    from muplify.errors import MuplifyError

    from muplify.tools.tune import TuneError, tune

    try:
        factory = CLIFactory.resolve(a.factory, a.width_arg, parse_kv(a.arg))  # fails here, not in every trial
        objective = load_object(a.objective)
        if a.widths and a.width != a.widths[0]:
            raise TuneError(f"--width {a.width} but --widths starts at {a.widths[0]}: the proxy width is the first")
        result = tune(factory, a.width, objective, a.optimizer, trials=a.trials, space=_space(a.space),
                      defaults=not a.no_default_space, sampler=a.sampler,
                      pruner=None if a.pruner == "none" else a.pruner, storage=a.storage, study_name=a.study,
                      workers=a.workers, threads=a.threads, seed=a.seed, timeout=a.timeout,
                      muplify_kwargs=parse_kv(a.muplify_arg), progress=not a.quiet,
                      seeds_per_trial=a.seeds_per_trial, reeval_top=a.reeval_top, reeval_seeds=a.reeval_seeds,
                      refine=a.refine, refine_shrink=a.refine_shrink, refine_sampler=a.refine_sampler,
                      widths=a.widths, telescope_trials=a.telescope_trials, batch_size=a.batch_size,
                      steps=a.steps, horizons=a.horizons)
        check = None
        if a.check_width is not None:
            check = result.check_transfer(width=a.check_width, trials=a.check_trials)
        paths = _outputs(a.out)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(paths["best"], "w") as fh:
            fh.write(json.dumps(result.best, indent=1) + "\n")
    except (TuneError, MuplifyError, CLIError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study {a.study!r} is kept in {a.storage}; run the same command again to resume "
              "(interrupted trials run again)", file=sys.stderr)
        return 130
    result.to_json(paths["trials"])
    written = [paths["best"], paths["trials"], result.plot(paths["params"])]
    try:
        written.append(result.plot_importance(paths["importance"]))
    except TuneError as e:  # too few completed trials for an importance estimate
        print(f"(no importance plot: {e})", file=sys.stderr)
    if result.horizon_fit:
        written.append(result.plot_horizons(paths["horizons"]))
    print(result)
    if check is not None:
        paths["check"] = os.path.splitext(a.out)[0] + "_check.json"
        with open(paths["check"], "w") as fh:
            fh.write(json.dumps(check.to_dict(), indent=1) + "\n")
        written.append(paths["check"])
        print(check)
    print("wrote " + ", ".join(written))
    print(f"transfer: python -m muplify transfer {a.factory} --width <target width> --base-width {a.width} "
          f"--hp {paths['best']}")
    if isinstance(a.storage, str):
        print("dashboard: " + DASHBOARD.format(storage=a.storage))
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def load_best(path: str) -> dict:
    """``result.best`` from a file written by ``tune --out`` or ``result.to_json`` (whose "best" it takes)."""
    from muplify.tools.tune import TuneError

    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as e:
        raise TuneError(f"cannot read --hp {path!r}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise TuneError(f"--hp {path!r} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("best"), dict):
        data = data["best"]
    if not isinstance(data, dict) or "hp" not in data:
        raise TuneError(f"--hp {path!r} has no 'hp': expected the JSON written by `python -m muplify tune --out`")
    return data


def cmd_transfer(a: argparse.Namespace) -> int:
    import torch

    from muplify.tools.factory import CLIError, load_object, make_factory, parse_kv
    from muplify.errors import MuplifyError

    from muplify.tools.tune import TuneError
    from muplify.tools.tune.horizons import at_horizon
    from muplify.tools.tune.trial import _muplify_as_tuned

    try:
        # a horizon fit sets each fitted value at --steps first (no duration rule on top of a fitted value)
        best, rule_steps, fit_text = at_horizon(load_best(a.hp), a.steps)
        proxy = best.get("width")
        base = a.base_width if a.base_width is not None else proxy
        if base is None:
            raise TuneError(f"{a.hp} does not say the proxy width: pass --base-width")
        if proxy is not None and base != proxy:
            raise TuneError(f"{a.hp} was tuned at width {proxy}, but --base-width is {base}: the base width must be "
                            "the proxy width the hyperparameters were tuned at")
        factory, _ = make_factory(load_object(a.factory), a.factory, a.width_arg, parse_kv(a.arg))
        mkw = {**dict(best.get("muplify") or {}), **parse_kv(a.muplify_arg)}
        recorded = dict(best.get("regime") or {})
        for key, given in (("batch_size", a.batch_size), ("steps", a.steps)):
            if recorded.get(key) is not None:
                mkw.setdefault(f"base_{key}", recorded[key])
            if given is not None and mkw.get(f"base_{key}") is None:
                flag = "--" + key.replace("_", "-")
                raise TuneError(f"{flag} needs the proxy's {key.replace('_', ' ')}: {a.hp} records none (tune "
                                f"{flag} records it), or pass --muplify-arg base_{key}=N")
        torch.manual_seed(0)
        # roles read from two widths; muplify checks them against best["hp"]["tuned_roles"] (older files: best["roles"])
        mu = _muplify_as_tuned(factory, factory(a.width), best, a.width, base, mkw)
        regime = {k: v for k, v in (("batch_size", a.batch_size), ("steps", rule_steps)) if v is not None}
        opt_obj = None
        if best.get("optimizer_class") and best.get("lr") is not None:
            opt_obj = mu.optimizer(_optimizer_class(best["optimizer_class"]), lr=best["lr"],
                                   **dict(best.get("optimizer") or {}), **regime)
        elif regime:
            raise TuneError(f"{a.hp} names no optimizer class and lr: the regime rules need them")
    except (TuneError, MuplifyError, CLIError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(mu.plan)
    opt = best.get("optimizer") or {}
    cls = best.get("optimizer_class", "<optimizer>").rsplit(".", 1)[-1]
    kwargs = "".join(f", {k}={v!r}" for k, v in {**opt, **regime}.items())
    if fit_text is not None:
        print("\n" + fit_text)
    print(f"\noptimizer: mu.optimizer({cls}, lr={best.get('lr')!r}{kwargs})")
    if opt_obj is not None:
        print(optimizer_values(opt_obj))
    return 0


def _optimizer_class(name: str):
    """A class from ``module.qualname`` (as tune records it) or a torch.optim name."""
    import importlib

    from muplify.optim import resolve_optimizer

    mod, _, qual = name.rpartition(".")
    if mod:
        try:
            obj = importlib.import_module(mod)
            for part in qual.split("."):
                obj = getattr(obj, part)
            return obj
        except (ImportError, AttributeError):
            pass
    return resolve_optimizer(qual or name)


def optimizer_values(opt) -> str:
    """The values each param group's step() uses (schedule value × the μP and regime multipliers)."""
    lines = ["values inside step() per param group:"]
    for g in opt.param_groups:
        parts = [f"lr {float(g['lr']) * g.get('lr_mult', 1.0):.4g}"]
        if g.get("weight_decay"):
            parts.append(f"weight_decay {g['weight_decay'] * g.get('wd_mult', 1.0):.4g}")
        key = g.get("_mup_eps_key")
        if key and g.get(key) is not None:
            parts.append(f"{key} {g[key] * g.get('eps_mult', 1.0):.4g}")
        for k in ("betas", "momentum", "alpha"):
            if k in g and g[k] is not None:
                v = g[k]
                parts.append(f"{k} " + (f"({', '.join(f'{float(x):.6g}' for x in v)})" if isinstance(v, (tuple, list))
                                        else f"{float(v):.6g}"))
        lines.append(f"  {g.get('mup_roles', '?')} ({len(g['params'])} tensors): " + ", ".join(parts))
    regime = next((g["mup_regime"] for g in opt.param_groups if "mup_regime" in g), None)
    if regime:
        lines.append(f"regime: {regime}")
    return "\n".join(lines)


def add_commands(subparsers: Any, factory_args: Callable[..., None]) -> None:
    """Register ``tune`` and ``transfer`` on ``muplify.cli``'s subparsers."""
    from muplify.tools.tune import DEFAULT_STORAGE, DEFAULT_STUDY, PRUNERS, SAMPLERS

    tu = subparsers.add_parser(
        "tune", help="tune μP hyperparameters on a proxy (Optuna); writes the best as JSON",
        description="Sweep lr and the μP hyperparameters (output/attention/embedding multipliers, per-role lr and "
                    "init multipliers) on the proxy FACTORY(width) with Optuna; see docs/tune.md.",
        epilog="Resume: run the same command again (same --storage and --study); the study ends with --trials "
               "finished trials. Watch it: " + DASHBOARD.format(storage="sqlite:///tune.db"))
    factory_args(tu, batch=False)
    tu.add_argument("--objective", required=True, metavar="MODULE:CALLABLE",
                    help="objective(model, optimizer, report) -> value, lower is better")
    tu.add_argument("--width", type=int, required=True, help="proxy width (= the base width of the transfer)")
    tu.add_argument("--trials", type=int, default=64, help="finished trials the study should hold (default 64)")
    tu.add_argument("--optimizer", default="AdamW", help="name in torch.optim (default AdamW)")
    tu.add_argument("--space", action="append", metavar="KEY=ENTRY",
                    help="search-space entry, e.g. 'lr=LogUniform(1e-4, 1e-1)', 'hp.attn_mult=Fixed(1.0)', "
                         "'optimizer.weight_decay=Choice([0.0, 0.1])', 'objective.warmup=IntRange(0, 100)'")
    tu.add_argument("--no-default-space", action="store_true", help="search only the --space entries")
    tu.add_argument("--sampler", choices=sorted(SAMPLERS), default="tpe")
    tu.add_argument("--pruner", choices=sorted(PRUNERS), default="median")
    tu.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    tu.add_argument("--study", default=DEFAULT_STUDY, help=f"study name (default {DEFAULT_STUDY})")
    tu.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    tu.add_argument("--threads", type=int, default=None, help="torch threads per worker (default cores/workers)")
    tu.add_argument("--seed", type=int, default=0, help="trial n runs under seed + n (default 0)")
    tu.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    tu.add_argument("--seeds-per-trial", type=int, default=1,
                    help="a trial's value is the mean over this many init/data seeds (default 1)")
    tu.add_argument("--reeval-top", type=int, default=0,
                    help="re-run the best N configurations on fresh seeds before naming the best (default 0: off)")
    tu.add_argument("--reeval-seeds", type=int, default=3, help="fresh seeds of the re-evaluation (default 3)")
    tu.add_argument("--refine", type=int, default=0,
                    help="trials of the local phase in a box narrowed around the best (default 0: off)")
    tu.add_argument("--refine-shrink", type=float, default=0.3,
                    help="the refined box's share of each range (log scale for log entries; default 0.3)")
    tu.add_argument("--refine-sampler", choices=sorted(SAMPLERS), default="tpe",
                    help="sampler of the local phase (default tpe, a fresh restart; cmaes needs pip install cmaes)")
    tu.add_argument("--widths", type=int, nargs="+", default=None,
                    help="telescoping: the sweep at the first (= --width), then a few trials at each larger width")
    tu.add_argument("--telescope-trials", type=int, default=None,
                    help="trials at each larger width of --widths (default max(2, trials // 8))")
    tu.add_argument("--check-width", type=int, default=None,
                    help="after the sweep: the transferred best vs a short local sweep at this width")
    tu.add_argument("--check-trials", type=int, default=8, help="trials of the --check-width local sweep (default 8)")
    tu.add_argument("--batch-size", type=_positive_int, default=None,
                    help="the proxy's batch size (what the objective trains with), recorded for transfer --batch-size")
    tu.add_argument("--steps", type=_positive_int, default=None,
                    help="the proxy's number of optimizer steps, recorded for transfer --steps")
    tu.add_argument("--horizons", type=_positive_int, nargs="+", default=None, metavar="STEPS",
                    help="the horizon fit: the sweep at each step count (the objective takes steps=), each tuned "
                         "value's optimum fitted as a*S^b; transfer --steps extrapolates it")
    tu.add_argument("--out", default="muplify-out/tune_best.json",
                    help="the best as JSON; <stem>_trials.json, <stem>_params.png, <stem>_importance.png beside it")
    tu.add_argument("--quiet", action="store_true", help="no progress bar")
    tu.set_defaults(func=cmd_tune)

    tr = subparsers.add_parser(
        "transfer", help="muplify the target with tuned hyperparameters and print its plan",
        description="Build FACTORY(width), muplify it relative to the proxy width with the tuned hp, print the plan "
                    "and the optimizer call to use.")
    factory_args(tr, batch=False)
    tr.add_argument("--width", type=int, required=True, help="target width")
    tr.add_argument("--base-width", type=int, default=None, help="the proxy width (default: the one in --hp)")
    tr.add_argument("--hp", required=True, metavar="BEST.JSON", help="written by `python -m muplify tune --out`")
    tr.add_argument("--batch-size", type=_positive_int, default=None,
                    help="the target run's batch size: apply the optimizer family's batch-size rules from the proxy's "
                         "(tune --batch-size)")
    tr.add_argument("--steps", type=_positive_int, default=None,
                    help="the target run's number of optimizer steps: apply the duration rules from the proxy's "
                         "(tune --steps), and extrapolate the horizon fit when --hp has one (tune --horizons)")
    tr.set_defaults(func=cmd_transfer)
