"""The real-CT segmentation benchmark: its split of the cases, the linked quiz folder, each row's config, and (opt-in,
on three real cases of ``../shared/real-ct``) the Snakemake target end to end in a tiny setting. The end-to-end test
runs the project row alone, to stay under 2 minutes (each row is a workflow run of its own, about 100 s here); the
stock row's trainer has its own test (tests/training/test_trainers.py)."""

import json
import math
import time

import pandas as pd
import pytest
import yaml

from pancreas_mtl.benchmarks import real_ct
from pancreas_mtl.benchmarks.workflow_copy import copy_workflow, workflow_digest
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.nnunet.trainer_names import STAGE1_TRAINERS
from tests.workflow_helpers import REPO, TINY_CPU_CONFIGURATION, run_snakemake, snakemake_output


def quiz_names(root, train, validation=()):
    """Empty files named as quiz cases (``train``/``validation``: case ids); enough for the split and the links."""
    for split, ids in (("train", train), ("validation", validation)):
        for case in ids:
            folder = root / split / f"subtype{case.split('_')[1]}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{case}_0000.nii.gz").write_bytes(b"image")
            (folder / f"{case}.nii.gz").write_bytes(b"mask")
    return root


TRAIN_IDS = [f"quiz_2_{n:03d}" for n in range(1, 15)]


def test_without_validation_cases_a_seeded_share_of_train_is_held_out(tmp_path):
    root = quiz_names(tmp_path / "quiz", TRAIN_IDS)
    split = real_ct.benchmark_split(root, 4, seed=0)
    held = {c.case_id for c in split.evaluation}
    assert len(held) == 4 and held.isdisjoint(c.case_id for c in split.train)
    assert len(split.train) == 10 and split.source == "train" and split.seed == 0
    assert real_ct.benchmark_split(root, 4, seed=0).as_dict() == split.as_dict()  # seeded
    assert {c.case_id for c in real_ct.benchmark_split(root, 4, seed=1).evaluation} != held
    assert "split with seed 0" in split.describe()


def test_validation_cases_are_the_evaluation_cases_where_the_folder_has_them(tmp_path):
    root = quiz_names(tmp_path / "quiz", TRAIN_IDS[:3], ["quiz_0_100", "quiz_1_101"])
    split = real_ct.benchmark_split(root, 10, seed=0)
    assert [c.case_id for c in split.evaluation] == ["quiz_0_100", "quiz_1_101"]
    assert len(split.train) == 3 and split.seed is None and "validation/" in split.describe()


def test_too_few_cases_to_hold_out_is_a_clear_error(tmp_path):
    root = quiz_names(tmp_path / "quiz", TRAIN_IDS[:5])
    with pytest.raises(UserInputError, match=r"train: 5 labelled case\(s\), too few .*evaluation_cases \(4\)"):
        real_ct.benchmark_split(root, 4, seed=0)


def test_a_folder_with_layout_problems_is_refused_naming_the_file(tmp_path):
    root = quiz_names(tmp_path / "quiz", TRAIN_IDS[:5])
    (root / "train" / "subtype2" / "quiz_2_001.nii.gz").unlink()
    with pytest.raises(UserInputError, match="quiz_2_001_0000.nii.gz"):
        real_ct.benchmark_split(root, 1, seed=0)


def test_the_linked_folder_holds_the_split_and_never_touches_the_data(tmp_path):
    root = quiz_names(tmp_path / "quiz", TRAIN_IDS[:6])
    before = {p: p.read_bytes() for p in root.rglob("*.nii.gz")}
    split = real_ct.benchmark_split(root, 2, seed=3)
    linked = real_ct.link_quiz_folder(split, tmp_path / "run" / "quiz")
    real_ct.link_quiz_folder(split, linked)  # again: replaced, the data untouched
    train = sorted(p.name for p in (linked / "train" / "subtype2").iterdir())
    validation = sorted(p.name for p in (linked / "validation" / "subtype2").iterdir())
    assert len(train) == 8 and len(validation) == 4
    assert {n.split(".")[0].removesuffix("_0000") for n in validation} == {c.case_id for c in split.evaluation}
    assert all(p.is_symlink() for p in linked.rglob("*.nii.gz"))
    assert {p: p.read_bytes() for p in root.rglob("*.nii.gz")} == before


def test_the_rows_differ_only_in_the_stage1_trainer_and_its_settings():
    project = real_ct.project_stage1_settings(REPO)
    real_data = yaml.safe_load((REPO / "config" / "real_data.yaml").read_text())["training"]["stage1"]
    assert project["optimizer"] == real_data["optimizer"] and project["initial_lr"] == real_data["initial_lr"]
    assert not set(project) & set(real_ct.BUDGET_KEYS)  # the budget is the benchmark's, the same for both rows
    stock = real_ct.row_config("stock", quiz_dir="q", seed=1, project_stage1=project)
    ours = real_ct.row_config("project", quiz_dir="q", seed=1, project_stage1=project)
    assert stock["training"]["stage1"] == {"trainer": "stock"}
    assert ours["training"]["stage1"] == {**project, "trainer": "project"}
    for config in (stock, ours):
        assert config["training"]["mode"] == "segmentation" and config["training"]["selection_fraction"] == 0
        assert config["training"]["seed"] == 1 and config["data"]["source"] == "folder"
    with pytest.raises(UserInputError, match="unknown row 'mine'"):
        real_ct.row_config("mine", quiz_dir="q", seed=1, project_stage1=project)


def test_the_workflow_digest_follows_the_copied_files_only(tmp_path):
    source = copy_workflow(REPO, tmp_path / "a")
    digest = workflow_digest(source)
    (source / "results").mkdir()
    (source / "results" / "x.txt").write_text("results are not the workflow")
    (source / "src" / "pancreas_mtl" / "__pycache__").mkdir(exist_ok=True)
    (source / "src" / "pancreas_mtl" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert workflow_digest(source) == digest
    (source / "config" / "real_ct.yaml").write_text("# changed\n")
    assert workflow_digest(source) != digest


# ---------------------------------------------------------------------------------------------- end to end
TINY_RUN = {
    "nnunet": {
        "configuration": "3d_cpu_real_ct",
        "cpu_configuration": {
            **TINY_CPU_CONFIGURATION,
            "name": "3d_cpu_real_ct",
            "spacing": [4.0, 1.46484375, 1.46484375],
            "patch_size": [32, 64, 64],
        },
    },
    "training": {
        "device": "cpu",
        "stage1": {
            "num_epochs": 1,
            "iterations_per_epoch": 2,
            "val_iterations_per_epoch": 1,
            "full_validation_every": 1,
            "checkpoint_every": 1,
        },
    },
    "wandb": {"enabled": False},
    "resources": {"preprocess_threads": 2, "train_threads": 2, "predict_threads": 2},
}


def three_cases(source, dest):
    """A quiz folder of links to the three smallest real-CT cases."""
    cases = json.loads((source.parent / "cases.json").read_text())
    smallest = [c["case_id"] for c in sorted(cases, key=lambda c: math.prod(c["shape_zyx"]))[:3]]
    folder = dest / "train" / "subtype2"
    folder.mkdir(parents=True)
    for case in smallest:
        for name in (f"{case}_0000.nii.gz", f"{case}.nii.gz"):
            (folder / name).symlink_to(source / "train" / "subtype2" / name)
    return dest


@pytest.mark.slow
def test_the_benchmark_target_runs_on_real_ct(real_ct_dir, tmp_path):
    workdir = copy_workflow(REPO, tmp_path / "workflow")
    quiz = three_cases(real_ct_dir, tmp_path / "quiz")
    stamps = {p: p.stat().st_mtime_ns for p in real_ct_dir.rglob("*.nii.gz")}
    (workdir / "tiny_real_ct.yaml").write_text(yaml.safe_dump(TINY_RUN))
    (workdir / "bench.yaml").write_text(
        yaml.safe_dump(
            {
                "benchmark": {
                    "real_ct": {
                        "quiz_dir": str(quiz),
                        "configfile": "tiny_real_ct.yaml",
                        "evaluation_cases": 1,
                        "rows": ["project"],
                    }
                }
            }
        )
    )
    start = time.perf_counter()
    result = run_snakemake(
        workdir, "results/benchmark/real_ct/summary.json", "--cores", "2", "--configfile", "bench.yaml"
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, snakemake_output(result)[-6000:]
    print(f"real-CT benchmark, tiny setting, project row: {seconds:.0f} s")

    out = workdir / "results" / "benchmark" / "real_ct"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["row"] for r in summary["runs"]] == ["project"] and not summary["failed"]
    assert len(summary["split"]["train"]) == 2 and len(summary["split"]["evaluation"]) == 1
    for run in summary["runs"]:
        assert run["status"] == "ok" and run["configuration"] == "3d_cpu_real_ct"
        assert run["checkpoint"] == "checkpoint_final.pth"  # nothing held out: the last epoch's
        assert 0 < run["train_minutes"] < run["minutes"] and run["preprocess_minutes"] > 0
        assert 0 <= run["scores"]["whole"]["dice"]["mean"] <= 1
    trained = {
        p.parent.name.split("__")[0] for p in (out / "runs").glob("*/seed_0/repo/results/nnunet/trained/*/*/fold_0")
    }
    assert trained == {STAGE1_TRAINERS["project"]}
    per_case = pd.read_csv(out / "per_case.csv")
    assert set(per_case["row"]) == {"project"}
    assert set(per_case["case_id"]) == set(summary["split"]["evaluation"])
    assert per_case[["dice", "dice_without_prior"]].notna().all().all()
    assert (out / "dice_vs_minutes.png").stat().st_size > 10_000
    assert {p: p.stat().st_mtime_ns for p in real_ct_dir.rglob("*.nii.gz")} == stamps

    # asked again (the summary gone), the finished runs are reused, not trained again
    (out / "summary.json").unlink()
    again = run_snakemake(
        workdir, "results/benchmark/real_ct/summary.json", "--cores", "2", "--configfile", "bench.yaml"
    )
    assert again.returncode == 0, snakemake_output(again)[-4000:]
    log = (workdir / "logs" / "benchmark_real_ct.log").read_text()
    assert log.count("project, seed 0: reused") == 1 and "running the workflow" not in log.split("done in")[-2]


def test_the_plot_draws_every_successful_run(tmp_path):
    from pancreas_mtl.report.plots import plot_real_ct_summary

    def run(row, whole, lesion, minutes):
        scores = {region: {"dice": {"mean": value}} for region, value in (("whole", whole), ("lesion", lesion))}
        return {
            "row": row,
            "seed": 0,
            "status": "ok",
            "train_minutes": minutes,
            "scores": scores,
            "per_case_dice": {"whole": [whole, whole / 2], "lesion": [lesion, None]},
        }

    summary = {
        "runs": [run("stock", 0.7, 0.4, 10.0), run("project", 0.8, 0.5, 11.0), {"row": "project", "status": "failed"}],
        "split": {"train": ["a", "b"], "evaluation": ["c"]},
    }
    path = plot_real_ct_summary(summary, tmp_path / "dice.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
