"""SSM convolution kernels: S4's NPLR kernel (Cauchy + Woodbury) and S4D's diagonal kernel (Vandermonde).

H channels of width (d_model), N state size (both members of each conjugate pair), N/2 stored pairs,
C output channels of the kernel (2 when the layer is bidirectional), L kernel length.

Both modules return the real kernel ``k`` (C, H, L) of the discrete SSM x_l = Ā x_{l-1} + B̄ u_l, y_l = Re(C x_l):
k[c, h, l] = Re(C[c, h] Ā[h]^l B̄[h]), and expose ``dense_ssm()`` -> (A, B, C, dt) over the full state in complex
dense form (complex128) so that this identity can be checked. SSM parameters (A, B, P, dt) carry the optimizer
hint ``_optim = {"lr": lr, "weight_decay": 0}``; C uses the global settings.

The kernel is always computed in float32 / complex64 with autocast off, whatever region it is called from
(models/precision.py says why): under bf16 autocast its output is still float32.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.s4.hippo import diag_init, nplr_legs, random_nplr
from models.precision import autocast_off
from models.s4.kernels import cauchy_conj, resolve_backend, vandermonde


def _cparam(t: torch.Tensor) -> nn.Parameter:
    """A complex tensor stored as a real (..., 2) parameter (optimizers and checkpoints see real numbers)."""
    return nn.Parameter(torch.view_as_real(t.to(torch.complex64)).clone())


def _ssm_param(module: nn.Module, name: str, value: torch.Tensor, lr: float | None) -> None:
    p = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
    if lr is not None:
        p._optim = {"lr": lr, "weight_decay": 0.0}
    module.register_parameter(name, p)


def _full(x: torch.Tensor) -> torch.Tensor:
    """(..., N/2) -> (..., N): both members of each conjugate pair."""
    return torch.cat([x, x.conj()], dim=-1)


class _SSMKernel(nn.Module):
    """Shared parts: timescales dt (log-uniform in [dt_min, dt_max]) and the chosen kernel backend."""

    discretization = "bilinear"

    def __init__(self, d_model: int, d_state: int, channels: int, dt_min: float, dt_max: float,
                 lr: float | None, backend: str):
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
        self.h, self.n, self.channels, self.backend = d_model, d_state, channels, backend
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        _ssm_param(self, "log_dt", log_dt, lr)
        self.kernel_backend = "unresolved"

    def _resolve(self, device: torch.device) -> str:
        self.kernel_backend = resolve_backend(self.backend, device)
        return self.kernel_backend

    def forward(self, length: int) -> torch.Tensor:
        """The real kernel (C, H, length), float32, computed with autocast off (parameters are float32)."""
        with autocast_off(self.log_dt):
            return self._kernel(length)

    def _kernel(self, length: int) -> torch.Tensor:
        raise NotImplementedError


class NPLRKernel(_SSMKernel):
    """S4: A = Λ - P P* (diagonal plus rank one, in HiPPO's eigenbasis), bilinear discretization.

    The output matrix is stored as C̃ = C (I - Ā^{l_max}) (the paper's trick), so the generating function at the
    l_max-th roots of unity is C̃ (I - Ā ω)^{-1} B̄ exactly, and its inverse FFT is exactly the length-l_max kernel;
    shorter lengths are its prefix.
    """

    def __init__(self, d_model: int, l_max: int, d_state: int = 64, channels: int = 1, init: str = "legs",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float | None = 1e-3, backend: str = "auto"):
        super().__init__(d_model, d_state, channels, dt_min, dt_max, lr, backend)
        if init == "legs":
            lam, p, b, _ = nplr_legs(d_state)
        elif init == "random":
            lam, p, b = random_nplr(d_state)
        else:
            raise ValueError(f"unknown S4 init {init!r}; known: legs, random")
        self.l_max = l_max
        rep = lambda t: t.to(torch.complex64).expand(d_model, -1).clone()  # (H, N/2)
        _ssm_param(self, "log_neg_re", torch.log(-lam.real).float().expand(d_model, -1).clone(), lr)  # Re Λ = -exp
        _ssm_param(self, "im", lam.imag.float().expand(d_model, -1).clone(), lr)
        _ssm_param(self, "P", _cparam(rep(p)), lr)
        _ssm_param(self, "B", _cparam(rep(b)), lr)
        c = torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64)  # C̃ ~ CN(0, 1)
        self.C = _cparam(c)

    def _params(self):
        lam = torch.complex(-torch.exp(self.log_neg_re), self.im)  # (H, N/2)
        c = torch.view_as_complex(self.C)
        return torch.exp(self.log_dt), lam, torch.view_as_complex(self.P), torch.view_as_complex(self.B), c

    def _kernel(self, length: int) -> torch.Tensor:
        """The real kernel (C, H, length), length <= l_max."""
        if length > self.l_max:
            raise ValueError(f"S4 kernel was built for l_max={self.l_max}; asked for length {length}. "
                             "Build the layer with a larger l_max.")
        backend = self._resolve(self.log_dt.device)
        dt, lam, p, b, c = self._params()
        lk = self.l_max
        k = torch.arange(lk // 2 + 1, device=dt.device, dtype=torch.float64)
        omega = torch.exp(-2j * math.pi * k / lk)                                  # roots of unity, float64
        nyquist = lk % 2 == 0                                                      # ω = -1: closed form below
        om = omega[:-1] if nyquist else omega
        y = (2 * (1 - om) / (1 + om)).imag.float()                                  # bilinear map z = iy: purely imaginary
        w = dt[:, None] * lam                                                      # (H, N/2)
        left = torch.cat([c, p.conj()[None]], 0)                                   # (C+1, H, N/2): C̃ and P*
        right = torch.stack([b, p], 0) * dt[:, None]                               # (2, H, N/2): ΔB and ΔP
        v = (left[:, None] * right[None]).reshape(-1, self.h, self.n // 2)         # (2(C+1), H, N/2)
        r = cauchy_conj(v, y, w, backend=backend).view(self.channels + 1, 2, self.h, -1)  # over both pair members
        rc, rp = r.split([self.channels, 1])                                       # split: no zero-filled grads
        (k00, k01), (k10, k11) = rc.unbind(1), rp[0].unbind(0)
        khat = (k00 - k01 * k10 / (1 + k11)) * (2 / (1 + om)).to(torch.complex64)  # Woodbury: (C, H, L/2(+1))
        if nyquist:  # (I + Ā)^{-1} B̄ = Δ B / 2, so k̂(-1) = Δ/2 · C̃ B = Δ Re(Σ_half C̃ B)
            kn = dt * (c * b).sum(-1).real                                         # (C, H)
            khat = torch.cat([khat, kn[..., None].to(khat.dtype)], -1)
        return torch.fft.irfft(khat, n=lk)[..., :length]                          # (C, H, length)

    @torch.no_grad()
    def dense_ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A (H, N, N), B (H, N), C (C, H, N), dt (H,)) in complex128/float64, with C = C̃ (I - Ā^{l_max})^{-1}."""
        dt, lam, p, b, c = (t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in self._params())
        pf = _full(p)
        a = torch.diag_embed(_full(lam)) - pf[:, :, None] * pf.conj()[:, None, :]
        abar, _ = self.discretize(a, _full(b), dt)
        eye = torch.eye(self.n, dtype=a.dtype, device=a.device)
        # row vector C = C̃ (I - Ā^L)^{-1}  <=>  (I - Ā^L)^T C^T = C̃^T
        m = (eye - torch.linalg.matrix_power(abar, self.l_max)).transpose(-1, -2)  # (H, N, N)
        cc = torch.linalg.solve(m, _full(c)[..., None]).squeeze(-1)                  # (C, H, N)
        return a, _full(b), cc, dt

    @staticmethod
    def discretize(a: torch.Tensor, b: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear: Ā = (I - Δ/2 A)^{-1}(I + Δ/2 A), B̄ = (I - Δ/2 A)^{-1} Δ B, for dense A (H, N, N)."""
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        half = dt[:, None, None] / 2 * a
        inv = torch.linalg.inv(eye - half)
        return inv @ (eye + half), (inv @ (dt[:, None] * b)[..., None]).squeeze(-1)


class DiagKernel(_SSMKernel):
    """S4D: diagonal A; ZOH (default) or bilinear discretization; a Vandermonde product gives the kernel."""

    def __init__(self, d_model: int, l_max: int, d_state: int = 64, channels: int = 1, init: str = "diag-lin",
                 discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float | None = 1e-3,
                 backend: str = "auto"):
        super().__init__(d_model, d_state, channels, dt_min, dt_max, lr, backend)
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"unknown discretization {discretization!r}; known: zoh, bilinear")
        self.discretization = discretization
        a = diag_init(d_state, init)
        _ssm_param(self, "log_neg_re", torch.log(-a.real).float().expand(d_model, -1).clone(), lr)
        _ssm_param(self, "im", a.imag.float().expand(d_model, -1).clone(), lr)
        _ssm_param(self, "B", _cparam(torch.ones(d_model, d_state // 2, dtype=torch.complex64)), lr)
        self.C = _cparam(torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64))

    def _discrete(self, dt, a, b):
        """(log Ā, B̄) per pair: ZOH Ā = exp(ΔA), B̄ = (Ā - 1)/A B; bilinear Ā = (1+ΔA/2)/(1-ΔA/2), B̄ = ΔB/(1-ΔA/2)."""
        dta = dt[:, None] * a
        if self.discretization == "zoh":
            return dta, (torch.exp(dta) - 1) / a * b
        return torch.log((1 + dta / 2) / (1 - dta / 2)), dt[:, None] * b / (1 - dta / 2)

    def _params(self):
        a = torch.complex(-torch.exp(self.log_neg_re), self.im)
        return torch.exp(self.log_dt), a, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def _kernel(self, length: int) -> torch.Tensor:
        """The real kernel (C, H, length): 2 Re(Σ_pairs C B̄ Ā^l)."""
        backend = self._resolve(self.log_dt.device)
        dt, a, b, c = self._params()
        log_abar, bbar = self._discrete(dt, a, b)
        return 2 * vandermonde(c * bbar, log_abar, length, backend=backend).real

    @torch.no_grad()
    def dense_ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A (H, N, N) diagonal, B (H, N), C (C, H, N), dt (H,)) in complex128/float64."""
        dt, a, b, c = (t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in self._params())
        return torch.diag_embed(_full(a)), _full(b), _full(c), dt
