"""Recipes that name a paper or repository resolve to its values: every pinned upstream value (tests/data/upstream/,
one file per (recipe, model), each value with its upstream file and key) is what the run gets."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import compose_config, resolve_run

ROOT = Path(__file__).resolve().parents[1]
PINNED = sorted((ROOT / "tests" / "data" / "upstream").glob("*.yaml"))


def _get(tree: dict, path: str):
    for part in path.split("."):
        assert isinstance(tree, dict) and part in tree, f"{path}: no {part!r} in the resolved config"
        tree = tree[part]
    return tree


@pytest.mark.parametrize("pinned", PINNED, ids=[p.stem for p in PINNED])
def test_recipe_resolves_to_the_pinned_upstream_values(pinned):
    table = yaml.safe_load(pinned.read_text())
    assert len(table["commit"]) == 40 and table["repo"].count("/") == 1
    recipe_file = ROOT / "configs" / "recipes" / table["recipe"] / f"{table['model']}.yaml"
    text = recipe_file.read_text()
    assert table["repo"] in text and table["commit"] in text, f"{recipe_file} must cite {table['repo']}@{table['commit']}"
    cfg = compose_config(["suite=extended", f"recipe={table['recipe']}"])
    wrong = []
    for task, values in table["values"].items():
        run = resolve_run(cfg, task, table["model"])
        for key, (want, upstream_file, upstream_key) in values.items():
            got = _get(run.config, key)
            if got != want or type(got) is bool and not isinstance(want, bool):
                wrong.append(f"{task} {key}: {got!r} (from {run.sources.get(key)}) != {want!r} "
                             f"({upstream_file}: {upstream_key})")
    assert not wrong, "\n".join(wrong)


def test_every_lra_recipe_cites_its_source():
    for path in sorted((ROOT / "configs" / "recipes" / "lra").glob("*.yaml")):
        head = path.read_text().split("\ncomparison:")[0]
        assert "commit" in head or "apples-to-apples with the LRA base Transformer" in head, path.name


# Trainable parameters of the official S4 model (state-spaces/s4 e757cef, encoder and decoder included), counted by
# instantiating its code from each resolved experiment config on CPU; and the vocabulary that count assumes.
S4_UPSTREAM_PARAMS = {"listops": (815_186, 18), "text": (843_594, 135), "retrieval": (1_096_522, 98),
                      "image": (3_564_682, None), "pathfinder": (1_288_706, None), "pathx": (1_288_706, None),
                      "scifar": (3_566_858, None), "speech_commands": (306_851, None)}


@pytest.mark.parametrize("task", sorted(S4_UPSTREAM_PARAMS))
def test_s4_recipe_has_the_official_models_parameter_count(task):
    """Same layers, widths, state sharing and heads as the official model: the counts agree exactly, but for the
    embedding rows of the vocabularies (ours: LRA's bytes / tokens without <unk>, <eos>; README deviations)."""
    from harness.params import count_parameters
    from tasks import task_spec

    cfg = compose_config(["suite=extended"])
    ours = count_parameters(cfg, task, "s4")["n_params"]
    want, upstream_vocab = S4_UPSTREAM_PARAMS[task]
    run = resolve_run(cfg, task, "s4")
    if upstream_vocab is not None:
        vocab = task_spec(task, **run.config["task"]["options"]).vocab_size
        want += (vocab - upstream_vocab) * run.config["model"]["backbone"]["d_model"]
    assert ours == want
