"""Multi-head self-attention on ``scaled_dot_product_attention``, the Transformer's sequence layer.

The registered ``transformer`` layer is the attention sub-block; its model config adds the
position-wise MLP sub-block through ``backbone.ff_expand`` and positions through
``backbone.pos_encoding``, so the whole model is the usual (pre-norm) Transformer encoder.

Generation mode (``causal=True`` only), through a key/value cache: ``state = layer.default_state(B)``
preallocates keys and values for ``max_len`` positions (default ``l_max``), then ``y_t, state =
layer.step(x_t, state)`` for x_t (B, H) writes the new key and value into the next slot and attends from the new
query over the filled prefix, itself included: the causal forward's output at t. Unlike a recurrence, the state
grows with the prefix: 2 * B * H * max_len floats of memory, and step t costs O(t * H) attention work.
The cache is written in place, so generate under ``torch.no_grad()`` / ``torch.inference_mode()``.

``HeadAttention`` is the plumbing every attention layer shares (this one and models/efficient_attention.py): the
q, k, v projection and head split, the output projection, and the same for one position in recurrent mode; a
subclass defines only ``_attend`` (and ``step``'s attention).

Dimensions: B batch, L length, H d_model, Q = d_qkv (default H) query/key/value width, n heads, E = Q / n head
width, T = max_len cached positions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_layer


@dataclass(frozen=True)
class KVCache:
    """Keys and values of the first ``filled`` positions; the buffers are shared by every state of one generation."""
    k: torch.Tensor  # (B, n, T, E)
    v: torch.Tensor  # (B, n, T, E)
    filled: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


class HeadAttention(nn.Module):
    """q, k, v projection to ``d_qkv`` (default d_model) split over ``n_heads``, and the output projection back to
    d_model; subclasses define ``_attend(q, k, v, mask) -> (B, n, L, E)``."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, d_qkv: int | None = None, bias: bool = True):
        super().__init__()
        d_qkv = d_model if d_qkv is None else int(d_qkv)
        if d_qkv % n_heads:
            raise ValueError(f"d_qkv {d_qkv} (d_model unless set) is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal, self.d_qkv = n_heads, causal, d_qkv
        self.qkv = nn.Linear(d_model, 3 * d_qkv, bias=bias)
        self.out = nn.Linear(d_qkv, d_model, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, self.d_qkv // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, n, L, E)
        y = self._attend(q, k, v, mask)  # (B, n, L, E)
        return self.out(y.transpose(1, 2).reshape(b, l, self.d_qkv))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def heads_t(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One position: x_t (B, H) -> q, k, v, each (B, n, E)."""
        return self.qkv(x_t).view(x_t.shape[0], 3, self.n_heads, self.d_qkv // self.n_heads).unbind(1)

    def out_t(self, y_t: torch.Tensor) -> torch.Tensor:
        """One position: the heads' outputs (B, n, E) -> (B, H)."""
        return self.out(y_t.reshape(y_t.shape[0], self.d_qkv))


class MultiHeadAttention(HeadAttention):
    def __init__(self, d_model: int, n_heads: int = 4, attn_dropout: float = 0.0, causal: bool = False,
                 l_max: int | None = None, d_qkv: int | None = None, bias: bool = True):
        super().__init__(d_model, n_heads, causal, d_qkv, bias)
        self.attn_dropout, self.l_max = attn_dropout, l_max

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        l = q.shape[2]
        attn_mask = None
        if mask is not None and not bool(mask.all()):  # a batch without padding needs no mask: SDPA's fused kernels
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padded keys are never attended to
            if self.causal:
                attn_mask = attn_mask & torch.ones(l, l, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                              dropout_p=self.attn_dropout if self.training else 0.0,
                                              is_causal=self.causal and attn_mask is None)  # (B, n, L, E)

    def default_state(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Empty key/value cache for ``max_len`` positions (default ``l_max``): 2 * B * H * max_len floats."""
        if not self.causal:
            raise ValueError("step mode needs a causal layer: build transformer with causal=True")
        max_len = self.l_max if max_len is None else max_len
        if max_len is None or max_len < 1:
            raise ValueError(f"the key/value cache needs max_len >= 1 (got {max_len}; l_max is {self.l_max})")
        w = self.out.weight
        shape = (batch_size, self.n_heads, max_len, self.d_qkv // self.n_heads)
        return KVCache(w.new_empty(shape), w.new_empty(shape))

    def step(self, x_t: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One position: x_t (B, H) -> y_t (B, H), and the cache one position longer (same buffers, filled in place)."""
        t = state.filled
        if t >= state.max_len:
            raise RuntimeError(f"key/value cache is full ({state.max_len} positions): "
                               f"call default_state(batch_size, max_len=...) with a larger max_len")
        q, k, v = self.heads_t(x_t)  # 3 x (B, n, E)
        state.k[:, :, t].copy_(k)
        state.v[:, :, t].copy_(v)
        y = F.scaled_dot_product_attention(q[:, :, None], state.k[:, :, :t + 1], state.v[:, :, :t + 1],
                                           dropout_p=self.attn_dropout if self.training else 0.0)  # (B, n, 1, E)
        return self.out_t(y), dataclasses.replace(state, filled=t + 1)


@register_layer("transformer")
def transformer(d_model: int, l_max: int, n_heads: int = 4, attn_dropout: float = 0.0,
                causal: bool = False, d_qkv: int | None = None, bias: bool = True) -> nn.Module:
    """Self-attention over all positions (bidirectional encoder), or causal.

    Args:
        d_model: width H (divisible by n_heads).
        l_max: default length of the key/value cache in generation mode (positions come from the backbone's encoder).
        n_heads: attention heads.
        attn_dropout: dropout on the attention weights while training.
        causal: attend only to earlier positions; enables ``default_state`` / ``step`` (key/value-cache generation).
        d_qkv: total width of the queries, keys and values (split over the heads), projected back to d_model by the
            output projection; default d_model. LRA's ``qkv_dim`` (e.g. 64 with emb_dim 128 on its Image config).
        bias: biases on the q/k/v and output projections (LRA's attention has none: bias=False).
    """
    return MultiHeadAttention(d_model, n_heads, attn_dropout, causal, l_max, d_qkv, bias)
