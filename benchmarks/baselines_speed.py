"""Training-step time and memory of the baselines in the efficiency sweep's backbone, and per-token step time of
their recurrent mode (issue 17): the figures quoted in models/mamba.py, models/scan.py and models/rnn.py. Prints one
JSON line per cell (with the 1-minute load average: the machine may be shared).

Training cells: the model as ``harness.efficiency.measure_cell`` builds it (the byte-level Text task's shape, 4 x 256,
the layer's config file, AdamW), each cell in a fresh process: peak memory of the first training step (RSS growth,
``harness.measure.PeakMemory``), then the minimum over ``--repeats`` further steps (min, not median: the machine
is shared). Step cells: one causal layer of width 256 under ``torch.inference_mode()``, ``default_state`` then
``step`` for ``--tokens`` positions, best of ``--repeats`` runs, ms per token.

    python benchmarks/baselines_speed.py train mamba:1024:32 mamba:1024:32:backend=parallel gru:1024:4
    python benchmarks/baselines_speed.py step mamba s5 lru lstm gru --batch 1 16 --threads 1
    python benchmarks/baselines_speed.py rnn          # bare nn.GRU vs nn.LSTM, forward + backward
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STEP_HPARAMS = {"s5": {"d_state": 64, "blocks": 1}, "lru": {"d_state": 64}}  # the brief's state 64


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def train_cell(model: str, length: int, batch: int, repeats: int, overrides: dict) -> dict:
    """One training cell in this process: peak MiB of the first step, min seconds of ``repeats`` more."""
    import torch
    import torch.nn.functional as F

    import models  # noqa: F401  (registers the layers)
    from harness.efficiency import EfficiencyConfig, cell_settings
    from harness.measure import PeakMemory
    from harness.optim import param_groups
    from models.backbone import build_model
    from models.registry import kernel_backends
    from tasks import task_spec

    settings = cell_settings(model, EfficiencyConfig(batch_size=batch))
    spec = task_spec("text", l_max=length)
    torch.manual_seed(0)
    net = build_model(model, spec, settings["backbone"], {**settings["hparams"], **overrides}).train()
    opt = torch.optim.AdamW(param_groups(net, 1e-4, 0.0))
    x = torch.randint(1, spec.vocab_size, (batch, length))
    lengths, y = torch.full((batch,), length), torch.randint(0, spec.n_classes, (batch,))

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, lengths), y).backward()
        opt.step()
        return time.perf_counter() - t0

    with PeakMemory(torch.device("cpu")) as mem:
        first = step()
    times = [step() for _ in range(repeats)] if first < 120 else []
    return {"model": model, "L": length, "batch": batch, "overrides": overrides, "first_s": first,
            "step_s": min(times) if times else None, "peak_mib": mem.peak_mib, "backend": kernel_backends(net),
            "load": _load()}


def step_cell(model: str, batch: int, tokens: int, repeats: int, threads: int) -> dict:
    """ms per token of one causal layer's ``step`` (width 256) at ``batch``, under inference_mode."""
    import torch

    import models  # noqa: F401
    from models.registry import build_layer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    hp = {**STEP_HPARAMS.get(model, {}), "bidirectional": False}
    layer = build_layer(model, d_model=256, l_max=tokens, **hp).eval()
    x = torch.randn(batch, tokens, 256)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            state = layer.default_state(batch)
            for t in range(tokens):
                _, state = layer.step(x[:, t], state)
            best = min(best, time.perf_counter() - t0)
    return {"model": model, "batch": batch, "ms_per_token": 1000 * best / tokens, "threads": torch.get_num_threads(),
            "load": _load()}


def rnn_cell(kind: str, length: int, batch: int, repeats: int, bidirectional: bool) -> dict:
    """Bare torch nn.GRU / nn.LSTM (d 256, 4 stacked modules as the backbone's 4 blocks), forward + backward."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    hidden = 128 if bidirectional else 256
    cells = [getattr(nn, kind)(256, hidden, batch_first=True, bidirectional=bidirectional) for _ in range(4)]
    x = torch.randn(batch, length, 256, requires_grad=True)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        h = x
        for cell in cells:
            h = cell(h)[0]
        h.square().mean().backward()
        best = min(best, time.perf_counter() - t0)
    return {"kind": kind, "L": length, "batch": batch, "bidirectional": bidirectional, "step_s": best,
            "threads": torch.get_num_threads(), "load": _load()}


def _child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([kind, *args])], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "step", "rnn"])
    p.add_argument("cells", nargs="*", help="train: model:L:batch[:key=value,...]; step: model names")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="step: torch threads (0: torch's default)")
    a = p.parse_args()
    if a.what == "train":
        for cell in a.cells:
            model, length, batch, *rest = cell.split(":")
            overrides = dict(kv.split("=", 1) for kv in rest[0].split(",")) if rest else {}
            overrides = {k: int(v) if v.isdigit() else v for k, v in overrides.items()}
            print(json.dumps(_child("train", model, int(length), int(batch), a.repeats, overrides)), flush=True)
    elif a.what == "step":
        for model in a.cells:
            for batch in a.batch:
                print(json.dumps(_child("step", model, batch, a.tokens, a.repeats, a.threads)), flush=True)
    else:
        for bidirectional in (True, False):
            for kind in ("LSTM", "GRU"):
                print(json.dumps(_child("rnn", kind, 1024, 4, a.repeats, bidirectional)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, *args = json.loads(sys.argv[2])
        print(json.dumps({"train": train_cell, "step": step_cell, "rnn": rnn_cell}[kind](*args)))
    else:
        main()
