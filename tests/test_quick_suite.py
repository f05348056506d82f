"""The default suite makes the case (slow: the training runs of `python run_suite.py`, about 5 minutes on 2 cores).

Acceptance of the default suite: on first_token (the label 1,023 steps before the read-out), S4 and S4D reach at least
90 % test accuracy while the LSTM of about their parameter count, on the same step budget, stays within 10 points of
chance; the Transformer's result is whatever it is (it is only asked to run). Every run stops by its step budget.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from harness.records import load_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_suite_separates_long_memory_from_the_lstm(tmp_path):
    proc = subprocess.run([sys.executable, "run_suite.py", f"results_dir={tmp_path / 'quick'}",
                           f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'hydra'}", "efficiency=null",
                           "train.progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_records(tmp_path / "quick").set_index(["task", "model"])
    print(df[["test_acc", "wall_s", "steps", "n_params", "stopped_by"]].to_string())
    assert (df.status == "ok").all() and (df.stopped_by == "schedule").all()  # budgets are steps, not time
    ft = df.loc["first_token"]
    assert ft.loc["s4", "test_acc"] >= 0.90 and ft.loc["s4d", "test_acc"] >= 0.90
    assert ft.loc["lstm", "test_acc"] <= ft.loc["lstm", "chance_acc"] + 0.10
    assert len(set(ft.steps)) == 1  # the same number of training steps for every model
    assert 0.8 < ft.loc["lstm", "n_params"] / ft.loc["s4", "n_params"] < 1.25  # about the same size
    assert 0.8 < ft.loc["lstm", "n_params"] / ft.loc["s4d", "n_params"] < 1.25
