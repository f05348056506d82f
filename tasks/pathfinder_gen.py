"""Pathfinder / Path-X image generator: drewlinsley/pathfinder ``snakes2.py`` (commit ab9c130, the generator LRA
used) re-implemented step for step with LRA's settings, vectorised over attempts and images.

An image holds two *target contours* and up to ``n_distractors`` shorter *distractor contours*, each a chain of
short straight strokes ("paddles"); a marker disc sits on the start of one target contour and one on the far end
of the same (label 1) or the other (label 0) target contour. What follows is snakes2's algorithm as we
re-derived it (coordinates (row, col), pixel centres at integers; θ measured with the row as the sine part):

  * a paddle of length L, thickness w and margin m is drawn on its own canvas of ``2 R aa + 1`` pixels
    (R = L + ceil(w) + m, aa the antialias scale) from the centre to ``ceil(centre + L aa (sin θ, cos θ))``,
    aliased and ``round(w aa)`` wide, then Lanczos-resized to ``2R + 1`` pixels (uint8); its *margin mask* is
    the same stroke grey-dilated by a disc of radius ``m aa`` and resized the same way. Both are pasted with
    their centre on the paddle's integer anchor pixel and composited by maximum. The paddle and mask depend
    on θ alone, so they are tabulated once (360 whole-degree seed orientations and the K orientations a grown
    paddle can take);
  * ``mask`` (soft, 0..1; kept here as uint8 multiples of 1/255) starts with the ``padding`` border at 1;
  * target pair: the first seed takes θ uniform over whole degrees, then its tail uniform among the pixels
    where the margin mask's core (values exactly 1) of a paddle anchored one pixel down-right stays off the
    border and the ``2 seed_distance`` frame (no such pixel: the pair fails); head = ceil(tail + L u),
    pivot = ceil(head - (L + m) u); out-of-image head or pivot: new θ and tail, 3 tries. Quirk kept: where
    the kernel misses the image entirely from some pixel, cv2.dilate leaves -DBL_MAX there and snakes'
    ``find_available_coordinates`` then reports no free pixel at all (s:88-90), so only the orientations
    whose kernel reaches the image from every pixel can seed (30 of 360 at 32 px; for distractors too).
    The second seed lies ``round(tail1 + seed_distance (sin φ, cos φ))`` (φ whole degrees); only its head
    and pivot are checked.
    Then ``contour_length - 1`` steps grow the two contours alternately, one paddle each, on one shared mask;
    any failure restarts the pair from scratch (no limit). Afterwards only the second contour's last paddle
    enters the mask (the first's never does);
  * growing a paddle: new pivot Q = ceil(P + (L + 2m) (sin θ, cos θ)); candidate heads are the pixels
    ``floor(Q + (L+m) (sin a, cos a))`` for a = 0, 360/(2π(L+m)), ... degrees, inside the image, unique;
    weight ``(1 - dilate(mask, disc m)[head]) · max(cos(min(c Δ, π/2)), 0)^2`` (Δ the turn from θ; total
    < 1e-4: fail); up to 3 draws from the cumulative weights; a draw is kept if ``max(mask + margin mask) <
    1.8`` (the paddle is drawn from the head back toward Q); on success the *previous* paddle's margin mask
    enters the mask (so a paddle is never tested against its own predecessor);
  * distractors: ``n_distractors`` slots, each up to ``max_distractor_retrial + 1`` attempts, else skipped;
    an attempt fails if under 1% of the image has mask <= 0.3; its seed is as the first target seed but
    against the current mask (pixels > 0.3) and the image's outermost ring; ``distractor_length - 1``
    growth steps; a failed attempt leaves nothing; a complete one adds its last paddle's mask as well;
  * contrasts: target paddles snake x paddle contrast, distractor paddles the snake contrast (values stored
    as float32, as the reference's 'F' canvases); markers: a disc of radius r aa around the fine pixel
    (cy aa, cx aa) on a ``S aa`` canvas, byte-scaled to 0/255 and Lanczos-resized to S, one canvas per marker;
    the image is the maximum of everything, byte-scaled as ``scipy.misc.imsave`` did
    (``(x - min) 255 / (max - min) + 0.5``, truncated);
  * the label is drawn per image (not balanced), the origin contour too, independently of the geometry.

Implementation: the growth of all attempts of a group of images runs in the same numpy calls (flat uint8
grids, padded so windows need no clipping; the dilated mask is kept alongside, since dilation commutes with
the maximum). A distractor tail is drawn by rejection among uniform pixels (TAIL_TRIES), falling back to the
full list of free pixels: both give the uniform choice among free pixels, as the reference. Example i uses
``np.random.default_rng([data_seed, i, s])`` alone (s = 0 label/margin/origin, 1 targets, 2 distractors), so
images do not depend on how they are grouped or on the worker count.

Speed (hard, generation and rendering, measured on a 2-vCPU AMD EPYC shared with another job, so rough):
Pathfinder-32 ~400 images/s in one process, ~540/s with 2 processes (200,000 in ~6 min); Path-X ~37/s in one
process, ~52/s with 2 (200,000 in ~65 min). As in the reference, an image needs ~300 target-pair attempts on average
(heavy-tailed, at 32 and 128 px); at 32 px ~92% of them fail at the first seed (the quirk above).

What is not reproduced: the reference's random-number stream (numpy's global RandomState; bitwise equality is
impossible); tie-level float details (its scalar vs our vectorised sin/cos, summation order of the candidate
weights). Lanczos is the installed Pillow's (the reference ran a 2019 PIL). Choices where the sources leave
room: the distractor count follows the contour length (``budget // d``, as LRA's docstrings; the wrapper's
loop would keep the count of the first split), which matches the reference statistics at hard.

LRA settings, from the docstrings of ``lra_benchmarks/data/pathfinder.py`` (google-research/long-range-arena,
``Pathfinder32``, ``Pathfinder128``) over the snakes2 wrapper's defaults (paddle_length 5, max_paddle_retrial 2,
max_distractor_contour_retrial 4, paddle_contrast 1, use_single_paddles False):

    | size | paddle L | thickness | margins | continuity | seed dist | marker r | aa | pad | snake x paddle contrast | distractors |
    | 32   | 2        | 0.5       | 1       | 1.0        | 7         | 1.5      | 2  | 1   | 2 x 0.75                | 20 // d     |
    | 128  | 5 (dflt) | 1.5       | 2 or 3  | 1.8        | 20        | 3        | 2  | 1   | 0.9 x 1                 | 35 // d     |

(d = distractor length = contour_length // 3; contour length 6 / 9 / 14 for the release's curv_baseline /
curv_contour_length_9 / curv_contour_length_14.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tasks.pathfinder_draw import PaddleTables, paddle_tables, render, render_layers  # noqa: F401  (render: API)

__all__ = ["DIFFICULTIES", "FORMAT_VERSION", "TARGET_BATCH", "PathfinderParams", "Example", "lra_params",
           "sample_examples", "sample_example", "render_layers", "render"]

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}   # contour length (paddles per target contour)
FORMAT_VERSION = 4      # bump when the sampling or drawing changes (4: snakes2 step for step, per-paddle canvases)
TARGET_BATCH = {32: 48, 128: 24}   # per image size: target-pair attempts per image and round (speed only)
MAX_TARGET_ATTEMPTS = 200_000      # per image; the reference has no limit (it needs ~300-400 on average)
TAIL_TRIES = 16                    # uniform pixels tried per distractor seed before listing the free ones
_REJECT = 459                      # mask + margin mask >= 1.8, in 1/255 units (459 for float32 k/255 sums)
_OCCUPIED = 77                     # mask > 0.3, in 1/255 units


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
    """One image's geometry, in (row, col) pixel coordinates (pixel centres at integers).

    Contours as nominal segments (n, 2, 2): each paddle (end nearer the contour's origin, far end); a seed
    paddle runs from its tail, a grown one ends at its head. ``*_paddles``: per contour (n, 3) int rows
    (anchor row, anchor col, orientation table index) that ``render`` draws."""
    label: int
    margin: int
    targets: tuple[np.ndarray, np.ndarray]  # each (contour_length, 2, 2), origin tip first
    distractors: list[np.ndarray]           # each (distractor_length, 2, 2)
    markers: np.ndarray                     # (2, 2): origin marker centre, terminal marker centre
    origin: int                             # target contour whose start carries the origin marker
    terminal: int                           # target contour whose end carries the other (== origin iff label 1)
    target_paddles: tuple[np.ndarray, ...] = ()
    distractor_paddles: list[np.ndarray] = field(default_factory=list)
    target_attempts: int = 0                # two_snakes calls this image took (diagnostic)


def _inside(pt: np.ndarray, size: int) -> np.ndarray:
    return ((pt >= 0) & (pt < size)).all(-1)


def _seed_ends(p: PathfinderParams, t: PaddleTables, tail: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """head = ceil(tail + L u), pivot = ceil(head + (L + m) u_reversed) (s:419-426), for seed orientations o."""
    L, r = float(p.paddle_length), float(p.paddle_length + t.margin)
    hy = np.ceil(tail[..., 0] + L * t.sin[o]).astype(int)
    hx = np.ceil(tail[..., 1] + L * t.cos[o]).astype(int)
    py = np.ceil(hy + r * t.rev_sin[o]).astype(int)
    px = np.ceil(hx + r * t.rev_cos[o]).astype(int)
    return np.stack([hy, hx], -1), np.stack([py, px], -1)


def _stamp(t: PaddleTables, mask: np.ndarray, dmask: np.ndarray, base: np.ndarray, anchor: np.ndarray,
           o: np.ndarray) -> None:
    """mask = max(mask, margin mask of paddle (anchor, o)) (clipped to the image); dmask likewise, dilated."""
    local = t.cell(anchor[:, 0], anchor[:, 1])[:, None]
    cells = local + t.m_off[o]
    idx = base[:, None] + cells
    mask[idx] = np.maximum(mask[idx], t.m_val[o] * t.inimage[cells])
    idx = base[:, None] + local + t.dm_off[o]
    dmask[idx] = np.maximum(dmask[idx], t.dm_val[o])


def _extend(p: PathfinderParams, t: PaddleTables, mask: np.ndarray, dmask: np.ndarray, base: np.ndarray,
            pivot: np.ndarray, prev: np.ndarray, u: np.ndarray):
    """``extend_snake`` for n contours at once (s:235-301): ok (n,), new pivot (n, 2), ring choice (n,), head (n, 2).
    Does not change the grids; the caller stamps the previous paddle where ok."""
    S, B, Wd = t.size, t.B, t.W
    n = len(base)
    step = float(p.paddle_length + 2 * t.margin)
    qy = np.ceil(pivot[:, 0] + step * t.sin[prev]).astype(int)
    qx = np.ceil(pivot[:, 1] + step * t.cos[prev]).astype(int)
    cy, cx = qy[:, None] + t.ring[:, 0], qx[:, None] + t.ring[:, 1]                  # (n, K)
    valid = (cy >= 0) & (cy < S) & (cx >= 0) & (cx < S)
    local = np.where(valid, (cy + B) * Wd + cx + B, 0)
    pmf = t.inv[dmask[base[:, None] + local]] * t.weights[prev] * valid
    total = pmf.sum(1)
    ok = total >= 1e-4
    cmf = np.cumsum(pmf / np.where(ok, total, 1.0)[:, None], 1)
    hit = cmf[:, None, :] > u[:, :, None]                                             # (n, R, K)
    idx = np.where(hit.any(2), hit.argmax(2), valid.argmax(1)[:, None])              # (n, R)
    ar = np.arange(n)[:, None]
    hy, hx = cy[ar, idx], cx[ar, idx]
    hl = np.where(ok[:, None], (hy + B) * Wd + hx + B, B * Wd + B)
    o = t.n_seed + idx
    total_mask = mask[base[:, None, None] + hl[..., None] + t.m_off[o]].astype(np.int16) + t.m_val[o]
    good = (total_mask < _REJECT).all(2) & ok[:, None]
    j = good.argmax(1)
    ar = np.arange(n)
    return good.any(1), np.stack([qy, qx], 1), idx[ar, j], np.stack([hy[ar, j], hx[ar, j]], 1)


def _target_round(p: PathfinderParams, t: PaddleTables, u: np.ndarray):
    """``two_snakes`` for each row of u (n, X): the rows that succeeded, their paddles (k, 2, cl, 3) and grids."""
    S, reps, steps, sd = p.image_size, p.max_paddle_retrial + 1, p.contour_length - 1, p.seed_distance
    ar = np.arange(len(u))
    # first seed (s2:122-167): orientation, then a tail among the free pixels for it (none: the pair fails)
    o = (u[:, :reps] * 360).astype(int)
    nfree = t.nfree1[o]
    tail = t.free1[o, (u[:, reps:2 * reps] * nfree).astype(int)]                      # (n, reps, 2)
    head, piv = _seed_ends(p, t, tail, o)
    empty = nfree == 0
    decided = empty | (_inside(head, S) & _inside(piv, S))
    first = decided.argmax(1)
    ok = decided.any(1) & ~empty[ar, first]
    tail1, o1, piv1 = tail[ar, first], o[ar, first], piv[ar, first]
    # second seed (s2:180-205): seed_distance from the first's tail; only head and pivot are checked
    o2 = (u[:, 2 * reps:3 * reps] * 360).astype(int)
    angle = (u[:, 3 * reps:4 * reps] * 360).astype(int) * np.pi / 180
    tail2 = np.stack([np.round(tail1[:, :1] + sd * np.sin(angle)),
                      np.round(tail1[:, 1:] + sd * np.cos(angle))], -1).astype(int)    # (n, reps, 2)
    head2, piv2 = _seed_ends(p, t, tail2, o2)
    inb = _inside(head2, S) & _inside(piv2, S)
    second = inb.argmax(1)
    ok &= inb.any(1)
    tail2, o2, piv2 = tail2[ar, second], o2[ar, second], piv2[ar, second]
    rows = np.flatnonzero(ok)
    g, cells = len(rows), t.W ** 2
    mask, dmask = np.tile(t.mask0, g), np.tile(t.dmask0, g)
    base = np.arange(g) * cells
    pivot, prev = [piv1[rows], piv2[rows]], [o1[rows], o2[rows]]
    anchor = [tail1[rows], tail2[rows]]
    rec = np.zeros((g, 2, steps + 1, 3), int)
    for k in (0, 1):
        rec[:, k, 0, :2], rec[:, k, 0, 2] = anchor[k], prev[k]
    ue = u[rows, 4 * reps:].reshape(g, steps, 2, reps)
    live = np.arange(g)
    for step in range(steps):       # the two contours grow alternately, one paddle each (s2:65-86)
        for k in (0, 1):
            ok, q, kk, h = _extend(p, t, mask, dmask, base[live], pivot[k][live], prev[k][live], ue[live, step, k])
            live = live[ok]
            _stamp(t, mask, dmask, base[live], anchor[k][live], prev[k][live])
            pivot[k][live], prev[k][live], anchor[k][live] = q[ok], t.n_seed + kk[ok], h[ok]
            rec[live, k, step + 1, :2], rec[live, k, step + 1, 2] = h[ok], t.n_seed + kk[ok]
    _stamp(t, mask, dmask, base[live], anchor[1][live], prev[1][live])   # only the second's last paddle
    return rows[live], rec[live], mask.reshape(g, cells)[live], dmask.reshape(g, cells)[live]


def _grow_targets(p: PathfinderParams, t: PaddleTables, rngs: list[np.random.Generator]) -> list[tuple]:
    """Each image's two target contours (paddle rows) and grids: the first of its attempts that succeeds; the
    attempts are i.i.d. (a block of uniforms each, drawn in order), so this is the reference's restart loop."""
    reps, steps = p.max_paddle_retrial + 1, p.contour_length - 1
    A, X = TARGET_BATCH.get(p.image_size, 32), 4 * reps + 2 * steps * reps
    out: list[tuple | None] = [None] * len(rngs)
    todo, spent = list(range(len(rngs))), 0
    while todo:
        if spent >= MAX_TARGET_ATTEMPTS:
            raise RuntimeError(f"pathfinder: no two target contours in {MAX_TARGET_ATTEMPTS} attempts with {p}")
        u = np.concatenate([rngs[j].random((A, X)) for j in todo])
        rows, rec, mask, dmask = _target_round(p, t, u)
        for i, row in enumerate(rows):
            j = todo[row // A]
            if out[j] is None:
                out[j] = (rec[i, 0], rec[i, 1], mask[i].copy(), dmask[i].copy(), spent + row % A + 1)
        todo, spent = [j for j in todo if out[j] is None], spent + A
    return out


def _seed_free(t: PaddleTables, grids: np.ndarray, local: np.ndarray, o: np.ndarray) -> np.ndarray:
    """(r, T): pixel cells ``local`` free for a seed of orientation o (r,) in grids (r, W^2) (s:179-196)."""
    c = local[:, :, None] + t.core_off[o][:, None, :]                                  # (r, T, C)
    inimg = t.inimage[c]
    taken = grids[np.arange(len(o))[:, None, None], c] >= _OCCUPIED
    return inimg.any(2) & ~(taken & inimg).any(2) & ~t.blind[o][:, None]


def _distractor_try(p: PathfinderParams, t: PaddleTables, masks: np.ndarray, dmasks: np.ndarray, rows: np.ndarray,
                    u: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """One ``make_snake`` attempt in each image ``rows`` (u: (r, X)); the images where it succeeded (their grids
    updated) and the paddle rows of each new contour."""
    S, reps, steps, T = p.image_size, p.max_paddle_retrial + 1, p.distractor_length - 1, TAIL_TRIES
    n = len(rows)
    grids = masks[rows]
    undecided = (grids[:, t.image_cells] < _OCCUPIED).sum(1) >= 0.01 * S * S   # stop_with_availability
    ok = np.zeros(n, bool)
    tail, o_sel, piv = np.zeros((n, 2), int), np.zeros(n, int), np.zeros((n, 2), int)
    for j in range(reps):
        r = np.flatnonzero(undecided)
        if not len(r):
            break
        uj = u[r, j * (T + 2):(j + 1) * (T + 2)]
        o = (uj[:, 0] * 360).astype(int)
        blind = t.blind[o]                     # no pixel available at all: the attempt fails
        undecided[r[blind]] = False
        r, uj, o = r[~blind], uj[~blind], o[~blind]
        ty, tx = np.divmod((uj[:, 1:T + 1] * (S * S)).astype(int), S)                 # (r, T)
        free = _seed_free(t, grids[r], t.cell(ty, tx), o)
        has, first = free.any(1), free.argmax(1)
        cand = np.stack([ty[np.arange(len(r)), first], tx[np.arange(len(r)), first]], 1)
        miss = np.flatnonzero(~has)
        if len(miss):   # list every free pixel: none -> the attempt fails (s:194-196)
            full = _seed_free(t, grids[r[miss]], np.broadcast_to(t.image_cells, (len(miss), S * S)), o[miss])
            count = full.sum(1)
            pick = (uj[miss, T + 1] * count).astype(int)
            at = (np.cumsum(full, 1) > pick[:, None]).argmax(1)
            cand[miss] = np.stack(np.divmod(at, S), 1)
            empty = r[miss[count == 0]]
            undecided[empty] = False
            has[miss[count > 0]] = True
        r, o, cand = r[has], o[has], cand[has]
        head, pv = _seed_ends(p, t, cand, o)
        inb = _inside(head, S) & _inside(pv, S)
        r, o, cand, pv = r[inb], o[inb], cand[inb], pv[inb]
        ok[r], undecided[r] = True, False
        tail[r], o_sel[r], piv[r] = cand, o, pv
    s = np.flatnonzero(ok)
    cells = t.W ** 2
    gm, gd = grids[s].reshape(-1), dmasks[rows[s]].reshape(-1)
    base = np.arange(len(s)) * cells
    anchor, prev, pivot = tail[s], o_sel[s], piv[s]
    rec = np.zeros((len(s), steps + 1, 3), int)
    rec[:, 0, :2], rec[:, 0, 2] = anchor, prev
    ue = u[s, reps * (T + 2):].reshape(len(s), steps, reps)
    live = np.arange(len(s))
    for step in range(steps):
        good, q, kk, h = _extend(p, t, gm, gd, base[live], pivot[live], prev[live], ue[live, step])
        live = live[good]
        _stamp(t, gm, gd, base[live], anchor[live], prev[live])
        pivot[live], prev[live], anchor[live] = q[good], t.n_seed + kk[good], h[good]
        rec[live, step + 1, :2], rec[live, step + 1, 2] = h[good], t.n_seed + kk[good]
    _stamp(t, gm, gd, base[live], anchor[live], prev[live])
    done = rows[s[live]]
    masks[done] = gm.reshape(len(s), cells)[live]
    dmasks[done] = gd.reshape(len(s), cells)[live]
    return done, list(rec[live])


def _grow_distractors(p: PathfinderParams, t: PaddleTables, masks: np.ndarray, dmasks: np.ndarray,
                      rngs: list[np.random.Generator]) -> list[list[np.ndarray]]:
    """``make_many_snakes`` (s:39-84) for each image (grids (g, W^2), updated): its distractors' paddle rows."""
    g, tries = len(rngs), p.max_distractor_retrial + 1
    reps, steps = p.max_paddle_retrial + 1, p.distractor_length - 1
    u = np.stack([r.random((p.n_distractors, tries, reps * (TAIL_TRIES + 2) + steps * reps)) for r in rngs])
    out: list[list[np.ndarray]] = [[] for _ in range(g)]
    for slot in range(p.n_distractors):
        todo = np.arange(g)
        for attempt in range(tries):
            if not len(todo):
                break
            done, contours = _distractor_try(p, t, masks, dmasks, todo, u[todo, slot, attempt])
            for j, contour in zip(done.tolist(), contours):
                out[j].append(contour)
            todo = np.setdiff1d(todo, done)
    return out


def _segments(p: PathfinderParams, t: PaddleTables, paddles: np.ndarray) -> np.ndarray:
    """Paddle rows (n, 3) -> nominal segments (n, 2, 2): (end nearer the origin, far end)."""
    a, o = paddles[:, :2].astype(float), paddles[:, 2]
    other = a + p.paddle_length * np.stack([t.draw_sin[o], t.draw_cos[o]], 1)
    seed = o < t.n_seed
    return np.stack([np.where(seed[:, None], a, other), np.where(seed[:, None], other, a)], 1)


def sample_examples(p: PathfinderParams, data_seed: int, indices: list[int] | range) -> list[Example]:
    """The geometry of examples ``indices``, each drawn from ``np.random.default_rng([data_seed, index, s])``
    alone (so the result for an index does not depend on the others; grouping them only shares numpy calls)."""
    indices = list(indices)
    head = [np.random.default_rng([data_seed, i, 0]) for i in indices]
    labels = [int(r.integers(2)) for r in head]                                       # s2:259
    margins = [int(p.paddle_margins[r.integers(len(p.paddle_margins))]) for r in head]   # s2:263-269
    origins = [int(r.integers(2)) for r in head]                                      # s2:323
    targets: list = [None] * len(indices)
    distractors: list = [None] * len(indices)
    attempts = [0] * len(indices)
    for margin in sorted(set(margins)):
        t = paddle_tables(p, margin)
        group = [j for j, m in enumerate(margins) if m == margin]
        grown = _grow_targets(p, t, [np.random.default_rng([data_seed, indices[j], 1]) for j in group])
        masks = np.stack([x[2] for x in grown])
        dmasks = np.stack([x[3] for x in grown])
        found = _grow_distractors(p, t, masks, dmasks, [np.random.default_rng([data_seed, indices[j], 2])
                                                        for j in group])
        for j, x, f in zip(group, grown, found):
            targets[j], distractors[j], attempts[j] = (x[0], x[1]), f, x[4]
    out = []
    for j, (label, margin, origin) in enumerate(zip(labels, margins, origins)):
        t = paddle_tables(p, margin)
        terminal = origin if label == 1 else 1 - origin
        pair = targets[j]
        markers = np.stack([pair[origin][0, :2], pair[terminal][-1, :2]]).astype(float)  # s2:330-331
        out.append(Example(label=label, margin=margin, targets=tuple(_segments(p, t, c) for c in pair),
                           distractors=[_segments(p, t, c) for c in distractors[j]], markers=markers,
                           origin=origin, terminal=terminal, target_paddles=pair,
                           distractor_paddles=distractors[j], target_attempts=attempts[j]))
    return out


def sample_example(p: PathfinderParams, data_seed: int, index: int) -> Example:
    """The geometry of example ``index`` (see ``sample_examples``)."""
    return sample_examples(p, data_seed, [index])[0]
