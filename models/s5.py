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
initialiser reads fan_in from axis -2 of the (P, H) array) then B̃ = V^{-1} B; C̃ by ``c_init``:
"trunc_standard_normal" (default): C complex (H, P), real and imaginary parts truncated normal (at 2 std) with
variance 1/P, then C̃ = C V; "lecun_normal": the same with variance 1/(H P); "complex_normal": C̃ (H, P/2) drawn
directly (no V), real and imaginary parts N(0, 1/2), not truncated, so E|c̃|^2 = 1. D ~ N(0, 1);
log Δ ~ U[log dt_min, log dt_max]. ``clip_eigs``: the system uses min(Re Λ, -1e-4) + i Im Λ (the stored Λ is not
clipped; no gradient where the clip is active).

Optimiser hints (``param._optim``, read by harness/optim.py), by S5's ``opt_config`` / ``dt_global``: "standard":
Λ, B̃ and log Δ carry ``{"lr": lr, "weight_decay": 0}``; "BfastandCdecay": B̃ none (global lr and weight decay);
"BandCdecay": B̃ ``{"lr": lr}`` (SSM lr, global weight decay); ``dt_global``: log Δ ``{"weight_decay": "main"}``
(global lr and weight decay). C̃ carries none; D ``{"weight_decay": "main"}`` with ``decay_d`` (S5 decays it).

Recurrent mode (``bidirectional=False`` only): ``state = layer.default_state(B)`` (re-run it after the parameters
change), then ``y_t, state = layer.step(x_t, state)``.

Dropout (p = ``dropout``; none at all when p = 0): once, after the GELU, element-wise or, with ``tie_dropout``,
one mask per (example, channel) shared by all positions (as S5's flax ``Dropout(broadcast_dims=[0])``). S5's GLU
activations drop again after the GLU: that is the backbone's residual dropout here (backbone.dropout /
backbone.tie_dropout), so S5's count is layer and backbone dropout both p; its ``gelu`` activation drops only once
(layer dropout 0, backbone dropout p).

Precision: the SSM (discretisation, B̄ u, the scan, the read-out and D u) runs in float32 / complex64 with autocast
off, on the input cast to float32 (models/precision.py); under bf16 autocast the GLU's projections run in bf16.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import TiedDropout  # one mask per (example, channel), as the residual's
from models.precision import at_least_float32, autocast_off
from models.registry import register_layer
from models.s4.hippo import hippo_legs, nplr_legs
from models.scan import complex_in, complex_in_matrix, diagonal_step, real_out, real_out_matrix, scan

ACTIVATIONS = ("gelu", "full_glu", "half_glu1", "half_glu2")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
GELUS = {"exact": "none", "tanh": "tanh"}              # our name -> F.gelu's ``approximate``
OPT_CONFIGS = ("standard", "BfastandCdecay", "BandCdecay")
CLIP_EIGS_MAX = -1e-4                                   # S5's clip_eigs bound on Re Λ
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
                 discretization: str, dt_min: float, dt_max: float, dropout: float, lr: float | None,
                 c_init: str = "trunc_standard_normal", clip_eigs: bool = False, gelu: str = "exact",
                 tie_dropout: bool = False, opt_config: str = "standard", dt_global: bool = False,
                 decay_d: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if c_init not in C_INITS:
            raise ValueError(f"unknown c_init {c_init!r}; known: {', '.join(C_INITS)}")
        if gelu not in GELUS:
            raise ValueError(f"unknown gelu {gelu!r}; known: {', '.join(GELUS)}")
        if opt_config not in OPT_CONFIGS:
            raise ValueError(f"unknown opt_config {opt_config!r}; known: {', '.join(OPT_CONFIGS)}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"unknown discretization {discretization!r}; known: zoh, bilinear")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        lam, v = hippo_n_diag(d_state, blocks)           # (P/2,), (P, P/2)
        half, k = d_state // 2, 2 if bidirectional else 1
        self.h, self.p, self.bidirectional = d_model, d_state, bidirectional
        self.activation, self.discretization = activation, discretization
        self.clip_eigs, self.gelu_approximate = clip_eigs, GELUS[gelu]
        b = v.conj().T @ _trunc_normal(d_state, d_model, fan_in=d_state).to(v.dtype)   # (P/2, H) = V^{-1} B
        if c_init == "complex_normal":                   # C̃ itself, (H, K P/2) column blocks: forward, backward
            c = torch.view_as_complex(torch.randn(d_model, k * half, 2, dtype=torch.float64) * math.sqrt(0.5))
            c = c.reshape(d_model, k, half).transpose(0, 1).contiguous()                  # (K, H, P/2)
        else:
            fan_in = d_state if c_init == "trunc_standard_normal" else d_model * d_state
            c = torch.complex(_trunc_normal(k, d_model, d_state, fan_in=fan_in),
                              _trunc_normal(k, d_model, d_state, fan_in=fan_in)) @ v      # (K, H, P/2) = C V
        log_dt = torch.rand(half, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ssm = {"Lambda_re": nn.Parameter(lam.real.float()), "Lambda_im": nn.Parameter(lam.imag.float()),
               "B": _cparam(b), "log_dt": nn.Parameter(log_dt.float())}
        if lr is not None:                               # S5's "ssm" group: its own lr, no weight decay
            for name in ("Lambda_re", "Lambda_im") + (() if dt_global else ("log_dt",)):
                ssm[name]._optim = {"lr": lr, "weight_decay": 0.0}
            if opt_config == "standard":
                ssm["B"]._optim = {"lr": lr, "weight_decay": 0.0}
            elif opt_config == "BandCdecay":             # the SSM lr with the global weight decay (B is 3-D)
                ssm["B"]._optim = {"lr": lr}
            if dt_global:                                # S5's "regular" group: global lr and weight decay
                ssm["log_dt"]._optim = {"weight_decay": "main"}
        for name, p in ssm.items():
            self.register_parameter(name, p)
        self.C = _cparam(c)                              # (K, H, P/2, 2)
        self.D = nn.Parameter(torch.randn(d_model))      # (H,)
        if decay_d:                                      # 1-D: no weight decay unless a hint says so
            self.D._optim = {"weight_decay": "main"}
        if activation == "full_glu":
            self.out1 = nn.Linear(d_model, d_model)
        if activation != "gelu":
            self.out2 = nn.Linear(d_model, d_model)
        if dropout > 0:
            self.drop = TiedDropout(dropout) if tie_dropout else nn.Dropout(dropout)
        else:
            self.drop = nn.Identity()
        self._step_mats: tuple[torch.Tensor, ...] | None = None

    def lambda_real(self) -> torch.Tensor:
        """Re Λ as the system uses it: the parameter, or min(parameter, -1e-4) with ``clip_eigs``."""
        return self.Lambda_re.clamp(max=CLIP_EIGS_MAX) if self.clip_eigs else self.Lambda_re

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ̄ (P/2,), B̄ (P/2, H)) complex, from the current parameters (Re Λ clipped with ``clip_eigs``)."""
        lam = torch.complex(self.lambda_real(), self.Lambda_im)
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

    def _act(self, y: torch.Tensor, stepping: bool = False) -> torch.Tensor:
        """S5's activations (code ``layers.py``) over the last dim; the backbone adds the residual and its dropout."""
        z = F.gelu(y, approximate=self.gelu_approximate)
        z = z if stepping and not self.training else self.drop(z)  # (a step in eval skips the module call's overhead)
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
        """Zero state (B, P/2) complex; also (re)builds Λ̄ and the real matrices of B̄ and 2 C̃ that ``step`` uses,
        from the current parameters (re-run it after they change)."""
        if self.bidirectional:
            raise ValueError("step mode needs a causal layer: build it with bidirectional=False")
        abar, bbar = self.discrete()
        self._step_mats = (abar, complex_in_matrix(bbar), real_out_matrix(2 * torch.view_as_complex(self.C)[0]))
        return torch.zeros(batch_size, self.p // 2, dtype=abar.dtype, device=abar.device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> y_t (B, H), with state (B, P/2) from ``default_state`` or a previous step."""
        if self._step_mats is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        y, state = diagonal_step(x_t, state, *self._step_mats, self.D)
        return self._act(y, stepping=True), state


@register_layer("s5")
def s5(d_model: int, l_max: int, d_state: int = 256, blocks: int = 8, bidirectional: bool = False,
       activation: str = "half_glu1", discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1,
       dropout: float = 0.0, lr: float | None = 1e-3, c_init: str = "trunc_standard_normal", clip_eigs: bool = False,
       gelu: str = "exact", tie_dropout: bool = False, opt_config: str = "standard",
       dt_global: bool = False, decay_d: bool = False) -> nn.Module:
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
        dropout: after the GELU (S5's second dropout, after the GLU, is the backbone's residual dropout; S5's
            ``gelu`` activation has only one: use 0 here and the backbone's).
        lr: the SSM learning rate: of Λ, B̃ and log Δ (which then also get weight decay 0) under
            ``opt_config="standard"``; ``None``: no hints, every parameter on the global settings.
        c_init: ``trunc_standard_normal`` (default: C's real and imaginary parts truncated normal, variance 1/P,
            then C̃ = C V), ``lecun_normal`` (the same with variance 1/(H P)) or ``complex_normal`` (C̃ drawn
            directly, real and imaginary parts N(0, 1/2), untruncated, no V; one block of columns per direction).
        clip_eigs: the system (forward, ``discrete``, step mode) uses min(Re Λ, -1e-4); the parameter itself is
            not clipped and gets no gradient where the clip is active.
        gelu: ``exact`` (default, erf) or ``tanh`` (the tanh approximation, JAX/flax's ``gelu``), in every
            activation.
        tie_dropout: the layer's dropout draws one mask per (example, channel), shared by all positions (S5's
            ``broadcast_dims=[0]``); the residual dropout has its own switch, backbone.tie_dropout.
        opt_config: S5's optimiser grouping of B̃: ``standard`` (default: SSM lr, weight decay 0),
            ``BfastandCdecay`` (global lr and global weight decay: no hint) or ``BandCdecay`` (SSM lr, global
            weight decay: hint ``{"lr": lr}``). Λ always gets the SSM lr and weight decay 0; C̃ the global settings.
        dt_global: log Δ on the global lr and the global weight decay (hint ``{"weight_decay": "main"}``).
        decay_d: D gets the global weight decay (S5's rule; by default D, a 1-D parameter, gets none).
    """
    return S5Layer(d_model, d_state, blocks, bidirectional, activation, discretization, dt_min, dt_max, dropout, lr,
                   c_init=c_init, clip_eigs=clip_eigs, gelu=gelu, tie_dropout=tie_dropout, opt_config=opt_config,
                   dt_global=dt_global, decay_d=decay_d)
