"""LSTM and GRU sequence layers; padding is handled by packing, so padded steps never reach the recurrence.

Both wrap the cuDNN-compatible torch modules (``nn.LSTM``: Hochreiter & Schmidhuber 1997 with a forget gate;
``nn.GRU``: Cho et al. 2014). Bidirectional by default for the non-causal classification tasks: each direction
has H / 2 units and the two are concatenated. Causal layers (``bidirectional=False``) also run one position at a
time (``default_state`` / ``step``), equal to the full-sequence forward.

Precision: the recurrence runs in float32 with autocast off, on the input cast to float32: the cell state
c_t = f_t c_{t-1} + i_t g_t (GRU: h_t = z_t h_{t-1} + (1 - z_t) n_t) is a linear recurrence over L, which torch's
fused bf16 kernels would round to bf16 at every step (models/precision.py).

Dimensions: B batch, L length, H d_model, K stacked recurrent layers inside one block.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.precision import at_least_float32, autocast_off
from models.registry import register_layer

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNLayer(nn.Module):
    def __init__(self, kind: str, d_model: int, bidirectional: bool = True, n_rnn_layers: int = 1,
                 rnn_dropout: float = 0.0):
        super().__init__()
        if bidirectional and d_model % 2:
            raise ValueError(f"a bidirectional {kind.upper()} splits d_model across two directions; {d_model} is odd")
        hidden = d_model // 2 if bidirectional else d_model
        self.kind, self.bidirectional = kind, bidirectional
        self.rnn = _CELLS[kind](d_model, hidden, num_layers=n_rnn_layers, batch_first=True,
                                bidirectional=bidirectional, dropout=rnn_dropout if n_rnn_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with autocast_off(x):  # the recurrence in float32 under any autocast
            x = at_least_float32(x)
            if mask is None or bool(mask.all()):  # no padding: skip packing (a packed GRU is ~4x slower on CPU)
                return self.rnn(x)[0]  # (B, L, H)
            lengths = mask.sum(1).clamp_min(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
            return y  # (B, L, H), zeros at padded positions

    def default_state(self, batch_size: int):
        """Zero state: (h, c) for an LSTM, h for a GRU, each (K, B, H)."""
        if self.bidirectional:
            raise ValueError(f"step mode needs a causal layer: build the {self.kind} with bidirectional=False")
        p = next(self.rnn.parameters())
        h = torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, dtype=p.dtype, device=p.device)
        return (h, torch.zeros_like(h)) if self.kind == "lstm" else h

    def step(self, x_t: torch.Tensor, state):
        """One position: x_t (B, H) -> y_t (B, H), and the new state."""
        if self.bidirectional:
            raise ValueError(f"step mode needs a causal layer: build the {self.kind} with bidirectional=False")
        y, state = self.rnn(x_t[:, None], state)
        return y[:, 0], state


def _doc(kind: str) -> str:
    return f"""{kind.upper()} over the sequence.

    Args:
        d_model: width H (the output width; with ``bidirectional`` each direction has H / 2 units).
        l_max: unused.
        bidirectional: run a second {kind.upper()} backwards over the real positions.
        n_rnn_layers: stacked {kind.upper()} layers inside this one block.
        rnn_dropout: dropout between stacked layers.
    """


@register_layer("lstm")
def lstm(d_model: int, l_max: int, bidirectional: bool = True, n_rnn_layers: int = 1, rnn_dropout: float = 0.0) -> nn.Module:
    return RNNLayer("lstm", d_model, bidirectional, n_rnn_layers, rnn_dropout)


@register_layer("gru")
def gru(d_model: int, l_max: int, bidirectional: bool = True, n_rnn_layers: int = 1, rnn_dropout: float = 0.0) -> nn.Module:
    return RNNLayer("gru", d_model, bidirectional, n_rnn_layers, rnn_dropout)


lstm.__doc__, gru.__doc__ = _doc("lstm"), _doc("gru")
