"""The transformer layer's d_qkv and bias options (LRA's qkv_dim and bias-free attention) against float64 attention."""
import math

import torch

from models.registry import build_layer


def _reference(x, wqkv, bqkv, wo, bo, n_heads, mask=None):
    """Multi-head softmax attention written out in float64: softmax(q k^T / sqrt(E)) v per head, then W_o."""
    x = x.double()
    qkv = x @ wqkv.double().T + (0 if bqkv is None else bqkv.double())
    q, k, v = qkv.chunk(3, -1)
    b, l, width = q.shape
    e = width // n_heads
    heads = []
    for i in range(n_heads):
        s = slice(i * e, (i + 1) * e)
        scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(e)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[..., s])
    return torch.cat(heads, -1) @ wo.double().T + (0 if bo is None else bo.double())


def test_narrow_qkv_without_bias_equals_float64_attention():
    torch.manual_seed(0)
    layer = build_layer("transformer", d_model=16, l_max=12, n_heads=2, d_qkv=8, bias=False).eval()
    assert layer.qkv.weight.shape == (24, 16) and layer.out.weight.shape == (16, 8)
    assert layer.qkv.bias is None and layer.out.bias is None
    assert sum(p.numel() for p in layer.parameters()) == 4 * 16 * 8  # LRA's attention: 4 x emb x qkv, no bias
    x = torch.randn(3, 12, 16)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False
    got = layer(x, mask)
    want = _reference(x, layer.qkv.weight, None, layer.out.weight, None, 2, mask)
    assert torch.allclose(got.double()[mask], want[mask], atol=1e-5)
    wide = build_layer("transformer", d_model=16, l_max=12, n_heads=2).eval()  # default: d_qkv = d_model, biases
    assert torch.allclose(wide(x).double(), _reference(x, wide.qkv.weight, wide.qkv.bias, wide.out.weight,
                                                       wide.out.bias, 2), atol=1e-5)


def test_narrow_qkv_step_equals_causal_forward():
    torch.manual_seed(1)
    layer = build_layer("transformer", d_model=16, l_max=10, n_heads=4, d_qkv=8, causal=True).eval()
    x = torch.randn(2, 10, 16)
    full = layer(x)
    with torch.inference_mode():
        state = layer.default_state(2)
        steps = []
        for t in range(10):
            y, state = layer.step(x[:, t], state)
            steps.append(y)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
