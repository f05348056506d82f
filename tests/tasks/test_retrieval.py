"""Retrieval (byte-level AAN pairs): the release's TSV layout, quoting off, float labels, dual batches, errors."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import tasks.retrieval  # noqa: F401  (registers "retrieval")
from tasks import DatasetMissingError, build_task
from tasks.retrieval import SPLIT_FILES
from harness.loading import loader

# (label as written, id1, id2, text1, text2) in the release's style: texts are bytes literals, quote characters
# are ordinary text (a csv reader with quoting on would merge or strip these fields), labels 0/1 or 0.0/1.0.
ROWS = [("1.0", "P00-1001", "P01-2002", "b'We use \"maximum entropy\" models.'", "b'It\\'s a \"parser\"'"),
        ("0.0", "W02-0101", "J93-1004", "\"an unterminated quote", "b'Caf\\xc3\\xa9'"),
        ("1", "A1", "B2", "b'tr\\u00e8s long: " + "x" * 40 + "'", "Zürich — naïve ☕"),
        ("0", "C3", "D4", "b'short'", ""),   # an empty second document: five fields, the last one empty
        ("1.0", "E5", "F6", "'single' and \"double\"", "b'y'")]


def tsv(rows, newline: str = "\n") -> str:
    return "".join("\t".join(r) + newline for r in rows)


def write_release(root: Path, rows=ROWS, newline: str = "\n") -> Path:
    """The release layout: <root>/lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv."""
    folder = root / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for name in SPLIT_FILES.values():
        (folder / name).write_bytes(tsv(rows, newline).encode("utf-8"))
    return folder


def expected(text: str, l_max: int | None = None) -> list[int]:
    return [b + 1 for b in text.encode("utf-8")[:l_max]]


def test_pairs_labels_and_ids(tmp_path: Path) -> None:
    write_release(tmp_path / "lra")
    task = build_task("retrieval", tmp_path)  # default location: <data_dir>/lra/lra_release/tsv_data
    for ds in (task.train, task.val, task.test):
        assert len(ds) == len(ROWS)
        for i, (label, _, _, t1, t2) in enumerate(ROWS):
            item = ds[i]
            assert item["label"] == int(float(label))
            assert item["inputs"].tolist() == expected(t1) and item["inputs2"].tolist() == expected(t2)
    spec = task.spec
    assert spec.dual_input and (spec.vocab_size, spec.n_classes, spec.chance_acc, spec.l_max) == (257, 2, 0.5, 4000)
    info = spec.info
    assert info["benchmark"] is True and info["n_examples"] == {"train": 5, "val": 5, "test": 5}
    assert info["majority_frac"] == pytest.approx(3 / 5)


def test_truncation_and_dual_batches(tmp_path: Path) -> None:
    l_max = 12
    write_release(tmp_path)
    task = build_task("retrieval", tmp_path / "data", release_dir=str(tmp_path / "lra_release"), l_max=l_max,
                      batch_size=5)
    ds = task.test
    for i, (_, _, _, t1, t2) in enumerate(ROWS):
        assert ds[i]["inputs"].tolist() == expected(t1, l_max) and ds[i]["inputs2"].tolist() == expected(t2, l_max)
    n1 = sum(len(r[3].encode()) > l_max for r in ROWS)
    n2 = sum(len(r[4].encode()) > l_max for r in ROWS)
    assert task.spec.info["n_truncated"]["test"] == {"text1": n1, "text2": n2}
    assert task.spec.info["benchmark"] is False
    batch = next(iter(loader(task, "test")))
    assert set(batch) == {"inputs", "lengths", "inputs2", "lengths2", "labels"}
    assert batch["labels"].tolist() == [int(float(r[0])) for r in ROWS]
    for key, lengths, col in (("inputs", "lengths", 3), ("inputs2", "lengths2", 4)):
        want = [min(len(r[col].encode()), l_max) for r in ROWS]
        assert batch[lengths].tolist() == want and batch[key].shape == (5, max(want))
        assert batch[key].dtype == torch.int64
        for row, n in zip(batch[key], want):
            assert (row[n:] == 0).all() and (row[:n] > 0).all()


def test_release_dir_may_be_tsv_data_and_crlf_is_read(tmp_path: Path) -> None:
    folder = write_release(tmp_path, newline="\r\n")
    task = build_task("retrieval", tmp_path / "data", release_dir=str(folder))
    ds = task.train
    assert [ds[i]["inputs2"].tolist() for i in range(len(ds))] == [expected(r[4]) for r in ROWS]
    assert task.spec.info["release_dir"] == str(folder)


def test_cache_is_reused(tmp_path: Path) -> None:
    write_release(tmp_path / "lra")
    build_task("retrieval", tmp_path)
    before = {str(p): p.stat().st_mtime_ns for p in (tmp_path / ".hf_cache").rglob("*.arrow")}
    assert before
    build_task("retrieval", tmp_path)
    assert {str(p): p.stat().st_mtime_ns for p in (tmp_path / ".hf_cache").rglob("*.arrow")} == before


@pytest.mark.parametrize("bad_line, line_no, match", [
    ("1\ta\tb\tc\td\textra", 3, "found 6"),        # too many fields: pandas' own error, traced to file and line
    ("1\ta\tb\tc", 3, "found 4"),                  # too few: pandas would fill the gap with "" silently
    ("", 3, "found 1"),                            # a blank line inside the file
])
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, line_no: int, match: str) -> None:
    folder = write_release(tmp_path)
    lines = tsv(ROWS).split("\n")
    lines.insert(line_no - 1, bad_line)
    (folder / SPLIT_FILES["val"]).write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"new_aan_pairs\.eval\.tsv, line {line_no}: expected 5 tab-separated "
                                         rf"fields \(label, id1, id2, text1, text2\), {match}"):
        build_task("retrieval", tmp_path / "data", release_dir=str(folder))


def test_extra_field_on_the_first_line(tmp_path: Path) -> None:
    # pandas would take a sixth field on line 1 as an index column and shift every column: caught before parsing
    folder = write_release(tmp_path)
    (folder / SPLIT_FILES["test"]).write_text("1\tx\t" + tsv(ROWS))
    with pytest.raises(ValueError, match=r"new_aan_pairs\.test\.tsv, line 1: .* found 7"):
        build_task("retrieval", tmp_path / "data", release_dir=str(folder))


@pytest.mark.parametrize("label", ["2", "0.5", "yes", ""])
def test_bad_label_names_file_and_line(tmp_path: Path, label: str) -> None:
    folder = write_release(tmp_path)
    rows = list(ROWS)
    rows[3] = (label, *rows[3][1:-1], "b'z'")
    (folder / SPLIT_FILES["train"]).write_text(tsv(rows))
    with pytest.raises(ValueError, match=rf"new_aan_pairs\.train\.tsv, line 4: label '{label}' is not 0 or 1"):
        build_task("retrieval", tmp_path / "data", release_dir=str(folder))


def test_missing_release_names_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"prepare\S* retrieval"):
        build_task("retrieval", tmp_path)
    folder = write_release(tmp_path / "copy")
    (folder / SPLIT_FILES["test"]).unlink()
    with pytest.raises(DatasetMissingError, match=r"new_aan_pairs\.test\.tsv"):
        build_task("retrieval", tmp_path, release_dir=str(folder))
    with pytest.raises(ValueError, match="l_max must be at least 1"):
        build_task("retrieval", tmp_path, l_max=0)


def test_config_lists_the_builder_options() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[2] / "configs" / "task" / "retrieval.yaml")
    params = set(inspect.signature(tasks.retrieval.retrieval).parameters) - {"data_dir", "seed"}
    assert cfg.name == "retrieval" and set(cfg.options) == params
