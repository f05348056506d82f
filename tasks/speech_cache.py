"""Speech Commands on disk: the wav reader, and the caches built from a copy of the archive once: decoded waveforms
(``<cache>/<key>/waves.npy``), their MFCCs, and normalisation statistics; each written under a temporary name and
renamed, keyed by every clip's path, size and modification time (a changed clip makes a new key)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import torch

from tasks.mfcc import MFCC_PARAMS, SAMPLE_RATE, mfcc

__all__ = ["CLIP_SAMPLES", "N_FRAMES", "ensure_decoded", "ensure_mfcc", "list_clips", "listing_key",
           "normalization_stats", "read_wav"]

CLIP_SAMPLES = 16_000
N_FRAMES = CLIP_SAMPLES // MFCC_PARAMS["hop_length"] + 1  # 161 centred frames
FORMAT_VERSION = 1


def read_wav(path: str | Path) -> np.ndarray:
    """The int16 samples (T,) of a 16-bit PCM mono 16 kHz wav of at most 16000 samples; else ValueError naming it."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            data = w.readframes(n)
    except (wave.Error, EOFError) as err:
        raise ValueError(f"{path}: not a readable PCM wav file ({err})") from None
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise ValueError(f"{path}: expected 16000 Hz mono 16-bit PCM, got {rate} Hz, {channels} channel(s), "
                         f"{8 * width}-bit")
    if len(data) != 2 * n:
        raise ValueError(f"{path}: truncated: the header promises {n} samples, the file holds {len(data) // 2}")
    if n > CLIP_SAMPLES:
        raise ValueError(f"{path}: {n} samples; Speech Commands clips hold at most {CLIP_SAMPLES}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def list_clips(root: Path, words: tuple[str, ...]) -> list[str]:
    """Relative paths ``word/file.wav`` of every clip of ``words``, by word (in ``words`` order), then name."""
    return [f"{word}/{name}" for word in words
            for name in sorted(e.name for e in os.scandir(root / word) if e.name.endswith(".wav") and e.is_file())]


def listing_key(root: Path, files: list[str]) -> str:
    """Cache key: a hash of each clip's path, size and modification time (a changed file changes the key)."""
    digest = hashlib.sha256(f"speech_commands v{FORMAT_VERSION}\n".encode())
    for rel in files:
        st = os.stat(root / rel)
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _partial(path: Path) -> Path:
    """Where ``path`` is written before being renamed into place: ``<path>.partial-<pid>``."""
    return path.with_name(f"{path.name}.partial-{os.getpid()}")


def _remove_stale_partials(path: Path) -> None:
    """Delete ``<path>.partial-<pid>`` leftovers of writers whose process is gone (never trusted, only cleared)."""
    for stale in path.parent.glob(f"{path.name}.partial-*"):
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except (ProcessLookupError, ValueError):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def ensure_decoded(root: Path, files: list[str], cache_root: Path, progress: bool = True) -> Path:
    """Decode ``files`` once into ``cache_root/<key>/`` (waves.npy, lengths.npy, files.json); returns the folder."""
    from tqdm.auto import tqdm

    key = listing_key(root, files)
    folder = cache_root / key
    if (folder / "files.json").is_file():
        return folder
    cache_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder)
    tmp = _partial(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        waves = np.lib.format.open_memmap(tmp / "waves.npy", mode="w+", dtype=np.int16,
                                          shape=(len(files), CLIP_SAMPLES))  # (N, 16000), zero-filled
        lengths = np.zeros(len(files), dtype=np.int32)                      # (N,)
        for i, rel in enumerate(tqdm(files, desc="Speech Commands: decoding wav files", unit="clip",
                                     disable=not progress)):
            samples = read_wav(root / rel)
            waves[i, : len(samples)] = samples  # shorter clips: zeros at the end
            lengths[i] = len(samples)
        waves.flush()
        del waves
        np.save(tmp / "lengths.npy", lengths)
        (tmp / "files.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "root": str(root),
                                                    "files": files}))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same decode first
            if not (folder / "files.json").is_file():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ------------------------------------------------------------------------------------------- MFCC cache
def ensure_mfcc(folder: Path, progress: bool = True, batch: int = 512) -> Path:
    """MFCCs of every decoded clip, ``folder/mfcc-<params>.npy`` (N, 161, 20) float32, computed once in batches."""
    from tqdm.auto import tqdm

    tag = hashlib.sha256(json.dumps(MFCC_PARAMS, sort_keys=True).encode()).hexdigest()[:10]
    path = folder / f"mfcc-{tag}.npy"
    if path.is_file():
        return path
    waves = np.load(folder / "waves.npy", mmap_mode="r")                                            # (N, 16000)
    _remove_stale_partials(path)
    tmp = _partial(path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(waves), N_FRAMES, MFCC_PARAMS["n_mfcc"]))       # (N, 161, 20)
        with torch.no_grad():
            for start in tqdm(range(0, len(waves), batch), desc="Speech Commands: MFCC", unit="batch",
                              disable=not progress):
                x = torch.from_numpy(waves[start:start + batch].astype(np.float32) / 32768.0)       # (b, 16000)
                out[start:start + batch] = mfcc(x).numpy()
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _moments(array: np.ndarray, rows: np.ndarray, scale: float, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean and sum of squared deviations of ``array[rows] * scale`` in float64 (Chan's merge)."""
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, len(rows), chunk):
        x = array[rows[start:start + chunk]].astype(np.float64) * scale                            # (b, L[, D])
        b, mu = len(x), x.mean(0)
        delta = mu - mean
        m2 = m2 + ((x - mu) ** 2).sum(0) + delta ** 2 * count * b / (count + b)
        mean = mean + delta * b / (count + b)
        count += b
    return np.asarray(mean), np.asarray(m2)


def normalization_stats(array_path: Path, rows: np.ndarray, mode: str, scale: float,
                        d: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) shaped (L, D) or (1, D) of ``array[rows] * scale``; cached beside the array by array, mode, rows."""
    key = hashlib.sha256(f"{array_path.name} {mode} {scale}".encode() + rows.astype(np.int64).tobytes())
    path = array_path.with_name(f"stats-{key.hexdigest()[:16]}.npz")
    if path.is_file():
        with np.load(path) as f:
            return f["mean"], f["std"]
    mean, m2 = _moments(np.load(array_path, mmap_mode="r"), rows, scale)
    mean, m2 = mean.reshape(-1, d), m2.reshape(-1, d)                                               # (L, D)
    n = len(rows)
    if mode == "channel":
        n_all = n * len(mean)
        grand = mean.mean(0, keepdims=True)                                                         # (1, D)
        m2 = (m2.sum(0) + (n * (mean - grand) ** 2).sum(0))[None]                                   # (1, D)
        mean, n = grand, n_all
    std = np.sqrt(m2 / max(n - 1, 1))
    _remove_stale_partials(path)
    tmp = _partial(path)
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, mean=mean, std=std)
    os.replace(tmp, path)
    return mean, std
