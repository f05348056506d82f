"""ListOps (LRA): classify the value (0..9) of a nested MIN / MAX / MED / SM expression.

Data is generated here (``tasks.listops_gen``, faithful to the LRA generator) or read from a copy of the LRA
release (``listops-1000/``; ``variant: auto`` reads the release when it is staged, else generates); both are ``Source<TAB>Target`` TSV files loaded through Hugging Face ``datasets``
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

from tasks.data import pad_collate
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
# read for variant=release / release_dir, and for variant=auto when staged; `prepare --release/--from` builds variant=release
register_archives("listops", LRA_RELEASE, optional=True, release_options={"variant": "release"})

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


# Where the three files may sit below a folder a user can point at (``release_dir``, or the staged release
# ``<data_dir>/lra/lra_release``): the folder itself (``listops-1000/``), the release's inner ``lra_release/``, the
# archive's top folder (the real archive unpacks to ``lra_release/lra_release/listops-1000/``), or the folder holding it.
RELEASE_SUBFOLDERS = ("", "listops-1000", "lra_release/listops-1000", "lra_release/lra_release/listops-1000")


def find_release(root: str | Path) -> Path | None:
    """The folder holding the release's three files at or below ``root`` (``RELEASE_SUBFOLDERS``), else None."""
    root = Path(root).expanduser()
    for sub in RELEASE_SUBFOLDERS:
        folder = root / sub if sub else root
        if all((folder / name).is_file() for name in SPLIT_FILES.values()):
            return folder
    return None


def _release_folder(release_dir: str | Path, data_dir: Path) -> Path:
    """``find_release(release_dir)``, or DatasetMissingError naming where it looked and the command that stages it."""
    root = Path(release_dir).expanduser()
    folder = find_release(root)
    if folder is None:
        where = ", ".join(str(root / sub) for sub in RELEASE_SUBFOLDERS[1:])
        raise missing("listops", data_dir, f"the LRA release's ListOps files {', '.join(SPLIT_FILES.values())}: "
                                           f"looked in {where} and {root}; or drop variant=release / release_dir to "
                                           f"generate ListOps")
    return folder


_GENERATION_OPTIONS = ("n_train", "n_val", "n_test", "min_length", "max_length", "max_depth", "max_args")


def choose_source(data_dir: Path, variant: str, release_dir: str | None, generation: dict[str, int],
                  data_seed: int = 0) -> tuple[str, str]:
    """(variant to build: ``release`` or a generator variant, why) for the builder's options.

    ``auto`` reads the release when ``release_dir`` is given or the release is staged under the data dir (and no
    generation option asks for generated data), else generates the ``lra`` variant.
    """
    staged = LRA_RELEASE.target(data_dir)
    if variant == "auto":
        if release_dir is not None:
            return "release", f"variant auto: release_dir {release_dir} is given"
        if generation or data_seed:
            asked = sorted(generation) + (["data_seed"] if data_seed else [])
            return "lra", f"variant auto with the generation option(s) {', '.join(asked)}: generated"
        found = find_release(staged)
        if found is not None:
            return "release", f"variant auto: the LRA release is staged at {found}"
        return "lra", (f"variant auto: no LRA release staged under {staged}, so generated with the lra settings; "
                       f"python -m tasks prepare listops --release (or --from <lra_release.gz>) stages it")
    if release_dir is not None:
        return "release", f"release_dir {release_dir} is given"
    if variant == "release":
        found = find_release(staged)
        return "release", (f"variant release: the LRA release staged at {found}" if found is not None else
                           f"variant release, but no LRA release is staged under {staged}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown listops variant {variant!r}; known: {', '.join(sorted(VARIANTS))}, release, auto")
    why = f"variant {variant} generates"
    if find_release(staged) is not None:
        why += "; the staged LRA release is not read (variant auto or release would read it)"
    return variant, why


def _source(data_dir: Path, o: dict[str, Any]) -> tuple[str, str]:
    """``register_task``'s source function: ("release" | "generate", why)."""
    generation = {k: o[k] for k in _GENERATION_OPTIONS if o.get(k) is not None}
    variant, why = choose_source(data_dir, o["variant"], o["release_dir"], generation, o["data_seed"])
    return ("release" if variant == "release" else "generate"), why


def _generated_folder(data_dir: Path, variant: str, params: dict[str, int]) -> Path:
    """``<data_dir>/listops/generated/<variant>`` for a variant's own settings, else ``<variant>-<hash>``."""
    name = variant
    if params != {**VARIANTS[variant], "seed": 0}:
        name += "-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return data_dir / "listops" / "generated" / name


def _generated_sets(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "listops" / "generated").glob("*") if p.is_dir())


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="listops", n_classes=N_CLASSES, l_max=o["l_max"], chance_acc=1.0 / N_CLASSES, vocab_size=len(VOCAB))

@register_task("listops", shape=_shape, source=_source, generated=_generated_sets)
def listops(data_dir: Path, variant: str = "lra", release_dir: str | None = None, l_max: int = 2048,
            batch_size: int = 32, num_workers: int = 0, data_seed: int = 0,
            n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
            min_length: int | None = None, max_length: int | None = None, max_depth: int | None = None,
            max_args: int | None = None, progress: bool = True) -> Task:
    """Build the ListOps task (10 classes).

    Args:
        data_dir: root data directory; generated files go to ``<data_dir>/listops/generated/<name>/``
            and the ``datasets`` Arrow cache to ``<data_dir>/.hf_cache``.
        variant: generation settings: ``lra`` (the benchmark), ``small`` (quick CPU suite), ``shallow`` (easy);
            or ``release``: read the LRA release's files instead of generating; or ``auto``: the release when it is
            staged under the data dir (or ``release_dir`` is given), else generate ``lra``; generation options
            (``n_train`` ... ``max_args``, a nonzero ``data_seed``) make ``auto`` generate. ``info["source"]`` says
            which was used and ``info["source_reason"]`` why.
        release_dir: a copy of the LRA release: its ``listops-1000`` folder, the inner or outer ``lra_release/``
            (the archive unpacks to ``lra_release/lra_release/listops-1000/``) or the folder holding that; read
            instead of generating. Excludes the generation options below. ``variant="release"`` without it reads
            the release staged by ``python -m tasks prepare listops --release`` (or ``--from``) under
            ``<data_dir>/lra/lra_release``.
        l_max: longer sequences are truncated to this many tokens, as LRA does (count in ``spec.info``).
        batch_size: examples per batch.
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
    variant, reason = choose_source(Path(data_dir), variant, release_dir, overrides, data_seed)
    if variant == "release":
        if overrides:
            raise ValueError(f"listops: the release (variant release / release_dir) has fixed files; drop the "
                             f"generation options {sorted(overrides)}")
        folder = _release_folder(release_dir if release_dir is not None else LRA_RELEASE.target(data_dir),
                                 Path(data_dir))
        source: dict[str, Any] = {"variant": "release", "source": "release", "source_reason": reason,
                                  "release_dir": str(folder)}
    else:
        params = {**VARIANTS[variant], **overrides, "seed": data_seed}
        if min(params["n_train"], params["n_val"], params["n_test"]) < 1:
            raise ValueError(f"listops: every split needs at least one example; got {params}")
        folder = _generated_folder(Path(data_dir), variant, params)
        ensure_generated(folder, params, progress=progress)
        source = {"variant": variant, "source": "generate", "source_reason": reason, "generation": params}

    splits = load_listops_splits(folder, Path(data_dir) / ".hf_cache")
    sets = {split: ListOpsDataset(hf, l_max) for split, hf in splits.items()}
    test_counts = np.bincount(sets["test"].labels, minlength=N_CLASSES)
    # comparable with published LRA numbers: the release's files, untruncated. A set generated with the LRA generator's
    # own settings draws other trees from the same grammar: not the benchmark's data (its rows are marked †)
    benchmark = variant == "release" and l_max >= VARIANTS["lra"]["max_length"]
    info = {**source, "benchmark": benchmark, "data_dir": str(folder), "vocab": list(VOCAB),
            "n_examples": {split: len(ds) for split, ds in sets.items()},
            "n_truncated": {split: ds.n_truncated for split, ds in sets.items()},
            "majority_frac": float(test_counts.max() / max(1, test_counts.sum()))}
    spec = dataclasses.replace(_shape({"l_max": l_max}), info=info)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)
