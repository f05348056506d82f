"""Tables regenerated from stored records, and the published reference data."""
from __future__ import annotations

import dataclasses
import statistics

import pandas as pd
import pytest

from harness.records import RunRecord, load_records, write_record
from harness.reference import published_accuracy, published_efficiency
from harness.tables import accuracy_table, format_table_markdown, latest_runs, write_tables

CHANCE = {"listops": 0.10, "text": 0.50, "pathx": 0.50}
ALLOWED_REGISTRY = {"transformer", "local_attention", "linformer", "performer", "linear_transformer",
                    "s4", "s4d", "s5", "lru"}


def _rec(task, model, seed, acc=None, status="ok", ts="2024-05-01T12:00:00+0000"):
    return RunRecord(task=task, model=model, seed=seed, status=status, test_acc=acc, chance_acc=CHANCE[task],
                     device_name="Test GPU", git_commit="abc1234", timestamp=ts)


# Our numbers, as fractions. transformer: 3 seeds on listops, 2 on text, Path-X out of memory.
# s4: 2 seeds on listops (seed 1 re-run later: 0.62 replaces 0.10), text seed 1 errors, Path-X 1 seed.
# lstm: listops only, one seed (no published row, partial average).
RECORDS = [
    _rec("listops", "transformer", 0, 0.36), _rec("listops", "transformer", 1, 0.37),
    _rec("listops", "transformer", 2, 0.38),
    _rec("text", "transformer", 0, 0.64), _rec("text", "transformer", 1, 0.66),
    _rec("pathx", "transformer", 0, status="oom"),
    _rec("listops", "s4", 0, 0.58), _rec("listops", "s4", 1, 0.10),
    _rec("listops", "s4", 1, 0.62, ts="2024-05-02T09:30:00+0000"),  # the re-run wins
    _rec("text", "s4", 0, 0.86), _rec("text", "s4", 1, status="error: CUDA launch failure"),
    _rec("pathx", "s4", 0, 0.90),
    _rec("listops", "lstm", 0, 0.40),
]


@pytest.fixture
def results(tmp_path):
    for rec in RECORDS:
        write_record(rec, tmp_path)
    return tmp_path


def _md_table(md: str, which: int = 0) -> list[list[str]]:
    """The ``which``-th markdown table of ``md`` (0: the accuracy table, 1: the cost table), header first."""
    tables, lines = [], []
    for ln in md.splitlines() + [""]:
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            tables, lines = tables + [lines], []
    lines = tables[which]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    assert set(rows[1][0]) <= set("-:"), "second line must be the header separator"
    return [rows[0]] + rows[2:]


def test_latest_duplicate_wins(results):
    runs = latest_runs(load_records(results))
    assert len(runs) == len(RECORDS) - 1
    s4 = runs[(runs.model == "s4") & (runs.task == "listops") & (runs.seed == 1)]
    assert s4["test_acc"].tolist() == [0.62]


def test_write_tables_numbers(results):
    paths = write_tables(results)
    assert set(paths) == {"accuracy_md", "accuracy_csv"} and all(p.exists() for p in paths.values())
    long = pd.read_csv(paths["accuracy_csv"], keep_default_na=True).set_index(["model", "task"])
    for col in ["n_seeds", "mean_acc_pct", "std_acc_pct", "status", "chance_acc_pct",
                "published_acc_pct", "published_source"]:
        assert col in long.columns

    tr = long.loc[("transformer", "listops")]
    assert tr["n_seeds"] == 3
    assert tr["mean_acc_pct"] == pytest.approx(37.0, abs=1e-3)  # CSV keeps 4 decimals
    assert tr["std_acc_pct"] == pytest.approx(statistics.stdev([36, 37, 38]), abs=1e-3)  # ddof=1
    assert tr["published_acc_pct"] == pytest.approx(36.37)
    assert "Tay et al." in tr["published_source"]
    assert long.loc[("transformer", "pathx"), "status"] == "oom"
    assert long.loc[("transformer", "pathx"), "n_seeds"] == 0
    assert long.loc[("transformer", "pathx"), "published_status"] == "fail"
    assert long.loc[("s4", "listops"), "mean_acc_pct"] == pytest.approx(60.0, abs=1e-3)  # (58 + 62) / 2
    assert long.loc[("s4", "text"), "status"] == "ok/error"
    assert long.loc[("s4", "text"), "n_seeds"] == 1 and pd.isna(long.loc[("s4", "text"), "std_acc_pct"])
    assert long.loc[("s4", "pathx"), "published_acc_pct"] == pytest.approx(96.35)
    assert pd.isna(long.loc[("lstm", "listops"), "published_acc_pct"])
    assert long.loc[("lstm", "listops"), "chance_acc_pct"] == pytest.approx(10.0)


def test_accuracy_table_cells(results):
    t = accuracy_table(load_records(results))
    assert list(t.columns) == ["listops", "text", "pathx", "avg"]
    assert t.index[:2].tolist() == ["transformer", "Transformer (published: LRA Table 1)"]
    assert t.at["transformer", "listops"] == "37.00 ± 1.00 (3)"
    assert t.at["transformer", "pathx"] == "oom"
    assert t.at["transformer", "avg"] == f"{(37.0 + 65.0) / 2:.2f}*"  # Path-X failed: partial average
    assert t.at["s4", "listops"] == "60.00 ± 2.83 (2)"  # sample std of 58, 62
    assert t.at["s4", "text"] == "86.00 (1/2)"           # one seed, no ± part; one of two failed
    assert t.at["s4", "avg"] == f"{(60 + 86 + 90) / 3:.2f}"
    assert t.at["lstm", "avg"] == "40.00*"
    pub = t.loc["Transformer (published: LRA Table 1)"]
    assert pub.tolist() == ["36.37", "64.27", "fail", f"{(36.37 + 64.27 + 50) / 3:.2f}"]  # fail counts as 50
    s4pub = t.loc["S4 (final) (published: S4 Table 4)"]
    assert s4pub["listops"] == "59.60" and s4pub["pathx"] == "96.35"
    assert t.loc["chance"].tolist() == ["10.00", "50.00", "50.00", f"{110 / 3:.2f}"]
    assert not any(name.startswith("LSTM") for name in t.index)
    assert len(t.attrs["footnotes"]) == 3


def test_table_subsets_and_unverified(results):
    recs = load_records(results)
    t = accuracy_table(recs, tasks=["listops"], models=["s4"])
    assert t.index.tolist() == ["s4", "S4 (final) (published: S4 Table 4)", "chance"]
    assert t.at["s4", "avg"] == "60.00"  # complete over the one column: no "*"
    recs = recs.assign(model=recs["model"].replace({"lstm": "s5"}))
    assert not any("S5" in i for i in accuracy_table(recs).index)  # S5 numbers are unverified
    assert "S5 (published, unverified: S5)" in accuracy_table(recs, include_unverified=True).index


def test_markdown(results):
    write_tables(results)
    md = (results / "accuracy.md").read_text()
    assert md.startswith("# ")
    assert "Test GPU" in md and "abc1234" in md and "published" in md
    rows = _md_table(md)
    assert rows[0] == ["model", "ListOps", "Text", "Path-X", "avg"]
    assert all(len(r) == 5 for r in rows)
    labels = [r[0] for r in rows[1:]]
    assert labels[0] == "transformer" and labels[-1] == "chance"
    assert md == format_table_markdown(load_records(results))


def test_cost_table_beside_accuracy_and_time_cuts_marked(tmp_path):
    for seed, (wall, steps, stopped) in enumerate([(10.0, 100, "schedule"), (20.0, 60, "time_budget")]):
        write_record(dataclasses.replace(_rec("listops", "s4", seed, 0.5), wall_s=wall, steps=steps,
                                         stopped_by=stopped), tmp_path)
    write_record(_rec("text", "s4", 0, 0.8), tmp_path)  # an old record: no wall time, no steps
    md = format_table_markdown(load_records(tmp_path))
    assert _md_table(md, 1) == [["model", "ListOps", "Text"], ["s4", "15 s, 80 steps", ""]]
    assert _md_table(md)[1][1] == "50.00 ± 0.00 ⏱1 (2)"  # one of the two seeds was cut by time_budget_s
    assert "⏱: time_budget_s cut training short" in md


def test_empty_results_dir(tmp_path):
    paths = write_tables(tmp_path)
    assert "No run records" in paths["accuracy_md"].read_text()
    assert pd.read_csv(paths["accuracy_csv"]).empty


def test_corrupt_record_skipped(results):
    (results / "records" / "listops__transformer__seed9__garbage.parquet").write_bytes(b"PAR1\x00\x01not parquet")
    with pytest.warns(UserWarning, match="skipping unreadable record"):
        paths = write_tables(results)
    long = pd.read_csv(paths["accuracy_csv"]).set_index(["model", "task"])
    assert long.loc[("transformer", "listops"), "n_seeds"] == 3


def test_published_accuracy_data():
    pub = published_accuracy()
    assert set(pub.columns) >= {"model", "registry_name", "task", "acc_pct", "status", "source", "verified"}
    assert set(pub.loc[pub.registry_name != "", "registry_name"]) <= ALLOWED_REGISTRY
    assert set(pub.task) <= {"listops", "text", "retrieval", "image", "pathfinder", "pathx",
                             "scifar", "speech_commands"}
    assert not pub.duplicated(["model", "task"]).any()
    assert (pub.status == "fail").eq(pub.acc_pct.isna()).all()
    assert pub.acc_pct.dropna().between(0, 100).all()

    def acc(model, task):
        return pub.set_index(["model", "task"]).at[(model, task), "acc_pct"]

    assert acc("S4 (final)", "listops") == pytest.approx(59.60)
    lra6 = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
    assert sum(acc("S4 (final)", t) for t in lra6) / 6 == pytest.approx(86.09, abs=0.01)  # paper rounds 86.095
    assert acc("Transformer", "text") == pytest.approx(64.27)
    assert acc("S4 (final)", "scifar") == pytest.approx(91.13)
    assert acc("S4 (final)", "speech_commands") == pytest.approx(98.32)
    lra1 = pub[pub.source.str.contains("Table 1")]
    assert len(lra1.model.unique()) == 11 and (lra1[lra1.task == "pathx"].status == "fail").all()
    assert not pub.set_index("model").loc["S5", "verified"].any()


def test_published_efficiency_data():
    eff = published_efficiency()
    tr = eff[(eff.model == "Transformer") & (eff.metric == "train_steps_per_s")].set_index("length")
    assert tr.loc[4096, "value"] == pytest.approx(1.4)
    s4 = eff[(eff.model == "S4") & (eff.metric == "speed_vs_transformer")].set_index("length")
    assert s4.loc[4096, "value"] == pytest.approx(5.19)
    assert eff["unit"].ne("").all() and eff["source"].ne("").all()


def test_non_benchmark_runs_get_no_published_numbers(tmp_path):
    """A small generated variant is not LRA: its column shows n/c, not the paper's number."""
    from dataclasses import replace
    write_record(replace(_rec("listops", "transformer", 0, 0.30), task_info='{"benchmark": false}'), tmp_path)
    write_record(replace(_rec("text", "transformer", 0, 0.60), task_info='{"benchmark": true}'), tmp_path)
    table = accuracy_table(load_records(tmp_path))
    pub = [label for label in table.index if "published" in label][0]
    assert table.loc[pub, "listops"] == "n/c" and table.loc[pub, "text"] == "64.27"
    assert table.loc[pub, "avg"] == "64.27*"
    md = format_table_markdown(load_records(tmp_path))
    assert "ListOps†" in md and "not comparable" in md
    assert "Text†" not in md
    only_small = tmp_path / "small"
    write_record(replace(_rec("listops", "transformer", 0, 0.30), task_info='{"benchmark": false}'), only_small)
    assert not [label for label in accuracy_table(load_records(only_small)).index if "published" in label]


def test_a_later_failed_attempt_never_hides_a_finished_result(tmp_path):
    """An ok record, then an error record of another config for the same cell (e.g. device=cuda on a CPU machine):
    the table shows the ok result and notes that the cell's records span two configurations."""
    ok = RunRecord(task="listops", model="lstm", seed=0, status="ok", test_acc=0.4, best_val_acc=0.4,
                   chance_acc=0.1, config_hash="aaaa", timestamp="2026-01-01T00:00:00+0000")
    failed = RunRecord(task="listops", model="lstm", seed=0, status="error: RuntimeError: no CUDA GPU",
                       chance_acc=0.1, config_hash="bbbb", timestamp="2026-01-02T00:00:00+0000")
    for rec in (ok, failed):
        write_record(rec, tmp_path)
    runs = latest_runs(load_records(tmp_path))
    assert runs.status.tolist() == ["ok"] and runs.n_configs.tolist() == [2]
    md = format_table_markdown(load_records(tmp_path))
    assert "40.00 (1)" in md and "error" not in _md_table(md)[1][1]
    assert "records of several configurations exist for listops/lstm/seed 0" in md
    only_failed = tmp_path / "other"
    write_record(failed, only_failed)
    assert latest_runs(load_records(only_failed)).status.tolist() == [failed.status]  # nothing finished: said


def _bench(task, model, seed, acc, status="ok", info='{"benchmark": true}', recipe="lra", sources=None,
           stopped_by="schedule"):
    """A record in the published benchmark's configuration unless told otherwise."""
    import json
    return dataclasses.replace(_rec(task, model, seed, acc, status=status), task_info=info, stopped_by=stopped_by,
                               config=json.dumps({"recipe": recipe}),
                               config_sources=json.dumps(sources or {
                                   "train.lr": "configs/recipes/lra/s4.yaml",
                                   "train.progress": "command line: train.progress=false"}))


def test_only_benchmark_configuration_runs_are_set_against_published_numbers(tmp_path):
    from harness.tables import benchmark_reason, published_comparison

    for rec in [_bench("listops", "s4", 0, 0.58), _bench("listops", "s4", 1, 0.60),          # compared: mean 59
                _bench("text", "s4", 0, 0.80, info='{"benchmark": false}'),                   # a small variant
                _bench("listops", "transformer", 0, 0.30, recipe=None),                       # no recipe
                _bench("text", "transformer", 0, 0.60,
                       sources={"train.epochs": "command line: train.epochs=1"}),             # shortened by hand
                _bench("pathx", "s4", 0, 0.90, stopped_by="time_budget"),                     # cut by the clock
                _bench("pathx", "transformer", 0, 0.52),                                      # published: fail
                _bench("listops", "lstm", 0, 0.40)]:                                          # nothing published
        write_record(rec, tmp_path)
    records = load_records(tmp_path)
    reasons = {(r.task, r.model, r.seed): benchmark_reason(r) for _, r in records.iterrows()}
    assert reasons[("listops", "s4", 0)] == "" and reasons[("listops", "lstm", 0)] == ""
    assert reasons[("text", "transformer", 0)] == "set on the command line: train.epochs"  # train.progress is harmless
    compared, left_out = published_comparison(records)
    rows = compared.set_index(["task", "model"])
    assert list(rows.index) == [("listops", "s4"), ("pathx", "transformer")]
    s4 = rows.loc[("listops", "s4")]
    assert s4.n_seeds == 2 and s4.ours_pct == pytest.approx(59.0)
    assert s4.std_pct == pytest.approx(statistics.stdev([58, 60]))
    assert s4.delta_pp == pytest.approx(59.0 - s4.published_pct) and s4.source == "S4 Table 4"
    fail = rows.loc[("pathx", "transformer")]
    assert fail.published_status == "fail" and fail.delta_pp == pytest.approx(52.0 - 50.0)  # a fail counts 50
    why = {(r.task, r.model): r.reason for r in left_out.itertuples()}
    assert why == {("listops", "transformer"): "no published recipe",
                   ("text", "s4"): "not the benchmark's data or length (task_info)",
                   ("text", "transformer"): "set on the command line: train.epochs",
                   ("pathx", "s4"): "cut short by time_budget_s"}
