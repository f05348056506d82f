"""Benchmark the S4 kernel ops (Cauchy for S4, Vandermonde for S4D) on every available backend.

Sizes as S4 uses them for a length-L convolution kernel with H = 256 channels:
    cauchy       R = 6 rows, N = 64 terms (32 conjugate pairs), L' = L // 2 + 1 nodes
    cauchy_conj  the same sum as S4 calls it: the 32 pairs folded (the reference's pair path; others sum both members)
    vandermonde  R = 2 rows, N = 32 terms, L outputs
Each (backend, op, mode, L) cell is warmed up (compiles included), then timed as the median of ``--repeats``
calls, synchronizing on CUDA. Modes: ``fwd`` (no autograd graph) and ``fwd+bwd`` (gradients w.r.t. v and w/x).
A cell that would run past ``--budget-s`` (predicted from the previous length) is recorded as "skipped (budget)";
an out-of-memory as "oom". The table is printed and written as CSV + Markdown under ``--out-dir``.

    python benchmarks/kernels.py                               # ref and keops on CPU; + triton on a GPU
    python benchmarks/kernels.py --device cuda --lengths 1024 4096 16384 65536 --repeats 20
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.env import device_name, git_commit, resolve_device, set_offline_defaults  # noqa: E402
from harness.measure import is_oom  # noqa: E402

H, CAUCHY_R, CAUCHY_N, VANDER_R, VANDER_N = 256, 6, 64, 2, 32
FIELDS = ["timestamp", "device_name", "torch_version", "git_commit", "backend", "op", "mode",
          "R", "H", "N", "L", "points", "time_ms", "status", "repeats"]


def make_inputs(op: str, length: int, device: torch.device) -> tuple:
    """S4-like complex64 inputs: (v, z or length, w or x, upstream gradient g).

    ``cauchy_conj`` gets the same problem as ``cauchy`` in the form S4 calls it: one member of each conjugate pair
    (v, w of width N/2) and the real y of the nodes z = iy."""
    if op == "cauchy_conj":
        v, z, w, g = make_inputs("cauchy", length, device)
        return v[..., : CAUCHY_N // 2].contiguous(), z.imag.contiguous(), w[..., : CAUCHY_N // 2].contiguous(), g
    gen = torch.Generator().manual_seed(0)
    dt = torch.empty(H, 1).uniform_(math.log(1e-3), math.log(1e-1), generator=gen).exp()          # (H, 1)
    if op == "cauchy":
        n_pts = length // 2 + 1
        k = torch.arange(CAUCHY_N // 2, dtype=torch.float32)
        lam = torch.complex(torch.full_like(k, -0.5), math.pi * k)
        w = dt * torch.cat([lam, lam.conj()])                                                   # (H, N)
        theta = 2 * math.pi * torch.arange(n_pts) / (2 * n_pts - 1)  # odd order: the node w = -1 (z = inf) never occurs
        a = torch.complex(torch.zeros_like(theta), -2 * torch.tan(theta / 2))                  # (L',) = 2(1-w)/(1+w)
        v = torch.randn(CAUCHY_R, H, CAUCHY_N, dtype=torch.complex64, generator=gen)
        a = a.to(device)
    else:
        n_pts = length
        k = torch.arange(VANDER_N, dtype=torch.float32)
        w = dt * torch.complex(torch.full_like(k, -0.5), math.pi * k)                          # (H, N)
        v = torch.randn(VANDER_R, H, VANDER_N, dtype=torch.complex64, generator=gen)
        a = length
    g = torch.randn(v.shape[0], H, n_pts, dtype=torch.complex64, generator=gen)
    return v.to(device), a, w.to(device), g.to(device)


def make_call(op: str, backend: str, mode: str, inputs: tuple):
    """A no-argument callable that runs one forward (or forward + backward) pass."""
    from models.s4.kernels.dispatch import cauchy, cauchy_conj, vandermonde
    v, a, w, g = inputs
    fn = {"cauchy": lambda: cauchy(v, a, w, backend), "cauchy_conj": lambda: cauchy_conj(v, a, w, backend),
          "vandermonde": lambda: vandermonde(v, w, a, backend)}[op]
    if mode == "fwd+bwd":
        v, w = v.detach().requires_grad_(), w.detach().requires_grad_()

    def call():
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = fn()
            if mode == "fwd+bwd":
                torch.autograd.grad(out, (v, w), g)
    return call


def time_call(call, device: torch.device, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median seconds of up to ``repeats`` calls after one warm-up; stops early once ``budget_s`` is spent."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    call()  # warm-up: compiles (KeOps, Triton), allocator, caches
    sync()
    times = []
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def available_backends(requested: list[str] | None, device: torch.device) -> list[str]:
    """Explicit backends must resolve (else the dispatch's RuntimeError names the install); default: all that run."""
    from models.s4.kernels.dispatch import BACKENDS, resolve_backend
    if requested:
        return [resolve_backend(b, device) for b in requested]
    found = []
    for b in BACKENDS:
        if b == "triton" and device.type != "cuda":
            continue  # the CPU interpreter is a correctness tool, far too slow to time
        try:
            found.append(resolve_backend(b, device))
        except RuntimeError as exc:
            print(f"skipping backend {b}: {exc}")
    return found


def run(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    meta = dict(timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                device_name=device_name(device.type), torch_version=torch.__version__, git_commit=git_commit())
    rows = []
    for backend in available_backends(args.backends, device):
        for op in args.ops:
            for mode in args.modes:
                prev = None  # (length, seconds per call) of the last timed length, to predict the next
                for length in sorted(args.lengths):
                    r_, n_ = (CAUCHY_R, CAUCHY_N) if op.startswith("cauchy") else (VANDER_R, VANDER_N)
                    pts = length // 2 + 1 if op.startswith("cauchy") else length
                    row = dict(meta, backend=backend, op=op, mode=mode, R=r_, H=H, N=n_, L=length, points=pts,
                               time_ms="", status="ok", repeats=0)
                    if prev and math.isinf(prev[1]):
                        row["status"] = "skipped (oom at a smaller L)"
                    elif prev and prev[1] * length / prev[0] * (1 + args.repeats) > args.budget_s:
                        row["status"] = "skipped (budget)"
                    else:
                        try:
                            sec, reps = time_call(make_call(op, backend, mode, make_inputs(op, length, device)),
                                                  device, args.repeats, args.budget_s)
                            row.update(time_ms=f"{sec * 1e3:.3f}", repeats=reps)
                            prev = (length, sec)
                        except (RuntimeError, MemoryError) as exc:
                            if not is_oom(exc):
                                raise
                            row["status"] = "oom"
                            prev = (length, math.inf)
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                    rows.append(row)
                    print(f"{backend:7s} {op:12s} {mode:8s} L={length:6d}  "
                          f"{row['time_ms'] + ' ms' if row['status'] == 'ok' else row['status']}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """Metadata, then one line per (op, mode, L) with a column per backend."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    head = rows[0]
    lines = [f"# S4 kernel ops benchmark ({head['timestamp']})", "",
             f"- hardware: {head['device_name']}", f"- torch: {head['torch_version']}",
             f"- git commit: {head['git_commit']}",
             f"- sizes: H={H}; cauchy R={CAUCHY_R}, N={CAUCHY_N}, L//2+1 nodes; vandermonde R={VANDER_R}, N={VANDER_N}",
             "- median wall time per call in ms", "",
             "| op | mode | L | " + " | ".join(backends) + " |", "|---|---|---:|" + "---:|" * len(backends)]
    cells = {(r["op"], r["mode"], r["L"], r["backend"]): (r["time_ms"] if r["status"] == "ok" else r["status"])
             for r in rows}
    for key in dict.fromkeys((r["op"], r["mode"], r["L"]) for r in rows):
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells.get((*key, b), "") for b in backends) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backends", nargs="+", choices=["ref", "keops", "triton"], default=None,
                   help="default: every backend that runs on the device (triton only on CUDA)")
    p.add_argument("--ops", nargs="+", choices=["cauchy", "cauchy_conj", "vandermonde"],
                   default=["cauchy", "cauchy_conj", "vandermonde"])
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--budget-s", type=float, default=60.0, help="time budget per (backend, op, mode, L) cell")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and KeOps' OpenMP (default: torch's default; KeOps: all cores)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results" / "kernels")
    args = p.parse_args(argv)
    set_offline_defaults()
    if args.threads:  # before KeOps' OpenMP runtime is loaded (at its first compiled call)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    rows = run(args)
    if not rows:
        sys.exit("no backend to benchmark")
    md = markdown(rows)
    print("\n" + md)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"kernels_{rows[0]['timestamp'].replace(':', '')}_{resolve_device(args.device).type}"
    with open(args.out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out_dir / f"{stem}.md").write_text(md)
    print(f"wrote {args.out_dir / stem}.csv and .md")


if __name__ == "__main__":
    main()
