"""Losses under DistributedDataParallel: two processes on the CPU over gloo, against one process on the joined
batch. Toy networks: the time goes into starting the processes."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pancreas_mtl.training.losses import SubtypeLoss

pytestmark = pytest.mark.slow  # two processes start: about 25 s on 2 cores

WORLD_SIZE = 2
PER_RANK = 2
# Which samples of the joined batch carry a subtype (rank r holds samples r * PER_RANK ...): one counting sample
# on rank 0 and none on rank 1, counting samples on both ranks in unequal numbers, none at all.
COUNTS = [[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]]
CLASS_WEIGHTS = torch.tensor([0.5, 1.0, 2.0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(WORLD_SIZE * PER_RANK, 4, generator=generator), torch.tensor([0, 2, 1, 2])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _gradients(model: nn.Module, loss_fn: SubtypeLoss, x, y, counts) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn(model(x), y, torch.tensor(counts)).backward()
    return [p.grad.clone() for p in model.parameters()]


def _rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = DistributedDataParallel(_model())
        loss_fn = SubtypeLoss(weight=CLASS_WEIGHTS, across_ranks=True)
        x, y = _batch()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        grads = [_gradients(model, loss_fn, x[mine], y[mine], counts[mine]) for counts in COUNTS]
        torch.save(grads, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_classification_loss_under_ddp_equals_one_process_on_the_joined_batch(tmp_path):
    """Defect: each rank averaged its classification loss over its own counting samples, and DDP then averaged the
    ranks' gradients: a counting sample on a rank whose neighbour had none got half the gradient it gets in one
    process."""
    mp.spawn(_rank, args=(_free_port(), tmp_path), nprocs=WORLD_SIZE, join=True)
    x, y = _batch()
    model = _model()
    expected = [_gradients(model, SubtypeLoss(weight=CLASS_WEIGHTS), x, y, counts) for counts in COUNTS]
    for rank in range(WORLD_SIZE):
        per_case = torch.load(tmp_path / f"rank{rank}.pt")
        for counts, got, want in zip(COUNTS, per_case, expected):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, msg=lambda m: f"rank {rank}, counts {counts}: {m}")
    assert any(g.abs().sum() > 0 for g in expected[0])  # the first case's single sample really has a gradient
