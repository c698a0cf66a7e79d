"""docs/API.md is generated from the code (python -m muplify.tools.apidoc > docs/API.md): regenerate and compare, so
the reference cannot drift from the signatures and docstrings."""
from __future__ import annotations

import os

import muplify
from muplify.tools.apidoc import SECTIONS, render, signature

API_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "API.md")


def test_api_md_is_what_the_code_generates():
    with open(API_MD, encoding="utf-8") as f:
        committed = f.read()
    assert committed == render(), "docs/API.md is out of date: run  python -m muplify.tools.apidoc > docs/API.md"


def test_the_reference_covers_the_public_names():
    documented = {path.split(".")[-1] for s in SECTIONS for path in s.entries}
    assert set(muplify.__all__) <= documented, set(muplify.__all__) - documented
    text = render()
    for name in ("MuplifiedModule.optimizer", "MuplifiedModule.to_standard", "MuplifiedModule.mup_init",
                 "MuplifiedModule.to_empty", "MuplifiedModule.plan", "Plan.to_json", "Plan.from_json",
                 "Plan.override", "muplify.coord_check", "muplify.register_rule", "muplify.WidthError",
                 "muplify.tools.train.train", "muplify.tools.corpus.ByteCorpus"):
        assert f"`{name}`" in text, name


def test_signatures_follow_the_code():
    def f(a, b: int = 2, *, c=None, d: str = "x") -> bool:
        """Doc."""

    assert signature("f", f) == "f(a, b: int = 2, *, c=None, d: str = 'x') -> bool"
    assert "    loss_fn: LossFn = muplify.tools.batch.model_loss,\n" in render()  # no memory addresses
