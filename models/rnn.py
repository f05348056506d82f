"""LSTM sequence layer; padding is handled by packing, so padded steps never reach the recurrence.

Dimensions: B batch, L length, H d_model.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.registry import register_layer


class LSTMLayer(nn.Module):
    def __init__(self, d_model: int, bidirectional: bool = True, n_rnn_layers: int = 1, rnn_dropout: float = 0.0):
        super().__init__()
        if bidirectional and d_model % 2:
            raise ValueError(f"a bidirectional LSTM splits d_model across two directions; {d_model} is odd")
        hidden = d_model // 2 if bidirectional else d_model
        self.rnn = nn.LSTM(d_model, hidden, num_layers=n_rnn_layers, batch_first=True,
                           bidirectional=bidirectional, dropout=rnn_dropout if n_rnn_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return self.rnn(x)[0]  # (B, L, H)
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return y  # (B, L, H), zeros at padded positions


@register_layer("lstm")
def lstm(d_model: int, l_max: int, bidirectional: bool = True, n_rnn_layers: int = 1, rnn_dropout: float = 0.0) -> nn.Module:
    """LSTM over the sequence.

    Args:
        d_model: width H (the output width; with ``bidirectional`` each direction has H / 2 units).
        l_max: unused.
        bidirectional: run a second LSTM backwards over the real positions.
        n_rnn_layers: stacked LSTM layers inside this one block.
        rnn_dropout: dropout between stacked LSTM layers.
    """
    return LSTMLayer(d_model, bidirectional, n_rnn_layers, rnn_dropout)
