"""Benchmark: Pathfinder / Path-X generation speed (images/s) with 0, 1 and 2 worker processes.

Each (image size, workers) generates a fresh shard cache in a temporary folder through
``tasks.pathfinder_cache.ensure_generated`` (chunks of ``n / 8`` images, so two workers share the work evenly)
and is timed end to end: drawing, Parquet shards, the assembled ``images.npy``, and for workers > 0 the start
of the spawned processes (each imports the ``tasks`` package, torch included: a one-off cost of a few seconds
that the 200,000-image extrapolation would not pay again, so it is reported on its own too).

    python benchmarks/pathfinder_gen.py                        # 32 px: 1000 images, 128 px: 300, hard
    python benchmarks/pathfinder_gen.py --n32 2000 --n128 600 --workers 0 2

Writes results/pathfinder/generation_<host-slug>.md (machine, date, commit, load, rates, 200k extrapolation).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.env import device_name, git_commit  # noqa: E402
from tasks import pathfinder_cache as cache  # noqa: E402
from tasks import pathfinder_gen as gen  # noqa: E402

FULL = 200_000  # images per difficulty in the release


def _spawn_s(workers: int) -> float:
    """Seconds to start a spawn pool of ``workers`` processes that import the generator and do nothing."""
    import multiprocessing

    t = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))
    return time.perf_counter() - t


def bench(size: int, n: int, workers: int, contour_length: int) -> dict:
    p = gen.lra_params(size, contour_length)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache.ensure_generated(Path(tmp) / "set", p, n, data_seed=0, workers=workers, progress=False,
                               chunk_size=max(1, n // 8))
        wall = time.perf_counter() - t
    return {"size": size, "n": n, "workers": workers, "wall_s": wall, "img_per_s": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n32", type=int, default=1000)
    ap.add_argument("--n128", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--contour-length", type=int, default=gen.DIFFICULTIES["hard"])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "pathfinder")
    args = ap.parse_args()
    load_before = os.getloadavg()
    spawn = {w: _spawn_s(w) for w in args.workers if w > 0}
    rows = []
    for size, n in ((32, args.n32), (128, args.n128)):
        for w in args.workers:
            row = bench(size, n, w, args.contour_length)
            # steady rate: the pool's start-up (measured alone above) taken out
            row["steady_img_per_s"] = n / max(row["wall_s"] - spawn.get(w, 0.0), 1e-9)
            row["full_min"] = FULL / row["steady_img_per_s"] / 60
            rows.append(row)
            print(f"{size:4d} px  workers {w}  {n:5d} images  {row['wall_s']:7.1f} s  {row['img_per_s']:7.1f} img/s  "
                  f"(steady {row['steady_img_per_s']:7.1f} img/s)  -> 200k in {row['full_min']:6.1f} min", flush=True)
    load_after = os.getloadavg()
    hw = device_name("cpu")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hw).strip("-").lower()  # as results/layers/
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"# Pathfinder generation speed ({when})", "",
             f"- machine: {hw}, {os.cpu_count()} logical cores",
             f"- commit: {git_commit()}; generator format version {gen.FORMAT_VERSION}; contour length "
             f"{args.contour_length} (hard), LRA settings; chunks of n/8 images",
             f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
             f"{', '.join(f'{x:.2f}' for x in load_after)}",
             f"- spawn pool start-up (imports torch via the tasks package): "
             + ", ".join(f"{w} workers {s:.1f} s" for w, s in spawn.items()),
             "- wall: end to end (drawing, Parquet shards, images.npy, pool start-up); steady: wall minus the pool "
             "start-up; 200k: the steady rate extrapolated to 200,000 images", "",
             "| image px | workers | images | wall s | img/s (wall) | img/s (steady) | 200k images, min |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['size']} | {r['workers']} | {r['n']} | {r['wall_s']:.1f} | {r['img_per_s']:.1f} | "
              f"{r['steady_img_per_s']:.1f} | {r['full_min']:.1f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"generation_{slug}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
