"""Plain-torch reference kernels for S4 (Cauchy) and S4D (Vandermonde), chunked so memory stays bounded.

Shapes: R rows (products of the SSM's vectors), H channels, N state entries, L evaluation points / length.

    cauchy_ref(v, z, w)[r, h, l]      = sum_n v[r, h, n] / (z[l] - w[h, n])
    vandermonde_ref(v, x, L)[r, h, l] = sum_n v[r, h, n] * exp(x[h, n] * l)        (l = 0 .. L-1)

Both work in complex64 or complex128. The (H, N, L) Cauchy/Vandermonde matrix is never held whole: it is
built in chunks of ``_CHUNK_ELEMS`` entries, contracted with a batched matmul, and rebuilt chunk by chunk in
the backward pass (a hand-written autograd Function), so memory is O(R·H·L + chunk) at any L (16384+).
Gradients follow PyTorch's convention for complex inputs: grad_in = grad_out · conj(d out / d in).
"""
from __future__ import annotations

import torch

_CHUNK_ELEMS = 1 << 18  # entries of the (h, n, l) matrix built at once: 2 MiB in complex64, about L2-sized


def _chunks(h: int, n: int, length: int):
    """(h slice, l slice) pairs covering (H, L) with about _CHUNK_ELEMS * n-entries blocks."""
    lc = min(length, max(1, _CHUNK_ELEMS // max(1, n)))
    hc = max(1, _CHUNK_ELEMS // (n * lc))
    for h0 in range(0, h, hc):
        for l0 in range(0, length, lc):
            yield slice(h0, min(h, h0 + hc)), slice(l0, min(length, l0 + lc))


def _check(v: torch.Tensor, w: torch.Tensor, name: str) -> None:
    if v.dim() != 3 or w.dim() != 2 or v.shape[1:] != w.shape:
        raise ValueError(f"{name}: expected v (R, H, N) and w (H, N), got {tuple(v.shape)} and {tuple(w.shape)}")
    if not (v.is_complex() and w.is_complex()):
        raise TypeError(f"{name}: v and w must be complex tensors")


class _Cauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r_, h_, n_ = v.shape
        out = v.new_empty(r_, h_, z.shape[0])
        vt = v.transpose(0, 1).contiguous()  # (H, R, N)
        for hs, ls in _chunks(h_, n_, z.shape[0]):
            cm = (z[ls] - w[hs, :, None]).reciprocal_()           # (h, N, l)
            out[:, hs, ls] = torch.bmm(vt[hs], cm).transpose(0, 1)  # (R, h, l)
        ctx.save_for_backward(v, z, w)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, z, w = ctx.saved_tensors
        need_v, need_z, need_w = ctx.needs_input_grad
        r_, h_, n_ = v.shape
        gv = torch.zeros_like(v).transpose(0, 1) if need_v else None  # (H, R, N)
        gw = torch.zeros_like(w) if need_w else None
        gz = torch.zeros_like(z) if need_z else None
        # conjugates and transposes are taken of the small factors (g, v, results), never of the (h, N, l)
        # matrix, which is only ever read in place: sum_l g conj(m) = conj(sum_l conj(g) m)
        vt = v.transpose(0, 1).resolve_conj()            # (H, R, N)
        gc = g.conj().transpose(0, 1).resolve_conj()     # (H, R, L), conjugated
        for hs, ls in _chunks(h_, n_, z.shape[0]):
            cm = (z[ls] - w[hs, :, None]).reciprocal_()    # (h, N, l)
            gcl = gc[hs, :, ls]
            if need_v:
                gv[hs] += torch.bmm(cm, gcl.transpose(1, 2)).transpose(1, 2).conj()    # (h, R, N)
            if need_w or need_z:
                cm.mul_(cm)                                                             # d/dw 1/(z-w) = 1/(z-w)^2
                if need_w:
                    gw[hs] += (vt[hs] * torch.bmm(cm, gcl.transpose(1, 2)).transpose(1, 2)).sum(1).conj()
                if need_z:
                    gz[ls] -= (torch.bmm(vt[hs].transpose(1, 2), gcl) * cm).sum((0, 1)).conj()
        return (gv.transpose(0, 1) if need_v else None), gz, gw


class _Vandermonde(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
        r_, h_, n_ = v.shape
        out = v.new_empty(r_, h_, length)
        ell = torch.arange(length, device=v.device, dtype=v.real.dtype)
        vt = v.transpose(0, 1).contiguous()
        for hs, ls in _chunks(h_, n_, length):
            vm = torch.exp(x[hs, :, None] * ell[ls])                  # (h, N, l)
            out[:, hs, ls] = torch.bmm(vt[hs], vm).transpose(0, 1)
        ctx.save_for_backward(v, x)
        ctx.length = length
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, x = ctx.saved_tensors
        need_v, need_x, _ = ctx.needs_input_grad
        r_, h_, n_ = v.shape
        ell = torch.arange(ctx.length, device=v.device, dtype=v.real.dtype)
        gv = torch.zeros_like(v).transpose(0, 1) if need_v else None
        gx = torch.zeros_like(x) if need_x else None
        vt = v.transpose(0, 1).resolve_conj()
        gc = g.conj().transpose(0, 1).resolve_conj()     # conjugated, as in the Cauchy backward
        for hs, ls in _chunks(h_, n_, ctx.length):
            vm = torch.exp(x[hs, :, None] * ell[ls])                 # (h, N, l)
            gcl = gc[hs, :, ls]
            if need_v:
                gv[hs] += torch.bmm(vm, gcl.transpose(1, 2)).transpose(1, 2).conj()
            if need_x:                                               # d/dx exp(x l) = l exp(x l)
                gx[hs] += (vt[hs] * torch.bmm(vm.mul_(ell[ls]), gcl.transpose(1, 2)).transpose(1, 2)).sum(1).conj()
        return (gv.transpose(0, 1) if need_v else None), gx, None


def cauchy_ref(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_n v[r, h, n] / (z[l] - w[h, n]): v (R, H, N), z (L,), w (H, N) complex -> (R, H, L)."""
    _check(v, w, "cauchy")
    dtype = torch.promote_types(torch.promote_types(v.dtype, w.dtype), z.dtype)
    return _Cauchy.apply(v.to(dtype), z.to(dtype), w.to(dtype))


def vandermonde_ref(v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """sum_n v[r, h, n] * exp(x[h, n] * l) for l < length: v (R, H, N), x (H, N) complex -> (R, H, L)."""
    _check(v, x, "vandermonde")
    dtype = torch.promote_types(v.dtype, x.dtype)
    return _Vandermonde.apply(v.to(dtype), x.to(dtype), int(length))
