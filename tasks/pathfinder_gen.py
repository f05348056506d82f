"""Pathfinder / Path-X image generator, written from the published description of the snakes2 generator.

Definition (Linsley et al., NeurIPS 2018, "Learning long-range spatial dependencies with horizontal gated
recurrent units"; their generator github.com/drewlinsley/pathfinder ``snakes2.py``, which LRA used): an image
holds two *target contours* and a few shorter *distractor* contours, each a chain of short straight strokes
("paddles") separated by small gaps. Two circular markers sit on contour ends: one on the start of a target
contour (the origin) and one on the far end of the same contour (label 1, connected) or of the other target
contour (label 0). Growing a contour (L paddle length, m margin, c continuity; pixel (r, c) centred at (r, c)):

  * seed paddle: from an integer tail, orientation uniform over whole degrees; its head and the point ``m``
    behind its tail must lie in the image. The first target seed lies >= 2 ``seed_distance`` from every edge,
    the second ``seed_distance`` from it in a random whole-degree direction; a distractor seed on the first of
    ``TAIL_TRIES`` random pixels where it fits, for each of up to ``max_paddle_retrial + 1`` orientations;
  * each further paddle: the pivot lies about ``m`` beyond the previous head (rounded to a pixel); the new head
    is one of the pixels the circle of radius ``L + m`` around it passes through, drawn with weight free(head)
    x ``cos^2(min(c * dtheta, pi / 2))`` (dtheta: the turn from the previous paddle; free: no footprint within
    ``m`` of it); the paddle is the last ``L`` of the pivot-head ray, so consecutive paddles leave a gap of
    about ``2 m``; a paddle whose footprint (the pixels its stroke dilated by ``m`` covers, i.e. centres
    within ``thickness / 2 + m - 1/2``) meets another footprint is redrawn up to ``max_paddle_retrial`` more
    times, else the contour fails. A contour's latest paddle is not yet counted against its own next one;
  * the two targets grow to ``contour_length`` paddles each, one after the other, and are regrown from scratch
    on failure: per round ``A`` attempts at the first (the first complete one wins), then ``B`` attempts at the
    second, which avoids the whole first contour (the first complete one wins; if none, the first contour is
    dropped too and the next round starts over) (``TARGET_BATCH[size] = (A, B)``); then ``n_distractors``
    contours of ``distractor_length`` paddles, each retried ``max_distractor_retrial`` times and otherwise left
    out, as in snakes2;
  * strokes and markers (discs of ``marker_radius``) are drawn ``antialias_scale`` times finer (Pillow) and
    Lanczos-downsampled, as snakes2's ``scipy.misc.imresize(..., interp='lanczos')`` did, *without* any
    renormalisation: a stroke half a pixel wide (Pathfinder-32) peaks near 0.5, a marker at 1; strokes are then
    scaled by their contrast; the image is divided by its maximum, as ``scipy.misc.imsave``'s byte scaling
    did, and stored as uint8.

Labels alternate (example i has label ``i % 2``), balanced exactly for an even count. Example i is drawn from
``np.random.default_rng([data_seed, i])`` alone, so the data do not depend on the number of workers.

Speed: everything is vectorised in numpy over the attempts of an image *and* over a group of images drawn
together (``sample_examples``: the rows of all their attempts share each numpy call; each image takes its
random numbers in fixed blocks from its own generator, so grouping does not change any image). Occupancy is
kept incrementally in flat per-attempt 0/1 grids (lazily zeroed; the image frame is a lookup by pivot cell)
with precomputed footprints (one per ring candidate and per whole-degree seed orientation), so placing a
paddle is a gather and a scatter. Measured on this project's 2-core Xeon @ 2.50GHz, hard, otherwise idle
(benchmarks/pathfinder_gen.py -> results/pathfinder/generation_*.md): Pathfinder-32 ~330 images/s in one
process, ~590/s with 2 workers (200,000 in 6-10 min); Path-X ~85/s in one process, ~125/s with 2 workers
(200,000 in 27-40 min). With another job on one of the cores, 2 workers gave ~170/s and ~40/s.

Deviations from snakes2 for speed (format version 2), besides the choices listed below: the targets grow one
after the other instead of alternately paddle by paddle, and a first contour gets ``B`` tries at a second one
before it is dropped (snakes2: one), which leaves Path-X (where ~0.5% of snakes2-style attempts succeed)
about 3x faster here; so a first contour that leaves little room for a second is accepted somewhat more often
than under full restarts. Distractor seeds are drawn among all pixels (a taken one does not fit) rather than
among free ones.

LRA settings, from the docstrings of ``lra_benchmarks/data/pathfinder.py`` (google-research/long-range-arena,
``Pathfinder32``, ``Pathfinder128``) over the snakes2 wrapper's defaults (paddle_length 5, max_paddle_retrial 2,
max_distractor_contour_retrial 4, paddle_contrast 1, use_single_paddles False):

    | size | paddle L | thickness | margins | continuity | seed dist | marker r | aa | pad | snake x paddle contrast | distractors |
    | 32   | 2        | 0.5       | 1       | 1.0        | 7         | 1.5      | 2  | 1   | 2 x 0.75                | 20 // d     |
    | 128  | 5 (dflt) | 1.5       | 2 or 3  | 1.8        | 20        | 3        | 2  | 1   | 0.9 x 1                 | 35 // d     |

(d = distractor length = contour_length // 3; contour length 6 / 9 / 14 for the release's curv_baseline /
curv_contour_length_9 / curv_contour_length_14.) As in snakes2, target paddles get snake x paddle contrast and
distractor paddles the snake contrast alone: at 32 px targets peak near 0.5 x 1.5 and distractors near
0.5 x 2, so markers and distractors come out near 255 and targets near 190; at 128 px (strokes 1.5 px wide,
peak 1) targets and distractors are at 0.9 of the markers. (Format 2 renormalised strokes to their nominal
peak, which left the 32 px markers at half the distractors' brightness, lost among the strokes' anti-aliased
edges: a small CNN stayed at chance on those images; see benchmarks/pathfinder_learnability.py.) Our choices where the description leaves room: integer division for the distractor counts
(the wrapper's ``35 / d`` under Python 2) and the count follows the chosen contour length; hard footprints
rasterised at pixel centres instead of thresholds on Lanczos-resized masks; a distractor seed tried on
``TAIL_TRIES`` random pixels per orientation; the second target seed may not overlap the first contour and
every paddle of a target avoids the other target (snakes2 checks neither for the seeds, so its targets can
touch); everything outside the padding counts as occupied.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DIFFICULTIES", "FORMAT_VERSION", "TARGET_BATCH", "PathfinderParams", "Example", "lra_params",
           "sample_examples", "sample_example", "render_layers", "render"]

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}   # contour length (paddles per target contour)
FORMAT_VERSION = 3                                          # bump when the sampling or drawing changes (3: Lanczos, no renormalisation)
TARGET_BATCH = {32: (16, 8), 128: (16, 16)}                 # per image size: attempts at target 1, 2 per round
MAX_TARGET_ROUNDS = 400                                     # rounds before giving up
TAIL_TRIES = 16                                             # pixels tried per distractor seed orientation


@dataclass(frozen=True)
class PathfinderParams:
    image_size: int
    contour_length: int
    distractor_length: int
    n_distractors: int
    paddle_length: float
    paddle_thickness: float
    paddle_margins: tuple[int, ...]     # one drawn per image
    continuity: float
    seed_distance: float
    marker_radius: float
    antialias_scale: int
    padding: int                        # border rows/columns counted as occupied
    target_contrast: float              # snake contrast x paddle contrast
    distractor_contrast: float          # snake contrast
    max_paddle_retrial: int = 2
    max_distractor_retrial: int = 4

    def __post_init__(self) -> None:
        if self.image_size - 4 * self.seed_distance < 1:
            raise ValueError(f"image_size {self.image_size} leaves no room for seeds {self.seed_distance} apart")
        if 2 * self.seed_distance < self.paddle_length + max(self.paddle_margins):
            raise ValueError(f"seed_distance {self.seed_distance} too small for paddles of {self.paddle_length}")
        if self.contour_length < 1 or self.distractor_length < 1:
            raise ValueError(f"contour and distractor lengths must be >= 1; got {self.contour_length}, "
                             f"{self.distractor_length}")


_LRA = {  # per image size: the LRA wrapper settings (module docstring) and the distractor paddle budget
    32: dict(paddle_length=2, paddle_thickness=0.5, paddle_margins=(1,), continuity=1.0, seed_distance=7,
             marker_radius=1.5, antialias_scale=2, padding=1, target_contrast=2 * 0.75, distractor_contrast=2.0),
    128: dict(paddle_length=5, paddle_thickness=1.5, paddle_margins=(2, 3), continuity=1.8, seed_distance=20,
              marker_radius=3, antialias_scale=2, padding=1, target_contrast=0.9, distractor_contrast=0.9),
}
_DISTRACTOR_BUDGET = {32: 20, 128: 35}


def lra_params(image_size: int, contour_length: int) -> PathfinderParams:
    """The LRA generator settings for a 32 (Pathfinder) or 128 (Path-X) pixel image."""
    if image_size not in _LRA:
        raise ValueError(f"no LRA generator settings for image_size {image_size}; known: {', '.join(map(str, _LRA))}")
    d = max(1, contour_length // 3)
    return PathfinderParams(image_size=image_size, contour_length=contour_length, distractor_length=d,
                            n_distractors=_DISTRACTOR_BUDGET[image_size] // d, **_LRA[image_size])


@dataclass
class Example:
    """One image's geometry, in (row, col) pixel coordinates (pixel centres at integers)."""
    label: int
    margin: int
    targets: tuple[np.ndarray, np.ndarray]  # each (contour_length, 2, 2): paddles (start, end), origin tip first
    distractors: list[np.ndarray]           # each (distractor_length, 2, 2)
    markers: np.ndarray                     # (2, 2): origin marker centre, terminal marker centre
    origin: int                             # target contour whose start carries the origin marker
    terminal: int                           # target contour whose end carries the other (== origin iff label 1)


def _capsule_offsets(p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Integer pixels (k, 2) whose centres lie within ``radius`` of the segment p0-p1 (float (row, col))."""
    lo = np.floor(np.minimum(p0, p1) - radius).astype(int)
    hi = np.ceil(np.maximum(p0, p1) + radius).astype(int)
    rows, cols = np.mgrid[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1]          # (h, w) each
    q = np.stack([rows, cols], -1).astype(float) - p0                 # (h, w, 2)
    d = p1 - p0
    t = np.clip((q @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)         # (h, w) projection onto the segment
    inside = ((q - t[..., None] * d) ** 2).sum(-1) <= radius * radius
    return np.stack([rows[inside], cols[inside]], 1)


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Ragged 1-D arrays -> (n, max_len), each row padded by repeating its first entry (harmless for any / +=)."""
    width = max(len(r) for r in rows)
    return np.stack([np.concatenate([r, np.full(width - len(r), r[0])]) for r in rows])


class _Tables:
    """Everything about a paddle that does not depend on where it is, for one (params, margin).

    Occupancy grids are padded by ``border`` cells on each side and indexed flat: image pixel (r, c) is cell
    ``(r + border) * width + c + border``; everything outside the image counts as occupied, so footprints need
    no clipping. A grown paddle takes one of K head offsets ``ring`` from its integer pivot (the pixels the
    circle of radius L + m passes through, like snakes2's candidates); a seed paddle one of 360 whole-degree
    orientations from its integer tail. Footprints are stored as flat cell offsets.
    """

    def __init__(self, p: PathfinderParams, margin: int):
        L, m = p.paddle_length, margin
        self.margin = m
        self.r_occ = p.paddle_thickness / 2 + m - 0.5   # pixels the stroke dilated by m (nearly) covers
        self.r_near = self.r_occ + m                     # ... dilated by m once more: no new head there
        self.border = math.ceil(L + 2 * m + self.r_near) + 2
        self.width = p.image_size + 2 * self.border
        r = math.ceil(L + m + 1)
        square = np.stack(np.mgrid[-r:r + 1, -r:r + 1], -1).reshape(-1, 2)
        ring = square[np.abs(np.linalg.norm(square, axis=1) - (L + m)) < 0.5]
        units = ring / np.linalg.norm(ring, axis=1, keepdims=True)                # (K, 2)
        self.ring = ring                                                          # (K, 2) head - pivot
        self.start = ring - L * units                                             # (K, 2) paddle start - pivot
        self.step = np.rint(ring + m * units).astype(int)                         # (K, 2) next pivot - pivot
        self.head_cells = self._flat(ring)                                        # (K,)
        occ_px = [_capsule_offsets(s, e, self.r_occ) for s, e in zip(self.start, ring)]
        self.fp_occ = _pad_rows([self._flat(q) for q in occ_px])                 # (K, F)
        self.fp_near = _pad_rows([self._capsule(s, e, self.r_near) for s, e in zip(self.start, ring)])
        radians = np.arange(-180, 180) * math.pi / 180
        dirs = np.stack([np.sin(radians), np.cos(radians)], 1)                    # (360, 2) seed d at row d + 180
        self.seed_dirs = dirs
        self.seed_step = np.rint((L + m) * dirs).astype(int)                      # (360, 2) first pivot - tail
        seed_px = [_capsule_offsets(np.zeros(2), L * u, self.r_occ) for u in dirs]
        self.seed_occ = _pad_rows([self._flat(q) for q in seed_px])
        self.seed_lo = np.array([q.min(0) for q in seed_px])                     # (360, 2) footprint bounding box
        self.seed_hi = np.array([q.max(0) for q in seed_px])
        self.occ_lo, self.occ_hi = p.padding, p.image_size - p.padding - 1      # where footprints may lie
        self.seed_near = _pad_rows([self._capsule(np.zeros(2), L * u, self.r_near) for u in dirs])
        # continuity weights of the K candidates after a grown paddle k (rows 0..K-1) or a seed d (K + d + 180)
        previous = np.concatenate([np.arctan2(ring[:, 0], ring[:, 1]), radians])
        turn = np.abs(np.arctan2(ring[:, 0], ring[:, 1])[None, :] - previous[:, None]) % (2 * math.pi)
        turn = np.minimum(turn, 2 * math.pi - turn) * p.continuity               # (K + 360, K)
        self.weights = np.where(turn < math.pi / 2, np.cos(np.minimum(turn, math.pi / 2)) ** 2, 0.0)
        self.frame_occ = self._frame(p.image_size, p.padding)
        self.frame_near = self._frame(p.image_size, p.padding + m)
        # the frame as lookups by pivot cell, so per-attempt grids can start empty: head k is clear of the frame
        # (as frame_near says), footprint k lies inside the padding (bounding box of its pixels)
        here = np.stack(np.divmod(np.arange(self.width ** 2), self.width), 1)[:, None] - self.border  # (W^2, 1, 2)
        near_lo, near_hi = p.padding + m, p.image_size - p.padding - m - 1
        self.head_in = ((here + ring >= near_lo) & (here + ring <= near_hi)).all(-1)              # (W^2, K)
        fp_lo, fp_hi = np.array([q.min(0) for q in occ_px]), np.array([q.max(0) for q in occ_px])
        self.fp_in = ((here + fp_lo >= self.occ_lo) & (here + fp_hi <= self.occ_hi)).all(-1)     # (W^2, K)

    def _flat(self, offsets: np.ndarray) -> np.ndarray:
        return (offsets[..., 0] * self.width + offsets[..., 1]).astype(np.int64)

    def _capsule(self, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
        return self._flat(_capsule_offsets(p0, p1, radius))

    def _frame(self, size: int, width: int) -> np.ndarray:
        out = np.ones((self.width, self.width), np.int8)
        lo, hi = self.border + width, self.border + size - width
        out[lo:hi, lo:hi] = 0
        return out.reshape(-1)

    def cells(self, q: np.ndarray) -> np.ndarray:
        """Flat cells of integer image pixels q (..., 2)."""
        return (q[..., 0] + self.border) * self.width + q[..., 1] + self.border


@functools.lru_cache(maxsize=8)
def _tables(p: PathfinderParams, margin: int) -> _Tables:
    return _Tables(p, margin)


def _inside(q: np.ndarray, size: int) -> np.ndarray:
    return ((q >= 0) & (q <= size - 1)).all(-1)


def _seed_ok(t: _Tables, tail: np.ndarray, degree: np.ndarray, p: PathfinderParams, margin: int) -> np.ndarray:
    """snakes2's seed check: the head and the point ``margin`` behind the tail lie in the image; and the seed's
    footprint lies inside the padding."""
    u, d = t.seed_dirs[degree + 180], degree + 180
    return (_inside(tail + p.paddle_length * u, p.image_size) & _inside(tail - margin * u, p.image_size)
            & ((tail + t.seed_lo[d] >= t.occ_lo) & (tail + t.seed_hi[d] <= t.occ_hi)).all(-1))


def _sample_rows(weight: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: weight (n, K) with positive row sums, u (n, R) uniform -> (n, R) indices."""
    cmf = np.cumsum(weight, 1) / weight.sum(1, keepdims=True)                       # (n, K)
    return np.minimum((cmf[:, :, None] <= u[:, None, :]).sum(1), weight.shape[1] - 1)


def _grow_rows(p: PathfinderParams, t: _Tables, occ: np.ndarray, near: np.ndarray, base: np.ndarray,
               tail: np.ndarray, deg: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grow one snake per row from its seed (tail (r, 2), deg (r,)), each in its own 0/1 grids at ``base`` (r,)
    in ``occ`` / ``near``, with draws u (r, contour_length - 1, R). A snake's latest paddle is kept out of its
    own grid until the next one is placed (consecutive paddles may nearly touch); the frame is checked by
    lookup (``t.head_in``, ``t.fp_in``). Returns the rows that grew to full length (their grids now hold the
    whole snake) and every row's ring choices (r, contour_length - 1)."""
    r = len(base)
    live = np.arange(r)
    cell = base + t.cells(tail)
    pending = (cell[:, None] + t.seed_occ[deg + 180], cell[:, None] + t.seed_near[deg + 180])
    pivot, prev = tail + t.seed_step[deg + 180], len(t.ring) + deg + 180
    choices = np.zeros((r, p.contour_length - 1), int)
    for step in range(p.contour_length - 1):
        local = t.cells(pivot)                                                      # (n,) cell in a grid
        cell = base[live] + local
        free = t.head_in[local] & (near[cell[:, None] + t.head_cells] == 0)          # (n, K)
        weight = t.weights[prev] * free
        alive = weight.sum(1) >= 1e-4
        weight[~alive] = 1.0
        k = _sample_rows(weight, u[live, step])                                     # (n, R) draws
        clear = t.fp_in[local[:, None], k] & ~occ[cell[:, None, None] + t.fp_occ[k]].any(-1)  # (n, R)
        alive &= clear.any(1)
        k = k[np.arange(len(live)), clear.argmax(1)][alive]                         # first draw that fits
        occ[pending[0][alive]] = 1                       # the previous paddle is no longer the latest
        near[pending[1][alive]] = 1
        live, cell = live[alive], cell[alive][:, None]
        pending = (cell + t.fp_occ[k], cell + t.fp_near[k])
        pivot, prev = pivot[alive] + t.step[k], k
        choices[live, step] = k
    occ[pending[0]] = 1
    near[pending[1]] = 1
    return live, choices


def _first_per_image(live: np.ndarray, per_image: int) -> dict[int, int]:
    """Image j -> its first (lowest) successful row, for rows laid out image-major, ``per_image`` each."""
    out: dict[int, int] = {}
    for row in live.tolist():
        out.setdefault(row // per_image, row)
    return out


def _replay(p: PathfinderParams, t: _Tables, tail: np.ndarray, degree: int, choices: np.ndarray) -> np.ndarray:
    """A contour's paddles (n, 2, 2) as (start, end) points, from its seed and its sequence of ring choices."""
    tail, k = np.asarray(tail, float), np.asarray(choices, int)
    steps = t.step[k]                                                               # (n - 1, 2)
    pivots = tail + t.seed_step[degree + 180] + np.cumsum(steps, 0) - steps        # pivot of each grown paddle
    seed = np.stack([tail, tail + p.paddle_length * t.seed_dirs[degree + 180]])[None]
    return np.concatenate([seed, np.stack([pivots + t.start[k], pivots + t.ring[k]], 1)])


def _grow_targets(p: PathfinderParams, margin: int, rngs: list[np.random.Generator]) -> list[tuple]:
    """Each image's two target contours and the occupancy they leave (grids with the frame and both contours).

    Rounds, for every image not yet done: ``A`` attempts at the first contour from a seed >= 2 seed_distance
    from the edges (the first that grows to full length wins; none: next round); then ``B`` attempts at the
    second from a seed ``seed_distance`` from the first's tail, in grids holding the whole first contour (the
    first that grows wins; none: the first contour is dropped too). Each attempt's random numbers come from one
    block of its image's generator, so an image's contours do not depend on the images grown beside it."""
    t, size, sd = _tables(p, margin), p.image_size, p.seed_distance
    reps, steps, cells = p.max_paddle_retrial + 1, p.contour_length - 1, t.width ** 2
    A, B = TARGET_BATCH.get(size, (32, 32))
    lo, hi = math.ceil(2 * sd), size - math.ceil(2 * sd)
    out: list[tuple | None] = [None] * len(rngs)
    todo = list(range(len(rngs)))
    for _ in range(MAX_TARGET_ROUNDS):
        u = np.concatenate([rngs[j].random((A, 3 + steps * reps)) for j in todo])  # (n, X)
        n = len(u)
        tail1 = lo + (u[:, :2] * (hi - lo)).astype(int)                              # (n, 2)
        deg1 = (u[:, 2] * 360).astype(int) - 180
        occ, near = np.zeros(n * cells, np.int8), np.zeros(n * cells, np.int8)
        seeded = np.flatnonzero(_seed_ok(t, tail1, deg1, p, margin))
        live, choices1 = _grow_rows(p, t, occ, near, seeded * cells, tail1[seeded], deg1[seeded],
                                    u[seeded, 3:].reshape(-1, steps, reps))
        firsts = {j: seeded[i] for j, i in _first_per_image(seeded[live], A).items()}  # image -> row
        firsts = {j: (row, choices1[np.searchsorted(seeded, row)]) for j, row in firsts.items()}
        # the second contour: B attempts per image that has a first one, in copies of that image's grids
        have = sorted(firsts)
        if have:
            u2 = np.concatenate([rngs[todo[j]].random((B, 2 * reps + steps * reps)) for j in have])
            rows1 = np.array([firsts[j][0] for j in have])
            grid1 = (rows1 * cells)[:, None] + np.arange(cells)                      # (h, W^2)
            occ2 = np.repeat(np.maximum(occ[grid1], t.frame_occ), B, axis=0).reshape(-1)
            near2 = np.repeat(np.maximum(near[grid1], t.frame_near), B, axis=0).reshape(-1)
            n2 = len(u2)
            t1 = np.repeat(tail1[rows1], B, axis=0)                                  # (n2, 2)
            angle = (u2[:, :reps] * 360).astype(int) * math.pi / 180                 # (n2, R)
            deg2 = (u2[:, reps:2 * reps] * 360).astype(int) - 180
            tail2 = np.rint(t1[:, None] + sd * np.stack([np.sin(angle), np.cos(angle)], -1)).astype(int)
            base2 = np.arange(n2) * cells
            cell2 = base2[:, None] + t.cells(np.clip(tail2, 0, size - 1))           # (n2, R); clipped ones fail
            fits = _seed_ok(t, tail2, deg2, p, margin) & ~occ2[cell2[..., None] + t.seed_occ[deg2 + 180]].any(-1)
            pick = fits.argmax(1)
            seeded2 = np.flatnonzero(fits.any(1))
            tail2, deg2 = tail2[seeded2, pick[seeded2]], deg2[seeded2, pick[seeded2]]
            live2, choices2 = _grow_rows(p, t, occ2, near2, base2[seeded2], tail2, deg2,
                                         u2[seeded2, 2 * reps:].reshape(-1, steps, reps))
            for h, i in _first_per_image(seeded2[live2], B).items():
                j, row1 = have[h], firsts[have[h]][0]
                k = np.searchsorted(seeded2, i)
                grid = slice(i * cells, (i + 1) * cells)
                out[todo[j]] = (_replay(p, t, tail1[row1], int(deg1[row1]), firsts[j][1]),
                                _replay(p, t, tail2[k], int(deg2[k]), choices2[k]),
                                (occ2[grid].copy(), near2[grid].copy()))
        todo = [j for j in todo if out[j] is None]
        if not todo:
            return out
    raise RuntimeError(f"pathfinder: no two target contours fit in {MAX_TARGET_ROUNDS} rounds with {p}")


def _grow_distractors(p: PathfinderParams, margin: int, occ: np.ndarray, near: np.ndarray,
                      rngs: list[np.random.Generator]) -> list[list[np.ndarray]]:
    """Each image's distractor contours, added to its grid in ``occ`` and ``near`` (``g`` flat grids stacked).

    ``n_distractors`` slots, each tried up to ``max_distractor_retrial + 1`` times and otherwise left out, as in
    snakes2; the images of the group advance together, each drawing from one block of its own generator."""
    t, size, reps = _tables(p, margin), p.image_size, p.max_paddle_retrial + 1
    g, tries, cells, b = len(rngs), p.max_distractor_retrial + 1, t.width ** 2, t.border
    width = reps + 2 * reps * TAIL_TRIES + (p.distractor_length - 1) * reps
    u = np.stack([r.random((p.n_distractors, tries, width)) for r in rngs])       # (g, D, tries, X)
    out: list[list[np.ndarray]] = [[] for _ in range(g)]
    for slot in range(p.n_distractors):
        todo = np.arange(g)
        for attempt in range(tries):
            free = (occ.reshape(g, t.width, t.width)[todo, b:b + size, b:b + size] == 0).sum((1, 2))
            rows = todo[free >= 0.01 * size * size]  # snakes2's stop_with_availability=0.01
            if not len(rows):
                break
            done, contours = _distractor_round(p, t, occ, near, rows, u[rows, slot, attempt])
            for j, contour in zip(done, contours):
                out[j].append(contour)
            todo = todo[~np.isin(todo, done)]
    return out


def _distractor_round(p: PathfinderParams, t: _Tables, occ: np.ndarray, near: np.ndarray, rows: np.ndarray,
                      u: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """One try at a distractor in each grid ``rows`` (u: (r, X) uniforms); returns the rows where it fitted (now
    in their grids) and the contours. Seed: ``R`` orientations x ``TAIL_TRIES`` pixels, the first that fits."""
    size, reps, steps, T = p.image_size, p.max_paddle_retrial + 1, p.distractor_length - 1, TAIL_TRIES
    r, base = len(rows), rows * t.width ** 2
    deg = np.repeat((u[:, :reps] * 360).astype(int) - 180, T, axis=1)             # (r, R T)
    tails = (u[:, reps:reps + 2 * reps * T] * size).astype(int).reshape(r, reps * T, 2)
    tcell = base[:, None] + t.cells(tails)                                          # (r, R T)
    fits = _seed_ok(t, tails, deg, p, t.margin) & ~(occ[tcell[..., None] + t.seed_occ[deg + 180]] > 0).any(-1)
    pick, ok = fits.argmax(1), fits.any(1)
    ar = np.arange(r)
    seed_tail, seed_deg = tails[ar, pick], deg[ar, pick]                           # (r, 2), (r,)
    tail, deg, cell = seed_tail[ok], seed_deg[ok], tcell[ar, pick][ok]
    live = ar[ok]                                                                   # round rows still growing
    pending = (cell[:, None] + t.seed_occ[deg + 180], cell[:, None] + t.seed_near[deg + 180])
    pivot, prev = tail + t.seed_step[deg + 180], len(t.ring) + deg + 180
    choices, added = np.zeros((r, steps), int), []
    draws = u[:, reps + 2 * reps * T:].reshape(r, steps, reps)
    for step in range(steps):
        cell = base[live] + t.cells(pivot)
        weight = t.weights[prev] * (near[cell[:, None] + t.head_cells] == 0)       # (n, K)
        alive = weight.sum(1) >= 1e-4
        weight[~alive] = 1.0
        k = _sample_rows(weight, draws[live, step])                                 # (n, R)
        clear = ~(occ[cell[:, None, None] + t.fp_occ[k]] > 0).any(-1)
        alive &= clear.any(1)
        k = k[np.arange(len(live)), clear.argmax(1)][alive]
        dead = live[~alive]
        for was, fo, fn in added if len(dead) else ():  # take the failed ones' paddles out again
            gone = np.isin(was, dead)
            occ[fo[gone]] -= 1
            near[fn[gone]] -= 1
        live, cell = live[alive], cell[alive]
        fo, fn = pending[0][alive], pending[1][alive]
        occ[fo] += 1
        near[fn] += 1
        added.append((live, fo, fn))
        pending = (cell[:, None] + t.fp_occ[k], cell[:, None] + t.fp_near[k])
        pivot, prev = pivot[alive] + t.step[k], k
        choices[live, step] = k
    occ[pending[0]] += 1
    near[pending[1]] += 1
    return rows[live], [_replay(p, t, seed_tail[i], int(seed_deg[i]), choices[i]) for i in live]


def sample_examples(p: PathfinderParams, data_seed: int, indices: list[int] | range) -> list[Example]:
    """The geometry of examples ``indices``, each drawn from ``np.random.default_rng([data_seed, index])`` alone
    (so the result for an index does not depend on the others; grouping them only shares numpy calls)."""
    rngs = [np.random.default_rng([data_seed, i]) for i in indices]
    margins = [int(p.paddle_margins[r.integers(len(p.paddle_margins))]) for r in rngs]
    targets: list[tuple | None] = [None] * len(rngs)
    for margin in sorted(set(margins)):
        group = [j for j, m in enumerate(margins) if m == margin]
        for j, result in zip(group, _grow_targets(p, margin, [rngs[j] for j in group])):
            targets[j] = result
    distractors: list[list[np.ndarray]] = [[] for _ in rngs]
    for margin in sorted(set(margins)):
        group = [j for j, m in enumerate(margins) if m == margin]
        occ = np.concatenate([targets[j][2][0] for j in group])                     # (g W^2,)
        near = np.concatenate([targets[j][2][1] for j in group])
        for j, found in zip(group, _grow_distractors(p, margin, occ, near, [rngs[j] for j in group])):
            distractors[j] = found
    out = []
    for index, rng, margin, (first, second, _), found in zip(indices, rngs, margins, targets, distractors):
        pair = (first, second)
        label, origin = index % 2, int(rng.integers(2))
        terminal = origin if label == 1 else 1 - origin
        markers = np.stack([pair[origin][0, 0], pair[terminal][-1, 1]])
        out.append(Example(label=label, margin=margin, targets=pair, distractors=found, markers=markers,
                           origin=origin, terminal=terminal))
    return out


def sample_example(p: PathfinderParams, data_seed: int, index: int) -> Example:
    """The geometry of example ``index``: drawn from ``np.random.default_rng([data_seed, index])``."""
    return sample_examples(p, data_seed, [index])[0]


def _draw(p: PathfinderParams, segments: list[np.ndarray], discs: np.ndarray | None = None) -> np.ndarray:
    """Anti-aliased strokes (or discs) drawn ``antialias_scale`` times finer, box-downsampled -> (S, S) in [0, 1]."""
    aa, size = p.antialias_scale, p.image_size
    canvas = Image.new("L", (size * aa, size * aa), 0)
    draw = ImageDraw.Draw(canvas)
    fine = lambda q: ((q[1] + 0.5) * aa - 0.5, (q[0] + 0.5) * aa - 0.5)  # (row, col) -> fine (x, y)
    width = max(1, round(p.paddle_thickness * aa))
    for paddles in segments:
        for start, end in paddles:
            draw.line([fine(start), fine(end)], fill=255, width=width)
    if discs is not None:
        r = p.marker_radius * aa
        for c in discs:
            x, y = fine(c)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    # Lanczos, as scipy.misc.imresize(interp='lanczos') did in snakes2; no renormalisation afterwards, so a stroke
    # narrower than a pixel (Pathfinder-32: half a pixel) stays dim, as it does there
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), np.float32) / 255


def render_layers(ex: Example, p: PathfinderParams) -> dict[str, np.ndarray]:
    """The three layers of an image, each (S, S) float32 in [0, 1]: targets, distractors, markers."""
    return {"targets": _draw(p, list(ex.targets)), "distractors": _draw(p, ex.distractors),
            "markers": _draw(p, [], discs=ex.markers)}


def render(ex: Example, p: PathfinderParams) -> np.ndarray:
    """The image, (S, S) uint8: contrast-weighted maximum of the layers, divided by its maximum."""
    layers = render_layers(ex, p)
    image = np.maximum(np.maximum(layers["targets"] * p.target_contrast, layers["distractors"] * p.distractor_contrast),
                       layers["markers"])
    return np.rint(255 * image / image.max()).astype(np.uint8)
