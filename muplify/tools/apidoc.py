"""``docs/API.md``, generated from the code's signatures and docstrings so that it cannot drift.

    python -m muplify.tools.apidoc > docs/API.md          # regenerate
    python -m muplify.tools.apidoc --check docs/API.md    # exit 1 when the file differs (tests/test_apidoc.py)

What is documented is the list ``SECTIONS`` below (the public names of the README); each entry is a dotted path.  A
class gets its docstring, its dataclass fields (type, default and the comment on the field's line) and its public
methods and properties; an object without a docstring is marked so, to be written in the code, not here.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import io
import sys
import tokenize
from dataclasses import dataclass
from typing import Any

__all__ = ["render", "SECTIONS", "Section"]


@dataclass(frozen=True)
class Section:
    title: str  # the section heading
    entries: tuple[str, ...]  # dotted paths of the documented objects, in reading order
    intro: str = ""  # one paragraph before the entries


SECTIONS: tuple[Section, ...] = (
    Section("The call", ("muplify.muplify", "muplify.analyze", "muplify.is_muplified"),
            "`from muplify import muplify, analyze, is_muplified`."),
    Section("The muplified model", ("muplify.MuplifiedModule",),
            "`muplify()` swaps the model's class to a subclass mixing in `MuplifiedModule`; these are its methods."),
    Section("The plan: facts", ("muplify.Plan", "muplify.ParamPlan", "muplify.Site", "muplify.Options",
                                "muplify.HyperParams"),
            "What muplify established about the model; read-only once applied (edits raise `PlanError`)."),
    Section("The policy: μP rules", ("muplify.ForwardMultiplier", "muplify.OptimizerFamily",
                                     "muplify.policy.ParamRules"),
            "What the rules derive from the facts (`muplify.policy`); `plan[name].lr_mult` etc. are views of it."),
    Section("Optimizers", ("muplify.register_rule", "muplify.register_family", "muplify.CombinedOptimizer")),
    Section("Extension points", ("muplify.rules.table.rule", "muplify.rules.call.Call", "muplify.rules.table.declare",
                                 "muplify.rules.table.Norm",
                                 "muplify.rules.table.Layer", "muplify.rules.table.unregister", "muplify.sites.site_finder",
                                 "muplify.policy.site_kinds.SiteKind", "muplify.policy.site_kinds.register_site_kind",
                                 "muplify.policy.UpdateRule",
                                 "muplify.policy.parametrizations.Parametrization",
                                 "muplify.policy.parametrizations.register_parametrization"),
            "Each is one registered object: an op's shape rule and what the op is (a view, a norm with gain/bias "
            "slots, a layer with a bias slot, a softmax, a selection), a site finder, a kind of multiplier site (its "
            "finder, `hp` key and factor rule), an optimizer family (`register_family` above), a parametrization "
            "(`muplify(..., parametrization=)`). Registering a name or op twice raises."),
    Section("Coordinate check", ("muplify.coord_check", "muplify.tools.coord_result.CoordCheckResult"),
            "`from muplify import coord_check`; it returns a `CoordCheckResult`."),
    Section("Tuning on a proxy", ("muplify.tune", "muplify.tools.tune.TuneResult", "muplify.tools.tune.TrialRecord",
                                  "muplify.tools.tune.transfer", "muplify.tools.tune.load_result",
                                  "muplify.tools.tune.space.default_space", "muplify.tools.tune.space.LogUniform",
                                  "muplify.tools.tune.space.Uniform", "muplify.tools.tune.space.IntRange",
                                  "muplify.tools.tune.space.Choice", "muplify.tools.tune.space.Fixed",
                                  "muplify.tools.tune.space.parse_dist", "muplify.tools.tune.space.TuneError",
                                  "muplify.tools.tune.Diverged"),
            "`muplify.tune(...)` sweeps lr and `hp` on a proxy with Optuna; `result.best` goes to `muplify(hp=...)` "
            "and `mu.optimizer(lr=...)` at the target. Workflow, ranges, storage, workers: docs/tune.md."),
    Section("Errors", ("muplify.MuplifyError", "muplify.CaptureError", "muplify.WidthError", "muplify.PlanError",
                       "muplify.RolesMismatchError", "muplify.OptimizerRuleError")),
    Section("Tools: training loop, corpus, batches",
            ("muplify.tools.train.train", "muplify.tools.train.TrainOptions", "muplify.tools.train.TrainResult",
             "muplify.tools.train.evaluate", "muplify.tools.train.lr_factor", "muplify.tools.train.make_scheduler",
             "muplify.tools.corpus.stdlib_corpus", "muplify.tools.corpus.ByteCorpus", "muplify.tools.batch.Batch",
             "muplify.tools.batch.output_loss", "muplify.tools.batch.model_loss"),
            "The pieces the coordinate check, the demo and the benchmarks share (`muplify.tools`)."),
)

HEADER = """# muplify API reference

Generated from the code's signatures and docstrings by `python -m muplify.tools.apidoc > docs/API.md`;
`tests/test_apidoc.py` fails when this file differs from what the code generates, so edit the docstrings, not this
file.
"""


def resolve(path: str) -> Any:
    """The object at a dotted path: attributes first (``muplify.coord_check`` is the function the package exports),
    a submodule import only where there is no such attribute."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(".".join(parts[:i]))
    return obj


def _fmt_default(value: Any) -> str:
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"  # no memory addresses: the output must be stable
    return repr(value)


def _annotation(ann: Any) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def signature(name: str, obj: Any) -> str:
    """``name(params) -> return``, one parameter per line when it does not fit in 100 columns."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params, seen_kw_only = [], False
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and not seen_kw_only:
            params.append("*")
            seen_kw_only = True
        s = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind == p.VAR_POSITIONAL:
            seen_kw_only = True
        if p.annotation is not p.empty:
            s += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            s += f" = {_fmt_default(p.default)}" if p.annotation is not p.empty else f"={_fmt_default(p.default)}"
        params.append(s)
    ret = f" -> {_annotation(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    one = f"{name}({', '.join(params)}){ret}"
    if len(one) <= 100:
        return one
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _field_comments(cls: type) -> dict[str, str]:
    """The comment on each dataclass field's line."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out, line_name = {}, {}
    for line in source.splitlines():
        stripped = line.strip()
        if ":" in stripped and not stripped.startswith(("#", "def ", "class ", "@", '"')):
            line_name[line] = stripped.split(":", 1)[0].strip()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.line.rstrip("\n")
        if tok.type == tokenize.COMMENT and line in line_name:
            out[line_name[line]] = tok.string.lstrip("#").strip()
    return out


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    return doc if doc else "*(no docstring yet)*"


def _is_auto_dataclass_doc(cls: type) -> bool:
    doc = cls.__doc__ or ""
    return dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}(")


def _members(cls: type) -> list[tuple[str, Any]]:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") or name in fields:
            continue
        if isinstance(value, property) or callable(value) or isinstance(value, (classmethod, staticmethod)):
            out.append((name, value))
    return out


def _render_class(path: str, cls: type) -> list[str]:
    lines = [f"### `{path}`", ""]
    if dataclasses.is_dataclass(cls):
        lines += ["```python", f"@dataclass\nclass {cls.__name__}", "```", ""]
    else:
        lines += ["```python", signature(cls.__name__, cls) if "__init__" in cls.__dict__ else f"class {cls.__name__}",
                  "```", ""]
    if not _is_auto_dataclass_doc(cls):
        lines += [_doc(cls), ""]
    if dataclasses.is_dataclass(cls):
        comments = _field_comments(cls)
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{_fmt_default(f.default)}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{_fmt_default(f.default_factory())}`"
            else:
                default = "required"
            ann = _annotation(f.type).replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{ann}` | {default} | {comments.get(f.name, '').replace('|', '/')} |")
        lines.append("")
    for name, value in _members(cls):
        if isinstance(value, property):
            lines += [f"#### `{cls.__name__}.{name}` (property)", "", _doc(value.fget), ""]
            continue
        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        kind = " (classmethod)" if isinstance(value, classmethod) else ""
        sig = signature(f"{cls.__name__}.{name}", func)
        if isinstance(value, classmethod) or not isinstance(value, staticmethod):
            sig = sig.replace("(self, ", "(").replace("(self)", "()").replace("(cls, ", "(").replace("(cls)", "()")
            sig = sig.replace("(\n    self,\n", "(\n").replace("(\n    cls,\n", "(\n")
        lines += [f"#### `{cls.__name__}.{name}`{kind}", "", "```python", sig, "```", "", _doc(func), ""]
    return lines


def _render_function(path: str, fn: Any) -> list[str]:
    return [f"### `{path}`", "", "```python", signature(fn.__name__, fn), "```", "", _doc(fn), ""]


def render() -> str:
    """The whole reference as Markdown."""
    lines = [HEADER]
    for section in SECTIONS:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        for path in section.entries:
            obj = resolve(path)
            lines += _render_class(path, obj) if inspect.isclass(obj) else _render_function(path, obj)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m muplify.tools.apidoc", description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="FILE", help="compare with FILE instead of printing; exit 1 when it differs")
    a = ap.parse_args(argv)
    text = render()
    if a.check is None:
        sys.stdout.write(text)
        return 0
    with open(a.check, encoding="utf-8") as f:
        if f.read() == text:
            return 0
    print(f"{a.check} is out of date: run python -m muplify.tools.apidoc > {a.check}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
