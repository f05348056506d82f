"""S4 / S4D options that reproduce state-spaces/s4 (research/s4.md, section 2): n_ssm sharing of (A, P, B), B_clip,
C initialised as C and converted to C̃ = C (I - Ā^L), tied and pre-GELU dropout, and the dt / C lr hints."""
import pytest
import torch

from harness.optim import param_groups
from models.registry import build_layer
from models.s4.hippo import nplr_legs
from steps import stepped  # tests/models/steps.py (its folder is on sys.path under pytest)

SHARED = {"s4": ("log_neg_re", "im", "P", "B"), "s4d": ("log_neg_re", "im", "B")}
C128 = torch.complex128


def _perturb_shared(layer, name, scale=0.3):
    """Make the copies differ (all copies are equal at init) while keeping Re A < 0."""
    with torch.no_grad():
        for pname in SHARED[name]:
            p = getattr(layer.kernel, pname)
            p.add_(scale * torch.randn_like(p) * (p.abs().mean() + 0.1))


# -- n_ssm ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["s4", "s4d"])
@pytest.mark.parametrize("k", [1, 2])
def test_n_ssm_shapes_and_per_channel_kernels(name, k):
    torch.manual_seed(0)
    h, n = 6, 8
    layer = build_layer(name, d_model=h, l_max=32, d_state=n, n_ssm=k, bidirectional=True)
    kern = layer.kernel
    assert kern.log_neg_re.shape == kern.im.shape == (k, n // 2)
    assert kern.B.shape == (k, n // 2, 2) and (name == "s4d" or kern.P.shape == (k, n // 2, 2))
    assert kern.log_dt.shape == (h,) and kern.C.shape == (2, h, n // 2, 2) and layer.D.shape == (h,)
    _perturb_shared(layer, name)
    # reference: one copy per channel (the default), channel c given copy c % k of the shared parameters
    ref = build_layer(name, d_model=h, l_max=32, d_state=n, bidirectional=True)
    assert ref.kernel.log_neg_re.shape == (h, n // 2)
    copy = torch.arange(h) % k
    with torch.no_grad():
        for pname in SHARED[name]:
            getattr(ref.kernel, pname).copy_(getattr(kern, pname)[copy])
        ref.kernel.log_dt.copy_(kern.log_dt)
        ref.kernel.C.copy_(kern.C)
    got, want = kern(32), ref.kernel(32)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    if k == 2:  # the copies really differ, so a wrong channel -> copy map would fail above
        with torch.no_grad():
            ref.kernel.log_dt.copy_(kern.log_dt[0])
            ref.kernel.C.copy_(kern.C[:, :1].expand(-1, h, -1, -1))
        same = ref.kernel(32)
        assert (same[:, 0] - same[:, 1]).abs().max() > 1e-3
    # gradients of shared parameters gather every channel that uses the copy
    kern(32).square().sum().backward()
    assert kern.B.grad.shape == kern.B.shape and kern.B.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_n_ssm_dense_ssm_and_step_equal_convolution(name):
    torch.manual_seed(1)
    h = 4
    layer = build_layer(name, d_model=h, l_max=64, d_state=8, n_ssm=2).eval()
    _perturb_shared(layer, name)
    a, b, c, dt = layer.kernel.dense_ssm()
    assert a.shape == (h, 8, 8) and b.shape == (h, 8) and c.shape == (1, h, 8) and dt.shape == (h,)
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], a[3])  # channel h uses copy h % 2
    assert (a[0] - a[1]).abs().max() > 1e-3
    x = torch.randn(2, 40, h)
    torch.testing.assert_close(stepped(layer, x), layer(x), atol=1e-5, rtol=1e-5)


def test_n_ssm_must_divide_d_model():
    with pytest.raises(ValueError, match="n_ssm"):
        build_layer("s4", d_model=6, l_max=16, d_state=8, n_ssm=4)
    with pytest.raises(ValueError, match="n_ssm"):
        build_layer("s4d", d_model=6, l_max=16, d_state=8, n_ssm=0)


# -- B_clip ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [2.0, 0.25])
def test_b_clip_clips_exactly_the_large_imaginary_parts(clip):
    torch.manual_seed(0)
    n = 64
    clipped = build_layer("s4", d_model=2, l_max=16, d_state=n, b_clip=clip).kernel
    plain = build_layer("s4", d_model=2, l_max=16, d_state=n).kernel
    _, p0, b0, _ = nplr_legs(n)
    b, bp = torch.view_as_complex(clipped.B), torch.view_as_complex(plain.B)  # (H, N/2)
    big = (b0.imag.abs() > clip).expand_as(b)
    if clip == 2.0:
        assert big[0].sum().item() == 11  # the count state-spaces/s4 reports at N = 64
    else:
        assert (b0.real.abs() > clip).any()  # so that "Re(B) untouched" is tested
    assert torch.equal(b.real, bp.real)
    assert torch.equal(b.imag[~big], bp.imag[~big])
    assert torch.equal(b.imag[big], clip * torch.sign(bp.imag[big]))
    assert torch.equal(clipped.P, plain.P)
    torch.testing.assert_close(torch.view_as_complex(clipped.P)[0], p0.to(torch.complex64))


# -- C init ---------------------------------------------------------------------------------------------------------
def _dense_reference_kernel(kern, c_half, length):
    """k[c, h, l] = Σ_full C Ā^l B̄, complex128, built from the raw parameters (not the layer's dense_ssm)."""
    lam = torch.complex(-torch.exp(kern.log_neg_re.double()), kern.im.double()).to(C128)
    p = torch.view_as_complex(kern.P.detach()).to(C128)
    b = torch.view_as_complex(kern.B.detach()).to(C128)
    dt = torch.exp(kern.log_dt.detach().double())
    full = lambda t: torch.cat([t, t.conj()], -1)
    pf = full(p)
    a = torch.diag_embed(full(lam)) - pf[:, :, None] * pf.conj()[:, None, :]
    eye = torch.eye(a.shape[-1], dtype=C128)
    m = eye - dt[:, None, None] / 2 * a
    abar = torch.linalg.solve(m, eye + dt[:, None, None] / 2 * a)
    x = torch.linalg.solve(m, (dt[:, None] * full(b))[..., None]).squeeze(-1)  # B̄ (H, N)
    cf, out = full(c_half.to(C128)), []
    for _ in range(length):
        out.append((cf * x).sum(-1))
        x = (abar @ x[..., None]).squeeze(-1)
    k = torch.stack(out, -1)
    assert k.imag.abs().max() < 1e-9 * k.real.abs().max()  # conjugate pairs: real
    return k.real


@pytest.mark.parametrize("kw", [{}, {"n_ssm": 1, "b_clip": 2.0}])
def test_c_init_upstream_kernel_is_the_generating_function_of_the_drawn_c(kw):
    h, l_max, n = 3, 64, 16
    torch.manual_seed(3)
    up = build_layer("s4", d_model=h, l_max=l_max, d_state=n, bidirectional=True, c_init="upstream",
                     dt_min=1e-3, dt_max=3e-2, **kw)
    torch.manual_seed(3)  # the same draws: the "tilde" layer stores the drawn C itself
    tilde = build_layer("s4", d_model=h, l_max=l_max, d_state=n, bidirectional=True, dt_min=1e-3, dt_max=3e-2, **kw)
    drawn = torch.view_as_complex(tilde.kernel.C.detach())
    assert torch.equal(up.kernel.log_dt, tilde.kernel.log_dt)
    # slow modes (|Ā^L| near 1) make C̃ far from C: the conversion did something
    assert (torch.view_as_complex(up.kernel.C.detach()) - drawn).abs().max() > 0.1 * drawn.abs().max()
    truth = _dense_reference_kernel(up.kernel, drawn, l_max)
    for length in (l_max, 37):
        k = up.kernel(length).double()
        err = ((k - truth[..., :length]).abs().max() / truth.abs().max()).item()
        assert err < 1e-5, err  # seen 4e-7 (float32 kernel); C̃ from Ā^(L-1) gives 2e-2
    # and the drawn C, used as C̃ ("tilde"), gives another kernel
    assert (tilde.kernel(l_max).double() - truth).abs().max() > 0.1 * truth.abs().max()


def test_c_init_tilde_is_standard_complex_normal_and_unknown_is_rejected():
    torch.manual_seed(0)
    c = torch.view_as_complex(build_layer("s4", d_model=64, l_max=16, d_state=64).kernel.C.detach())
    assert abs(c.real.var().item() - 0.5) < 0.05 and abs(c.imag.var().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="c_init"):
        build_layer("s4", d_model=4, l_max=16, d_state=8, c_init="zero")


# -- dropout --------------------------------------------------------------------------------------------------------
def _is_dropout_mask(r, p):
    """Every value 0 or 1 / (1 - p), and both occur."""
    kept = torch.isclose(r, torch.full_like(r, 1 / (1 - p)))
    return bool(torch.all(kept | (r == 0)) and kept.any() and (r == 0).any())


def _captured(module):
    seen = {}
    module.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
    return seen


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_tie_dropout_masks_are_constant_along_length(name):
    torch.manual_seed(0)
    p = 0.5
    layer = build_layer(name, d_model=16, l_max=64, d_state=8, dropout=p, tie_dropout=True)
    seen = _captured(layer.drop)
    x = torch.randn(4, 50, 16)
    layer(x)
    ratio = seen["y"] / seen["x"]                                # (B, L, H): mask / (1 - p)
    assert torch.all(seen["x"] != 0)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # the same along L
    mask = ratio[:, 0]
    assert _is_dropout_mask(mask, p)
    assert not torch.all(mask == mask[:1]) and not torch.all(mask == mask[:, :1])  # differs over examples, channels
    layer.eval()
    layer(x)
    assert torch.equal(seen["x"], seen["y"])
    # untied (the default): masks vary along the length
    untied = build_layer(name, d_model=16, l_max=64, d_state=8, dropout=p)
    seen_u = _captured(untied.drop)
    untied(x)
    r = seen_u["y"] / seen_u["x"]
    assert not torch.allclose(r, r[:, :1].expand_as(r))


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_pre_gelu_dropout_is_a_second_elementwise_dropout(name):
    p, x = 0.3, torch.randn(2, 40, 8)
    torch.manual_seed(0)
    with_pre = build_layer(name, d_model=8, l_max=64, d_state=8, dropout=p, pre_gelu_dropout=True)
    torch.manual_seed(0)
    without = build_layer(name, d_model=8, l_max=64, d_state=8, dropout=p)
    assert isinstance(without.pre_drop, torch.nn.Identity) and isinstance(with_pre.pre_drop, torch.nn.Dropout)
    seen_pre, seen_post = _captured(with_pre.pre_drop), _captured(with_pre.drop)
    torch.manual_seed(1)
    y1 = with_pre(x)
    torch.manual_seed(1)
    y0 = without(x)
    assert not torch.allclose(y0, y1)
    # the pre-GELU dropout acts on the SSM output, element-wise (not tied), and feeds the GELU
    torch.testing.assert_close(seen_post["x"], torch.nn.functional.gelu(seen_pre["y"]))
    r = seen_pre["y"] / seen_pre["x"]
    assert _is_dropout_mask(r, p)
    assert not torch.allclose(r, r[:, :1].expand_as(r))
    # eval: identical to the layer without it
    with_pre.eval(), without.eval()
    torch.testing.assert_close(with_pre(x), without(x), rtol=0, atol=0)


# -- lr hints -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt_lr, c_lr, dt_hint, c_hint", [
    ("ssm", "main", {"lr": 0.002, "weight_decay": 0.0}, None),           # the defaults (today's behaviour)
    ("main", "main", {"weight_decay": 0.0}, None),                      # upstream lr: {dt: null, A: .., B: ..}
    ("ssm", "ssm", {"lr": 0.002, "weight_decay": 0.0}, {"lr": 0.002}),  # upstream scalar lr (v4.1+)
    (0.01, 0.005, {"lr": 0.01, "weight_decay": 0.0}, {"lr": 0.005}),
])
def test_dt_and_c_lr_hints(dt_lr, c_lr, dt_hint, c_hint):
    layer = build_layer("s4", d_model=4, l_max=16, d_state=8, lr=0.002, dt_lr=dt_lr, c_lr=c_lr)
    kern = layer.kernel
    assert kern.log_dt._optim == dt_hint
    assert getattr(kern.C, "_optim", None) == c_hint
    for pname in ("log_neg_re", "im", "P", "B"):
        assert getattr(kern, pname)._optim == {"lr": 0.002, "weight_decay": 0.0}
    groups = param_groups(layer, lr=0.1, weight_decay=0.05)
    where = {id(q): (g["lr"], g["weight_decay"]) for g in groups for q in g["params"]}
    assert where[id(kern.log_dt)] == (dt_hint.get("lr", 0.1), 0.0)
    assert where[id(kern.C)] == ((c_hint or {}).get("lr", 0.1), 0.05)


def test_s4d_dt_lr_and_bad_values():
    layer = build_layer("s4d", d_model=4, l_max=16, d_state=8, lr=0.002, dt_lr="main")
    assert layer.kernel.log_dt._optim == {"weight_decay": 0.0} and not hasattr(layer.kernel.C, "_optim")
    with pytest.raises(ValueError, match="dt_lr"):
        build_layer("s4d", d_model=4, l_max=16, d_state=8, dt_lr="fast")
    with pytest.raises(ValueError, match="c_lr"):
        build_layer("s4", d_model=4, l_max=16, d_state=8, c_lr=-1.0)
