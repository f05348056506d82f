"""Staging the LRA release for the tasks that can also generate their data (ListOps, Pathfinder, Path-X), through the
real entry point (``tasks.__main__.main``) and the real loaders: given the release (``--from`` an archive or folder),
``prepare`` builds the release and generates nothing; ListOps finds its files in every layout of the release;
``variant: auto`` / ``source: auto`` read the release when it is staged, else generate; ``status`` says which.

Fixtures are the published formats, tiny, in the real archive's nesting: ``lra_release.gz`` unpacks to
``lra_release/lra_release/{listops-1000,pathfinder32,pathfinder128,...}/``.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import tasks.__main__ as cli
from tasks import DatasetMissingError, build_task, data_source
from tasks.fetch import LRA_RELEASE
from test_fetch import make_tar                      # tests/tasks/test_fetch.py: a .tar.gz from {name: bytes}
from test_listops import SAMPLE, SAMPLE_LABELS       # tests/data/listops_release_sample.tsv, hand-checked labels
from test_pathfinder import write_release            # the release's imgs/<k>/*.png + text metadata/<k>.npy
from test_retrieval import write_release as write_aan  # the release's tsv_data/new_aan_pairs.*.tsv

HARD = "curv_contour_length_14"
LISTOPS_FILES = ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")
FAST_S = 60  # staging + reading these fixtures takes seconds; generating the full sets takes 5-40 minutes


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_listops(folder: Path) -> Path:
    """The release's three ListOps files (header ``Source<TAB>Target``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in LISTOPS_FILES:
        (folder / name).write_bytes(SAMPLE.read_bytes())
    return folder


def write_lra_release(parent: Path) -> Path:
    """A tiny release as the archive unpacks: ``parent/lra_release/lra_release/...``; returns the outer folder."""
    outer = parent / "lra_release"
    write_listops(outer / "lra_release" / "listops-1000")
    write_release(outer, 32, HARD, 5)              # -> outer/lra_release/pathfinder32/curv_contour_length_14
    write_release(outer, 128, HARD, 5, seed=1)     # -> outer/lra_release/pathfinder128/curv_contour_length_14
    write_aan(outer)                               # -> outer/lra_release/tsv_data
    return outer


def tar_of(folder: Path, archive: Path) -> Path:
    """``folder`` packed as the release is: a gzipped tar whose top-level member is ``folder.name``."""
    files = {str(p.relative_to(folder.parent)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return make_tar(archive, files)


def auto_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task files with ``variant: auto`` / ``source: auto`` (whatever configs/task/*.yaml say today)."""
    real = cli.task_options
    auto = {"listops": {"variant": "auto"}, "pathfinder": {"source": "auto"}, "pathx": {"source": "auto"}}
    monkeypatch.setattr(cli, "task_options", lambda name, overrides=None: real(name, {**auto.get(name, {}),
                                                                                       **(overrides or {})}))


def nothing_generated(data: Path) -> bool:
    return not (data / "listops" / "generated").exists() and not (data / "pathfinder" / "generated").exists()


@pytest.mark.parametrize("given", ["archive", "outer folder", "parent folder"])
def test_prepare_from_the_release_builds_it_without_generating(tmp_path: Path, given: str, capsys) -> None:
    outer = write_lra_release(tmp_path / "src")
    source = {"archive": tar_of(outer, tmp_path / "lra_release.gz"), "outer folder": outer,
              "parent folder": outer.parent}[given]
    data = tmp_path / "data"
    start = time.perf_counter()
    rc = cli.main(["--data-dir", str(data), "prepare", "listops", "pathfinder", "pathx", "retrieval",
                   "--from", str(source)])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "listops: ready: {'train': 6, 'val': 6, 'test': 6}" in out.out
    assert "pathfinder: ready: {'train': 8, 'val': 1, 'test': 1}" in out.out
    assert "pathx: ready: {'train': 8, 'val': 1, 'test': 1}" in out.out
    assert "retrieval: ready: {'train': 5, 'val': 5, 'test': 5}" in out.out
    assert "generating" not in out.out and out.out.count("reading the release") == 3
    assert out.out.count(": staged ") == 1  # one archive serves the three tasks
    assert nothing_generated(data), sorted(str(p.relative_to(data)) for p in data.rglob("generated"))
    assert elapsed < FAST_S
    # the staged copy is what a run then reads: explicitly, and with auto
    for options in ({"variant": "release"}, {"variant": "auto"}):
        task = build_task("listops", data, **options)
        info = task.spec.info
        assert info["source"] == "release" and info["variant"] == "release" and info["benchmark"] is True
        assert Path(info["release_dir"]).name == "listops-1000"
        assert [task.test[i]["label"] for i in range(6)] == SAMPLE_LABELS
    for name in ("pathfinder", "pathx"):
        info = build_task(name, data, source="auto", progress=False).spec.info
        assert info["source"] == "release" and info["benchmark"] is True and "staged at" in info["source_reason"]
    assert "auto: the LRA release is staged at" in build_task("listops", data, variant="auto").spec.info[
        "source_reason"]
    assert nothing_generated(data)


def test_prepare_stages_before_building_so_auto_reads_a_release_downloaded_for_retrieval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`prepare lra` (here listops, retrieval, pathfinder) downloads the release for retrieval; with auto, ListOps
    (listed before retrieval) and Pathfinder then read it instead of generating."""
    import tasks.fetch

    archive = tar_of(write_lra_release(tmp_path / "src"), tmp_path / "lra_release.gz")
    monkeypatch.setattr(tasks.fetch, "fetch_archive",  # the download, from a local file
                        lambda arc, data_dir, **kw: tasks.fetch.stage_archive_from(arc, archive, data_dir, progress=False))
    auto_options(monkeypatch)
    data = tmp_path / "data"
    assert cli.main(["--data-dir", str(data), "prepare", "listops", "retrieval", "pathfinder"]) == 0
    out = capsys.readouterr().out
    assert out.index("retrieval: staged") < out.index("listops: reading the release (variant auto: the LRA release is "
                                                      "staged at")
    assert "pathfinder: reading the release (source auto" in out and "generating" not in out
    assert nothing_generated(data)


def test_prepare_release_folder_alone_is_refused_with_the_fix(tmp_path: Path, capsys) -> None:
    folder = write_listops(tmp_path / "copy" / "listops-1000")
    rc = cli.main(["--data-dir", str(tmp_path / "data"), "prepare", "listops", "--from", str(folder)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: --from")
    assert f"python -m tasks prepare listops release_dir={folder}" in err
    rc = cli.main(["--data-dir", str(tmp_path / "data"), "prepare", "listops", f"release_dir={folder}"])
    assert rc == 0 and "listops: ready: {'train': 6, 'val': 6, 'test': 6}" in capsys.readouterr().out
    assert nothing_generated(tmp_path / "data")


# every folder a user can point release_dir at, in the real archive's nesting (outer/lra_release/listops-1000)
LAYOUTS = {"listops-1000": "lra_release/lra_release/listops-1000", "inner lra_release": "lra_release/lra_release",
           "outer lra_release": "lra_release", "folder holding the archive's": ""}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_listops_release_is_found_in_every_layout(tmp_path: Path, layout: str) -> None:
    write_listops(tmp_path / "src" / "lra_release" / "lra_release" / "listops-1000")
    root = tmp_path / "src" / LAYOUTS[layout]
    task = build_task("listops", tmp_path / "data", release_dir=str(root))
    assert task.spec.info["release_dir"] == str(tmp_path / "src" / "lra_release" / "lra_release" / "listops-1000")
    assert [task.train[i]["label"] for i in range(6)] == SAMPLE_LABELS
    assert task.spec.info["variant"] == "release" and task.spec.info["benchmark"] is True


@pytest.mark.parametrize("staged", ["unpacked archive", "linked outer folder", "linked inner folder"])
def test_listops_reads_the_release_staged_in_the_data_dir(tmp_path: Path, staged: str) -> None:
    """The data dir's staged release: the archive unpacked there, or a folder linked by --from."""
    data = tmp_path / "data"
    outer = tmp_path / "src" / "lra_release"
    write_listops(outer / "lra_release" / "listops-1000")
    if staged == "unpacked archive":
        rc = cli.main(["--data-dir", str(data), "prepare", "listops", "--no-build", "--from",
                       str(tar_of(outer, tmp_path / "lra_release.gz"))])
    else:
        rc = cli.main(["--data-dir", str(data), "prepare", "listops", "--no-build", "--from",
                       str(outer if staged == "linked outer folder" else outer / "lra_release")])
    assert rc == 0
    copy = data / "lra" / "lra_release" if staged == "unpacked archive" else outer  # a link resolves to the source
    for variant in ("release", "auto"):
        task = build_task("listops", data, variant=variant)
        assert task.spec.info["source"] == "release" and len(task.val) == 6
        assert Path(task.spec.info["release_dir"]).resolve() == (copy / "lra_release" / "listops-1000").resolve()
    assert nothing_generated(data)


def test_auto_generates_when_nothing_is_staged_or_generation_is_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    small = dict(n_train=40, n_val=10, n_test=10, min_length=3, max_length=10, max_depth=2, max_args=5, progress=False)
    task = build_task("listops", data, variant="auto", **small)
    assert task.spec.info["source"] == "generate" and task.spec.info["variant"] == "lra"
    assert task.spec.info["benchmark"] is False and "generation option(s)" in task.spec.info["source_reason"]
    assert data_source("listops", data, variant="auto")[0] == "generate"
    assert "no LRA release staged" in data_source("listops", data, variant="auto")[1]
    assert "prepare listops --release" in data_source("listops", data, variant="auto")[1]
    px = build_task("pathfinder", data, source="auto", n_examples=20, workers=0, progress=False).spec.info
    assert px["source"] == "generate" and px["benchmark"] is False and "n_examples" in px["source_reason"]
    assert "no LRA release" in data_source("pathx", data, source="auto")[1]
    # staged: auto reads it, explicit generated values still generate and say that the release is not used
    write_listops(LRA_RELEASE.target(data) / "lra_release" / "listops-1000")
    write_release(LRA_RELEASE.target(data), 32, HARD, 5)
    assert data_source("listops", data, variant="auto")[0] == "release"
    assert data_source("pathfinder", data, source="auto")[0] == "release"
    assert data_source("pathx", data, source="auto")[0] == "generate"  # only pathfinder32 is staged
    assert data_source("listops", data, variant="lra") == (
        "generate", "variant lra generates; the staged LRA release is not read (variant auto or release would read it)")
    assert data_source("pathfinder", data, source="generate")[0] == "generate"
    assert data_source("pathfinder", data)[0] == "generate"  # source null without release_dir: as before
    with pytest.raises(ValueError, match="known: lra, shallow, small, release, auto"):
        data_source("listops", data, variant="tiny")
    with pytest.raises(ValueError, match="known: generate, release, auto"):
        build_task("pathx", data, source="web")


def test_status_names_the_source_of_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = tmp_path / "data"
    # with the task files as they are: a line per generating task, naming release or generated
    assert cli.main(["--data-dir", str(data), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("listops", "pathfinder", "pathx"):
        line = next(line for line in lines if line.startswith(f"  {name} "))
        assert "next run: generated - " in line and line.endswith(f"[configs/task/{name}.yaml]")
    assert sum("next run" in line for line in lines) == 3
    # with auto: generated while nothing is staged, the release once it is, each with the reason
    auto_options(monkeypatch)
    assert cli.main(["--data-dir", str(data), "status"]) == 0
    out = capsys.readouterr().out
    assert "listops          next run: generated - variant auto: no LRA release staged under" in out
    assert "pathx            next run: generated - source auto: no LRA release pathfinder128/" in out
    assert "python -m tasks prepare pathx --release (or --from <lra_release.gz>) stages it" in out
    outer = write_lra_release(tmp_path / "src")
    assert cli.main(["--data-dir", str(data), "prepare", "listops", "--no-build", "--from", str(outer)]) == 0
    assert cli.main(["--data-dir", str(data), "status"]) == 0
    out = capsys.readouterr().out
    for name in ("listops", "pathfinder", "pathx"):
        assert f"{name:16s} next run: release - {'variant' if name == 'listops' else 'source'} auto: the LRA " \
               f"release is staged at {data / 'lra' / 'lra_release'}" in out
    # and `prepare` with auto (no --from) now reads the staged release rather than generating
    assert cli.main(["--data-dir", str(data), "prepare", "listops", "pathfinder", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert out.count("reading the release") == 2 and "generating" not in out and nothing_generated(data)


def test_missing_release_error_is_one_line_naming_the_command(tmp_path: Path, capsys) -> None:
    rc = cli.main(["--data-dir", str(tmp_path), "prepare", "listops", "variant=release"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "listops: data not found" in err and f"python -m tasks prepare listops --release --data-dir {tmp_path}" in err
    assert "lra_release/lra_release/listops-1000" in err
    with pytest.raises(DatasetMissingError, match="prepare pathx --release"):
        build_task("pathx", tmp_path, source="release")
