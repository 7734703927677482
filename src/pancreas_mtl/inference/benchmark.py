"""The paired inference benchmark: stock nnU-Net (baseline) against the optimized multi-task predictor.

Each path runs in a fresh Python process (same conditions; its peak memory is its own), loads the model once,
predicts every case once as a warm-up (not timed), then ``repeats`` timed passes. Paths:

- ``baseline``: nnU-Net's stock ``nnUNetPredictor`` (what ``nnUNetv2_predict`` runs) with its defaults - tile step
  0.5, Gaussian weighting, all mirror axes - for the masks, then the straightforward classification: a second
  sliding-window pass of the multi-task model over each preprocessed case (tile step 0.5, no mirroring);
- ``optimized``: :class:`~pancreas_mtl.inference.predictor.MultiTaskPredictor` with the configured settings;
- ``one_pass``: the bound - a single non-overlapping, non-mirrored forward over each preprocessed volume
  (tile step 1, no mirroring), model compute only (no I/O, no preprocessing).

``speedup`` = baseline time / optimized time; ``optimized_over_one_pass`` = optimized time / one-pass time.
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

from pancreas_mtl.data.case_table import split_images
from pancreas_mtl.data.class_probabilities import read_class_probabilities, write_class_probabilities
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.segmentation import dice
from pancreas_mtl.inference.predictor import preprocess_case
from pancreas_mtl.inference.run import InferenceSettings, build_predictor, case_id_of_image, predict_images
from pancreas_mtl.nnunet.environment import register_trainers, run_command

log = logging.getLogger(__name__)

PATHS = ("baseline", "optimized", "one_pass")


def _peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory of this process (and of its worker processes), and peak GPU memory on CUDA."""
    peaks = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
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
    data, _ = preprocess_case(str(image), predictor.plans_manager, predictor.configuration_manager,
                               predictor.dataset_json)
    return torch.from_numpy(data)


def _second_pass_classification(model_predictor, images: list[Path]) -> tuple[dict, list[float]]:
    """Baseline classification: preprocess each case again and run the multi-task model over it once more."""
    probabilities, seconds = {}, []
    for image in images:
        start = time.perf_counter()
        data = _preprocess(model_predictor, image)
        model_predictor.predict_logits_from_preprocessed_data(data)
        probabilities[case_id_of_image(image)] = model_predictor.last_class_probabilities
        seconds.append(time.perf_counter() - start)
    return probabilities, seconds


def run_path(path: str, model_folder: Path, folds: list[int], checkpoint_name: str, images: list[Path],
             out_dir: Path, settings: InferenceSettings, repeats: int) -> dict:
    """One benchmark path, in this process. Writes masks (and class probabilities) under out_dir/path."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    register_trainers()
    device = settings.torch_device()
    masks_dir = out_dir / path
    result: dict = {"path": path, "cases": [case_id_of_image(i) for i in images], "repeats": repeats}
    if path == "optimized":
        predictor = build_predictor(model_folder, folds, checkpoint_name, settings)
        timer = _CaseTimer(predictor)

        def one_pass_over_cases():
            return predict_images(predictor, images, masks_dir, settings), list(timer.seconds[-len(images):])

    elif path == "baseline":
        stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=device,
                                verbose=False, allow_tqdm=False)
        stock.initialize_from_trained_model_folder(str(model_folder), tuple(folds), checkpoint_name)
        timer = _CaseTimer(stock)
        second = build_predictor(model_folder, folds, checkpoint_name,
                                 replace(settings, tile_step_size=0.5, mirror_axes=(), channels_last=False))

        def one_pass_over_cases():
            masks_dir.mkdir(parents=True, exist_ok=True)
            stock.predict_from_files(
                [[str(i)] for i in images], [str(masks_dir / case_id_of_image(i)) for i in images],
                save_probabilities=False, overwrite=True,
                num_processes_preprocessing=settings.preprocessing_workers,
                num_processes_segmentation_export=settings.export_workers,
            )
            seg_seconds = list(timer.seconds[-len(images):])
            probabilities, cls_seconds = _second_pass_classification(second, images)
            return probabilities, [a + b for a, b in zip(seg_seconds, cls_seconds)]

    elif path == "one_pass":
        predictor = build_predictor(model_folder, folds, checkpoint_name,
                                    replace(settings, tile_step_size=1.0, mirror_axes=()))
        volumes = [_preprocess(predictor, image) for image in images]
        result["preprocessed_shapes"] = [list(v.shape[1:]) for v in volumes]
        result["patch_size"] = list(predictor.configuration_manager.patch_size)

        def one_pass_over_cases():
            seconds = []
            for volume in volumes:
                start = time.perf_counter()
                predictor.predict_logits_from_preprocessed_data(volume)
                seconds.append(time.perf_counter() - start)
            return None, seconds

    else:
        raise ValueError(f"unknown benchmark path {path!r}; choose from {PATHS}")

    one_pass_over_cases()  # warm-up: not timed
    totals, per_case = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        probabilities, seconds = one_pass_over_cases()
        totals.append(time.perf_counter() - start)
        per_case.append(seconds)
    if path == "optimized":
        predictor.close()
    if probabilities is not None:
        write_class_probabilities(masks_dir, probabilities)
    if path == "one_pass":
        totals = [sum(s) for s in per_case]  # compute only, by definition of the bound
    result.update(
        seconds_total=float(np.median(totals)),
        seconds_total_runs=totals,
        per_case_seconds=np.median(np.asarray(per_case), axis=0).tolist(),
        device=str(device),
        **_peak_memory_mb(device),
    )
    return result


def agreement(out_dir: Path, case_ids: list[str]) -> dict:
    """Whole-pancreas Dice between the two paths' masks, and the share of cases given the same subtype."""
    dices = []
    for case_id in case_ids:
        a = np.asarray(nib.load(out_dir / "baseline" / f"{case_id}.nii.gz").dataobj) > 0
        b = np.asarray(nib.load(out_dir / "optimized" / f"{case_id}.nii.gz").dataobj) > 0
        dices.append(dice(a, b))
    base = read_class_probabilities(out_dir / "baseline").set_index("case_id")
    opt = read_class_probabilities(out_dir / "optimized").set_index("case_id")
    same = (base.loc[case_ids, "predicted_subtype"].values == opt.loc[case_ids, "predicted_subtype"].values)
    return {
        "agreement_whole_dice": float(np.mean(dices)),
        "agreement_whole_dice_min": float(np.min(dices)),
        "same_subtype_fraction": float(same.mean()),
    }


def run_benchmark(model_folder: str | Path, folds: list[int], checkpoint_name: str, images: list[Path],
                  out_dir: str | Path, settings: InferenceSettings, repeats: int = 2, setting: str = "demo",
                  with_agreement: bool = True, note: str = "") -> dict:
    """Run the three paths in fresh processes, one after the other; write summary.json and per_case.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in PATHS:
        spec = {
            "path": path, "model_folder": str(model_folder), "folds": list(folds), "checkpoint_name": checkpoint_name,
            "images": [str(i) for i in images], "out_dir": str(out_dir), "settings": asdict(settings),
            "repeats": repeats,
        }
        spec_file = out_dir / f"{path}_spec.json"
        result_file = out_dir / f"{path}_result.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        log.info("benchmark path %s on %d case(s), %d timed repeat(s)", path, len(images), repeats)
        run_command([sys.executable, "-m", "pancreas_mtl.inference.benchmark", str(spec_file), str(result_file)],
                    dict(os.environ), f"benchmark {path}")
        results[path] = json.loads(result_file.read_text())
        log.info("  %s: %.2f s", path, results[path]["seconds_total"])

    base, opt, bound = (results[p]["seconds_total"] for p in PATHS)
    summary = {
        "setting": setting,
        "note": note,
        "device": results["optimized"]["device"],
        "cases": results["optimized"]["cases"],
        "folds": list(folds),
        "checkpoint": checkpoint_name,
        "repeats": repeats,
        "optimized_settings": asdict(settings),
        "baseline_settings": {"tile_step_size": 0.5, "use_gaussian": True, "mirror_axes": "all allowed",
                              "classification": "second sliding-window pass, tile step 0.5, no mirroring"},
        "baseline_seconds_total": base,
        "optimized_seconds_total": opt,
        "one_pass_seconds_total": bound,
        "speedup": base / opt,
        "optimized_over_one_pass": opt / bound,
    }
    for path in PATHS:
        for key in ("peak_rss_mb", "peak_worker_rss_mb", "peak_gpu_mb"):
            if key in results[path]:
                summary[f"{path}_{key}"] = results[path][key]
        summary[f"{path}_peak_memory_mb"] = results[path].get("peak_gpu_mb", results[path]["peak_rss_mb"])
    if with_agreement:
        summary.update(agreement(out_dir, summary["cases"]))
    rows = [
        {"case_id": case_id, "path": path, "seconds": seconds}
        for path in PATHS
        for case_id, seconds in zip(results[path]["cases"], results[path]["per_case_seconds"])
    ]
    pd.DataFrame(rows).to_csv(out_dir / "per_case.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def benchmark_split(model_folder: str | Path, folds: list[int], checkpoint_name: str, case_table: str | Path,
                    raw_dataset: str | Path, split: str, max_cases: int | None, out_dir: str | Path,
                    settings: InferenceSettings, repeats: int, setting: str, with_agreement: bool,
                    note: str = "") -> dict:
    """:func:`run_benchmark` on the first ``max_cases`` images of a split (all with None). Without a ``note``, the
    checkpoint's own note (the untrained real-scale model carries one) is used."""
    images = split_images(case_table, raw_dataset, split)[:max_cases]
    if not images:
        raise UserInputError(f"{case_table}: no {split} images to benchmark")
    if not note:
        checkpoint = Path(model_folder) / f"fold_{folds[0]}" / checkpoint_name
        # mmap: the note is read without reading the weights
        note = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("note", "")
    return run_benchmark(model_folder, folds, checkpoint_name, images, out_dir, settings, repeats=repeats,
                         setting=setting, with_agreement=with_agreement, note=note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark path in this process (used by run_benchmark).")
    parser.add_argument("spec")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args.spec).read_text())
    settings = InferenceSettings.from_config(spec["settings"])
    result = run_path(spec["path"], Path(spec["model_folder"]), spec["folds"], spec["checkpoint_name"],
                      [Path(i) for i in spec["images"]], Path(spec["out_dir"]), settings, spec["repeats"])
    Path(args.result).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
