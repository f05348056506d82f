"""The transformer's LRA blocks (configs/recipes/lra/transformer.yaml) carry LRA's base Transformer settings."""
import inspect
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.train import TrainConfig
from models.backbone import BackboneConfig, build_model
from models.registry import layer_factory
from tasks.registry import TaskSpec, list_tasks

ROOT = Path(__file__).resolve().parents[1]

# google-research/long-range-arena (cd31e5c) base_*_config.py + transformer_base.py: emb_dim, num_layers, num_heads, mlp_dim,
# dropout_rate, attention_dropout_rate, batch_size, num_train_steps, warmup, weight_decay, grad_clip_norm,
# and the training-set size our loaders hold (batches per epoch keep the last partial batch).
LRA = {
    "listops":    dict(d=512, layers=4, heads=8, mlp=1024, drop=0.1, attn=0.1, bs=32, steps=5000, warmup=1000,
                       wd=0.1, clip=0, n_train=96_000, pos="sinusoidal"),
    "text":       dict(d=256, layers=4, heads=4, mlp=1024, drop=0.1, attn=0.1, bs=32, steps=20000, warmup=8000,
                       wd=0.1, clip=0, n_train=22_500, pos="sinusoidal"),
    "retrieval":  dict(d=128, layers=4, heads=4, mlp=512, drop=0.1, attn=0.1, bs=32, steps=5000, warmup=8000,
                       wd=0.1, clip=0, n_train=147_086, pos="sinusoidal"),
    "image":      dict(d=128, layers=1, heads=8, mlp=128, drop=0.3, attn=0.2, bs=256, steps=35000, warmup=175,
                       wd=0.0, clip=0, n_train=45_000, pos="learned"),
    "pathfinder": dict(d=32, layers=4, heads=4, mlp=32, drop=0.2, attn=0.1, bs=512, steps=62400, warmup=312,
                       wd=0.0, clip=0, n_train=160_000, pos="sinusoidal"),
    "pathx":      dict(d=32, layers=1, heads=2, mlp=32, drop=0.1, attn=0.1, bs=64, steps=500000, warmup=2500,
                       wd=0.0, clip=1.0, n_train=160_000, pos="learned"),
}


def _block(task: str) -> dict:
    """The transformer's resolved (task, model, train) settings; from the yaml alone where the task is unregistered."""
    if task in list_tasks():
        from harness.suite import resolve_run_config

        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            run = resolve_run_config(compose("config", overrides=["suite=lra"]), task, "transformer", 0)
        return {"task": run["task"]["options"], **run["model"], "train": run["train"]}
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "transformer.yaml"))
    raw.pop("per_task")
    per = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "recipes" / "lra" / "transformer.yaml"))["per_task"][task]
    merged = OmegaConf.to_container(OmegaConf.merge(raw, per))
    merged["train"] = {**OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "train" / "default.yaml")),
                       **merged.get("train", {})}
    return merged


@pytest.mark.parametrize("task", sorted(LRA))
def test_transformer_block_is_lras_base_config(task):
    want, cfg = LRA[task], _block(task)
    bb, hp, tr = cfg["backbone"], cfg["hparams"], cfg["train"]
    BackboneConfig(**bb)
    TrainConfig(**tr)
    assert set(hp) <= set(inspect.signature(layer_factory("transformer")).parameters)
    assert (bb["d_model"], bb["n_layers"], hp["n_heads"]) == (want["d"], want["layers"], want["heads"])
    assert bb["ff_expand"] * bb["d_model"] == want["mlp"]
    assert (bb["dropout"], hp["attn_dropout"], bb["pos_encoding"]) == (want["drop"], want["attn"], want["pos"])
    assert (bb["norm"], bb["prenorm"]) == ("layer", True)
    assert cfg["task"]["batch_size"] == want["bs"]
    assert (tr["warmup_steps"], tr["weight_decay"], tr["grad_clip"]) == (want["warmup"], want["wd"], want["clip"])
    assert tr.get("max_steps") is None  # a per-task max_steps would override a command-line train.max_steps cut
    assert math.ceil(tr["epochs"] * math.ceil(want["n_train"] / want["bs"])) == want["steps"]


def test_rsqrt_tasks_use_the_peak_of_lras_schedule():
    """LRA's listops/text/retrieval lr is 0.05 * min(1, s/w) / sqrt(max(s, w)): its peak is 0.05 / sqrt(w)."""
    for task in ("listops", "text", "retrieval"):
        tr, w = _block(task)["train"], LRA[task]["warmup"]
        assert tr["lr"] == pytest.approx(0.05 / math.sqrt(w), rel=1e-2), task
    for task in ("listops", "text"):  # rsqrt decay ends at sqrt(w / steps) of the peak
        tr = _block(task)["train"]
        assert tr["min_lr_ratio"] == pytest.approx(math.sqrt(LRA[task]["warmup"] / LRA[task]["steps"]), abs=1e-3)


def test_listops_body_has_lras_parameter_count():
    """The 4 x (attention + MLP) body has exactly LRA's listops Transformer's parameters (bias-free attention)."""
    cfg = _block("listops")
    spec = TaskSpec(name="listops", n_classes=10, l_max=2048, chance_acc=0.1, vocab_size=16)
    net = build_model("transformer", spec, cfg["backbone"], cfg["hparams"])
    d, qkv, mlp, layers = 512, 512, 1024, 4
    lra_layer = 4 * d * qkv + 2 * 2 * d + (d * mlp + mlp + mlp * d + d)  # attention (no bias), 2 LayerNorms, MLP
    ours = sum(p.numel() for n, p in net.named_parameters() if not n.startswith(("encoder.", "head.")))
    assert ours == layers * lra_layer + 2 * d  # + the final LayerNorm


def test_apples_to_apples_baselines_match_the_transformers_parameter_count():
    """Every (task, model) of the lra suite: apples-to-apples recipes are within 10% of the transformer's count,
    every model of the suite says which rule it follows, and S4 (the paper's own configs) is free-for-all."""
    from harness.params import TOLERANCE, parameter_table

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["suite=lra"])
        df = parameter_table(cfg)
    assert set(df.model) == set(cfg.models) and set(df.task) == set(cfg.tasks)
    assert set(df.comparison) <= {"apples-to-apples", "free-for-all"}, sorted(set(df.comparison))
    assert set(df[df.model == "s4"].comparison) == {"free-for-all"}
    fair = df[df.comparison == "apples-to-apples"]
    assert {"lstm", "gru", "s4d", "s5", "lru", "mamba", "performer", "local_attention"} <= set(fair.model)
    off = fair[(fair.vs_transformer - 1).abs() > TOLERANCE]
    assert off.empty, off[["task", "model", "n_params", "vs_transformer"]].to_string()


def test_recipe_base_inherits_the_named_parts_only():
    from harness.config import compose_config, resolve_run

    cfg = compose_config(["suite=lra"])
    transformer, performer, lstm = (resolve_run(cfg, "text", m) for m in ("transformer", "performer", "lstm"))
    assert performer.config["train"] == transformer.config["train"]
    assert performer.config["model"]["backbone"] == transformer.config["model"]["backbone"]
    assert performer.config["model"]["hparams"]["n_heads"] == 4 and performer.config["model"]["comparison"] == "apples-to-apples"
    assert performer.sources["train.lr"] == ("configs/recipes/lra/transformer.yaml: per_task.text (taken by "
                                             "configs/recipes/lra/performer.yaml: base.take ['task', 'train', 'backbone'])")
    assert performer.sources["model.hparams.n_heads"] == "configs/recipes/lra/performer.yaml: per_task.text"
    assert "attn_dropout" not in performer.config["model"]["hparams"]  # the transformer's hparams are not taken
    assert lstm.config["train"] == transformer.config["train"] and lstm.config["model"]["backbone"]["n_layers"] == 4
    assert lstm.sources["model.hparams.bidirectional"] == "configs/model/lstm.yaml"
    assert resolve_run(cfg, "text", "s4").config["model"]["comparison"] == "free-for-all"
