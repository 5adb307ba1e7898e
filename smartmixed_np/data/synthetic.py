"""Synthetic datasets, generated offline and deterministically from a seed.

* :func:`make_spirals`: 2-D points on interleaved spiral arms, one arm per class. Not
  linearly separable; a small MLP separates it, which makes it a quick end-to-end check
  that an adaptive-activation network learns anything at all.
* :func:`make_synth_digits`: 28x28 grey images of ten procedurally drawn glyphs (shapes
  that resemble the digits 0-9), each randomly shifted, scaled, rotated, deformed, drawn
  with a random pen width and ink, and overlaid with noise. Same layout as MNIST
  (``(n, 784)`` floats in [0, 1]), so any code path that takes MNIST can be run on a
  machine that has no data at all.

How a glyph image is drawn. Each glyph is a few strokes (line segments and circular
arcs) in a glyph frame where the glyph spans about [-0.5, 0.5] x [-0.9, 0.9]. For every
sample, the pixel centres are mapped into that frame by the inverse of the sample's
similarity transform (shift, rotation, uniform scale); the distance from each pixel
centre to the nearest stroke, times the scale, is then a distance in pixels, and the
pixel's ink is

    ink * clip(0.5 + width / 2 - distance, 0, 1),

a one-pixel linear ramp at the stroke's edge: a cheap anti-aliasing that approximates
the fraction of the pixel the pen covers. A uniform scale keeps distances in the two
frames proportional, which is why there is no shear. Everything is computed on
``(samples, pixels)`` arrays, class by class; there is no loop over samples or pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_spirals", "make_synth_digits", "GLYPHS"]

# A stroke is ("line", x0, y0, x1, y1), or ("arc", cx, cy, radius, start_deg, end_deg)
# drawn counter-clockwise from start to end (0 deg points right, y points up).
GLYPHS: tuple[tuple[tuple, ...], ...] = (
    (  # 0: a stadium, two straight sides and two half circles
        ("line", -0.42, -0.38, -0.42, 0.38),
        ("line", 0.42, -0.38, 0.42, 0.38),
        ("arc", 0.0, 0.38, 0.42, 0.0, 180.0),
        ("arc", 0.0, -0.38, 0.42, 180.0, 360.0),
    ),
    (  # 1: a stem with a flag
        ("line", 0.05, -0.9, 0.05, 0.9),
        ("line", -0.3, 0.55, 0.05, 0.9),
    ),
    (  # 2: a hook, a diagonal, a base
        ("arc", 0.0, 0.45, 0.45, -40.0, 170.0),
        ("line", 0.345, 0.161, -0.45, -0.9),
        ("line", -0.45, -0.9, 0.5, -0.9),
    ),
    (  # 3: two open bowls, one above the other
        ("arc", 0.0, 0.45, 0.42, -90.0, 160.0),
        ("arc", 0.0, -0.43, 0.47, -160.0, 90.0),
    ),
    (  # 4: a stem, a diagonal and a cross bar
        ("line", 0.25, 0.9, 0.25, -0.9),
        ("line", 0.25, 0.9, -0.5, -0.3),
        ("line", -0.5, -0.3, 0.5, -0.3),
    ),
    (  # 5: a top bar, a short stem, an open bowl
        ("line", -0.33, 0.9, 0.45, 0.9),
        ("line", -0.33, 0.9, -0.3, 0.02),
        ("arc", 0.0, -0.4, 0.5, -150.0, 125.0),
    ),
    (  # 6: a closed bowl below and a curved back rising from it
        ("arc", 0.0, -0.45, 0.45, 0.0, 360.0),
        ("arc", 0.75, -0.45, 1.2, 105.0, 180.0),
    ),
    (  # 7: a top bar and a long diagonal
        ("line", -0.5, 0.9, 0.5, 0.9),
        ("line", 0.5, 0.9, -0.1, -0.9),
    ),
    (  # 8: two stacked circles
        ("arc", 0.0, 0.5, 0.38, 0.0, 360.0),
        ("arc", 0.0, -0.42, 0.48, 0.0, 360.0),
    ),
    (  # 9: a circle on a stem
        ("arc", 0.0, 0.45, 0.45, 0.0, 360.0),
        ("line", 0.45, 0.45, 0.3, -0.9),
    ),
)

# Random variation of synth-digits, in pixels unless said otherwise. Tuned so that a
# linear classifier is clearly worse than an MLP: with 12000 training and 4000 test
# images, softmax regression reaches about 82% test accuracy and a one-hidden-layer
# ReLU MLP (256 units) about 97.5%. The shift is the main knob: +-2.5 px gives a
# linear model about 86%, +-3 px about 77%.
_SCALE_RANGE = (7.5, 10.0)  # pixels per glyph unit: glyph height about 12.5-19 px
_ROTATION_DEG = 15.0  # uniform in +-this
_SHIFT = 2.75  # centre shift, uniform in +-this, per axis
_WIDTH_RANGE = (1.3, 3.2)  # pen width
_INK_RANGE = (0.6, 1.0)  # brightness of the strokes
_JITTER = 0.08  # std of stroke control point jitter, glyph units
_NOISE = 0.12  # std of additive Gaussian pixel noise
_CHUNK = 1024  # samples rendered at once: keeps the (chunk, 784) temporaries in cache


def make_spirals(
    n_per_class: int = 500, num_classes: int = 3, noise: float = 0.05, seed: int = 0, turns: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Points on interleaved spiral arms, one arm per class.

    Arm ``k`` starts at the origin and winds ``turns`` times outward to radius 1,
    rotated by ``2 pi k / num_classes`` from arm 0. A point sits at a uniformly random
    position along its arm, plus isotropic Gaussian noise of std ``noise``.

    Args:
        n_per_class: points per class.
        num_classes: number of arms (classes), at least 2.
        noise: std of the Gaussian noise added to each coordinate.
        seed: seed of the generator; the same seed gives the same arrays, bit for bit.
        turns: how many full turns each arm makes.

    Returns:
        ``(x, y)``: x float32 ``(n_per_class * num_classes, 2)``, roughly in [-1, 1];
        y int64 ``(n_per_class * num_classes,)``, classes interleaved
        (0, 1, ..., K-1, 0, 1, ...) so that every prefix is balanced.
    """
    _check_count("n_per_class", n_per_class)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    labels = np.tile(np.arange(num_classes, dtype=np.int64), n_per_class)
    return _spiral_points(labels, num_classes, noise, turns, np.random.default_rng(seed)), labels


def make_synth_digits(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images of ten procedurally drawn glyph classes, MNIST-like.

    See the module docstring for how they are drawn. Classes are balanced (counts
    differ by at most one) and in random order.

    Args:
        n: number of images.
        seed: seed of the generator; the same seed gives the same arrays, bit for bit.
        size: side of the square image in pixels; the random shift and scale ranges are
            in pixels tuned for 28, and are scaled by ``size / 28``.

    Returns:
        ``(x, y)``: x float32 ``(n, size * size)`` in [0, 1], images flattened row by
        row (row 0 at the top); y int64 ``(n,)`` in [0, 10).
    """
    _check_count("n", n, allow_zero=True)
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(GLYPHS))
    params = _draw_pose(rng, n, size)
    # Noise is drawn for all images at once, up front, so that the arrays do not depend
    # on the chunking below.
    pixel_noise = rng.standard_normal((n, size * size), dtype=np.float32)
    pixel_noise *= np.float32(_NOISE)

    images = np.empty((n, size * size), dtype=np.float32)
    px, py = _pixel_centres(size)
    for label, strokes in enumerate(GLYPHS):
        members = np.flatnonzero(labels == label)
        for start in range(0, members.size, _CHUNK):
            rows = members[start : start + _CHUNK]
            images[rows] = _render(strokes, {key: value[rows] for key, value in params.items()}, px, py)
    images += pixel_noise
    np.clip(images, 0.0, 1.0, out=images)
    return images, labels


def _spiral_points(labels: np.ndarray, num_classes: int, noise: float, turns: float, rng) -> np.ndarray:
    """Points ``(n, 2)`` float32 on the arms given by ``labels`` ``(n,)``."""
    t = rng.uniform(0.0, 1.0, size=labels.shape)
    # sqrt spreads points evenly over the arm's length, which grows with the radius;
    # the small floor keeps the arms from meeting in a single point at the origin.
    radius = 0.05 + 0.95 * np.sqrt(t)
    angle = 2 * np.pi * (labels / num_classes + turns * radius)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += noise * rng.standard_normal(points.shape)
    return points.astype(np.float32)


def _draw_pose(rng, n: int, size: int) -> dict[str, np.ndarray]:
    """Per-sample random pose and pen, each ``(n, 1)`` float32 (``jitter``: ``(n, S, 4)``)."""
    unit = size / 28.0

    def column(low, high):
        return rng.uniform(low, high, size=(n, 1)).astype(np.float32)

    max_strokes = max(len(strokes) for strokes in GLYPHS)
    return {
        "scale": column(*_SCALE_RANGE) * np.float32(unit),
        "angle": column(-np.deg2rad(_ROTATION_DEG), np.deg2rad(_ROTATION_DEG)),
        "shift_x": column(-_SHIFT, _SHIFT) * np.float32(unit),
        "shift_y": column(-_SHIFT, _SHIFT) * np.float32(unit),
        "width": column(*_WIDTH_RANGE) * np.float32(unit),
        "ink": column(*_INK_RANGE),
        "jitter": (_JITTER * rng.standard_normal((n, max_strokes, 4))).astype(np.float32),
    }


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(size * size,)`` x right and y up, origin at the image centre."""
    centre = (size - 1) / 2
    rows, cols = np.indices((size, size), dtype=np.float32).reshape(2, -1)
    return cols - np.float32(centre), np.float32(centre) - rows


def _render(strokes: tuple, pose: dict[str, np.ndarray], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Draw one glyph for a batch of poses: returns ``(m, P)`` float32 ink in [0, 1].

    ``pose`` values are ``(m, 1)`` (``jitter``: ``(m, S, 4)``); ``px, py`` are ``(P,)``.
    """
    cos, sin, scale = np.cos(pose["angle"]), np.sin(pose["angle"]), pose["scale"]
    # Inverse transform: pixel -> glyph frame (undo the shift, rotate back, unscale).
    dx = px - pose["shift_x"]
    dy = py - pose["shift_y"]
    gx = (cos * dx + sin * dy) / scale
    gy = (cos * dy - sin * dx) / scale

    distance = None
    for index, stroke in enumerate(strokes):
        jitter = pose["jitter"][:, index, :]  # (m, 4)
        if stroke[0] == "line":
            stroke_distance = _line_distance(gx, gy, np.asarray(stroke[1:], dtype=np.float32) + jitter)
        else:
            stroke_distance = _arc_distance(gx, gy, stroke[1:], jitter)
        distance = stroke_distance if distance is None else np.minimum(distance, stroke_distance)

    coverage = np.float32(0.5) + pose["width"] / 2 - distance * scale
    np.clip(coverage, 0.0, 1.0, out=coverage)
    return coverage * pose["ink"]


def _line_distance(gx: np.ndarray, gy: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distance ``(m, P)`` from points to segments; ``ends`` ``(m, 4)`` is x0, y0, x1, y1."""
    x0, y0, x1, y1 = (ends[:, i : i + 1] for i in range(4))
    vx, vy = x1 - x0, y1 - y0
    ex, ey = gx - x0, gy - y0
    # Position of the closest point along the segment, clamped to its ends.
    along = np.clip((ex * vx + ey * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(ex - along * vx, ey - along * vy)


def _arc_distance(gx: np.ndarray, gy: np.ndarray, arc: tuple, jitter: np.ndarray) -> np.ndarray:
    """Distance ``(m, P)`` from points to a circular arc whose centre and radius are jittered.

    ``arc`` is (cx, cy, radius, start_deg, end_deg); ``jitter`` ``(m, 4)`` adds to cx, cy,
    radius (its 4th column is unused).
    """
    cx0, cy0, radius0, start, end = arc
    cx = cx0 + jitter[:, 0:1]
    cy = cy0 + jitter[:, 1:2]
    radius = radius0 + 0.5 * jitter[:, 2:3]  # half: a radius changes the glyph faster than a shift
    ex, ey = gx - cx, gy - cy
    rho = np.hypot(ex, ey)
    to_circle = np.abs(rho - radius)
    half_span = np.deg2rad(end - start) / 2
    if half_span >= np.pi:
        return to_circle
    # A point is "beside" the arc when its direction from the centre is within
    # half_span of the arc's middle direction: cos(angle) >= cos(half_span), written
    # without dividing by rho (which is zero at the centre).
    middle = np.deg2rad(start) + half_span
    beside = ex * np.float32(np.cos(middle)) + ey * np.float32(np.sin(middle)) >= rho * np.float32(np.cos(half_span))
    # Elsewhere the nearest point of the arc is one of its two ends.
    to_ends = None
    for angle in (np.deg2rad(start), np.deg2rad(end)):
        end_x = cx + radius * np.float32(np.cos(angle))
        end_y = cy + radius * np.float32(np.sin(angle))
        to_end = np.hypot(gx - end_x, gy - end_y)
        to_ends = to_end if to_ends is None else np.minimum(to_ends, to_end)
    return np.where(beside, to_circle, to_ends)


def _check_count(name: str, value: int, allow_zero: bool = False) -> None:
    if int(value) != value or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
