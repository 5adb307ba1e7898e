# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Backpropagation by hand through a small MLP
#
# A network's backward pass is the chain rule applied layer by layer, from the
# loss back to the first weights. In this notebook you will write it out for a
# small MLP with the library's pure functions:
#
# * `linear_forward` / `linear_backward` for $z = x W^\top + b$,
# * an activation's `forward` / `derivative`,
# * `softmax_cross_entropy`, which returns the loss *and* its gradient,
#
# verify each step against finite differences (`check_vjp_per_coordinate`), compare the result
# with `MLP.backward`, take one update step, and see how a wrong gradient shows up
# in the relative error.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from smartmixed_np import MLP, get_activation, softmax_cross_entropy
from smartmixed_np.core.gradcheck import check_model_gradients, check_vjp_per_coordinate, numerical_vjp, relative_error
from smartmixed_np.core.linear import linear_backward, linear_forward

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
rng = np.random.default_rng(0)

# %% [markdown]
# ## The network
#
# Three inputs, two hidden layers of 5 and 4 neurons, three classes:
#
# $$x \xrightarrow{W_0, b_0} z_1 \xrightarrow{\tanh} h_1 \xrightarrow{W_1, b_1} z_2
# \xrightarrow{\mathrm{elu}} h_2 \xrightarrow{W_2, b_2} s \xrightarrow{\text{softmax CE}} L$$
#
# We let `MLP` create and initialise it (in float64, for the checks) and then take
# its weights out, so that our hand-written passes and the library's use the very
# same numbers. Weights are stored as PyTorch stores them, `W: (out, in)`.

# %%
B = 4
model = MLP([3, 5, 4, 3], ["tanh", "elu"], dtype="float64", seed=0)
x = rng.standard_normal((B, 3))
labels = np.array([0, 2, 1, 2])

params = model.parameters()
W0, b0 = params["layers.0.weight"], params["layers.0.bias"]
W1, b1 = params["layers.1.weight"], params["layers.1.bias"]
W2, b2 = params["layers.2.weight"], params["layers.2.bias"]
tanh, elu = get_activation("tanh"), get_activation("elu")
for name, p in params.items():
    print(f"{name:<16} {p.shape}")

# %% [markdown]
# ## Forward
#
# Each pure function returns its output and a *cache*: exactly what its backward
# will need (for a linear layer, its input `x` and `W`). Nothing is stored on an
# object, so re-running a cell can never leave a stale cache behind.

# %%
# forward
z1, cache1 = linear_forward(x, W0, b0)     # (B, 5)
h1 = tanh.forward(z1)                     # (B, 5)
z2, cache2 = linear_forward(h1, W1, b1)    # (B, 4)
h2 = elu.forward(z2)                      # (B, 4)
s, cache3 = linear_forward(h2, W2, b2)     # (B, 3) class scores (logits)
loss, ds = softmax_cross_entropy(s, labels)
print("loss:", float(loss))
print("same logits as MLP.forward:", np.array_equal(s, model.forward(x)))

# %% [markdown]
# ## Backward
#
# The loss gradient comes with the loss: for
# $L = -\frac1B \sum_b \log p_{b, y_b}$ with $p = \mathrm{softmax}(s)$,
#
# $$\frac{\partial L}{\partial s} = \frac{p - \mathrm{onehot}(y)}{B}.$$
#
# From there, every layer turns the gradient of its output into gradients of its
# input and parameters:
#
# * linear: $dx = dz\,W$, $dW = dz^\top x$, $db = \sum_b dz_b$;
# * activation: $dz = dh \odot f'(z)$ (elementwise: the Jacobian is diagonal).

# %%
# backward
dh2, dW2, db2 = linear_backward(ds, cache3)
dz2 = dh2 * elu.derivative(z2, h2)
dh1, dW1, db1 = linear_backward(dz2, cache2)
dz1 = dh1 * tanh.derivative(z1, h1)
_, dW0, db0 = linear_backward(dz1, cache1, need_dx=False)  # x is data: no dx needed
by_hand = {"layers.0.weight": dW0, "layers.0.bias": db0, "layers.1.weight": dW1,
           "layers.1.bias": db1, "layers.2.weight": dW2, "layers.2.bias": db2}
for name, g in by_hand.items():
    print(f"d{name:<16} {g.shape}  norm {np.linalg.norm(g):.4f}")

# %% [markdown]
# ## Verify each step on its own
#
# `check_vjp_per_coordinate(fn, inputs, vjp)` draws a random upstream gradient $u$ of the shape
# of `fn`'s output, asks `vjp(u)` for the analytic $J^\top u$ (one gradient per
# input), and compares it with central differences. Checking each operation
# separately tells you *which* one is wrong if anything is.

# %%
checks = {
    "softmax cross-entropy (ds)": check_vjp_per_coordinate(
        lambda s_: softmax_cross_entropy(s_, labels)[0], [s], lambda u: [u * ds]),
    "linear 3 (dh2, dW2, db2)": check_vjp_per_coordinate(
        lambda h, W, b: linear_forward(h, W, b)[0], [h2, W2, b2], lambda u: linear_backward(u, cache3)),
    "elu (dz2)": check_vjp_per_coordinate(elu.forward, [z2], lambda u: [u * elu.derivative(z2, h2)]),
    "linear 2 (dh1, dW1, db1)": check_vjp_per_coordinate(
        lambda h, W, b: linear_forward(h, W, b)[0], [h1, W1, b1], lambda u: linear_backward(u, cache2)),
    "tanh (dz1)": check_vjp_per_coordinate(tanh.forward, [z1], lambda u: [u * tanh.derivative(z1, h1)]),
}
for label, result in checks.items():
    print(f"{label:<28} max relative error {result.max_error:.1e}")


# %% [markdown]
# The loss has a scalar output, so its "upstream gradient" is a random scalar and
# the VJP is just `u * ds`. (`elu` sees $z_2$ here, which might contain a value
# close to its kink at 0; `elu` has a continuous derivative with $\alpha = 1$, so
# even that would be harmless.)
#
# ## Verify the whole chain
#
# Now the composition: the loss as a function of all six parameter arrays at once.
# The numerical side perturbs one weight at a time and recomputes the whole
# forward pass, so it knows nothing about our backward code.

# %%
def loss_of(W0_, b0_, W1_, b1_, W2_, b2_):
    h1_ = tanh.forward(linear_forward(x, W0_, b0_)[0])
    h2_ = elu.forward(linear_forward(h1_, W1_, b1_)[0])
    return softmax_cross_entropy(linear_forward(h2_, W2_, b2_)[0], labels)[0]

inputs = [W0, b0, W1, b1, W2, b2]
chain = check_vjp_per_coordinate(loss_of, inputs, lambda u: [u * g for g in by_hand.values()])
print(chain)

# %% [markdown]
# ## Compare with `MLP.backward`
#
# The library's `MLP` runs the same pure functions in the same order. Its
# `forward` records a tape of caches, `backward` consumes it and writes every
# gradient into `model.gradients()`, under the same names as the parameters.

# %%
logits = model.forward(x, train=True)
_, dlogits = softmax_cross_entropy(logits, labels)
model.backward(dlogits)
for name, g in model.gradients().items():
    print(f"{name:<16} relative error vs by hand: {relative_error(g, by_hand[name]):.1e}")

# %% [markdown]
# Identical (here to the last bit): the library runs the same computation. For a large network, checking every weight one by
# one is too slow (two forward passes per weight); `check_model_gradients` instead
# checks the gradient along one random direction $v$ over all parameters at once:
# $\frac{L(\theta + \epsilon v) - L(\theta - \epsilon v)}{2\epsilon} \approx \langle\nabla L, v\rangle$,
# two forward passes in total, whatever the size. It works on a private copy of
# the network; we hand it a freshly built one (same seed, so the same weights).

# %%
fresh = MLP([3, 5, 4, 3], ["tanh", "elu"], dtype="float64", seed=0)
print(check_model_gradients(fresh, x, labels))

# %% [markdown]
# ## Update
#
# The gradient is the direction of steepest ascent, so a small step against it
# lowers the loss: to first order by $\eta \lVert\nabla L\rVert^2$. Plain gradient
# descent on our hand-computed gradients:

# %%
# update: one step of gradient descent, on copies of the weights
lr = 0.1
stepped = [p - lr * g for p, g in zip(inputs, by_hand.values())]
predicted_drop = lr * sum(float(np.sum(g * g)) for g in by_hand.values())
new_loss = float(loss_of(*stepped))
print(f"loss {float(loss):.6f} -> {new_loss:.6f}: dropped by {float(loss) - new_loss:.6f}, "
      f"first-order prediction {predicted_drop:.6f}")


# %% [markdown]
# ## What a wrong gradient looks like
#
# Three classic slips in the backward pass, each checked against the whole chain
# as above. The relative error measures how much of the gradient *vector* is wrong,
# so a bug that touches every entry scores near 1, and one that touches a few
# entries scores less, but still orders of magnitude above the $10^{-6}$ threshold.

# %%
def backward_with(bug):
    ds_ = ds * B if bug == "loss gradient not divided by B" else ds
    dh2_, dW2_, db2_ = linear_backward(ds_, cache3)
    dz2_ = dh2_ if bug == "elu derivative left out" else dh2_ * elu.derivative(z2, h2)
    dh1_, dW1_, db1_ = linear_backward(dz2_, cache2)
    # tanh'(z) = 1 - tanh(z)^2 = 1 - h^2; passing z where h belongs is easy to do
    y_arg = z1 if bug == "tanh derivative at z instead of h" else h1
    dz1_ = dh1_ * tanh.derivative(z1, y_arg)
    _, dW0_, db0_ = linear_backward(dz1_, cache1, need_dx=False)
    return [dW0_, db0_, dW1_, db1_, dW2_, db2_]

bugs = ["loss gradient not divided by B", "elu derivative left out", "tanh derivative at z instead of h"]
print(f"{'relative error of':<34} " + "  ".join(f"{n:>5}" for n in ["dW0", "db0", "dW1", "db1", "dW2", "db2"]))
for bug in bugs:
    grads = backward_with(bug)
    result = check_vjp_per_coordinate(loss_of, inputs, lambda u: [u * g for g in grads], raise_on_failure=False)
    per_input = "  ".join(f"{result.errors[i]:.0e}" for i in range(len(inputs)))
    print(f"{bug:<34} {per_input}")

# %% [markdown]
# The per-input errors also point at the culprit: the missing `1/B` spoils every
# gradient equally ($\frac{B-1}{B+1} = 0.6$ for $B = 4$); the missing ELU derivative
# leaves the last layer's gradients intact but spoils everything below it; the tanh
# slip only affects the first layer.
#
# Numerical gradients themselves also carry a small error, $O(\epsilon^2)$ from
# truncation plus rounding. Compare one numerical VJP with the analytic one at
# several steps: the agreement is best for $\epsilon$ around $10^{-4}$ to $10^{-6}$,
# and the library uses $10^{-6}$.

# %%
u = np.array(1.0)
for eps in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10):
    numeric = numerical_vjp(loss_of, inputs, u, index=0, eps=eps)
    print(f"eps {eps:.0e}: relative error of dW0 {relative_error(dW0, numeric):.1e}")

# %% [markdown]
# **Summary.** Backpropagation is a sequence of small vector-Jacobian products,
# each of which can be checked on its own against finite differences and then as
# a chain. `MLP.backward` is the same sequence; a correct gradient agrees to about
# $10^{-10}$, a wrong one is off by $10^{-3}$ to $1$. The next notebook turns to
# the part of a SmartMixed network that is *not* differentiable: choosing an
# activation.
