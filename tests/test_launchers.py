"""Sweeps through Hydra launchers: the real run_suite.py in --multirun mode, two jobs in parallel (joblib) or as
submitit jobs (submitit_local, the SLURM launcher's local twin), all writing into one results_dir."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.records import load_records

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tasks=[listops]", "task_overrides.listops.variant=shallow", "+task_overrides.listops.progress=false",
        "train.max_steps=6", "train.epochs=1", "train.progress=false", "efficiency=null"]
TIMEOUT_S = 240   # a hung launcher fails the test, not the CI job; each sweep takes 20-50 s on 2 cores


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "run_suite.py", "--multirun", f"results_dir={tmp_path / 'results'}",
            f"data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'multirun'}", *TINY, *overrides]
    # its own process group: on a timeout the launcher's workers (loky, submitit) are killed with it
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_DATASETS_OFFLINE": "1"}, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"sweep still running after {TIMEOUT_S} s:\n{out[-3000:]}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out)


def _check_sweep(tmp_path: Path, proc: subprocess.CompletedProcess, expected: set[tuple[str, int]]) -> None:
    """Every job's record is stored and ok, the shared tables list them all, no temporary file is left."""
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = tmp_path / "results"
    df = load_records(results)
    assert set(zip(df.model, df.seed)) == expected and len(df) == len(expected)
    assert (df.status == "ok").all(), df.status.tolist()
    acc = pd.read_csv(results / "accuracy.csv")
    assert acc.groupby("model").n_runs.sum().to_dict() == pd.Series([m for m, _ in expected]).value_counts().to_dict()
    md = (results / "accuracy.md").read_text()
    assert f"Runs: {len(expected)} (" in md and all(f"| {m}" in md for m, _ in expected)
    assert f"({len(expected)} records;" in (results / "REPORT.md").read_text()
    assert not [p for p in results.rglob(".*") if p.is_file()]   # no temporaries
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.name.isdigit()) == ["0", "1"]


def test_joblib_sweep_runs_jobs_in_parallel_into_one_results_dir(tmp_path):
    proc = _multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "models=[lstm]", "seeds=[0],[1]")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    _check_sweep(tmp_path, proc, {("lstm", 0), ("lstm", 1)})


def test_submitit_local_sweep_runs_each_job_as_a_submitit_job(tmp_path):
    proc = _multirun(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2",
                     "models=[lstm],[transformer]", "seeds=[0]")
    assert "Submitit 'local' sweep output dir" in proc.stdout
    _check_sweep(tmp_path, proc, {("lstm", 0), ("transformer", 0)})
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2   # two submitit jobs


def test_a_failing_job_does_not_stop_the_other_jobs_of_a_sweep(tmp_path):
    proc = _multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "models=[lsmt],[lstm]", "seeds=[0]")
    assert proc.returncode != 0 and "1 run(s) failed with errors" in proc.stdout  # the sweep reports the failure ...
    status = load_records(tmp_path / "results").set_index("model").status
    assert status["lstm"] == "ok" and status["lsmt"].startswith("error: KeyError: unknown model 'lsmt'")  # ... after both
