"""``python -m muplify`` subcommands, run as subprocesses (tiny widths, seconds each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have_core() -> bool:
    try:
        from muplify import muplify  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_CORE = _have_core()
needs_core = pytest.mark.skipif(not HAVE_CORE, reason="muplify core not importable yet")


def run(*args: str, cwd: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "muplify", *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help():
    r = run("--help")
    assert r.returncode == 0
    assert "coord-check" in r.stdout and "plan" in r.stdout and "demo" in r.stdout


def test_coord_check_sp_only_fails_with_exit_1(tmp_path):
    r = run("coord-check", "muplify.models:MLP", "--widths", "32", "64", "128", "--steps", "3", "--params", "sp",
            "--out", str(tmp_path), "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SP FAIL" in r.stdout and "net.4" in r.stdout
    assert (tmp_path / "coord_check_mlp.png").stat().st_size > 1000
    d = json.loads((tmp_path / "coord_check_mlp.json").read_text())
    assert d["verdict"]["sp"]["passed"] is False and d["widths"] == [32, 64, 128]


@needs_core
def test_coord_check_mlp_mup_passes_exit_0(tmp_path):
    # untied, bias-free readout zero-initialised: the setting in which μP is flat from step 0 (see test_coord_check)
    r = run("coord-check", "muplify.models:MLP", "--arg", "in_features=20", "--arg", "bias=False", "--muplify-arg",
            "readout_zero_init=True", "--widths", "32", "64", "128", "--steps", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "μP PASS" in r.stdout and "SP FAIL" in r.stdout
    assert "width passed as width=" in r.stderr


def test_coord_check_custom_factory_and_batch(tmp_path):
    (tmp_path / "tiny.py").write_text(textwrap.dedent("""
        import torch
        from muplify.models import GPT

        def make(w, n_layer=1):
            return GPT(vocab_size=64, d_model=w, n_layer=n_layer, block_size=16)

        def batch():
            idx = torch.randint(0, 64, (2, 17))
            return idx[:, :-1], idx[:, 1:]
    """))
    r = run("coord-check", "tiny:make", "--arg", "n_layer=1", "--batch", "tiny:batch", "--widths", "32", "64", "128",
            "--steps", "2", "--seeds", "1", "--out", "out", "--name", "tiny", "--params", "sp", cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr  # only SP was run: the exit status follows SP, which fails
    assert "blocks.0.attn:attn_logits" in r.stdout and "<output>" in r.stdout
    assert "width passed as the first positional argument" in r.stderr
    assert (tmp_path / "out" / "coord_check_tiny.png").exists()


def test_coord_check_bad_factory_exit_2():
    r = run("coord-check", "no_such_module_xyz:f", "--quiet")
    assert r.returncode == 2 and "cannot import" in r.stderr


@needs_core
def test_plan(tmp_path):
    r = run("plan", "muplify.models:GPT", "--width", "128", "--base-width", "32", "--arg", "n_layer=1")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("wte.weight", "blocks.0.attn.c_attn.weight", "blocks.0.mlp.0.weight"):
        assert name in r.stdout
    assert "hidden" in r.stdout


def test_plan_needs_width():
    r = run("plan", "muplify.models:GPT", "--base-width", "32")
    assert r.returncode == 2 and "--width" in r.stderr
