"""The results report, regenerated from stored records alone (no model code, no torch).

``python -m harness.report results/quick results/efficiency [--out results/REPORT.md]`` reads the accuracy
records (``<dir>/records/``) and efficiency records (``<dir>/efficiency/``) under every given folder and writes
one markdown report: a summary first (which models ran on which tasks, the accuracy table, the three main figures),
our accuracy against the published one where the runs used the benchmark's configuration (the rule is in
``harness.tables.BENCHMARK_RULE``), what was measured here and what is copied from papers, the hardware, torch
versions and commits, the learning curves, the efficiency tables per device (absolute, and relative to the
transformer), the published reference figures with their sources and hardware, and the figures of ``harness.plots``
as PNG files in ``plots/`` beside the report (one set per device and setup, both in the file name), linked by
relative paths. A missing kind of record leaves its section saying so. The report and every figure are replaced atomically, and
the report is regenerated while records arrive during its writing, so the jobs of a sweep can all write it at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness import lra_chart, plots
from harness.curves import load_curves, plot_learning_curves
from harness.efficiency import EfficiencyRecord, efficiency_dir, load_efficiency_records
from harness.records import RunRecord, load_records, records_dir
from harness.reference import published_accuracy, published_efficiency
from core.files import write_atomic
from harness.tables import (ACCURACY_LEGEND, BENCHMARK_RULE, MAX_REWRITES, TASK_ORDER, TASK_TITLES, accuracy_table,
                            format_table_markdown, headline_markdown, latest_runs, non_benchmark_tasks,
                            published_comparison, stored_files)

__all__ = ["write_report", "main"]

_STATUS_WORDS = ("oom: out of memory; over budget: a training step took longer than the cell's time budget; "
                 "skipped: not tried after a shorter length failed; n/a: no recurrent mode; error: see the record; "
                 "–: not measured.")
_PUBLISHED_METRICS = {"train_steps_per_s": "speed", "peak_memory": "memory", "speed_vs_transformer": "speed",
                      "memory_vs_transformer": "memory", "layer_step_time": "step time", "layer_memory": "memory"}


def _load_all(loader, results_dirs: list[Path], record_type) -> pd.DataFrame:
    frames = [df for df in (loader(d) for d in results_dirs) if not df.empty]
    if not frames:
        return pd.DataFrame(columns=[f.name for f in dataclasses.fields(record_type)])
    return pd.concat(frames, ignore_index=True)


def _unique(*columns: pd.Series) -> str:
    values = dict.fromkeys(str(v) for col in columns for v in col.dropna() if str(v))
    return ", ".join(values) or "none recorded"


def _markdown(df: pd.DataFrame) -> str:
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-device"


def _status_word(status) -> str:
    return str(status).split(":")[0].strip().replace("_", " ") or "?"


def _wide(table: pd.DataFrame, cell) -> pd.DataFrame:
    """Models as rows, lengths as columns (1K, 2K, ...), ``cell(row) -> str`` in each."""
    lengths = sorted(table["seq_len"].astype(int).unique())
    rows = []
    for model, g in table.groupby("model", sort=False):
        by_len = {int(r["seq_len"]): cell(r) for _, r in g.iterrows()}
        rows.append({"model": model, **{f"L={plots.length_label(n)}": by_len.get(n, "") for n in lengths}})
    return pd.DataFrame(rows)


def _number(value) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _measured(column: str, status_column: str = "status"):
    def cell(r: pd.Series) -> str:
        if r["status"] != "ok":  # the cell never got as far as this figure
            return _status_word(r["status"])
        if r[status_column] != "ok":
            return _status_word(r[status_column])
        return "–" if pd.isna(r[column]) else _number(r[column])
    return cell


def _relative(r: pd.Series) -> str:
    if pd.isna(r["speed_vs_transformer"]):
        return "–" if r["status"] == "ok" else _status_word(r["status"])
    mem = r["memory_vs_transformer"]
    memory = "?" if pd.isna(mem) else f"{mem:.2f}×" if mem >= 0.1 else f"{mem:.2g}×"
    return f"{r['speed_vs_transformer']:.2f}× / {memory}"


def _figure(plot: plots.PlotFile, out_dir: Path) -> list[str]:
    link = Path(os.path.relpath(plot.path, out_dir)).as_posix()
    return [f"![{plot.path.stem}]({link})", "", f"*{plot.caption}*", ""]


def _efficiency_section(eff: pd.DataFrame, acc: pd.DataFrame, out_dir: Path) -> tuple[list[str], list[_Setup]]:
    """The efficiency tables and figures per device and setup: (markdown lines, each setup's figures)."""
    lines = ["## Efficiency (measured by this harness)", ""]
    if eff.empty:
        return lines + ["No efficiency records found: run the efficiency benchmark to fill this section.", ""], []
    table = plots.efficiency_table(eff)
    setups: list[_Setup] = []
    lines += ["One section per device and setup (batch, width, depth), latest record per (model, length); ratios "
              "compare models within a section only. Training: median AdamW step (forward, backward, update) "
              "on one fixed batch; memory: peak of one training step; inference: forward passes in eval mode; "
              "generation: tokens/s over all sequences grown one token at a time. Cells that did not finish show "
              f"their status ({_STATUS_WORDS})", ""]
    for (device, setup), dev in table.groupby(["device_name", "setup"], sort=True):
        kinds = _unique(dev["peak_mem_kind"].map(lambda k: plots.MEM_KIND.get(k, k)))
        lines += [f"### {device or 'unknown device'}: {setup}", "",
                  f"Suite {_unique(dev['suite'])}; memory: {kinds}; kernels: {_unique(dev['kernel_backend'])}; "
                  f"torch {_unique(dev['torch_version'])}; commit {_unique(dev['git_commit'])}.", ""]
        no_step = set(dev.loc[dev["gen_status"].map(_status_word) == "n/a", "model"])  # no recurrent mode at all
        gen = dev[~dev["model"].isin(no_step)]
        for title, wide in [
            ("Training speed (steps/s)", _wide(dev, _measured("train_steps_per_s"))),
            ("Step time (ms)", _wide(dev, _measured("train_step_ms"))),
            (f"Peak memory of a training step (MiB, {kinds})", _wide(dev, _measured("peak_mem_mib"))),
            ("Inference (samples/s)", _wide(dev, _measured("infer_samples_per_s"))),
            (f"Generation (tokens/s over all sequences of a batch of {_unique(gen.loc[gen['gen_batch'] > 0, 'gen_batch'].astype(int))})",
             _wide(gen, _measured("gen_tokens_per_s", "gen_status")) if not gen.empty else None),
            ("Relative to the transformer at the same length: speed (steps/s ratio) / memory (MiB ratio), as in "
             "the LRA paper's Table 2 and the S4 paper's Table 3 (–: the transformer did not finish at that length)",
             _wide(dev, _relative)),
        ]:
            lines += [f"#### {title}", "", _markdown(wide) if wide is not None else "No model generates.", ""]
        shape = dev.iloc[0]
        slug = f"{_slug(device)}__b{shape['batch_size']}_h{shape['d_model']}_n{shape['n_layers']}"
        figures = [plots.plot_speed_vs_length(eff, out_dir / "plots" / f"speed_vs_length__{slug}.png", device, setup),
                   plots.plot_memory_vs_length(eff, out_dir / "plots" / f"memory_vs_length__{slug}.png", device, setup)]
        if not gen.empty:
            figures.append(plots.plot_generation(eff, out_dir / "plots" / f"generation__{slug}.png", device, setup))
        if dev["speed_vs_transformer"].notna().any():
            figures.append(lra_chart.plot_lra_chart(eff, acc, out_dir / "plots" / f"lra_chart__{slug}.png",
                                                device_name=device, setup=setup))
        lines += ["#### Figures", ""]
        for plot in figures:
            lines += _figure(plot, out_dir)
        if not dev["speed_vs_transformer"].notna().any():
            lines += ["No LRA chart: the transformer has no ok training cell in this setup, so there is no speed "
                      "ratio.", ""]
        setups.append(_Setup(device, setup, dev["seq_len"].nunique(), dev["model"].nunique(),
                             int(shape["d_model"]), figures))
    return lines, setups


@dataclasses.dataclass(frozen=True)
class _Setup:
    """One efficiency section's device and setup, its size, and its figures (speed, memory, [generation], [LRA])."""
    device: str
    setup: str
    n_lengths: int
    n_models: int
    d_model: int
    figures: list[plots.PlotFile]


def _curves_section(results_dirs: list[Path], out_dir: Path) -> tuple[list[str], dict[str, plots.PlotFile]]:
    """Per task, validation accuracy against step and wall time, from the runs' histories: (markdown lines,
    {task: figure})."""
    frames = [c for c in (load_curves(d) for d in results_dirs) if not c.empty]
    if not frames:
        return [], {}
    curves = pd.concat(frames, ignore_index=True)
    lines = ["## Learning curves", "",
             "Validation accuracy at each evaluation of the runs in the accuracy table (their histories: "
             "`history/*.parquet` beside the records; the same points are in TensorBoard under `tb/`), against "
             "training steps and against training wall time; mean over seeds, the band from the lowest to the "
             "highest seed.", ""]
    figures = {}
    for task in dict.fromkeys(curves.task):
        path = plot_learning_curves(curves, task, out_dir / "plots" / f"curves__{_slug(task)}.png")
        n_evals = curves[(curves.task == task) & (curves.split == "validation")].groupby(["model", "seed"]).size()
        figures[task] = plots.PlotFile(path, f"{task}: validation accuracy against training step (left) and wall "
                                             f"time (right), one line per model; {n_evals.max()} evaluations per run.")
        lines += [f"![curves {task}]({Path(os.path.relpath(path, out_dir)).as_posix()})", ""]
    return lines, figures


def _published_section() -> list[str]:
    lines = ["## Published reference figures (copied from the papers, not measured here)", "",
             "From `harness/data/published_efficiency.csv`. Different hardware and software from ours: compare "
             "ratios to each paper's own Transformer, not absolute numbers.", ""]
    for source, g in published_efficiency().groupby("source", sort=False):
        lines += [f"### {source}", "", f"Hardware: {_unique(g['hardware'])}."]
        if g["length"].isna().all() and g["dim"].isna().all():
            cells = g.assign(value=g["value"].map(lambda v: f"{v:g}"), metric=g["metric"].str.replace("_", " "))
            lines += ["", _markdown(cells[["model", "metric", "value", "unit", "setting"]]), ""]
            continue
        lines += [f"Setting: {'; '.join(dict.fromkeys(g['setting']))}.", ""]
        rows: dict[str, dict[str, str]] = {}
        for _, r in g.iterrows():
            at = f"L={plots.length_label(int(r['length']))}" if pd.notna(r["length"]) else f"H={int(r['dim'])}"
            col = f"{_PUBLISHED_METRICS.get(r['metric'], r['metric'])} ({r['unit']}) {at}"
            rows.setdefault(r["model"], {"model": r["model"]})[col] = f"{r['value']:g}"
        lines += [_markdown(pd.DataFrame(list(rows.values())).fillna("")), ""]
    return lines


def _provenance(acc: pd.DataFrame, eff: pd.DataFrame) -> list[str]:
    return [
        "## What is reproduced here and what is published", "",
        "- **Measured by this harness**, regenerated from the stored records: "
        + (f"the accuracy rows without \"published\" in their label ({len(acc)} records; hardware: "
           f"{_unique(acc['device_name'])})" if len(acc) else "no accuracy records")
        + "; " + (f"every efficiency table and figure ({len(eff)} records; hardware: {_unique(eff['device_name'])})."
                  if len(eff) else "no efficiency records."),
        "- **Copied from papers, not re-run**: accuracy rows labelled \"published\" (LRA paper Table 1, S4 paper "
        "Table 4, ...), hollow markers in the LRA charts, and the whole \"Published reference figures\" section "
        "(LRA paper on TPU v3 4x4, S4 paper on one A100).",
        "- Published and measured efficiency differ in hardware, framework and often batch and width: only "
        "ratios to each side's own transformer at the same length are loosely comparable.",
        "",
        "| | accuracy records | efficiency records |",
        "| --- | --- | --- |",
        f"| hardware | {_unique(acc['device_name'])} | {_unique(eff['device_name'])} |",
        f"| torch | {_unique(acc['torch_version'])} | {_unique(eff['torch_version'])} |",
        f"| git commit | {_unique(acc['git_commit'])} | {_unique(eff['git_commit'])} |",
        f"| suite | {_unique(acc['suite'])} | {_unique(eff['suite'])} |",
        "",
    ]


def _summary(acc: pd.DataFrame, curves: dict[str, plots.PlotFile], setups: list[_Setup],
             out_dir: Path) -> list[str]:
    """What a reader wants first: which models ran on which tasks, the headline table, the three main figures."""
    lines = ["## Summary", ""]
    runs = latest_runs(acc)
    if runs.empty:
        lines += ["No accuracy runs recorded.", ""]
    else:
        kinds = runs["status"].map(_status_word).value_counts()
        suites = _unique(runs["suite"])
        lines += [f"{len(runs)} run{'s' * (len(runs) != 1)} (the latest finished record per task, model and seed)"
                  + (f" of suite {suites}" if suites != "none recorded" else "")
                  + f" on {_unique(runs['device_name'])}: "
                  + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ".", ""]
        non_bench = non_benchmark_tasks(runs)
        order = list(accuracy_table(acc).index)  # models as the table orders them
        for task in [t for t in TASK_ORDER if t in set(runs.task)] + sorted(set(runs.task) - set(TASK_ORDER)):
            g = runs[runs.task == task]
            seeds = g.groupby("model")["seed"].nunique().sort_index(key=lambda m: m.map(order.index))
            per_model = ", ".join(f"{m}" + (f" ({n} seeds)" if n > 1 else "") for m, n in seeds.items())
            lines.append(f"- **{TASK_TITLES.get(task, task)}**"
                         + (" (not the benchmark's configuration)" if task in non_bench else "") + f": {per_model}"
                         + (f"; seed {g.seed.iloc[0]}" if g.seed.nunique() == 1 else ""))
        lines += ["", "### Test accuracy (%)", "", ACCURACY_LEGEND, "", headline_markdown(acc)]
    chosen = _main_figures(acc, curves, setups)
    if chosen:
        lines += ["### Main figures", "",
                  "Chosen by a fixed rule: the learning curves of the task on which the models differ most (spread of "
                  "their best validation accuracy), then training speed and peak memory against length for the "
                  "efficiency setup with the most lengths measured (then the most models); the LRA chart or "
                  "generation figure where one of these is missing. All figures are in the sections below.", ""]
        for plot in chosen:
            lines += _figure(plot, out_dir)
    return lines


def _main_figures(acc: pd.DataFrame, curves: dict[str, plots.PlotFile], setups: list[_Setup]) -> list[plots.PlotFile]:
    """The three figures of the summary (the rule is stated in it)."""
    candidates = []
    runs = latest_runs(acc)
    if curves and not runs.empty:
        best = runs[runs.status == "ok"].groupby(["task", "model"])["best_val_acc"].mean()
        spread = {t: (best[t].max() - best[t].min()) if t in best.index.get_level_values(0) else -1.0 for t in curves}
        candidates.append(curves[max(curves, key=lambda t: (spread[t], -list(curves).index(t)))])
    if setups:
        main = max(setups, key=lambda st: (st.n_lengths, st.n_models, st.d_model))
        kinds = ("speed_vs_length", "memory_vs_length", "lra_chart", "generation")
        candidates += sorted((f for f in main.figures if f.path.stem.split("__")[0] in kinds),
                             key=lambda f: kinds.index(f.path.stem.split("__")[0]))
    return candidates[:3]


def _published_comparison(acc: pd.DataFrame) -> list[str]:
    """Reproduced vs published, per (model, task), from benchmark-configuration runs only."""
    lines = ["## Reproduced vs published", "",
             f"Which runs count: {BENCHMARK_RULE}. Published numbers: `harness/data/published_lra.csv` (verified "
             "rows).", ""]
    compared, left_out = published_comparison(acc)
    if compared.empty:
        lines += ["No run here used the benchmark configuration, so nothing is set against the papers' numbers."]
    else:
        cells = compared.assign(
            ours=[f"{r.ours_pct:.2f}" + (f" ± {r.std_pct:.2f}" if r.n_seeds > 1 else "") + f" ({r.n_seeds})"
                  for r in compared.itertuples()],
            published=[("fail (counted 50)" if r.published_status == "fail" else f"{r.published_pct:.2f}")
                       for r in compared.itertuples()],
            delta=[f"{r.delta_pp:+.2f}" for r in compared.itertuples()],
            task=compared.task.map(lambda t: TASK_TITLES.get(t, t)))
        lines += [_markdown(cells[["task", "model", "ours", "published", "delta", "source"]].rename(
            columns={"ours": "ours (%, seeds)", "published": "published (%)", "delta": "Δ (points)"}))]
    if not left_out.empty:
        lines += ["", "Not compared (a published number exists, but no run qualifies): "
                  + "; ".join(f"{TASK_TITLES.get(r.task, r.task)} / {r.model}: {r.reason}"
                              for r in left_out.itertuples()) + "."]
    runs = latest_runs(acc)
    if not runs.empty:
        pub = published_accuracy(include_unverified=False)
        none = sorted(set(runs.task) - set(pub.task))
        if none:
            lines += ["", f"No published numbers for: {', '.join(none)}."]
    return lines + [""]


def write_report(results_dirs: list[Path], out: Path = Path("results/REPORT.md")) -> Path:
    """Write the markdown report for the records under ``results_dirs``, and its figures under ``out``'s folder.

    Args:
        results_dirs: folders holding ``records/`` (accuracy) and/or ``efficiency/`` (efficiency) records.
        out: the report's path; figures go to ``<out's folder>/plots/<figure>__<device>.png``.

    Returns:
        ``out``.
    """
    results_dirs = [Path(d) for d in results_dirs]
    out = Path(out)
    folders = [f(d) for d in results_dirs for f in (records_dir, efficiency_dir)]
    for _ in range(MAX_REWRITES):   # again while records arrive meanwhile (a sweep's other jobs)
        seen = stored_files(folders)
        write_atomic(out, _report_text(results_dirs, out))
        if stored_files(folders) == seen:
            break
    return out


def _report_text(results_dirs: list[Path], out: Path) -> str:
    """The report's markdown; writes its figures under ``out``'s folder on the way."""
    acc = _load_all(load_records, results_dirs, RunRecord)
    eff = _load_all(load_efficiency_records, results_dirs, EfficiencyRecord)
    lines = ["# Results report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `python -m harness.report` from "
             f"{', '.join(f'`{d}`' for d in results_dirs) or 'no folder'}; nothing here is edited by hand.", ""]
    curve_lines, curves = _curves_section(results_dirs, out.parent)
    eff_lines, setups = _efficiency_section(eff, acc, out.parent)
    lines += _summary(acc, curves, setups, out.parent)
    lines += _published_comparison(acc)
    lines += _provenance(acc, eff)
    lines += ["#" + format_table_markdown(acc, title="Accuracy: hardware, commits and what each run cost",
                                          with_table=False), ""]
    lines += curve_lines + eff_lines + _published_section()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Regenerate the results report from stored records.")
    parser.add_argument("results_dirs", nargs="+", type=Path, help="folders holding records/ and/or efficiency/")
    parser.add_argument("--out", type=Path, default=Path("results/REPORT.md"), help="the report's path")
    args = parser.parse_args(argv)
    empty = [str(d) for d in args.results_dirs
             if not any(any((Path(d) / sub).glob("*.parquet")) for sub in ("records", "efficiency"))]
    if empty:  # a mistyped folder would give an empty report that looks like a real one
        parser.exit(2, f"error: no records under {', '.join(empty)} (expected records/*.parquet or "
                       f"efficiency/*.parquet)\n")
    path = write_report(args.results_dirs, args.out)
    print(path)
    return path


if __name__ == "__main__":
    main()
