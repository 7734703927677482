"""A trained model used away from the run that trained it: installing its archive, and predicting a folder of new CT
images with it (``pancreas-mtl install`` and ``pancreas-mtl predict``).

Prediction runs the workflow's own :class:`~pancreas_mtl.inference.predictor.MultiTaskPredictor` with the settings
the model card records, on checkpoints loaded without running code. Its outputs, in the output folder:

- one mask per input image, under the input's name, in its format, on its grid (:mod:`.new_images`);
- ``predictions.csv`` (a model with the classification head): ``file,subtype,prob_0,prob_1,prob_2``;
- ``lesion_prior.json`` (and ``without_lesion_prior/``: the masks the prior changed, as predicted before it);
- ``prediction.json``: the model, folds, checkpoint and settings used.

Everything is written into a hidden folder beside the output folder, which is renamed into place at the end: an
interrupted or failed prediction leaves no output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pancreas_mtl.config import lesion_prior_threshold
from pancreas_mtl.data.class_probabilities import class_probability_table
from pancreas_mtl.data.lesion_prior_record import WITHOUT_PRIOR_FOLDER, write_prior_record
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.inference.model_archive import (
    check_model_folder,
    extract_model_archive,
    model_member_folder,
    version_warnings,
)
from pancreas_mtl.inference.new_images import find_images, stage_image, write_mask_like
from pancreas_mtl.inference.run import InferenceSettings, build_predictor, predict_images
from pancreas_mtl.nnunet.environment import TRAINER_DIR

PREDICTIONS_CSV = "predictions.csv"
PREDICTION_RECORD = "prediction.json"


def open_model(model: str | Path, work_dir: str | Path) -> tuple[Path, dict, list[str]]:
    """The model folder, its card and version warnings, for an archive (checked, then extracted into ``work_dir``)
    or an installed model folder (checked against its card)."""
    model = Path(model)
    if model.is_dir():
        card = check_model_folder(model)
        return model, card, version_warnings(card, model)
    if not model.is_file():
        raise UserInputError(f"{model}: no such model archive or folder")
    if not zipfile.is_zipfile(model) and model.suffix.lower() != ".zip":
        raise UserInputError(f"{model}: not a model archive (.zip) or an installed model folder")
    card = extract_model_archive(model, work_dir)
    return Path(work_dir) / model_member_folder(card), card, version_warnings(card, model)


def chosen_folds(card: dict, model_folder: Path, folds: Sequence[str] | None) -> list[int | str]:
    """The folds to predict with: the card's, or the requested ones, each checked to be in the model."""
    available = [str(f) for f in card["folds"]]
    requested = [str(f) for f in folds] if folds else available
    unknown = [f for f in requested if f not in available]
    if unknown:
        raise UserInputError(f"{model_folder}: fold(s) {', '.join(unknown)} not in the model (it has {available})")
    checkpoints = [model_folder / f"fold_{f}" / card["checkpoint"] for f in requested]
    missing = [str(path) for path in checkpoints if not path.is_file()]
    if missing:
        raise UserInputError(f"{model_folder}: a fold's checkpoint is missing", missing)
    return [f if f == "all" else int(f) for f in requested]


def _check_output_folder(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError(f"{output_dir}: the output folder is a file")
    if output_dir.is_dir():
        held = sorted(p.name for p in output_dir.iterdir())
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise UserInputError(
                f"{output_dir}: the output folder already holds {len(held)} file(s) ({shown}); give a new or empty "
                "folder, so that no earlier result is overwritten or mixed in"
            )


def predict_new_images(
    model: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    device: str | None = None,
    folds: Sequence[str] | None = None,
    prior_threshold: float | None | str = "archived",
    tile_step_size: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Predict every image of ``input_dir`` into ``output_dir`` (see the module docstring) and return the summary
    ``prediction.json`` holds. ``device``, ``folds``, ``tile_step_size`` and ``prior_threshold`` (None: no prior)
    override the model card's settings."""
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_output_folder(output_dir)
    images = find_images(input_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model_folder, card, warnings = open_model(model, work / "model")
        for warning in warnings:
            echo(f"warning: {warning}")
        use_folds = chosen_folds(card, model_folder, folds)
        inference = {**card["inference"], **({"device": device} if device else {})}
        if tile_step_size is not None:
            inference["tile_step_size"] = tile_step_size
        settings = InferenceSettings.from_config(inference, os.cpu_count() or 1)
        if settings.torch_device().type == "cuda":
            _require_cuda()
        threshold = (
            lesion_prior_threshold({"lesion_presence_prior": card["lesion_prior"]})
            if prior_threshold == "archived"
            else prior_threshold
        )
        echo(
            f"model {card['model']} ({card['stage']}, folds {', '.join(map(str, use_folds))}, {card['checkpoint']}) "
            f"on {settings.torch_device()}; {len(images)} image(s) from {input_dir}"
        )
        staged_dir, masks_dir, out = work / "staged", work / "masks", work / "output"
        for folder in (staged_dir, masks_dir, out):
            folder.mkdir()
        staged = [stage_image(image, staged_dir) for image in images]
        by_case = {image.case_id: image for image in images}
        done = []

        def progress(case_id: str, seconds: dict[str, float]) -> None:
            done.append(case_id)
            echo(
                f"[{len(done)}/{len(images)}] {by_case[case_id].path.name}: preprocessed in "
                f"{seconds['preprocessing_seconds']:.1f} s, predicted in {seconds['compute_seconds']:.1f} s"
            )

        predictor = build_predictor(
            model_folder, use_folds, card["checkpoint"], settings, classification=False, untrusted=True
        )
        try:
            probabilities = predict_images(predictor, staged, masks_dir, settings, threshold, progress)
            prior_changes = dict(predictor.lesion_prior_changes)
        finally:
            predictor.close()
        for image in images:
            write_mask_like(masks_dir / f"{image.case_id}.nii.gz", image, out / image.path.name)
        if prior_changes:
            (out / WITHOUT_PRIOR_FOLDER).mkdir()
        for case_id in prior_changes:
            image = by_case[case_id]
            before = masks_dir / WITHOUT_PRIOR_FOLDER / f"{case_id}.nii.gz"
            write_mask_like(before, image, out / WITHOUT_PRIOR_FOLDER / image.path.name)
        write_prior_record(out, threshold, {by_case[c].path.name: change for c, change in prior_changes.items()})
        if probabilities:
            write_predictions_csv(out / PREDICTIONS_CSV, {by_case[c].path.name: p for c, p in probabilities.items()})
        summary = {
            "model": card["model"],
            "stage": card["stage"],
            "folds": use_folds,
            "checkpoint": card["checkpoint"],
            "model_source": str(Path(model).resolve()),
            "input_dir": str(input_dir.resolve()),
            "images": len(images),
            "inference": {**asdict(settings), "device": str(settings.torch_device())},
            "lesion_prior_threshold": threshold,
            "lesion_prior_changed": sorted(by_case[c].path.name for c in prior_changes),
            "seconds": round(time.perf_counter() - start, 1),
        }
        (out / PREDICTION_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
        if output_dir.is_dir():
            output_dir.rmdir()  # empty (checked above): the finished folder takes its place
        os.replace(out, output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo(
        f"predicted {len(images)} image(s) in {summary['seconds']:.0f} s into {output_dir}: masks"
        + (f", {PREDICTIONS_CSV}" if probabilities else " (a segmentation model: no subtypes)")
        + f"; the lesion-presence prior added a lesion to {len(prior_changes)} image(s)"
    )
    return summary


def write_predictions_csv(path: Path, probabilities: dict) -> Path:
    """``file,subtype,prob_0,prob_1,prob_2`` per image, sorted by file name (the subtype is the most probable)."""
    table = class_probability_table(probabilities).rename(columns={"case_id": "file", "predicted_subtype": "subtype"})
    columns = ["file", "subtype", *[c for c in table.columns if c.startswith("prob_")]]
    pd.DataFrame(table[columns]).to_csv(path, index=False)
    return path


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserInputError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu or auto")


def stock_predict_command(model_folder: Path, card: dict, input_dir: str = "INPUT_DIR", output_dir: str = "OUTPUT_DIR"):
    """The environment and ``nnUNetv2_predict`` command that run an installed model with stock nnU-Net (inputs named
    ``*_0000.nii.gz``). Stock nnU-Net loads checkpoints with ``weights_only=False``: only for trusted models."""
    trainer, plans, configuration = model_folder.name.split("__")
    environment = {"nnUNet_results": str(model_folder.parent.parent.resolve()), "nnUNet_extTrainer": str(TRAINER_DIR)}
    command = [
        "nnUNetv2_predict",
        *("-i", input_dir, "-o", output_dir, "-d", model_folder.parent.name),
        *("-tr", trainer, "-p", plans, "-c", configuration),
        *("-f", *map(str, card["folds"]), "-chk", card["checkpoint"]),
    ]
    return environment, command
