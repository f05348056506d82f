"""The second reliability round (odd command lines): each case through run_suite.py, with its message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_suite.py", "dry_run=true", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides, runs, said", [
    (["models=lstm"], [("listops", "lstm"), ("first_token", "lstm")], None),          # a bare name: one model
    (["models=[lstm,lstm]", "tasks=[listops,listops]"], [("listops", "lstm")], "models: lstm repeated"),
])
def test_bare_and_repeated_names_plan_each_run_once(overrides, runs, said):
    proc = _dry(*overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(p["task"], p["model"]) for p in map(json.loads, proc.stdout.splitlines())] == runs
    if said:
        assert said in proc.stderr


@pytest.mark.parametrize("seeds", ["seeds=[a]", "seeds=[0.5]"])
def test_non_integer_seeds_are_one_clear_line(seeds):
    proc = _dry(seeds)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "error: seeds must be integers, e.g. 'seeds=[0,1,2]'" in proc.stderr and "Traceback" not in proc.stderr


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, said", [
    (["-m", "tasks", "render", "listops", "--n", "4"], "render draws image tasks"),   # refused before generating
    (["-m", "tasks", "render", "first_token"], "first_token is not one"),
    (["-m", "harness.report", "{tmp}/typo"], "error: no records under"),
    (["-m", "harness.records", "consolidate", "{tmp}/typo"], "error: no records under"),
])
def test_mistyped_or_unsuitable_targets_are_one_line_and_create_nothing(tmp_path, args, said):
    proc = _run(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "typo").exists() and not list(tmp_path.glob("*.png"))


def test_params_help_prints_the_usage():
    proc = _run("-m", "harness.params", "--help")
    assert proc.returncode == 0 and "python -m harness.params suite=lra --match=lstm" in proc.stdout


def test_an_option_a_task_does_not_take_is_one_line(tmp_path):
    proc = _run("-m", "tasks", "--data-dir", str(tmp_path), "prepare", "listops", "foo=1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "'foo'" in proc.stderr


def _aan_release(folder: Path) -> Path:
    """A three-pair copy of the release's tsv_data/ (label, id1, id2, text1, text2), as tests/tasks/test_retrieval.py."""
    from tasks.retrieval import SPLIT_FILES

    folder.mkdir(parents=True)
    rows = "1.0\tP00-1001\tP01-2002\tb'one text'\tb'another'\n0.0\tW02-0101\tJ93-1004\tb'x'\tb'y'\n"
    for name in SPLIT_FILES.values():
        (folder / name).write_text(rows)
    return folder


def test_prepare_with_release_dir_reads_the_folder_and_downloads_nothing(tmp_path):
    folder = _aan_release(tmp_path / "copy" / "tsv_data")
    proc = _run("-m", "tasks", "--data-dir", str(tmp_path / "data"), "prepare", "retrieval", f"release_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"reading the copy given by release_dir={folder} in place" in proc.stdout and "downloading" not in proc.stdout
    assert "retrieval: ready: {'train': 2, 'val': 2, 'test': 2}" in proc.stdout
    assert not (tmp_path / "data" / "downloads").exists()


def test_a_download_that_cannot_connect_names_the_local_way_in(tmp_path):
    # a real failed connection without the network: the proxy urllib is told to use refuses it (port 9, discard)
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "tasks", "--data-dir", str(tmp_path), "prepare", "retrieval"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: retrieval: cannot download https://storage.googleapis.com/long-range-arena/")
    assert line.endswith("python -m tasks prepare retrieval --from <path>")
    assert not list((tmp_path / "downloads").glob("*.gz"))  # nothing partial left as if downloaded
