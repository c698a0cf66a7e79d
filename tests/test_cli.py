"""``python -m muplify`` subcommands, run as subprocesses (small widths, seconds each): exit codes, the width argument,
one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from muplify.cli import CLIError, detect_width_arg, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = '''
import torch
import torch.nn as nn
from muplify.models import GPT


class TinyLM(nn.Module):
    """The vocabulary comes first: passing the width positionally would build TinyLM(vocab=width)."""

    def __init__(self, vocab, d_model=32, n_layer=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layer))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x):
        h = self.emb(x)
        for layer in self.layers:
            h = layer(h).relu()
        return self.head(h)


def two_widths(a=32, b=32):
    """Two arguments that scale hidden matrices alike: ambiguous."""
    return nn.Sequential(nn.Linear(4, a), nn.Linear(a, a), nn.Linear(a, b), nn.Linear(b, b), nn.Linear(b, 3))


def make(w, n_layer=1):
    return GPT(vocab_size=64, d_model=w, n_layer=n_layer, block_size=16)


def batch():
    idx = torch.randint(0, 64, (2, 17))
    return idx[:, :-1], idx[:, 1:]
'''


@pytest.fixture
def models(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(MODELS))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("mymodels", None)


def run(*args: str, cwd: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "muplify", *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.strip().splitlines() if line.startswith("error")]
    assert len(errors) == 1 and r.stderr.strip().endswith(errors[0]), r.stderr
    return errors[0]


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """``main(args)`` in this process (no interpreter start-up): the misuse cases fail before any work."""
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_help():
    r = run("--help")
    assert r.returncode == 0
    assert "coord-check" in r.stdout and "plan" in r.stdout and "demo" in r.stdout


# --------------------------------------------------------------------------------------------- exit codes
def test_coord_check_mlp_by_default_mup_passes_exit_0(tmp_path):
    r = run("coord-check", "muplify.models:MLP", "--arg", "in_features=20", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "μP PASS" in r.stdout and "SP FAIL" in r.stdout
    assert "cross-entropy against random labels" in r.stdout  # a real loss, not the output's mean
    assert "width passed as width=" in r.stderr
    d = json.loads((tmp_path / "coord_check_mlp.json").read_text())
    assert d["verdict"]["mup"]["passed"] is True and d["widths"] == [64, 128, 256, 512]
    assert (tmp_path / "coord_check_mlp.png").stat().st_size > 1000


def test_coord_check_broken_mup_exit_1_with_cause():
    r = run("coord-check", "muplify.models:MLP", "--muplify-arg", 'overrides={"net.2.weight": {"role": "input"}}',
            "--params", "mup", "--seeds", "1", "--out", "", "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "μP FAIL" in r.stdout and "likely cause: net." in r.stdout


def test_coord_check_sp_only_exit_follows_sp():
    r = run("coord-check", "muplify.models:MLP", "--params", "sp", "--out", "", "--quiet")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SP FAIL" in r.stdout and "net.4" in r.stdout


def test_coord_check_language_model_reads_the_corpus(models):
    r = run("coord-check", "mymodels:make", "--widths", "32", "64", "128", "--seeds", "1", "--out", "out",
            "--name", "tiny", cwd=str(models))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built-in corpus" in r.stdout and "blocks.0.attn:attn_logits" in r.stdout and "<output>" in r.stdout
    assert "width passed as w=" in r.stderr
    assert (models / "out" / "coord_check_tiny.png").exists()


# ----------------------------------------------------------------------------------------- the width argument
def test_width_goes_to_the_argument_that_scales_the_hidden_weights(models):
    import mymodels

    chosen = detect_width_arg(mymodels.TinyLM, "mymodels:TinyLM", {"vocab": 100})
    assert chosen.name == "d_model"
    with pytest.raises(CLIError, match="several arguments .* \\(a, b\\)"):
        detect_width_arg(mymodels.two_widths, "mymodels:two_widths", {})
    with pytest.raises(CLIError, match="cannot tell which argument"):
        detect_width_arg(lambda vocab=10, n_layer=2: mymodels.TinyLM(vocab, 32, n_layer), "f", {})


def test_plan_uses_the_width_argument_not_the_first_one(models):
    r = run("plan", "mymodels:TinyLM", "--width", "128", "--base-width", "32", "--arg", "vocab=100",
            cwd=str(models))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed as d_model=" in r.stderr
    assert "100x128" in r.stdout or "128x100" in r.stdout  # the embedding is vocab x width, not width x 32
    assert "layers.0.weight" in r.stdout and "hidden" in r.stdout


def test_plan_refuses_an_ambiguous_or_incomplete_factory(models, capsys):
    line = _one_line_error(run_here(capsys, "plan", "mymodels:two_widths", "--width", "64", "--base-width", "32"))
    assert "--width-arg" in line and "a (32)" in line and "b (32)" in line
    line = _one_line_error(run_here(capsys, "plan", "mymodels:TinyLM", "--width", "64", "--base-width", "32"))
    assert "needs vocab" in line and "--arg vocab=" in line
    r = run_here(capsys, "plan", "mymodels:two_widths", "--width", "64", "--base-width", "32", "--width-arg", "a")
    assert r.returncode == 0 and "passed as a= (--width-arg)" in r.stderr, r.stderr


# ----------------------------------------------------------------------------------------------------- errors
def test_misuse_gives_one_line_errors_and_exit_2(models, capsys):
    line = _one_line_error(run_here(capsys, "coord-check", "muplify.models:MLP", "--widths", "64"))
    assert "at least two different widths" in line
    line = _one_line_error(run_here(capsys, "coord-check", "muplify.models:MLP", "--arg", "dropout=0.1"))
    assert "no argument 'dropout'" in line and "in_features" in line
    line = _one_line_error(run_here(capsys, "coord-check", "no_such_module_xyz:f"))
    assert "cannot import 'no_such_module_xyz'" in line
    line = _one_line_error(run_here(capsys, "plan", "mymodels:Nope", "--width", "64", "--base-width", "32"))
    assert "no attribute" in line
    with pytest.raises(SystemExit) as e:  # argparse: usage + the missing option
        main(["plan", "muplify.models:GPT", "--base-width", "32"])
    assert e.value.code == 2 and "--width" in capsys.readouterr().err


def test_errors_from_the_library_are_one_line_and_debug_shows_the_traceback(models, capsys):
    args = ("plan", "mymodels:make", "--width", "64", "--base-width", "0")
    line = _one_line_error(run_here(capsys, *args))
    assert line.startswith("error: MuplifyError: base_width must be a positive int") and "--debug" in line
    r = run("--debug", *args, cwd=str(models))
    assert r.returncode == 2 and "Traceback" in r.stderr and "MuplifyError" in r.stderr


def test_plan():
    r = run("plan", "muplify.models:GPT", "--width", "128", "--base-width", "32", "--arg", "n_layer=1")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("wte.weight", "blocks.0.attn.c_attn.weight", "blocks.0.mlp.0.weight"):
        assert name in r.stdout
    assert "hidden" in r.stdout


def test_demo_quick_passes_with_the_defaults(tmp_path):
    r = run("demo", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "μP PASS" in r.stdout and "SP FAIL" in r.stdout and "lm_head *" in r.stdout
    assert "readout starts at Θ(1/√width)" in r.stdout
    assert (tmp_path / "coord_check_gpt.png").stat().st_size > 1000


def test_coord_check_along_depth(tmp_path, capsys):
    r = run_here(capsys, "coord-check", "muplify.models:GPT", "--axis", "depth", "--depth-arg", "n_layer",
                 "--depths", "2", "4", "8", "--arg", "d_model=64", "--arg", "head_dim=16", "--quiet",
                 "--out", str(tmp_path))
    assert r.returncode == 0 and "μP+CompleteP PASS" in r.stdout and "μP FAIL" in r.stdout
    r = run_here(capsys, "coord-check", "muplify.models:GPT", "--axis", "depth", "--quiet", "--out", "")
    assert r.returncode == 2 and "--depth-arg" in r.stderr
