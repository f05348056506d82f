"""Every run's learning curve: a history row at each evaluation and one for the test, stored beside the record, sent
to TensorBoard (default logger) by rank 0 only, and drawn in the report (the SIGKILL resume test in test_resume.py
checks that a resumed run's curve is continuous; test_loggers.py, that its TensorBoard points are not doubled)."""
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from harness.curves import load_curves, plot_learning_curves
from harness.history import load_history
from harness.records import load_records
from harness.report import write_report
from harness.suite import run_one, run_suite
from test_loggers import read_scalars  # pytest puts tests/harness on sys.path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("history")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"results_dir={tmp / 'results'}", f"data_dir={tmp / 'data'}", "tasks=[listops]", "models=[lstm,s4]",
            "seeds=[0,1]", "task_overrides.listops.variant=shallow", "+task_overrides.listops.n_train=96",
            "+task_overrides.listops.n_val=32", "+task_overrides.listops.n_test=32",
            "+task_overrides.listops.progress=false", "train.epochs=3", "train.progress=false", "efficiency=null",
            "++model_overrides.lstm.backbone.d_model=16", "++model_overrides.s4.backbone.d_model=16"])
        run_suite(cfg)
    return tmp / "results"


def test_each_run_stores_its_history_beside_its_record(results):
    records = load_records(results)
    assert len(records) == 4 and (records.status == "ok").all()
    for rec in records.itertuples():
        assert rec.history == f"history/listops__{rec.model}__seed{rec.seed}__{rec.config_hash}.parquet"
        h = load_history(results / rec.history)
        val, test = h[h.split == "validation"], h[h.split == "test"]
        assert list(val.step) == [3, 6, 9] and list(val.epoch) == [1.0, 2.0, 3.0]  # 96 / 32 = 3 steps per epoch
        assert val.elapsed_s.is_monotonic_increasing and (val.elapsed_s <= rec.wall_s).all()
        assert max(val.acc) == pytest.approx(rec.best_val_acc)  # the record's best is the curve's best
        assert val.train_loss.notna().all() and val.lr.notna().all() and val.loss.notna().all()
        assert len(test) == 1 and test.acc.iloc[0] == pytest.approx(rec.test_acc) and math.isfinite(test.loss.iloc[0])


def test_each_run_has_tensorboard_event_files_by_default(results):
    records = load_records(results)
    runs = sorted(Path(r.history).stem for r in records.itertuples())  # tb/<run name>, as the history file's stem
    assert sorted(p.name for p in (results / "tb").iterdir()) == runs
    for rec in records.itertuples():
        got = read_scalars(results / "tb" / Path(rec.history).stem)
        assert [step for step, _ in got["val/acc"]] == [3, 6, 9]
        assert {"val/loss", "train/loss", "train/acc", "lr", "test/loss"} <= set(got)
        assert got["test/acc"] == [(9, pytest.approx(rec.test_acc, abs=1e-6))]


def test_only_rank_0_writes_event_files(tmp_path, monkeypatch):
    import harness.suite

    monkeypatch.setattr(harness.suite, "is_main", lambda: False)  # as on rank 1 under torchrun
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"data_dir={tmp_path / 'data'}", "task_overrides.listops.variant=shallow",
            "+task_overrides.listops.n_train=32", "+task_overrides.listops.n_val=16",
            "+task_overrides.listops.n_test=16",
            "+task_overrides.listops.progress=false", "train.epochs=1", "train.progress=false",
            "++model_overrides.lstm.backbone.d_model=8"])
    rec = run_one(cfg, "listops", "lstm", 0, tmp_path / "results")
    assert rec.status == "ok" and not (tmp_path / "results" / "tb").exists()


def test_report_draws_the_learning_curves(results):
    report = write_report([results], out=results / "REPORT.md").read_text()
    assert "## Learning curves" in report and "![curves listops](plots/curves__listops.png)" in report
    with Image.open(results / "plots" / "curves__listops.png") as img:
        assert img.size[0] > 1000 and img.size[1] > 400
    curves = load_curves(results)
    assert set(curves.model) == {"lstm", "s4"} and set(curves.seed) == {0, 1}


def test_curves_skip_runs_without_a_history(results, tmp_path):
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for path in (copy / "history").glob("*lstm*"):
        path.unlink()
    curves = load_curves(copy)
    assert set(curves.model) == {"s4"}
    assert plot_learning_curves(curves, "listops", tmp_path / "c.png").is_file()
