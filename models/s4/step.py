"""Recurrent mode of S4 / S4D: the discrete SSM x_t = Ā x_{t-1} + B̄ u_t, y_t = Re(C x_t) + D u_t, one position
at a time, from a plan that ``S4Layer.default_state`` prepares once from the current parameters.

B batch, H channels, N state size (both members of each conjugate pair), M stored state per channel (N/2 when the
conjugate half is implied, else N), R rank of the low-rank part of Ā (0 or 1).

Two plans:
  * ``dense_plan`` / ``dense_step``, the reference: Ā (H, N, N) dense, state (B, H, N) complex, O(H N^2) per token.
  * ``fast_plan`` / ``fast_step``: Ā = diag(d) + Σ_r q_r g_r^T (diagonal plus rank R), state (B, H, M) complex,
    O(H N) per token. Built by one of
      - ``s4d_system``:   S4D, natively diagonal (R = 0, M = N/2): Ā = exp(ΔA) (ZOH) or bilinear, B̄ as the kernel's.
      - ``dplr_system``:  S4, the bilinear Ā of A = Λ - P P* is itself diagonal plus rank one (R = 1, M = N/2),
                          exactly (Sherman-Morrison); as well conditioned as the dense step at every N.
      - ``eig_system``:   S4 diagonalised, Ā = V diag(λ) V^{-1} (R = 0, M = N): state-spaces/s4's "diagonal" step
                          mode (src/models/sequence/kernels/ssm.py, ``SSMKernelDPLR._setup_step``, commit e757cef).
                          V inherits HiPPO-LegS's ill-conditioning (cond(V) ~ 1e5 at N = 8, ~1e7 at N = 16, ~1e9
                          from N = 32 on, where float64's eigendecomposition itself stops resolving it): in float32
                          the output error is ~1e-5 at N = 4 and 5e-2 to 1 and more from N = 16 on
                          (results/efficiency/s4_step_conditioning.md), so the layer never chooses it.

The fast step folds everything that does not depend on the input into real vectors over the state's real view
(2M reals per channel), so that a token costs two real dot products per channel for S4 (one for S4D), two
broadcast multiply(-add)s (one) and one complex multiply-add:
    s_r = Re(g_r · x_{t-1})                       the low-rank coordinates (S4: one)
    y_t = Re(c_eff · x_{t-1}) + k_u u_t           c_eff = C ⊙ d + Σ_r Re(C · q_r) g_r, k_u = Re(C · B̄) + D
    x_t = d ⊙ x_{t-1} + Σ_r q_r s_r + B̄ u_t
where, with the conjugate half implied, every inner product over the full state is 2 Re(·) of the stored half
(the factor 2 is folded in). All of the plan is computed in complex128 and cast to complex64 / float32 at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.s4.kernel import DiagKernel, NPLRKernel


# -- reference: dense Ā ---------------------------------------------------------------------------------
def dense_plan(kernel: NPLRKernel | DiagKernel,
               dtype: torch.dtype = torch.complex64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Ā (H, N, N), B̄ (H, N), C (H, N)) over the full state, from the kernel's dense system (complex128), cast to
    ``dtype`` (complex128: the truth the tests and benchmarks/s4_step.py measure against)."""
    a, b, c, dt = kernel.dense_ssm()
    if isinstance(kernel, DiagKernel):
        log_abar, bbar = kernel._discrete(dt, torch.diagonal(a, dim1=-2, dim2=-1), b)
        abar = torch.diag_embed(torch.exp(log_abar))
    else:
        abar, bbar = NPLRKernel.discretize(a, b, dt)
    return abar.to(dtype), bbar.to(dtype), c[0].to(dtype)


def dense_step(plan: tuple[torch.Tensor, ...], u: torch.Tensor, d_skip: torch.Tensor,
               state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u (B, H) real, state (B, H, N) complex -> (y (B, H) = Re(C x) + D u, new state), in the plan's precision."""
    abar, bbar, c = plan
    state = torch.einsum("hmn,bhn->bhm", abar, state) + bbar * u[..., None].to(state.dtype)
    return (state * c).sum(-1).real + d_skip * u, state


# -- fast: diagonal plus rank R ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LowRankSystem:
    """x' = d ⊙ x + Σ_r q_r (g_r · x) + b u,  y = Re(c · x') + D u, over the stored state (complex128).

    d, b, c (H, M); q, g (H, R, M); D (H,). ``paired``: the stored M = N/2 are one member of each conjugate pair and
    every inner product over the full state (g_r · x, c · x) is 2 Re(·) of the stored half (g_r · x is then real).
    """
    d: torch.Tensor
    q: torch.Tensor
    g: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    d_skip: torch.Tensor
    paired: bool


@dataclass(frozen=True)
class FastPlan:
    """The fast step's constants, as float32 real views over the stored state (2M reals) unless said otherwise:
    g: R + 1 rows (H, 2M), the low-rank rows then the folded output row; q: R rows (H, 2M); b (H, 2M);
    d (H, M) complex64; k_u (H,)."""
    g: tuple[torch.Tensor, ...]
    q: tuple[torch.Tensor, ...]
    b: torch.Tensor
    d: torch.Tensor
    k_u: torch.Tensor

    @property
    def m(self) -> int:
        return self.d.shape[-1]


def _re_row(v: torch.Tensor) -> torch.Tensor:
    """v (..., M) complex -> (..., 2M) real, so that Re(v · x) = row · view_as_real(x).flatten(-2)."""
    return torch.stack([v.real, -v.imag], -1).flatten(-2)


def fast_plan(system: LowRankSystem) -> FastPlan:
    """Fold a ``LowRankSystem`` into the fast step's constants (see the module docstring)."""
    f = 2.0 if system.paired else 1.0
    k = f * (system.c[:, None] * system.q).sum(-1).real                 # (H, R): y's weight on s_r
    c_eff = system.c * system.d + (k[..., None] * system.g).sum(1)      # y = f Re(c_eff · x) + k_u u
    g = f * _re_row(torch.cat([system.g, c_eff[:, None]], 1)).float()   # (H, R+1, 2M)
    q = torch.view_as_real(system.q).flatten(-2).float()                # (H, R, 2M)
    k_u = f * (system.c * system.b).sum(-1).real + system.d_skip
    return FastPlan(tuple(row.contiguous() for row in g.unbind(1)), tuple(row.contiguous() for row in q.unbind(1)),
                    torch.view_as_real(system.b).flatten(-2).float(), system.d.to(torch.complex64), k_u.float())


def fast_step(plan: FastPlan, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u (B, H) float32, state (B, H, M) complex64 -> (y (B, H) = Re(C x_t) + D u, x_t (B, H, M)).

    One real dot product per row of g on the state's real view: on a CPU this beat batched per-channel matmuls
    (bmm over H) and one broadcast product over all rows, at B = 1 and 16 (benchmarks/s4_step.py's sizes).
    """
    xr = torch.view_as_real(state).flatten(-2)                                     # (B, H, 2M), a view
    t = u[..., None] * plan.b                                                      # B̄ u
    for g, q in zip(plan.g, plan.q):
        t = torch.addcmul(t, torch.linalg.vecdot(xr, g)[..., None], q)             # + q_r s_r, s_r = Re(g_r · x)
    y = torch.addcmul(torch.linalg.vecdot(xr, plan.g[-1]), plan.k_u, u)            # Re(c_eff · x) + k_u u
    return y, torch.addcmul(torch.view_as_complex(t.unflatten(-1, (plan.m, 2))), plan.d, state)


# -- the systems ---------------------------------------------------------------------------------------------
@torch.no_grad()
def s4d_system(kernel: DiagKernel, d_skip: torch.Tensor) -> LowRankSystem:
    """S4D: d = Ā, b = B̄ per stored pair (the kernel's own discretization), c = C; R = 0."""
    dt, a, b, c = (t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in kernel._params())
    log_abar, bbar = kernel._discrete(dt, a, b)
    empty = a.new_zeros(a.shape[0], 0, a.shape[1])
    return LowRankSystem(torch.exp(log_abar), empty, empty, bbar, c[0], d_skip.detach().double(), paired=True)


@torch.no_grad()
def dplr_system(kernel: NPLRKernel, d_skip: torch.Tensor) -> LowRankSystem:
    """S4: bilinear Ā of A = Λ - P P* as diagonal plus rank one; R = 1, exact (no eigendecomposition).

    With h = Δ/2 and m = 1 - hΛ, M = I - hA = diag(m) + h P P* has, by Sherman-Morrison,
    M^{-1} = diag(1/m) - γ (P/m)(P*/m) with γ = h / (1 + h σ), σ = P* diag(1/m) P (real, > 0 as Re Λ < 0).
    Then Ā = M^{-1}(I + hA) = 2 M^{-1} - I = diag(2/m - 1) - 2γ (P/m)(P*/m) and B̄ = M^{-1} Δ B.
    """
    dt, lam, p, b = (t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in kernel._ssm())
    _, _, c, _ = kernel.dense_ssm()                              # C = C̃ (I - Ā^L)^{-1}, (C, H, N), conjugate-paired
    h = (dt / 2)[:, None]                                        # (H, 1)
    m = 1 - h * lam                                              # (H, N/2)
    g = p.conj() / m                                             # row vector P*/m over the stored half
    sigma = 2 * (g * p).sum(-1, keepdim=True).real               # P* diag(1/m) P over the full state
    gamma = h / (1 + h * sigma)                                  # (H, 1)
    q = -2 * gamma * p / m
    bbar = dt[:, None] * (b / m - gamma * (p / m) * 2 * (g * b).sum(-1, keepdim=True).real)
    return LowRankSystem(2 / m - 1, q[:, None], g[:, None], bbar, c[0, :, : lam.shape[-1]],
                         d_skip.detach().double(), paired=True)


@torch.no_grad()
def eig_system(kernel: NPLRKernel, d_skip: torch.Tensor) -> tuple[LowRankSystem, torch.Tensor]:
    """S4 diagonalised: Ā = V diag(λ) V^{-1} over the full state (R = 0, M = N); also cond(V) (H,). Ill-conditioned
    for HiPPO-LegS from N ~ 8 on (module docstring)."""
    a, b, c, dt = kernel.dense_ssm()
    abar, bbar = NPLRKernel.discretize(a, b, dt)
    lam, v = torch.linalg.eig(abar)                              # (H, N), (H, N, N)
    bt = torch.linalg.solve(v, bbar[..., None]).squeeze(-1)      # V^{-1} B̄
    ct = (c[0, :, None] @ v).squeeze(-2)                         # C V
    empty = lam.new_zeros(lam.shape[0], 0, lam.shape[1])
    return LowRankSystem(lam, empty, empty, bt, ct, d_skip.detach().double(), paired=False), torch.linalg.cond(v)
