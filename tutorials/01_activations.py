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
# # 1. The six candidate activations and their derivatives
#
# A SmartMixed network lets every hidden neuron choose its own activation from a
# pool of six candidates: ReLU, Sigmoid, Tanh, Leaky ReLU, ELU and SELU. Before
# anything is learned, each candidate needs two things: its value $f(x)$ for the
# forward pass and its derivative $f'(x)$ for the backward pass.
#
# In this notebook you will
#
# * plot the six candidates and their derivatives and see where they differ
#   (saturation, kinks, slopes);
# * estimate a derivative by **central finite differences**, and see how the step
#   $\epsilon$ trades truncation error against rounding error;
# * check every derivative of the library with `check_vjp_per_coordinate`, and learn what the
#   **relative error** it reports means, and what a wrong derivative looks like;
# * add a candidate of your own with `register_activation`, check its derivative,
#   and let a SmartMixed network choose it from an extended pool.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from smartmixed_np import DEFAULT_POOL, get_activation
from smartmixed_np.core.gradcheck import GradcheckError, check_vjp_per_coordinate, relative_error
from smartmixed_np.experiments.plots import ACTIVATION_COLORS

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
rng = np.random.default_rng(0)

# %% [markdown]
# ## The pool
#
# Every candidate is an `Activation` in a registry: a name, `forward(x)`,
# `derivative(x, y)` (with `y = forward(x)` passed in, because sigmoid and tanh
# are cheapest to differentiate through their output), a formula and the range
# its values are guaranteed to stay in. The default pool, in the order of the
# published code:

# %%
pool = [get_activation(name) for name in DEFAULT_POOL]
for act in pool:
    print(f"{act.name:<11} f(x) = {act.formula:<52} range {act.bounds}")

# %% [markdown]
# ## Values and derivatives
#
# The derivative is what the backward pass multiplies the upstream gradient by,
# so its shape decides how gradient flows through a neuron. Look for:
#
# * **saturation**: sigmoid and tanh have $f'(x) \to 0$ for large $|x|$, so a
#   neuron driven far from zero passes almost no gradient back;
# * **kinks** at $x = 0$: ReLU and Leaky ReLU jump from one slope to the other;
#   SELU jumps from $\lambda\alpha \approx 1.76$ to $\lambda \approx 1.05$;
#   ELU (with $\alpha = 1$) is the only one of the piecewise candidates whose
#   derivative is continuous there;
# * **negative side**: ReLU passes nothing for $x < 0$, Leaky ReLU a little
#   ($0.01$), ELU and SELU a smoothly decaying amount.

# %%
x = np.linspace(-4, 4, 801)
fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
for act in pool:
    y = act.forward(x)
    color = ACTIVATION_COLORS[act.name]
    ax_f.plot(x, y, color=color, label=act.name)
    ax_d.plot(x, act.derivative(x, y), color=color, label=act.name)
ax_f.set(title="value $f(x)$", xlabel="$x$", ylim=(-2.2, 4.2))
ax_d.set(title="derivative $f'(x)$", xlabel="$x$", ylim=(-0.1, 1.9))
for ax in (ax_f, ax_d):
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.grid(alpha=0.3)
ax_f.legend(loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Central differences, and how to choose the step
#
# Without calculus, a derivative can be estimated from two evaluations:
#
# $$f'(x) \approx \frac{f(x + \epsilon) - f(x - \epsilon)}{2\epsilon}.$$
#
# Taylor expansion shows the error of this *central* difference is
# $\frac{\epsilon^2}{6} f'''(x)$: it shrinks quadratically with $\epsilon$. But the
# two values of $f$ are rounded, each with an error of about
# $\epsilon_{\mathrm{mach}} |f(x)|$, and dividing their difference by $2\epsilon$
# blows that up as $\epsilon_{\mathrm{mach}} |f(x)| / \epsilon$. The total error
# is smallest in between. The plot measures it for $\tanh$ at $x = 0.7$ in both
# precisions.

# %%
tanh = get_activation("tanh")
x0 = 0.7
exact = 1 - np.tanh(x0) ** 2
steps = np.logspace(-12, -0.5, 80)
errors = {}
for dtype in (np.float64, np.float32):
    xd = dtype(x0)
    estimates = [
        (tanh.forward(np.array([xd + dtype(e)])) - tanh.forward(np.array([xd - dtype(e)])))[0] / (2 * dtype(e))
        for e in steps
    ]
    errors[dtype.__name__] = np.abs(np.array(estimates, dtype=np.float64) - exact) / exact

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, err in errors.items():
    ax.loglog(steps, np.maximum(err, 1e-17), marker=".", lw=1, label=name)
    best = steps[np.argmin(err)]
    print(f"{name}: smallest error {err.min():.1e} at eps = {best:.0e}")
ax.set(xlabel=r"step $\epsilon$", ylabel="relative error of $f'(0.7)$",
       title="central difference for tanh: truncation vs rounding")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()


# %% [markdown]
# On the right the error falls with slope 2 (truncation, $\epsilon^2$); on the
# left it rises with slope $-1$ (rounding, $1/\epsilon$). In float64 the best
# steps are around $10^{-5}$ to $10^{-6}$ and give ten or more correct digits; in
# float32 the best steps are near $10^{-2}$ to $10^{-3}$, where the error jumps about
# between $10^{-4}$ and $10^{-7}$ with the rounding. That is
# why every gradient check in this library runs in **float64** with
# $\epsilon = 10^{-6}$, and refuses float32 inputs.
#
# ## Checking a backward pass: `check_vjp_per_coordinate`
#
# A backward pass never forms a derivative on its own: it receives the upstream
# gradient $u$ = `dout` and returns $J^\top u$, a *vector-Jacobian product*. For an
# elementwise activation the Jacobian is diagonal, so that is
# `dx = dout * f'(x)`. `check_vjp_per_coordinate` checks exactly this product: it draws a random
# $u$, and compares the analytic $J^\top u$ with central differences of the scalar
# $\phi(x) = \langle u, f(x)\rangle$, one coordinate of $x$ at a time. Its sibling
# `check_vjp` makes the same comparison along one random direction of $x$ instead:
# two evaluations whatever the size of $x$, for large inputs, but it cannot say
# *which* entry is wrong. Here the inputs are small, so we check every coordinate.
#
# Inputs are kept away from the kinks *by construction*: magnitudes are drawn from
# $[0.1, 3]$ and given a random sign, so no finite difference straddles $x = 0$.

# %%
def away_from_zero(shape, low=0.1, high=3.0):
    # float64, |x| in [low, high]: central differences never cross a kink
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)

x = away_from_zero((6, 5))
for act in pool:
    result = check_vjp_per_coordinate(act.forward, [x], lambda dout, act=act: [dout * act.derivative(x, act.forward(x))])
    print(f"{act.name:<11} {result}   passed: {result.passed}")

# %% [markdown]
# ## What the relative error means
#
# `check_vjp_per_coordinate` reports, for analytic gradient $a$ and numeric estimate $n$,
#
# $$\mathrm{err}(a, n) = \frac{\lVert a - n\rVert}{\max(\lVert a\rVert + \lVert n\rVert,\ \mathrm{floor})}.$$
#
# Dividing by the sizes of the gradients makes the number scale-free: it reads as
# "the fraction of the gradient that disagrees", whether the gradient is
# $10^{-3}$ or $10^{3}$. It lies in $[0, 1]$ (1 means $a$ and $n$ have nothing in
# common, e.g. a sign flip or a zero gradient). The floor (set from the rounding
# noise of the differences themselves) keeps two gradients that are both
# essentially zero from being judged by noise.
#
# How to read it, in float64 with $\epsilon = 10^{-6}$:
#
# | error | meaning |
# | --- | --- |
# | $10^{-12}$ to $10^{-8}$ | correct: the leftover is finite-difference error |
# | around $10^{-6}$ (the threshold) | suspicious: a kink or clamp edge inside $[x-\epsilon, x+\epsilon]$, or a step that is too small |
# | $10^{-3}$ and above | wrong: a bug in the formula |
#
# Here is what real bugs look like. Each is a plausible slip:

# %%
sigmoid, selu = get_activation("sigmoid"), get_activation("selu")
buggy = {
    "sigmoid: f' = f (forgot the 1 - f)": (sigmoid, lambda x, y: y),
    "selu: forgot the scale lambda for x > 0": (selu, lambda x, y: np.where(x > 0, 1.0, selu.derivative(x, y))),
    "tanh: f' = 1 - x^2 (x instead of y)": (tanh, lambda x, y: 1 - x * x),
}
for label, (act, wrong) in buggy.items():
    result = check_vjp_per_coordinate(act.forward, [x], lambda dout: [dout * wrong(x, act.forward(x))], raise_on_failure=False)
    print(f"{label:<42} relative error {result.max_error:.2e}  passed: {result.passed}")

# %% [markdown]
# The SELU bug changes the derivative by only 5% on half of the inputs, yet its
# error is four orders of magnitude above the threshold: a finite-difference check
# is far more sensitive than eyeballing a plot. By default a failing check raises,
# so a test cannot forget to look at it:

# %%
try:
    check_vjp_per_coordinate(sigmoid.forward, [x], lambda dout: [dout * sigmoid.forward(x)])
except GradcheckError as err:
    print("GradcheckError:", err)

# %% [markdown]
# ## Why the inputs avoid the kinks
#
# At $x = 0$ a kinked function has no derivative; the library follows PyTorch's
# conventions (`relu'(0) = 0`, `leaky_relu'(0) = 0.01`, `elu'(0) = 1`). A central
# difference across the kink returns the *average* of the two one-sided slopes
# instead, so a check there would fail even though nothing is wrong:

# %%
eps = 1e-6
zero = np.zeros(1)
for act in pool:
    central = (act.forward(zero + eps) - act.forward(zero - eps))[0] / (2 * eps)
    print(f"{act.name:<11} convention f'(0) = {act.derivative(zero, act.forward(zero))[0]:.4f}"
          f"   central difference at 0 = {central:.4f}")

# %% [markdown]
# Only the three kinked candidates disagree, by exactly half the jump. The
# property tests of the library therefore draw inputs away from kinks (and from
# the clamp edges used in phase 1), as done above.
#
# ## A candidate of your own: `register_activation`
#
# The pool is not closed. Any elementwise function with a derivative can be
# registered under a name and then used wherever a built-in name is: in a pool,
# as a fixed activation, in the figures. As an example, **softsign**:
#
# $$f(x) = \frac{x}{1 + |x|}, \qquad f'(x) = \frac{1}{(1 + |x|)^2}.$$
#
# It saturates like tanh, but polynomially instead of exponentially, so its
# gradient dies off more slowly. The forward takes its array module from the
# input (`array_module(x)`), so that the same function runs on NumPy and, with
# CuPy, on the GPU (notebook 6).

# %%
from smartmixed_np import list_activations, register_activation
from smartmixed_np.backend import array_module

def softsign(x):
    xp = array_module(x)                 # NumPy or CuPy, wherever x lives
    return x / (1 + xp.abs(x))

def softsign_derivative(x, y):           # y = softsign(x) is passed in; not needed here
    xp = array_module(x)
    return 1 / (1 + xp.abs(x)) ** 2

# overwrite=True: re-running this cell replaces the registration instead of failing
softsign_act = register_activation("softsign", softsign, softsign_derivative,
                                   formula=r"$x / (1 + |x|)$", bounds=(-1.0, 1.0), overwrite=True)
print("registered:", softsign_act.name, "| all names:", ", ".join(list_activations()))

# %% [markdown]
# Before a network uses it, its derivative gets the same check as the built-ins
# (its first derivative is continuous, but check away from 0 anyway, where its
# second derivative jumps), and a deliberately wrong derivative shows what a
# slip would look like:

# %%
check = check_vjp_per_coordinate(softsign, [x], lambda dout: [dout * softsign_derivative(x, softsign(x))])
print("softsign:", check)
wrong = check_vjp_per_coordinate(softsign, [x], lambda dout: [dout / (1 + np.abs(x))], raise_on_failure=False)  # forgot the square
print(f"softsign with f' = 1/(1+|x|): relative error {wrong.max_error:.1e}, passed: {wrong.passed}")

# %% [markdown]
# ### Using it in a pool
#
# A pool is a list of names. Below, a small SmartMixed network chooses among the
# six defaults *and* softsign. First the whole network's gradient, softsign
# included, is checked against finite differences (`check_model_gradients`, in
# float64, with `hard=False`: the soft mixture is differentiable, while the hard
# selection would need the surrogate of notebook 3). Then it trains for a few
# epochs on the `spirals` data (notebook 4 explains the loop), and we count how
# many neurons picked each candidate.

# %%
from smartmixed_np import MLP, Adam, clip_grad_norm, softmax_cross_entropy
from smartmixed_np.data import load_dataset
from smartmixed_np.core.gradcheck import check_model_gradients

my_pool = list(DEFAULT_POOL) + ["softsign"]
small = MLP([2, 6, 5, 3], "smartmixed", pool=my_pool, hard=False, dtype="float64", seed=0)
xs, ys = rng.standard_normal((8, 2)), rng.integers(0, 3, size=8)
print("whole network, soft mixture:", check_model_gradients(small, xs, ys))

# %%
data = load_dataset("spirals", n_train=600 if QUICK else 2400)
net = MLP([2, 32, 32, 3], "smartmixed", pool=my_pool, tau=0.3, seed=0)
optimizer = Adam(net.parameters(), lr=1e-2)
shuffle = np.random.default_rng(0)
for epoch in range(1, (4 if QUICK else 30) + 1):
    for idx in np.array_split(shuffle.permutation(len(data.y_train)), len(data.y_train) // 64):
        logits = net.forward(data.x_train[idx], train=True)                 # forward (Gumbel noise)
        loss, dlogits = softmax_cross_entropy(logits, data.y_train[idx])
        net.backward(dlogits)                                              # backward
        clip_grad_norm(net.gradients(), 1.0)                               # update
        optimizer.step(net.gradients())
accuracy = float(np.mean(net.predict(data.x_val) == data.y_val))
print(f"after {epoch} epochs: validation accuracy {accuracy:.3f}")
for layer, shares in enumerate(net.choice_shares()):
    print(f"layer {layer + 1}:", ", ".join(f"{name} {share:.0%}" for name, share in shares.items()))

# %% [markdown]
# Softsign is now one candidate among seven: whether neurons keep it is decided by
# the loss, like for the others. The registration lives in this Python process
# only; to train with it from the command line, put the two functions and the
# `register_activation` call in a module of your own and name that module with
# `--import` (the README shows how).
#
# **Summary.** Each candidate is a value and a derivative; the derivative is
# checked in vector-Jacobian form against central differences in float64; a
# relative error near $10^{-10}$ means correct, and anything above about
# $10^{-6}$ means look again. A candidate of your own is registered with
# `register_activation`, checked the same way, and then used by name. The next
# notebook applies the same check to a whole network, layer by layer.
