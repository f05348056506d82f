"""Data parallelism under ``torchrun``: the process group from the environment, and the collectives the harness uses.

``torchrun --nproc_per_node=K run_suite.py ...`` starts K copies of the same command; each reads RANK, WORLD_SIZE
and LOCAL_RANK from its environment. The harness then

  * trains a DistributedDataParallel copy of the model on every rank (gloo on CPU, NCCL on CUDA);
  * splits each *global* batch (the task's ``batch_size``) into K nearly equal contiguous parts, one per rank, and
    scales each rank's summed loss by K / (global batch), so the averaged gradient is that of the global batch:
    without dropout, a K-process run follows the single-process run with the same batch size up to float rounding
    (every rank draws the same random stream, so dropout masks differ from the single process's);
  * shards validation and test sets into K contiguous parts, each example seen exactly once, and sums the counts;
  * lets rank 0 alone write records, checkpoints and tables.

The batch order of every run (each rank's part of it) is harness/loading.py's.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


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


__all__ = ["all_sum", "barrier", "broadcast", "gather", "init_from_env", "is_main", "local_device", "rank_world",
           "shutdown"]
