"""Mamba: the parallel scan against the sequential definition, the layer against a float64 re-computation of the
block, step mode, padding (both directions), initialisation, errors and the config file."""
import importlib.util
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import models  # noqa: F401  (registers the existing layers)
import models.mamba  # noqa: F401  (registers mamba)
from harness.optim import param_groups
from models.mamba import selective_scan_parallel, selective_scan_ref
from models.registry import build_layer

F64 = torch.float64
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "mamba.yaml"
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None


def scan_inputs(length, batch=2, e=3, n=4, dtype=F64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, e, length, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, e, length, generator=g, dtype=dtype) - 1)  # Delta > 0, around 0.3
    a = -torch.arange(1, n + 1, dtype=dtype).repeat(e, 1) * torch.rand(e, 1, generator=g, dtype=dtype)
    b, c = (torch.randn(batch, n, length, generator=g, dtype=dtype) for _ in range(2))
    d = torch.randn(e, generator=g, dtype=dtype)
    return [t.to(device) for t in (u, delta, a, b, c, d)]


@pytest.mark.parametrize("length", [1, 5, 64, 100])
def test_parallel_scan_equals_sequential_definition(length):
    args = [t.requires_grad_() for t in scan_inputs(length)]
    grad_out = torch.randn(2, 3, length, dtype=F64, generator=torch.Generator().manual_seed(1))
    results = []
    for scan in (selective_scan_ref, selective_scan_parallel):
        y = scan(*args)
        # at L = 1 the parallel scan never touches A (h_0 = Bbar_0 u_0): its gradient is a materialised zero
        results.append((y, *torch.autograd.grad(y, args, grad_out, allow_unused=True, materialize_grads=True)))
    # float64, the same recurrence associated differently: rounding only (~1e-15 relative)
    for name, got, want in zip(("y", "u", "delta", "A", "B", "C", "D"), results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=f"d{name}" if name != "y" else "y")


@pytest.mark.requires_cuda
@pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba_ssm is not installed")
def test_mamba_ssm_kernel_matches_reference():
    from models.mamba import selective_scan_mamba_ssm
    args32 = scan_inputs(1047, batch=2, e=16, n=16, dtype=torch.float32, device="cuda")
    truth = selective_scan_ref(*[t.double() for t in args32])
    err = lambda y: ((y.double() - truth).abs().max() / truth.abs().max()).item()  # noqa: E731
    # a float32 kernel may be off by what the float32 reference itself gets wrong, twice, plus a few ulps
    assert err(selective_scan_mamba_ssm(*args32)) <= 2 * err(selective_scan_parallel(*args32)) + 1e-6


def mixer_by_definition(mx, x):
    """One direction of the block, written out from the paper for x (L, H), float64, one position at a time."""
    length, k = x.shape[0], mx.d_conv
    xs, z = (x @ mx.in_proj.weight.T).chunk(2, -1)                              # (L, E)
    w, bias = mx.conv1d.weight[:, 0], mx.conv1d.bias                            # (E, K), (E,)
    conv = torch.stack([bias + sum(w[:, j] * xs[t - k + 1 + j] for j in range(k) if t - k + 1 + j >= 0)
                        for t in range(length)])                                # causal depthwise conv
    u = conv * torch.sigmoid(conv)                                              # SiLU
    d, bsel, csel = (u @ mx.x_proj.weight.T).split([mx.dt_rank, mx.d_state, mx.d_state], -1)
    delta = torch.log1p(torch.exp(d @ mx.dt_proj.weight.T + mx.dt_proj.bias))   # softplus
    a = -torch.exp(mx.A_log)                                                    # (E, N)
    h, ys = torch.zeros_like(a), []
    for t in range(length):
        h = torch.exp(delta[t, :, None] * a) * h + delta[t, :, None] * bsel[t] * u[t, :, None]
        ys.append(h @ csel[t] + mx.D * u[t])
    y = torch.stack(ys) * z * torch.sigmoid(z)
    return y @ mx.out_proj.weight.T                                             # (L, H)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_equals_block_definition(bidirectional):
    torch.manual_seed(0)
    layer = build_layer("mamba", d_model=5, l_max=32, d_state=3, d_conv=3, bidirectional=bidirectional).double()
    with torch.no_grad():  # move Delta away from its tiny init so the recurrence really mixes positions
        for mx in filter(None, (layer.fwd, layer.bwd)):
            mx.dt_proj.bias.add_(1.0)
    x = torch.randn(1, 19, 5, dtype=F64)
    want = mixer_by_definition(layer.fwd, x[0])
    if bidirectional:
        want = want + mixer_by_definition(layer.bwd, x[0].flip(0)).flip(0)
    # float64 throughout, different association of sums: rounding only
    torch.testing.assert_close(layer(x)[0].detach(), want.detach(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("d_conv", [4, 1])
def test_step_mode_equals_forward(d_conv):
    torch.manual_seed(0)
    layer = build_layer("mamba", d_model=8, l_max=64, d_state=16, d_conv=d_conv).eval()
    x = torch.randn(2, 50, 8)
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(2)
        assert state[0].shape == (2, 16, d_conv - 1) and state[1].shape == (2, 16, 16)
        steps = []
        for t in range(50):
            y_t, state = layer.step(x[:, t], state)
            steps.append(y_t)
    # float32 parallel scan vs float32 recurrence: a few ulps of |y| <= 1
    torch.testing.assert_close(torch.stack(steps, 1), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_leak(bidirectional):
    torch.manual_seed(0)
    layer = build_layer("mamba", d_model=6, l_max=64, d_state=4, bidirectional=bidirectional).eval()
    lengths = [20, 30, 1]
    x = torch.randn(3, 30, 6)
    mask = torch.arange(30)[None] < torch.tensor(lengths)[:, None]
    junk = torch.where(mask[..., None], x, torch.full_like(x, 100.0))  # whatever sits at padding must not matter
    y = layer(junk, mask)
    for b, n in enumerate(lengths):
        # each sequence alone, unpadded; float32, same ops on a shorter tensor
        torch.testing.assert_close(y[b, :n], layer(x[b:b + 1, :n])[0], atol=1e-6, rtol=1e-5)
    assert y[~mask].abs().max() == 0  # outputs at padded positions are exactly zero
    longer = torch.cat([junk, torch.randn(3, 7, 6)], 1)  # more padding at the end changes nothing
    torch.testing.assert_close(layer(longer, torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], 1))[:, :30], y)


def test_backward_gives_finite_gradients():
    torch.manual_seed(0)
    layer = build_layer("mamba", d_model=8, l_max=40, bidirectional=True, dropout=0.1)
    x = torch.randn(2, 40, 8, requires_grad=True)
    mask = torch.arange(40)[None] < torch.tensor([[25], [40]])
    layer(x, mask).square().mean().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_initialisation():
    torch.manual_seed(0)
    dt_min, dt_max = 0.002, 0.05
    layer = build_layer("mamba", d_model=40, l_max=16, d_state=8, dt_min=dt_min, dt_max=dt_max)
    mx = layer.fwd
    assert mx.dt_rank == math.ceil(40 / 16) and mx.d_inner == 80 and mx.A_log.shape == (80, 8)
    dt = F.softplus(mx.dt_proj.bias.double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)  # float32 round trip of softplus^-1
    assert dt.log().std() > 0.5  # spread over the log range, not a constant
    torch.testing.assert_close(-torch.exp(mx.A_log), -torch.arange(1.0, 9.0).expand(80, 8))
    assert torch.equal(mx.D, torch.ones(80))
    assert mx.dt_proj.weight.abs().max() <= mx.dt_rank ** -0.5
    hinted = {n for n, p in layer.named_parameters() if getattr(p, "_optim", None) == {"weight_decay": 0.0}}
    assert hinted == {"fwd.A_log", "fwd.D"}
    no_decay = {id(p) for g in param_groups(layer, 1e-3, 0.1) if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(mx.A_log) in no_decay and id(mx.in_proj.weight) not in no_decay


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown mamba backend 'cuda'; known: auto, ref, mamba_ssm"):
        build_layer("mamba", d_model=8, l_max=16, backend="cuda")
    bi = build_layer("mamba", d_model=8, l_max=16, bidirectional=True)
    with pytest.raises(ValueError, match="step mode needs a causal layer"):
        bi.default_state(1)
    with pytest.raises(ValueError, match="step mode needs a causal layer"):
        bi.step(torch.randn(1, 8), None)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        build_layer("mamba", d_model=8, l_max=16, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="dt_rank must be a positive int or 'auto'"):
        build_layer("mamba", d_model=8, l_max=16, dt_rank="full")


@pytest.mark.skipif(HAS_MAMBA_SSM, reason="mamba_ssm is installed here")
def test_missing_mamba_ssm_names_the_install_command():
    with pytest.raises(RuntimeError, match="pip install mamba-ssm"):
        build_layer("mamba", d_model=8, l_max=16, backend="mamba_ssm")


def test_config_builds_and_backend_is_recorded():
    cfg = yaml.safe_load(CONFIG.read_text())
    accepted = set(inspect.signature(models.mamba.mamba).parameters) - {"d_model", "l_max"}
    assert cfg["name"] == "mamba" and set(cfg["hparams"]) <= accepted
    for hp in (cfg["hparams"], {**cfg["hparams"], **cfg["causal"]["hparams"]}):
        layer = build_layer("mamba", d_model=16, l_max=32, **hp)
        assert layer.kernel_backend == "unresolved"
        layer(torch.randn(1, 32, 16))
        assert layer.kernel_backend == "ref"  # CPU tensors: the plain-torch parallel scan
    assert layer.bidirectional is False and cfg["hparams"]["bidirectional"] is True
