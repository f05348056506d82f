"""Recurrent mode, one position at a time: the outputs a layer's ``step`` gives for a whole input (shared by the
layer tests that compare it with the full-sequence forward)."""
import torch


def stepped(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, L, H) -> (B, L, H): ``layer.default_state(B)``, then ``layer.step`` over every position of ``x``."""
    state, outs = layer.default_state(x.shape[0]), []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    return torch.stack(outs, 1)
