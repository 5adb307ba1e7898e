"""Benchmark scripts; the suite itself lives in :mod:`smartmixed_np.experiments.bench`."""
