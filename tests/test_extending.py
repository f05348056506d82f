"""Adding a layer or a task takes its own module (plus its YAML file for the suite runner): proven with a layer and a
task that exist only here, registered by importing their modules and trained through the real registries, backbone,
loaders and training loop. Runs in a child process, so the registries of the other tests never see them."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYER = '''
import torch
from torch import nn

from models.registry import register_layer


class CausalMean(nn.Module):
    """y_t = W (mean of x_1..x_t): a causal layer in a few lines."""

    def __init__(self, d_model: int, scale: float):
        super().__init__()
        self.proj, self.scale = nn.Linear(d_model, d_model), scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]
        return self.scale * self.proj(x.cumsum(1) / steps)


@register_layer("causal_mean")
def causal_mean(d_model: int, l_max: int, scale: float = 1.0) -> nn.Module:
    return CausalMean(d_model, scale)
'''

TASK = '''
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.registry import Task, TaskSpec, register_task


class Parity(Dataset):
    def __init__(self, n: int, length: int, seed: int):
        self.x = torch.randint(1, 3, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.x[i], "label": int(self.x[i, 0] == 2)}


def _shape(o: dict) -> TaskSpec:
    return TaskSpec(name="first_is_two", n_classes=2, l_max=o["length"], chance_acc=0.5, vocab_size=3)


@register_task("first_is_two", shape=_shape)
def first_is_two(data_dir: Path, length: int = 16, n: int = 64, batch_size: int = 16) -> Task:
    sets = {split: Parity(n, length, seed) for seed, split in enumerate(("train", "val", "test"))}
    return Task(spec=_shape({"length": length}), **sets, collate=pad_collate, batch_size=batch_size)
'''

SCRIPT = '''
import models, tasks  # the project's own layers and tasks
import my_layer, my_task  # the new ones: importing registers them
from models import build_model, list_layers
from tasks import build_task, list_tasks, task_spec
from harness.train import TrainConfig, fit

assert "causal_mean" in list_layers() and "first_is_two" in list_tasks()
task = build_task("first_is_two", "unused", length=12)
assert task_spec("first_is_two", length=12) == task.spec
net = build_model("causal_mean", task.spec, {"d_model": 16, "n_layers": 1}, {"scale": 0.5})
rec = fit(net, task, TrainConfig(epochs=2, progress=False, device="cpu"), model_name="causal_mean")
assert rec.status == "ok" and rec.steps == 8 and 0.0 <= rec.test_acc <= 1.0, rec
print("ok", rec.steps)
'''


def test_a_layer_and_a_task_defined_outside_the_project_train(tmp_path: Path) -> None:
    (tmp_path / "my_layer.py").write_text(textwrap.dedent(LAYER))
    (tmp_path / "my_task.py").write_text(textwrap.dedent(TASK))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok 8", done.stderr[-3000:]
