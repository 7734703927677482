"""The multi-task predictor: nnU-Net's predictor with both heads from one encoder pass per tile.

One core serves every prediction of the project: the workflow's validation and test predictions, the benchmark,
and the trainers' full-volume validation (which sets it up with ``manual_initialization``, as nnU-Net's trainer
sets up ``nnUNetPredictor``). A subclass of :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
(nnunetv2 2.8.1) that extends, and calls, these hooks:

- ``_internal_maybe_mirror_and_predict`` (one tile, all mirrors): nnU-Net's own mirroring runs on a network
  call that returns the segmentation and records the tile's class logits; the hook then records the tile's
  predicted lesion mass. Tile records stay on the device until the case is done;
- ``predict_sliding_window_return_logits`` (one case, one fold): aggregates the tile records into the case's
  class probabilities, each tile weighted by its lesion mass (ROI-aware);
- ``predict_logits_from_preprocessed_data`` (one case, all folds): averages the folds' class probabilities as
  nnU-Net averages their logits;
- ``predict_from_data_iterator``: records which case is being predicted (nnU-Net's own loop stays as it is).

A network without a classification head (stage 1) goes through nnU-Net's hooks untouched; its
``last_class_probabilities`` is None.

:meth:`MultiTaskPredictor.predict_files` is the serving loop the workflow uses: this predictor's own worker
pools preprocess the next cases and export the last ones while the model computes, and, unlike nnU-Net's
per-call pools, they are started once and stay up for every later call.

With nnU-Net's defaults (step 0.5, Gaussian, all mirror axes) it computes the same segmentation as the stock
predictor: the segmentation arithmetic is nnU-Net's own.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch._dynamo import OptimizedModule

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.inference import device_resampling
from pancreas_mtl.inference.lesion_prior import lesion_output_channel
from pancreas_mtl.inference.model_archive import load_checkpoint
from pancreas_mtl.inference.workers import (
    WORKERS_MODULE,
    export_case,
    export_cropped_labels,
    preprocess_case,
    timed_in_worker,
)
from pancreas_mtl.model.network import lesion_probability
from pancreas_mtl.nnunet.environment import register_trainers

log = logging.getLogger(__name__)

# A tile with no predicted lesion still votes a little, so a case without lesion gets a defined answer.
MIN_TILE_WEIGHT = 1e-3


def roi_weighted_class_probabilities(tile_class_logits: torch.Tensor, tile_lesion_mass: torch.Tensor) -> torch.Tensor:
    """Average of tile softmax probabilities weighted by each tile's predicted lesion probability mass."""
    weights = tile_lesion_mass.float().clamp_min(0) + MIN_TILE_WEIGHT
    probs = torch.softmax(tile_class_logits.float(), dim=1)
    return (probs * weights[:, None]).sum(0) / weights.sum()


class MultiTaskPredictor(nnUNetPredictor):
    def __init__(
        self,
        tile_step_size: float = 0.5,
        use_gaussian: bool = True,
        mirror_axes: tuple[int, ...] | None = (),
        perform_everything_on_device: bool = True,
        device: torch.device = torch.device("cuda"),
        channels_last: bool = False,
        resample_on_device: bool = False,
        verbose: bool = False,
        allow_tqdm: bool = False,
    ):
        """``mirror_axes``: ``()`` no test-time mirroring, ``None`` all axes the model allows (nnU-Net's default),
        or a tuple of spatial axes. ``resample_on_device``: resample the logits back to the input grid on
        ``device`` with torch (:mod:`~pancreas_mtl.inference.device_resampling`), where the plans allow it;
        otherwise the export workers run nnU-Net's CPU resampling."""
        super().__init__(
            tile_step_size=tile_step_size,
            use_gaussian=use_gaussian,
            use_mirroring=mirror_axes != (),
            perform_everything_on_device=perform_everything_on_device,
            device=device,
            verbose=verbose,
            verbose_preprocessing=False,
            allow_tqdm=allow_tqdm,
        )
        self.requested_mirror_axes = mirror_axes
        self.channels_last = channels_last
        self.resample_on_device = resample_on_device
        self.has_classification_head = False
        self.class_probabilities: dict[str, np.ndarray] = {}
        self.lesion_prior_changes: dict[str, dict] = {}
        self.case_seconds: dict[str, dict[str, float]] = {}
        self.worker_peak_rss_mb = 0.0
        self.last_class_probabilities: np.ndarray | None = None
        self._current_case: str | None = None
        self._tile_class_logits: list[torch.Tensor] = []
        self._tile_lesion_mass: list[torch.Tensor] = []
        self._fold_class_probabilities: list[torch.Tensor] = []
        self._pools: dict[str, multiprocessing.pool.Pool] = {}

    # ------------------------------------------------------------------ set-up
    def initialize_from_trained_model_folder(
        self, model_training_output_dir, use_folds, checkpoint_name="checkpoint_final.pth"
    ):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self._after_initialization()

    def initialize_from_untrusted_model_folder(
        self, model_folder: str | Path, use_folds: tuple[int | str, ...], checkpoint_name: str
    ) -> None:
        """What :meth:`initialize_from_trained_model_folder` does, for a model from elsewhere: nnU-Net's method loads
        checkpoints with ``torch.load(weights_only=False)``, which runs whatever the file holds, so it cannot be
        called here. Checkpoints are loaded by :func:`~pancreas_mtl.inference.model_archive.load_checkpoint`
        (weights and records only), the trainer must be the one the folder is named after, and the network is built
        and handed over through :meth:`manual_initialization`, as nnU-Net's trainer hands over its own."""
        register_trainers()
        model_folder = Path(model_folder)
        checkpoints = [load_checkpoint(model_folder / f"fold_{fold}" / checkpoint_name) for fold in use_folds]
        first = checkpoints[0]
        trainer_name = first.get("trainer_name")
        if trainer_name != model_folder.name.split("__")[0]:
            raise UserInputError(
                f"{model_folder}: its checkpoints name the trainer {trainer_name!r}, the folder another; the model "
                "folder is not one nnU-Net wrote"
            )
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        dataset_json = load_json(str(model_folder / "dataset.json"))
        plans_manager = PlansManager(load_json(str(model_folder / "plans.json")))
        configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
        network = trainer_class.build_network_architecture(
            plans_manager,
            configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        network.load_state_dict(first["network_weights"])
        self.manual_initialization(
            network,
            plans_manager,
            configuration_manager,
            [checkpoint["network_weights"] for checkpoint in checkpoints],
            dataset_json,
            trainer_name,
            first.get("inference_allowed_mirroring_axes"),
        )

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._after_initialization()

    def _after_initialization(self) -> None:
        if self.requested_mirror_axes is not None and self.requested_mirror_axes != ():
            allowed = set(self.allowed_mirroring_axes or ())
            if not set(self.requested_mirror_axes) <= allowed:
                raise ValueError(
                    f"mirror axes {self.requested_mirror_axes} are not all allowed by the model ({sorted(allowed)})"
                )
            self.allowed_mirroring_axes = tuple(self.requested_mirror_axes)
        self.network = self.network.to(self.device)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        plain = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
        self.has_classification_head = hasattr(plain, "classification_head")

    # ------------------------------------------------------------------ the serving loop
    def _pool(self, name: str, processes: int):
        if name not in self._pools:
            # Workers fork from one server process that has imported the workers' module (3.9 s of imports here),
            # so what each worker still imports (the caller's main module) is mostly loaded already, instead of
            # every spawned worker importing all of it (5.8 s here); the server is a fresh process, so forking
            # from it is safe beside CUDA and OpenMP.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([WORKERS_MODULE])
            self._pools[name] = context.Pool(max(1, processes))
        return self._pools[name]

    def start_workers(self, preprocessing_workers: int, export_workers: int) -> None:
        """Start the worker pools now (else the first :meth:`predict_files` does), e.g. while the weights load."""
        self._pool("preprocess", preprocessing_workers)
        self._pool("export", export_workers)

    def close(self) -> None:
        """Stop the background workers (they are otherwise kept for the next call)."""
        for pool in self._pools.values():
            pool.terminate()
            pool.join()
        self._pools.clear()

    def predict_files(
        self,
        images: list[str],
        output_files_truncated: list[str],
        preprocessing_workers: int = 2,
        export_workers: int = 2,
        lesion_prior_threshold: float | None = None,
        on_case_computed: Callable[[str, dict[str, float]], None] | None = None,
    ) -> None:
        """Predict images into ``{output}.nii.gz`` masks; class probabilities go to ``self.class_probabilities``.

        Preprocessing runs ahead in resident worker processes, the model computes case after case in this
        process, and each mask is resampled and written by a resident export worker while the next case computes.
        With ``lesion_prior_threshold`` the export applies the lesion-presence prior (:func:`export_case`); what
        it changed goes to ``self.lesion_prior_changes`` (case name: voxels added, peak probability).
        ``self.case_seconds`` gets each case's preprocessing, compute and export seconds (the three overlap
        across cases, so they add up to more than the wall time). ``on_case_computed(case, seconds)`` is called as
        each case's compute ends (a progress line), with its preprocessing and compute seconds.
        """
        preprocess = self._pool("preprocess", preprocessing_workers)
        export = self._pool("export", export_workers)
        on_device = self.resample_on_device and device_resampling.supports(self.configuration_manager)
        pending = [
            preprocess.apply_async(
                timed_in_worker,
                (preprocess_case, str(image), self.plans_manager, self.configuration_manager, self.dataset_json),
            )
            for image in images
        ]
        exports = []
        try:
            for job, ofile in zip(pending, output_files_truncated):
                (data, properties), preprocessing_seconds, worker_rss = job.get()
                self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, worker_rss)
                self._current_case = Path(ofile).name
                start = time.perf_counter()
                logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data))
                computed = time.perf_counter()
                seconds = {"preprocessing_seconds": preprocessing_seconds, "compute_seconds": computed - start}
                if on_case_computed is not None:
                    on_case_computed(self._current_case, dict(seconds))
                task = None
                if on_device:
                    try:
                        task = (
                            export_cropped_labels,
                            *self._labels_on_device(logits, properties, lesion_prior_threshold),
                            properties,
                            self.plans_manager,
                            self.dataset_json,
                            ofile,
                            lesion_prior_threshold,
                        )
                    except torch.cuda.OutOfMemoryError:
                        # like nnU-Net's sliding window: a case too large for the device goes the CPU way
                        log.warning(
                            "%s: out of device memory resampling the logits; nnU-Net's CPU export takes it",
                            self._current_case,
                        )
                        torch.cuda.empty_cache()
                if task is None:
                    task = (
                        export_case,
                        logits.cpu().numpy(),
                        properties,
                        self.configuration_manager,
                        self.plans_manager,
                        self.dataset_json,
                        ofile,
                        lesion_prior_threshold,
                    )
                seconds["export_seconds"] = time.perf_counter() - computed  # here; the worker's part is added
                self.case_seconds[self._current_case] = seconds
                exports.append((self._current_case, export.apply_async(timed_in_worker, task)))
        finally:
            # a later call on bare preprocessed data must not file its probabilities under the last case's name
            self._current_case = None
        for case, job in exports:
            change, worker_seconds, worker_rss = job.get()
            self.case_seconds[case]["export_seconds"] += worker_seconds
            self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, worker_rss)
            if change["added_voxels"]:
                self.lesion_prior_changes[case] = change

    def _labels_on_device(
        self, logits: torch.Tensor, properties: dict, lesion_prior_threshold: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The labels on the cropped input's grid, resampled on the device, and the lesion probabilities the
        lesion-presence prior needs (None without it)."""
        labels, probabilities = device_resampling.segmentation_on_input_crop(
            logits.to(self.device), properties, self.plans_manager, self.configuration_manager, self.label_manager
        )
        if lesion_prior_threshold is None:
            return labels, None
        return labels, probabilities[lesion_output_channel(self.label_manager)].float().cpu().numpy()

    # ------------------------------------------------------------------ per-case bookkeeping
    def predict_from_data_iterator(
        self, data_iterator, save_probabilities: bool = False, num_processes_segmentation_export: int = 2
    ):
        def tracking(iterator):
            for item in iterator:
                ofile = item.get("ofile")
                self._current_case = None if ofile is None else str(ofile).rsplit("/", 1)[-1]
                yield item

        try:
            return super().predict_from_data_iterator(
                tracking(data_iterator), save_probabilities, num_processes_segmentation_export
            )
        finally:
            self._current_case = None

    # ------------------------------------------------------------------ the hooks
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's fold loop; the folds' class probabilities are averaged like their logits."""
        self._fold_class_probabilities = []
        prediction = super().predict_logits_from_preprocessed_data(data)
        if self.has_classification_head:
            self.last_class_probabilities = torch.stack(self._fold_class_probabilities).mean(0).numpy()
            if self._current_case is not None:
                self.class_probabilities[self._current_case] = self.last_class_probabilities
        return prediction

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """nnU-Net's sliding window over one case with one set of weights, plus the case's class probabilities."""
        logits = super().predict_sliding_window_return_logits(input_image)
        if self.has_classification_head:
            probabilities = roi_weighted_class_probabilities(
                torch.cat(self._tile_class_logits), torch.cat(self._tile_lesion_mass)
            ).cpu()
            self._fold_class_probabilities.append(probabilities)
            self.last_class_probabilities = probabilities.numpy()
        else:
            self.last_class_probabilities = None
        return logits

    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        # nnU-Net retries on the CPU when the device runs out of memory: every try starts a fresh tile record.
        self._tile_class_logits, self._tile_lesion_mass = [], []
        return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_classification_head:
            return super()._internal_maybe_mirror_and_predict(x)
        # nnU-Net's mirroring calls self.network(x) once per mirror combination. For the length of the call it is
        # a function returning the segmentation of both heads' single forward and keeping the class logits, so
        # the segmentation arithmetic (order, sums, division) stays exactly nnU-Net's.
        network, class_logits = self.network, []

        def segmentation_keeping_class_logits(inputs: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
            segmentation, logits = network(inputs, return_class_logits=True)
            class_logits.append(logits.float())
            return segmentation

        self.network = segmentation_keeping_class_logits
        try:
            segmentation = super()._internal_maybe_mirror_and_predict(x)
        finally:
            self.network = network
        self._tile_class_logits.append(torch.stack(class_logits).mean(0))
        lesion = lesion_probability(segmentation, self.label_manager.has_regions)
        self._tile_lesion_mass.append(lesion.flatten(1).sum(1))
        return segmentation
