"""Staging downloaded datasets: the only code that may touch the network, run by hand, never by a suite or a test.

    python -m tasks prepare text image                  # download (checksummed) + unpack under the data dir
    python -m tasks prepare retrieval --from ~/lra_release.gz    # or from a local archive / an unpacked folder
    python -m tasks status                              # every task: where its data is, ready or not

Tasks only *look* for staged files and raise ``DatasetMissingError`` (via ``missing``) naming the prepare command.
Each ``Archive`` unpacks into ``<data_dir>/<dest>/``; a download goes to ``<data_dir>/downloads/<file>.part`` and is
renamed only after its size and checksum match; a marker file written last says the unpacking finished, so an
interrupted download or extraction is redone, never trusted. A folder given with ``--from`` is linked, not copied.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.registry import DatasetMissingError

__all__ = ["Archive", "LRA_RELEASE", "register_archives", "archives_optional", "archives_for", "release_options",
           "missing", "fetch_archive", "stage_archive_from", "archive_ready", "default_data_dir", "DONE_MARKER"]

DONE_MARKER = ".staged"  # suffix of the marker file beside the unpacked folder: <data_dir>/<dest>.staged
DATA_DIR_ENV = "LRB_DATA_DIR"


def default_data_dir() -> Path:
    """``$LRB_DATA_DIR``, else ``~/.cache/lrbench/data`` (outside the source tree; configs/config.yaml says the same)."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/.cache/lrbench/data").expanduser()


@dataclass(frozen=True)
class Archive:
    """One downloadable archive. Unpacked, it gives ``<data_dir>/<dest>/<root>`` (``root`` "" when it unpacks flat)."""
    url: str
    dest: str                      # folder under data_dir that receives the unpacked tree
    root: str = ""                 # top-level folder inside the archive ("" when its files sit at the top)
    size_bytes: int | None = None  # for the progress bar and a truncation check
    md5: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def target(self, data_dir: str | Path) -> Path:
        """Where the unpacked tree lives: ``<data_dir>/<dest>/<root>``."""
        return Path(data_dir).expanduser() / self.dest / self.root


# The LRA release, shared by listops (listops-1000/), retrieval (tsv_data/), pathfinder (pathfinder32/) and pathx
# (pathfinder128/); no published checksum.
LRA_RELEASE = Archive(url="https://storage.googleapis.com/long-range-arena/lra_release.gz", dest="lra",
                      root="lra_release", note="the Long Range Arena release: several GB, unpacks to lra_release/")

_ARCHIVES: dict[str, tuple[Archive, ...]] = {}
_OPTIONAL: dict[str, dict[str, object]] = {}


def register_archives(task: str, *archives: Archive, optional: bool = False,
                      release_options: dict[str, object] | None = None) -> None:
    """Declare the archives ``task`` reads (several tasks may share one, e.g. the LRA release).

    ``optional``: the task can generate its data and reads the archive when it is staged or asked for (ListOps,
    Pathfinder, Path-X); ``prepare`` then stages it only with ``--release`` or ``--from``, and builds the task with
    ``release_options`` (the option values that select the release, e.g. ``{"variant": "release"}``) instead of
    generating.
    """
    _ARCHIVES[task] = tuple(archives)
    if optional:
        _OPTIONAL[task] = dict(release_options or {})


def archives_optional(task: str) -> bool:
    return task in _OPTIONAL


def release_options(task: str) -> dict[str, object]:
    """The task options that make an optional-archive task read its release ({} for other tasks)."""
    return dict(_OPTIONAL.get(task, {}))


def archives_for(task: str) -> tuple[Archive, ...]:
    return _ARCHIVES.get(task, ())


def missing(task: str, data_dir: str | Path, what: str) -> DatasetMissingError:
    """The one error a task raises when its data are not staged: what is missing and the command that stages it
    (with ``--release`` for a task that otherwise generates its data)."""
    flag, local = ((" --release", "--from <archive or folder> instead of --release") if archives_optional(task)
                   else ("", "add --from <archive or folder>"))
    return DatasetMissingError(
        f"{task}: data not found: {what}. Stage it with: python -m tasks prepare {task}{flag} --data-dir "
        f"{Path(data_dir)} (downloads; or {local} for a local copy)")


def _marker(archive: Archive, data_dir: Path) -> Path:
    return data_dir / (archive.dest + DONE_MARKER)


def archive_ready(archive: Archive, data_dir: str | Path) -> bool:
    """True once the archive was unpacked (or linked) completely."""
    data_dir = Path(data_dir).expanduser()
    return _marker(archive, data_dir).is_file() and archive.target(data_dir).is_dir()


def _hashers(archive: Archive) -> dict[str, "hashlib._Hash"]:
    """One hasher per checksum the archive publishes (none for the LRA release: its GBs are not read twice)."""
    return {name: hashlib.new(name) for name in ("md5", "sha256") if getattr(archive, name)}


def _check_digest(file: Path, archive: Archive, hashers: dict[str, "hashlib._Hash"]) -> None:
    for name, h in hashers.items():
        want = getattr(archive, name)
        if h.hexdigest() != want:
            raise OSError(f"{file}: {name} {h.hexdigest()} does not match the published {want}; the file is corrupt "
                          f"or not {archive.filename}. Nothing was unpacked; delete it and stage again")


def _hash_file(file: Path, archive: Archive) -> dict[str, "hashlib._Hash"]:
    hashers = _hashers(archive)
    if hashers:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                for h in hashers.values():
                    h.update(chunk)
    return hashers


def _download(archive: Archive, dest: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    hashers = _hashers(archive)  # fed while downloading: the file is read once
    with urllib.request.urlopen(archive.url) as resp, open(part, "wb") as out:  # noqa: S310 (explicit user download)
        total = int(resp.headers.get("Content-Length") or 0) or archive.size_bytes
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    got = part.stat().st_size
    if total and got != total:
        raise OSError(f"download of {archive.url} truncated: {got} of {total} bytes; run the command again")
    _check_digest(part, archive, hashers)
    part.rename(dest)


def _safe_members(tar: tarfile.TarFile, root: Path):
    base = root.resolve()
    for member in tar:
        target = (root / member.name).resolve()
        if not target.is_relative_to(base):
            raise UnsafeArchive(f"refused: member {member.name!r} would be written outside the folder it unpacks into")
        if member.issym() or member.islnk() or member.isdev():
            kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "a device file"
            raise UnsafeArchive(f"refused: member {member.name!r} is {kind}, which an archive of data never needs")
        yield member


class UnsafeArchive(OSError):
    """An archive member that would escape the unpack folder, or a link or device: refused, nothing unpacked."""


def _unpack(file: Path, archive: Archive, data_dir: Path, progress: bool) -> Path:
    """Unpack into a temporary sibling folder, then move it into place: a half-unpacked tree is never at ``dest``."""
    from tqdm.auto import tqdm

    dest = data_dir / archive.dest
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(file) as tar:
            for member in tqdm(_safe_members(tar, tmp), desc=f"unpacking {file.name}", unit=" files", disable=not progress):
                tar.extract(member, tmp, filter="data")
    except UnsafeArchive as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UnsafeArchive(f"{file}: {err}. Nothing was unpacked and nothing changed under {dest}") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{file}: cannot unpack ({err}); the archive is truncated or corrupt. Nothing was changed "
                      f"under {dest}; delete the archive and stage again") from err
    if archive.root and not (tmp / archive.root).is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{file}: expected a top-level folder {archive.root!r}; this is not {archive.filename}")
    # only now, with the new tree complete and checked, is the staged one replaced (a failure above leaves it staged)
    _marker(archive, data_dir).unlink(missing_ok=True)
    if dest.exists():
        shutil.rmtree(dest) if not dest.is_symlink() else dest.unlink()
    tmp.rename(dest)
    _marker(archive, data_dir).write_text(f"{archive.url}\n")
    return archive.target(data_dir)


def fetch_archive(archive: Archive, data_dir: str | Path, progress: bool = True, keep_archive: bool = False) -> Path:
    """Download (checksummed) and unpack one archive; returns the unpacked tree. Idempotent."""
    data_dir = Path(data_dir).expanduser()
    if archive_ready(archive, data_dir):
        return archive.target(data_dir)
    downloads = data_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    file = downloads / archive.filename
    if not file.is_file():
        _download(archive, file, progress)
    out = _unpack(file, archive, data_dir, progress)
    if not keep_archive:
        file.unlink()
    return out


def stage_archive_from(archive: Archive, source: str | Path, data_dir: str | Path, progress: bool = True) -> Path:
    """Stage from a local copy: the archive file itself (checked and unpacked) or its unpacked folder (linked).

    A folder may be the archive's top-level folder (e.g. ``lra_release/``) or the folder holding it.
    """
    source, data_dir = Path(source).expanduser().resolve(), Path(data_dir).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"--from {source}: no such file or folder")
    if source.is_file():
        _check_digest(source, archive, _hash_file(source, archive))
        return _unpack(source, archive, data_dir, progress)
    tree = source / archive.root if archive.root and (source / archive.root).is_dir() else source
    if archive.root and tree.name != archive.root:
        raise ValueError(f"--from {source}: expected the unpacked {archive.filename} (a folder {archive.root!r}, "
                         f"or its parent)")
    link = archive.target(data_dir)  # <dest>/<root>, or <dest> itself for a flat archive
    if link.exists() and not link.is_symlink():  # refused before anything is touched: the staged copy stays staged
        raise FileExistsError(f"{link} already exists (a staged copy); remove it to link {tree} instead")
    _marker(archive, data_dir).unlink(missing_ok=True)
    if link.is_symlink():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tree, target_is_directory=True)
    _marker(archive, data_dir).write_text(f"linked {tree}\n")
    return link
