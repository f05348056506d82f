"""Text (byte-level IMDB): aclImdb and Hugging Face files, byte ids, truncation, the validation carve-out, caching."""
from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import tasks.text  # noqa: F401  (registers "text")
from tasks import DatasetMissingError, build_task
from harness.loading import loader

# (label, raw file content). Covers <br /> tags, surrounding whitespace (stripped, as TFDS imdb_reviews does),
# multi-byte UTF-8 (2-, 3- and 4-byte characters), an empty and a whitespace-only review, a byte-identical duplicate.
TRAIN = [(1, "Great film!<br /><br />Loved every minute."), (0, "  Awful. Just awful.\n"), (1, "Café crème, naïve ☕ 🎬"),
         (0, ""), (1, "\t  \n"), (0, "Dull.<br />Boring."), (1, "Ein großartiger Film — wirklich."),
         (0, "Dull.<br />Boring.")]
TRAIN += [(i % 2, f"review number {i} " + "x" * (i * 7 % 50)) for i in range(32)]  # 40 training reviews in all
TEST = [(1, "Superb acting; 10/10"), (0, "Terrible plot — zero stars ★"), (1, "ok " * 30), (0, "no")]


def expected_ids(content: str, l_max: int | None = None) -> list[int]:
    """Token ids computed here: the stripped UTF-8 bytes, each plus one (no library encoder involved)."""
    raw = content.encode("utf-8").strip(b" \t\n\r\x0b\x0c")
    return [b + 1 for b in raw[:l_max]]


def write_aclimdb(root: Path, train=TRAIN, test=TEST) -> Path:
    """The aclImdb_v1 layout: {train,test}/{neg,pos}/<id>_<rating>.txt plus the files a loader must ignore."""
    folder = root / "aclImdb"
    for split, reviews in (("train", train), ("test", test)):
        for i, (label, content) in enumerate(reviews):
            sub = folder / split / ("pos" if label else "neg")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}_{8 if label else 2}.txt").write_bytes(content.encode("utf-8"))
        (folder / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000001/usercomments\n")
        (folder / split / "labeledBow.feat").write_text("0 1:2\n")
    (folder / "train" / "unsup").mkdir()
    (folder / "train" / "unsup" / "0_0.txt").write_text("unlabelled, must be ignored")
    (folder / "imdb.vocab").write_text("the\n")
    return folder


def write_hf(root: Path, train=TRAIN, test=TEST, fmt: str = "parquet") -> Path:
    """The Hugging Face imdb (plain_text) files: text as stored there (unstripped), label 0/1, rows shuffled."""
    folder = root / "plain_text"
    folder.mkdir(parents=True)
    for split, reviews in (("train", train), ("test", test), ("unsupervised", [(-1, "no label")])):
        rows = list(reviews)
        random.Random(split).shuffle(rows)  # HF row order is the archive's, not aclImdb's: order must not matter
        table = pa.table({"text": [c for _, c in rows], "label": pa.array([y for y, _ in rows], pa.int64())})
        if fmt == "parquet":
            pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
        else:  # the Arrow stream files of a datasets cache
            with pa.ipc.new_stream(folder / f"imdb-{split}.arrow", table.schema) as writer:
                writer.write_table(table)
    return folder


def items(ds) -> list[tuple[tuple[int, ...], int]]:
    return [(tuple(ds[i]["inputs"].tolist()), ds[i]["label"]) for i in range(len(ds))]


def test_ids_are_bytes_plus_one_and_truncated(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "imdb")
    l_max = 12
    task = build_task("text", tmp_path, l_max=l_max, n_val=5)
    got = items(task.test)
    assert Counter(got) == Counter((tuple(expected_ids(c, l_max)), y) for y, c in TEST)
    assert all(len(ids) <= l_max for ids, _ in got) and all(0 not in ids for ids, _ in got)
    train_val = items(task.train) + items(task.val)
    assert Counter(train_val) == Counter((tuple(expected_ids(c, l_max)), y) for y, c in TRAIN)
    info = task.spec.info
    n_long = sum(len(c.encode().strip()) > l_max for _, c in TRAIN)
    assert info["n_truncated"]["train"] + info["n_truncated"]["val"] == n_long
    assert info["n_truncated"]["test"] == sum(len(c.encode().strip()) > l_max for _, c in TEST)
    assert info["n_empty"]["train"] + info["n_empty"]["val"] == 2  # "" and the whitespace-only review
    assert info["source"] == "aclimdb" and info["l_max"] == l_max and info["benchmark"] is False


def test_untruncated_multibyte_review(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "imdb")
    task = build_task("text", tmp_path, n_val=5)
    ids = {ids for ids, _ in items(task.train) + items(task.val)}
    want = [b + 1 for b in "Café crème, naïve ☕ 🎬".encode("utf-8")]
    assert tuple(want) in ids and max(want) == 0xF0 + 1  # the 4-byte emoji starts with byte 0xF0
    assert tasks.text.encode("Café").tolist() == [b + 1 for b in "Café".encode()]


def test_batches_and_spec(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "imdb")
    task = build_task("text", tmp_path, l_max=16, batch_size=4, n_val=5)
    spec = task.spec
    assert (spec.vocab_size, spec.n_classes, spec.chance_acc, spec.pad_id, spec.dual_input) == (257, 2, 0.5, 0, False)
    n = spec.info["n_examples"]
    assert spec.info["majority_frac"] == 0.5 and n["train"] + n["val"] == 40 and n["val"] in (5, 6) and n["test"] == 4
    batch = next(iter(loader(task, "test")))
    assert set(batch) == {"inputs", "lengths", "labels"}
    assert batch["inputs"].dtype == torch.int64 and batch["inputs"].shape == (4, int(batch["lengths"].max()))
    for row, n in zip(batch["inputs"], batch["lengths"]):
        assert (row[n:] == 0).all() and (row[:n] > 0).all()


def test_validation_split_is_disjoint_and_seeded(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "imdb")
    a = build_task("text", tmp_path, val_fraction=0.25)
    val, train, test = items(a.val), items(a.train), items(a.test)
    assert len(val) >= 10 and len(train) + len(val) == len(TRAIN)  # 0.25 * 40 reviews, more only for duplicates
    assert not {ids for ids, _ in val} & {ids for ids, _ in train}  # the duplicate review stays on one side
    assert not {ids for ids, _ in val} & {ids for ids, _ in test}
    assert items(build_task("text", tmp_path, val_fraction=0.25).val) == val  # the same split again
    others = [items(build_task("text", tmp_path, val_fraction=0.25, split_seed=s).val) for s in (1, 2)]
    assert any(Counter(o) != Counter(val) for o in others)
    exact = build_task("text", tmp_path, n_val=7, split_seed=3)
    assert len(exact.val) in (7, 8) and exact.spec.info["split_seed"] == 3  # 8 if it took the duplicate pair


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_both_sources_give_identical_datasets(tmp_path: Path, fmt: str) -> None:
    write_aclimdb(tmp_path / "a")
    write_hf(tmp_path / "h", fmt=fmt)
    acl = build_task("text", tmp_path / "d", path=str(tmp_path / "a"), l_max=20, n_val=6, split_seed=4)
    hf = build_task("text", tmp_path / "d", path=str(tmp_path / "h"), source="hf", l_max=20, n_val=6, split_seed=4)
    for split in ("train", "val", "test"):
        assert items(getattr(acl, split)) == items(getattr(hf, split)), split
    assert hf.spec.info["source"] == "hf" and acl.spec.info["source"] == "aclimdb"
    drop = ("source", "path")
    assert {k: v for k, v in acl.spec.info.items() if k not in drop} == {k: v for k, v in hf.spec.info.items() if k not in drop}


def test_auto_finds_either_source_under_data_dir(tmp_path: Path) -> None:
    write_hf(tmp_path / "hf_only" / "imdb")
    assert build_task("text", tmp_path / "hf_only", n_val=5).spec.info["source"] == "hf"
    write_aclimdb(tmp_path / "both" / "imdb")
    write_hf(tmp_path / "both" / "imdb")
    assert build_task("text", tmp_path / "both", n_val=5).spec.info["source"] == "aclimdb"
    assert build_task("text", tmp_path / "both", source="hf", n_val=5).spec.info["source"] == "hf"
    folder = write_aclimdb(tmp_path / "elsewhere")
    assert build_task("text", tmp_path / "d", path=str(folder), n_val=5).spec.info["path"] == str(folder)


def _cache_state(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}


def test_cache_is_reused_and_refreshed_on_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_aclimdb(tmp_path / "imdb")
    build_task("text", tmp_path, n_val=5)
    before = _cache_state(tmp_path / ".hf_cache")
    assert before
    monkeypatch.setattr(tasks.text, "_read_reviews", lambda files: (_ for _ in ()).throw(AssertionError("re-read")))
    build_task("text", tmp_path, n_val=5)  # served from the Arrow cache: no file is read again
    assert _cache_state(tmp_path / ".hf_cache") == before
    monkeypatch.undo()
    edited = folder / "test" / "neg" / "3_2.txt"
    edited.write_text("changed my mind")
    os.utime(edited, ns=(1, 1))  # a different modification time, whatever the clock resolution
    task = build_task("text", tmp_path, n_val=5)
    assert (tuple(expected_ids("changed my mind")), 0) in items(task.test)


def test_hf_cache_is_reused(tmp_path: Path) -> None:
    write_hf(tmp_path / "imdb")
    first = items(build_task("text", tmp_path, n_val=5).train)
    before = _cache_state(tmp_path / ".hf_cache")
    assert items(build_task("text", tmp_path, n_val=5).train) == first
    assert _cache_state(tmp_path / ".hf_cache") == before  # nothing parsed or encoded again


def test_missing_data_names_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"prepare\S* text"):
        build_task("text", tmp_path)
    write_aclimdb(tmp_path / "imdb")
    with pytest.raises(DatasetMissingError, match=r"prepare\S* text"):
        build_task("text", tmp_path, source="hf")
    with pytest.raises(DatasetMissingError, match="nowhere"):
        build_task("text", tmp_path, path=str(tmp_path / "nowhere"))


def test_bad_options_and_files(tmp_path: Path) -> None:
    folder = write_aclimdb(tmp_path / "imdb")
    with pytest.raises(ValueError, match="known: auto, aclimdb, hf"):
        build_task("text", tmp_path, source="tfds")
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        build_task("text", tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="n_val must be between 1 and 39"):
        build_task("text", tmp_path, n_val=40)
    with pytest.raises(ValueError, match="l_max must be at least 1"):
        build_task("text", tmp_path, l_max=0)
    for p in (folder / "test" / "neg").iterdir():
        p.unlink()
    (folder / "test" / "neg").rmdir()
    with pytest.raises(ValueError, match=r"test/neg is missing"):
        build_task("text", tmp_path)


def test_hf_file_with_unlabelled_rows_is_rejected(tmp_path: Path) -> None:
    folder = write_hf(tmp_path / "imdb", test=[(1, "fine"), (-1, "unlabelled")])
    with pytest.raises(ValueError, match=r"test-00000-of-00001\.parquet, row \d: label -1 is not 0 \(neg\) or 1"):
        build_task("text", tmp_path, n_val=5)
    assert folder.is_dir()


def test_config_lists_the_builder_options() -> None:
    import inspect

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[2] / "configs" / "task" / "text.yaml")
    params = set(inspect.signature(tasks.text.text).parameters) - {"data_dir", "seed"}
    assert cfg.name == "text" and set(cfg.options) == params


@pytest.mark.slow
def test_benchmark_flag_needs_full_imdb(tmp_path: Path) -> None:
    # 25,000 + 25,000 one-word reviews: the full split sizes, so only l_max decides the flag
    train = [(i % 2, f"r{i}") for i in range(25_000)]
    test = [(i % 2, f"t{i}") for i in range(25_000)]
    write_hf(tmp_path / "imdb", train=train, test=test)
    task = build_task("text", tmp_path)
    assert task.spec.info["benchmark"] is True and task.spec.info["n_examples"] == {"train": 22_500, "val": 2_500,
                                                                                    "test": 25_000}
    assert build_task("text", tmp_path, l_max=1000).spec.info["benchmark"] is False
