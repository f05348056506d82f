"""Key/value-cache generation of the causal ``transformer`` layer against its full-sequence forward."""
from __future__ import annotations

import pytest
import torch

import models  # noqa: F401  (registers the layers)
from models.registry import build_layer

# float32: step and forward run different attention kernels (one query vs a causal L x L block), so they differ
# by summation order only, a few ulps of O(1) outputs; float64 leaves only rounding at 1e-16.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def causal_layer(n_heads: int, dtype: torch.dtype = torch.float32, d_model: int = 24, l_max: int = 37):
    torch.manual_seed(0)
    return build_layer("transformer", d_model=d_model, l_max=l_max, n_heads=n_heads, attn_dropout=0.1,
                       causal=True).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n_heads", [1, 4])
def test_step_equals_causal_forward(n_heads, dtype):
    layer = causal_layer(n_heads, dtype)
    x = torch.randn(3, 37, 24, generator=torch.Generator().manual_seed(1), dtype=dtype)  # fills the cache exactly
    with torch.no_grad():
        full = layer(x)
        state, outs = layer.default_state(3), []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state)
            outs.append(y)
    assert state.filled == 37 and state.k.dtype == dtype
    torch.testing.assert_close(torch.stack(outs, 1), full, **TOL[dtype])


def test_non_causal_layer_has_no_state():
    layer = build_layer("transformer", d_model=16, l_max=8, n_heads=4)
    with pytest.raises(ValueError, match="causal"):
        layer.default_state(2)


def test_cache_shape_and_full_cache_raises():
    layer = causal_layer(4, l_max=64)
    state = layer.default_state(2, max_len=3)
    assert state.k.shape == state.v.shape == (2, 4, 3, 6)  # (B, n, T, E): 2 * B * H * T floats in all
    assert layer.default_state(2).max_len == 64           # l_max by default
    x = torch.randn(2, 24)
    with torch.no_grad():
        for _ in range(3):
            _, state = layer.step(x, state)
        with pytest.raises(RuntimeError, match="cache is full"):
            layer.step(x, state)


def test_cache_is_not_reallocated():
    layer = causal_layer(4)
    state = layer.default_state(2)
    k_ptr, v_ptr = state.k.data_ptr(), state.v.data_ptr()
    with torch.no_grad():
        for _ in range(5):
            _, state = layer.step(torch.randn(2, 24), state)
            assert (state.k.data_ptr(), state.v.data_ptr()) == (k_ptr, v_ptr)
    assert state.filled == 5


def test_step_with_a_narrower_qkv_width_and_the_shared_attention_plumbing():
    from models.transformer import HeadAttention

    torch.manual_seed(0)
    layer = build_layer("transformer", d_model=24, l_max=11, n_heads=2, d_qkv=8, bias=False, causal=True).eval()
    x = torch.randn(2, 11, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, state, outs = layer(x), layer.default_state(2), []
        for t in range(11):
            y, state = layer.step(x[:, t], state)
            outs.append(y)
    assert state.k.shape == (2, 2, 11, 4)  # (B, n, T, E) with E = d_qkv / n
    torch.testing.assert_close(torch.stack(outs, 1), full, **TOL[torch.float32])
    # one copy of the q/k/v projection, head split and output projection for every attention layer
    for name in ("transformer", "local_attention", "linformer", "performer", "linear_transformer"):
        assert isinstance(build_layer(name, d_model=16, l_max=8, n_heads=4), HeadAttention), name
