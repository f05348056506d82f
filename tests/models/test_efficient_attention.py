"""Local attention, Linformer, Performer and linear Transformer against naive float64 versions of their definitions."""
import math

import pytest
import torch

import models  # noqa: F401  (registers the existing layers)
import models.efficient_attention  # noqa: F401  (registers these four)
from models.efficient_attention import CHUNK, favor_features, orthogonal_gaussian
from models.registry import build_layer

# float64 against a float64 reference of the same sums in another order: rounding ~1e-15 per op
TOL64 = dict(atol=1e-10, rtol=1e-10)
H, N_HEADS = 16, 2

LAYERS = [("local_attention", {"window": 5}), ("local_attention", {"window": 5, "causal": True}),
          ("linformer", {}), ("linformer", {"share_kv": True, "proj_len": 7}),
          ("performer", {}), ("performer", {"causal": True}),
          ("linear_transformer", {}), ("linear_transformer", {"causal": True})]


def _mask(lengths, l):
    return torch.arange(l)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)


def _split(layer, x):
    """(B, L, H) -> 3 x (B, n, L, E), the layer's own projection and head split."""
    b, l, h = x.shape
    return layer.qkv(x).view(b, l, 3, N_HEADS, h // N_HEADS).permute(2, 0, 3, 1, 4)


def _merge(layer, y):
    b, n, l, e = y.shape
    return layer.out(y.transpose(1, 2).reshape(b, l, n * e))


def _allowed(mask, l, causal):
    """(B, 1, L, L) bool: key j is visible from query i."""
    allowed = mask[:, None, None, :].expand(-1, 1, l, l)
    return allowed & torch.ones(l, l, dtype=torch.bool).tril() if causal else allowed


def _softmax_ref(q, k, v, allowed):
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def _kernel_ref(phi_q, phi_k, v, allowed):
    a = (phi_q @ phi_k.transpose(-2, -1)) * allowed  # (B, n, L, L), the O(L^2) form
    return (a @ v) / a.sum(-1, keepdim=True)


def _build(name, l_max=64, **kw):
    torch.manual_seed(0)
    return build_layer(name, d_model=H, l_max=l_max, n_heads=N_HEADS, **kw)


@pytest.mark.parametrize("name, kw", LAYERS, ids=str)
def test_shape_and_finite_grads(name, kw):
    layer = _build(name, **kw)
    x, mask = torch.randn(2, 23, H), _mask([23, 11], 23)
    y = layer(x, mask)
    assert y.shape == (2, 23, H)
    (y * mask[..., None]).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("name, kw", LAYERS, ids=str)
def test_appended_padding_changes_nothing(name, kw):
    layer = _build(name, **kw).double().eval()
    x, mask = torch.randn(2, 23, H, dtype=torch.float64), _mask([23, 11], 23)
    y = layer(x, mask)
    junk = torch.cat([x, 10 * torch.randn(2, 9, H, dtype=torch.float64)], 1)
    junk[1, 11:] = 10 * torch.randn(21, H, dtype=torch.float64)  # whatever sits at padded positions
    y_pad = layer(junk, _mask([23, 11], 32))
    torch.testing.assert_close(y_pad[:, :23][mask], y[mask], **TOL64)
    torch.testing.assert_close(layer(x[1:, :11]), y[1:, :11], **TOL64)  # unpadded, no mask


@pytest.mark.parametrize("causal", [False, True])
def test_local_attention_with_a_covering_window_is_full_attention(causal):
    local = _build("local_attention", window=32, causal=causal).double()
    full = _build("transformer", causal=causal).double()
    full.load_state_dict(local.state_dict())
    x, mask = torch.randn(2, 20, H, dtype=torch.float64), _mask([20, 9], 20)
    torch.testing.assert_close(local(x, mask)[mask], full(x, mask)[mask], **TOL64)


@pytest.mark.parametrize("causal", [False, True])
def test_local_attention_equals_per_block_softmax(causal):
    w, l = 5, 23  # blocks of 5, the last one 3 long
    layer = _build("local_attention", window=w, causal=causal).double()
    x, mask = torch.randn(2, l, H, dtype=torch.float64), _mask([23, 11], l)
    block = torch.arange(l) // w
    allowed = _allowed(mask, l, causal) & (block[:, None] == block[None, :])
    ref = _merge(layer, _softmax_ref(*_split(layer, x), allowed))
    torch.testing.assert_close(layer(x, mask)[mask], ref[mask], **TOL64)


def test_linformer_with_identity_projections_is_full_attention():
    l = 12
    lin = _build("linformer", l_max=l, proj_len=l).double()
    with torch.no_grad():
        lin.proj_k.copy_(torch.eye(l))
        lin.proj_v.copy_(torch.eye(l))
    full = _build("transformer").double()
    full.load_state_dict({k: v for k, v in lin.state_dict().items() if not k.startswith("proj")})
    x = torch.randn(2, l, H, dtype=torch.float64)
    torch.testing.assert_close(lin(x), full(x), **TOL64)


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_equals_its_definition(share_kv):
    layer = _build("linformer", l_max=40, proj_len=6, share_kv=share_kv).double()
    x, mask = torch.randn(2, 23, H, dtype=torch.float64), _mask([23, 11], 23)
    q, k, v = _split(layer, x)
    keep = mask[:, None, :, None].double()
    e_p = layer.proj_k[:, :23]
    f_p = e_p if share_kv else layer.proj_v[:, :23]
    ref = _softmax_ref(q, e_p @ (k * keep), f_p @ (v * keep), torch.ones(1, 1, 23, 6, dtype=torch.bool))
    torch.testing.assert_close(layer(x, mask), _merge(layer, ref), **TOL64)


def test_orthogonal_features():
    w = orthogonal_gaussian(20, 8, torch.Generator().manual_seed(0)).double()  # blocks of 8, 8, 4 rows
    assert w.shape == (20, 8)
    for blk in (w[:8], w[8:16], w[16:]):
        gram = blk @ blk.T
        # rows orthogonal up to float32 storage (~1e-7 relative to |w|^2 ~ 8)
        torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), atol=1e-5, rtol=0)
    assert not torch.allclose(w.norm(dim=1), w.norm(dim=1)[:1])  # chi-distributed norms, not all sqrt(d)


def test_favor_features_are_positive_and_padded_keys_zero():
    g = torch.Generator().manual_seed(0)
    w = orthogonal_gaussian(32, 8, g).double()
    x, mask = 3 * torch.randn(2, 2, 10, 8, dtype=torch.float64), _mask([10, 4], 10)
    assert (favor_features(x, w) > 0).all()
    phi_k = favor_features(x, w, mask, is_query=False)
    assert (phi_k[mask[:, None].expand(-1, 2, -1)] > 0).all() and (phi_k[:, :, 4:][1] == 0).all()
    big = favor_features(30 * x.float(), w.float())  # exp(W x) alone would overflow float32 here
    assert torch.isfinite(big).all() and torch.equal(big.amax(-1), torch.full((2, 2, 10), 32 ** -0.5))


@pytest.mark.parametrize("causal", [False, True])
def test_performer_equals_its_definition(causal):
    """The stabilising shifts cancel: same output as the unshifted features exp(W x - |x|^2/2) / sqrt(m)."""
    l = CHUNK + 30  # crosses a causal chunk boundary
    layer = _build("performer", n_features=16, causal=causal).double().eval()
    x, mask = torch.randn(2, l, H, dtype=torch.float64), _mask([l, 50], l)
    q, k, v = (t * (H // N_HEADS) ** -0.25 for t in _split(layer, x))
    w = layer.features
    phi = lambda t: torch.exp(t @ w.T - t.square().sum(-1, keepdim=True) / 2) / math.sqrt(16)
    ref = _merge(layer, _kernel_ref(phi(q), phi(k), v / (H // N_HEADS) ** -0.25, _allowed(mask, l, causal)))
    torch.testing.assert_close(layer(x, mask)[mask], ref[mask], **TOL64)


def test_performer_error_to_softmax_attention_shrinks_with_more_features():
    full = _build("transformer").double()
    x, mask = 0.5 * torch.randn(2, 24, H, dtype=torch.float64), _mask([24, 15], 24)
    exact = full(x, mask)[mask]
    errors = []
    for m in (4, 64, 1024):
        err = 0.0
        for seed in range(4):  # average a few draws: the estimator's error is random
            layer = _build("performer", n_features=m, feature_seed=seed).double().eval()
            layer.load_state_dict({**full.state_dict(), "features": layer.features})
            err += (layer(x, mask)[mask] - exact).abs().mean().item() / 4
        errors.append(err)
    assert errors[0] > errors[1] > errors[2], errors  # error ~ 1/sqrt(m): 16x more features, ~4x less error


def test_performer_redraws_only_in_training():
    x = torch.randn(1, 10, H)
    layer = _build("performer", feature_seed=3)
    assert torch.equal(layer.features, _build("performer", feature_seed=3).features)
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)  # training: fresh features every call
    (y1 + y2).sum().backward()  # two forwards before one backward (the dual-input head): the redraw is not in place
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    fixed = _build("performer", redraw=False).train()
    assert torch.equal(fixed(x), fixed(x))


@pytest.mark.parametrize("causal", [False, True])
def test_linear_transformer_equals_its_definition(causal):
    l = 2 * CHUNK + 13  # causal: three chunks, the last one partial
    layer = _build("linear_transformer", causal=causal).double()
    x, mask = torch.randn(2, l, H, dtype=torch.float64), _mask([l, 70], l)
    q, k, v = _split(layer, x)
    phi = lambda t: torch.nn.functional.elu(t) + 1
    ref = _merge(layer, _kernel_ref(phi(q), phi(k), v, _allowed(mask, l, causal)))
    torch.testing.assert_close(layer(x, mask)[mask], ref[mask], **TOL64)


def test_linear_transformer_step_mode_equals_causal_forward():
    layer = _build("linear_transformer", causal=True).eval()
    x = torch.randn(2, CHUNK + 6, H)
    state = layer.default_state(2)
    assert state[0].shape == (2, N_HEADS, H // N_HEADS, H // N_HEADS) and state[1].shape == (2, N_HEADS, H // N_HEADS)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        steps.append(y_t)
    # float32 recurrence vs float32 chunked sums of the same terms: a few ulps of |y| ~ 1
    torch.testing.assert_close(torch.stack(steps, 1), layer(x), atol=1e-5, rtol=1e-5)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="linformer cannot be causal"):
        _build("linformer", causal=True)
    with pytest.raises(ValueError, match="exceeds the Linformer projection's l_max 16"):
        _build("linformer", l_max=16)(torch.randn(1, 17, H))
    with pytest.raises(ValueError, match="window must be >= 1"):
        _build("local_attention", window=0)
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        _build("performer", n_features=0)
    with pytest.raises(ValueError, match="step mode needs a causal layer"):
        _build("linear_transformer").default_state(1)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        build_layer("performer", d_model=10, l_max=8, n_heads=4)
