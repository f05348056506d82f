"""SSM convolution kernels: S4's NPLR kernel (Cauchy + Woodbury) and S4D's diagonal kernel (Vandermonde).

H channels of width (d_model), N state size (both members of each conjugate pair), N/2 stored pairs,
C output channels of the kernel (2 when the layer is bidirectional), L kernel length, K = n_ssm the number of
independent (A, P, B) copies.

Both modules return the real kernel ``k`` (C, H, L) of the discrete SSM x_l = Ā x_{l-1} + B̄ u_l, y_l = Re(C x_l):
k[c, h, l] = Re(C[c, h] Ā[h]^l B̄[h]), and expose ``dense_ssm()`` -> (A, B, C, dt) over the full state in complex
dense form (complex128), per channel, so that this identity can be checked.

Sharing (``n_ssm``): A (and P) and B are stored once per copy, (K, N/2); channel h uses copy h % K (the copies are
tiled over the channels, K = H by default: one per channel). dt (H,), C (C, H, N/2) and the layer's D are always
per channel.

Optimizer hints (harness/optim.py): A, P and B carry ``_optim = {"lr": lr, "weight_decay": 0}`` (nothing when
lr is None); dt carries ``{"lr": <dt_lr>, "weight_decay": 0}`` and C ``{"lr": <c_lr>}`` (keeping the global
weight decay), where "ssm" means the layer's ``lr`` and "main" means no "lr" key: the optimizer's main lr.
Defaults: dt_lr="ssm", c_lr="main".

The kernel is always computed in float32 / complex64 with autocast off, whatever region it is called from
(models/precision.py says why): under bf16 autocast its output is still float32.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.s4.hippo import diag_init, nplr_legs, random_nplr
from models.params import complex_param, hint
from models.precision import autocast_off
from models.s4.kernels import cauchy_conj, resolve_backend, vandermonde


def _ssm_param(module: nn.Module, name: str, value: torch.Tensor, lr: float | None) -> None:
    """An SSM parameter: its own lr and no weight decay (no hint at all when lr is None)."""
    _hinted_param(module, name, value, lr, None if lr is None else 0.0)


def _hinted_param(module: nn.Module, name: str, value: torch.Tensor, lr: float | None,
                  weight_decay: float | None) -> None:
    """Register ``name`` with the hint {"lr": lr, "weight_decay": weight_decay}, leaving out the keys that are None
    (the optimizer's main value then applies) and the hint itself when both are."""
    p = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
    module.register_parameter(name, hint(p, lr=lr, weight_decay=weight_decay))


def _lr_choice(spec: float | str, lr: float | None, what: str) -> float | None:
    """The lr a hint carries: "ssm" -> the layer's ``lr``; "main" -> None (the optimizer's main lr); or a float."""
    if isinstance(spec, str):
        if spec == "ssm":
            return lr
        if spec == "main":
            return None
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec >= 0:
        return float(spec)
    raise ValueError(f"{what} must be 'ssm', 'main' or a learning rate >= 0, got {spec!r}")


def _full(x: torch.Tensor) -> torch.Tensor:
    """(..., N/2) -> (..., N): both members of each conjugate pair."""
    return torch.cat([x, x.conj()], dim=-1)


class _SSMKernel(nn.Module):
    """Shared parts: timescales dt (log-uniform in [dt_min, dt_max], one per channel), the (A, P, B) sharing and the
    chosen kernel backend."""

    discretization = "bilinear"

    def __init__(self, d_model: int, d_state: int, channels: int, dt_min: float, dt_max: float,
                 lr: float | None, backend: str, n_ssm: int | None = None, dt_lr: float | str = "ssm"):
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
        n_ssm = d_model if n_ssm is None else n_ssm
        if isinstance(n_ssm, bool) or not isinstance(n_ssm, int) or n_ssm < 1 or d_model % n_ssm:
            raise ValueError(f"n_ssm must be None or a positive divisor of d_model={d_model}, got {n_ssm!r}")
        dt_hint = _lr_choice(dt_lr, lr, "dt_lr")
        self.h, self.n, self.channels, self.backend, self.n_ssm = d_model, d_state, channels, backend, n_ssm
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        _hinted_param(self, "log_dt", log_dt, dt_hint, 0.0)
        self.kernel_backend = "unresolved"

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        """(K, ...) per copy -> (H, ...) per channel, channel h taking copy h % K."""
        if self.n_ssm == self.h:
            return t
        return t.repeat(self.h // self.n_ssm, *([1] * (t.dim() - 1)))

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

    Initialization of the output matrix (``c_init``); both draw Z (C, H, N/2) i.i.d. complex standard normal
    (``torch.randn`` complex64: real and imaginary parts each N(0, 1/2), E|Z|^2 = 1), one per direction, channel
    and stored pair:
        "tilde":    C̃ = Z. The implied C = C̃ (I - Ā^{l_max})^{-1} then depends on dt and l_max.
        "upstream": C = Z and C̃ = C (I - Ā^{l_max}), formed once here in complex128 over the full conjugate state
                    from the initial dt, A, P, B (bilinear Ā), then the stored half is kept (state-spaces/s4 does
                    the same conversion in place on its first forward).
    ``b_clip``: clip Im(B) (the eigenbasis HiPPO B) to [-b_clip, b_clip] at init; Re(B) and P are not changed.
    """

    def __init__(self, d_model: int, l_max: int, d_state: int = 64, channels: int = 1, init: str = "legs",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float | None = 1e-3, backend: str = "auto", *,
                 n_ssm: int | None = None, b_clip: float | None = None, c_init: str = "tilde",
                 dt_lr: float | str = "ssm", c_lr: float | str = "main"):
        if c_init not in ("tilde", "upstream"):
            raise ValueError(f"unknown c_init {c_init!r}; known: tilde, upstream")
        if b_clip is not None and not b_clip >= 0:
            raise ValueError(f"b_clip must be None or >= 0, got {b_clip!r}")
        c_hint = _lr_choice(c_lr, lr, "c_lr")
        super().__init__(d_model, d_state, channels, dt_min, dt_max, lr, backend, n_ssm, dt_lr)
        if init == "legs":
            lam, p, b, _ = nplr_legs(d_state)
        elif init == "random":
            lam, p, b = random_nplr(d_state)
        else:
            raise ValueError(f"unknown S4 init {init!r}; known: legs, random")
        if b_clip is not None:
            b = torch.complex(b.real, b.imag.clamp(-b_clip, b_clip))
        self.l_max = l_max
        k = self.n_ssm
        rep = lambda t: t.to(torch.complex64).expand(k, -1).clone()  # (K, N/2)
        _ssm_param(self, "log_neg_re", torch.log(-lam.real).float().expand(k, -1).clone(), lr)  # Re Λ = -exp
        _ssm_param(self, "im", lam.imag.float().expand(k, -1).clone(), lr)
        _ssm_param(self, "P", complex_param(rep(p)), lr)
        _ssm_param(self, "B", complex_param(rep(b)), lr)
        c = torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64)  # Z ~ CN(0, 1)
        if c_init == "upstream":
            c = self._c_tilde(c)
        _hinted_param(self, "C", complex_param(c), c_hint, None)

    def _ssm(self):
        """(dt (H,), Λ, P, B (H, N/2)) per channel."""
        lam = torch.complex(-torch.exp(self.log_neg_re), self.im)  # (K, N/2)
        p, b = torch.view_as_complex(self.P), torch.view_as_complex(self.B)
        return torch.exp(self.log_dt), self._per_channel(lam), self._per_channel(p), self._per_channel(b)

    def _params(self):
        return (*self._ssm(), torch.view_as_complex(self.C))

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
    def _dense_system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A (H, N, N), B (H, N), Ā (H, N, N), dt (H,)) over the full state, complex128/float64."""
        dt, lam, p, b = (t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in self._ssm())
        pf = _full(p)
        a = torch.diag_embed(_full(lam)) - pf[:, :, None] * pf.conj()[:, None, :]
        abar, _ = self.discretize(a, _full(b), dt)
        return a, _full(b), abar, dt

    @torch.no_grad()
    def _c_tilde(self, c: torch.Tensor) -> torch.Tensor:
        """C (C, H, N/2) -> C̃ = C (I - Ā^{l_max}) (C, H, N/2): row vectors over the full state, then the stored half."""
        _, _, abar, _ = self._dense_system()
        cf = _full(c.to(torch.complex128))                                          # (C, H, N)
        ct = cf - torch.einsum("chm,hmn->chn", cf, torch.linalg.matrix_power(abar, self.l_max))
        return ct[..., : self.n // 2].to(c.dtype)

    @torch.no_grad()
    def dense_ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A (H, N, N), B (H, N), C (C, H, N), dt (H,)) in complex128/float64, with C = C̃ (I - Ā^{l_max})^{-1}."""
        a, b, abar, dt = self._dense_system()
        c = torch.view_as_complex(self.C).detach().to(torch.complex128)
        eye = torch.eye(self.n, dtype=a.dtype, device=a.device)
        # row vector C = C̃ (I - Ā^L)^{-1}  <=>  (I - Ā^L)^T C^T = C̃^T
        m = (eye - torch.linalg.matrix_power(abar, self.l_max)).transpose(-1, -2)  # (H, N, N)
        cc = torch.linalg.solve(m, _full(c)[..., None]).squeeze(-1)                  # (C, H, N)
        return a, b, cc, dt

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
                 backend: str = "auto", *, n_ssm: int | None = None, dt_lr: float | str = "ssm",
                 c_lr: float | str = "main"):
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"unknown discretization {discretization!r}; known: zoh, bilinear")
        c_hint = _lr_choice(c_lr, lr, "c_lr")
        super().__init__(d_model, d_state, channels, dt_min, dt_max, lr, backend, n_ssm, dt_lr)
        self.discretization = discretization
        a = diag_init(d_state, init)
        k = self.n_ssm
        _ssm_param(self, "log_neg_re", torch.log(-a.real).float().expand(k, -1).clone(), lr)
        _ssm_param(self, "im", a.imag.float().expand(k, -1).clone(), lr)
        _ssm_param(self, "B", complex_param(torch.ones(k, d_state // 2, dtype=torch.complex64)), lr)
        c = torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64)
        _hinted_param(self, "C", complex_param(c), c_hint, None)

    def _discrete(self, dt, a, b):
        """(log Ā, B̄) per pair: ZOH Ā = exp(ΔA), B̄ = (Ā - 1)/A B; bilinear Ā = (1+ΔA/2)/(1-ΔA/2), B̄ = ΔB/(1-ΔA/2)."""
        dta = dt[:, None] * a
        if self.discretization == "zoh":
            return dta, (torch.exp(dta) - 1) / a * b
        return torch.log((1 + dta / 2) / (1 - dta / 2)), dt[:, None] * b / (1 - dta / 2)

    def _params(self):
        """(dt (H,), A, B (H, N/2) per channel, C (C, H, N/2))."""
        a = self._per_channel(torch.complex(-torch.exp(self.log_neg_re), self.im))
        b = self._per_channel(torch.view_as_complex(self.B))
        return torch.exp(self.log_dt), a, b, torch.view_as_complex(self.C)

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
