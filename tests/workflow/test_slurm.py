"""The SLURM profile: its YAML, and (opt-in) a real run through snakemake-executor-plugin-slurm.

* ``test_profiles_parse`` / ``test_set_resources_names_workflow_rules``: always run (no SLURM needed).
* ``test_a_training_past_its_slurm_time_limit_resumes_and_keeps_its_best``: only with
  ``PANCREAS_MTL_SLURM_TEST=1`` (CI sets it; root on a Debian machine). It starts a single-node SLURM
  (``.ci/slurm/start.sh``), runs the smoke workflow up to the stage-1 checkpoint with ``--profile
  profiles/slurm`` and the real plugin, with a time limit shorter than the training, and always stops the
  cluster (``.ci/slurm/stop.sh``). The command-line overrides are what *this* test cluster needs and are documented
  in profiles/README.md: no slurmdbd (squeue status), its partition, no account, no GPUs.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.workflow_helpers import (
    REPO,
    copy_workflow,
    run_snakemake,
    snakemake_cli,
    snakemake_output,
    write_quiz_names,
)

PROFILES = REPO / "profiles"
# Rules the SLURM profile configures before the workflow defines them (harmless: Snakemake ignores
# set-resources for unknown rules). Remove a name here once its rule lands, or drop it from the profile.
FUTURE_RULES: set[str] = set()

SLURM_ENV = "PANCREAS_MTL_SLURM_TEST"
STATE_DIR = Path(os.environ.get("PANCREAS_MTL_SLURM_DIR", "/tmp/pancreas-mtl-slurm"))
PARTITION = os.environ.get("PANCREAS_MTL_SLURM_PARTITION", "ci")
STAGE1_TRAINER = "nnUNetTrainerPancreasSeg"
STAGE1_CHECKPOINT = (
    "results/nnunet/trained/Dataset501_PancreasQuiz/"
    f"{STAGE1_TRAINER}__nnUNetResEncUNetMPlans__3d_cpu_demo/fold_0/checkpoint_final.pth"
)
RUN_TIMEOUT_S = 1800  # the workflow run, several allocations of stage 1 (10 minutes here)


def load_profile(name: str) -> dict:
    data = yaml.safe_load((PROFILES / name / "config.yaml").read_text())
    assert isinstance(data, dict), f"profiles/{name}/config.yaml is not a mapping"
    return data


def workflow_rule_names() -> set[str]:
    names = set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        names |= set(re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", smk.read_text(), flags=re.M))
    return names


def test_profiles_parse():
    default = load_profile("default")
    # the default profile is loaded with every run (also beside --profile profiles/slurm): keep it neutral
    assert not {"executor", "cores", "jobs", "default-resources", "set-resources"} & set(default), default
    slurm = load_profile("slurm")
    assert slurm["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(slurm["default-resources"])
    for rule, resources in slurm["set-resources"].items():
        assert isinstance(resources, dict) and resources, f"set-resources.{rule} must be a non-empty mapping"
        assert not ({"gres"} & set(resources) and {"gpu", "gpu_model"} & set(resources)), (
            f"set-resources.{rule}: the plugin takes gres OR gpu/gpu_model, not both"
        )


def test_set_resources_names_workflow_rules():
    rules = workflow_rule_names()
    assert {"train_stage1", "train_stage2"} <= rules, rules
    unknown = set(load_profile("slurm")["set-resources"]) - rules - FUTURE_RULES
    assert not unknown, f"profiles/slurm sets resources for rules the workflow does not define: {unknown}"
    landed = FUTURE_RULES & rules
    assert not landed, f"remove {landed} from FUTURE_RULES in {Path(__file__).name}: they exist now"


def readme_cluster_command() -> list[str]:
    """The command README's "Running on a cluster" gives for the real data, as arguments."""
    section = (REPO / "README.md").read_text().split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^snakemake --profile profiles/slurm.*$", section, flags=re.M)
    assert len(commands) == 1, f"README's cluster section should give one snakemake command: {commands}"
    return commands[0].split()


def test_readme_cluster_command_asks_for_gpus(tmp_path):
    """Defect: README's cluster command ran the CPU demo config (the GPU resources are only in real_data.yaml),
    which sent training to the GPU partition with 0 GPUs. A dry run of the command, through the real profile and
    plugin, on a quiz folder of empty files: every GPU rule asks for one GPU."""
    workdir = copy_workflow(tmp_path / "workflow")
    write_quiz_names(workdir / "data")
    result = run_snakemake(workdir, *readme_cluster_command()[1:], "-n")
    out = snakemake_output(result)
    assert result.returncode == 0, out
    resources = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M))
    gpu_rules = ["train_stage1", "train_stage2", "predict_split", "benchmark_inference"]
    for rule in gpu_rules:
        assert rule in resources, f"{rule} is not planned:\n{out}"
        assert re.search(r"\bgpu=1\b", resources[rule]) and "slurm_partition=gpu" in resources[rule], (
            rule,
            resources[rule],
        )


# ---- opt-in: a real SLURM cluster on this machine -------------------------------------------------------

slurm_only = pytest.mark.skipif(
    os.environ.get(SLURM_ENV) != "1", reason=f"set {SLURM_ENV}=1 to run the SLURM test (root, Debian, apt)"
)


def _script(name: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "slurm" / name), str(STATE_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@slurm_only
def test_start_waits_for_daemons_that_are_slow_to_exec(tmp_path):
    """A daemon's PID runs bash and setsid before the daemon itself; on a loaded machine that takes a while,
    and start.sh must not take a daemon that is still starting for one that died (CI once failed so)."""
    assert _script("stop.sh").returncode == 0  # no cluster of an earlier test may answer for this one
    shim = tmp_path / "bin" / "setsid"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/bash\nsleep 1.5\nexec {shutil.which("setsid")} "$@"\n')
    shim.chmod(0o755)
    slow_exec = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    try:
        start = _script("start.sh", env=slow_exec)
        assert start.returncode == 0, start.stdout + start.stderr
        assert "cluster up" in start.stdout
    finally:
        stop = _script("stop.sh")
        assert stop.returncode == 0, stop.stdout + stop.stderr


@pytest.fixture(scope="module")
def slurm_cluster():
    started = time.monotonic()
    start = _script("start.sh")
    try:
        if start.returncode != 0:
            pytest.fail(f"start.sh failed:\n{start.stdout}\n{start.stderr}")
        print(f"\nSLURM test cluster up in {time.monotonic() - started:.1f} s")
        yield STATE_DIR / "etc" / "slurm.conf"
    finally:
        stop = _script("stop.sh")
        print(f"SLURM test cluster: start to stop {time.monotonic() - started:.1f} s\n{stop.stdout}{stop.stderr}")
        assert stop.returncode == 0, stop.stdout + stop.stderr


def slurm_overrides(profile: dict, **rule_resources: dict) -> list[str]:
    """Command-line options that adapt profiles/slurm to the test cluster. A list given on the command line
    replaces the profile's list, so every rule of the profile's set-resources is repeated here, with its
    sbatch extras (the training's early SIGTERM); ``rule_resources`` replaces entries per rule."""
    set_resources = []
    for rule, resources in profile["set-resources"].items():
        kept = {key: value for key, value in resources.items() if key == "slurm_extra"}
        for key, value in {"slurm_partition": PARTITION, "gpu": 0, **kept, **rule_resources.get(rule, {})}.items():
            set_resources.append(f"{rule}:{key}={value!r}" if isinstance(value, str) else f"{rule}:{key}={value}")
    return [
        # no slurmdbd: sacct fails, so poll with squeue (the cluster keeps finished jobs 300 s: MinJobAge)
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        # keep each job's SLURM log, the evidence that it ran through SLURM
        "--slurm-keep-successful-logs",
        # the test partition, no account (the plugin's guess fails without accounting: submits without)
        "--default-resources",
        f"slurm_partition={PARTITION}",
        "runtime=30",
        "mem_mb=2000",
        # no GPUs on this machine
        "--set-resources",
        *set_resources,
        "--jobs",
        "2",
        "--latency-wait",
        "10",
    ]


def test_overrides_keep_the_profiles_early_sigterm():
    overrides = slurm_overrides(load_profile("slurm"))
    for rule in ("train_stage1", "train_stage2"):
        assert f"{rule}:slurm_extra='--signal=TERM@300'" in overrides, overrides


# The preemption and time-limit test: stage 1 trains EPOCHS epochs of 1.2-4.6 s (median 1.5-1.8 s, two runs on
# a 2-core machine) with a 3-minute limit and SIGTERM 60 s before it (SLURM sends it up to 60 s earlier still:
# 60-120 s into the job, of which the job's start takes about 20 s). The test preempts the first allocation itself
# (scancel --signal=TERM) in epoch 6; the second must reach its limit, so the epochs left then must take longer
# than 100 s even at 1.5 s an epoch (with 40 epochs they did not: a CI machine finished them in the second
# allocation). The retries finish the training: 4 allocations of 30-38 epochs here (8-10 minutes), up to 9 at
# 4 s an epoch.
TIME_LIMIT_MIN = 3
EARLY_SIGTERM = "--signal=TERM@60"
EPOCHS = 80
RETRIES = 8


def saved_epoch(checkpoint_file: Path) -> int:
    return torch.load(checkpoint_file, map_location="cpu", weights_only=False)["current_epoch"]


def slurm_job_state(job_id: str) -> str:
    """The controller's record of a job (finished ones stay listed for MinJobAge = 300 s; no sacct here)."""
    listed = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%T", "--jobs", job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    return listed[0] if listed else "no longer listed"


@slurm_only
@pytest.mark.slow
def test_a_preempted_training_and_one_past_its_time_limit_resume_and_keep_their_best(
    slurm_cluster, tmp_path, monkeypatch
):
    """Stage 1 through ``snakemake --profile profiles/slurm`` needs several allocations: the first is preempted
    (``scancel --signal=TERM``), the second stopped by SLURM's early signal before its time limit. Each time the
    trainer checkpoints the epoch it is in and exits; the profile's retries resume it in that epoch, with the best
    checkpoint of every attempt kept, until it has trained the configured epochs."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load((workdir / ".test" / "config_smoke.yaml").read_text())
    # checkpoint_every above the epochs: nnU-Net itself never writes checkpoint_latest.pth, only the stops do
    config["training"]["stage1"].update(num_epochs=EPOCHS, checkpoint_every=100, full_validation_every=5)
    (workdir / "time_limit.yaml").write_text(yaml.safe_dump(config))
    profile = load_profile("slurm")
    # software deployment: the profile sets none, so each job runs this venv's python (run_snakemake puts
    # its bin first on PATH and sbatch exports the environment); nothing to override.
    assert "software-deployment-method" not in profile and "sdm" not in profile
    # the head process's sbatch/squeue find the cluster here (start.sh also links the default path to it)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster))
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    head_log = tmp_path / "snakemake.log"
    started = time.monotonic()
    head = subprocess.Popen(
        [
            *snakemake_cli(),
            STAGE1_CHECKPOINT,
            "--profile",
            "profiles/slurm",
            *slurm_overrides(profile, train_stage1={"runtime": TIME_LIMIT_MIN, "slurm_extra": EARLY_SIGTERM}),
            "--retries",
            str(RETRIES),
            "--configfile",
            "time_limit.yaml",
        ],
        cwd=workdir,
        env=env,
        stdout=open(head_log, "w"),
        stderr=subprocess.STDOUT,
    )
    training_log = workdir / "logs" / "train_stage1_fold0.log"
    try:
        # the first training allocation, once it has had a full validation (epoch 4) and trains epoch 6: preempt it
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (training_log.is_file() and "Epoch 6" in training_log.read_text()):
            assert head.poll() is None, head_log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the training never reached epoch 6"
            time.sleep(0.5)
        first = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+rule_train_stage1/", head_log.read_text())
        assert len(first) == 1, head_log.read_text()[-4000:]
        subprocess.run(["scancel", "--signal=TERM", first[0]], check=True, timeout=30)
        head.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if head.poll() is None:
            head.kill()
            subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], timeout=30)
    elapsed = time.monotonic() - started
    out = head_log.read_text()
    print(f"SLURM workflow run: {elapsed:.1f} s")
    assert head.returncode == 0, out[-8000:]

    # every job went through sbatch: the plugin logged its SLURM job id, and the job's SLURM log (kept by
    # --slurm-keep-successful-logs) holds the Snakemake run of that rule inside the allocation
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", out)
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    for rule in ["make_synthetic_quiz", "convert_quiz_to_nnunet", "plan_and_preprocess", "train_stage1"]:
        logs = sorted((slurm_logs / f"rule_{rule}").rglob("*.log"))
        assert logs, f"no SLURM log for {rule} under {slurm_logs}:\n{out[-4000:]}"
        assert {log.stem for log in logs} <= set(submitted), (rule, logs, submitted)
        assert f"rule {rule}:" in logs[-1].read_text() and "--executor slurm-jobstep" in logs[-1].read_text()
    trainings = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+rule_train_stage1/", out)
    states = {job_id: slurm_job_state(job_id) for job_id in trainings}
    print(f"training allocations and their states: {states}")
    log = training_log.read_text()
    epoch_times = [float(seconds) for seconds in re.findall(r"Epoch time: ([\d.]+) s", log)]
    assert epoch_times, f"nnU-Net logged no epoch:\n{log[-4000:]}"
    epoch_median = float(np.median(epoch_times))
    print(f"epoch times: median {epoch_median:.2f} s, {min(epoch_times):.2f}-{max(epoch_times):.2f} s")
    assert len(trainings) >= 3, (
        f"the time limit stopped no allocation: nothing was tested (raise EPOCHS above {EPOCHS} for epochs of "
        f"{epoch_median:.2f} s)\n{states}\n{out[-4000:]}"
    )
    assert states[trainings[-1]] == "COMPLETED", states
    # a stopped allocation ended on the trainer's exit after the signal (FAILED), or at the limit (TIMEOUT)
    assert {states[job_id] for job_id in trainings[:-1]} <= {"FAILED", "TIMEOUT", "no longer listed"}, states

    # the rule log holds every attempt: each stopped one names its epoch, the next resumes in that epoch
    # (each stop is logged twice: by the job, and as the error the job ends with)
    stopped = list(
        {int(a): int(e) for a, e in re.findall(r"attempt (\d+) stopped on SIGTERM in epoch (\d+)", log)}.values()
    )
    resumed = [int(e) for e in re.findall(r"attempt \d+ resumes from checkpoint_latest\.pth, at epoch (\d+)", log)]
    print(f"stopped in epochs {stopped}, resumed at {resumed}")
    assert len(stopped) == len(trainings) - 1 and resumed == stopped, log[-4000:]
    assert all(epoch > 0 for epoch in resumed), log[-4000:]  # never from 0
    assert not re.search(r"best so far: \{'combined': -inf\}", log), log[-4000:]
    for attempt in range(1, len(trainings)):
        assert f"===== attempt {attempt:02d} of this training" in log, attempt
    # the signal reached the trainer, before the limit: the second allocation's stop is the time limit's
    assert len(re.findall(r"SIGTERM received: stopping in epoch", log)) >= 2, log[-4000:]

    # the finished model: the configured epochs, and the best over the whole history, as one run would select
    trained = workdir / STAGE1_CHECKPOINT
    final = torch.load(trained, map_location="cpu", weights_only=False)
    assert final["trainer_name"] == STAGE1_TRAINER
    assert final["current_epoch"] == EPOCHS
    assert all(len(values) == EPOCHS for values in final["logging"].values())
    scores = final["logging"]["full_val_combined"]
    assert saved_epoch(trained.parent / "checkpoint_best_combined.pth") == int(np.nanargmax(scores)) + 1
    # the best the first attempts found is the selection still, or a later epoch beat it
    before_last = log[: log.rindex("stopped on SIGTERM")]
    earlier_best = [float(s) for s in re.findall(r"new best combined: ([\d.]+) \(epoch", before_last)]
    assert earlier_best and np.nanmax(scores) >= max(earlier_best) - 1e-4, (earlier_best, scores)
