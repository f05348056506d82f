"""Where a run's history rows go besides its Parquet file: TensorBoard event files and Weights & Biases.

The top-level config key ``logger`` names them: ``tensorboard`` (the default), ``wandb``, a list of both
(``logger=[tensorboard,wandb]``) or ``none``. It never enters a run's config hash: where the curves are shown does
not change the result, so a run started with one logger resumes (and counts as finished) with another.

- ``tensorboard``: event files under ``<results_dir>/tb/<run name>/`` (run name as the history file's stem,
  ``<task>__<model>__seed<seed>__<config_hash>``); view with ``tensorboard --logdir <results_dir>/tb``.
- ``wandb``: one W&B run per harness run, named as above, grouped by suite, with the resolved config; ``WANDB_MODE``
  (``offline``: written under ``<results_dir>/wandb/``, upload later with ``wandb sync``), ``WANDB_PROJECT``
  (default ``lrbench``) and ``WANDB_ENTITY`` are W&B's own environment variables and are respected.

Scalars, against the training step: ``val/acc``, ``val/loss``, ``train/loss``, ``train/acc`` (averaged since the
previous evaluation), ``lr``, and ``test/acc``, ``test/loss`` once at the end; accuracies in [0, 1]. An event's
time is the run's start plus its ``elapsed_s`` (training seconds, validation included), so TensorBoard's
"relative" axis is training time even across a resume.

A resumed run (``History.restore``) never shows a point twice: TensorBoard's writer opens with ``purge_step`` one
past the checkpoint's last row (TensorBoard discards what the killed process logged after it); W&B resumes the same
W&B run (its id is kept in ``<results_dir>/wandb/ids/<run name>``) and skips steps the server already holds. Loggers
are lazy: nothing is created on disk before the first row, and the suite gives loggers to rank 0 only.
"""
from __future__ import annotations

import importlib.util
import os
import time
import uuid
from pathlib import Path
from typing import Any

from core.files import write_atomic
from harness.history import HistoryRow, Logger

__all__ = ["LOGGERS", "LoggerUnavailable", "TensorBoardLogger", "WandbLogger", "build_loggers", "check_loggers",
           "logger_names", "scalars"]

LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger name -> the package it needs
DEFAULT_WANDB_PROJECT = "lrbench"


class LoggerUnavailable(ValueError):
    """A logger the config asks for needs a package that is not installed (a ValueError: a setting refused)."""


def logger_names(value: Any) -> list[str]:
    """The loggers a ``logger`` setting names: a name, a list of names, or ``none`` (also null or []) for none.
    Raises ValueError naming the accepted values for anything else."""
    names = [] if value is None else [value] if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in names]
    accepted = f"accepted: {', '.join(LOGGERS)}, none, or a list such as logger=[tensorboard,wandb]"
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ValueError(f"logger={value!r}: unknown logger(s) {', '.join(map(repr, bad))}; {accepted}")
    return list(dict.fromkeys(names))


def check_loggers(value: Any) -> list[str]:
    """``logger_names(value)``, refusing (LoggerUnavailable, one line naming the install command) a logger whose
    package is not installed. Called before anything runs."""
    names = logger_names(value)
    for name in names:
        if importlib.util.find_spec(LOGGERS[name]) is None:
            hint = " (or run with logger=none)" if name == "tensorboard" else ""  # the default: say how to go without
            raise LoggerUnavailable(f"logger={name} needs the {LOGGERS[name]} package, which is not installed: "
                                    f"pip install {LOGGERS[name]}{hint}")
    return names


def build_loggers(value: Any, results_dir: str | Path, run_name: str, config: dict[str, Any] | None = None,
                  group: str = "") -> list[Logger]:
    """The loggers ``value`` names for one run (``run_name``: the history file's stem), writing under
    ``results_dir``; ``config`` (the resolved run config) and ``group`` (the suite) go to W&B."""
    out: list[Logger] = []
    for name in check_loggers(value):
        if name == "tensorboard":
            out.append(TensorBoardLogger(Path(results_dir) / "tb" / run_name))
        else:
            out.append(WandbLogger(Path(results_dir), run_name, config or {}, group))
    return out


def scalars(row: HistoryRow) -> dict[str, float]:
    """A history row as logger scalars (tag -> value); values that were not measured are left out."""
    if row.split == "test":
        values = {"test/acc": row.acc, "test/loss": row.loss}
    else:
        values = {"val/acc": row.acc, "val/loss": row.loss, "train/loss": row.train_loss,
                  "train/acc": row.train_acc, "lr": row.lr}
    return {k: float(v) for k, v in values.items() if v is not None}


class TensorBoardLogger:
    """Event files of one run in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``), opened at the first row."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.purge_step = 0     # a fresh run hides whatever an earlier attempt of the same run left in log_dir
        self._writer = None
        self._t0: float | None = None   # wall-clock start of the run, so that event time = start + elapsed_s

    def restore(self, rows: list[HistoryRow]) -> None:
        """The run continues after ``rows``: points logged after the last of them are purged."""
        self.purge_step = rows[-1].step + 1 if rows else 0

    def log(self, row: HistoryRow) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        if self._t0 is None:
            self._t0 = time.time() - row.elapsed_s
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=row.step, walltime=self._t0 + row.elapsed_s)
        self._writer.flush()    # one row per evaluation: cheap, and a kill loses nothing logged

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbLogger:
    """One W&B run per harness run, started at the first row; a resumed harness run resumes the same W&B run."""

    def __init__(self, results_dir: Path, run_name: str, config: dict[str, Any], group: str = ""):
        self.results_dir, self.run_name, self.config, self.group = Path(results_dir), run_name, config, group
        self.resuming = False
        self._run = None
        self._skip_below = 0    # steps the resumed W&B run holds already (logged before the kill)

    @property
    def id_file(self) -> Path:
        return self.results_dir / "wandb" / "ids" / self.run_name

    def restore(self, rows: list[HistoryRow]) -> None:
        self.resuming = bool(rows)

    def _start(self) -> Any:
        import wandb

        run_id = self.id_file.read_text().strip() if self.resuming and self.id_file.is_file() else None
        if run_id is None:  # a fresh run (or one whose W&B id was lost) is a new W&B run
            run_id = uuid.uuid4().hex[:8]
            write_atomic(self.id_file, run_id)
        return wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_WANDB_PROJECT), id=run_id,
                          name=self.run_name, group=self.group or None, tags=self.run_name.split("__")[:2],
                          config=self.config, dir=str(self.results_dir), resume="allow")

    def log(self, row: HistoryRow) -> None:
        if self._run is None:
            self._run = self._start()
            self._skip_below = int(getattr(self._run, "step", 0) or 0) if self.resuming else 0
        if row.step < self._skip_below:
            return
        self._run.log({**scalars(row), "elapsed_s": row.elapsed_s, "epoch": row.epoch}, step=row.step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
