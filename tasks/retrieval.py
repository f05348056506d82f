"""Byte-level document matching (LRA "Retrieval"): does one ACL Anthology Network (AAN) paper cite the other?

Each example is a pair of documents and a label (1: linked by citation, 0: not). Both documents are encoded like
the ``text`` task: byte b -> id b + 1 (0 is padding, vocabulary 257), each truncated to ``l_max`` bytes (LRA: 4000,
``lra_benchmarks/matching/configs/base_match_config.py``). The model encodes both with one shared encoder and
classifies the pair (``dual_input``); batches hold inputs (B, L1), lengths (B,), inputs2 (B, L2), lengths2 (B,),
labels (B,).

Data: the LRA release (``lra_release.gz``; ``python -m tasks prepare retrieval`` stages it under
``<data_dir>/lra/``) holds ``lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (train / validation / test,
about 147K / 18K / 17K pairs): tab-separated, no header, one pair per line, columns

    label  id1  id2  text1  text2        label written as 0/1 or 0.0/1.0

read as LRA reads them (``lra_benchmarks/matching/input_pipeline.py``): quote characters are ordinary text
(``use_quote_delim=False``), the label is a float cast to an integer, and the text fields are byte-encoded exactly
as they stand in the file (they look like Python bytes literals, ``b'...'``, and LRA does not unescape them).
Differences from LRA: LRA drops the last partial batch of the validation and test sets (``drop_remainder=True``);
every pair is evaluated here. LRA casts any float label to an integer; here a label other than 0/1 is an error.
LRA pads to 4000; here to the longest document in the batch (the model gets ``lengths`` and ``lengths2``).

The files are parsed by ``datasets``' csv builder and Arrow-cached under ``<data_dir>/.hf_cache``; sequences are
then held flat (uint8 arrays plus offsets).
"""
from __future__ import annotations

import dataclasses
import csv
import functools
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.fetch import LRA_RELEASE, missing, register_archives
from tasks.registry import Task, TaskSpec, register_task
from tasks.text import VOCAB_SIZE, ByteSequences, hf_datasets

__all__ = ["SPLIT_FILES", "COLUMNS", "load_aan_splits", "PairDataset", "retrieval"]

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
COLUMNS = ("label", "id1", "id2", "text1", "text2")
register_archives("retrieval", LRA_RELEASE)
BENCHMARK_L_MAX = 4000
PAIR_KEYS = ("inputs", "inputs2")


def _field_counts(path: str, lines: Iterable[int]) -> dict[int, int]:
    """Number of tab-separated fields on each of the given 1-based lines (a slow scan, for error paths only)."""
    wanted, out = set(lines), {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if n in wanted:
                out[n] = line.rstrip(b"\r\n").count(b"\t") + 1
                if len(out) == len(wanted):
                    break
    return out


def _first_malformed(paths: Iterable[str]) -> tuple[str, int, int] | None:
    """(file, line, fields) of the first line without exactly five fields, if any."""
    for path in paths:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if (k := line.rstrip(b"\r\n").count(b"\t") + 1) != len(COLUMNS):
                    return path, n, k
    return None


def _malformed(path: str, line: int, fields: int) -> ValueError:
    return ValueError(f"{path}, line {line}: expected {len(COLUMNS)} tab-separated fields "
                      f"({', '.join(COLUMNS)}), found {fields}")


def _check_first_line(path: str) -> None:
    """pandas would silently take a sixth field on line 1 as an index column or drop it: reject that here."""
    with open(path, "rb") as f:
        first = f.readline().rstrip(b"\r\n")
    if not first:
        raise ValueError(f"{path}: no pairs on line 1 (an empty file?)")
    if (k := first.count(b"\t") + 1) != len(COLUMNS):
        raise _malformed(path, 1, k)


def _encode_pairs(batch: dict[str, list], indices: list[int], path: str) -> dict[str, list]:
    """``datasets.map`` function: label -> 0/1, texts -> bytes; errors name the file and line (row i is line i + 1)."""
    # A line with too few fields reaches here with its missing fields empty: check such lines against the file.
    short = [i + 1 for i, t2 in zip(indices, batch["text2"]) if not t2]
    counts = _field_counts(path, short) if short else {}
    for line in short:
        if counts.get(line, 0) != len(COLUMNS):
            raise _malformed(path, line, counts.get(line, 0))
    labels = []
    for label, idx in zip(batch["label"], indices):
        try:
            value = float(label)
        except ValueError:
            value = -1.0
        if value not in (0.0, 1.0):
            raise ValueError(f"{path}, line {idx + 1}: label {label!r} is not 0 or 1 (also written 0.0 / 1.0)")
        labels.append(int(value))
    # lineterminator is "\n", so a CRLF file leaves "\r" at the end of the last field
    return {"bytes1": [t.encode("utf-8") for t in batch["text1"]],
            "bytes2": [t.removesuffix("\r").encode("utf-8") for t in batch["text2"]], "label": labels}


def load_aan_splits(folder: Path, cache_dir: Path) -> dict[str, Any]:
    """Parse and encode the three TSV files in ``folder``; returns ``{split: datasets.Dataset}`` (train, val, test).

    Columns: ``bytes1``, ``bytes2`` (the documents' UTF-8 bytes, untruncated) and ``label`` (int64). Both the parse
    and the encoding are Arrow-cached by ``datasets`` under ``cache_dir``.
    """
    datasets = hf_datasets()
    paths = {split: str(folder / name) for split, name in SPLIT_FILES.items()}
    for path in paths.values():
        _check_first_line(path)
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    try:
        raw = datasets.load_dataset("csv", data_files=paths, delimiter="\t", quoting=csv.QUOTE_NONE, header=None,
                                    column_names=list(COLUMNS), keep_default_na=False, skip_blank_lines=False, index_col=False,
                                    lineterminator="\n", features=features, cache_dir=str(cache_dir))
    except datasets.exceptions.DatasetGenerationError as err:
        bad = _first_malformed(paths.values())
        if bad is not None:
            raise _malformed(*bad) from err
        raise ValueError(f"could not parse the AAN files in {folder}: {err.__cause__ or err}") from err
    out_features = datasets.Features({"bytes1": datasets.Value("binary"), "bytes2": datasets.Value("binary"),
                                      "label": datasets.Value("int64")})
    return {split: raw[split].map(_encode_pairs, batched=True, with_indices=True, remove_columns=list(COLUMNS),
                                  features=out_features, fn_kwargs={"path": paths[split]},
                                  desc=f"AAN: encoding {split}")
            for split in paths}


class PairDataset(Dataset):
    """Document pairs held flat: {"inputs": (L1,) int64 ids, "inputs2": (L2,) int64 ids, "label": int}."""

    def __init__(self, hf_split: Any, l_max: int) -> None:
        self.first = ByteSequences(hf_split.data.column("bytes1"), l_max)
        self.second = ByteSequences(hf_split.data.column("bytes2"), l_max)
        self.labels = hf_split.data.column("label").to_numpy().astype(np.int64)  # (N,)

    @property
    def n_truncated(self) -> dict[str, int]:
        rows = np.arange(len(self.labels))
        return {"text1": self.first.truncated(rows), "text2": self.second.truncated(rows)}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.first.ids(i), "inputs2": self.second.ids(i), "label": int(self.labels[i])}


def _tsv_folder(root: Path) -> Path | None:
    """The folder holding the three files: ``root``, ``root/tsv_data`` or ``root/lra_release/tsv_data``."""
    for folder in (root, root / "tsv_data", root / "lra_release" / "tsv_data"):
        if all((folder / name).is_file() for name in SPLIT_FILES.values()):
            return folder
    return None


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="retrieval", n_classes=2, l_max=o["l_max"], chance_acc=0.5, vocab_size=VOCAB_SIZE, dual_input=True)

@register_task("retrieval", shape=_shape)
def retrieval(data_dir: Path, release_dir: str | None = None, l_max: int = 4000, batch_size: int = 32,
              num_workers: int = 0) -> Task:
    """Build the byte-level AAN retrieval task (2 classes, two inputs per example).

    Args:
        data_dir: root data directory; the release is looked for under ``<data_dir>/lra/lra_release/`` and the
            ``datasets`` Arrow cache goes to ``<data_dir>/.hf_cache``.
        release_dir: an existing copy of the LRA release (``lra_release/``) or of its ``tsv_data/`` folder.
        l_max: each document is truncated to this many bytes (LRA: 4000); counts in ``spec.info``.
        batch_size: pairs per batch.
        num_workers: DataLoader workers.

    Raises:
        DatasetMissingError: the TSV files are not staged (the message names the prepare command).
        ValueError: a malformed line or label (the message names the file and line).
    """
    if l_max < 1:
        raise ValueError(f"retrieval: l_max must be at least 1; got {l_max}")
    data_dir = Path(data_dir)
    root = Path(release_dir).expanduser() if release_dir is not None else LRA_RELEASE.target(data_dir)
    folder = _tsv_folder(root)
    if folder is None:
        raise missing("retrieval", data_dir, f"the LRA release's tsv_data/{{{', '.join(SPLIT_FILES.values())}}} "
                                             f"under {root}")
    sets = {split: PairDataset(hf, l_max) for split, hf in load_aan_splits(folder, data_dir / ".hf_cache").items()}
    for split, ds in sets.items():
        if len(ds) == 0:
            raise ValueError(f"retrieval: {folder / SPLIT_FILES[split]} holds no pairs")
    test_counts = np.bincount(sets["test"].labels, minlength=2)
    info = {"source": "LRA release tsv_data (AAN)", "release_dir": str(folder), "l_max": l_max,
            "encoding": "each document's UTF-8 bytes as written in the TSV; byte b -> id b + 1; 0 = padding",
            "benchmark": l_max == BENCHMARK_L_MAX, "files": dict(SPLIT_FILES),
            "n_examples": {split: len(ds) for split, ds in sets.items()},
            "n_truncated": {split: ds.n_truncated for split, ds in sets.items()},
            "majority_frac": float(test_counts.max() / test_counts.sum())}
    spec = dataclasses.replace(_shape({"l_max": l_max}), info=info)
    collate = functools.partial(pad_collate, keys=PAIR_KEYS)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=collate,
                batch_size=batch_size, num_workers=num_workers)
