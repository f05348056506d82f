"""End to end for every registered task: data in the published layout is staged with the real staging command
(`python -m tasks prepare <task> --from <folder>`), built by the real loader, and trained for two steps by the
suite runner with S4 and an LSTM; every run must come back `ok` with an accuracy in [0, 1]."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from harness.suite import run_suite
from tasks import build_task, list_tasks, task_spec
from tasks.__main__ import main as tasks_cli

ROOT = Path(__file__).resolve().parents[1]


def _fixtures(name: str):
    """A task test module, for its writers of the published layouts."""
    spec = importlib.util.spec_from_file_location(f"fixtures_{name}", ROOT / "tests" / "tasks" / f"test_{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stage_sources(src: Path) -> dict[str, Path]:
    """Folders laid out as the unpacked archives: {task: folder to pass to --from}."""
    text, retrieval = _fixtures("text"), _fixtures("retrieval")
    cifar, speech = _fixtures("cifar"), _fixtures("speech_commands")
    rng = np.random.default_rng(0)
    cifar_data = {"train": cifar.make_images(rng, 5 * cifar.PER_BATCH), "test": cifar.make_images(rng, cifar.N_TEST)}
    speech.make_tree(src / "speech_commands_v0.02")
    retrieval.write_release(src)
    return {"text": text.write_aclimdb(src), "retrieval": src / "lra_release",
            "image": cifar.write_pickles(src / "cifar-10-batches-py", cifar_data),
            "speech_commands": src / "speech_commands_v0.02"}


TASK_OPTIONS = {
    "listops": {"variant": "shallow", "progress": False},
    "first_token": {"length": 64, "n_train": 64, "n_val": 16, "n_test": 16},
    "pathfinder": {"n_examples": 40, "progress": False},
    "pathx": {"n_examples": 20, "progress": False},
    "speech_commands": {"progress": False},
    "image": {"progress": False},
    "scifar": {"progress": False},
}


def test_every_task_has_small_options():
    """A new task must say here how to build it small: otherwise the test below would build its full data."""
    small_as_staged = {"text", "retrieval"}  # stage_sources writes them small; their options need not say so
    missing = sorted(set(list_tasks()) - set(TASK_OPTIONS) - small_as_staged)
    assert not missing, f"add small build options for {missing} to TASK_OPTIONS in {Path(__file__).name}"


def test_every_task_stages_builds_and_trains(tmp_path):
    data = tmp_path / "data"
    for task, folder in stage_sources(tmp_path / "src").items():
        assert tasks_cli(["--data-dir", str(data), "prepare", task, "--from", str(folder), "--no-build"]) == 0
    overrides = [f"results_dir={tmp_path / 'results'}", f"data_dir={data}", f"tasks=[{','.join(list_tasks())}]",
                 "models=[s4,lstm]", "seeds=[0]", "train.max_steps=2", "train.epochs=1", "train.progress=false",
                 "train.eval_max_batches=1", "train.time_budget_s=null", "efficiency=null",
                 "model_overrides.s4.backbone={d_model: 8, n_layers: 1}", "+model_overrides.s4.hparams={d_state: 4}",
                 "model_overrides.lstm.backbone={d_model: 8, n_layers: 1}"]
    overrides += [f"++task_overrides.{t}.{k}={v}" for t, opts in TASK_OPTIONS.items() for k, v in opts.items()]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        records, _ = run_suite(compose("config", overrides=overrides))
    status = {(r.task, r.model): r.status for r in records}
    assert set(t for t, _ in status) == set(list_tasks())
    assert all(s == "ok" for s in status.values()), {k: s[:300] for k, s in status.items() if s != "ok"}
    bad = {(r.task, r.model): (r.test_acc, r.steps) for r in records if not (0.0 <= r.test_acc <= 1.0 and r.steps >= 1)}
    assert not bad, bad

    # the shape a task reports without data (parameter counts, tasks.task_spec) is the one its loader builds
    for task in list_tasks():
        built = build_task(task, data, **TASK_OPTIONS.get(task, {})).spec
        shape = task_spec(task, **TASK_OPTIONS.get(task, {}))
        fields = ("n_classes", "l_max", "chance_acc", "vocab_size", "d_input", "dual_input", "pad_id")
        assert {f: getattr(shape, f) for f in fields} == {f: getattr(built, f) for f in fields}, task
