"""S4 / S4D recurrent step (models/s4/step.py): the O(H N) fast step against the dense float32 step, the FFT
convolution and a complex128 dense recurrence (the truth), at init and after training; the DPLR algebra; the
diagonalised S4 step's known failure at large N; the public API under inference mode."""
import pytest
import torch
import torch.nn.functional as F

from models.registry import build_layer
from models.s4.kernel import NPLRKernel
from models.s4.step import dense_plan, dense_step, dplr_system, eig_system


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tokens of a few tiny ops each: on the shared 2-core machine under load, two OpenMP threads made
    these loops 10-50x slower (measured; hand-offs between threads, not arithmetic); one keeps the file fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _truth(layer, x: torch.Tensor) -> torch.Tensor:
    """(B, L, H) -> (B, L, H) float64: the dense discrete SSM stepped in complex128, then GELU, out, GLU in float64."""
    plan, u, d_skip = dense_plan(layer.kernel, torch.complex128), x.double(), layer.D.detach().double()
    state, ys = torch.zeros(x.shape[0], *plan[1].shape, dtype=torch.complex128), []
    for t in range(x.shape[1]):
        y, state = dense_step(plan, u[:, t], d_skip, state)
        ys.append(y)
    y = F.gelu(torch.stack(ys, 1))
    return F.glu(F.linear(y, layer.out.weight.detach().double(), layer.out.bias.detach().double()), dim=-1)


def _stepped(layer, x: torch.Tensor, mode: str) -> torch.Tensor:
    with torch.inference_mode():
        state, outs = layer.default_state(x.shape[0], mode=mode), []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state)
            outs.append(y)
    return torch.stack(outs, 1)


def _rel_err(y: torch.Tensor, truth: torch.Tensor) -> float:
    """Max error relative to the output's scale (max |truth|): outputs near zero are not over-weighted."""
    return ((y.double() - truth).abs().max() / truth.abs().max()).item()


CASES = [("s4", 4, 1047, {}), ("s4", 64, 4096, {}), ("s4", 16, 300, {"init": "random", "n_ssm": 1, "c_init": "upstream"}),
         ("s4d", 64, 4096, {}), ("s4d", 16, 1047, {"init": "diag-inv", "discretization": "bilinear"})]


@pytest.mark.parametrize("name, n, length, kw", CASES, ids=lambda v: str(v))
def test_fast_step_matches_dense_step_convolution_and_truth(name, n, length, kw):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=3, l_max=length, d_state=n, lr=None, **kw)  # lr None: all at the main lr
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)                            # big: the SSM moves far from init
    for phase in ("init", "trained"):
        layer.eval()
        x = torch.randn(2, length, 3)
        truth = _truth(layer, x)
        fast, dense = _stepped(layer, x, "auto"), _stepped(layer, x, "dense")
        with torch.no_grad():
            conv = layer(x)
        err_fast, err_dense, err_conv = (_rel_err(y, truth) for y in (fast, dense, conv))
        # the project rule for fast paths: no worse than twice what the plain float32 path already gets wrong, plus
        # 1e-6 (~8 ulps of the output's scale: the float32 output projection alone rounds at a few ulps)
        assert err_fast <= 2 * err_dense + 1e-6, (phase, err_fast, err_dense)
        # the FFT convolution against the same truth: observed <= 5e-6 here; 1e-4 is the kernel tests' bound
        assert err_conv < 1e-4, (phase, err_conv)
        assert _rel_err(fast, conv.double()) <= err_fast + err_conv + 1e-6, phase  # the two computations agree
        layer.train()
        for _ in range(5):
            loss = layer(torch.randn(2, min(length, 256), 3)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("n", [4, 64])
def test_dplr_system_is_the_bilinear_discretization(n):
    """diag(d) + q g^T over the full conjugate state rebuilds the dense bilinear Ā and B̄ (complex128)."""
    torch.manual_seed(0)
    kernel = build_layer("s4", d_model=3, l_max=64, d_state=n, lr=None).kernel
    with torch.no_grad():
        kernel.P.add_(0.3 * torch.randn_like(kernel.P))          # off the HiPPO init: any P, Λ, B, dt
        kernel.log_neg_re.add_(torch.randn_like(kernel.log_neg_re))
    system = dplr_system(kernel, torch.zeros(3))
    full = lambda t: torch.cat([t, t.conj()], -1)
    abar = torch.diag_embed(full(system.d)) + full(system.q[:, 0])[:, :, None] * full(system.g[:, 0])[:, None, :]
    a, b, _, dt = kernel.dense_ssm()
    abar_ref, bbar_ref = NPLRKernel.discretize(a, b, dt)
    # two float64 routes to the same matrices (Sherman-Morrison vs a dense inverse): rounding ~ N eps ||Ā||
    torch.testing.assert_close(abar, abar_ref, atol=1e-12 * n, rtol=0)
    torch.testing.assert_close(full(system.b), bbar_ref, atol=1e-12 * n, rtol=0)


def test_diagonalised_s4_step_fails_at_large_n_and_auto_avoids_it():
    """HiPPO-LegS's eigenvectors: fine at N = 4, useless at N = 64 (the conditioning table's finding)."""
    torch.manual_seed(0)
    x = torch.randn(1, 200, 3)
    errs = {}
    for n in (4, 64):
        layer = build_layer("s4", d_model=3, l_max=256, d_state=n).eval()
        truth = _truth(layer, x)
        errs[n] = (_rel_err(_stepped(layer, x, "diagonal"), truth), _rel_err(_stepped(layer, x, "auto"), truth))
        cond = eig_system(layer.kernel, layer.D)[1]
        assert (cond < 1e3).all() if n == 4 else (cond > 1e8).all(), (n, cond)
    assert errs[4][0] < 1e-4 and errs[64][0] > 1e-2, errs  # observed ~3e-6 and ~1
    assert errs[64][1] < 1e-5, errs                          # auto (the DPLR step) is unaffected


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_step_api(name):
    torch.manual_seed(0)
    layer = build_layer(name, d_model=8, l_max=32, d_state=16).eval()
    with pytest.raises(RuntimeError, match="call default_state"):
        layer.step(torch.zeros(1, 8), torch.zeros(1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="unknown step mode"):
        layer.default_state(1, mode="dplr" if name == "s4d" else "fast")
    x = torch.randn(3, 8)
    with torch.inference_mode():
        state = layer.default_state(3)
        y, state2 = layer.step(x, state)
    assert y.shape == (3, 8) and y.dtype == torch.float32 and state2.shape == state.shape
    assert state.abs().max() == 0  # the caller's state is not updated in place
    # batch rows are independent: row 1 alone gives the same output
    with torch.inference_mode():
        y1, _ = layer.step(x[1:2], layer.default_state(1))
    torch.testing.assert_close(y1, y[1:2])
