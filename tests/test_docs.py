"""The README works as written: its public names import as it shows them, each of its Python blocks runs on its own
(as a new user would paste one of them into a fresh session), its links point at pages that exist; the docs show the
FSDP2 example the tests run.

Convention: a ```python block preceded by ``<!-- not-run: reason -->`` is an illustration and is skipped; every other
block runs in a fresh namespace, in one temporary directory.  Keep the not-run list short.
"""
from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>[^>]*?)\s*-->\s*$")
MAX_NOT_RUN = 2


def python_blocks(path: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, not-run reason or None)`` of every ```python block."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = NOT_RUN.search(prev)
            blocks.append((start, "\n".join(lines[start:j]) + "\n", m.group("reason") if m else None))
            i = j
        i += 1
    return blocks


def test_the_not_run_blocks_are_few_and_say_why():
    skipped = [(line, reason) for line, _, reason in python_blocks(README) if reason is not None]
    assert all(reason for _, reason in skipped)
    assert len(skipped) <= MAX_NOT_RUN, skipped


def test_readme_python_blocks_each_run_standalone(tmp_path, monkeypatch):
    """Each block in a fresh namespace: a block that uses a name an earlier block defined fails (NameError)."""
    monkeypatch.chdir(tmp_path)
    ran = 0
    for line, code, reason in python_blocks(README):
        if reason is not None:
            continue
        namespace: dict = {"__name__": "__readme__"}
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"README.md block at line {line} failed: {type(e).__name__}: {e}\n{code}")
        ran += 1
    assert ran >= 5
    assert os.path.exists(tmp_path / "plan.json") and os.path.exists(tmp_path / "muplify-out" / "coord_check.png")


def test_public_names_are_what_the_readme_imports():
    import muplify.tools.coord_check  # noqa: F401  (a submodule import must not shadow the function)
    from muplify import coord_check, muplify

    assert callable(coord_check) and coord_check.__name__ == "coord_check"
    assert callable(muplify) and muplify.__name__ == "muplify"
    imported = set()
    with open(README, encoding="utf-8") as f:
        for m in re.finditer(r"^from muplify import ([\w, ]+)$", f.read(), flags=re.M):
            imported |= {n.strip() for n in m.group(1).split(",")}
    import muplify as package

    assert imported and imported <= set(package.__all__), imported - set(package.__all__)


def test_readme_links_exist():
    with open(README, encoding="utf-8") as f:
        links = re.findall(r"\]\(((?:docs|benchmarks|examples|tests)/[^)#]+)\)", f.read())
    assert "docs/rules.md" in links and "docs/API.md" in links
    missing = [p for p in links if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing


def test_docs_show_the_fsdp2_example_verbatim():
    """docs/distributed.md embeds examples/fsdp2_example.py: the code the tests run is the code the docs show."""
    with open(os.path.join(ROOT, "docs", "distributed.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)
    with open(os.path.join(ROOT, "examples", "fsdp2_example.py"), encoding="utf-8") as fh:
        source = fh.read()
    assert source in blocks, "docs/distributed.md no longer shows examples/fsdp2_example.py verbatim"


def test_readme_starts_with_setup_and_tests_and_reads_in_order():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first) == 2 and first[0].endswith("python -m muplify demo") and "pip install -e" in first[0]
    assert first[1] == "python -m pytest -q tests"
    order = ["## Install", "## Use", "## Your training loop", "## Check it: the coordinate check", "## Benchmarks",
             "## Design", "## Tests"]
    positions = [text.index(h + "\n") for h in order]
    assert positions == sorted(positions)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    # reference material lives in docs/ (linked), so the README stays a guide
    for page in ("rules.md", "export.md", "distributed.md", "bad-input.md", "API.md"):
        assert f"(docs/{page})" in text and os.path.exists(os.path.join(ROOT, "docs", page))
    assert "| an optimizer class muplify has no rule for |" not in text and "### FSDP2" not in text
    assert len(text) < 32_000
