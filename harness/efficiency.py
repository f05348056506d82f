"""The efficiency benchmark: training speed, peak memory, inference and generation throughput per (model, length).

Setup (the LRA paper's Table 2 and the S4 paper's Table 3): every registered layer in the shared backbone on the
byte-level Text task's shape (vocabulary 257, 2 classes), ``n_layers`` blocks of width ``d_model`` (4 x 256;
attention layers with ``n_heads`` heads), the layer's other hyperparameters from its config file, batch size
``batch_size``, random bytes of exactly L tokens (no padding), at each length of ``lengths``. Per cell:

  * training: AdamW steps (forward, backward, optimizer step) on one fixed batch; ``warmup`` steps, then
    ``repeats`` synchronized steps; the median step time gives steps/s;
  * peak memory of the first training step of a fresh process (``harness.measure.PeakMemory``). CUDA:
    ``torch.cuda.max_memory_allocated`` over the step, absolute (parameters, batch, activations, gradients and the
    optimizer state the step creates), as the papers report peak memory. CPU: growth of the resident set size
    over that step (activations, gradients, optimizer state and the allocator's caches; parameters and batch
    were resident before), an upper bound on what the step itself needs;
  * inference: forward passes under ``torch.inference_mode`` in eval mode, median of ``repeats``: samples/s;
  * generation, for layers with ``step`` (and the transformer, through its key/value cache): the model's causal
    variant (its model file's ``causal:`` block) in recurrent mode (``SequenceModel.step``: the same residual
    stack), ``gen_batch`` sequences grown one token at a time for ``min(L, gen_max_len)`` steps from the zero
    state: tokens/s (all sequences' tokens over wall time). The generation benchmark measured on its own, at a
    given context (a prefilled key/value cache), is benchmarks/generation.py; both use ``generation_rate``;
  * attention: which ``scaled_dot_product_attention`` kernel the training step and the inference pass ran
    (``sdpa_backend``, ``sdpa_backend_infer``: flash, efficient, cudnn or math; ``harness.measure.SDPABackends``),
    with the attention dropout the cell trained with (``attn_dropout``; ``efficiency.attn_dropout`` sets it for
    every layer that has one). On a CPU, dropout on the attention weights sends SDPA to its math path.

Each cell runs in its own process (``harness.measure.run_child``: fresh memory, and a crash or an out-of-memory
kill is recorded, not inherited); a cell whose training step exceeds ``cell_budget_s`` is recorded ``over_budget``
and the model's longer lengths are not tried (``skipped: over_budget at L=...``); out-of-memory likewise stops the
model's sweep, and ``total_budget_s`` bounds the whole sweep (cells not started in time: ``skipped``). Every cell's
figures go into an ``EfficiencyRecord`` (Parquet, append-only, as RunRecord) with the hardware, torch version,
kernel backend, attention kernel and git commit.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.records import load_rows, write_row

__all__ = ["EfficiencyConfig", "EfficiencyRecord", "write_efficiency_record", "load_efficiency_records", "cell_settings",
           "efficiency_dir", "efficiency_settings", "run_efficiency"]

log = logging.getLogger(__name__)


@dataclass
class EfficiencyConfig:
    """The ``efficiency:`` block of a suite (configs/suite/efficiency.yaml); every size and repeat is a value here."""
    models: list[str] | None = None        # None: the suite's models
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 3072, 4096, 8192, 16384])
    batch_size: int = 32
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4                       # for layers that take n_heads (the attention family)
    warmup: int = 2                        # training steps before the measured ones (the first also measures memory)
    repeats: int = 5                       # measured training steps / inference passes (median)
    cell_budget_s: float = 60.0            # a training step slower than this: over_budget, longer lengths skipped
    gen_max_len: int = 1024                # tokens generated per sequence: min(L, gen_max_len)
    gen_batch: int = 1
    attn_dropout: float | None = None      # attention-weight dropout of every layer that has one; None: the model's own
    total_budget_s: float | None = None    # wall time for the whole sweep; cells not started by then: skipped
    device: str = "auto"


@dataclass
class EfficiencyRecord:
    model: str
    seq_len: int
    status: str                                # "ok" | "oom" | "over_budget" | "skipped: <why>" | "error: <message>"
    suite: str = ""
    batch_size: int = 0
    d_model: int = 0
    n_layers: int = 0
    n_params: int | None = None
    train_steps_per_s: float | None = None     # median over the measured steps
    train_step_ms: float | None = None         # the same median, in ms
    peak_mem_mib: float | None = None          # one training step (see the module docstring for CPU vs CUDA)
    peak_mem_kind: str = ""                    # "cuda_max_allocated" | "cpu_rss_growth"
    infer_samples_per_s: float | None = None
    gen_tokens_per_s: float | None = None      # None: the layer has no recurrent mode
    gen_len: int = 0                           # tokens generated per sequence
    gen_batch: int = 0
    gen_status: str = ""                       # "ok" | "n/a: <why>" | "oom" | "error: <message>"
    attn_dropout: float | None = None          # the layer's attention dropout while training (None: it has none)
    sdpa_backend: str = ""                     # SDPA kernel(s) of the training step: flash | efficient | cudnn | math | n/a
    sdpa_backend_infer: str = ""               # ... of the inference pass (eval mode: no dropout)
    warmup: int = 0
    repeats: int = 0
    kernel_backend: str = ""                   # kernels chosen automatically (S4 family, Mamba), else "n/a"
    device: str = ""                           # "cpu" | "cuda"
    device_name: str = ""
    torch_version: str = ""
    git_commit: str = ""
    config: str = ""                           # the cell's resolved settings, JSON
    timestamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def efficiency_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "efficiency"


def write_efficiency_record(rec: EfficiencyRecord, results_dir: str | Path) -> Path:
    """Store ``rec`` as its own Parquet file under ``<results_dir>/efficiency/``, atomically."""
    return write_row(rec, efficiency_dir(results_dir), f"{rec.model}__L{rec.seq_len}")


def load_efficiency_records(results_dir: str | Path) -> pd.DataFrame:
    """Every stored EfficiencyRecord under ``results_dir`` (one row each; unreadable files are skipped with a warning)."""
    return load_rows(efficiency_dir(results_dir), EfficiencyRecord)


# -- one cell's settings (measured by harness/efficiency_cell.py, in a child process) --------------------------
def cell_settings(model: str, cfg: EfficiencyConfig, suite_cfg: Any = None) -> dict[str, Any]:
    """The layer's settings for the sweep, through the one config resolver (``harness.config.resolve_run`` on the
    Text task's shape): ``backbone`` and ``hparams`` of the measured model, and ``causal_hparams`` of its causal
    variant (the model file's ``causal:`` block; None with ``causal_na`` saying why, for a layer without one).

    With the suite's config ``suite_cfg`` the suite's recipe, ``model_overrides`` and its ``efficiency:`` width, depth
    and heads apply with their usual ranks (a command-line value wins); without one (a direct call), the model's
    file with ``cfg``'s width, depth and heads on top."""
    from harness.config import compose_config, efficiency_layer, resolve_run

    if suite_cfg is None:
        base, extra = compose_config(["suite=efficiency"]), [("the EfficiencyConfig given", dataclasses.asdict(cfg))]
    else:
        base, extra = suite_cfg, []

    def resolve(causal: bool) -> dict[str, Any]:
        run = resolve_run(base, "text", model, 0, causal=causal, efficiency=True,
                          extra=[(label, efficiency_layer(block, model)) for label, block in extra])
        return run.config["model"]

    plain = resolve(False)
    out = {"hparams": plain.get("hparams") or {}, "backbone": plain.get("backbone") or {}}
    try:
        out["causal_hparams"] = resolve(True).get("hparams") or {}
    except ValueError as exc:  # no causal form (e.g. linformer)
        out["causal_hparams"], out["causal_na"] = None, str(exc)
    if cfg.attn_dropout is not None and _takes(model, "attn_dropout"):  # the sweep's one setting for every layer
        for key in ("hparams", "causal_hparams"):
            if out[key] is not None:
                out[key] = {**out[key], "attn_dropout": float(cfg.attn_dropout)}
    return out


def _takes(model: str, option: str) -> bool:
    """Whether the registered layer ``model`` has the hyperparameter ``option``."""
    import models  # noqa: F401  (registers the layers)
    from models.registry import layer_factory

    return option in inspect.signature(layer_factory(model)).parameters


def efficiency_settings(cfg: Any) -> tuple[EfficiencyConfig | None, list[str]]:
    """A suite config's ``efficiency:`` block as an EfficiencyConfig (None when the suite has none) and its models;
    a misspelt key or an unknown model is refused here, before any training."""
    from omegaconf import OmegaConf

    from core.registry import check_names
    from harness.config import suite_lists
    from models.registry import list_layers

    block = cfg.get("efficiency")
    if not block:
        return None, []
    block = OmegaConf.to_container(block, resolve=True)
    check_names(block, [f.name for f in dataclasses.fields(EfficiencyConfig)], "efficiency")
    block.setdefault("device", str(cfg.device))
    eff = EfficiencyConfig(**block)
    models = list(eff.models or suite_lists(cfg, warn=False)[1])
    unknown = sorted(set(models) - set(list_layers()))
    if unknown:
        raise KeyError(f"efficiency: unknown model(s) {', '.join(unknown)}; known: {', '.join(list_layers())}")
    return eff, models


# -- the sweep: one child process per cell ----------------------------------------------------------------------
def _run_child(model: str, length: int, cfg: EfficiencyConfig, settings: dict[str, Any],
               timeout_s: float) -> dict[str, Any]:
    from harness.measure import run_child

    job = {"model": model, "length": length, "cfg": dataclasses.asdict(cfg), "settings": settings}
    return run_child("harness.efficiency_cell:cell_job", job, timeout_s)


FINAL = ("ok", "oom", "over_budget")  # cell outcomes a restarted sweep keeps


def _sweep_key(settings: dict[str, Any]) -> str:
    """The settings that make two sweeps' cells comparable (not which models, nor the total budget)."""
    return json.dumps({k: v for k, v in settings.items() if k not in ("models", "total_budget_s")},
                      sort_keys=True, default=str)


def _measured_before(results_dir: str | Path, cfg: EfficiencyConfig, hardware: str) -> dict[tuple[str, int], str]:
    """{(model, length): status} of the cells already measured in ``results_dir`` by a sweep with the same settings on
    the same hardware, with a final status."""
    done, wanted = {}, _sweep_key(dataclasses.asdict(cfg))
    for row in load_efficiency_records(results_dir).itertuples():
        try:
            stored = json.loads(row.config)
        except (TypeError, ValueError):
            continue
        if (isinstance(stored, dict) and row.status in FINAL and row.device_name == hardware
                and _sweep_key(stored.get("sweep", stored)) == wanted):
            done[(row.model, int(row.seq_len))] = row.status
    return done


def run_efficiency(cfg: EfficiencyConfig, models: list[str], results_dir: str | Path, suite: str = "",
                   progress: bool = True, resume: bool = True, suite_cfg: Any = None) -> list[EfficiencyRecord]:
    """Measure every (model, length), all models at each length before the next, longer, one; store each record
    as soon as it exists. With ``resume``, cells that a sweep with the same settings already measured on this hardware
    in ``results_dir`` are not measured again (a restarted suite picks up where it stopped). Each model's settings
    come from the config resolver (``cell_settings``, with the suite's config ``suite_cfg`` when given). Returns the
    new records in that order."""
    import torch

    from core.env import device_name, git_commit, resolve_device

    dev = resolve_device(cfg.device)
    base = dict(suite=suite, batch_size=cfg.batch_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                device=dev.type, device_name=device_name(dev.type), torch_version=torch.__version__,
                git_commit=git_commit(), config=json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    lengths = sorted(int(v) for v in cfg.lengths)
    # a cell gets its steps' budget, plus generation and process start-up
    timeout_s = cfg.cell_budget_s * (cfg.warmup + 2 * cfg.repeats + 2) + 120
    cells = [(m, n) for n in lengths for m in models]  # length-major: a spent budget cuts the longest lengths
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cells), desc=f"efficiency ({dev.type})", unit="cell")
    fields = {f.name for f in dataclasses.fields(EfficiencyRecord)}
    records, stopped, t_start = [], {}, time.perf_counter()
    resolved: dict[str, dict[str, Any] | str] = {}  # model -> its cell settings, or the error resolving them
    before = _measured_before(results_dir, cfg, base["device_name"]) if resume else {}
    for model, length in cells:
        if bar is not None:
            bar.set_postfix_str(f"{model} L={length}")
        if (model, length) in before:
            if before[model, length] != "ok":
                stopped[model] = f"{before[model, length]} at L={length}"
            log.info("efficiency %s L=%d: measured before (%s)", model, length, before[model, length])
            if bar is not None:
                bar.update()
            continue
        if cfg.total_budget_s is not None and time.perf_counter() - t_start > cfg.total_budget_s:
            result = {"status": f"skipped: the sweep's total_budget_s ({cfg.total_budget_s:g} s) was spent"}
        elif model in stopped:
            result = {"status": f"skipped: {stopped[model]}"}
        else:
            if model not in resolved:  # once per model: its settings do not depend on the length
                try:
                    resolved[model] = cell_settings(model, cfg, suite_cfg)
                except Exception as exc:  # noqa: BLE001 - a model whose config cannot be resolved: its cells say why
                    resolved[model] = f"error: {type(exc).__name__}: {exc}"[:2000]
            if isinstance(resolved[model], str):
                result = {"status": resolved[model]}
            else:
                result = _run_child(model, length, cfg, resolved[model], timeout_s)
            if result["status"] in ("oom", "over_budget"):
                stopped[model] = f"{result['status']} at L={length}"
        settings = result.pop("settings", None)
        sizes = {k: int(settings["backbone"][k]) for k in ("d_model", "n_layers")} if settings else {}
        rec = EfficiencyRecord(model=model, seq_len=length, **{**base, **sizes},
                               **{k: v for k, v in result.items() if k in fields})
        if settings is not None:
            rec.config = json.dumps({"sweep": dataclasses.asdict(cfg), "cell": settings}, sort_keys=True, default=str)
        write_efficiency_record(rec, results_dir)
        records.append(rec)
        log.info("efficiency %s L=%d: %s", model, length, rec.status)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return records
