"""The shared backbone every sequence layer plugs into.

    encoder (token embedding, or linear for real-valued inputs) [+ positions]
    -> n_layers x [norm, layer, dropout, residual] (+ optional [norm, MLP, dropout, residual])
    -> masked pooling (mean or last) -> classifier
and, for two-document tasks, a dual head on the pooled pair: [x1, x2, x1 - x2, x1 * x2] -> MLP.

Gradient checkpointing (``grad_checkpoint: true``): while training with gradients on, each residual block keeps
only its input for the backward and runs its forward again there (``torch.utils.checkpoint``, non-reentrant).
The recompute replays the random numbers of the forward: the global RNG (dropout) through checkpoint's
preserve_rng_state, and generators a layer owns (``torch.Generator`` attributes: the Performer's feature draws)
through ``replay_module_state``, which also leaves the block's buffers as it found them (BatchNorm's running
statistics are updated once per step, not twice). Gradients equal those without checkpointing.

Recurrent mode (``model.default_state(B)``, then ``y_t, state = model.step(x_t, state)`` per position, in eval
mode and under ``torch.inference_mode()``): the same encoder (position t's entry of the positional table), the same
residual stack block by block (each layer's own ``step``; the MLP and norm sub-blocks act per position) and the
final norm, for a model whose layers are causal and have a ``step``. ``y_t`` (B, H) equals the features of
position t in the full forward (``features``), so for ``pool: last`` ``model.head(y_t)`` gives the logits of the
prefix ending at t. Norms must act per position (layer norm, or batch norm in eval mode, with running statistics).

Dimensions: B batch, L length, H d_model, D real-valued input width, C classes.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.registry import check_names, check_ranges, check_types
from models.params import hint
from models.registry import build_layer


@dataclass(frozen=True)
class BackboneConfig:
    d_model: int = 128
    n_layers: int = 4
    norm: str = "layer"          # "layer" | "batch" | "none"
    prenorm: bool = True         # norm before the layer (pre) or after the residual (post)
    dropout: float = 0.1
    tie_dropout: bool = False    # residual dropout: one mask per (example, channel) for all positions (S4's tie_dropout)
    ff_expand: int = 0           # >0 adds a position-wise MLP block (width ff_expand*H) after each layer
    pool: str = "mean"           # "mean" | "last"
    final_norm: bool | None = None  # a norm after the last block; None: only with prenorm (S4's rule); S5 has none
    bn_momentum: float = 0.1     # BatchNorm running-statistics momentum, torch's convention (flax's 0.95 = 0.05 here)
    encoder_bias: bool = False   # token embedding plus a learned bias (S5's one-hot -> Dense with bias)
    decay_io: bool = False       # the encoder and the classifier, biases and embedding included, get the main weight
                                 # decay (the S4 code decays everything outside its backbone); default: none on those
    pos_encoding: str = "none"   # "none" | "sinusoidal" | "learned"
    dual_hidden: int = 0         # width of the retrieval head's MLP (0: d_model)
    grad_checkpoint: bool = False  # recompute each block's forward in the backward instead of storing its activations

    def __post_init__(self) -> None:
        check_types(BackboneConfig, vars(self), what="backbone.")
        check_ranges("backbone.", vars(self), [("d_model", self.d_model >= 1, "an integer >= 1"),
                                               ("n_layers", self.n_layers >= 1, "an integer >= 1"),
                                               ("dropout", 0 <= self.dropout < 1, "a number in [0, 1)"),
                                               ("ff_expand", self.ff_expand >= 0, "an integer >= 0"),
                                               ("dual_hidden", self.dual_hidden >= 0, "an integer >= 0"),
                                               ("bn_momentum", 0 <= self.bn_momentum <= 1, "a number in [0, 1]")])


class MaskedBatchNorm(nn.Module):
    """BatchNorm over features of (B, L, H) whose statistics use real positions only."""

    def __init__(self, d: int, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(d, momentum=momentum)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.bn(x.reshape(-1, x.shape[-1])).view_as(x)
        out = torch.zeros_like(x)
        out[mask] = self.bn(x[mask])  # (n_real, H)
        return out


class _Norm(nn.Module):
    def __init__(self, kind: str, d: int, bn_momentum: float = 0.1):
        super().__init__()
        if kind not in ("layer", "batch", "none"):
            raise ValueError(f"unknown norm {kind!r}; known: layer, batch, none")
        self.kind = kind
        self.norm = (nn.LayerNorm(d) if kind == "layer" else MaskedBatchNorm(d, bn_momentum) if kind == "batch"
                     else nn.Identity())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x, mask) if self.kind == "batch" else self.norm(x)

    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """One position (B, H), without the module-call overhead (recurrent mode is per-token Python)."""
        if self.kind == "layer":
            n = self.norm
            return F.layer_norm(x_t, n.normalized_shape, n.weight, n.bias, n.eps)
        return self.norm.bn(x_t) if self.kind == "batch" else x_t


class FeedForward(nn.Module):
    """Position-wise MLP, the second sub-block of a Transformer layer."""

    def __init__(self, d: int, expand: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, expand * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(expand * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    def default_state(self, batch_size: int) -> None:
        return None

    def step(self, x_t: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        """Position-wise: x_t (B, H) -> (B, H), no state."""
        return self.net(x_t), None


class TiedDropout(nn.Module):
    """Dropout of (B, L, H) with one Bernoulli(1 - p) mask per (example, channel), shared by every position and scaled
    by 1 / (1 - p) (S4's ``tie_dropout``, ``DropoutNd``; torch's ``nn.Dropout1d`` on the transposed tensor)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1], device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResidualBlock(nn.Module):
    """[norm, layer, dropout, residual] with pre- or post-norm."""

    def __init__(self, layer: nn.Module, d: int, norm: str, prenorm: bool, dropout: float, tie_dropout: bool = False,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.layer, self.norm, self.prenorm = layer, _Norm(norm, d, bn_momentum), prenorm
        self.drop = TiedDropout(dropout) if tie_dropout else nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        z = self.norm(x, mask) if self.prenorm else x
        x = x + self.drop(self.layer(z, mask=mask))
        return x if self.prenorm else self.norm(x, mask)

    def default_state(self, batch_size: int, max_len: int | None = None) -> Any:
        """The layer's initial state; ``max_len`` goes to layers whose state grows (the key/value cache)."""
        if not hasattr(self.layer, "step"):
            raise ValueError(f"{type(self.layer).__name__} has no recurrent mode (step)")
        takes_len = "max_len" in inspect.signature(self.layer.default_state).parameters
        return self.layer.default_state(batch_size, max_len=max_len) if takes_len else self.layer.default_state(batch_size)

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One position of ``forward``: x_t (B, H) -> (B, H) and the layer's next state."""
        z = self.norm.step(x_t) if self.prenorm else x_t
        y, state = self.layer.step(z, state)
        x_t = x_t + (self.drop(y) if self.training else y)
        return (x_t if self.prenorm else self.norm.step(x_t)), state


def replay_module_state(block: nn.Module) -> tuple[Any, Any]:
    """``context_fn`` for ``checkpoint(block, ...)``: (forward context, recompute context).

    The forward context records the state of every ``torch.Generator`` attribute of the block's modules; the
    recompute runs from those states (so a layer drawing from its own generator draws the same numbers again) and
    then restores the generators and buffers to what they were before the recompute, so that it changes no state.
    """
    gens = [g for m in block.modules() for g in vars(m).values() if isinstance(g, torch.Generator)]
    at_forward: list[torch.Tensor] = []

    @contextmanager
    def forward() -> Iterator[None]:
        at_forward[:] = [g.get_state() for g in gens]
        yield

    @contextmanager
    def recompute() -> Iterator[None]:
        now = [g.get_state() for g in gens]
        with torch.no_grad():
            buffers = [(m, name, b, b.clone()) for m in block.modules()
                       for name, b in m._buffers.items() if b is not None]
        for g, state in zip(gens, at_forward):
            g.set_state(state)
        try:
            yield
        finally:
            for g, state in zip(gens, now):
                g.set_state(state)
            with torch.no_grad():
                for m, name, b, saved in buffers:  # in-place updates (BatchNorm) and reassignments (Performer)
                    b.copy_(saved)
                    m._buffers[name] = b

    return forward(), recompute()


def sinusoidal_positions(l_max: int, d: int) -> torch.Tensor:
    """(L, H) fixed sin/cos table of "Attention is all you need"."""
    pos = torch.arange(l_max, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(l_max, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


class Encoder(nn.Module):
    """Token embedding (ids, pad id 0) or linear map of real-valued inputs, plus optional positions."""

    def __init__(self, d_model: int, l_max: int, vocab_size: int | None, d_input: int | None, pos_encoding: str,
                 bias: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0) if vocab_size else nn.Linear(d_input, d_model)
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias and vocab_size else None  # a Linear has its own
        if pos_encoding == "sinusoidal":
            self.register_buffer("pos", sinusoidal_positions(l_max, d_model), persistent=False)
        elif pos_encoding == "learned":
            self.pos = nn.Parameter(torch.randn(l_max, d_model) * 0.02)
        elif pos_encoding == "none":
            self.pos = None
        else:
            raise ValueError(f"unknown pos_encoding {pos_encoding!r}; known: none, sinusoidal, learned")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embed(inputs)  # (B, L, H)
        if self.bias is not None:
            x = x + self.bias
        if self.pos is not None:
            if x.shape[1] > self.pos.shape[0]:
                raise ValueError(f"sequence of length {x.shape[1]} exceeds the positional table's l_max {self.pos.shape[0]}")
            x = x + self.pos[: x.shape[1]]
        return x

    def step(self, inputs_t: torch.Tensor, t: int) -> torch.Tensor:
        """Position t alone: (B,) ids or (B, D) values -> (B, H)."""
        x = self.embed.weight[inputs_t] if isinstance(self.embed, nn.Embedding) else self.embed(inputs_t)
        if self.bias is not None:
            x = x + self.bias
        if self.pos is not None:
            if t >= self.pos.shape[0]:
                raise ValueError(f"position {t} is beyond the positional table's l_max {self.pos.shape[0]}")
            x = x + self.pos[t]
        return x


def length_mask(lengths: torch.Tensor, l: int) -> torch.Tensor:
    """(B, L) bool, True at the first lengths[b] positions."""
    return torch.arange(l, device=lengths.device)[None, :] < lengths[:, None]


def masked_pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) -> (B, H): mean over real positions, or the last real position."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "last":
        idx = (mask.sum(1) - 1).clamp_min(0)  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    raise ValueError(f"unknown pool {how!r}; known: mean, last")


@dataclass(frozen=True)
class ModelState:
    """The recurrent state of a SequenceModel: one entry per residual block, and the next position."""
    blocks: tuple
    position: int = 0


class SequenceModel(nn.Module):
    """Encoder -> residual stack of one registered layer type -> pooling -> classifier (or dual head)."""

    def __init__(self, layer: str, n_classes: int, l_max: int, vocab_size: int | None = None,
                 d_input: int | None = None, dual_input: bool = False,
                 backbone: BackboneConfig | None = None, layer_kw: dict[str, Any] | None = None):
        super().__init__()
        cfg = backbone or BackboneConfig()
        if cfg.pool not in ("mean", "last"):
            raise ValueError(f"unknown pool {cfg.pool!r}; known: mean, last")
        self.cfg, self.layer_name, self.dual_input = cfg, layer, dual_input
        d = cfg.d_model
        self.encoder = Encoder(d, l_max, vocab_size, d_input, cfg.pos_encoding, cfg.encoder_bias)
        blocks: list[nn.Module] = []
        for _ in range(cfg.n_layers):
            blocks.append(ResidualBlock(build_layer(layer, d_model=d, l_max=l_max, **(layer_kw or {})),
                                        d, cfg.norm, cfg.prenorm, cfg.dropout, cfg.tie_dropout, cfg.bn_momentum))
            if cfg.ff_expand > 0:
                blocks.append(ResidualBlock(FeedForward(d, cfg.ff_expand, cfg.dropout), d, cfg.norm, cfg.prenorm,
                                            cfg.dropout, cfg.tie_dropout, cfg.bn_momentum))
        self.blocks = nn.ModuleList(blocks)
        final = cfg.prenorm if cfg.final_norm is None else cfg.final_norm
        self.final_norm = _Norm(cfg.norm if final else "none", d, cfg.bn_momentum)
        if dual_input:
            hidden = cfg.dual_hidden or d
            self.head = nn.Sequential(nn.Linear(4 * d, hidden), nn.GELU(), nn.Linear(hidden, n_classes))
        else:
            self.head = nn.Linear(d, n_classes)
        if cfg.decay_io:  # hints read by harness/optim.py: the main weight decay, whatever the parameter's kind
            for p in [*self.encoder.parameters(), *self.head.parameters()]:
                hint(p, weight_decay="main")

    def features(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) ids or (B, L, D) values -> (B, L, H) after the last block and the final norm (padding zeroed)."""
        x, mask = self._stack(inputs, lengths)
        return self.final_norm(x, mask) * mask.unsqueeze(-1)

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) ids or (B, L, D) values -> pooled (B, H)."""
        x, mask = self._stack(inputs, lengths)
        x = self.final_norm(x, mask)
        return masked_pool(x, mask, self.cfg.pool)

    def _stack(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder and the residual blocks: (B, L, H) and the (B, L) mask of real positions."""
        mask = length_mask(lengths, inputs.shape[1])
        x = self.encoder(inputs)
        recompute = self.cfg.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # store only the block's input; the default preserve_rng_state replays dropout
                x = checkpoint(block, x, mask, use_reentrant=False,
                               context_fn=lambda b=block: replay_module_state(b))
            else:
                x = block(x, mask)
            x = x * mask.unsqueeze(-1)  # keep padded positions at zero between blocks
        return x, mask

    def default_state(self, batch_size: int, max_len: int | None = None) -> ModelState:
        """The state before position 0: each block's layer state (``max_len``: the key/value cache's length, default
        the layer's l_max; other layers ignore it)."""
        return ModelState(tuple(block.default_state(batch_size, max_len) for block in self.blocks))

    def step(self, inputs_t: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """One position: (B,) ids or (B, D) values -> features (B, H) of that position (as ``features``), next state."""
        x = self.encoder.step(inputs_t, state.position)
        states = []
        for block, s in zip(self.blocks, state.blocks):
            x, s = block.step(x, s)
            states.append(s)
        return self.final_norm.step(x), ModelState(tuple(states), state.position + 1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                inputs2: torch.Tensor | None = None, lengths2: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C)."""
        z = self.encode(inputs, lengths)
        if not self.dual_input:
            return self.head(z)
        if inputs2 is None or lengths2 is None:
            raise ValueError("a dual-input model needs inputs2 and lengths2")
        z2 = self.encode(inputs2, lengths2)
        return self.head(torch.cat([z, z2, z - z2, z * z2], dim=-1))


def build_model(layer: str, spec: Any, backbone: dict[str, Any] | None = None, layer_kw: dict[str, Any] | None = None) -> SequenceModel:
    """A SequenceModel for a task spec (tasks.registry.TaskSpec), with backbone and layer options from config."""
    check_names(backbone or {}, BackboneConfig.__dataclass_fields__, "backbone")
    return SequenceModel(layer, spec.n_classes, spec.l_max, spec.vocab_size, spec.d_input, spec.dual_input,
                         BackboneConfig(**(backbone or {})), layer_kw)
