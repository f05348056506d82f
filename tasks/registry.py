"""Task registry: a task is a spec, its train/val/test datasets and the collate function that makes their batches.

The task owns the data; the harness owns loading (harness/loading.py builds every DataLoader: the training order, a
function of seed and epoch; evaluation shards under torchrun; plain loaders for inspection). A builder therefore
takes no training seed: the data never depend on it.

Batches are dicts of tensors (B batch, L padded length, D real-valued input width):
    inputs   (B, L) int64 token ids, or (B, L, D) float32 for real-valued tasks
    lengths  (B,) int64 number of real (non-pad) positions; padding sits at the end
    labels   (B,) int64 class ids
and for dual-input tasks (retrieval) also ``inputs2`` and ``lengths2``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from core.registry import Registry, check_kwargs

__all__ = ["TaskSpec", "Task", "DatasetMissingError", "register_task", "build_task", "list_tasks", "task_spec",
           "data_source", "generated_sets", "task_builder"]


class DatasetMissingError(FileNotFoundError):
    """A dataset that must be downloaded is not staged; the message names the command that stages it."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    n_classes: int
    l_max: int
    chance_acc: float                # accuracy of always guessing, in [0, 1]
    vocab_size: int | None = None    # token inputs (pad id 0 included)
    d_input: int | None = None       # real-valued inputs
    dual_input: bool = False
    pad_id: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # variant, sizes, vocabulary, data source: goes into records

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.d_input is None):
            raise ValueError(f"task {self.name!r}: give exactly one of vocab_size (tokens) or d_input (real values)")


@dataclass
class Task:
    spec: TaskSpec
    train: Dataset
    val: Dataset
    test: Dataset
    collate: Callable[[list[Any]], dict[str, Any]]   # examples -> batch dict (above)
    batch_size: int                                   # the global batch (the task option of the same name)
    num_workers: int = 0                              # DataLoader worker processes

    def split(self, name: str) -> Dataset:
        """The dataset of split ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}; known: train, val, test")
        return getattr(self, name)


_TASKS: Registry[Callable[..., Task]] = Registry("task")


_SHAPES: dict[str, Callable[[dict[str, Any]], TaskSpec]] = {}
_SOURCES: dict[str, Callable[[Path, dict[str, Any]], tuple[str, str]]] = {}
_GENERATED: dict[str, Callable[[Path], list[str]]] = {}


def register_task(name: str, shape: Callable[[dict[str, Any]], TaskSpec] | None = None,
                  source: Callable[[Path, dict[str, Any]], tuple[str, str]] | None = None,
                  generated: Callable[[Path], list[str]] | None = None
                  ) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Register a task builder ``fn(data_dir, **options) -> Task`` under ``name``.

    ``shape(options) -> TaskSpec`` gives the spec's shape fields (classes, length, vocabulary or input width, dual
    input, chance) from the builder's options with their defaults filled in, without touching any data; it serves
    parameter counts and model checks for tasks whose data are not staged (``task_spec``).

    ``source(data_dir, options) -> (source, why)``, for tasks that can either generate their data or read a
    release (ListOps, Pathfinder, Path-X): which one a build with these options would use (``"release"`` or
    ``"generate"``) and why, looking only at what is staged; the builder decides with the same function.

    ``generated(data_dir) -> [set name, ...]``, for tasks that keep generated sets on disk: the sets there now
    (``python -m tasks status`` lists them)."""
    if generated is not None:
        _GENERATED[name] = generated
    if shape is not None:
        _SHAPES[name] = shape
    if source is not None:
        _SOURCES[name] = source
    return _TASKS.register(name)


def _bound_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the builder's defaults filled in (``data_dir`` left out)."""
    fn = _TASKS.get(name)
    check_kwargs(fn, options, what=f"task {name!r}", skip=("data_dir",))
    bound = inspect.signature(fn).bind_partial(**options)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "data_dir"}


def data_source(name: str, data_dir: str | Path, **options: Any) -> tuple[str, str] | None:
    """Which data a build of task ``name`` with ``options`` would read, and why, without reading them:
    ``("release" | "generate", reason)``; None for a task with a single source. Raises ValueError for an
    unknown option value (as the builder would)."""
    if name not in _SOURCES:
        _TASKS.get(name)  # KeyError for an unknown task
        return None
    return _SOURCES[name](Path(data_dir).expanduser(), _bound_options(name, options))


def task_spec(name: str, **options: Any) -> TaskSpec:
    """The shape of task ``name`` under ``options`` (as in its config file), without loading its data.

    ``info`` is empty: the data-dependent facts (sizes, sources) come only from ``build_task``.

    Raises:
        KeyError: unknown task, or a task registered without a shape function.
        TypeError: an option the task does not accept.
    """
    fn = _TASKS.get(name)
    check_kwargs(fn, options, what=f"task {name!r}", skip=("data_dir",))
    if name not in _SHAPES:
        raise KeyError(f"task {name!r} has no shape function (register_task(..., shape=...))")
    bound = inspect.signature(fn).bind_partial(**options)
    bound.apply_defaults()
    return _SHAPES[name](dict(bound.arguments))


def generated_sets(name: str, data_dir: str | Path) -> list[str] | None:
    """The generated sets of task ``name`` under ``data_dir``; None for a task that keeps none on disk."""
    _TASKS.get(name)  # KeyError for an unknown task
    return _GENERATED[name](Path(data_dir).expanduser()) if name in _GENERATED else None


def list_tasks() -> list[str]:
    return _TASKS.names()


def task_builder(name: str) -> Callable[..., Task]:
    """The registered builder of ``name`` (its signature lists the task's options)."""
    return _TASKS.get(name)


def build_task(name: str, data_dir: str | Path, **kw: Any) -> Task:
    """Build a registered task.

    Args:
        name: registered task name, e.g. ``"listops"``.
        data_dir: root data directory; each task uses its own sub-folder.
        **kw: the task's options (its config file lists them).

    Raises:
        KeyError: unknown task name (the message lists the known ones).
        TypeError: an option the task does not accept (the message lists those it does).
        DatasetMissingError: a downloadable dataset is not staged.
    """
    return _TASKS.build(name, {"data_dir": Path(data_dir)}, kw)
