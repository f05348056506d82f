"""Benchmark: autoregressive generation, tokens/s against the context already generated, measured on its own.

The S4 paper's generation comparison (Sec. 4.3: 60x faster than a Transformer on WikiText-103, 65x on CIFAR-10
density estimation, one A100) on this project's models. Each model is its causal variant (the model file's
``causal:`` block) in the shared backbone, run through its recurrent mode, ``SequenceModel.step``: the whole residual
stack one position at a time (the Transformer through its preallocated key/value cache and
``scaled_dot_product_attention``; the linear Transformer, the SSMs and the LSTM through their fixed-size states).

A cell is (model, context c, batch B), in a fresh process (``harness.measure.run_child``) with a time limit. The
model's state is brought to position c (the Transformer's cache holds c keys and values; the cost of attending to
them does not depend on their values, so they are random; a fixed-size state costs the same at every position),
then B sequences grow by ``--tokens`` tokens (random ids: the models have no language-model head, whose
H x vocabulary product would add the same small cost to every model), after a few warm-up steps. The fastest of
``--rounds`` runs from that same state gives tokens/s (B x tokens / seconds) and the per-token cost at position
about c. A cell past ``--cell-budget-s`` is "over_budget" and the model's longer contexts at that batch are
skipped; an out-of-memory likewise.

Sizes: ``--n-layers 1`` (default) is one block of width ``--d-model`` 256 with each model's own settings (S4 and
S4D N = 64, the issue's table; S5 P = 256, LRU N = 128, Mamba N = 16 with expansion 2; the Transformer and the
linear Transformer 4 heads plus their MLP block, x4); ``--n-layers 4`` is the efficiency suite's 4-layer model.

    python benchmarks/generation.py                                  # 8 models x 1K, 4K, 16K x batch 1, 16
    python benchmarks/generation.py --n-layers 4 --out results/generation_4layer
    python benchmarks/generation.py --models s4 transformer --contexts 1024 2048 4096 8192 16384

Writes under ``--out`` (results/generation/): <hardware-slug>.parquet and .csv (one row per cell), .md (tokens/s,
S4 against the Transformer at each context and batch beside the paper's ratios) and
<hardware-slug>__per_token_vs_position.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd

MODELS = ["transformer", "s4", "s4d", "s5", "lru", "mamba", "lstm", "linear_transformer"]
PAPER = ("S4 paper (Gu et al., ICLR 2022, Sec. 4.3; one A100): WikiText-103 48K tokens/s against 0.8K for a "
         "Transformer (60x), CIFAR-10 density model 20.84 against 0.32 images/s (65x).")


@dataclass
class GenerationRecord:
    model: str
    context: int                           # tokens already in the state when the timed steps start
    batch: int
    status: str                            # "ok" | "oom" | "over_budget" | "skipped: <why>" | "n/a: <why>" | "error: ..."
    tokens_per_s: float | None = None      # all sequences' tokens over wall time
    step_ms: float | None = None           # one step of the whole batch (one token per sequence)
    us_per_token: float | None = None      # 1e6 / tokens_per_s
    n_tokens: int = 0                      # timed steps per round
    rounds: int = 0
    d_model: int = 0
    n_layers: int = 0
    n_params: int | None = None
    sdpa_backend: str = ""                 # the attention kernel of the steps (n/a: no softmax attention)
    kernel_backend: str = ""
    device: str = ""
    device_name: str = ""
    torch_version: str = ""
    git_commit: str = ""
    load_avg_1min: float | None = None     # at the cell's start: other work on the machine slows every figure
    wall_s: float | None = None            # the child process, start-up included
    config: str = ""                       # the model's resolved settings, JSON
    timestamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def model_settings(model: str, d_model: int, n_layers: int, n_heads: int = 4) -> dict[str, Any]:
    """The model's settings from the one config resolver (``harness.efficiency.cell_settings``) at this size."""
    from harness.efficiency import EfficiencyConfig, cell_settings

    return cell_settings(model, EfficiencyConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads))


def measure_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Child process: one (model, context, batch); the fields of a GenerationRecord."""
    import torch

    from core.env import resolve_device
    from harness.efficiency_cell import generation_model, generation_rate
    from models.registry import kernel_backends

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = resolve_device(job["device"])
    context, n_tokens = int(job["context"]), int(job["n_tokens"])
    net = generation_model(job["model"], job["settings"], context + n_tokens, device)
    if isinstance(net, str):
        return {"status": net}
    rate = generation_rate(net, int(job["batch"]), n_tokens, device, context=context, rounds=int(job["rounds"]))
    return {"status": "ok", "tokens_per_s": rate["gen_tokens_per_s"], "step_ms": rate["gen_step_ms"],
            "us_per_token": 1e6 / rate["gen_tokens_per_s"], "sdpa_backend": rate["sdpa_backend"],
            "kernel_backend": kernel_backends(net), "n_params": sum(p.numel() for p in net.parameters())}


def run_generation(models: list[str], contexts: list[int], batches: list[int], d_model: int = 256, n_layers: int = 1,
                   n_tokens: int = 128, rounds: int = 3, cell_budget_s: float = 300.0, device: str = "auto",
                   threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Every (batch, context, model) cell, each in a fresh process; one row per cell (GenerationRecord fields)."""
    import torch

    from core.env import device_name, git_commit, resolve_device
    from harness.measure import run_child

    dev = resolve_device(device)
    base = {"d_model": d_model, "n_layers": n_layers, "n_tokens": n_tokens, "rounds": rounds, "device": dev.type,
            "device_name": device_name(dev.type), "torch_version": torch.__version__, "git_commit": git_commit()}
    settings = {m: model_settings(m, d_model, n_layers) for m in models}
    fields = {f.name for f in dataclasses.fields(GenerationRecord)}
    rows = []
    for batch in batches:
        stopped: dict[str, str] = {}
        for context in sorted(contexts):
            for model in models:
                load = float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else None
                if model in stopped:
                    result = {"status": f"skipped: {stopped[model]}"}
                elif settings[model].get("causal_hparams") is None:  # no causal form: nothing to start a process for
                    result = {"status": f"n/a: {settings[model].get('causal_na', 'no causal form')}"}
                else:
                    job = {"model": model, "context": context, "batch": batch, "n_tokens": n_tokens, "rounds": rounds,
                           "device": device, "threads": threads, "settings": settings[model]}
                    result = run_child("benchmarks.generation:measure_cell", job, cell_budget_s)
                    if result["status"] in ("oom", "over_budget"):
                        stopped[model] = f"{result['status']} at context {context}"
                rec = GenerationRecord(model=model, context=context, batch=batch, load_avg_1min=load, **base,
                                       config=json.dumps(settings[model], sort_keys=True, default=str),
                                       **{k: v for k, v in result.items() if k in fields})
                rows.append(dataclasses.asdict(rec))
                if progress:
                    print(f"B={batch:<3d} context={context:<6d} {model:18s} {rec.status[:40]:40s} "
                          f"{rec.tokens_per_s or float('nan'):10.1f} tokens/s  {rec.step_ms or float('nan'):9.3f} "
                          f"ms/step  {rec.sdpa_backend}", flush=True)
    return pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(GenerationRecord)])


def ratio_table(df: pd.DataFrame, model: str = "s4", baseline: str = "transformer") -> pd.DataFrame:
    """``model``'s tokens/s over ``baseline``'s at each (context, batch) where both ran."""
    ok = df[df.status == "ok"].pivot_table(index=["context", "batch"], columns="model", values="tokens_per_s")
    if model not in ok or baseline not in ok:
        return pd.DataFrame(columns=["context", "batch", f"{model}_tokens_per_s", f"{baseline}_tokens_per_s", "ratio"])
    out = ok[[model, baseline]].dropna().rename(columns={model: f"{model}_tokens_per_s",
                                                         baseline: f"{baseline}_tokens_per_s"})
    out["ratio"] = out[f"{model}_tokens_per_s"] / out[f"{baseline}_tokens_per_s"]
    return out.reset_index().astype({"context": str, "batch": str})  # str: to_markdown keeps them integers


def plot_per_token(df: pd.DataFrame, path: Path) -> Path:
    """Per-token cost (us per generated token, whole batch) against position, one line per model, a panel per batch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from harness.plots import length_label, model_styles, save_figure

    batches = sorted(df.batch.unique())
    fig = Figure(figsize=(5.2 * len(batches), 4.4), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False, sharey=True)[0]
    styles = model_styles(sorted(df.model.unique()))
    for ax, batch in zip(axes, batches):
        for model, rows in df[(df.batch == batch) & (df.status == "ok")].groupby("model"):
            rows = rows.sort_values("context")
            ax.plot(rows.context, rows.us_per_token, label=model, **styles[model])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(df.context.unique())))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: length_label(int(v))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("position: tokens already in the context (log scale)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time per generated token (µs, log scale)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)  # outside the data
    fig.suptitle(f"Generation: per-token cost vs position on {df.device_name.iloc[0]}\n"
                 f"{df.n_layers.iloc[0]} layer(s), width {df.d_model.iloc[0]}", fontsize=10)
    return save_figure(fig, path)


def write_outputs(df: pd.DataFrame, out: Path, command: str) -> list[Path]:
    """Parquet, CSV, Markdown and the plot for the rows of one run, named by the hardware."""
    from core.files import write_atomic

    slug = re.sub(r"[^A-Za-z0-9]+", "-", df.device_name.iloc[0]).strip("-").lower()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{slug}.parquet", out / f"{slug}.csv", out / f"{slug}.md", out / f"{slug}__per_token_vs_position.png"]
    write_atomic(paths[0], lambda tmp: df.to_parquet(tmp, index=False))
    write_atomic(paths[1], lambda tmp: df.to_csv(tmp, index=False))
    table = df.pivot_table(index="model", columns=["batch", "context"], values="tokens_per_s", sort=False)
    table.columns = [f"B={b}, {c // 1024}K" if c >= 1024 else f"B={b}, {c}" for b, c in table.columns]
    loads = df.load_avg_1min.dropna()
    cells = df[["model", "context", "batch", "status", "tokens_per_s", "step_ms", "sdpa_backend", "kernel_backend",
                "n_params", "load_avg_1min"]].assign(status=df.status.str.slice(0, 60),
                                                     n_params=df.n_params.astype("Int64"))
    text = (f"# Generation: tokens/s at a given context (benchmarks/generation.py)\n\n"
            f"Hardware: {df.device_name.iloc[0]}  \ntorch {df.torch_version.iloc[0]}, commit {df.git_commit.iloc[0]}, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}  \nCommand: `{command}`  \n"
            f"Model: {df.n_layers.iloc[0]} layer(s) of width {df.d_model.iloc[0]}, each model's own settings "
            f"(configs/model/*.yaml, causal variant); {df.n_tokens.iloc[0]} timed tokens per sequence after the "
            f"context, fastest of {df.rounds.iloc[0]} rounds  \n"
            + (f"Load average (1 min) over the cells: {loads.min():.2f} to {loads.max():.2f} on {os.cpu_count()} CPUs"
               "  \n" if len(loads) else "")
            + "\n## Tokens/s (all sequences of the batch)\n\n" + table.to_markdown(floatfmt=".1f")
            + "\n\n## S4 against the Transformer's key/value cache\n\n"
            + ratio_table(df).to_markdown(index=False, floatfmt=".1f") + f"\n\n{PAPER}\n\n## Cells\n\n"
            + cells.to_markdown(index=False, floatfmt=".3f") + "\n")
    write_atomic(paths[2], lambda tmp: Path(tmp).write_text(text))
    if (df.status == "ok").any():
        plot_per_token(df, paths[3])
    else:
        paths.pop()
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096, 16384])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds from the same state; the fastest counts")
    ap.add_argument("--cell-budget-s", type=float, default=300.0, help="wall-time limit of one cell's process")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each cell (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "generation")
    args = ap.parse_args(argv)

    from core.env import set_offline_defaults

    set_offline_defaults()
    df = run_generation(args.models, args.contexts, args.batches, args.d_model, args.n_layers, args.tokens,
                        args.rounds, args.cell_budget_s, args.device, args.threads)
    command = "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_outputs(df, args.out, command.strip())
    print(ratio_table(df).to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
