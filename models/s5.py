"""S5 (Smith, Warrington & Linderman, ICLR 2023): one MIMO diagonal SSM over all H channels, by a parallel scan.

B batch, L length, H d_model, P d_state (the full state), P/2 stored conjugate pairs, J blocks, K directions.

Continuous system (paper sec. 3, diagonalised): x'(t) = Λ x(t) + B̃ u(t), y(t) = Re(C̃ x(t)) + D u(t),
with Λ = V^{-1} A V the eigenvalues of HiPPO-N (the normal part S = A + p p^T of HiPPO-LegS, p_n = sqrt(n + 1/2),
so Re Λ = -1/2), B̃ = V^{-1} B and C̃ = C V. Conjugate symmetry: only the P/2 eigenvalues with Im > 0 are kept
and y = 2 Re(C̃ x). ``blocks`` J puts J copies of a size-P/J HiPPO-N on the diagonal (block-diagonal init).
Per-state timescales Δ_p ("learnable timescales"); zero-order hold: Λ̄ = exp(ΛΔ), B̄ = Λ^{-1}(Λ̄ - I) B̃, or
bilinear: Λ̄ = (I - Δ/2 Λ)^{-1}(I + Δ/2 Λ), B̄ = (I - Δ/2 Λ)^{-1} Δ B̃. Discrete: x_k = Λ̄ x_{k-1} + B̄ u_k,
y_k = 2 Re(C̃ x_k) + D u_k, computed for all k by ``models.scan.scan``. Bidirectional (as in the S5 code): the same
(Λ̄, B̄) also run backwards, read by its own C̃_2; the two outputs are summed.

Init (S5 code ``ssm_init.py``/``ssm.py``): B real (P, H) lecun-normal (truncated normal, variance 1/P: the JAX
initialiser reads fan_in from axis -2 of the (P, H) array) then B̃ = V^{-1} B; C complex (H, P), real and imaginary
parts truncated normal with variance 1/P ("trunc_standard_normal") then C̃ = C V; D ~ N(0, 1);
log Δ ~ U[log dt_min, log dt_max]. Λ, B̃ and log Δ carry ``_optim = {"lr": lr, "weight_decay": 0}``
(S5's "standard" optimiser configuration); C̃ and D use the global settings.

Recurrent mode (``bidirectional=False`` only): ``state = layer.default_state(B)`` (re-run it after the parameters
change), then ``y_t, state = layer.step(x_t, state)``.

Precision: the SSM (discretisation, B̄ u, the scan, the read-out and D u) runs in float32 / complex64 with autocast
off, on the input cast to float32 (models/precision.py); under bf16 autocast the GLU's projections run in bf16.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import at_least_float32, autocast_off
from models.registry import register_layer
from models.s4.hippo import hippo_legs, nplr_legs
from models.scan import complex_in, real_out, scan

ACTIVATIONS = ("gelu", "full_glu", "half_glu1", "half_glu2")
_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2] (JAX's variance_scaling)


def hippo_n(n: int) -> torch.Tensor:
    """(N, N) float64: HiPPO-N, the normal part S = A + p p^T of HiPPO-LegS A, p_n = sqrt(n + 1/2)."""
    a, _ = hippo_legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    return a + p[:, None] * p[None, :]


def hippo_n_diag(d_state: int, blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(Λ (P/2,), V (P, P/2)) complex128 of the block-diagonal HiPPO-N init, conjugate pairs with Im Λ > 0.

    Each of the J blocks is the eigendecomposition of a size-P/J HiPPO-N (from ``nplr_legs``); the full basis is
    [V, conj(V)] (unitary), so V^{-1} restricted to the kept half is V^*.
    """
    if blocks < 1 or d_state % blocks:
        raise ValueError(f"d_state ({d_state}) must be divisible by blocks ({blocks})")
    size = d_state // blocks
    if size % 2:
        raise ValueError(f"each block (d_state / blocks = {size}) must be even: its eigenvalues come in "
                         "conjugate pairs")
    lam, _, _, v = nplr_legs(size)                       # (size/2,), (size, size/2)
    return lam.repeat(blocks), torch.block_diag(*[v] * blocks)


def _trunc_normal(*shape: int, fan_in: int) -> torch.Tensor:
    """float64 truncated normal (at 2 std) with variance 1/fan_in (JAX's lecun_normal)."""
    std = 1.0 / math.sqrt(fan_in) / _TRUNC_STD
    return nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


def _cparam(t: torch.Tensor) -> nn.Parameter:
    """A complex tensor stored as a real (..., 2) float32 parameter."""
    return nn.Parameter(torch.view_as_real(t.to(torch.complex64)).clone())


class S5Layer(nn.Module):
    def __init__(self, d_model: int, d_state: int, blocks: int, bidirectional: bool, activation: str,
                 discretization: str, dt_min: float, dt_max: float, dropout: float, lr: float | None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"unknown discretization {discretization!r}; known: zoh, bilinear")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        lam, v = hippo_n_diag(d_state, blocks)           # (P/2,), (P, P/2)
        half, k = d_state // 2, 2 if bidirectional else 1
        self.h, self.p, self.bidirectional = d_model, d_state, bidirectional
        self.activation, self.discretization = activation, discretization
        b = v.conj().T @ _trunc_normal(d_state, d_model, fan_in=d_state).to(v.dtype)   # (P/2, H) = V^{-1} B
        c = torch.complex(_trunc_normal(k, d_model, d_state, fan_in=d_state),
                          _trunc_normal(k, d_model, d_state, fan_in=d_state)) @ v         # (K, H, P/2) = C V
        log_dt = torch.rand(half, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ssm = {"Lambda_re": nn.Parameter(lam.real.float()), "Lambda_im": nn.Parameter(lam.imag.float()),
               "B": _cparam(b), "log_dt": nn.Parameter(log_dt.float())}
        for name, p in ssm.items():
            if lr is not None:
                p._optim = {"lr": lr, "weight_decay": 0.0}
            self.register_parameter(name, p)
        self.C = _cparam(c)                              # (K, H, P/2, 2)
        self.D = nn.Parameter(torch.randn(d_model))      # (H,)
        if activation == "full_glu":
            self.out1 = nn.Linear(d_model, d_model)
        if activation != "gelu":
            self.out2 = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._step_mats: tuple[torch.Tensor, ...] | None = None

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ̄ (P/2,), B̄ (P/2, H)) complex, from the current parameters."""
        lam = torch.complex(self.Lambda_re, self.Lambda_im)
        dt = torch.exp(self.log_dt)
        b = torch.view_as_complex(self.B)
        if self.discretization == "zoh":
            abar = torch.exp(lam * dt)
            return abar, ((abar - 1) / lam)[:, None] * b
        inv = 1 / (1 - dt / 2 * lam)
        return inv * (1 + dt / 2 * lam), (inv * dt)[:, None] * b

    def ssm(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The SSM alone, before the activation: (B, L, H) -> y = 2 Re(C̃ x) + D u, (B, L, H)."""
        if mask is not None:
            x = x * mask.unsqueeze(-1)                   # zero padding: the backward scan starts at the real end
        with autocast_off(x):                            # a recurrence over L: float32 under any autocast
            x = at_least_float32(x)
            abar, bbar = self.discrete()
            c = torch.view_as_complex(self.C)            # (K, H, P/2)
            bu = complex_in(x, bbar)                     # (B, L, P/2)
            y = real_out(scan(abar, bu), 2 * c[0])       # (B, L, H)
            if self.bidirectional:
                y = y + real_out(scan(abar, bu, reverse=True), 2 * c[1])
            return y + self.D * x

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        """S5's activations (code ``layers.py``) over the last dim; the backbone adds the residual and its dropout."""
        z = self.drop(F.gelu(y))
        if self.activation == "gelu":
            return z
        if self.activation == "full_glu":
            return self.out1(z) * torch.sigmoid(self.out2(z))
        if self.activation == "half_glu1":
            return z * torch.sigmoid(self.out2(z))
        return y * torch.sigmoid(self.out2(z))          # half_glu2: GELU only on the gate's input

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H); padded positions (mask False) are zeroed first, so nothing leaks from them."""
        return self._act(self.ssm(x, mask))

    # -- recurrent mode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (B, P/2) complex; also (re)builds Λ̄, B̄, C̃ from the current parameters."""
        if self.bidirectional:
            raise ValueError("step mode needs a causal layer: build it with bidirectional=False")
        abar, bbar = self.discrete()
        self._step_mats = (abar, bbar, 2 * torch.view_as_complex(self.C)[0])
        return torch.zeros(batch_size, self.p // 2, dtype=abar.dtype, device=abar.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> y_t (B, H), with state (B, P/2) from ``default_state`` or a previous step."""
        if self._step_mats is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        abar, bbar, c = self._step_mats
        state = abar * state + complex_in(x_t, bbar)     # (B, P/2)
        return self._act(real_out(state, c) + self.D * x_t), state


@register_layer("s5")
def s5(d_model: int, l_max: int, d_state: int = 256, blocks: int = 8, bidirectional: bool = False,
       activation: str = "half_glu1", discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1,
       dropout: float = 0.0, lr: float = 1e-3) -> nn.Module:
    """S5 (Smith, Warrington & Linderman, ICLR 2023): MIMO diagonal SSM (HiPPO-N init) computed by a parallel scan.

    Defaults are the S5 code's (``run_train.py``): P 256, J 8, ZOH, half_glu1, dt in [1e-3, 1e-1], SSM lr 1e-3.

    Args:
        d_model: width H (input and output of the one MIMO SSM).
        l_max: unused (the scan takes any length).
        d_state: state size P; P/2 conjugate pairs are stored.
        blocks: J, the number of HiPPO-N blocks on the diagonal of the init (P/J must be even).
        bidirectional: also run the system backwards with its own C̃; outputs summed.
        activation: ``gelu``, ``full_glu``, ``half_glu1`` (default) or ``half_glu2``.
        discretization: ``zoh`` (default) or ``bilinear``.
        dt_min, dt_max: range of the log-uniform init of the per-state timescales Δ.
        dropout: after the GELU.
        lr: learning rate of Λ, B̃ and log Δ, which also get weight decay 0.
    """
    return S5Layer(d_model, d_state, blocks, bidirectional, activation, discretization, dt_min, dt_max, dropout, lr)
