"""Layer registry: every sequence layer maps (B, L, H) to (B, L, H) and accepts an optional padding mask.

Contract of a registered layer module:
    forward(x, mask=None) -> y     x, y: (B, L, H); mask: (B, L) bool, True at real positions
Padding sits at the end of each sequence; a layer must not let padded positions change real ones
(causal layers get that for free; attention masks keys; recurrences stop at the length).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from core.registry import Registry

__all__ = ["register_layer", "build_layer", "list_layers", "layer_factory", "kernel_backends"]

_LAYERS: Registry[Callable[..., nn.Module]] = Registry("layer")


def register_layer(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a layer factory ``fn(d_model, l_max, **hparams) -> nn.Module`` under ``name``."""
    return _LAYERS.register(name)


def list_layers() -> list[str]:
    return _LAYERS.names()


def layer_factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory of ``name`` (its signature lists the layer's hyperparameters)."""
    return _LAYERS.get(name)


def build_layer(name: str, d_model: int, l_max: int, **hparams: Any) -> nn.Module:
    """Build a registered sequence layer.

    Args:
        name: registered layer name, e.g. ``"transformer"``.
        d_model: model width H.
        l_max: longest sequence the layer will see (positional tables, kernel lengths).
        **hparams: the layer's own hyperparameters (its config file lists them).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: a hyperparameter the layer does not accept (the message lists those it does).
    """
    return _LAYERS.build(name, {"d_model": d_model, "l_max": l_max}, hparams)


def kernel_backends(model: nn.Module) -> str:
    """The kernel backends the model's layers chose (their ``kernel_backend`` attributes), for records; "n/a" if none."""
    return ",".join(sorted({str(m.kernel_backend) for m in model.modules() if hasattr(m, "kernel_backend")})) or "n/a"
