"""The efficiency sweep end to end: real child processes, real models, records on disk."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.efficiency import EfficiencyConfig, load_efficiency_records, run_efficiency
from harness.suite import run_suite

ROOT = Path(__file__).resolve().parents[2]
TINY = ["efficiency.batch_size=2", "efficiency.d_model=16", "efficiency.n_layers=1", "efficiency.warmup=1",
        "efficiency.repeats=1", "efficiency.gen_max_len=8", "efficiency.cell_budget_s=30", "train.progress=false"]


def test_tiny_sweep_writes_a_record_per_cell(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["suite=efficiency", f"results_dir={tmp_path}", "models=[transformer,s4d]",
                                           "efficiency.lengths=[32,64]", *TINY])
        run_suite(cfg)
    df = load_efficiency_records(tmp_path).sort_values(["model", "seq_len"])
    assert list(zip(df.model, df.seq_len)) == [("s4d", 32), ("s4d", 64), ("transformer", 32), ("transformer", 64)]
    assert (df.status == "ok").all(), df.status.tolist()
    for col in ("train_steps_per_s", "infer_samples_per_s", "gen_tokens_per_s", "n_params"):
        assert (df[col] > 0).all(), col
    assert (df.peak_mem_mib >= 0).all() and set(df.peak_mem_kind) == {"cpu_rss_growth"}
    assert (df.gen_status == "ok").all() and (df.gen_len == [8, 8, 8, 8]).all()
    assert set(df.kernel_backend) == {"ref", "n/a"} and (df.device_name != "").all() and (df.git_commit != "").all()
    tr, s4d = df[df.model == "transformer"], df[df.model == "s4d"]
    assert (tr.attn_dropout == 0.1).all() and s4d.attn_dropout.isna().all()  # configs/suite/efficiency.yaml's 0.1
    assert set(s4d.sdpa_backend) == set(s4d.sdpa_backend_infer) == {"n/a"}
    assert set(tr.sdpa_backend) <= {"math", "efficient"} and set(tr.sdpa_backend_infer) <= {"flash", "efficient"}
    report = (tmp_path / "REPORT.md").read_text()  # the suite's report, from those records
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert {p.name.split("__")[0] for p in pngs} >= {"speed_vs_length", "memory_vs_length", "generation"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{p.name}" in report for p in pngs)
    assert "Training speed (steps/s)" in report and "s4d" in report


def test_out_of_memory_at_one_size_is_recorded_and_the_longer_sizes_skipped(tmp_path):
    # 2^18 positions: the attention weights alone would need 4 heads x (2^18)^2 floats = 1 TiB
    cfg = EfficiencyConfig(lengths=[64, 2**18, 2**19], batch_size=1, d_model=16, n_layers=1, warmup=1, repeats=1,
                           gen_max_len=4, cell_budget_s=60)
    records = run_efficiency(cfg, ["transformer"], tmp_path, progress=False)
    assert [r.status for r in records] == ["ok", "oom", f"skipped: oom at L={2**18}"]
    assert load_efficiency_records(tmp_path).status.tolist().count("oom") == 1
    # the same sweep again (a restarted suite): measured cells are kept, the OOM still stops the longer size
    again = run_efficiency(cfg, ["transformer"], tmp_path, progress=False)
    assert [(r.seq_len, r.status) for r in again] == [(2**19, f"skipped: oom at L={2**18}")]
    assert len(run_efficiency(cfg, ["transformer"], tmp_path, progress=False, resume=False)) == 3


def test_misspelt_efficiency_option_is_named(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["suite=efficiency", f"results_dir={tmp_path}", "+efficiency.batchsize=3"])
        with pytest.raises(TypeError, match="unknown efficiency option.*'batchsize'; accepted: models, lengths"):
            run_suite(cfg)


@pytest.mark.parametrize("attn_dropout,cpu_kernel", [(0.1, "math"), (0.0, "flash")])
def test_record_names_the_attention_kernel_of_the_training_step(attn_dropout, cpu_kernel):
    import torch

    from harness.efficiency import cell_settings
    from harness.efficiency_cell import measure_cell

    cfg = EfficiencyConfig(lengths=[32], batch_size=2, d_model=16, n_layers=1, warmup=1, repeats=1, gen_max_len=4,
                           attn_dropout=attn_dropout, device="cpu")
    settings = cell_settings("transformer", cfg)
    assert settings["hparams"]["attn_dropout"] == settings["causal_hparams"]["attn_dropout"] == attn_dropout
    out = measure_cell("transformer", 32, cfg, settings)
    assert out["status"] == "ok" and out["attn_dropout"] == attn_dropout
    if not torch.cuda.is_available():  # torch's CPU flash kernel takes no dropout: the math path then
        assert out["sdpa_backend"] == cpu_kernel and out["sdpa_backend_infer"] == "flash"
