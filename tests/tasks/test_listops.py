"""ListOps: grammar, labels (checked by an evaluator written here), file format, caching and loading."""
from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch

from tasks import DatasetMissingError, build_task
from tasks import listops_gen
from tasks.listops import VARIANTS, VOCAB, evaluate, generate_listops, tokenize, tree_to_string
from tasks.listops_gen import ensure_generated
from harness.loading import loader

SAMPLE = Path(__file__).parents[1] / "data" / "listops_release_sample.tsv"
# Hand-computed labels and token ids of the sample's six lines (ids: [MIN 1, [MAX 2, [MED 3, [SM 4, ] 5, digit d 6+d):
#   MAX(2, 9, 3) = 9;  MIN(MAX(2, 9), 4) = 4;  MED(3, 8, 0, 9) = floor((3 + 8) / 2) = 5;  MED(4, 1, 7) = 4;
#   SM(7, 6, MIN(5, 8)) = 18 mod 10 = 8;  a bare digit 7 = 7.
SAMPLE_LABELS = [9, 4, 5, 4, 8, 7]
SAMPLE_IDS = [[2, 8, 15, 9, 5], [1, 2, 8, 15, 5, 10, 5], [3, 9, 14, 6, 15, 5], [3, 10, 7, 13, 5],
              [4, 13, 12, 1, 11, 14, 5, 5], [13]]
OPS = {"[MIN", "[MAX", "[MED", "[SM"}
# Deep enough for nesting, wide enough for even and odd MED counts, small enough to generate in ~0.1 s.
GEN = dict(n_train=300, n_val=50, n_test=50, min_length=10, max_length=120, max_depth=5, max_args=6)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def parse(source: str) -> dict:
    """Evaluate a printed tree with a stack, independently of tasks.listops; also measure its shape."""
    stack: list[tuple[str, list[int]]] = []
    out = {"value": None, "length": 0, "depth": 0, "arities": [], "open": 0}
    parens = 0

    def push(v: int) -> None:
        if stack:
            stack[-1][1].append(v)
        else:
            assert out["value"] is None, "two values at top level"
            out["value"] = v

    for tok in source.split():
        if tok in "()":
            parens += 1 if tok == "(" else -1
            out["open"] += tok == "("
            assert parens >= 0, "')' without '('"
            continue
        out["length"] += 1
        if tok in OPS:
            stack.append((tok, []))
            out["depth"] = max(out["depth"], len(stack))
        elif tok == "]":
            op, args = stack.pop()
            out["arities"].append(len(args))
            push({"[MIN": min, "[MAX": max, "[SM": lambda a: sum(a) % 10,
                  "[MED": lambda a: math.floor(statistics.median(a))}[op](args))
        else:
            assert len(tok) == 1 and tok.isdigit(), f"bad token {tok!r}"
            out["depth"] = max(out["depth"], len(stack) + 1)
            push(int(tok))
    assert parens == 0 and not stack, "unbalanced"
    return out


def read_tsv(path: Path) -> list[tuple[str, int]]:
    lines = path.read_bytes().decode().split("\n")
    assert lines[0] == "Source\tTarget" and lines[-1] == "", "header or final line end"
    return [(s, int(t)) for s, t in (line.split("\t") for line in lines[1:-1])]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate_listops(out, **GEN, seed=3, progress=False)
    return out


def test_vocab_ids_are_fixed() -> None:
    assert VOCAB == ("<pad>", "[MIN", "[MAX", "[MED", "[SM", "]", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")


def test_printing_matches_the_release() -> None:
    assert tree_to_string(("[MAX", (2, 9, 3))) == "( ( ( ( [MAX 2 ) 9 ) 3 ) ] )"
    assert tree_to_string(("[MIN", (("[MAX", (2, 9)), 4))) == "( ( ( [MIN ( ( ( [MAX 2 ) 9 ) ] ) ) 4 ) ] )"
    assert tree_to_string(7) == "7"
    assert tokenize("( ( ( [MIN ( ( ( [MAX 2 ) 9 ) ] ) ) 4 ) ] )") == ["[MIN", "[MAX", "2", "9", "]", "4", "]"]


def test_med_even_count_floors() -> None:
    for args, want in [((1, 2), 1), ((3, 8, 0, 9), 5), ((9, 8), 8), ((4, 1, 7), 4)]:
        tree = ("[MED", args)
        assert evaluate(tree) == want == parse(tree_to_string(tree))["value"]


def test_generated_grammar_labels_and_lengths(generated: Path) -> None:
    rows = [r for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv") for r in read_tsv(generated / name)]
    assert len(rows) == GEN["n_train"] + GEN["n_val"] + GEN["n_test"]
    arities = Counter()
    for source, label in rows:
        p = parse(source)
        assert p["value"] == label
        assert GEN["min_length"] < p["length"] < GEN["max_length"]
        assert p["depth"] <= GEN["max_depth"]
        assert all(2 <= a <= GEN["max_args"] for a in p["arities"])
        assert p["open"] == sum(a + 1 for a in p["arities"])  # LRA pairs: one per argument, one for the ']'
        arities.update(p["arities"])
    assert set(arities) == set(range(2, GEN["max_args"] + 1))
    assert len(Counter(label for _, label in rows)) == 10


def test_file_format_and_dedup(generated: Path) -> None:
    sources = []
    for split, n in [("train", GEN["n_train"]), ("val", GEN["n_val"]), ("test", GEN["n_test"])]:
        data = (generated / f"basic_{split}.tsv").read_bytes()
        assert data.startswith(b"Source\tTarget\n") and data.endswith(b"\n")
        assert b"\r" not in data and b'"' not in data
        lines = data.split(b"\n")[1:-1]
        assert len(lines) == n and all(line.count(b"\t") == 1 for line in lines)
        sources += [line.split(b"\t")[0] for line in lines]
    assert len(set(sources)) == len(sources)


def test_dedup_when_trees_are_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one operator over two digits: 4 * 10 * 10 = 400 distinct trees, so 300 draws would repeat without dedup
    few = dict(min_length=1, max_length=10, max_depth=2, max_args=2)
    generate_listops(tmp_path, n_train=200, n_val=50, n_test=50, **few, seed=0, progress=False)
    sources = [s for name in ("train", "val", "test") for s, _ in read_tsv(tmp_path / f"basic_{name}.tsv")]
    assert len(sources) == len(set(sources)) == 300
    monkeypatch.setattr(listops_gen, "MAX_MISSES", 10_000)  # instead of 1M: a quick give-up
    with pytest.raises(RuntimeError, match="too few distinct trees"):
        generate_listops(tmp_path / "more", n_train=401, n_val=0, n_test=0, **few, seed=0, progress=False)


def test_deterministic_per_seed(tmp_path: Path, generated: Path) -> None:
    generate_listops(tmp_path / "same", **GEN, seed=3, progress=False)
    generate_listops(tmp_path / "other", **GEN, seed=4, progress=False)
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        assert (tmp_path / "same" / name).read_bytes() == (generated / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (generated / name).read_bytes()


def test_cache_reuses_and_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = listops_gen.generate_listops
    monkeypatch.setattr(listops_gen, "generate_listops", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    params = {**GEN, "seed": 0}
    assert ensure_generated(tmp_path, params, progress=False) and len(calls) == 1
    record = json.loads((tmp_path / "params.json").read_text())
    assert record["params"] == params and "format_version" in record and set(record["sha256"]) == {
        "basic_train.tsv", "basic_val.tsv", "basic_test.tsv"}
    good = (tmp_path / "basic_val.tsv").read_bytes()
    assert not ensure_generated(tmp_path, params, progress=False) and len(calls) == 1
    (tmp_path / "basic_val.tsv").write_bytes(good[:-20])  # truncated: hash mismatch
    assert ensure_generated(tmp_path, params, progress=False) and len(calls) == 2
    assert (tmp_path / "basic_val.tsv").read_bytes() == good
    (tmp_path / "basic_test.tsv").unlink()
    assert ensure_generated(tmp_path, params, progress=False) and len(calls) == 3
    assert ensure_generated(tmp_path, {**params, "n_val": 40}, progress=False) and len(calls) == 4
    assert len(read_tsv(tmp_path / "basic_val.tsv")) == 40


def test_interrupted_generation_leaves_nothing_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, count = listops_gen.generate_tree, [0]

    def flaky(*args):
        count[0] += 1
        if count[0] > 2000:  # well into the train file: ~10 draws per kept tree with GEN's bounds
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(listops_gen, "generate_tree", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(tmp_path, {**GEN, "seed": 0}, progress=False)
    assert os.listdir(tmp_path) == []


def test_builder_caches_by_parameters(tmp_path: Path) -> None:
    kw = dict(variant="small", n_train=60, n_val=20, n_test=20, progress=False)
    task = build_task("listops", tmp_path, **kw)
    folder = Path(task.spec.info["data_dir"])
    assert folder.parent == tmp_path / "listops" / "generated" and folder.name.startswith("small-")
    mtime = (folder / "basic_train.tsv").stat().st_mtime_ns
    again = build_task("listops", tmp_path, **kw)  # a second build reuses the generated files
    assert again.spec.info["data_dir"] == str(folder) and (folder / "basic_train.tsv").stat().st_mtime_ns == mtime
    other = build_task("listops", tmp_path, **{**kw, "data_seed": 1})
    assert other.spec.info["data_dir"] != str(folder)
    # the loaded tokens are the file's, and the labels are the file's
    ds = task.val
    for i, (source, label) in enumerate(read_tsv(folder / "basic_val.tsv")):
        item = ds[i]
        assert [VOCAB[t] for t in item["inputs"].tolist()] == tokenize(source) and item["label"] == label


@pytest.mark.parametrize("variant", ["small", "shallow"])
def test_variants_are_quick_and_not_degenerate(tmp_path: Path, variant: str) -> None:
    generate_listops(tmp_path, **VARIANTS[variant], seed=0, progress=False)
    labels = Counter(label for _, label in read_tsv(tmp_path / "basic_train.tsv"))
    assert len(labels) == 10
    assert max(labels.values()) / sum(labels.values()) < 0.2  # LRA's own majority class (0 or 9) is ~17%


def _release(tmp: Path, text: str) -> Path:
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        (tmp / name).write_bytes(text.encode())
    return tmp


def test_release_format_loads(tmp_path: Path) -> None:
    release = _release(tmp_path, SAMPLE.read_text())
    task = build_task("listops", tmp_path / "data", release_dir=str(release), l_max=6, batch_size=4)
    ds = task.test
    assert [ds[i]["label"] for i in range(len(ds))] == SAMPLE_LABELS
    assert [ds[i]["inputs"].tolist() for i in range(len(ds))] == [ids[:6] for ids in SAMPLE_IDS]
    info = task.spec.info
    assert info["variant"] == "release" and info["n_examples"] == {"train": 6, "val": 6, "test": 6}
    assert info["n_truncated"]["test"] == 2  # lines 2 and 5 are longer than l_max = 6
    assert info["majority_frac"] == pytest.approx(2 / 6)  # label 4 twice
    assert task.spec.vocab_size == 16 and task.spec.n_classes == 10 and task.spec.chance_acc == 0.1
    batch = next(iter(loader(task, "val")))
    assert batch["inputs"].dtype == torch.int64 and batch["inputs"].shape == (4, 6)
    assert batch["lengths"].tolist() == [5, 6, 6, 5] and batch["labels"].tolist() == SAMPLE_LABELS[:4]


def test_release_parent_folder_and_crlf(tmp_path: Path) -> None:
    folder = tmp_path / "lra_release" / "listops-1000"
    folder.mkdir(parents=True)
    _release(folder, SAMPLE.read_text().replace("\n", "\r\n"))  # as Python's csv.writer writes by default
    task = build_task("listops", tmp_path / "data", release_dir=str(tmp_path / "lra_release"))
    ds = task.train
    assert [ds[i]["inputs"].tolist() for i in range(len(ds))] == SAMPLE_IDS
    assert [ds[i]["label"] for i in range(len(ds))] == SAMPLE_LABELS


@pytest.mark.parametrize("bad, match", [("( ( ( [FOO 2 ) 9 ) ] )\t9", r"basic_\w+\.tsv, line 3: unknown token '\[FOO'"),
                                        ("( ( ( [MAX 2 ) 9 ) ] )\t12", r"line 3: label '12' is not an integer"),
                                        ("( ( ( [MAX 2 ) 9 ) ] )\tx", r"line 3: label 'x'")])
def test_corrupt_file_raises_clear_error(tmp_path: Path, bad: str, match: str) -> None:
    lines = SAMPLE.read_text().split("\n")
    lines[2] = bad
    _release(tmp_path, "\n".join(lines))
    with pytest.raises(ValueError, match=match):
        build_task("listops", tmp_path / "data", release_dir=str(tmp_path))


def test_missing_release_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="python -m tasks prepare listops"):
        build_task("listops", tmp_path, release_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissingError, match=r"lra/lra_release/listops-1000"):
        build_task("listops", tmp_path, variant="release")
    with pytest.raises(ValueError, match="known: lra, shallow, small"):
        build_task("listops", tmp_path, variant="tiny")
    with pytest.raises(ValueError, match="release_dir"):
        build_task("listops", tmp_path, release_dir=str(tmp_path), n_train=10)


def test_benchmark_flag_marks_only_the_lra_configuration(tmp_path: Path) -> None:
    release = _release(tmp_path, SAMPLE.read_text())
    assert build_task("listops", tmp_path / "d", release_dir=str(release)).spec.info["benchmark"] is True
    assert build_task("listops", tmp_path / "d", release_dir=str(release), l_max=6).spec.info["benchmark"] is False
    small = build_task("listops", tmp_path / "d", variant="shallow", progress=False)
    assert small.spec.info["benchmark"] is False
