"""A training rule killed mid-run resumes from its latest checkpoint when the workflow is rerun."""

import os
import re
import signal
import subprocess
import time

import pytest
import torch
import yaml

from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_cli, snakemake_output

pytestmark = pytest.mark.slow

STAGE1 = (
    "results/nnunet/trained/Dataset501_PancreasQuiz/"
    "nnUNetTrainerPancreasSeg__nnUNetResEncUNetMPlans__3d_cpu_demo/fold_0"
)
EPOCHS = 6


def saved_epoch(checkpoint_file) -> int:
    try:
        return torch.load(checkpoint_file, map_location="cpu", weights_only=False)["current_epoch"]
    except Exception:  # missing, or being written right now
        return -1


@pytest.mark.parametrize("torn", [False, True], ids=["whole", "torn"])
def test_killed_training_resumes_from_its_latest_checkpoint(tmp_path, torn):
    """torn: the kill also left checkpoint_latest.pth cut to half its size (as a kill during nnU-Net's plain
    torch.save did): the rerun resumes from the checkpoint before it, and says so."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load((workdir / ".test" / "config_smoke.yaml").read_text())
    config["training"]["stage1"].update(num_epochs=EPOCHS, iterations_per_epoch=3, checkpoint_every=1)
    (workdir / "resume.yaml").write_text(yaml.safe_dump(config))
    target = f"{STAGE1}/checkpoint_final.pth"
    args = ["--cores", "2", "--configfile", "resume.yaml"]  # after the target: --configfile takes several values

    first_output = open(tmp_path / "first_run.log", "w")
    first = subprocess.Popen(
        [*snakemake_cli(), target, *args], cwd=workdir, start_new_session=True,
        stdout=first_output, stderr=subprocess.STDOUT,
    )
    latest = workdir / STAGE1 / "checkpoint_latest.pth"
    deadline = time.monotonic() + 600
    try:
        while saved_epoch(latest) < 2:
            assert first.poll() is None, (tmp_path / "first_run.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint_latest.pth after 10 minutes"
            time.sleep(1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)  # what Ctrl-C / a scheduler's kill does to the whole job
        first.wait(timeout=120)
        first_output.close()
    interrupted_at = saved_epoch(latest)
    assert not (workdir / target).exists()
    assert 2 <= interrupted_at < EPOCHS
    if torn:
        data = latest.read_bytes()
        latest.write_bytes(data[: len(data) // 2])
        subprocess.run([*snakemake_cli(), "--unlock", *args], cwd=workdir, check=True, capture_output=True)

    second = run_snakemake(workdir, target, *args, "--rerun-incomplete", timeout=900)
    assert second.returncode == 0, snakemake_output(second)[-4000:]
    log = (workdir / "logs" / "train_stage1_fold0.log").read_text()
    resumed = re.search(r"resumed at epoch (\d+)", log)
    assert resumed, log[-3000:]
    if torn:
        assert re.search(r"checkpoint_latest\.pth cannot be read .*; resuming from \S+checkpoint_latest\.previous\.pth",
                         log), log[-3000:]
        assert interrupted_at - 1 <= int(resumed[1]) <= interrupted_at
    else:
        assert int(resumed[1]) >= interrupted_at
    assert not (workdir / STAGE1 / "checkpoint_latest.previous.pth").exists()
    final = torch.load(workdir / target, map_location="cpu", weights_only=False)
    assert final["current_epoch"] == EPOCHS
    assert all(len(v) == EPOCHS for v in final["logging"].values())
