"""Data staging and inspection for the registered tasks.

    python -m tasks status                                   # every task: where its data is, ready or not
    python -m tasks prepare listops pathfinder               # generate (cached) with the config's options
    python -m tasks prepare text image speech_commands       # download (checksummed), unpack, then process once
    python -m tasks prepare retrieval --from ~/lra_release.gz        # stage from a local archive or unpacked folder
    python -m tasks prepare listops pathfinder pathx --from ~/lra_release.gz   # the release, nothing generated
    python -m tasks prepare pathfinder --release             # download the release; build from it, not generating
    python -m tasks prepare lra                              # the six LRA tasks ('extended' adds scifar, speech_commands)
    python -m tasks prepare listops variant=small            # option overrides as key=value
    python -m tasks render pathfinder --n 16                 # a PNG grid of examples with their labels

The data directory is --data-dir, else $LRB_DATA_DIR, else ~/.cache/lrbench/data (the suite uses the same default).
Only `prepare` without --from uses the network. ListOps, Pathfinder and Path-X read the LRA release when it is given
(--from, --release) and are generated only otherwise; with `variant: auto` (ListOps) / `source: auto` (Pathfinder,
Path-X) a run reads the release when it is staged, else generates; `status` says which the next run uses, and why.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from core.configs import CONFIGS, read_config, task_options
from core.env import set_offline_defaults


def suite_groups() -> dict[str, list[str]]:
    """Every suite as a group of tasks (``prepare lra`` stages the tasks of configs/suite/lra.yaml)."""
    return {p.stem: list(read_config(f"suite/{p.stem}").get("tasks") or []) for p in sorted(CONFIGS.glob("suite/*.yaml"))}


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"option overrides are key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _expand(names: list[str]) -> list[str]:
    from tasks import list_tasks

    groups = suite_groups()
    out = [t for n in names for t in (groups[n] if n in groups and n not in list_tasks() else [n])]
    unknown = [n for n in out if n not in list_tasks()]
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(list_tasks())}, and groups "
                         f"{', '.join(groups)} (the suites)")
    return list(dict.fromkeys(out))


def _release_overrides(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus the options that make ``name`` read its release (ListOps ``variant: release``, Pathfinder
    ``source: release``), unless the command line set those options itself."""
    from tasks.fetch import release_options

    return {**{k: v for k, v in release_options(name).items() if k not in overrides}, **overrides}


def cmd_prepare(args: argparse.Namespace) -> int:
    from tasks import build_task, data_source
    from tasks.fetch import archive_ready, archives_for, archives_optional, fetch_archive, stage_archive_from
    from tasks.registry import task_builder

    names, overrides = _expand(args.tasks), _overrides(args.options)
    if args.source:
        urls = {a.url for n in names for a in archives_for(n)}
        if len(urls) != 1:
            raise SystemExit(f"--from stages one archive; {', '.join(names)} need {len(urls) or 'no'} different ones")
    staged: set[str] = set()
    in_place = {name: how for name in names if (how := _reads_in_place(name, overrides))}
    wanted = {name: name not in in_place and bool(args.source or args.release or not archives_optional(name))
              for name in names}
    for name, how in in_place.items():
        print(f"{name}: reading the copy given by {how} in place; nothing to stage")
    for name in names:  # stage everything first: a task that reads its release when staged (auto) then sees it
        for archive in archives_for(name) if wanted[name] else ():
            if archive.url in staged or (not args.source and archive_ready(archive, args.data_dir)):
                continue
            if args.source:
                try:
                    path = stage_archive_from(archive, args.source, args.data_dir)
                except ValueError as exc:  # e.g. a listops-1000/ folder alone: not the archive, but readable in place
                    if "release_dir" not in inspect.signature(task_builder(name)).parameters:
                        raise
                    raise ValueError(f"{exc}; to read a folder of {name}'s own files in place instead: python -m "
                                     f"tasks prepare {name} release_dir={args.source}") from None
            else:
                print(f"{name}: downloading {archive.url}" + (f" ({archive.note})" if archive.note else ""))
                try:
                    path = fetch_archive(archive, args.data_dir, keep_archive=args.keep_archive)
                except urllib.error.URLError as exc:  # offline, or the host is down: the local way in
                    raise OSError(f"{name}: cannot download {archive.url} ({exc.reason}). With a copy of "
                                  f"{archive.filename} (or its unpacked folder) at hand: python -m tasks prepare "
                                  f"{name} --from <path>") from None
            staged.add(archive.url)
            print(f"{name}: staged {path}")
    for name in [] if args.no_build else names:
        # given the release (--from, --release), a task that could generate builds from the release instead
        options = task_options(name, _release_overrides(name, overrides) if wanted[name] and archives_optional(name)
                               else overrides)
        planned = data_source(name, args.data_dir, **options)
        if planned is not None:
            print(f"{name}: {'reading the release' if planned[0] == 'release' else 'generating'} ({planned[1]}) ...")
        else:
            print(f"{name}: building (processing / caching) ...")
        task = build_task(name, args.data_dir, **options)
        sizes = {s: len(task.split(s)) for s in ("train", "val", "test")}
        print(f"{name}: ready: {sizes}")
    return 0


IN_PLACE_OPTIONS = ("release_dir", "root", "path")  # task options naming a local copy of the data, read where it is


def _reads_in_place(name: str, overrides: dict[str, Any]) -> str | None:
    """``"<option>=<value>"`` when the command line points task ``name`` at a local copy of its data that it reads
    where it lies (``release_dir=``, ``root=``, ``path=``): then nothing is downloaded or staged for it."""
    from tasks.registry import task_builder

    params = inspect.signature(task_builder(name)).parameters
    for option in IN_PLACE_OPTIONS:
        if option in params and overrides.get(option) is not None:
            return f"{option}={overrides[option]}"
    return None


def _next_source(name: str, data_dir: Path) -> str | None:
    """"next run: release|generated - why" for a task that can generate or read its release, with the task file's
    options (configs/task/<name>.yaml; a suite's task_overrides may differ); None for other tasks."""
    from tasks import data_source

    try:
        planned = data_source(name, data_dir, **task_options(name))
    except (ValueError, TypeError, KeyError) as exc:
        return f"next run: cannot tell: {exc}"
    if planned is None:
        return None
    return (f"next run: {'release' if planned[0] == 'release' else 'generated'} - {planned[1]} "
            f"[configs/task/{name}.yaml]")


def cmd_status(args: argparse.Namespace) -> int:
    from tasks import list_tasks
    from tasks.fetch import archive_ready, archives_for, archives_optional
    from tasks.registry import generated_sets

    data_dir = Path(args.data_dir).expanduser()
    print(f"data dir: {data_dir}")
    for name in list_tasks():
        archives = archives_for(name)
        column = name
        next_run = _next_source(name, data_dir)
        if next_run is not None:  # which data the next run reads, and why; then what is there
            print(f"  {column:16s} {next_run}")
            column = ""
        if not archives or archives_optional(name):
            sets = generated_sets(name, data_dir) or []
            if archives_optional(name):  # generates, or reads the release: the next-run line says which
                print(f"  {column:16s} generated sets: {', '.join(sets) or 'none'}")
            else:
                state = f"generated: {', '.join(sets)}" if sets else "generated on first use"
                print(f"  {column:16s} {state}  (python -m tasks prepare {name})")
            column = ""
        for a in archives:
            ready = archive_ready(a, data_dir)
            if archives_optional(name):
                print(f"  {column:16s} release {'ready' if ready else 'not staged'}: {a.target(data_dir)}"
                      + ("" if ready else f"  (optional: python -m tasks prepare {name} --release, or --from "
                                          f"<{a.filename} or its folder>)"))
            else:
                print(f"  {column:16s} {'ready  ' if ready else 'missing'} {a.target(data_dir)}"
                      + ("" if ready else f"  (stage: python -m tasks prepare {name}, or --from <{a.filename} "
                                          f"or its folder>)"))
    return 0


def _as_image(x, spec) -> Any:
    """One example's inputs as an (S, S) or (S, S, 3) array for display, when the sequence is a square image."""
    import numpy as np

    arr = x.numpy().astype(np.float32)
    side = math.isqrt(arr.shape[0])
    if side * side != arr.shape[0]:
        raise SystemExit(f"{spec.name}: sequences of length {arr.shape[0]} are not square images; render shows images")
    if spec.vocab_size:  # token ids = level + 1
        return (arr - 1).reshape(side, side)
    img = arr.reshape(side, side, -1)
    lo, hi = img.min(), img.max()
    img = (img - lo) / max(hi - lo, 1e-8)
    return img[..., 0] if img.shape[-1] == 1 else img


IMAGE_TASKS = {"image", "scifar", "pathfinder", "pathx"}  # sequences that are square images


def cmd_render(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks import build_task, data_source
    from tasks.registry import task_builder

    name, overrides = _expand([args.task])[0], _overrides(args.options)
    if name not in IMAGE_TASKS:  # said before anything is generated or read (ListOps would generate 1.4 GB first)
        raise SystemExit(f"render draws image tasks ({', '.join(sorted(IMAGE_TASKS))}); {name} is not one")
    options = task_options(name, overrides)
    accepted = inspect.signature(task_builder(name)).parameters
    reads_release = (data_source(name, args.data_dir, **options) or ("",))[0] == "release"
    if "n_examples" in accepted and "n_examples" not in overrides and not reads_release:
        options["n_examples"] = max(10 * args.n, 100)  # a small generated set is enough to look at
    task = build_task(name, args.data_dir, **options)
    ds = task.train
    n = min(args.n, len(ds))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ex = ds[i]
            ax.imshow(_as_image(ex["inputs"], task.spec), cmap="gray")
            ax.set_title(f"label {ex['label']}", fontsize=9)
    fig.suptitle(f"{name}: first {n} training examples")
    fig.tight_layout()
    out = Path(args.out or f"{name}_examples.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tasks`` (``parse_args`` then ``split_options`` gives what ``main`` runs)."""
    from tasks.fetch import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(default_data_dir()), help="default: $LRB_DATA_DIR or ~/.cache/lrbench/data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="generate or stage the data of tasks (or of every task of a suite: lra, extended, ...)")
    p.add_argument("tasks", nargs="+", help="task names or groups, then key=value task option overrides")
    p.add_argument("--from", dest="source", help="a local archive file or its unpacked folder, instead of downloading; "
                   "listops, pathfinder, pathx are then built from the release (not generated)")
    p.add_argument("--release", action="store_true",
                   help="download the LRA release for listops, pathfinder, pathx and build them from it (not generated)")
    p.add_argument("--no-build", action="store_true", help="only stage files; do not build/process the task")
    p.add_argument("--keep-archive", action="store_true", help="keep downloaded archives after unpacking")
    sub.add_parser("status", help="where each task's data is and whether it is ready")
    r = sub.add_parser("render", help="write a PNG grid of a task's examples (image-like tasks)")
    r.add_argument("task")
    r.add_argument("options", nargs="*", default=[], help="key=value task option overrides")
    r.add_argument("--n", type=int, default=16)
    r.add_argument("--out", help="output PNG (default: <task>_examples.png)")
    return parser


def split_options(args: argparse.Namespace) -> argparse.Namespace:
    """``prepare text image variant=small``: task names in ``args.tasks``, key=value options in ``args.options``."""
    if args.command == "prepare":
        args.options = [w for w in args.tasks if "=" in w]
        args.tasks = [w for w in args.tasks if "=" not in w]
    return args


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    args = split_options(build_parser().parse_args(argv))
    from tasks.registry import DatasetMissingError

    try:
        return {"prepare": cmd_prepare, "status": cmd_status, "render": cmd_render}[args.command](args)
    except (DatasetMissingError, ValueError, TypeError, OSError) as exc:  # one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
