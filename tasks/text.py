"""Byte-level text classification (LRA "Text"): IMDB movie-review sentiment, negative (0) vs positive (1).

A review is read as raw UTF-8 bytes with leading and trailing ASCII whitespace removed (what TFDS ``imdb_reviews``,
the data LRA used, stores; the ``<br />`` tags stay in). Byte b becomes token id b + 1, so id 0 is padding only and
the vocabulary has 257 ids; a review longer than ``l_max`` bytes keeps its first ``l_max`` (a cut may split a
multi-byte character). This is LRA's encoding: ``tfds.deprecated.text.ByteTextEncoder`` (ids = bytes + 1, vocab
257) followed by ``[:max_length]`` (``lra_benchmarks/text_classification/input_pipeline.py``).

Data, found under ``<data_dir>/imdb/`` (``python -m tasks prepare text`` stages the first) or at ``path``:

    aclimdb  aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt   the original release; train/unsup/ is ignored
    hf       Hugging Face ``imdb`` (plain_text): train-*.parquet and test-*.parquet (or their .arrow copies),
             columns text (string), label (0 neg, 1 pos); the unsupervised-* files are ignored

Splits: 25,000 train and 25,000 test reviews, half of each positive. IMDB has no validation set, and LRA validated
on the test set; here a seeded fraction of the *training* reviews (``val_fraction``, ``n_val``, ``split_seed``) is
held out for validation, so model selection never sees the test set. Reviews are first put in a canonical order
(by content, then label), so the split depends only on the data and ``split_seed``, never on file or row order, and
copies of one review (IMDB has a few) always land on the same side.

Differences from LRA's run: LRA validated on the test set (above); its public config truncates at 1000 bytes while
the paper reports "4K" (default here 4096, as S4 and later work use; ``spec.info["benchmark"]`` is True for 4000 or
4096 on the full data); LRA pads every batch to ``max_length``, here to the longest review in the batch (the model
gets ``lengths``). The Hugging Face copy stores reviews unstripped; they are stripped here so both sources match TFDS.

Both sources are Arrow-cached by ``datasets`` under ``<data_dir>/.hf_cache``; sequences are then held flat (one
uint8 array plus offsets per split), not as Python lists. Batches: inputs (B, L) int64, lengths (B,), labels (B,).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.fetch import Archive, missing, register_archives
from tasks.registry import Task, TaskSpec, register_task

__all__ = ["VOCAB_SIZE", "SOURCES", "ACLIMDB", "encode", "ByteSequences", "ByteTextDataset", "load_aclimdb",
           "load_hf_imdb", "canonical_order", "carve_validation", "text"]

VOCAB_SIZE = 257  # 256 byte values + padding id 0
SOURCES = ("auto", "aclimdb", "hf")
SPLITS = ("train", "test")
FORMAT_VERSION = 1  # part of the aclImdb cache key: bump when what is stored per review changes
ACLIMDB = Archive(url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz", dest="imdb", root="aclImdb",
                  size_bytes=84_125_825, sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                  note="IMDB reviews (Maas et al. 2011); unpacks to aclImdb/")
register_archives("text", ACLIMDB)
LABELS = {"neg": 0, "pos": 1}
BENCHMARK_L_MAX = (4000, 4096)  # "4K" in the LRA paper; 4096 in S4 and the work that follows it


def encode(text: str | bytes) -> torch.Tensor:
    """Token ids (L,) int64 of one text: its UTF-8 bytes plus one (no stripping, no truncation)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64)) + 1


class ByteSequences:
    """Byte strings held flat, truncated to ``l_max``: the ids of string i are ``values[offsets[i]:offsets[i+1]] + 1``."""

    def __init__(self, column: Any, l_max: int) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        col = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        self.lengths = pc.binary_length(col).to_numpy(zero_copy_only=False).astype(np.int64)  # (N,) before truncation
        kept = pc.binary_slice(col, 0, l_max).cast(pa.large_binary()).combine_chunks()
        _, offsets, data = kept.buffers()
        self.offsets = np.frombuffer(offsets, dtype=np.int64)[kept.offset: kept.offset + len(kept) + 1]  # (N + 1,)
        self.values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        self.l_max = l_max

    def __len__(self) -> int:
        return len(self.lengths)

    def truncated(self, rows: np.ndarray) -> int:
        return int((self.lengths[rows] > self.l_max).sum())

    def ids(self, i: int) -> torch.Tensor:
        """(L,) int64 token ids of string i, L <= l_max."""
        return torch.from_numpy(self.values[self.offsets[i]: self.offsets[i + 1]].astype(np.int64)) + 1


class ByteTextDataset(Dataset):
    """The reviews ``rows`` of one source split: {"inputs": (L,) int64 ids, "label": int}."""

    def __init__(self, seqs: ByteSequences, labels: np.ndarray, rows: np.ndarray) -> None:
        self.seqs, self.labels, self.rows = seqs, labels, rows

    @property
    def n_truncated(self) -> int:
        return self.seqs.truncated(self.rows)

    @property
    def n_empty(self) -> int:
        return int((self.seqs.lengths[self.rows] == 0).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        return {"inputs": self.seqs.ids(row), "label": int(self.labels[row])}


def hf_datasets() -> Any:
    """The `datasets` module, imported on first use (offline) because importing it is slow."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # deferred: importing datasets is slow and only data loading needs it

    return datasets


def _features():
    datasets = hf_datasets()
    return datasets.Features({"text": datasets.Value("binary"), "label": datasets.Value("int64")})


def _aclimdb_files(folder: Path) -> dict[str, list[tuple[str, int, int, int]]]:
    """Per split, (path, label, size, mtime_ns) of every review file, in name order; unsup/ and loose files skipped."""
    out: dict[str, list[tuple[str, int, int, int]]] = {}
    for split in SPLITS:
        out[split] = []
        for name, label in LABELS.items():
            sub = folder / split / name
            if not sub.is_dir():
                raise ValueError(f"{folder}: incomplete aclImdb tree, {sub} is missing; unpack aclImdb_v1.tar.gz again")
            entries = sorted((e for e in os.scandir(sub) if e.is_file() and e.name.endswith(".txt")), key=lambda e: e.name)
            if not entries:
                raise ValueError(f"{sub}: no review files (<id>_<rating>.txt); unpack aclImdb_v1.tar.gz again")
            out[split] += [(e.path, label, (st := e.stat()).st_size, st.st_mtime_ns) for e in entries]
    return out


def _read_reviews(files: list[tuple[str, int, int, int]]) -> Iterator[dict[str, Any]]:
    """``datasets`` generator: one review file -> its stripped bytes and label (as TFDS imdb_reviews reads it)."""
    for path, label, _, _ in files:
        with open(path, "rb") as f:
            yield {"text": f.read().strip(), "label": label}


def load_aclimdb(folder: Path, cache_dir: Path) -> dict[str, Any]:
    """Read aclImdb/{train,test}/{neg,pos}; returns ``{split: datasets.Dataset}`` with columns text (bytes), label.

    The Arrow cache is keyed by the listing (names, sizes, modification times), so edited files are read again.
    """
    datasets = hf_datasets()
    listing = _aclimdb_files(folder)
    out = {}
    for split, files in listing.items():
        key = hashlib.sha256(repr((FORMAT_VERSION, files)).encode()).hexdigest()[:20]
        out[split] = datasets.Dataset.from_generator(_read_reviews, features=_features(), cache_dir=str(cache_dir),
                                                     gen_kwargs={"files": files}, split=split, fingerprint=f"aclimdb-{key}")
    return out


def _hf_to_bytes(batch: dict[str, list], indices: list[int], where: str) -> dict[str, list]:
    """``datasets.map`` function: text -> stripped UTF-8 bytes, label checked, errors naming file and row."""
    texts, labels = [], []
    for text, label, idx in zip(batch["text"], batch["label"], indices):
        if text is None:
            raise ValueError(f"{where}, row {idx}: text is missing")
        if label not in (0, 1):
            raise ValueError(f"{where}, row {idx}: label {label!r} is not 0 (neg) or 1 (pos); "
                             f"the unsupervised split has no labels")
        texts.append(text.encode("utf-8").strip())
        labels.append(int(label))
    return {"text": texts, "label": labels}


def load_hf_imdb(files: dict[str, list[Path]], cache_dir: Path) -> dict[str, Any]:
    """Read the Hugging Face ``imdb`` parquet (or arrow) files; returns ``{split: datasets.Dataset}`` like load_aclimdb."""
    datasets = hf_datasets()
    kinds = {p.suffix for paths in files.values() for p in paths}
    if len(kinds) != 1:
        raise ValueError(f"IMDB files mix formats ({', '.join(sorted(kinds))}): {files}; keep one copy")
    builder = kinds.pop().lstrip(".")
    try:
        raw = datasets.load_dataset(builder, data_files={s: [str(p) for p in ps] for s, ps in files.items()},
                                    cache_dir=str(cache_dir))
    except datasets.exceptions.DatasetGenerationError as err:
        raise ValueError(f"could not read the IMDB {builder} files {files}: {err.__cause__ or err}") from err
    out = {}
    for split, ds in raw.items():
        if not {"text", "label"} <= set(ds.column_names):
            raise ValueError(f"{files[split]}: expected columns text and label, found {ds.column_names}")
        where = ", ".join(str(p) for p in files[split])
        out[split] = ds.map(_hf_to_bytes, batched=True, with_indices=True, features=_features(),
                            remove_columns=[c for c in ds.column_names if c not in ("text", "label")],
                            fn_kwargs={"where": where}, desc=f"IMDB: bytes of {split}")
    return out


def _find_aclimdb(root: Path) -> Path | None:
    for folder in (root, root / "aclImdb"):
        if (folder / "train" / "neg").is_dir():
            return folder
    return None


def _hf_split(path: Path) -> str | None:
    """Split a Hugging Face file belongs to: ``train-00000-of-00001.parquet``, ``imdb-test.arrow``, ``train/x.arrow``."""
    if path.suffix not in (".parquet", ".arrow") or path.name.startswith("cache-"):
        return None
    words = set(re.split(r"[-_.]", path.stem))
    for split in SPLITS:
        if split in words or path.parent.name == split:
            return split
    return None


def _find_hf(root: Path) -> dict[str, list[Path]] | None:
    files: dict[str, list[Path]] = {split: [] for split in SPLITS}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if (split := _hf_split(p)) is not None and p.is_file():
                files[split].append(p)
    return files if all(files.values()) else None


def _locate(source: str, root: Path, data_dir: Path) -> tuple[str, Path | dict[str, list[Path]]]:
    """The source to read and where: the aclImdb folder, or the Hugging Face files per split."""
    if source not in SOURCES:
        raise ValueError(f"unknown text source {source!r}; known: {', '.join(SOURCES)}")
    if source in ("auto", "aclimdb") and (folder := _find_aclimdb(root)) is not None:
        return "aclimdb", folder
    if source in ("auto", "hf") and (files := _find_hf(root)) is not None:
        return "hf", files
    what = {"aclimdb": "aclImdb/{train,test}/{neg,pos}/", "hf": "the Hugging Face imdb train-*/test-*.parquet files",
            "auto": "IMDB (aclImdb/ from aclImdb_v1.tar.gz, or the Hugging Face imdb train-*/test-*.parquet files)"}
    raise missing("text", data_dir, f"{what[source]} under {root}")


def canonical_order(texts: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (bytes, label), and a group id per sorted row that is shared by identical texts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({"text": texts, "label": labels})
    order = pc.sort_indices(table, sort_keys=[("text", "ascending"), ("label", "ascending")]).to_numpy()  # (N,)
    ordered = table.column("text").take(order)
    new_text = pc.not_equal(ordered[1:], ordered[:-1]).to_numpy(zero_copy_only=False)                    # (N - 1,)
    groups = np.concatenate([[0], np.cumsum(new_text)]).astype(np.int64)                                 # (N,)
    return order, groups


def carve_validation(order: np.ndarray, groups: np.ndarray, n_val: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, val): random whole groups of identical texts until at least ``n_val`` rows are held out."""
    if not 0 < n_val < len(order):
        raise ValueError(f"text: n_val must be between 1 and {len(order) - 1} (the training reviews); got {n_val}")
    picked = np.random.default_rng(split_seed).permutation(int(groups[-1]) + 1)  # groups in a seeded order
    sizes = np.bincount(groups)[picked]
    k = int(np.searchsorted(np.cumsum(sizes), n_val)) + 1  # fewest groups holding n_val rows
    is_val = np.isin(groups, picked[:k])
    if is_val.all():
        raise ValueError(f"text: all {len(order)} training reviews are one text; nothing is left to train on")
    return order[~is_val], order[is_val]


def make_splits(splits: dict[str, Any], l_max: int, val_fraction: float, n_val: int | None,
                split_seed: int) -> dict[str, ByteTextDataset]:
    """train / val / test datasets from the source's train and test: val is carved out of train, all in canonical order."""
    seqs = {s: ByteSequences(ds.data.column("text"), l_max) for s, ds in splits.items()}
    labels = {s: ds.data.column("label").to_numpy().astype(np.int64) for s, ds in splits.items()}  # (N,) each
    for split, y in labels.items():
        if len(y) == 0:
            raise ValueError(f"text: the {split} split is empty")
    order, groups = canonical_order(splits["train"].data.column("text"), labels["train"])
    if n_val is None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"text: val_fraction must be in (0, 1); got {val_fraction}")
        n_val = max(1, round(val_fraction * len(order)))
    train_rows, val_rows = carve_validation(order, groups, n_val, split_seed)
    test_rows = canonical_order(splits["test"].data.column("text"), labels["test"])[0]
    return {"train": ByteTextDataset(seqs["train"], labels["train"], train_rows),
            "val": ByteTextDataset(seqs["train"], labels["train"], val_rows),
            "test": ByteTextDataset(seqs["test"], labels["test"], test_rows)}


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="text", n_classes=2, l_max=o["l_max"], chance_acc=0.5, vocab_size=VOCAB_SIZE)

@register_task("text", shape=_shape)
def text(data_dir: Path, source: str = "auto", path: str | None = None, l_max: int = 4096,
         val_fraction: float = 0.1, n_val: int | None = None, split_seed: int = 0, batch_size: int = 32,
         num_workers: int = 0) -> Task:
    """Build the byte-level IMDB task (2 classes).

    Args:
        data_dir: root data directory; IMDB is looked for under ``<data_dir>/imdb/`` and the ``datasets`` Arrow
            cache goes to ``<data_dir>/.hf_cache``.
        source: ``auto`` (aclImdb if present, else Hugging Face files), ``aclimdb`` or ``hf``.
        path: where the data are instead of ``<data_dir>/imdb/``: the aclImdb folder (or its parent), or a folder
            holding the Hugging Face files (searched recursively).
        l_max: reviews longer than this many bytes are truncated (count in ``spec.info``).
        val_fraction: fraction of the training reviews held out for validation.
        n_val: number of training reviews held out for validation; overrides ``val_fraction``.
        split_seed: seed of the validation split; independent of ``seed``.
        batch_size: examples per batch.
        num_workers: DataLoader workers.

    Raises:
        DatasetMissingError: IMDB is not staged (the message names the prepare command).
        ValueError: unknown source, bad split sizes, or a corrupt file (the message names it).
    """
    if l_max < 1:
        raise ValueError(f"text: l_max must be at least 1; got {l_max}")
    data_dir = Path(data_dir)
    root = Path(path).expanduser() if path is not None else data_dir / "imdb"
    kind, where = _locate(source, root, data_dir)
    cache = data_dir / ".hf_cache"
    splits = load_aclimdb(where, cache) if kind == "aclimdb" else load_hf_imdb(where, cache)  # type: ignore[arg-type]
    sets = make_splits(splits, l_max, val_fraction, n_val, split_seed)
    test_counts = np.bincount(sets["test"].labels, minlength=2)
    full = len(sets["train"]) + len(sets["val"]) == 25_000 and len(sets["test"]) == 25_000
    located = str(where) if kind == "aclimdb" else {s: [str(p) for p in ps] for s, ps in where.items()}  # type: ignore[union-attr]
    info = {"source": kind, "path": located, "l_max": l_max,
            "encoding": "UTF-8 bytes, stripped of leading/trailing ASCII whitespace; byte b -> id b + 1; 0 = padding",
            # comparable with published LRA Text numbers: the full IMDB at the "4K" length (validation carved from train)
            "benchmark": full and l_max in BENCHMARK_L_MAX,
            "validation": f"{len(sets['val'])} training reviews held out (split_seed {split_seed}); LRA validated on test",
            "split_seed": split_seed, "n_examples": {s: len(ds) for s, ds in sets.items()},
            "n_truncated": {s: ds.n_truncated for s, ds in sets.items()},
            "n_empty": {s: ds.n_empty for s, ds in sets.items()},
            "majority_frac": float(test_counts.max() / test_counts.sum())}
    spec = dataclasses.replace(_shape({"l_max": l_max}), info=info)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)
