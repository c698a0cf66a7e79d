"""``muplify.tune``: the Optuna proxy sweep, its storage (SQLite file, a real PostgreSQL server), resume, failures,
pruning, worker processes, the transfer of ``result.best`` and the ``tune``/``transfer`` CLI.

Objectives are tiny (a full-batch regression MLP at width 16, or a quadratic in the learning rate read back from the
optimizer), so the file runs in well under a minute on 2 cores; most of that is starting worker processes.
"""
from __future__ import annotations

import glob
import json
import math
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("optuna")

import muplify  # noqa: E402
from muplify import muplify as mup  # noqa: E402
from muplify.models import GPT, MLP  # noqa: E402
from muplify.tools import tune as T  # noqa: E402
from muplify.tools.tune import space as S  # noqa: E402
from muplify.tools.tune import Choice, Fixed, IntRange, LogUniform, TuneError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
WIDTH = 16
MULT = LogUniform(1 / 8, 8)


# ------------------------------------------------------------------------------------------------ proxy & objectives
# module-level (importable by name) so that worker processes and the CLI can load them
def make_model(width: int) -> torch.nn.Module:
    return MLP(in_features=8, width=width, out_features=4, depth=3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(64, 8, generator=g)
    return x, torch.stack([x[:, :4].sum(1).sin(), x[:, 4:].prod(1), x[:, 0] * x[:, 1], x[:, 7].cos()], 1)


def objective(model, optimizer, report, steps: int = 12, warmup: int = 0) -> float:
    """Full-batch regression; a linear lr warmup over ``warmup`` steps (an objective option a sweep can tune)."""
    x, y = _data()
    base = [g["lr"] for g in optimizer.param_groups]
    for s in range(steps):
        for g, lr in zip(optimizer.param_groups, base):
            g["lr"] = lr * min(1.0, (s + 1) / (warmup + 1))
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if s % 4 == 3:
            report(s, loss.item())
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def quadratic(model, optimizer, report, steps: int = 10) -> float:
    """(log10 lr + 2)^2, the lr read back from the optimizer the trial built; reported at every step."""
    value = (math.log10(optimizer.param_groups[0]["lr"]) + 2) ** 2
    for s in range(steps):
        report(s, value + 0.01 * (steps - s))
    return value


def failing(model, optimizer, report) -> float:
    lr = optimizer.param_groups[0]["lr"]
    if lr == 0.25:
        raise RuntimeError("boom")
    if lr == 0.5:
        report(0, float("inf"))
    if lr == 1.0:
        return float("nan")
    return objective(model, optimizer, report)


_CALLS = [0]


def interrupted_third_call(model, optimizer, report) -> float:
    _CALLS[0] += 1
    if _CALLS[0] == 3:
        raise KeyboardInterrupt  # as Ctrl-C in the middle of a trial
    return objective(model, optimizer, report)


def always_interrupted(model, optimizer, report) -> float:
    raise KeyboardInterrupt


CRASH_LR = 0.0123


def rendezvous(model, optimizer, report) -> float:
    """Records this process's pid and torch threads, and waits (up to 60 s) until a second process did the same:
    both workers must have taken part however unevenly they started.  The first trial with lr == CRASH_LR then
    kills its worker process outright (as the OOM killer would)."""
    d = os.environ["MUPLIFY_TEST_RENDEZVOUS"]
    tmp = os.path.join(d, f".{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(str(torch.get_num_threads()))
    os.replace(tmp, os.path.join(d, str(os.getpid())))
    deadline = time.time() + 60
    while len([f for f in os.listdir(d) if not f.startswith(".")]) < 2 and time.time() < deadline:
        time.sleep(0.05)
    if optimizer.param_groups[0]["lr"] == CRASH_LR:
        try:
            os.close(os.open(os.path.join(d, ".crashed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass  # the re-run of the crashed trial
        else:
            os._exit(3)
    return objective(model, optimizer, report)


def sqlite(tmp_path, name: str = "tune.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def finished(result) -> list:
    return [t for t in result.trials if t.state in T.COUNTED]


# ------------------------------------------------------------------------------------------------ space
def test_default_space_follows_the_model():
    assert muplify.tune is T.tune  # exposed lazily (optuna is imported on first use)
    mlp = S.default_space(mup(make_model(WIDTH), base_width=WIDTH).plan, torch.optim.AdamW)
    assert set(mlp) == {"lr", "hp.output_mult", "hp.embed_mult", "hp.lr_mult.input", "hp.lr_mult.output",
                        "hp.lr_mult.vector", "hp.init_mult.input", "hp.init_mult.hidden", "hp.init_mult.output"}
    assert "hp.attn_mult" not in mlp and "hp.lr_mult.hidden" not in mlp  # no attention; hidden lr is `lr` itself
    with pytest.warns(UserWarning, match="norm gains"):
        gpt = S.default_space(mup(GPT(d_model=32, n_layer=1), base_width=32).plan, "AdamW")
    assert {"hp.attn_mult", "hp.lr_mult.gain", "hp.output_mult"} <= set(gpt)
    assert gpt["lr"] == LogUniform(1e-5, 1.0) and gpt["hp.attn_mult"] == LogUniform(1 / 8, 8)
    assert S.default_space(mup(make_model(WIDTH), base_width=WIDTH).plan, torch.optim.SGD)["lr"].hi == 10.0


def test_space_entries_parse_and_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert S.parse_dist("LogUniform(1e-4, 1e-1)") == LogUniform(1e-4, 0.1)
    betas = S.parse_dist("Choice([(0.9, 0.95), (0.9, 0.999)])")
    assert betas.tokens() == ["[0.9, 0.95]", "[0.9, 0.999]"] and betas.decode("[0.9, 0.999]") == (0.9, 0.999)
    assert S.parse_dist("0.1") == Fixed(0.1)
    assert LogUniform(1 / 8, 8).grid() == [2.0 ** k for k in range(-3, 4)]
    assert S.dist_from_dict(json.loads(json.dumps(S.dist_to_dict(betas)))).tokens() == betas.tokens()
    for bad in ("__import__('os').system('true')", "LogUniform(0, 1)", "Normal(0, 1)", "Choice([])"):
        with pytest.raises(TuneError):
            S.parse_dist(bad)
    run = lambda **kw: T.tune(make_model, WIDTH, objective, trials=1, progress=False, **kw)  # noqa: E731
    for space, match in (({"hp.attn": Fixed(1.0)}, "bad search-space key"),
                         ({"hp.attn_mult": LogUniform(0.5, 2)}, "no attention op"),
                         ({"hp.lr_mult.gain": MULT}, "no parameter of this model has role 'gain'"),
                         ({"hp.lr_mult.input+gain": MULT}, "no parameter of this model has role 'gain'"),
                         ({"hp.lr_mult.input+nope": MULT}, "bad search-space key"),
                         ({"optimizer.momentum": Fixed(0.9)}, "takes no option 'momentum'"),
                         ({"objective.nope": Fixed(1)}, "objective must take")):
        with pytest.raises(TuneError, match=match):
            run(space=space, storage="sqlite:///unused-never-created.db")
    assert not os.path.exists("unused-never-created.db")  # validated before the storage is opened
    with pytest.raises(TuneError, match="not in LogUniform"):
        run(enqueue=[{"lr": 10.0}])
    with pytest.raises(TuneError, match="not in the search space"):
        run(enqueue=[{"hp.attn_mult": 1.0}])
    with pytest.raises(TuneError, match="sampler must be one of"):
        run(sampler="bayes")
    with pytest.raises(TuneError, match="pruner must be one of"):
        run(pruner="mean")
    with pytest.raises(TuneError, match="in-memory"):
        run(storage="sqlite:///:memory:")
    with pytest.raises(TuneError, match="coordinate through the storage"):
        run(storage=None, workers=2)
    in_memory = run(storage=None, space={"lr": Fixed(1e-2)}, defaults=False)
    assert in_memory.best["lr"] == 1e-2 and os.listdir(tmp_path) == []  # nothing written


# ------------------------------------------------------------------------------------------------ the sweep
def test_trials_complete_and_best_is_the_argmin(tmp_path):
    mkw = {"readout_zero_init": True, "example_inputs": (torch.randn(2, 8),)}  # inputs reach trials, unrecorded
    result = T.tune(make_model, WIDTH, objective, torch.optim.AdamW, trials=8, pruner=None, muplify_kwargs=mkw,
                    storage=sqlite(tmp_path), progress=False)
    assert result.best["muplify"] == {"readout_zero_init": True}
    assert "hp.init_mult.output" not in result.space  # a zero readout has no init scale to tune
    assert [t.number for t in result.trials] == list(range(8))
    assert all(t.state == "complete" and t.worker.endswith(f":{os.getpid()}") for t in result.trials)
    best = min(result.trials, key=lambda t: t.value)
    assert result.best["value"] == best.value and result.best["trial"] == best.number
    hp = dict(result.best["hp"])
    assert hp.pop("tuned_roles")  # the roles the values were tuned under ride with them (issue 18)
    assert {**{k: result.best[k] for k in ("lr", "optimizer", "objective")}, "hp": hp} == best.config
    assert result.best["lr"] == result.study.trials[best.number].params["lr"]
    assert result.best["width"] == WIDTH and result.best["seed"] == best.number  # trial n runs under seed 0 + n
    assert len({t.config["lr"] for t in result.trials}) == 8
    imp = result.importance()
    assert set(imp) <= set(result.space) and len(imp) >= 5
    assert math.isclose(sum(imp.values()), 1.0)
    for png in (result.plot(str(tmp_path / "params.png")), result.plot_importance(str(tmp_path / "imp.png"))):
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000


def test_best_round_trips_through_json_and_reproduces_the_trial(tmp_path):
    space = {"optimizer.weight_decay": Choice([0.0, 0.1]), "optimizer.betas": Choice([(0.9, 0.95), (0.8, 0.99)]),
             "objective.warmup": IntRange(0, 4), "hp.output_mult": LogUniform(0.5, 2.0),
             "hp.lr_mult.input+output+vector": LogUniform(0.5, 4.0)}  # one factor for every non-hidden role
    result = T.tune(make_model, WIDTH, objective, torch.optim.AdamW, trials=4, space=space, pruner=None,
                    storage=sqlite(tmp_path), progress=False)
    best = json.loads(json.dumps(result.best))
    assert len(set(best["hp"]["lr_mult"].values())) == 1 and set(best["hp"]["lr_mult"]) == {"input", "output", "vector"}
    assert set(best["optimizer"]) == {"weight_decay", "betas"} and "warmup" in best["objective"]
    # the transfer as a user writes it, at the proxy width with the trial's seed: exactly the trial's value
    torch.manual_seed(best["seed"])
    mu = mup(make_model(WIDTH), base_width=WIDTH, hp=best["hp"])
    opt = mu.optimizer(torch.optim.AdamW, lr=best["lr"], **best["optimizer"])
    assert objective(mu, opt, lambda step, value: None, **best["objective"]) == best["value"]
    mu, opt = T.transfer(make_model, best, torch.optim.AdamW, seed=best["seed"])
    assert objective(mu, opt, lambda s, v: None, **best["objective"]) == best["value"]
    big, opt = T.transfer(make_model, best, torch.optim.AdamW, width=64)  # the μTransfer: base width = proxy
    assert (big.plan.width, big.plan.base_width) == (64, WIDTH)
    assert big.plan.hp.output_mult == best["hp"]["output_mult"]
    assert list(opt.param_groups[0]["betas"]) == best["optimizer"]["betas"]


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    space = {"lr": Choice([1e-3, 1e-2, 0.25, 0.5, 1.0])}
    result = T.tune(make_model, WIDTH, failing, trials=99, space=space, defaults=False, sampler="grid",
                    storage=sqlite(tmp_path), progress=False)
    assert len(result.trials) == 5  # the grid has 5 points: the budget is capped at it
    by_lr = {t.config["lr"]: t for t in result.trials}
    assert [by_lr[lr].state for lr in (1e-3, 1e-2, 0.25, 0.5, 1.0)] == ["complete"] * 2 + ["failed"] * 3
    assert "RuntimeError: boom" in by_lr[0.25].note
    assert "Diverged: reported inf at step 0" in by_lr[0.5].note
    assert "Diverged: the objective returned nan" in by_lr[1.0].note
    assert result.best["lr"] in (1e-3, 1e-2)
    with pytest.raises(TuneError, match="no trial completed .*RuntimeError: boom"):
        T.tune(make_model, WIDTH, failing, trials=2, space={"lr": Fixed(0.25)}, defaults=False,
               storage=sqlite(tmp_path, "all-fail.db"), progress=False)


def test_pruning_stops_hopeless_trials():
    space = {"lr": LogUniform(1e-4, 1.0)}
    kw = dict(trials=12, space=space, defaults=False, sampler="random", storage=None, progress=False)
    result = T.tune(make_model, WIDTH, quadratic, **kw)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned, "the median pruner stopped no trial"
    for t in pruned:  # stopped early, at a value worse than the best finished one
        assert len(result.study.trials[t.number].intermediate_values) < 10
        assert t.value > result.best["value"]
    off = T.tune(make_model, WIDTH, quadratic, pruner=None, **kw)
    assert all(t.state == "complete" for t in off.trials)


def test_resume_continues_the_study_without_repeats(tmp_path):
    kw = dict(storage=sqlite(tmp_path), sampler="random", pruner=None, progress=False, enqueue=[{"lr": 3e-3}])
    first = T.tune(make_model, WIDTH, objective, trials=4, **kw)
    assert first.trials[0].config["lr"] == 3e-3  # the enqueued point runs first ...
    second = T.tune(make_model, WIDTH, objective, trials=7, **kw)  # ... and once (not again on resume)
    assert [t.number for t in second.trials] == list(range(7))
    assert second.trials[:4] == first.trials  # nothing re-run, nothing changed
    assert len({json.dumps(t.config, sort_keys=True) for t in second.trials}) == 7  # no parameters drawn twice
    third = T.tune(make_model, WIDTH, objective, trials=7, **kw)
    assert third.trials == second.trials  # the budget is met: nothing runs
    with pytest.raises(TuneError, match="width: stored 16, now 32"):
        T.tune(make_model, 32, objective, trials=8, **kw)


def test_interrupted_and_orphaned_trials_run_again(tmp_path):
    import optuna

    kw = dict(storage=sqlite(tmp_path), sampler="random", pruner=None, progress=False)
    _CALLS[0] = 0
    with pytest.raises(KeyboardInterrupt):
        T.tune(make_model, WIDTH, interrupted_third_call, trials=5, **kw)
    study = optuna.load_study(study_name=T.DEFAULT_STUDY, storage=kw["storage"])
    assert T.trial_state(study.trials[2]) == "lost"
    # a trial left RUNNING by a worker that was killed (its pid no longer exists)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    orphan = study.ask()
    orphan.set_user_attr(T.WORKER_ATTR, f"{socket.gethostname()}:{proc.pid}")
    result = T.tune(make_model, WIDTH, objective, trials=5, **kw)
    states = [t.state for t in result.trials]
    assert states.count("lost") == 2 and len(finished(result)) == 5
    retry = next(t for t in result.trials if "re-runs lost trial 2" in t.note)
    lost = result.trials[2]
    assert (retry.config, retry.seed) == (lost.config, lost.seed)  # same parameters, same seed
    assert any(f"re-runs lost trial {orphan.number}" in t.note for t in result.trials)


def test_a_configuration_that_keeps_killing_its_worker_is_dropped(tmp_path):
    kw = dict(storage=sqlite(tmp_path), space={"lr": LogUniform(1e-3, 1e-1)}, defaults=False, progress=False)
    for _ in range(4):
        with pytest.raises(KeyboardInterrupt):
            T.tune(make_model, WIDTH, always_interrupted, trials=3, **kw)
    trials = T.load_result(kw["storage"]).trials
    assert [t.state for t in trials] == ["lost"] * 4
    assert [t.config for t in trials[:3]] == [trials[0].config] * 3  # queued again twice (MAX_RERUNS) ...
    assert trials[3].config != trials[0].config and T.MAX_RERUNS == 2  # ... then dropped for fresh parameters


def test_two_workers_are_two_processes(tmp_path, monkeypatch):
    meet = tmp_path / "meet"
    meet.mkdir()
    monkeypatch.setenv("MUPLIFY_TEST_RENDEZVOUS", str(meet))
    with pytest.warns(RuntimeWarning, match="1 of 2 workers stopped .*exit code 3.*the other workers finished"):
        result = T.tune(make_model, WIDTH, rendezvous, trials=4, workers=2, storage=sqlite(tmp_path), pruner=None,
                        enqueue=[{"lr": CRASH_LR}], progress=False)
    pids = {int(p) for p in os.listdir(meet) if not p.startswith(".")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {int(t.worker.rsplit(":", 1)[1]) for t in result.trials} == pids
    threads = {int((meet / str(p)).read_text()) for p in pids}
    assert threads == {max(1, T.cores() // 2)}
    # the killed worker's trial was noticed (dead pid) and run again by the other one, in the same sweep
    lost, retry = result.trials[0], next(t for t in result.trials if "re-runs lost trial 0" in t.note)
    assert lost.state == "lost" and retry.state == "complete" and retry.config == lost.config
    assert retry.worker != lost.worker
    assert len(finished(result)) == 4 and len(result.trials) == 5


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # apt's postgresql keeps them off PATH
    return debian[-1] if debian else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (initdb in a temp dir, a free port, trust auth) with a fresh database.  Skipped
    when the server cannot run here, except under CI=1, where .ci/run installs it and a skip would hide a gap."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true")

    def unavailable(why: str):
        if in_ci:
            pytest.fail(f"CI is set but the PostgreSQL test cannot run: {why}")
        pytest.skip(why)

    try:
        import psycopg2
    except ImportError:
        unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    as_user: dict = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        for name in ("postgres", "nobody"):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                continue
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid}
            break
        else:
            unavailable("running as root and no unprivileged user to run the server as")
    base = tempfile.mkdtemp(prefix="muplify-pg-")
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    data = os.path.join(base, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = False
    try:
        steps = ([initdb, "-D", data, "-U", "tune", "--auth=trust", "-E", "UTF8", "--locale=C", "-N"],
                 [pg_ctl, "-D", data, "-l", os.path.join(base, "log"), "-w", "-t", "60", "-o",
                  f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        for cmd in steps:
            r = subprocess.run(cmd, cwd=base, capture_output=True, text=True, timeout=120, **as_user)
            if r.returncode != 0:
                log = open(os.path.join(base, "log")).read()[-800:] if os.path.exists(os.path.join(base, "log")) \
                    else ""
                unavailable(f"{os.path.basename(cmd[0])} failed: {(r.stderr or r.stdout)[-800:]} {log}")
            started = started or cmd[0] == pg_ctl
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="tune", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE muplify_tune_test")
        conn.close()
        yield f"postgresql+psycopg2://tune@127.0.0.1:{port}/muplify_tune_test"
    finally:
        if started:
            subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], cwd=base, capture_output=True,
                           timeout=60, **as_user)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path, monkeypatch):
    meet = tmp_path / "meet"
    meet.mkdir()
    monkeypatch.setenv("MUPLIFY_TEST_RENDEZVOUS", str(meet))
    result = T.tune(make_model, WIDTH, rendezvous, trials=6, workers=2, storage=postgres_url, pruner=None,
                    progress=False)
    assert [t.number for t in result.trials] == list(range(6))  # every trial accounted for, none extra
    assert [t.state for t in result.trials] == ["complete"] * 6
    assert len({int(t.worker.rsplit(":", 1)[1]) for t in result.trials}) == 2
    assert len({json.dumps(t.config, sort_keys=True) for t in result.trials}) == 6
    again = T.load_result(postgres_url)
    assert again.best == result.best and again.storage.startswith("postgresql")


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "muplify", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_cli_tune_then_transfer(tmp_path, capsys):
    from muplify.cli import main

    out = tmp_path / "best.json"
    r = _cli("tune", "test_tune:make_model", "--objective", "test_tune:objective", "--width", str(WIDTH),
             "--trials", "5", "--storage", sqlite(tmp_path), "--sampler", "random", "--pruner", "none",
             "--space", "optimizer.weight_decay=Choice([0.0, 0.01])", "--out", str(out), "--quiet", cwd=TESTS)
    assert r.returncode == 0, r.stderr
    best = json.loads(out.read_text())
    assert best["width"] == WIDTH and "weight_decay" in best["optimizer"] and best["optimizer_class"].endswith("AdamW")
    for stem in ("best_trials.json", "best_params.png", "best_importance.png"):
        assert (tmp_path / stem).exists(), r.stdout
    assert "optuna-dashboard sqlite:///" in r.stdout
    # transfer in this process (the tune above already ran the CLI in a fresh interpreter)
    argv = ["transfer", "test_tune:make_model", "--width", "64", "--base-width", str(WIDTH), "--hp", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "width w = 64 (" in printed and f"base_width = {WIDTH} (" in printed and "hp: {" in printed
    assert f"mu.optimizer(AdamW, lr={best['lr']!r}, weight_decay=" in printed


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from muplify.cli import main

    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hp": {}, "lr": 1e-3, "width": 16}))
    cases = [["transfer", "test_tune:make_model", "--width", "64", "--hp", str(tmp_path / "missing.json")],
             ["transfer", "test_tune:make_model", "--width", "64", "--base-width", "32", "--hp", str(best)],
             ["tune", "test_tune:nope", "--objective", "test_tune:objective", "--width", "16"],
             ["tune", "test_tune:make_model", "--objective", "test_tune:objective", "--width", "16",
              "--space", "lr=Gauss(1)", "--storage", sqlite(tmp_path)]]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


def test_builtin_objective_runs_the_readme_workflow(tmp_path, capsys):
    """The README's runnable pair: the built-in GPT and the built-in corpus objective, tune then transfer."""
    from muplify.cli import main

    out = tmp_path / "best.json"
    assert main(["tune", "muplify.models:GPT", "--objective", "muplify.tools.objectives:byte_lm", "--width", "32",
                 "--trials", "3", "--space", "objective.steps=Fixed(4)", "--space", "objective.eval_every=Fixed(2)",
                 "--space", "objective.batch_size=Fixed(2)", "--storage", sqlite(tmp_path), "--out", str(out),
                 "--quiet"]) == 0
    best = json.loads(out.read_text())
    assert best["objective"]["steps"] == 4 and math.isfinite(best["value"]) and best["value"] < 6.0
    assert main(["transfer", "muplify.models:GPT", "--width", "64", "--hp", str(out)]) == 0
    assert "base_width = 32 (width_mult 2)" in capsys.readouterr().out


def test_grid_with_two_workers_visits_every_point_once(tmp_path):
    space = {"lr": LogUniform(2 ** -10, 2 ** -4, grid_step=2.0)}  # 7 points
    assert T.LogUniform(2 ** -10, 2 ** -4, grid_step=2.0).grid()[-1] <= 2 ** -4  # rounding never passes hi
    result = T.tune(make_model, WIDTH, objective, trials=7, space=space, defaults=False, sampler="grid",
                    storage=sqlite(tmp_path), workers=2, pruner=None, progress=False)
    lrs = sorted(t.config["lr"] for t in result.trials if t.state == "complete")
    assert lrs == pytest.approx([2.0 ** k for k in range(-10, -3)])
