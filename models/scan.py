"""Parallel scan of the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (h_{-1} = 0), and its reference loop.

Dimensions: L length (the scanned axis, always dim -2), N state size (dim -1), leading dims batch-like.
a (..., L, N) or time-invariant (..., 1, N) / (N,); b (..., L, N); real or complex (promoted to a common dtype).

The recurrence is the prefix "sum" of the associative operator (a1, b1) • (a2, b2) = (a1 a2, a2 b1 + b2)
(Blelloch 1990; Martin & Cundy, ICLR 2018; S5 uses it via ``jax.lax.associative_scan``). ``scan`` evaluates it
by recursive pair-halving, the work-efficient formulation:

    pair up (2i, 2i+1):   a'_i = a_{2i+1} a_{2i},   b'_i = a_{2i+1} b_{2i} + b_{2i+1}   (length floor(L/2))
    recurse:              h_{2i+1} = h'_i                                                (the odd positions)
    fill in:              h_{2i}   = a_{2i} h_{2i-1} + b_{2i}                             (the even positions)

Cost: a level of length n does 1.5 n multiply(-add)s per state; lengths halve, so about 3 L N in all: O(L N)
work (the sequential loop does L N), in 2 ceil(log2 L) sequential levels. A time-invariant ``a`` is never expanded
along L (a' = a^2 stays (…, 1, N)).
Memory: the forward runs without autograd and keeps only h (…, L, N) (plus ``a`` as given) for the backward. Its
transient peak is about 2-3x the output: the levels' pairs sum to one more output's worth, two if ``a`` is
time-varying; ``reverse`` adds flipped copies of the inputs. The backward is one more scan, of the adjoint
recurrence g_t = dL/dh_t + conj(a_{t+1}) g_{t+1} run in the opposite direction, with dL/db_t = g_t and
dL/da_t = g_t conj(h_{t-1}) (PyTorch's convention for complex gradients); its peak is a few (…, L, N) tensors.
Hillis–Steele doubling would instead cost O(L N log L) work and, under autograd, O(L N log L) memory.
Precision: at least float32 / complex64 (lower-precision inputs are cast up), autocast off, backward included: a
state carried over L steps with |a| near 1 is what bf16 cannot hold (models/precision.py).
"""
from __future__ import annotations

import torch

from models.precision import autocast_off, float32_backward

__all__ = ["scan", "scan_sequential", "complex_in", "real_out"]


def _scan_fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h with h_t = a_t h_{t-1} + b_t along dim -2; a (..., L or 1, N), b (..., L, N); no autograd bookkeeping."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    b = b.expand(shape)
    length = shape[-2]
    if length <= 1:
        return b.clone()
    invariant = a.shape[-2] == 1
    half, n_even = length // 2, (length + 1) // 2            # pairs (2i, 2i+1); even positions 0, 2, 4, ...
    a_even = a if invariant else a[..., 0::2, :]             # (..., n_even, N)
    a_odd = a if invariant else a[..., 1::2, :]              # (..., half, N)
    b_even, b_odd = b[..., 0::2, :], b[..., 1::2, :]
    a_pair = a_odd * (a_even if invariant else a_even[..., :half, :])
    b_pair = torch.addcmul(b_odd, a_odd, b_even[..., :half, :])
    h_odd = _scan_fwd(a_pair, b_pair)                        # (..., half, N): h at positions 1, 3, 5, ...
    h = torch.empty(shape, dtype=h_odd.dtype, device=h_odd.device)
    h[..., 1::2, :] = h_odd
    h[..., 0, :] = b[..., 0, :]
    if n_even > 1:                                           # h_{2i} = a_{2i} h_{2i-1} + b_{2i}, i >= 1
        h[..., 2::2, :] = torch.addcmul(b_even[..., 1:, :], a_even if invariant else a_even[..., 1:, :],
                                        h_odd[..., : n_even - 1, :])
    return h


def _scan_dir(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``_scan_fwd`` run forwards, or backwards (h_t = a_t h_{t+1} + b_t) through flips."""
    if reverse:
        return _scan_fwd(a.flip(-2), b.flip(-2)).flip(-2)
    return _scan_fwd(a, b)


def _shift(x: torch.Tensor, back: bool) -> torch.Tensor:
    """(..., L, N) -> x_{t-1} (``back``) or x_{t+1}, with zeros where that index leaves [0, L)."""
    zero = torch.zeros_like(x[..., :1, :])
    return torch.cat([zero, x[..., :-1, :]], dim=-2) if back else torch.cat([x[..., 1:, :], zero], dim=-2)


class _Scan(torch.autograd.Function):
    """The scan with a hand-written backward: the adjoint recurrence, one scan in the opposite direction."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
        h = _scan_dir(a, b, reverse)
        ctx.save_for_backward(a, h)
        ctx.b_shape, ctx.reverse = b.shape, reverse
        return h

    @staticmethod
    @float32_backward
    def backward(ctx, gh: torch.Tensor):
        a, h = ctx.saved_tensors
        ac = a.conj()
        # forward scan: g_t = gh_t + conj(a_{t+1}) g_{t+1} (the last a multiplies g_L = 0); reverse: mirror image
        a_adj = ac if a.shape[-2] == 1 else _shift(ac, back=ctx.reverse)
        g = _scan_dir(a_adj, gh, not ctx.reverse)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:                          # dL/da_t = g_t conj(h_{t-1}), or conj(h_{t+1})
            grad_a = (g * _shift(h, back=not ctx.reverse).conj()).sum_to_size(a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = g.sum_to_size(ctx.b_shape)
        return grad_a, grad_b, None


def _prepare(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if b.dim() < 2:
        raise ValueError(f"b must be (..., L, N), got shape {tuple(b.shape)}")
    if a.dim() == 1:
        a = a.unsqueeze(0)                                   # (N,) -> (1, N): time-invariant
    if a.shape[-2] not in (1, b.shape[-2]):
        raise ValueError(f"a's length axis (dim -2) must be 1 or {b.shape[-2]}, got shape {tuple(a.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)  # bf16 / fp16 -> float32
    return a.to(dtype), b.to(dtype)


def scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0 (or, ``reverse``, h_t = a_t h_{t+1} + b_t with h_L = 0).

    Args:
        a: (..., L, N), or time-invariant (..., 1, N) or (N,); broadcastable against b.
        b: (..., L, N).
        reverse: run from the end of the sequence to the start.

    Returns:
        h: the broadcast shape of a and b, in their promoted dtype (at least float32). Differentiable in a and b.
    """
    a, b = _prepare(a, b)
    with autocast_off(b):
        return _Scan.apply(a, b, reverse)


def scan_sequential(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Reference for ``scan``: the same recurrence as a plain Python loop over L (autograd differentiates it)."""
    a, b = _prepare(a, b)
    a, b = torch.broadcast_tensors(a, b)
    order = range(b.shape[-2] - 1, -1, -1) if reverse else range(b.shape[-2])
    h, out = torch.zeros_like(b[..., 0, :]), [None] * b.shape[-2]
    for t in order:
        h = a[..., t, :] * h + b[..., t, :]
        out[t] = h
    return torch.stack(out, dim=-2)


def complex_in(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (..., H) real, w (N, H) complex -> x w^T (..., N) complex, as one real matmul."""
    n, h = w.shape
    w_r = torch.view_as_real(w.transpose(0, 1)).reshape(h, 2 * n)  # (H, 2N): [re_0, im_0, re_1, im_1, ...]
    return torch.view_as_complex((x @ w_r).view(*x.shape[:-1], n, 2))


def real_out(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """z (..., N) complex, c (H, N) complex -> Re(z c^T) (..., H) real, as one real matmul."""
    h, n = c.shape
    w_r = torch.stack([c.real.T, -c.imag.T], dim=1).reshape(2 * n, h)  # (2N, H): Re z c = z_re c_re - z_im c_im
    return torch.view_as_real(z).reshape(*z.shape[:-1], 2 * n) @ w_r
