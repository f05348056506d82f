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


def assert_steps_equal_forward(layer: torch.nn.Module, x: torch.Tensor, f32: tuple[float, float],
                               f64: tuple[float, float]) -> None:
    """``stepped(layer, x)`` equals ``layer(x)`` under ``inference_mode`` in float32, then (the layer and x cast)
    in float64; ``f32`` / ``f64`` are (atol, rtol). Leaves the layer in float64."""
    with torch.inference_mode():
        torch.testing.assert_close(stepped(layer, x), layer(x), atol=f32[0], rtol=f32[1])
        layer.double()
        torch.testing.assert_close(stepped(layer, x.double()), layer(x.double()), atol=f64[0], rtol=f64[1])
