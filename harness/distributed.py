"""Data parallelism under ``torchrun``: the process group from the environment, and the batch order of every run.

``torchrun --nproc_per_node=K run_suite.py ...`` starts K copies of the same command; each reads RANK, WORLD_SIZE
and LOCAL_RANK from its environment. The harness then

  * trains a DistributedDataParallel copy of the model on every rank (gloo on CPU, NCCL on CUDA);
  * splits each *global* batch (the task's ``batch_size``) into K nearly equal contiguous parts, one per rank, and
    scales each rank's summed loss by K / (global batch), so the averaged gradient is that of the global batch:
    without dropout, a K-process run follows the single-process run with the same batch size up to float rounding
    (every rank draws the same random stream, so dropout masks differ from the single process's);
  * shards validation and test sets into K contiguous parts, each example seen exactly once, and sums the counts;
  * lets rank 0 alone write records, checkpoints and tables.

The order of the training examples is a pure function of (seed, epoch): the permutation of epoch e is
``torch.randperm(n, generator=manual_seed(seed * 1_000_003 + e))``. A run resumed from a checkpoint taken after
batch b of epoch e therefore continues with batch b + 1 of the same permutation, whatever the number of processes.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when not launched by it.

    The backend is NCCL when the runs go on CUDA, else gloo. The timeout is long since ranks wait for each other
    around rank 0's checkpoint and record writes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """The device string of this rank: a bare ``cuda`` (or ``auto`` on a GPU machine) becomes ``cuda:<LOCAL_RANK>``."""
    if rank_world()[1] > 1 and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a process group)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks, in float64."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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


def loader_with(loader: DataLoader, batch_sampler: Any) -> DataLoader:
    """``loader``'s dataset, collate function and workers, with our batch order. A private generator keeps the
    DataLoader from drawing on the global RNG when an iterator starts (so dropout streams resume exactly)."""
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      generator=torch.Generator().manual_seed(0))


__all__ = ["EpochBatches", "all_sum", "barrier", "broadcast", "gather", "init_from_env", "is_main", "loader_with",
           "local_device", "rank_world", "shard_batches", "shutdown"]
