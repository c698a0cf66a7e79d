"""DDP, FSDP2 and distributed checkpoints with muplify (issue #4): real 2-process gloo jobs on the CPU.

Every job runs through ``dist_worker.launch`` (fresh processes with torchrun's environment, a timeout, and a hard
stop of every rank as soon as one fails); the README example runs under ``torchrun`` itself.  The model-parity jobs
(tests/dist_jobs.py:parity) check, for the built-in GPT (tied embedding/readout) and HF Llama:

* the loss trajectory of DDP and of FSDP2 (fully_shard on every block, then the root) on 2 ranks x half the batch
  equals one process on the whole batch within fp32 tolerance;
* the μP groups (lr_mult, wd_mult per parameter name) agree between ``mu.optimizer`` before DDP wrapping, through
  ``ddp.module`` after, ``muplify.optim.make_optimizer(ddp, plan, ...)`` on the wrapper's ``module.``-prefixed
  parameters, and ``mu.optimizer`` on the FSDP2-sharded (DTensor) parameters;
* dcp.save mid-run, then dcp.load into a fresh model built on the meta device, sharded, ``to_empty`` and
  ``mup_init`` (which also re-creates HF's rotary buffers), continues exactly like the original run;
* ``mup_init`` on the sharded meta-built model makes the same init decisions as on an unsharded CPU model (the rule
  detection reduces its statistics over the mesh).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from dist_worker import RankFailed, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _close(a, b, rtol=2e-5, atol=1e-6):
    return all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_ddp_and_fsdp2_match_single_process(name, tmp_path):
    r0, r1 = launch("dist_jobs:parity", world_size=2, timeout=150, kwargs={"name": name, "ckpt": str(tmp_path / "ck")})
    for key in ("ref", "ddp", "fsdp", "resumed"):
        assert r0[key] == r1[key], f"ranks disagree on {key}"
    ref = r0["ref"]
    assert ref[-1] < ref[0], "the reference run does not train"
    assert _close(r0["ddp"], ref), (r0["ddp"], ref)
    assert _close(r0["fsdp"], ref), (r0["fsdp"], ref)
    assert r0["ddp_max_param_diff"] < 1e-3 and r0["fsdp_max_param_diff"] < 1e-3

    # μP groups: identical multipliers for every parameter, however the optimizer was built
    groups = r0["ref_groups"]
    assert any(v[0] != 1.0 for v in groups.values()), "width_mult 2 must give some lr_mult != 1 (hidden weights)"
    for key in ("ddp_groups_before_wrap", "ddp_groups_inner", "ddp_groups_wrapper", "fsdp_groups", "resumed_groups"):
        assert r0[key] == groups, key
    assert all(n.startswith("module.") for n in r0["ddp_wrapper_names"])
    assert r0["fsdp_class"].startswith("FSDPMu") and r0["fsdp_param_types"] == ["DTensor"]
    if name == "gpt":
        assert r0["fsdp_tied"], "fully_shard must keep wte / lm_head tied"

    # DCP: resume in a fresh meta-built sharded model == the uninterrupted run
    assert r0["fresh_all_meta"]
    assert r0["resumed"] == r0["fsdp"][-len(r0["resumed"]):], (r0["resumed"], r0["fsdp"])
    assert r0["resumed_group_keys"] == ["lr_mult", "wd_mult"]

    # sharded mup_init on the meta-built model: same decisions as the CPU model, same statistics
    assert r0["fresh_init_rules"] == r0["ref_init_rules"]
    for n, std in r0["ref_init_std"].items():
        assert abs(r0["fresh_init_std"][n] / std - 1) < 0.15, (n, r0["fresh_init_std"][n], std)
    print(f"{name}: ref {ref}; job {r0['t_total']:.1f}s (build {r0['t_build']:.1f}s)")


def test_fsdp2_example_under_torchrun(tmp_path):
    """The README example, as documented: torchrun --nproc_per_node 2 examples/fsdp2_example.py."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import fsdp2_example as ex
    finally:
        sys.path.pop(0)
    out, ckpt = tmp_path / "losses.json", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "examples", "fsdp2_example.py"), "--steps", "4", "--out", str(out), "--ckpt", str(ckpt)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards SIGTERM to its workers
        try:
            log, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    got = json.loads(out.read_text())
    assert got["world_size"] == 2 and sorted(os.listdir(ckpt))  # a DCP checkpoint with files from the ranks
    ref = ex.reference(steps=4)
    assert _close(got["losses"], ref), (got["losses"], ref)
    assert ref[-1] < ref[0]
    assert {g["roles"] for g in got["groups"]} == {"hidden", "input,output,vector"}


def _assert_all_dead(pids):
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_failing_rank_fails_fast_with_its_error():
    """Rank 1 raises while rank 0 waits in an all_reduce that will never complete: launch() must raise rank 1's
    error quickly (not wait for the 60 s collective timeout) and leave no process behind."""
    with pytest.raises(RankFailed) as info:
        launch("dist_jobs:fail", world_size=2, timeout=90, coll_timeout=60, kwargs={"bad_rank": 1})
    assert info.value.rank == 1
    # rank 1's own error, not rank 0's collective timeout nor the launch timeout: launch() did not wait for them
    assert "ValueError: deliberate failure on rank 1" in str(info.value)
    assert "timed out" not in str(info.value) and "Timeout" not in str(info.value)
    _assert_all_dead(info.value.pids)


def test_hanging_job_is_killed_at_its_timeout():
    with pytest.raises(RankFailed, match="timed out after 8s"):
        try:
            launch("dist_jobs:hang", world_size=2, timeout=8)
        except RankFailed as e:
            _assert_all_dead(e.pids)
            raise
