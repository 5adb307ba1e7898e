"""Hypothesis strategies and input builders, shared by every test module.

Inputs for finite-difference checks are built away from kinks and clamp edges by
construction: magnitudes are drawn from ``[KINK_MARGIN, MAX_MAGNITUDE]`` with a
random sign, so no value lies within ``KINK_MARGIN`` of 0 (the kink of ReLU, Leaky
ReLU, ELU and SELU), and every candidate's value stays far inside the default clamp
of 10 (``selu(6) = 6.3``).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from smartmixed_np.core.activations import DEFAULT_POOL

KINK_MARGIN = 0.05
MAX_MAGNITUDE = 6.0

seeds = st.integers(min_value=0, max_value=2**32 - 1)
batch_sizes = st.integers(min_value=1, max_value=4)
widths = st.integers(min_value=1, max_value=5)
taus = st.floats(min_value=0.2, max_value=2.0)
default_candidates = st.sampled_from(DEFAULT_POOL)
all_candidates = st.sampled_from(DEFAULT_POOL + ("gelu", "silu", "softplus", "identity"))


def away_from_kinks(rng: np.random.Generator, shape, low: float = KINK_MARGIN, high: float = MAX_MAGNITUDE) -> np.ndarray:
    """float64 values with ``low <= |x| <= high`` and a random sign."""
    magnitude = rng.uniform(low, high, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    return magnitude * sign


def beyond_clamp(rng: np.random.Generator, shape, clamp: float = 10.0) -> np.ndarray:
    """float64 values mixing the inside of the clamp and well beyond it, none near its edge or 0."""
    inside = away_from_kinks(rng, shape, KINK_MARGIN, 0.8 * clamp / 1.06)
    outside = rng.uniform(1.3 * clamp, 2 * clamp, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.where(rng.random(shape) < 0.5, inside, outside)


@st.composite
def layer_shapes(draw):
    """(B, N): a batch size and a layer width."""
    return draw(batch_sizes), draw(widths)


@st.composite
def network_sizes(draw, max_hidden: int = 3):
    """Layer widths [D, H_1, ..., H_L, C] of a small network, L >= 1."""
    hidden = draw(st.lists(st.integers(2, 6), min_size=1, max_size=max_hidden))
    return [draw(st.integers(2, 5))] + hidden + [draw(st.integers(2, 4))]


def nudge_biases_away_from_kinks(model, x, noise=None, margin: float = 1e-3, max_pre_activation: float = 9.0) -> None:
    """Shift hidden biases so that every pre-activation is at least ``margin`` from 0.

    Works layer by layer on the evaluation forward of ``model`` (float64): for each
    neuron, the smallest shift from a fixed ladder that clears all batch values of
    that neuron by ``margin`` is added to its bias. Raises if pre-activations come
    near the clamp, so a test can never pass by accident of being outside the
    region it claims to check.

    ``noise``: for a phase-1 network checked in training mode, the noise (by layer)
    that the checked forward passes will replay, so that the later layers see the
    same hidden values here as there.
    """
    from smartmixed_np.backend import to_host

    ladder = np.concatenate([[0.0], np.linspace(0.01, 0.5, 50)])
    h = x
    for i, (linear, act) in enumerate(zip(model.linears, model.activations)):
        z = to_host(h @ linear.W.T + linear.b)
        shifted = z[None, :, :] + ladder[:, None, None]  # (S, B, N)
        ok = np.all(np.abs(shifted) >= margin, axis=1)  # (S, N)
        if not np.all(ok.any(axis=0)):
            raise AssertionError("could not move pre-activations away from the kink")
        shift = ladder[np.argmax(ok, axis=0)]
        linear.b[...] = linear.b + model.backend.asarray(shift)
        z = z + shift
        if np.abs(z).max() > max_pre_activation:
            raise AssertionError(f"pre-activations reach {np.abs(z).max():.2f}, too close to the clamp")
        z_device = model.backend.asarray(z)
        if hasattr(act, "logits"):
            train = noise is not None
            h, _ = act.forward(z_device, train, noise=noise.get(i) if train else None)
        else:
            h, _ = act.forward(z_device)


def ulps(ours, reference, dtype=None) -> np.ndarray:
    """|ours - reference| in units in the last place of ``reference`` rounded to ``dtype`` (default:
    its own dtype), in float64: how far apart two results are, in the precision they were made in."""
    reference = np.asarray(reference)
    spacing = np.spacing(np.abs(reference.astype(dtype or reference.dtype))).astype(np.float64)
    return np.abs(np.asarray(ours).astype(np.float64) - reference.astype(np.float64)) / spacing
