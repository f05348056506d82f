"""CIFAR-10 as pixel sequences: ``image`` (LRA, grayscale) and ``scifar`` (sequential colour), 10 classes, L = 1024.

Each 32x32 image is read row-major (pixel ``p = 32 * row + col``), one pixel per step:

    image   tokens: (L,) int64 ids = gray level + 1 in 1..256 (0 is padding), vocab 257
            real:   (L, 1) float32 (gray / 255 - 122.6 / 255) / (61.0 / 255)
    scifar  real:   (L, 3) float32 (rgb / 255 - mean_c) / std_c, c = R, G, B

Gray levels follow LRA (``lra_benchmarks/image/input_pipeline.py``: ``tf.image.rgb_to_grayscale`` on the uint8
image), reproduced in numpy float32 by ``rgb_to_grayscale_tf``. Normalisation constants are those of the S4 repository
(``state-spaces/s4``, ``src/dataloaders/basic.py``: grayscale mean 122.6/255, std 61.0/255; colour mean
(0.4914, 0.4822, 0.4465), std (0.247, 0.243, 0.261)).

Data (either, under ``<data_dir>/cifar10/`` or the ``path`` option):
    pickle  ``cifar-10-batches-py/`` from cifar-10-python.tar.gz: ``data_batch_1..5`` and ``test_batch``, python-2
            pickles of dicts with b"data" (10000, 3072) uint8, channel-major (1024 R, 1024 G, 1024 B, each plane
            row-major 32x32) and b"labels" (10000 ints)
    hf      the Hugging Face ``cifar10`` parquet files ``train-*.parquet``, ``test-*.parquet`` (in the folder or its
            ``plain_text/``): columns ``img`` (struct {bytes: PNG, path}) and ``label``; decoded once, cached as
            ``<data_dir>/cifar10/cache/hf-<sha256 of the parquet files>.npz``
Both are held as (N, 3072) channel-major uint8, in file order. Validation: ``int(N * 0.9)`` / rest of the training
images after ``torch.randperm(N, generator=manual_seed(split_seed))``, i.e. ``torch.utils.data.random_split``, as S4
does (split_seed 42 gives S4's 45,000 / 5,000 split); the test split is the 10,000 test images.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.fetch import Archive, missing, register_archives
from tasks.registry import Task, TaskSpec, register_task

__all__ = ["ARCHIVE", "rgb_to_grayscale_tf", "load_pickle_batch", "decode_parquet", "load_cifar10", "split_indices",
           "is_benchmark", "CifarSequences", "image", "scifar"]

ARCHIVE = Archive(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", dest="cifar10",
                  root="cifar-10-batches-py", size_bytes=170_498_071, md5="c58f30108f718f92721af3b95e74349a",
                  note="CIFAR-10 python pickles (cifar-10-batches-py/); md5 as published on the CIFAR page")
register_archives("image", ARCHIVE)
register_archives("scifar", ARCHIVE)

N_CLASSES, SIDE, L = 10, 32, 1024
PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
SOURCES = ("auto", "pickle", "hf")
INPUT_MODES = ("tokens", "real")
VAL_FRAC = 0.1  # of the training images; 5,000 of 50,000
TF_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
GRAY_MEAN, GRAY_STD = 122.6 / 255.0, 61.0 / 255.0                           # S4, grayscale CIFAR
RGB_MEAN, RGB_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)          # S4, colour CIFAR


def rgb_to_grayscale_tf(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, 3072) channel-major uint8 -> (N, 1024) uint8 gray, as ``tf.image.rgb_to_grayscale`` on uint8 computes it.

    TF: ``convert_image_dtype`` to float32 (x * float32(1/255)), the dot product with float32 weights
    [0.2989, 0.5870, 0.1140], then ``convert_image_dtype`` back: multiply by 255.5 and cast, which truncates. All in
    float32 with unfused products summed R, G, B in order; about 50 of the 2^24 RGB triples lie within float32 rounding
    of an integer and would move by one level under a fused multiply-add or another summation order.
    """
    out = np.empty((len(images), L), dtype=np.uint8)
    scale, w = np.float32(1.0 / 255.0), TF_GRAY_WEIGHTS
    for start in range(0, len(images), chunk):
        planes = images[start:start + chunk].reshape(-1, 3, L).astype(np.float32) * scale  # (n, 3, L) in [0, 1]
        gray = planes[:, 0] * w[0] + planes[:, 1] * w[1] + planes[:, 2] * w[2]             # (n, L) float32
        out[start:start + chunk] = (gray * np.float32(255.5)).astype(np.uint8)           # truncation toward zero
    return out


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"{where}: labels outside 0..{N_CLASSES - 1} (found {labels.min()}..{labels.max()})")
    return labels


def load_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` file -> images (n, 3072) uint8 channel-major, labels (n,) int64.

    Raises ValueError naming the file when it is truncated, corrupt or not in the CIFAR-10 layout.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # python-2 pickle: keys are bytes
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle (truncated or corrupt? {err!r}); "
                         f"delete it and stage the data again") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * L or len(labels) != len(data):
        raise ValueError(f"{path}: b'data' is {data.dtype} {data.shape} with {len(labels)} labels; "
                         f"expected uint8 (n, {3 * L}) with n labels")
    return data, _check_labels(labels, str(path))


def _decode_png(png: bytes, where: str) -> np.ndarray:
    """PNG bytes of one 32x32 RGB image -> (3072,) uint8 channel-major, the pickle layout."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            if img.mode != "RGB" or img.size != (SIDE, SIDE):
                raise ValueError(f"{where}: a {img.mode} {img.size[0]}x{img.size[1]} image; expected RGB 32x32")
            hwc = np.asarray(img, dtype=np.uint8)                                   # (32, 32, 3)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{where}: not a readable PNG ({err})") from err
    return hwc.transpose(2, 0, 1).reshape(3 * L)                                    # (3072,) R plane, G, B


def decode_parquet(files: list[Path], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hugging Face ``cifar10`` parquet shards -> images (n, 3072) uint8 channel-major, labels (n,) int64."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    images, labels = [], []
    for path in files:
        try:
            table = pq.read_table(path, columns=["img", "label"])
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            raise ValueError(f"{path}: not a readable CIFAR-10 parquet file with columns img, label ({err})") from err
        img = table.column("img").combine_chunks()
        if not pa.types.is_struct(img.type) or img.type.get_field_index("bytes") < 0:
            raise ValueError(f"{path}: column img is {img.type}; expected struct<bytes: binary, path: string>")
        pngs = img.field("bytes").to_pylist()
        for row, png in enumerate(tqdm(pngs, desc=f"CIFAR-10: decoding {path.name}", disable=not progress)):
            if png is None:
                raise ValueError(f"{path}, row {row}: img.bytes is empty")
            images.append(_decode_png(png, f"{path}, row {row}"))
        labels.append(_check_labels(table.column("label").to_numpy().astype(np.int64), str(path)))
    return np.stack(images) if images else np.empty((0, 3 * L), np.uint8), np.concatenate(labels)


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _load_hf_cached(files: dict[str, list[Path]], cache_dir: Path, progress: bool) -> tuple[dict, Path]:
    """Decode the parquet files once; later calls read ``hf-<hash>.npz``. A changed file changes the hash."""
    cache = cache_dir / f"hf-{_sha256(files['train'] + files['test'])[:20]}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "test")}, cache
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable cache: decode again and overwrite it
    splits = {s: decode_parquet(files[s], progress) for s in ("train", "test")}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, **{f"{s}_{k}": a for s, (im, lb) in splits.items() for k, a in (("images", im), ("labels", lb))})
    tmp.replace(cache)
    for stale in cache_dir.glob("hf-*.npz"):
        if stale != cache:
            stale.unlink()
    return splits, cache


def _find_pickles(root: Path) -> tuple[Path | None, list[str]]:
    """The folder holding the six pickles (``root/cifar-10-batches-py`` or ``root``), else the files missing."""
    names = [n for split in PICKLE_FILES.values() for n in split]
    for folder in (root / "cifar-10-batches-py", root):
        if all((folder / n).is_file() for n in names):
            return folder, []
    folder = root / "cifar-10-batches-py"
    return None, [n for n in names if not (folder / n).is_file()]


def _find_parquet(root: Path) -> dict[str, list[Path]] | None:
    for folder in (root, root / "plain_text"):
        found = {s: sorted(folder.glob(f"{s}-*.parquet")) for s in ("train", "test")}
        if found["train"] and found["test"]:
            return found
    return None


def load_cifar10(task: str, data_dir: Path, source: str = "auto", path: str | None = None,
                 progress: bool = True) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Find and load CIFAR-10: ``{"train"|"test": (images (N, 3072) uint8, labels (N,) int64)}`` and source info."""
    if source not in SOURCES:
        raise ValueError(f"{task}: unknown source {source!r}; valid: {', '.join(SOURCES)}")
    root = Path(path).expanduser() if path is not None else Path(data_dir) / "cifar10"
    pickle_dir, pickle_missing = _find_pickles(root)
    parquet = _find_parquet(root)
    if source == "pickle" or (source == "auto" and pickle_dir is not None):
        if pickle_dir is None:
            raise missing(task, data_dir, f"CIFAR-10 pickles {', '.join(pickle_missing)} in {root / 'cifar-10-batches-py'}")
        splits = {}
        for split, names in PICKLE_FILES.items():
            parts = [load_pickle_batch(pickle_dir / n) for n in names]
            splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return splits, {"source": "pickle", "path": str(pickle_dir)}
    if parquet is None:
        raise missing(task, data_dir, f"CIFAR-10 (cifar-10-batches-py/ or the Hugging Face cifar10 parquet files "
                                      f"train-*.parquet, test-*.parquet) under {root}")
    splits, cache = _load_hf_cached(parquet, Path(data_dir) / "cifar10" / "cache", progress)
    return splits, {"source": "hf", "path": str(parquet["train"][0].parent), "cache": str(cache),
                    "files": [p.name for s in ("train", "test") for p in parquet[s]]}


def split_indices(n: int, split_seed: int, val_frac: float = VAL_FRAC) -> tuple[torch.Tensor, torch.Tensor]:
    """Train / validation indices into ``n`` training images, exactly as ``random_split(.., [int(n * (1 - f)), rest])``."""
    n_train = int(n * (1.0 - val_frac))
    if n_train < 1 or n_train == n:
        raise ValueError(f"cannot carve a {val_frac:.0%} validation split from {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))  # (n,)
    return perm[:n_train], perm[n_train:]


def is_benchmark(limits: dict[str, int | None], n_train_source: int, n_test_source: int) -> bool:
    """The published configuration: all 50,000 training and 10,000 test images, no split limited."""
    return all(v is None for v in limits.values()) and (n_train_source, n_test_source) == (50_000, 10_000)


class CifarSequences(Dataset):
    """Pixel sequences held as uint8, encoded per item: gray (N, L) -> tokens or (L, 1); colour (N, L, 3) -> (L, 3)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, mode: str) -> None:
        self.pixels, self.labels, self.mode = pixels, labels, mode  # (N, L) or (N, L, 3) uint8, (N,) int64
        self.mean = torch.tensor(RGB_MEAN if mode == "rgb" else [GRAY_MEAN], dtype=torch.float32)
        self.std = torch.tensor(RGB_STD if mode == "rgb" else [GRAY_STD], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self.pixels[i]
        if self.mode == "tokens":
            inputs = x.long() + 1                                             # (L,) in 1..256
        else:
            x = x.reshape(L, -1).float() / 255.0                              # (L, 1) or (L, 3) in [0, 1]
            inputs = (x - self.mean) / self.std                               # (L, D) float32
        return {"inputs": inputs, "label": int(self.labels[i])}


def _build(task: str, data_dir: Path, mode: str, source: str, path: str | None, split_seed: int,
           n_train: int | None, n_val: int | None, n_test: int | None, batch_size: int,
           num_workers: int, progress: bool) -> Task:
    splits, info = load_cifar10(task, data_dir, source, path, progress)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    train_idx, val_idx = split_indices(len(train_y), split_seed)
    chosen = {"train": (train_x, train_y, train_idx.numpy()), "val": (train_x, train_y, val_idx.numpy()),
              "test": (test_x, test_y, np.arange(len(test_y)))}
    limits = {"train": n_train, "val": n_val, "test": n_test}
    sets = {}
    for split, (x, y, idx) in chosen.items():
        limit = limits[split]
        if limit is not None:
            if not 1 <= limit <= len(idx):
                raise ValueError(f"{task}: n_{split}={limit} outside 1..{len(idx)} (the {split} images available)")
            idx = idx[:limit]
        images = x[idx]                                                        # (n, 3072) channel-major
        if mode == "rgb":
            pixels = images.reshape(-1, 3, L).transpose(0, 2, 1).copy()        # (n, L, 3) row-major pixels
        else:
            pixels = rgb_to_grayscale_tf(images)                               # (n, L)
        sets[split] = CifarSequences(torch.from_numpy(pixels), torch.from_numpy(y[idx].astype(np.int64)), mode)
    counts = np.bincount(sets["test"].labels.numpy(), minlength=N_CLASSES)
    info.update({
        "input_mode": mode if mode != "rgb" else "real", "order": "row-major pixels, 32x32",
        "split_seed": split_seed, "val_frac": VAL_FRAC, "n_examples": {s: len(ds) for s, ds in sets.items()},
        "majority_frac": float(counts.max() / max(1, counts.sum())),
        "benchmark": is_benchmark(limits, len(train_y), len(test_y))})
    if mode != "rgb":
        info["grayscale"] = "tf.image.rgb_to_grayscale: float32 weights (0.2989, 0.5870, 0.1140), x 255.5, truncated"
    if mode != "tokens":
        mean, std = (RGB_MEAN, RGB_STD) if mode == "rgb" else ((GRAY_MEAN,), (GRAY_STD,))
        info["normalization"] = {"mean": list(mean), "std": list(std), "of": "pixel / 255",
                                 "source": "state-spaces/s4 src/dataloaders/basic.py"}
    spec = dataclasses.replace(_shape(task, {"input_mode": mode}), info=info)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)


def _shape(task: str, o: dict) -> TaskSpec:
    mode = "rgb" if task == "scifar" else o["input_mode"]
    return TaskSpec(name=task, n_classes=N_CLASSES, l_max=L, chance_acc=1.0 / N_CLASSES,
                    vocab_size=257 if mode == "tokens" else None, d_input=None if mode == "tokens" else (3 if mode == "rgb" else 1))

@register_task("image", shape=functools.partial(_shape, "image"))
def image(data_dir: Path, input_mode: str = "tokens", source: str = "auto", path: str | None = None,
          split_seed: int = 42, n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
          batch_size: int = 50, num_workers: int = 0, progress: bool = True) -> Task:
    """Build LRA Image: grayscale CIFAR-10 as 1024 pixels, 10 classes.

    Args:
        data_dir: root data directory; the data live in ``<data_dir>/cifar10/`` (``python -m tasks prepare image``).
        input_mode: ``tokens`` (gray level + 1, vocab 257, as LRA) or ``real`` ((L, 1) normalised as S4).
        source: ``auto`` (the pickles if staged, else the parquet files), ``pickle`` or ``hf``.
        path: folder holding the data instead of ``<data_dir>/cifar10``.
        split_seed: seed of the fixed train/validation split (recorded in ``spec.info``).
        n_train, n_val, n_test: keep only the first n of a split (quick runs; ``benchmark`` becomes False).
        batch_size: examples per batch.
        num_workers: DataLoader workers.
        progress: progress bar while decoding parquet files.

    Raises:
        DatasetMissingError: the data are not staged (the message names ``python -m tasks prepare image``).
        ValueError: an unknown option value, or a truncated/corrupt file (the message names it).
    """
    if input_mode not in INPUT_MODES:
        raise ValueError(f"image: unknown input_mode {input_mode!r}; valid: {', '.join(INPUT_MODES)}")
    return _build("image", data_dir, input_mode, source, path, split_seed, n_train, n_val, n_test, batch_size,
                  num_workers, progress)


@register_task("scifar", shape=functools.partial(_shape, "scifar"))
def scifar(data_dir: Path, source: str = "auto", path: str | None = None, split_seed: int = 42,
           n_train: int | None = None, n_val: int | None = None, n_test: int | None = None, batch_size: int = 50,
           num_workers: int = 0, progress: bool = True) -> Task:
    """Build sequential CIFAR-10 in colour: 1024 steps of (R, G, B) normalised per channel, 10 classes.

    Args: as ``image`` (without ``input_mode``); the data are shared with it (``python -m tasks prepare scifar``).

    Raises:
        DatasetMissingError: the data are not staged (the message names ``python -m tasks prepare scifar``).
        ValueError: an unknown option value, or a truncated/corrupt file (the message names it).
    """
    return _build("scifar", data_dir, "rgb", source, path, split_seed, n_train, n_val, n_test, batch_size,
                  num_workers, progress)
