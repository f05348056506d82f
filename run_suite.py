"""Run a benchmark suite (tasks x models x seeds) and write records and tables.

    python run_suite.py                                   # the default suite, `quick`
    python run_suite.py suite=quick 'models=[lstm]' train.max_steps=100
    python run_suite.py suite=lra train.epochs=1 dry_run=true   # each planned run as a JSON line, with the source
                                                          # of every value; nothing runs
    python run_suite.py --cfg job                         # print the top-level configuration
    torchrun --nproc_per_node=4 run_suite.py ...          # data parallel, same command line
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys

from core.env import set_offline_defaults

set_offline_defaults()  # before datasets / pykeops are imported

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import suite_lists  # noqa: E402
from harness.suite import RecordsNotWritten, SuiteError, plan_runs, run_suite  # noqa: E402
from harness.tables import format_table_markdown  # noqa: E402
from harness.records import load_records  # noqa: E402

log = logging.getLogger("run_suite")


def _interrupt(signum, frame):  # SIGTERM (scancel, a SLURM pre-emption, torchrun ending the job) as Ctrl-C: the
    raise KeyboardInterrupt(f"signal {signum}")  # run's lock is released and its checkpoint kept, to resume from


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    if cfg.get("dry_run"):
        return dry_run(cfg)
    try:
        records, paths = run_suite(cfg)
    except SuiteError as exc:  # refused before anything ran: one line
        _fail(f"error: {exc}", 2)
    except RecordsNotWritten as exc:  # trained, but not stored: print them, so that nothing is lost
        for rec in exc.records:
            print(json.dumps(dataclasses.asdict(rec), sort_keys=True, default=str), flush=True)
        _fail(f"error: {exc}", 3)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    print()
    tasks, models, _ = suite_lists(cfg, warn=False)  # said once already, by run_suite
    print(format_table_markdown(load_records(cfg.results_dir), tasks=tasks, models=models))
    print()
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    print(f"records: {cfg.results_dir}/records/ ({len(records)} new)")
    failed = [r for r in records if r.status.startswith("error")]
    if failed:
        message = f"{len(failed)} run(s) failed with errors; see their rows and the log above"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # an exception fails this job; SystemExit would end the sweep
            raise RuntimeError(message)
        print(message, file=sys.stderr)
        sys.exit(1)


def _fail(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # an exception fails this job; SystemExit would end the sweep
        raise RuntimeError(message)
    sys.exit(code)


def dry_run(cfg: DictConfig) -> None:
    """One JSON object per planned run on stdout (machine-readable); everything said for people goes to stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    try:
        plans = plan_runs(cfg)
    except ValueError as exc:  # a command-line setting that would reach no run
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for plan in plans:
        print(json.dumps(plan, sort_keys=True, default=str), flush=True)
    failed = [p for p in plans if "error" in p]
    print(f"dry run: {len(plans)} planned run(s) of suite {cfg.suite_name}, nothing run"
          + (f"; {len(failed)} cannot run (their lines say why)" if failed else ""), file=sys.stderr)
    if failed:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise RuntimeError(f"{len(failed)} planned run(s) cannot run")
        sys.exit(1)


if __name__ == "__main__":
    main()
