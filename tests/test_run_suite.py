"""run_suite.py end to end: the real Hydra configs, real data generation, records and tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.records import load_records
from harness.suite import run_suite

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task_overrides.listops.variant=shallow", "train.max_steps=6", "train.epochs=1", "train.progress=false", "efficiency=null",
        "+task_overrides.listops.progress=false"]


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "run_suite.py", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'hydra'}", *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})


def _suite(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}",
                                           *TINY, *overrides])
        return run_suite(cfg)


def test_cli_runs_suite_and_records_unknown_model_as_error(tmp_path):
    proc = _cli(tmp_path, *TINY, "tasks=[listops]", "models=[transformer,lsmt,lstm]")
    assert proc.returncode == 1, proc.stderr[-3000:]  # an error row makes the exit code non-zero ...
    df = load_records(tmp_path / "results").set_index("model")
    assert df.loc["transformer", "status"] == "ok" and df.loc["lstm", "status"] == "ok"  # ... after the others ran
    from models.registry import list_layers
    assert df.loc["lsmt", "status"] == f"error: KeyError: unknown model 'lsmt'; known: {', '.join(list_layers())}"
    assert "unknown model 'lsmt'" in proc.stdout.split("[1/3]")[0]  # reported before the first run starts
    for model in ("transformer", "lstm"):
        row = df.loc[model]
        assert row.steps == 6 and 0 <= row.test_acc <= 1 and row.n_params > 0 and row.train_samples_per_s > 0
        config = json.loads(row.config)
        assert config["train"]["max_steps"] == 6 and config["task"]["options"]["variant"] == "shallow"
        assert config["model"]["name"] == model and len(row.config_hash) == 12
        assert json.loads(row.task_info)["benchmark"] is False and row.kernel_backend == "n/a"
    assert "| transformer" in proc.stdout and "wrote accuracy_md" in proc.stdout
    assert (tmp_path / "results" / "accuracy.md").exists() and (tmp_path / "results" / "accuracy.csv").exists()


def test_cli_refuses_a_misspelt_config_key(tmp_path):
    proc = _cli(tmp_path, "train.max_stepz=3")
    assert proc.returncode != 0
    assert "max_stepz" in proc.stderr and "not in struct" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_dataset_is_skipped_with_the_staging_hint(tmp_path):
    records, _ = _suite(tmp_path, "tasks=[listops]", "models=[lstm]", f"+task_overrides.listops.release_dir={tmp_path / 'nowhere'}",
                        "~task_overrides.listops.variant")
    (rec,) = records
    assert rec.status.startswith("skipped: data not found: listops: data not found")
    assert "python -m tasks prepare listops" in rec.status
    assert load_records(tmp_path / "results").status.tolist() == [rec.status]


def test_bad_hyperparameter_and_oom_become_rows(tmp_path):
    records, _ = _suite(tmp_path, "tasks=[listops]", "models=[transformer,lstm]", "+model_overrides.transformer.hparams.heads=3",
                        # a 2^20-wide LSTM's input weights need 8 TiB: the allocation fails at once
                        "model_overrides.lstm.backbone.d_model=1048576")
    status = {r.model: r.status for r in records}
    assert status["transformer"].startswith("error: TypeError: unknown layer 'transformer' option(s) 'heads'")
    assert status["lstm"] == "oom"
    assert len(load_records(tmp_path / "results")) == 2


def test_unknown_train_option_is_named(tmp_path):
    records, _ = _suite(tmp_path, "tasks=[listops]", "models=[lstm]", "+model_overrides.lstm.train.learning_rate=0.1")
    assert records[0].status.startswith("error: TypeError: unknown train option(s) 'learning_rate'; accepted: epochs")


@pytest.mark.parametrize("group", ["model", "task"])
def test_every_config_file_composes(group):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for path in (ROOT / "configs" / group).glob("*.yaml"):
            assert compose(config_name=f"{group}/{path.stem}")[group]["name"] == path.stem


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    run_cmd, test_cmd = blocks
    assert "run_suite.py" in run_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text(), ".ci/run must run README's test command verbatim"


@pytest.mark.parametrize("suite", sorted(p.stem for p in (ROOT / "configs" / "suite").glob("*.yaml")))
def test_every_suite_resolves_for_every_pair(suite):
    """Every (task, model) of every suite composes into a run config the builders accept (no data needed)."""
    import inspect

    from models.backbone import BackboneConfig
    from models.registry import layer_factory
    from harness.suite import resolve_run_config
    from harness.train import TrainConfig
    from tasks.registry import task_builder

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"suite={suite}"])
        runs = {(t, m): resolve_run_config(cfg, t, m, 0) for t in cfg.tasks for m in cfg.models}
    for (task, model), run in runs.items():
        TrainConfig(**run["train"])
        BackboneConfig(**run["model"].get("backbone", {}))
        accepted = set(inspect.signature(task_builder(task)).parameters)
        assert set(run["task"]["options"]) <= accepted, (task, model, set(run["task"]["options"]) - accepted)
        layer_params = set(inspect.signature(layer_factory(run["model"]["name"])).parameters)
        assert set(run["model"].get("hparams", {})) <= layer_params, (task, model)


def test_lra_s4_settings_come_from_the_per_task_blocks():
    from harness.suite import resolve_run_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["suite=lra"])
        px, run = resolve_run_config(cfg, "pathx", "s4", 0), resolve_run_config(cfg, "listops", "s4", 0)
    assert px["task"]["options"]["batch_size"] == 16 and px["model"]["hparams"]["dt_min"] == 0.0001
    assert px["train"]["lr"] == 0.001 and px["train"]["epochs"] == 50 and px["model"]["backbone"]["n_layers"] == 6
    assert run["model"]["backbone"]["prenorm"] is False and run["model"]["hparams"]["d_state"] == 4


def test_missing_download_is_skipped_and_the_suite_goes_on(tmp_path):
    records, _ = _suite(tmp_path, "tasks=[text,listops]", "models=[lstm]")
    status = {r.task: r.status for r in records}
    assert status["text"].startswith("skipped: data not found: text: data not found")
    assert "python -m tasks prepare text" in status["text"] and status["listops"] == "ok"


def test_recipes_apply_only_where_a_suite_names_them():
    from harness.suite import resolve_run_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        quick = resolve_run_config(compose("config"), "listops", "s4", 0)
        lra = resolve_run_config(compose("config", overrides=["suite=lra"]), "listops", "s4", 0)
        with pytest.raises(KeyError, match="unknown recipe 'lrA'; known: lra"):
            resolve_run_config(compose("config", overrides=["recipe=lrA"]), "listops", "s4", 0)
    assert quick["train"]["epochs"] == 3 and quick["model"]["backbone"]["norm"] == "layer" and quick["recipe"] is None
    assert lra["train"]["epochs"] == 40 and lra["model"]["backbone"]["norm"] == "batch" and lra["recipe"] == "lra"


def test_records_carry_the_recipes_parameter_rule(tmp_path):
    records, _ = _suite(tmp_path, "tasks=[listops]", "models=[lstm]", "recipe=lra", "train.eval_max_batches=1",
                        "+model_overrides.lstm.backbone={d_model: 8, n_layers: 1}")
    assert records[0].status == "ok" and records[0].comparison == "apples-to-apples"
    assert load_records(tmp_path / "results").comparison.tolist() == ["apples-to-apples"]
