"""ListOps (LRA): classify the value (0..9) of a nested MIN / MAX / MED / SM expression.

Data is generated here (``tasks.listops_gen``, faithful to the LRA generator) or read from a copy of the LRA
release (``listops-1000/``); both are ``Source<TAB>Target`` TSV files loaded through Hugging Face ``datasets``
(Arrow-cached under ``<data_dir>/.hf_cache``) and tokenized with a fixed vocabulary:

    0 <pad>   1 [MIN   2 [MAX   3 [MED   4 [SM   5 ]   6..15 the digits 0..9

Parentheses are dropped; ``]`` is its own token. Batches: inputs (B, L) int64, lengths (B,), labels (B,).
"""
from __future__ import annotations

import dataclasses
import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import make_loader, pad_collate
from tasks.listops_gen import (END, OPERATORS, SPLIT_FILES, ensure_generated, evaluate, generate_listops,
                               generate_tree, tree_to_string)
from tasks.fetch import LRA_RELEASE, missing, register_archives
from tasks.registry import Task, TaskSpec, register_task

__all__ = ["VOCAB", "TOKEN_IDS", "VARIANTS", "tokenize", "encode", "generate_tree", "tree_to_string", "evaluate",
           "generate_listops", "load_listops_splits", "ListOpsDataset", "listops"]

VOCAB: tuple[str, ...] = ("<pad>", "[MIN", "[MAX", "[MED", "[SM", "]", *(str(d) for d in range(10)))
TOKEN_IDS: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}
assert set(OPERATORS) | {END} <= set(TOKEN_IDS)
N_CLASSES = 10
RELEASE_URL = LRA_RELEASE.url
register_archives("listops", LRA_RELEASE, optional=True)  # read only for variant=release / release_dir

# Generation settings (generate_listops keyword arguments); explicit builder options override them.
VARIANTS: dict[str, dict[str, int]] = {
    # the LRA benchmark: sequences of 500..2000 tokens, nesting up to 10 deep
    "lra": dict(n_train=96_000, n_val=2_000, n_test=2_000, min_length=500, max_length=2_000, max_depth=10,
                max_args=10),
    # a quick CPU suite: 10..200 tokens (mean ~20), nesting up to 4 deep; majority class ~12%
    "small": dict(n_train=4_000, n_val=500, n_test=500, min_length=10, max_length=200, max_depth=4, max_args=5),
    # easy: one operator over 2..5 digits (4..7 tokens), learnable above chance in seconds; majority ~11%
    "shallow": dict(n_train=4_000, n_val=500, n_test=500, min_length=3, max_length=10, max_depth=2, max_args=5),
}


def tokenize(source: str) -> list[str]:
    """Tokens of a printed tree: parentheses dropped, split on whitespace (``]`` stays a token)."""
    return source.replace("(", " ").replace(")", " ").split()


def encode(source: str) -> list[int]:
    """Token ids of a printed tree; raises KeyError on a token outside VOCAB."""
    return [TOKEN_IDS[tok] for tok in tokenize(source)]


def _encode_batch(batch: dict[str, list], indices: list[int], paths: dict[str, str], split: str) -> dict[str, list]:
    """``datasets.map`` function: Source -> input_ids, Target -> label, with errors naming file and line."""
    ids, labels = [], []
    for source, target, idx in zip(batch["Source"], batch["Target"], indices):
        where = f"{paths[split]}, line {idx + 2}"  # line 1 is the header
        try:
            ids.append(encode(source or ""))
        except KeyError as err:
            raise ValueError(f"{where}: unknown token {err.args[0]!r}; known: {' '.join(VOCAB[1:])}") from None
        if not ids[-1]:
            raise ValueError(f"{where}: empty source")
        label = (target or "").strip()
        if not (label.isdigit() and int(label) < N_CLASSES):
            raise ValueError(f"{where}: label {target!r} is not an integer in 0..{N_CLASSES - 1}")
        labels.append(int(label))
    return {"input_ids": ids, "label": labels}


def load_listops_splits(folder: Path, cache_dir: Path) -> dict[str, Any]:
    """Load and tokenize the three TSV files in ``folder``; returns ``{split: datasets.Dataset}``.

    Columns: ``input_ids`` (list of int8 token ids) and ``label`` (int64). Both the CSV parse and the
    tokenization are Arrow-cached by ``datasets`` under ``cache_dir``; no network is used.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # deferred: importing datasets is slow and only data loading needs it

    paths = {split: str(folder / name) for split, name in SPLIT_FILES.items()}
    for path in paths.values():
        try:
            with open(path, encoding="utf-8", newline="") as f:
                header, first = f.readline().rstrip("\r\n"), f.readline().strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); the file is corrupt "
                             "or not a ListOps TSV") from None
        if header != "Source\tTarget":
            raise ValueError(f"{path}, line 1: expected the header 'Source<TAB>Target', got {header!r}")
        if not first:
            raise ValueError(f"{path}: no examples after the header")
    features = datasets.Features({"Source": datasets.Value("string"), "Target": datasets.Value("string")})
    try:
        raw = datasets.load_dataset("csv", data_files=paths, delimiter="\t", quoting=csv.QUOTE_NONE,
                                    keep_default_na=False, features=features, cache_dir=str(cache_dir))
    except datasets.exceptions.DatasetGenerationError as err:
        raise ValueError(f"could not parse the ListOps files in {folder}: {err.__cause__ or err}") from err
    out_features = datasets.Features({"input_ids": datasets.List(datasets.Value("int8")),
                                      "label": datasets.Value("int64")})
    return {split: raw[split].map(_encode_batch, batched=True, with_indices=True, remove_columns=["Source", "Target"],
                                  features=out_features, fn_kwargs={"paths": paths, "split": split},
                                  desc=f"ListOps: tokenizing {split}")
            for split in paths}


class ListOpsDataset(Dataset):
    """Token sequences held flat (one int8 array plus offsets), truncated to ``l_max`` on access."""

    def __init__(self, hf_split: Any, l_max: int) -> None:
        import pyarrow.compute as pc

        col = hf_split.data.column("input_ids")
        self.lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)  # (N,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])                           # (N + 1,)
        self.values = torch.from_numpy(pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int8))
        self.labels = hf_split.data.column("label").to_numpy().astype(np.int64)                  # (N,)
        self.l_max = l_max

    @property
    def n_truncated(self) -> int:
        return int((self.lengths > self.l_max).sum())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start = int(self.offsets[i])
        stop = min(int(self.offsets[i + 1]), start + self.l_max)
        return {"inputs": self.values[start:stop].long(), "label": int(self.labels[i])}


def _release_folder(release_dir: str | Path, data_dir: Path) -> Path:
    """The folder holding the release's three files: ``release_dir`` itself or its ``listops-1000/``."""
    root = Path(release_dir).expanduser()
    for folder in (root, root / "listops-1000"):
        if all((folder / name).is_file() for name in SPLIT_FILES.values()):
            return folder
    absent = [name for name in SPLIT_FILES.values() if not (root / name).is_file()]
    raise missing("listops", data_dir, f"the LRA release's ListOps files {', '.join(absent)} in {root} (or its "
                                       f"listops-1000/); or drop variant=release / release_dir to generate ListOps")


def _generated_folder(data_dir: Path, variant: str, params: dict[str, int]) -> Path:
    """``<data_dir>/listops/generated/<variant>`` for a variant's own settings, else ``<variant>-<hash>``."""
    name = variant
    if params != {**VARIANTS[variant], "seed": 0}:
        name += "-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return data_dir / "listops" / "generated" / name


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="listops", n_classes=N_CLASSES, l_max=o["l_max"], chance_acc=1.0 / N_CLASSES, vocab_size=len(VOCAB))

@register_task("listops", shape=_shape)
def listops(data_dir: Path, variant: str = "lra", release_dir: str | None = None, l_max: int = 2048,
            batch_size: int = 32, seed: int = 0, num_workers: int = 0, data_seed: int = 0,
            n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
            min_length: int | None = None, max_length: int | None = None, max_depth: int | None = None,
            max_args: int | None = None, progress: bool = True) -> Task:
    """Build the ListOps task (10 classes).

    Args:
        data_dir: root data directory; generated files go to ``<data_dir>/listops/generated/<name>/``
            and the ``datasets`` Arrow cache to ``<data_dir>/.hf_cache``.
        variant: generation settings: ``lra`` (the benchmark), ``small`` (quick CPU suite), ``shallow`` (easy);
            or ``release``: read the LRA release's files instead of generating.
        release_dir: a copy of the LRA release's ``listops-1000`` folder (or its parent); read instead of
            generating. Excludes the generation options below. ``variant="release"`` without it reads the release
            staged by ``python -m tasks prepare listops`` (``<data_dir>/lra/lra_release/listops-1000``).
        l_max: longer sequences are truncated to this many tokens, as LRA does (count in ``spec.info``).
        batch_size: examples per batch.
        seed: training seed: shuffles the train loader only; the data does not change with it.
        num_workers: DataLoader workers.
        data_seed: seed of the generator (``random.Random(data_seed)``); part of the cache key.
        n_train, n_val, n_test, min_length, max_length, max_depth, max_args: override the variant's settings.
        progress: show a progress bar while generating.

    Raises:
        DatasetMissingError: ``release_dir`` lacks the release files (the message says where to get them).
        ValueError: unknown variant, or a corrupt file (the message names the file and line).
    """
    overrides = dict(n_train=n_train, n_val=n_val, n_test=n_test, min_length=min_length, max_length=max_length,
                     max_depth=max_depth, max_args=max_args)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if variant == "release" and release_dir is None:
        release_dir = str(LRA_RELEASE.target(data_dir) / "listops-1000")
    if release_dir is not None:
        if overrides:
            raise ValueError(f"listops: release_dir reads fixed files; drop the generation options {sorted(overrides)}")
        folder = _release_folder(release_dir, Path(data_dir))
        source: dict[str, Any] = {"variant": "release", "release_dir": str(folder)}
    else:
        if variant not in VARIANTS:
            raise ValueError(f"unknown listops variant {variant!r}; known: {', '.join(sorted(VARIANTS))}, release")
        params = {**VARIANTS[variant], **overrides, "seed": data_seed}
        if min(params["n_train"], params["n_val"], params["n_test"]) < 1:
            raise ValueError(f"listops: every split needs at least one example; got {params}")
        folder = _generated_folder(Path(data_dir), variant, params)
        ensure_generated(folder, params, progress=progress)
        source = {"variant": variant, "generation": params}

    splits = load_listops_splits(folder, Path(data_dir) / ".hf_cache")
    sets = {split: ListOpsDataset(hf, l_max) for split, hf in splits.items()}
    test_counts = np.bincount(sets["test"].labels, minlength=N_CLASSES)
    # comparable with published LRA numbers: the release's files, or the LRA generator's own settings, untruncated
    benchmark = (release_dir is not None or (variant == "lra" and not overrides)) and l_max >= VARIANTS["lra"]["max_length"]
    info = {**source, "benchmark": benchmark, "data_dir": str(folder), "vocab": list(VOCAB),
            "n_examples": {split: len(ds) for split, ds in sets.items()},
            "n_truncated": {split: ds.n_truncated for split, ds in sets.items()},
            "majority_frac": float(test_counts.max() / max(1, test_counts.sum()))}
    spec = dataclasses.replace(_shape({"l_max": l_max}), info=info)
    loaders = {split: make_loader(ds, batch_size, shuffle=(split == "train"), seed=seed, collate_fn=pad_collate,
                                  num_workers=num_workers) for split, ds in sets.items()}
    return Task(spec=spec, train=loaders["train"], val=loaders["val"], test=loaders["test"])
