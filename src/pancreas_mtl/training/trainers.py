"""nnU-Net trainers of the two training stages, found by ``nnUNetv2_train -tr`` through ``nnUNet_extTrainer``.

- :class:`nnUNetTrainerPancreasSeg` (stage 1): nnU-Net's segmentation training with the workflow's settings,
  plus full-volume validation every N epochs (whole-pancreas and lesion Dice) and a best-combined checkpoint.
- :class:`nnUNetTrainerPancreasMultiTask` (stage 2, ROI-attention head) and
  :class:`nnUNetTrainerPancreasMultiTaskGlobalPool` (plain global pooling head): load the stage-1 weights
  themselves (nnU-Net's ``-pretrained_weights`` refuses a model with extra keys), then train segmentation and
  subtype classification jointly; a training patch carries its case's subtype only when it holds at least
  ``min_lesion_voxels_for_subtype`` lesion voxels. Full-volume validation adds macro-F1 and the best-F1
  checkpoint.

Sampling (both stages): nnU-Net's probabilistic foreground oversampling (each sample draws whether it is forced),
with a share of the forced crops centred on the lesion (:mod:`pancreas_mtl.training.sampling`); the share of
patches that held a lesion is logged per epoch. ``seed`` and ``sampling_seed`` seed torch and nnU-Net's
numpy-driven sampling, in this process and in each augmentation worker.

Full-volume validation predicts through :class:`~pancreas_mtl.inference.predictor.MultiTaskPredictor`, set up
with ``manual_initialization`` as nnU-Net's own trainer sets up ``nnUNetPredictor``: the code that picks a
checkpoint is the code that writes the submission.

Hyperparameters come from :class:`~pancreas_mtl.training.settings.TrainingSettings`; anything that changes the
network's shape is a class attribute, so ``nnUNetv2_predict`` rebuilds the same network from the class name.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import time
from contextlib import contextmanager
from os.path import join
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
    NonDetMultiThreadedAugmenter,
)
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from sklearn.metrics import f1_score
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch._dynamo.utils import counters as dynamo_counters
from torch.nn.parallel import DistributedDataParallel

from pancreas_mtl.data.case_table import case_subtypes
from pancreas_mtl.data.labels import LESION_LABEL, NUM_SUBTYPES, SUBTYPES
from pancreas_mtl.evaluation.segmentation import dice
from pancreas_mtl.inference.device_resampling import segmentation_on_device
from pancreas_mtl.inference.lesion_prior import (
    apply_lesion_presence_prior,
    lesion_output_channel,
)
from pancreas_mtl.inference.predictor import MultiTaskPredictor
from pancreas_mtl.model.network import MultiTaskUNet, build_multitask_network
from pancreas_mtl.training.losses import (
    PolyLRPerParamGroup,
    SubtypeLoss,
    class_weights_from_counts,
)
from pancreas_mtl.training.sampling import (
    LesionCentredSampling,
    lesion_voxels_per_sample,
)
from pancreas_mtl.training.selection import (
    SCORE_CHECKPOINTS,
    CheckpointSelector,
    combined_score,
)
from pancreas_mtl.training.settings import TrainingSettings
from pancreas_mtl.training.work_folder import (
    LATEST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    STOPPED_EXIT_CODE,
    saved_epoch,
    write_stop_record,
)

# Per-epoch log keys of the full-volume validation, by the metric they hold (NaN in epochs without one).
FULL_VALIDATION_LOG_KEYS = {
    "whole_dice": "full_val_whole_dice",
    "lesion_dice": "full_val_lesion_dice",
    "combined": "full_val_combined",
    "macro_f1": "full_val_macro_f1",
}


# Per-epoch log keys of how the training loop spent its time: seconds per iteration, and the share of the
# epoch's training time spent waiting for the next batch of the augmentation workers (a starving GPU shows here).
ITERATION_SECONDS_KEY = "train_iteration_seconds"
DATA_WAIT_SHARE_KEY = "train_data_wait_share"
# Augmentation worker seeds: sampling_seed * SEED_STRIDE + loader offset + rank * RANK_SEED_STRIDE + worker index.
SEED_STRIDE, LOADER_SEED_OFFSETS, RANK_SEED_STRIDE, MAX_WORKERS_PER_LOADER = 10_000, (0, 1000), 100, 100


class TimedLoader:
    """An augmenter whose ``next()`` adds the seconds it blocked to ``waited``: the time the training step waited
    for data. On a GPU the step ends synchronised (its loss comes back to the host), so the wait is not hidden
    behind queued kernels. ``before_next`` runs first: the previous step has finished there."""

    def __init__(self, loader, before_next=None):
        self.loader = loader
        self.before_next = before_next
        self.waited = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        if self.before_next is not None:
            self.before_next()
        start = time.perf_counter()
        try:
            return next(self.loader)
        finally:
            self.waited += time.perf_counter() - start


class StopRequest:
    """SIGTERM (a SLURM time limit with ``--signal``, a preemption, ``scancel``) during the training loop asks the
    training to stop at its next check (:meth:`nnUNetTrainerPancreasSeg.stop_if_requested`); outside the loop it
    ends the trainer and its worker processes, as it would without a handler.

    A scheduler signals every process of the job, the augmentation workers (forked: they inherit the handler)
    included. They ignore it: their trainer shuts them down when it stops, and a worker that died first would end
    the training with nnU-Net's "background workers are no longer alive" while it waits for a batch."""

    def __init__(self):
        self.pid = os.getpid()
        self.signal: int | None = None
        self.active = False  # set while the training loop runs, where checks follow each step

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a worker process
            return
        if self.active:
            self.signal = signum
            return
        for child in multiprocessing.active_children():
            child.kill()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    @property
    def requested(self) -> bool:
        return self.signal is not None


class SideChannelLogger:
    """One of nnU-Net's extra loggers (W&B), whose failure ends its own logging instead of the training: W&B logs
    through a service process of its own, which a job's SIGTERM stops as well (a scheduler signals every process
    of the job), and a training of days must not end because its side channel did. The first failure is reported
    once; the local log keeps every value."""

    def __init__(self, logger, report):
        self.logger = logger
        self.report = report
        self.failed = False

    def __getattr__(self, name):
        attribute = getattr(self.logger, name)
        if not callable(attribute):
            return attribute

        def guarded(*args, **kwargs):
            if self.failed:
                return None
            try:
                return attribute(*args, **kwargs)
            except Exception as error:
                self.failed = True
                self.report(
                    f"{type(self.logger).__name__} stopped logging ({type(error).__name__}: {error}); the "
                    "training goes on, and nnU-Net's own log keeps every value"
                )
                return None

        return guarded


def world_size() -> int:
    """Processes of the DDP training (1 without DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gathered(values: list) -> list:
    """``values`` of every DDP rank, concatenated in rank order (``values`` itself without DDP)."""
    if world_size() == 1:
        return values
    per_rank = [None] * world_size()
    dist.all_gather_object(per_rank, values)
    return [v for rank_values in per_rank for v in rank_values]


@contextmanager
def _cpu_ddp_wrapping():
    """nnunetv2 2.8.1 wraps the network as ``DDP(network, device_ids=[rank])`` inside ``initialize``, which torch
    refuses for a module on the CPU (gloo, as the test suite runs DDP). For that call only, the CPU module is wrapped
    without device ids; GPU training never enters here."""
    original = nnunet_trainer_module.DDP

    def wrap(module, device_ids=None, **kwargs):
        return original(module, **kwargs)

    nnunet_trainer_module.DDP = wrap
    try:
        yield
    finally:
        nnunet_trainer_module.DDP = original


class ValidationCase(NamedTuple):
    labels: np.ndarray  # predicted, preprocessed space
    class_probabilities: np.ndarray | None  # None for a segmentation-only network
    reference: np.ndarray  # the case's reference labels, preprocessed space


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers, by type (either, both or none may be there)."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class nnUNetTrainerStockBudget(nnUNetTrainer):
    """nnU-Net's own trainer, changed only in its budget: epochs, training and validation iterations per epoch (from
    the stage's settings), as nnU-Net's ``nnUNetTrainer_Nepochs`` variants change it, so that its poly decay runs over
    that budget. Its optimizer, rate, sampling, augmentation and checkpoints stay nnU-Net's.

    The one other change is where the final validation runs: with ``final_validation`` off (the workflow's training
    jobs), in a job of its own, as for the project's trainers."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings = TrainingSettings.from_environment()
        self.num_epochs = self.settings.num_epochs
        self.num_iterations_per_epoch = self.settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.settings.val_iterations_per_epoch

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.settings.final_validation:
            self.print_to_log_file("final validation: skipped here (final_validation is off; it runs on its own)")
            return
        super().perform_actual_validation(save_probabilities)


class nnUNetTrainerPancreasSeg(nnUNetTrainer):
    """Stage 1: segmentation only, nnU-Net's loss and augmentation, with the workflow's settings."""

    multitask = False
    selection_scores: tuple[str, ...] = ("combined",)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            # nnU-Net builds its W&B logger on every rank (MetaLogger, in its __init__): two ranks would write one
            # offline run, and a resumed rank 1 could look for wandb/latest-run before rank 0 made it. Rank 0 logs.
            os.environ["nnUNet_wandb_enabled"] = "0"
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.logger.loggers = [SideChannelLogger(logger, self.print_to_log_file) for logger in self.logger.loggers]
        if self.is_ddp and device.type == "cpu":
            # nnU-Net moves every DDP rank to cuda:rank; DDP over gloo on the CPU (the test suite's) stays there
            self.device, self.grad_scaler = device, None
        self.settings = TrainingSettings.from_environment()
        s = self.settings
        # Before initialize() builds the network: torch's seed sets its initial weights (and dropout), the same on
        # every DDP rank; the sampling seed sets nnU-Net's numpy-driven crops and augmentation, its own per rank
        # (rank 0 keeps the single-process seed; see get_dataloaders for the workers).
        torch.manual_seed(s.seed)
        rank_sampling_seed = s.sampling_seed + 100_003 * self.local_rank
        random.seed(rank_sampling_seed)
        np.random.seed(rank_sampling_seed)
        self.num_epochs = s.num_epochs
        self.num_iterations_per_epoch = s.iterations_per_epoch
        self.num_val_iterations_per_epoch = s.val_iterations_per_epoch
        self.initial_lr = s.initial_lr
        self.oversample_foreground_percent = s.oversample_foreground_percent
        # Each sample draws whether it is forced to hold foreground. nnU-Net's default forces the last
        # round(batch * (1 - p)) samples of a batch: at batch 2, p = 0.33, 0.5 and 0.66 all force one of two.
        self.probabilistic_oversampling = True
        self.save_every = s.checkpoint_every
        if s.optimizer != "sgd":
            # AdamW's decoupled weight decay (nnU-Net logs self.weight_decay; configure_optimizers uses it)
            self.weight_decay = 1e-4
        for key in self._extra_log_keys():
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self.checkpoint_selector = CheckpointSelector(self.selection_scores)
        # Installed before any worker starts: a worker forked later inherits the handler, which lets it die.
        self.stop_request = StopRequest()
        self.stop_request.install()
        self.print_to_log_file(f"pancreas_mtl training settings: {json.dumps(s.__dict__)}")

    # ------------------------------------------------------------------ settings hooks
    def _extra_log_keys(self) -> list[str]:
        return [FULL_VALIDATION_LOG_KEYS[k] for k in ("whole_dice", "lesion_dice", "combined")] + [
            "train_lesion_patch_share",
            ITERATION_SECONDS_KEY,
            DATA_WAIT_SHARE_KEY,
        ]

    def _set_batch_size_and_oversample(self):
        if self.is_ddp and self.configuration_manager.batch_size < world_size():
            raise RuntimeError(
                f"configuration {self.configuration_name!r} has batch size {self.configuration_manager.batch_size}, "
                f"fewer samples than the {world_size()} GPUs nnU-Net splits it over: train a configuration with a "
                "larger batch (the workflow derives one per GPU count: nnunet.batch_size_per_gpu)"
            )
        super()._set_batch_size_and_oversample()
        if self.probabilistic_oversampling:
            # nnU-Net gives each rank the forced share of its slice of the batch (0 or 1 at one sample per GPU); a
            # sample that draws whether it is forced means the same on every rank, so each keeps the setting
            self.oversample_foreground_percent = self.settings.oversample_foreground_percent
        cap = self.settings.batch_size_cap
        if cap is not None and self.batch_size > cap:
            self.print_to_log_file(f"batch size capped from {self.batch_size} to {cap}")
            self.batch_size = cap

    def _do_i_compile(self) -> bool:
        """The stage's ``compile`` setting; with ``auto`` nnU-Net's choice (on CUDA only, ``nnUNet_compile``). The
        workflow resolves auto itself, so true compiles on a CPU too."""
        if self.settings.compile == "auto":
            return super()._do_i_compile()
        return self.settings.compile

    def initialize(self):
        if self.is_ddp and self.device.type == "cpu":
            with _cpu_ddp_wrapping():
                super().initialize()
        else:
            super().initialize()

    def set_deep_supervision_enabled(self, enabled: bool):
        # nnU-Net reaches the decoder through self.network.module under DDP; the final validation runs on the
        # unwrapped network, so go by type
        self.plain_network().decoder.deep_supervision = enabled

    def plain_network(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers."""
        return unwrap_network(self.network)

    def configure_optimizers(self):
        """nnU-Net's SGD (Nesterov, momentum 0.99) and poly schedule, or AdamW with the same poly schedule.

        AdamW is for short trainings (the CPU demo): with a few hundred iterations, SGD's poly decay has
        brought the rate down before the small lesion class is picked up.
        """
        if self.settings.optimizer == "sgd":
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRPerParamGroup(optimizer, self.num_epochs)

    # ------------------------------------------------------------------ sampling
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        return LesionCentredSampling(dataset_tr, self.settings.lesion_centred_share), dataset_val

    def get_dataloaders(self):
        loaders = super().get_dataloaders()
        # nnU-Net starts its augmentation workers with seeds=None: each would seed itself from the OS. Restart
        # them with seeds derived from the sampling seed and the DDP rank (batches still arrive in the order the
        # workers finish).
        for offset, loader in zip(LOADER_SEED_OFFSETS, loaders):
            if isinstance(loader, NonDetMultiThreadedAugmenter):
                loader.seeds = self.augmentation_seeds(offset, loader.num_processes)
                loader.restart()
        return loaders

    def augmentation_seeds(self, loader_offset: int, num_processes: int) -> list[int]:
        """One seed per augmentation worker, distinct over workers, loaders and DDP ranks (up to 10 ranks)."""
        if num_processes > MAX_WORKERS_PER_LOADER or self.local_rank >= SEED_STRIDE // 1000:
            raise RuntimeError(f"seeds are laid out for <= {MAX_WORKERS_PER_LOADER} workers and <= 10 DDP ranks")
        base = self.settings.sampling_seed * SEED_STRIDE + loader_offset + self.local_rank * RANK_SEED_STRIDE
        return [base + i for i in range(num_processes)]

    # ------------------------------------------------------------------ iteration time and data wait
    def on_train_start(self):
        super().on_train_start()
        self.dataloader_train = TimedLoader(self.dataloader_train, self.stop_if_requested)
        self.dataloader_val = TimedLoader(self.dataloader_val, self.stop_if_requested)
        self.stop_request.active = True  # until on_train_end has written checkpoint_final.pth

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.dataloader_train.waited = 0.0
        self._train_epoch_started = time.perf_counter()

    def on_train_end(self):
        for name in ("dataloader_train", "dataloader_val"):  # nnU-Net shuts its own augmenters down by type
            if isinstance(getattr(self, name), TimedLoader):
                setattr(self, name, getattr(self, name).loader)
        super().on_train_end()  # deletes checkpoint_latest.pth: the finished training needs no fallback either
        # a stop asked for after the last check changes nothing: the training is complete
        self.stop_request.active = False
        if self.local_rank == 0:
            Path(self.output_folder, PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
        if self._do_i_compile():
            graphs = dynamo_counters["stats"]["unique_graphs"]
            self.print_to_log_file(f"torch.compile: {graphs} graphs compiled in this process")

    def on_device(self, batch: dict) -> dict:
        """The batch's data and target (a tensor, or a list under deep supervision) moved to the training device, as
        nnU-Net's ``train_step`` moves them (it moves them again there, a no-op then)."""

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True)

        target = batch["target"]
        target = [move(t) for t in target] if isinstance(target, list) else move(target)
        return {**batch, "data": move(batch["data"]), "target": target}

    def train_step(self, batch: dict) -> dict:
        # the lesion count runs where the batch is, not single-threaded on the host while the GPU waits
        batch = self.on_device(batch)
        lesion_voxels = lesion_voxels_per_sample(batch["target"], self.label_manager)
        return {**super().train_step(batch), **self._lesion_patch_outputs(lesion_voxels)}

    def _lesion_patch_outputs(self, lesion_voxels: torch.Tensor) -> dict:
        return {"lesion_patch_share": (lesion_voxels > 0).float().mean().item()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        seconds = time.perf_counter() - self._train_epoch_started
        super().on_train_epoch_end(train_outputs)
        share = float(np.mean([o["lesion_patch_share"] for o in train_outputs]))
        self.logger.log("train_lesion_patch_share", share, self.current_epoch)
        self.print_to_log_file(f"share of training patches holding lesion: {share:.3f}")
        iteration_seconds = seconds / max(1, len(train_outputs))
        wait_share = self.dataloader_train.waited / seconds if seconds > 0 else 0.0
        self.logger.log(ITERATION_SECONDS_KEY, iteration_seconds, self.current_epoch)
        self.logger.log(DATA_WAIT_SHARE_KEY, wait_share, self.current_epoch)
        self.print_to_log_file(
            f"{iteration_seconds:.3f} s per iteration, {100 * wait_share:.1f}% of it waiting for data"
            + (
                " (the augmentation workers do not keep up: see docs/gpu-training.md, 'Feeding the GPU')"
                if wait_share > 0.2
                else ""
            )
        )

    # ------------------------------------------------------------------ stopping on a signal
    def stop_if_requested(self, in_lockstep: bool = True) -> None:
        """Stop here if a signal asked for it: before each training and validation step (the previous one has
        finished), and between full-validation cases. Under DDP the ranks decide together, at the steps they take
        in lockstep; a check that is not (a rank's share of the full validation) waits for the next one."""
        requested = self.stop_request.requested
        if self.is_ddp:
            if not in_lockstep:
                return
            flag = torch.tensor([int(requested)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            self.stop_training()

    def stop_training(self) -> None:
        """Write checkpoint_latest.pth (atomically, as every checkpoint) and exit with ``STOPPED_EXIT_CODE``. The
        epoch in progress is not finished: the checkpoint resumes at its start, with the weights of the steps it
        has taken, and the resumed training runs it again in full (its logged values are overwritten)."""
        epoch = self.current_epoch
        name = signal.Signals(self.stop_request.signal or signal.SIGTERM).name
        self.print_to_log_file(
            f"{name} received: stopping in epoch {epoch}; {LATEST_CHECKPOINT} resumes at epoch {epoch}"
        )
        # nnU-Net's save_checkpoint stores current_epoch + 1: the epoch after one that has finished
        self.current_epoch -= 1
        try:
            self.save_checkpoint(join(self.output_folder, LATEST_CHECKPOINT))
        finally:
            self.current_epoch += 1
        if self.local_rank == 0:
            write_stop_record(self.output_folder, name, epoch)
        if self.is_ddp:
            dist.barrier()  # no rank leaves before rank 0 has written the checkpoint
        self.shut_down_augmenters()  # the workers ignore the signal (StopRequest)
        self.print_to_log_file(f"stopped: {LATEST_CHECKPOINT} written; rerun the training to resume it")
        raise SystemExit(STOPPED_EXIT_CODE)

    def shut_down_augmenters(self) -> None:
        """nnU-Net's shutdown of its augmentation workers (as in its on_train_end)."""
        for name in ("dataloader_train", "dataloader_val"):
            loader = getattr(self, name)
            loader = loader.loader if isinstance(loader, TimedLoader) else loader
            if isinstance(loader, NonDetMultiThreadedAugmenter):
                loader._finish()

    # ------------------------------------------------------------------ full-volume validation
    def _is_full_validation_epoch(self) -> bool:
        every = max(1, self.settings.full_validation_every)
        return (self.current_epoch + 1) % every == 0 or self.current_epoch == self.num_epochs - 1

    def validation_predictor(self) -> MultiTaskPredictor:
        """The inference predictor on this trainer's (unwrapped) network, as nnU-Net's final validation sets up
        its ``nnUNetPredictor``."""
        s = self.settings
        predictor = MultiTaskPredictor(
            tile_step_size=s.full_validation_tile_step,
            mirror_axes=None if s.full_validation_mirroring else (),
            device=self.device,
        )
        predictor.manual_initialization(
            self.plain_network(),
            self.plans_manager,
            self.configuration_manager,
            None,
            self.dataset_json,
            self.__class__.__name__,
            self.inference_allowed_mirroring_axes,
        )
        # With nnUNet_compile set, nnU-Net's manual_initialization compiles what it is given, again in every round:
        # the validation runs on the plain network (compiling is lazy, so nothing was compiled yet)
        predictor.network = unwrap_network(predictor.network)
        return predictor

    def validation_keys(self) -> list[str]:
        """This rank's share of the validation cases (every case without DDP), as nnU-Net's final validation
        shards them."""
        _, val_keys = self.do_split()
        return list(val_keys)[self.local_rank :: world_size()]

    def predict_validation_cases(self) -> dict[str, ValidationCase]:
        """Predicted labels (preprocessed space), class probabilities (None in stage 1) and reference labels of
        this rank's validation cases (:meth:`validation_keys`)."""
        net = self.plain_network()
        was_training = net.training
        net.eval()
        self.set_deep_supervision_enabled(False)
        val_keys = self.validation_keys()
        dataset = self.dataset_class(
            self.preprocessed_dataset_folder,
            val_keys,
            folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage,
        )
        predictor = self.validation_predictor()
        threshold = self.settings.lesion_prior_threshold
        results = {}
        try:
            for key in val_keys:
                self.stop_if_requested(in_lockstep=False)
                data, seg, _, _ = dataset.load_case(key)
                logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:])))
                try:
                    labels, lesion = self._validation_labels(logits, threshold is not None)
                except torch.cuda.OutOfMemoryError:
                    # as nnU-Net's predictor falls back for its sliding window: a volume too large for the device
                    # goes the CPU way, where an error would end the training (and under DDP every rank's)
                    self.print_to_log_file(
                        f"{key}: out of device memory in the full validation's softmax and "
                        "argmax; computing them on the CPU"
                    )
                    logits = logits.cpu()
                    torch.cuda.empty_cache()
                    labels, lesion = self._validation_labels(logits, threshold is not None)
                if threshold is not None:  # as the exported predictions get it
                    labels = apply_lesion_presence_prior(labels, lesion, relative_threshold=threshold).labels
                results[key] = ValidationCase(labels, predictor.last_class_probabilities, np.asarray(seg[:])[0])
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
            net.train(was_training)
        return results

    def _validation_labels(self, logits: torch.Tensor, with_lesion: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (host) of a case's logits, computed where the logits are, and its lesion probabilities (host) when
        ``with_lesion``."""
        probabilities = self.label_manager.apply_inference_nonlin(logits)
        labels = segmentation_on_device(self.label_manager, probabilities).cpu().numpy()
        lesion = probabilities[lesion_output_channel(self.label_manager)].float().cpu().numpy() if with_lesion else None
        return labels, lesion

    def run_full_validation(self) -> dict[str, float]:
        """Whole-pancreas and lesion Dice (and macro-F1 in stage 2) over every full validation volume. Under DDP
        each rank predicts its share and every rank gets the same metrics (so all select alike, in step)."""
        per_case = [
            (
                dice(case.labels > 0, case.reference > 0),
                dice(case.labels == LESION_LABEL, case.reference == LESION_LABEL),
                int(np.argmax(case.class_probabilities)) if self.multitask else None,
                self.case_subtypes[key] if self.multitask else None,
            )
            for key, case in self.predict_validation_cases().items()
        ]
        whole, lesion, predicted, truth = (list(column) for column in zip(*gathered(per_case)))
        metrics = {"whole_dice": float(np.mean(whole)), "lesion_dice": float(np.mean(lesion))}
        if self.multitask:
            metrics["macro_f1"] = float(
                f1_score(truth, predicted, labels=list(SUBTYPES), average="macro", zero_division=0)
            )
        metrics["combined"] = combined_score(metrics)
        return metrics

    def _log_epoch_value(self, key: str, value: float | None) -> None:
        """One value per epoch for the local logger (NaN when not measured); W&B only gets measured values."""
        if value is None:
            self.logger.local_logger.log(key, float("nan"), self.current_epoch)
        else:
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        metrics = None
        if self._is_full_validation_epoch():
            metrics = self.run_full_validation()
            self.print_to_log_file("full validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        for score, key in FULL_VALIDATION_LOG_KEYS.items():
            if key in self.logger.local_logger.my_fantastic_logging:
                self._log_epoch_value(key, metrics and metrics[score])
        if metrics is not None:
            for score in self.checkpoint_selector.update(metrics):
                self.print_to_log_file(f"new best {score}: {metrics[score]:.4f} (epoch {self.current_epoch})")
                self.save_checkpoint(join(self.output_folder, SCORE_CHECKPOINTS[score]))
        super().on_epoch_end()

    # ------------------------------------------------------------------ checkpoints that survive crashes
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file and renamed into place, so a job killed while
        writing (time limit, preemption, OOM killer) leaves the previous file whole. The checkpoint_latest.pth
        it replaces stays (hard link) as checkpoint_latest.previous.pth: the fallback of :meth:`load_checkpoint`.
        Only rank 0 writes (nnU-Net's rule); the other ranks, and a run with checkpointing disabled, never touch
        the files, a ``.partial`` left by a kill included.
        """
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # writes nothing here; nnU-Net logs the disabled case
            return
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        target = Path(filename)
        if target.name == LATEST_CHECKPOINT and target.is_file():
            previous = target.with_name(PREVIOUS_CHECKPOINT)
            previous.unlink(missing_ok=True)
            os.link(target, previous)
        os.replace(partial, target)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (nnunetv2 2.8.1), sharded over the DDP ranks as there, on the network without
        its DDP and torch.compile wrappers: nnU-Net builds its predictor on ``self.network``, and the compiled
        multi-task network recompiled for every new input shape (an H100 had not finished its first case after
        45 s). No narrower hook hands the predictor its network.

        With ``final_validation`` off (the workflow's training jobs), nothing runs here: the workflow validates in a
        job of its own, ``nnUNetv2_train --val``."""
        if not self.settings.final_validation:
            self.print_to_log_file("final validation: skipped here (final_validation is off; it runs on its own)")
            return
        wrapped, self.network = self.network, self.plain_network()
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.network = wrapped

    def readable_checkpoint(self, filename: str) -> str:
        """``filename`` if torch can load it, else the newest readable fallback (checkpoint_latest.pth, then
        checkpoint_latest.previous.pth), named in one log line; an error when there is none."""
        candidates = [filename] + [
            str(Path(self.output_folder, name))
            for name in (LATEST_CHECKPOINT, PREVIOUS_CHECKPOINT)
            if Path(self.output_folder, name) != Path(filename)
        ]
        problem = None
        for candidate in candidates:
            if not Path(candidate).is_file():
                continue
            try:
                torch.load(candidate, map_location="cpu", weights_only=False)
            except Exception as error:  # truncated or corrupt: torch raises several kinds
                problem = problem or f"{candidate} cannot be read ({type(error).__name__}: {error})"
                continue
            if problem:
                self.print_to_log_file(f"{problem}; resuming from {candidate} instead")
            return candidate
        raise RuntimeError(
            f"{problem or filename + ' is missing'}, and no earlier checkpoint can be read: remove the fold folder "
            f"{self.output_folder} to train it afresh"
        )

    def load_checkpoint(self, filename_or_checkpoint):
        if isinstance(filename_or_checkpoint, str):
            filename_or_checkpoint = self.readable_checkpoint(filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)
        self._optimizer_steps_to_host()
        # The best scores so far are in the per-epoch log the checkpoint restored (NaN: no full validation).
        logged = self.logger.local_logger.my_fantastic_logging
        history = [
            {
                score: logged[key][epoch]
                for score, key in FULL_VALIDATION_LOG_KEYS.items()
                if key in logged and epoch < len(logged[key]) and not math.isnan(logged[key][epoch])
            }
            for epoch in range(self.current_epoch)
        ]
        self.checkpoint_selector.restore(history)
        # A best checkpoint must belong to the restored history: one that is gone (removed by hand), unreadable, or
        # from an epoch after the one resumed (written before a crash that lost the later checkpoint_latest.pth,
        # or in the epoch a stop interrupted) is removed and chosen afresh from the epochs still to come.
        for score in self.checkpoint_selector.best:
            path = Path(self.output_folder, SCORE_CHECKPOINTS[score])
            epoch = saved_epoch(path)
            if epoch is None or epoch > self.current_epoch:
                if path.is_file() and self.local_rank == 0:
                    why = (
                        "unreadable"
                        if epoch is None
                        else f"saved at epoch {epoch}, after the resumed {self.current_epoch}"
                    )
                    self.print_to_log_file(f"removing {path.name} ({why})")
                    path.unlink(missing_ok=True)
                self.checkpoint_selector.best[score] = -math.inf
        self.print_to_log_file(f"resumed at epoch {self.current_epoch}; best so far: {self.checkpoint_selector.best}")

    def _optimizer_steps_to_host(self) -> None:
        """nnU-Net loads a checkpoint with ``map_location=self.device``, which puts the optimizer's step counts on
        the GPU. AdamW keeps them on the host unless it is capturable or fused; on the device, each of its steps
        reads every count back with ``.item()``: one host synchronisation per parameter tensor."""
        for group in self.optimizer.param_groups:
            if group.get("capturable") or group.get("fused"):
                continue
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].cpu()


class nnUNetTrainerPancreasMultiTask(nnUNetTrainerPancreasSeg):
    """Stage 2: shared encoder, nnU-Net decoder and the ROI-attention subtype head, trained jointly."""

    multitask = True
    selection_scores = ("combined", "macro_f1")
    head_variant = "roi_attention"

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _extra_log_keys(self) -> list[str]:
        return super()._extra_log_keys() + [
            FULL_VALIDATION_LOG_KEYS["macro_f1"],
            "train_seg_loss",
            "train_cls_loss",
            "cls_loss_weight",
            "train_subtype_patch_share",
        ]

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager,
        configuration_manager,
        num_input_channels,
        num_output_channels,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        # Dropout is a training setting; prediction rebuilds the network without settings (dropout is off in eval).
        settings = TrainingSettings.from_environment(required=False)
        return build_multitask_network(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
            head_variant=cls.head_variant,
            num_classes=NUM_SUBTYPES,
            dropout=settings.head_dropout if settings is not None else 0.0,
        )

    def initialize(self):
        super().initialize()
        s = self.settings
        if s.case_table is None:
            raise RuntimeError("stage-2 training needs the case table (settings.case_table) for the subtypes")
        self.case_subtypes = case_subtypes(s.case_table)
        train_keys, val_keys = self.do_split()
        missing = sorted(k for k in [*train_keys, *val_keys] if k not in self.case_subtypes)
        if missing:
            raise RuntimeError(f"no subtype in {s.case_table} for: {', '.join(missing[:10])}")
        weight = class_weights_from_counts([self.case_subtypes[k] for k in train_keys]) if s.class_weighting else None
        gamma = s.focal_gamma if s.classification_loss == "focal" else 0.0
        self.classification_loss = SubtypeLoss(gamma, weight, across_ranks=self.is_ddp).to(self.device)
        self.print_to_log_file(
            f"classification loss {s.classification_loss} (gamma {gamma}), class weights {weight}, only on patches "
            f"with >= {s.min_lesion_voxels_for_subtype} lesion voxels"
        )
        self.load_stage1_weights()

    def load_stage1_weights(self) -> dict:
        path = self.settings.stage1_checkpoint
        if path is None:
            raise RuntimeError("stage-2 training starts from stage-1 weights: settings.stage1_checkpoint is not set")
        report = self.plain_network().load_segmentation_weights(path)
        self.print_to_log_file(
            f"loaded {len(report['loaded'])} stage-1 tensors from {path}; newly initialised head tensors: "
            f"{len(report['head_initialised'])}; ignored checkpoint tensors: {report['unexpected']}"
        )
        return report

    def configure_optimizers(self):
        """AdamW with two parameter groups: the pretrained encoder/decoder at ``initial_lr`` and the new head at
        ``initial_lr * head_lr_factor``, with nnU-Net's poly decay per group.

        Stage 2 fine-tunes a trained network next to a freshly initialised head: nnU-Net's SGD with momentum
        0.99 let the young head's large, noisy gradients wreck the pretrained encoder (measured on the demo
        data: segmentation loss rising, classification stuck at chance); AdamW at a small rate does not.
        """
        net = self.plain_network()
        assert isinstance(net, MultiTaskUNet)
        head_params = list(net.classification_head.parameters())
        head_ids = {id(p) for p in head_params}
        shared_params = [p for p in net.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": shared_params, "lr": self.initial_lr},
                {"params": head_params, "lr": self.initial_lr * self.settings.head_lr_factor},
            ],
            self.initial_lr,
            weight_decay=self.weight_decay,
        )
        return optimizer, PolyLRPerParamGroup(optimizer, self.num_epochs)

    def classification_loss_weight(self) -> float:
        """Linear warm-up of the classification loss weight over the first epochs."""
        s = self.settings
        if s.classification_warmup_epochs <= 0:
            return s.classification_loss_weight
        return s.classification_loss_weight * min(1.0, (self.current_epoch + 1) / s.classification_warmup_epochs)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's ``train_step`` (nnunetv2 2.8.1) with both heads from one forward and the summed loss.

        Overridden whole: the loss is computed inside the step with no narrower hook, and the class targets come
        from the batch's ``keys``. Everything else (autocast on CUDA, grad scaling, clipping at 12) is as there.
        """
        batch = self.on_device(batch)
        data, target = batch["data"], batch["target"]
        subtypes = torch.as_tensor([self.case_subtypes[k] for k in batch["keys"]], device=self.device)
        # A patch that misses the lesion carries no evidence of its case's subtype: it gets no class loss.
        lesion_voxels = lesion_voxels_per_sample(target, self.label_manager)
        carries_subtype = lesion_voxels >= self.settings.min_lesion_voxels_for_subtype
        cls_weight = self.classification_loss_weight()

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            seg, logits = self.network(data, return_class_logits=True)
            seg_loss = self.loss(seg, target)
            cls_loss = self.classification_loss(logits.float(), subtypes, carries_subtype)
            loss = seg_loss + cls_weight * cls_loss

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {
            "loss": loss.detach().cpu().numpy(),
            "seg_loss": seg_loss.detach().cpu().numpy(),
            "cls_loss": cls_loss.detach().cpu().numpy(),
            "subtype_patch_share": carries_subtype.float().mean().item(),
            **self._lesion_patch_outputs(lesion_voxels),
        }

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        self.logger.log("train_seg_loss", float(np.mean([o["seg_loss"] for o in train_outputs])), self.current_epoch)
        self.logger.log("train_cls_loss", float(np.mean([o["cls_loss"] for o in train_outputs])), self.current_epoch)
        self.logger.log("cls_loss_weight", self.classification_loss_weight(), self.current_epoch)
        self.logger.log(
            "train_subtype_patch_share",
            float(np.mean([o["subtype_patch_share"] for o in train_outputs])),
            self.current_epoch,
        )


class nnUNetTrainerPancreasMultiTaskGlobalPool(nnUNetTrainerPancreasMultiTask):
    """Stage 2 with the plain global-pooling head, for comparison with the ROI-attention head."""

    head_variant = "global_pool"
