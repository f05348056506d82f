"""The learning curve of one run: a row at every evaluation, stored as one Parquet file beside the run's record.

Columns (``HistoryRow``): the step and epoch of the evaluation, the training seconds so far (validation included, as
the record's ``wall_s``), the split evaluated (``validation`` at each evaluation, ``test`` once at the end, at the
best-validation weights), its accuracy and mean cross-entropy, the training loss and accuracy averaged over the
steps since the previous evaluation, and the learning rate of the last step.

The rows travel in the run's checkpoint, so a run resumed after a kill continues the curve from the checkpoint's
step: rows logged after that checkpoint are computed again, never duplicated, never missing. The file is rewritten
whole and atomically after each evaluation (a run has one row per epoch or so), so a reader never sees a torn file.
Under torchrun only rank 0 writes. Loggers (harness/loggers.py: TensorBoard, Weights & Biases) receive the same
rows as they are added; on ``restore`` they are told which rows the run continues from, so that they too drop what
was logged after the checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.files import write_atomic
from harness.records import arrow_schema


@dataclass(frozen=True)
class HistoryRow:
    step: int
    epoch: float
    elapsed_s: float                    # training time so far, validation included
    split: str                          # "validation" | "test"
    acc: float
    loss: float | None = None           # mean cross-entropy on the split
    train_loss: float | None = None     # mean over the training steps since the previous evaluation
    train_acc: float | None = None
    lr: float | None = None             # main learning rate of the last step


class Logger(Protocol):
    def restore(self, rows: list[HistoryRow]) -> None: ...   # the run continues after these rows
    def log(self, row: HistoryRow) -> None: ...
    def close(self) -> None: ...                             # may be called more than once


class History:
    """The rows of one run, written to ``path`` (None: kept in memory) and handed to ``loggers``."""

    def __init__(self, path: str | Path | None = None, loggers: Iterable[Logger] = ()):
        self.path = Path(path) if path is not None else None
        self.loggers = list(loggers)
        self.rows: list[HistoryRow] = []

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue from the rows a checkpoint carried (the ones after it are dropped: they will be logged again)."""
        self.rows = [HistoryRow(**r) for r in rows]
        self._write()
        for logger in self.loggers:
            logger.restore(list(self.rows))

    def state(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def add(self, **values: Any) -> HistoryRow:
        row = HistoryRow(**values)
        self.rows.append(row)
        self._write()
        for logger in self.loggers:
            logger.log(row)
        return row

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def _write(self) -> None:
        if self.path is None:
            return
        table = pa.Table.from_pylist(self.state(), schema=arrow_schema(HistoryRow))
        write_atomic(self.path, lambda tmp: pq.write_table(table, tmp))


def load_history(path: str | Path) -> pd.DataFrame:
    """One run's history as a DataFrame (columns: HistoryRow's fields)."""
    return pq.read_table(path).to_pandas()


__all__ = ["History", "HistoryRow", "Logger", "load_history"]
