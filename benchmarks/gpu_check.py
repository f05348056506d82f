"""One command for a CUDA machine: the GPU tests, every kernel backend, the layer and generation benchmarks and a short
S4 training run, all written under ``results/gpu/<gpu name slug>/``; on a machine without CUDA it says so in one line,
writes nothing and exits 0.

Steps (each a subprocess with its own time limit, so the whole check ends within ~10 minutes on one H100 whatever
hangs; a step past its limit is recorded "timeout" and the next one starts):

    tests        pytest -m requires_cuda                                     -> pytest.xml, tests.log
    kernels      benchmarks/kernels.py, every available backend (ref, keops, triton), L 1K-16K -> kernels/
    layers       benchmarks/layers.py, S4 / S4D with each kernel backend, and the Transformer, L 1K and 16K -> layers/
    generation   benchmarks/generation.py, 8 models, context 1K and 16K, batch 1 and 16 -> generation/
    train        run_suite.py: S4 (its LRA ListOps recipe) on generated ListOps (small variant), 120 s -> train/

    python benchmarks/gpu_check.py                 # all steps
    python benchmarks/gpu_check.py --steps tests kernels

Then SUMMARY.md lists each step's command, status, exit code and wall time with the GPU, torch and commit; each
step's output is in <step>.log beside it.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def steps(out: Path) -> dict[str, tuple[list[str], float]]:
    """name -> (command, time limit in seconds); the limits add up to 570 s."""
    py = sys.executable
    return {
        "tests": ([py, "-m", "pytest", "-m", "requires_cuda", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={out / 'pytest.xml'}"], 75),
        "kernels": ([py, "benchmarks/kernels.py", "--device", "cuda", "--lengths", "1024", "4096", "16384",
                     "--repeats", "10", "--budget-s", "15", "--out-dir", str(out / "kernels")], 75),
        "layers": ([py, "benchmarks/layers.py", "--device", "cuda", "--backends", "auto", "ref", "keops", "triton",
                    "--lengths", "1024", "16384", "--batch", "4", "--repeats", "5", "--budget-s", "60",
                    "--out", str(out / "layers")], 110),
        "generation": ([py, "benchmarks/generation.py", "--device", "cuda", "--contexts", "1024", "16384",
                        "--batches", "1", "16", "--tokens", "64", "--rounds", "2", "--cell-budget-s", "60",
                        "--out", str(out / "generation")], 150),
        "train": ([py, "run_suite.py", "suite=lra", "tasks=[listops]", "models=[s4]", "seeds=[0]",
                   "+task_overrides.listops.variant=small", "train.time_budget_s=120", "train.progress=false",
                   f"results_dir={out / 'train'}"], 160),
    }


def run_step(name: str, cmd: list[str], limit_s: float, out: Path) -> dict:
    """Run one step with its output in <out>/<name>.log; its status, exit code and wall time."""
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s,
                                check=False).returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, f"timeout (> {limit_s:g} s)"
    return {"step": name, "status": status, "exit_code": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", nargs="+", choices=list(steps(Path("."))), default=list(steps(Path("."))))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu", help="parent of the <gpu slug> folder")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run, nothing written")
        return 0
    from core.env import git_commit, set_offline_defaults

    set_offline_defaults()
    gpu = torch.cuda.get_device_name()
    out = args.out / re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    out.mkdir(parents=True, exist_ok=True)
    plan = steps(out)
    rows = []
    for name in args.steps:
        print(f"gpu_check: {name} (limit {plan[name][1]:g} s) ...", flush=True)
        rows.append(run_step(name, *plan[name], out))
        print(f"gpu_check: {name}: {rows[-1]['status']} in {rows[-1]['wall_s']} s", flush=True)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# GPU check: {gpu}", "", f"torch {torch.__version__} (CUDA {torch.version.cuda}), commit {git_commit()}, {when}",
             "", "| step | status | exit code | wall s | command |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['status']} | {r['exit_code']} | {r['wall_s']} | `{r['command']}` |" for r in rows]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"gpu_check: wrote {out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
