"""Published reference numbers (LRA, S4 and successors) shipped as CSV under ``harness/data/``.

``published_lra.csv`` is long format, one row per (model, task): ``acc_pct`` is a percentage and is
empty where the paper reports a fail (``status == "fail"``); ``verified`` is false for rows quoted from
secondary sources, which are not shown as references until checked against the paper.
``published_efficiency.csv`` holds speed and memory facts, one value per row, with its unit and hardware.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import pandas as pd

__all__ = ["published_accuracy", "published_efficiency", "short_source"]


def _read(name: str, **kw) -> pd.DataFrame:
    with resources.files(__package__).joinpath("data", name).open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, **kw)


@lru_cache(maxsize=None)
def _accuracy() -> pd.DataFrame:
    str_cols = ["model", "registry_name", "task", "status", "source"]
    df = _read("published_lra.csv", dtype={c: str for c in str_cols}, keep_default_na=False,
               converters={"acc_pct": lambda s: float(s) if s else float("nan"),
                           "verified": lambda s: s.strip().lower() == "true"})
    return df


def published_accuracy(include_unverified: bool = True) -> pd.DataFrame:
    """Published test accuracies, one row per (model, task); columns as in ``published_lra.csv``."""
    df = _accuracy()
    return (df if include_unverified else df[df["verified"]]).reset_index(drop=True).copy()


@lru_cache(maxsize=None)
def _efficiency() -> pd.DataFrame:
    df = _read("published_efficiency.csv", keep_default_na=False,
               dtype={"model": str, "registry_name": str, "metric": str, "unit": str,
                      "hardware": str, "setting": str, "source": str})
    for col in ("length", "dim"):
        df[col] = pd.to_numeric(df[col].replace("", None)).astype("Int64")
    df["value"] = df["value"].astype(float)
    return df


def published_efficiency() -> pd.DataFrame:
    """Published speed/memory facts, long format: model, registry_name, metric, length, dim, value, unit, ..."""
    return _efficiency().copy()


def short_source(source: str) -> str:
    """Compact citation for table labels: ``"LRA paper (Tay et al., ICLR 2021) Table 1" -> "LRA Table 1"``."""
    s = source.split(";")[0]
    s = re.sub(r"\s*\([^)]*\)", "", s).replace(" paper", "")
    return " ".join(s.split())
