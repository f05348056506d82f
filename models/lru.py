"""The Linear Recurrent Unit (Orvieto et al., ICML 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

B batch, L length, H d_model, N d_state (complex), K directions (2 when bidirectional).

Recurrence (paper sec. 3, with the normalisation of sec. 3.4), computed for all t by ``models.scan.scan``:
    x_t = Λ x_{t-1} + γ ⊙ (B u_t),   y_t = Re(C x_t) + D u_t
    Λ = diag(exp(-exp(ν_log) + i exp(θ_log)))           (stable exponential parameterisation, sec. 3.3)
    γ = exp(γ_log), initialised to sqrt(1 - |λ|^2)       (sec. 3.4)
Ring init (sec. 3.3; pseudocode in app. A): u1, u2 ~ U[0, 1],
    ν = -1/2 log(u1 (r_max^2 - r_min^2) + r_min^2)  so |λ| = exp(-ν) is uniform-in-area on the ring [r_min, r_max],
    θ = max_phase · u2.   B, C complex: Re and Im of B ~ N(0, 1/(2H)), of C ~ N(0, 1/N); D ~ N(0, 1).
The LRU block (fig. 1, app. D) follows the recurrence with GELU, dropout and a GLU (here one Linear(H, 2H) and
``F.glu``, as the S4 layer's output); the backbone supplies norm, residual and the second dropout.
Bidirectional (not in the paper; our choice): a second, independent LRU (its own ν, θ, γ, B, C) runs backwards over
the sequence; the two Re(C x) are summed, D is shared.

ν_log, θ_log, γ_log and B carry ``_optim = {"lr": lr, "weight_decay": 0}`` (the paper trains them with a reduced
learning rate and no weight decay; the public minimal-LRU code uses 0.5x the global lr); C and D use the global
settings.

Recurrent mode (``bidirectional=False`` only): ``state = layer.default_state(B)``, then
``y_t, state = layer.step(x_t, state)``.

Precision: the recurrence (Λ, γ B u, the scan, Re(C x) and D u) runs in float32 / complex64 with autocast off, on
the input cast to float32 (models/precision.py); under bf16 autocast the GLU's projection runs in bf16.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import at_least_float32, autocast_off
from models.registry import register_layer
from models.scan import complex_in, complex_in_matrix, diagonal_step, real_out, real_out_matrix, scan


def ring_init(n: int, r_min: float, r_max: float, max_phase: float, channels: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ν_log, θ_log), each (channels, N) float64: |λ| on the ring [r_min, r_max], arg λ in (0, max_phase]."""
    if not 0 <= r_min <= r_max < 1:
        raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise ValueError(f"max_phase must be positive, got {max_phase}")
    u1 = 1 - torch.rand(channels, n, dtype=torch.float64)   # (0, 1]: keeps log(0) out when r_min = 0
    u2 = 1 - torch.rand(channels, n, dtype=torch.float64)
    nu = -0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2)
    return torch.log(nu), torch.log(max_phase * u2)


class LRULayer(nn.Module):
    def __init__(self, d_model: int, d_state: int, r_min: float, r_max: float, max_phase: float,
                 bidirectional: bool, dropout: float, lr: float | None):
        super().__init__()
        k = 2 if bidirectional else 1
        self.h, self.n, self.bidirectional = d_model, d_state, bidirectional
        nu_log, theta_log = ring_init(d_state, r_min, r_max, max_phase, k)        # (K, N)
        lam_abs = torch.exp(-torch.exp(nu_log))
        gamma_log = torch.log(torch.sqrt(1 - lam_abs ** 2))
        b = torch.randn(k, d_state, d_model, 2) / math.sqrt(2 * d_model)           # (K, N, H, re/im)
        rec = {"nu_log": nu_log.float(), "theta_log": theta_log.float(), "gamma_log": gamma_log.float(), "B": b}
        for name, value in rec.items():
            p = nn.Parameter(value)
            if lr is not None:
                p._optim = {"lr": lr, "weight_decay": 0.0}
            self.register_parameter(name, p)
        self.C = nn.Parameter(torch.randn(k, d_model, d_state, 2) / math.sqrt(d_state))  # (K, H, N, re/im)
        self.D = nn.Parameter(torch.randn(d_model))                                      # (H,)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(d_model, 2 * d_model)                                       # GLU halves it back to H
        self._step_mats: tuple[torch.Tensor, ...] | None = None

    def recurrence(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Λ (K, N), γ ⊙ B (K, N, H), C (K, H, N)) complex, from the current parameters."""
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        b = torch.exp(self.gamma_log)[..., None] * torch.view_as_complex(self.B)
        return lam, b, torch.view_as_complex(self.C)

    def lru(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrence alone, before the nonlinearity: (B, L, H) -> y = Re(C x) + D u, (B, L, H)."""
        if mask is not None:
            x = x * mask.unsqueeze(-1)                  # zero padding: the backward scan starts at the real end
        with autocast_off(x):                           # a recurrence over L: float32 under any autocast
            x = at_least_float32(x)
            lam, b, c = self.recurrence()
            y = self.D * x
            for d in range(lam.shape[0]):               # d = 1 runs backwards
                y = y + real_out(scan(lam[d], complex_in(x, b[d]), reverse=d == 1), c[d])  # (B, L, N) -> (B, L, H)
            return y

    def _act(self, y: torch.Tensor, stepping: bool = False) -> torch.Tensor:
        z = F.gelu(y)
        z = z if stepping and not self.training else self.drop(z)  # (a step in eval skips the module call's overhead)
        return F.glu(self.out(z), dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H); padded positions (mask False) are zeroed first, so nothing leaks from them."""
        return self._act(self.lru(x, mask))

    # -- recurrent mode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (B, N) complex; also (re)builds Λ and the real matrices of γ B and C that ``step`` uses, from
        the current parameters (re-run it after they change)."""
        if self.bidirectional:
            raise ValueError("step mode needs a causal layer: build it with bidirectional=False")
        lam, b, c = self.recurrence()
        self._step_mats = (lam[0], complex_in_matrix(b[0]), real_out_matrix(c[0]))
        return torch.zeros(batch_size, self.n, dtype=lam.dtype, device=lam.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> y_t (B, H), with state (B, N) from ``default_state`` or a previous step."""
        if self._step_mats is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        y, state = diagonal_step(x_t, state, *self._step_mats, self.D)
        return self._act(y, stepping=True), state


@register_layer("lru")
def lru(d_model: int, l_max: int, d_state: int = 128, r_min: float = 0.0, r_max: float = 0.999,
        max_phase: float = 2 * math.pi, bidirectional: bool = False, dropout: float = 0.0,
        lr: float | None = 1e-3) -> nn.Module:
    """LRU (Orvieto et al., ICML 2023): complex diagonal linear recurrence, ring init, γ normalisation, GLU output.

    Args:
        d_model: width H.
        l_max: unused (the scan takes any length).
        d_state: N complex states (minimal-LRU's default 128).
        r_min, r_max: ring of the |λ| init. Defaults: r_min 0 as in the paper's app. A pseudocode; r_max 0.999
            rather than its 1 so that γ = sqrt(1 - |λ|^2) stays positive. Long-range tasks want r_min near 1.
        max_phase: θ init range (0, max_phase]; 2π by default (the paper restricts it to π/10 on Path-X).
        bidirectional: add a second, independent LRU run backwards; outputs summed.
        dropout: after the GELU.
        lr: learning rate of ν_log, θ_log, γ_log and B, which also get weight decay 0.
    """
    return LRULayer(d_model, d_state, r_min, r_max, max_phase, bidirectional, dropout, lr)
