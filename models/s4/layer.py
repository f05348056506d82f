"""The S4 / S4D sequence layer: SSM convolution (FFT, linear not circular) + D skip, [dropout,] GELU, dropout,
position-wise linear with GLU. Registered as ``s4`` (NPLR kernel, HiPPO-LegS) and ``s4d`` (diagonal kernel).

Dropout (p = ``dropout``; none at all when p = 0): after the GELU, element-wise or, with ``tie_dropout``, one mask
per (example, channel) shared by all positions; with ``pre_gelu_dropout`` also an element-wise one on the SSM
output y + D u before the GELU (state-spaces/s4 HEAD's FFTConv dropout). Both are the identity in eval mode, and
step mode applies neither.

B batch, L length, H d_model, N d_state, C kernel channels (2 when bidirectional: one per direction).

Recurrent mode (models/s4/step.py): ``state = layer.default_state(B)`` (which also prepares the step's matrices from
the current parameters: call it again after the parameters change), then ``y_t, state = layer.step(x_t, state)``
for x_t (B, H) gives the causal convolution's output at t. Only for ``bidirectional=False``. The default step costs
O(H N) per token: S4D's is natively diagonal; S4's uses that the bilinear Ā of A = Λ - P P* is diagonal plus rank
one, and is as accurate as the dense step at every N. ``default_state(B, mode="dense")`` keeps the O(H N^2)
dense-Ā reference. ``mode="diagonal"`` on S4 diagonalises Ā (state-spaces/s4's "diagonal" step): HiPPO-LegS's
eigenvectors are ill-conditioned (cond ~ 1e7 at N = 16, ~1e9 beyond), so it degrades from N ~ 8 on and is wrong
at N >= 16 (results/efficiency/s4_step_conditioning.md); it is never chosen by default.

Precision: the kernel and the FFT convolution run in float32 with autocast off, on the input cast to float32
(models/precision.py); under bf16 autocast only the output projection runs in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import TiedDropout  # one mask per (example, channel), as the residual's
from models.params import hint
from models.precision import at_least_float32, autocast_off, float32_backward
from models.registry import register_layer
from models.s4.kernel import DiagKernel, NPLRKernel
from models.s4.step import FastPlan, dense_plan, dense_step, dplr_system, eig_system, fast_plan, fast_step, s4d_system


class _FFTConv(torch.autograd.Function):
    """y = (u * k)[:L], the linear convolution of u (B, H, L) with k (H, M), M <= 2L, by FFTs of size 2L.

    The backward reuses the forward's spectra: grad_u = irfft(G conj(K))[:L], grad_k = irfft(sum_b G conj(U))[:M]
    (circular correlations), which costs three real FFTs instead of autograd's complex ones.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        n = 2 * u.shape[-1]
        uf, kf = torch.fft.rfft(u, n=n), torch.fft.rfft(k, n=n)   # (B, H, L+1), (H, L+1)
        ctx.save_for_backward(uf, kf)
        ctx.sizes = (u.shape[-1], k.shape[-1])
        return torch.fft.irfft(uf * kf, n=n)[..., : u.shape[-1]]

    @staticmethod
    @float32_backward
    def backward(ctx, gy: torch.Tensor):
        uf, kf = ctx.saved_tensors
        length, m = ctx.sizes
        gf = torch.fft.rfft(gy, n=2 * length)                   # gy zero-padded: y was cut to L
        gu = torch.fft.irfft(gf * kf.conj(), n=2 * length)[..., :length] if ctx.needs_input_grad[0] else None
        gk = None
        if ctx.needs_input_grad[1]:
            acc = gf[0] * uf[0].conj()                          # sum_b G conj(U), accumulated in place: 3x faster
            for b in range(1, gf.shape[0]):                     # than (gf * uf.conj()).sum(0) on a 2-core CPU
                acc.addcmul_(gf[b], uf[b].conj())
            gk = torch.fft.irfft(acc, n=2 * length)[..., :m]
        return gu, gk


class S4Layer(nn.Module):
    def __init__(self, kernel: nn.Module, d_model: int, bidirectional: bool, dropout: float,
                 tie_dropout: bool = False, pre_gelu_dropout: bool = False, decay_d: bool = False):
        super().__init__()
        self.kernel, self.bidirectional = kernel, bidirectional
        self.D = nn.Parameter(torch.randn(d_model))
        if decay_d:  # a 1-D parameter gets no weight decay by default (harness/optim.py); the S4 code decays D
            hint(self.D, weight_decay="main")
        if dropout > 0:
            self.drop = TiedDropout(dropout) if tie_dropout else nn.Dropout(dropout)
        else:
            self.drop = nn.Identity()
        self.pre_drop = nn.Dropout(dropout) if pre_gelu_dropout and dropout > 0 else nn.Identity()
        self.out = nn.Linear(d_model, 2 * d_model)  # GLU halves it back to H
        self._step_plan: FastPlan | tuple[torch.Tensor, ...] | None = None

    @property
    def kernel_backend(self) -> str:
        return self.kernel.kernel_backend

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H); padded positions (mask False) are zeroed first, so nothing leaks from them."""
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        length = x.shape[1]
        with autocast_off(x):                               # the SSM in float32, whatever the autocast dtype
            u = at_least_float32(x).transpose(1, 2)         # (B, H, L)
            kc = self.kernel(length)                        # (C, H, L)
            k = torch.cat([kc[0, :, :1] + self.D[:, None], kc[0, :, 1:]], -1)  # D skip folded into lag 0: k*u + D u
            if self.bidirectional:                          # plus the second kernel, run backwards
                k = F.pad(k, (0, length)) + F.pad(kc[1].flip(-1), (length, 0))  # (H, 2L)
            y = _FFTConv.apply(u, k)                        # (B, H, L), linear (not circular) convolution
        y = y.transpose(1, 2).contiguous()                  # (B, L, H); the activation and its gradient then share
        y = self.drop(F.gelu(self.pre_drop(y)))             # one layout (mixed strides made GELU's backward 3x slower)
        return F.glu(self.out(y), dim=-1)

    # -- recurrent mode ---------------------------------------------------------------------------------
    @torch.no_grad()
    def default_state(self, batch_size: int, mode: str = "auto") -> torch.Tensor:
        """Zero state for ``step``; also (re)builds the step's matrices from the current parameters.

        Args:
            batch_size: B.
            mode: ``auto`` (S4: ``dplr``; S4D: ``diagonal``), ``dense`` (the reference: dense Ā, state (B, H, N),
                O(H N^2) per token), ``dplr`` (S4 only: Ā as diagonal plus rank one, state (B, H, N/2)) or
                ``diagonal`` (S4D: native, state (B, H, N/2); S4: by an eigendecomposition of Ā, state (B, H, N),
                inaccurate from N ~ 8 on, see models/s4/step.py). All states are complex64.
        """
        if self.bidirectional:
            raise ValueError("step mode needs a causal layer: build it with bidirectional=False")
        diag = isinstance(self.kernel, DiagKernel)
        modes = ("auto", "dense", "diagonal") if diag else ("auto", "dense", "dplr", "diagonal")
        if mode not in modes:
            raise ValueError(f"unknown step mode {mode!r} for {'s4d' if diag else 's4'}; known: {', '.join(modes)}")
        if mode == "auto":
            mode = "diagonal" if diag else "dplr"
        device = self.D.device
        if mode == "dense":
            self._step_plan = dense_plan(self.kernel)
            return torch.zeros(batch_size, *self._step_plan[1].shape, dtype=torch.complex64, device=device)
        if diag:
            system = s4d_system(self.kernel, self.D)
        else:
            system = dplr_system(self.kernel, self.D) if mode == "dplr" else eig_system(self.kernel, self.D)[0]
        self._step_plan = fast_plan(system)
        return torch.zeros(batch_size, self.D.shape[0], self._step_plan.m, dtype=torch.complex64, device=device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> y_t (B, H), with the state from ``default_state`` or a previous step."""
        plan = self._step_plan
        if plan is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        u = x_t.float()
        if isinstance(plan, FastPlan):
            y, state = fast_step(plan, u, state)
        else:
            y, state = dense_step(plan, u, self.D, state)
        return F.glu(self.out(F.gelu(y)), dim=-1), state


@register_layer("s4")
def s4(d_model: int, l_max: int, d_state: int = 64, bidirectional: bool = False, dropout: float = 0.0,
       init: str = "legs", dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float | None = 1e-3,
       backend: str = "auto", n_ssm: int | None = None, b_clip: float | None = None, c_init: str = "tilde",
       tie_dropout: bool = False, pre_gelu_dropout: bool = False, dt_lr: float | str = "ssm",
       c_lr: float | str = "main", decay_d: bool = False) -> nn.Module:
    """S4 (Gu, Goel & Ré, ICLR 2022): NPLR SSM kernel by Cauchy kernels and the Woodbury identity.

    Args:
        d_model: width H.
        l_max: longest sequence; the kernel is computed at this length and cut to the input's length.
        d_state: state size N (even: N/2 conjugate pairs are stored).
        bidirectional: add a second kernel run backwards (non-causal tasks); it shares dt, A, P, B and has its own C.
        dropout: probability p of the dropout after the activation (and of the pre-GELU one, if enabled).
        init: ``legs`` (HiPPO-LegS) or ``random`` (random NPLR ablation).
        dt_min, dt_max: range of the log-uniform timescale init (one dt per channel).
        lr: learning rate of the SSM parameters (A, B, P; and dt and C where ``dt_lr`` / ``c_lr`` say "ssm"),
            which get weight decay 0 (C excepted).
        backend: Cauchy kernel backend: auto, ref, keops, triton.
        n_ssm: number K of independent (A, P, B) copies; None: one per channel (K = H). K must divide H; channel h
            uses copy h % K (state-spaces/s4's '(v t)' tiling). dt, C and D stay per channel.
        b_clip: if set, clip Im(B) of the NPLR B (HiPPO B in the eigenbasis) to [-b_clip, b_clip] at init;
            Re(B) and P are unchanged (state-spaces/s4 v4 uses 2.0; at N=64 that changes 11 of 32 modes).
            None: no clipping.
        c_init: ``tilde``: the stored C̃ is drawn i.i.d. complex standard normal (real and imaginary parts each
            N(0, 1/2)), one per direction, channel and pair, and used as C̃ directly. ``upstream``: C is drawn so
            and C̃ = C (I - Ā^{l_max}) is formed at construction from the initial dt, A, P, B (bilinear Ā), so the
            kernel starts as the truncated generating function of the drawn C (state-spaces/s4).
        tie_dropout: the dropout after the GELU draws one mask per (example, channel), shared by all positions.
        pre_gelu_dropout: an extra element-wise dropout (same p, never tied) on the SSM output y + D u, before the
            GELU (state-spaces/s4 HEAD's FFTConv dropout).
        dt_lr: learning rate hint of dt: "ssm" (``lr``), "main" (the optimizer's main lr) or a float; dt always
            gets weight decay 0.
        c_lr: learning rate hint of C (C̃): "main" (default), "ssm" (``lr``) or a float; C keeps the main weight
            decay.
        decay_d: give the skip D the optimizer's main weight decay (the S4 code's rule; by default D, a 1-D
            parameter, gets none).
    """
    kern = NPLRKernel(d_model, l_max, d_state, 2 if bidirectional else 1, init, dt_min, dt_max, lr, backend,
                      n_ssm=n_ssm, b_clip=b_clip, c_init=c_init, dt_lr=dt_lr, c_lr=c_lr)
    return S4Layer(kern, d_model, bidirectional, dropout, tie_dropout, pre_gelu_dropout, decay_d)


@register_layer("s4d")
def s4d(d_model: int, l_max: int, d_state: int = 64, bidirectional: bool = False, dropout: float = 0.0,
        init: str = "diag-lin", discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1,
        lr: float | None = 1e-3, backend: str = "auto", n_ssm: int | None = None, tie_dropout: bool = False,
        pre_gelu_dropout: bool = False, dt_lr: float | str = "ssm", decay_d: bool = False) -> nn.Module:
    """S4D (Gu, Gupta, Goel & Ré, NeurIPS 2022): diagonal SSM kernel by a Vandermonde product.

    Args:
        d_model, l_max, d_state, bidirectional, dropout, dt_min, dt_max, backend: as for ``s4``.
        lr: learning rate of A and B (and of dt where ``dt_lr`` is "ssm"), which get weight decay 0; C uses the
            optimizer's main lr and weight decay.
        n_ssm, tie_dropout, pre_gelu_dropout, dt_lr, decay_d: as for ``s4`` (n_ssm shares A and B).
        init: ``diag-lin`` (S4D-Lin) or ``diag-inv`` (S4D-Inv).
        discretization: ``zoh`` (default) or ``bilinear``.
    """
    kern = DiagKernel(d_model, l_max, d_state, 2 if bidirectional else 1, init, discretization, dt_min, dt_max,
                      lr, backend, n_ssm=n_ssm, dt_lr=dt_lr)
    return S4Layer(kern, d_model, bidirectional, dropout, tie_dropout, pre_gelu_dropout, decay_d)
