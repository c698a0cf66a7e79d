"""The tools' shared pieces: the built-in corpus (by-file split, deterministic batches) and the training loop
(schedule through a real LambdaLR that keeps the μP ratios, evaluation, report/pruning, divergence, determinism)."""
from __future__ import annotations

import math

import pytest
import torch

from muplify import muplify
from muplify.models import GPT
from muplify.tools.batch import Batch
from muplify.tools.corpus import ByteCorpus, stdlib_corpus
from muplify.tools.train import TrainOptions, evaluate, lr_factor, train


# ------------------------------------------------------------------------------------------------------- corpus
@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for i in range(40):
        (root / f"pkg{i % 3}").mkdir(exist_ok=True)
        (root / f"pkg{i % 3}" / f"f{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "skipped.py").write_text("not part of the corpus\n")
    return ByteCorpus(root, val_fraction=0.25)


def test_corpus_splits_by_file_deterministically(tiny_corpus):
    c = tiny_corpus
    assert c.n_files["train"] + c.n_files["val"] == 40  # site-packages left out
    assert c.n_files["val"] > 0 and c.n_files["train"] > 0
    again = ByteCorpus(c.root, val_fraction=0.25)
    assert torch.equal(again.data["val"], c.data["val"]) and again.describe() == c.describe()
    # a file is in one split only, decided by its relative path
    val_text = bytes(c.data["val"].tolist())
    for i in range(40):
        in_val = c.split_of(f"pkg{i % 3}/f{i}.py") == "val"
        assert (f"def f{i}(x)".encode() + b":\n    return x * " + str(i).encode() + b"\n" in val_text) == in_val


def test_corpus_batches_are_next_byte_pairs_and_reproducible(tiny_corpus):
    a = tiny_corpus.fixed_batches("train", 3, batch_size=4, seq_len=8, seed=7)
    b = [next(s) for s in [tiny_corpus.batches("train", 4, 8, seed=7)] for _ in range(3)]
    assert all(torch.equal(x.args[0], y.args[0]) and torch.equal(x.labels, y.labels) for x, y in zip(a, b))
    x, y = a[0].args[0], a[0].labels
    assert x.shape == y.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    other = tiny_corpus.fixed_batches("train", 1, 4, 8, seed=8)[0]
    assert not torch.equal(other.args[0], x)
    small = tiny_corpus.fixed_batches("train", 1, 4, 8, seed=7, vocab_size=50)[0]
    assert int(small.args[0].max()) < 50 and torch.equal(small.args[0], x % 50)


def test_stdlib_corpus_is_real_text():
    c = stdlib_corpus()
    assert c is stdlib_corpus()  # read once per process
    d = c.describe()
    assert d["files"]["train"] > 100 and d["files"]["val"] > 10 and d["bytes"]["train"] > 1_000_000
    assert b"def " in bytes(c.data["train"][:200_000].tolist())


# --------------------------------------------------------------------------------------------------------- loop
def _model(seed=0, width=32):
    torch.manual_seed(seed)
    return GPT(vocab_size=256, d_model=width, n_layer=1, head_dim=16, block_size=16, tie_weights=False)


def _run(tiny_corpus, options, lr=1e-2, seed=0, **kw):
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    val = tiny_corpus.fixed_batches("val", 2, 4, 16, seed=1)
    return model, train(model, opt, tiny_corpus.batches("train", 4, 16, seed=seed), options, val_batches=val, **kw)


def test_train_learns_and_returns_the_validation_loss(tiny_corpus):
    model, res = _run(tiny_corpus, TrainOptions(steps=40))
    assert not res.diverged and res.steps_done == 40
    assert res.curve[0][1] > 5.0 and res.train_loss < 3.0  # ln 256 = 5.55 at the start
    val = tiny_corpus.fixed_batches("val", 2, 4, 16, seed=1)
    assert res.val_loss == pytest.approx(evaluate(model, val)) and res.val_loss < 4.0
    assert res.evals == [(40, res.val_loss)] and model.training


def test_train_is_deterministic_given_the_seeds(tiny_corpus):
    opts = TrainOptions(steps=10, warmup_steps=3, schedule="cosine")
    _, a = _run(tiny_corpus, opts)
    _, b = _run(tiny_corpus, opts)
    _, c = _run(tiny_corpus, opts, seed=1)
    assert a.curve == b.curve and a.val_loss == b.val_loss
    assert a.curve != c.curve


def test_schedule_is_a_real_scheduler_and_keeps_the_mup_ratios():
    opts = TrainOptions(steps=12, warmup_steps=4, schedule="cosine", final_lr_frac=0.1)
    factors = [lr_factor(s, opts) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    mu = muplify(_model(width=64), base_width=32)
    opt = mu.optimizer(torch.optim.AdamW, lr=1e-3)
    assert len({g["lr_mult"] for g in opt.param_groups}) > 1
    seen = []  # the lrs the optimizer applies inside step() (muplify's pre-hook has multiplied them)
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
    batch = Batch((torch.randint(0, 256, (2, 16)),), labels=torch.randint(0, 256, (2, 16)))
    train(mu, opt, [batch] * 12, opts)
    for step, lrs in enumerate(seen):
        for g, lr in zip(opt.param_groups, lrs):
            assert lr == pytest.approx(1e-3 * factors[step] * g["lr_mult"])
    assert isinstance(opt.param_groups[0].get("initial_lr"), float)  # set by torch's LambdaLR


def test_report_after_each_evaluation_and_raising_prunes(tiny_corpus):
    calls = []
    _, res = _run(tiny_corpus, TrainOptions(steps=9, eval_every=4), report=lambda s, v: calls.append((s, v)))
    assert [s for s, _ in calls] == [4, 8, 9] and calls == res.evals

    class Pruned(Exception):
        pass

    def prune(step, value):
        raise Pruned(step)

    with pytest.raises(Pruned, match="4"):
        _run(tiny_corpus, TrainOptions(steps=9, eval_every=4), report=prune)


def test_a_non_finite_loss_stops_the_run(tiny_corpus):
    calls = []
    _, res = _run(tiny_corpus, TrainOptions(steps=20, eval_every=5), lr=1e30, report=lambda s, v: calls.append(s))
    assert res.diverged and res.val_loss == math.inf and res.steps_done < 20
    assert not math.isfinite(res.curve[-1][1])
    assert all(s <= res.steps_done for s in calls)


def test_batches_from_a_callable_and_running_out():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def batch(step):
        seen.append(step)
        return Batch((torch.randint(0, 256, (2, 8)),), labels=torch.randint(0, 256, (2, 8)))

    res = train(model, opt, batch, TrainOptions(steps=3))
    assert seen == [0, 1, 2] and math.isnan(res.val_loss) and res.evals == []
    with pytest.raises(ValueError, match="ran out after 2 steps"):
        train(model, opt, [batch(0), batch(1)], TrainOptions(steps=3))
