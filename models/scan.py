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

Also here: ``diagonal_step``, one position of that recurrence with a complex input and read-out (S5's and LRU's step
mode), and Mamba's selective scan h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t, y_t = C_t h_t + D u_t with its
three plain-torch forms (same signature): ``selective_scan_ref`` (the loop, the definition), ``selective_scan_parallel``
(``scan`` over the whole length) and ``selective_scan_chunked`` (chunks in sequence, hand-written backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.precision import at_least_float32, autocast_off, float32_backward

__all__ = ["scan", "scan_sequential", "complex_in", "real_out", "complex_in_matrix", "real_out_matrix", "diagonal_step",
           "selective_scan_ref", "selective_scan_parallel",
           "selective_scan_chunked"]


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


def complex_in_matrix(w: torch.Tensor) -> torch.Tensor:
    """w (N, H) complex -> (H, 2N) real, [re_0, im_0, re_1, im_1, ...]: x @ it, viewed as complex, is x w^T."""
    n, h = w.shape
    return torch.view_as_real(w.transpose(0, 1)).reshape(h, 2 * n)


def real_out_matrix(c: torch.Tensor) -> torch.Tensor:
    """c (H, N) complex -> (2N, H) real: view_as_real(z) (..., 2N) @ it is Re(z c^T) = z_re c_re - z_im c_im."""
    h, n = c.shape
    return torch.stack([c.real.T, -c.imag.T], dim=1).reshape(2 * n, h)


def complex_in(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (..., H) real, w (N, H) complex -> x w^T (..., N) complex, as one real matmul."""
    return torch.view_as_complex((x @ complex_in_matrix(w)).view(*x.shape[:-1], w.shape[0], 2))


def real_out(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """z (..., N) complex, c (H, N) complex -> Re(z c^T) (..., H) real, as one real matmul."""
    return torch.view_as_real(z).reshape(*z.shape[:-1], 2 * c.shape[1]) @ real_out_matrix(c)


def diagonal_step(x_t: torch.Tensor, state: torch.Tensor, lam: torch.Tensor, w_in: torch.Tensor,
                  w_out: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of x_t = lam x_{t-1} + W u_t, y_t = Re(C x_t) + D u_t (S5, LRU) in four tensor ops.

    x_t (B, H) real, state (B, N) complex, lam (N,) complex, w_in = complex_in_matrix(W) (H, 2N),
    w_out = real_out_matrix(C) (2N, H), d (H,) -> (y_t (B, H), new state (B, N)); at least float32, autocast off.
    """
    if torch.is_autocast_enabled(x_t.device.type):      # (entering the context costs as much as the step: only then)
        with autocast_off(x_t):
            return diagonal_step(x_t, state, lam, w_in, w_out, d)
    x_t = at_least_float32(x_t)
    bu = torch.view_as_complex((x_t @ w_in).view(x_t.shape[0], -1, 2))           # (B, N) = W u_t
    state = torch.addcmul(bu, lam, state)                                         # (B, N)
    y = torch.addmm(d * x_t, torch.view_as_real(state).view(x_t.shape[0], -1), w_out)  # (B, H)
    return y, state


# -- Mamba's selective scan: u, delta (B, E, L); A (E, N); B, C (B, N, L); D (E,) -> y (B, E, L) ---------------------
# h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t (h_{-1} = 0), y_t = C_t h_t + D u_t, per channel e: the recurrence
# above with a_t = exp(Delta_t A) and b_t = Delta_t u_t B_t, both (B, E, L, N) when materialised whole.
def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, one step at a time: h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t, y_t = C_t h_t + D u_t;
    with the gate z (B, E, L): y_t SiLU(z_t) (as mamba_ssm's ``selective_scan_fn``)."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])                   # (B, E, N), h_{-1} = 0
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]                                          # (B, E, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))                          # (B, E)
    y = torch.stack(ys, -1) + D[:, None] * u
    return y if z is None else y * z * torch.sigmoid(z)


def selective_scan_parallel(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                            D: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """``selective_scan_ref``'s recurrence by the parallel ``scan`` over the whole length.

    Cost: O(B E N L) work in 2 log2(L) levels, but the decays, inputs and states (B, E, L, N) are materialised and
    kept for the backward: a training step of the efficiency sweep's Mamba (4 x 256, bidirectional) at L 1024,
    batch 4 took 12.4 s and 4.8 GB on 2 EPYC threads (``selective_scan_chunked``: 2.7 s, 0.78 GB).
    """
    dt = delta[..., None]                                                  # (B, E, L, 1)
    a = torch.exp(dt * A[:, None, :])                                      # (B, E, L, N)  Abar = exp(Delta A)
    b = (dt * u[..., None]) * B.transpose(1, 2)[:, None]                   # (B, E, L, N)  Bbar u = Delta B u
    h = scan(a, b)                                                         # (B, E, L, N)
    y = torch.einsum("beln,bln->bel", h, C.transpose(1, 2)) + D[:, None] * u  # (B, E, L)
    return y if z is None else y * F.silu(z)


CHUNK_ELEMENTS = 2 ** 23  # default chunk: about this many (T, B, E, N) elements per chunk buffer (32 MiB in float32)


def _chunk_states(dt: torch.Tensor, u: torch.Tensor, b_sel: torch.Tensor, A: torch.Tensor, h0: torch.Tensor,
                  a: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk, time-major: dt, u (T, B, E), b_sel (T, B, N), h0 (B, E, N) -> (a, h), each (T, B, E, N), written
    into the buffers ``a`` and ``h`` (reused from chunk to chunk: fresh large tensors cost page faults)."""
    a, h = a[:dt.shape[0]], h[:dt.shape[0]]
    torch.mul(dt[..., None], A, out=a).exp_()                              # exp(Delta_t A)
    torch.mul((dt * u)[..., None], b_sel[:, :, None, :], out=h)            # Delta_t u_t B_t
    h[0].addcmul_(a[0], h0)                                                # in place: b_t becomes h_t
    for t in range(1, h.shape[0]):                                         # sequential, one fused op per step
        h[t].addcmul_(a[t], h[t - 1])
    return a, h


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, length)) for s in range(0, length, chunk)]


def _time_major(s: int, e: int, *xs: torch.Tensor) -> list[torch.Tensor]:
    """Positions s..e-1 of each (B, ., L) tensor as a contiguous (T, B, .) one."""
    return [x[..., s:e].permute(2, 0, 1).contiguous() for x in xs]


class _SelectiveScanChunked(torch.autograd.Function):
    """Chunk by chunk, time-major; saves only the inputs and each chunk's initial state, recomputes in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, chunk: int):
        batch, e_dim, length = u.shape
        spans = _chunks(length, chunk)
        h0s = u.new_empty(len(spans), batch, e_dim, A.shape[1])                          # (chunks, B, E, N)
        buf_a, buf_h = (u.new_empty(min(chunk, length), *h0s.shape[1:]) for _ in range(2))
        y = u.new_empty(length, batch, e_dim)                                            # (L, B, E)
        h0s[0].zero_()
        for i, (s, e) in enumerate(spans):
            dt, uc, bc, cc = _time_major(s, e, delta, u, B, C)
            _, hs = _chunk_states(dt, uc, bc, A, h0s[i], buf_a, buf_h)
            torch.matmul(hs, cc[..., None], out=y[s:e, :, :, None])                     # C_t h_t
            y[s:e].addcmul_(uc, D)                                                       # + D u_t
            if z is not None:
                y[s:e].mul_(F.silu(_time_major(s, e, z)[0]))                             # gate
            if i + 1 < len(spans):
                h0s[i + 1] = hs[-1]
        ctx.save_for_backward(u, delta, A, B, C, D, z, h0s)                              # the inputs as given
        ctx.chunk = chunk
        return y.permute(1, 2, 0)                                                        # (B, E, L)

    @staticmethod
    @float32_backward
    def backward(ctx, gy):
        u, delta, A, B, C, D, z, h0s = ctx.saved_tensors
        length = u.shape[-1]
        g_z = None if z is None else u.new_empty(length, *u.shape[:2])                   # (L, B, E)
        g_u, g_dt = u.new_empty(length, *u.shape[:2]), u.new_empty(length, *u.shape[:2])   # (L, B, E)
        g_b, g_c = B.new_empty(length, *B.shape[:2]), C.new_empty(length, *C.shape[:2])      # (L, B, N)
        g_a, g_d = torch.zeros_like(A), torch.zeros_like(D)
        carry = torch.zeros_like(h0s[0])                     # dL/dh at the chunk's end through later chunks
        buf_a, buf_h, buf_g = (u.new_empty(min(ctx.chunk, length), *h0s.shape[1:]) for _ in range(3))
        spans = _chunks(length, ctx.chunk)
        for i in range(len(spans) - 1, -1, -1):
            s, e = spans[i]
            dt, uc, bc, cc, gyc = _time_major(s, e, delta, u, B, C, gy)
            a, h = _chunk_states(dt, uc, bc, A, h0s[i], buf_a, buf_h)
            if z is not None:                                # out = y SiLU(z): recompute y, then dL/dy and dL/dz
                zc, yc = _time_major(s, e, z)[0], torch.matmul(h, cc[..., None])[..., 0].addcmul_(uc, D)
                sig = torch.sigmoid(zc)
                g_z[s:e] = gyc * yc * sig * (1 + zc * (1 - sig))                        # SiLU'(z) = s (1 + z (1 - s))
                gyc = gyc * zc * sig
            torch.matmul(gyc[:, :, None, :], h, out=g_c[s:e, :, None, :])               # sum_e gy_t h_t
            g = torch.mul(gyc[..., None], cc[:, :, None, :], out=buf_g[:e - s])         # (T, B, E, N): dL/dh_t ...
            g[-1].add_(carry)
            for t in range(g.shape[0] - 2, -1, -1):                                      # ... + a_{t+1} dL/dh_{t+1}
                g[t].addcmul_(a[t + 1], g[t + 1])
            ga = a.mul_(g)                                   # a_t g_t, reusing a's memory
            carry.copy_(ga[0])                               # dL/dh_{-1} = a_0 g_0, for the chunk before
            ga[1:].mul_(h[:-1])                              # a_t g_t h_{t-1} = dL/d(Delta_t A)
            ga[0].mul_(h0s[i])
            tb, ne = ga.shape[0] * ga.shape[1], ga.shape[2]
            ga_e = ga.view(tb, ne, -1).transpose(0, 1)                                   # (E, T B, N), a view
            g_a.add_(torch.bmm(dt.view(tb, ne).t().contiguous().unsqueeze(1), ga_e)[:, 0])  # sum_{t,b} ga Delta
            g_dt[s:e] = torch.bmm(ga_e, A[:, :, None])[..., 0].t().view_as(dt)          # sum_n ga A
            gbu = torch.matmul(g, bc[..., None])[..., 0]                                # (T, B, E): sum_n g B
            torch.matmul((dt * uc)[:, :, None, :], g, out=g_b[s:e, :, None, :])         # sum_e g Delta u
            g_dt[s:e].addcmul_(gbu, uc)
            torch.addcmul(gyc * D, gbu, dt, out=g_u[s:e])
            g_d.add_((gyc * uc).sum((0, 1)))
        t = lambda x: x.permute(1, 2, 0)                     # noqa: E731  (L, B, .) -> (B, ., L)
        return t(g_u), t(g_dt), g_a, t(g_b), t(g_c), g_d, None if z is None else t(g_z), None


def selective_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor, z: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """``selective_scan_ref``'s recurrence in chunks of ``chunk`` positions: O(B E N chunk) working memory, and
    O(B E N L / chunk) kept for the backward (one state per chunk) besides the inputs.

    Within a chunk, a_t = exp(Delta_t A) and b_t are built for all its positions at once (T, B, E, N) and the state
    advances by one fused multiply-add per position; the output C_t h_t is one batched matmul per chunk. Only the
    inputs and each chunk's initial state (B, E, N) are kept for the backward, which recomputes a chunk's states
    from its initial one and runs the adjoint recurrence g_t = C_t gy_t + a_{t+1} g_{t+1} backwards through it.
    The gate z is applied inside (y SiLU(z), as mamba_ssm does), so neither y nor SiLU(z) is kept for the backward.
    ``chunk`` None: about CHUNK_ELEMENTS elements per chunk buffer (32 positions at B 32, E 512, N 16; 256 at B 4).
    """
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // (u.shape[0] * u.shape[1] * A.shape[1]))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dtype = torch.promote_types(torch.promote_types(u.dtype, A.dtype), torch.float32)
    with autocast_off(u):
        return _SelectiveScanChunked.apply(*(x.to(dtype) for x in (u, delta, A, B, C, D)),
                                           None if z is None else z.to(dtype), chunk)
