"""The inference benchmark: stock nnU-Net against the multi-task predictor, and the bounds, like for like.

Six rows, each in a fresh Python process on the same cases with the same model (its peak memory is its own):

1. ``stock_segmentation``: nnU-Net's stock ``nnUNetPredictor`` (what ``nnUNetv2_predict`` runs) with its defaults -
   tile step 0.5, Gaussian weighting, all mirror axes - masks only;
2. ``baseline``: row 1, then the straightforward classification: each case preprocessed again and a second
   sliding-window pass of the multi-task model over it (tile step 0.5, no mirroring);
3. ``optimized_stock_settings``: :class:`~pancreas_mtl.inference.predictor.MultiTaskPredictor` at the stock's
   settings (all mirror axes, tile step 0.5): its speed-up over rows 1 and 2 is what the predictor gains beyond
   switching test-time mirroring off and enlarging the tile step; its masks must agree with row 1's;
4. ``optimized``: the multi-task predictor with the configured settings;
5. ``one_pass``: the compute-only bound - one non-overlapping, non-mirrored forward over each preprocessed
   volume (tile step 1, no mirroring, row 4's ``channels_last``), model compute only;
6. ``end_to_end_bound``: per case, reading the image and writing a (compressed NIfTI) mask of its size with
   nnU-Net's reader/writer, plus row 5's compute (its warm time adds row 5's to its own reading and writing).

Each row reports a **cold** time - from the launch of its process (interpreter, imports, model loading, worker
pools) to the last file of its first pass (``first_case_cold_seconds``: to its first file); the bounds leave out
their untimed preparation (preprocessing the volumes) - and a **warm** time, the median of ``repeats`` further
passes (``{row}_seconds_total``). Per case it splits the work into preprocessing, compute and export where it
can measure them (``per_case.csv``, whose ``seconds`` column is the compute).

``speedup`` = row 2 / row 4; ``optimized_over_one_pass`` = row 4 / row 5; ``optimized_over_end_to_end_bound`` =
row 4 / row 6, all warm.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from pancreas_mtl.benchmarks.rows import ROWS
from pancreas_mtl.data.case_table import split_images
from pancreas_mtl.data.class_probabilities import read_class_probabilities, write_class_probabilities
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.segmentation import dice
from pancreas_mtl.inference.run import InferenceSettings, build_predictor, case_id_of_image, predict_images
from pancreas_mtl.inference.workers import preprocess_case
from pancreas_mtl.nnunet.environment import register_trainers
from pancreas_mtl.runtime import run_command

log = logging.getLogger(__name__)

STEPS = ("preprocessing_seconds", "compute_seconds", "export_seconds")
#: where ``run_benchmark`` tells each row's process when it was launched (its cold time starts there)
LAUNCHED_AT = "launched_at"


def _peak_memory_mb(device: torch.device, worker_peak_rss_mb: float = 0.0) -> dict:
    """Peak resident memory of this process and of its workers (stock nnU-Net's are its children; the multi-task
    predictor's fork from a server and report their own), and peak GPU memory on CUDA."""
    peaks = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mb": max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, worker_peak_rss_mb),
    }
    if device.type == "cuda":
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


class _CaseTimer:
    """Times each call of a predictor's ``predict_logits_from_preprocessed_data`` (model compute per case)."""

    def __init__(self, predictor):
        self.seconds: list[float] = []
        original = predictor.predict_logits_from_preprocessed_data

        def timed(data):
            start = time.perf_counter()
            result = original(data)
            self.seconds.append(time.perf_counter() - start)
            return result

        predictor.predict_logits_from_preprocessed_data = timed


def _preprocess(predictor, image: Path) -> torch.Tensor:
    data, _ = preprocess_case(
        str(image), predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    )
    return torch.from_numpy(data)


def _steps(
    preprocessing: float = float("nan"), compute: float = float("nan"), export: float = float("nan")
) -> dict[str, float]:
    return dict(zip(STEPS, (preprocessing, compute, export)))


def _second_pass_classification(model_predictor, images: list[Path]) -> tuple[dict, list[dict]]:
    """Baseline classification: preprocess each case again and run the multi-task model over it once more."""
    probabilities, steps = {}, []
    for image in images:
        start = time.perf_counter()
        data = _preprocess(model_predictor, image)
        preprocessed = time.perf_counter()
        model_predictor.predict_logits_from_preprocessed_data(data)
        probabilities[case_id_of_image(image)] = model_predictor.last_class_probabilities
        steps.append(_steps(preprocessed - start, time.perf_counter() - preprocessed))
    return probabilities, steps


def _stock_pass(stock, timer: _CaseTimer, images: list[Path], masks_dir: Path, settings: InferenceSettings):
    """One ``predict_from_files`` pass of nnU-Net's stock predictor (it starts and stops its own worker pools)."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    stock.predict_from_files(
        [[str(i)] for i in images],
        [str(masks_dir / case_id_of_image(i)) for i in images],
        save_probabilities=False,
        overwrite=True,
        num_processes_preprocessing=settings.preprocessing_workers,
        num_processes_segmentation_export=settings.export_workers,
    )
    # stock preprocessing and export run inside nnU-Net's worker pools: only the compute is timed per case
    return [_steps(compute=s) for s in timer.seconds[-len(images) :]]


def run_row(
    row: str,
    model_folder: Path,
    folds: list[int],
    checkpoint_name: str,
    images: list[Path],
    out_dir: Path,
    settings: InferenceSettings,
    repeats: int,
    launched_at: float | None = None,
) -> dict:
    """One benchmark row, in this process. Writes masks (and class probabilities) under out_dir/<row>."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    started = time.time()
    launched_at = started if launched_at is None else launched_at
    register_trainers()
    device = settings.torch_device()
    masks_dir = out_dir / row
    case_ids = [case_id_of_image(i) for i in images]
    result: dict = {"path": row, "cases": case_ids, "repeats": repeats}
    preparation_seconds = 0.0
    if row in ("optimized", "optimized_stock_settings"):
        if row == "optimized_stock_settings":
            settings = replace(settings, tile_step_size=0.5, mirror_axes=None)
        predictor = build_predictor(model_folder, folds, checkpoint_name, settings)
        result["mirror_axes"] = list(predictor.allowed_mirroring_axes or ()) if predictor.use_mirroring else []
        result["tile_step_size"] = settings.tile_step_size

        def one_pass_over_cases():
            probabilities = predict_images(predictor, images, masks_dir, settings)
            return probabilities, [predictor.case_seconds[c] for c in case_ids]

    elif row in ("stock_segmentation", "baseline"):
        stock = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=device, verbose=False, allow_tqdm=False
        )
        stock.initialize_from_trained_model_folder(str(model_folder), tuple(folds), checkpoint_name)
        timer = _CaseTimer(stock)
        if row == "baseline":
            second = build_predictor(
                model_folder,
                folds,
                checkpoint_name,
                replace(settings, tile_step_size=0.5, mirror_axes=(), channels_last=False),
                start_workers=False,
            )

        def one_pass_over_cases():
            segmentation = _stock_pass(stock, timer, images, masks_dir, settings)
            if row == "stock_segmentation":
                return None, segmentation
            probabilities, classification = _second_pass_classification(second, images)
            # the second preprocessing is the baseline's own; stock's first one is not timed per case
            return probabilities, [
                _steps(c["preprocessing_seconds"], s["compute_seconds"] + c["compute_seconds"])
                for s, c in zip(segmentation, classification)
            ]

    elif row in ("one_pass", "end_to_end_bound"):
        predictor = build_predictor(
            model_folder,
            folds,
            checkpoint_name,
            replace(settings, tile_step_size=1.0, mirror_axes=()),
            start_workers=False,
        )
        start = time.perf_counter()
        volumes = [_preprocess(predictor, image) for image in images]
        preparation_seconds = time.perf_counter() - start
        result["preprocessed_shapes"] = [list(v.shape[1:]) for v in volumes]
        result["patch_size"] = list(predictor.configuration_manager.patch_size)
        io = predictor.plans_manager.image_reader_writer_class()
        masks_dir.mkdir(parents=True, exist_ok=True)

        def one_pass_over_cases():
            steps = []
            for image, case_id, volume in zip(images, case_ids, volumes):
                read = written = float("nan")
                if row == "end_to_end_bound":
                    start = time.perf_counter()
                    data, properties = io.read_images([str(image)])
                    read = time.perf_counter() - start
                start = time.perf_counter()
                predictor.predict_logits_from_preprocessed_data(volume)
                compute = time.perf_counter() - start
                if row == "end_to_end_bound":
                    start = time.perf_counter()
                    io.write_seg(
                        np.zeros(data.shape[1:], dtype=np.uint8), str(masks_dir / f"{case_id}.nii.gz"), properties
                    )
                    written = time.perf_counter() - start
                steps.append(_steps(read, compute, written))
            return None, steps

    else:
        raise ValueError(f"unknown benchmark row {row!r}; choose from {list(ROWS)}")

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ready = time.time()
    probabilities, first_steps = one_pass_over_cases()
    cold = time.time() - launched_at - preparation_seconds
    written = [masks_dir / f"{c}.nii.gz" for c in case_ids]
    first_case_cold = (
        min(f.stat().st_mtime for f in written) - launched_at - preparation_seconds
        if all(f.is_file() for f in written)
        else None
    )
    totals, per_case = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        probabilities, steps = one_pass_over_cases()
        elapsed = time.perf_counter() - start
        # the bounds are the sum of their timed parts, by definition (no preprocessing)
        totals.append(
            float(np.nansum([list(s.values()) for s in steps])) if row in ("one_pass", "end_to_end_bound") else elapsed
        )
        per_case.append(steps)
    worker_peak_rss_mb = 0.0
    if row in ("optimized", "optimized_stock_settings"):
        worker_peak_rss_mb = predictor.worker_peak_rss_mb
        predictor.close()
    if probabilities is not None:
        write_class_probabilities(masks_dir, probabilities)
    per_case = per_case or [first_steps]
    result.update(
        cold_seconds=cold,
        first_case_cold_seconds=first_case_cold,
        # where the cold time goes: interpreter and imports, loading the model (and the bounds' untimed
        # preparation, left out of their cold time), the first pass (worker pool start-up included)
        cold_split={
            "start_and_imports_seconds": started - launched_at,
            "model_loading_seconds": ready - started - preparation_seconds,
            "first_pass_seconds": cold - (ready - launched_at - preparation_seconds),
        },
        cold_per_case=first_steps,
        seconds_total=float(np.median(totals)) if totals else cold,
        seconds_total_runs=totals,
        # median over the repeats, per case and step
        per_case=[
            {step: float(np.median([run[i][step] for run in per_case])) for step in STEPS} for i in range(len(case_ids))
        ],
        device=str(device),
        **_peak_memory_mb(device, worker_peak_rss_mb),
    )
    return result


def _whole_dice(out_dir: Path, a: str, b: str, case_ids: list[str]) -> list[float]:
    def whole(row, case_id):
        return np.asarray(nib.load(out_dir / row / f"{case_id}.nii.gz").dataobj) > 0

    return [dice(whole(a, c), whole(b, c)) for c in case_ids]


def agreement(out_dir: Path, case_ids: list[str]) -> dict:
    """Whole-pancreas Dice between the baseline's and the optimized masks, and the share of cases given the same
    subtype (a trained model's accuracy question: the untrained real-scale model skips it)."""
    dices = _whole_dice(out_dir, "baseline", "optimized", case_ids)
    base = read_class_probabilities(out_dir / "baseline").set_index("case_id")
    opt = read_class_probabilities(out_dir / "optimized").set_index("case_id")
    same = base.loc[case_ids, "predicted_subtype"].values == opt.loc[case_ids, "predicted_subtype"].values
    return {
        "agreement_whole_dice": float(np.mean(dices)),
        "agreement_whole_dice_min": float(np.min(dices)),
        "same_subtype_fraction": float(same.mean()),
    }


def _read_through(files: list[Path]) -> None:
    """Read files once, so that the first row does not pay alone for bringing them into the page cache."""
    for file in files:
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def run_benchmark(
    model_folder: str | Path,
    folds: list[int],
    checkpoint_name: str,
    images: list[Path],
    out_dir: str | Path,
    settings: InferenceSettings,
    repeats: int = 2,
    setting: str = "demo",
    with_agreement: bool = True,
    note: str = "",
) -> dict:
    """Run the six rows in fresh processes, one after the other; write summary.json and per_case.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _read_through([*images, *(Path(model_folder) / f"fold_{fold}" / checkpoint_name for fold in folds)])
    results = {}
    for number, row in enumerate(ROWS, start=1):
        spec = {
            "path": row,
            "model_folder": str(model_folder),
            "folds": list(folds),
            "checkpoint_name": checkpoint_name,
            "images": [str(i) for i in images],
            "out_dir": str(out_dir),
            "settings": asdict(settings),
            "repeats": repeats,
        }
        spec_file = out_dir / f"{row}_spec.json"
        result_file = out_dir / f"{row}_result.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        log.info(
            "benchmark row %d (%s) on %d case(s): cold pass, then %d timed repeat(s)", number, row, len(images), repeats
        )
        run_command(
            [sys.executable, "-m", "pancreas_mtl.benchmarks.inference", str(spec_file), str(result_file)],
            {**os.environ, LAUNCHED_AT: repr(time.time())},
            f"benchmark {row}",
        )
        results[row] = json.loads(result_file.read_text())
        log.info("  %s: cold %.2f s, warm %.2f s", row, results[row]["cold_seconds"], results[row]["seconds_total"])

    # Row 6 is row 5's compute plus its own reading and writing (its process computes too, for its cold pass, but
    # a second measurement of the same compute would let the two bounds disagree by the machine's noise).
    end_to_end, compute_bound = results["end_to_end_bound"], results["one_pass"]
    for steps, bound in zip(end_to_end["per_case"], compute_bound["per_case"]):
        steps["compute_seconds"] = bound["compute_seconds"]
    end_to_end["seconds_total"] = compute_bound["seconds_total"] + float(
        np.nansum([[steps["preprocessing_seconds"], steps["export_seconds"]] for steps in end_to_end["per_case"]])
    )
    warm = {row: results[row]["seconds_total"] for row in ROWS}
    summary = {
        "setting": setting,
        "note": note,
        "device": results["optimized"]["device"],
        "cases": results["optimized"]["cases"],
        "folds": list(folds),
        "checkpoint": checkpoint_name,
        "repeats": repeats,
        "optimized_settings": asdict(settings),
        "baseline_settings": {
            "tile_step_size": 0.5,
            "use_gaussian": True,
            "mirror_axes": "all allowed",
            "classification": "second sliding-window pass, tile step 0.5, no mirroring",
        },
        "rows": [
            {
                "row": number,
                "path": row,
                "what": what,
                "cold_seconds": results[row]["cold_seconds"],
                "first_case_cold_seconds": results[row]["first_case_cold_seconds"],
                **{f"cold_{k}": v for k, v in results[row]["cold_split"].items()},
                "warm_seconds": results[row]["seconds_total"],
                **{
                    key: results[row][key]
                    for key in ("peak_rss_mb", "peak_worker_rss_mb", "peak_gpu_mb")
                    if key in results[row]
                },
            }
            for number, (row, what) in enumerate(ROWS.items(), start=1)
        ],
        "speedup": warm["baseline"] / warm["optimized"],
        "speedup_over_stock_segmentation": warm["stock_segmentation"] / warm["optimized"],
        "stock_settings_speedup": warm["baseline"] / warm["optimized_stock_settings"],
        "stock_settings_speedup_over_stock_segmentation": warm["stock_segmentation"] / warm["optimized_stock_settings"],
        "optimized_over_one_pass": warm["optimized"] / warm["one_pass"],
        "optimized_over_end_to_end_bound": warm["optimized"] / warm["end_to_end_bound"],
    }
    for row in ROWS:
        summary[f"{row}_seconds_total"] = warm[row]
        summary[f"{row}_cold_seconds"] = results[row]["cold_seconds"]
        summary[f"{row}_first_case_cold_seconds"] = results[row]["first_case_cold_seconds"]
        for key in ("peak_rss_mb", "peak_worker_rss_mb", "peak_gpu_mb"):
            if key in results[row]:
                summary[f"{row}_{key}"] = results[row][key]
        summary[f"{row}_peak_memory_mb"] = results[row].get("peak_gpu_mb", results[row]["peak_rss_mb"])
    # the same computation as stock nnU-Net's, so the same masks whatever the weights
    summary["stock_settings_agreement_whole_dice_min"] = float(
        np.min(_whole_dice(out_dir, "stock_segmentation", "optimized_stock_settings", summary["cases"]))
    )
    if with_agreement:
        summary.update(agreement(out_dir, summary["cases"]))
    rows = [
        {"case_id": case_id, "path": row, **steps, "seconds": steps["compute_seconds"]}
        for row in ROWS
        for case_id, steps in zip(results[row]["cases"], results[row]["per_case"])
    ]
    pd.DataFrame(rows).to_csv(out_dir / "per_case.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def benchmark_split(
    model_folder: str | Path,
    folds: list[int],
    checkpoint_name: str,
    case_table: str | Path,
    raw_dataset: str | Path,
    split: str,
    max_cases: int | None,
    out_dir: str | Path,
    settings: InferenceSettings,
    repeats: int,
    setting: str,
    with_agreement: bool,
    note: str = "",
) -> dict:
    """:func:`run_benchmark` on the first ``max_cases`` images of a split (all with None). Without a ``note``, the
    checkpoint's own note (the untrained real-scale model carries one) is used."""
    images = split_images(case_table, raw_dataset, split)[:max_cases]
    if not images:
        raise UserInputError(f"{case_table}: no {split} images to benchmark")
    if not note:
        checkpoint = Path(model_folder) / f"fold_{folds[0]}" / checkpoint_name
        # mmap: the note is read without reading the weights
        note = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("note", "")
    return run_benchmark(
        model_folder,
        folds,
        checkpoint_name,
        images,
        out_dir,
        settings,
        repeats=repeats,
        setting=setting,
        with_agreement=with_agreement,
        note=note,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark row in this process (used by run_benchmark).")
    parser.add_argument("spec")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args.spec).read_text())
    settings = InferenceSettings.from_config(spec["settings"])
    launched_at = os.environ.get(LAUNCHED_AT)
    result = run_row(
        spec["path"],
        Path(spec["model_folder"]),
        spec["folds"],
        spec["checkpoint_name"],
        [Path(i) for i in spec["images"]],
        Path(spec["out_dir"]),
        settings,
        spec["repeats"],
        launched_at=None if launched_at is None else float(launched_at),
    )
    Path(args.result).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
