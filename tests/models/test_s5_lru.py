"""S5 and LRU: the parallel scan against its loop, S5's HiPPO-N init, both layers against float64 recurrences written
from the papers' equations, step mode, padding, gradients, the LRU ring init, optimizer hints, errors."""
import math

import pytest
import torch

import models  # noqa: F401  (registers the existing layers)
import models.lru  # noqa: F401  (registers lru)
import models.s5  # noqa: F401  (registers s5)
from models.registry import build_layer
from models.s5 import hippo_n, hippo_n_diag
from models.scan import scan, scan_sequential
from steps import assert_steps_equal_forward  # tests/models/steps.py (its folder is on sys.path under pytest)

# float64 reassociation: the scan and the loop add the same terms in a different order; errors ~ L eps |h|
SCAN_RTOL = 1e-12


def _stable(*shape, dtype):
    """Random a with |a| in [0.5, 0.99] (complex: any phase), so that h stays O(1 / (1 - |a|))."""
    r = 0.5 + 0.49 * torch.rand(*shape, dtype=torch.float64)
    if dtype == torch.float64:
        return r * torch.sign(torch.randn(*shape, dtype=torch.float64))
    return r * torch.exp(1j * 2 * math.pi * torch.rand(*shape, dtype=torch.float64))


def _rel_err(x, ref):
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("invariant", [False, True], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
def test_scan_matches_loop_and_its_gradients(dtype, invariant, reverse, length):
    torch.manual_seed(length)
    a = _stable(*((5,) if invariant else (2, 3, length, 5)), dtype=dtype).requires_grad_()
    b = torch.randn(2, 3, length, 5, dtype=dtype, requires_grad=True)
    h, ref = scan(a, b, reverse=reverse), scan_sequential(a, b, reverse=reverse)
    assert h.shape == ref.shape == b.shape and h.dtype == dtype
    assert _rel_err(h, ref) < SCAN_RTOL
    w = torch.randn_like(h)                              # a real loss of the complex output
    grads = torch.autograd.grad((h * w).real.sum(), (a, b))
    grads_ref = torch.autograd.grad((ref * w).real.sum(), (a, b))
    for g, g_ref in zip(grads, grads_ref):
        assert g.shape == g_ref.shape
        assert _rel_err(g, g_ref) < SCAN_RTOL            # the time-invariant grad sums B L terms: relative


def test_scan_promotes_broadcasts_and_validates():
    torch.manual_seed(0)
    a, b = _stable(1, 4, dtype=torch.complex128), torch.randn(3, 9, 4, dtype=torch.float64)
    h = scan(a, b)                                       # real b, complex time-invariant a (1, N)
    assert h.dtype == torch.complex128 and _rel_err(h, scan_sequential(a, b)) < SCAN_RTOL
    with pytest.raises(ValueError, match="length axis"):
        scan(torch.rand(5, 4), b)


@pytest.mark.parametrize("d_state, blocks", [(2, 1), (16, 1), (64, 1), (64, 4)])
def test_hippo_n_init_is_its_eigendecomposition(d_state, blocks):
    lam, v = hippo_n_diag(d_state, blocks)
    assert lam.shape == (d_state // 2,) and v.shape == (d_state, d_state // 2)
    assert torch.all(lam.real == -0.5) and torch.all(lam.imag > 0)
    s = hippo_n(d_state // blocks)
    # HiPPO-N is normal with symmetric part -1/2 I; from hippo_legs, so this also checks S = A + p p^T's sign
    torch.testing.assert_close((s + s.T) / 2, -0.5 * torch.eye(d_state // blocks, dtype=torch.float64))
    vf, lf = torch.cat([v, v.conj()], 1), torch.cat([lam, lam.conj()])
    rebuilt = vf @ torch.diag(lf) @ torch.linalg.inv(vf)
    # float64 eigendecomposition: errors grow like N eps ||S|| (||S|| ~ N)
    torch.testing.assert_close(rebuilt, torch.block_diag(*[s] * blocks).to(rebuilt.dtype),
                               atol=1e-11 * d_state ** 2, rtol=0)


def _s5_reference(layer, u, lam_re=None):
    """S5 from the paper's equations, float64 loop: x_k = Λ̄ x_{k-1} + B̄ u_k, y_k = 2 Re(C̃ x_k) + D u_k; with
    ``lam_re`` in place of the layer's Re Λ (the clip_eigs tests)."""
    lam_re = layer.Lambda_re if lam_re is None else lam_re
    lam = torch.complex(lam_re.detach().double(), layer.Lambda_im.detach().double())
    dt, b = torch.exp(layer.log_dt.detach().double()), torch.view_as_complex(layer.B.detach()).to(torch.complex128)
    c = torch.view_as_complex(layer.C.detach()).to(torch.complex128)
    if layer.discretization == "zoh":                    # eq. 6
        abar = torch.exp(lam * dt)
        bbar = ((abar - 1) / lam)[:, None] * b
    else:
        abar = (1 + dt / 2 * lam) / (1 - dt / 2 * lam)
        bbar = (dt / (1 - dt / 2 * lam))[:, None] * b
    u = u.double()
    y = u * layer.D.double()
    for direction in range(c.shape[0]):
        x = torch.zeros(u.shape[0], lam.shape[0], dtype=torch.complex128)
        steps = range(u.shape[1] - 1, -1, -1) if direction else range(u.shape[1])
        for k in steps:
            x = abar * x + u[:, k].to(x.dtype) @ bbar.T
            y[:, k] += 2 * (x @ c[direction].T).real
    return y


def _lru_reference(layer, u):
    """LRU from the paper's equations, float64 loop: x_t = Λ x_{t-1} + γ ⊙ (B u_t), y_t = Re(C x_t) + D u_t."""
    nu, theta, gamma = (torch.exp(p.double()) for p in (layer.nu_log, layer.theta_log, layer.gamma_log))
    lam = torch.exp(-nu + 1j * theta)                    # (K, N)
    b, c = (torch.view_as_complex(p).to(torch.complex128) for p in (layer.B, layer.C))
    u = u.double()
    y = u * layer.D.double()
    for direction in range(lam.shape[0]):
        x = torch.zeros(u.shape[0], lam.shape[1], dtype=torch.complex128)
        steps = range(u.shape[1] - 1, -1, -1) if direction else range(u.shape[1])
        for t in steps:
            x = lam[direction] * x + gamma[direction] * (u[:, t].to(x.dtype) @ b[direction].T)
            y[:, t] += (x @ c[direction].T).real
    return y


S5_CASES = [{}, {"bidirectional": True}, {"discretization": "bilinear", "activation": "full_glu"},
            {"blocks": 1, "activation": "half_glu2"}, {"activation": "gelu"}]
LRU_CASES = [{}, {"bidirectional": True}, {"r_min": 0.9, "max_phase": math.pi / 10}]
CASES = ([("s5", {"d_state": 16, "blocks": 2, **kw}) for kw in S5_CASES]
         + [("lru", {"d_state": 12, **kw}) for kw in LRU_CASES])
ids = [f"{name}-{kw}" for name, kw in CASES]


@pytest.mark.parametrize("name, kw", CASES, ids=ids)
def test_layer_equals_paper_recurrence(name, kw):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=4, l_max=64, **kw).eval()
    u = torch.randn(2, 37, 4)
    ref = (_s5_reference if name == "s5" else _lru_reference)(layer, u)
    inner = layer.ssm if name == "s5" else layer.lru
    layer.double()                                       # same parameter values, computed in float64/complex128
    assert _rel_err(inner(u.double()), ref) < 1e-12      # float64 layer vs float64 loop: reassociation only
    torch.testing.assert_close(layer(u.double()), layer._act(ref))
    layer.float()
    # float32 scan vs the float64 truth: a few ulps of |y| ~ 1 accumulated over 37 steps
    torch.testing.assert_close(inner(u).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kw", [c for c in CASES if not c[1].get("bidirectional")],
                         ids=[i for i, c in zip(ids, CASES) if not c[1].get("bidirectional")])
def test_step_mode_equals_forward(name, kw):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=8, l_max=64, **kw).eval()
    # float32 parallel scan vs float32 loop: a few ulps of |y| ~ 1;
    # float64 (complex128 state): the same recurrence associated differently, over 50 steps
    assert_steps_equal_forward(layer, torch.randn(3, 50, 8), f32=(1e-5, 1e-5), f64=(1e-12, 1e-12))


@pytest.mark.parametrize("name", ["s5", "lru"])
def test_step_under_autocast_keeps_a_complex64_state(name):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=8, l_max=16, d_state=8, **({"blocks": 2} if name == "s5" else {})).eval()
    x = torch.randn(2, 10, 8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = layer.default_state(2)
        for t in range(10):
            y, state = layer.step(x[:, t].bfloat16(), state)
    assert state.dtype == torch.complex64 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["s5", "lru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_leak(name, bidirectional):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=4, l_max=64, d_state=8, bidirectional=bidirectional,
                        **({"blocks": 2} if name == "s5" else {})).eval()
    x = torch.randn(2, 30, 4)
    mask = torch.arange(30)[None] < torch.tensor([[20], [30]])
    y = layer(x, mask)
    junk = x.clone()
    junk[0, 20:] = 100.0                                 # what sits at padded positions must not reach real ones
    torch.testing.assert_close(layer(junk, mask)[0, :20], y[0, :20], atol=0, rtol=0)
    # a shorter L changes the scan's pairing, so only rounding differs
    torch.testing.assert_close(layer(x[:1, :20])[0], y[0, :20], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer(x[1:])[0], y[1], atol=1e-6, rtol=1e-5)  # batch of 1: matmul blocking may differ


@pytest.mark.parametrize("name", ["s5", "lru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_backward_gives_finite_grads(name, bidirectional):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=4, l_max=64, d_state=8, bidirectional=bidirectional, dropout=0.1,
                        **({"blocks": 2} if name == "s5" else {}))
    mask = torch.arange(40)[None] < torch.tensor([[25], [40]])
    layer(torch.randn(2, 40, 4), mask).square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name, expected", [("s5", {"Lambda_re", "Lambda_im", "B", "log_dt"}),
                                            ("lru", {"nu_log", "theta_log", "gamma_log", "B"})])
def test_recurrent_parameters_carry_their_own_lr_and_no_weight_decay(name, expected):
    layer = build_layer(name, d_model=4, l_max=16, d_state=8, lr=0.002, **({"blocks": 2} if name == "s5" else {}))
    hint = {"lr": 0.002, "weight_decay": 0.0}
    hinted = {n for n, p in layer.named_parameters() if getattr(p, "_optim", None) == hint}
    assert hinted == expected                            # C and D use the global lr and weight decay


def test_lru_ring_init():
    torch.manual_seed(0)
    r_min, r_max, max_phase = 0.4, 0.8, math.pi / 10
    layer = build_layer("lru", d_model=4, l_max=16, d_state=4096, r_min=r_min, r_max=r_max, max_phase=max_phase)
    lam, _, _ = layer.recurrence()
    mod, phase = lam.abs().double(), lam.angle().double()
    eps = 1e-6                                           # float32 storage of ν_log, θ_log
    assert mod.min() >= r_min - eps and mod.max() <= r_max + eps
    assert phase.min() >= 0 and phase.max() <= max_phase + eps
    # uniform on the ring's area: |λ|^2 ~ U[r_min^2, r_max^2]; mean's std is 0.0022 at N = 4096, 0.01 is 4.5 sigma
    assert abs((mod ** 2).mean().item() - (r_min ** 2 + r_max ** 2) / 2) < 0.01
    torch.testing.assert_close(torch.exp(layer.gamma_log).double(), torch.sqrt(1 - mod ** 2), atol=1e-6, rtol=1e-5)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="divisible by blocks"):
        build_layer("s5", d_model=4, l_max=16, d_state=12, blocks=8)
    with pytest.raises(ValueError, match="must be even"):
        build_layer("s5", d_model=4, l_max=16, d_state=12, blocks=4)
    with pytest.raises(ValueError, match="unknown activation"):
        build_layer("s5", d_model=4, l_max=16, d_state=8, blocks=1, activation="relu")
    with pytest.raises(ValueError, match="unknown discretization"):
        build_layer("s5", d_model=4, l_max=16, d_state=8, blocks=1, discretization="euler")
    with pytest.raises(ValueError, match="r_max"):
        build_layer("lru", d_model=4, l_max=16, d_state=8, r_max=1.0)
    for name, kw in [("s5", {"blocks": 1}), ("lru", {})]:
        with pytest.raises(ValueError, match="step mode needs a causal layer"):
            build_layer(name, d_model=4, l_max=16, d_state=8, bidirectional=True, **kw).default_state(1)
        with pytest.raises(RuntimeError, match="default_state"):
            build_layer(name, d_model=4, l_max=16, d_state=8, **kw).step(torch.zeros(1, 4), None)
