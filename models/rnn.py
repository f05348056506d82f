"""LSTM and GRU sequence layers; padding is handled by packing, so padded steps never reach the recurrence.

Both wrap the cuDNN-compatible torch modules (``nn.LSTM``: Hochreiter & Schmidhuber 1997 with a forget gate;
``nn.GRU``: Cho et al. 2014). Bidirectional by default for the non-causal classification tasks: each direction
has H / 2 units and the two are concatenated. Causal layers (``bidirectional=False``) also run one position at a
time (``default_state`` / ``step``), equal to the full-sequence forward.

Precision: the recurrence runs in float32 with autocast off, on the input cast to float32: the cell state
c_t = f_t c_{t-1} + i_t g_t (GRU: h_t = z_t h_{t-1} + (1 - z_t) n_t) is a linear recurrence over L, which torch's
fused bf16 kernels would round to bf16 at every step (models/precision.py).

Speed on CPU: the GRU is several times slower to train than the LSTM, and that is PyTorch's, not this wrapper's.
Bare ``nn.GRU`` vs ``nn.LSTM`` (4 stacked bidirectional modules, d 256, batch 4, L 1024, forward + backward, the
efficiency sweep's shape, no wrapper; torch 2.13, 2 EPYC threads, best of 2): LSTM 0.37 s, GRU 1.54 s (4.2x; 5.6x at
machine load 8); the whole model's training step: LSTM 0.47 s, GRU 2.16 s (4.6x). torch's CPU LSTM runs as one
oneDNN (mkldnn) RNN primitive, forward and backward; its CPU GRU has no such path and runs the generic per-time-step
cell loop, small ops per position recorded one by one by autograd (aten/src/ATen/native/RNN.cpp; profiled at L 50,
forward + backward: 163 ops for the LSTM, 11,991 for the GRU).
Step mode uses torch's fused ``lstm_cell`` / ``gru_cell`` ops directly.

Dimensions: B batch, L length, H d_model, K stacked recurrent layers inside one block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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
        self._step_weights: list[list[torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with autocast_off(x):  # the recurrence in float32 under any autocast
            x = at_least_float32(x)
            if mask is None or bool(mask.all()):  # no padding: skip packing (a packed GRU is ~4x slower on CPU)
                return self.rnn(x)[0]  # (B, L, H)
            lengths = mask.sum(1).clamp_min(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
            return y  # (B, L, H), zeros at padded positions

    @torch.no_grad()
    def default_state(self, batch_size: int):
        """Zero state: (h, c) for an LSTM, h for a GRU, each (K, B, H); also collects each stacked layer's weights
        for ``step``."""
        if self.bidirectional:
            raise ValueError(f"step mode needs a causal layer: build the {self.kind} with bidirectional=False")
        self._step_weights = [self.rnn.all_weights[k] for k in range(self.rnn.num_layers)]  # (w_ih, w_hh, b_ih, b_hh)
        p = self._step_weights[0][0]
        h = torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, dtype=p.dtype, device=p.device)
        return (h, torch.zeros_like(h)) if self.kind == "lstm" else h

    def step(self, x_t: torch.Tensor, state):
        """One position: x_t (B, H) -> y_t (B, H), and the new state: one fused torch cell op per stacked layer."""
        if self.bidirectional:
            raise ValueError(f"step mode needs a causal layer: build the {self.kind} with bidirectional=False")
        if self._step_weights is None:
            raise RuntimeError("call default_state(batch_size) before step()")
        if torch.is_autocast_enabled(x_t.device.type):  # (entering the context costs as much as the step: only then)
            with autocast_off(x_t):
                return self.step(at_least_float32(x_t), state)
        hs, cs = [], []
        for k, weights in enumerate(self._step_weights):
            if k and self.training and self.rnn.dropout:
                x_t = F.dropout(x_t, self.rnn.dropout, training=True)
            if self.kind == "lstm":
                x_t, c = torch.lstm_cell(x_t, (state[0][k], state[1][k]), *weights)
                cs.append(c)
            else:
                x_t = torch.gru_cell(x_t, state[k], *weights)
            hs.append(x_t)
        h = torch.stack(hs)                                  # (K, B, H)
        return x_t, ((h, torch.stack(cs)) if self.kind == "lstm" else h)


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
