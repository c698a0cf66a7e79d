"""Smoke tests for benchmarks/: run the --quick modes as subprocesses and check their output files (every μP run
must succeed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(script: str, out: Path, *extra: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    cmd = [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{script} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def lr_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_transfer")
    p = _run("lr_transfer.py", out, timeout=240)
    return out, p


def test_lr_transfer_quick_outputs(lr_quick):
    out, p = lr_quick
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"meta", "runs", "summary"}
    meta = res["meta"]
    assert {"env", "corpus", "widths", "log2_lrs", "seeds", "base_width"} <= set(meta)
    assert meta["env"]["torch"] and meta["env"]["cpu_count"]
    assert meta["corpus"]["files"]["train"] > 0 and meta["corpus"]["files"]["val"] > 0
    widths, lrs = meta["widths"], meta["log2_lrs"]
    assert len(widths) >= 2 and len(lrs) >= 3
    assert all(b - a <= 1 for a, b in zip(lrs[:-1], lrs[1:]))  # grid spacing <= 1 in log2

    runs = list(res["runs"].values())
    assert len(runs) == 2 * len(widths) * len(lrs) * meta["seeds"]
    for r in runs:
        assert {"param", "width", "log2_lr", "seed", "steps"} <= set(r["config"])
        assert r["status"] in ("ok", "diverged", "error")
    sp = [r for r in runs if r["config"]["param"] == "sp"]
    assert all(r["status"] in ("ok", "diverged") for r in sp), [r.get("error") for r in sp]
    assert any(r["status"] == "ok" and r["val_loss"] < 5.0 for r in sp)  # learned something below ln(256) = 5.55
    for r in sp:
        assert {"val_loss", "diverged", "seconds", "ms_per_step", "train_curve"} <= set(r)

    summary = res["summary"]
    assert {"params", "targets"} <= set(summary)
    assert set(summary["targets"]) == {"mup_optimum_shift_le_1", "sp_optimum_shift_ge_2", "mup_best_loss_monotone"}
    assert len(summary["params"]["sp"]["best"]) == len(widths)

    png = out / "lr_transfer.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "argmin log2(lr)" in p.stdout and "Targets" in p.stdout


def test_lr_transfer_quick_resumes(lr_quick):
    out, _ = lr_quick
    before = json.loads((out / "results.json").read_text())["runs"]
    p = _run("lr_transfer.py", out, "--no-plot", timeout=120)
    after = json.loads((out / "results.json").read_text())["runs"]
    done = [k for k, r in before.items() if r["status"] in ("ok", "diverged")]
    assert done and all(after[k] == before[k] for k in done)  # finished runs were skipped, not redone
    assert f"{len(done)} already done" in p.stdout


def test_lr_transfer_quick_mup(lr_quick):
    out, _ = lr_quick
    res = json.loads((out / "results.json").read_text())
    mup = [r for r in res["runs"].values() if r["config"]["param"] == "mup"]
    assert mup and all(r["status"] in ("ok", "diverged") for r in mup), [r.get("error") for r in mup]
    assert any(r["status"] == "ok" for r in mup)
    assert all(r["schedule_ratios_preserved"] for r in mup)
    # above the base width the μP optimizer must have more than one learning rate (hidden lr / width_mult)
    base = res["meta"]["base_width"]
    wide = [r for r in mup if r["config"]["width"] > base]
    assert wide and all(len(r["lr_multipliers"]) > 1 for r in wide)
    # at the base width μP trains exactly like SP (same seed, same batches)
    diff = res["summary"].get("base_width_max_abs_diff")
    assert diff is not None and diff < 1e-3


def test_overhead_quick(tmp_path):
    p = _run("overhead.py", tmp_path, timeout=180)
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert {"env", "config", "rows", "muplify_cases"} <= set(res)
    assert {"torch", "device", "cpu_count"} <= set(res["env"])
    csv_text = (tmp_path / "overhead.csv").read_text()
    assert csv_text.startswith("section,case,")
    sections = {r["section"] for r in res["rows"]}
    assert "muplify()" in sections
    assert "| muplify() on |" in p.stdout
    errors = [(r["section"], r.get("error")) for r in res["rows"] if r.get("error")]
    assert not errors, errors
    assert {"train step (eager)", "optimizer step"} <= sections
    for r in res["rows"]:
        if r["section"] != "muplify()":
            assert r["ratio"] > 0
        else:
            assert r["muplify_s"] > 0


def test_depth_transfer_quick(tmp_path):
    p = _run("depth_transfer.py", tmp_path, "--no-plot", timeout=240)
    res = json.loads((tmp_path / "results.json").read_text())
    runs = list(res["runs"].values())
    assert {r["config"]["param"] for r in runs} == {"mup", "completep"}
    assert all(r["status"] in ("ok", "diverged") for r in runs), [r.get("error") for r in runs]
    assert all(r["config"]["axis"] == "depth" and r["config"]["width"] == 64 for r in runs)
    assert set(res["summary"]["targets"]) == {"completep_optimum_shift_le_1", "mup_optimum_shift_ge_2",
                                              "completep_best_loss_monotone"}
    # at the base depth CompleteP is width-only μP exactly
    assert res["summary"]["base_width_max_abs_diff"] == 0.0
    assert "μP+CompleteP" in p.stdout


def test_lr_transfer_quick_under_muon(tmp_path):
    # torch's Muon orthogonalises in bfloat16, slow on CPU: widths 32/64, 20 steps
    _run("lr_transfer.py", tmp_path, "--optimizer", "muon", "--lrs", "-7", "-6", "--widths", "32", "64",
         "--base-width", "32", "--steps", "20", "--no-plot", timeout=240)
    res = json.loads((tmp_path / "results.json").read_text())
    mup = [r for r in res["runs"].values() if r["config"]["param"] == "mup"]
    assert mup and all(r["status"] == "ok" for r in mup), [r.get("error") for r in mup]
    assert all(r["schedule_ratios_preserved"] for r in mup)  # the scheduler keeps Muon's and AdamW's lrs apart
    assert res["summary"]["base_width_max_abs_diff"] == 0.0


def test_optimizer_overhead_quick(tmp_path):
    p = _run("optimizer_overhead.py", tmp_path, timeout=240)
    res = json.loads((tmp_path / "optimizer_overhead.json").read_text())
    fams = {r["family"].split()[0] for r in res["rows"]}
    assert fams == {"adam", "sgd", "sign", "adafactor", "muon"}
    muon = next(r for r in res["rows"] if r["family"].startswith("muon"))
    assert muon["ns_calls_per_step"] == muon["muon_matrices"] > 0  # Newton-Schulz once per matrix
    assert all(r["ratio"] > 0 for r in res["rows"]) and "| family |" in p.stdout


def test_mutransfer_quick(tmp_path):
    pytest.importorskip("optuna")
    p = _run("mutransfer.py", tmp_path, timeout=300)
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"meta", "runs", "summary", "sweeps"} <= set(res)
    runs = list(res["runs"].values())
    arms = {"mutransfer", "improved", "per_module", "tuned_at_target", "lr_only", "sp"}
    assert {r["config"]["arm"] for r in runs} == arms
    assert all(r["status"] in ("ok", "diverged") for r in runs), [r.get("error") for r in runs]
    preset = res["meta"]["preset"]
    proxy, targets, seeds, tat = preset["proxy"], preset["targets"], preset["seeds"], preset["tat_widths"]
    assert tat == targets and set(preset["arms"]) == arms
    s = res["summary"]
    # every arm at every width (SP: the targets only; tuned at the target: its own widths) over all seeds
    assert set(s["loss"]) == arms
    for arm in ("mutransfer", "improved", "per_module", "lr_only"):
        assert sorted(int(w) for w in s["loss"][arm]) == [proxy, *targets]
    assert sorted(int(w) for w in s["loss"]["sp"]) == targets
    assert sorted(int(w) for w in s["loss"]["tuned_at_target"]) == tat
    assert all(len(v["values"]) == seeds for arm in s["loss"].values() for v in arm.values())
    # the configuration tuned at each target, transferred down to the proxy
    assert sorted(int(w) for w in s["tuned_down"]) == tat
    assert all(len(v["values"]) == seeds for v in s["tuned_down"].values())
    down = [r for r in runs if r["config"]["arm"] == "tuned_at_target" and r["config"]["width"] == proxy]
    assert sorted({r["config"]["tuned_at"] for r in down}) == tat and all(r["config"]["base_width"] == proxy
                                                                          for r in down)
    # the μTransfer runs carry the tuned hp; the lr-only runs none; per-module ones per-kind lr multipliers
    assert all(r["config"]["hp"] for r in runs if r["config"]["arm"] == "mutransfer")
    # (tune records which parameter had which role in best["hp"]["tuned_roles"]: issue 18; not a tuned value)
    assert all(set(r["config"]["hp"]) <= {"tuned_roles"} for r in runs if r["config"]["arm"] == "lr_only")
    assert all({"qkv", "mlp_out", "readout"} <= set(r["config"]["hp"]["lr_mult"])
               for r in runs if r["config"]["arm"] == "per_module")
    assert s["tuned"]["mutransfer"]["counts"]["complete"] >= 1 and s["tuned"]["mutransfer"]["steps"] > 0
    # the improved tune: global, refine and telescope phases, two seeds a trial, steps at the proxy and the first target
    imp = s["tuned"]["improved"]
    assert [ph["name"] for ph in imp["phases"]] == ["global", "refine", "telescope"]
    assert imp["seeds_per_trial"] == 2 and sorted(int(w) for w in imp["steps_by_width"]) == [proxy, targets[0]]
    assert all(s["tuned"][f"tuned_at_target@{w}"]["tuned_at"] == w for w in tat)
    # the transfer gap of every proxy arm (and SP) at every tuned-at-target width
    assert set(s["gap"]) == {"mutransfer", "improved", "per_module", "lr_only", "sp"}
    assert all(sorted(int(w) for w in g) == tat for g in s["gap"].values())
    # compute fractions: SP's sweep costs at least its grid's size in target runs; the proxy sweeps are cheaper
    for w in targets:
        row = s["compute"]["per_target"][str(w)]
        assert row["sp"]["flops_frac"] >= preset["sp_points"] - 1e-9
        assert 0 < row["mutransfer"]["flops_frac"] < row["sp"]["flops_frac"]
        assert 0 < row["lr_only"]["flops_frac"] and 0 < row["per_module"]["flops_frac"]
        assert row["improved"]["flops_frac"] > 0
        assert row["tuned_at_target"]["flops_frac"] >= 1 and "improved_over_target_sweep" in row
    assert set(s["targets"]) == {"mutransfer_le_sp_at_target", "mutransfer_monotone_in_width",
                                 "improved_monotone_in_width", "per_module_monotone_in_width",
                                 "mutransfer_compute_small", "gap_mutransfer", "gap_improved", "gap_per_module",
                                 "improved_compute_small", "tuned_down_no_better_mutransfer",
                                 "tuned_down_no_better_improved"}
    assert all(t["status"] in ("PASS", "FAIL") for t in s["targets"].values())
    for png in ("mutransfer.png", "tune_params.png", "tune_lr_only.png", "tune_improved.png", "tune_per_module.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tune.db").exists() and "| μTransfer |" in p.stdout and "Transfer gap" in p.stdout
    # a re-run resumes: the sweeps are complete and no final run is repeated
    before = {k: r["seconds"] for k, r in res["runs"].items()}
    _run("mutransfer.py", tmp_path, "--no-plot", timeout=200)
    after = json.loads((tmp_path / "results.json").read_text())
    assert {k: r["seconds"] for k, r in after["runs"].items()} == before
    # an arm left out now is read from the store: its runs are not repeated and the summary keeps it
    _run("mutransfer.py", tmp_path, "--no-plot", "--arms", "lr_only", timeout=120)
    again = json.loads((tmp_path / "results.json").read_text())
    assert {k: r["seconds"] for k, r in again["runs"].items()} == before
    assert set(again["summary"]["loss"]) == arms and again["summary"]["gap"] == after["summary"]["gap"]


def test_beyond_zoo_quick(tmp_path):
    p = _run("beyond_zoo.py", tmp_path, timeout=240)
    rows = {r["model"]: r for r in json.loads((tmp_path / "beyond_zoo.json").read_text())["rows"]}
    assert set(rows) == {"phimoe", "xlnet", "dit"} and not any("error" in r for r in rows.values())
    assert rows["phimoe"]["oracle_disagreements"] == {} and all(r["base_identity"] for r in rows.values())
    assert rows["dit"]["guesses"] == ["t_mlp.0.weight"] and rows["xlnet"]["depth"] == 2
    assert "| model |" in p.stdout


def test_gpu_suite_smoke(tmp_path):
    """benchmarks/gpu_suite.sh --smoke: every section's code path (AdamW fused/foreach, Muon, bf16 autocast,
    torch.compile, μTransfer) runs end to end on the CPU at the smallest size, as it will on the first GPU lent."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run(["bash", str(BENCH / "gpu_suite.sh"), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, f"gpu_suite failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    sections = res["sections"]
    assert set(sections) == {"adamw_fused", "adamw_foreach", "muon", "bf16_autocast", "compile", "mutransfer"}
    assert all(s["ok"] for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    for name in ("adamw_fused", "adamw_foreach", "muon", "bf16_autocast", "compile"):
        r = sections[name]["result"]
        assert r["plain_step_ms"] > 0 and r["mup_step_ms"] > 0
    comp = sections["compile"]["result"]
    # μP's forward multipliers are constants in module hooks: no extra graph, no recompile
    assert comp["mup_recompiles"] == 0 and comp["mup_graphs"] == comp["plain_graphs"] >= 1
    rows = sections["mutransfer"]["result"]
    assert {r["width"] for r in rows} == {16, 32} and all(r["final_loss"] is not None for r in rows)
    assert set(sections["mutransfer"]["best_lr"]) == {"16", "32"}
