"""Issue 18 item 6: token-id models are recognised from what their input reaches, not from module order.

A language model whose first directly-owned parameter is a top-level scalar (a learnable logit temperature) takes the
built-in corpus in ``coord_check`` and in the CLI's ``coord-check`` without ``--batch``; the `mup` package's example
Transformer (its nn.Embedding defined after the encoder layers) is muplified without example inputs."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import torch
import torch.nn as nn

from muplify import coord_check, muplify
from muplify.capture import default_example_inputs
from muplify.inputs import embedding_fed_by_input
from muplify.tools.coord_check import language_model_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


class TempLM(nn.Module):
    """A learnable logit temperature owned by the root, registered before the embedding."""

    def __init__(self, width: int = 32, vocab: int = 96):
        super().__init__()
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.emb = nn.Embedding(vocab, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.mlp(h)) * self.log_temp.exp()


class FloatNet(nn.Module):
    """Has an embedding (of class labels it is given as a second, optional input), but its input is float."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.inp, self.cls, self.out = nn.Linear(8, width), nn.Embedding(4, width), nn.Linear(width, 4)

    def forward(self, x, y=None):
        h = self.inp(x)
        return self.out(h if y is None else h + self.cls(y))


def test_token_model_is_read_from_what_the_input_reaches():
    assert language_model_vocab(TempLM()) == 96
    assert embedding_fed_by_input(TempLM()) is not None
    assert language_model_vocab(FloatNet()) is None and embedding_fed_by_input(FloatNet()) is None
    m = TempLM().train()
    embedding_fed_by_input(m)
    assert all(x.training for x in m.modules())  # the probe leaves the modes as they were


def test_coord_check_gives_a_scalar_first_language_model_the_corpus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = coord_check(TempLM, widths=[16, 32], steps=1, seeds=1, progress=False, parametrizations=("mup",))
    assert "built-in corpus" in res.config["data"], res.config["data"]


def test_cli_coord_check_without_batch_takes_the_corpus_for_it():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "muplify", "coord-check", "test_inputs:TempLM", "--widths", "16", "32",
                        "--steps", "1", "--seeds", "1", "--params", "mup", "--out", "", "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # a verdict, not a crash
    assert "scalar type" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_mup_example_transformer_is_muplified_without_example_inputs():
    from muplify_dev.mup_example_transformer import TransformerModel

    model = TransformerModel(100, 64, 2, 128, 2)
    args, _ = default_example_inputs(model)
    assert args[0].dtype == torch.long
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(model, base_width=32)
    assert mu.plan["encoder.weight"].role == "input" and mu.plan["decoder.weight"].role == "output"
    assert mu.plan.width == 64 and mu.plan.width_mult == 2
    out = mu(torch.randint(0, 100, (8, 2)))
    assert out.shape == (8, 2, 100) and torch.isfinite(out).all()


def test_coord_check_on_inputs_that_do_not_fit_says_what_to_pass():
    import pytest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"could not run TempLM on its inputs .*What to pass: batch=") as e:
            coord_check(TempLM, torch.randn(2, 8), labels=torch.randint(0, 96, (2, 8)), widths=[16, 32], steps=1,
                        seeds=1, progress=False, parametrizations=("sp",))
    assert "--batch module:callable" in str(e.value)
