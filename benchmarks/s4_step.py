"""Benchmark: the S4 / S4D recurrent step (models/s4/step.py), its accuracy against N and its cost per token.

1. Conditioning: for HiPPO-LegS S4 at init (H channels, dt log-uniform as the layer draws it), the SSM output
   y_t = Re(C x_t) + D u_t over L steps of a standard-normal input, in float32, by the dense step, the DPLR step
   (the layer's default) and the diagonalised step (eigendecomposition of Ā), against a complex128 dense
   recurrence; error = max |y - y_true| / max |y_true|. Also cond(V) of the eigenvectors (largest over channels)
   and the diagonalised step run in complex128 (so the eigendecomposition, not float32, is seen to fail).
2. Per-token time of ``layer.step`` (SSM, GELU, output projection, GLU) for one layer, H=256 N=64, batch 1 and 16,
   under ``torch.inference_mode``: dense (the old step, ``mode="dense"``) against the default fast step; the
   minimum over repeats of wall-clock and of process CPU time (the CPU time is steadier on a shared machine).

    python benchmarks/s4_step.py                      # N in 4 ... 512, L=4096; timings on 1 and 2 threads
    python benchmarks/s4_step.py --n 16 64 --length 1024 --threads 2

Writes results/efficiency/s4_step_conditioning.md (with the hardware, load, commit and date).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.env import device_name, git_commit  # noqa: E402
from core.files import write_atomic  # noqa: E402
from models.registry import build_layer  # noqa: E402
from models.s4.step import (LowRankSystem, dense_plan, dense_step, dplr_system, eig_system,  # noqa: E402
                            fast_plan, fast_step)


def _run_dense(abar: torch.Tensor, bbar: torch.Tensor, c: torch.Tensor, d_skip: torch.Tensor,
               u: torch.Tensor) -> torch.Tensor:
    """u (B, L, H) -> y (B, L, H): the dense recurrence in the dtype of abar (the truth when complex128)."""
    state, ys = torch.zeros(u.shape[0], *bbar.shape, dtype=abar.dtype), []
    for t in range(u.shape[1]):
        y, state = dense_step((abar, bbar, c), u[:, t], d_skip, state)
        ys.append(y)
    return torch.stack(ys, 1)


def _run_fast(system: LowRankSystem, u: torch.Tensor) -> torch.Tensor:
    plan = fast_plan(system)
    state, ys = torch.zeros(u.shape[0], u.shape[2], plan.m, dtype=torch.complex64), []
    for t in range(u.shape[1]):
        y, state = fast_step(plan, u[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def _run_diagonal_c128(system: LowRankSystem, u: torch.Tensor) -> torch.Tensor:
    """The diagonalised system (R = 0, unpaired) stepped in complex128."""
    state, ys = torch.zeros(u.shape[0], *system.d.shape, dtype=torch.complex128), []
    for t in range(u.shape[1]):
        state = system.d * state + system.b * u[:, t, :, None]
        ys.append((system.c * state).sum(-1).real + system.d_skip * u[:, t])
    return torch.stack(ys, 1)


def conditioning(n: int, length: int, channels: int, seed: int = 0) -> dict:
    """One row of the conditioning table (see the module docstring)."""
    torch.manual_seed(seed)
    layer = build_layer("s4", d_model=channels, l_max=length, d_state=n)
    kernel, d_skip = layer.kernel, layer.D.detach()
    u = torch.randn(1, length, channels)
    truth = _run_dense(*dense_plan(kernel, torch.complex128), d_skip.double(), u.double())
    err = lambda y: ((y.double() - truth).abs().max() / truth.abs().max()).item()
    eig, cond = eig_system(kernel, d_skip)
    with torch.inference_mode():
        return {"N": n, "cond(V)": cond.max().item(),
                "dense f32": err(_run_dense(*dense_plan(kernel), d_skip, u)),
                "DPLR f32 (default)": err(_run_fast(dplr_system(kernel, d_skip), u)),
                "diagonal f32": err(_run_fast(eig, u)),
                "diagonal c128": err(_run_diagonal_c128(eig, u.double()))}


def per_token_ms(name: str, mode: str, batch: int, tokens: int, repeats: int) -> tuple[float, float]:
    """(wall, CPU) ms per token of ``layer.step``, minimum over repeats of ``tokens`` steps, H=256 N=64."""
    torch.manual_seed(0)
    layer = build_layer(name, d_model=256, l_max=1024, d_state=64).eval()
    x = torch.randn(batch, 256)
    best_wall = best_cpu = float("inf")
    with torch.inference_mode():
        state = layer.default_state(batch, mode=mode)
        for _ in range(20):                                                    # warm-up
            _, state = layer.step(x, state)
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(tokens):
                _, state = layer.step(x, state)
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    return 1e3 * best_wall / tokens, 1e3 * best_cpu / tokens


def _table(rows: list[dict], fmt: dict[str, str]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(format(r[k], fmt.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", nargs="+", type=int, default=[4, 8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--channels", type=int, default=4, help="H of the conditioning runs (dt differs per channel)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                    help="torch threads of the timings, one row each (the first also runs the accuracy table)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "efficiency" / "s4_step_conditioning.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads[0])

    cond_rows = []
    for n in args.n:
        cond_rows.append(conditioning(n, args.length, args.channels))
        print(cond_rows[-1], flush=True)
    load_before = os.getloadavg()[0]
    time_rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in ("s4", "s4d"):
            for batch in (1, 16):
                row = {"layer": name, "batch": batch, "threads": threads}
                for mode, label in (("dense", "dense (old)"), ("auto", "fast")):
                    wall, cpu = per_token_ms(name, mode, batch, args.tokens, args.repeats)
                    row[f"{label} wall ms"], row[f"{label} CPU ms"] = wall, cpu
                time_rows.append(row)
                print(row, flush=True)
    load_after = os.getloadavg()[0]

    text = (f"# S4 / S4D recurrent step: accuracy against N, and cost per token\n\n"
            f"Hardware: {device_name('cpu').split(' (')[0]}, {os.cpu_count()} logical CPUs; load average "
            f"{load_before:.1f} before the timings, {load_after:.1f} after (the machine is shared)  \n"
            f"torch {torch.__version__}, commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M %Z')}  \n"
            f"Written by `python benchmarks/s4_step.py` (its docstring defines every column).\n\n"
            f"## Error of the SSM output y against a complex128 dense recurrence\n\n"
            f"HiPPO-LegS S4 at init, H={args.channels}, L={args.length}, one standard-normal input; "
            f"max |y - y_true| / max |y_true|; {args.threads[0]} torch thread(s). cond(V) is as float64's "
            "eigendecomposition finds it: past ~1e8 it stops growing because the computed eigenvectors are "
            "themselves inexact (the exact ones have entries up to 2^(4N/3), Gu et al. 2022, Lemma 3.2).\n\n"
            + _table(cond_rows, {"cond(V)": ".1e", **{k: ".1e" for k in cond_rows[0] if k != "N"}})
            + "\n\n## Time per token of `layer.step`, one layer, H=256, N=64, `torch.inference_mode`\n\n"
            f"Minimum over {args.repeats} runs of {args.tokens} tokens; includes GELU, the output projection "
            "and GLU. CPU: the process's CPU time (all threads), steadier than wall time under load.\n\n"
            + _table(time_rows, {k: ".3f" for k in time_rows[0] if k.endswith("ms")}) + "\n")
    write_atomic(args.out, text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
