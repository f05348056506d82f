"""Pathfinder and Path-X (LRA): are the two circular markers joined by one dashed contour? 2 classes.

Images are S x S grayscale (S = 32 for ``pathfinder``, 128 for ``pathx``), flattened row-major into L = S^2
steps. Input modes: ``real`` gives (L, 1) float32 pixel / 255 (d_input 1); ``tokens`` gives (L,) int64 ids
pixel + 1 (vocabulary 257, id 0 is padding). Batches: inputs (B, L, 1) or (B, L), lengths (B,), labels (B,).

Data, by ``source``:
  * ``generate`` (default): drawn by ``tasks.pathfinder_gen`` with the LRA generator settings, in chunks of
    2,000 images by ``workers`` processes into Parquet shards under ``<data_dir>/pathfinder/generated/<name>/``
    (resumable: an interrupted run keeps its finished shards), then assembled into images.npy (N, S, S) uint8,
    served memory-mapped, and labels.npy (layout: ``tasks.pathfinder_cache``). The generator (format 4)
    follows snakes2 step for step, labels drawn per image as there. Generating all 200,000 hard images takes
    ~6 min (Pathfinder-32, ~540/s) and ~65 min (Path-X, ~52/s) with 2 processes on a 2-vCPU AMD EPYC
    (~8 and ~90 min in one process: ~400/s and ~37/s; measured with another job on the machine, not yet in
    results/pathfinder/, whose generation_*.md are format 3 on a Xeon). It is *not* the released data, so
    ``info["benchmark"]`` is False and ``info["generated"]`` True. Learnability was measured on format 3 (a
    72k-parameter CNN reached 96% test accuracy on 20,000 easy images in 4 minutes on that CPU; at hard it stayed
    at chance for the 6 minutes tried; benchmarks/pathfinder_learnability.py -> results/pathfinder/
    learnability_*.md) and is to be re-run on format 4.
  * ``release``: the LRA release (``lra_release.gz``), ``pathfinder{S}/<difficulty folder>/`` with
    ``imgs/<k>/sample_<i>.png`` and ``metadata/<k>.npy``; despite the suffix each metadata file is text, one
    line per image, whitespace-separated: field 0 the image sub-folder (``imgs/<k>``), field 1 the file name,
    field 3 the label (as read by lra_benchmarks/data/pathfinder.py and state-spaces/s4's PathFinderDataset).
    The PNGs are decoded once into ``<data_dir>/pathfinder/cache/<name>-<digest>/`` (digest of the metadata
    and of every listed image's size and mtime, so a changed release is decoded again). A PNG that does not
    decode (the release has a blank file, pathfinder32/curv_baseline/imgs/0/sample_172.png, which s4 also
    skips) is skipped with a warning and named in ``info["skipped"]``; more than 1% unreadable (at least 10
    allowed) raises ValueError naming the first ones. ``benchmark`` is True for the release at difficulty hard.
  * ``auto``: ``release`` when the release is staged under the data dir (``python -m tasks prepare pathfinder
    --release`` or ``--from``) or ``release_dir`` is given, else ``generate``; ``info["source"]`` and
    ``info["source_reason"]`` say which and why (``python -m tasks status`` says it before a run).

Difficulty = contour length: easy (curv_baseline, 6 paddles), intermediate (curv_contour_length_9), hard
(curv_contour_length_14, the LRA benchmark). Splits: 80/10/10 of all N images (val and test int(0.1 N) each)
by ``torch.randperm(N)`` under ``split_seed``: the same partition as s4's ``random_split`` with seed 42.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.fetch import LRA_RELEASE, missing, register_archives
from tasks.pathfinder_cache import CHUNK_SIZE, ensure_generated, load_generated
from tasks.pathfinder_gen import DIFFICULTIES, FORMAT_VERSION, lra_params
from tasks.registry import Task, TaskSpec, register_task

__all__ = ["RELEASE_FOLDERS", "read_metadata", "load_release", "split_indices", "PathfinderDataset", "pathfinder",
           "pathx"]

RELEASE_FOLDERS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
SOURCES = ("generate", "release", "auto")
RELEASE_N_EXAMPLES = 200_000  # images per difficulty in the release (and the generated default)
INPUT_MODES = ("real", "tokens")
MAX_UNREADABLE_FRAC, MAX_UNREADABLE_MIN = 0.01, 10
# read for source=release, and for source=auto when staged; `prepare --release/--from` builds source=release
register_archives("pathfinder", LRA_RELEASE, optional=True, release_options={"source": "release"})
register_archives("pathx", LRA_RELEASE, optional=True, release_options={"source": "release"})


def read_metadata(folder: Path) -> list[tuple[Path, int]]:
    """(image path, label) of every line of ``folder/metadata/*.npy`` (text), files in numeric order."""
    files = sorted((folder / "metadata").glob("*.npy"), key=lambda f: (not f.stem.isdigit(), int(f.stem) if
                                                                       f.stem.isdigit() else 0, f.name))
    if not files:
        raise ValueError(f"{folder / 'metadata'}: no metadata files (*.npy)")
    out = []
    for file in files:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not a text metadata file (the release's are text despite the .npy suffix)")
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise ValueError(f"{file}, line {number}: expected '<imgs/k> <sample_i.png> <i> <label 0|1> ...', "
                                 f"got {line[:80]!r}")
            out.append((folder / fields[0] / fields[1], int(fields[3])))
    return out


def _digest(listing: list[tuple[Path, int]], folder: Path) -> str:
    """Key of a release copy: its metadata bytes and each listed image's size and modification time."""
    hasher = hashlib.sha256()
    for file in sorted((folder / "metadata").glob("*.npy")):
        hasher.update(file.name.encode() + file.read_bytes())
    for path, _ in listing:
        try:
            st = path.stat()
            hasher.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        except FileNotFoundError:
            hasher.update(f"{path.name}:missing;".encode())
    return hasher.hexdigest()


def _decode(path: Path, size: int) -> np.ndarray | None:
    """One PNG as (size, size) uint8 grayscale; None when it is missing or does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"))
    except (OSError, SyntaxError, ValueError):  # PIL.UnidentifiedImageError and truncated files are OSErrors
        return None
    if pixels.shape != (size, size):
        raise ValueError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected {size}x{size}")
    return pixels


def _decode_all(listing: list[tuple[Path, int]], folder: Path, size: int, out: Path, progress: bool) -> list[str]:
    """Decode every listed image into ``out/images.npy`` (memory-mapped, so Path-X never sits in memory) and
    ``out/labels.npy``, leaving out unreadable ones; returns those, relative to ``folder``."""
    from tqdm import tqdm

    every = np.lib.format.open_memmap(out / "all.npy", mode="w+", dtype=np.uint8, shape=(len(listing), size, size))
    keep, skipped = np.zeros(len(listing), bool), []
    for i, (path, _) in enumerate(tqdm(listing, desc=f"Pathfinder: decoding {folder.name}", unit="img",
                                       disable=not progress)):
        pixels = _decode(path, size)
        if pixels is None:
            skipped.append(str(path.relative_to(folder)))
        else:
            every[i], keep[i] = pixels, True
    if len(skipped) > max(MAX_UNREADABLE_MIN, MAX_UNREADABLE_FRAC * len(listing)):
        raise ValueError(f"{folder}: {len(skipped)} of {len(listing)} listed images are missing or do not decode, "
                         f"e.g. {', '.join(skipped[:5])}; the copy looks damaged: unpack the release again")
    kept = np.flatnonzero(keep)
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(kept), size, size))
    for start in range(0, len(kept), 4096):
        images[start:start + 4096] = every[kept[start:start + 4096]]
    images.flush()
    del images, every
    (out / "all.npy").unlink()
    np.save(out / "labels.npy", np.array([label for _, label in listing], np.uint8)[kept])
    return skipped


def load_release(folder: Path, cache_root: Path, size: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode (once; cached) a release difficulty folder -> images (N, S, S) uint8 (memory-mapped), labels (N,),
    and details (cache folder, digest, images listed, images skipped)."""
    listing = read_metadata(folder)
    digest = _digest(listing, folder)
    cache = cache_root / f"pathfinder{size}-{folder.name}-{digest[:16]}"
    if not (cache / "listing.json").is_file():
        tmp = cache.with_name(f"{cache.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            skipped = _decode_all(listing, folder, size, tmp, progress)
            record = {"release": str(folder), "digest": digest, "n_listed": len(listing), "skipped": skipped}
            (tmp / "listing.json").write_text(json.dumps(record, indent=1) + "\n")
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    record = json.loads((cache / "listing.json").read_text())
    for name in record["skipped"]:
        warnings.warn(f"Pathfinder release: skipped unreadable image {folder / name}", stacklevel=2)
    return (np.load(cache / "images.npy", mmap_mode="r"), np.load(cache / "labels.npy"),
            {"cache_dir": str(cache), **record})


def split_indices(n: int, split_seed: int) -> dict[str, np.ndarray]:
    """80/10/10 split (val and test int(0.1 n) each) of range(n), as torch's random_split assigns them."""
    n_val = n_test = int(0.1 * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
    n_train = n - n_val - n_test
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


class PathfinderDataset(Dataset):
    """Images (N, S, S) uint8 (possibly memory-mapped), served flattened row-major as real values or tokens."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, input_mode: str):
        self.images, self.labels, self.indices, self.tokens = images, labels, indices, input_mode == "tokens"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        pixels = torch.from_numpy(np.array(self.images[j], np.uint8).reshape(-1))  # (L,)
        inputs = pixels.long() + 1 if self.tokens else (pixels.float() / 255).unsqueeze(-1)  # (L,) or (L, 1)
        return {"inputs": inputs, "label": int(self.labels[j])}


def find_release(root: str | Path, size: int, difficulty: str) -> Path | None:
    """The release's ``pathfinder{size}/<difficulty folder>/`` at or below ``root`` (a ``metadata/`` folder in it),
    else None. ``root`` may be that folder, its ``pathfinder{size}/`` parent, the inner or outer ``lra_release/``
    (the archive unpacks to ``lra_release/lra_release/pathfinder32/...``) or the folder holding it."""
    sub, res = RELEASE_FOLDERS[difficulty], f"pathfinder{size}"
    root = Path(root).expanduser()
    for folder in (root / res / sub, root / sub, root, root / "lra_release" / res / sub,
                   root / "lra_release" / "lra_release" / res / sub):
        if (folder / "metadata").is_dir() and (folder is not root or root.name == sub):
            return folder
    return None


def _release_folder(task: str, data_dir: Path, release_dir: str | None, size: int, difficulty: str) -> Path:
    root = Path(release_dir).expanduser() if release_dir is not None else LRA_RELEASE.target(data_dir)
    folder = find_release(root, size, difficulty)
    if folder is None:
        raise missing(task, data_dir, f"the LRA release folder pathfinder{size}/{RELEASE_FOLDERS[difficulty]}/ "
                                      f"(metadata/ and imgs/) under {root}")
    return folder


def choose_source(task: str, size: int, data_dir: Path, source: str | None, release_dir: str | None,
                  difficulty: str, n_examples: int, data_seed: int, contour_length: int | None) -> tuple[str, str]:
    """(``release`` | ``generate``, why) for the builder's options.

    ``auto`` reads the release when ``release_dir`` is given or the difficulty's release folder is staged under the
    data dir, unless a generation option (``contour_length``, ``n_examples`` other than the release's 200,000, a
    nonzero ``data_seed``) asks for generated data; else it generates. None: release when ``release_dir`` is given.
    """
    if source not in (None, *SOURCES):
        raise ValueError(f"{task}: unknown source {source!r}; known: {', '.join(SOURCES)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{task}: unknown difficulty {difficulty!r}; known: {', '.join(DIFFICULTIES)}")
    staged = LRA_RELEASE.target(data_dir)
    found = find_release(staged, size, difficulty)
    at = f"pathfinder{size}/{RELEASE_FOLDERS[difficulty]}"
    if source == "auto":
        if release_dir is not None:
            return "release", f"source auto: release_dir {release_dir} is given"
        asked = ((["contour_length"] if contour_length is not None else [])
                 + (["n_examples"] if n_examples != RELEASE_N_EXAMPLES else []) + (["data_seed"] if data_seed else []))
        if asked:
            return "generate", f"source auto with the generation option(s) {', '.join(asked)}: generated"
        if found is not None:
            return "release", f"source auto: the LRA release is staged at {found}"
        return "generate", (f"source auto: no LRA release {at} staged under {staged}, so generated; python -m "
                            f"tasks prepare {task} --release (or --from <lra_release.gz>) stages it")
    if source is None:
        source = "release" if release_dir is not None else "generate"
        label = "source null" + ("" if release_dir is not None else " without release_dir")
    else:
        label = f"source {source}"
    if release_dir is not None:
        return source, f"{label}: release_dir {release_dir} is given"
    if source == "release":
        return "release", (f"{label}: the LRA release staged at {found}" if found is not None else
                           f"{label}, but no LRA release {at} is staged under {staged}")
    return "generate", f"{label} generates" + ("; the staged LRA release is not read (source auto or release would "
                                                "read it)" if found is not None else "")


def _build(task: str, size: int, data_dir: Path, difficulty: str, source: str | None, release_dir: str | None,
           input_mode: str, n_examples: int, data_seed: int, split_seed: int, contour_length: int | None,
           workers: int, batch_size: int, num_workers: int, progress: bool) -> Task:
    if input_mode not in INPUT_MODES:
        raise ValueError(f"{task}: unknown input_mode {input_mode!r}; known: {', '.join(INPUT_MODES)}")
    data_dir = Path(data_dir)
    source, reason = choose_source(task, size, data_dir, source, release_dir, difficulty, n_examples, data_seed,
                                   contour_length)
    if source == "release":
        if contour_length is not None:
            raise ValueError(f"{task}: contour_length only applies to generated data; the release has difficulty")
        folder = _release_folder(task, data_dir, release_dir, size, difficulty)
        images, labels, details = load_release(folder, data_dir / "pathfinder" / "cache", size, progress)
        origin: dict[str, Any] = {"source": "release", "source_reason": reason, "generated": False,
                                  "release_dir": str(folder),
                                  "data_dir": details["cache_dir"], "n_listed": details["n_listed"],
                                  "skipped": details["skipped"], "benchmark": difficulty == "hard"}
    else:
        if release_dir is not None:
            raise ValueError(f"{task}: release_dir is given but source is 'generate'; use source: release")
        if n_examples < 10:
            raise ValueError(f"{task}: n_examples must be >= 10 so every split gets an example; got {n_examples}")
        params = lra_params(size, contour_length or DIFFICULTIES[difficulty])
        name = f"pathfinder{size}-{RELEASE_FOLDERS[difficulty]}"
        if contour_length is not None or n_examples != 200_000 or data_seed != 0:
            key = json.dumps([params.contour_length, n_examples, data_seed]).encode()
            name += "-" + hashlib.sha256(key).hexdigest()[:10]
        folder = data_dir / "pathfinder" / "generated" / name
        ensure_generated(folder, params, n_examples, data_seed, workers=workers, progress=progress)
        images, labels = load_generated(folder)
        origin = {"source": "generate", "source_reason": reason, "generated": True, "data_dir": str(folder),
                  "benchmark": False,
                  "generation": {**json.loads(json.dumps(params.__dict__)), "n_examples": n_examples,
                                 "data_seed": data_seed, "chunk_size": CHUNK_SIZE, "format_version": FORMAT_VERSION}}
    splits = split_indices(len(labels), split_seed)
    sets = {split: PathfinderDataset(images, labels, idx, input_mode) for split, idx in splits.items()}
    info = {**origin, "difficulty": difficulty, "release_folder": RELEASE_FOLDERS[difficulty],
            "contour_length": contour_length or DIFFICULTIES[difficulty], "image_size": size, "input_mode": input_mode,
            "encoding": "pixel / 255, (L, 1) float32" if input_mode == "real" else "token id = pixel + 1 (0: padding)",
            "flatten": "row-major", "split": "80/10/10 by torch.randperm", "split_seed": split_seed,
            "n_examples": {split: len(ds) for split, ds in sets.items()},
            "positive_frac": {split: float(labels[idx].mean()) for split, idx in splits.items()}}
    spec = dataclasses.replace(_shape(task, size, {"input_mode": input_mode}), info=info)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)


def _shape(task: str, size: int, o: dict) -> TaskSpec:
    return TaskSpec(name=task, n_classes=2, l_max=size * size, chance_acc=0.5,
                    **({"vocab_size": 257} if o["input_mode"] == "tokens" else {"d_input": 1}))

def _generated_sets(size: int, data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "pathfinder" / "generated").glob(f"pathfinder{size}-*") if p.is_dir())


def _source(task: str, size: int, data_dir: Path, o: dict[str, Any]) -> tuple[str, str]:
    """``register_task``'s source function: ("release" | "generate", why)."""
    return choose_source(task, size, data_dir, o["source"], o["release_dir"], o["difficulty"], o["n_examples"],
                         o["data_seed"], o["contour_length"])


@register_task("pathfinder", shape=functools.partial(_shape, "pathfinder", 32),
               source=functools.partial(_source, "pathfinder", 32), generated=functools.partial(_generated_sets, 32))
def pathfinder(data_dir: Path, difficulty: str = "hard", source: str | None = None, release_dir: str | None = None,
               input_mode: str = "real", n_examples: int = 200_000, data_seed: int = 0, split_seed: int = 42,
               contour_length: int | None = None, workers: int = 0, batch_size: int = 64,
               num_workers: int = 0, progress: bool = True) -> Task:
    """Build Pathfinder: 32 x 32 images, L = 1024, 2 classes.

    Args:
        data_dir: root data directory: generated data under ``<data_dir>/pathfinder/generated/``, decoded release
            under ``<data_dir>/pathfinder/cache/``, the release by default where ``python -m tasks prepare
            pathfinder --release`` stages it (``<data_dir>/lra/lra_release``).
        difficulty: ``easy`` | ``intermediate`` | ``hard`` (contour length 6 / 9 / 14; LRA uses hard).
        source: ``generate`` | ``release`` | ``auto``; None: release when ``release_dir`` is given, else generate.
            ``auto``: the release when ``release_dir`` is given or the release is staged under the data dir, else
            generate; generation options (``contour_length``, ``n_examples`` other than 200,000, a nonzero
            ``data_seed``) make it generate. ``info["source"]`` says which was used, ``info["source_reason"]`` why.
        release_dir: a copy of the release: the outer or inner ``lra_release/`` (the archive unpacks to
            ``lra_release/lra_release/pathfinder32/...``) or the folder holding it, its ``pathfinder32/`` or the
            difficulty folder.
        input_mode: ``real`` ((L, 1) pixel / 255) or ``tokens`` (ids pixel + 1, vocabulary 257).
        n_examples: images to generate (the release has 200,000 per difficulty).
        data_seed: generator seed (example i is drawn from ``[data_seed, i]``); not the training seed.
        split_seed: seed of the 80/10/10 split (42: s4's).
        contour_length: generate with this contour length instead of the difficulty's (not a benchmark setting).
        workers: generator processes (0: in this process); the data do not depend on it.
        batch_size: examples per batch.
        num_workers: DataLoader workers.
        progress: progress bars while generating or decoding.

    Raises:
        DatasetMissingError: ``source`` is release and the release folder is not there.
        ValueError: an unknown option value, a malformed metadata line (naming file and line), an image of the
            wrong size, or too many unreadable images.
    """
    return _build("pathfinder", 32, data_dir, difficulty, source, release_dir, input_mode, n_examples, data_seed,
                  split_seed, contour_length, workers, batch_size, num_workers, progress)


@register_task("pathx", shape=functools.partial(_shape, "pathx", 128), source=functools.partial(_source, "pathx", 128),
               generated=functools.partial(_generated_sets, 128))
def pathx(data_dir: Path, difficulty: str = "hard", source: str | None = None, release_dir: str | None = None,
          input_mode: str = "real", n_examples: int = 200_000, data_seed: int = 0, split_seed: int = 42,
          contour_length: int | None = None, workers: int = 0, batch_size: int = 16,
          num_workers: int = 0, progress: bool = True) -> Task:
    """Build Path-X: Pathfinder at 128 x 128 (L = 16384), 2 classes; the options are ``pathfinder``'s."""
    return _build("pathx", 128, data_dir, difficulty, source, release_dir, input_mode, n_examples, data_seed,
                  split_seed, contour_length, workers, batch_size, num_workers, progress)
