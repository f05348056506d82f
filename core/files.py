"""Atomic file writes: a reader, a concurrent writer or a crash never sees a partial file under its final name."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "write_atomic"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a unique temporary name in ``path``'s folder to write; when the block ends normally the file is fsynced,
    renamed to ``path`` and the folder fsynced. The rename is atomic on a POSIX file system (NFS included): readers
    and concurrent writers never see a partial file, the last rename wins, and a crash leaves the old file or the new
    one. The temporary is removed whatever happens (``.<name>.<random>.tmp`` stays only if a kill prevents it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")   # unique across processes and hosts
    try:
        yield tmp
        with open(tmp, "rb") as fh:   # the bytes reach the disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)       # and the rename itself survives a crash of the machine
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``content`` (text, bytes, or ``content(tmp)`` writes the file) to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
