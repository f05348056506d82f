"""Efficient-attention baselines of Long Range Arena: local, Linformer, Performer (FAVOR+), linear Transformer.

All four are ``HeadAttention``s (models/transformer.py: the Transformer's qkv / output projections and head split,
one copy) and replace only softmax(Q K^T / sqrt(E)) V between the per-head q, k, v of shape (B, n, L, E):

local_attention   (Tay et al., ICLR 2021, "Long Range Arena", the "Local Attention" baseline): the sequence is
                  cut into non-overlapping blocks of w positions, y_i = softmax(q_i K_b^T / sqrt(E)) V_b with b the
                  block of i; O(L w). Blocks never exchange information. (LRA's code reshapes the sequence to
                  (block_size, n_blocks), which groups strided positions; we follow the paper's contiguous blocks.)
linformer         (Wang et al. 2020, "Linformer", Sec. 4, eq. 7): head = softmax(Q (E_p K)^T / sqrt(E)) (F_p V)
                  with learned E_p, F_p: (k, n) projecting the length axis to k rows; O(L k). Only the first L
                  columns are used for a length-L input, padded rows of K, V are zeroed first.
performer         (Choromanski et al., ICLR 2021, "Rethinking Attention with Performers", FAVOR+, Sec. 2):
                  exp(q.k) = E_w[phi(q) phi(k)] with positive random features (Lemma 1)
                  phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), W: (m, E) orthogonal Gaussian rows (Sec. 2.4),
                  applied to q, k scaled by E^-1/4 so that q.k becomes q.k / sqrt(E); then
                  y = D^-1 phi(Q) (phi(K)^T V), D = diag(phi(Q) phi(K)^T 1): O(L m E).
linear_transformer (Katharopoulos et al., ICML 2020, "Transformers are RNNs", Sec. 3.2-3.4): phi(x) = elu(x) + 1,
                  y_i = phi(q_i)^T S / phi(q_i)^T z with S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j) (over all j,
                  or j <= i when causal: the RNN with state (S_i, z_i) of Sec. 3.4, also run by ``step``).

Padding (mask False, always at the end) never reaches real positions: local attention masks padded keys,
Linformer zeroes padded keys/values before projecting, the kernel methods zero the padded key features.

Precision: under autocast, local attention and Linformer are autocast's (their softmax attention is a fused
kernel that keeps softmax sums in float32); the Performer's and the linear Transformer's feature maps and
kernelised attention run in float32 with autocast off, on q, k, v cast to float32 (FAVOR+'s exponent is a
difference of large terms, causal linear attention carries running sums over L: models/precision.py).

Dimensions: B batch, L length, H d_model, n heads, E = H / n head width, w block, k Linformer rows,
m random features, C causal chunk.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import at_least_float32, autocast_off
from models.registry import register_layer
from models.transformer import HeadAttention

CHUNK = 64  # causal linear attention: exact C x C products inside a chunk, prefix sums (a carried state) across


class LocalAttention(HeadAttention):
    def __init__(self, d_model: int, n_heads: int, window: int, attn_dropout: float, causal: bool):
        super().__init__(d_model, n_heads, causal)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.attn_dropout = window, attn_dropout

    def _attend(self, q, k, v, mask):
        b, n, l, e = q.shape
        w = min(self.window, l)  # one block of L when the window covers the sequence (same blocks, less padding)
        nb = -(-l // w)
        pad = nb * w - l
        valid = torch.ones(b, l, dtype=torch.bool, device=q.device) if mask is None else mask
        valid = F.pad(valid, (0, pad), value=False).view(b, 1, nb, 1, w)  # keys of each block
        q, k, v = (F.pad(t, (0, 0, 0, pad)).view(b, n, nb, w, e) for t in (q, k, v))  # (B, n, nb, w, E)
        # a query may always see itself: keeps all-padding rows finite; real queries see only real keys anyway
        allowed = valid | torch.eye(w, dtype=torch.bool, device=q.device)  # (B, 1, nb, w, w)
        if self.causal:
            allowed = allowed & torch.ones(w, w, dtype=torch.bool, device=q.device).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return y.reshape(b, n, nb * w, e)[:, :, :l]


class LinformerAttention(HeadAttention):
    def __init__(self, d_model: int, l_max: int, n_heads: int, proj_len: int, share_kv: bool, attn_dropout: float):
        super().__init__(d_model, n_heads, causal=False)
        if proj_len < 1:
            raise ValueError(f"proj_len must be >= 1, got {proj_len}")
        self.l_max, self.attn_dropout = l_max, attn_dropout
        # LeCun-normal over the length axis (LRA's Linformer kernel init); one projection shared by all heads
        self.proj_k = nn.Parameter(torch.randn(proj_len, l_max) / math.sqrt(l_max))  # E_p: (k, l_max)
        self.proj_v = None if share_kv else nn.Parameter(torch.randn(proj_len, l_max) / math.sqrt(l_max))  # F_p

    def _attend(self, q, k, v, mask):
        l = q.shape[2]
        if l > self.l_max:
            raise ValueError(f"sequence of length {l} exceeds the Linformer projection's l_max {self.l_max}")
        if mask is not None:
            keep = mask[:, None, :, None].to(k.dtype)  # (B, 1, L, 1)
            k, v = k * keep, v * keep
        e_p = self.proj_k[:, :l]
        f_p = e_p if self.proj_v is None else self.proj_v[:, :l]
        k = torch.einsum("kl,bnle->bnke", e_p, k)  # (B, n, k, E)
        v = torch.einsum("kl,bnle->bnke", f_p, v)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)


def linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """y_i = phi_q_i^T S / phi_q_i^T z over all keys (or j <= i); phi_q, phi_k: (B, n, L, M) >= 0, v: (B, n, L, E)."""
    if not causal:
        s = phi_k.transpose(-2, -1) @ v  # (B, n, M, E)
        num, den = phi_q @ s, phi_q @ phi_k.sum(-2).unsqueeze(-1)  # (B, n, L, E), (B, n, L, 1)
    else:  # chunked prefix sums: (S, z) over earlier chunks, masked products inside the chunk; memory O(L C + M E)
        b, n, l, m = phi_q.shape
        s = phi_q.new_zeros(b, n, m, v.shape[-1])
        z = phi_q.new_zeros(b, n, m, 1)
        nums, dens = [], []
        for i in range(0, l, CHUNK):
            pq, pk, vc = phi_q[:, :, i:i + CHUNK], phi_k[:, :, i:i + CHUNK], v[:, :, i:i + CHUNK]
            a = (pq @ pk.transpose(-2, -1)).tril()  # (B, n, C, C): phi(q_i).phi(k_j), j <= i within the chunk
            nums.append(pq @ s + a @ vc)
            dens.append(pq @ z + a.sum(-1, keepdim=True))
            s, z = s + pk.transpose(-2, -1) @ vc, z + pk.sum(-2).unsqueeze(-1)
        num, den = torch.cat(nums, 2), torch.cat(dens, 2)
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)  # den > 0 unless every feature underflowed


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(m, d) rows in blocks of d orthogonal directions, each row's norm an independent chi_d draw (Sec. 2.4)."""
    blocks = []
    for _ in range(-(-m // d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # sign fix: Haar-distributed orthogonal matrix
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)  # |g|, g ~ N(0, I_d)
    return (torch.cat(blocks)[:m] * norms[:, None]).float()


def favor_features(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor | None = None,
                   is_query: bool = True) -> torch.Tensor:
    """phi(x) = exp(w_r.x - |x|^2/2) / sqrt(m) up to a stabilising scale: (B, n, L, E), w (m, E) -> (B, n, L, m) > 0.

    Stabilisation: a factor common to all features of one query cancels between numerator and denominator of
    D^-1 phi(Q) (phi(K)^T V), and so does a factor common to all keys of one (batch, head). So each query subtracts
    its own max exponent, and keys subtract the max over all features and real positions, before exp: the largest
    exponent is 0 and nothing overflows. The shift is detached (its exact gradient is zero). Padded keys get 0.
    Causal attention uses the same key shift: later keys enter only through this common scale, which cancels.
    """
    logits = x @ w.T - x.square().sum(-1, keepdim=True) / 2  # (B, n, L, m)
    if is_query:
        shift = logits.amax(-1, keepdim=True)
    else:
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :, None], float("-inf"))
        shift = logits.amax((-2, -1), keepdim=True).nan_to_num(neginf=0.0)  # 0 for a sequence with no real key
    return torch.exp(logits - shift.detach()) / math.sqrt(w.shape[0])


class PerformerAttention(HeadAttention):
    def __init__(self, d_model: int, n_heads: int, n_features: int, redraw: bool, feature_seed: int | None,
                 causal: bool):
        super().__init__(d_model, n_heads, causal)
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features, self.redraw, self.head_dim = n_features, redraw, d_model // n_heads
        seed = int(torch.randint(2 ** 62, ()).item()) if feature_seed is None else feature_seed
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("features", orthogonal_gaussian(n_features, self.head_dim, self.generator))  # (m, E)

    def _attend(self, q, k, v, mask):
        if self.training and self.redraw:  # a new tensor, not in place: an earlier forward may still need the old one
            self.features = orthogonal_gaussian(self.n_features, self.head_dim, self.generator).to(self.features)
        with autocast_off(q):  # features and their sums in float32 under any autocast
            q, k, v = (at_least_float32(t) for t in (q, k, v))
            w = self.features.to(q.dtype)
            scale = self.head_dim ** -0.25  # exp((q s).(k s)) = exp(q.k / sqrt(E))
            phi_q = favor_features(q * scale, w, is_query=True)
            phi_k = favor_features(k * scale, w, mask, is_query=False)
            return linear_attention(phi_q, phi_k, v, self.causal)


class LinearAttention(HeadAttention):
    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__(d_model, n_heads, causal)

    @staticmethod
    def phi(x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1.0

    def _attend(self, q, k, v, mask):
        with autocast_off(q):  # running sums over L in float32 under any autocast
            q, k, v = (at_least_float32(t) for t in (q, k, v))
            phi_k = self.phi(k)
            if mask is not None:
                phi_k = phi_k.masked_fill(~mask[:, None, :, None], 0.0)
            return linear_attention(self.phi(q), phi_k, v, self.causal)

    def default_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state: S (B, n, E, E) = sum phi(k) v^T and z (B, n, E) = sum phi(k)."""
        if not self.causal:
            raise ValueError("step mode needs a causal layer: build linear_transformer with causal=True")
        p = self.out.weight
        e = p.shape[0] // self.n_heads
        return (p.new_zeros(batch_size, self.n_heads, e, e), p.new_zeros(batch_size, self.n_heads, e))

    def step(self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One position: x_t (B, H) -> y_t (B, H), with state (S, z) from ``default_state`` or a previous step."""
        q, k, v = self.heads_t(x_t)  # 3 x (B, n, E)
        s, z = state
        phi_q, phi_k = self.phi(q), self.phi(k)
        s = s + phi_k[..., :, None] * v[..., None, :]  # (B, n, E, E)
        z = z + phi_k
        y = (phi_q[..., None, :] @ s).squeeze(-2) / (phi_q * z).sum(-1, keepdim=True)  # (B, n, E)
        return self.out_t(y), (s, z)


@register_layer("local_attention")
def local_attention(d_model: int, l_max: int, n_heads: int = 4, window: int = 50, attn_dropout: float = 0.0,
                    causal: bool = False) -> nn.Module:
    """LRA's local attention: softmax attention inside non-overlapping blocks of ``window`` positions.

    Args:
        d_model: width H (divisible by n_heads).
        l_max: unused (the last block is padded as needed).
        n_heads: attention heads.
        window: block length w (LRA's local-attention encoder uses 50).
        attn_dropout: dropout on the attention weights while training.
        causal: attend only to earlier positions of the same block.
    """
    return LocalAttention(d_model, n_heads, window, attn_dropout, causal)


@register_layer("linformer")
def linformer(d_model: int, l_max: int, n_heads: int = 4, proj_len: int = 256, share_kv: bool = False,
              attn_dropout: float = 0.0, causal: bool = False) -> nn.Module:
    """Linformer: softmax attention against keys and values projected along the length axis to ``proj_len`` rows.

    Args:
        d_model: width H (divisible by n_heads).
        l_max: longest sequence; E, F are (proj_len, l_max) and a length-L input uses their first L columns.
        n_heads: attention heads (all heads share E and F: the paper's headwise sharing).
        proj_len: projected length k (the paper's main setting is k = 256 for n = 512; LRA used 16).
        share_kv: one projection for keys and values (the paper's key-value sharing).
        attn_dropout: dropout on the attention weights while training.
        causal: unsupported (the projection mixes future positions into every row); True raises ValueError.
    """
    if causal:
        raise ValueError("linformer cannot be causal: its length projection mixes future positions; use causal=False")
    return LinformerAttention(d_model, l_max, n_heads, proj_len, share_kv, attn_dropout)


@register_layer("performer")
def performer(d_model: int, l_max: int, n_heads: int = 4, n_features: int = 256, redraw: bool = True,
              feature_seed: int | None = None, causal: bool = False) -> nn.Module:
    """Performer (FAVOR+): softmax attention estimated with positive orthogonal random features, O(L) memory.

    Args:
        d_model: width H (divisible by n_heads).
        l_max: unused.
        n_heads: attention heads (all heads share the random features).
        n_features: random features m (256, the FAVOR+ default of the Performer and LRA code).
        redraw: draw new features at every training forward (kept in the buffer, which eval then uses);
            otherwise the features drawn at construction stay fixed.
        feature_seed: seed of the layer's own feature generator; None takes one from torch's global RNG
            (so the run seed fixes it and every layer gets different features).
        causal: attend only to earlier positions (prefix sums of the key features).
    """
    return PerformerAttention(d_model, n_heads, n_features, redraw, feature_seed, causal)


@register_layer("linear_transformer")
def linear_transformer(d_model: int, l_max: int, n_heads: int = 4, causal: bool = False) -> nn.Module:
    """Linear Transformer: attention with the feature map elu(x) + 1, O(L) memory; causal is also an RNN (``step``).

    Args:
        d_model: width H (divisible by n_heads).
        l_max: unused.
        n_heads: attention heads.
        causal: attend only to earlier positions; enables ``default_state`` / ``step``.
    """
    return LinearAttention(d_model, n_heads, causal)
