"""Speech Commands: wav decoding, the SC10 / SC35 definitions, MFCC against a float64 reference, caching, errors.

Every test reads real wav files written here with the stdlib ``wave`` module in the archive's layout.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tasks.speech_commands as sc
import tasks.speech_cache as speech_cache
from tasks import DatasetMissingError, build_task
from tasks.fetch import DONE_MARKER, archives_for
from harness.loading import loader

CONFIG = Path(__file__).parents[2] / "configs" / "task" / "speech_commands.yaml"
TEN = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]  # NCDE's order
ALL35 = sorted(["bed", "cat", "down", "five", "forward", "go", "house", "left", "marvin", "no", "on", "right",
                "sheila", "tree", "up", "visual", "yes", "backward", "bird", "dog", "eight", "follow", "four",
                "happy", "learn", "nine", "off", "one", "seven", "six", "stop", "three", "two", "wow", "zero"])
N_FULL_10 = 20  # full-length clips per SC10 word, plus one short clip each
QUIET = dict(progress=False)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples).astype("<i2" if width == 2 else np.uint8).tobytes())


def clip(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.integers(-32768, 32768, size=n, dtype=np.int16)
    x[:2] = [-32768, 32767]  # the extremes scale to -1 and 32767/32768 exactly
    return x


def make_tree(root: Path) -> dict[str, np.ndarray]:
    """The archive's layout: SC10 words with 20 full + 1 short clip, the other 25 words 1 full + 1 short, noise."""
    rng = np.random.default_rng(0)
    samples: dict[str, np.ndarray] = {}
    for w, word in enumerate(ALL35):
        lengths = [16000] * N_FULL_10 + [8000 + w] if word in TEN else [16000, 12000]
        for i, n in enumerate(lengths):
            rel = f"{word}/{(w * 997 + i * 31) % 65536:08x}_nohash_{i % 3}.wav"
            samples[rel] = clip(rng, n)
            write_wav(root / rel, samples[rel])
    write_wav(root / "_background_noise_" / "white_noise.wav", clip(rng, 20000))  # too long: must be skipped
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    (root / "README.md").write_text("Speech Commands\n")
    per_word = {word: sorted(r for r in samples if r.startswith(word + "/")) for word in ALL35}
    val = [r for rels in per_word.values() for r in rels[0::7]]
    test = [r for rels in per_word.values() for r in rels[1::7]]
    (root / "validation_list.txt").write_text("".join(r + "\n" for r in val))
    (root / "testing_list.txt").write_text("".join(r + "\n" for r in test))
    return samples


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("archive") / "speech_commands_v0.02"
    return root, make_tree(root)


def files_of(ds) -> list[str]:
    return list(ds.files)


# ------------------------------------------------------------------------------------------------ decoding
def test_read_wav_is_exact(tmp_path: Path) -> None:
    x = clip(np.random.default_rng(1), 1047)
    write_wav(tmp_path / "a.wav", x)
    got = sc.read_wav(tmp_path / "a.wav")
    assert got.dtype == np.int16 and np.array_equal(got, x)


@pytest.mark.parametrize("case", ["rate", "stereo", "8bit", "truncated", "header", "not_wav", "too_long"])
def test_corrupt_wav_names_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"bad_{case}.wav"
    x = clip(np.random.default_rng(2), 4000)
    if case == "rate":
        write_wav(path, x, rate=8000)
    elif case == "stereo":
        write_wav(path, x, channels=2)
    elif case == "8bit":
        write_wav(path, (x // 256 + 128).astype(np.uint8), width=1)
    elif case in ("truncated", "header"):
        write_wav(path, x)
        path.write_bytes(path.read_bytes()[: 1000 if case == "truncated" else 30])
    elif case == "not_wav":
        path.write_bytes(b"ID3 not a wave file at all")
    else:
        write_wav(path, clip(np.random.default_rng(3), 16001))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        sc.read_wav(path)


# ---------------------------------------------------------------------------------------------------- SC10
def test_sc10_definition(tree, tmp_path: Path) -> None:
    root, samples = tree
    task = build_task("speech_commands", tmp_path, root=str(root), normalize="none", batch_size=8, **QUIET)
    spec, info = task.spec, task.spec.info
    assert (spec.n_classes, spec.d_input, spec.l_max, spec.vocab_size) == (10, 1, 16000, None)
    assert spec.chance_acc == pytest.approx(0.1) and info["classes"] == TEN
    sets = {"train": task.train, "val": task.val, "test": task.test}
    kept = {s: files_of(ds) for s, ds in sets.items()}
    full = {r for r, x in samples.items() if r.split("/")[0] in TEN and len(x) == 16000}
    assert set().union(*map(set, kept.values())) == full and sum(map(len, kept.values())) == len(full)  # disjoint
    for word in TEN:  # 20 per class: round(14.0) train, then 6 split 3 / 3
        assert [sum(r.startswith(word + "/") for r in kept[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    for ds in sets.values():
        for i in range(0, len(ds), 7):
            item, rel = ds[i], ds.files[i]
            assert item["label"] == TEN.index(rel.split("/")[0])
            assert item["inputs"].dtype == torch.float32 and item["inputs"].shape == (16000, 1)
            assert torch.equal(item["inputs"][:, 0], torch.from_numpy(samples[rel].astype(np.float32) / 32768))
    assert info["n_short_dropped"] == 10 and info["n_padded"] == {"train": 0, "val": 0, "test": 0}
    assert info["n_examples"] == {"train": 140, "val": 30, "test": 30} and info["split_seed"] == 0
    batch = next(iter(loader(task, "train")))
    assert batch["inputs"].shape == (8, 16000, 1) and batch["inputs"].dtype == torch.float32
    assert batch["lengths"].tolist() == [16000] * 8 and batch["labels"].dtype == torch.int64


def test_sc10_split_is_seeded(tree, tmp_path: Path) -> None:
    root, _ = tree
    kw = dict(root=str(root), normalize="none", **QUIET)
    a = build_task("speech_commands", tmp_path, **kw)
    b = build_task("speech_commands", tmp_path, **kw)  # the same split again
    c = build_task("speech_commands", tmp_path, **kw, split_seed=1)
    for s in ("train", "val", "test"):
        assert files_of(getattr(a, s)) == files_of(getattr(b, s))
    assert set(files_of(a.val)) != set(files_of(c.val))
    assert c.spec.info["n_examples"] == a.spec.info["n_examples"]


@pytest.mark.parametrize("n, want", [(1, (1, 0, 0)), (2, (1, 0, 1)), (5, (4, 0, 1)), (10, (7, 1, 2)),
                                     (20, (14, 3, 3)), (33, (23, 5, 5)), (100, (70, 15, 15)), (1047, (733, 157, 157))])
def test_stratified_split_counts(n: int, want: tuple[int, int, int]) -> None:
    # hand-computed: train = 0.7 n rounded half up; val = floor((n - train) / 2); test = the rest
    labels = np.repeat([3, 0, 1], [n, 40, 7])
    parts = sc.stratified_split(labels, seed=4)
    assert tuple(int((labels[parts[s]] == 3).sum()) for s in ("train", "val", "test")) == want
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)  # a partition
    again = sc.stratified_split(labels, seed=4)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)


# ---------------------------------------------------------------------------------------------------- SC35
def test_sc35_official_lists_and_padding(tree, tmp_path: Path) -> None:
    root, samples = tree
    task = build_task("speech_commands", tmp_path, subset="sc35", root=str(root), normalize="none", **QUIET)
    spec, info = task.spec, task.spec.info
    assert spec.n_classes == 35 and info["classes"] == ALL35 and spec.chance_acc == pytest.approx(1 / 35)
    val = set((root / "validation_list.txt").read_text().split())
    test = set((root / "testing_list.txt").read_text().split())
    got = {s: files_of(getattr(task, s)) for s in ("train", "val", "test")}
    assert set(got["val"]) == val and set(got["test"]) == test
    assert set(got["train"]) == set(samples) - val - test and not any("_background_noise_" in r for r in got["train"])
    for s, rels in got.items():
        assert info["n_padded"][s] == sum(len(samples[r]) < 16000 for r in rels)
    test_labels = [ALL35.index(r.split("/")[0]) for r in got["test"]]
    assert info["majority_frac"] == pytest.approx(max(np.bincount(test_labels)) / len(test_labels))
    ds = task.train
    short = [i for i, r in enumerate(ds.files) if len(samples[r]) < 16000]
    assert short
    for i in short[:3]:
        x, n = samples[ds.files[i]], len(samples[ds.files[i]])
        item = ds[i]
        assert item["label"] == ALL35.index(ds.files[i].split("/")[0]) and item["inputs"].shape == (16000, 1)
        assert torch.equal(item["inputs"][:n, 0], torch.from_numpy(x.astype(np.float32) / 32768))
        assert not item["inputs"][n:].any() and ds.clip_lengths[i] == n
    batch = next(iter(loader(task, "val")))
    assert (batch["lengths"] == 16000).all()  # padded clips count as full input, as in the S4 code


def test_bad_split_lists_and_folders(tree, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tree[0], root)
    lines = (root / "validation_list.txt").read_text().splitlines()
    kw = dict(subset="sc35", root=str(root), **QUIET)
    (root / "validation_list.txt").write_text("\n".join(lines[:4] + ["yes/nothere_nohash_0.wav"] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"validation_list\.txt, line 5: 'yes/nothere_nohash_0\.wav'"):
        build_task("speech_commands", tmp_path / "d", **kw)
    first_test = (root / "testing_list.txt").read_text().splitlines()[0]
    (root / "validation_list.txt").write_text("\n".join(lines + [first_test]) + "\n")
    with pytest.raises(ValueError, match="in both validation_list.txt and testing_list.txt"):
        build_task("speech_commands", tmp_path / "d", **kw)
    (root / "validation_list.txt").write_text("\n".join(lines) + "\n")
    (root / "marvel").mkdir()
    with pytest.raises(ValueError, match=r"\['marvel'\] are not among the 35 words"):
        build_task("speech_commands", tmp_path / "d", **kw)


# ---------------------------------------------------------------------------------------------------- MFCC
def mfcc_reference(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(T,) -> (frames, 20): the torchaudio MFCC definition written out from its formulas, in ``dtype``."""
    n_fft, hop, n_mels, n_mfcc, sr = 200, 100, 64, 20, 16000
    padded = np.pad(x.astype(dtype), n_fft // 2, mode="reflect")  # center=True: reflect n_fft/2 on each side
    frames = np.stack([padded[t * hop: t * hop + n_fft] for t in range(1 + (len(padded) - n_fft) // hop)])
    n = np.arange(n_fft)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(dtype)  # periodic Hann
    dft = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1)[:, None] * n[None] / n_fft)  # (101, 200)
    dft = dft.astype(np.complex128 if dtype == np.float64 else np.complex64)
    power = np.abs((frames * window) @ dft.T) ** 2  # (frames, 101)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731  (HTK)
    corners = 700 * (10 ** (np.linspace(0, mel(sr / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = corners[m: m + 3]
        fb[:, m] = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    dct = np.array([[math.sqrt((1 if k else 0.5) * 2 / n_mels) * math.cos(math.pi * k * (i + 0.5) / n_mels)
                     for k in range(n_mfcc)] for i in range(n_mels)])
    logmel = np.log((power.astype(dtype) @ fb.astype(dtype)) + dtype(1e-6))
    return logmel @ dct.astype(dtype)


def test_mel_filterbank_hand_points() -> None:
    # corners c_j = 700 (10^(j * 2840.0230467 / 65 / 2595) - 1) Hz, 2840.02 = mel(8000); bin k sits at 80 k Hz.
    fb = sc.mel_filterbank()
    assert fb.shape == (101, 64)
    # filter 2 at 80 Hz: rising edge (80 - c2) / (c3 - c2) = (80 - 56.43661) / (86.33895 - 56.43661)
    assert float(fb[1, 2]) == pytest.approx(0.788011582, abs=1e-8)
    # filter 30 at 1600 Hz: (1600 - 1539.83240) / (1628.37417 - 1539.83240)
    assert float(fb[20, 30]) == pytest.approx(0.679539181, abs=1e-8)
    # filter 63 at 7920 Hz: falling edge (8000 - 7920) / (8000 - 7669.16255); at 8000 Hz it reaches 0
    assert float(fb[99, 63]) == pytest.approx(0.241810596, abs=1e-8) and abs(float(fb[100, 63])) < 1e-12
    # filters 0 (0..56 Hz) and 3 (86.3..149.7 Hz) fall between bins: all zero, as in torchaudio
    assert not fb[:, 0].any() and not fb[:, 3].any() and (fb.max(0).values > 0).sum() == 62


def test_mfcc_matches_float64_reference() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(16000) / 16000
    sweep = 0.3 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
    padded = np.concatenate([clip(rng, 9000) / 32768, np.zeros(7000)])  # a zero-padded sc35 clip
    waves = np.stack([clip(rng, 16000) / 32768, sweep, padded])          # (3, 16000)
    want = np.stack([mfcc_reference(w) for w in waves])                  # (3, 161, 20)
    got64 = sc.mfcc(torch.from_numpy(waves)).numpy()
    assert got64.shape == (3, 161, 20)
    assert np.abs(got64 - want).max() < 1e-9  # same formulas in float64: only rounding differs
    got32 = sc.mfcc(torch.from_numpy(waves.astype(np.float32))).numpy()
    ref32 = np.stack([mfcc_reference(w.astype(np.float32), np.float32) for w in waves])
    # float32: judged against what the plain reference already gets wrong in float32 (mostly the log of small mels)
    assert np.abs(got32 - want).max() <= 2 * np.abs(ref32 - want).max() + 1e-4


def test_mfcc_task(tree, tmp_path: Path) -> None:
    root, samples = tree
    task = build_task("speech_commands", tmp_path, root=str(root), features="mfcc", normalize="none", **QUIET)
    assert (task.spec.d_input, task.spec.l_max) == (20, 161)
    assert task.spec.info["feature_params"]["n_mels"] == 64 and task.spec.info["normalize"] == "none"
    ds = task.test
    for i in (0, len(ds) - 1):
        item = ds[i]
        want = mfcc_reference(samples[ds.files[i]] / 32768)
        assert item["inputs"].shape == (161, 20) and item["inputs"].dtype == torch.float32
        assert np.abs(item["inputs"].numpy() - want).max() < 1e-3  # float32 MFCC, as measured in the test above
    assert next(iter(loader(task, "train")))["inputs"].shape[1:] == (161, 20)


# ----------------------------------------------------------------------------------------------- normalising
@pytest.mark.parametrize("features, normalize, mode", [("raw", "auto", "position"), ("mfcc", "auto", "channel"),
                                                       ("raw", "channel", "channel")])
def test_normalization_uses_training_statistics(tree, tmp_path: Path, features: str, normalize: str,
                                                mode: str) -> None:
    root, _ = tree
    kw = dict(root=str(root), features=features, **QUIET)
    plain = build_task("speech_commands", tmp_path, normalize="none", **kw)
    task = build_task("speech_commands", tmp_path, normalize=normalize, **kw)
    assert task.spec.info["normalize"] == mode
    train = np.stack([plain.train[i]["inputs"].numpy() for i in range(len(plain.train))])
    train = train.astype(np.float64)                                    # (N, L, D)
    axes = (0,) if mode == "position" else (0, 1)
    mean, std = train.mean(axes), train.std(axes, ddof=1)               # unbiased, as torch.std
    for split in ("train", "test"):
        raw_ds, ds = getattr(plain, split), getattr(task, split)
        for i in (0, len(ds) - 1):
            want = (raw_ds[i]["inputs"].numpy() - mean) / (std + 1e-5)
            assert np.abs(ds[i]["inputs"].numpy() - want).max() < 1e-4  # float32 arithmetic on O(1..10) values


# -------------------------------------------------------------------------------------------------- caching
def test_cache_reuse_invalidation_and_interruption(tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tree[0], root)
    calls = []
    real = sc.read_wav
    monkeypatch.setattr(speech_cache, "read_wav", lambda p: calls.append(p) or real(p))
    data = tmp_path / "data"
    kw = dict(root=str(root), normalize="none", **QUIET)
    first = build_task("speech_commands", data, **kw)
    assert len(calls) == 10 * (N_FULL_10 + 1)
    cache = Path(first.spec.info["cache"])
    assert cache.parent == data / "speech_commands" / "cache"
    assert np.load(cache / "waves.npy", mmap_mode="r").shape == (210, 16000)
    mfcc_task = build_task("speech_commands", data, features="mfcc", **kw)
    again = build_task("speech_commands", data, **kw)
    assert len(calls) == 210 and again.spec.info["cache"] == mfcc_task.spec.info["cache"] == str(cache)
    rel = first.val.files[0]
    write_wav(root / rel, clip(np.random.default_rng(9), 16000))  # same size, new content and time
    changed = build_task("speech_commands", data, **kw)
    assert len(calls) == 420 and changed.spec.info["cache"] != str(cache)
    i = changed.val.files.index(rel)
    assert torch.equal(changed.val[i]["inputs"][:, 0],
                       torch.from_numpy(sc.read_wav(root / rel).astype(np.float32) / 32768))
    # an interrupted decode leaves nothing that a later build would trust
    write_wav(root / "yes" / "ffffffff_nohash_0.wav", clip(np.random.default_rng(10), 16000))

    def flaky(p):
        if len(calls) >= 500:
            raise KeyboardInterrupt
        calls.append(p)
        return real(p)

    monkeypatch.setattr(speech_cache, "read_wav", flaky)
    before = set(os.listdir(cache.parent))
    with pytest.raises(KeyboardInterrupt):
        build_task("speech_commands", data, **kw)
    assert set(os.listdir(cache.parent)) == before
    # a partial folder left by a killed process is cleared, never used
    key = sc.listing_key(root, sc.list_clips(root, tuple(TEN)))
    stale = cache.parent / f"{key}.partial-999999999"
    stale.mkdir()
    monkeypatch.setattr(speech_cache, "read_wav", real)
    build_task("speech_commands", data, **kw)
    assert not stale.exists() and (cache.parent / key / "files.json").is_file()


def test_corrupt_clip_fails_the_build_and_caches_nothing(tree, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tree[0], root)
    bad = root / "stop" / "0000beef_nohash_0.wav"
    write_wav(bad, clip(np.random.default_rng(11), 16000), rate=44100)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*44100 Hz"):
        build_task("speech_commands", tmp_path / "data", root=str(root), **QUIET)
    cache = tmp_path / "data" / "speech_commands" / "cache"
    assert not cache.exists() or os.listdir(cache) == []


# ------------------------------------------------------------------------------------ staging and options
def test_staged_default_location(tree, tmp_path: Path) -> None:
    staged = tmp_path / "speech_commands" / "speech_commands_v0.02"
    shutil.copytree(tree[0], staged)
    with pytest.raises(DatasetMissingError, match="prepare speech_commands"):  # no marker: not (fully) staged
        build_task("speech_commands", tmp_path, **QUIET)
    (tmp_path / ("speech_commands/speech_commands_v0.02" + DONE_MARKER)).write_text("url\n")  # what staging writes
    task = build_task("speech_commands", tmp_path, n_train=3, **QUIET)
    assert task.spec.info["source"] == str(staged) and task.spec.info["n_examples"]["train"] == 3


def test_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"tasks prepare speech_commands --data-dir"):
        build_task("speech_commands", tmp_path, **QUIET)
    with pytest.raises(DatasetMissingError, match="option root"):
        build_task("speech_commands", tmp_path, root=str(tmp_path / "nowhere"), **QUIET)
    partial = tmp_path / "partial"
    for word in ALL35:
        if word != "stop":
            (partial / word).mkdir(parents=True)
    (partial / "validation_list.txt").write_text("")
    with pytest.raises(DatasetMissingError, match="stop in the Speech Commands archive"):
        build_task("speech_commands", tmp_path, root=str(partial), **QUIET)
    (partial / "stop").mkdir()
    with pytest.raises(DatasetMissingError, match="testing_list.txt"):
        build_task("speech_commands", tmp_path, subset="sc35", root=str(partial), **QUIET)


def test_bad_options(tmp_path: Path) -> None:
    for kw, valid in [({"subset": "sc12"}, "sc10, sc35"), ({"features": "spectrogram"}, "raw, mfcc"),
                      ({"normalize": "global"}, "auto, channel, position, none")]:
        with pytest.raises(ValueError, match=f"valid: {valid}"):
            build_task("speech_commands", tmp_path, **kw)
    with pytest.raises(ValueError, match="at least 1"):
        build_task("speech_commands", tmp_path, n_val=0)


def test_limits_and_benchmark_flag(tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tree
    kw = dict(root=str(root), **QUIET)
    small = build_task("speech_commands", tmp_path, n_train=5, n_val=2, n_test=3, **kw)
    assert small.spec.info["n_examples"] == {"train": 5, "val": 2, "test": 3}
    assert small.spec.info["n_available"] == {"train": 140, "val": 30, "test": 30}
    same = build_task("speech_commands", tmp_path, n_train=5, n_val=2, n_test=3, **kw)
    assert files_of(same.train) == files_of(small.train)
    full = build_task("speech_commands", tmp_path, **kw)
    assert full.spec.info["benchmark"] is False  # 200 clips, not the archive's 34,975
    monkeypatch.setattr(sc, "EXPECTED", {"sc10": {"total": 200}, "sc35": {"train": 150, "val": 55, "test": 55}})
    assert build_task("speech_commands", tmp_path, **kw).spec.info["benchmark"] is True
    assert build_task("speech_commands", tmp_path, features="mfcc", **kw).spec.info["benchmark"] is True
    assert build_task("speech_commands", tmp_path, normalize="none", **kw).spec.info["benchmark"] is False
    assert build_task("speech_commands", tmp_path, n_test=3, **kw).spec.info["benchmark"] is False
    sc35 = build_task("speech_commands", tmp_path, subset="sc35", **kw).spec.info
    assert sc35["n_examples"] == {"train": 150, "val": 55, "test": 55} and sc35["benchmark"] is True


def test_config_and_archive() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    params = inspect.signature(sc.speech_commands).parameters
    assert cfg["name"] == "speech_commands"
    assert set(cfg["options"]) == set(params) - {"data_dir", "seed"}
    assert all(cfg["options"][k] == params[k].default for k in cfg["options"])
    (archive,) = archives_for("speech_commands")
    assert archive.url == "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert archive.dest == "speech_commands/speech_commands_v0.02" and archive.root == ""  # unpacks flat
    assert archive.target(Path("/d")) == Path("/d/speech_commands/speech_commands_v0.02")
