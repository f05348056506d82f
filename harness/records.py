"""Result records: one typed row per (task, model, seed) run, stored append-only as Parquet.

Each record is its own small Parquet file under ``<results_dir>/records/``, written to a temporary
name and renamed into place (atomic on POSIX), so a crash or a kill mid-write never damages a record
already stored, and concurrent writers never touch the same file. ``load_records`` reads them all
back into one DataFrame, skipping (with a warning) any file that cannot be read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.files import write_atomic

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunRecord:
    """One run's outcome. Units live in the field names; ``None`` means not measured."""
    task: str
    model: str
    seed: int
    status: str                                # "ok" | "oom" | "diverged" | "skipped: <why>" | "error: <message>"
    suite: str = ""
    test_acc: float | None = None              # at the best-validation state, in [0, 1]
    best_val_acc: float | None = None
    chance_acc: float | None = None
    train_samples_per_s: float | None = None   # after warm-up, synchronized; excludes data loading and eval
    train_tokens_per_s: float | None = None    # real (non-pad) tokens
    peak_mem_mib: float | None = None
    peak_mem_kind: str = ""                    # "cuda_max_allocated" | "cpu_rss_growth"
    wall_s: float | None = None
    n_params: int | None = None
    epochs: float | None = None
    steps: int | None = None
    final_train_loss: float | None = None
    resumed_from_step: int | None = None       # the step of the checkpoint this run last resumed from
    world_size: int | None = None              # data-parallel processes (torchrun); 1 otherwise
    stopped_by: str = ""                       # "schedule" (its epochs / max_steps ran out) | "time_budget" (cut short
                                               # by time_budget_s: steps depend on the machine's speed) | "diverged"
    kernel_backend: str = ""                   # kernels chosen automatically (S4 family), else "n/a"
    comparison: str = ""                       # parameter rule of the recipe: "apples-to-apples" | "free-for-all" | ""
    device: str = ""                           # "cpu" | "cuda"
    device_name: str = ""
    torch_version: str = ""
    git_commit: str = ""
    config_hash: str = ""
    config: str = ""                           # resolved config, JSON
    config_sources: str = ""                   # where each value of the config came from (file and block, or the
                                               # command line), JSON {dotted key: source}
    task_info: str = ""                        # task variant, sizes, vocabulary, data source, JSON
    history: str = ""                          # the run's learning curve, relative to the results folder
                                               # (history/<task>__<model>__seed<seed>__<config_hash>.parquet)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def arrow_schema(record_type: type) -> pa.Schema:
    """The Parquet schema of a record dataclass whose fields are int, float or str (optionally ``| None``)."""
    kinds = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    return pa.schema([pa.field(f.name, kinds[f.type.split(" ")[0] if isinstance(f.type, str) else f.type.__name__])
                      for f in dataclasses.fields(record_type)])


def write_row(rec: Any, out_dir: Path, stem: str) -> Path:
    """Store the dataclass ``rec`` as its own Parquet file ``<out_dir>/<stem>__<time>__<random>.parquet``, atomically
    (``write_atomic``): a crash never leaves a partial file and concurrent writers never collide."""
    name = f"{stem}__{time.strftime('%Y%m%d-%H%M%S')}__{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist([dataclasses.asdict(rec)], schema=arrow_schema(type(rec)))
    return write_atomic(out_dir / name, lambda tmp: pq.write_table(table, tmp))


def load_rows(folder: Path, record_type: type) -> pd.DataFrame:
    """Every Parquet row file in ``folder`` as one DataFrame (columns = ``record_type``'s fields). A file that cannot
    be read, or that lacks a required field (one without a default: task, model, seed, status ...), is skipped with a
    warning naming it; an optional field a file lacks (a record written before the field existed) takes the
    field's default."""
    fields = dataclasses.fields(record_type)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    frames = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            frame = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            warnings.warn(f"skipping unreadable record {path}: {exc}", stacklevel=2)
            continue
        missing = [name for name in required if name not in frame.columns or frame[name].isna().any()]
        if missing:
            warnings.warn(f"skipping incomplete record {path}: no value for {', '.join(missing)}", stacklevel=2)
            continue
        for f in fields:
            if f.name not in frame.columns:
                frame[f.name] = f.default if f.default is not dataclasses.MISSING else None
        frames.append(frame[[f.name for f in fields]])
    if not frames:
        return pd.DataFrame(columns=[f.name for f in fields])
    return pd.concat(frames, ignore_index=True)


def config_hash(config: Any) -> str:
    """Short stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def records_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "records"


def write_record(rec: RunRecord, results_dir: str | Path) -> Path:
    """Store ``rec`` as its own Parquet file, atomically; returns the path written."""
    return write_row(rec, records_dir(results_dir), f"{rec.task}__{rec.model}__seed{rec.seed}")


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """All stored records under ``results_dir`` as a DataFrame (one row per record, columns = RunRecord fields)."""
    return load_rows(records_dir(results_dir), RunRecord)


def consolidate(results_dir: str | Path) -> Path:
    """Gather every record of ``results_dir`` into one Parquet file, ``<results_dir>/records.parquet`` (atomically
    replaced; the per-run files stay the source of truth). Safe while other processes still add records: a record
    stored after the gathering is simply in the next consolidation."""
    table = pa.Table.from_pandas(load_records(results_dir), schema=arrow_schema(RunRecord), preserve_index=False)
    return write_atomic(Path(results_dir) / "records.parquet", lambda tmp: pq.write_table(table, tmp))

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.records",
                                     description="Gather the per-run record files of results folders into one Parquet file each.")
    parser.add_argument("command", choices=["consolidate"])
    parser.add_argument("results_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for folder in args.results_dirs:
        if not any(records_dir(folder).glob("*.parquet")):  # a mistyped folder: say so, create nothing
            parser.exit(2, f"error: no records under {folder} (expected {records_dir(folder)}/*.parquet)\n")
        path = consolidate(folder)
        print(f"{path}: {pq.read_metadata(path).num_rows} records")


# -- the identity of a run -----------------------------------------------------------------------------------------
UNHASHED_TRAIN_KEYS = ("progress", "checkpoint_every_steps", "checkpoint_every_s")


def run_hash(run_cfg: dict) -> str:
    """The identity of a run's experiment: the hash of its resolved config without the settings that cannot change
    its results (progress bars, checkpoint intervals, where the data folder is mounted)."""
    train = {k: v for k, v in run_cfg["train"].items() if k not in UNHASHED_TRAIN_KEYS}
    hashed = {**{k: v for k, v in run_cfg.items() if k != "data_dir"}, "train": train}
    options = run_cfg["task"]["options"]
    if "auto" in (options.get("variant"), options.get("source")):  # the data it resolves to is part of the experiment:
        from tasks import data_source  # a run on generated data is not finished by a run on the release, nor resumed

        picked = data_source(run_cfg["task"]["name"], run_cfg["data_dir"], **options)
        hashed["data_source"] = picked[0] if picked else None
    return config_hash(hashed)


# -- storing records as a suite produces them --------------------------------------------------------------------
class RecordsNotWritten(OSError):
    """Runs finished but their records could not be stored (a full disk, ``records/`` not a folder): ``records``
    holds them, to be printed so that nothing is lost."""

    def __init__(self, records: list[RunRecord], results_dir: Path):
        self.records = records
        super().__init__(f"{len(records)} record(s) could not be written under {records_dir(results_dir)}; "
                         f"they follow as JSON lines on standard output")


RECORD_RETRIES, RECORD_RETRY_WAIT_S = 3, 1.0  # a record write is tried 3 times, 1 s then 2 s apart


class RecordStore:
    """Writes records as they come; one that cannot be written (full disk) is kept in memory, retried with every
    later write and once more at the end, and handed back by ``unwritten``."""

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir
        self.pending: list[RunRecord] = []

    def add(self, rec: RunRecord) -> Path | None:
        """Store ``rec`` (and any earlier record still pending); the path written, or None when it is pending."""
        self.pending.append(rec)
        written = self.flush()
        return written.get(id(rec))

    def flush(self) -> dict[int, Path]:
        written = {}
        for rec in list(self.pending):
            for attempt in range(RECORD_RETRIES):
                try:
                    written[id(rec)] = write_record(rec, self.results_dir)
                    self.pending.remove(rec)
                    break
                except OSError as exc:
                    if attempt + 1 < RECORD_RETRIES:
                        time.sleep(RECORD_RETRY_WAIT_S * 2 ** attempt)
                        continue
                    log.error("record of %s / %s / seed %d NOT written (%s); kept in memory, retried with the next "
                              "record and at the end, printed as JSON if it still cannot be written",
                              rec.task, rec.model, rec.seed, exc)
        return written
