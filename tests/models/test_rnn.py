"""LSTM and GRU: step mode (torch's fused cell ops) against the full-sequence nn.LSTM / nn.GRU forward, in float32
and float64, at batch > 1 and under inference_mode; step under bf16 autocast; packing for padded batches."""
import pytest
import torch

import models  # noqa: F401  (registers the layers)
from models.registry import build_layer
from steps import assert_steps_equal_forward, stepped  # tests/models/steps.py (its folder is on sys.path under pytest)

CASES = [(kind, k) for kind in ("lstm", "gru") for k in (1, 2)]


@pytest.mark.parametrize("kind, n_rnn_layers", CASES, ids=[f"{kind}-{k}layers" for kind, k in CASES])
def test_step_mode_equals_forward(kind, n_rnn_layers):
    torch.manual_seed(0)
    layer = build_layer(kind, d_model=16, l_max=64, bidirectional=False, n_rnn_layers=n_rnn_layers).eval()
    # float32: the cell op vs the sequence kernel (oneDNN for the LSTM), |h| < 1: a few ulps;
    # float64: the same arithmetic up to the order of the gate sums
    assert_steps_equal_forward(layer, torch.randn(3, 40, 16), f32=(1e-6, 1e-5), f64=(1e-13, 1e-12))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_step_under_autocast_stays_float32(kind):
    torch.manual_seed(0)
    layer = build_layer(kind, d_model=8, l_max=16, bidirectional=False).eval()
    x = torch.randn(2, 10, 8)
    with torch.inference_mode():
        want = stepped(layer, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = stepped(layer, x.bfloat16())
    assert got.dtype == torch.float32
    # only the input's rounding to bf16 (2^-9 relative) differs; the recurrence itself runs in float32
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)


def test_step_errors():
    with pytest.raises(RuntimeError, match="default_state"):
        build_layer("gru", d_model=8, l_max=16, bidirectional=False).step(torch.zeros(1, 8), None)
    with pytest.raises(ValueError, match="step mode needs a causal layer"):
        build_layer("lstm", d_model=8, l_max=16).default_state(1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_padding_equals_each_sequence_alone(kind):
    torch.manual_seed(0)
    layer = build_layer(kind, d_model=8, l_max=32).eval()  # bidirectional: the backward pass starts at the real end
    x = torch.randn(3, 30, 8)
    lengths = [30, 17, 1]
    mask = torch.arange(30)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        y = layer(x, mask)
        for b, n in enumerate(lengths):
            # float32, the same kernels on a shorter batch of one
            torch.testing.assert_close(y[b, :n], layer(x[b:b + 1, :n])[0], atol=1e-6, rtol=1e-5)
    assert y[~mask].abs().max() == 0
