"""The network: layers, engines, the MLP, the optimizers a program uses, the training step.

* :mod:`~smartmixed_np.nn.layers`: :class:`SmartMixedActivation` (phase 1) and
  :class:`FixedMixedActivation` (phase 2), thin objects over an engine;
* :mod:`~smartmixed_np.nn.engines`: the one place that chooses, per layer and at
  construction, between the reference and a fast path;
* :mod:`~smartmixed_np.nn.mlp`: the :class:`MLP` container and its backward pass;
* :mod:`~smartmixed_np.nn.optim`: Adam with its compiled update when available, and the clip
  factor with its CUDA kernels where they apply;
* :mod:`~smartmixed_np.nn.losses`: the losses, the cross-entropy with its CUDA kernels where they apply;
* :mod:`~smartmixed_np.nn.step`: :func:`train_step`.
"""
