"""The reference core: every operation as plain array code that reads like its formula.

Each module holds ``forward(...) -> (out, cache)`` / ``backward(dout, cache)`` pairs
(or their plain equivalents), with the formula and the shapes in each docstring,
and imports nothing but :mod:`smartmixed_np.backend` and its neighbours here:

* :mod:`~smartmixed_np.core.activations`: the candidates, their derivatives, clamp limits, the registry;
* :mod:`~smartmixed_np.core.linear`: ``z = x W^T + b``;
* :mod:`~smartmixed_np.core.phase1`: the Gumbel-softmax selection and the straight-through mixture;
* :mod:`~smartmixed_np.core.estimators`: phase 1's other gradient estimators (ReinMax, Gumbel-Rao,
  the score function) and the exact gradient of the expected loss by enumeration;
* :mod:`~smartmixed_np.core.phase2`: one frozen activation per neuron, applied by groups;
* :mod:`~smartmixed_np.core.losses`: softmax cross-entropy;
* :mod:`~smartmixed_np.core.optim`: SGD, the reference Adam, gradient-norm clipping;
* :mod:`~smartmixed_np.core.gradcheck`: central finite differences.

The fast paths that stand in for parts of it live in :mod:`smartmixed_np.fast`.
"""
