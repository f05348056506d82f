"""Result records: round trip, and no stored row lost when a writer is killed mid-write."""
import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
import warnings

from harness.records import RunRecord, config_hash, load_records, records_dir, write_record


def test_round_trip(tmp_path):
    rec = RunRecord(task="listops", model="lstm", seed=1, status="ok", test_acc=0.5, n_params=123,
                    config='{"a": 1}', peak_mem_mib=None)
    write_record(rec, tmp_path)
    write_record(RunRecord(task="listops", model="transformer", seed=0, status="skipped: no data"), tmp_path)
    df = load_records(tmp_path).sort_values("model")
    assert list(df.model) == ["lstm", "transformer"]
    row = df.iloc[0]
    assert row.test_acc == 0.5 and row.n_params == 123 and row.config == '{"a": 1}'
    assert df.iloc[1].status == "skipped: no data"


def test_empty_store_has_the_record_columns(tmp_path):
    df = load_records(tmp_path)
    assert df.empty and {"task", "model", "seed", "status", "test_acc"} <= set(df.columns)


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_killed_writer_loses_no_stored_row(tmp_path):
    """SIGKILL a process that stores records in a tight loop: every visible record file is whole."""
    script = textwrap.dedent(f"""
        from harness.records import RunRecord, write_record
        i = 0
        while True:
            write_record(RunRecord(task="t", model="m", seed=i, status="ok", config="x" * 20000), {str(tmp_path)!r})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and len(list(records_dir(tmp_path).glob("*.parquet"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files = list(records_dir(tmp_path).glob("*.parquet"))
    assert len(files) >= 20, "the writer should have stored records before being killed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unreadable record would warn
        df = load_records(tmp_path)
    assert len(df) == len(files)
    assert sorted(df.seed) == list(range(len(files)))  # records are stored in order, none missing


def test_incomplete_records_are_skipped_and_old_ones_take_defaults(tmp_path):
    """A record file lacking a required column is skipped with a warning naming it; one lacking an optional column
    (written before the field existed) takes the field's default; tables are still written."""
    import warnings as _warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.tables import write_tables

    good = RunRecord(task="listops", model="lstm", seed=0, status="ok", test_acc=0.5, chance_acc=0.1)
    write_record(good, tmp_path)
    folder = tmp_path / "records"
    row = {k: v for k, v in dataclasses.asdict(good).items() if k not in ("task_info", "config_sources")}
    pq.write_table(pa.Table.from_pylist([{**row, "seed": 1}]), folder / "old__seed1.parquet")      # older record
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "status"}]),
                   folder / "broken.parquet")                                                     # no status
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        df = load_records(tmp_path)
    assert sorted(df.seed.tolist()) == [0, 1] and df.task_info.tolist() == ["", ""]
    assert any("skipping incomplete record" in str(w.message) and "broken.parquet" in str(w.message)
               and "status" in str(w.message) for w in caught)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        assert (write_tables(tmp_path)["accuracy_md"]).exists()
