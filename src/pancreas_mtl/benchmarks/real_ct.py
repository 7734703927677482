"""The real-CT segmentation benchmark: stage 1 trained on real CT and scored on held-out real cases, one row per
stage-1 trainer, each row and seed in a fresh copy of the workflow.

What ``rule benchmark_real_ct`` runs (``snakemake results/benchmark/real_ct/summary.json``). Its cases are a
quiz-layout folder (``benchmark.real_ct.quiz_dir``) of labelled cases of any subtypes; they are evaluated on its
``validation/`` where that holds cases, or else on a seeded split of ``train/`` (``evaluation_cases`` of them,
``split_seed``), the same for every row and seed. Each row trains on the rest, in the configuration of
``benchmark.real_ct.configfile`` (a CPU-sized one for real CT), with no case held out to select checkpoints: both
rows predict with the last epoch's checkpoint, so they train on the same cases for the same iterations.

* ``stock``: nnU-Net's own ``nnUNetTrainer`` on that budget (``training.stage1.trainer: stock``);
* ``project``: this workflow's stage-1 trainer with the stage-1 settings of ``config/real_data.yaml`` (its
  optimizer, sampling and weights; the budget is the benchmark's).

Each run lives in ``<out>/runs/<row>/seed_<S>/``:

* ``quiz/``: links to the cases, ``train/`` the training ones and ``validation/`` the evaluated ones (the data is
  only ever read);
* ``repo/``: the workflow copy (:func:`~pancreas_mtl.benchmarks.workflow_copy.copy_workflow`), where Snakemake runs
  the segmentation path up to the validation metrics;
* ``run_config.yaml``: the row's config, laid over ``config/config.yaml`` and the benchmark's config file;
* ``snakemake.log``; ``result.json``, written after a successful run and reused by a later one with the same
  workflow files, config, seed and cases.

Scores are the workflow's own validation metrics, on each case's own grid, with and without the lesion-presence
prior (the cases it changed are rescored on their masks as predicted before it).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import random
import shlex
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from pancreas_mtl.benchmarks.learning import (
    default_snakemake,
    finite_number,
    head_commit_or_none,
    log_tail,
    run_to_log,
)
from pancreas_mtl.benchmarks.workflow_copy import copy_workflow, workflow_digest
from pancreas_mtl.data.quiz_layout import QuizCase, discover_quiz_cases, mask_file_name
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.summary import read_segmentation_per_case, write_json
from pancreas_mtl.evaluation.validation_report import scores_without_prior
from pancreas_mtl.inference.model_archive import sha256_file

log = logging.getLogger(__name__)

ROWS = ("stock", "project")
ROW_WHAT = {
    "stock": "nnU-Net's nnUNetTrainer, its defaults (SGD 0.01, its sampling), on the benchmark's budget",
    "project": "the workflow's stage-1 trainer with config/real_data.yaml's stage-1 settings",
}
#: stage-1 settings that are the benchmark's budget, the same for every row; the project row takes every other
#: stage-1 setting from config/real_data.yaml
BUDGET_KEYS = (
    "num_epochs",
    "iterations_per_epoch",
    "val_iterations_per_epoch",
    "full_validation_every",
    "checkpoint_every",
)
REAL_DATA_CONFIG = Path("config") / "real_data.yaml"
#: what each run makes (the workflow's validation metrics, in its copy)
METRICS_DIR = Path("results") / "metrics"
TARGETS = tuple(
    str(METRICS_DIR / name) for name in ("summary.json", "segmentation_per_case.csv", "lesion_prior_effect.csv")
)
VALIDATION_PREDICTIONS = Path("results") / "predictions" / "validation"
RESULT_FILE = "result.json"
PER_CASE_COLUMNS = [
    "row",
    "seed",
    "case_id",
    "region",
    "dice",
    "nsd",
    "dice_without_prior",
    "nsd_without_prior",
    "reference_voxels",
    "predicted_voxels",
    "predicted_voxels_without_prior",
]
#: regions the summary reports (the per-case table keeps every region the workflow scores)
SUMMARY_REGIONS = ("whole", "lesion")


# ---------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class BenchmarkSplit:
    """Which cases train and which are scored, and where that split came from."""

    train: tuple[QuizCase, ...]
    evaluation: tuple[QuizCase, ...]
    source: str  # "validation/" or "a seeded split of train/"
    seed: int | None

    def describe(self) -> str:
        where = "the folder's validation/" if self.seed is None else f"train/, split with seed {self.seed}"
        return f"{len(self.train)} training and {len(self.evaluation)} evaluation cases (from {where})"

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "seed": self.seed,
            "train": [c.case_id for c in self.train],
            "evaluation": [c.case_id for c in self.evaluation],
        }


def benchmark_split(quiz_dir: str | Path, evaluation_cases: int, seed: int) -> BenchmarkSplit:
    """The benchmark's cases from a quiz-layout folder: its ``validation/`` cases where it has some, else
    ``evaluation_cases`` of ``train/`` drawn with ``random.Random(seed)`` from the sorted case ids."""
    root = Path(quiz_dir)
    cases, problems = discover_quiz_cases(root, allow_partial=True, splits=("train", "validation"))
    if problems:
        raise UserInputError(f"{root}: the real-CT benchmark cannot read this folder", problems)
    train = [c for c in cases if c.split == "train"]
    validation = [c for c in cases if c.split == "validation"]
    if validation:
        if not train:
            raise UserInputError(f"{root}/train: no labelled training cases for the real-CT benchmark")
        return BenchmarkSplit(tuple(train), tuple(validation), "validation", None)
    if len(train) < evaluation_cases + 2:
        raise UserInputError(
            f"{root}/train: {len(train)} labelled case(s), too few to hold benchmark.real_ct.evaluation_cases "
            f"({evaluation_cases}) out and train on at least 2"
        )
    held = set(random.Random(seed).sample(sorted(c.case_id for c in train), evaluation_cases))
    return BenchmarkSplit(
        tuple(c for c in train if c.case_id not in held),
        tuple(c for c in train if c.case_id in held),
        "train",
        seed,
    )


def _case_folder(case: QuizCase) -> str:
    return f"subtype{case.subtype}" if case.subtype is not None else ""


def link_quiz_folder(split: BenchmarkSplit, dest: str | Path) -> Path:
    """A quiz folder of links to the split's files: its training cases in ``train/`` and the evaluated ones in
    ``validation/``, each in its subtype folder (or directly, for a plain layout). Replaces ``dest``."""
    dest = Path(dest)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        for path in sorted(dest.rglob("*"), reverse=True):  # links and folders only: never follow a link
            path.unlink() if path.is_symlink() or path.is_file() else path.rmdir()
        dest.rmdir()
    for folder, cases in (("train", split.train), ("validation", split.evaluation)):
        for case in cases:
            where = dest / folder / _case_folder(case)
            where.mkdir(parents=True, exist_ok=True)
            for path in (case.image, case.mask):
                (where / path.name).symlink_to(path.resolve())
    return dest


def cases_identity(split: BenchmarkSplit) -> dict:
    """The split's case ids and, per file, its size and modification time: a changed case makes a result stale."""

    def stamp(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    return {
        **split.as_dict(),
        "files": {str(p): stamp(p) for c in (*split.train, *split.evaluation) for p in (c.image, c.mask)},
    }


# ---------------------------------------------------------------------------------------------- the rows
def project_stage1_settings(workflow_dir: str | Path) -> dict:
    """The stage-1 settings the workflow uses for real data (``config/real_data.yaml``), less the budget."""
    path = Path(workflow_dir) / REAL_DATA_CONFIG
    stage1 = (yaml.safe_load(path.read_text()) or {}).get("training", {}).get("stage1", {})
    return {k: v for k, v in stage1.items() if k not in BUDGET_KEYS}


def row_config(row: str, *, quiz_dir: str | Path, seed: int, project_stage1: Mapping) -> dict:
    """The config a row's run lays over the workflow's and the benchmark's: its quiz folder, the segmentation
    path with no case held out for checkpoint selection, the seed and the row's stage-1 trainer."""
    if row not in ROWS:
        raise UserInputError(f"benchmark.real_ct.rows: unknown row {row!r}; rows: {', '.join(ROWS)}")
    stage1 = {"trainer": "stock"} if row == "stock" else {**project_stage1, "trainer": "project"}
    return {
        "data": {"source": "folder", "quiz_dir": str(Path(quiz_dir).resolve())},
        "training": {"mode": "segmentation", "selection_fraction": 0, "seed": int(seed), "stage1": stage1},
    }


# ---------------------------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunSetting:
    """What every run of one benchmark shares."""

    workflow_dir: Path
    out_dir: Path
    split: BenchmarkSplit
    configfile: Path
    snakemake: Path
    cores: int
    use_conda: bool = False
    reuse: bool = True


def run_dir_of(out_dir: Path, row: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / row / f"seed_{int(seed)}"


def _reusable(run_dir: Path, identity: Mapping) -> dict | None:
    path = run_dir / RESULT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(record, dict) and record.get("identity") == json.loads(json.dumps(dict(identity))):
        return record
    return None


def step_minutes(workdir: Path) -> dict[str, float]:
    """Minutes of each job of a run, from Snakemake's ``benchmark:`` files (``benchmarks/*.tsv``, column ``s``)."""
    minutes = {}
    for tsv in sorted((Path(workdir) / "benchmarks").glob("*.tsv")):
        try:
            seconds = pd.read_csv(tsv, sep="\t")["s"].iloc[0]
        except (OSError, KeyError, IndexError, ValueError, pd.errors.ParserError):
            continue
        if finite_number(seconds) is not None:
            minutes[tsv.stem] = float(seconds) / 60.0
    return minutes


def _minutes_of(steps: Mapping[str, float], *prefixes: str) -> float:
    return sum(m for name, m in steps.items() if name.startswith(prefixes))


def per_case_scores(workdir: Path, nsd_tolerance_mm: float) -> pd.DataFrame:
    """A run's per-case scores with and without the lesion-presence prior: the workflow's table, and the cases the
    prior changed scored again as the workflow's validation report scores them (against the run's converted
    masks)."""
    workdir = Path(workdir)
    table = read_segmentation_per_case(workdir / METRICS_DIR / "segmentation_per_case.csv")
    summary = json.loads((workdir / METRICS_DIR / "summary.json").read_text())
    changed = sorted((summary.get("lesion_prior") or {}).get("changed_cases") or [])
    (labels,) = (workdir / "results" / "nnunet" / "raw").glob("Dataset*/labelsTr")
    references = {case: labels / mask_file_name(case) for case in changed}
    without = scores_without_prior(workdir / VALIDATION_PREDICTIONS, changed, references, table, nsd_tolerance_mm)
    without = without.set_index(["case_id", "region"])[["dice", "nsd", "predicted_voxels"]]
    return table.merge(without.add_suffix("_without_prior").reset_index(), on=["case_id", "region"], how="left")


def _stats(values) -> dict:
    numbers = [v for v in (finite_number(v) for v in values) if v is not None]
    if not numbers:
        return {"mean": None, "median": None, "min": None, "n": 0}
    return {
        "mean": statistics.fmean(numbers),
        "median": statistics.median(numbers),
        "min": min(numbers),
        "n": len(numbers),
    }


def scores_summary(per_case: pd.DataFrame) -> dict:
    """Per region: Dice and NSD (mean, median, lowest case) with and without the prior; for the lesion also the
    cases with no lesion predicted."""
    out = {}
    for region in SUMMARY_REGIONS:
        rows = per_case[per_case["region"] == region]
        entry = {metric: _stats(rows[metric]) for metric in ("dice", "nsd", "dice_without_prior", "nsd_without_prior")}
        if region == "lesion":
            entry["cases_without_lesion"] = sorted(rows.loc[rows["predicted_voxels"] == 0, "case_id"])
            entry["cases_without_lesion_without_prior"] = sorted(
                rows.loc[rows["predicted_voxels_without_prior"] == 0, "case_id"]
            )
        out[region] = entry
    return out


def run_row(row: str, seed: int, setting: RunSetting, echo: Callable[[str], None] = log.info) -> dict:
    """One row and seed: reuse its ``result.json``, or run the workflow in a fresh copy and score it.

    A failed run's record has ``status`` ``"failed"`` and leaves no ``result.json``."""
    run_dir = run_dir_of(setting.out_dir, row, seed)
    quiz_dir = run_dir / "quiz"
    config_tree = row_config(
        row, quiz_dir=quiz_dir, seed=seed, project_stage1=project_stage1_settings(setting.workflow_dir)
    )
    identity = {
        "row": row,
        "seed": int(seed),
        "workflow": workflow_digest(setting.workflow_dir),
        "configfile": {"path": str(setting.configfile), "sha256": sha256_file(setting.configfile)},
        "run_config": config_tree,
        "cases": cases_identity(setting.split),
        "cores": setting.cores,
    }
    if setting.reuse:
        previous = _reusable(run_dir, identity)
        if previous is not None:
            echo(f"{row}, seed {seed}: reused {run_dir / RESULT_FILE} (same workflow, config, seed and cases)")
            return {**previous, "reused": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    link_quiz_folder(setting.split, quiz_dir)
    workdir = run_dir / "repo"
    if workdir.exists():
        shutil.rmtree(workdir)
    copy_workflow(setting.workflow_dir, workdir)
    run_config = run_dir / "run_config.yaml"
    run_config.write_text(yaml.safe_dump(config_tree, sort_keys=False))
    command = [
        str(setting.snakemake),
        *TARGETS,
        "--cores",
        str(setting.cores),
        "--configfile",
        str(setting.configfile),
        str(run_config.resolve()),
        *(["--use-conda"] if setting.use_conda else []),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str((workdir / "src").resolve())
    log_path = run_dir / "snakemake.log"
    common = {
        "row": row,
        "what": ROW_WHAT[row],
        "seed": int(seed),
        "command": shlex.join(command),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "log": str(log_path),
    }
    echo(f"{row}, seed {seed}: running the workflow in {workdir} (log: {log_path})")
    returncode, minutes = run_to_log(command, workdir, env, log_path)
    if returncode != 0:
        return {
            **common,
            "status": "failed",
            "minutes": minutes,
            "error": f"snakemake exited with {returncode}" if returncode is not None else "snakemake did not start",
            "log_tail": log_tail(log_path),
            "reused": False,
        }
    metrics = json.loads((workdir / METRICS_DIR / "summary.json").read_text())
    per_case = per_case_scores(workdir, metrics.get("nsd_tolerance_mm") or 2.0)
    steps = step_minutes(workdir)
    record = {
        **common,
        "status": "ok",
        "identity": identity,
        "minutes": minutes,
        "train_minutes": _minutes_of(steps, "train_stage1"),
        "preprocess_minutes": _minutes_of(steps, "convert_quiz", "plan_and_preprocess", "preprocess"),
        "step_minutes": steps,
        "configuration": metrics.get("configuration"),
        "checkpoint": metrics.get("checkpoint"),
        "scores": scores_summary(per_case),
        "per_case": per_case.to_dict(orient="records"),
    }
    write_json(run_dir / RESULT_FILE, record)
    return {**record, "reused": False}


# ---------------------------------------------------------------------------------------------- the benchmark
def per_case_table(records: Sequence[Mapping]) -> pd.DataFrame:
    """Every successful run's per-case scores, one row per row, seed, case and region."""
    rows = [
        {"row": r["row"], "seed": r["seed"], **case}
        for r in records
        if r.get("status") == "ok"
        for case in r.get("per_case", [])
    ]
    return pd.DataFrame(rows).reindex(columns=PER_CASE_COLUMNS)


def summarise(records: Sequence[Mapping], split: BenchmarkSplit, *, commit: str | None, settings: Mapping) -> dict:
    """The benchmark's ``summary.json``: the split, the settings, and per run its scores and minutes (without the
    per-case rows, which go to ``per_case.csv``)."""
    runs = []
    for record in records:
        run = {k: v for k, v in record.items() if k not in ("per_case", "identity")}
        if record.get("status") == "ok":  # the plot's faint dots
            run["per_case_dice"] = {
                region: [finite_number(c["dice"]) for c in record["per_case"] if c["region"] == region]
                for region in SUMMARY_REGIONS
            }
        runs.append(run)
    return {
        "commit": commit,
        "split": split.as_dict(),
        "settings": dict(settings),
        "rows": {row: ROW_WHAT[row] for row in dict.fromkeys(r["row"] for r in records)},
        "runs": runs,
        "failed": [f"{r['row']} seed {r['seed']}" for r in records if r.get("status") != "ok"],
    }


def describe(record: Mapping) -> str:
    if record.get("status") != "ok":
        return f"FAILED ({record.get('error')}) after {record['minutes']:.1f} min; log: {record.get('log')}"
    whole, lesion = record["scores"]["whole"], record["scores"]["lesion"]

    def number(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    return (
        f"whole Dice {number(whole['dice']['mean'])} (lowest {number(whole['dice']['min'])}), lesion Dice "
        f"{number(lesion['dice']['mean'])} (lowest {number(lesion['dice']['min'])}), no lesion predicted in "
        f"{len(lesion['cases_without_lesion'])}, {record['train_minutes']:.1f} min training, "
        f"{record['minutes']:.1f} min in all" + (" (reused)" if record.get("reused") else "")
    )


def run_benchmark(
    *,
    quiz_dir: str | Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    evaluation_cases: int,
    split_seed: int,
    configfile: str | Path,
    workflow_dir: str | Path,
    out_dir: str | Path,
    cores: int,
    use_conda: bool = False,
    snakemake: str | Path | None = None,
    plot: Callable[[Mapping, Path], None] | None = None,
) -> dict:
    """Run every row and seed (reusing finished ones), then write ``summary.json``, ``per_case.csv`` and the plot
    into ``out_dir``; a clear error after the other runs when one failed."""
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise UserInputError(f"benchmark.real_ct.rows: unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    configfile = Path(configfile).resolve()
    if not configfile.is_file():
        raise UserInputError(f"benchmark.real_ct.configfile {configfile}: no such file")
    split = benchmark_split(quiz_dir, evaluation_cases, split_seed)
    out_dir = Path(out_dir).resolve()
    setting = RunSetting(
        workflow_dir=Path(workflow_dir).resolve(),
        out_dir=out_dir,
        split=split,
        configfile=configfile,
        snakemake=Path(snakemake) if snakemake else default_snakemake(),
        cores=int(cores),
        use_conda=use_conda,
    )
    log.info("real-CT benchmark on %s: %s; rows %s, seeds %s", quiz_dir, split.describe(), list(rows), list(seeds))
    records = []
    for row in rows:
        for seed in seeds:
            record = run_row(row, seed, setting)
            log.info("%s, seed %s: %s", row, seed, describe(record))
            if record.get("status") != "ok":
                log.error("last lines of %s:\n%s", record.get("log"), record.get("log_tail", ""))
            records.append(record)
    settings = {
        "quiz_dir": str(Path(quiz_dir).resolve()),
        "configfile": str(configfile),
        "configfile_content": yaml.safe_load(configfile.read_text()),
        "seeds": list(seeds),
        "cores": int(cores),
    }
    summary = summarise(records, split, commit=head_commit_or_none(workflow_dir), settings=settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_case_table(records).to_csv(out_dir / "per_case.csv", index=False, na_rep="", float_format="%.4f")
    write_json(out_dir / "summary.json", summary)
    if plot is not None:
        plot(summary, out_dir / "dice_vs_minutes.png")
    if summary["failed"]:
        raise UserInputError(
            f"the real-CT benchmark has failed runs (their logs are under {out_dir / 'runs'})", summary["failed"]
        )
    return summary
