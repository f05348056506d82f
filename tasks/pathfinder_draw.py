"""Drawing for the Pathfinder generator (tasks/pathfinder_gen.py): the image operations with the semantics of the
libraries snakes2 used (scipy<=1.2 ``bytescale`` / ``imresize``, ``cv2.dilate``), the per-orientation paddle and
margin-mask stamps every attempt is tested and drawn with (``PaddleTables``), and the rendering of a sampled example."""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from tasks.pathfinder_gen import Example, PathfinderParams

__all__ = ["PaddleTables", "paddle_tables", "render", "render_layers"]


# ---------------------------------------------------------------- scipy.misc / cv2 semantics


def _bytescale(a: np.ndarray) -> np.ndarray:
    """scipy<=1.2 ``bytescale``: uint8 unchanged; else (a - min) 255 / (max - min) (0 -> 1), + 0.5, truncated."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    cmin, cmax = a.min(), a.max()
    cscale = cmax - cmin
    scale = 255.0 / (cscale if cscale != 0 else 1)
    return (((a - cmin) * scale).clip(0, 255) + 0.5).astype(np.uint8)


def _resize(a: np.ndarray, n: int) -> np.ndarray:
    """scipy<=1.2 ``imresize(a, (n, n), interp='lanczos')``: byte-scaled, then PIL Lanczos; uint8."""
    return np.asarray(Image.fromarray(_bytescale(a), "L").resize((n, n), Image.Resampling.LANCZOS))


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _dilate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.dilate``: out[p] = max over kernel entries k != 0 of img[p + k - centre]; pixels outside ignored
    (a pixel with all of them outside gets -inf)."""
    h, w = img.shape
    c0, c1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    out = np.full(img.shape, -np.inf)
    for ky, kx in zip(*np.nonzero(kernel)):
        dy, dx = ky - c0, kx - c1
        if abs(dy) >= h or abs(dx) >= w:
            continue
        dst = out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        np.maximum(dst, img[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)], out=dst)
    return out


def _free_map(occupied: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pixels p with some p + o (o in offsets) inside the image and none of those occupied: where
    ``dilate(lined, kernel)`` is <= 0.3 for a 0/1 ``lined`` (cv2 semantics above)."""
    h, w = occupied.shape
    some, blocked = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for dy, dx in offsets:
        ys, xs = slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0))
        some[ys, xs] = True
        blocked[ys, xs] |= occupied[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
    return some & ~blocked


def _padded(rows: list[np.ndarray], fill_first: bool = True) -> np.ndarray:
    """Ragged 1-D arrays -> (n, max_len), each padded by repeating its first entry."""
    width = max(1, max(len(r) for r in rows))
    return np.stack([np.concatenate([r, np.full(width - len(r), r[0] if len(r) else 0, dtype=r.dtype)])
                     for r in rows])


def _ring_candidates(r: float, S: int) -> np.ndarray:
    """Candidate heads at radius ``r`` around an integer pivot (s:312-325), (K, 2) int offsets; integer offsets
    whatever the pivot (checked over pivots -3S..3S)."""
    angles = np.arange(0, 360, 360. / (2 * r * np.pi)) * np.pi / 180
    fy, fx = r * np.sin(angles), r * np.cos(angles)
    q = np.arange(-3 * S, 3 * S, dtype=float)[:, None]
    for f in (fy, fx):
        v = q + f[None]
        if not np.array_equal(v.astype(int)[v >= 0], (q + np.floor(f)[None])[v >= 0].astype(int)):
            raise AssertionError("ring candidates depend on the pivot")
    return np.unique(np.stack([np.floor(fy), np.floor(fx)], 1).astype(int), axis=0)


def _stamps(p: PathfinderParams, drawn: np.ndarray, R: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each orientation's paddle and margin mask, drawn on the antialias canvas and resized: (O, 2R+1, 2R+1) uint8."""
    L, aa = p.paddle_length, p.antialias_scale
    n, sb, cb, width = 2 * R + 1, 2 * R * aa + 1, R * aa, int(round(p.paddle_thickness * aa))
    large = _disk(m * aa).astype(np.uint8)
    paddles, masks = [], []
    for theta in drawn:
        head = (int(np.ceil(cb + float(L * aa) * np.sin(theta))), int(np.ceil(cb + float(L * aa) * np.cos(theta))))
        canvas = Image.new("F", (sb, sb), "black")
        ImageDraw.Draw(canvas).line([(cb, cb), (head[1], head[0])], fill="white", width=width)
        blown = np.array(canvas)
        paddles.append(_resize(blown, n))
        masks.append(_resize(_dilate(blown, large).astype(np.uint8), n))
    return np.stack(paddles), np.stack(masks)


def _frame(S: int, w: int) -> np.ndarray:
    """(S, S) bool: the ``w`` outermost rows and columns."""
    frame = np.zeros((S, S), bool)
    frame[:w] = frame[S - w:] = True
    frame[:, :w] = True
    frame[:, S - w:] = True
    return frame


def _support(arrays: np.ndarray, half: int, Wd: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero entries of (O, 2 half + 1, 2 half + 1) stamps as flat grid offsets from the centre and values."""
    offs, vals = [], []
    for a in arrays:
        jy, jx = np.nonzero(a)
        offs.append(((jy - half) * Wd + (jx - half)).astype(np.int64))
        vals.append(a[jy, jx])
    return _padded(offs), _padded(vals)


def _seed_cores(M: np.ndarray, L: float, m: int, R: int) -> list[np.ndarray]:
    """Seed free-space kernels (s:163-196, s2:112-145): the margin-mask core (== 255) of each seed orientation's
    paddle anchored at (L+m+1, L+m+1) on a (2(L+m)+1)^2 canvas, as (n, 2) offsets from the kernel centre."""
    ks, c0 = int(2 * (L + m) + 1), int(L + m)
    core = []
    for o in range(360):
        jy, jx = np.nonzero(M[o] == 255)
        ky, kx = c0 + 1 - R + jy, c0 + 1 - R + jx
        keep = (ky >= 0) & (ky < ks) & (kx >= 0) & (kx < ks)
        core.append(np.stack([ky[keep] - c0, kx[keep] - c0], 1))
    return core


class PaddleTables:
    """Everything that does not depend on where a paddle is, for one (params, margin).

    Orientation index o: 0..359 the seed orientations (degree o - 180), 360 + k the paddle grown toward ring
    candidate k. Grids: image pixel (r, c) is cell ``(r + B) W + c + B`` of a flat (W, W) uint8 grid."""

    def __init__(self, p: PathfinderParams, margin: int):
        S, L, m, aa, th = p.image_size, p.paddle_length, margin, p.antialias_scale, p.paddle_thickness
        if round(th * aa) != th * aa:
            raise ValueError("paddle thickness x antialias scale must be whole")
        if p.padding < 1:
            raise ValueError("padding must be >= 1 (the distractor seed test relies on the border)")
        self.margin, self.size = m, S
        self.R = R = int(L + math.ceil(th) + m)
        self.B = R + m + int(math.ceil(L)) + 3
        self.W = S + 2 * self.B
        drawn, onward, phi = self._orientations(L + m, S)
        self.P, self.M = _stamps(p, drawn, R, m)                                # (O, n, n) uint8
        disk_m = _disk(m)
        self.DM = np.stack([_dilate(np.pad(a, m).astype(float), disk_m).astype(np.uint8) for a in self.M])
        border = _frame(S, p.padding)
        self._grids(border, disk_m)
        self.m_off, self.m_val = _support(self.M, R, self.W)                   # (O, F) flat offsets, uint8
        self.dm_off, self.dm_val = _support(self.DM, R + m, self.W)
        self._seed_tables(_seed_cores(self.M, L, m, R), border | _frame(S, int(round(2 * p.seed_distance))))
        # continuity weights of the K candidates after orientation o (s:327-332)
        d = np.abs(phi[None, :] - onward[:, None])
        delta = np.minimum(np.minimum(d, 2 * np.pi - d) * p.continuity, 0.5 * np.pi)
        self.weights = np.maximum(np.cos(delta), 0) ** 2                        # (O, K)
        self.inv = 1 - (np.arange(256) / 255).astype(np.float32).astype(np.float64)

    def _orientations(self, r: int, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ring candidates and the sines / cosines of every orientation; returns (drawn, onward, phi) angles."""
        self.ring = ring = _ring_candidates(r, S)                               # (K, 2)
        self.K, self.n_seed = len(ring), 360
        phi = np.arctan2(ring[:, 0].astype(float), ring[:, 1].astype(float))
        seeds = np.arange(-180, 180) * np.pi / 180
        flipped = np.where(phi < 0, phi + np.pi, phi - np.pi)
        drawn = np.concatenate([seeds, flipped])            # orientation each paddle is drawn in
        onward = np.concatenate([seeds, phi])               # orientation the contour goes on in
        self.sin, self.cos = np.sin(onward), np.cos(onward)
        self.draw_sin, self.draw_cos = np.sin(drawn), np.cos(drawn)
        reverse = np.where(seeds + np.pi < np.pi, seeds + np.pi, seeds - np.pi)
        self.rev_sin, self.rev_cos = np.sin(reverse), np.cos(reverse)
        return drawn, onward, phi

    def _grids(self, border: np.ndarray, disk_m: np.ndarray) -> None:
        """The image cells of the flat (W, W) grid and the padding border's mask and dilated mask on it."""
        S, B, Wd = self.size, self.B, self.W
        inimage = np.zeros((Wd, Wd), bool)
        inimage[B:B + S, B:B + S] = True
        self.inimage = inimage.reshape(-1)
        self.image_cells = np.flatnonzero(self.inimage)                         # row-major
        mask0 = np.zeros((Wd, Wd), np.uint8)
        mask0[B:B + S, B:B + S] = 255 * border
        dmask0 = np.zeros((Wd, Wd), np.uint8)
        dmask0[B:B + S, B:B + S] = _dilate(255.0 * border, disk_m).astype(np.uint8)
        self.mask0, self.dmask0 = mask0.reshape(-1), dmask0.reshape(-1)

    def _seed_tables(self, core: list[np.ndarray], lined: np.ndarray) -> None:
        """Seed kernels as flat offsets and, per seed orientation, the pixels free of ``lined`` (the border and
        the seed-distance frame) where a seed may go."""
        S = self.size
        self.core_n = np.array([len(c) for c in core])
        self.core_off = _padded([(c[:, 0] * self.W + c[:, 1]).astype(np.int64) for c in core])   # (360, C)
        # cv2.dilate leaves -DBL_MAX where every kernel offset falls outside the image, and snakes'
        # find_available_coordinates returns *no* pixel at all when the map has a negative entry (s:88-90):
        # orientations whose kernel misses the image from some pixel ("blind") never seed
        self.blind = np.array([not _free_map(np.zeros((S, S), bool), c).all() for c in core])
        free1 = [np.argwhere(_free_map(lined, c)) if not b else np.zeros((0, 2), int) for c, b in zip(core, self.blind)]
        self.nfree1 = np.array([len(f) for f in free1])
        top = max(1, self.nfree1.max())
        self.free1 = np.stack([np.concatenate([f, np.zeros((top - len(f), 2), int)]) for f in free1])  # (360, F, 2)

    def cell(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (y + self.B) * self.W + x + self.B


@functools.lru_cache(maxsize=8)
def paddle_tables(p: PathfinderParams, margin: int) -> PaddleTables:
    return PaddleTables(p, margin)


def _draw_paddles(p: PathfinderParams, t: PaddleTables, contours) -> np.ndarray:
    """Maximum of the paddles' own canvases pasted at their anchors (clipped): (S, S) uint8."""
    S, R = p.image_size, t.R
    layer = np.zeros((S, S), np.uint8)
    for paddles in contours:
        for ay, ax, o in np.asarray(paddles).tolist():
            y0, y1, x0, x1 = max(ay - R, 0), min(ay + R, S - 1), max(ax - R, 0), min(ax + R, S - 1)
            if y0 > y1 or x0 > x1:
                continue
            dst = layer[y0:y1 + 1, x0:x1 + 1]
            np.maximum(dst, t.P[o][y0 - ay + R:y1 - ay + R + 1, x0 - ax + R:x1 - ax + R + 1], out=dst)
    return layer


def _draw_marker(p: PathfinderParams, centre: np.ndarray) -> np.ndarray:
    """``draw_circle`` (s2:224-230): a disc around fine pixel (cy aa, cx aa), resized to S: (S, S) uint8."""
    S, aa = p.image_size, p.antialias_scale
    cy, cx = int(centre[0]), int(centre[1])
    y, x = np.ogrid[-cy * aa:(S - cy) * aa, -cx * aa:(S - cx) * aa]
    fine = np.zeros((S * aa, S * aa))
    fine[x ** 2 + y ** 2 <= (p.marker_radius * aa) ** 2] = 1
    return _resize(fine, S)


def render_layers(ex: Example, p: PathfinderParams) -> dict[str, np.ndarray]:
    """The three layers of an image, each (S, S) float32 in [0, 1] before contrast: targets, distractors, markers."""
    t = paddle_tables(p, ex.margin)
    markers = np.maximum(_draw_marker(p, ex.markers[0]), _draw_marker(p, ex.markers[1]))
    return {"targets": _draw_paddles(p, t, ex.target_paddles).astype(np.float32) / 255,
            "distractors": _draw_paddles(p, t, ex.distractor_paddles).astype(np.float32) / 255,
            "markers": markers.astype(np.float32) / 255}


def _contrast(layer: np.ndarray, c: float) -> np.ndarray:
    v = layer.astype(float) / 255
    return (v * c if c != 1.0 else v).astype(np.float32)


def render(ex: Example, p: PathfinderParams) -> np.ndarray:
    """The image, (S, S) uint8: maximum of the contrast-scaled paddles and the markers, byte-scaled."""
    t = paddle_tables(p, ex.margin)
    image = np.maximum(_contrast(_draw_paddles(p, t, ex.target_paddles), p.target_contrast),
                       _contrast(_draw_paddles(p, t, ex.distractor_paddles), p.distractor_contrast))
    markers = np.maximum(_draw_marker(p, ex.markers[0]), _draw_marker(p, ex.markers[1])) / 255
    return _bytescale(np.maximum(image, markers))
