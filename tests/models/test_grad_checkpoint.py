"""Gradient checkpointing (``backbone.grad_checkpoint``): every registered layer gets the gradients it gets without
it, with every dropout on, and a training step leaves the same module state behind (BatchNorm statistics, the
Performer's features and its generator).
"""
from __future__ import annotations

import inspect

import pytest
import torch

import models  # noqa: F401  (registers the layers)
from models.backbone import build_model
from models.registry import layer_factory, list_layers
from tasks.registry import TaskSpec

TOKENS = TaskSpec("tok", n_classes=5, l_max=48, chance_acc=0.2, vocab_size=20)
DUAL = TaskSpec("dual", n_classes=2, l_max=48, chance_acc=0.5, vocab_size=20, dual_input=True)
BACKBONE = {"d_model": 16, "n_layers": 2, "norm": "batch", "dropout": 0.3, "ff_expand": 2}
TINY = {"s4": {"d_state": 8}, "s4d": {"d_state": 8}, "s5": {"d_state": 8, "blocks": 2}, "lru": {"d_state": 8},
        "mamba": {"d_state": 4}, "performer": {"n_features": 16}}


def random_hparams(name: str) -> dict:
    """Every source of randomness the layer has, switched on: its dropouts (and stacked RNN layers for theirs)."""
    accepts = inspect.signature(layer_factory(name)).parameters
    hp = dict(TINY.get(name, {}))
    for key in ("dropout", "attn_dropout", "rnn_dropout"):
        if key in accepts:
            hp[key] = 0.2
    if "n_rnn_layers" in accepts:
        hp["n_rnn_layers"] = 2
    return hp


def train_step(name: str, spec: TaskSpec, grad_checkpoint: bool, autocast: bool = False) -> tuple[dict, dict]:
    """(gradients, module state after the step) of one forward + backward from seed 0."""
    torch.manual_seed(0)
    net = build_model(name, spec, {**BACKBONE, "grad_checkpoint": grad_checkpoint}, random_hparams(name)).train()
    gen = torch.Generator().manual_seed(1)
    x, lengths = torch.randint(1, 20, (3, 24), generator=gen), torch.tensor([24, 17, 5])
    extra = (x.flip(0), lengths.flip(0)) if spec.dual_input else ()
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = net(x, lengths, *extra)
    logits.float().logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    state = {n: b.clone() for n, b in net.named_buffers()}
    state.update({f"{n}.generator": m.generator.get_state() for n, m in net.named_modules()
                  if isinstance(getattr(m, "generator", None), torch.Generator)})
    state["global_rng"] = torch.get_rng_state()
    return grads, state


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        # the recompute repeats the forward's float32 ops on the same inputs, so values agree up to the order in
        # which autograd sums gradient contributions: a few ulps, far inside 1e-5 relative
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", list_layers())
def test_checkpointed_gradients_and_state_equal_plain(name):
    plain_grads, plain_state = train_step(name, TOKENS, grad_checkpoint=False)
    ckpt_grads, ckpt_state = train_step(name, TOKENS, grad_checkpoint=True)
    assert all(torch.isfinite(g).all() for g in plain_grads.values())
    assert_same(plain_grads, ckpt_grads)
    assert_same(plain_state, ckpt_state)


@pytest.mark.parametrize("name", ["performer", "s4"])
def test_checkpointing_two_documents_and_under_autocast(name):
    """The dual head encodes two documents per step (the Performer draws features twice); checkpoint also replays
    the autocast state of the forward."""
    assert_same(train_step(name, DUAL, False)[0], train_step(name, DUAL, True)[0])
    assert_same(train_step(name, TOKENS, False, autocast=True)[0], train_step(name, TOKENS, True, autocast=True)[0])


def test_checkpoint_runs_only_when_training_with_gradients(monkeypatch):
    import models.backbone as backbone

    calls = []
    real = backbone.checkpoint
    monkeypatch.setattr(backbone, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    net = build_model("s4d", TOKENS, {**BACKBONE, "grad_checkpoint": True}, TINY["s4d"])
    x, lengths = torch.randint(1, 20, (2, 16)), torch.tensor([16, 9])
    with torch.no_grad():
        net(x, lengths)
    net.eval()(x, lengths)
    assert calls == []
    net.train()(x, lengths)
    assert len(calls) == len(net.blocks)


def test_grad_checkpoint_is_a_backbone_option():
    net = build_model("transformer", TOKENS, {"d_model": 16, "n_layers": 1, "grad_checkpoint": True})
    assert net.cfg.grad_checkpoint is True
    assert build_model("transformer", TOKENS, {"d_model": 16, "n_layers": 1}).cfg.grad_checkpoint is False
    with pytest.raises(TypeError, match="accepted: .*grad_checkpoint"):
        build_model("transformer", TOKENS, {"grad_checkpointing": True})
