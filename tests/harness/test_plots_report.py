"""Efficiency tables, figures and the results report, regenerated from records stored with the real writers."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from harness.efficiency import EfficiencyRecord, load_efficiency_records, write_efficiency_record
from harness.lra_chart import lra_average, plot_lra_chart
from harness.plots import (FAILED, _Failed, efficiency_table, plot_generation, plot_memory_vs_length,
                           plot_speed_vs_length)
from harness.records import RunRecord, load_records, write_record
from harness.report import main, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LRA = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
S4_ACC = [0.60, 0.85, 0.90, 0.88, 0.93, 0.95]
SETUP = dict(suite="efficiency", batch_size=4, d_model=16, n_layers=2, peak_mem_kind="cpu_rss_growth", device="cpu",
             device_name="Test CPU", torch_version="2.4.1", git_commit="abc1234", gen_batch=2,
             timestamp="2024-06-01T10:00:00+0000")


def _eff(model, seq_len, status="ok", steps=None, mib=None, gen=None, **kw):
    figures = {} if status != "ok" else dict(train_steps_per_s=steps, train_step_ms=1000 / steps, peak_mem_mib=mib,
                                             infer_samples_per_s=steps * 12)
    gen_fields = dict(gen_tokens_per_s=gen, gen_len=seq_len, gen_status="ok") if gen else dict(gen_status=status)
    return EfficiencyRecord(model=model, seq_len=seq_len, status=status, **figures, **gen_fields, **{**SETUP, **kw})


# transformer: 10 steps/s and 200 MiB at L=64, out of memory at L=128; s4: ok at both lengths.
# An older s4 record at L=64 is superseded by the later one.
EFFICIENCY = [
    _eff("transformer", 64, steps=10.0, mib=200.0, gen=100.0),
    _eff("transformer", 128, status="oom"),
    _eff("s4", 64, steps=1.0, mib=999.0, gen=1.0, timestamp="2024-05-01T10:00:00+0000"),
    _eff("s4", 64, steps=25.0, mib=50.0, gen=1000.0),
    _eff("s4", 128, steps=20.0, mib=80.0, gen=900.0),
]
# s4 has ok runs on all six LRA tasks (its accuracy is ours); the transformer only on ListOps (published is used).
ACCURACY = [RunRecord(task=t, model="s4", seed=0, status="ok", test_acc=a, chance_acc=0.5, device_name="Test CPU",
                      git_commit="abc1234") for t, a in zip(LRA, S4_ACC)]
ACCURACY.append(RunRecord(task="listops", model="transformer", seed=0, status="ok", test_acc=0.36, chance_acc=0.1,
                          device_name="Test CPU", git_commit="abc1234"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for rec in EFFICIENCY:
        write_efficiency_record(rec, root)
    for rec in ACCURACY:
        write_record(rec, root)
    return root


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5_000  # an empty 1-axes figure is ~10 KB


def test_efficiency_table_ratios_and_oom(results):
    table = efficiency_table(load_efficiency_records(results)).set_index(["model", "seq_len"])
    assert len(table) == 4  # latest record per (model, length, device)
    assert table.at[("s4", 64), "train_steps_per_s"] == 25.0
    assert table.at[("s4", 64), "speed_vs_transformer"] == pytest.approx(25.0 / 10.0)
    assert table.at[("s4", 64), "memory_vs_transformer"] == pytest.approx(50.0 / 200.0)
    assert table.at[("s4", 64), "gen_vs_transformer"] == pytest.approx(1000.0 / 100.0)
    assert table.at[("transformer", 64), "speed_vs_transformer"] == pytest.approx(1.0)
    assert table.at[("transformer", 128), "status"] == "oom"
    assert np.isnan(table.at[("s4", 128), "speed_vs_transformer"])  # the transformer did not finish at L=128
    assert np.isnan(table.at[("s4", 128), "memory_vs_transformer"])


def test_lra_average_ours_or_published(results):
    avg = lra_average(load_records(results)).set_index("model")
    assert avg.at["s4", "ours"] and avg.at["s4", "lra_avg_pct"] == pytest.approx(100 * np.mean(S4_ACC))
    # The transformer has one task of ours, so its published LRA Table 1 average (Path-X "fail" counted as 50) is used.
    assert not avg.at["transformer", "ours"] and "LRA Table 1" in avg.at["transformer", "source"]
    assert avg.at["transformer", "lra_avg_pct"] == pytest.approx((36.37 + 64.27 + 57.46 + 42.44 + 71.40 + 50) / 6)


def test_every_plot_writes_a_png(results, tmp_path):
    eff, acc = load_efficiency_records(results), load_records(results)
    plotted = [plot_speed_vs_length(eff, tmp_path / "speed.png"), plot_memory_vs_length(eff, tmp_path / "mem.png"),
               plot_generation(eff, tmp_path / "gen.png"), plot_lra_chart(eff, acc, tmp_path / "lra.png", length=100)]
    for plot in plotted:
        assert _is_png(plot.path), plot.path
    assert "L = 64, the measured length closest to 100" in plotted[3].caption  # the transformer's only ok length


def test_devices_and_setups_are_kept_apart(results, tmp_path):
    eff = load_efficiency_records(results)
    narrow = eff.assign(d_model=8, train_steps_per_s=eff["train_steps_per_s"] * 2)  # the same cells, another setup
    table = efficiency_table(pd.concat([eff, narrow], ignore_index=True))
    assert len(table) == 8 and set(table["setup"]) == {"batch 4, width 16, depth 2 layers",
                                                       "batch 4, width 8, depth 2 layers"}
    s4 = table[(table["model"] == "s4") & (table["seq_len"] == 64)]
    assert s4["speed_vs_transformer"].tolist() == pytest.approx([2.5, 2.5])  # each against its own transformer
    two_devices = pd.concat([eff, eff.assign(device_name="Other GPU")], ignore_index=True)
    with pytest.raises(ValueError, match="several devices or setups"):
        plot_speed_vs_length(two_devices, tmp_path / "speed.png")


def test_report_has_every_section(results, tmp_path):
    out = write_report([results], tmp_path / "report" / "REPORT.md")
    md = out.read_text(encoding="utf-8")
    assert "| ListOps" in md and "S4 (final) (published: S4 Table 4)" in md          # the accuracy table
    assert "#### Training speed (steps/s)" in md and "| oom" in md                    # the efficiency tables
    assert "2.50× / 0.25×" in md                                                      # s4 vs transformer at L=64
    assert "LRA paper (Tay et al., ICLR 2021) Table 2" in md and "TPU v3 4x4" in md   # published, with source
    assert "S4 paper (Gu, Goel & Ré, ICLR 2022) Table 3" in md and "1x A100" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(set(links)) == 4 and len(links) == 4 + 3  # the summary shows three of them again
    for link in links:
        assert not link.startswith("/") and _is_png(out.parent / link)


def test_report_opens_with_a_summary(results, tmp_path):
    md = write_report([results], tmp_path / "REPORT.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections[:2] == ["Summary", "Reproduced vs published"]
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "7 runs" in summary and "7 ok" in summary
    assert "- **ListOps**: transformer, s4; seed 0" in summary and "- **Path-X**: s4; seed 0" in summary
    assert "| s4 " in summary and "S4 (final) (published: S4 Table 4)" in summary   # the headline table
    figures = re.findall(r"!\[([^\]]*)\]", summary)   # no learning curves here: speed, memory, then the LRA chart
    assert [f.split("__")[0] for f in figures] == ["speed_vs_length", "memory_vs_length", "lra_chart"]
    # these records say nothing about their configuration: none counts as the benchmark's
    comparison = md.split("## Reproduced vs published")[1].split("\n## ")[0]
    assert "No run here used the benchmark configuration" in comparison
    assert "Path-X / s4: not the benchmark's data or length (task_info)" in comparison


def test_failed_and_skipped_cells_are_marked(results, tmp_path):
    eff = load_efficiency_records(results)
    more = [_eff("s4", 256, status="error: RuntimeError: boom"),
            _eff("transformer", 256, status="skipped: oom at L=128")]
    eff = pd.concat([eff, pd.DataFrame([dataclasses.asdict(r) for r in more])], ignore_index=True)
    failed = _Failed(("status",), FAILED)
    table = efficiency_table(eff)
    assert sorted(failed.status(r) for _, r in table[failed(table)].iterrows()) == ["error", "oom", "skipped"]
    plot = plot_speed_vs_length(eff, tmp_path / "speed.png")
    assert _is_png(plot.path) and "thin x: skipped" in plot.caption
    gen = _Failed(("gen_status", "status"), FAILED)   # generation: a training cell that failed stopped it too
    assert gen.status(pd.Series({"gen_status": "", "status": "over_budget"})) == "over_budget"
    assert gen.status(pd.Series({"gen_status": "ok", "status": "ok"})) == "ok"


def test_report_without_records(tmp_path):
    """The report renders with no records (published figures only); the command line refuses a folder holding
    none (a mistyped folder must not give an empty report that looks like a real one)."""
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "REPORT.md")])
    assert exc.value.code == 2 and not (tmp_path / "REPORT.md").exists()
    out = write_report([tmp_path / "nothing"], tmp_path / "REPORT.md")
    md = out.read_text(encoding="utf-8")
    assert "No run records found." in md and "No efficiency records found" in md
    assert "LRA paper (Tay et al., ICLR 2021) Table 2" in md  # the published figures need no records
    assert not (tmp_path / "plots").exists()
