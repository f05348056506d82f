"""The S4 / S4D sequence layer: SSM convolution (FFT, linear not circular) + D skip, GELU, dropout,
position-wise linear with GLU. Registered as ``s4`` (NPLR kernel, HiPPO-LegS) and ``s4d`` (diagonal kernel).

B batch, L length, H d_model, N d_state, C kernel channels (2 when bidirectional: one per direction).

Recurrent mode: ``state = layer.default_state(B)`` (which also prepares the discrete matrices from the current
parameters: call it again after the parameters change), then ``y_t, state = layer.step(x_t, state)`` for x_t (B, H)
gives exactly the causal convolution's output at t. Only for ``bidirectional=False``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_layer
from models.s4.kernel import DiagKernel, NPLRKernel


class S4Layer(nn.Module):
    def __init__(self, kernel: nn.Module, d_model: int, bidirectional: bool, dropout: float):
        super().__init__()
        self.kernel, self.bidirectional = kernel, bidirectional
        self.D = nn.Parameter(torch.randn(d_model))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, 2 * d_model)  # GLU halves it back to H
        self._step_mats: tuple[torch.Tensor, ...] | None = None

    @property
    def kernel_backend(self) -> str:
        return self.kernel.kernel_backend

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H); padded positions (mask False) are zeroed first, so nothing leaks from them."""
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        length = x.shape[1]
        u = x.transpose(1, 2)                               # (B, H, L)
        k = self.kernel(length)                             # (C, H, L)
        if self.bidirectional:                              # forward kernel, plus the second run backwards
            k = F.pad(k[0], (0, length)) + F.pad(k[1].flip(-1), (length, 0))  # (H, 2L)
        else:
            k = k[0]
        n_fft = 2 * length                                  # linear, not circular, convolution
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(k, n=n_fft), n=n_fft)[..., :length]
        y = y + u * self.D[:, None]                         # (B, H, L)
        y = self.drop(F.gelu(y)).transpose(1, 2)            # (B, L, H)
        return F.glu(self.out(y), dim=-1)

    # -- recurrent mode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (B, H, N) complex; also (re)builds the discrete matrices from the current parameters."""
        if self.bidirectional:
            raise ValueError("step mode needs a causal layer: build it with bidirectional=False")
        a, b, c, dt = self.kernel.dense_ssm()
        if isinstance(self.kernel, DiagKernel):
            log_abar, bbar = self.kernel._discrete(dt, torch.diagonal(a, dim1=-2, dim2=-1), b)
            abar = torch.diag_embed(torch.exp(log_abar))
        else:
            abar, bbar = NPLRKernel.discretize(a, b, dt)
        dtype = torch.complex64
        self._step_mats = (abar.to(dtype), bbar.to(dtype), c[0].to(dtype))  # (H, N, N), (H, N), (H, N)
        return torch.zeros(batch_size, *bbar.shape, dtype=dtype, device=self.D.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> y_t (B, H), with state (B, H, N) from ``default_state`` or a previous step."""
        if self._step_mats is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        abar, bbar, c = self._step_mats
        state = torch.einsum("hmn,bhn->bhm", abar, state) + bbar * x_t[..., None].to(state.dtype)
        y = (state * c).sum(-1).real + self.D * x_t         # (B, H)
        return F.glu(self.out(F.gelu(y)), dim=-1), state


@register_layer("s4")
def s4(d_model: int, l_max: int, d_state: int = 64, bidirectional: bool = False, dropout: float = 0.0,
       init: str = "legs", dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float = 1e-3,
       backend: str = "auto") -> nn.Module:
    """S4 (Gu, Goel & Ré, ICLR 2022): NPLR SSM kernel by Cauchy kernels and the Woodbury identity.

    Args:
        d_model: width H (independent SSMs, one per channel).
        l_max: longest sequence; the kernel is computed at this length and cut to the input's length.
        d_state: state size N (even: N/2 conjugate pairs are stored).
        bidirectional: add a second kernel run backwards (non-causal tasks).
        dropout: after the activation.
        init: ``legs`` (HiPPO-LegS) or ``random`` (random NPLR ablation).
        dt_min, dt_max: range of the log-uniform timescale init.
        lr: learning rate of the SSM parameters (A, B, P, dt), which also get weight decay 0.
        backend: Cauchy kernel backend: auto, ref, keops, triton.
    """
    kern = NPLRKernel(d_model, l_max, d_state, 2 if bidirectional else 1, init, dt_min, dt_max, lr, backend)
    return S4Layer(kern, d_model, bidirectional, dropout)


@register_layer("s4d")
def s4d(d_model: int, l_max: int, d_state: int = 64, bidirectional: bool = False, dropout: float = 0.0,
        init: str = "diag-lin", discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1,
        lr: float = 1e-3, backend: str = "auto") -> nn.Module:
    """S4D (Gu, Gupta, Goel & Ré, NeurIPS 2022): diagonal SSM kernel by a Vandermonde product.

    Args:
        d_model, l_max, d_state, bidirectional, dropout, dt_min, dt_max, lr, backend: as for ``s4``.
        init: ``diag-lin`` (S4D-Lin) or ``diag-inv`` (S4D-Inv).
        discretization: ``zoh`` (default) or ``bilinear``.
    """
    kern = DiagKernel(d_model, l_max, d_state, 2 if bidirectional else 1, init, discretization, dt_min, dt_max,
                      lr, backend)
    return S4Layer(kern, d_model, bidirectional, dropout)
