"""Several processes writing records into one results folder at once lose no row and corrupt no file."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pyarrow.parquet as pq

from harness.records import RunRecord, consolidate, load_records, write_record

WRITERS, PER_WRITER = 4, 25


def _write_many(results_dir: str, writer: int) -> None:
    for i in range(PER_WRITER):  # same task/model/seed in every process: names must still never collide
        write_record(RunRecord(task="listops", model="s4", seed=0, status="ok", test_acc=(writer * PER_WRITER + i) / 1000,
                               config=f"writer {writer}, row {i}"), results_dir)


def test_concurrent_writers_lose_no_record(tmp_path: Path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):  # consolidating while they write: always a whole, readable file
        rows = pq.read_table(consolidate(tmp_path)).num_rows
        assert rows >= seen
        seen = rows
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = list((tmp_path / "records").iterdir())
    assert len(files) == WRITERS * PER_WRITER and not [f for f in files if f.name.startswith(".")]  # no temporaries
    df = load_records(tmp_path)
    assert sorted(df.test_acc.round(6)) == [k / 1000 for k in range(WRITERS * PER_WRITER)]
    merged = pq.read_table(consolidate(tmp_path)).to_pandas()
    assert sorted(merged.test_acc.round(6)) == sorted(df.test_acc.round(6))
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
