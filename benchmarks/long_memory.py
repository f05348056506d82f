"""Peak memory of one Path-X training step (L = 16384): S4 and the Transformer, gradient checkpointing off and on.

Each model runs with its Path-X settings as the ``lra`` suite resolves them (configs/model/<model>.yaml, then
configs/recipes/lra/<model>.yaml; ``harness.suite.resolve_run_config`` with ``suite=lra``) on the task's shape
(``tasks.task_spec("pathx")``, its input mode from the same config): S4 6 x 256 bidirectional with batch norm on
pixel values, the Transformer LRA's 1 x 32 with 2 heads on pixel tokens. One cell is (model, grad_checkpoint,
batch) and runs in a fresh child process: build the model, then one training step (forward, cross-entropy,
backward, AdamW step) measured by ``harness.measure.PeakMemory`` (CUDA: max_memory_allocated, absolute; CPU:
growth of the resident set over the step, the model and batch being resident before), then ``--repeats`` more
steps timed.

Per-sample memory is the slope between the two smallest batch sizes that ran, (peak(B2) - peak(B1)) / (B2 - B1);
the memory of the paper's batch size (the ``task.batch_size`` of the model's Path-X recipe: S4 16 as in
state-spaces/s4 configs/experiment/lra/s4-lra-pathx.yaml, Transformer 64 as in LRA's base_pathfinder128_config.py)
is extrapolated linearly from the smallest batch, peak(B1) + (B_paper - B1) x slope, and compared with 80 GiB.
Where only one batch size ran, peak(B1) / B1 stands in for the slope (an upper bound: it includes the fixed part).

On a CPU the child runs with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so freed tensors
leave the resident set instead of staying in malloc's heap, and with its address space capped (RLIMIT_AS) at
``--mem-cap-gib`` above its size after building the model: a step that needs more fails to allocate and is
recorded "oom" rather than pushing a shared machine into swap or its OOM killer. A cell past ``--cell-timeout-s``
is recorded "over_budget" (each cell is a ``harness.measure.run_child`` process).

    python benchmarks/long_memory.py                                   # CPU: batch 1 and 2, ~15 min on 2 cores
    python benchmarks/long_memory.py --device cuda --batches 1 2 4 8 16 --repeats 3
    python benchmarks/long_memory.py --precision bf16 --device cuda    # under bf16 autocast

Writes results/long_memory/<hardware-slug>.csv (one row per cell) and .md (cells and the per-sample summary).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK, LENGTH, GPU_GIB = "pathx", 16384, 80
CPU_NOTE = ("On a CPU, memory is the growth of the resident set over the first training step (activations, "
            "gradients, optimizer state, allocator overhead), a float32 stand-in for what the same step allocates on "
            "a GPU. The Transformer's attention runs PyTorch's math path here (the CPU flash kernel takes no "
            "dropout), which holds the (B, heads, L, L) weights; CUDA's memory-efficient kernel supports a mask and "
            "dropout without holding them, so on a GPU this Transformer should need far less (not measured here).\n\n")
BATCH_SOURCE = {
    "s4": "state-spaces/s4 configs/experiment/lra/s4-lra-pathx.yaml (loader.batch_size), "
          "as configs/recipes/lra/s4.yaml",
    "transformer": "LRA lra_benchmarks/image/configs/pathfinder128/base_pathfinder128_config.py (batch_size), "
                   "as configs/recipes/lra/transformer.yaml",
}


def pathx_settings(model: str) -> dict:
    """The model's resolved Path-X run config (the lra suite's), reduced to what one training step needs."""
    from hydra import compose, initialize_config_dir

    from harness.suite import resolve_run_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        run = resolve_run_config(compose("config", overrides=["suite=lra"]), TASK, model, 0)
    options = run["task"]["options"]
    return {"layer": run["model"]["name"], "hparams": run["model"].get("hparams") or {},
            "backbone": run["model"].get("backbone") or {}, "input_mode": options.get("input_mode"),
            "paper_batch": int(options["batch_size"]), "lr": run["train"]["lr"],
            "weight_decay": run["train"]["weight_decay"]}


# -- one cell, in the child process ---------------------------------------------------------------------------------
def _cap_address_space(cap_gib: float) -> None:
    """Fail allocations beyond cap_gib more than the process's present address space (CPU only)."""
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + int(cap_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def measure_cell(cell: dict) -> dict:
    """One (model, grad_checkpoint, batch): peak memory of the first training step, time of the later ones."""
    import torch
    import torch.nn.functional as F

    import models  # noqa: F401  (registers the layers)
    from core.env import resolve_device
    from harness.measure import PeakMemory, median_time
    from harness.optim import param_groups
    from models.backbone import build_model
    from models.registry import kernel_backends
    from tasks import task_spec

    s, batch, dev = cell["settings"], cell["batch"], resolve_device(cell["device"])
    spec = task_spec(TASK, **({"input_mode": s["input_mode"]} if s["input_mode"] else {}))
    torch.manual_seed(0)
    net = build_model(s["layer"], spec, {**s["backbone"], "grad_checkpoint": cell["grad_checkpoint"]},
                      s["hparams"]).to(dev).train()
    opt = torch.optim.AdamW(param_groups(net, s["lr"], s["weight_decay"]))
    gen = torch.Generator().manual_seed(0)
    if spec.vocab_size:                                                     # pixel tokens (B, L)
        x = torch.randint(1, spec.vocab_size, (batch, spec.l_max), generator=gen)
    else:                                                                   # pixel values (B, L, 1)
        x = torch.rand(batch, spec.l_max, spec.d_input, generator=gen)
    x, y = x.to(dev), torch.randint(0, spec.n_classes, (batch,), generator=gen).to(dev)
    lengths = torch.full((batch,), spec.l_max, dtype=torch.long, device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cell["precision"] == "bf16"):
            logits = net(x, lengths)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    if dev.type == "cpu":
        _cap_address_space(cell["mem_cap_gib"])
    t0 = time.perf_counter()
    with PeakMemory(dev, interval_s=0.005) as mem:
        step()
    first_s = time.perf_counter() - t0
    step_s = median_time(step, dev, cell["repeats"]) if cell["repeats"] else None
    return {"status": "ok", "peak_mem_mib": mem.peak_mib, "mem_kind": mem.kind, "first_step_s": first_s,
            "step_s": step_s, "n_params": sum(p.numel() for p in net.parameters()),
            "kernel_backend": kernel_backends(net)}


def cell_job(cell: dict) -> dict:
    """The child process's side of ``run_cell``: an allocation over the CPU cap is the cell's "oom"."""
    from harness.measure import is_oom

    try:
        return measure_cell(cell)
    except Exception as exc:
        if not is_oom(exc):
            raise  # harness.measure reports it as the cell's error
        return {"status": f"oom (over the {cell['mem_cap_gib']:g} GiB cap)" if cell["device"] == "cpu" else "oom"}


def run_cell(cell: dict, timeout_s: float) -> dict:
    """One cell in a fresh process; on a CPU with glibc's mmap threshold fixed (freed tensors leave the RSS)."""
    from harness.measure import run_child

    env = dict(os.environ)
    if cell["device"] != "cuda":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return run_child("benchmarks.long_memory:cell_job", cell, timeout_s, env=env, oom_status="oom (killed)")


# -- the sweep ------------------------------------------------------------------------------------------------------
def summarize(rows: list[dict], settings: dict[str, dict]) -> list[dict]:
    """Per (model, grad_checkpoint): per-sample MiB, and the extrapolated memory of the paper's batch size."""
    out = []
    for model in settings:
        for ckpt in (False, True):
            ok = sorted((r["batch"], r["peak_mem_mib"]) for r in rows
                        if r["model"] == model and r["grad_checkpoint"] == ckpt and r["status"] == "ok")
            row = {"model": model, "grad_checkpoint": ckpt, "paper_batch": settings[model]["paper_batch"]}
            if ok:
                (b1, m1), rest = ok[0], ok[1:]
                slope = (rest[0][1] - m1) / (rest[0][0] - b1) if rest else m1 / b1
                need = m1 + (row["paper_batch"] - b1) * slope
                row.update(per_sample_mib=slope, from_batches=f"{b1},{rest[0][0]}" if rest else f"{b1} (upper bound)",
                           paper_batch_mib=need, fits_80gib="yes" if need < GPU_GIB * 1024 else "no")
            else:
                row.update(per_sample_mib=None, from_batches="none ran", paper_batch_mib=None, fits_80gib="?")
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["s4", "transformer"], choices=sorted(BATCH_SOURCE))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--checkpoint", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=0, help="timed training steps after the measured first one")
    ap.add_argument("--cell-timeout-s", type=float, default=600.0)
    ap.add_argument("--mem-cap-gib", type=float, default=None,
                    help="CPU: address-space growth allowed per cell (default: 60%% of MemAvailable, at most 14)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "long_memory")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from core.env import device_name, git_commit, resolve_device, set_offline_defaults

    set_offline_defaults()
    dev = resolve_device(args.device)
    hw = device_name(dev.type)
    cap = args.mem_cap_gib
    if cap is None and dev.type == "cpu":
        avail = int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
        cap = min(14.0, round(0.6 * avail, 1))
    settings = {m: pathx_settings(m) for m in args.models}
    load_start = Path("/proc/loadavg").read_text().split()[0]
    rows = []
    for model in args.models:
        for ckpt in (c == "on" for c in args.checkpoint):
            failed = ""
            for batch in sorted(args.batches):
                cell = {"settings": settings[model], "batch": batch, "grad_checkpoint": ckpt, "device": dev.type,
                        "precision": args.precision, "repeats": args.repeats, "mem_cap_gib": cap}
                # a larger batch of a setting that failed fails too
                res = {"status": f"skipped: {failed}"} if failed else run_cell(cell, args.cell_timeout_s)
                if res["status"] != "ok" and not failed:
                    failed = f"{res['status']} at batch {batch}"
                row = {"model": model, "grad_checkpoint": ckpt, "batch": batch, "length": LENGTH,
                       "precision": args.precision, **res}
                rows.append(row)
                nan = float("nan")
                print(f"{model:12s} ckpt={'on ' if ckpt else 'off'} B={batch:<3d} {row['status'][:40]:40s} "
                      f"{row.get('peak_mem_mib') or nan:10.1f} MiB  first step {row.get('first_step_s') or nan:7.1f} s"
                      f"  step {row.get('step_s') or nan:7.1f} s", flush=True)
    summary = summarize(rows, settings)
    cells, table = pd.DataFrame(rows), pd.DataFrame(summary)
    print(table.to_string(index=False))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hw).strip("-").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    cells.assign(device_name=hw, torch_version=torch.__version__, git_commit=git_commit()).to_csv(
        args.out / f"{slug}.csv", index=False)
    sources = "\n".join(f"- {m}: batch {settings[m]['paper_batch']}, from {BATCH_SOURCE[m]}" for m in args.models)
    header = (f"# Path-X (L = {LENGTH}) training step: peak memory, gradient checkpointing off / on\n\n"
              f"Hardware: {hw}  \ntorch {torch.__version__}, commit {git_commit()}, "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}, precision {args.precision}  \n"
              f"Load average (1 min) at start / end: {load_start} / {Path('/proc/loadavg').read_text().split()[0]} "
              f"on {os.cpu_count()} CPUs (times are indicative where other work shared the machine)  \n"
              f"Peak memory: {next((r['mem_kind'] for r in rows if r.get('mem_kind')), '?')} "
              "(see benchmarks/long_memory.py and harness/measure.py)"
              + (f"; CPU cells capped at {cap:g} GiB of address-space growth" if dev.type == "cpu" else "") + "\n\n"
              f"Paper batch sizes:\n{sources}\n\n" + (CPU_NOTE if dev.type == "cpu" else "")
              + f"## Per sample, and the paper's batch size against {GPU_GIB} GiB\n\n")
    cols = ["model", "grad_checkpoint", "batch", "status", "peak_mem_mib", "first_step_s", "step_s", "wall_s",
            "n_params", "kernel_backend"]
    (args.out / f"{slug}.md").write_text(
        header + table.to_markdown(index=False, floatfmt=".1f") + "\n\n## Cells\n\n"
        + cells[[c for c in cols if c in cells]].to_markdown(index=False, floatfmt=".1f") + "\n")
    print(f"wrote {args.out / (slug + '.csv')} and .md")


if __name__ == "__main__":
    main()
