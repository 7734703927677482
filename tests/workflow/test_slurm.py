"""The SLURM profile: its YAML, and (opt-in) a real run through snakemake-executor-plugin-slurm.

* ``test_profiles_parse`` / ``test_set_resources_names_workflow_rules``: always run (no SLURM needed).
* ``test_slurm_run_trains_stage1``: only with ``PANCREAS_MTL_SLURM_TEST=1`` (CI sets it; root on a Debian
  machine). It starts a single-node SLURM (``.ci/slurm/start.sh``), runs the smoke workflow up to the
  stage-1 checkpoint with ``--profile profiles/slurm`` and the real plugin, and always stops the cluster
  (``.ci/slurm/stop.sh``). The command-line overrides are what *this* test cluster needs and are documented
  in profiles/README.md: no slurmdbd (squeue status), its partition, no account, no GPUs.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.workflow_helpers import REPO, copy_workflow, run_snakemake, snakemake_output

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
RUN_TIMEOUT_S = 540  # the workflow run; the whole test (start, run, stop) stays under 10 minutes


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
    for rel in ["train/subtype0/quiz_0_001_0000.nii.gz", "train/subtype0/quiz_0_001.nii.gz",
                "test/quiz_002_0000.nii.gz"]:
        (workdir / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "data" / rel).write_bytes(b"")
    result = run_snakemake(workdir, *readme_cluster_command()[1:], "-n")
    out = snakemake_output(result)
    assert result.returncode == 0, out
    resources = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M))
    gpu_rules = ["train_stage1", "train_stage2", "predict_split", "benchmark_inference"]
    for rule in gpu_rules:
        assert rule in resources, f"{rule} is not planned:\n{out}"
        assert re.search(r"\bgpu=1\b", resources[rule]) and "slurm_partition=gpu" in resources[rule], (rule, resources[rule])


# ---- opt-in: a real SLURM cluster on this machine -------------------------------------------------------

slurm_only = pytest.mark.skipif(
    os.environ.get(SLURM_ENV) != "1", reason=f"set {SLURM_ENV}=1 to run the SLURM test (root, Debian, apt)"
)


def _script(name: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "slurm" / name), str(STATE_DIR)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env,
    )


@slurm_only
def test_start_waits_for_daemons_that_are_slow_to_exec(tmp_path):
    """A daemon's PID runs bash and setsid before the daemon itself; on a loaded machine that takes a while,
    and start.sh must not take a daemon that is still starting for one that died (CI once failed so)."""
    assert _script("stop.sh").returncode == 0  # no cluster of an earlier test may answer for this one
    shim = tmp_path / "bin" / "setsid"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/bash\nsleep 1.5\nexec {shutil.which('setsid')} \"$@\"\n")
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


def slurm_overrides(profile: dict) -> list[str]:
    """Command-line options that adapt profiles/slurm to the test cluster (a list given on the command line
    replaces the profile's list, so every GPU rule of the profile is repeated here)."""
    set_resources = []
    for rule in profile["set-resources"]:
        set_resources += [f"{rule}:slurm_partition={PARTITION}", f"{rule}:gpu=0"]
    return [
        # no slurmdbd: sacct fails, so poll with squeue (the cluster keeps finished jobs 300 s: MinJobAge)
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        # keep each job's SLURM log, the evidence that it ran through SLURM
        "--slurm-keep-successful-logs",
        # the test partition, no account (the plugin's guess fails without accounting: submits without)
        "--default-resources", f"slurm_partition={PARTITION}", "runtime=30", "mem_mb=2000",
        # no GPUs on this machine
        "--set-resources", *set_resources,
        "--jobs", "2",
        "--latency-wait", "10",
    ]


@slurm_only
@pytest.mark.slow
def test_slurm_run_trains_stage1(slurm_cluster, tmp_path, monkeypatch):
    workdir = copy_workflow(tmp_path / "workflow")
    profile = load_profile("slurm")
    # software deployment: the profile sets none, so each job runs this venv's python (run_snakemake puts
    # its bin first on PATH and sbatch exports the environment); nothing to override.
    assert "software-deployment-method" not in profile and "sdm" not in profile
    # the head process's sbatch/squeue find the cluster here (start.sh also links the default path to it)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster))
    started = time.monotonic()
    result = run_snakemake(
        workdir,
        "--profile", "profiles/slurm",
        "--configfile", ".test/config_smoke.yaml",
        *slurm_overrides(profile),
        STAGE1_CHECKPOINT,
        timeout=RUN_TIMEOUT_S,
    )
    elapsed = time.monotonic() - started
    out = snakemake_output(result)
    print(f"SLURM workflow run: {elapsed:.1f} s")
    assert result.returncode == 0, out[-8000:]

    # every job went through sbatch: the plugin logged its SLURM job id, and the job's SLURM log (kept by
    # --slurm-keep-successful-logs) holds the Snakemake run of that rule inside the allocation
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", out)
    rules = ["make_synthetic_quiz", "convert_quiz_to_nnunet", "plan_and_preprocess", "train_stage1"]
    assert len(submitted) >= len(rules), out[-8000:]
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    for rule in rules:
        logs = sorted((slurm_logs / f"rule_{rule}").rglob("*.log"))
        assert logs, f"no SLURM log for {rule} under {slurm_logs}:\n{out[-4000:]}"
        assert {log.stem for log in logs} <= set(submitted), (rule, logs, submitted)
        text = logs[-1].read_text()
        assert f"rule {rule}:" in text and "--executor slurm-jobstep" in text, text[-3000:]
    # the controller's own record of the last job (finished ones stay listed for MinJobAge = 300 s)
    last = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S+rule_train_stage1/", out)
    assert last, out[-4000:]
    state = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%P", "--jobs", last[-1]],
        capture_output=True, text=True, timeout=30,
    )
    assert state.stdout.split() == [f"{last[-1]}|COMPLETED|{PARTITION}"], state.stdout + state.stderr

    # the same outputs as a local run
    checkpoint = torch.load(workdir / STAGE1_CHECKPOINT, map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == STAGE1_TRAINER
    epochs = yaml.safe_load((workdir / ".test" / "config_smoke.yaml").read_text())["training"]["stage1"]["num_epochs"]
    assert checkpoint["current_epoch"] == epochs
    assert (workdir / "logs" / "train_stage1_fold0.log").stat().st_size > 0
    assert elapsed < RUN_TIMEOUT_S
