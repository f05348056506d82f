"""The suite runner: tasks x models x seeds, one RunRecord each, whatever happens to any one run.

Each run's configuration comes from ``harness.config.resolve_run`` (defaults < model file < recipe < suite <
command line, every value with its source); ``dry_run=true`` prints those plans as JSON lines and runs nothing.
"""
from __future__ import annotations

import json
import logging
import random
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

import models  # noqa: F401  (registers the layers)
import tasks  # noqa: F401  (registers the tasks)
from harness.checkpoint import Checkpointer, RunLock
from harness.config import COMMAND_LINE, check_command_line, resolve_run, resolve_run_config, suite_lists
from harness.distributed import barrier, broadcast, init_from_env, is_main, local_device, rank_world, shutdown
from harness.efficiency import efficiency_settings, run_efficiency
from core.env import device_name, git_commit, resolve_device
from harness.history import History
from harness.loggers import build_loggers
from harness.measure import is_oom
from core.files import write_atomic
from harness.records import RecordsNotWritten, RecordStore, RunRecord, load_records, run_hash
from harness.report import write_report
from harness.tables import write_tables
from harness.train import TrainConfig, fit
from models.backbone import build_model
from models.registry import kernel_backends, list_layers
from tasks.registry import DatasetMissingError, build_task, list_tasks

log = logging.getLogger(__name__)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


FINISHED = ("ok", "diverged")  # outcomes a restart keeps; oom / error / skipped runs are tried again


def checkpoint_path(results_dir: str | Path, task: str, model: str, seed: int) -> Path:
    return Path(results_dir) / "checkpoints" / f"{task}__{model}__seed{seed}.pt"


def run_one(cfg: DictConfig, task: str, model: str, seed: int, results_dir: str | Path | None = None) -> RunRecord:
    """Run one (task, model, seed) and return its record; never raises for a failure of the run itself.

    With ``results_dir`` the run checkpoints into ``<results_dir>/checkpoints/`` and first resumes from a checkpoint
    of the same config found there (one of another config is refused: the run's record says so)."""
    dev_type, in_fit = "cpu", False
    base = dict(task=task, model=model, seed=seed, suite=str(cfg.suite_name), torch_version=torch.__version__,
                git_commit=git_commit())
    try:
        dev_type = resolve_device(cfg.device).type
        run = resolve_run(cfg, task, model, seed)
        run_cfg = run.config
        base.update(config=_json(run_cfg), config_sources=_json(run.sources), config_hash=run_hash(run_cfg))
        train_cfg = TrainConfig(**{**run_cfg["train"], "device": local_device(str(cfg.device))})
        checkpointer = None
        if results_dir is not None:
            checkpointer = Checkpointer(checkpoint_path(results_dir, task, model, seed), base["config_hash"],
                                        train_cfg.checkpoint_every_steps, train_cfg.checkpoint_every_s)
        t = build_task(task, run_cfg["data_dir"], **run_cfg["task"]["options"])
        _seed_everything(seed)
        net = build_model(run_cfg["model"]["name"], t.spec, run_cfg["model"].get("backbone"),
                          run_cfg["model"].get("hparams"))
        history, history_file = None, ""
        if results_dir is not None:
            run_name = f"{task}__{model}__seed{seed}__{base['config_hash']}"
            history_file = f"history/{run_name}.parquet"
            loggers = []  # rank 0 alone writes event files (fit gives the other ranks an in-memory History)
            if is_main():
                loggers = build_loggers(cfg.get("logger"), results_dir, run_name, run_cfg, base["suite"])
            history = History(Path(results_dir) / history_file, loggers=loggers)
        in_fit = True
        try:
            rec = fit(net, t, train_cfg, model_name=model, checkpointer=checkpointer, history=history)
        finally:  # a run that fails mid-way still closes its event files
            if history is not None:
                history.close()
        in_fit = False
        return replace(rec, suite=base["suite"], config=base["config"], config_hash=base["config_hash"],
                       history=history_file,
                       config_sources=base["config_sources"],
                       task_info=_json({**t.spec.info, **({"recipe_deviations": run_cfg["deviations"]}
                                                          if run_cfg.get("deviations") else {})}),
                       kernel_backend=kernel_backends(net),
                       comparison=str(run_cfg["model"].get("comparison", "")))
    except DatasetMissingError as exc:
        status = f"skipped: data not found: {exc}"
        log.warning("%s/%s/seed%d skipped: %s", task, model, seed, exc)
    except Exception as exc:  # one failing run never stops the suite; its row says why
        if in_fit and rank_world()[1] > 1:  # the other ranks wait in a collective: end this process (torchrun then
            log.error("rank %d: run %s/%s/seed%d failed in training; ending the job, start it again to resume",
                      rank_world()[0], task, model, seed)  # ends the job); started again, the run resumes
            raise
        if is_oom(exc):
            status = "oom"
        else:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
            status = f"error: {type(exc).__name__}: {msg}"
            log.error("run %s/%s/seed%d failed:\n%s", task, model, seed, traceback.format_exc())
        if dev_type == "cuda":
            torch.cuda.empty_cache()
    return RunRecord(status=status[:2000], device=dev_type, device_name=device_name(dev_type), **base)


def _plan(cfg: DictConfig, task: str, model: str, seed: int, results_dir: Path) -> tuple[str, str, RunLock | None]:
    """(action, why, lock) for one run, decided by rank 0: ``run`` (lock taken), ``finished`` (a record of the same
    experiment with a final status exists) or ``busy`` (another process holds the run's lock). The records are read
    after the lock is taken, so a run another process finished a moment ago is seen as finished."""
    ckpt = Checkpointer(checkpoint_path(results_dir, task, model, seed), "")
    lock = RunLock(ckpt.path.with_suffix(".lock"), stale_s=float(cfg.get("lock_stale_s", 3600)))
    holder = lock.acquire()
    if holder is not None:
        return "busy", f"being trained by {holder}", None
    try:
        h = run_hash(resolve_run_config(cfg, task, model, seed))
    except Exception:  # noqa: BLE001 - run_one records the error
        h = None
    if not cfg.get("resume", True):
        ckpt.remove()
    elif h is not None:
        df = load_records(results_dir)
        done = df[(df.task == task) & (df.model == model) & (df.seed == seed) & (df.config_hash == h)
                  & df.status.isin(FINISHED)] if len(df) else df
        if len(done):
            if ckpt.path.exists() and ckpt.stored_hash() == h:
                ckpt.remove()  # left by a kill between the record's write and the checkpoint's removal
            lock.release()
            return "finished", f"{done.iloc[-1].status} record of config {h} from {done.iloc[-1].timestamp}", None
    ckpt.sweep_temporaries()
    return "run", "", lock


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def plan_runs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every (task, model, seed) of the suite as it would run: ``Run.as_json_dict()`` (task, model, seed, the resolved
    config and each value's source), or ``{task, model, seed, error}`` for a run whose config cannot be resolved.
    Reads config files only: no data, no model, no results folder (``dry_run=true``)."""
    for warning in check_command_line(cfg):
        log.warning(warning)
    plans = []
    tasks_, models_, seeds_ = suite_lists(cfg)
    for task, model, seed in ((t, m, s) for t in tasks_ for m in models_ for s in seeds_):
        try:
            plans.append(resolve_run(cfg, task, model, seed).as_json_dict())
        except Exception as exc:  # noqa: BLE001 - said in the plan, as the run's record would say it
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            plans.append({"task": task, "model": model, "seed": seed, "error": f"{type(exc).__name__}: {msg}"})
    return plans


class SuiteError(Exception):
    """The suite cannot start as asked (a bad command-line value, an unwritable results folder): nothing ran."""


def _check_results_dir(results_dir: Path) -> None:
    """Refuse a results folder that cannot be created or written (``results_dir=/proc/x``) before anything runs."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(results_dir / ".write-test", "")
        (results_dir / ".write-test").unlink()
    except OSError as exc:
        raise SuiteError(f"results_dir={results_dir} cannot be written ({exc.strerror or exc}); "
                         f"give a folder you can write") from None


def _check_plans(cfg: DictConfig) -> None:
    """Resolve every run before any trains: a value set on the command line that no run can take (``train.epochs=-1``,
    ``train.grad_clip=abc``) refuses the suite; any other unresolvable run is said now and recorded as an error."""
    try:
        plans = plan_runs(cfg)
    except ValueError as exc:  # a command-line override naming no registered task or model
        raise SuiteError(str(exc)) from None
    for plan in plans:
        if "error" not in plan:
            continue
        if f"set by {COMMAND_LINE}" in plan["error"]:
            raise SuiteError(plan["error"].split(": ", 1)[1])
        log.error("%s / %s / seed %d cannot run: %s. It will be recorded as an error.", plan["task"], plan["model"],
                  plan["seed"], plan["error"])


def run_suite(cfg: DictConfig) -> tuple[list[RunRecord], dict[str, Path]]:
    """Run every (task, model, seed) of the suite, storing each record as soon as it exists; then write the tables,
    run the suite's efficiency sweep if it has one, and write its REPORT.md (tables, plots) from the stored records.

    Raises:
        SuiteError: before anything runs, for a command-line value no run can take or an unwritable results folder.
        RecordsNotWritten: at the end, when some records could not be stored (they are in the exception).
    """
    results_dir = Path(cfg.results_dir)
    tasks_, models_, seeds_ = suite_lists(cfg)  # bare names as lists, repeats dropped, integer seeds
    combos = [(t, m, s) for t in tasks_ for m in models_ for s in seeds_]
    log.info("suite %s: %d runs -> %s", cfg.suite_name, len(combos), results_dir)
    for group, names, known in (("task", tasks_, list_tasks()), ("model", models_, list_layers())):
        for name in names:
            if name not in known:  # said at once, not only after hours of other runs
                log.error("unknown %s %r; known: %s. Its runs will be recorded as errors.", group, name, ", ".join(known))
    eff_cfg, eff_models = efficiency_settings(cfg)  # a misspelt efficiency key fails before hours of training
    _check_plans(cfg)  # and so do a misspelt name or a nonsense value on the command line
    if is_main():
        _check_results_dir(results_dir)
    store = RecordStore(results_dir)
    distributed = init_from_env(str(cfg.device))
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)
    records = []
    for i, (task, model, seed) in enumerate(combos, 1):
        action, why, lock = _plan(cfg, task, model, seed, results_dir) if is_main() else (None, None, None)
        action, why = broadcast((action, why))
        if action == "finished":
            log.info("[%d/%d] %s / %s / seed %d: finished already (%s); resume=false runs it again",
                     i, len(combos), task, model, seed, why)
            continue
        if action == "busy":
            log.warning("[%d/%d] %s / %s / seed %d: skipped here (%s); its record will come from there",
                        i, len(combos), task, model, seed, why)
            continue
        log.info("[%d/%d] %s / %s / seed %d", i, len(combos), task, model, seed)
        path = None
        try:
            rec = run_one(cfg, task, model, seed, results_dir)
            if is_main():
                path = store.add(rec)
                if path is not None and rec.status in FINISHED:  # an unwritten record keeps its checkpoint
                    checkpoint_path(results_dir, task, model, seed).unlink(missing_ok=True)
        finally:
            if lock is not None:
                lock.release()
        barrier()
        records.append(rec)
        log.info("[%d/%d] %s / %s / seed %d: %s%s  (%s)", i, len(combos), task, model, seed, rec.status.splitlines()[0][:300],
                 f", test acc {rec.test_acc:.4f}, {rec.wall_s:.0f} s" if rec.test_acc is not None else "",
                 path.name if path is not None else "record NOT written" if is_main() else "")
    main = is_main()
    if distributed:
        shutdown()
    if not main:  # tables, efficiency and report: rank 0's alone
        return records, {}
    store.flush()
    paths: dict[str, Path] = {}
    try:
        paths = write_tables(results_dir)
        if eff_cfg is not None:
            log.info("efficiency: %d models x lengths %s", len(eff_models), list(eff_cfg.lengths))
            run_efficiency(eff_cfg, eff_models, results_dir, suite=str(cfg.suite_name),
                           progress=bool(cfg.train.get("progress", True)), resume=bool(cfg.get("resume", True)),
                           suite_cfg=cfg)
        paths["report"] = write_report([results_dir], out=results_dir / "REPORT.md")
    except OSError as exc:
        if not store.pending:
            raise
        log.error("tables and report not written (%s)", exc)  # the records come first
    if store.pending:
        raise RecordsNotWritten(store.pending, results_dir)
    return records, paths


__all__ = ["RecordsNotWritten", "SuiteError", "checkpoint_path", "plan_runs", "resolve_run_config", "run_hash", "run_one", "run_suite"]
