"""Shared fixtures: the backends every core test runs under, and hypothesis profiles.

``backend`` is parametrised over the names in ``SMARTMIXED_TEST_BACKENDS``
(comma-separated; default ``numpy,strict``). ``strict`` is the CuPy-like test backend
of ``tests/strict_backend.py``; on a machine with a GPU, set
``SMARTMIXED_TEST_BACKENDS=numpy,cupy`` (or ``numpy,strict,cupy``) to run the same
tests under real CuPy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import host_kernels
from smartmixed_np.backend import get_backend, register_backend
from strict_backend import STRICT_BACKEND

register_backend(STRICT_BACKEND)
if host_kernels.COMPILER is not None:  # "host-kernels": a GPU stand-in whose CUDA kernels run compiled on the CPU
    host_kernels.host_device_backend()

settings.register_profile(
    "default", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.register_profile("thorough", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

TEST_BACKENDS = [name.strip() for name in os.environ.get("SMARTMIXED_TEST_BACKENDS", "numpy,strict").split(",") if name.strip()]


@pytest.fixture(scope="session", params=TEST_BACKENDS)
def backend(request):
    """Each backend the core tests run under (numpy, the strict device mock, cupy)."""
    return get_backend(request.param)


@pytest.fixture(scope="session")
def host_rng():
    """A session-wide host generator for tests that need arbitrary data (seeded)."""
    return np.random.default_rng(1234)


_CHECKOUT = Path(__file__).resolve().parent.parent
#: What the test run itself may add to the checkout (caches, build metadata).
_ALLOWED_NEW = {".pytest_cache", ".hypothesis", "__pycache__"}


@pytest.fixture(scope="session", autouse=True)
def _tests_write_only_under_their_temporary_folders():
    """Fail the session if a test left files in the checkout (e.g. a ``runs/`` folder).

    Tests write under ``tmp_path``; a command that writes into the working directory
    by default (``smartmixed train`` without ``--out``) must be run from ``tmp_path``.
    """
    before = {p.name for p in _CHECKOUT.iterdir()}
    yield
    left = sorted({p.name for p in _CHECKOUT.iterdir()} - before - _ALLOWED_NEW)
    assert not left, f"tests left {left} in the checkout {_CHECKOUT}: write under tmp_path"
