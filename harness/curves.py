"""Learning curves from the runs' histories (harness/history.py): validation accuracy against step and wall time.

``load_curves(results_dir)`` gathers the history of every run the tables count (``tables.latest_runs``: the latest
finished record per task, model and seed) into one DataFrame; ``plot_learning_curves`` draws one task: two panels
side by side, validation accuracy (%) against training step and against training wall time (s, validation
included), one line per model (the mean over seeds at each evaluation, a band from the lowest to the highest seed
where there are several), chance as a dotted line.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.history import load_history
from harness.plots import MODEL_ORDER, model_styles, save_figure
from harness.records import load_records
from harness.tables import latest_runs

__all__ = ["load_curves", "plot_learning_curves"]

def load_curves(results_dir: str | Path) -> pd.DataFrame:
    """The validation and test rows of every counted run's history, with task, model, seed and chance (%) added.
    Runs without a history (records written before histories existed, or a history file that is gone) are left
    out."""
    runs = latest_runs(load_records(results_dir))
    frames = []
    for r in runs.itertuples():
        path = Path(results_dir) / str(r.history or "")
        if not r.history or not path.is_file():
            continue
        frame = load_history(path)
        frames.append(frame.assign(task=r.task, model=r.model, seed=r.seed, chance_pct=(r.chance_acc or 0) * 100))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_learning_curves(curves: pd.DataFrame, task: str, path: Path, device_name: str = "") -> Path:
    """One PNG for ``task``: validation accuracy against step (left) and wall time (right), one line per model."""
    df = curves[(curves.task == task) & (curves.split == "validation")]
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    models = [m for m in MODEL_ORDER if m in set(df.model)] + sorted(set(df.model) - set(MODEL_ORDER))
    colour = {m: style["color"] for m, style in model_styles(models).items()}  # as in every other figure
    for model in models:
        rows = df[df.model == model]
        by_step = rows.groupby("step").agg(acc=("acc", "mean"), lo=("acc", "min"), hi=("acc", "max"),
                                           t=("elapsed_s", "mean"), n=("seed", "nunique")).reset_index()
        n_seeds = rows.seed.nunique()
        label = f"{model} ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
        for ax, x in zip(axes, ("step", "t")):
            ax.plot(by_step[x], by_step.acc * 100, marker="o", markersize=3, color=colour[model], label=label)
            if n_seeds > 1:
                ax.fill_between(by_step[x], by_step.lo * 100, by_step.hi * 100, color=colour[model],
                                alpha=0.2, linewidth=0)
    chance = df.chance_pct.dropna()
    for ax in axes:
        if len(chance):
            ax.axhline(chance.iloc[0], color="black", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
    axes[0].set_xlabel("training step (optimizer steps)")
    axes[1].set_xlabel("training wall time (s, validation included; linear scale)")
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].set_title(f"{task}: validation accuracy by step")
    axes[1].set_title(f"{task}: by wall time" + (f" on {device_name}" if device_name else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    if df.groupby("model").seed.nunique().max() > 1:
        handles.append(Patch(color="0.5", alpha=0.2, linewidth=0))
        labels.append("band: lowest to highest seed\n(line: mean over seeds)")
    if len(chance):
        handles.append(Line2D([], [], color="black", linestyle=":"))
        labels.append(f"chance ({chance.iloc[0]:.0f} %)")
    fig.legend(handles, labels, loc="outside right center", frameon=False, fontsize=8)  # beside, never on, the data
    return save_figure(fig, Path(path))
