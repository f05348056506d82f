"""The shared backbone: padding under each norm placement, pooling, heads, options, optimizer hints, recurrent mode."""
import pytest
import torch

from models.backbone import build_model, length_mask, masked_pool
from models.registry import list_layers
from tasks.registry import TaskSpec

TOKENS = TaskSpec("tok", n_classes=10, l_max=64, chance_acc=0.1, vocab_size=20)
DUAL = TaskSpec("dual", n_classes=2, l_max=64, chance_acc=0.5, vocab_size=20, dual_input=True)
SMALL = {"d_model": 16, "n_layers": 2, "pos_encoding": "sinusoidal", "dropout": 0.0}


def _tokens(b=3, l=40, lengths=(40, 25, 7)):
    lengths = torch.tensor(lengths)
    x = torch.randint(1, 20, (b, l)) * length_mask(lengths, l)
    return x, lengths


# Shapes, gradients of every head and padding under the default norms are tests/models/test_all_layers.py's; here
# the backbone's other norm placements.
@pytest.mark.parametrize("layer", list_layers())
@pytest.mark.parametrize("norm,prenorm", [("layer", False), ("batch", True), ("batch", False)],
                         ids=["postnorm-ln", "prenorm-bn", "postnorm-bn"])
def test_appended_padding_changes_nothing(layer, norm, prenorm):
    torch.manual_seed(0)
    model = build_model(layer, TOKENS, {**SMALL, "norm": norm, "prenorm": prenorm}).eval()
    x, lengths = _tokens()
    padded = torch.cat([x, torch.zeros(3, 17, dtype=x.dtype)], 1)
    # float32 attention sums over a different number of (masked) keys: a few ulps of difference
    torch.testing.assert_close(model(padded, lengths), model(x, lengths), atol=1e-5, rtol=1e-5)


def test_masked_pool():
    x = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)  # (B, L, H)
    mask = length_mask(torch.tensor([4, 2]), 4)
    torch.testing.assert_close(masked_pool(x, mask, "mean"), torch.stack([x[0].mean(0), x[1, :2].mean(0)]))
    torch.testing.assert_close(masked_pool(x, mask, "last"), torch.stack([x[0, 3], x[1, 1]]))
    with pytest.raises(ValueError, match="unknown pool"):
        masked_pool(x, mask, "max")


def test_bad_backbone_options_are_named():
    with pytest.raises(TypeError, match=r"unknown backbone option\(s\) 'depth'"):
        build_model("lstm", TOKENS, {"depth": 3})
    with pytest.raises(ValueError, match="unknown norm 'rms'"):
        build_model("lstm", TOKENS, {"norm": "rms"})


def test_sequence_longer_than_position_table_is_refused():
    model = build_model("transformer", TaskSpec("t", 2, 8, 0.5, vocab_size=5), SMALL)
    with pytest.raises(ValueError, match="exceeds the positional table"):
        model(torch.ones(1, 9, dtype=torch.long), torch.tensor([9]))


def test_dual_model_needs_both_documents():
    model = build_model("lstm", DUAL, SMALL)
    x, lengths = _tokens()
    with pytest.raises(ValueError, match="needs inputs2"):
        model(x, lengths)


def test_tied_residual_dropout_shares_one_mask_per_example_and_channel():
    from models.backbone import TiedDropout

    torch.manual_seed(0)
    drop = TiedDropout(0.5).train()
    y = drop(torch.ones(4, 50, 32))
    assert torch.equal(y, y[:, :1, :].expand_as(y))            # constant along the length
    assert set(y.unique().tolist()) == {0.0, 2.0}                # kept values scaled by 1 / (1 - p)
    assert 0.3 < (y[:, 0] == 0).float().mean() < 0.7             # about half the (example, channel) pairs dropped
    assert len({tuple(row.tolist()) for row in y[:, 0]}) == 4    # a mask of its own per example
    assert torch.equal(drop.eval()(torch.ones(2, 5, 3)), torch.ones(2, 5, 3))
    net = build_model("s4d", TaskSpec(name="t", n_classes=2, l_max=16, chance_acc=0.5, vocab_size=5),
                      {"d_model": 8, "n_layers": 1, "dropout": 0.3, "tie_dropout": True}, {"d_state": 4})
    assert isinstance(net.blocks[0].drop, TiedDropout)


def test_final_norm_bn_momentum_and_encoder_bias_options():
    spec = TaskSpec(name="t", n_classes=2, l_max=16, chance_acc=0.5, vocab_size=5)
    s5like = build_model("s4d", spec, {"d_model": 8, "n_layers": 1, "norm": "batch", "prenorm": True,
                                       "final_norm": False, "bn_momentum": 0.05, "encoder_bias": True}, {"d_state": 4})
    assert isinstance(s5like.final_norm.norm, torch.nn.Identity)
    assert s5like.blocks[0].norm.norm.bn.momentum == 0.05
    default = build_model("s4d", spec, {"d_model": 8, "n_layers": 1, "norm": "batch"}, {"d_state": 4})
    assert not isinstance(default.final_norm.norm, torch.nn.Identity) and default.encoder.bias is None
    assert default.blocks[0].norm.norm.bn.momentum == 0.1
    with torch.no_grad():
        s5like.encoder.bias.fill_(0.5)
        ids = torch.tensor([[1, 2, 3]])
        assert torch.allclose(s5like.encoder(ids), s5like.encoder.embed(ids) + 0.5)


def test_optimizer_hints_may_name_the_main_values():
    from harness.optim import param_groups

    d = torch.nn.Parameter(torch.ones(4))        # 1-D: no weight decay unless a hint says so
    d._optim = {"weight_decay": "main"}
    e = torch.nn.Parameter(torch.ones(4))
    module = torch.nn.Module()
    module.d, module.e = d, e
    groups = {(g["lr"], g["weight_decay"]): g["params"] for g in param_groups(module, 0.01, 0.05)}
    assert groups[(0.01, 0.05)] == [d] and groups[(0.01, 0.0)] == [e]


def test_decay_io_and_decay_d_give_the_main_weight_decay():
    from harness.optim import param_groups

    spec = TaskSpec(name="t", n_classes=2, l_max=16, chance_acc=0.5, vocab_size=5)
    net = build_model("s4", spec, {"d_model": 8, "n_layers": 1, "decay_io": True},
                      {"d_state": 4, "decay_d": True})
    decayed = {id(p) for g in param_groups(net, 0.01, 0.05) if g["weight_decay"] == 0.05 and g["lr"] == 0.01
               for p in g["params"]}
    for p in [net.encoder.embed.weight, net.head.weight, net.head.bias, net.blocks[0].layer.D]:
        assert id(p) in decayed
    plain = build_model("s4", spec, {"d_model": 8, "n_layers": 1}, {"d_state": 4})
    decayed = {id(p) for g in param_groups(plain, 0.01, 0.05) if g["weight_decay"] == 0.05 for p in g["params"]}
    for p in [plain.encoder.embed.weight, plain.head.bias, plain.blocks[0].layer.D]:
        assert id(p) not in decayed


STEPPED = ["transformer", "linear_transformer", "lstm", "gru", "s4", "s4d", "s5", "lru", "mamba"]
TINY_STATE = {"s4": {"d_state": 8}, "s4d": {"d_state": 8}, "s5": {"d_state": 8, "blocks": 2}, "lru": {"d_state": 8},
              "mamba": {"d_state": 4}}


def causal_model(layer: str, **backbone) -> torch.nn.Module:
    """The layer's causal variant (its config file's ``causal:`` block, through the resolver), 3 blocks of width 16."""
    from harness.config import compose_config, resolve_run

    model = resolve_run(compose_config(["suite=efficiency"]), "text", layer, causal=True).config["model"]
    hparams = {**(model.get("hparams") or {}), **TINY_STATE.get(layer, {})}
    backbone = {**(model.get("backbone") or {}), "d_model": 16, "n_layers": 3, "ff_expand": 2,
                "pos_encoding": "sinusoidal", **backbone}
    torch.manual_seed(0)
    return build_model(layer, TOKENS, backbone, hparams).eval()


@pytest.mark.parametrize("layer", STEPPED)
@pytest.mark.parametrize("norm,prenorm", [("layer", True), ("batch", False)], ids=["prenorm-ln", "postnorm-bn"])
def test_model_step_equals_causal_forward(layer, norm, prenorm):
    net = causal_model(layer, norm=norm, prenorm=prenorm, pool="last")
    if norm == "batch":  # running statistics away from their initial (0, 1), so the norm matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = torch.randint(1, 20, (2, 29), generator=torch.Generator().manual_seed(1))
    lengths = torch.full((2,), 29)
    with torch.inference_mode():
        full = net.features(x, lengths)  # (B, L, H)
        state, outs = net.default_state(2, max_len=29), []
        for t in range(x.shape[1]):
            y, state = net.step(x[:, t], state)
            outs.append(y)
        logits, last = net(x, lengths), net.head(outs[-1])
    assert state.position == 29
    # float32, different kernels (whole-sequence convolutions, scans, attention over L vs one position at a time)
    # through 3 blocks: summation order differs, errors of a few 1e-6 on O(1) features
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last, logits, atol=1e-4, rtol=1e-4)  # pool last: the prefix's logits


def test_step_of_a_layer_without_recurrent_mode_is_refused():
    net = build_model("performer", TOKENS, SMALL, {"causal": True})
    with pytest.raises(ValueError, match="no recurrent mode"):
        net.default_state(2)
