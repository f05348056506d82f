"""Two-sample check: can a small CNN tell our generated Pathfinder images from the reference generator's?

Reads reference images from an .npz (``images`` uint8 (N, S, S), optional ``labels``) made OUTSIDE the project
with a local Python 3 port of drewlinsley/pathfinder snakes2 (the reference code is never imported here),
generates ``2 n`` images with our generator in memory (``tasks.pathfinder_gen.sample_examples`` + ``render`` with
``lra_params(size, contour length)``, the calls the task's cache makes, not through the cache; example i drawn
from ``[seed, i]``) and runs three classifier two-sample tests with one small CNN and one protocol:

  (a) ours vs reference: ours[0:n] vs reference[0:n];
  (b) calibration: reference[0:m] vs reference[m:2m] (m = n when the file has 2 n images, else half of it; the
      .md says so): two samples of the same distribution, so held-out accuracy should be ~0.50;
  (c) sensitivity: ours[0:n] vs ours[n:2n] with strokes one pixel thicker (``--thicken``; default ``2x2``: grey
      dilation by a 2x2 square, i.e. every pixel becomes the maximum of itself and its up / left / up-left
      neighbours, so every stroke and marker grows by exactly one pixel in each direction; ``3x3``: a 3x3 max
      filter, one pixel on each side, i.e. two pixels thicker): a difference that must be detected (~1.00);
  (d) optional (``--gen-thickness-delta D``): ours[0:n] vs examples n..2n-1 drawn by our generator with
      ``paddle_thickness`` + D (0.5: one more pixel of stroke width on the 2x antialias canvas, about half an
      output pixel), a subtler difference than (c), to show what the test can and cannot see.

Protocol (each test): the two sets are labelled 0 / 1 with the same count per side; a seeded permutation puts
30% of each side in a held-out set, and 20% of the rest in a validation set (stratified); the CNN (3 stages of
two conv3x3 + BN + ReLU, widths 16/32/64, max pooling, global max pooling, linear; as
benchmarks/pathfinder_learnability.py) is trained with AdamW (lr 2e-3, wd 1e-4, batch 64, seed ``--seed``) on
pixel / 255, no augmentation, for up to ``--max-epochs`` epochs, stopping when validation accuracy has not
improved for ``--patience`` epochs (not before ``--min-epochs``); the best-validation weights are evaluated
once on the held-out set. The report gives held-out accuracy with an exact (Clopper-Pearson) binomial 95%
interval and the one-sided exact binomial p-value of accuracy > 0.5.

    python benchmarks/pathfinder_two_sample.py --reference REF.npz --size 32 --difficulty hard --n 2000

Writes results/pathfinder/two_sample_<size>_<difficulty>.md (``--out``); prints the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.env import device_name, git_commit  # noqa: E402
from tasks.pathfinder_gen import DIFFICULTIES, FORMAT_VERSION, lra_params, render, sample_examples  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from pathfinder_learnability import small_cnn, train_epoch  # noqa: E402  (one classifier and loop for both)

HELD_OUT_FRAC, VAL_FRAC = 0.30, 0.20
GROUP = {32: 32, 128: 8}     # images per sample_examples call (shares numpy calls only; images do not depend on it)


# ---------------------------------------------------------------- data

def generate_ours(size: int, contour_length: int, n: int, seed: int, start: int = 0,
                  thickness_delta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Examples start..start+n-1 of our generator (LRA settings; paddle thickness + ``thickness_delta``),
    example i from [seed, i]: uint8 (n, S, S), labels (n,)."""
    p = lra_params(size, contour_length)
    if thickness_delta:
        p = dataclasses.replace(p, paddle_thickness=p.paddle_thickness + thickness_delta)
    images = np.empty((n, size, size), np.uint8)
    labels = np.empty(n, np.int64)
    group = GROUP.get(size, 8)
    for first in range(start, start + n, group):
        for i, ex in enumerate(sample_examples(p, seed, range(first, min(first + group, start + n))), first):
            images[i - start], labels[i - start] = render(ex, p), ex.label
    return images, labels


def thicken(images: np.ndarray, how: str) -> np.ndarray:
    """Grey dilation (maximum filter) of uint8 (N, S, S) images; edges padded with 0 (the background)."""
    k = {"2x2": 2, "3x3": 3}[how]
    lo = (k - 1) // 2 if k == 3 else 1          # 2x2: the pixel and its up / left / up-left neighbours
    n, s, _ = images.shape
    pad = np.zeros((n, s + 2, s + 2), np.uint8)
    pad[:, 1:-1, 1:-1] = images
    out = np.zeros_like(images)
    for dy in range(-lo, k - lo):
        for dx in range(-lo, k - lo):
            np.maximum(out, pad[:, 1 + dy:1 + dy + s, 1 + dx:1 + dx + s], out=out)
    return out


def pixel_stats(images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    x = images.astype(np.float64)
    nz = x[x > 0]
    per_image = x.reshape(len(x), -1).mean(1)
    return {"n": len(x), "mean": x.mean(), "sd_image_mean": per_image.std(), "ge1": (x >= 1).mean(),
            "ge64": (x >= 64).mean(), "median_nz": float(np.median(nz)) if nz.size else 0.0,
            "max255": (images.reshape(len(x), -1).max(1) == 255).mean(),
            "pos": float(labels.mean()) if labels is not None else float("nan")}


# ---------------------------------------------------------------- statistics

def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p)."""
    return min(1.0, sum(math.exp(_log_binom_pmf(j, n, p)) for j in range(k, n + 1)))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n, by bisection on the binomial tails."""
    a = (1 - level) / 2

    def solve(f, target: float) -> float:   # f increasing in p
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if k == 0 else solve(lambda p: binom_sf(k, n, p), a)            # P(X >= k | p) = a
    upper = 1.0 if k == n else solve(lambda p: -(1 - binom_sf(k + 1, n, p)), -a)  # P(X <= k | p) = a
    return lower, upper


# ---------------------------------------------------------------- classifier

@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    model.eval()
    return sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(x), 256))


def split(n_side: int, seed: int) -> dict[str, np.ndarray]:
    """Stratified held-out / val / train indices into the stacked (side 0 then side 1) arrays."""
    rng = np.random.default_rng([seed, 7])
    n_test = int(round(HELD_OUT_FRAC * n_side))
    n_val = int(round(VAL_FRAC * (n_side - n_test)))
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for side in (0, 1):
        perm = rng.permutation(n_side) + side * n_side
        parts["test"].append(perm[:n_test])
        parts["val"].append(perm[n_test:n_test + n_val])
        parts["train"].append(perm[n_test + n_val:])
    return {k: np.concatenate(v) for k, v in parts.items()}


def two_sample(a: np.ndarray, b: np.ndarray, seed: int, max_epochs: int, patience: int, min_epochs: int = 0,
               batch: int = 64,
               lr: float = 2e-3, width: int = 16, log=print) -> dict:
    """Train the CNN to tell a (0) from b (1); held-out accuracy of the best-validation weights."""
    t0 = time.perf_counter()
    m = min(len(a), len(b))
    x = torch.from_numpy(np.concatenate([a[:m], b[:m]]).astype(np.float32) / 255).unsqueeze(1)
    y = torch.cat([torch.zeros(m, dtype=torch.long), torch.ones(m, dtype=torch.long)])
    idx = {k: torch.from_numpy(v) for k, v in split(m, seed).items()}
    xs, ys = {k: x[v] for k, v in idx.items()}, {k: y[v] for k, v in idx.items()}
    torch.manual_seed(seed)
    model = small_cnn(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state, history = -1, 0, None, []
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(ys["train"]), generator=gen)   # its own generator; whole epochs only
        loss = train_epoch(model, opt, xs["train"], ys["train"], order, batch)
        val = _correct(model, xs["val"], ys["val"])
        history.append(val / len(ys["val"]))
        log(f"  epoch {epoch}: train loss {loss:.4f}  val {history[-1]:.3f}  "
            f"({time.perf_counter() - t0:.0f} s)")
        if val > best:
            best, best_epoch, best_state = val, epoch, {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience and epoch >= min_epochs:
            break
    model.load_state_dict(best_state)
    k, n = _correct(model, xs["test"], ys["test"]), len(ys["test"])
    lo, hi = clopper_pearson(k, n)
    return {"per_side": m, "n_train": len(ys["train"]), "n_val": len(ys["val"]), "n_test": n, "correct": k,
            "acc": k / n, "ci": (lo, hi), "p": binom_sf(k, n, 0.5), "epochs": len(history), "best_epoch": best_epoch,
            "val_history": history, "seconds": time.perf_counter() - t0,
            "n_params": sum(q.numel() for q in model.parameters())}


# ---------------------------------------------------------------- main

@dataclasses.dataclass
class Samples:
    """The image sets the tests compare (uint8 (N, S, S), labels (N,)) and where they came from."""
    ref: np.ndarray
    ref_labels: np.ndarray | None
    ref_sha: str                          # first 16 hex digits of the reference file's sha256
    n_main: int                           # reference images in test (a)
    m_cal: int                            # images per side of the calibration test (b)
    ours: np.ndarray                      # 2 n images of our generator
    ours_labels: np.ndarray
    gen_s: float                          # seconds to generate ``ours``
    thick: np.ndarray                     # ours[n:2n], dilated (--thicken)
    gthick: np.ndarray | None = None      # (d): examples n..2n-1 with paddle_thickness + delta
    gthick_labels: np.ndarray | None = None


def _log(s: str = "") -> None:
    print(s, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help=".npz with images (N, S, S) uint8, optional labels")
    ap.add_argument("--reference-note", default="", help="how the reference file was made (recorded in the .md)")
    ap.add_argument("--size", type=int, default=32, choices=[32, 128])
    ap.add_argument("--difficulty", default="hard", choices=list(DIFFICULTIES))
    ap.add_argument("--n", type=int, default=2000, help="images per side")
    ap.add_argument("--seed", type=int, default=0, help="our generator's data seed, the split and training seed")
    ap.add_argument("--thicken", default="2x2", choices=["2x2", "3x3"], help="sensitivity transformation")
    ap.add_argument("--gen-thickness-delta", type=float, default=0.0,
                    help="also run (d): ours vs ours generated with paddle_thickness + this (0: skip)")
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--min-epochs", type=int, default=12, help="never stop before this many epochs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/pathfinder/two_sample_<size>_<difficulty>.md")
    return ap.parse_args()


def load_samples(args: argparse.Namespace) -> Samples:
    """Read the reference file (exits on a wrong shape or dtype) and generate our images and their variants."""
    contour_length = DIFFICULTIES[args.difficulty]
    raw = args.reference.read_bytes()
    ref_sha = hashlib.sha256(raw).hexdigest()[:16]
    with np.load(args.reference) as d:
        ref = np.asarray(d["images"])
        ref_labels = np.asarray(d["labels"]).astype(np.int64) if "labels" in d.files else None
    if ref.dtype != np.uint8 or ref.ndim != 3 or ref.shape[1:] != (args.size, args.size):
        sys.exit(f"{args.reference}: images must be uint8 (N, {args.size}, {args.size}); got {ref.dtype} {ref.shape}")
    n_ref = len(ref)
    _log(f"reference {args.reference} ({n_ref} images, sha256 {ref_sha}); ours: generating {2 * args.n} "
         f"({args.size} px, contour length {contour_length}, data seed {args.seed})")
    t = time.perf_counter()
    ours, ours_labels = generate_ours(args.size, contour_length, 2 * args.n, args.seed)
    gen_s = time.perf_counter() - t
    _log(f"generated {2 * args.n} images in {gen_s:.1f} s")
    s = Samples(ref, ref_labels, ref_sha, min(args.n, n_ref), min(args.n, n_ref // 2), ours, ours_labels, gen_s,
                thicken(ours[args.n:], args.thicken))
    if args.gen_thickness_delta:
        t = time.perf_counter()
        s.gthick, s.gthick_labels = generate_ours(args.size, contour_length, args.n, args.seed, start=args.n,
                                                  thickness_delta=args.gen_thickness_delta)
        _log(f"generated {args.n} images with paddle_thickness {_widths(args)[1]:g} in "
             f"{time.perf_counter() - t:.1f} s")
    return s


def _widths(args: argparse.Namespace) -> tuple[float, float, int]:
    """LRA paddle thickness, the thickness (d) draws with, and the antialias scale."""
    p0 = lra_params(args.size, DIFFICULTIES[args.difficulty])
    return p0.paddle_thickness, p0.paddle_thickness + args.gen_thickness_delta, p0.antialias_scale


def run_tests(args: argparse.Namespace, s: Samples) -> list[tuple[str, str, str, str, dict]]:
    """Tests (a) to (c), and (d) when asked: (key, name, side 0, side 1, two_sample's result) each."""
    n, n_main, m_cal = args.n, s.n_main, s.m_cal
    tests = [("a", "ours vs reference", f"ours[0:{n}]", f"reference[0:{n_main}]", s.ours[:n], s.ref[:n_main]),
             ("b", "calibration: reference vs reference", f"reference[0:{m_cal}]", f"reference[{m_cal}:{2 * m_cal}]",
              s.ref[:m_cal], s.ref[m_cal:2 * m_cal]),
             ("c", f"sensitivity: ours vs ours {args.thicken}-dilated", f"ours[0:{n}]",
              f"dilate{args.thicken}(ours[{n}:{2 * n}])", s.ours[:n], s.thick)]
    if args.gen_thickness_delta:
        w0, w1, _ = _widths(args)
        tests.append(("d", f"sensitivity: ours vs ours generated with paddle_thickness {w1:g} (LRA {w0:g})",
                      f"ours[0:{n}]", f"ours_w{w1:g}[{n}:{2 * n}]", s.ours[:n], s.gthick))
    results = []
    for key, name, a_desc, b_desc, a, b in tests:
        _log(f"({key}) {name}: {a_desc} vs {b_desc}")
        r = two_sample(a, b, args.seed, args.max_epochs, args.patience, args.min_epochs, log=_log)
        _log(f"({key}) held-out accuracy {r['acc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] "
             f"({r['correct']}/{r['n_test']}), p(acc>0.5) {r['p']:.2g}, {r['epochs']} epochs, {r['seconds']:.0f} s")
        results.append((key, name, a_desc, b_desc, r))
    return results


def report_header(args: argparse.Namespace, s: Samples, r0: dict, total_s: float) -> list[str]:
    """The title and the bullet list: command, machine, data, protocol, transformation, wall time."""
    n, m_cal, n_ref, contour_length = args.n, s.m_cal, len(s.ref), DIFFICULTIES[args.difficulty]
    w0, w1, aa = _widths(args)
    label = {32: "Pathfinder-32", 128: "Path-X (128)"}[args.size]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cal_note = ("" if m_cal == n else
                f" **The reference file has {n_ref} images, fewer than 2 n = {2 * n}: calibration uses "
                f"{m_cal} per side.**")
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    return [f"# Two-sample check: {label} {args.difficulty}, ours vs reference ({when})", "",
            f"- command: `{cmd}`",
            f"- machine: {device_name('cpu')}, {os.cpu_count()} logical cores; torch {torch.__version__}; "
            f"commit {git_commit()}",
            f"- ours: {2 * n} images from `tasks.pathfinder_gen` (format {FORMAT_VERSION}), "
            f"`lra_params({args.size}, {contour_length})`, `sample_examples` + `render` in memory, data seed "
            f"{args.seed} (example i from [{args.seed}, i]); generated in {s.gen_s:.1f} s",
            f"- reference: `{args.reference.name}`, {n_ref} images, sha256 {s.ref_sha}"
            + (f"; {args.reference_note}" if args.reference_note else "") + " (images not committed)",
            f"- protocol: per test {HELD_OUT_FRAC:.0%} of each side held out, {VAL_FRAC:.0%} of the rest for "
            f"validation (stratified, seed {args.seed}); small CNN ({r0['n_params']:,} parameters), AdamW lr 2e-3, "
            f"wd 1e-4, batch 64, pixel / 255, no augmentation, torch seed {args.seed}, up to {args.max_epochs} "
            f"epochs, early stopping after {args.patience} epochs without a better validation accuracy (not before "
            f"epoch {args.min_epochs}); "
            f"best-validation weights evaluated once on the held-out part. Interval: exact (Clopper-Pearson) 95%; "
            f"p: exact one-sided binomial test of accuracy > 0.5.",
            f"- sensitivity transformation: {args.thicken} grey dilation (maximum filter) of the uint8 images"
            + (" (each pixel becomes the max of itself and its up, left and up-left neighbours: strokes and "
               "markers one pixel thicker)" if args.thicken == "2x2" else
               " (3x3 max filter: strokes one pixel thicker on each side)")
            + (f"; (d) draws the strokes {args.gen_thickness_delta:g} thicker in the generator itself "
               f"(`paddle_thickness` {w0:g} -> {w1:g}, i.e. round(w aa) = {round(w0 * aa)} -> {round(w1 * aa)} pixels "
               f"on the antialias canvas before the Lanczos downsizing; the margins follow the stroke), "
               f"a subtler difference than (c)" if args.gen_thickness_delta else ""),
            f"- wall time: {total_s / 60:.1f} min in all ({torch.get_num_threads()} torch threads)" + cal_note, ""]


def pixel_stats_rows(args: argparse.Namespace, s: Samples) -> list[tuple[str, dict[str, float]]]:
    """(set name, pixel_stats) for every set the tests read."""
    n, n_main, m_cal = args.n, s.n_main, s.m_cal
    ref_labels = s.ref_labels
    stats = [("ours", pixel_stats(s.ours[:n], s.ours_labels[:n])),
             ("reference", pixel_stats(s.ref[:n_main], ref_labels[:n_main] if ref_labels is not None else None)),
             (f"reference[{m_cal}:{2 * m_cal}] (calibration B)",
              pixel_stats(s.ref[m_cal:2 * m_cal], ref_labels[m_cal:2 * m_cal] if ref_labels is not None else None)),
             (f"ours[{n}:{2 * n}]", pixel_stats(s.ours[n:], s.ours_labels[n:])),
             (f"ours[{n}:{2 * n}], {args.thicken}-dilated", pixel_stats(s.thick, s.ours_labels[n:]))]
    if args.gen_thickness_delta:
        w1 = _widths(args)[1]
        stats.append((f"ours_w{w1:g}[{n}:{2 * n}] (generated, paddle_thickness {w1:g})",
                      pixel_stats(s.gthick, s.gthick_labels)))
    return stats


def report_tables(results: list[tuple[str, str, str, str, dict]],
                  stats: list[tuple[str, dict[str, float]]]) -> list[str]:
    """The results table, the acceptance line, validation histories and the pixel statistics table."""
    lines = ["| test | side 0 | side 1 | per side | train / val / held-out | epochs (best) | held-out accuracy "
             "| 95% CI | p (acc > 0.5) | wall |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, name, a_desc, b_desc, r in results:
        lines.append(f"| ({key}) {name} | {a_desc} | {b_desc} | {r['per_side']} | {r['n_train']} / {r['n_val']} / "
                     f"{r['n_test']} | {r['epochs']} ({r['best_epoch']}) | **{r['acc']:.3f}** ({r['correct']}/"
                     f"{r['n_test']}) | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['p']:.2g} | {r['seconds']:.0f} s |")
    r0 = results[0][4]
    ok = r0["acc"] <= 0.60
    lines += ["", f"Acceptance (held-out accuracy of (a) <= 0.60 with >= 2,000 images per side): "
              f"{'met' if ok and r0['per_side'] >= 2000 else 'NOT met'} ({r0['acc']:.3f}, {r0['per_side']} per side); "
              f"calibration (b) {results[1][4]['acc']:.3f} (expected ~0.50), sensitivity (c) "
              f"{results[2][4]['acc']:.3f} (expected ~1.00)"
              + (f", subtler sensitivity (d) {results[3][4]['acc']:.3f}" if len(results) > 3 else "") + ".", "",
              "Validation accuracy per epoch:", ""]
    lines += [f"- ({key}): {', '.join(f'{v:.3f}' for v in r['val_history'])}" for key, _, _, _, r in results]
    lines += ["", "Pixel statistics (over all pixels of the set; values 0..255):", "",
              "| set | images | mean pixel | sd of per-image mean | fraction >= 1 | fraction >= 64 | median non-zero "
              "| images with max 255 | label 1 fraction |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, st in stats:
        pos = "n/a" if math.isnan(st["pos"]) else f"{st['pos']:.3f}"
        lines.append(f"| {name} | {st['n']} | {st['mean']:.2f} | {st['sd_image_mean']:.2f} | {st['ge1']:.4f} | "
                     f"{st['ge64']:.4f} | {st['median_nz']:.0f} | {st['max255']:.3f} | {pos} |")
    return lines


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ROOT / "results" / "pathfinder" / f"two_sample_{args.size}_{args.difficulty}.md"
    t_start = time.perf_counter()
    samples = load_samples(args)
    results = run_tests(args, samples)
    total_s = time.perf_counter() - t_start
    lines = report_header(args, samples, results[0][4], total_s)
    lines += report_tables(results, pixel_stats_rows(args, samples))
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
