"""Several processes storing records and rewriting the tables, the report and its figures in one folder at once (the
jobs of a sweep sharing a results_dir): a reader never sees a partial file, the last tables and report hold every
record, and no temporary file is left behind."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pandas as pd

from harness.efficiency import EfficiencyRecord, write_efficiency_record
from harness.records import RunRecord, write_record
from harness.report import write_report
from harness.tables import LONG_COLUMNS, write_tables

WRITERS, ROUNDS = 3, 3
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"   # signature, and the IEND chunk that closes every PNG
SETUP = dict(suite="efficiency", batch_size=4, d_model=16, n_layers=2, device="cpu", device_name="Test CPU",
             gen_batch=1, gen_len=64, gen_status="ok")


def _write_and_regenerate(root: str, writer: int) -> None:
    """One job of a sweep: its runs, each followed by the tables, then the report (the slow part: figures)."""
    for i in range(ROUNDS):
        seed = writer * ROUNDS + i
        write_record(RunRecord(task="listops", model="lstm", seed=seed, status="ok", test_acc=seed / 100,
                               chance_acc=0.1), root)
        write_tables(root)
    write_report([Path(root)], Path(root) / "REPORT.md")


def _complete(root: Path, report_tail: str) -> None:
    """Every file a reader can open now is whole (open() keeps the inode it got, so a rename mid-read is harmless)."""
    assert list(pd.read_csv(root / "accuracy.csv").columns) == LONG_COLUMNS
    md = (root / "accuracy.md").read_text(encoding="utf-8")
    last = md.rstrip("\n").splitlines()[-1]   # a whole cost-table row closes it; before any record, the note says so
    assert md.startswith("# Test accuracy") and md.endswith("\n"), md
    assert "| chance" in md or last == "No run records found.", md
    assert (last.startswith("|") and last.endswith("|")) or last.startswith("- ") or last == "No run records found.", md
    assert (root / "REPORT.md").read_text(encoding="utf-8").endswith(report_tail)
    pngs = list((root / "plots").glob("*.png"))
    assert len(pngs) == 3   # speed, memory, generation
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_START) and data.endswith(PNG_END), png.name


def test_concurrent_jobs_leave_whole_tables_report_and_figures(tmp_path: Path):
    for model, steps, mib in [("s4", 25.0, 50.0), ("lstm", 10.0, 20.0)]:   # figures in the report (no transformer:
        write_efficiency_record(EfficiencyRecord(model=model, seq_len=64, status="ok", train_steps_per_s=steps,
                                                 train_step_ms=1000 / steps, peak_mem_mib=mib, gen_tokens_per_s=steps,
                                                 **SETUP), tmp_path)                        # no slow LRA chart)
    write_tables(tmp_path)
    report_tail = write_report([tmp_path], tmp_path / "REPORT.md").read_text(encoding="utf-8")[-500:]  # static section
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_and_regenerate, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    reads = 0
    try:
        while any(p.is_alive() for p in procs):   # read while they write
            _complete(tmp_path, report_tail)
            reads += 1
            time.sleep(0.05)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    _complete(tmp_path, report_tail)
    n = WRITERS * ROUNDS
    acc = pd.read_csv(tmp_path / "accuracy.csv")
    assert acc.n_runs.tolist() == [n] and acc.n_seeds.tolist() == [n]   # the last tables hold every record
    assert f"Runs: {n} (latest finished per task, model, seed; {n} records stored)" in (tmp_path / "accuracy.md").read_text()
    assert f"({n} records; hardware" in (tmp_path / "REPORT.md").read_text()
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]   # no temporaries left
    assert reads > 0
