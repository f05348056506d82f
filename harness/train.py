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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from core.env import device_name, git_commit, resolve_device
from core.registry import check_ranges, check_types
from harness.checkpoint import CheckpointMismatch, Checkpointer
from harness.distributed import all_sum, broadcast, gather, rank_world
from harness.history import History
from harness.loading import eval_loader, train_loader
from harness.measure import PeakMemory, StepTimer
from harness.optim import cosine_with_warmup, param_groups
from harness.records import RunRecord
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


@dataclass
class TrainState:
    """Where a run stands, beside the model, optimizer, scheduler and scaler: what a checkpoint adds to their states."""
    step: int = 0
    best_val: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None   # the weights at the best validation accuracy (on the CPU)
    loss: float = float("nan")                          # training loss of the last step (mean over the global batch)
    since: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # loss sum, correct, examples since last eval
    peak_before: float = 0.0                            # peak memory of the processes before the last resume
    resumed_from: int | None = None
    status: str = "ok"                                  # "ok" | "diverged" | "error: ..."
    stopped_by: str = "schedule"                        # the epochs / max_steps schedule ran out, time_budget, diverged


class _Run:
    """One call of ``fit``: the objects it trains with, set up once, then ``resume``, ``train``, ``test``, ``record``."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, name: str, checkpointer: Checkpointer | None,
                 history: History | None):
        self.t_start = time.perf_counter()
        self.task, self.cfg, self.name, self.checkpointer = task, cfg, name, checkpointer
        self.device = resolve_device(cfg.device)
        self.rank, self.world = rank_world()
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device).train()
        self.net = model if self.world == 1 else DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        for split in ("train", "val", "test"):  # an empty split would select on nothing, or test on nothing, as "ok"
            if len(task.split(split)) == 0:
                raise ValueError(f"task {task.spec.name!r}: the {'validation' if split == 'val' else split} split is "
                                 f"empty; training, model selection and the test each need examples (see the task's "
                                 f"size options)")
        self.per_epoch = len(train_loader(task, cfg.seed, 0, 0, self.rank, self.world)[1])
        if self.per_epoch == 0:
            raise ValueError(f"the training split has {len(task.train)} example(s), fewer than the {self.world} "
                             f"processes")
        self.n_steps = math.ceil(cfg.epochs * self.per_epoch)
        if cfg.max_steps is not None:
            self.n_steps = min(self.n_steps, cfg.max_steps)
        self.opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)
        warmup = max(cfg.warmup_steps, round(cfg.warmup_frac * self.n_steps))
        self.sched = cosine_with_warmup(self.opt, warmup, self.n_steps, cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.timer = StepTimer(self.device, cfg.measure_warmup_steps)
        self.val_loader = eval_loader(task, "val", self.rank, self.world)
        self.history = history if history is not None and self.rank == 0 else History()
        self.state = TrainState()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save(self, peak_mib: float) -> None:
        rngs = gather(_rng_state())
        if self.rank == 0:
            st = self.state
            self.checkpointer.save({
                "step": st.step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": rngs,
                "best_val": st.best_val, "best_state": st.best_state,
                "layer_rng": {name: g.get_state() for name, g in _layer_generators(self.model).items()},
                "loss": st.loss, "elapsed_s": self.elapsed(), "peak_mem_mib": peak_mib,
                "history": self.history.state(), "since": st.since,
                "timer": (self.timer.n_steps, self.timer.seconds, self.timer.samples, self.timer.tokens)})

    def resume(self) -> None:
        """Continue from the checkpoint, if there is one. Rank 0 judges the file (and moves a corrupt one aside);
        the others follow its verdict."""
        if self.checkpointer is None:
            return
        verdict, saved = None, None
        if self.rank == 0:
            try:
                saved = self.checkpointer.load()
                verdict = "load" if saved is not None else "none"
            except CheckpointMismatch as exc:
                verdict = str(exc)
        verdict = broadcast(verdict)
        if verdict not in ("load", "none"):
            raise CheckpointMismatch(verdict)
        if verdict == "none":
            return
        saved = saved if self.rank == 0 else self.checkpointer.read()
        try:
            self.model.load_state_dict(saved["model"])
        except RuntimeError as exc:
            raise CheckpointMismatch(f"checkpoint {self.checkpointer.path} does not fit this model: {exc}") from exc
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(step=saved["step"], best_val=saved["best_val"], best_state=saved["best_state"],
                                loss=saved["loss"], since=list(saved["since"]), peak_before=saved["peak_mem_mib"],
                                resumed_from=saved["step"])
        _, self.timer.seconds, self.timer.samples, self.timer.tokens = saved["timer"]  # new process: warm up again
        self.t_start = time.perf_counter() - saved["elapsed_s"]
        rngs = saved["rng"]
        _set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])  # another world size: rank 0's
        for name, g in _layer_generators(self.model).items():
            g.set_state(saved["layer_rng"][name])
        self.history.restore(saved["history"])

    # -- training --------------------------------------------------------------------------------------------------
    def validate(self) -> float:
        st, cfg = self.state, self.cfg
        acc, loss = evaluate_with_loss(self.model, self.val_loader, self.device, cfg.eval_max_batches, cfg.precision,
                                       "validation")
        if acc > st.best_val:
            st.best_val = acc
            st.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        loss_sum, correct, seen = st.since
        self.history.add(step=st.step, epoch=st.step / self.per_epoch, elapsed_s=self.elapsed(), split="validation",
                         acc=acc, loss=loss, train_loss=loss_sum / seen if seen else None,
                         train_acc=correct / seen if seen else None, lr=self.sched.get_last_lr()[0])
        st.since = [0.0, 0.0, 0]
        return acc

    def train_step(self, batch: dict[str, torch.Tensor], n_global: int) -> bool:
        """One optimizer step on this rank's part of a global batch of ``n_global`` examples; False (and no step)
        when the loss summed over the ranks is not finite."""
        cfg, st = self.cfg, self.state
        batch = _to(batch, self.device)
        self.timer.start()
        with _autocast(self.device, cfg.precision):
            logits = _logits(self.net, batch)
        loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        tokens = int(batch["lengths"].sum()) + int(batch.get("lengths2", torch.zeros(1)).sum())
        correct = int((logits.argmax(-1) == batch["labels"]).sum())
        total_loss, tokens, correct = all_sum([loss_sum.item(), tokens, correct], self.device)
        if not math.isfinite(total_loss):
            return False
        self.opt.zero_grad(set_to_none=True)
        # each rank's sum over its part, x world / global batch: DDP's average is the global batch's mean
        self.scaler.scale(loss_sum * (self.world / n_global)).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.timer.stop(samples=n_global, tokens=int(tokens))
        st.step, st.loss = st.step + 1, total_loss / n_global
        st.since = [st.since[0] + total_loss, st.since[1] + correct, st.since[2] + n_global]
        return True

    def train(self, mem: PeakMemory) -> None:
        """Steps until the schedule or the time budget ends (or the run diverges): validation at each epoch's end
        (and at the last step), checkpoints at each epoch's end and when the checkpointer says one is due."""
        cfg, st = self.cfg, self.state
        bar = tqdm(total=self.n_steps, initial=st.step, desc=f"{self.task.spec.name}/{self.name}",
                   disable=not cfg.progress or self.rank != 0, leave=False, dynamic_ncols=True, mininterval=1.0)
        stop = st.step >= self.n_steps
        while not stop:
            epoch, skip = divmod(st.step, self.per_epoch)
            loader, batches = train_loader(self.task, cfg.seed, epoch, skip, self.rank, self.world)
            for b, batch in enumerate(loader, start=skip):
                if not self.train_step(batch, batches.global_size(b)):
                    st.status, stop = "diverged", True
                    break
                bar.update(1)
                bar.set_postfix(loss=f"{st.loss:.3f}", best=f"{st.best_val:.3f}")
                over_budget = cfg.time_budget_s is not None and self.elapsed() > cfg.time_budget_s
                due = self.checkpointer is not None and self.checkpointer.due(st.step)
                over_budget, due = broadcast((over_budget, due))  # rank 0's clock decides for all
                end_of_epoch = b + 1 == batches.n_batches
                if end_of_epoch or st.step == self.n_steps or over_budget:
                    try:
                        acc = self.validate()
                    except NonFiniteOutputs:  # the model's outputs blew up: a diverged run, not an accuracy
                        st.status, stop = "diverged", True
                        break
                    bar.set_postfix(loss=f"{st.loss:.3f}", val_acc=f"{acc:.3f}", best=f"{st.best_val:.3f}")
                stop = over_budget or st.step >= self.n_steps
                st.stopped_by = ("schedule" if st.step >= self.n_steps else "time_budget" if over_budget
                                 else st.stopped_by)
                if self.checkpointer is not None and not stop and (end_of_epoch or due):
                    self.save(max(st.peak_before, mem.peak_mib_so_far))
                if stop:
                    break
        bar.close()

    def test(self) -> float | None:
        """Test accuracy at the best-validation weights (restored first, so the test set never picks anything)."""
        st = self.state
        if st.best_state is None:
            return None
        self.model.load_state_dict(st.best_state)
        try:
            acc, loss = evaluate_with_loss(self.model, eval_loader(self.task, "test", self.rank, self.world),
                                           self.device, precision=self.cfg.precision, split="test")
        except NonFiniteOutputs as exc:  # finite on validation, not on test (e.g. bad inputs): say so, no number
            st.status = f"error: {exc}" if st.status == "ok" else st.status
            return None
        self.history.add(step=st.step, epoch=st.step / self.per_epoch, elapsed_s=self.elapsed(), split="test",
                         acc=acc, loss=loss)
        return acc

    def record(self, test_acc: float | None, mem: PeakMemory) -> RunRecord:
        st, spec = self.state, self.task.spec
        samples_per_s, tokens_per_s = self.timer.rates()
        return RunRecord(
            task=spec.name, model=self.name, seed=self.cfg.seed, status=st.status, test_acc=test_acc,
            best_val_acc=st.best_val if st.best_val >= 0 else None, chance_acc=spec.chance_acc,
            train_samples_per_s=samples_per_s, train_tokens_per_s=tokens_per_s,
            peak_mem_mib=max(st.peak_before, mem.peak_mib), peak_mem_kind=mem.kind, wall_s=self.elapsed(),
            n_params=sum(p.numel() for p in self.model.parameters()), epochs=st.step / self.per_epoch, steps=st.step,
            final_train_loss=st.loss if math.isfinite(st.loss) else None, resumed_from_step=st.resumed_from,
            world_size=self.world, stopped_by="diverged" if st.status == "diverged" else st.stopped_by,
            device=self.device.type, device_name=device_name(self.device.type), torch_version=torch.__version__,
            git_commit=git_commit())


def fit(model: nn.Module, task: Task, cfg: TrainConfig, model_name: str | None = None,
        checkpointer: Checkpointer | None = None, history: History | None = None) -> RunRecord:
    """Train ``model`` on ``task`` and measure it.

    Args:
        model: a classifier taking a task batch (minus labels) as keyword arguments and returning logits.
        task: the task's spec, datasets and collate function (the loaders are harness/loading.py's: the batch order
            is a function of seed and epoch).
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
    run = _Run(model, task, cfg, model_name or getattr(model, "layer_name", type(model).__name__), checkpointer, history)
    run.resume()
    with PeakMemory(run.device) as mem:
        run.train(mem)
    test_acc = run.test()
    run.history.close()
    return run.record(test_acc, mem)
