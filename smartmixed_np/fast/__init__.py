"""The fast paths: code that stands in for a piece of :mod:`smartmixed_np.core`, and
computes the same numbers (bitwise, where the docstrings say so; the tests prove it).

* :mod:`~smartmixed_np.fast.kernels`: fused, in-place NumPy/CuPy kernels, one
  forward and one backward per built-in activation, side by side;
* :mod:`~smartmixed_np.fast.phase1`, :mod:`~smartmixed_np.fast.phase2`: the phase-1
  and phase-2 passes built from those kernels, feature-major;
* :mod:`~smartmixed_np.fast.compiled`: optional Numba loops (Adam in one pass, a
  phase-2 layer's groups in one pass, the selected candidate's derivative);
* :mod:`~smartmixed_np.fast.cuda`: optional CuPy kernels, off by default
  (``SMARTMIXED_CUDA_KERNELS=1``): a phase-2 layer and a phase-1 pass in one or two launches,
  Adam in one per parameter, each self-checked against the reference on first use;
* :mod:`~smartmixed_np.fast.workspace`: reusable buffers per batch size.

Nothing here chooses when it runs: :mod:`smartmixed_np.nn.engines` does, once per layer.
"""
