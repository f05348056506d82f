"""S4 / S4D: HiPPO and NPLR math, the kernel/dense-SSM contract (float64 power iteration), step mode, padding."""
import pytest
import torch

from harness.optim import param_groups
from models.registry import build_layer
from models.s4.hippo import diag_init, hippo_legs, nplr_legs
from models.s4.kernel import NPLRKernel
from steps import stepped  # tests/models/steps.py (its folder is on sys.path under pytest)

# float32 kernels against float64 truth: observed relative errors ~1e-6; 1e-4 leaves room for long powers
KERNEL_RTOL = 1e-4


def test_hippo_legs_entries():
    a, b = hippo_legs(4)
    assert a[2, 1] == pytest.approx(-(5 ** 0.5) * (3 ** 0.5)) and a[2, 2] == -3 and a[1, 2] == 0
    assert b.tolist() == pytest.approx([1, 3 ** 0.5, 5 ** 0.5, 7 ** 0.5])


@pytest.mark.parametrize("n", [2, 8, 64])
def test_nplr_reconstructs_legs(n):
    lam, p, b, v = nplr_legs(n)
    vf, lf, pf = torch.cat([v, v.conj()], 1), torch.cat([lam, lam.conj()]), torch.cat([p, p.conj()])
    a = vf @ (torch.diag(lf) - pf[:, None] * pf.conj()[None, :]) @ vf.conj().T
    a_legs, b_legs = hippo_legs(n)
    # float64 eigendecomposition: errors grow like N * eps * ||A|| (||A|| ~ N)
    torch.testing.assert_close(a, a_legs.to(a.dtype), atol=1e-11 * n * n, rtol=0)
    torch.testing.assert_close(vf @ torch.cat([b, b.conj()]), b_legs.to(a.dtype), atol=1e-11 * n, rtol=0)
    assert torch.all(lam.real == -0.5) and torch.all(lam.imag > 0)


def test_diag_inits():
    assert diag_init(8, "diag-lin").imag.tolist() == pytest.approx([0, 3.14159265, 6.28318531, 9.42477796])
    assert diag_init(8, "diag-inv").imag[0].item() == pytest.approx(8 / torch.pi * 7)
    with pytest.raises(ValueError, match="unknown S4D init"):
        diag_init(8, "diag-quad")


def _dense_kernel(kernel, length):
    """k[c, h, l] = Re(C Ā^l B̄) by float64 power iteration of the dense system."""
    a, b, c, dt = kernel.dense_ssm()
    if kernel.discretization == "bilinear":
        abar, bbar = NPLRKernel.discretize(a, b, dt)
    else:  # zoh, diagonal A
        d = torch.diagonal(a, dim1=-2, dim2=-1)
        abar, bbar = torch.diag_embed(torch.exp(dt[:, None] * d)), (torch.exp(dt[:, None] * d) - 1) / d * b
    x, out = bbar, []
    for _ in range(length):
        out.append((c * x).sum(-1).real)
        x = (abar @ x[..., None]).squeeze(-1)
    return torch.stack(out, -1)  # (C, H, L)


LAYERS = [("s4", {}), ("s4", {"init": "random"}), ("s4", {"bidirectional": True}), ("s4d", {}),
          ("s4d", {"init": "diag-inv", "discretization": "bilinear"}), ("s4d", {"bidirectional": True})]


@pytest.mark.parametrize("name, kw", LAYERS, ids=lambda x: str(x))
@pytest.mark.parametrize("length, l_max", [(17, 17), (40, 64), (300, 1024)])
def test_kernel_matches_dense_ssm_before_and_after_training(name, kw, length, l_max):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=3, l_max=l_max, d_state=16, **kw)
    assert layer.kernel.discretization == ("bilinear" if name == "s4" or kw.get("discretization") else "zoh")
    opt = torch.optim.AdamW(param_groups(layer, 0.05, 0.0), lr=0.05)
    for step in range(2):
        k = layer.kernel(length)
        assert k.shape == (2 if kw.get("bidirectional") else 1, 3, length) and k.dtype == torch.float32
        truth = _dense_kernel(layer.kernel, length)
        assert ((k.double() - truth).abs().max() / truth.abs().max()).item() < KERNEL_RTOL, f"after {step} steps"
        loss = layer(torch.randn(2, length, 3)).square().mean() + k.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_step_mode_equals_convolution(name):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=8, l_max=64, d_state=16).eval()
    x = torch.randn(2, 50, 8)
    # float32 FFT convolution vs float32 recurrence: a few ulps of |y| ~ 1
    torch.testing.assert_close(stepped(layer, x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_bidirectional_padding_does_not_leak(name):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=4, l_max=64, d_state=8, bidirectional=True).eval()
    x = torch.randn(1, 30, 4)
    mask = torch.arange(30)[None] < 20
    y = layer(x, mask)
    junk = x.clone()
    junk[:, 20:] = 100.0  # whatever sits at padded positions must not reach the real ones
    torch.testing.assert_close(layer(junk, mask)[:, :20], y[:, :20])
    torch.testing.assert_close(layer(x[:, :20])[:, :20], y[:, :20], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_ssm_parameters_carry_their_own_lr_and_no_weight_decay(name):
    layer = build_layer(name, d_model=4, l_max=16, d_state=8, lr=0.002)
    hinted = {n for n, p in layer.named_parameters() if getattr(p, "_optim", None) == {"lr": 0.002, "weight_decay": 0.0}}
    expected = {"kernel.log_dt", "kernel.log_neg_re", "kernel.im", "kernel.B"} | ({"kernel.P"} if name == "s4" else set())
    assert hinted == expected
    assert layer.kernel.C.shape == (1, 4, 4, 2)  # C (or C̃) uses the global lr and weight decay


def test_errors_are_clear():
    with pytest.raises(ValueError, match="d_state must be even"):
        build_layer("s4", d_model=4, l_max=16, d_state=7)
    with pytest.raises(ValueError, match="built for l_max=16"):
        build_layer("s4", d_model=4, l_max=16, d_state=8).kernel(17)
    with pytest.raises(ValueError, match="step mode needs a causal layer"):
        build_layer("s4d", d_model=4, l_max=16, d_state=8, bidirectional=True).default_state(1)
    with pytest.raises(ValueError, match="unknown S4 init"):
        build_layer("s4", d_model=4, l_max=16, d_state=8, init="hippo")


def test_backend_is_recorded():
    layer = build_layer("s4", d_model=4, l_max=16, d_state=8)
    layer(torch.randn(1, 16, 4))
    assert layer.kernel_backend == "ref"  # CPU tensors: the reference (see models/s4/kernels/dispatch.py)
