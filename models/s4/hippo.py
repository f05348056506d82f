"""HiPPO-LegS and its normal-plus-low-rank (NPLR) form; diagonal inits for S4D. All in float64.

N state size. HiPPO-LegS (Gu et al. 2020):
    A[n, k] = -sqrt(2n+1) sqrt(2k+1) (n > k),  -(n+1) (n = k),  0 (n < k);   B[n] = sqrt(2n+1)
NPLR: with P[n] = sqrt(n + 1/2), S = A + P P^T = -1/2 I + (skew-symmetric), so S = V Λ V* with V unitary and
Re(Λ) = -1/2, and A = V (Λ - P̃ P̃*) V* where P̃ = V* P. The eigenvalues of S come in conjugate pairs; we keep
the N/2 with positive imaginary part (V_half, N x N/2) and the full basis is [V_half, conj(V_half)].
"""
from __future__ import annotations

import math

import torch


def hippo_legs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B): the HiPPO-LegS matrix (N, N) and input vector (N,), float64."""
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(1, n + 1, dtype=torch.float64))
    return a, q.clone()


def nplr_legs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Λ, P̃, B̃, V_half) of HiPPO-LegS in its NPLR form, keeping N/2 conjugate pairs; complex128.

    Λ (N/2,), P̃ = V_half* P (N/2,), B̃ = V_half* B (N/2,), V_half (N, N/2).
    """
    if n % 2:
        raise ValueError(f"d_state must be even (conjugate pairs), got {n}")
    a, b = hippo_legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    s = a + p[:, None] * p[None, :]
    skew = s - torch.diag(torch.diagonal(s))              # diag(S) is exactly -1/2
    evals, evecs = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # -i * skew is Hermitian: real evals b
    keep = evals > 0                                      # S v = (-1/2 + i b) v; the b < 0 half are conjugates
    order = torch.argsort(evals[keep])
    lam = (-0.5 + 1j * evals[keep][order]).to(torch.complex128)
    v = evecs[:, keep][:, order]                          # (N, N/2)
    return lam, v.conj().T @ p.to(v.dtype), v.conj().T @ b.to(v.dtype), v


def random_nplr(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Λ, P, B) of a random NPLR system (the S4 paper's ablation): Re Λ = -1/2, Im Λ spread like LegS's, random P, B."""
    half = n // 2
    imag = torch.sort(torch.rand(half, generator=generator, dtype=torch.float64) * math.pi * n).values
    lam = torch.complex(torch.full((half,), -0.5, dtype=torch.float64), imag)
    def cn(scale: float) -> torch.Tensor:
        return torch.randn(half, 2, generator=generator, dtype=torch.float64).mul(scale / math.sqrt(2)).view(torch.complex128).squeeze(-1)
    return lam, cn(math.sqrt(n / 2)), cn(math.sqrt(n / 2))


def diag_init(n: int, init: str) -> torch.Tensor:
    """S4D's diagonal A, N/2 eigenvalues with positive imaginary part (complex128).

    diag-lin: -1/2 + i π n;   diag-inv: -1/2 + i (N/π)(N/(2n+1) - 1)   (Gu et al., NeurIPS 2022).
    """
    k = torch.arange(n // 2, dtype=torch.float64)
    if init == "diag-lin":
        imag = math.pi * k
    elif init == "diag-inv":
        imag = n / math.pi * (n / (2 * k + 1) - 1)
    else:
        raise ValueError(f"unknown S4D init {init!r}; known: diag-lin, diag-inv")
    return torch.complex(torch.full_like(k, -0.5), imag)
