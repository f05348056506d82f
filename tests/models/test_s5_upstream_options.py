"""S5's upstream options (lindermanlab/S5): c_init, clip_eigs, the tanh GELU, tied dropout, opt_config / dt_global.

Each option is checked against its definition: C̃'s statistics and raw draws, a float64 recurrence with clipped Λ,
F.gelu(approximate="tanh") written out per activation, dropout masks read off the layer's dropout module, and the
optimiser hints as harness.optim.param_groups turns them into groups.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import models.s5  # noqa: F401  (registers s5)
from harness.optim import param_groups
from models.backbone import TiedDropout
from models.registry import build_layer
from models.s5 import ACTIVATIONS, _trunc_normal
from steps import stepped  # tests/models/steps.py (its folder is on sys.path under pytest)

SSM_LR, LR, WD = 0.002, 0.01, 0.05


def _s5(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"d_model": 4, "d_state": 16, "blocks": 2, **kw}
    return build_layer("s5", l_max=64, **kw)


# -- c_init --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c_init, part_var", [("trunc_standard_normal", lambda h, p: 1 / p),
                                              ("lecun_normal", lambda h, p: 1 / (h * p)),
                                              ("complex_normal", lambda h, p: 0.5)])
def test_c_init_statistics(c_init, part_var):
    h, p = 64, 256
    layer = _s5(d_model=h, d_state=p, blocks=8, bidirectional=True, c_init=c_init)
    c = layer.C.double()                                 # (K, H, P/2, 2): real and imaginary parts of C̃
    assert c.shape == (2, h, p // 2, 2)
    # C V with V's columns orthonormal keeps each part's variance (C's parts i.i.d.); complex_normal has no V.
    # 16384 samples a part: the sample variance's relative std is ~1.1%, so 6% is > 5 sigma
    for part in (c[..., 0], c[..., 1]):
        assert abs(part.var().item() / part_var(h, p) - 1) < 0.06
        assert abs(part.mean().item()) < 5 * math.sqrt(part_var(h, p) / part.numel())
    for k in range(2):                                   # each direction drawn alike
        assert abs(c[k].var().item() / part_var(h, p) - 1) < 0.08


def test_lecun_normal_is_the_truncated_draw_with_variance_one_over_hp():
    # trunc_normal_ is scale-equivariant (uniform -> erfinv -> x std -> clamp at ±2 std), so with one seed the
    # lecun_normal C̃ is the trunc_standard_normal one scaled by sqrt(P / (H P)) = 1 / sqrt(H) = 1/8, exactly
    trunc, lecun = _s5(d_model=64, c_init="trunc_standard_normal"), _s5(d_model=64, c_init="lecun_normal")
    torch.testing.assert_close(lecun.C * 8, trunc.C, rtol=1e-6, atol=0)
    for name in ("Lambda_re", "Lambda_im", "B", "log_dt", "D"):   # and nothing else changes
        torch.testing.assert_close(getattr(lecun, name), getattr(trunc, name), rtol=0, atol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_complex_normal_is_the_raw_draw_without_v(bidirectional):
    h, p, k = 8, 16, 2 if bidirectional else 1
    layer = _s5(seed=3, d_model=h, d_state=p, bidirectional=bidirectional, c_init="complex_normal")
    torch.manual_seed(3)
    _trunc_normal(p, h, fan_in=p)                        # B is drawn first
    raw = torch.view_as_complex(torch.randn(h, k * (p // 2), 2, dtype=torch.float64) * math.sqrt(0.5))
    expected = torch.stack([raw[:, i * (p // 2):(i + 1) * (p // 2)] for i in range(k)])   # column block per direction
    torch.testing.assert_close(layer.C, torch.view_as_real(expected.to(torch.complex64)), rtol=0, atol=0)
    trunc = _s5(seed=3, d_model=h, d_state=p, bidirectional=bidirectional)
    torch.testing.assert_close(layer.B, trunc.B, rtol=0, atol=0)
    # not truncated: N(0, 1/2) puts 4.6% of the parts beyond 2 std
    big = _s5(d_model=64, d_state=256, blocks=8, c_init="complex_normal").C
    assert (big.abs() > 2 * math.sqrt(0.5)).double().mean().item() > 0.03


# -- clip_eigs -----------------------------------------------------------------------------------------------
def _reference(layer, u, lam_re):
    """float64 S5 recurrence with the given Re Λ (tests/models/test_s5_lru.py's reference)."""
    from test_s5_lru import _s5_reference  # its folder is on sys.path (pytest's default import mode)

    return _s5_reference(layer, u, lam_re).detach()


# Re Λ per stored state (P/2 = 8): clipped where > -1e-4 (positive, just above the bound), kept elsewhere
LAMBDA_RE = torch.tensor([1.0, -0.5, 2e-5, -1e-3, -5e-5, -0.5, 0.5, -2e-4])
CLIPPED = LAMBDA_RE > -1e-4


def _clip_pair(**kw):
    clip, plain = _s5(clip_eigs=True, **kw), _s5(**kw)
    for layer in (clip, plain):
        with torch.no_grad():                            # and Δ in [0.02, 0.1], so that Re Λ Δ L is O(1)
            layer.Lambda_re.copy_(LAMBDA_RE)
            layer.log_dt.copy_(torch.linspace(0.02, 0.1, 8).log())
    return clip, plain


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}, {"discretization": "bilinear"}], ids=str)
def test_clip_eigs_forward_equals_recurrence_with_clipped_lambda(kw):
    clip, plain = _clip_pair(**kw)
    u = torch.randn(2, 37, 4)
    ref_clip = _reference(clip, u, LAMBDA_RE.clamp(max=-1e-4))
    ref_plain = _reference(plain, u, LAMBDA_RE)
    assert (ref_clip - ref_plain).abs().max() > 1e-2     # the clip matters here
    clip.double(), plain.double()
    assert ((clip.ssm(u.double()) - ref_clip).abs().max() / ref_clip.abs().max()).item() < 1e-12
    assert ((plain.ssm(u.double()) - ref_plain).abs().max() / ref_plain.abs().max()).item() < 1e-12
    clip.float()
    torch.testing.assert_close(clip.ssm(u).double(), ref_clip, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip.Lambda_re, LAMBDA_RE, rtol=0, atol=0)   # the parameter is not clipped


def test_clip_eigs_changes_only_the_clipped_states():
    clip, plain = _clip_pair(bidirectional=True)
    clip.double(), plain.double()                        # |Λ̄| = exp(-1e-4 Δ) is 1 - 1e-7 or so: float64 to read it
    (a_c, b_c), (a_p, b_p) = clip.discrete(), plain.discrete()
    assert torch.equal(a_c[~CLIPPED], a_p[~CLIPPED]) and torch.equal(b_c[~CLIPPED], b_p[~CLIPPED])
    assert (a_c[CLIPPED] != a_p[CLIPPED]).all() and (b_c[CLIPPED] != b_p[CLIPPED]).all()
    torch.testing.assert_close(a_c.abs().log() / torch.exp(clip.log_dt),            # Re Λ the system uses
                               LAMBDA_RE.double().clamp(max=-1e-4), rtol=1e-9, atol=0)
    clip.float(), plain.float()
    u = torch.randn(2, 30, 4)
    assert (clip(u) - plain(u)).abs().max() > 1e-3
    with torch.no_grad():                                # read nothing out of the clipped states:
        for layer in (clip, plain):                      # the two layers then agree exactly
            layer.C[:, :, CLIPPED] = 0
    torch.testing.assert_close(clip(u), plain(u), rtol=0, atol=0)


def test_clip_eigs_gradient_is_zero_where_the_clip_is_active():
    clip, _ = _clip_pair()
    clip(torch.randn(2, 30, 4)).square().mean().backward()
    grad = clip.Lambda_re.grad
    assert (grad[CLIPPED] == 0).all() and (grad[~CLIPPED] != 0).all()
    assert (clip.Lambda_im.grad != 0).all()


@pytest.mark.parametrize("kw", [{}, {"gelu": "tanh", "activation": "full_glu"},
                                {"discretization": "bilinear", "c_init": "complex_normal"}], ids=str)
def test_step_mode_equals_forward_with_clip_eigs(kw):
    layer = _clip_pair(d_model=8, **kw)[0].eval()        # clip_eigs, with Re Λ > 0 on some states
    x = torch.randn(2, 50, 8)
    torch.testing.assert_close(stepped(layer, x), layer(x), atol=1e-5, rtol=1e-5)
    assert layer.clip_eigs


# -- GELU ----------------------------------------------------------------------------------------------------
def _act_by_hand(layer, y, approximate):
    z = F.gelu(y, approximate=approximate)
    if layer.activation == "gelu":
        return z
    if layer.activation == "full_glu":
        return layer.out1(z) * torch.sigmoid(layer.out2(z))
    if layer.activation == "half_glu1":
        return z * torch.sigmoid(layer.out2(z))
    return y * torch.sigmoid(layer.out2(z))              # half_glu2


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gelu_tanh_is_the_tanh_approximation_in_every_activation(activation):
    exact, tanh = _s5(activation=activation), _s5(activation=activation, gelu="tanh")
    for (n, p), (_, q) in zip(exact.named_parameters(), tanh.named_parameters()):
        assert torch.equal(p, q), n                      # the option changes no parameter
    u = torch.randn(2, 40, 4)
    y = exact.ssm(u)
    torch.testing.assert_close(tanh(u), _act_by_hand(tanh, y, "tanh"), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(exact(u), _act_by_hand(exact, y, "none"), rtol=1e-6, atol=1e-7)
    assert (tanh(u) - exact(u)).abs().max() > 1e-5


# -- tied dropout --------------------------------------------------------------------------------------------
def _dropout_mask(layer, u):
    """The multiplier layer.drop applied in the layer's forward: its output / its input (B, L, H); NaN where the
    input is 0 (float32 GELU of y < -5.5 or so)."""
    seen = {}
    handle = layer.drop.register_forward_hook(lambda m, i, o: seen.update(i=i[0].detach(), o=o.detach()))
    layer(u)
    handle.remove()
    i, o = seen["i"], seen["o"]
    assert i.shape == u.shape and (i != 0).double().mean() > 0.99
    return torch.where(i != 0, o / i, torch.nan)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tie_dropout_masks_are_constant_along_length(activation):
    p = 0.5
    tied = _s5(d_model=16, activation=activation, dropout=p, tie_dropout=True).train()
    untied = _s5(d_model=16, activation=activation, dropout=p).train()
    assert isinstance(tied.drop, TiedDropout) and isinstance(untied.drop, torch.nn.Dropout)
    u = torch.randn(4, 64, 16)
    mask = _dropout_mask(tied, u)
    kept = torch.isclose(mask, torch.tensor(1 / (1 - p)), rtol=1e-5, atol=0)
    dropped = mask == 0
    assert (kept | dropped | mask.isnan()).all()         # Bernoulli, scaled by 1 / (1 - p)
    assert not (kept.any(1) & dropped.any(1)).any()      # one mask per (example, channel) for all positions
    per_channel = kept.any(1)                            # (B, H)
    assert 0.2 < per_channel.double().mean().item() < 0.8
    assert (per_channel != per_channel[:1]).any()        # different examples: different masks
    untied_mask = _dropout_mask(untied, u)
    assert ((untied_mask == 0).any(1) & (untied_mask > 1).any(1)).any()   # element-wise: varies along L
    # eval: both the identity, i.e. the layer without dropout
    plain = _s5(d_model=16, activation=activation)
    for layer in (tied, untied):
        layer.eval()
        m = _dropout_mask(layer, u)
        assert ((m == 1) | m.isnan()).all()
        torch.testing.assert_close(layer(u), plain(u), rtol=0, atol=0)


# -- optimiser hints -----------------------------------------------------------------------------------------
SSM_HINT = {"lr": SSM_LR, "weight_decay": 0.0}


@pytest.mark.parametrize("opt_config, dt_global, b_hint, b_group", [
    ("standard", False, SSM_HINT, (SSM_LR, 0.0)),
    ("standard", True, SSM_HINT, (SSM_LR, 0.0)),
    ("BfastandCdecay", False, None, (LR, WD)),           # B at the global lr, with the global weight decay
    ("BfastandCdecay", True, None, (LR, WD)),
    ("BandCdecay", False, {"lr": SSM_LR}, (SSM_LR, WD)),  # B at the SSM lr, with the global weight decay
    ("BandCdecay", True, {"lr": SSM_LR}, (SSM_LR, WD)),
])
def test_opt_config_and_dt_global_hints_and_groups(opt_config, dt_global, b_hint, b_group):
    layer = _s5(activation="full_glu", lr=SSM_LR, opt_config=opt_config, dt_global=dt_global)
    hints = {n: getattr(p, "_optim", None) for n, p in layer.named_parameters()}
    assert hints == {"Lambda_re": SSM_HINT, "Lambda_im": SSM_HINT, "B": b_hint,
                     "log_dt": {"weight_decay": "main"} if dt_global else SSM_HINT, "C": None, "D": None,
                     "out1.weight": None, "out1.bias": None, "out2.weight": None, "out2.bias": None}
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in param_groups(layer, LR, WD) for p in g["params"]}
    got = {n: groups[id(p)] for n, p in layer.named_parameters()}
    assert got == {"Lambda_re": (SSM_LR, 0.0), "Lambda_im": (SSM_LR, 0.0), "B": b_group,
                   "log_dt": (LR, WD) if dt_global else (SSM_LR, 0.0),   # dt_global: S5's "regular" group
                   "C": (LR, WD), "D": (LR, 0.0),    # D 1-D: no decay unless decay_d
                   "out1.weight": (LR, WD), "out1.bias": (LR, 0.0), "out2.weight": (LR, WD), "out2.bias": (LR, 0.0)}


@pytest.mark.parametrize("opt_config", ["standard", "BfastandCdecay", "BandCdecay"])
def test_no_ssm_lr_means_no_hints(opt_config):
    layer = _s5(lr=None, opt_config=opt_config, dt_global=True)
    assert not any(hasattr(p, "_optim") for p in layer.parameters())


def test_unknown_options_are_refused():
    for kw, match in [({"c_init": "xavier"}, "unknown c_init"), ({"gelu": "relu"}, "unknown gelu"),
                      ({"opt_config": "noBCdecay"}, "unknown opt_config")]:
        with pytest.raises(ValueError, match=match):
            _s5(**kw)


def test_decay_d_gives_d_the_global_weight_decay():
    layer = _s5(lr=SSM_LR, decay_d=True)
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in param_groups(layer, LR, WD) for p in g["params"]}
    assert groups[id(layer.D)] == (LR, WD)
