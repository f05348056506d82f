"""Benchmark: one S4 block against one Transformer block, forward + backward time and peak memory vs length.

A block is what the backbone stacks: [norm, layer, dropout, residual] (the Transformer adds its MLP block).
Each (model, backend, length) runs in a fresh child process (``harness.measure.run_child``), so peak memory is
measured from a clean baseline and an out-of-memory kill, or a run over the time budget, becomes a row ("oom",
"over_budget"), not a crash. ``--backends`` runs S4 and S4D once per kernel backend (auto, ref, keops, triton); an
unavailable backend is a row with its error.

    python benchmarks/layers.py                       # B=4, H=256, N=64, L in 1024 4096 16384, on the auto device
    python benchmarks/layers.py --lengths 1024 4096 --models s4 transformer --repeats 3
    python benchmarks/layers.py --backends ref keops triton --device cuda

Writes results/layers/<device-slug>.csv and .md (with the hardware, torch version, commit and date).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    # name: (layer, layer hparams, backbone MLP expansion)
    "s4": ("s4", {"d_state": 64, "bidirectional": True}, 0),
    "s4d": ("s4d", {"d_state": 64, "bidirectional": True}, 0),
    "transformer": ("transformer", {"n_heads": 4}, 4),
    "torch_transformer": (None, {"nhead": 4}, 0),  # nn.TransformerEncoderLayer, for scale
}


def _build(name: str, h: int, length: int, backend: str = "auto"):
    from torch import nn

    import models  # noqa: F401
    from models.backbone import FeedForward, ResidualBlock
    from models.registry import build_layer

    layer, kw, ff = MODELS[name]
    if "d_state" in kw:  # the S4 family: its Cauchy / Vandermonde kernel backend
        kw = {**kw, "backend": backend}
    if layer is None:
        return nn.TransformerEncoderLayer(h, dim_feedforward=4 * h, batch_first=True, dropout=0.0, **kw)
    blocks = [ResidualBlock(build_layer(layer, d_model=h, l_max=length, **kw), h, "layer", True, 0.0)]
    if ff:
        blocks.append(ResidualBlock(FeedForward(h, ff, 0.0), h, "layer", True, 0.0))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(blocks)

        def forward(self, x):
            for b in self.blocks:
                x = b(x, None)
            return x
    return Stack()


def run_one(job: dict) -> dict:
    """Child process: time forward+backward (median of repeats after one warm-up) and peak memory."""
    import torch

    from core.env import resolve_device
    from harness.measure import PeakMemory, SDPABackends, median_time

    dev = resolve_device(job["device"])
    torch.manual_seed(0)
    model = _build(job["model"], job["d_model"], job["length"], job["backend"]).to(dev)
    x = torch.randn(job["batch"], job["length"], job["d_model"], device=dev, requires_grad=True)

    def step():
        model(x).sum().backward()

    # Memory: the first step of a fresh process, from a state holding only the model and the input (later
    # steps reuse memory the allocator kept, so their RSS growth says nothing). It is also the warm-up.
    with PeakMemory(dev) as mem, SDPABackends() as sdpa:
        step()
    seconds = median_time(step, dev, job["repeats"])  # timed without the memory sampler running beside it
    backend = ",".join(sorted({str(m.kernel_backend) for m in model.modules() if hasattr(m, "kernel_backend")})) or "n/a"
    return {"status": "ok", "fwd_bwd_s": seconds, "peak_mem_mib": mem.peak_mib, "mem_kind": mem.kind,
            "kernel_backend": backend, "sdpa_backend": str(sdpa), "n_params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["s4", "s4d", "transformer", "torch_transformer"], choices=list(MODELS))
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backends", nargs="+", default=["auto"], choices=["auto", "ref", "keops", "triton"],
                    help="S4 / S4D kernel backends, one row each (other models run once)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-time limit of one (model, length) run")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "layers")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from core.env import device_name, git_commit, resolve_device, set_offline_defaults
    from harness.measure import run_child

    set_offline_defaults()
    dev = resolve_device(args.device)
    hw = device_name(dev.type)
    rows = []
    cells = [(length, name, backend) for length in args.lengths for name in args.models
             for backend in (args.backends if "d_state" in MODELS[name][1] else ["auto"])]
    for length, name, backend in cells:
        job = {"model": name, "length": length, "batch": args.batch, "d_model": args.d_model, "backend": backend,
               "repeats": args.repeats, "device": args.device}
        row = {"model": name, "backend": backend, "length": length, "batch": args.batch, "d_model": args.d_model}
        row.update(run_child("benchmarks.layers:run_one", job, args.budget_s))
        rows.append(row)
        print(f"L={length:6d} {name:18s} {backend:6s} {row['status'][:40]:10s} "
              f"{row.get('fwd_bwd_s', float('nan')):8.3f} s  {row.get('peak_mem_mib', float('nan')):9.1f} MiB",
              flush=True)
    df = pd.DataFrame(rows)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hw).strip("-").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / f"{slug}.csv", index=False)
    header = (f"# One block, forward + backward (B={args.batch}, H={args.d_model}; S4/S4D N=64 bidirectional; "
              f"Transformer 4 heads + MLP)\n\nHardware: {hw}  \ntorch {torch.__version__}, commit {git_commit()}, "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}  \nPeak memory: {df.get('mem_kind', pd.Series(['']))[0]} "
              "(CPU: growth of the process RSS over the first step of a fresh process; see harness/measure.py)\n\n")
    (args.out / f"{slug}.md").write_text(header + df.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(f"wrote {args.out / (slug + '.csv')} and .md")


if __name__ == "__main__":
    main()
