"""Plain-torch reference kernels for S4 (Cauchy) and S4D (Vandermonde), chunked so memory stays bounded.

Shapes: R rows (products of the SSM's vectors), H channels, N state entries, L evaluation points / length.

    cauchy_ref(v, z, w)[r, h, l]      = sum_n v[r, h, n] / (z[l] - w[h, n])
    vandermonde_ref(v, x, L)[r, h, l] = sum_n v[r, h, n] * exp(x[h, n] * l)        (l = 0 .. L-1)
    cauchy_conj_ref(v, y, w)[r, h, l] = sum_n v/(iy_l - w) + conj(v)/(iy_l - conj(w))  (n over N/2 pairs)

``cauchy_conj_ref`` is the fast path S4 uses on a CPU: S4's nodes z = iy are purely imaginary and its terms come
in conjugate pairs, so each pair folds into one real-coefficient term (α = 2 Re v, β = 2 Re(v conj(w)))

    v/(iy - w) + conj(v)/(iy - conj(w)) = (iαy - β) / d,   d = (iy - w)(iy - conj(w)) = Re(w)² + (Im w - y)(Im w + y) - 2iy Re(w)

which halves the elementwise work and turns the contractions into real matrix products. d's real part is
formed as a sum of a square and a product of differences, so it has no more cancellation than z - w itself.
It is tested against ``cauchy_ref`` over the full state and against complex128 ground truth.

``vandermonde_blocked`` is the fast path S4D uses (the dispatch's "ref"): for l = l0 + j in blocks of B,
exp(x l) = exp(x l0) exp(x j), so it needs only two small exp tables, P (H, N, L/B) and E (H, N, B), and every
block of outputs is one matrix product (v P) @ E; its backward likewise. ``vandermonde_ref`` (one complex exp per
(h, n, l) entry) stays as the ground reference it is tested against.

All work in complex64 or complex128 (the dispatch turns autocast off around them; their backwards do the same). The (H, N, L) Cauchy/Vandermonde matrix is never held whole: it is
built in chunks of ``_CHUNK_ELEMS`` entries, contracted with a batched matmul, and rebuilt chunk by chunk in
the backward pass (a hand-written autograd Function), so memory is O(R·H·L + chunk) at any L (16384+).
Gradients follow PyTorch's convention for complex inputs: grad_in = grad_out · conj(d out / d in).
"""
from __future__ import annotations

import math

import torch

from models.precision import float32_backward

_CHUNK_ELEMS = 1 << 18  # entries of the (h, n, l) matrix built at once: 2 MiB in complex64, about L2-sized


def _chunks(h: int, n: int, length: int):
    """(h slice, l slice) pairs covering (H, L) with about _CHUNK_ELEMS * n-entries blocks."""
    lc = min(length, max(1, _CHUNK_ELEMS // max(1, n)))
    hc = max(1, _CHUNK_ELEMS // (n * lc))
    for h0 in range(0, h, hc):
        for l0 in range(0, length, lc):
            yield slice(h0, min(h, h0 + hc)), slice(l0, min(length, l0 + lc))


def check_operands(v: torch.Tensor, w: torch.Tensor, name: str) -> None:
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
    @float32_backward
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
    @float32_backward
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


_BLOCKED_CHUNK = 1 << 22  # (h, K, max(B, N)) entries per channel chunk of the blocked Vandermonde: 32 MiB in complex64


def _log_flush(dtype: torch.dtype) -> float:
    """log(eps²) of a real dtype: exp tables of the blocked Vandermonde hold 0 below this exponent."""
    return 2 * math.log(torch.finfo(dtype).eps)


def _exp_outer(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """exp(x[..., None] * t) for complex x, float64 t >= 0, in x's dtype: a small table, so it is worked out in float64
    from real exp/cos/sin (vectorized; torch's complex exp is not). x t is then not rounded to float32 before the
    exp, whose argument error (eps |x t|, up to 1e-2 rad at L = 65536) dominates the plain reference's error.

    Entries whose magnitude exp(Re(x) t) is below eps² of x's dtype (2e-14 in float32) are set to 0: each is then a
    term below eps² of its own l = 0 size, far under the rounding of the sum, and it keeps denormals out of the
    matrix products (on x86 a denormal operand or result is ~100x slower; seen: a 1.1 s forward instead of 0.35 s
    at L = 65536).
    """
    floor = _log_flush(x.real.dtype)
    arg = (x.real.double()[..., None] * t).clamp_(min=floor)          # exp is slow where it underflows, too
    mag = torch.exp(arg).masked_fill_(arg <= floor, 0)
    phase = x.imag.double()[..., None] * t
    return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase)).to(x.dtype)


def _grid(coarse: torch.Tensor, fine: torch.Tensor, count: int, a: torch.Tensor, out: torch.Tensor | None = None):
    """coarse[..., i1] * fine[..., i2] at i = c i1 + i2 < count (c = fine's width), flushed to 0 where a i < log(eps²):
    the products of two unflushed factors may still fall below eps² (the magnitude exp(a i) decreases in i).
    ``out`` (..., count), when given (count a multiple of c), receives the result."""
    if out is None:
        grid = (coarse[..., :, None] * fine[..., None, :]).flatten(-2)[..., :count]    # (..., count)
    else:
        grid = out.unflatten(-1, (coarse.shape[-1], fine.shape[-1]))
        grid = torch.mul(coarse[..., :, None], fine[..., None, :], out=grid).flatten(-2)
    first_out = torch.where(a < 0, _log_flush(a.dtype) / a, math.inf).ceil_()          # (...,)
    return grid.masked_fill_(torch.arange(count, device=a.device) >= first_out[..., None], 0)


def _block_tables(x: torch.Tensor, b_: int, k_: int, e_out: torch.Tensor | None = None):
    """P = exp(x l0) at l0 = kB, k < K, as (h, K, N), and E = exp(x j) at j < B, as (h, N, B) (into e_out if given),
    for x (h, N).

    Each as _exp_outer gives it (eps² flush included) at a fraction of the cost: i = c i1 + i2 with c about
    sqrt(count), one complex product of two ~sqrt(count)-entry tables, and all four of those from one _exp_outer
    (few, large ops: each torch op costs a thread synchronization, ms on a busy CPU). One more rounding than a
    direct exp, far less than the rounding of x l in the plain reference.
    """
    cp, ce = (1 << math.ceil(math.log2(n) / 2) for n in (k_, b_))
    sizes = (-(-k_ // cp), cp, -(-b_ // ce), ce)
    t = torch.cat([torch.arange(n, dtype=torch.float64) * step for n, step in zip(sizes, (cp * b_, b_, ce, 1))])
    pc, pf, ec, ef = _exp_outer(x, t.to(x.device)).split(sizes, -1)
    p = _grid(pc, pf, k_, x.real * b_).transpose(1, 2).contiguous()                     # (h, K, N)
    return p, _grid(ec, ef, b_, x.real, e_out)                                          # (h, N, B)


def vandermonde_block_size(length: int) -> int:
    """Block B of the exponent (l = l0 + j): 2 sqrt(L) rounded to a power of two, within [64, 512].

    The exp tables cost H·N·(L/B + B) entries, least at B = sqrt(L); the matrix products run faster with longer
    blocks, and timing on a 2-core CPU (B from 64 to 1024, L from 1024 to 65536) put the optimum at about 2 sqrt(L).
    """
    return min(512, max(64, 1 << round(math.log2(max(1, length)) / 2 + 1)))


class _VandermondeBlocked(torch.autograd.Function):
    """l = l0 + j with l0 = kB (K = ceil(L/B) blocks), 0 <= j < B: exp(x l) = P[k] E[j], P = exp(x l0), E = exp(x j).

    Forward: out[r, h, kB + j] = Σ_n (v P[k])[r, h, n] E[h, n, j], one batched (K, N) @ (N, B) product per (r, h),
    written into an (R, H, KB) buffer whose tail past L is cut off (a view) on return.
    Backward, with G = grad_out zero-padded to KB and conjugates taken of the small factors only:
        S̄[k] = Σ_j G[kB + j] conj(E[j]),  T̄[k] = Σ_j G[kB + j] j conj(E[j])          (one product with [Ē, jĒ])
        grad_v = Σ_k conj(P[k]) S̄[k],  grad_x = Σ_r conj(v) Σ_k conj(P[k]) (l0 S̄[k] + T̄[k])   (Σ_l G l conj(e^{xl}))
    l0 S̄ + T̄ = Σ_j G (l0 + j) Ē[j] has the same terms as the plain reference's sum over l. P only multiplies, never
    divides, so where exp(x l0) underflows to 0 the block is 0 (its float value too), never inf·0.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
        r_, h_, n_ = v.shape
        b_ = vandermonde_block_size(length)
        k_ = -(-length // b_)
        out = v.new_empty(r_, h_, k_ * b_)
        hc = max(1, _BLOCKED_CHUNK // (k_ * max(b_, n_)))
        for h0 in range(0, h_, hc):
            hs = slice(h0, min(h_, h0 + hc))
            p, e = _block_tables(x[hs], b_, k_)                                 # (h, K, N), (h, N, B)
            for r in range(r_):                                                  # (h, K, N) @ (h, N, B)
                torch.bmm(v[r, hs, None, :] * p, e, out=out[r, hs].view(-1, k_, b_))
        ctx.save_for_backward(v, x)
        ctx.length = length
        return out[..., :length]

    @staticmethod
    @float32_backward
    def backward(ctx, g: torch.Tensor):
        v, x = ctx.saved_tensors
        need_v, need_x, _ = ctx.needs_input_grad
        r_, h_, n_ = v.shape
        length = ctx.length
        b_ = vandermonde_block_size(length)
        k_ = -(-length // b_)
        j = torch.arange(b_, device=v.device, dtype=v.real.dtype)
        l0 = torch.arange(k_, device=v.device, dtype=j.dtype) * b_              # (K,)
        xc, vc = x.conj().resolve_conj(), v.conj().resolve_conj()
        gp = g.resolve_conj()
        if length != k_ * b_ or not gp.is_contiguous():
            gp = g.new_zeros(r_, h_, k_ * b_)
            gp[..., :length] = g
        gv = v.new_empty(r_, h_, n_) if need_v else None
        gx = torch.zeros_like(x) if need_x else None
        hc = max(1, _BLOCKED_CHUNK // (k_ * max(b_, 2 * n_)))
        for h0 in range(0, h_, hc):
            hs = slice(h0, min(h_, h0 + hc))
            ec = x.new_empty(hs.stop - h0, 2 * n_ if need_x else n_, b_)         # (h, N or 2N, B): [Ē, jĒ]
            pc, _ = _block_tables(xc[hs], b_, k_, ec[:, :n_])                    # conj(P) (h, K, N)
            if need_x:
                torch.mul(ec[:, :n_], j, out=ec[:, n_:])
            for r in range(r_):
                s = torch.bmm(gp[r, hs].view(-1, k_, b_), ec.transpose(1, 2))    # (h, K, N or 2N)
                sv = s[..., :n_]                                                 # S̄
                if need_v:
                    gv[r, hs] = (sv * pc).sum(1)
                if need_x:
                    gx[hs] += vc[r, hs] * ((sv * l0[:, None] + s[..., n_:]) * pc).sum(1)
        return gv, gx, None


def _pair_inverse(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """1/d, d = (iy - w)(iy - conj(w)), each factor formed directly (no cancellation): y (l,), w (h, n) -> (h, n, l)."""
    iy = torch.complex(torch.zeros_like(y), y)                      # (l,)
    d = iy - w[..., None]                                           # (h, n, l)
    return d.mul_(iy - w.conj()[..., None]).reciprocal_()


class _CauchyConj(torch.autograd.Function):
    """Chunked over (h, l) like _Cauchy. Forward: out = iy·Σ_n α_n/d_n - Σ_n β_n/d_n (one real matrix product).

    Backward, with G = conj(grad_out) and q = 1/d (PyTorch's convention dL = Re(conj(g) d out)):
        dL/dα = -Im X1,  dL/dβ = -Re X0,                 Xk = (y^k G) qᵀ
        dL/d|w|² = Σ_r (α Im Y1 + β Re Y0),  dL/dRe(w) (through Im d = -2y Re w) = -2 Σ_r (α Re Y2 - β Im Y1),
    where Yk = q² (y^k G)ᵀ; only those real or imaginary parts are formed, each as a real matrix product, so the
    (h, n, l) work is only q and q².
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r_, h_, n_ = v.shape
        alpha, beta = 2 * v.real, 2 * (v * w.conj()).real                          # (R, H, n) each
        ab = torch.cat([alpha, beta], 0).transpose(0, 1).contiguous()                # (H, 2R, n)
        out = v.new_empty(h_, r_, y.shape[0])
        for hs, ls in _chunks(h_, n_, y.shape[0]):
            q = torch.view_as_real(_pair_inverse(y[ls], w[hs]))                      # (h, n, l, 2)
            s = torch.view_as_complex(torch.bmm(ab[hs], q.flatten(2)).unflatten(2, (-1, 2)))  # (h, 2R, l)
            sa, sb = s[:, :r_], s[:, r_:]                                            # Σ α/d, Σ β/d
            out[hs, :, ls] = sa.mul_(torch.complex(torch.zeros_like(y[ls]), y[ls])).sub_(sb)
        ctx.save_for_backward(v, y, w)
        return out.transpose(0, 1)

    @staticmethod
    @float32_backward
    def backward(ctx, g: torch.Tensor):
        v, y, w = ctx.saved_tensors
        r_, h_, n_ = v.shape
        alpha, beta = 2 * v.real, 2 * (v * w.conj()).real                       # (R, H, n)
        gt = g.transpose(0, 1)                                                  # (H, R, L)
        x = v.new_zeros(h_, 2 * r_, n_).real                                    # Re X0, Im X1
        ys = v.new_zeros(h_, n_, 3 * r_).real                                   # Re Y0, Im Y1, Re Y2
        for hs, ls in _chunks(h_, n_, y.shape[0]):
            q = _pair_inverse(y[ls], w[hs])                                     # (h, n, l)
            iy = torch.complex(torch.zeros_like(y[ls]), y[ls])
            gl = gt[hs, :, ls]                                                  # (h, R, l)
            # Re(Σ_l conj(a) b) = <view_as_real(a), view_as_real(b)>: with G = conj(g), the real or imaginary parts
            # needed below are real products against g, iy·g and y²·g, at half the cost of complex products
            rhs = torch.view_as_real(torch.cat([gl, gl * iy, gl * (iy * iy).neg_()], 1)).flatten(2)  # (h, 3R, 2l)
            x[hs] += torch.bmm(rhs[:, :2 * r_], torch.view_as_real(q).flatten(2).transpose(1, 2))     # (h, 2R, n)
            ys[hs] += torch.bmm(torch.view_as_real(q.mul_(q)).flatten(2), rhs.transpose(1, 2))       # (h, n, 3R)
        re_x0, im_x1 = x.transpose(0, 1).split(r_)                              # (R, H, n) each
        re_y0, im_y1, re_y2 = ys.permute(2, 0, 1).split(r_)
        g_alpha, g_beta = -im_x1, -re_x0
        g_a = (alpha * im_y1 + beta * re_y0).sum(0)                             # (H, n)
        g_b = -2 * (alpha * re_y2 - beta * im_y1).sum(0)
        wr, wi = w.real, w.imag
        gv = torch.complex(2 * g_alpha + 2 * wr * g_beta, 2 * wi * g_beta)
        gw = torch.complex(2 * (v.real * g_beta).sum(0) + 2 * wr * g_a + g_b, 2 * (v.imag * g_beta).sum(0) + 2 * wi * g_a)
        return gv, None, gw


def cauchy_conj_ref(v: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum over N/2 conjugate pairs of v/(iy - w) + conj(v)/(iy - conj(w)): v (R, H, n), y (L,) real, w (H, n) -> (R, H, L).

    Equals ``cauchy_ref(cat([v, v.conj()], -1), 1j * y, cat([w, w.conj()], -1))``. No gradient for y.
    """
    check_operands(v, w, "cauchy_conj")
    if y.is_complex() or y.dim() != 1:
        raise TypeError(f"cauchy_conj: y must be a real 1-D tensor (the nodes are 1j * y), got {y.dtype} {tuple(y.shape)}")
    dtype = torch.promote_types(v.dtype, w.dtype)
    return _CauchyConj.apply(v.to(dtype), y.detach().to(dtype.to_real()), w.to(dtype))


def cauchy_ref(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_n v[r, h, n] / (z[l] - w[h, n]): v (R, H, N), z (L,), w (H, N) complex -> (R, H, L)."""
    check_operands(v, w, "cauchy")
    dtype = torch.promote_types(torch.promote_types(v.dtype, w.dtype), z.dtype)
    return _Cauchy.apply(v.to(dtype), z.to(dtype), w.to(dtype))


def vandermonde_ref(v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """sum_n v[r, h, n] * exp(x[h, n] * l) for l < length: v (R, H, N), x (H, N) complex -> (R, H, L)."""
    check_operands(v, x, "vandermonde")
    dtype = torch.promote_types(v.dtype, x.dtype)
    return _Vandermonde.apply(v.to(dtype), x.to(dtype), int(length))


def vandermonde_blocked(v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """``vandermonde_ref`` by blocks of the exponent: O(H·N·(L/B + B)) exps instead of H·N·L, all else matmuls."""
    check_operands(v, x, "vandermonde")
    dtype = torch.promote_types(v.dtype, x.dtype)
    return _VandermondeBlocked.apply(v.to(dtype), x.to(dtype), int(length))
