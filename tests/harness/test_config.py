"""The one config resolver: what the command line sets reaches every run, each value says where it came from."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import compose_config, read_config, resolve_run
from harness.suite import plan_runs
from harness.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

# a value for every training option that no config file uses, so a run showing it got it from the command line
CLI_TRAIN = {"epochs": 0.37, "max_steps": 7, "time_budget_s": 11.5, "lr": 0.123, "weight_decay": 0.0321,
             "warmup_steps": 3, "warmup_frac": 0.017, "min_lr_ratio": 0.0123, "grad_clip": 0.77,
             "measure_warmup_steps": 2, "eval_max_batches": 5, "precision": "bf16", "checkpoint_every_steps": 13,
             "checkpoint_every_s": 99.0, "progress": False}


def test_cli_train_values_cover_every_train_option():
    assert set(CLI_TRAIN) == {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device"}


@pytest.mark.parametrize("suite", ["lra", "quick", "extended"])
def test_every_command_line_key_reaches_every_run_it_applies_to(suite):
    cfg0 = compose_config([f"suite={suite}"])
    models, tasks = list(cfg0.models), list(cfg0.tasks)
    overrides = [f"suite={suite}", *(f"train.{k}={v}" for k, v in CLI_TRAIN.items())]
    for m in models:
        overrides += [f"++model_overrides.{m}.backbone.d_model=24", f"++model_overrides.{m}.backbone.dropout=0.0456",
                      f"++model_overrides.{m}.train.weight_decay=0.0654"]
    for t in tasks:
        overrides += [f"++task_overrides.{t}.batch_size=3"]
    cfg = compose_config(overrides)
    for task in tasks:
        for model in models:
            if task == "first_token" and model == "linformer":
                continue
            run = resolve_run(cfg, task, model, 0)
            train, bb = run.config["train"], run.config["model"]["backbone"]
            for key, value in CLI_TRAIN.items():
                if key == "weight_decay":
                    continue
                assert train[key] == value, (task, model, key, run.sources[f"train.{key}"])
                assert run.sources[f"train.{key}"] == f"command line: train.{key}={value}"
            # the model's own command-line block is more specific than the command line's train block
            assert train["weight_decay"] == 0.0654
            assert run.sources["train.weight_decay"] == f"command line: ++model_overrides.{model}.train.weight_decay=0.0654"
            assert (bb["d_model"], bb["dropout"]) == (24, 0.0456), (task, model)
            assert run.config["task"]["options"]["batch_size"] == 3, (task, model)
            assert run.sources["task.options.batch_size"] == f"command line: ++task_overrides.{task}.batch_size=3"


def test_layers_rank_model_file_recipe_suite_command_line():
    # s4 on listops: model file (lr 0.01) < recipe (epochs 40, d_state 4) < suite < command line
    lra = resolve_run(compose_config(["suite=lra"]), "listops", "s4")
    assert lra.config["train"]["epochs"] == 40
    assert lra.sources["train.epochs"] == "configs/recipes/lra/s4.yaml: per_task.listops"
    assert lra.sources["model.hparams.bidirectional"] == "configs/model/s4.yaml"
    assert lra.sources["train.precision"] == "configs/train/default.yaml"
    assert lra.sources["task.options.l_max"] == "configs/task/listops.yaml: options"
    quick = resolve_run(compose_config([]), "listops", "s4")
    assert quick.config["model"]["hparams"]["lr"] == 0.01
    assert quick.sources["model.hparams.lr"] == "configs/suite/quick.yaml: model_overrides.s4"
    assert quick.sources["train.epochs"] == "configs/suite/quick.yaml: train"
    assert quick.sources["task.options.variant"] == "configs/suite/quick.yaml: task_overrides.listops"
    # a command-line value equal to a default still outranks every file
    cli = resolve_run(compose_config(["suite=lra", "train.epochs=1", "recipe=lra"]), "listops", "s4")
    assert cli.config["train"]["epochs"] == 1 and cli.sources["train.epochs"] == "command line: train.epochs=1"
    # a whole block given on the command line
    block = resolve_run(compose_config(["suite=lra", "+model_overrides.s4.backbone={d_model: 8, n_layers: 1}"]),
                        "listops", "s4")
    assert (block.config["model"]["backbone"]["d_model"], block.config["model"]["backbone"]["n_layers"]) == (8, 1)
    assert block.config["model"]["backbone"]["norm"] == "batch"  # the rest of the block still from the recipe


def test_a_config_changed_in_python_still_outranks_the_files():
    """A config made without its command line (composed by hand, or edited) still wins where it differs."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["suite=lra", "train.lr=0.5"])
    run = resolve_run(cfg, "listops", "s4")
    assert run.config["train"]["lr"] == 0.5 and run.sources["train.lr"].startswith("command line")


def test_causal_tasks_use_the_models_causal_block():
    cfg = compose_config([])
    s4 = resolve_run(cfg, "first_token", "s4")
    assert s4.config["model"]["hparams"]["bidirectional"] is False and s4.config["model"]["backbone"]["pool"] == "last"
    assert s4.sources["model.hparams.bidirectional"] == "configs/model/s4.yaml: causal"
    assert s4.sources["model.hparams.dt_min"] == "configs/model/s4.yaml: per_task.first_token"
    tr = resolve_run(cfg, "first_token", "transformer")
    assert tr.config["model"]["hparams"]["causal"] is True
    assert resolve_run(cfg, "listops", "transformer").config["model"]["hparams"].get("causal") is None
    assert read_config("task/first_token")["causal"] is True
    with pytest.raises(ValueError, match="linformer has no causal form"):
        resolve_run(cfg, "first_token", "linformer")


def test_efficiency_sweep_takes_model_overrides_and_the_command_line():
    from harness.efficiency import EfficiencyConfig, cell_settings

    cfg = compose_config(["suite=efficiency", "+model_overrides.s4.hparams.d_state=8", "efficiency.n_layers=3"])
    s4 = cell_settings("s4", EfficiencyConfig(), cfg)
    assert s4["hparams"]["d_state"] == 8 and s4["causal_hparams"]["d_state"] == 8
    assert s4["causal_hparams"]["bidirectional"] is False and s4["hparams"]["bidirectional"] is True
    assert s4["backbone"]["n_layers"] == 3 and s4["backbone"]["d_model"] == 256
    tr = cell_settings("transformer", EfficiencyConfig(), cfg)
    assert tr["hparams"]["n_heads"] == 4 and tr["causal_hparams"]["causal"] is True
    assert cell_settings("linformer", EfficiencyConfig(), cfg)["causal_hparams"] is None
    # a suite's per-model training width does not leak into the sweep: the efficiency block's size wins there
    quick = compose_config([])
    lstm_run = resolve_run(quick, "first_token", "lstm").config["model"]["backbone"]
    assert (lstm_run["d_model"], lstm_run["n_layers"]) == (76, 1)
    lstm_cell = cell_settings("lstm", EfficiencyConfig(), quick)["backbone"]
    assert (lstm_cell["d_model"], lstm_cell["n_layers"]) == (64, 2)


def test_plan_reports_unresolvable_runs():
    plans = plan_runs(compose_config(["tasks=[listops]", "models=[lstm,lsmt]", "+train.learning_rate=1"]))
    assert [p["model"] for p in plans] == ["lstm", "lsmt"]
    assert plans[0]["error"].startswith("TypeError: unknown train option(s) 'learning_rate'")
    assert "command line: +train.learning_rate=1" in plans[0]["error"]
    assert plans[1]["error"].startswith("KeyError: unknown model 'lsmt'; known:")


def test_dry_run_prints_one_json_line_per_run_and_runs_nothing(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "run_suite.py", "suite=lra", "train.epochs=1", "dry_run=true",
                           f"results_dir={results}", "hydra.run.dir=" + str(tmp_path / "hydra")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout is JSON lines only
    cfg = compose_config(["suite=lra"])
    assert [(p["task"], p["model"], p["seed"]) for p in plans] == [
        (t, m, int(s)) for t in cfg.tasks for m in cfg.models for s in cfg.seeds]
    for p in plans:
        assert p["config"]["train"]["epochs"] == 1 and p["sources"]["train.epochs"] == "command line: train.epochs=1"
        assert set(p["sources"]) >= {"train.lr", "model.backbone.d_model", "task.options.batch_size"}
    assert "dry run: 72 planned run(s)" in proc.stderr
    assert not results.exists()


def test_records_keep_the_sources(tmp_path):
    from harness.records import load_records
    from harness.suite import run_suite

    cfg = compose_config([f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}",
                          "tasks=[listops]", "models=[lstm]", "efficiency=null", "train.max_steps=2", "train.progress=false",
                          "train.eval_max_batches=1", "++model_overrides.lstm.backbone.d_model=8",
                          "++task_overrides.listops.variant=shallow", "++task_overrides.listops.n_train=64",
                          "++task_overrides.listops.n_val=32", "++task_overrides.listops.n_test=32",
                          "++task_overrides.listops.progress=false"])
    records, _ = run_suite(cfg)
    assert records[0].status == "ok"
    stored = load_records(tmp_path / "results").iloc[0]
    sources = json.loads(stored.config_sources)
    assert sources["train.max_steps"] == "command line: train.max_steps=2"
    assert sources["model.backbone.d_model"] == "command line: ++model_overrides.lstm.backbone.d_model=8"
    assert json.loads(stored.config)["model"]["backbone"]["d_model"] == 8


def test_a_command_line_override_that_reaches_no_run_is_refused_or_said():
    from harness.config import check_command_line

    assert check_command_line(compose_config(["suite=lra", "+model_overrides.s4.hparams.d_state=8"])) == []
    for override, name in [("+model_overrides.s44.hparams.d_state=8", "s44"),
                           ("+task_overrides.listop.batch_size=8", "listop")]:
        with pytest.raises(ValueError, match=f"sets [a-z_]+.{name}, but there is no such"):
            check_command_line(compose_config(["suite=lra", override]))
    said = check_command_line(compose_config(["models=[s4]", "++model_overrides.transformer.backbone.d_model=8"]))
    assert len(said) == 1 and "reaches no run: 'transformer' is not among this suite's models (s4)" in said[0]
    proc = subprocess.run([sys.executable, "run_suite.py", "suite=lra", "dry_run=true",
                           "+model_overrides.s44.hparams.d_state=8"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "error: command line '+model_overrides.s44.hparams.d_state=8' sets model_overrides.s44" in proc.stderr


def test_a_value_deleted_on_the_command_line_is_withdrawn():
    cfg = compose_config(["~task_overrides.listops.variant", "~train.time_budget_s"])
    run = resolve_run(cfg, "listops", "lstm")
    assert run.config["task"]["options"]["variant"] == "auto"      # the task file's, not the quick suite's small
    assert run.sources["task.options.variant"] == "configs/task/listops.yaml: options"
    assert "time_budget_s" not in run.config["train"] or run.config["train"]["time_budget_s"] is None
    assert run.config["task"]["options"]["l_max"] == 256           # the suite's other values stay


def test_a_misspelt_block_in_a_model_override_is_refused_with_its_source():
    cfg = compose_config(["suite=lra", "+model_overrides.lstm.trian.lr=0.1"])
    with pytest.raises(TypeError, match=r"unknown model setting\(s\) 'trian'; a model block has name, hparams, "
                                        r"backbone, comparison .*command line: \+model_overrides.lstm.trian.lr=0.1"):
        resolve_run(cfg, "listops", "lstm")
