"""The optimized multi-task predictor: nnU-Net's predictor with one encoder pass per tile for both heads.

A subclass of :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`, changed at three hooks:

- ``_internal_predict_sliding_window_return_logits`` (the tile loop): tiles go through the network in batches,
  each forward returns segmentation logits *and* class logits (``network(x, return_class_logits=True)``), and the
  tile class logits are aggregated with weights given by the predicted lesion probability in each tile;
- ``predict_logits_from_preprocessed_data``: folds are averaged for both heads, and a single fold's weights are
  not reloaded for every case (the model stays resident);
- ``predict_from_data_iterator``: records which case is being predicted, so class probabilities can be written
  next to the masks (nnU-Net's own loop, with its background preprocessing and export, is kept as it is).

:meth:`MultiTaskPredictor.predict_files` is the serving loop the workflow uses: like nnU-Net's, preprocessing of
the next cases and export of the last ones run in background processes while the model computes, but the worker
processes are started once and stay up with the model for every later call (nnU-Net starts fresh ones per call,
seconds of interpreter and torch start-up each time on a CPU).

Mirroring, tile step and tile batch size are constructor arguments (the workflow sets them from the config).
With nnU-Net's defaults (step 0.5, Gaussian, all mirror axes, one tile per batch) it computes the same
segmentation as the stock predictor.
"""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path
from queue import Queue
from threading import Thread

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from torch._dynamo import OptimizedModule

from pancreas_mtl.model.sliding_window import LESION_LABEL, roi_weighted_class_probabilities


def preprocess_case(image: str, plans_manager, configuration_manager, dataset_json) -> tuple[np.ndarray, dict]:
    """nnU-Net's preprocessing of one image, run in a worker process."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case([image], None, plans_manager, configuration_manager, dataset_json)
    return np.ascontiguousarray(data, dtype=np.float32), properties


class MultiTaskPredictor(nnUNetPredictor):
    def __init__(
        self,
        tile_step_size: float = 0.5,
        use_gaussian: bool = True,
        mirror_axes: tuple[int, ...] | None = (),
        tile_batch_size: int = 1,
        perform_everything_on_device: bool = True,
        device: torch.device = torch.device("cuda"),
        channels_last: bool = False,
        verbose: bool = False,
        allow_tqdm: bool = False,
    ):
        """``mirror_axes``: ``()`` no test-time mirroring, ``None`` all axes the model allows (nnU-Net's default),
        or a tuple of spatial axes."""
        super().__init__(
            tile_step_size=tile_step_size, use_gaussian=use_gaussian, use_mirroring=mirror_axes != (),
            perform_everything_on_device=perform_everything_on_device, device=device, verbose=verbose,
            verbose_preprocessing=False, allow_tqdm=allow_tqdm,
        )
        self.requested_mirror_axes = mirror_axes
        self.tile_batch_size = max(1, int(tile_batch_size))
        self.channels_last = channels_last
        self.class_probabilities: dict[str, np.ndarray] = {}
        self._current_case: str | None = None
        self._fold_class_probabilities: list[torch.Tensor] = []
        self._loaded_parameters_index: int | None = None
        self._pools: dict[str, multiprocessing.pool.Pool] = {}

    # ------------------------------------------------------------------ set-up
    def initialize_from_trained_model_folder(self, model_training_output_dir, use_folds, checkpoint_name="checkpoint_final.pth"):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self._after_initialization()

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
        self._loaded_parameters_index = 0 if self.list_of_parameters else None
        if not hasattr(self._plain_network(), "classification_head"):
            raise TypeError(
                f"{type(self._plain_network()).__name__} has no classification head: the multi-task predictor needs a "
                "model trained with nnUNetTrainerPancreasMultiTask*"
            )

    # ------------------------------------------------------------------ the serving loop
    def _pool(self, name: str, processes: int):
        if name not in self._pools:
            self._pools[name] = multiprocessing.get_context("spawn").Pool(max(1, processes))
        return self._pools[name]

    def close(self) -> None:
        """Stop the background workers (they are otherwise kept for the next call)."""
        for pool in self._pools.values():
            pool.terminate()
            pool.join()
        self._pools.clear()

    def predict_files(self, images: list[str], output_files_truncated: list[str],
                      preprocessing_workers: int = 2, export_workers: int = 2) -> None:
        """Predict images into ``{output}.nii.gz`` masks; class probabilities go to ``self.class_probabilities``.

        Preprocessing runs ahead in resident worker processes, the model computes case after case in this
        process, and each mask is resampled and written by a resident export worker while the next case computes.
        """
        preprocess = self._pool("preprocess", preprocessing_workers)
        export = self._pool("export", export_workers)
        pending = [
            preprocess.apply_async(preprocess_case, (str(image), self.plans_manager, self.configuration_manager,
                                                      self.dataset_json))
            for image in images
        ]
        exports = []
        for job, ofile in zip(pending, output_files_truncated):
            data, properties = job.get()
            self._current_case = Path(ofile).name
            logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu().numpy()
            exports.append(export.apply_async(export_prediction_from_logits, (
                logits, properties, self.configuration_manager, self.plans_manager, self.dataset_json, ofile, False)))
        for job in exports:
            job.get()

    def _plain_network(self) -> torch.nn.Module:
        return self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network

    # ------------------------------------------------------------------ per-case bookkeeping
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False, num_processes_segmentation_export: int = 2):
        def tracking(iterator):
            for item in iterator:
                ofile = item.get("ofile")
                self._current_case = None if ofile is None else str(ofile).rsplit("/", 1)[-1]
                yield item

        return super().predict_from_data_iterator(tracking(data_iterator), save_probabilities, num_processes_segmentation_export)

    @torch.inference_mode()
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """Segmentation logits averaged over folds; class probabilities of the case stored alongside."""
        self._fold_class_probabilities = []
        prediction = None
        for index, params in enumerate(self.list_of_parameters or [None]):
            if params is not None and index != self._loaded_parameters_index:
                self._plain_network().load_state_dict(params)
                self._loaded_parameters_index = index
            logits = self.predict_sliding_window_return_logits(data).to("cpu")
            prediction = logits if prediction is None else prediction + logits
        n_folds = len(self.list_of_parameters or [None])
        if n_folds > 1:
            prediction /= n_folds
        probabilities = torch.stack(self._fold_class_probabilities).mean(0).numpy()
        self.last_class_probabilities = probabilities
        if self._current_case is not None:
            self.class_probabilities[self._current_case] = probabilities
        return prediction

    # ------------------------------------------------------------------ the tile loop
    def _mirror_combinations(self) -> list[tuple[int, ...]]:
        """Identity first, then nnU-Net's order of mirror-axis combinations (same order, same sums)."""
        if not self.use_mirroring or not self.allowed_mirroring_axes:
            return [()]
        axes = [a + 2 for a in self.allowed_mirroring_axes]
        return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def _predict_tile_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits and class logits of a batch of tiles, averaged over the mirror combinations."""
        seg_sum, cls_sum = None, None
        combinations = self._mirror_combinations()
        for axes in combinations:
            inputs = torch.flip(x, axes) if axes else x
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
            seg, logits = self.network(inputs, return_class_logits=True)
            seg = torch.flip(seg, axes) if axes else seg
            seg_sum = seg if seg_sum is None else seg_sum + seg
            cls_sum = logits.float() if cls_sum is None else cls_sum + logits.float()
        if len(combinations) > 1:
            seg_sum /= len(combinations)
            cls_sum /= len(combinations)
        return seg_sum, cls_sum

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers, do_on_device: bool = True):
        results_device = self.device if do_on_device else torch.device("cpu")
        batch_size = self.tile_batch_size

        def producer(volume, tile_slicers, queue):
            for start in range(0, len(tile_slicers), batch_size):
                group = tile_slicers[start:start + batch_size]
                tiles = torch.stack([volume[s] for s in group]).contiguous().to(self.device)
                queue.put((tiles, group))
            queue.put("end")

        empty_cache(self.device)
        data = data.to(results_device)
        queue: Queue = Queue(maxsize=2)
        Thread(target=producer, args=(data, slicers, queue), daemon=True).start()
        # Same accumulators as nnU-Net's loop (half precision), so baseline settings give the baseline's masks.
        predicted_logits = torch.zeros(
            (self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half, device=results_device
        )
        n_predictions = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian = (
            compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1.0 / 8,
                             value_scaling_factor=10, device=results_device)
            if self.use_gaussian else 1
        )
        tile_logits, tile_lesion_mass = [], []
        while True:
            item = queue.get()
            if item == "end":
                break
            tiles, group = item
            seg, logits = self._predict_tile_batch(tiles)
            seg = seg.to(results_device)
            lesion = torch.softmax(seg.float(), dim=1)[:, LESION_LABEL]
            tile_lesion_mass.append(lesion.flatten(1).sum(1).cpu())
            tile_logits.append(logits.cpu())
            for prediction, sl in zip(seg, group):
                if self.use_gaussian:
                    prediction = prediction * gaussian
                predicted_logits[sl] += prediction
                n_predictions[sl[1:]] += gaussian
        torch.div(predicted_logits, n_predictions, out=predicted_logits)
        if torch.any(torch.isinf(predicted_logits)):
            raise RuntimeError("Encountered inf in predicted logits (same check as nnU-Net's predictor)")
        self._fold_class_probabilities.append(
            roi_weighted_class_probabilities(torch.cat(tile_logits), torch.cat(tile_lesion_mass))
        )
        return predicted_logits
