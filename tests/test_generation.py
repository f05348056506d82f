"""The generation benchmark at tiny sizes: real child processes, records, the markdown table and the plot."""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from benchmarks.generation import GenerationRecord, main, ratio_table
from harness.efficiency import EfficiencyConfig, cell_settings
from harness.efficiency_cell import generation_model, generation_rate


def test_tiny_benchmark_writes_records_table_and_plot(tmp_path):
    assert main(["--models", "transformer", "s4d", "linformer", "--contexts", "8", "32", "--batches", "2",
                 "--d-model", "16", "--tokens", "4", "--rounds", "1", "--cell-budget-s", "120",
                 "--out", str(tmp_path)]) == 0
    (parquet,) = tmp_path.glob("*.parquet")
    df = pd.read_parquet(parquet)
    assert list(df.columns) == [f.name for f in dataclasses.fields(GenerationRecord)]
    assert len(df) == 3 * 2 and df.git_commit.ne("").all() and df.device_name.ne("").all()
    ok = df[df.model != "linformer"]
    assert (ok.status == "ok").all(), ok.status.tolist()
    assert (ok.tokens_per_s > 0).all() and (ok.n_tokens == 4).all()
    assert set(ok[ok.model == "transformer"].sdpa_backend) <= {"flash", "efficient", "math", "cudnn"}
    assert set(ok[ok.model == "s4d"].sdpa_backend) == {"n/a"}
    assert df[df.model == "linformer"].status.str.startswith("n/a").all()  # no causal form
    assert len(ratio_table(df, "s4d")) == 2                                # every (context, batch)
    md = parquet.with_suffix(".md").read_text()
    assert "S4 against the Transformer" in md and "60x" in md and "commit" in md
    (png,) = tmp_path.glob("*__per_token_vs_position.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert parquet.with_suffix(".csv").exists()


def test_prefilled_cache_holds_the_context():
    settings = cell_settings("transformer", EfficiencyConfig(d_model=16, n_layers=2))
    net = generation_model("transformer", settings, 40, torch.device("cpu"))
    rate = generation_rate(net, batch=2, n_tokens=3, device=torch.device("cpu"), context=30)
    assert rate["gen_tokens_per_s"] > 0 and rate["sdpa_backend"] in {"flash", "math"}
    state = net.default_state(2)
    assert state.blocks[0].max_len == 40 and state.blocks[1] is None  # the cache, then the MLP block's (no) state
