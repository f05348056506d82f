"""A generated long-range memory task: the label is the first token; every later token is noise.

The first token is one of ``n_classes`` signal symbols (ids 1..n_classes; 0 is padding) and is the label; the
other ``length - 1`` tokens are drawn uniformly from ``n_noise`` noise symbols (ids after the signal ones), so
nothing after position 0 carries information about the label. Solving it means carrying one token across ``length - 1`` noise tokens: with a
causal model that reads out at the last position (``backbone.pool: last``), a model without long memory stays
at chance (1 / n_classes). Generated in memory from ``data_seed``; nothing is downloaded or cached.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.registry import Task, TaskSpec, register_task


class _Sequences(Dataset):
    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens  # (n, L) int64, signal symbol first

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.tokens[i], "label": int(self.tokens[i, 0]) - 1}


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="first_token", n_classes=o["n_classes"], l_max=o["length"], chance_acc=1.0 / o["n_classes"],
                    vocab_size=o["n_classes"] + o["n_noise"] + 1)

@register_task("first_token", shape=_shape)
def first_token(data_dir: Path, length: int = 1024, n_classes: int = 10, n_noise: int = 10, n_train: int = 4000, n_val: int = 500,
                n_test: int = 500, batch_size: int = 32, data_seed: int = 0,
                num_workers: int = 0) -> Task:
    """Build the first-token memory task.

    Args:
        data_dir: unused (the data are generated in memory).
        length: sequence length L.
        n_classes: signal symbols, and classes.
        n_noise: noise symbols (distinct from the signal symbols).
        n_train, n_val, n_test: split sizes.
        batch_size: examples per batch.
        data_seed: seed of the generator; the data do not change with the training seed.
        num_workers: DataLoader workers.
    """
    if length < 2 or n_classes < 2 or n_noise < 1:
        raise ValueError(f"first_token needs length >= 2, n_classes >= 2, n_noise >= 1; got {length}, {n_classes}, {n_noise}")
    gen = torch.Generator().manual_seed(data_seed)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    sets = {}
    for split, n in sizes.items():
        tokens = torch.randint(n_classes + 1, n_classes + n_noise + 1, (n, length), generator=gen)  # (n, L) noise
        tokens[:, 0] = torch.randint(1, n_classes + 1, (n,), generator=gen)
        sets[split] = _Sequences(tokens)
    spec = dataclasses.replace(_shape({"n_classes": n_classes, "length": length, "n_noise": n_noise}),
                               info={"length": length, "n_noise": n_noise, "n_examples": sizes, "data_seed": data_seed})
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)
