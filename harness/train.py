"""Training as a plain function: ``fit(model, task, cfg) -> RunRecord``.

AdamW with groups from per-parameter hints, cosine schedule with linear warm-up, gradient clipping;
validation each epoch (and at the end of a budget-cut run); test accuracy at the best-validation
state, restored first, so the test set never picks anything.

Optional: bf16/fp16 autocast (``precision``; fp16 with gradient scaling; layers keep their own precision-critical
parts, such as the S4 kernel, in float32), data parallelism across the ranks of ``torchrun`` (harness/distributed.py),
and checkpoints to resume from (harness/checkpoint.py): a resumed run continues with the same batches, RNG streams,
schedule and budget, so on CPU it ends with the same metrics as a run never interrupted.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from harness.checkpoint import CheckpointMismatch, Checkpointer
from harness.distributed import EpochBatches, all_sum, broadcast, gather, loader_with, rank_world, shard_batches
from core.env import device_name, git_commit, resolve_device
from harness.history import History
from harness.measure import PeakMemory, StepTimer
from harness.optim import cosine_with_warmup, param_groups
from harness.records import RunRecord
from core.registry import check_ranges, check_types
from tasks.registry import Task

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0                 # may be fractional; max_steps / time_budget_s cut earlier
    max_steps: int | None = None
    time_budget_s: float | None = None  # training time, validation included; checked after each step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    warmup_frac: float = 0.0            # warm-up as a fraction of the scheduled steps (S4: 0.1); the larger one wins
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0              # max global grad norm; 0 turns clipping off
    measure_warmup_steps: int = 5       # steps excluded from the throughput figure
    eval_max_batches: int | None = None  # cap on validation batches (None: the whole split; per rank under torchrun)
    precision: str = "fp32"             # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaling)
    checkpoint_every_steps: int | None = None  # interval saves (when the caller gives a Checkpointer) ...
    checkpoint_every_s: float | None = 600.0   # ... by steps and/or time; every epoch end saves too
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse a value of the wrong type or a size that trains or selects nothing (``epochs=-1``, ``max_steps=0``,
        ``eval_max_batches=0``), naming the option: such a run would otherwise be recorded as ``ok``."""
        check_types(TrainConfig, vars(self), what="train.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        rules = [("epochs", self.epochs > 0 and math.isfinite(self.epochs), "a number > 0"),
                 ("max_steps", self.max_steps is None or self.max_steps >= 1, "an integer >= 1 or null"),
                 ("time_budget_s", self.time_budget_s is None or self.time_budget_s > 0, "a number > 0 or null"),
                 ("lr", self.lr > 0 and math.isfinite(self.lr), "a number > 0"),
                 ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                 ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
                 ("warmup_frac", 0 <= self.warmup_frac < 1, "a number in [0, 1)"),
                 ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
                 ("grad_clip", self.grad_clip >= 0, "a number >= 0 (0: no clipping)"),
                 ("measure_warmup_steps", self.measure_warmup_steps >= 0, "an integer >= 0"),
                 ("eval_max_batches", self.eval_max_batches is None or self.eval_max_batches >= 1,
                  "an integer >= 1 or null (the whole split)"),
                 ("checkpoint_every_steps", self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
                  "an integer >= 1 or null"),
                 ("checkpoint_every_s", self.checkpoint_every_s is None or self.checkpoint_every_s > 0,
                  "a number > 0 or null")]
        check_ranges("train.", vars(self), rules)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k != "labels"})


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class NonFiniteOutputs(FloatingPointError):
    """The model gave non-finite logits on an evaluation split: no accuracy can be taken from them (an argmax over
    NaNs is class 0, a plausible wrong number)."""


def evaluate(model: nn.Module, loader: Any, device: torch.device, max_batches: int | None = None,
             precision: str = "fp32", split: str = "evaluation") -> float:
    """Accuracy in [0, 1] over (up to ``max_batches`` of) a loader; summed over ranks under torchrun. Raises
    NonFiniteOutputs when any example's logits are not all finite (every rank raises: the count is summed)."""
    return evaluate_with_loss(model, loader, device, max_batches, precision, split)[0]


@torch.no_grad()
def evaluate_with_loss(model: nn.Module, loader: Any, device: torch.device, max_batches: int | None = None,
                       precision: str = "fp32", split: str = "evaluation") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) over (up to ``max_batches`` of) a loader; see ``evaluate``."""
    model.eval()
    correct = total = bad = loss = 0.0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = _to(batch, device)
        with _autocast(device, precision):
            logits = _logits(model, batch)
        bad += int((~torch.isfinite(logits)).any(-1).sum().item())
        correct += (logits.argmax(-1) == batch["labels"]).sum().item()
        loss += F.cross_entropy(logits.float(), batch["labels"], reduction="sum").item()
        total += batch["labels"].numel()
    model.train()
    correct, total, bad, loss = all_sum([correct, total, bad, loss], device)
    if bad:
        raise NonFiniteOutputs(f"non-finite outputs in {split}: {int(bad)} of {int(total)} examples")
    return correct / max(total, 1), loss / max(total, 1)


def _layer_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """The random generators layers own (e.g. the Performer's feature draws), by module path and attribute."""
    return {f"{path}.{attr}": g for path, m in model.named_modules() for attr, g in vars(m).items()
            if isinstance(g, torch.Generator)}


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(model: nn.Module, task: Task, cfg: TrainConfig, model_name: str | None = None,
        checkpointer: Checkpointer | None = None, history: History | None = None) -> RunRecord:
    """Train ``model`` on ``task`` and measure it.

    Args:
        model: a classifier taking a task batch (minus labels) as keyword arguments and returning logits.
        task: the task's spec and loaders (their datasets, batch sizes and collate functions are used; the batch order
            is the harness's own, a function of seed and epoch).
        cfg: optimisation, precision and budget settings.
        model_name: name for the record (default: the model's ``layer_name`` attribute).
        checkpointer: where to save (and first try to resume from) the training state; None: no checkpoints.
        history: where the learning curve goes (harness/history.py; rank 0's is written); None: kept in memory.

    Returns:
        A RunRecord with status ``ok``, ``diverged`` (non-finite training loss or validation outputs) or
        ``error: non-finite outputs in test: ...`` (never an accuracy taken from NaN logits); other failures
        propagate to the caller, which records them.

    Raises:
        CheckpointMismatch: the checkpoint to resume from belongs to another config or does not fit the model.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    rank, world = rank_world()
    torch.manual_seed(cfg.seed)
    model = model.to(device).train()
    net = model if world == 1 else DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n_train, batch_size = len(task.train.dataset), task.train.batch_size

    def epoch_batches(epoch: int, skip: int = 0) -> EpochBatches:
        return EpochBatches(n_train, batch_size, True, cfg.seed, epoch, skip, rank, world)

    def eval_loader(loader: Any) -> Any:
        return loader_with(loader, shard_batches(len(loader.dataset), loader.batch_size, rank, world))

    for split in ("train", "val", "test"):  # an empty split would select on nothing, or test on nothing, as "ok"
        if len(getattr(task, split).dataset) == 0:
            raise ValueError(f"task {task.spec.name!r}: the {'validation' if split == 'val' else split} split is empty; "
                             f"training, model selection and the test each need examples (see the task's size options)")
    per_epoch = len(epoch_batches(0))
    if per_epoch == 0:
        raise ValueError(f"the training split has {n_train} example(s), fewer than the {world} processes")
    n_steps = math.ceil(cfg.epochs * per_epoch)
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)
    warmup = max(cfg.warmup_steps, round(cfg.warmup_frac * n_steps))
    sched = cosine_with_warmup(opt, warmup, n_steps, cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    timer = StepTimer(device, cfg.measure_warmup_steps)
    val_loader = eval_loader(task.val)
    best_val, best_state, status, step, loss_val = -1.0, None, "ok", 0, float("nan")
    resumed_from, peak_before = None, 0.0
    history = history if history is not None and rank == 0 else History()
    since = [0.0, 0.0, 0]  # training loss sum, correct, examples since the last evaluation (global)
    stopped_by = "schedule"  # why training ended: the epochs / max_steps schedule ran out, time_budget_s, diverged

    saved = None
    if checkpointer is not None:  # rank 0 judges the file (and moves a corrupt one aside); the others follow its verdict
        verdict = None
        if rank == 0:
            try:
                saved = checkpointer.load()
                verdict = "load" if saved is not None else "none"
            except CheckpointMismatch as exc:
                verdict = str(exc)
        verdict = broadcast(verdict)
        if verdict not in ("load", "none"):
            raise CheckpointMismatch(verdict)
        if verdict == "load" and rank != 0:
            saved = checkpointer.read()
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as exc:
            raise CheckpointMismatch(f"checkpoint {checkpointer.path} does not fit this model: {exc}") from exc
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        step, best_val, best_state, loss_val = saved["step"], saved["best_val"], saved["best_state"], saved["loss"]
        _, timer.seconds, timer.samples, timer.tokens = saved["timer"]  # the new process's first steps warm up again
        peak_before, resumed_from = saved["peak_mem_mib"], saved["step"]
        t_start = time.perf_counter() - saved["elapsed_s"]
        rngs = saved["rng"]
        _set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])  # another world size: rank 0's streams
        for name, g in _layer_generators(model).items():
            g.set_state(saved["layer_rng"][name])
        history.restore(saved["history"])
        since = list(saved["since"])

    def validate() -> None:
        nonlocal best_val, best_state, since
        acc, loss = evaluate_with_loss(model, val_loader, device, cfg.eval_max_batches, cfg.precision, "validation")
        if acc > best_val:
            best_val, best_state = acc, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{loss_val:.3f}", val_acc=f"{acc:.3f}", best=f"{best_val:.3f}")
        history.add(step=step, epoch=step / per_epoch, elapsed_s=time.perf_counter() - t_start, split="validation",
                    acc=acc, loss=loss, train_loss=since[0] / since[2] if since[2] else None,
                    train_acc=since[1] / since[2] if since[2] else None, lr=sched.get_last_lr()[0])
        since = [0.0, 0.0, 0]

    def save(peak_mib: float) -> None:
        rngs = gather(_rng_state())
        if rank == 0:
            checkpointer.save({
                "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rngs, "best_val": best_val, "best_state": best_state,
                "layer_rng": {name: g.get_state() for name, g in _layer_generators(model).items()},
                "loss": loss_val, "elapsed_s": time.perf_counter() - t_start, "peak_mem_mib": peak_mib,
                "history": history.state(), "since": since,
                "timer": (timer.n_steps, timer.seconds, timer.samples, timer.tokens)})

    bar = tqdm(total=n_steps, initial=step, desc=f"{task.spec.name}/{model_name or getattr(model, 'layer_name', '?')}",
               disable=not cfg.progress or rank != 0, leave=False, dynamic_ncols=True, mininterval=1.0)
    with PeakMemory(device) as mem:
        stop = step >= n_steps
        while not stop:
            epoch, skip = divmod(step, per_epoch)
            batches = epoch_batches(epoch, skip)
            for b, batch in enumerate(loader_with(task.train, batches), start=skip):
                batch = _to(batch, device)
                n_global = batches.global_size(b)
                timer.start()
                with _autocast(device, cfg.precision):
                    logits = _logits(net, batch)
                loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
                tokens = int(batch["lengths"].sum()) + int(batch.get("lengths2", torch.zeros(1)).sum())
                correct = int((logits.argmax(-1) == batch["labels"]).sum())
                total_loss, tokens, correct = all_sum([loss_sum.item(), tokens, correct], device)
                if not math.isfinite(total_loss):
                    status, stop = "diverged", True
                    break
                opt.zero_grad(set_to_none=True)
                # each rank's sum over its part, x world / global batch: DDP's average is the global batch's mean
                scaler.scale(loss_sum * (world / n_global)).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                timer.stop(samples=n_global, tokens=int(tokens))
                step, loss_val = step + 1, total_loss / n_global
                since = [since[0] + total_loss, since[1] + correct, since[2] + n_global]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.3f}", best=f"{best_val:.3f}")
                over_budget = cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s
                due = checkpointer is not None and checkpointer.due(step)
                over_budget, due = broadcast((over_budget, due))  # rank 0's clock decides for all
                end_of_epoch = b + 1 == batches.n_batches
                if end_of_epoch or step == n_steps or over_budget:
                    try:
                        validate()
                    except NonFiniteOutputs:  # the model's outputs blew up: a diverged run, not an accuracy
                        status, stop = "diverged", True
                        break
                stop = over_budget or step >= n_steps
                stopped_by = "schedule" if step >= n_steps else "time_budget" if over_budget else stopped_by
                if checkpointer is not None and not stop and (end_of_epoch or due):
                    save(max(peak_before, mem.peak_mib_so_far))
                if stop:
                    break
    bar.close()

    test_acc = None
    if best_state is not None:
        model.load_state_dict(best_state)
        try:
            test_acc, test_loss = evaluate_with_loss(model, eval_loader(task.test), device, precision=cfg.precision,
                                                     split="test")
            history.add(step=step, epoch=step / per_epoch, elapsed_s=time.perf_counter() - t_start, split="test",
                        acc=test_acc, loss=test_loss)
        except NonFiniteOutputs as exc:  # finite on validation, not on test (e.g. bad inputs): say so, no number
            status = f"error: {exc}" if status == "ok" else status
    history.close()
    samples_per_s, tokens_per_s = timer.rates()
    return RunRecord(
        task=task.spec.name, model=model_name or getattr(model, "layer_name", type(model).__name__), seed=cfg.seed,
        status=status, test_acc=test_acc, best_val_acc=best_val if best_val >= 0 else None,
        chance_acc=task.spec.chance_acc, train_samples_per_s=samples_per_s, train_tokens_per_s=tokens_per_s,
        peak_mem_mib=max(peak_before, mem.peak_mib), peak_mem_kind=mem.kind, wall_s=time.perf_counter() - t_start,
        n_params=sum(p.numel() for p in model.parameters()), epochs=step / per_epoch, steps=step,
        final_train_loss=loss_val if math.isfinite(loss_val) else None, resumed_from_step=resumed_from, world_size=world,
        stopped_by="diverged" if status == "diverged" else stopped_by,
        device=device.type, device_name=device_name(device.type), torch_version=torch.__version__,
        git_commit=git_commit(),
    )
