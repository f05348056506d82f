"""Resume after interruption: batch order, checkpoints, locks, and a real training process killed with SIGKILL."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.checkpoint import CheckpointMismatch, Checkpointer, RunLock
from harness.loading import EpochBatches, shard_batches
from harness.history import load_history
from harness.records import load_records
from harness.train import TrainConfig, fit
from models.backbone import build_model
from tasks.registry import build_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n,batch,world", [(103, 10, 1), (103, 10, 2), (103, 10, 3), (100, 10, 4), (7, 4, 2)])
def test_each_epoch_sees_every_example_once_and_ranks_split_the_single_process_batches(n, batch, world):
    single = list(EpochBatches(n, batch, True, seed=5, epoch=2))
    assert sorted(i for b in single for i in b) == list(range(n))
    assert list(EpochBatches(n, batch, True, seed=5, epoch=3)) != single  # a new order each epoch
    parts = [list(EpochBatches(n, batch, True, seed=5, epoch=2, rank=r, world=world)) for r in range(world)]
    sampler = EpochBatches(n, batch, True, seed=5, epoch=2, world=world)
    assert all(len(p) == len(sampler) for p in parts)  # every rank takes the same number of steps
    for b in range(len(sampler)):
        joined = [i for r in range(world) for i in parts[r][b]]
        assert joined == single[b] and len(joined) == sampler.global_size(b)
    dropped = n % batch if 0 < n % batch < world else 0  # a last batch too small to give every rank an example
    assert sum(len(b) for p in parts for b in p) == n - dropped
    assert list(EpochBatches(n, batch, True, seed=5, epoch=2, skip=1, rank=0, world=world)) == parts[0][1:]


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (2, 4)])
def test_evaluation_shards_hold_each_example_exactly_once(n, world):
    got = [i for r in range(world) for b in shard_batches(n, 3, r, world) for i in b]
    assert got == list(range(n))


@pytest.fixture(scope="module")
def tiny_listops(tmp_path_factory):
    return build_task("listops", tmp_path_factory.mktemp("data"), variant="shallow", l_max=32, batch_size=16,
                      n_train=160, n_val=48, n_test=48, progress=False)


class _Crash(Exception):
    pass


class _CrashAfterSave(Checkpointer):
    """Stops the process's training right after the save of step ``at`` (as a kill would, minus the process)."""

    def __init__(self, *args, at: int, **kw):
        super().__init__(*args, **kw)
        self.at = at

    def save(self, state):
        ok = super().save(state)
        if state["step"] == self.at:
            raise _Crash
        return ok


def _fit(task, layer, ckpt=None, **train):
    torch.manual_seed(0)
    model = build_model(layer, task.spec, {"d_model": 16, "n_layers": 2, "dropout": 0.2})
    cfg = TrainConfig(**{"epochs": 3, "lr": 3e-3, "warmup_frac": 0.1, "progress": False, "checkpoint_every_steps": 4,
                         **train})
    return fit(model, task, cfg, model_name=layer, checkpointer=ckpt)


MEASURED = ("test_acc", "best_val_acc", "final_train_loss", "steps", "epochs", "status")


@pytest.mark.parametrize("layer,at", [("lstm", 8), ("transformer", 12), ("s4d", 10), ("performer", 8)])
def test_a_resumed_fit_ends_exactly_like_an_uninterrupted_one(tiny_listops, tmp_path, layer, at):
    ref = _fit(tiny_listops, layer)  # 10 steps per epoch: checkpoints at 4, 8, 10 (epoch end), 12, ...
    path = tmp_path / "run.pt"
    with pytest.raises(_Crash):
        _fit(tiny_listops, layer, _CrashAfterSave(path, "h", at=at, every_steps=4))
    assert torch.load(path, weights_only=False)["step"] == at
    resumed = _fit(tiny_listops, layer, Checkpointer(path, "h", every_steps=4))
    assert resumed.resumed_from_step == at and ref.resumed_from_step is None
    assert {k: getattr(resumed, k) for k in MEASURED} == {k: getattr(ref, k) for k in MEASURED}


def test_time_budget_keeps_counting_across_a_resume(tiny_listops, tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(_Crash):
        _fit(tiny_listops, "lstm", _CrashAfterSave(path, "h", at=4, every_steps=4))
    state = torch.load(path, weights_only=False)
    state["elapsed_s"] = 1e6  # as if the first process had used the whole budget
    torch.save(state, path)
    rec = _fit(tiny_listops, "lstm", Checkpointer(path, "h", every_steps=4), time_budget_s=100.0)
    assert rec.steps == 5 and rec.wall_s > 1e6  # one step after the resume, then the budget cut; validated, tested
    assert rec.test_acc is not None


def test_checkpoint_of_another_config_is_refused_and_kept(tiny_listops, tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(_Crash):
        _fit(tiny_listops, "lstm", _CrashAfterSave(path, "hash-a", at=4, every_steps=4))
    with pytest.raises(CheckpointMismatch, match=r"another experiment \(config hash-a, this run's config is hash-b\)"):
        _fit(tiny_listops, "lstm", Checkpointer(path, "hash-b"))
    assert path.exists()
    with pytest.raises(CheckpointMismatch, match="does not fit this model"):  # same hash, other architecture
        model = build_model("lstm", tiny_listops.spec, {"d_model": 24, "n_layers": 2})
        fit(model, tiny_listops, TrainConfig(progress=False), checkpointer=Checkpointer(path, "hash-a"))


def test_corrupt_checkpoint_is_moved_aside_and_the_run_starts_afresh(tiny_listops, tmp_path, caplog):
    path = tmp_path / "run.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    rec = _fit(tiny_listops, "lstm", Checkpointer(path, "h"), max_steps=3)
    assert rec.ok and rec.resumed_from_step is None and rec.steps == 3
    assert len(list(tmp_path.glob("run.pt.corrupt-*"))) == 1 and "unreadable" in caplog.text


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, caplog):
    ckpt = Checkpointer(tmp_path / "run.pt", "h", every_s=3600)
    assert ckpt.save({"step": 1})

    def no_space(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    assert not ckpt.save({"step": 2})
    assert not ckpt.due(7)  # a failed save waits for the next interval, it does not retry at every step
    monkeypatch.undo()
    assert ckpt.load()["step"] == 1 and ckpt.failed_saves == 1
    assert "No space left on device" in caplog.text and list(tmp_path.iterdir()) == [tmp_path / "run.pt"]


def test_a_live_lock_is_respected_and_a_dead_ones_taken_over(tmp_path, caplog):
    path = tmp_path / "run.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": "then"}))
        assert RunLock(path).acquire() == f"pid {sleeper.pid} on {socket.gethostname()} since then"
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(path)
    assert lock.acquire() is None and json.loads(path.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    lock.release()
    assert not path.exists()
    mine = RunLock(path)
    assert mine.acquire() is None
    path.write_text(json.dumps({"pid": 12345, "host": "another-node", "since": "now"}))  # taken over meanwhile
    mine.release()
    assert json.loads(path.read_text())["host"] == "another-node"  # release leaves a lock that is not ours
    path.unlink()
    path.write_text(json.dumps({"pid": 1, "host": "another-node", "since": "then"}))  # other host: judged by age
    assert RunLock(path, stale_s=3600).acquire() is not None
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert RunLock(path, stale_s=3600).acquire() is None


# ---- a real run_suite.py process, killed with SIGKILL in the middle of an epoch, then started again ----

RUN = ["tasks=[listops]", "models=[lstm]", "task_overrides.listops.variant=shallow", "+task_overrides.listops.n_train=640",
       "+task_overrides.listops.progress=false", "train.epochs=3", "train.progress=false", "efficiency=null",
       "train.checkpoint_every_steps=3", "+model_overrides.lstm.backbone.dropout=0.1"]


def _start(tmp_path: Path, results: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "run_suite.py", f"results_dir={tmp_path / results}", f"data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'hydra'}", *RUN, *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stored_step(ckpt: Path) -> int:
    try:
        return torch.load(ckpt, weights_only=False)["step"]
    except Exception:  # noqa: BLE001 - replaced while being read: look again
        return -1


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_run_suite_killed_mid_epoch_resumes_to_the_same_final_metrics(tmp_path):
    out = _finish(_start(tmp_path, "ref"))  # uninterrupted reference (also generates the data)
    ref = load_records(tmp_path / "ref").iloc[0]
    assert ref.status == "ok" and ref.steps == 60  # 640 / 32 = 20 steps per epoch, 3 epochs

    proc = _start(tmp_path, "res")
    ckpt = tmp_path / "res" / "checkpoints" / "listops__lstm__seed0.pt"
    deadline = time.monotonic() + 120
    while not (ckpt.exists() and _stored_step(ckpt) > 20):  # mid-epoch 2: after the first evaluation's history row
        assert proc.poll() is None, "the run ended before a checkpoint in its second epoch"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert killed_at % 20 != 0  # mid-epoch
    assert load_records(tmp_path / "res").empty and ckpt.with_suffix(".lock").exists()  # dead process's lock

    # started again with another learning rate: the checkpoint is not the same experiment, so it is refused
    _start_other = _start(tmp_path, "res", "+model_overrides.lstm.train.lr=0.5")
    out, _ = _start_other.communicate(timeout=300)
    assert "stale lock" in out  # the killed process's lock is taken over
    (row,) = load_records(tmp_path / "res").itertuples()
    assert row.status.startswith("error: CheckpointMismatch: checkpoint") and "resume=false" in row.status
    assert torch.load(ckpt, weights_only=False)["step"] == killed_at  # left as it was

    _finish(_start(tmp_path, "res"))  # the same command again: resumes
    df = load_records(tmp_path / "res")
    resumed = df[df.status == "ok"].iloc[0]
    assert resumed.resumed_from_step == killed_at
    for key in ("test_acc", "best_val_acc", "final_train_loss", "steps", "epochs"):
        assert resumed[key] == ref[key], key  # to the last digit
    assert not ckpt.exists() and not ckpt.with_suffix(".lock").exists()
    # the learning curve is continuous: the rows of the uninterrupted run, no step twice, none missing
    curve = {name: load_history(tmp_path / name / load_records(tmp_path / name).query("status == 'ok'").history.iloc[0])
             for name in ("ref", "res")}
    assert list(curve["res"].step) == [20, 40, 60, 60] and list(curve["res"].split) == ["validation"] * 3 + ["test"]
    pd.testing.assert_frame_equal(curve["res"].drop(columns="elapsed_s"), curve["ref"].drop(columns="elapsed_s"))
    assert curve["res"].elapsed_s.is_monotonic_increasing

    out = _finish(_start(tmp_path, "res"))  # once more: nothing left to do
    assert "finished already" in out and len(load_records(tmp_path / "res")) == 2
