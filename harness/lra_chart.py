"""The LRA chart (the LRA paper's Figure 3): LRA average accuracy against training speed, marker area by memory, one
device and setup per figure; the accuracy is ours where a model has all six LRA tasks in the benchmark's
configuration, else the published average (drawn hollow). Efficiency figures' conventions: harness/plots.py."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.plots import (LRA_TASKS, PlotFile, add_note, label_log_axis, model_styles, save_figure,
                           select_setup)
from harness.reference import published_accuracy, short_source
from harness.tables import FAIL_AS_PCT, accuracy_long, non_benchmark_tasks

__all__ = ["lra_average", "plot_lra_chart"]

_MAX_AREA_PT2 = 1600.0   # marker area of the largest peak memory
_MIN_AREA_PT2 = 25.0     # ... and the smallest area drawn, so every point stays visible


def lra_average(accuracy_records: pd.DataFrame, include_unverified: bool = False) -> pd.DataFrame:
    """LRA average accuracy (%) per model: ours when all six LRA tasks have ok runs in the published benchmark's
    configuration, else the published average (a published Path-X "fail" counts as 50, as in ``harness.tables``).

    Returns columns ``model``, ``lra_avg_pct``, ``ours`` (bool), ``source``.
    """
    rows = {}
    pub = published_accuracy(include_unverified)
    pub = pub[(pub["registry_name"] != "") & pub["task"].isin(LRA_TASKS)]
    for model, p in pub.groupby("registry_name", sort=False):
        p = p[p["model"] == p["model"].iloc[0]]   # one published row per model: its first (e.g. "S4 (final)")
        if set(p["task"]) == set(LRA_TASKS):
            acc = p["acc_pct"].where(p["status"] != "fail", FAIL_AS_PCT)
            sources = ", ".join(dict.fromkeys(short_source(s) for s in p["source"]))
            rows[model] = (float(acc.mean()), False, f"published ({sources})")
    if not accuracy_records.empty:
        long = accuracy_long(accuracy_records, tasks=list(LRA_TASKS))
        long = long[~long["task"].isin(non_benchmark_tasks(accuracy_records)) & (long["n_seeds"] > 0)]
        for model, g in long.groupby("model"):
            if set(g["task"]) == set(LRA_TASKS):
                rows[model] = (float(g["mean_acc_pct"].mean()), True, "ours")
    return pd.DataFrame([(m, *v) for m, v in rows.items()], columns=["model", "lra_avg_pct", "ours", "source"])


def _place_labels(ax, points: list[tuple[str, float, float, float]]) -> None:
    """Name each (name, x, y, marker radius in points) to the right of its marker and of any marker it touches,
    nudging labels upwards until no two overlap (display coordinates: call after the layout is fixed); a moved
    label gets a leader line."""
    px_per_pt = ax.figure.dpi / 72
    height = 11 * px_per_pt                          # a 9 pt label's line height, in pixels
    disp = [(name, *ax.transData.transform((x, y)), r * px_per_pt) for name, x, y, r in points]
    placed: list[tuple[float, float, float]] = []    # (left, right, y) of the labels so far, in pixels
    for (name, x, y, _), (_, px, py, r) in sorted(zip(points, disp), key=lambda p: p[1][2]):
        left = max(qx + qr for _, qx, qy, qr in disp if abs(qy - py) < qr + height / 2 and abs(qx - px) < qr + r)
        left += 4 * px_per_pt
        right, ly = left + 0.6 * height * len(name), py
        for pl, pr, pyy in sorted(placed, key=lambda p: p[2]):
            if left < pr and pl < right and abs(ly - pyy) < height:
                ly = pyy + height
        placed.append((left, right, ly))
        ax.annotate(name, (x, y), xytext=((left - px) / px_per_pt, (ly - py) / px_per_pt), textcoords="offset points",
                    va="center", fontsize=9, color="0.15",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.8} if ly != py else None)


def plot_lra_chart(eff: pd.DataFrame, accuracy_records: pd.DataFrame, path: Path, length: int = 4096,
                   device_name: str | None = None, setup: str | None = None,
                   include_unverified: bool = False) -> PlotFile:
    """The LRA paper's Figure 1: LRA average accuracy (y) against training speed relative to the transformer (x),
    marker area proportional to peak training memory.

    x is our measured steps/s ratio at ``length``, or at the measured length closest to it where the transformer
    ran ok (the title says which). y is ours (filled marker) when our records have ok, benchmark-configuration
    runs on all six LRA tasks, else the published average (hollow marker, source in the legend; unverified
    published rows only with ``include_unverified``). Models with no accuracy, or no ok speed at that length, are
    left out and named in the caption and under the axes.
    """
    df, device, setup = select_setup(eff, device_name, setup)
    ref_lengths = sorted(int(n) for n in df.loc[df["speed_vs_transformer"].notna(), "seq_len"].unique())
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    ax = fig.add_subplot()
    if not ref_lengths:
        ax.text(0.5, 0.5, "no length where the transformer trained ok: no speed ratio", ha="center",
                transform=ax.transAxes)
        return PlotFile(save_figure(fig, path), "LRA chart: not drawn, the transformer has no ok cell on this device.")
    at = min(ref_lengths, key=lambda n: (abs(n - length), n))
    cells = df[df["seq_len"] == at].set_index("model")
    acc = lra_average(accuracy_records, include_unverified).set_index("model")
    speed_ok = set(cells.index[cells["speed_vs_transformer"].notna()])
    shown = [m for m in cells.index if m in speed_ok and m in acc.index]
    styles = model_styles(df["model"])
    xs, mem = cells.loc[shown, "speed_vs_transformer"], cells.loc[shown, "peak_mem_mib"]
    scale = _MAX_AREA_PT2 / mem.max() if mem.notna().any() else 0.0
    area = (mem * scale).fillna(_MIN_AREA_PT2).clip(lower=_MIN_AREA_PT2)
    for model in shown:
        ours, colour = acc.at[model, "ours"], styles[model]["color"]
        ax.scatter(xs[model], acc.at[model, "lra_avg_pct"], s=area[model], facecolors=colour if ours else "none",
                   edgecolors=colour, linewidths=2, alpha=0.7 if ours else 1.0)
    ys = acc.loc[shown, "lra_avg_pct"] if shown else pd.Series([50.0])
    pad = max(3.0, 0.15 * (ys.max() - ys.min()))     # room for the largest marker (radius ~20 pt) at either edge
    ax.set_ylim(ys.min() - pad, ys.max() + pad)
    ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    lo, hi = min([*xs, 1.0]) / 1.6, max([*xs, 1.0]) * 2.2
    ax.set_xlim(lo, hi)
    label_log_axis(ax.xaxis, np.log10(hi / lo))
    ax.set_xlabel(f"training speed relative to the transformer (steps/s ratio at L = {at}, log scale)")
    ax.set_ylabel("LRA average accuracy (%, six tasks; a published Path-X fail counts 50)")
    ax.grid(True, alpha=0.3)
    where = f"L = {at}" if at == length else f"L = {at}, the measured length closest to {length}"
    ax.set_title(f"LRA accuracy vs training speed and memory on {device}\nspeed at {where}; {setup}",
                 fontsize=11)
    if mem.notna().any():   # drawn first and kept as an extra artist; the layout makes room for the last legend
        sizes = sorted({float(f"{mem.max():.2g}"), float(f"{mem.max() / 10:.2g}")}, reverse=True)
        ax.add_artist(ax.legend(
            handles=[Line2D([], [], marker="o", color="0.75", linestyle="none", label=f"{mib:g} MiB",
                            markersize=np.sqrt(max(_MIN_AREA_PT2, mib * scale))) for mib in sizes],
            title="peak training memory\n(marker area)", loc="upper left", bbox_to_anchor=(1.01, 0.72), fontsize=9,
            title_fontsize=9, frameon=False, labelspacing=3.2, borderpad=1.8, handletextpad=2.0))
    sources = sorted({acc.at[m, "source"] for m in shown if not acc.at[m, "ours"]})
    ax.legend(handles=[
        Line2D([], [], marker="o", color="0.4", markersize=9, linestyle="none", label="accuracy: ours (this harness)"),
        Line2D([], [], marker="o", markerfacecolor="none", color="0.4", markeredgewidth=2, markersize=9,
               linestyle="none", label="accuracy: " + (",\n".join(sources) or "published (none shown)"))],
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    notes = []
    if no_acc := sorted(speed_ok - set(acc.index)):
        notes.append(f"no LRA accuracy (ours on all six tasks, or published and verified): {', '.join(no_acc)}")
    if no_speed := sorted(set(acc.index) & set(df["model"]) - speed_ok):
        notes.append(f"no ok training cell at L = {at}: {', '.join(no_speed)}")
    widths = (f"Not one model per point: speed (x) and memory (area) are measured here at {setup}; accuracy (y) "
              "comes from other models" + (": hollow, the papers' (their widths, depths and hardware)" if any(
                  not acc.at[m, "ours"] for m in shown) else "") + (", filled: our accuracy runs (their own widths)"
                                                                      if any(acc.at[m, "ours"] for m in shown) else "")
              + ".")
    add_note(fig, "\n".join(textwrap.wrap(widths, 170) + textwrap.wrap("Left out: " + "; ".join(notes) + ".", 170)
                         * bool(notes)))
    fig.draw_without_rendering()   # fixes the layout, so that labels can be placed in display coordinates
    _place_labels(ax, [(m, xs[m], acc.at[m, "lra_avg_pct"], np.sqrt(area[m]) / 2) for m in shown])
    caption = (f"LRA average accuracy against training speed relative to the transformer at {where} on {device} "
               f"({setup}); marker area proportional to peak memory; hollow markers: published accuracy, not "
               "measured here. Speed and accuracy come from different model sizes (said under the axes).")
    return PlotFile(save_figure(fig, path), caption + (" Left out: " + "; ".join(notes) + "." if notes else ""))
