"""LRA-style accuracy tables regenerated from stored run records (no model code is imported).

Conventions, in one place:
- Re-runs: for each (task, model, seed) the latest finished record (``ok`` or ``diverged``) counts, else the latest of
  any status: a later failed attempt never hides a result; cells whose records span several configs are noted.
- Our cells: mean ± sample standard deviation (``ddof=1``) of test accuracy in percent over the seeds
  whose status is "ok"; with one seed the ± part is left out. ``(n)`` after a cell is its seed count,
  ``(k/n)`` when only k of n seeds finished ok. A cell with no ok seed shows the failure kind(s)
  ("oom", "diverged", "skipped", "error").
- Average: mean over the table's tasks of the per-task means; a row missing some tasks (never run, or
  all seeds failed) is averaged over what it has and marked with a trailing "*".
- Published rows: copied from ``harness/data/published_lra.csv`` for models whose registry name has
  published numbers; rows marked unverified there are left out unless ``include_unverified``. A published
  "fail" counts as 50 % (chance on Path-X) in the published average, as the S4 paper does.
- Comparability: a task whose runs used a configuration other than the published benchmark's (a record's
  ``task_info`` says ``"benchmark": false``, e.g. a small generated variant) gets no published numbers in
  its column ("n/c") and a dagger on its title.
- Reproduced vs published (``published_comparison``): a run counts as the published benchmark's configuration only
  when all of ``BENCHMARK_RULE`` holds (its data, its recipe, nothing result-changing from the command line, its
  whole schedule); only such ok runs are set against the papers' numbers, with the difference in points.
- Concurrent writers (the jobs of a Hydra sweep sharing one results folder): every file is written to a unique
  temporary name beside it and renamed into place, so none is ever half-written or interleaved and the last
  writer wins; ``write_tables`` regenerates until no record arrived while it wrote, so the last tables written
  hold every record stored before them.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from core.files import write_atomic
from harness.records import load_records, records_dir
from harness.reference import published_accuracy, short_source

__all__ = ["latest_runs", "accuracy_long", "accuracy_table", "format_table_markdown", "headline_markdown",
           "write_tables", "stored_files", "benchmark_reason", "published_comparison", "BENCHMARK_RULE"]

TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx", "scifar", "speech_commands")
TASK_TITLES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X", "scifar": "sCIFAR", "speech_commands": "Speech Commands"}
STD_DDOF = 1          # sample std over seeds: with 3-5 seeds, ddof=0 would understate the spread
MAX_REWRITES = 10     # write_tables, write_report: regenerations while records keep arriving (later writers go on)
FAIL_AS_PCT = 50.0    # a published "fail" (Path-X) in the published average: chance, the S4 paper's convention
LONG_COLUMNS = ["model", "task", "n_seeds", "n_runs", "mean_acc_pct", "std_acc_pct", "status", "n_time_cut",
                "mean_wall_s", "mean_steps", "chance_acc_pct", "published_acc_pct", "published_status",
                "published_source"]
_NOTE_PARTIAL = "\\* averaged over the tasks this row has; missing or failed tasks are left out, not counted as chance."
_NOTE_SOME_FAILED = "(k/n): only k of the n seeds finished ok; the others' statuses are in accuracy.csv."
_NOTE_NC = ("†, n/c: these runs did not use the published benchmark's configuration (see each record's task_info); "
            "published numbers are not comparable and are not shown.")
_NOTE_TIME = ("⏱: time_budget_s cut training short (⏱k: in k of the cell's seeds), so how many steps ran depends on the "
              "machine's speed (each record's steps and stopped_by say).")
_NOTE_FAIL = f"fail: the paper reports no better than chance; counted as {FAIL_AS_PCT:g} in the published average."


FINISHED = ("ok", "diverged")  # final outcomes (as the suite's resume logic counts them)


def latest_runs(records: pd.DataFrame) -> pd.DataFrame:
    """Keep one record per (task, model, seed): the latest finished one (``ok`` or ``diverged``), else the latest of
    any status (timestamps order them, file order breaks ties). A later failed attempt (an error, an OOM, a run that
    could not start) never hides a result. The column ``n_configs`` says how many config hashes the cell's records
    span (a table notes cells with more than one)."""
    if records.empty:
        out = records.copy()
        out["n_configs"] = pd.Series(dtype="int64")
        return out
    ts = pd.to_datetime(records["timestamp"], utc=True, errors="coerce", format="ISO8601")
    order = ts.reset_index(drop=True).sort_values(kind="mergesort", na_position="first").index
    df = records.reset_index(drop=True).iloc[order]
    keys = ["task", "model", "seed"]
    hashes = df.assign(_h=df["config_hash"].fillna("").astype(str)).groupby(keys, dropna=False)["_h"].nunique()
    finished = df["status"].isin(FINISHED)
    latest_any = df.drop_duplicates(keys, keep="last")
    latest_done = df[finished].drop_duplicates(keys, keep="last")
    chosen = pd.concat([latest_done, latest_any]).drop_duplicates(keys, keep="first")
    chosen = chosen.sort_index().reset_index(drop=True)
    chosen["n_configs"] = [int(hashes.get((t, m, sd), 1)) for t, m, sd in zip(chosen.task, chosen.model, chosen.seed)]
    return chosen


def _status_kind(status: str) -> str:
    return str(status).split(":")[0].strip() or "unknown"


def non_benchmark_tasks(records: pd.DataFrame) -> set[str]:
    """Tasks with at least one record whose ``task_info`` marks its configuration as not the benchmark's."""
    out = set()
    for task, info in zip(records.get("task", []), records.get("task_info", [])):
        try:
            if info and json.loads(info).get("benchmark") is False:
                out.add(task)
        except (ValueError, AttributeError):
            continue
    return out


def _published(include_unverified: bool) -> pd.DataFrame:
    pub = published_accuracy(include_unverified)
    return pub[pub["registry_name"] != ""]


def _order(names, preferred) -> list[str]:
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(dict.fromkeys(preferred))}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _select(records: pd.DataFrame, tasks, models) -> tuple[pd.DataFrame, list[str], list[str]]:
    df = latest_runs(records)
    tasks = list(tasks) if tasks is not None else _order(df["task"], TASK_ORDER)
    models = list(models) if models is not None else _order(df["model"], published_accuracy()["registry_name"])
    df = df[df["task"].isin(tasks) & df["model"].isin(models)]
    return df, tasks, models


def accuracy_long(records: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None,
                  include_unverified: bool = False) -> pd.DataFrame:
    """One row per (model, task) that has runs: ok seeds of runs, mean/std accuracy (%), statuses, chance, published."""
    pub = _published(include_unverified)
    df, tasks, models = _select(records, tasks, models)
    chance = (df.groupby("task")["chance_acc"].mean() * 100).to_dict() if not df.empty else {}
    non_bench = non_benchmark_tasks(df)
    rows = []
    for model in models:
        for task in tasks:
            runs = df[(df["model"] == model) & (df["task"] == task)]
            if runs.empty:
                continue
            kinds = runs["status"].map(_status_kind)
            acc = runs.loc[kinds == "ok", "test_acc"].dropna().astype(float) * 100
            p = pub[(pub["registry_name"] == model) & (pub["task"] == task)].head(1)
            comparable = task not in non_bench
            rows.append({
                "model": model, "task": task, "n_seeds": len(acc),
                "mean_acc_pct": acc.mean() if len(acc) else float("nan"),
                "std_acc_pct": acc.std(ddof=STD_DDOF) if len(acc) > 1 else float("nan"),
                "status": "/".join(_order(kinds, ["ok"])), "n_runs": len(runs),
                "n_time_cut": int(((kinds == "ok") & (runs.get("stopped_by", "") == "time_budget")).sum()),
                "mean_wall_s": runs.loc[kinds == "ok", "wall_s"].dropna().astype(float).mean(),
                "mean_steps": runs.loc[kinds == "ok", "steps"].dropna().astype(float).mean(),
                "chance_acc_pct": chance.get(task, float("nan")),
                "published_acc_pct": p["acc_pct"].iloc[0] if len(p) and comparable else float("nan"),
                "published_status": (p["status"].iloc[0] if comparable else "not comparable") if len(p) else "",
                "published_source": p["source"].iloc[0] if len(p) else "",
            })
    out = pd.DataFrame(rows, columns=LONG_COLUMNS)
    return out.astype({"n_seeds": "int64", "n_runs": "int64", "n_time_cut": "int64"})


def _fmt_avg(values: list[float], n_expected: int, notes: set[str]) -> str:
    if not values:
        return ""
    if len(values) < n_expected:
        notes.add(_NOTE_PARTIAL)
    return f"{sum(values) / len(values):.2f}" + ("*" if len(values) < n_expected else "")


def _our_cell(r: pd.Series, notes: set[str]) -> tuple[str, float | None]:
    if r["n_seeds"] == 0:
        fails = [k for k in r["status"].split("/") if k != "ok"]
        return ("/".join(fails) or "n/a"), None
    cell = f"{r['mean_acc_pct']:.2f}"
    if r["n_seeds"] > 1:
        cell += f" ± {r['std_acc_pct']:.2f}"
    if r["n_time_cut"]:
        notes.add(_NOTE_TIME)
        cell += " ⏱" if r["n_time_cut"] == r["n_seeds"] else f" ⏱{r['n_time_cut']}"
    if r["n_seeds"] < r["n_runs"]:
        notes.add(_NOTE_SOME_FAILED)
        return cell + f" ({r['n_seeds']}/{r['n_runs']})", r["mean_acc_pct"]
    return cell + f" ({r['n_seeds']})", r["mean_acc_pct"]


def accuracy_table(records: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None,
                   include_unverified: bool = False) -> pd.DataFrame:
    """LRA-style table of strings: index = row labels, columns = tasks + "avg".

    Rows: each model (ours), then its published row(s) if any, then a "chance" row. Footnotes that the
    cells refer to are in ``table.attrs["footnotes"]``.

    Args:
        records: as returned by ``load_records`` (any number of re-runs).
        tasks: columns, in order; default: the tasks present, in LRA order.
        models: rows, in order; default: the models present, baselines first.
        include_unverified: also show published rows that REFERENCES.md marks unverified.
    """
    pub = _published(include_unverified)
    df, tasks, models = _select(records, tasks, models)
    long = accuracy_long(records, tasks, models, include_unverified).set_index(["model", "task"])
    non_bench = non_benchmark_tasks(df)
    notes: set[str] = {_NOTE_NC} if non_bench & set(tasks) else set()
    rows: dict[str, list[str]] = {}
    for model in models:
        cells, means = [], []
        for task in tasks:
            cell, mean = _our_cell(long.loc[(model, task)], notes) if (model, task) in long.index else ("", None)
            cells.append(cell)
            if mean is not None:
                means.append(mean)
        rows[model] = cells + [_fmt_avg(means, len(tasks), notes)]
        mpub = pub[(pub["registry_name"] == model) & pub["task"].isin(tasks)]
        for name, p in mpub.groupby("model", sort=False):
            p = p.set_index("task")
            cells, vals = [], []
            for task in tasks:
                if task not in p.index:
                    cells.append("")
                elif task in non_bench:
                    cells.append("n/c")
                elif p.at[task, "status"] == "fail":
                    cells.append("fail")
                    vals.append(FAIL_AS_PCT)
                    notes.add(_NOTE_FAIL)
                else:
                    cells.append(f"{p.at[task, 'acc_pct']:.2f}")
                    vals.append(float(p.at[task, "acc_pct"]))
            if not vals and "fail" not in cells:
                continue  # nothing comparable to show
            sources = ", ".join(dict.fromkeys(short_source(s) for s in p["source"]))
            tag = "published" if p["verified"].all() else "published, unverified"
            rows[f"{name} ({tag}: {sources})"] = cells + [_fmt_avg(vals, len(tasks), notes)]
    if not df.empty:
        chance = df.groupby("task")["chance_acc"].mean() * 100
        vals = [chance[t] for t in tasks if t in chance.index and pd.notna(chance[t])]
        rows["chance"] = [f"{chance[t]:.2f}" if t in chance.index and pd.notna(chance[t]) else "" for t in tasks]
        rows["chance"].append(_fmt_avg(vals, len(tasks), notes))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=tasks + ["avg"])
    table.index.name = "model"
    table.attrs["footnotes"] = [n for n in (_NOTE_NC, _NOTE_PARTIAL, _NOTE_SOME_FAILED, _NOTE_TIME, _NOTE_FAIL) if n in notes]
    table.attrs["non_benchmark"] = sorted(non_bench & set(tasks))
    return table


BENCHMARK_RECIPES = ("lra", "s5")   # configs/recipes/ whose settings are the papers' (or their base settings)
RESULT_NEUTRAL = ("train.progress", "train.checkpoint_every_steps", "train.checkpoint_every_s", "train.device",
                  "data_dir", "train.seed")   # command-line values that cannot change a result (as run_hash's)
BENCHMARK_RULE = (
    "a run counts as the published benchmark's configuration when (1) its task says so (`\"benchmark\": true` in "
    "the record's task_info: the release data, splits and sequence length of the benchmark; a generated or shortened "
    f"variant says false), (2) it ran a published recipe (config `recipe`: {', '.join(BENCHMARK_RECIPES)}), (3) no "
    "value that can change its result came from the command line (the record's config_sources), and (4) it ran "
    "its whole schedule (not cut by time_budget_s). Only ok runs meeting all four are compared; a cell is their mean "
    "over seeds, and Δ = ours − published, in percentage points")


def _json_field(value) -> dict:
    try:
        out = json.loads(value) if isinstance(value, str) and value else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def benchmark_reason(run) -> str:
    """Why the record ``run`` (a row of ``load_records``) is not in the published benchmark's configuration (see
    ``BENCHMARK_RULE``); "" when it is."""
    if _json_field(run.get("task_info")).get("benchmark") is not True:
        return "not the benchmark's data or length (task_info)"
    recipe = _json_field(run.get("config")).get("recipe")
    if recipe not in BENCHMARK_RECIPES:
        return f"recipe {recipe!r}, not a published one" if recipe else "no published recipe"
    cli = sorted(k for k, v in _json_field(run.get("config_sources")).items()
                 if str(v).startswith("command line") and k not in RESULT_NEUTRAL)
    if cli:
        return "set on the command line: " + ", ".join(cli)
    if run.get("stopped_by") == "time_budget":
        return "cut short by time_budget_s"
    return ""


def published_comparison(records: pd.DataFrame, include_unverified: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our accuracy against the published one, per (model, task) with a published number, from benchmark-configuration
    runs only (``BENCHMARK_RULE``; the latest record per seed, as the tables count them).

    Returns ``(compared, left_out)``: ``compared`` has model, task, n_seeds, ours_pct, std_pct, published_pct,
    published_status, delta_pp (ours − published; a published "fail" counts as ``FAIL_AS_PCT``) and source;
    ``left_out`` has model, task and reason for the cells with a published number whose runs do not qualify.
    """
    pub = _published(include_unverified)
    runs = latest_runs(records)
    compared, left_out = [], []
    for (model, task), cell in runs.groupby(["model", "task"], sort=False):
        p = pub[(pub["registry_name"] == model) & (pub["task"] == task)].head(1)
        if p.empty:
            continue
        reasons = [benchmark_reason(r) for _, r in cell.iterrows()]
        ok = cell[[not why for why in reasons] & (cell["status"] == "ok").to_numpy()]
        acc = ok["test_acc"].dropna().astype(float) * 100
        if acc.empty:
            why = "; ".join(dict.fromkeys(w for w in reasons if w)) or "no ok run"
            left_out.append({"model": model, "task": task, "reason": why})
            continue
        p = p.iloc[0]
        published = FAIL_AS_PCT if p["status"] == "fail" else float(p["acc_pct"])
        compared.append({"model": model, "task": task, "n_seeds": len(acc), "ours_pct": acc.mean(),
                         "std_pct": acc.std(ddof=STD_DDOF) if len(acc) > 1 else float("nan"),
                         "published_pct": published, "published_status": p["status"],
                         "delta_pp": acc.mean() - published, "source": short_source(p["source"])})
    columns = ["model", "task", "n_seeds", "ours_pct", "std_pct", "published_pct", "published_status", "delta_pp",
               "source"]
    return (_by_task(pd.DataFrame(compared, columns=columns)),
            _by_task(pd.DataFrame(left_out, columns=["model", "task", "reason"])))


def _by_task(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in TASK_ORDER, models in their order of appearance within a task."""
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return df.sort_values("task", key=lambda c: c.map(lambda t: rank.get(t, len(rank))), kind="mergesort") \
        .reset_index(drop=True)


def cost_table(records: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None) -> pd.DataFrame:
    """Table of strings like the accuracy table's (rows = models, columns = tasks): each cell is the mean wall time and
    step count of the runs the accuracy cell averages (``"38 s, 252 steps"``); empty where no run finished ok."""
    long = accuracy_long(records, tasks, models)
    if long.empty:
        return pd.DataFrame()
    _, tasks, models = _select(records, tasks, models)
    cells = {(r.model, r.task): ", ".join([f"{r.mean_wall_s:.0f} s"] * pd.notna(r.mean_wall_s)
                                          + [f"{r.mean_steps:.0f} steps"] * pd.notna(r.mean_steps))
             for r in long.itertuples()}
    table = pd.DataFrame([[cells.get((m, t), "") for t in tasks] for m in models], index=models, columns=tasks)
    table.index.name = "model"
    return table


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    return sorted({str(v) for v in df[col].dropna() if str(v)}) if col in df else []


def format_table_markdown(records: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None,
                          include_unverified: bool = False, title: str = "Test accuracy (%), LRA-style",
                          with_table: bool = True) -> str:
    """Markdown document: title, what is ours vs published, hardware and commits, the table and its footnotes
    (``headline_markdown``; left out with ``with_table=False``, for a report that shows it elsewhere), the cost."""
    lines = [f"# {title}", ""]
    if records.empty:
        return "\n".join(lines + ["No run records found.", ""])
    runs = latest_runs(records)
    lines += [
        *([ACCURACY_LEGEND, ""] if with_table else []),
        f"Hardware: {', '.join(_unique(runs, 'device_name')) or 'unknown'}  ",
        f"Git commit(s): {', '.join(_unique(runs, 'git_commit')) or 'unknown'}  ",
        f"Runs: {len(runs)} (latest finished per task, model, seed; {len(records)} records stored)",
        "",
    ]
    if with_table:
        lines += [headline_markdown(records, tasks, models, include_unverified)]
    cost = cost_table(records, tasks, models)
    if not cost.empty:
        lines += ["What each run cost: wall time of training (validation included) and optimizer steps, mean over the "
                  "seeds above; the hardware is named above.", "",
                  tabulate(cost.rename(columns=lambda t: TASK_TITLES.get(t, t)).reset_index(), headers="keys",
                           tablefmt="github", showindex=False, disable_numparse=True), ""]
    return "\n".join(lines)


ACCURACY_LEGEND = ("Our rows: mean ± sample std (ddof=1) of test accuracy at the best-validation checkpoint over "
                   "seeds that finished ok; (n) = number of seeds; a status (oom, diverged, skipped, error) where no "
                   "seed finished. Rows marked \"published\" are the papers' numbers, copied, not re-run here.")


def headline_markdown(records: pd.DataFrame, tasks: list[str] | None = None, models: list[str] | None = None,
                      include_unverified: bool = False) -> str:
    """The accuracy table (markdown) with the footnotes its cells refer to; "" without records."""
    if records.empty:
        return ""
    runs = latest_runs(records)
    table = accuracy_table(records, tasks, models, include_unverified)
    titles = {t: TASK_TITLES.get(t, t) + ("†" if t in table.attrs["non_benchmark"] else "") for t in table.columns}
    lines = [tabulate(table.rename(columns=titles).reset_index(), headers="keys", tablefmt="github", showindex=False,
                      disable_numparse=True), ""]
    notes = list(table.attrs["footnotes"])
    mixed = runs[runs["n_configs"] > 1]
    if len(mixed):
        cells = ", ".join(f"{r.task}/{r.model}/seed {r.seed}" for r in mixed.itertuples())
        notes.append(f"records of several configurations exist for {cells}: each cell shows its latest finished "
                     "record (its config_hash is in accuracy.csv's records); the others are kept, not averaged in.")
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def stored_files(folders: Iterable[Path]) -> frozenset[Path]:
    """The record files (``*.parquet``) in ``folders`` now: a changed set means records arrived meanwhile."""
    return frozenset(p for folder in folders for p in Path(folder).glob("*.parquet"))


def write_tables(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Regenerate ``accuracy.md`` and ``accuracy.csv`` from the records under ``results_dir``.

    Safe with concurrent writers (see the module docstring): each file is replaced atomically, and the tables are
    regenerated (up to ``MAX_REWRITES`` times) while records arrive during the writing.

    Args:
        results_dir: the folder holding ``records/``.
        out_dir: where to write; default ``results_dir``.

    Returns:
        ``{"accuracy_md": path, "accuracy_csv": path}``.
    """
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    paths = {"accuracy_md": out / "accuracy.md", "accuracy_csv": out / "accuracy.csv"}
    for _ in range(MAX_REWRITES):
        seen = stored_files([records_dir(results_dir)])
        records = load_records(results_dir)
        write_atomic(paths["accuracy_md"], format_table_markdown(records))
        write_atomic(paths["accuracy_csv"], accuracy_long(records).to_csv(index=False, float_format="%.4f"))
        if stored_files([records_dir(results_dir)]) == seen:
            break
    return paths
