"""Mamba: the chunked and parallel scans against the sequential definition (values and gradients, float64, and the
float32 error against float64 truth), the chunked scan's memory, the layer against a float64 re-computation of the
block, the two plain-torch backends against each other with padding, step mode, padding (both directions),
initialisation, errors and the config file."""
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
import models.scan
from harness.optim import param_groups
from models.mamba import resolve_backend
from models.registry import build_layer
from models.scan import selective_scan_chunked, selective_scan_parallel, selective_scan_ref
from steps import stepped  # tests/models/steps.py (its folder is on sys.path under pytest)

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


def chunked(chunk):
    def run(*args):
        return selective_scan_chunked(*args, chunk=chunk)
    run.__name__ = f"chunked{chunk}"
    return run


SCANS = [selective_scan_parallel, chunked(1), chunked(3), chunked(16), chunked(64), selective_scan_chunked]


@pytest.mark.parametrize("gated", [False, True], ids=["", "gated"])
@pytest.mark.parametrize("scan", SCANS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("length", [1, 5, 64, 100])
def test_scan_equals_sequential_definition(scan, length, gated):
    """Chunks of 3 and 64 do not divide 64 or 100 (a short last chunk); 64 > 5 (one short chunk)."""
    args = scan_inputs(length)
    if gated:
        args.append(torch.randn(2, 3, length, dtype=F64, generator=torch.Generator().manual_seed(2)))  # z
    args = [t.requires_grad_() for t in args]
    grad_out = torch.randn(2, 3, length, dtype=F64, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (selective_scan_ref, scan):
        y = fn(*args)
        # at L = 1 the parallel scan never touches A (h_0 = Bbar_0 u_0): its gradient is a materialised zero
        results.append((y, *torch.autograd.grad(y, args, grad_out, allow_unused=True, materialize_grads=True)))
    # float64, the same recurrence associated differently: rounding only (~1e-15 relative)
    for name, got, want in zip(("y", "u", "delta", "A", "B", "C", "D", "z"), results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=f"d{name}" if name != "y" else "y")


@pytest.mark.parametrize("gated", [False, True], ids=["", "gated"])
@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_scan_gradcheck(chunk, gated):
    """Finite differences against the hand-written backward (L = 9: chunks of 4 and 7 leave a short last one)."""
    args = scan_inputs(9, batch=2, e=2, n=3, seed=2)
    z = torch.randn(2, 2, 9, dtype=F64, requires_grad=True) if gated else None
    args = [t.requires_grad_() for t in args] + ([z] if gated else [])
    assert torch.autograd.gradcheck(lambda *a: selective_scan_chunked(*a, chunk=chunk), args)


def test_chunked_scan_float32_error_is_the_references():
    """float32 against float64 truth at an odd length: no worse than twice what the float32 definition gets wrong."""
    args32 = scan_inputs(1047, batch=2, e=16, n=16, dtype=torch.float32)
    truth = selective_scan_ref(*[t.double() for t in args32])
    err = lambda y: ((y.double() - truth).abs().max() / truth.abs().max()).item()  # noqa: E731
    ref_err = err(selective_scan_ref(*args32))
    assert 0 < ref_err < 1e-5                            # float32 rounding, not zero: the comparison can fail
    # a few ulps of |y| ~ 1 on top of the reference's own error
    assert err(selective_scan_chunked(*args32, chunk=100)) <= 2 * ref_err + 1e-6


def saved_elements(fn, args) -> int:
    """Elements of the tensors autograd keeps for the backward while ``fn(*args)`` runs."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.shape)] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def test_chunked_scan_keeps_inputs_and_chunk_states_only():
    batch, e, n, length, chunk = 2, 8, 16, 256, 32
    args = [t.float().requires_grad_() for t in scan_inputs(length, batch=batch, e=e, n=n)]
    one_state_tensor = batch * e * length * n            # one (B, E, L, N) tensor
    inputs = 2 * batch * e * length + 2 * batch * n * length + e * n + e
    assert saved_elements(lambda *a: selective_scan_chunked(*a, chunk=chunk), args) == (
        inputs + length // chunk * batch * e * n)        # plus each chunk's initial state (B, E, N)
    assert saved_elements(selective_scan_parallel, args) > 2 * one_state_tensor  # what the chunked scan avoids


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
    with torch.no_grad():  # a larger Delta, so that the state carries over many steps and errors could build up
        layer.fwd.dt_proj.bias.add_(2.0)
    x = torch.randn(3, 50, 8)
    with torch.inference_mode():
        y = layer(x)
        state = layer.default_state(3)
        assert state[0].shape == (3, 16, d_conv - 1) and state[1].shape == (3, 16, 16)
        steps = stepped(layer, x)
    # float32 chunked scan vs float32 recurrence: a few ulps of |y| <= 1
    torch.testing.assert_close(steps, y, atol=1e-5, rtol=1e-5)
    layer.double()
    with torch.inference_mode():
        # float64: the fused selection projection (dt_proj folded into x_proj) reassociates sums only
        torch.testing.assert_close(stepped(layer, x.double()), layer(x.double()), atol=1e-12, rtol=1e-12)


def test_step_needs_default_state_and_follows_parameter_changes():
    layer = build_layer("mamba", d_model=8, l_max=16, d_state=4)
    with pytest.raises(RuntimeError, match="default_state"):
        layer.step(torch.zeros(1, 8), None)
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        layer.fwd.A_log.add_(0.5)
        layer.fwd.dt_proj.weight.mul_(2)
        torch.testing.assert_close(stepped(layer, x), layer(x), atol=1e-5, rtol=1e-5)  # float32, as above


@pytest.mark.parametrize("bidirectional", [False, True])
def test_plain_torch_backends_agree_with_padding(bidirectional, monkeypatch):
    """The whole layer (mask, both directions) by the chunked and the parallel scan, values and gradients, float64."""
    torch.manual_seed(0)
    layer = build_layer("mamba", d_model=6, l_max=64, d_state=4, bidirectional=bidirectional).double()
    x = torch.randn(3, 37, 6, dtype=F64)
    mask = torch.arange(37)[None] < torch.tensor([[37], [20], [1]])
    results = []
    for backend, chunk in (("parallel", None), ("chunked", 5), ("chunked", None)):
        for mx in filter(None, (layer.fwd, layer.bwd)):
            mx.backend = backend
        if chunk:  # chunks of 5 positions at B 3, E 12, N 4 (5 does not divide 37); then the default (all 37)
            monkeypatch.setattr(models.scan, "CHUNK_ELEMENTS", chunk * 3 * 12 * 4)
        else:
            monkeypatch.undo()
        layer.zero_grad()
        y = layer(x, mask)
        y.square().sum().backward()
        assert layer.kernel_backend == backend
        results.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)  # float64 reassociation


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
    with pytest.raises(ValueError, match="unknown mamba backend 'cuda'; known: auto, chunked, parallel, mamba_ssm"):
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


def test_auto_backend_without_mamba_ssm_is_chunked():
    assert resolve_backend("auto", "cpu") == "chunked"
    assert resolve_backend("parallel", "cpu") == "parallel" and resolve_backend("chunked", "cpu") == "chunked"
    if not HAS_MAMBA_SSM:
        assert resolve_backend("auto", "cuda") == "chunked"


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
        assert layer.kernel_backend == "chunked"  # CPU tensors: the plain-torch chunked scan
    assert layer.bidirectional is False and cfg["hparams"]["bidirectional"] is True
