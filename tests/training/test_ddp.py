"""Stage-2 training under a real DistributedDataParallel wrapper: two processes on the CPU over gloo.

Each rank builds the stage-2 trainer as ``nnUNetv2_train -num_gpus 2`` does (the process group is up before the
trainer exists), initializes it (nnU-Net wraps the network in DDP there), runs training steps, the sharded full
validation, and saves and loads a checkpoint. What each rank saw is written to a JSON file and compared here.
"""

import json
import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.training.test_trainers import _smoke_trainer

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
TRAIN_STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Env:
    """monkeypatch.setenv for a spawned rank (the parent's monkeypatch set the folders before the spawn)."""

    def setenv(self, name, value):
        os.environ[name] = str(value)


def _rank(rank: int, port: int, smoke_workflow: Path, tmp_path: Path, stage1_checkpoint: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from pancreas_mtl.training.trainers import nnUNetTrainerPancreasMultiTask

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    (tmp_path / f"rank{rank}").mkdir()
    try:
        trainer = _smoke_trainer(
            smoke_workflow,
            tmp_path / f"rank{rank}",
            _Env(),
            nnUNetTrainerPancreasMultiTask,
            "stage2",
            stage1_checkpoint=stage1_checkpoint,
            oversample_foreground_percent=0.33,
        )
        os.environ["nnUNet_results"] = str(tmp_path / "trained")  # one model folder, as the ranks share it
        trainer.output_folder_base = str(tmp_path / "trained" / "model")
        trainer.output_folder = str(tmp_path / "trained" / "model" / "fold_0")
        trainer.log_file = str(tmp_path / f"rank{rank}.log")
        trainer.initialize()
        record = {
            "ddp": isinstance(trainer.network, DistributedDataParallel),
            "device": str(trainer.device),
            "batch_size": trainer.batch_size,
            "oversample": trainer.oversample_foreground_percent,
            "seeds": trainer.augmentation_seeds(0, 3),
            "wandb_loggers": [type(getattr(logger, "logger", logger)).__name__ for logger in trainer.logger.loggers],
        }
        trainer.on_train_start()
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(TRAIN_STEPS)]
        trainer.on_train_epoch_end(outputs)
        record["weights_sum"] = float(sum(p.double().sum() for p in trainer.plain_network().parameters()))
        record["validation_keys"] = trainer.validation_keys()
        record["metrics"] = trainer.run_full_validation()
        latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
        trainer.save_checkpoint(str(latest))
        dist.barrier()
        trainer.load_checkpoint(str(latest))
        record["resumed_epoch"] = trainer.current_epoch
        record["loaded_sum"] = float(sum(p.double().sum() for p in trainer.plain_network().parameters()))
        record["partials"] = [p.name for p in Path(trainer.output_folder).glob("*.partial")]
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_stage2_trains_validates_and_checkpoints_under_ddp(smoke_workflow, tmp_path, monkeypatch):
    """Defects: nnU-Net's DDP cannot wrap a CPU module; the full validation ran on rank 0 while the other ranks
    went on (a collective timeout on a GPU cluster); every rank's augmentation workers had the same seeds; and
    nnU-Net's per-rank oversampling (0 or 1 at one sample per rank) replaced the probability drawn per sample; and
    nnU-Net's W&B logger ran on every rank (two writers of one offline run)."""
    stage1_checkpoint = next(
        (smoke_workflow / "results" / "nnunet" / "trained").rglob(
            "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"
        )
    )
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")  # as the workflow runs it, offline
    monkeypatch.setenv("nnUNet_wandb_mode", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    mp.spawn(_rank, args=(_free_port(), smoke_workflow, tmp_path, str(stage1_checkpoint)), nprocs=WORLD_SIZE, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for record in ranks:
        assert record["ddp"] and record["device"] == "cpu"
        assert record["batch_size"] == 1  # the plan's 2 split over 2 ranks, nnU-Net's way
        assert record["oversample"] == pytest.approx(0.33)
        assert record["partials"] == []
        assert record["resumed_epoch"] == 1
    # DDP kept the ranks' weights equal, and each loaded rank 0's checkpoint
    assert ranks[0]["weights_sum"] == pytest.approx(ranks[1]["weights_sum"], rel=1e-9)
    assert ranks[0]["loaded_sum"] == pytest.approx(ranks[0]["weights_sum"], rel=1e-9)
    assert ranks[1]["loaded_sum"] == pytest.approx(ranks[0]["weights_sum"], rel=1e-9)
    # the validation cases are shared out, and every rank computed the metrics of all of them
    keys = [set(r["validation_keys"]) for r in ranks]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "macro_f1" in ranks[0]["metrics"]
    assert not set(ranks[0]["seeds"]) & set(ranks[1]["seeds"])
    assert ranks[0]["wandb_loggers"] == ["WandbLogger"] and ranks[1]["wandb_loggers"] == []


STOP_AFTER_STEPS = 2


def _stopping_rank(rank: int, port: int, smoke_workflow: Path, tmp_path: Path) -> None:
    import signal

    from pancreas_mtl.training.trainers import nnUNetTrainerPancreasSeg

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    (tmp_path / f"rank{rank}").mkdir()
    record = {"steps": 0, "exit_code": None}
    try:
        trainer = _smoke_trainer(smoke_workflow, tmp_path / f"rank{rank}", _Env(), nnUNetTrainerPancreasSeg, "stage1")
        trainer.output_folder_base = str(tmp_path / "trained" / "model")
        trainer.output_folder = str(tmp_path / "trained" / "model" / "fold_0")
        trainer.log_file = str(tmp_path / f"rank{rank}.log")
        trainer.initialize()
        trainer.on_train_start()
        trainer.current_epoch = 3
        trainer.on_train_epoch_start()
        try:
            for _ in range(10):
                batch = next(trainer.dataloader_train)  # a stop asked for is acted on here, before the step
                trainer.train_step(batch)
                record["steps"] += 1
                if rank == 1 and record["steps"] == STOP_AFTER_STEPS:
                    os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 gets the signal
        except SystemExit as stop:
            record["exit_code"] = stop.code
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(smoke_workflow, tmp_path, monkeypatch):
    """A signal that reaches one rank only (a preemption of one node's processes, a scancel of a step): every rank
    stops before the same step, rank 0 writes checkpoint_latest.pth for the epoch in progress, and all exit with
    the stop's exit code; none waits alone in the next collective."""
    from pancreas_mtl.training.work_folder import STOP_RECORD, STOPPED_EXIT_CODE, saved_epoch

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    mp.spawn(_stopping_rank, args=(_free_port(), smoke_workflow, tmp_path), nprocs=WORLD_SIZE, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks == [{"steps": STOP_AFTER_STEPS, "exit_code": STOPPED_EXIT_CODE}] * WORLD_SIZE, ranks
    fold = tmp_path / "trained" / "model" / "fold_0"
    assert saved_epoch(fold / "checkpoint_latest.pth") == 3  # resumes in the epoch the signal interrupted
    assert json.loads((fold / STOP_RECORD).read_text())["epoch"] == 3
