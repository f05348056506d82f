"""Pathfinder generator, format 4 (snakes2 step for step): determinism, labels and markers, the per-paddle and
marker canvases against values measured with the reference, and image statistics against the reference's."""
from __future__ import annotations

import numpy as np
import pytest

from tasks import pathfinder_gen as gen
from tasks import pathfinder_draw as draw

P32, P128 = gen.lra_params(32, 14), gen.lra_params(128, 14)

# Reference data. drewlinsley/pathfinder snakes2.py @ ab9c130 with LRA's Pathfinder32 settings, hard
# (curv_contour_length_14): statistics of the generated images as given for the LRA release and reproduced by a
# Python 3 port of the reference (200 images each, seeds 0 and 2: mean pixel 20.26 / 19.97, >=1 0.343 / 0.338,
# >=64 0.126 / 0.125, median 5 / 5, distractors placed 1.25 / 1.07 of 5). Path-X hard (port, 20 images): mean
# pixel 7.9, >=1 0.137, >=64 0.041, median non-zero 4, 7.7 of 8 distractors placed.
REF_PF32_HARD = {"mean": 20.1, "frac_ge1": 0.34, "frac_ge64": 0.125, "median_nonzero": 5, "placed": (1.07, 1.25)}
REF_PATHX_HARD = {"mean": 7.9, "frac_ge1": 0.137, "frac_ge64": 0.041, "median_nonzero": 4, "placed": 7.7}
# one paddle and one marker as the reference draws them (port, same commit): Pathfinder-32 paddle at theta = 0
# (its centre row), Path-X (margin 2) paddle at theta = 0 (its three lit rows), Pathfinder-32 marker around (10, 10)
REF_PADDLE32_ROW = [2, 0, 102, 135, 116, 0]
REF_PADDLE128_ROWS = [[49, 65, 64, 64, 65, 56], [217, 255, 255, 255, 255, 249], [49, 65, 64, 64, 65, 56]]
REF_MARKER32 = [[228, 254, 133], [255, 255, 190], [132, 178, 55]]


@pytest.fixture(scope="module")
def hard32() -> tuple[list[gen.Example], np.ndarray]:
    examples = gen.sample_examples(P32, 0, range(400))
    return examples, np.stack([gen.render(ex, P32) for ex in examples])


def test_paddle_and_marker_canvases_equal_the_reference() -> None:
    t32 = draw.paddle_tables(P32, 1)
    assert t32.P[180][4, 2:8].tolist() == REF_PADDLE32_ROW      # orientation index 180 = 0 degrees
    t128 = draw.paddle_tables(P128, 2)
    assert t128.P[180][8:11, 9:15].tolist() == REF_PADDLE128_ROWS
    assert draw._draw_marker(P32, np.array([10.0, 10.0]))[9:12, 9:12].tolist() == REF_MARKER32
    # the margin mask's core (== 1) is the seed kernel: 1-4 pixels at 32; tails free for the first target seed
    assert 1 <= t32.core_n.min() and t32.core_n.max() <= 4
    assert set(t32.nfree1[~t32.blind].tolist()) <= set(range(4, 17)) and not t32.nfree1[t32.blind].any()


def test_deterministic_and_independent_of_grouping() -> None:
    a = gen.sample_examples(P32, 3, range(12))
    b = [gen.sample_example(P32, 3, i) for i in range(12)]
    c = gen.sample_examples(P32, 3, [7, 2, 11])
    for x, y in zip(a, b):
        assert np.array_equal(gen.render(x, P32), gen.render(y, P32)) and x.label == y.label
    for i, z in zip([7, 2, 11], c):
        assert np.array_equal(gen.render(z, P32), gen.render(a[i], P32))
    other = gen.sample_examples(P32, 4, range(12))
    assert not all(np.array_equal(gen.render(x, P32), gen.render(y, P32)) for x, y in zip(a, other))


@pytest.mark.parametrize("p,n", [(P32, 16), (gen.lra_params(32, 6), 8), (gen.lra_params(32, 9), 8), (P128, 3),
                                 (gen.lra_params(128, 6), 2)])
def test_shapes_labels_and_markers(p: gen.PathfinderParams, n: int) -> None:
    for ex in gen.sample_examples(p, 1, range(n)):
        image = gen.render(ex, p)
        assert image.shape == (p.image_size, p.image_size) and image.dtype == np.uint8 and image.max() == 255
        assert ex.label in (0, 1) and (ex.origin == ex.terminal) == (ex.label == 1)
        assert [len(c) for c in ex.target_paddles] == [p.contour_length] * 2
        assert all(len(c) == p.distractor_length for c in ex.distractor_paddles)
        # origin marker on the tail of the origin contour's seed paddle, the other on the head of the last paddle
        # of the same contour (label 1) or of the other one (label 0)
        assert np.array_equal(ex.markers[0], ex.target_paddles[ex.origin][0, :2])
        assert np.array_equal(ex.markers[1], ex.target_paddles[ex.terminal][-1, :2])


def test_labels_are_drawn_per_image(hard32) -> None:
    examples, _ = hard32
    labels = np.array([ex.label for ex in examples])
    assert 0.4 < labels.mean() < 0.6 and not np.array_equal(labels, np.arange(len(labels)) % 2)


def test_pathfinder32_hard_statistics_match_the_reference(hard32) -> None:
    examples, images = hard32
    x = images.astype(float)
    assert abs(x.mean() - REF_PF32_HARD["mean"]) < 1.5
    assert abs((x >= 1).mean() - REF_PF32_HARD["frac_ge1"]) < 0.02
    assert abs((x >= 64).mean() - REF_PF32_HARD["frac_ge64"]) < 0.01
    assert np.median(x[x > 0]) == REF_PF32_HARD["median_nonzero"]
    placed = np.mean([len(ex.distractors) for ex in examples])
    lo, hi = REF_PF32_HARD["placed"]
    assert lo - 0.2 < placed < hi + 0.2


def test_pathx_hard_statistics_match_the_reference() -> None:
    examples = gen.sample_examples(P128, 0, range(8))
    x = np.stack([gen.render(ex, P128) for ex in examples]).astype(float)
    assert abs(x.mean() - REF_PATHX_HARD["mean"]) < 1.5
    assert abs((x >= 1).mean() - REF_PATHX_HARD["frac_ge1"]) < 0.025
    assert abs((x >= 64).mean() - REF_PATHX_HARD["frac_ge64"]) < 0.01
    assert REF_PATHX_HARD["median_nonzero"] <= np.median(x[x > 0]) <= REF_PATHX_HARD["median_nonzero"] + 1  # 8 images
    assert np.mean([len(ex.distractors) for ex in examples]) > REF_PATHX_HARD["placed"] - 1.0
