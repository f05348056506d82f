"""Pathfinder / Path-X: the generator's geometry and images (checked independently here), its cache, the
release format (PNG files + text metadata written in tmp_path), splits, input modes and every error path."""
from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import tasks.pathfinder  # noqa: F401  (registration)
from tasks import pathfinder as pf
from tasks import pathfinder_cache as cache
from tasks import pathfinder_gen as gen
from tasks.fetch import archives_for
from tasks.registry import DatasetMissingError, build_task
from harness.loading import loader

CONFIGS = Path(__file__).parents[2] / "configs" / "task"
P32, P128 = gen.lra_params(32, 14), gen.lra_params(128, 14)


@pytest.fixture(scope="module")
def examples32() -> list[gen.Example]:
    return [gen.sample_example(P32, 0, i) for i in range(24)]


@pytest.fixture(scope="module")
def examples128() -> list[gen.Example]:
    return [gen.sample_example(P128, 0, i) for i in range(4)]


def blobs(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """8-connected components of a boolean image (BFS)."""
    seen, out = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        comp, queue = set(), deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            comp.add((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    q = (r + dr, c + dc)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                        seen[q] = True
                        queue.append(q)
        out.append(comp)
    return out


def reachable(mask: np.ndarray, sources: set, targets: set, jump: int) -> bool:
    """BFS over lit pixels, stepping to any lit pixel within ``jump`` (Chebyshev): crosses dash gaps."""
    lit = set(zip(*np.nonzero(mask)))
    seen, queue = set(sources), deque(sources)
    while queue:
        r, c = queue.popleft()
        if (r, c) in targets:
            return True
        for dr in range(-jump, jump + 1):
            for dc in range(-jump, jump + 1):
                q = (r + dr, c + dc)
                if q in lit and q not in seen:
                    seen.add(q)
                    queue.append(q)
    return False


# ---------------------------------------------------------------- generator


def test_lra_settings() -> None:
    # lra_benchmarks/data/pathfinder.py: 32px and 128px wrapper settings; distractors = budget // (length // 3)
    assert (P32.paddle_length, P32.paddle_thickness, P32.paddle_margins, P32.continuity, P32.seed_distance,
            P32.marker_radius, P32.antialias_scale, P32.padding) == (2, 0.5, (1,), 1.0, 7, 1.5, 2, 1)
    assert (P32.target_contrast, P32.distractor_contrast, P32.distractor_length, P32.n_distractors) == (1.5, 2.0, 4, 5)
    assert (P128.paddle_length, P128.paddle_thickness, P128.paddle_margins, P128.continuity, P128.seed_distance,
            P128.marker_radius, P128.distractor_length, P128.n_distractors) == (5, 1.5, (2, 3), 1.8, 20, 3, 4, 8)
    easy = gen.lra_params(32, gen.DIFFICULTIES["easy"])
    assert (easy.contour_length, easy.distractor_length, easy.n_distractors) == (6, 2, 10)
    with pytest.raises(ValueError, match="known: 32, 128"):
        gen.lra_params(64, 14)


@pytest.mark.parametrize("which", ["32", "128"])
def test_contours_follow_the_growth_rules(which: str, examples32, examples128) -> None:
    # format 4 follows snakes2: pivots are ceil-rounded and heads floor-rounded, so gaps vary by a few pixels, and
    # contours may touch (the second target seed is never tested; a paddle is not tested against the other
    # target's latest paddle; the first target's last paddle never enters the mask), as in the reference
    p, examples = (P32, examples32) if which == "32" else (P128, examples128)
    for ex in examples:
        assert ex.margin in p.paddle_margins
        for contour, paddles in zip((*ex.targets, *ex.distractors), (*ex.target_paddles, *ex.distractor_paddles)):
            lengths = np.linalg.norm(contour[:, 1] - contour[:, 0], axis=1)
            assert np.allclose(lengths, p.paddle_length)
            gaps = np.linalg.norm(contour[1:, 0] - contour[:-1, 1], axis=1)
            assert np.all(gaps >= 2 * ex.margin - 3) and np.all(gaps <= 2 * ex.margin + 3)
            heading = np.arctan2(*(contour[:, 1] - contour[:, 0]).T)
            turn = np.abs((np.diff(heading) + math.pi) % (2 * math.pi) - math.pi)
            assert np.all(p.continuity * turn < math.pi / 2 + 1e-9)  # cos^2(min(c dtheta, pi/2)) is 0 beyond
            heads = paddles[1:, :2]      # grown paddles end on an in-image candidate pixel
            assert np.all((heads >= 0) & (heads < p.image_size))
            assert np.array_equal(contour[1:, 1], heads)
        assert all(len(t) == p.contour_length for t in ex.targets)
        assert all(len(d) == p.distractor_length for d in ex.distractors)
        assert len(ex.distractors) <= p.n_distractors


def test_markers_sit_on_the_contour_ends_the_label_says(examples32) -> None:
    for ex in examples32:
        on = []
        for marker in ex.markers:  # which target contour ends at this marker, found from the geometry alone
            ends = [k for k, t in enumerate(ex.targets) if min(np.linalg.norm(t[0, 0] - marker),
                                                              np.linalg.norm(t[-1, 1] - marker)) < 1e-9]
            assert len(ends) == 1
            on.append(ends[0])
        assert np.allclose(ex.markers[0], ex.targets[on[0]][0, 0])     # origin: the start of its contour
        assert np.allclose(ex.markers[1], ex.targets[on[1]][-1, 1])    # the other: a far end
        assert (on[0] == on[1]) == (ex.label == 1)
    assert 0 < sum(ex.label for ex in examples32) < len(examples32)   # drawn per image, as in snakes2


def test_examples_do_not_depend_on_their_group(examples32, examples128) -> None:
    # sample_examples shares numpy calls between images; each still draws from its own generator alone
    for p, examples, idx in ((P32, examples32, [5, 0, 17, 3, 9]), (P128, examples128, [2, 1, 3])):
        for i, ex in zip(idx, gen.sample_examples(p, 0, idx)):
            single = examples[i]
            assert ex.label == single.label and ex.margin == single.margin and ex.origin == single.origin
            assert all(np.array_equal(a, b) for a, b in zip(ex.targets, single.targets))
            assert len(ex.distractors) == len(single.distractors)
            assert all(np.array_equal(a, b) for a, b in zip(ex.distractors, single.distractors))


def test_images_markers_and_connectivity(examples32, examples128) -> None:
    for p, examples in ((P32, examples32), (P128, examples128)):
        for ex in examples:
            image = gen.render(ex, p)
            assert image.shape == (p.image_size, p.image_size) and image.dtype == np.uint8 and image.max() == 255
            layers = gen.render_layers(ex, p)
            assert all(layer.min() >= 0 and layer.max() <= 1 for layer in layers.values())
            marks = blobs(layers["markers"] > 0.5)
            apart = np.linalg.norm(ex.markers[0] - ex.markers[1]) > 2 * p.marker_radius + 2
            assert len(marks) == 2 if apart else len(marks) in (1, 2)
            centres = [tuple(np.rint(m).astype(int)) for m in ex.markers]
            assert all(image[c] >= 0.5 * 255 * min(1, 1 / max(p.target_contrast, p.distractor_contrast))
                       for c in centres)
            if ex.label == 1:  # the drawn origin contour joins the two markers, across its dash gaps
                only = gen.Example(ex.label, ex.margin, (ex.targets[ex.origin], ex.targets[ex.origin][:0]), [],
                                   ex.markers, 0, 0, target_paddles=(ex.target_paddles[ex.origin],))
                lit = np.maximum(gen.render_layers(only, p)["targets"], layers["markers"]) > 0.2
                src = next(b for b in marks if centres[0] in b)
                dst = next(b for b in marks if centres[1] in b)
                assert reachable(lit, src, dst, jump=2 * ex.margin + 3)  # gaps: 2m +- 3 (rounding, as snakes2)


# ---------------------------------------------------------------- shard cache


def test_shards_are_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    easy = gen.lra_params(32, 6)
    assert cache.ensure_generated(tmp_path / "a", easy, 20, 3, progress=False, chunk_size=8) == 3
    assert cache.ensure_generated(tmp_path / "b", easy, 20, 3, workers=2, progress=False, chunk_size=8) == 3
    cache.ensure_generated(tmp_path / "c", easy, 20, 4, progress=False, chunk_size=8)
    images, labels = cache.load_generated(tmp_path / "a")
    assert images.shape == (20, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [ex.label for ex in gen.sample_examples(easy, 3, range(20))]
    for name in ("images.npy", "labels.npy", *(cache.shard_name(k) for k in range(3))):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not np.array_equal(images, cache.load_generated(tmp_path / "c")[0])
    assert np.array_equal(images[5], gen.render(gen.sample_example(easy, 3, 5), easy))
    index, label, shard = cache.read_shard(tmp_path / "a" / cache.shard_name(2), 32)
    assert index.tolist() == list(range(16, 20)) and label.tolist() == labels[16:].tolist()
    assert np.array_equal(shard, images[16:])
    record = json.loads((tmp_path / "a" / "params.json").read_text())
    assert record["format_version"] == gen.FORMAT_VERSION and record["params"]["chunk_size"] == 8


def test_interrupted_or_damaged_shards_are_regenerated_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    easy, folder = gen.lra_params(32, 6), tmp_path / "gen"
    cache.ensure_generated(tmp_path / "whole", easy, 20, 0, progress=False, chunk_size=8)
    whole = (tmp_path / "whole" / "images.npy").read_bytes()
    drawn: list[int] = []
    real, stop_at = gen.sample_examples, [16]

    def counted(p, seed, indices):
        if len(drawn) == stop_at[0]:  # an interruption in the third shard
            raise KeyboardInterrupt
        drawn.extend(indices)
        return real(p, seed, indices)

    monkeypatch.setattr(gen, "sample_examples", counted)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure_generated(folder, easy, 20, 0, progress=False, chunk_size=8)
    assert sorted(os.listdir(folder)) == ["params.json", cache.shard_name(0), cache.shard_name(1)]
    (folder / ".shard-00000.parquet.0123abcd.tmp").write_bytes(b"partial")  # as a kill -9 while writing leaves it
    drawn.clear()
    stop_at[0] = -1
    assert cache.ensure_generated(folder, easy, 20, 0, progress=False, chunk_size=8) == 1
    assert drawn == list(range(16, 20)) and (folder / "images.npy").read_bytes() == whole
    assert not list(folder.glob(".*.tmp"))
    assert cache.ensure_generated(folder, easy, 20, 0, progress=False, chunk_size=8) == 0  # complete: nothing drawn
    assert drawn == list(range(16, 20))
    (folder / cache.shard_name(1)).unlink()
    data = bytearray((folder / cache.shard_name(0)).read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)  # damaged in place, same size
    (folder / cache.shard_name(0)).write_bytes(bytes(data))
    drawn.clear()
    assert cache.ensure_generated(folder, easy, 20, 0, progress=False, chunk_size=8) == 2
    assert drawn == list(range(0, 16)) and (folder / "images.npy").read_bytes() == whole
    marker = json.loads((folder / "complete.json").read_text())
    assert [s["name"] for s in marker["shards"]] == [cache.shard_name(k) for k in range(3)]
    assert marker["shards"] == json.loads((tmp_path / "whole" / "complete.json").read_text())["shards"]
    drawn.clear()
    assert cache.ensure_generated(folder, easy, 20, 1, progress=False, chunk_size=8) == 3  # other seed: start over
    assert len(drawn) == 20 and sorted(os.listdir(folder)) == sorted(
        ["params.json", "complete.json", "images.npy", "labels.npy", *(cache.shard_name(k) for k in range(3))])

# ---------------------------------------------------------------- task on generated data


def test_generated_task_splits_and_input_modes(tmp_path: Path) -> None:
    kw = dict(difficulty="easy", n_examples=30, progress=False, batch_size=8)
    real = build_task("pathfinder", tmp_path, **kw)
    info = real.spec.info
    assert info["n_examples"] == {"train": 24, "val": 3, "test": 3} and info["split_seed"] == 42
    assert info["benchmark"] is False and info["generated"] is True and info["generation"]["contour_length"] == 6
    assert real.spec.d_input == 1 and real.spec.l_max == 1024 and real.spec.n_classes == 2
    images = np.load(Path(info["data_dir"]) / "images.npy")
    expect = torch.utils.data.random_split(range(30), [24, 3, 3], generator=torch.Generator().manual_seed(42))
    assert real.val.indices.tolist() == list(expect[1])
    batch = next(iter(loader(real, "val")))
    first = int(expect[1][0])
    assert batch["inputs"].shape == (3, 1024, 1) and batch["inputs"].dtype == torch.float32
    assert torch.equal(batch["inputs"][0, :, 0], torch.from_numpy(images[first].reshape(-1)).float() / 255)
    assert batch["labels"][0] == np.load(Path(info["data_dir"]) / "labels.npy")[first] and batch["lengths"].tolist() == [1024] * 3
    tokens = build_task("pathfinder", tmp_path, **kw, input_mode="tokens")
    assert tokens.spec.vocab_size == 257 and tokens.spec.info["data_dir"] == info["data_dir"]
    tb = next(iter(loader(tokens, "val")))
    assert tb["inputs"].dtype == torch.int64 and torch.equal(tb["inputs"][0], torch.from_numpy(
        images[first].reshape(-1)).long() + 1)
    other = build_task("pathfinder", tmp_path, **kw, split_seed=0)
    assert other.val.indices.tolist() != real.val.indices.tolist()


def test_pathx_generated_small(tmp_path: Path) -> None:
    task = build_task("pathx", tmp_path, n_examples=10, progress=False, input_mode="tokens")
    assert task.spec.l_max == 128 * 128 and task.spec.info["generation"]["image_size"] == 128
    batch = next(iter(loader(task, "train")))
    assert batch["inputs"].shape == (8, 16384) and int(batch["inputs"].min()) >= 1


# ---------------------------------------------------------------- release format


def write_release(root: Path, size: int, folder: str, n_per_file: int, n_files: int = 2,
                  seed: int = 0) -> tuple[Path, list[np.ndarray], list[int]]:
    """A release copy in the published layout: imgs/<k>/sample_<i>.png and text metadata/<k>.npy."""
    base = root / "lra_release" / f"pathfinder{size}" / folder
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(n_files):
        (base / "imgs" / str(k)).mkdir(parents=True)
        (base / "metadata").mkdir(exist_ok=True)
        lines = []
        for i in range(n_per_file):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "imgs" / str(k) / f"sample_{i}.png")
            label = int(rng.integers(2))
            # snakes2's fields: subpath, file, index, label, continuity, contour length, distractor length,
            # paddle length, thickness, margin, number of paddle contrasts
            lines.append(f"imgs/{k} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 1")
            images.append(pixels)
            labels.append(label)
        (base / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n")
    return base, images, labels


def test_release_loads_in_metadata_order_with_s4_split(tmp_path: Path) -> None:
    tmp_path = tmp_path / "lra"  # <data_dir>/lra/lra_release/...: where `prepare` stages the release
    base, images, labels = write_release(tmp_path, 32, "curv_contour_length_14", 10)
    task = build_task("pathfinder", tmp_path / "data", release_dir=str(tmp_path / "lra_release"), progress=False)
    info = task.spec.info
    assert info["source"] == "release" and info["benchmark"] is True and info["release_dir"] == str(base)
    assert info["n_examples"] == {"train": 16, "val": 2, "test": 2} and info["skipped"] == []
    expect = torch.utils.data.random_split(range(20), [16, 2, 2], generator=torch.Generator().manual_seed(42))
    for split, idx in zip(("train", "val", "test"), expect):
        ds = getattr(task, split)
        for i, j in enumerate(idx):
            item = ds[i]
            assert item["label"] == labels[j]
            assert torch.equal(item["inputs"][:, 0], torch.from_numpy(images[j].reshape(-1)).float() / 255)
    # the default location, and the difficulty folder itself, find the same copy
    default = build_task("pathfinder", tmp_path.parent, source="release", progress=False)
    assert default.spec.info["release_dir"] == str(base)
    assert build_task("pathfinder", tmp_path / "d", release_dir=str(base), progress=False).spec.info[
        "n_examples"]["train"] == 16


def test_release_metadata_files_in_numeric_order(tmp_path: Path) -> None:
    base, images, labels = write_release(tmp_path, 32, "curv_baseline", 2, n_files=11)
    listing = pf.read_metadata(base)
    assert [path.parent.name for path, _ in listing][::2] == [str(k) for k in range(11)]  # 10 after 9, not after 1
    assert [label for _, label in listing] == labels
    task = build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), difficulty="easy", progress=False)
    assert task.spec.info["benchmark"] is False  # only the hard difficulty is the LRA benchmark


def test_release_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, images, labels = write_release(tmp_path, 32, "curv_contour_length_14", 5)
    first = build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)
    cache = Path(first.spec.info["data_dir"])
    assert cache.parent == tmp_path / "d" / "pathfinder" / "cache" and (cache / "images.npy").is_file()
    with monkeypatch.context() as m:
        m.setattr(pf, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
        assert build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False).spec.info[
            "data_dir"] == str(cache)
    changed = np.full((32, 32), 7, np.uint8)
    Image.fromarray(changed).save(base / "imgs" / "0" / "sample_0.png")
    os.utime(base / "imgs" / "0" / "sample_0.png", ns=(1, 1))
    again = build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)
    assert again.spec.info["data_dir"] != str(cache)
    assert np.load(Path(again.spec.info["data_dir"]) / "images.npy")[0].tolist() == changed.tolist()


def test_release_unreadable_images_are_skipped_or_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, images, labels = write_release(tmp_path, 32, "curv_contour_length_14", 10)
    (base / "imgs" / "0" / "sample_3.png").write_bytes(b"")                               # blank, as in the release
    (base / "imgs" / "1" / "sample_4.png").write_bytes((base / "imgs" / "1" / "sample_5.png").read_bytes()[:40])
    with pytest.warns(UserWarning) as caught:
        task = build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)
    assert ["sample_3.png" in str(w.message) for w in caught] == [True, False]
    assert task.spec.info["skipped"] == ["imgs/0/sample_3.png", "imgs/1/sample_4.png"]
    assert task.spec.info["n_listed"] == 20 and sum(task.spec.info["n_examples"].values()) == 18
    kept = [j for j in range(20) if j not in (3, 14)]
    stored = np.load(Path(task.spec.info["data_dir"]) / "images.npy")
    assert all(np.array_equal(stored[i], images[j]) for i, j in enumerate(kept))
    monkeypatch.setattr(pf, "MAX_UNREADABLE_MIN", 1)
    monkeypatch.setattr(pf, "MAX_UNREADABLE_FRAC", 0.0)
    with pytest.raises(ValueError, match=r"2 of 20 listed images .*sample_3\.png"):
        build_task("pathfinder", tmp_path / "other", release_dir=str(tmp_path), progress=False)


def test_release_bad_files_raise(tmp_path: Path) -> None:
    base, _, _ = write_release(tmp_path, 32, "curv_contour_length_14", 4)
    meta = base / "metadata" / "1.npy"
    good = meta.read_text()
    lines = good.splitlines()
    lines[2] = lines[2].replace(" 2 0 ", " 2 7 ").replace(" 2 1 ", " 2 7 ")  # label 7
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metadata/1\.npy, line 3: expected"):
        build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)
    meta.write_text(good)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(base / "imgs" / "1" / "sample_1.png")
    with pytest.raises(ValueError, match=r"sample_1\.png: image is 16x16, expected 32x32"):
        build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)
    for f in (base / "metadata").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no metadata files"):
        build_task("pathfinder", tmp_path / "d", release_dir=str(tmp_path), progress=False)


def test_pathx_release_and_token_ids(tmp_path: Path) -> None:
    _, images, labels = write_release(tmp_path, 128, "curv_contour_length_14", 5)
    task = build_task("pathx", tmp_path / "d", release_dir=str(tmp_path), input_mode="tokens", progress=False)
    assert task.spec.l_max == 16384 and task.spec.vocab_size == 257 and task.spec.info["benchmark"] is True
    ds = task.test
    j = int(ds.indices[0])
    assert torch.equal(ds[0]["inputs"], torch.from_numpy(images[j].reshape(-1)).long() + 1)


def test_missing_release_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="prepare pathfinder"):
        build_task("pathfinder", tmp_path, source="release")
    with pytest.raises(DatasetMissingError, match="pathfinder128/curv_contour_length_14"):
        build_task("pathx", tmp_path, release_dir=str(tmp_path / "nowhere"))
    for option, match in [(dict(difficulty="medium"), "known: easy, intermediate, hard"),
                          (dict(input_mode="onehot"), "known: real, tokens"),
                          (dict(source="web"), "known: generate, release"),
                          (dict(source="generate", release_dir=str(tmp_path)), "use source: release"),
                          (dict(n_examples=5), "n_examples must be >= 10"),
                          (dict(source="release", contour_length=9), "contour_length only applies")]:
        with pytest.raises(ValueError, match=match):
            build_task("pathfinder", tmp_path, **option)
    assert any(a.dest == "lra" and a.url.endswith("lra_release.gz") for a in archives_for("pathx"))


@pytest.mark.parametrize("name", ["pathfinder", "pathx"])
def test_config_options_are_the_builder_arguments(name: str) -> None:
    import inspect

    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    builder = getattr(pf, name)
    assert config["name"] == name
    assert set(config["options"]) == set(inspect.signature(builder).parameters) - {"data_dir", "seed"}
