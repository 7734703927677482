"""The GPU path on a real GPU (``pytest -m gpu``; reported as skipped where torch sees no CUDA device).

Through real Snakemake: stage 1 for a few iterations with full validations, stage 2 compiled (the GPU default)
through nnU-Net's final validation, prediction with the logits resampled on the device, and the benchmark's six
rows, on the smoke data (``.test/config_gpu.yaml``) and on ``../shared/real-sample`` (opt-in, as the other real
sample tests); and DDP training where two GPUs exist. Each test writes the figures it saw to
``$PANCREAS_MTL_GPU_FIGURES`` (a folder; default: the test's tmp folder) for the record.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_output

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODELS = "results/nnunet/trained/Dataset501_PancreasQuiz"
CONFIGS = ("--configfile", ".test/config_smoke.yaml", ".test/config_gpu.yaml")


def _figures_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PANCREAS_MTL_GPU_FIGURES", tmp_path / "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _training_figures(fold_folder: Path) -> dict:
    """Seconds per iteration, data-wait share, epoch times, final-validation time and compile line of a fold."""
    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = checkpoint["logging"]
    log = next(fold_folder.glob("training_log_*.txt")).read_text()
    epochs = [end - start for start, end in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    final_validation = (fold_folder / "validation" / "summary.json").stat().st_mtime - logging["epoch_end_timestamps"][
        -1
    ]
    compiled = re.search(r"torch\.compile: (\d+) graphs compiled", log)
    return {
        "iteration_seconds": logging["train_iteration_seconds"],
        "data_wait_share": logging["train_data_wait_share"],
        "epoch_seconds": epochs,
        "final_validation_seconds_after_last_epoch": final_validation,
        "compiled_graphs": int(compiled[1]) if compiled else 0,
        "full_val_combined": logging["full_val_combined"],
    }


def test_gpu_workflow_trains_compiled_validates_predicts_and_benchmarks(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    result = run_snakemake(workdir, "--cores", "4", *CONFIGS, "--show-failed-logs", timeout=3000)
    assert result.returncode == 0, snakemake_output(result)[-6000:]
    trained = workdir / MODELS
    stage1 = _training_figures(next(trained.glob("nnUNetTrainerPancreasSeg__*")) / "fold_0")
    stage2 = _training_figures(next(trained.glob("nnUNetTrainerPancreasMultiTask__*")) / "fold_0")
    assert stage1["compiled_graphs"] > 0 and stage2["compiled_graphs"] > 0  # compile: auto is on for CUDA
    benchmark = json.loads((workdir / "results" / "benchmark" / "summary.json").read_text())
    assert all(row["device"].startswith("cuda") for row in benchmark["rows"])
    (_figures_dir(tmp_path) / "gpu_smoke.json").write_text(
        json.dumps({"stage1": stage1, "stage2": stage2, "benchmark": benchmark}, indent=2, default=str)
    )


@pytest.mark.real_sample
def test_benchmark_rows_on_the_real_sample_on_the_gpu(real_sample_dir, tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    result = run_snakemake(
        workdir,
        "--cores",
        "4",
        *CONFIGS,
        "--config",
        f"benchmark={{'real_scale_quiz_dir': '{real_sample_dir}'}}",
        "--show-failed-logs",
        "results/benchmark/real_scale/summary.json",
        timeout=3000,
    )
    assert result.returncode == 0, snakemake_output(result)[-6000:]
    summary = json.loads((workdir / "results" / "benchmark" / "real_scale" / "summary.json").read_text())
    assert len(summary["rows"]) == 6 and all(row["device"].startswith("cuda") for row in summary["rows"])
    (_figures_dir(tmp_path) / "gpu_real_scale.json").write_text(json.dumps(summary, indent=2, default=str))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP on GPUs needs two of them")
def test_stage1_trains_on_two_gpus(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    two = "training={'num_gpus': 2}", "resources={'train_gpus': 2, 'train_threads': 4}"
    result = run_snakemake(
        workdir,
        "--cores",
        "4",
        *CONFIGS,
        "--config",
        *two,
        "--show-failed-logs",
        f"{MODELS}/nnUNetTrainerPancreasSeg__nnUNetResEncUNetMPlans__3d_cpu_demo_2gpus/fold_0/checkpoint_final.pth",
        timeout=3000,
    )
    assert result.returncode == 0, snakemake_output(result)[-6000:]
