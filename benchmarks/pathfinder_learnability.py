"""Are the generated Pathfinder-32 images learnable? A small CNN trained for a few minutes on CPU.

Generates (cached, through the task's own cache) ``--n`` Pathfinder-32 images at the chosen difficulty, splits
them 80/10/10 as the task does, trains a small CNN (3 stages of two 3x3 convolutions with batch norm, widths
16/32/64 by default, 2x2 max pooling between stages, global max pooling, a linear head) with AdamW for
``--minutes`` of wall time, keeps the best-validation weights and reports train / val / test accuracy.
Chance is about 50% (labels are drawn per image, as in snakes2).

    python benchmarks/pathfinder_learnability.py                          # 20,000 hard images, 6 minutes
    python benchmarks/pathfinder_learnability.py --difficulty easy --minutes 4

Writes results/pathfinder/learnability_<host-slug>.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.env import device_name, git_commit  # noqa: E402
from tasks.fetch import default_data_dir  # noqa: E402
from tasks.pathfinder import split_indices  # noqa: E402
from tasks.pathfinder_cache import ensure_generated, load_generated  # noqa: E402
from tasks.pathfinder_gen import DIFFICULTIES, FORMAT_VERSION, lra_params  # noqa: E402


def small_cnn(width: int = 16) -> nn.Module:
    """(B, 1, S, S) -> (B, 2) logits (any S divisible by 4; also the two-sample check's classifier)."""
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*stage(1, width), nn.MaxPool2d(2), *stage(width, 2 * width), nn.MaxPool2d(2),
                         *stage(2 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, 2))


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                order: torch.Tensor, batch: int, stop: Callable[[], bool] | None = None) -> float:
    """One pass over ``x[order]`` (B, 1, S, S) / ``y[order]`` in batches of ``batch``, cross-entropy; ``stop()``
    is asked after each step and ends the epoch early when true. Returns the mean loss per example seen."""
    model.train()
    total, seen = 0.0, 0
    for i in range(0, len(order), batch):
        j = order[i:i + batch]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[j]), y[j])
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(j), seen + len(j)
        if stop is not None and stop():
            break
    return total / seen


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + 512]).argmax(1) == y[i:i + 512]).sum()) for i in range(0, len(x), 512))
    return hits / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--difficulty", default="hard", choices=list(DIFFICULTIES))
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2, help="generator processes")
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (then x2, x4)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "pathfinder")
    args = ap.parse_args()
    p = lra_params(32, DIFFICULTIES[args.difficulty])
    folder = args.data_dir / "pathfinder" / "generated" / f"learnability-32-{args.difficulty}-{args.n}"
    t = time.perf_counter()
    ensure_generated(folder, p, args.n, data_seed=0, workers=args.workers)
    gen_s = time.perf_counter() - t
    images, labels = load_generated(folder)
    x = torch.from_numpy(np.asarray(images, np.float32) / 255).unsqueeze(1)  # (N, 1, 32, 32)
    y = torch.from_numpy(labels.astype(np.int64))
    split = {k: torch.from_numpy(v) for k, v in split_indices(len(y), 42).items()}
    xs, ys = {k: x[v] for k, v in split.items()}, {k: y[v] for k, v in split.items()}

    torch.manual_seed(args.seed)
    model = small_cnn(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    batch, budget = args.batch, args.minutes * 60
    best, best_state, epochs, history = -1.0, None, 0, []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget:
        order = torch.randperm(len(ys["train"]))  # global RNG (seeded above); the budget may end an epoch early
        loss = train_epoch(model, opt, xs["train"], ys["train"], order, batch,
                           stop=lambda: time.perf_counter() - t0 > budget)
        epochs += 1
        val = accuracy(model, xs["val"], ys["val"])
        history.append(val)
        # loss: the epoch's mean training loss (before the shared train_epoch: the last batch's)
        print(f"epoch {epochs}: loss {loss:.3f} val {val:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    train_s = time.perf_counter() - t0
    model.load_state_dict(best_state)
    acc = {k: accuracy(model, xs[k], ys[k]) for k in ("train", "val", "test")}
    print(f"train {acc['train']:.3f}  val {acc['val']:.3f}  test {acc['test']:.3f}  (chance 0.5)")

    hw = device_name("cpu")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hw).strip("-").lower()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    n_params = sum(q.numel() for q in model.parameters())
    lines = [f"# Pathfinder-32 learnability ({when})", "",
             f"- machine: {hw}, {os.cpu_count()} logical cores; commit {git_commit()}; torch {torch.__version__}",
             f"- data: {args.n} generated Pathfinder-32 images, difficulty {args.difficulty} (contour length "
             f"{p.contour_length}), generator format {FORMAT_VERSION}, data seed 0; split 80/10/10 (seed 42); "
             f"generation {gen_s:.0f} s with {args.workers} workers (0 s: cached)",
             f"- model: small CNN (3 stages of 2 conv3x3 + BN + ReLU, widths {args.width}/{2 * args.width}/"
             f"{4 * args.width}, max pooling), {n_params:,} parameters; AdamW lr {args.lr:g}, wd 1e-4, batch {batch}, seed {args.seed}",
             f"- training: {train_s / 60:.1f} min wall, {epochs} epochs; best-validation weights; val accuracy per "
             f"epoch: {', '.join(f'{v:.3f}' for v in history)}", "",
             "| split | examples | accuracy |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {len(ys[k])} | {acc[k]:.3f} |" for k in ("train", "val", "test")]
    lines += ["", "Chance is about 0.500 (labels drawn per image)."]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"learnability_{slug}{'' if args.difficulty == 'hard' else '_' + args.difficulty}.md"
    if path.exists():  # keep earlier runs: newest first
        lines += ["", "---", "", path.read_text()]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
