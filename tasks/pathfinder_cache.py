"""Chunked, resumable, parallel Pathfinder generation into a Parquet shard cache, and its loader.

Layout of a generated set ``<data_dir>/pathfinder/generated/<name>/`` (N images of S x S):

  * ``params.json``: the generator settings, N, data seed, chunk size and ``FORMAT_VERSION``; written first.
    A folder whose record differs (other settings, a new format) has its shards and arrays deleted.
  * ``shard-00012.parquet``: examples [12 C, min(13 C, N)) for chunk size C (fixed boundaries by index, so the
    shards do not depend on the worker count); columns ``index`` int64, ``label`` int8 (drawn per image), ``image``
    fixed_size_list<uint8>[S^2] (row-major); zstd, with page checksums. Each is written to a ``.<name>.<random>.tmp``
    file and renamed (``core.files``), so an interrupted run (even ``kill -9``) leaves complete shards and at most stray
    temporary files, which the next run deletes.
  * ``images.npy`` (N, S, S) uint8 and ``labels.npy`` (N,) uint8, assembled from the shards once all exist;
    loaded with ``mmap_mode='r'`` (Path-X is 200,000 x 16,384 bytes = 3.3 GB, never read whole). Disk for
    200,000 hard images: Pathfinder-32 ~31 MB of shards (~155 B/image) + 205 MB; Path-X ~150 MB + 3.3 GB.
  * ``complete.json``: the finished marker: the record, each shard's name, rows, bytes and sha256, and a sha256
    over that list. Loading trusts a folder whose marker matches the wanted record and whose files have the
    recorded sizes; anything else revalidates every shard (readable with checksums, right row count and
    indices), regenerates the missing or broken ones and assembles the arrays again.

One process generates a folder at a time (a second would delete the first's temporary files).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import queue as queue_module
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from core.files import atomic_path, write_atomic
from tasks import pathfinder_gen as gen

__all__ = ["CHUNK_SIZE", "shard_name", "ensure_generated", "load_generated", "read_shard"]

CHUNK_SIZE = 2000                    # images per shard
GROUP_SIZE = {32: 64, 128: 16}       # per image size: images drawn together (sharing numpy calls; same result)
MARKER, RECORD = "complete.json", "params.json"
_progress: Any = None                # a worker's progress queue (set by the pool initializer)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def _record(p: gen.PathfinderParams, n_examples: int, data_seed: int, chunk_size: int) -> dict[str, Any]:
    return {"format_version": gen.FORMAT_VERSION,
            "params": {**json.loads(json.dumps(asdict(p))), "n_examples": n_examples, "data_seed": data_seed,
                       "chunk_size": chunk_size}}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, array)


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _make_shard(job: tuple[Path, gen.PathfinderParams, int, int, int, int],
                report: Callable[[int], None] | None = None) -> int:
    """Draw examples start..stop-1 and write them as shard k (atomically); ``report(1)`` after each image."""
    folder, p, data_seed, k, start, stop = job
    report = report or _progress.put
    images = np.empty((stop - start, p.image_size ** 2), np.uint8)    # (n, S^2)
    labels = np.empty(stop - start, np.int8)                           # drawn per image, as snakes2 did
    group = GROUP_SIZE.get(p.image_size, 8)
    for first in range(start, stop, group):
        for i, ex in enumerate(gen.sample_examples(p, data_seed, range(first, min(first + group, stop))), first):
            images[i - start] = gen.render(ex, p).reshape(-1)
            labels[i - start] = ex.label
        report(min(group, stop - first))
    index = np.arange(start, stop, dtype=np.int64)
    table = pa.table({"index": index, "label": labels,
                      "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), p.image_size ** 2)})
    path = folder / shard_name(k)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_page_checksum=True))
    return k


def read_shard(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shard's index (n,) int64, label (n,) int8 and images (n, S, S) uint8; raises on any damage."""
    table = pq.read_table(path, page_checksum_verification=True)
    image = table.column("image").combine_chunks()
    if image.type != pa.list_(pa.uint8(), size * size):
        raise ValueError(f"{path}: image column is {image.type}, expected fixed_size_list<uint8>[{size * size}]")
    images = image.flatten().to_numpy().reshape(-1, size, size)
    return table.column("index").to_numpy(), table.column("label").to_numpy(), images


def _shard_ok(path: Path, size: int, start: int, stop: int) -> bool:
    try:
        index, label, images = read_shard(path, size)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return False
    return len(images) == stop - start and np.array_equal(index, np.arange(start, stop)) and bool(
        np.isin(label, (0, 1)).all())


def _marker_ok(folder: Path, wanted: dict[str, Any], size: int) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
        n = wanted["params"]["n_examples"]
        return (marker["record"] == wanted and all((folder / s["name"]).stat().st_size == s["bytes"]
                                                   for s in marker["shards"])
                and (folder / "images.npy").stat().st_size == marker["images_bytes"]
                and (folder / "labels.npy").stat().st_size == marker["labels_bytes"]
                and marker["images_shape"] == [n, size, size])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run_jobs(jobs: list[tuple], workers: int, bar: tqdm) -> None:
    """Make the shards of ``jobs``: in this process (workers 0) or a spawn pool, updating ``bar`` per image."""
    if not jobs:
        return
    if workers <= 0 or len(jobs) == 1:  # a pool for one shard would only add its start-up
        for job in jobs:
            _make_shard(job, bar.update)
        return
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(progress,)) as pool:
        pending = [pool.apply_async(_make_shard, (job,)) for job in jobs]
        while pending:
            try:
                bar.update(progress.get(timeout=0.2))
            except queue_module.Empty:
                pass
            for result in [r for r in pending if r.ready()]:
                result.get()  # re-raises a worker's error
                pending.remove(result)
    bar.update(bar.total - bar.n)


def _init_worker(progress: Any) -> None:
    global _progress
    _progress = progress


def _assemble(folder: Path, wanted: dict[str, Any], bounds: list[tuple[int, int]], size: int) -> None:
    """images.npy and labels.npy from the shards, then the finished marker."""
    n = wanted["params"]["n_examples"]
    labels = np.empty(n, np.uint8)
    shards = []
    with atomic_path(folder / "images.npy") as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        for k, (start, stop) in enumerate(bounds):
            path = folder / shard_name(k)
            _, labels[start:stop], images[start:stop] = read_shard(path, size)
            shards.append({"name": path.name, "rows": stop - start, "bytes": path.stat().st_size,
                           "sha256": _sha256(path)})
        images.flush()
        del images
    write_atomic(folder / "labels.npy", lambda tmp: _save_npy(tmp, labels))
    listing = json.dumps(shards, sort_keys=True).encode()
    marker = {"record": wanted, "shards": shards, "sha256": hashlib.sha256(listing).hexdigest(),
              "images_shape": [n, size, size], "images_bytes": (folder / "images.npy").stat().st_size,
              "labels_bytes": (folder / "labels.npy").stat().st_size}
    write_atomic(folder / MARKER, (json.dumps(marker, indent=1) + "\n").encode())


def ensure_generated(folder: Path, p: gen.PathfinderParams, n_examples: int, data_seed: int, workers: int = 0,
                     progress: bool = True, chunk_size: int = CHUNK_SIZE) -> int:
    """Make ``folder`` hold the N images for these settings (layout: module docstring), generating only the
    shards that are missing or damaged; returns how many shards it generated (0: the cache was complete).

    Args:
        folder: the generated set's folder (created).
        p: generator settings; n_examples: N; data_seed: example i is drawn from ``[data_seed, i]``.
        workers: generator processes (0: this process); the images do not depend on it.
        progress: a progress bar over images.
        chunk_size: images per shard (part of the record: another value starts over).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted, size = _record(p, n_examples, data_seed, chunk_size), p.image_size
    if _marker_ok(folder, wanted, size):
        return 0
    (folder / MARKER).unlink(missing_ok=True)
    for stray in folder.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    try:
        same = json.loads((folder / RECORD).read_text()) == wanted
    except (OSError, ValueError):
        same = False
    if not same:  # another setting or format: nothing here can be reused
        for old in [*folder.glob("shard-*.parquet"), folder / "images.npy", folder / "labels.npy"]:
            old.unlink(missing_ok=True)
        write_atomic(folder / RECORD, (json.dumps(wanted, indent=2) + "\n").encode())
    bounds = [(s, min(s + chunk_size, n_examples)) for s in range(0, n_examples, chunk_size)]
    expected = {shard_name(k) for k in range(len(bounds))}
    for extra in folder.glob("shard-*.parquet"):
        if extra.name not in expected:
            extra.unlink()
    jobs = [(folder, p, data_seed, k, start, stop) for k, (start, stop) in enumerate(bounds)
            if not _shard_ok(folder / shard_name(k), size, start, stop)]
    todo = sum(stop - start for *_, start, stop in jobs)
    with tqdm(total=n_examples, initial=n_examples - todo, desc=f"Pathfinder {size}px: generating", unit="img",
              disable=not progress) as bar:
        _run_jobs(jobs, workers, bar)
    _assemble(folder, wanted, bounds, size)
    return len(jobs)


def load_generated(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A complete generated set: images (N, S, S) uint8, memory-mapped read-only, and labels (N,) uint8."""
    folder = Path(folder)
    return np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy")
