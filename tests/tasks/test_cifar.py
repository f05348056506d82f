"""CIFAR-10 tasks (image, scifar): both file formats written here exactly as published, decoding, grayscale, splits."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

import tasks.cifar as cifar
from tasks import DatasetMissingError, build_task
from tasks.cifar import is_benchmark, rgb_to_grayscale_tf, split_indices
from tasks.fetch import archives_for
from harness.loading import loader

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "task"
PER_BATCH, N_TEST = 4, 6  # 5 training pickles x 4 = 20 training images: split int(20 * 0.9) = 18 / 2

# A hand-laid image: the three planes differ everywhere, so any channel or row/column mix-up shows.
P = np.arange(1024)
HAND_R, HAND_G, HAND_B = (P % 256).astype(np.uint8), (255 - P % 256).astype(np.uint8), (P * 7 % 256).astype(np.uint8)


def make_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


@pytest.fixture(scope="module")
def cifar_data() -> dict[str, tuple[np.ndarray, list[int]]]:
    """20 training and 6 test images in the pickle layout (channel-major rows); test image 0 is the hand image."""
    rng = np.random.default_rng(0)
    train, test = make_images(rng, 5 * PER_BATCH), make_images(rng, N_TEST)
    test[0][0] = np.concatenate([HAND_R, HAND_G, HAND_B])
    return {"train": train, "test": test}


def write_pickles(folder: Path, data: dict) -> Path:
    """``cifar-10-batches-py/`` as in the tarball: python-2-compatible pickles of dicts with bytes keys."""
    folder.mkdir(parents=True)
    (x, y), (tx, ty) = data["train"], data["test"]
    batches = {f"data_batch_{i + 1}": (x[i * PER_BATCH:(i + 1) * PER_BATCH], y[i * PER_BATCH:(i + 1) * PER_BATCH])
               for i in range(5)}
    batches["test_batch"] = (tx, ty)
    for name, (bx, by) in batches.items():
        record = {b"batch_label": name.encode(), b"labels": list(by), b"data": bx,
                  b"filenames": [f"img_{i}.png".encode() for i in range(len(by))]}
        with open(folder / name, "wb") as f:
            pickle.dump(record, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": PER_BATCH}, f, protocol=2)
    return folder


def png_bytes(row: np.ndarray) -> bytes:
    hwc = row.reshape(3, 32, 32).transpose(1, 2, 0)  # channel-major pickle row -> (32, 32, 3)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(hwc), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """One HF ``cifar10`` shard: ``img`` struct {bytes: PNG, path} and ``label``."""
    img = pa.array([{"bytes": png_bytes(r), "path": None} for r in images],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"img": img, "label": pa.array(labels, type=pa.int64())}), path)


def write_hf(folder: Path, data: dict) -> Path:
    for split in ("train", "test"):
        write_parquet(folder / f"{split}-00000-of-00001.parquet", *data[split])
    return folder


def gray_by_hand(r: int, g: int, b: int) -> int:
    """TF's rule pixel by pixel in float32 scalars: x * f32(1/255), dot with the weights, x 255.5, truncate."""
    f = [np.float32(v) * np.float32(1 / 255) for v in (r, g, b)]
    w = [np.float32(0.2989), np.float32(0.5870), np.float32(0.1140)]
    return int(np.float32(np.float32(f[0] * w[0] + f[1] * w[1]) + f[2] * w[2]) * np.float32(255.5))


def test_grayscale_rule_by_hand() -> None:
    # 0.2989 * 255.5 = 76.37 -> 76; 0.5870 * 255.5 = 149.98 -> 149 (rounding would give 150);
    # 0.1140 * 255.5 = 29.13 -> 29; 0.9999 * 255.5 = 255.47 -> 255;
    # (100, 150, 200): Y = 29.89 + 88.05 + 22.80 = 140.74, x 255.5 / 255 = 141.02 -> 141 (floor(Y) would give 140).
    cases = {(0, 0, 0): 0, (255, 0, 0): 76, (0, 255, 0): 149, (0, 0, 255): 29, (255, 255, 255): 255,
             (100, 150, 200): 141}
    rows = np.array([np.repeat(np.array(rgb, np.uint8), 1024) for rgb in cases])  # uniform images, channel-major
    gray = rgb_to_grayscale_tf(rows)
    assert gray.shape == (len(cases), 1024) and gray.dtype == np.uint8
    assert (gray == np.array(list(cases.values()), np.uint8)[:, None]).all()
    assert [gray_by_hand(*rgb) for rgb in cases] == list(cases.values())


def test_grayscale_matches_exact_arithmetic_away_from_ties() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(100, 3, 1024)).astype(np.uint8)  # (N, C, L)
    exact = (rgb.astype(np.float64) * np.array([0.2989, 0.5870, 0.1140])[None, :, None]).sum(1) * 255.5 / 255
    far = np.abs(exact - np.round(exact)) > 1e-4  # float32 rounding moves values by < 1e-4 near 255
    gray = rgb_to_grayscale_tf(rgb.reshape(100, 3072))
    assert far.mean() > 0.99 and (gray[far] == np.floor(exact[far])).all()
    i, p = np.argwhere(~far)[0] if (~far).any() else (0, 0)
    assert gray[i, p] == gray_by_hand(*rgb[i, :, p])


def test_channel_major_decoding_and_scifar_normalisation(tmp_path: Path, cifar_data: dict) -> None:
    write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    task = build_task("scifar", tmp_path, batch_size=4, progress=False)
    x = task.test[0]["inputs"]
    assert x.shape == (1024, 3) and x.dtype == torch.float32
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.247, 0.243, 0.261])
    for row, col in [(0, 0), (0, 31), (1, 2), (7, 20), (31, 31)]:
        p = 32 * row + col
        want = (np.array([HAND_R[p], HAND_G[p], HAND_B[p]]) / 255 - mean) / std
        np.testing.assert_allclose(x[p].numpy(), want, rtol=0, atol=1e-5)  # float32 of values below 2.1
    pixels = (x.double().numpy() * std + mean) * 255  # undo the normalisation: the hand planes, pixel by pixel
    np.testing.assert_allclose(pixels, np.stack([HAND_R, HAND_G, HAND_B], 1), atol=1e-3)
    spec = task.spec
    assert spec.d_input == 3 and spec.vocab_size is None and spec.l_max == 1024 and spec.n_classes == 10
    assert spec.info["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]
    batch = next(iter(loader(task, "train")))
    assert batch["inputs"].shape == (4, 1024, 3) and batch["lengths"].tolist() == [1024] * 4


def test_image_tokens_and_real(tmp_path: Path, cifar_data: dict) -> None:
    write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    tokens = build_task("image", tmp_path, batch_size=3)
    real = build_task("image", tmp_path, input_mode="real")
    want = np.array([gray_by_hand(HAND_R[p], HAND_G[p], HAND_B[p]) for p in range(1024)])
    ids = tokens.test[0]["inputs"]
    assert ids.dtype == torch.int64 and ids.shape == (1024,)
    assert (ids.numpy() == want + 1).all() and ids.min() >= 1 and tokens.spec.vocab_size == 257
    x = real.test[0]["inputs"]
    assert x.shape == (1024, 1) and x.dtype == torch.float32 and real.spec.d_input == 1
    np.testing.assert_allclose(x[:, 0].numpy(), (want / 255 - 122.6 / 255) / (61.0 / 255), atol=1e-5)
    batch = next(iter(loader(tokens, "val")))
    assert batch["inputs"].shape == (2, 1024) and batch["inputs"].dtype == torch.int64
    assert [tokens.test[i]["label"] for i in range(N_TEST)] == cifar_data["test"][1]
    assert tokens.spec.info["input_mode"] == "tokens" and "normalization" not in tokens.spec.info
    assert real.spec.info["normalization"]["mean"] == [122.6 / 255]


def rows_of(ds) -> list[bytes]:
    return [bytes(ds.pixels[i].numpy()) for i in range(len(ds))]


def test_split_sizes_disjoint_deterministic(tmp_path: Path, cifar_data: dict) -> None:
    write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    task = build_task("scifar", tmp_path)
    info = task.spec.info
    assert info["n_examples"] == {"train": 18, "val": 2, "test": N_TEST} and info["split_seed"] == 42
    train, val = rows_of(task.train), rows_of(task.val)
    x, y = cifar_data["train"]
    all_rows = [bytes(r.reshape(3, 1024).T.copy()) for r in x]  # (L, 3) row-major pixels, as the dataset holds them
    assert not set(train) & set(val) and sorted(train + val) == sorted(all_rows)
    assert [task.val[i]["label"] for i in range(2)] == [y[all_rows.index(r)] for r in val]
    assert rows_of(build_task("scifar", tmp_path).val) == val  # the same split again
    assert rows_of(build_task("scifar", tmp_path, split_seed=7).val) != val
    # the split is torch's random_split with the same seed, as S4 uses (42: S4's 45,000 / 5,000)
    tr, va = torch.utils.data.random_split(range(50_000), [45_000, 5_000], generator=torch.Generator().manual_seed(42))
    mine_tr, mine_va = split_indices(50_000, 42)
    assert mine_tr.tolist() == list(tr) and mine_va.tolist() == list(va)


def test_limits_and_benchmark_flag(tmp_path: Path, cifar_data: dict) -> None:
    write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    full = build_task("image", tmp_path)
    small = build_task("image", tmp_path, n_train=5, n_val=1, n_test=3)
    assert small.spec.info["n_examples"] == {"train": 5, "val": 1, "test": 3}
    assert rows_of(small.train) == rows_of(full.train)[:5]
    assert full.spec.info["benchmark"] is False  # 20 training images, not the 50,000
    assert is_benchmark({"train": None, "val": None, "test": None}, 50_000, 10_000)
    assert not is_benchmark({"train": 100, "val": None, "test": None}, 50_000, 10_000)
    with pytest.raises(ValueError, match=r"n_val=3 outside 1\.\.2"):
        build_task("image", tmp_path, n_val=3)
    with pytest.raises(ValueError, match="validation split from 1 training"):
        split_indices(1, 0)


def test_pickle_and_parquet_sources_identical(tmp_path: Path, cifar_data: dict) -> None:
    write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    write_hf(tmp_path / "cifar10" / "plain_text", cifar_data)
    for name in ("image", "scifar"):
        a = build_task(name, tmp_path, source="pickle")
        b = build_task(name, tmp_path, source="hf", progress=False)
        assert a.spec.info["source"] == "pickle" and b.spec.info["source"] == "hf"
        for split in ("train", "val", "test"):
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.pixels, db.pixels) and torch.equal(da.labels, db.labels)
    assert build_task("image", tmp_path).spec.info["source"] == "pickle"  # auto prefers the staged tarball


def test_hf_cache_reused_and_invalidated(tmp_path: Path, cifar_data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cifar.decode_parquet
    monkeypatch.setattr(cifar, "decode_parquet", lambda files, progress: calls.append(files) or real(files, progress))
    hf = write_hf(tmp_path / "hf", cifar_data)
    first = build_task("scifar", tmp_path / "data", path=str(hf), progress=False)  # auto: only parquet staged
    cache = Path(first.spec.info["cache"])
    assert first.spec.info["source"] == "hf" and cache.parent == tmp_path / "data" / "cifar10" / "cache"
    assert len(calls) == 2 and cache.is_file()  # train and test decoded once
    again = build_task("scifar", tmp_path / "data", path=str(hf), progress=False)
    assert len(calls) == 2 and torch.equal(again.test.pixels, first.test.pixels)
    tx, ty = cifar_data["test"]
    changed = tx.copy()
    changed[1] = 255 - changed[1]
    write_parquet(hf / "test-00000-of-00001.parquet", changed, ty)
    third = build_task("scifar", tmp_path / "data", path=str(hf), progress=False)
    assert len(calls) == 4 and Path(third.spec.info["cache"]) != cache and not cache.exists()
    assert torch.equal(third.test.pixels[1], torch.from_numpy(changed[1].reshape(3, 1024).T.copy()))


def test_truncated_or_malformed_pickle_names_the_file(tmp_path: Path, cifar_data: dict) -> None:
    folder = write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"data_batch_3: not a readable CIFAR-10 pickle"):
        build_task("image", tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3: b'data' is uint8 \(2, 1024\)"):
        build_task("image", tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3: labels outside 0\.\.9"):
        build_task("image", tmp_path)


def test_corrupt_parquet_names_the_file(tmp_path: Path, cifar_data: dict) -> None:
    hf = write_hf(tmp_path / "cifar10", cifar_data)
    good = (hf / "train-00000-of-00001.parquet").read_bytes()
    (hf / "train-00000-of-00001.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: not a readable"):
        build_task("image", tmp_path, progress=False)
    img = pa.array([{"bytes": b"not a png", "path": None}], type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": img, "label": pa.array([0])}), hf / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet, row 0: not a readable PNG"):
        build_task("image", tmp_path, progress=False)


@pytest.mark.parametrize("task", ["image", "scifar"])
def test_missing_data_names_prepare_command(tmp_path: Path, cifar_data: dict, task: str) -> None:
    with pytest.raises(DatasetMissingError, match=f"python -m tasks prepare {task}"):
        build_task(task, tmp_path)
    folder = write_pickles(tmp_path / "cifar10" / "cifar-10-batches-py", cifar_data)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetMissingError, match=f"test_batch.*python -m tasks prepare {task}"):
        build_task(task, tmp_path, source="pickle")
    with pytest.raises(DatasetMissingError, match="parquet"):
        build_task(task, tmp_path, source="hf")
    archive, = archives_for(task)
    assert archive.dest == "cifar10" and archive.filename == "cifar-10-python.tar.gz"


def test_unknown_option_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: tokens, real"):
        build_task("image", tmp_path, input_mode="rgb")
    with pytest.raises(ValueError, match="valid: auto, pickle, hf"):
        build_task("scifar", tmp_path, source="tfds")


@pytest.mark.parametrize("task", ["image", "scifar"])
def test_config_options_equal_builder_arguments(task: str) -> None:
    import inspect

    cfg = yaml.safe_load((CONFIGS / f"{task}.yaml").read_text())
    params = inspect.signature(getattr(cifar, task)).parameters
    assert cfg["name"] == task
    assert set(cfg["options"]) == set(params) - {"data_dir", "seed"}
    assert all(params[k].default == v for k, v in cfg["options"].items())
