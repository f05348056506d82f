"""Every DataLoader of a run, built here from a task's datasets and collate function (tasks/registry.py ``Task``).

The order of the training examples is a pure function of (seed, epoch): the permutation of epoch e is
``torch.randperm(n, generator=manual_seed(seed * 1_000_003 + e))``. A run resumed from a checkpoint taken after
batch b of epoch e therefore continues with batch b + 1 of the same permutation, whatever the number of processes.
Under torchrun each rank loads its contiguous part of every global batch (``EpochBatches``), and its contiguous share
of the validation and test sets (``shard_batches``), so each example is evaluated exactly once.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from tasks.registry import Task

__all__ = ["EpochBatches", "eval_loader", "loader", "shard_batches", "train_loader"]


class EpochBatches(Sampler[list[int]]):
    """This rank's part of each global batch of one epoch, from batch ``skip`` on.

    Args:
        n: examples in the split.
        batch_size: global batch size (all ranks together).
        shuffle: permute the examples (training) or keep their order.
        seed, epoch: the permutation is seeded by ``seed * 1_000_003 + epoch``.
        skip: global batches of this epoch already done (resume).
        rank, world: this process and the number of processes.

    With several processes, a last global batch smaller than the number of processes is dropped (some rank would
    get no example); nothing else is dropped.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0, skip: int = 0,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, epoch
        self.skip, self.rank, self.world = skip, rank, world
        n_full, rest = divmod(n, batch_size)
        self.n_batches = n_full + (1 if rest >= world else 0)

    def global_size(self, b: int) -> int:
        """Examples in global batch ``b`` of the epoch."""
        return min(self.batch_size, self.n - b * self.batch_size)

    def __len__(self) -> int:
        return max(self.n_batches - self.skip, 0)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        for b in range(self.skip, self.n_batches):
            part = np.array_split(np.arange(self.global_size(b)), self.world)[self.rank]
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield chunk[part[0]:part[-1] + 1].tolist() if len(part) else []


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Evaluation batches of this rank: a contiguous ``1/world`` share of the split, each example on exactly one rank."""
    own = np.array_split(np.arange(n), world)[rank]
    return [own[i:i + batch_size].tolist() for i in range(0, len(own), batch_size)]


def loader(task: Task, split: str, batch_sampler: Any = None) -> DataLoader:
    """A loader of ``task``'s ``split`` with ``batch_sampler``'s batches (None: the split in order, in batches of the
    task's size; for inspection, tests and benchmarks). A private generator keeps the DataLoader from drawing on the
    global RNG when an iterator starts (so dropout streams resume exactly)."""
    ds = task.split(split)
    if batch_sampler is None:
        batch_sampler = shard_batches(len(ds), task.batch_size)
    return DataLoader(ds, batch_sampler=batch_sampler, collate_fn=task.collate, num_workers=task.num_workers,
                      generator=torch.Generator().manual_seed(0))


def train_loader(task: Task, seed: int, epoch: int, skip: int = 0, rank: int = 0, world: int = 1
                 ) -> tuple[DataLoader, EpochBatches]:
    """This rank's training batches of ``epoch`` from global batch ``skip`` on, and their sampler (global sizes)."""
    batches = EpochBatches(len(task.train), task.batch_size, True, seed, epoch, skip, rank, world)
    return loader(task, "train", batches), batches


def eval_loader(task: Task, split: str, rank: int = 0, world: int = 1) -> DataLoader:
    """This rank's share of ``split`` (``val`` or ``test``), in order."""
    return loader(task, split, shard_batches(len(task.split(split)), task.batch_size, rank, world))
