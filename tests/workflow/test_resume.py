"""Interrupted training jobs, as Snakemake runs them: nothing finished is lost, and a rerun resumes.

* SIGTERM during an epoch (a SLURM time limit, a preemption, ``scancel``): the trainer writes its checkpoint and
  stops; the rerun resumes in that epoch, with the best checkpoint and the log of the first attempt.
* A hard kill that tore checkpoint_latest.pth: the rerun resumes from the checkpoint before it.
* A failing final validation keeps the finished weights; a kill during the final validation is followed by a
  rerun that validates again without training.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_cli, snakemake_output

pytestmark = pytest.mark.slow

DATASET = "Dataset501_PancreasQuiz"
MODEL = "nnUNetTrainerPancreasSeg__nnUNetResEncUNetMPlans__3d_cpu_demo"
PUBLISHED = f"results/nnunet/trained/{DATASET}/{MODEL}/fold_0"
WORK = f"results/nnunet/training/{DATASET}/{MODEL}/fold_0"
EPOCHS = 6


def saved_epoch(checkpoint_file) -> int:
    try:
        return torch.load(checkpoint_file, map_location="cpu", weights_only=False)["current_epoch"]
    except Exception:  # missing, or being written right now
        return -1


def stage1_workflow(tmp_path, **stage1) -> tuple[Path, list[str]]:
    """A workflow copy whose stage 1 trains ``EPOCHS`` epochs of 3 iterations (and ``stage1``), with the
    Snakemake arguments after the target (``--configfile`` takes several values, so it comes last)."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load((workdir / ".test" / "config_smoke.yaml").read_text())
    config["training"]["stage1"].update(num_epochs=EPOCHS, iterations_per_epoch=3, **stage1)
    (workdir / "resume.yaml").write_text(yaml.safe_dump(config))
    return workdir, ["--cores", "2", "--configfile", "resume.yaml"]


def start_snakemake(workdir: Path, log: Path, *args: str) -> subprocess.Popen:
    """Snakemake in a session of its own, as a scheduler's job holds it: a signal can reach all its processes."""
    return subprocess.Popen(
        [*snakemake_cli(), *args],
        cwd=workdir,
        start_new_session=True,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, run: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, f"Snakemake ended before {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def full_validation_scores(checkpoint_file) -> list[float]:
    return torch.load(checkpoint_file, map_location="cpu", weights_only=False)["logging"]["full_val_combined"]


def test_sigterm_during_an_epoch_writes_a_checkpoint_and_the_rerun_resumes_in_that_epoch(tmp_path):
    """checkpoint_every is above the epochs, so nnU-Net itself never writes checkpoint_latest.pth: only the stop
    does. The rerun resumes in the interrupted epoch, with the best checkpoint of the first attempt, selects over
    the whole history as an uninterrupted training would, and its rule log holds both attempts."""
    workdir, args = stage1_workflow(tmp_path, checkpoint_every=100)
    target = f"{PUBLISHED}/checkpoint_final.pth"
    work = workdir / WORK
    first_log = tmp_path / "first_run.log"
    first = start_snakemake(workdir, first_log, target, *args)
    try:
        # two epochs done, the third under way (nnU-Net logs "Epoch 2" as it starts)
        wait_for(
            lambda: any("Epoch 2" in log.read_text() for log in work.glob("training_log_*.txt")),
            first,
            first_log,
            "the third epoch",
        )
        os.killpg(first.pid, signal.SIGTERM)  # what SLURM does to every process of the job
        assert first.wait(timeout=120) != 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stop = json.loads((work / "training_stopped.json").read_text())
    stopped_in = stop["epoch"]
    assert stop["signal"] == "SIGTERM" and 2 <= stopped_in < EPOCHS, stop
    assert saved_epoch(work / "checkpoint_latest.pth") == stopped_in  # the interrupted epoch runs again
    first_best = work / "checkpoint_best_combined.pth"
    first_best_epoch, first_best_bytes = saved_epoch(first_best), first_best.read_bytes()
    assert 1 <= first_best_epoch <= stopped_in
    assert not (workdir / target).exists()  # the declared outputs appear only when everything succeeded
    rule_log = workdir / "logs" / "train_stage1_fold0.log"
    assert f"stopped on SIGTERM in epoch {stopped_in}" in rule_log.read_text()

    second = run_snakemake(workdir, target, *args, "--rerun-incomplete", timeout=900)
    assert second.returncode == 0, snakemake_output(second)[-4000:]
    log = rule_log.read_text()
    # the rule's log holds the first attempt too, and names where the second resumed
    assert "===== attempt 01 of this training" in log and f"stopped on SIGTERM in epoch {stopped_in}" in log
    assert f"attempt 2 resumes from checkpoint_latest.pth, at epoch {stopped_in}" in log, log[-3000:]
    resumed = re.search(r"resumed at epoch (\d+); best so far: \{'combined': ([-\w.]+)\}", log)
    assert resumed and int(resumed[1]) == stopped_in and resumed[2] != "-inf", log[-3000:]
    assert sorted(p.name for p in (work / "attempts").iterdir()) == ["attempt_01.log", "attempt_02.log"]

    final = torch.load(workdir / target, map_location="cpu", weights_only=False)
    assert final["current_epoch"] == EPOCHS
    assert all(len(v) == EPOCHS for v in final["logging"].values())
    scores = final["logging"]["full_val_combined"]
    best = workdir / PUBLISHED / "checkpoint_best_combined.pth"
    # selection over the whole history, as without the interruption: the earliest best epoch
    assert saved_epoch(best) == int(np.argmax(scores)) + 1
    print(
        f"\nSIGTERM: stopped in epoch {stopped_in}, rerun resumed at epoch {resumed[1]} with best {resumed[2]}; "
        f"best checkpoint epoch {first_best_epoch} before, {saved_epoch(best)} after; final epoch "
        f"{final['current_epoch']}"
    )
    # the first attempt's best is still there, or a later epoch beat it
    if saved_epoch(best) == first_best_epoch:
        assert best.read_bytes() == first_best_bytes
    else:
        assert saved_epoch(best) > stopped_in and max(scores) > scores[first_best_epoch - 1]


def test_a_hard_kill_that_tore_the_latest_checkpoint_resumes_from_the_one_before(tmp_path):
    """SIGKILL (the OOM killer, a node failure) gives the trainer no chance; the kill also left
    checkpoint_latest.pth cut to half its size, as a kill during a plain torch.save did: the rerun resumes from
    the checkpoint before it, and says so."""
    workdir, args = stage1_workflow(tmp_path, checkpoint_every=1)
    target = f"{PUBLISHED}/checkpoint_final.pth"
    latest = workdir / WORK / "checkpoint_latest.pth"
    first_log = tmp_path / "first_run.log"
    first = start_snakemake(workdir, first_log, target, *args)
    try:
        wait_for(lambda: saved_epoch(latest) >= 2, first, first_log, "checkpoint_latest.pth of epoch 2")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=120)
    interrupted_at = saved_epoch(latest)
    assert 2 <= interrupted_at < EPOCHS
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    subprocess.run([*snakemake_cli(), "--unlock", *args], cwd=workdir, check=True, capture_output=True)

    second = run_snakemake(workdir, target, *args, "--rerun-incomplete", timeout=900)
    assert second.returncode == 0, snakemake_output(second)[-4000:]
    log = (workdir / "logs" / "train_stage1_fold0.log").read_text()
    assert re.search(
        r"checkpoint_latest\.pth cannot be read .*; resuming from \S+checkpoint_latest\.previous\.pth", log
    ), log[-3000:]
    resumed = re.search(r"resumed at epoch (\d+)", log)
    assert resumed and interrupted_at - 1 <= int(resumed[1]) <= interrupted_at, log[-3000:]
    print(f"\nhard kill: latest checkpoint at epoch {interrupted_at} torn, rerun resumed at epoch {resumed[1]}")
    assert not (workdir / WORK / "checkpoint_latest.previous.pth").exists()
    final = torch.load(workdir / target, map_location="cpu", weights_only=False)
    assert final["current_epoch"] == EPOCHS
    assert all(len(v) == EPOCHS for v in final["logging"].values())


def test_the_final_validation_fails_or_is_killed_without_costing_the_weights_or_a_retraining(tmp_path):
    """nnU-Net's final validation fails (a reference mask only it reads is corrupt): the finished weights stay.
    Then, with the mask repaired, a kill during the validation: the rerun validates again and trains nothing."""
    workdir, args = stage1_workflow(tmp_path)
    summary = f"{PUBLISHED}/validation/summary.json"
    preprocessed = workdir / "results" / "nnunet" / "preprocessed" / DATASET
    done = run_snakemake(workdir, str(preprocessed.relative_to(workdir) / "nnUNetPlans_3d_fullres.done"), *args)
    assert done.returncode == 0, snakemake_output(done)[-4000:]
    split = json.loads((preprocessed / "splits_final.json").read_text())[0]
    reference = preprocessed / "gt_segmentations" / f"{split['val'][0]}.nii.gz"
    intact = reference.read_bytes()
    reference.write_bytes(b"not a NIfTI file")

    failed = run_snakemake(workdir, summary, *args, timeout=900)
    assert failed.returncode != 0
    out = snakemake_output(failed)
    assert "Error in rule final_validation" in out and "Error in rule train_stage1" not in out, out[-4000:]
    checkpoints = {
        name: workdir / PUBLISHED / name for name in ("checkpoint_final.pth", "checkpoint_best_combined.pth")
    }
    assert saved_epoch(checkpoints["checkpoint_final.pth"]) == EPOCHS
    assert 1 <= saved_epoch(checkpoints["checkpoint_best_combined.pth"]) <= EPOCHS
    weights = {name: path.stat().st_mtime_ns for name, path in checkpoints.items()}

    reference.write_bytes(intact)
    run_log = tmp_path / "validation_run.log"
    validating = start_snakemake(workdir, run_log, summary, *args)
    try:
        wait_for(lambda: (workdir / PUBLISHED / "validation").is_dir(), validating, run_log, "final validation")
        assert not (workdir / summary).exists(), "the validation finished before the kill: nothing was tested"
    finally:
        os.killpg(validating.pid, signal.SIGKILL)
        validating.wait(timeout=120)
    subprocess.run([*snakemake_cli(), "--unlock", *args], cwd=workdir, check=True, capture_output=True)

    rerun = run_snakemake(workdir, summary, *args, "--rerun-incomplete", timeout=900)
    out = snakemake_output(rerun)
    assert rerun.returncode == 0, out[-4000:]
    assert "rule final_validation" in out and "rule train_stage1" not in out, out[-4000:]
    assert {name: path.stat().st_mtime_ns for name, path in checkpoints.items()} == weights
    print(
        f"\nfinal validation: failed, then killed; the rerun validated only; published checkpoints untouched "
        f"(final epoch {saved_epoch(checkpoints['checkpoint_final.pth'])}, best epoch "
        f"{saved_epoch(checkpoints['checkpoint_best_combined.pth'])})"
    )
    assert json.loads((workdir / summary).read_text())["foreground_mean"]["Dice"] >= 0
