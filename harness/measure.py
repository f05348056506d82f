"""Measurement: synchronized timing, peak memory, and one-process-per-cell runs.

Cells in a fresh process (``run_child``): every benchmark that times or measures memory per configuration (the
efficiency sweep, the generation benchmark, benchmarks/layers.py and benchmarks/long_memory.py) runs each cell as
``python -m harness.measure <module:function> <json payload>``: the child imports the function, calls it with the
payload and prints one ``RESULT_TAG`` line of JSON. A crash, an out-of-memory kill or a run past the time limit
becomes the cell's ``status`` ("error: ...", "oom", "over_budget"), never the parent's failure.

Attention backend (``SDPABackends``): which kernel each ``scaled_dot_product_attention`` call of a region ran, by
asking torch's own dispatcher choice (``torch._fused_sdp_choice``, the function SDPA itself consults) with the call's
arguments: "flash" (on CPU, torch's flash CPU kernel), "efficient" (memory-efficient), "cudnn" or "math" (the
unfused reference that materializes the L x L weights; on CPU taken, for example, whenever attention dropout is on).
It sees the calls a layer makes itself; a call nested inside another function that torch dispatches to function modes
(``nn.MultiheadAttention``'s ``F.multi_head_attention_forward``) is not seen, and such a region reads "n/a".

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

import importlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "CELL_RESULT "  # the child process's one result line on stdout
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


def time_calls(fn: Callable[[], Any], device: torch.device, n: int) -> list[float]:
    """Seconds of each of ``n`` synchronized calls of ``fn``."""
    times = []
    for _ in range(n):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], Any], device: torch.device, n: int) -> float:
    """Median seconds of ``n`` synchronized calls of ``fn``."""
    return statistics.median(time_calls(fn, device, n))


def run_child(target: str, payload: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None,
              oom_status: str = "oom") -> dict[str, Any]:
    """Call ``target`` ("package.module:function", a function of one JSON-able dict returning one) with ``payload`` in
    a fresh Python process, cwd the project root. Returns the function's dict plus ``wall_s``; a child past
    ``timeout_s``: ``status`` "over_budget"; killed by SIGKILL (the out-of-memory killer, as a rule): ``oom_status``;
    any other exit without a result: "error: exit code N: <last line of stderr>"."""
    cmd = [sys.executable, "-m", "harness.measure", target, json.dumps(payload, default=str)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "over_budget", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG):]), "wall_s": wall}
    if proc.returncode in (-signal.SIGKILL, 137):
        return {"status": oom_status, "wall_s": wall}
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"status": f"error: exit code {proc.returncode}: {tail}"[:2000], "wall_s": wall}


def _child_main(target: str, payload: str) -> int:
    """The child's side of ``run_child``: one result line; an exception becomes the cell's status."""
    module, name = target.split(":")
    try:
        result = getattr(importlib.import_module(module), name)(json.loads(payload))
    except Exception as exc:  # noqa: BLE001 - reported as the cell's status; the sweep goes on
        result = {"status": "oom" if is_oom(exc) else f"error: {type(exc).__name__}: {exc}"[:2000]}
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)
    return 0


SDPA_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}  # torch's SDPBackend values


class SDPABackends(TorchFunctionMode):
    """Within ``with SDPABackends() as rec:``, ``rec.names`` collects the backend of every SDPA call (see the module
    docstring); ``str(rec)``: the distinct names, sorted and comma-joined, or "n/a" when no call was made."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v, *rest = args
            if torch.is_autocast_enabled(q.device.type):  # autocast casts q, k, v before SDPA chooses
                low = torch.get_autocast_dtype(q.device.type)
                q, k, v = (t.to(low) if t.is_floating_point() else t for t in (q, k, v))
            choice = int(torch._fused_sdp_choice(q, k, v, *rest, **kwargs))
            self.names.add(SDPA_NAMES.get(choice, f"backend {choice}"))
        return func(*args, **kwargs)

    def __str__(self) -> str:
        return ",".join(sorted(self.names)) or "n/a"


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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m harness.measure <module:function> <json payload>  (one cell, used by run_child)")
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
