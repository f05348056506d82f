"""Every registered layer, in the shared backbone, on every kind of task input: token ids, real values and the
dual-input (retrieval) head; finite forward and backward, padding invariance, and step mode against the
full-sequence forward for every layer that has one (the recurrent ones must).

Each layer is built with its own config file's hyperparameters (configs/model/<name>.yaml), narrowed to a tiny
width, through the config resolver; the causal variant is the one its ``causal:`` block selects.
"""
from __future__ import annotations

import functools

import pytest
import torch

import models  # noqa: F401  (registers the layers)
from models.backbone import build_model
from models.registry import build_layer, list_layers
from tasks import task_spec

RECURRENT = {"lstm", "gru", "s4", "s4d", "s5", "lru", "mamba"}  # must offer default_state / step
TINY = {"s4": {"d_state": 8}, "s4d": {"d_state": 8}, "s5": {"d_state": 8, "blocks": 2}, "lru": {"d_state": 8},
        "mamba": {"d_state": 4}}
D_MODEL = 16


@functools.cache
def _suite():
    from harness.config import compose_config

    return compose_config(["suite=efficiency"])  # no model overrides: each model file's own settings


def model_config(name: str, causal: bool = False) -> dict:
    """The layer's hyperparameters and backbone as the resolver gives them (its causal variant with ``causal``),
    narrowed to a tiny width; raises ValueError for a layer without a causal form."""
    from harness.config import resolve_run

    model = resolve_run(_suite(), "text", name, causal=causal).config["model"]
    hparams = {**(model.get("hparams") or {}), **TINY.get(name, {})}
    backbone = {**(model.get("backbone") or {}), "d_model": D_MODEL, "n_layers": 2}
    return {"hparams": hparams, "backbone": backbone}


def tiny_model(name: str, task: str, **task_options) -> tuple[torch.nn.Module, object]:
    spec = task_spec(task, **task_options)
    cfg = model_config(name)
    torch.manual_seed(0)
    return build_model(name, spec, cfg["backbone"], cfg["hparams"]), spec


def inputs_for(spec, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if spec.vocab_size:
        return torch.randint(1, spec.vocab_size, (batch, length), generator=gen)
    return torch.randn(batch, length, spec.d_input, generator=gen)


def test_every_layer_is_covered():
    expected = {"transformer", "local_attention", "linformer", "performer", "linear_transformer", "lstm", "gru",
                "s4", "s4d", "s5", "lru", "mamba"}
    assert expected <= set(list_layers())


@pytest.mark.parametrize("name", list_layers())
@pytest.mark.parametrize("task,options", [("listops", {"l_max": 64}), ("image", {"input_mode": "real"}),
                                          ("retrieval", {"l_max": 64}), ("scifar", {})],
                         ids=["tokens", "real", "dual", "rgb"])
def test_forward_backward_finite(name, task, options):
    net, spec = tiny_model(name, task, **options)
    gen = torch.Generator().manual_seed(1)
    length = 40
    x, lengths = inputs_for(spec, 3, length, gen), torch.tensor([length, 29, 7])
    extra = (inputs_for(spec, 3, length, gen), torch.tensor([17, length, 3])) if spec.dual_input else ()
    logits = net(x, lengths, *extra)
    assert logits.shape == (3, spec.n_classes) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize("name", list_layers())
def test_appending_padding_changes_nothing(name):
    """Pooled outputs of a (non-causal, mean-pooled) model at real positions do not see padding appended."""
    net, spec = tiny_model(name, "listops", l_max=64)
    net.eval()
    gen = torch.Generator().manual_seed(2)
    x, lengths = inputs_for(spec, 3, 40, gen), torch.tensor([40, 23, 5])
    x[1, 23:] = 0
    x[2, 5:] = 0
    padded = torch.cat([x, torch.zeros(3, 24, dtype=x.dtype)], 1)
    with torch.no_grad():
        a, b = net.encode(x, lengths), net.encode(padded, lengths)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list_layers())
def test_step_mode_equals_forward(name):
    torch.manual_seed(0)
    try:
        cfg = model_config(name, causal=True)
        layer = build_layer(name, d_model=D_MODEL, l_max=64, **cfg["hparams"]).eval()
    except ValueError as exc:  # a layer without a causal form says so (e.g. linformer)
        assert name not in RECURRENT, exc
        pytest.skip(f"{name}: {exc}")
    if not hasattr(layer, "step"):
        assert name not in RECURRENT, f"{name} must offer default_state / step"
        pytest.skip(f"{name} has no step mode")
    x = torch.randn(2, 33, D_MODEL, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = layer(x)
        state, outs = layer.default_state(2), []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-4, rtol=1e-4)
