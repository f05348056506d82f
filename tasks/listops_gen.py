"""ListOps generator, faithful to the LRA release (Tay et al., ICLR 2021; ``lra_benchmarks/data/listops.py``).

A tree is a digit ``int`` in 0..9 or an operator node ``(op, (child, ...))`` with 2..max_args children.
Its *length* is its number of tokens once parentheses are dropped: 1 for a digit, and for an operator node
2 (operator token + closing ``]``) plus the children's lengths.

Printing follows the release: an operator node with arguments v0..vk is the left-nested pair
``((((op, v0), v1), ..., vk), ']')`` and a pair (a, b) prints as ``( a b )``, so MAX of 2, 9, 3 prints as
``( ( ( ( [MAX 2 ) 9 ) 3 ) ] )``.

Files (``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``) have a ``Source<TAB>Target`` header, then
one ``<printed tree><TAB><label>`` line per example, ``\\n`` line ends, no quoting.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, BinaryIO, Union

from tqdm import tqdm

from core.files import atomic_path, write_atomic

__all__ = ["OPERATORS", "END", "SPLIT_FILES", "FORMAT_VERSION", "Tree", "generate_tree", "tree_to_string",
           "evaluate", "generate_listops", "ensure_generated", "files_sha256"]

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)   # drawn in this order by rng.choice, as in the release
END = "]"
VALUE_P = 0.25                          # a node below max_depth is an operator with probability 0.25
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = "Source\tTarget\n"
FORMAT_VERSION = 1                      # bump when the printed format or the sampling changes
MAX_MISSES = 1_000_000                  # draws in a row without a new tree before giving up (LRA keeps ~1 in 12)

Tree = Union[int, tuple[str, tuple["Tree", ...]]]


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[Tree, int]:
    """Sample a tree at ``depth`` (the root is depth 1); returns ``(tree, length)``.

    The random draws are the release's, in its order: ``r`` (only below max_depth), then either the digit, or
    the argument count, every child, and last the operator.
    """
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        return rng.randrange(10), 1
    n_args = rng.randint(2, max_args)
    children, length = [], 2
    for _ in range(n_args):
        child, child_len = generate_tree(rng, depth + 1, max_depth, max_args)
        children.append(child)
        length += child_len
    return (rng.choice(OPERATORS), tuple(children)), length


def tree_to_string(tree: Tree) -> str:
    """Print a tree exactly as the LRA release does (see the module docstring)."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    s = f"( {op} {tree_to_string(children[0])} )"
    for child in children[1:]:
        s = f"( {s} {tree_to_string(child)} )"
    return f"( {s} {END} )"


def evaluate(tree: Tree) -> int:
    """The label: MIN, MAX, MED (floor of the mean of the two middle values for an even count), SM (sum mod 10)."""
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = sorted(evaluate(c) for c in children)
    if op == MIN:
        return values[0]
    if op == MAX:
        return values[-1]
    if op == SUM_MOD:
        return sum(values) % 10
    if op == MED:
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) // 2
    raise ValueError(f"unknown operator {op!r}; known: {', '.join(OPERATORS)}")


def _write_split(f: BinaryIO, n: int, rng: random.Random, seen: set[bytes], bar: tqdm, min_length: int,
                 max_length: int, max_depth: int, max_args: int) -> str:
    """Write the header and ``n`` new trees to ``f``; returns the sha256 of what was written."""
    hasher = hashlib.sha256(HEADER.encode())
    f.write(HEADER.encode())
    kept, misses = 0, 0
    while kept < n:
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            source = tree_to_string(tree)
            key = hashlib.blake2b(source.encode(), digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                line = f"{source}\t{evaluate(tree)}\n".encode()
                f.write(line)
                hasher.update(line)
                kept, misses = kept + 1, 0
                bar.update()
                continue
        misses += 1
        if misses > MAX_MISSES:
            raise RuntimeError(f"ListOps: {MAX_MISSES} draws in a row gave no new tree after {len(seen)} kept; "
                               "too few distinct trees fit these bounds: loosen them or ask for fewer")
    return hasher.hexdigest()


def generate_listops(out_dir: str | Path, n_train: int = 96_000, n_val: int = 2_000, n_test: int = 2_000,
                     min_length: int = 500, max_length: int = 2_000, max_depth: int = 10, max_args: int = 10,
                     seed: int = 0, progress: bool = True) -> dict[str, str]:
    """Write the three split files into ``out_dir``; returns ``{file name: sha256 hex}``.

    Trees are drawn until ``n_train + n_val + n_test`` distinct ones with ``min_length < length < max_length``
    are kept; the first ``n_train`` go to train, then val, then test. Each file is written under a temporary
    name and renamed when complete, so an interrupted run never leaves a half file under a final name.
    """
    if max_args < 2 or max_depth < 1 or max_length - min_length < 2:
        raise ValueError(f"need max_args >= 2, max_depth >= 1 and max_length - min_length >= 2; got {max_args=}, "
                         f"{max_depth=}, {min_length=}, {max_length=}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    seen: set[bytes] = set()  # 16-byte digests of the printed trees: dedup without holding 100K trees
    digests: dict[str, str] = {}
    with tqdm(total=sum(counts.values()), desc="ListOps: generating", unit="tree", disable=not progress) as bar:
        for split, n in counts.items():
            path = out_dir / SPLIT_FILES[split]
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # complete: only then under its final name
                digests[path.name] = _write_split(f, n, rng, seen, bar, min_length, max_length, max_depth, max_args)
    return digests


def files_sha256(folder: Path) -> dict[str, str | None]:
    """sha256 of each split file in ``folder`` (None where the file is missing)."""
    out: dict[str, str | None] = {}
    for name in SPLIT_FILES.values():
        path = folder / name
        if not path.is_file():
            out[name] = None
            continue
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                hasher.update(block)
        out[name] = hasher.hexdigest()
    return out


def ensure_generated(out_dir: str | Path, params: dict[str, Any], progress: bool = True) -> bool:
    """Make ``out_dir`` hold the files for ``params`` (``generate_listops`` keyword arguments).

    ``out_dir/params.json`` records the parameters, the format version and each file's sha256; the files are
    regenerated when it is missing, records other parameters, or a file is missing or its hash differs.
    Returns True when it (re)generated the files.
    """
    out_dir = Path(out_dir)
    record_path = out_dir / "params.json"
    wanted = {"format_version": FORMAT_VERSION, "params": params}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if {k: record.get(k) for k in wanted} == wanted and record.get("sha256") == files_sha256(out_dir):
            return False
        record_path.unlink(missing_ok=True)  # stale: invalidate before touching the files (another job may have)
    digests = generate_listops(out_dir, **params, progress=progress)
    write_atomic(record_path, (json.dumps({**wanted, "sha256": digests}, indent=2) + "\n").encode())
    return True
