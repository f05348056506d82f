"""Multi-head self-attention on ``scaled_dot_product_attention``, the Transformer's sequence layer.

The registered ``transformer`` layer is the attention sub-block; its model config adds the
position-wise MLP sub-block through ``backbone.ff_expand`` and positions through
``backbone.pos_encoding``, so the whole model is the usual (pre-norm) Transformer encoder.

Dimensions: B batch, L length, H d_model, n heads, E = H / n head width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_layer


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int = 4, attn_dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.attn_dropout, self.causal = n_heads, attn_dropout, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, l, h = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, n, L, E)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padded keys are never attended to
            if self.causal:
                attn_mask = attn_mask & torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0,
                                           is_causal=self.causal and attn_mask is None)  # (B, n, L, E)
        return self.out(y.transpose(1, 2).reshape(b, l, h))


@register_layer("transformer")
def transformer(d_model: int, l_max: int, n_heads: int = 4, attn_dropout: float = 0.0, causal: bool = False) -> nn.Module:
    """Self-attention over all positions (bidirectional encoder), or causal.

    Args:
        d_model: width H (divisible by n_heads).
        l_max: unused (positions come from the backbone's encoder).
        n_heads: attention heads.
        attn_dropout: dropout on the attention weights while training.
        causal: attend only to earlier positions.
    """
    return MultiHeadAttention(d_model, n_heads, attn_dropout, causal)
