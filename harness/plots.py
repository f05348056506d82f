"""Efficiency tables and figures regenerated from stored records (matplotlib's Agg canvas; no model code, no torch).

Glossary: L sequence length (tokens); a setup is the benchmark's shape, "batch 32, width 256, depth 4 layers".
Every function takes the DataFrame that ``harness.efficiency.load_efficiency_records`` returns (any number of
re-runs: the latest record per (model, L, device, setup) counts; different setups on one device, e.g. the quick
suite's narrow sweep and the efficiency suite's, are kept apart, never compared). A figure shows one device and
one setup: ``device_name`` and ``setup`` may be left out when the records hold only one, and must be given (one
call, one file each) when they hold several. Each plotting function returns a ``PlotFile``: the PNG written and a
caption saying what the figure shows and what it leaves out. Every model keeps one colour and marker in all figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from core.files import write_atomic

__all__ = ["PlotFile", "MODEL_ORDER", "LRA_TASKS", "efficiency_table", "plot_speed_vs_length", "plot_memory_vs_length",
           "plot_generation", "length_label", "setup_label", "MEM_KIND", "model_styles", "save_figure", "select_setup", "label_log_axis", "add_note"]

MODEL_ORDER = ("transformer", "local_attention", "linformer", "performer", "linear_transformer", "lstm", "gru",
               "s4", "s4d", "s5", "lru", "mamba")   # baselines first; fixes each model's colour and marker
LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
FAILED = ("oom", "over_budget", "error")           # statuses drawn as a bold "x" at a figure's top edge
SKIPPED = "skipped"                                # not tried (a shorter length failed, the sweep's budget ran out):
                                                   # a thin "x" there
_MARKERS = "osD^v<>pP*hX"                          # 12 markers x 10 tab10 colours: distinct up to 60 models
MEM_KIND = {"cuda_max_allocated": "CUDA max allocated", "cpu_rss_growth": "CPU RSS growth"}   # in words


@dataclass(frozen=True)
class PlotFile:
    path: Path
    caption: str    # what the figure shows, on what, and which models it leaves out


def _kind(status) -> str:
    return str(status).split(":")[0].strip()


def _latest(eff: pd.DataFrame) -> pd.DataFrame:
    ts = pd.to_datetime(eff["timestamp"], utc=True, errors="coerce", format="ISO8601")
    df = eff.assign(_ts=ts).sort_values("_ts", kind="mergesort", na_position="first")
    return df.drop_duplicates(["model", "seq_len", "device_name", "setup"], keep="last").drop(columns="_ts")


def _model_rank(models) -> dict[str, int]:
    unknown = sorted(set(models) - set(MODEL_ORDER))
    return {m: i for i, m in enumerate(list(MODEL_ORDER) + unknown)}


def efficiency_table(eff: pd.DataFrame) -> pd.DataFrame:
    """Latest record per (model, seq_len, device_name, setup), with speed and memory relative to the transformer.

    ``speed_vs_transformer`` = model train steps/s / transformer train steps/s and ``memory_vs_transformer`` =
    model peak MiB / transformer peak MiB at the same L, device and setup (the LRA paper's Table 2, the S4 paper's
    Table 3); ``gen_vs_transformer`` likewise for generation tokens/s. NaN where either side is missing or not ok.
    """
    cols = ["device_name", "setup", "model", "seq_len", "status", "train_steps_per_s", "train_step_ms", "peak_mem_mib",
            "infer_samples_per_s", "gen_tokens_per_s", "gen_status", "speed_vs_transformer",
            "memory_vs_transformer", "gen_vs_transformer", "batch_size", "d_model", "n_layers", "peak_mem_kind",
            "gen_len", "gen_batch", "n_params", "kernel_backend", "suite", "torch_version", "git_commit", "timestamp"]
    if eff.empty:
        return pd.DataFrame(columns=cols)
    setups = [setup_label(*shape) for shape in zip(eff["batch_size"], eff["d_model"], eff["n_layers"])]
    df = _latest(eff.assign(setup=setups)).reset_index(drop=True)
    ok = df["status"] == "ok"
    gen_ok = df["gen_status"] == "ok"
    key = ["device_name", "setup", "seq_len"]
    for metric, valid, ratio in [("train_steps_per_s", ok, "speed_vs_transformer"),
                                 ("peak_mem_mib", ok, "memory_vs_transformer"),
                                 ("gen_tokens_per_s", gen_ok, "gen_vs_transformer")]:
        value = df[metric].where(valid).astype(float)
        ref = df.assign(_ref=value)[df["model"] == "transformer"][key + ["_ref"]]
        df[ratio] = value / df[key].merge(ref, on=key, how="left")["_ref"].to_numpy()
    rank = _model_rank(df["model"])
    df = df.sort_values(["device_name", "setup", "model", "seq_len"],
                        key=lambda s: s.map(rank) if s.name == "model" else s)
    return df[cols].reset_index(drop=True)


def model_styles(models) -> dict[str, dict]:
    """Colour, marker and line style of each model: the same in every figure (MODEL_ORDER fixes them)."""
    colours = (*colormaps["tab10"].colors, "black", "navy")   # 12 distinct: one per registered layer
    return {m: {"color": colours[i % len(colours)], "marker": _MARKERS[i % len(_MARKERS)],
                "linestyle": "-" if i < 10 else "--"} for m, i in _model_rank(models).items()}


def select_setup(eff: pd.DataFrame, device_name: str | None, setup: str | None) -> tuple[pd.DataFrame, str, str]:
    """The ``efficiency_table`` rows of one (device, setup), and those two; raises if none or several match."""
    table = efficiency_table(eff)
    if device_name is not None:
        table = table[table["device_name"] == device_name]
    if setup is not None:
        table = table[table["setup"] == setup]
    benches = table[["device_name", "setup"]].drop_duplicates()
    if benches.empty:
        raise ValueError(f"no efficiency records for device {device_name!r}, setup {setup!r}")
    if len(benches) > 1:
        found = "; ".join(f"{d!r}: {s!r}" for d, s in benches.itertuples(index=False))
        raise ValueError(f"records hold several devices or setups ({found}); pass device_name= and/or setup=")
    device_name, setup = benches.iloc[0]
    return table, device_name, setup


def _values(df: pd.DataFrame, col: str) -> str:
    return "/".join(str(int(v)) for v in sorted(df[col].dropna().unique()) if v) or "?"


def setup_label(batch_size: int, d_model: int, n_layers: int) -> str:
    """The benchmark's shape in words: "batch 32, width 256, depth 4 layers" ("depth 1 layer")."""
    return f"batch {batch_size}, width {d_model}, depth {n_layers} layer{'s' * (int(n_layers) != 1)}"


def length_label(length: int) -> str:
    """1024 -> "1K", 1536 -> "1.5K", 512 -> "512"."""
    return f"{length / 1024:g}K" if length >= 1024 and length % 512 == 0 else str(length)


def _g(value, _pos=None) -> str:
    return f"{value:g}"


def _log_axes(ax, lengths, values, band: float = 0.22) -> None:
    """Log-log axes: the measured lengths as x ticks; y spans the data with an empty band on top (``band``, a
    fraction of the axes' height) for failure marks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lengths, labels=[length_label(n) for n in lengths])
    ax.set_xticks([], minor=True)
    ax.set_xlim(min(lengths) / 1.25, max(lengths) * 1.25)
    values = [v for v in values if v > 0 and np.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
    decades = max(np.log10(hi / lo), 0.5)
    bottom = lo / 10 ** (0.08 * decades)
    span = np.log10(hi / bottom)
    ax.set_ylim(bottom, hi * 10 ** (band * span / (1 - band)))  # the data end where the band starts
    label_log_axis(ax.yaxis, decades, ceiling=hi * 10 ** (0.02 * span) if band > 0.06 else None)
    ax.grid(True, which="major", alpha=0.3)
    ax.yaxis.grid(True, which="minor", alpha=0.1)   # a light line at every labelled minor tick too


def label_log_axis(axis, decades: float, ceiling: float | None = None) -> None:
    """Plain-number tick labels on a log axis: powers of ten, plus 2 and 5 (every integer under a decade); none above
    ``ceiling`` (the band of failure marks, which are not values)."""
    keep = set(range(2, 10)) if decades < 0.8 else {2, 5} if decades < 2.5 else set()

    def major(value, _pos=None) -> str:
        return "" if ceiling is not None and value > ceiling else _g(value)

    def minor(value, _pos=None) -> str:
        mantissa = value / 10 ** np.floor(np.log10(value))
        return major(value) if round(mantissa) in keep and abs(mantissa - round(mantissa)) < 1e-6 else ""
    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))
    lo, hi = sorted(axis.get_view_interval())
    labelled = [m * 10.0 ** k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
                for m in [1, *keep] if lo <= m * 10.0 ** k <= hi]
    if len(labelled) < 3:  # a narrow range (e.g. 8,000 to 9,500) would show one label or none: plain round ticks
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
        axis.set_minor_locator(NullLocator())


def _vs_length(df, column, valid, failed, ylabel, title) -> tuple[Figure, list[str]]:
    """Shared body of the per-length figures: one line per model through its valid cells, each failed cell an "x"
    at the top edge in the model's colour (bold: oom, over budget, error; thin: skipped), one row per failing model,
    its first failure said in its legend entry. Returns the models with no valid cell."""
    lengths = sorted(int(n) for n in df["seq_len"].unique())
    styles = model_styles(df["model"])
    fig = Figure(figsize=(10, 5.8), layout="constrained")
    ax = fig.add_subplot()
    top = blended_transform_factory(ax.transData, ax.transAxes)
    handles, missing, row, kinds_seen = [], [], 0, set()
    for model, rows in df.groupby("model", sort=False):
        good = rows[valid(rows) & rows[column].notna()]
        (line,) = ax.plot(good["seq_len"], good[column], label=model, markersize=6, **styles[model])
        handles.append(line)
        if good.empty:
            missing.append(model)
        bad = rows[failed(rows)].sort_values("seq_len")
        if bad.empty:
            continue
        y = 0.97 - 0.045 * row  # one row of the top band per failing model, so no two labels can collide
        row += 1
        for _, cell in bad.iterrows():
            skipped = failed.status(cell) == SKIPPED
            kinds_seen.add(skipped)
            ax.plot(cell["seq_len"], y, transform=top, marker="x", markersize=6 if skipped else 8,
                    markeredgewidth=1.0 if skipped else 2.0, color=styles[model]["color"], linestyle="none",
                    clip_on=False)
        first = bad.iloc[0]   # said in the model's legend entry, outside the data area: no label can collide
        text = f"{failed.status(first).replace('_', ' ')} at L={length_label(int(first['seq_len']))}"
        if len(bad) > 1 and failed.status(bad.iloc[-1]) == SKIPPED and failed.status(first) != SKIPPED:
            text += ", then skipped"
        line.set_label(f"{model}\n  x: {text}")
    _log_axes(ax, lengths, df.loc[valid(df), column].astype(float).tolist(), band=0.05 + 0.045 * row)
    if row:  # the band of failure marks, set off from the data below it
        edge = 1 - (0.05 + 0.045 * row) + 0.02
        ax.plot([0, 1], [edge, edge], transform=ax.transAxes, color="0.6", linewidth=0.8, linestyle="--")
        ax.text(0.005, edge + 0.005, "not measured (x):", transform=ax.transAxes, fontsize=7, color="0.4",
                va="bottom")
    if False in kinds_seen:
        handles.append(Line2D([], [], marker="x", color="0.2", markersize=9, markeredgewidth=2.2, linestyle="none",
                              label=f"x at top: {', '.join(failed.words)}\n(in the model's colour)"))
    if True in kinds_seen:
        handles.append(Line2D([], [], marker="x", color="0.2", markersize=6, markeredgewidth=1.0, linestyle="none",
                              label="thin x: skipped, not tried\n(a shorter length failed,\n"
                                    "or the sweep's budget ran out)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel("sequence length L (tokens, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    return fig, missing


def add_note(fig: Figure, text: str) -> None:
    """A note under the axes (one line per line of ``text``), in a band the layout keeps free."""
    band = 0.03 + 0.022 * (text.count("\n") + 1)
    fig.get_layout_engine().set(rect=(0, band, 1, 1 - band))
    fig.text(0.01, 0.012, text, fontsize=8, color="0.3", va="bottom", linespacing=1.5)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically: concurrent jobs rewriting one report never leave a broken image."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


@dataclass(frozen=True)
class _Failed:
    """Which cells of a per-length figure failed, and the status word to print beside their mark: the first of
    ``columns`` with a status speaks for the cell (generation: its own status, else the training cell's, which
    stopped it before generation)."""
    columns: tuple[str, ...]
    kinds: tuple[str, ...]

    def status(self, cell: pd.Series) -> str:
        return next((k for k in (_kind(cell[c]) for c in self.columns) if k and k != "nan"), "")

    def __call__(self, rows: pd.DataFrame) -> pd.Series:
        return rows.apply(lambda r: self.status(r) in (*self.kinds, SKIPPED), axis=1).astype(bool) \
            if len(rows) else pd.Series(False, index=rows.index)

    @property
    def words(self) -> list[str]:
        return [{"over_budget": "over budget"}.get(k, k) for k in self.kinds]


def _train_ok(rows: pd.DataFrame) -> pd.Series:
    return rows["status"] == "ok"


def plot_speed_vs_length(eff: pd.DataFrame, path: Path, device_name: str | None = None,
                         setup: str | None = None) -> PlotFile:
    """Training steps/s (forward, backward, AdamW step; median) against L, one line per model, log-log."""
    df, device, setup = select_setup(eff, device_name, setup)
    fig, missing = _vs_length(df, "train_steps_per_s", _train_ok, _Failed(("status",), FAILED),
                              "training speed (steps/s, log scale)",
                              f"Training speed vs length on {device}\n{setup}")
    caption = (f"Training steps/s (median step: forward, backward, AdamW) against L on {device} ({setup}); "
               "x at the top: oom, over budget or error; thin x: skipped.")
    return PlotFile(save_figure(fig, path), caption + (f" No ok cell: {', '.join(missing)}." if missing else ""))


def plot_memory_vs_length(eff: pd.DataFrame, path: Path, device_name: str | None = None,
                          setup: str | None = None) -> PlotFile:
    """Peak memory of one training step (MiB) against L, one line per model, log-log."""
    df, device, setup = select_setup(eff, device_name, setup)
    kinds = ", ".join(MEM_KIND.get(k, k) for k in sorted(df["peak_mem_kind"].dropna().unique()) if k) or "unknown"
    fig, missing = _vs_length(df, "peak_mem_mib", _train_ok, _Failed(("status",), FAILED),
                              "peak memory of a training step (MiB, log scale)",
                              f"Peak training memory vs length on {device}\n{setup}; {kinds}")
    caption = (f"Peak memory of one training step ({kinds}) against L on {device} ({setup}); "
               "x at the top: oom, over budget or error; thin x: skipped.")
    return PlotFile(save_figure(fig, path), caption + (f" No ok cell: {', '.join(missing)}." if missing else ""))


def plot_generation(eff: pd.DataFrame, path: Path, device_name: str | None = None,
                    setup: str | None = None) -> PlotFile:
    """Autoregressive generation throughput (tokens/s over all sequences of the batch) against L, log-log.

    Each cell grows its batch one token at a time for min(L, cap) steps. Only models with a recurrent mode (or
    the transformer's key/value cache) generate; the others are named in the caption and in a note under the axes.
    """
    df, device, setup = select_setup(eff, device_name, setup)
    no_mode = sorted(set(df.loc[df["gen_status"].map(_kind) == "n/a", "model"]))  # said so by any of its cells
    gen = df[~df["model"].isin(no_mode)]
    gen_batch = _values(gen, "gen_batch")
    shape = f"{setup}; generated: batch {gen_batch} x min(L, {gen['gen_len'].max():.0f}) tokens"
    fig, missing = _vs_length(gen, "gen_tokens_per_s", lambda r: r["gen_status"] == "ok",
                              _Failed(("gen_status", "status"), FAILED),
                              "generation throughput (tokens/s, whole batch; log scale)",
                              f"Generation throughput vs length on {device}\n{shape}")
    caption = (f"Generation tokens/s against L on {device} ({shape}); x at the top: oom, over budget or error "
               "(of generation, or of the training cell, which then skipped generation); thin x: skipped.")
    if no_mode:
        add_note(fig, f"No recurrent mode, not shown: {', '.join(no_mode)}.")
        caption += f" No recurrent mode: {', '.join(no_mode)}."
    if missing:
        caption += f" No ok cell: {', '.join(missing)}."
    return PlotFile(save_figure(fig, path), caption)
