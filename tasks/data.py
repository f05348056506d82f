"""Shared data plumbing for tasks: the padding collate function (loaders are the harness's: harness/loading.py)."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def pad_collate(examples: Sequence[dict[str, Any]], pad_id: int = 0, keys: Sequence[str] = ("inputs",)) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, right-padding each variable-length key to the batch maximum.

    Each example holds ``label`` and, for every key in ``keys``, a 1-D (L,) token tensor or a 2-D (L, D)
    real-valued tensor. The batch gets ``<key>`` padded and ``lengths`` (or ``lengths2`` for ``inputs2``).
    """
    batch: dict[str, torch.Tensor] = {"labels": torch.as_tensor([int(e["label"]) for e in examples], dtype=torch.long)}
    for key in keys:
        seqs = [torch.as_tensor(e[key]) for e in examples]
        lengths = torch.as_tensor([len(s) for s in seqs], dtype=torch.long)
        out = seqs[0].new_full((len(seqs), int(lengths.max()), *seqs[0].shape[1:]), pad_id)  # (B, L[, D])
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        batch[key] = out
        batch["lengths" + key.removeprefix("inputs")] = lengths
    return batch
