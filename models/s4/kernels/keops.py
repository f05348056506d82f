"""KeOps backend for the S4 Cauchy and S4D Vandermonde sums (same signatures as reference.py).

Shapes: R rows, H channels, N state entries (terms summed over), L nodes / output length.

    cauchy_keops(v, z, w)[r, h, l]      = sum_n v[r, h, n] / (z[l] - w[h, n])
    vandermonde_keops(v, x, L)[r, h, l] = sum_n v[r, h, n] * exp(x[h, n] * l)        (l = 0 .. L-1)

KeOps has no complex dtype: complex tensors go in as their real (..., 2) views (``torch.view_as_real``) and the
formulas use KeOps' complex ops on those pairs. The reduction runs over j = n for every i = l, with R and H as
KeOps batch dimensions (w, x and z broadcast over the batch dimensions they lack). complex64 runs in float32,
complex128 in float64. Gradients come from KeOps' own autodiff of the formula (for every input, z included),
which on the real views gives exactly PyTorch's complex convention grad_in = grad_out * conj(d out / d in).

Each (formula, dtype, device) is compiled once into KEOPS_CACHE_FOLDER (project-local by default, see
core.env.set_offline_defaults); the first compile of one formula takes ~20 s on a 2-core CPU.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from core.env import set_offline_defaults
from models.s4.kernels.reference import cauchy_ref, check_operands

set_offline_defaults()  # before pykeops is imported: its cache folder is read then

# use_fast_math=False: with CUDA's fast math, cos/sin of the large phases Im(x)*l lose all accuracy.
# sum_scheme="kahan_scheme": the gradient w.r.t. v sums over all L nodes; with KeOps' default block sums its float32
# error at L = 4096 was 4x the reference's (2.8e-6 vs 6.4e-7 relative), with Kahan 1e-7, at ~2.5x the CPU time.
_CAUCHY = ("ComplexDivide(v, z - w)", ("v = Vj(2)", "z = Vi(2)", "w = Vj(2)"))
_VANDERMONDE = ("ComplexMult(v, ComplexExp(ComplexRealScal(l, x)))", ("v = Vj(2)", "l = Vi(1)", "x = Vj(2)"))


@lru_cache(maxsize=None)
def _genred(formula: str, aliases: tuple[str, ...]):
    from pykeops.torch import Genred  # imported here so that a broken install surfaces as a catchable error
    return Genred(formula, list(aliases), reduction_op="Sum", axis=1, use_fast_math=False, sum_scheme="kahan_scheme")


def _promote(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"KeOps kernels take complex64 or complex128 tensors, got {dtype}")
    return dtype


def _real(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (..., 2) real view of t as a contiguous tensor of ``dtype``'s real type."""
    return torch.view_as_real(t.to(dtype).contiguous())


def cauchy_keops(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_n v[r, h, n] / (z[l] - w[h, n]): v (R, H, N), z (L,), w (H, N) complex -> (R, H, L)."""
    check_operands(v, w, "cauchy")
    dtype = _promote(v, z, w)
    r_, h_, n_ = v.shape
    vr = _real(v, dtype).view(r_, h_, n_, 2)            # (R, H, N, 2): j-variable, batch (R, H)
    zr = _real(z, dtype).view(1, 1, -1, 2)              # (1, 1, L, 2): i-variable, broadcast over (R, H)
    wr = _real(w, dtype).view(1, h_, n_, 2)             # (1, H, N, 2): j-variable, broadcast over R
    out = _genred(*_CAUCHY)(vr, zr, wr)                 # (R, H, L, 2)
    return torch.view_as_complex(out)


def vandermonde_keops(v: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """sum_n v[r, h, n] * exp(x[h, n] * l) for l < length: v (R, H, N), x (H, N) complex -> (R, H, L)."""
    check_operands(v, x, "vandermonde")
    dtype = _promote(v, x)
    r_, h_, n_ = v.shape
    vr = _real(v, dtype).view(r_, h_, n_, 2)
    ell = torch.arange(int(length), device=v.device, dtype=vr.dtype).view(1, 1, -1, 1)  # (1, 1, L, 1)
    xr = _real(x, dtype).view(1, h_, n_, 2)
    out = _genred(*_VANDERMONDE)(vr, ell, xr)           # (R, H, L, 2)
    return torch.view_as_complex(out)


def keops_self_check() -> str:
    """'' when KeOps compiles and runs a tiny complex64 Cauchy sum that agrees with cauchy_ref, else the reason.

    Runs on CUDA when torch sees a GPU (where the dispatch would use KeOps), else on the CPU. Never raises.
    """
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(2, 3, 5, dtype=torch.complex64, generator=gen)
        w = torch.complex(-0.5 * torch.ones(3, 5), torch.randn(3, 5, generator=gen))
        z = torch.complex(torch.zeros(7), torch.linspace(-3.0, 3.0, 7))
        ref = cauchy_ref(v, z, w)
        out = cauchy_keops(v.to(device), z.to(device), w.to(device)).cpu()
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        # float32 sums of 5 terms agree to ~1e-6 relative; 1e-4 only catches a wrong build or formula.
        if not err <= 1e-4:  # also catches NaN
            return f"KeOps Cauchy disagrees with the reference (relative error {err:.2e})"
        return ""
    except Exception as exc:  # a broken compiler, CUDA toolkit or install: report it, never raise
        return f"{type(exc).__name__}: {exc}"
