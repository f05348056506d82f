"""Parameter counts per (task, model) of a suite, and how each model compares with the transformer's count.

The LRA paper compares its efficient Transformers at the base Transformer's hyperparameters; models of another
family (RNNs, state space models) are compared "apples-to-apples" only when their size is matched to the
Transformer's. Each recipe file says which rule its model follows (``comparison: apples-to-apples`` or
``free-for-all``: the model's own published configuration, whatever its size); the suite runner copies it into
every RunRecord. Counts are exact: the model is built (on CPU, no data) from the resolved run configuration and
the task's shape (``tasks.task_spec``).

    python -m harness.params                      # the default suite
    python -m harness.params suite=lra            # every (task, model) of the lra suite, vs the transformer
    python -m harness.params suite=lra --match=lstm   # the lstm d_model per task that matches the transformer
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import resolve_run_config
from models.backbone import build_model
from tasks import task_spec

__all__ = ["count_parameters", "parameter_table", "match_d_model", "TOLERANCE"]

TOLERANCE = 0.10  # apples-to-apples: total parameters within 10% of the transformer's for the same task
REFERENCE = "transformer"


def count_parameters(cfg: DictConfig, task: str, model: str) -> dict[str, Any]:
    """Parameters of one (task, model) of suite ``cfg``: total, and the sequence body (the blocks) alone."""
    run = resolve_run_config(cfg, task, model, seed=0)
    spec = task_spec(task, **run["task"]["options"])
    net = build_model(run["model"]["name"], spec, run["model"].get("backbone"), run["model"].get("hparams"))  # on CPU
    return {"task": task, "model": model, "n_params": sum(p.numel() for p in net.parameters()),
            "n_params_body": sum(p.numel() for p in net.blocks.parameters()),
            "comparison": run["model"].get("comparison", "")}


def parameter_table(cfg: DictConfig, tasks: list[str] | None = None, models: list[str] | None = None) -> pd.DataFrame:
    """One row per (task, model): counts, the ratio to the transformer's total for the task (when it is in the
    suite) and, for apples-to-apples models, whether that ratio is within ``TOLERANCE``."""
    tasks, models = list(tasks or cfg.tasks), list(models or cfg.models)
    rows = [count_parameters(cfg, t, m) for t in tasks for m in models]
    df = pd.DataFrame(rows)
    ref = df[df.model == REFERENCE].set_index("task").n_params
    df["vs_transformer"] = df.task.map(ref) if len(ref) else float("nan")
    df["vs_transformer"] = df.n_params / df["vs_transformer"]
    df["within_tolerance"] = (df.vs_transformer - 1).abs() <= TOLERANCE
    return df


def match_d_model(cfg: DictConfig, task: str, model: str, target: int, multiple: int = 8) -> tuple[int, int]:
    """The d_model (a multiple of ``multiple``) whose total parameter count for (task, model) is closest to
    ``target``, other settings as resolved; returns (d_model, count). Counts grow with d_model, so bisection."""
    @functools.cache  # each count builds a model: the final comparison reuses the bisection's
    def count(d: int) -> int:
        sub = cfg.copy()
        OmegaConf.set_struct(sub, False)
        sub.model_overrides = OmegaConf.merge(sub.get("model_overrides") or {}, {model: {"backbone": {"d_model": d}}})
        return count_parameters(sub, task, model)["n_params"]
    lo, hi = 1, 4096 // multiple  # in units of ``multiple``
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid * multiple) <= target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda k: abs(count(k * multiple) - target))
    return best * multiple, count(best * multiple)


def _markdown(df: pd.DataFrame) -> str:
    lines = ["| task | model | comparison | parameters | body | vs transformer |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in df.itertuples():
        ratio = "" if pd.isna(r.vs_transformer) else f"{r.vs_transformer:.3f}"
        flag = " (!)" if r.comparison == "apples-to-apples" and not r.within_tolerance else ""
        lines.append(f"| {r.task} | {r.model} | {r.comparison or '-'} | {r.n_params:,} | {r.n_params_body:,} | {ratio}{flag} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from harness.config import compose_config

    import models  # noqa: F401  (registers the layers)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    # the command line's overrides, as run_suite.py takes them (they outrank every config file)
    match = [a.split("=", 1)[1] for a in argv if a.startswith("--match=")]
    cfg = compose_config([a for a in argv if not a.startswith("--match=")])
    if match:  # suggest widths: python -m harness.params suite=lra --match=lstm
        for task in cfg.tasks:
            target = count_parameters(cfg, task, REFERENCE)["n_params"]
            for model in match:
                d, n = match_d_model(cfg, task, model, target)
                print(f"{task:12s} {model:12s} d_model {d:5d}: {n:,} parameters vs {target:,} ({n / target:.3f})")
        return 0
    df = parameter_table(cfg)
    print(_markdown(df))
    bad = df[(df.comparison == "apples-to-apples") & ~df.within_tolerance]
    if len(bad):
        print(f"\n(!) {len(bad)} apples-to-apples pair(s) outside {TOLERANCE:.0%} of the transformer's count")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
