"""Measurement: synchronized step timing and peak memory.

Peak memory:
  CUDA  ``torch.cuda.max_memory_allocated`` after a reset at the start of the measured region
        (tensors allocated by PyTorch's caching allocator; excludes the CUDA context).
  CPU   growth of the process's resident set size (RSS) over the region: a background thread samples
        ``/proc/self/statm`` every ``interval_s`` and reports max(RSS) - RSS at the start. It counts
        every allocation of the process (PyTorch, Python, data), so it is an upper bound on the model's
        own activations; allocations that live shorter than the sampling interval can be missed.
        Off Linux it falls back to ``resource.getrusage`` maxrss growth (coarser: a process-lifetime peak).
"""
from __future__ import annotations

import os
import resource
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; an approximation elsewhere


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (CUDA's, or a host allocation that failed)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Context manager measuring peak memory of a region; read ``.peak_mib`` and ``.kind`` afterwards."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval_s = device, interval_s
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_growth"
        self._peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self._peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())

    @property
    def peak_mib_so_far(self) -> float:
        """The peak up to now, inside the region (as ``peak_mib``)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self._peak - self._base, 0) / 2**20

    @property
    def peak_mib(self) -> float:
        """Peak over the region in MiB: absolute allocated bytes on CUDA, growth over the start on CPU."""
        peak = self._peak if self.device.type == "cuda" else self._peak - self._base
        return max(peak, 0) / 2**20


class StepTimer:
    """Accumulates synchronized wall time and work of training steps after ``warmup`` steps."""

    def __init__(self, device: torch.device, warmup: int = 5):
        self.device, self.warmup = device, warmup
        self.n_steps = 0
        self.seconds = self.samples = self.tokens = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self, samples: int, tokens: int) -> None:
        synchronize(self.device)
        self.n_steps += 1
        if self.n_steps > self.warmup:
            self.seconds += time.perf_counter() - self._t0
            self.samples += samples
            self.tokens += tokens

    def rates(self) -> tuple[float | None, float | None]:
        """(samples/s, tokens/s) over the measured steps; None when no step was measured."""
        if self.seconds <= 0:
            return None, None
        return self.samples / self.seconds, self.tokens / self.seconds
