"""Mixed precision: which parts of the models opt out of autocast, and the two helpers they use to do it.

Training under ``torch.autocast(device_type, dtype=torch.bfloat16)`` (or float16 with a GradScaler) runs the
linear maps, convolutions and attention of every layer in the low-precision dtype, as autocast chooses. Where
precision matters the models turn autocast off and cast their inputs to float32 / complex64 explicitly:

  * S4, S4D (models/s4): the whole SSM kernel (discretisation, Cauchy / Vandermonde sums, the Woodbury
    correction, the inverse FFT) and the FFT convolution. Decays |Ā| close to 1 are the point of an SSM, and bf16
    (8-bit mantissa, spacing 2^-8 just below 1) cannot even represent them: 0.999 rounds to 1.0. The kernel is
    summed over N terms with cancellation, and the convolution sums over all L positions. torch.fft does not take
    bf16 either (CPU autocast casts FFTs to float32; CUDA autocast does not, and cuFFT rejects bf16).
  * S5, LRU, Mamba: discretisation, the input projection into the complex state, the linear recurrence
    (models/scan.py) and the read-out, for the same reason: a state carried over L steps with |a| near 1.
    Mamba's per-position projections (in_proj, conv1d, x_proj, out_proj) stay in autocast's dtype.
  * LSTM, GRU: the whole fused recurrence. Their cell / hidden state is the same kind of recurrence
    (c_t = f_t c_{t-1} + i_t g_t); torch's fused kernels would keep it in bf16 between steps under autocast.
  * Performer, linear Transformer: the feature maps and the kernelised attention (models.efficient_attention
    ``linear_attention``). FAVOR+'s features are exp(w.x - |x|^2/2 - max): bf16 rounds each of those terms by up to
    2^-9 of its size, which the exp turns into a relative error of the feature; causal linear attention carries
    running sums over L.
Softmax attention (transformer, local_attention, linformer) stays under autocast: the fused attention kernels keep
the softmax and its sums in float32. Norms, GELU, GLU, residuals and the classifier are autocast's choice.

Custom autograd Functions in these paths also turn autocast off in their backward (``float32_backward``): a
backward called inside an autocast region would otherwise run its matrix products in bf16.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

__all__ = ["autocast_off", "at_least_float32", "float32_backward"]


def autocast_off(device: torch.device | str | torch.Tensor) -> torch.autocast:
    """A context with autocast disabled for the device (type) of ``device``; code inside runs in the dtypes it is
    given, so cast its inputs (``at_least_float32``). Autocast of other device types is untouched."""
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is a lower-precision float (bf16, fp16); float32, float64 and complex pass unchanged."""
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


def float32_backward(backward: Callable) -> Callable:
    """Decorator for ``torch.autograd.Function.backward(ctx, *grads)``: runs it with autocast off on the gradients'
    device, so a backward called inside an autocast region computes in the dtypes the forward saved."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        device = next((g.device for g in grads if isinstance(g, torch.Tensor)), torch.device("cpu"))
        with autocast_off(device):
            return backward(ctx, *grads)
    return wrapper
