"""Parameter conventions shared by the layers: optimizer hints and complex parameters.

A layer may give a parameter its own learning rate or weight decay with ``hint(p, lr=..., weight_decay=...)``: the
values land in ``p._optim`` (the convention of the official S4 code), which harness/optim.py reads when it builds
the AdamW groups. ``"main"`` as a value means the run's main setting for that parameter even where the layer's
default would differ (e.g. weight decay on S4's D). A complex parameter is stored as a real (..., 2) tensor, so
optimizers and checkpoints only ever see real numbers; ``torch.view_as_complex`` gives it back.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["complex_param", "hint"]


def hint(p: nn.Parameter, **values: Any) -> nn.Parameter:
    """Set ``p``'s optimizer hints to ``values`` (``lr``, ``weight_decay``; None values are left out, and with them
    all left out ``p`` keeps no hint); returns ``p``."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        p._optim = given
    elif hasattr(p, "_optim"):
        del p._optim
    return p


def complex_param(t: torch.Tensor) -> nn.Parameter:
    """A complex tensor as a real (..., 2) float32 parameter."""
    return nn.Parameter(torch.view_as_real(t.to(torch.complex64)).clone())
