"""Staging (tasks/fetch.py, python -m tasks): archives are checked before anything is unpacked, unpacking is
all-or-nothing, a local archive or folder stages without network, and the CLI reports where data is."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tasks.fetch import Archive, archive_ready, fetch_archive, missing, stage_archive_from

ROOT = Path(__file__).resolve().parents[2]


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FILES = {"corpus/train.tsv": b"a\tb\n", "corpus/sub/test.tsv": b"c\td\n"}


def archive_for(path: Path, **kw) -> Archive:
    return Archive(url=path.as_uri(), dest="mydata", root="corpus", **kw)


def test_fetch_through_a_url_checks_md5_and_unpacks(tmp_path):
    tar = make_tar(tmp_path / "corpus.tar.gz", FILES)
    arc = archive_for(tar, md5=hashlib.md5(tar.read_bytes()).hexdigest())
    data = tmp_path / "data"
    out = fetch_archive(arc, data, progress=False)                      # file:// goes through urllib, no network
    assert out == data / "mydata" / "corpus" and (out / "sub" / "test.tsv").read_bytes() == b"c\td\n"
    assert archive_ready(arc, data) and not (data / "downloads" / "corpus.tar.gz").exists()
    (out / "train.tsv").write_bytes(b"kept")                           # idempotent: a second call changes nothing
    assert fetch_archive(arc, data, progress=False) == out and (out / "train.tsv").read_bytes() == b"kept"


def test_checksum_mismatch_unpacks_nothing(tmp_path):
    tar = make_tar(tmp_path / "corpus.tar.gz", FILES)
    arc = archive_for(tar, sha256="0" * 64)
    with pytest.raises(OSError, match="sha256 .* does not match"):
        fetch_archive(arc, tmp_path / "data", progress=False)
    with pytest.raises(OSError, match="does not match"):
        stage_archive_from(arc, tar, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "mydata").exists() and not archive_ready(arc, tmp_path / "data")


def test_truncated_archive_leaves_the_staged_copy_intact(tmp_path):
    data = tmp_path / "data"
    good = make_tar(tmp_path / "corpus.tar.gz", FILES)
    arc = archive_for(good)
    stage_archive_from(arc, good, data, progress=False)
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(OSError, match="truncated or corrupt"):
        stage_archive_from(arc, bad, data, progress=False)
    assert (data / "mydata" / "corpus" / "train.tsv").read_bytes() == b"a\tb\n"
    assert archive_ready(arc, data)  # still staged: a failed re-stage un-stages nothing
    other = make_tar(tmp_path / "other.tar.gz", {"elsewhere/a.txt": b"x"})   # the wrong archive: refused, kept
    with pytest.raises(OSError, match="expected a top-level folder"):
        stage_archive_from(arc, other, data, progress=False)
    folder = tmp_path / "copy" / "corpus"                                   # a folder over a staged copy: refused
    folder.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists"):
        stage_archive_from(arc, folder, data, progress=False)
    assert archive_ready(arc, data) and (data / "mydata" / "corpus" / "train.tsv").read_bytes() == b"a\tb\n"


def test_unsafe_member_and_wrong_archive_are_refused(tmp_path):
    evil = make_tar(tmp_path / "evil.tar.gz", {"../outside.txt": b"x"})
    with pytest.raises(OSError, match="refused: member '../outside.txt' would be written outside"):
        stage_archive_from(archive_for(evil), evil, tmp_path / "data", progress=False)
    assert not (tmp_path / "outside.txt").exists()
    other = make_tar(tmp_path / "other.tar.gz", {"elsewhere/a.txt": b"x"})
    with pytest.raises(OSError, match="expected a top-level folder 'corpus'"):
        stage_archive_from(archive_for(other), other, tmp_path / "data", progress=False)


@pytest.mark.parametrize("given", ["tree", "parent"])
def test_stage_from_a_folder_links_it(tmp_path, given):
    tree = tmp_path / "copy" / "corpus"
    tree.mkdir(parents=True)
    (tree / "train.tsv").write_text("x")
    arc = archive_for(tmp_path / "corpus.tar.gz")
    out = stage_archive_from(arc, tree if given == "tree" else tree.parent, tmp_path / "data")
    assert out.is_symlink() and (out / "train.tsv").read_text() == "x" and archive_ready(arc, tmp_path / "data")
    flat = Archive(url="https://example.org/flat.tar.gz", dest="sc/v2")
    assert stage_archive_from(flat, tree, tmp_path / "data").resolve() == tree.resolve()


def test_missing_names_the_prepare_command(tmp_path):
    err = missing("text", tmp_path, "aclImdb/")
    assert "text: data not found: aclImdb/" in str(err) and f"python -m tasks prepare text --data-dir {tmp_path}" in str(err)


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tasks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_status_prepare_and_from(tmp_path):
    data = tmp_path / "data"
    proc = _cli("status", env_extra={"LRB_DATA_DIR": str(data)})
    assert proc.returncode == 0, proc.stderr
    assert f"data dir: {data}" in proc.stdout and "python -m tasks prepare image" in proc.stdout
    assert "first_token" in proc.stdout and "listops" in proc.stdout
    proc = _cli("--data-dir", str(data), "prepare", "listops", "variant=shallow", "progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "listops: ready: {'train': 4000, 'val': 500, 'test': 500}" in proc.stdout
    # a local CIFAR-10 copy (the pickles folder) staged with --from, then built: a malformed one fails clearly
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    proc = _cli("--data-dir", str(data), "prepare", "image", "--from", str(folder))
    assert proc.returncode != 0 and proc.stderr.startswith("error: image: data not found")
    assert "Traceback" not in proc.stderr
    proc = _cli("--data-dir", str(data), "prepare", "text", "image", "--from", str(folder))
    assert proc.returncode != 0 and "--from stages one archive" in proc.stderr
