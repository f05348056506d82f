"""Checkpoints that survive ``kill -9``, and per-run locks, so a suite restarted after a crash resumes where it was.

A run's checkpoint ``<results_dir>/checkpoints/<task>__<model>__seed<seed>.pt`` holds everything the training loop
needs to continue as if never stopped: model, optimizer, schedule and gradient-scaler states, the RNG states of
Python, NumPy and torch (CPU and every CUDA device; one set per rank under torchrun) and of the generators layers
own (the Performer's feature draws), the position in the data (the
step; the batch order is a function of seed and epoch, see harness/distributed.py), the best validation accuracy with
its weights, the elapsed training time (so a time budget keeps counting), the throughput counters, the peak
memory so far and the learning curve up to that step (harness/history.py). It is written to a temporary file, flushed to disk and renamed over the old one, so a kill at any
moment leaves either the old or the new checkpoint, never a torn one.

A checkpoint carries the hash of the resolved run config that wrote it; a run whose config hashes differently refuses
it with a message saying how to proceed, rather than silently continuing another experiment. The checkpoint of a run
is deleted once its record is stored with a final status (``ok`` or ``diverged``); after ``oom`` or an error it is
kept, to resume from once the cause is fixed.

A lock ``<task>__<model>__seed<seed>.lock`` (created with O_EXCL, holding host and pid) keeps a second ``run_suite.py``
on the same results folder from training the same run at the same time. A lock whose process is gone (same host, pid
not alive), or that nobody has touched for ``stale_s`` seconds (another host; the holder touches it every minute),
is stale and taken over with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = 3  # bumped when the checkpoint layout changes; another format is refused like another config (3: history)


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists for this run but was written by another config (or checkpoint format)."""


@dataclass
class Checkpointer:
    """Where and how often one run saves its training state.

    Args:
        path: the checkpoint file.
        config_hash: hash of the resolved config of the run; stored in, and checked against, the checkpoint.
        every_steps: save every this many optimizer steps (None: not by steps).
        every_s: save when this many seconds passed since the last save (None: not by time).
    A checkpoint is also written at the end of every epoch.
    """
    path: Path
    config_hash: str
    every_steps: int | None = None
    every_s: float | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._last_save = time.monotonic()
        self.failed_saves = 0

    def due(self, step: int) -> bool:
        """Whether an interval save is due after ``step`` (end-of-epoch saves are the caller's)."""
        by_steps = self.every_steps is not None and self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_s is not None and time.monotonic() - self._last_save >= self.every_s
        return by_steps or by_time

    def load(self) -> dict[str, Any] | None:
        """The stored state, or None when there is none (an unreadable file is moved aside with a warning).

        Raises:
            CheckpointMismatch: the checkpoint was written by another config or format.
        """
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            found_format, found_hash = state["format"], state["config_hash"]
        except Exception as exc:  # truncated or corrupt: unusable, but kept for inspection
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            log.warning("checkpoint %s is unreadable (%s: %s); moved to %s, the run starts afresh",
                        self.path, type(exc).__name__, exc, aside.name)
            return None
        if found_format != FORMAT or found_hash != self.config_hash:
            what = (f"config {found_hash}, this run's config is {self.config_hash}" if found_format == FORMAT
                    else f"checkpoint format {found_format}, this version reads format {FORMAT}")
            raise CheckpointMismatch(
                f"checkpoint {self.path} belongs to another experiment ({what}); not loaded. To resume it, run with the "
                f"config that wrote it; to start this run afresh, delete the file or run with resume=false")
        return state

    def save(self, state: dict[str, Any]) -> bool:
        """Write ``state`` atomically; on failure (e.g. a full disk) warn, keep the previous checkpoint, return False."""
        self._last_save = time.monotonic()  # a failed save waits for the next interval too
        state = {**state, "format": FORMAT, "config_hash": self.config_hash}

        def dump(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)

        try:
            write_atomic(self.path, dump)
        except (OSError, RuntimeError) as exc:
            if not _is_write_failure(exc):
                raise
            self.failed_saves += 1
            log.warning("checkpoint %s not written (%s%s); the previous one is kept and training goes on", self.path,
                        exc, _free_space(self.path.parent))
            return False
        return True

    def read(self) -> dict[str, Any]:
        """The stored state, unchecked (for the other ranks, once rank 0's ``load`` has judged the file)."""
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def stored_hash(self) -> str | None:
        """The config hash the stored checkpoint carries (None: no checkpoint, or unreadable); reads no tensors."""
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False, mmap=True).get("config_hash")
        except Exception:  # noqa: BLE001 - absent or unreadable: no hash to report
            return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sweep_temporaries()

    def sweep_temporaries(self) -> None:
        """Delete temporaries a kill inside a save left behind (call while holding the run's lock)."""
        for stray in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stray.unlink(missing_ok=True)


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError, or the RuntimeError torch's zip writer raises when the file system refuses its bytes (a full disk
    gives ``[enforce fail at inline_container.cc:...] unexpected pos ...`` or ``file write failed``), not a bug."""
    return isinstance(exc, OSError) or "inline_container" in str(exc) or "file write failed" in str(exc)


def _free_space(folder: Path) -> str:
    try:
        return f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB free under {folder}"
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive claim on one run in a results folder, for as long as one process trains it.

    While held, a daemon thread touches the file every ``heartbeat_s`` seconds, so processes on other hosts (which
    cannot see whether the pid lives) judge it by age: untouched for ``stale_s`` seconds means its holder is gone.
    """

    def __init__(self, path: Path, stale_s: float = 3600.0, heartbeat_s: float = 60.0):
        self.path, self.stale_s, self.heartbeat_s = Path(path), stale_s, heartbeat_s
        self.held = False
        self._me = {"pid": os.getpid(), "host": socket.gethostname()}
        self._stop = threading.Event()

    def _read(self, path: Path) -> tuple[str, dict[str, Any] | None]:
        try:
            text = path.read_text()
        except OSError:
            return "", None
        try:
            return text, json.loads(text)
        except ValueError:
            return text, None

    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        if holder is None:  # empty or garbled: a writer died between create and write
            return age > 60
        if holder.get("host") == self._me["host"]:
            return holder.get("pid") == self._me["pid"] or not _pid_alive(int(holder.get("pid", -1)))
        return age > self.stale_s

    def acquire(self) -> str | None:
        """Take the lock; None on success, else who holds it (e.g. 'pid 123 on node7 since 2026-11-22T10:00:00')."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text, holder = self._read(self.path)
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
                       else "a process that is writing its lock")
                if not self._is_stale(holder):
                    return who
                # take it over by renaming it aside: of several processes judging it stale, one rename wins
                aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                if self._read(aside)[0] != text:  # a fresh lock replaced the stale one meanwhile: give it back
                    try:
                        os.link(aside, self.path)
                    except OSError:
                        pass
                    aside.unlink(missing_ok=True)
                    continue
                aside.unlink(missing_ok=True)
                log.warning("removing stale lock %s (%s)", self.path, f"{who}: gone" if holder else "unreadable")
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({**self._me, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh)
            self.held = True
            self._stop.clear()
            threading.Thread(target=self._heartbeat, daemon=True, name=f"lock {self.path.name}").start()
            return None
        return "a process that keeps re-creating the lock"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock if it is still ours (one taken over by another process is left to it)."""
        if not self.held:
            return
        self._stop.set()
        self.held = False
        holder = self._read(self.path)[1]
        if holder is not None and {k: holder.get(k) for k in self._me} == self._me:
            self.path.unlink(missing_ok=True)


__all__ = ["CheckpointMismatch", "Checkpointer", "RunLock"]
