"""Optimizer groups from per-parameter hints, and the learning-rate schedule.

A layer may attach ``param._optim = {"lr": ..., "weight_decay": ...}`` to a parameter (the S4 convention,
used for the SSM parameters A, B, P, dt); those keys override the global values for that parameter, and either may
be partial (a missing key keeps the rule below) or the string ``"main"`` (the optimizer's main value, e.g. to decay a
1-D parameter as an upstream recipe does). Norm weights, biases, embeddings and other 1-D parameters get no weight
decay unless a hint says so. Groups are formed in this one place.
"""
from __future__ import annotations

import math

import torch
from torch import nn

_NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: one per distinct (lr, weight_decay) setting."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            no_decay = isinstance(module, _NO_DECAY_MODULES) or name.endswith("bias") or p.ndim < 2
            hp = {"lr": lr, "weight_decay": 0.0 if no_decay else weight_decay, **getattr(p, "_optim", {})}
            hp["lr"] = lr if hp["lr"] == "main" else hp["lr"]
            hp["weight_decay"] = weight_decay if hp["weight_decay"] == "main" else hp["weight_decay"]
            groups.setdefault((float(hp["lr"]), float(hp["weight_decay"])), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), ps in groups.items()]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to each group's lr over ``warmup_steps``, then cosine decay to ``min_ratio`` x lr."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
