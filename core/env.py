"""Run environment: offline defaults, device choice, and the hardware/software identity stored in records."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def set_offline_defaults() -> None:
    """Nothing in a run or a test waits on the network; pykeops compiles into a project-local cache.

    Only defaults: a variable the user already set is kept (e.g. ``HF_DATASETS_OFFLINE=0`` inside a prepare step).
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KEOPS_CACHE_FOLDER", str(PROJECT_ROOT / ".cache" / "keops"))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. An explicit ``cuda`` without a GPU raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    return dev


@lru_cache(maxsize=None)
def device_name(device_type: str) -> str:
    """Human-readable hardware name, e.g. 'NVIDIA H100 80GB HBM3' or 'AMD EPYC 7B13 (2 threads)'."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


@lru_cache(maxsize=None)
def git_commit() -> str:
    """The project's HEAD commit, with '-dirty' when the work tree has uncommitted changes; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")
