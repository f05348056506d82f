"""Data parallel under torchrun on CPU (gloo, two processes) equals one process with the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.records import load_records

ROOT = Path(__file__).resolve().parents[1]
RUN = ["tasks=[listops]", "models=[lstm]", "task_overrides.listops.variant=shallow", "+task_overrides.listops.n_train=640",
       "+task_overrides.listops.progress=false", "train.epochs=2", "train.progress=false", "efficiency=null",
       "+model_overrides.lstm.backbone.dropout=0.0", "+model_overrides.lstm.train.lr=0.01"]


def _run(tmp_path: Path, name: str, launcher: list[str], *extra: str) -> str:
    args = [*launcher, "run_suite.py", f"results_dir={tmp_path / name}", f"data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'hydra' / name}", *RUN, *extra]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    _run(tmp_path, "single", [sys.executable])
    out = _run(tmp_path, "ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    single, ddp = load_records(tmp_path / "single"), load_records(tmp_path / "ddp")
    assert len(ddp) == 1 and out.count("records: ") == 1  # rank 0 alone writes records and tables
    one, two = single.iloc[0], ddp.iloc[0]
    assert one.status == two.status == "ok" and (one.world_size, two.world_size) == (1, 2)
    assert one.steps == two.steps == 40  # 640 / 32 per epoch, 2 epochs: each rank takes 16 of each 32
    assert one.final_train_loss < 2.0  # it learned something, so the comparison means something
    assert two.final_train_loss == pytest.approx(one.final_train_loss, rel=1e-4)
    # accuracies summed over the two ranks' shards of validation and test, each example counted once
    assert two.best_val_acc == pytest.approx(one.best_val_acc, abs=1 / 500)
    assert two.test_acc == pytest.approx(one.test_acc, abs=1 / 500)
    assert two.train_samples_per_s > 0 and two.config_hash == one.config_hash


def test_under_torchrun_rank_0_judges_a_corrupt_checkpoint_for_all_ranks(tmp_path):
    ckpt = tmp_path / "ddp" / "checkpoints" / "listops__lstm__seed0.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x80\x02 not a checkpoint")
    _run(tmp_path, "ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
         "train.epochs=1")
    (row,) = load_records(tmp_path / "ddp").itertuples()
    assert row.status == "ok" and row.world_size == 2 and pd.isna(row.resumed_from_step)
    assert len(list(ckpt.parent.glob("*.corrupt-*"))) == 1 and not ckpt.exists()
