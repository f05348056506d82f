"""Speech Commands v0.02 (Warden 2018): classify a one-second spoken word from its 16 kHz waveform or its MFCCs.

Data layout: ``speech_commands_v0.02.tar.gz`` unpacked flat (``python -m tasks prepare speech_commands`` stages it
under ``<data_dir>/speech_commands/speech_commands_v0.02/``; the ``root`` option points at another copy):

    <word>/<speaker hash>_nohash_<n>.wav     16-bit PCM, mono, 16 kHz, at most 16000 samples (1 s)
    validation_list.txt, testing_list.txt     the official split: one ``<word>/<file>.wav`` per line
    _background_noise_/                       long noise recordings, never used here

Subsets (B batch, L = 16000 samples or 161 frames, D = 1 or 20 features):
    sc10  the setup of Kidger et al. 2020 (Neural CDEs) that the S4 paper reuses: the words yes no up down left
          right on off stop go, class ids in that order; only clips of exactly 16000 samples (34,975 of them);
          a stratified 70/15/15 train/val/test split per class.
    sc35  all 35 words, class ids in sorted word order; the official lists (validation 9,981 and test 11,005
          clips, the other 84,843 train); shorter clips are zero-padded at the end to 16000 samples and, as in
          the S4 code, all 16000 positions are input (batch ``lengths`` = L; true lengths: ``clip_lengths``).
Features:
    raw   (16000, 1) float32: the int16 samples / 32768.
    mfcc  (161, 20) float32, time first: ``torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=20, log_mels=True,
          melkwargs=dict(n_fft=200, n_mels=64))`` as NCDE and S4 call it, re-implemented in torch: periodic Hann
          window of 200, hop 100, centred frames with reflect padding (161 frames), power spectrum, 64 HTK-mel
          triangles over 0..8000 Hz without area normalisation, log(mel + 1e-6), orthonormal DCT-II, 20 coefficients.
          Computed on the zero-padded waveform for short sc35 clips (as S4 does).
Normalisation ``x -> (x - mean) / (std + 1e-5)``, mean and unbiased std over the training split (the NCDE/S4 formula):
    channel   per feature over all training examples and positions: NCDE and S4 for MFCC.
    position  per (position, feature) over training examples: what the S4 code does for raw audio (it standardises
              each of the 16000 time steps on its own, in sc10 and sc35 alike).
    auto      the S4 choice: channel for mfcc, position for raw.     none: as decoded.

Identical to the reference code: the clips kept, the class order of sc10, the 16000-sample padding of sc35, the
MFCC definition and the normalisation formula. Not identical: the sc10 split is drawn here (numpy
``default_rng(split_seed)`` over each class's files in name order, round(0.7 n) train, then floor(half the rest) val)
rather than by sklearn's ``train_test_split(random_state=0, then 1)`` over ``os.listdir`` order, which was not
reproducible across file systems anyway; so the membership differs, the proportions do not. sc35 ids follow sorted
word order where S4 used its own list order. The mel filterbank is built in float64 (torchaudio: float32).
Reference code: patrick-kidger/NeuralCDE ``experiments/datasets/speech_commands.py`` and ``common.py``;
state-spaces/s4 ``src/dataloaders/datasets/sc.py`` (its ``SpeechCommands`` datamodule in ``basic.py``).
``info["benchmark"]`` is True only for that setup on the full archive (the counts above), S4's normalisation, no limits.

Decoding ~100k files is slow, so the clips are decoded once into ``<data_dir>/speech_commands/cache/<key>/``
(``waves.npy`` int16 (N, 16000), ``lengths.npy``, ``files.json``; MFCCs and normalisation statistics beside them),
keyed by a hash of the file listing (path, size, mtime), written to a temporary folder and renamed when complete.
The arrays are memory-mapped, so sc35 (3.4 GB of int16) is never loaded whole.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import pad_collate
from tasks.fetch import Archive, archive_ready, missing, register_archives
from tasks.mfcc import MFCC_PARAMS, SAMPLE_RATE, dct_matrix, mel_filterbank, mfcc  # noqa: F401  (dct, mel: API)
from tasks.speech_cache import (CLIP_SAMPLES, N_FRAMES, ensure_decoded, ensure_mfcc, list_clips,  # noqa: F401
                                listing_key, normalization_stats, read_wav)
from tasks.registry import Task, TaskSpec, register_task

__all__ = ["ARCHIVE", "SC10_WORDS", "SC35_WORDS", "read_wav", "mfcc", "mel_filterbank", "dct_matrix", "list_clips",
           "ensure_decoded", "stratified_split", "SpeechCommandsDataset", "speech_commands"]

ARCHIVE = Archive(url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                  dest="speech_commands/speech_commands_v0.02",  # the archive unpacks flat into this folder
                  sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                  note="Speech Commands v0.02: about 2.4 GB, 105,829 one-second clips of 35 words")
register_archives("speech_commands", ARCHIVE)

SC10_WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # NCDE order
SC35_WORDS: tuple[str, ...] = tuple(sorted(
    "backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no off on "
    "one right seven sheila six stop three tree two up visual wow yes zero".split()))
EXPECTED = {"sc10": {"total": 34_975},  # asserted by the NCDE and S4 code
            "sc35": {"train": 84_843, "val": 9_981, "test": 11_005}}  # the official lists of v0.02
STD_EPS = 1e-5  # NCDE/S4: (x - mean) / (std + 1e-5)
SUBSETS, FEATURES, NORMALIZE = ("sc10", "sc35"), ("raw", "mfcc"), ("auto", "channel", "position", "none")


# ------------------------------------------------------------------------------------------------- splits
def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices into ``labels`` for train/val/test: per class, round(0.7 n) train, floor(half the rest) val, rest test.

    Each class's indices (in their given order) are permuted by ``np.random.default_rng(seed)``, classes in id order.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = (7 * len(idx) + 5) // 10  # round half up, in integers
        n_val = (len(idx) - n_train) // 2
        for split, chunk in zip(parts, np.split(idx, [n_train, n_train + n_val])):
            parts[split].append(chunk)
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def official_split(root: Path, files: list[str]) -> dict[str, np.ndarray]:
    """Indices into ``files`` for the official lists (validation, testing) and the rest (train)."""
    position = {rel: i for i, rel in enumerate(files)}
    chosen: dict[str, np.ndarray] = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        rows = []
        for lineno, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), 1):
            entry = line.strip()
            if not entry:
                continue
            if entry not in position:
                raise ValueError(f"{root / name}, line {lineno}: {entry!r} is not a clip of the archive's 35 words")
            rows.append(position[entry])
        chosen[split] = np.unique(np.asarray(rows, dtype=np.int64))
    both = np.intersect1d(chosen["val"], chosen["test"])
    if len(both):
        raise ValueError(f"{root}: {files[both[0]]!r} is in both validation_list.txt and testing_list.txt")
    train = np.setdiff1d(np.arange(len(files)), np.concatenate([chosen["val"], chosen["test"]]))
    return {"train": train, "val": chosen["val"], "test": chosen["test"]}


# ----------------------------------------------------------------------------------------------------- dataset
class SpeechCommandsDataset(Dataset):
    """Rows of a memory-mapped array (int16 waves or float32 MFCCs) as normalised (L, D) float32 examples."""

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, clip_lengths: np.ndarray, files: list[str],
                 scale: float, d: int, mean: np.ndarray | None, std: np.ndarray | None) -> None:
        self.path, self.rows, self.labels = path, rows, labels  # rows index the array; labels (N,)
        self.clip_lengths, self.files, self.scale, self.d = clip_lengths, files, scale, d
        self.shift = None if mean is None else mean.astype(np.float32)                            # (L or 1, D)
        self.div = None if std is None else (std + STD_EPS).astype(np.float32)                     # (L or 1, D)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # opened lazily, so DataLoader workers map the file instead of copying it
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self.array[self.rows[i]].astype(np.float32).reshape(-1, self.d) * np.float32(self.scale)  # (L, D)
        if self.shift is not None:
            x = (x - self.shift) / self.div
        return {"inputs": torch.from_numpy(x), "label": int(self.labels[i])}


# ----------------------------------------------------------------------------------------------------- builder
def _find_root(data_dir: Path, root: str | None, words: tuple[str, ...], subset: str) -> Path:
    """The unpacked archive: ``root`` or the staged default; DatasetMissingError if absent or incomplete."""
    if root is None:
        path = ARCHIVE.target(data_dir)
        if not archive_ready(ARCHIVE, data_dir):
            raise missing("speech_commands", data_dir, f"the unpacked Speech Commands v0.02 archive in {path}")
    else:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise missing("speech_commands", data_dir, f"the Speech Commands archive folder {path} (option root)")
    need = [w for w in words if not (path / w).is_dir()]
    if subset == "sc35":
        need += [n for n in ("validation_list.txt", "testing_list.txt") if not (path / n).is_file()]
    if need:
        raise missing("speech_commands", data_dir, f"{', '.join(need)} in the Speech Commands archive at {path}")
    if subset == "sc35":
        extra = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name not in SC35_WORDS
                       and e.name != "_background_noise_" and not e.name.startswith("."))
        if extra:
            raise ValueError(f"{path}: word folders {extra} are not among the 35 words of Speech Commands v0.02")
    return path


def _check_options(subset: str, features: str, normalize: str, limits: dict[str, int | None]) -> None:
    """ValueError for an unknown subset / features / normalize value or a limit below 1."""
    for name, value, valid in (("subset", subset, SUBSETS), ("features", features, FEATURES),
                               ("normalize", normalize, NORMALIZE)):
        if value not in valid:
            raise ValueError(f"speech_commands: unknown {name} {value!r}; valid: {', '.join(valid)}")
    if any(v is not None and v < 1 for v in limits.values()):
        raise ValueError(f"speech_commands: n_train/n_val/n_test must be at least 1 (or null); got {limits}")


def _subset_splits(subset: str, source: Path, files: list[str], lengths: np.ndarray, labels: np.ndarray,
                   split_seed: int) -> tuple[dict[str, np.ndarray], str]:
    """The subset's train/val/test indices into ``files`` and a description of how they were chosen."""
    if subset == "sc10":
        full = np.flatnonzero(lengths == CLIP_SAMPLES)  # NCDE: shorter clips are discarded
        splits = {s: full[idx] for s, idx in stratified_split(labels[full], split_seed).items()}
        return splits, "stratified 70/15/15 per class: numpy default_rng(split_seed), files in name order"
    return official_split(source, files), "official validation_list.txt / testing_list.txt; the rest train"


def _limit(splits: dict[str, np.ndarray], limits: dict[str, int | None], seed: int) -> dict[str, np.ndarray]:
    """A seeded random subset of each split whose limit is set (for quick runs)."""
    rng = np.random.default_rng([seed, 1])
    return {split: idx if limits[split] is None or limits[split] >= len(idx)
            else np.sort(rng.choice(idx, limits[split], replace=False)) for split, idx in splits.items()}


def _shape(o: dict) -> TaskSpec:
    n = len(SC10_WORDS if o["subset"] == "sc10" else SC35_WORDS)
    raw = o["features"] == "raw"
    return TaskSpec(name="speech_commands", n_classes=n, l_max=CLIP_SAMPLES if raw else N_FRAMES, chance_acc=1.0 / n,
                    d_input=1 if raw else MFCC_PARAMS["n_mfcc"])

@register_task("speech_commands", shape=_shape)
def speech_commands(data_dir: Path, subset: str = "sc10", features: str = "raw", normalize: str = "auto",
                    root: str | None = None, split_seed: int = 0, batch_size: int = 16,
                    num_workers: int = 0, n_train: int | None = None, n_val: int | None = None,
                    n_test: int | None = None, progress: bool = True) -> Task:
    """Build the Speech Commands task (SC10: 10 classes, SC35: 35 classes).

    Args:
        data_dir: root data directory: the archive is looked for in ``<data_dir>/speech_commands/
            speech_commands_v0.02/`` and the decode cache lives in ``<data_dir>/speech_commands/cache/``.
        subset: ``sc10`` (NCDE/S4: ten words, full-length clips, stratified 70/15/15) or ``sc35`` (official lists).
        features: ``raw`` ((16000, 1) waveform) or ``mfcc`` ((161, 20) coefficients).
        normalize: ``auto`` (S4: ``channel`` for mfcc, ``position`` for raw), ``channel``, ``position`` or ``none``.
        root: an unpacked copy of the archive to read instead of the staged one.
        split_seed: seed of the sc10 split and of the ``n_*`` subsets; independent of the training seed.
        batch_size: examples per batch (S4's SC config: 16).
        num_workers: DataLoader workers.
        n_train, n_val, n_test: keep a seeded random subset of that many clips of a split (quick runs; such a
            run is not the benchmark).
        progress: show progress bars while decoding and computing features.

    Raises:
        DatasetMissingError: the archive (or a word folder or split list in it) is not staged.
        ValueError: an unknown option value, a corrupt wav (the message names the file), or a bad split list line.
    """
    limits = {"train": n_train, "val": n_val, "test": n_test}
    _check_options(subset, features, normalize, limits)
    data_dir = Path(data_dir)
    words = SC10_WORDS if subset == "sc10" else SC35_WORDS
    source = _find_root(data_dir, root, words, subset)
    files = list_clips(source, words)
    if not files:
        raise missing("speech_commands", data_dir, f"the .wav clips of {', '.join(words)} in {source}")
    folder = ensure_decoded(source, files, data_dir / "speech_commands" / "cache", progress)
    lengths = np.load(folder / "lengths.npy")                                                        # (N,)
    labels = np.asarray([words.index(rel.split("/", 1)[0]) for rel in files], dtype=np.int64)     # (N,)

    splits, split_desc = _subset_splits(subset, source, files, lengths, labels, split_seed)
    counts = {s: len(idx) for s, idx in splits.items()}
    splits = _limit(splits, limits, split_seed)

    if features == "raw":
        array_path, scale, d = folder / "waves.npy", 1.0 / 32768.0, 1
        feature_params: dict[str, Any] = {"sample_rate": SAMPLE_RATE, "scale": "int16 / 32768"}
    else:
        array_path, scale, d = ensure_mfcc(folder, progress), 1.0, MFCC_PARAMS["n_mfcc"]
        feature_params = dict(MFCC_PARAMS)
    s4_mode = "channel" if features == "mfcc" else "position"
    mode = s4_mode if normalize == "auto" else normalize
    mean = std = None
    if mode != "none":
        mean, std = normalization_stats(array_path, splits["train"], mode, scale, d)

    sets = {s: SpeechCommandsDataset(array_path, idx, labels[idx], lengths[idx], [files[i] for i in idx], scale, d,
                                     mean, std) for s, idx in splits.items()}
    test_counts = np.bincount(labels[splits["test"]], minlength=len(words))
    expected = EXPECTED[subset]
    published = ({"total": sum(counts.values())} if subset == "sc10" else counts) == expected
    per = {"channel": "feature", "position": "position and feature"}.get(mode)
    info = {"subset": subset, "features": features, "feature_params": feature_params, "normalize": mode,
            "normalization": f"(x - mean) / (std + {STD_EPS}); mean, unbiased std per {per} over the training split"
            if per else "none",
            "source": str(source), "cache": str(folder), "classes": list(words), "split": split_desc,
            "split_seed": split_seed, "limits": limits, "n_available": counts, "expected_n": expected,
            "n_examples": {s: len(ds) for s, ds in sets.items()},
            "n_padded": {s: int((ds.clip_lengths < CLIP_SAMPLES).sum()) for s, ds in sets.items()},
            "n_short_dropped": int((lengths < CLIP_SAMPLES).sum()) if subset == "sc10" else 0,
            "padding": "zeros at the end to 16000 samples; every position counts as input (lengths = L)",
            "majority_frac": float(test_counts.max() / max(1, test_counts.sum())),
            # the published setup: the full archive as the reference code saw it, S4's normalisation, no limits
            "benchmark": published and all(v is None for v in limits.values()) and mode == s4_mode}
    spec = dataclasses.replace(_shape({"subset": subset, "features": features}), info=info)
    return Task(spec=spec, train=sets["train"], val=sets["val"], test=sets["test"], collate=pad_collate,
                batch_size=batch_size, num_workers=num_workers)
