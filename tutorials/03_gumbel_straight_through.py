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
# # 3. Gumbel-softmax and the straight-through gradient
#
# In phase 1 each hidden neuron owns selection logits $\alpha \in \mathbb{R}^K$,
# one per candidate activation, and *picks one candidate* at every training step.
# Picking is discrete, so it has no useful gradient. SmartMixed uses the hard
# Gumbel-softmax with a straight-through gradient to learn the logits anyway.
#
# In this notebook you will
#
# * sample with the **Gumbel-max trick** and check that the argmax frequencies
#   match $\mathrm{softmax}(\alpha)$;
# * see what the **temperature** $\tau$ does to the soft weights;
# * see why the hard forward pass has zero true gradient with respect to the logits,
#   and which function the **straight-through (ST) gradient** is the exact gradient
#   of (and verify it with `check_vjp_per_coordinate`);
# * **measure** the bias and the variance of the ST gradient as functions of $\tau$.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from smartmixed_np import DEFAULT_POOL
from smartmixed_np.core.activations import resolve_pool
from smartmixed_np.backend import SeededRNG, get_backend
from smartmixed_np.core.gradcheck import check_vjp_per_coordinate
from smartmixed_np.core.phase1 import candidate_outputs, gumbel_softmax_weights, mixture_backward, mixture_forward, softmax_backward, straight_through_surrogate
from smartmixed_np.experiments.plots import ACTIVATION_COLORS

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
pool = resolve_pool(DEFAULT_POOL)
K = len(pool)
cpu = get_backend("cpu")
colors = [ACTIVATION_COLORS[a.name] for a in pool]

# %% [markdown]
# ## The Gumbel-max trick
#
# If $g_1, \dots, g_K$ are independent standard Gumbel variables
# ($g = -\log(-\log u)$, $u \sim U(0,1)$), then
#
# $$\arg\max_k\,(\alpha_k + g_k) \;\sim\; \mathrm{Categorical}(p), \qquad p = \mathrm{softmax}(\alpha).$$
#
# So adding noise and taking the argmax *is* sampling from the softmax. The library
# draws all noise from seeded generators (`SeededRNG`), so a draw can be replayed.

# %%
logits = np.array([0.5, -0.3, 0.2, 0.0, 0.4, -0.1])   # one neuron's alpha
p = np.exp(logits) / np.exp(logits).sum()
draws = 20_000 if QUICK else 200_000
noise = SeededRNG(0).gumbel((draws, K), np.float64, cpu)
counts = np.bincount(np.argmax(logits + noise, axis=1), minlength=K)
freq = counts / draws
stderr = np.sqrt(p * (1 - p) / draws)
print("largest |frequency - p| in standard errors:", np.max(np.abs(freq - p) / stderr).round(2))

fig, ax = plt.subplots(figsize=(7, 3.5))
pos = np.arange(K)
ax.bar(pos - 0.2, p, 0.4, color=colors, alpha=0.4)
ax.bar(pos + 0.2, freq, 0.4, color=colors)
ax.set_xticks(pos, [a.name for a in pool])
ax.set(ylabel="probability", ylim=(0, 1.4 * p.max()),
       title=f"left (pale): softmax(alpha); right: argmax frequency over {draws:,} draws")
plt.show()

# %% [markdown]
# ## The temperature
#
# The soft Gumbel-softmax weights replace the argmax by a softmax at temperature
# $\tau$:
#
# $$y = \mathrm{softmax}\big((\alpha + g)/\tau\big).$$
#
# The argmax of $y$ does not depend on $\tau$ (dividing by $\tau > 0$ keeps the
# order), but its shape does: a small $\tau$ makes $y$ nearly one-hot, a large one
# spreads it out towards uniform. Below, one and the same noise draw at four
# temperatures, and the average largest weight over many draws.

# %%
one_draw = noise[:1]
taus_shown = [0.1, 0.3, 1.0, 3.0]
fig, axes = plt.subplots(1, len(taus_shown), figsize=(13, 2.8), sharey=True)
for ax, tau in zip(axes, taus_shown):
    y = gumbel_softmax_weights(logits[None, :], one_draw, tau)[0]
    ax.bar(range(K), y, color=colors)
    ax.set_xticks(range(K), [a.name for a in pool], rotation=60, fontsize=8)
    ax.set_title(f"tau = {tau}")
axes[0].set_ylabel("weight y")
plt.tight_layout()
plt.show()

tau_grid = np.logspace(-2, 1, 13)
sample = noise[:5000]
mean_max = [gumbel_softmax_weights(logits[None, :], sample, t).max(axis=1).mean() for t in tau_grid]
for t, m in zip(tau_grid[::3], mean_max[::3]):
    print(f"tau {t:6.2f}: mean largest weight {m:.3f}")

# %% [markdown]
# As $\tau \to 0$ the weights approach the one-hot argmax; as $\tau \to \infty$ they
# approach $1/K \approx 0.167$ each. SmartMixed uses $\tau = 0.3$ (the value the
# published code passes).
#
# ## The hard forward pass and its (useless) true gradient
#
# In hard mode the neuron's output is exactly the selected candidate,
# $\mathrm{out} = a_s(z)$ with $s = \arg\max_k y_k$ and $a_k = \mathrm{clamp}(f_k(z))$.
# For fixed noise, $s$ only changes when the logits cross a boundary, so the output
# is a **step function** of $\alpha$: its derivative is zero almost everywhere and
# undefined at the jumps. Gradient descent on the true gradient would never move
# the logits.
#
# The **straight-through** estimator uses the one-hot in the forward pass and
# pretends, in the backward pass, that the soft weights $y$ were used:
# $h = \mathrm{onehot}(s) - \mathrm{sg}(y) + y$ (sg = stop-gradient). This is the
# exact gradient of the **surrogate**
#
# $$S(\alpha) = \sum_k \big(y_k(\alpha) + C_k\big)\, a_k(z), \qquad C = \mathrm{onehot}(s) - y(\alpha_0) \text{ held fixed},$$
#
# which equals the hard output at the current point $\alpha_0$ and is smooth.
# The plot sweeps the logit of the runner-up candidate of one neuron (noise fixed):
# the hard output stays flat, then jumps when the runner-up overtakes the selected
# candidate; the surrogate passes through the hard output at $\alpha_0$, and the ST
# gradient is its slope there. It "sees" the jump coming, which is exactly the
# information the true gradient (zero) does not carry.

# %%
tau = 0.3
z = np.array([[-1.0]])                       # one sample, one neuron: candidates differ a lot here
alpha0 = logits[None, :].copy()
g = SeededRNG(8).gumbel((1, K), np.float64, cpu)   # one fixed noise draw
out0, cache0 = mixture_forward(z, alpha0, g, pool, tau=tau)
offset = np.eye(K)[cache0.selected] - cache0.weights   # C = onehot(s) - y, held fixed
_, dalpha = mixture_backward(np.ones_like(out0), cache0, pool)   # d out / d alpha (ST)
s, j = np.argsort(cache0.weights[0])[[-1, -2]]           # selected and runner-up
print(f"selected: {pool[s].name} (y = {cache0.weights[0, s]:.2f}), runner-up: {pool[j].name} "
      f"(y = {cache0.weights[0, j]:.2f}); ST gradient d out / d alpha_{pool[j].name} = {dalpha[0, j]:.3f}")

sweep = np.linspace(alpha0[0, j] - 1.5, alpha0[0, j] + 1.5, 601)
hard, surrogate = [], []
for value in sweep:
    a = alpha0.copy(); a[0, j] = value
    hard.append(mixture_forward(z, a, g, pool, tau=tau)[0][0, 0])
    surrogate.append(straight_through_surrogate(z, a, g, pool, tau=tau, offset=offset)[0, 0])

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(sweep, hard, lw=2.5, label="hard output $a_s(z)$ (the true function)")
ax.plot(sweep, surrogate, "--", label=r"surrogate $S(\alpha)$, C fixed at $\alpha_0$")
ax.plot(sweep, out0[0, 0] + dalpha[0, j] * (sweep - alpha0[0, j]), ":", color="k",
        label="slope = ST gradient")
ax.plot([alpha0[0, j]], [out0[0, 0]], "ko", label=r"current point $\alpha_0$")
ax.set(xlabel=f"logit of {pool[j].name} (the runner-up)", ylabel="neuron output",
       ylim=(-1.2, 0.5), title=f"one neuron, z = -1, tau = {tau}, noise fixed")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ## Verifying the straight-through gradient
#
# Because the ST gradient is the exact gradient of the surrogate, finite
# differences of the surrogate, with the noise and the offset $C$ held fixed, are
# the ground truth for `mixture_backward`. A layer of 5 neurons on a batch of 4,
# checked with respect to both $z$ and the logits (the $z$ values are kept away from
# the kinks at 0):

# %%
rng = np.random.default_rng(0)
zb = rng.choice([-1.0, 1.0], size=(4, 5)) * rng.uniform(0.1, 3.0, size=(4, 5))
alpha = rng.standard_normal((5, K))
gb = SeededRNG(1).gumbel((5, K), np.float64, cpu)        # shared noise: one draw per forward
out, cache = mixture_forward(zb, alpha, gb, pool, tau=tau)
C = np.eye(K)[cache.selected] - cache.weights

def surrogate(z_, alpha_):
    return straight_through_surrogate(z_, alpha_, gb, pool, tau=tau, offset=C)

print("surrogate == hard forward at the point:", np.allclose(surrogate(zb, alpha), out, rtol=0, atol=1e-12))
print("ST gradient vs surrogate:", check_vjp_per_coordinate(surrogate, [zb, alpha], lambda u: mixture_backward(u, cache, pool)))


# %% [markdown]
# And the same check against the hard forward itself fails, as it must: its finite
# differences with respect to the logits are exactly zero (no small step flips a
# selection), so the relative error is 1. With respect to $z$ the hard forward *is*
# differentiable (the selection does not depend on $z$), and that part passes.

# %%
def hard_forward(z_, alpha_):
    return mixture_forward(z_, alpha_, gb, pool, tau=tau)[0]

print(check_vjp_per_coordinate(hard_forward, [zb, alpha], lambda u: mixture_backward(u, cache, pool), raise_on_failure=False))

# %% [markdown]
# ## Bias and variance of the ST gradient, measured
#
# The ST gradient is a random variable (it depends on the noise). What it should
# estimate is the gradient of the **expected** output. Because
# $\arg\max_k(\alpha_k + g_k)$ is a sample from $\mathrm{Categorical}(p)$ with
# $p = \mathrm{softmax}(\alpha)$, that expectation has a closed form, for any loss
# $\ell$ of the neuron's output:
#
# $$\mathbb{E}_g[\ell] = \sum_k p_k\, \ell_k, \qquad
#   \frac{\partial\,\mathbb{E}_g[\ell]}{\partial\alpha} = p \odot \big(\ell - \langle p, \ell\rangle\big),$$
#
# where $\ell_k$ is the loss when candidate $k$ is selected. Note that it does not
# depend on $\tau$. We take one neuron with fixed inputs $z$ (a batch of 8 values)
# and fixed logits, and two losses of its output:
#
# * **linear**: $\ell = \langle u, \mathrm{out}\rangle$ for a fixed random $u$: the
#   gradient of the expected output $\mathbb{E}_g[\mathrm{out}] = \sum_k p_k a_k$,
#   contracted with $u$ (this is what one layer sees when the gradient arriving
#   from above does not depend on the choice);
# * **nonlinear**: $\ell = \sum_b e^{\mathrm{out}_b}$: now the upstream gradient
#   $e^{\mathrm{out}}$ depends on which candidate was picked, as it does in a real
#   network.
#
# First, the closed form itself is checked against finite differences:

# %%
z8 = np.linspace(-2, 2, 8)[:, None]                  # (B=8, N=1)
alpha1 = logits[None, :]                             # (N=1, K)
u = np.random.default_rng(1).standard_normal((8, 1))
a_k = candidate_outputs(z8, pool, 10.0)[:, :, 0]     # (K, B): every candidate's output
losses = {"linear": lambda out: np.sum(u * out, axis=0),   # per neuron column
          "nonlinear": lambda out: np.sum(np.exp(out), axis=0)}
upstream = {"linear": lambda out: np.broadcast_to(u, out.shape), "nonlinear": np.exp}

def expected_loss(alpha_, loss):
    p_ = np.exp(alpha_ - alpha_.max()) / np.exp(alpha_ - alpha_.max()).sum()
    return np.array([p_[0] @ loss(a_k.T)])            # sum_k p_k * loss_k

true_grad = {}
for name, loss in losses.items():
    l_k = loss(a_k.T)                                 # (K,): loss when k is selected
    true_grad[name] = (p * (l_k - p @ l_k))[None, :]
    print(name, check_vjp_per_coordinate(lambda a_: expected_loss(a_, loss), [alpha1], lambda w: [w * true_grad[name]]))


# %% [markdown]
# Now the ST gradient for many noise draws. A trick makes this one vectorised call
# of the library's own `mixture_forward`/`mixture_backward`: $M$ copies of the neuron
# side by side form a layer of width $M$, and the shared-noise mode gives each copy
# its own noise row, so `mixture_backward` returns $M$ independent ST gradients
# (one row of `dlogits` per copy). For each $\tau$ we report
#
# * the **relative bias** $\lVert\mathbb{E}[\hat g] - \nabla\rVert / \lVert\nabla\rVert$
#   (with its Monte-Carlo standard error), and
# * the **relative variance** $\mathbb{E}\lVert\hat g - \mathbb{E}\hat g\rVert^2 / \lVert\nabla\rVert^2$.

# %%
def st_gradients(tau, draws, loss_name, seed, chunk=20_000):
    noise_rng = SeededRNG(seed)
    rows = []
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        zz = np.repeat(z8, m, axis=1)                 # (8, m): m copies of the neuron
        out, cache = mixture_forward(zz, np.repeat(alpha1, m, axis=0),
                                     noise_rng.gumbel((m, K), np.float64, cpu), pool, tau=tau)
        _, dalpha = mixture_backward(upstream[loss_name](out), cache, pool)
        rows.append(dalpha)                           # (m, K): one ST gradient per draw
    return np.concatenate(rows)


# %%
taus = np.array([0.05, 0.1, 0.3, 1.0, 3.0]) if QUICK else np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0])
draws = 20_000 if QUICK else 200_000
stats = {}
for name in losses:
    ref = true_grad[name][0]
    rows = []
    for tau in taus:
        g_hat = st_gradients(tau, draws, name, seed=7)
        mean = g_hat.mean(axis=0)
        var = np.mean(np.sum((g_hat - mean) ** 2, axis=1))
        norm2 = np.sum(ref ** 2)
        cosine = mean @ ref / np.linalg.norm(mean) / np.sqrt(norm2)
        rows.append((np.linalg.norm(mean - ref) / np.sqrt(norm2), np.sqrt(var / draws / norm2), var / norm2, cosine))
    stats[name] = np.array(rows)
for name, table in stats.items():
    print(f"{name} loss, {draws:,} draws per tau")
    print(f"  {'tau':>5}  {'rel. bias':>9}  {'(s.e.)':>7}  {'rel. variance':>13}  {'cos(E[ST], true)':>16}")
    for tau, (bias, se, var, cosine) in zip(taus, table):
        print(f"  {tau:5.2f}  {bias:9.3f}  {se:7.3f}  {var:13.3f}  {cosine:16.4f}")

# %%
fig, (ax_b, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
for name, style in (("linear", "o-"), ("nonlinear", "s--")):
    bias, se, var, _ = stats[name].T
    ax_b.errorbar(taus, bias, yerr=2 * se, fmt=style, capsize=3, label=f"{name} loss")
    ax_v.loglog(taus, var, style, label=f"{name} loss")
ax_v.loglog(taus, 1 / taus, color="0.6", lw=1, label=r"$1/\tau$ (reference slope)")
for ax in (ax_b, ax_v):
    ax.axvline(0.3, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(r"temperature $\tau$ (dotted: 0.3, the default)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
ax_b.set(ylabel="relative bias (error bars: 2 s.e.)", title="bias of the ST gradient")
ax_v.set(ylabel="relative variance", title="variance of the ST gradient (one draw)")
plt.tight_layout()
plt.show()

# %% [markdown]
# What the measurement shows:
#
# * **Bias grows with $\tau$.** At large $\tau$ the soft weights are nearly uniform,
#   so the ST gradient $\mathrm{softmax\_backward}(\cdot, y)/\tau$ shrinks towards
#   zero and misses most of the true gradient (the relative bias tends to 1).
# * **For the linear loss the bias vanishes as $\tau \to 0$.** With an upstream
#   gradient that does not depend on the choice, $\mathbb{E}[\hat g]$ is exactly the
#   gradient of $\mathbb{E}_g[\langle u, \sum_k y_k a_k\rangle]$, the expected *soft*
#   output, and $\mathbb{E}[y] \to p$ as $\tau \to 0$. (The measured values at small
#   $\tau$ are about one standard error: the norm of a Monte-Carlo mean cannot come
#   out below its own noise.)
# * **For the nonlinear loss a bias remains at small $\tau$** (several percent here,
#   well outside the error bars): the upstream gradient is taken at the *selected*
#   candidate, a first-order guess at what the other candidates would give. No
#   temperature removes that.
# * **Variance grows like $1/\tau$** as $\tau \to 0$: the softmax becomes a near step
#   and its rare non-flat draws carry huge slopes.
#
# So $\tau$ trades bias against variance; around $\tau = 0.3$ both are moderate
# (a few percent of bias, a variance a few times the squared gradient for a single
# draw, averaged down over many steps). The ST gradient is not unbiased, but its
# expectation points almost exactly along the true gradient (the cosine column: the
# bias is mostly in the length, which a learning rate absorbs, not in the direction),
# so it is a useful direction to descend. The next notebook shows the logits
# learning with it.
