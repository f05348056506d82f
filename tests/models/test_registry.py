"""Registries: unknown and duplicate names, option checking, and agreement with the config files."""
from pathlib import Path

import pytest
import yaml

import models
import tasks
from models.registry import build_layer, list_layers, register_layer
from tasks.registry import build_task, list_tasks, register_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_baseline_layers_registered():
    assert {"transformer", "lstm"} <= set(list_layers())
    assert "listops" in list_tasks()


def test_unknown_layer_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown layer 'lsmt'; known: .*lstm.*transformer"):
        build_layer("lsmt", d_model=8, l_max=16)


def test_unknown_task_lists_known_names(tmp_path):
    with pytest.raises(KeyError, match=r"unknown task 'listopz'; known: .*listops"):
        build_task("listopz", tmp_path)


def test_unknown_hyperparameter_names_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown layer 'lstm' option\(s\) 'hiden'; accepted: bidirectional"):
        build_layer("lstm", d_model=8, l_max=16, hiden=3)


def test_duplicate_registration_raises():
    with pytest.raises(KeyError, match="already registered"):
        register_layer("lstm")(lambda d_model, l_max: None)
    with pytest.raises(KeyError, match="already registered"):
        register_task("listops")(lambda data_dir: None)


@pytest.mark.parametrize("group, registered", [("model", list_layers), ("task", list_tasks)])
def test_config_files_match_registry(group, registered):
    files = {p.stem for p in (CONFIGS / group).glob("*.yaml")}
    assert files == set(registered()), f"configs/{group}/*.yaml must name exactly the registered {group}s"
    for stem in files:
        assert yaml.safe_load((CONFIGS / group / f"{stem}.yaml").read_text())["name"] == stem


def test_packages_export_registries():
    assert models.build_layer is build_layer and tasks.build_task is build_task
