"""Reading the YAML files under configs/: one way for every package (Hydra's compose, interpolations resolved)."""
from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

__all__ = ["CONFIGS", "config_exists", "hydra_context", "read_config", "task_options"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    """Hydra's compose needs an initialised Hydra: the running application's (run_suite.py) or, outside one, ours."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            yield


def config_exists(path: str) -> bool:
    return (CONFIGS / f"{path}.yaml").is_file()


def read_config(path: str) -> dict[str, Any]:
    """The content of ``configs/<path>.yaml`` (e.g. ``model/s4``, ``recipes/lra/s4``, ``suite/quick``) as plain
    containers, interpolations resolved; the file's package nesting (``model:``, ``recipes: lra:``) removed. Each
    file is composed once per process (and per modification time); callers get their own copy."""
    if not config_exists(path):
        raise FileNotFoundError(f"no configs/{path}.yaml")
    return copy.deepcopy(_read_config((CONFIGS / f"{path}.yaml").stat().st_mtime_ns, path))


@functools.lru_cache(maxsize=None)
def _read_config(mtime_ns: int, path: str) -> dict[str, Any]:
    from hydra import compose

    with hydra_context():
        cfg = compose(config_name=path)
    node = OmegaConf.to_container(cfg, resolve=True)
    for part in path.split("/")[:-1]:  # a group file's content sits under its group's keys
        if isinstance(node, dict) and set(node) == {part}:
            node = node[part]
    return node or {}


def task_options(task: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``configs/task/<task>.yaml``, with ``overrides`` on top (``python -m tasks``, the resolver)."""
    opts = dict(read_config(f"task/{task}").get("options") or {}) if config_exists(f"task/{task}") else {}
    return {**opts, **(overrides or {})}
