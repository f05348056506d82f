"""Triton backend for the S4 Cauchy and S4D Vandermonde sums, forward and backward (same signatures as reference.py).

Shapes: R rows, H channels, N state entries (terms summed over), L nodes / output length.

    cauchy_triton(v, z, w)[r, h, l]      = sum_n v[r, h, n] * K[h, n, l],  K = 1 / (z[l] - w[h, n])
    vandermonde_triton(v, x, L)[r, h, l] = sum_n v[r, h, n] * K[h, n, l],  K = exp(x[h, n] * l)

Both are the product of v (R x N) with a matrix K (N x L) per channel h that is never stored: each program
builds a tile of K in registers and contracts it with ``tl.dot`` (fp32 "ieee" precision, no TF32 rounding).
Triton has no complex type, so every complex tensor travels as two float32 planes (real, imaginary).

    forward   grid (L / BLOCK_L, H, R / BLOCK_R), loop over n:  out  = v @ K
    backward  grid (N / BLOCK_N, H), loops over r and l:        gv   = g @ conj(K)^T
                                                               gw_n = sum_r conj(v_rn) (g @ conj(K')^T)_rn
with K' = dK/dw = K^2 (Cauchy) or l * K (Vandermonde): PyTorch's complex convention grad = g * conj(d out / d in).

complex64 only (complex128 raises TypeError); no gradient w.r.t. the Cauchy nodes z (constants in S4).
On CPU tensors this runs only under TRITON_INTERPRET=1 (set before triton is imported).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # the dispatch catches this and reports the install hint
    raise ImportError(f"the Triton kernel backend needs triton: pip install -e '.[triton]' ({exc})") from exc

from models.s4.kernels.reference import check_operands

_CAUCHY, _VANDERMONDE = 0, 1


@triton.jit
def _entries(zr, zi, wr, wi, mask, KIND: tl.constexpr):
    """K and K' = dK/dw at broadcast (z, w) pairs as (re, im) planes, 0 outside mask; for Vandermonde zr is l, w is x."""
    if KIND == 0:  # Cauchy: K = 1 / (z - w), K' = K^2
        dr = tl.where(mask, zr - wr, 1.0)  # padded lanes may have z = w: keep them finite
        di = tl.where(mask, zi - wi, 0.0)
        s = 1.0 / (dr * dr + di * di)
        kr = dr * s
        ki = -di * s
        k2r = kr * kr - ki * ki
        k2i = 2.0 * kr * ki
    else:  # Vandermonde: K = exp(x l), K' = l K
        # Phase reduced to [-pi, pi] before cos/sin (whatever their lowering, accurate there), with 2*pi split in
        # two (Cody-Waite): turns * 6.28125 is exact for |turns| < 2**16, 1.93530718e-3 = 2*pi - 6.28125.
        phase = wi * zr
        turns = tl.floor(phase * 0.15915494309189535 + 0.5)
        phase = (phase - turns * 6.28125) - turns * 1.9353071795864769e-3
        mag = tl.exp(wr * zr)
        kr = mag * tl.cos(phase)
        ki = mag * tl.sin(phase)
        k2r = zr * kr
        k2i = zr * ki
    zero = 0.0
    return tl.where(mask, kr, zero), tl.where(mask, ki, zero), tl.where(mask, k2r, zero), tl.where(mask, k2i, zero)


@triton.jit
def _kahan_add(acc, comp, x):
    """acc + x, with comp carrying the rounding error (Kahan), so a sum over L / BLOCK_L partial dots stays accurate."""
    y = x - comp
    total = acc + y
    return total, (total - acc) - y


@triton.jit
def _forward_kernel(vr_ptr, vi_ptr, zr_ptr, zi_ptr, wr_ptr, wi_ptr, or_ptr, oi_ptr, R, H, N, L,
                    KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_l, h, pid_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_r, mask_l = offs_r < R, offs_l < L
    zr = tl.load(zr_ptr + offs_l, mask=mask_l, other=0.0)
    zi = tl.load(zi_ptr + offs_l, mask=mask_l, other=0.0)
    acc_r = tl.zeros((BLOCK_R, BLOCK_L), dtype=tl.float32)
    acc_i = tl.zeros((BLOCK_R, BLOCK_L), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        wr = tl.load(wr_ptr + h * N + offs_n, mask=mask_n, other=0.0)
        wi = tl.load(wi_ptr + h * N + offs_n, mask=mask_n, other=0.0)
        v_off = (offs_r[:, None] * H + h) * N + offs_n[None, :]          # (BLOCK_R, BLOCK_N)
        v_mask = mask_r[:, None] & mask_n[None, :]
        vr = tl.load(vr_ptr + v_off, mask=v_mask, other=0.0)
        vi = tl.load(vi_ptr + v_off, mask=v_mask, other=0.0)
        k_mask = mask_n[:, None] & mask_l[None, :]
        kr, ki, _, _ = _entries(zr[None, :], zi[None, :], wr[:, None], wi[:, None], k_mask, KIND)  # (BLOCK_N, BLOCK_L)
        acc_r = tl.dot(vr, kr, acc_r, input_precision="ieee")
        acc_r = tl.dot(-vi, ki, acc_r, input_precision="ieee")
        acc_i = tl.dot(vr, ki, acc_i, input_precision="ieee")
        acc_i = tl.dot(vi, kr, acc_i, input_precision="ieee")
    o_off = (offs_r[:, None] * H + h) * L + offs_l[None, :]              # (BLOCK_R, BLOCK_L)
    o_mask = mask_r[:, None] & mask_l[None, :]
    tl.store(or_ptr + o_off, acc_r, mask=o_mask)
    tl.store(oi_ptr + o_off, acc_i, mask=o_mask)


@triton.jit
def _backward_kernel(gr_ptr, gi_ptr, vr_ptr, vi_ptr, zr_ptr, zi_ptr, wr_ptr, wi_ptr,
                     gvr_ptr, gvi_ptr, gwr_ptr, gwi_ptr, R, H, N, L,
                     KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_n, h = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    wr = tl.load(wr_ptr + h * N + offs_n, mask=mask_n, other=0.0)
    wi = tl.load(wi_ptr + h * N + offs_n, mask=mask_n, other=0.0)
    gw_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    gw_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        av_r = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)  # sum_l g conj(K)
        av_i = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        aw_r = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)  # sum_l g conj(K')
        aw_i = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        cv_r = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)  # Kahan compensations of the four sums
        cv_i = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        cw_r = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        cw_i = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            mask_l = offs_l < L
            zr = tl.load(zr_ptr + offs_l, mask=mask_l, other=0.0)
            zi = tl.load(zi_ptr + offs_l, mask=mask_l, other=0.0)
            k_mask = mask_l[:, None] & mask_n[None, :]
            kr, ki, k2r, k2i = _entries(zr[:, None], zi[:, None], wr[None, :], wi[None, :], k_mask, KIND)  # (L, N)
            g_off = (offs_r[:, None] * H + h) * L + offs_l[None, :]      # (BLOCK_R, BLOCK_L)
            g_mask = mask_r[:, None] & mask_l[None, :]
            gr = tl.load(gr_ptr + g_off, mask=g_mask, other=0.0)
            gi = tl.load(gi_ptr + g_off, mask=g_mask, other=0.0)
            # (gr + i gi)(kr - i ki) = (gr kr + gi ki) + i (gi kr - gr ki); each block's partial sum is added with
            # Kahan compensation: plain fp32 accumulation over L = 4096 drifted to ~4x the reference's error (KeOps).
            part = tl.dot(gi, ki, tl.dot(gr, kr, input_precision="ieee"), input_precision="ieee")
            av_r, cv_r = _kahan_add(av_r, cv_r, part)
            part = tl.dot(-gr, ki, tl.dot(gi, kr, input_precision="ieee"), input_precision="ieee")
            av_i, cv_i = _kahan_add(av_i, cv_i, part)
            part = tl.dot(gi, k2i, tl.dot(gr, k2r, input_precision="ieee"), input_precision="ieee")
            aw_r, cw_r = _kahan_add(aw_r, cw_r, part)
            part = tl.dot(-gr, k2i, tl.dot(gi, k2r, input_precision="ieee"), input_precision="ieee")
            aw_i, cw_i = _kahan_add(aw_i, cw_i, part)
        v_off = (offs_r[:, None] * H + h) * N + offs_n[None, :]          # (BLOCK_R, BLOCK_N)
        v_mask = mask_r[:, None] & mask_n[None, :]
        tl.store(gvr_ptr + v_off, av_r, mask=v_mask)
        tl.store(gvi_ptr + v_off, av_i, mask=v_mask)
        vr = tl.load(vr_ptr + v_off, mask=v_mask, other=0.0)
        vi = tl.load(vi_ptr + v_off, mask=v_mask, other=0.0)
        # conj(v) * aw = (vr aw_r + vi aw_i) + i (vr aw_i - vi aw_r), summed over r
        gw_r += tl.sum(vr * aw_r + vi * aw_i, axis=0)
        gw_i += tl.sum(vr * aw_i - vi * aw_r, axis=0)
    tl.store(gwr_ptr + h * N + offs_n, gw_r, mask=mask_n)
    tl.store(gwi_ptr + h * N + offs_n, gw_i, mask=mask_n)


def _pow2(n: int, lo: int, hi: int) -> int:
    """Next power of two >= n, clamped to [lo, hi] (tl.dot needs every block dimension >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def _planes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.real.contiguous(), t.imag.contiguous()


def _blocks(r_: int, n_: int) -> dict:
    return dict(BLOCK_R=_pow2(r_, 16, 32), BLOCK_N=_pow2(n_, 16, 32), BLOCK_L=64)


class _Op(torch.autograd.Function):
    """out = v @ K(z, w) per channel; ``kind`` picks K. z holds the Cauchy nodes, or l = 0..L-1 for Vandermonde."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, kind: int) -> torch.Tensor:
        r_, h_, n_ = v.shape
        l_ = z.shape[0]
        vr, vi = _planes(v)
        zr, zi = _planes(z)
        wr, wi = _planes(w)
        out_r = torch.empty(r_, h_, l_, device=v.device, dtype=torch.float32)
        out_i = torch.empty_like(out_r)
        blocks = _blocks(r_, n_)
        grid = (triton.cdiv(l_, blocks["BLOCK_L"]), h_, triton.cdiv(r_, blocks["BLOCK_R"]))
        _forward_kernel[grid](vr, vi, zr, zi, wr, wi, out_r, out_i, r_, h_, n_, l_, KIND=kind, **blocks)
        ctx.save_for_backward(v, z, w)
        ctx.kind = kind
        return torch.complex(out_r, out_i)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, z, w = ctx.saved_tensors
        r_, h_, n_ = v.shape
        l_ = z.shape[0]
        gr, gi = _planes(g.to(torch.complex64))
        vr, vi = _planes(v)
        zr, zi = _planes(z)
        wr, wi = _planes(w)
        gv_r = torch.empty(r_, h_, n_, device=v.device, dtype=torch.float32)
        gv_i = torch.empty_like(gv_r)
        gw_r = torch.empty(h_, n_, device=v.device, dtype=torch.float32)
        gw_i = torch.empty_like(gw_r)
        blocks = _blocks(r_, n_)
        grid = (triton.cdiv(n_, blocks["BLOCK_N"]), h_)
        _backward_kernel[grid](gr, gi, vr, vi, zr, zi, wr, wi, gv_r, gv_i, gw_r, gw_i, r_, h_, n_, l_,
                               KIND=ctx.kind, **blocks)
        need_v, _, need_w, _ = ctx.needs_input_grad
        return (torch.complex(gv_r, gv_i) if need_v else None), None, \
            (torch.complex(gw_r, gw_i) if need_w else None), None


def _complex64(name: str, *tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype != torch.complex64:
        raise TypeError(f"{name}_triton computes in complex64 only, got {dtype}; "
                        "use backend='ref' or 'keops' for complex128")


def cauchy_triton(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_n v[r, h, n] / (z[l] - w[h, n]): v (R, H, N), z (L,), w (H, N) complex64 -> (R, H, L)."""
    check_operands(v, w, "cauchy")
    _complex64("cauchy", v, z, w)
    if z.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("cauchy_triton has no gradient w.r.t. the nodes z (constants in S4): "
                                  "pass z.detach(), or use backend='ref' or 'keops'")
    return _Op.apply(v.to(torch.complex64), z.to(torch.complex64), w.to(torch.complex64), _CAUCHY)


def vandermonde_triton(v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """sum_n v[r, h, n] * exp(x[h, n] * l) for l < length: v (R, H, N), x (H, N) complex64 -> (R, H, L)."""
    check_operands(v, x, "vandermonde")
    _complex64("vandermonde", v, x)
    ell = torch.arange(int(length), device=v.device, dtype=torch.float32).to(torch.complex64)  # l as "nodes"
    return _Op.apply(v.to(torch.complex64), ell, x.to(torch.complex64), _VANDERMONDE)
