"""benchmarks/gpu_check.py: on a machine without CUDA, one line, exit 0, nothing written; its plan fits 10 minutes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for minutes")
def test_without_cuda_one_line_exit_0_nothing_written(tmp_path):
    out = tmp_path / "gpu"
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}  # hide any GPU
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "no CUDA GPU" in proc.stdout
    assert not out.exists() and not any(tmp_path.iterdir())


def test_plan_fits_ten_minutes_and_names_real_scripts(tmp_path):
    plan = steps(tmp_path)
    assert sum(limit for _, limit in plan.values()) <= 600 - 30  # 30 s left for start-up and the summary
    for cmd, _ in plan.values():
        script = next((a for a in cmd if a.endswith(".py")), None)
        assert script is None or (ROOT / script).is_file(), script
    assert plan["train"][0][1] == "run_suite.py" and "train.time_budget_s=120" in plan["train"][0]
    assert plan["tests"][0][1:5] == ["-m", "pytest", "-m", "requires_cuda"]
