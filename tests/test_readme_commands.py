"""Every command README shows runs as written: each is taken from README itself (its bash blocks, and inline
`python ...` commands without placeholders) and checked without training, downloading or writing into the tree.

- ``run_suite.py`` (also under ``torchrun`` and Hydra ``--multirun``): run with ``dry_run=true`` appended, so the
  command line goes through Hydra and the config resolver as written, and every planned run must resolve. A sweep
  dry-runs its first job; its launcher plugin must be installed. ``--cfg job`` runs as is.
- ``python -m tasks``: parsed by its own parser; the tasks, groups and ``key=value`` options must exist (``status``
  runs, on an empty data folder).
- ``python -m harness.params`` runs; ``python -m harness.report`` and ``python -c ...`` run on a copy of ``results/``.
- Inline commands in the README's tables are left out: the reliability matrix shows refused input on purpose.
- ``python benchmarks/<script>.py``: ``--help`` runs.
- The install and test commands (``python3 -m venv ...``, ``pytest``) are what CI itself runs; ``export`` sets a
  variable. Any other kind of command fails this test, so that a new one gets a check.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
             "submitit_local": "hydra_plugins.hydra_submitit_launcher"}


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                commands.append(line.strip())
    prose = "\n".join(line for line in text.splitlines() if not line.startswith("|"))  # the reliability matrix's rows
    for inline in re.findall(r"`((?:python|torchrun) [^`]+)`", prose):                  # show refused input on purpose
        if re.search(r"<|\.\.\.", inline) or re.fullmatch(r"python -m [\w.]+", inline):
            continue  # `<results_dir>`, `prepare ...`: placeholders; `python -m tasks` names a module
        commands.append(inline)
    return list(dict.fromkeys(commands))


def _first_of_sweep(arg: str) -> str:
    """``models=[s4],[s4d]`` -> ``models=[s4]``: the first value of a Hydra sweep (commas outside brackets)."""
    key, _, value = arg.partition("=")
    depth, cut = 0, len(value)
    for i, ch in enumerate(value):
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            cut = i
            break
    return f"{key}={value[:cut]}" if _ else arg


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)


def check_run_suite(args: list[str], tmp_path: Path) -> None:
    if "--cfg" in args:
        proc = _run([sys.executable, str(ROOT / "run_suite.py"), *args], tmp_path)
        assert proc.returncode == 0 and "suite_name" in proc.stdout, proc.stderr[-3000:]
        return
    if "--multirun" in args:
        for arg in args:
            if arg.startswith("hydra/launcher="):
                plugin = LAUNCHERS[arg.split("=", 1)[1]]
                assert importlib.util.find_spec(plugin), f"{arg}: {plugin} is not installed"
        args = [_first_of_sweep(a) for a in args if a != "--multirun" and not a.startswith(("hydra/launcher=",
                                                                                                 "hydra.launcher."))]
    proc = _run([sys.executable, str(ROOT / "run_suite.py"), *args, "dry_run=true",
                 f"hydra.run.dir={tmp_path / 'hydra'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # (a suite of only an efficiency sweep plans no runs)


def check_tasks_cli(args: list[str], tmp_path: Path) -> None:
    from tasks.__main__ import _expand, _overrides, build_parser, split_options, task_options

    parsed = split_options(build_parser().parse_args(args))
    if parsed.command == "status":
        proc = _run([sys.executable, "-m", "tasks", "--data-dir", str(tmp_path / "data"), "status"], ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
    elif parsed.command == "prepare":
        options = _overrides(parsed.options)
        for name in _expand(parsed.tasks):
            task_options(name, options)  # every option exists for every task named
    else:
        assert parsed.task in ("image", "pathfinder", "pathx"), f"render {parsed.task}: not an image task"


def check(command: str, tmp_path: Path) -> None:
    argv = shlex.split(command, comments=True)
    if ">" in argv:  # `... > plan.jsonl`: the shell's redirection, not an argument
        argv = argv[:argv.index(">")]
    if argv[0] == "torchrun":  # the same command line as one process: dry-run it
        argv = ["python", *argv[next(i for i, a in enumerate(argv) if a.endswith("run_suite.py")):]]
    if argv[0] in ("python3", "export") or "pytest" in argv:
        return  # the install and test commands CI runs; an environment variable
    assert argv[0] == "python", f"no check for README command {command!r}: add one to {Path(__file__).name}"
    if argv[1] == "run_suite.py":
        check_run_suite(argv[2:], tmp_path)
    elif argv[1:3] == ["-m", "tasks"]:
        check_tasks_cli(argv[3:], tmp_path)
    elif argv[1:3] == ["-m", "harness.params"]:
        proc = _run([sys.executable, *argv[1:]], ROOT)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    elif argv[1:3] == ["-m", "harness.report"] or argv[1] == "-c":  # they write under results/: run on a copy
        shutil.copytree(ROOT / "results", tmp_path / "results")
        proc = _run([sys.executable, *argv[1:]], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    elif argv[1].startswith("benchmarks/"):
        proc = _run([sys.executable, str(ROOT / argv[1]), "--help"], ROOT)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
    else:
        raise AssertionError(f"no check for README command {command!r}: add one to {Path(__file__).name}")


def test_readme_has_the_two_commands_and_more():
    commands = readme_commands()
    assert any(c.endswith(".venv/bin/python run_suite.py") for c in commands)
    assert len([c for c in commands if "run_suite.py" in c]) >= 8


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(command, tmp_path)
