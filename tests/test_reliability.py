"""The reliability matrix (README, "Reliability"): bad inputs and faults, each through the real suite runner.

For every case: a clear message, the right record status, no earlier record lost or changed (each case starts from a
results folder that already holds a finished run, and checks its files byte for byte afterwards), and the suite goes
on with its other runs.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from harness.checkpoint import FORMAT
from harness.records import load_records, records_dir
from harness.suite import SuiteError, checkpoint_path, run_suite
from models.registry import list_layers
from tasks.registry import list_tasks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "listops_release_sample.tsv"
TINY = ["tasks=[listops]", "seeds=[1]", "task_overrides.listops.variant=shallow", "+task_overrides.listops.progress=false",
        "+task_overrides.listops.n_train=64", "+task_overrides.listops.n_val=32", "+task_overrides.listops.n_test=32",
        "train.max_steps=2", "train.progress=false", "efficiency=null",
        "++model_overrides.lstm.backbone.d_model=16", "++model_overrides.transformer.backbone.d_model=16"]


def _suite(results: Path, data: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return run_suite(compose("config", overrides=[f"results_dir={results}", f"data_dir={data}", *TINY, *overrides]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, data_dir):
    """A results folder holding one finished run (listops / lstm / seed 0)."""
    results = tmp_path_factory.mktemp("earlier") / "results"
    (rec,), _ = _suite(results, data_dir, "models=[lstm]", "seeds=[0]")
    assert rec.ok
    return results


class Case:
    """One fault: a results folder seeded with the earlier run, a suite to run in it, and the checks after."""

    def __init__(self, tmp_path: Path, earlier: Path, data_dir: Path):
        self.results, self.data = tmp_path / "results", data_dir
        shutil.copytree(earlier, self.results)
        self.before = {p.name: p.read_bytes() for p in records_dir(self.results).glob("*.parquet")}

    def run(self, *overrides: str):
        records, _ = _suite(self.results, self.data, *overrides)
        return {r.model if len(set(x.model for x in records)) == len(records) else r.task: r for r in records}

    def earlier_intact(self) -> None:
        for name, blob in self.before.items():
            assert (records_dir(self.results) / name).read_bytes() == blob, f"earlier record {name} changed"
        df = load_records(self.results)
        assert ((df.seed == 0) & (df.model == "lstm") & (df.status == "ok")).sum() == 1
        assert (self.results / "accuracy.md").exists()  # tables were written after the faulty run


@pytest.fixture
def case(tmp_path, earlier, data_dir):
    c = Case(tmp_path, earlier, data_dir)
    yield c
    c.earlier_intact()


# ---- names and config keys ----

def test_unknown_task(case):
    got = case.run("tasks=[listops,lisops]", "models=[lstm]")
    assert got["lisops"].status == f"error: KeyError: unknown task 'lisops'; known: {', '.join(list_tasks())}"
    assert got["listops"].ok


def test_unknown_model(case):
    got = case.run("models=[lsmt,lstm]")
    assert got["lsmt"].status == f"error: KeyError: unknown model 'lsmt'; known: {', '.join(list_layers())}"
    assert got["lstm"].ok


def test_misspelt_config_key_is_refused_before_anything_runs(case):
    with pytest.raises(ConfigCompositionException, match=r"train.max_stepz") as err:
        case.run("train.max_stepz=3")
    assert "not in struct" in str(err.value.__cause__)


@pytest.mark.parametrize("faulty,override,status,healthy", [
    ("lstm", "+model_overrides.lstm.train.learning_rate=0.1",
     "error: TypeError: unknown train option(s) 'learning_rate'; accepted: epochs", "transformer"),
    ("lstm", "+model_overrides.lstm.backbone.widht=3",
     "error: TypeError: unknown backbone option(s) 'widht'; accepted: d_model", "transformer"),
    ("transformer", "+model_overrides.transformer.hparams.heads=3",
     "error: TypeError: unknown layer 'transformer' option(s) 'heads'", "lstm"),
    ("lstm", "+model_overrides.lstm.train.precision=fp8",
     "error: ValueError: unknown precision 'fp8'; known: fp32, bf16, fp16", "transformer"),
], ids=["train_option", "backbone_option", "layer_option", "precision"])
def test_misspelt_option_of_one_model(case, faulty, override, status, healthy):
    got = case.run(f"models=[{faulty},{healthy}]", override)
    assert got[faulty].status.startswith(status)
    assert got[healthy].ok


def test_unknown_recipe_fails_each_run_and_the_suite_still_ends(case):
    got = case.run("models=[lstm]", "recipe=lrx")
    assert got["lstm"].status == "error: KeyError: unknown recipe 'lrx'; known: lra, s5"


def test_misspelt_efficiency_key_is_refused_before_the_runs(case):
    with pytest.raises(TypeError, match=r"unknown efficiency option\(s\) 'lenghts'; accepted: .*lengths"):
        case.run("models=[lstm]", "efficiency={lenghts: [256]}")
    assert len(load_records(case.results)) == 1


# ---- data ----

def _release(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"basic_{split}.tsv").write_text(SAMPLE.read_text())
    return folder


def test_missing_dataset_is_skipped_with_the_command_that_stages_it(case, tmp_path):
    got = case.run("models=[lstm]", f"+task_overrides.listops.release_dir={tmp_path / 'nowhere'}",
                   "~task_overrides.listops.variant", "~task_overrides.listops.n_train", "~task_overrides.listops.n_val",
                   "~task_overrides.listops.n_test")
    assert got["lstm"].status.startswith("skipped: data not found") and "python -m tasks prepare listops" in got["lstm"].status


def _release_overrides(folder: Path) -> list[str]:
    return [f"+task_overrides.listops.release_dir={folder}", "~task_overrides.listops.variant",
            "~task_overrides.listops.n_train", "~task_overrides.listops.n_val", "~task_overrides.listops.n_test"]


def test_truncated_data_file_names_file_and_line(case, tmp_path):
    folder = _release(tmp_path / "release")
    (folder / "basic_test.tsv").write_text(SAMPLE.read_text()[:-25])  # cut inside the last line
    got = case.run("models=[lstm]", *_release_overrides(folder))
    assert got["lstm"].status.startswith(f"error: ValueError: {folder / 'basic_test.tsv'}, line ")
    assert "is not an integer" in got["lstm"].status


def test_corrupt_data_file_names_the_file(case, tmp_path):
    folder = _release(tmp_path / "release")
    (folder / "basic_train.tsv").write_bytes(b"\x00\xff\xfe\x89PNG\r\n" * 20)
    got = case.run("models=[lstm]", *_release_overrides(folder))
    assert got["lstm"].status.startswith(f"error: ValueError: {folder / 'basic_train.tsv'}: not a UTF-8 text file")


def test_wrong_format_archive_given_to_prepare_changes_nothing(tmp_path):
    data = tmp_path / "data"
    (data / "lra").mkdir(parents=True)
    (data / "lra" / "kept.txt").write_text("staged before")
    wrong = tmp_path / "lra_release.zip"
    wrong.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    proc = subprocess.run([sys.executable, "-m", "tasks", "prepare", "retrieval", "--from", str(wrong)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "LRB_DATA_DIR": str(data)})
    assert proc.returncode == 1
    assert f"error: {wrong}: cannot unpack" in proc.stderr and "Nothing was changed" in proc.stderr
    assert sorted(p.name for p in (data / "lra").iterdir()) == ["kept.txt"]
    assert (data / "lra" / "kept.txt").read_text() == "staged before"


def test_corrupt_record_file_is_skipped_with_a_warning_and_kept(case):
    bad = records_dir(case.results) / "listops__gru__seed0__20260101-000000__deadbeef.parquet"
    bad.write_bytes(b"PAR1 cut short")
    leftover = records_dir(case.results) / ".listops__gru__seed0__20260101-000000__cafe.parquet.tmp"
    leftover.write_bytes(b"half a record")  # what a kill in the middle of a record write leaves
    with pytest.warns(UserWarning, match="skipping unreadable record .*deadbeef"):
        got = case.run("models=[lstm]")
    assert got["lstm"].ok and bad.read_bytes() == b"PAR1 cut short"
    assert len(load_records(case.results)) == 2


# ---- training faults ----

def test_non_finite_loss_stops_the_run_as_diverged(case):
    got = case.run("models=[lstm,transformer]", "+model_overrides.lstm.train.lr=1e30", "train.max_steps=6")
    assert got["lstm"].status == "diverged" and got["lstm"].test_acc is None and got["lstm"].steps < 6
    assert got["transformer"].ok


def test_out_of_memory_at_one_size(case):
    # a 2^20-wide LSTM's input weights need 8 TiB: the allocation fails at once
    got = case.run("models=[lstm,transformer]", "model_overrides.lstm.backbone.d_model=1048576")
    assert got["lstm"].status == "oom" and got["transformer"].ok


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_asked_for_on_a_machine_without_one(case):
    got = case.run("models=[lstm]", "device=cuda")
    assert got["lstm"].status == ("error: RuntimeError: device=cuda was requested but torch sees no CUDA GPU "
                                  "(torch.cuda.is_available() is False)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_failed_rerun_does_not_hide_the_finished_result_in_the_table(case):
    """The earlier ok run of listops/lstm/seed 0, then the same cell asked for on a GPU this machine lacks: the new
    record says error, the table still shows the finished result and notes the cell's two configurations."""
    got = case.run("models=[lstm]", "seeds=[0]", "device=cuda")
    assert got["lstm"].status.startswith("error: RuntimeError: device=cuda was requested")
    md = (case.results / "accuracy.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lstm"))
    assert "error" not in row and "(1)" in row, row
    assert "records of several configurations exist for listops/lstm/seed 0" in md


# ---- checkpoints and locks ----

def test_full_disk_while_writing_a_checkpoint(case, monkeypatch, caplog):
    def no_space(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    got = case.run("models=[lstm]", "train.checkpoint_every_steps=1", "train.max_steps=3")
    assert got["lstm"].ok  # a checkpoint is insurance: the run goes on without it
    assert "not written ([Errno 28] No space left on device; " in caplog.text
    assert list((case.results / "checkpoints").iterdir()) == []  # no partial file left behind


def test_full_disk_while_writing_a_checkpoint_on_a_real_file_system(case, small_filesystem, caplog):
    # torch's zip writer meets a real ENOSPC as a RuntimeError ("[enforce fail at inline_container.cc:...] unexpected
    # pos ..."), not an OSError: a mock raising OSError never saw it
    small_filesystem.mount(case.results / "checkpoints", 64)  # the run's lock fits; its ~2 MB checkpoint does not
    got = case.run("models=[lstm]", "train.checkpoint_every_steps=1", "train.max_steps=3",
                   "++model_overrides.lstm.backbone.d_model=128")
    assert got["lstm"].ok and got["lstm"].steps == 3
    assert "not written ([enforce fail at inline_container.cc" in caplog.text and "MiB free under" in caplog.text
    assert [p for p in (case.results / "checkpoints").iterdir() if p.suffix != ".lock"] == []


def test_full_disk_while_writing_a_record_prints_it_and_exits_non_zero(case, small_filesystem):
    folder = records_dir(case.results)
    small_filesystem.mount(folder, 256)
    for name, blob in case.before.items():  # the earlier records, on the small disk that is then filled
        (folder / name).write_bytes(blob)
    small_filesystem.fill(folder)
    proc = subprocess.run([sys.executable, "run_suite.py", f"results_dir={case.results}", f"data_dir={case.data}",
                           f"hydra.run.dir={case.results.parent / 'hydra'}", *TINY, "models=[lstm,transformer]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: 2 record(s) could not be written under" in proc.stderr and "Traceback" not in proc.stderr
    assert "kept in memory, retried" in proc.stdout  # the log (Hydra logs to standard output)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["model"], r["status"]) for r in lines] == [("lstm", "ok"), ("transformer", "ok")]
    assert all(r["test_acc"] is not None and r["config_hash"] for r in lines)  # the whole record, to store by hand
    (folder / ".filler").unlink()  # the earlier records are byte-identical (checked by the fixture)


def test_records_folder_that_is_a_file_loses_no_run(tmp_path, data_dir):
    results = tmp_path / "results"
    results.mkdir()
    (results / "records").write_text("not a folder")
    proc = subprocess.run([sys.executable, "run_suite.py", f"results_dir={results}", f"data_dir={data_dir}",
                           f"hydra.run.dir={tmp_path / 'hydra'}", *TINY, "models=[lstm]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3 and "error: 1 record(s) could not be written" in proc.stderr, proc.stderr[-3000:]
    (rec,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rec["model"] == "lstm" and rec["status"] == "ok"
    assert (results / "records").read_text() == "not a folder"


def test_a_record_write_that_fails_is_retried_with_the_next_one(case, monkeypatch, caplog):
    import harness.records

    real, calls = harness.records.write_record, []

    def flaky(rec, results_dir):  # the disk is full for the first record's three attempts, then has room again
        calls.append(rec.model)
        if len(calls) <= 3:
            raise OSError(28, "No space left on device")
        return real(rec, results_dir)

    monkeypatch.setattr(harness.records, "write_record", flaky)
    monkeypatch.setattr(harness.records, "RECORD_RETRY_WAIT_S", 0.01)
    got = case.run("models=[lstm,transformer]")
    assert calls == ["lstm"] * 4 + ["transformer"] and got["lstm"].ok
    df = load_records(case.results)
    assert len(df[df.seed == 1]) == 2  # both stored: the first with the second's write
    assert "record of listops / lstm / seed 1 NOT written" in caplog.text


@pytest.mark.parametrize("override, said", [
    ("train.epochs=-1", "train.epochs must be a number > 0, got -1 (set by command line"),
    ("train.max_steps=0", "train.max_steps must be an integer >= 1 or null, got 0"),
    ("train.eval_max_batches=0", "train.eval_max_batches must be an integer >= 1 or null (the whole split), got 0"),
    ("++model_overrides.lstm.backbone.n_layers=0", "backbone.n_layers must be an integer >= 1, got 0 (set by "
     "command line"),
    ("train.grad_clip=abc", "train.grad_clip must be a number, got 'abc' (str)"),
    ("train.max_steps=", "train.max_steps must be an integer or null, got '' (str)"),
    ("++task_overrides.listops.l_max=abc", "task 'listops' option l_max must be an integer, got 'abc' (str)"),
], ids=["epochs", "max_steps", "eval_max_batches", "n_layers", "grad_clip", "empty_max_steps", "task_option_type"])
def test_nonsense_sizes_and_types_are_refused_before_anything_runs(case, override, said):
    with pytest.raises(SuiteError) as err:
        case.run("models=[lstm]", override)
    assert said in str(err.value) and "(set by command line" in str(err.value)  # the option, the value, who set it
    assert len(load_records(case.results)) == 1  # nothing ran, nothing recorded


def test_a_nonsense_value_on_the_command_line_is_one_line_and_exit_2(case):
    proc = subprocess.run([sys.executable, "run_suite.py", f"results_dir={case.results}", f"data_dir={case.data}",
                           f"hydra.run.dir={case.results.parent / 'hydra'}", *TINY, "models=[lstm]", "train.epochs=-1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: train.epochs must be a number > 0, got -1 (set by command "
                                                    "line: train.epochs=-1)")


def test_an_empty_validation_split_is_an_error_not_a_selection_on_nothing(case):
    # ListOps refuses an empty split itself; first_token builds one, and training refuses it
    got = case.run("models=[lstm]", "tasks=[first_token]", "++task_overrides.first_token.length=16",
                   "++task_overrides.first_token.n_train=32", "++task_overrides.first_token.n_val=0")
    assert got["lstm"].status.startswith("error: ValueError: task 'first_token': the validation split is empty")
    assert got["lstm"].best_val_acc is None and got["lstm"].test_acc is None


def test_an_unwritable_results_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "run_suite.py", "results_dir=/proc/x", f"data_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'hydra'}", *TINY, "models=[lstm]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: results_dir=/proc/x cannot be written (")


def test_checkpoint_from_another_config_is_refused(case):
    path = checkpoint_path(case.results, "listops", "lstm", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config_hash": "0123456789ab", "step": 3}, path)
    got = case.run("models=[lstm,transformer]")
    status = got["lstm"].status
    assert status.startswith(f"error: CheckpointMismatch: checkpoint {path} belongs to another experiment (config "
                             f"0123456789ab, this run's config is ")
    assert "resume=false" in status and path.exists() and got["transformer"].ok
    got = case.run("models=[lstm]", "resume=false")  # the way out the message names
    assert got["lstm"].ok and not path.exists()


def test_corrupt_checkpoint_is_set_aside_and_the_run_starts_afresh(case, caplog):
    path = checkpoint_path(case.results, "listops", "lstm", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02 not a checkpoint")
    got = case.run("models=[lstm]")
    assert got["lstm"].ok and got["lstm"].resumed_from_step is None
    assert "unreadable" in caplog.text and len(list(path.parent.glob("*.corrupt-*"))) == 1


def test_stale_lock_of_a_dead_process_is_taken_over(case, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = checkpoint_path(case.results, "listops", "lstm", 1).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "yesterday"}))
    got = case.run("models=[lstm]")
    assert got["lstm"].ok and "removing stale lock" in caplog.text and not lock.exists()


def _default_sigint() -> None:  # a background job of a non-interactive shell (CI) inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(case: Case, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "run_suite.py", f"results_dir={case.results}", f"data_dir={case.data}",
            f"hydra.run.dir={case.results.parent / 'hydra'}", *TINY, *overrides]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_second_run_suite_on_the_same_results_folder(case, caplog):
    slow = ["models=[lstm]", "train.max_steps=null", "train.epochs=20"]
    first = _start(case, *slow)
    try:
        _wait_for(checkpoint_path(case.results, "listops", "lstm", 1).with_suffix(".lock"), first)
        got = case.run(*slow)  # the second suite: same run, same folder, while the first trains it
        assert got == {} and "skipped here (being trained by pid" in caplog.text
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    df = load_records(case.results)
    assert len(df) == 2 and (df[df.seed == 1].status == "ok").all()  # trained once, recorded once


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_interrupt_keeps_the_checkpoint_and_releases_the_lock(case, sig):
    slow = ["models=[lstm]", "train.max_steps=null", "train.epochs=50"]
    proc = _start(case, *slow, "train.checkpoint_every_steps=1")
    ckpt = checkpoint_path(case.results, "listops", "lstm", 1)
    _wait_for(ckpt, proc)
    proc.send_signal(sig)  # Ctrl-C; SIGTERM as scancel or a SLURM pre-emption sends it
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in out
    assert ckpt.exists() and not ckpt.with_suffix(".lock").exists()
    assert len(load_records(case.results)) == 1
    got = case.run(*slow)
    assert got["lstm"].ok and got["lstm"].resumed_from_step >= 1
