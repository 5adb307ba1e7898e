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
# # 8. How good is the straight-through gradient?
#
# Notebook 3 showed what the straight-through (ST) gradient is the exact gradient of:
# a surrogate that equals the hard forward at the current point. It is not the
# gradient that phase 1 *wants*. What training wants is the gradient of the
# **expected** loss over the random selections,
#
# $$g^\star = \nabla_\alpha\, \mathbb{E}_s[L(s)], \qquad
#   \mathbb{E}_s[L] = \sum_s p(s)\, L(s), \quad p(s) = \prod_n \pi_{n s_n}, \quad \pi_n = \mathrm{softmax}(\alpha_n).$$
#
# For a small network that sum can be computed exactly, by enumerating every joint
# selection $s$. In this notebook you will
#
# * compute $g^\star$ by enumeration and check it against finite differences of $\mathbb{E}_s[L]$;
# * take many draws of four estimators of it (`smartmixed_np.core.estimators`):
#   straight-through, **ReinMax** (Liu et al., 2023), **Gumbel-Rao** (Paulus et al., 2021)
#   and the **score function** with a baseline (Williams, 1992);
# * measure their bias, variance and cosine to $g^\star$ against the temperature $\tau$;
# * read the committed study (`results/estimators/`), which adds short MNIST runs:
#   does a better gradient in phase 1 give a better network after phase 2?
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import smartmixed_np
from smartmixed_np.backend import to_host
from smartmixed_np.core.estimators import ESTIMATORS, exact_expected_gradient, expected_loss, selection_losses
from smartmixed_np.core.losses import softmax_cross_entropy
from smartmixed_np.experiments.estimator_study import (
    ESTIMATOR_LABELS, ESTIMATOR_STYLES, SMALL_NETWORKS, estimator_draws, gradient_quality, small_network,
)

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
DRAWS = 300 if QUICK else 4000

# %% [markdown]
# ## A network small enough to enumerate
#
# The study's first network: 6 inputs, one hidden layer of 4 SmartMixed neurons over
# the six default candidates, 3 classes, float64, a fixed batch of 16 examples. Its
# selection logits are drawn away from uniform (at initialisation they are nearly
# equal, and the expectation has little shape). The hidden layer has $6^4 = 1296$
# joint selections: 1296 forward passes give the expected loss exactly.

# %%
spec = SMALL_NETWORKS[0]
model, x, labels = small_network(spec, seed=0)
logits = to_host(model.activations[0].logits)
pool = [a.name for a in model.pool]
print(f"network {spec.name}, candidates {pool}")
print("pi = softmax(alpha), one row per neuron:")
print(np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 3))

# %% [markdown]
# ## The exact gradient, by enumeration
#
# `selection_losses` evaluates the network with each given selection forced (its
# loss $L(s)$); with $p(s)$ the product of the chosen candidates' probabilities,
#
# $$\frac{\partial\, \mathbb{E}_s[L]}{\partial \alpha_{nk}} = \sum_s p(s)\, L(s)\, \big([s_n = k] - \pi_{nk}\big).$$
#
# We write that sum out here, then compare with the library's
# `exact_expected_gradient`, which does the same in chunks.

# %%
K, N = len(pool), logits.shape[0]
selections = np.array(list(np.ndindex(*(K,) * N)))              # (K^N, N): every joint selection
losses = selection_losses(model, x, labels, selections)          # (K^N,): L(s)
pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # (N, K)
p = np.prod(pi[np.arange(N), selections], axis=1)                # (K^N,): p(s)
onehot = np.eye(K)[selections]                                   # (K^N, N, K)
by_hand = np.einsum("s,snk->nk", p * losses, onehot - pi)
exact = exact_expected_gradient(model, x, labels)
g_star = exact.gradients["activations.0.logits"]
print(f"{len(selections)} selections, probabilities sum to {p.sum():.12f}")
print(f"E[L] = {p @ losses:.6f} (library: {exact.loss:.6f})")
print("largest |by hand - library|:", np.abs(by_hand - g_star).max())

# %% [markdown]
# And the truth is checked against central finite differences of $\mathbb{E}_s[L]$ in
# a few logits (each difference costs two more enumerations):

# %%
def expected_loss_at(alpha):
    moved = small_network(spec, seed=0)[0]
    moved.activations[0].logits[...] = alpha
    return expected_loss(moved, x, labels)

h = 1e-6
for n, k in [(0, 0), (1, 3), (3, 5)]:
    step = np.zeros_like(logits)
    step[n, k] = h
    numeric = (expected_loss_at(logits + step) - expected_loss_at(logits - step)) / (2 * h)
    print(f"d E[L] / d alpha[{n},{k}]: enumeration {g_star[n, k]: .8f}, central difference {numeric: .8f}")

# %% [markdown]
# Note that $g^\star$ does not depend on $\tau$: the Gumbel-max selection is drawn
# from $\mathrm{softmax}(\alpha)$ whatever the temperature. The estimators below do
# depend on it (all but the score function), through the soft weights of their backwards.
#
# ## One draw of each estimator
#
# A draw is one training forward (fresh Gumbel noise, a hard selection) and one
# backward; the network's `estimator` option picks how the backward turns the loss
# gradient of the mixture weights into a gradient of the logits. The score function
# needs the loss value itself, which `backward` takes as `loss=`.

# %%
for estimator in ESTIMATORS:
    net = small_network(spec, seed=0, estimator=estimator)[0]
    loss, dlogits = softmax_cross_entropy(net.forward(x, train=True), labels)   # forward
    net.backward(dlogits, loss=loss)                                            # backward
    g = to_host(net.gradients()["activations.0.logits"]).ravel()
    cosine = g @ g_star.ravel() / (np.linalg.norm(g) * np.linalg.norm(g_star))
    print(f"{ESTIMATOR_LABELS[estimator]:>16}: |g| / |g*| = {np.linalg.norm(g) / np.linalg.norm(g_star):6.2f}, "
          f"cosine to g* = {cosine:+.3f}")

# %% [markdown]
# One draw says little: each is a random variable. Over many draws at $\tau = 0.3$
# (the SmartMixed default), the mean of each estimator against $g^\star$, one point
# per logit (on the diagonal: unbiased):

# %%
samples = {}
for estimator in ESTIMATORS:
    net, x_, y_ = small_network(spec, seed=0, estimator=estimator, tau=0.3)
    samples[estimator] = estimator_draws(net, x_, y_, DRAWS)   # (DRAWS, N*K)

fig, axes = plt.subplots(1, len(ESTIMATORS), figsize=(14, 3.4), sharex=True, sharey=True)
limit = 1.6 * np.abs(g_star).max()
for ax, estimator in zip(axes, ESTIMATORS):
    mean = samples[estimator].mean(axis=0)
    se = samples[estimator].std(axis=0) / np.sqrt(DRAWS)
    color = ESTIMATOR_STYLES[estimator][0]
    ax.errorbar(g_star.ravel(), mean, yerr=2 * se, fmt="o", ms=3, color=color, elinewidth=0.8)
    ax.plot([-limit, limit], [-limit, limit], "k:", lw=1)
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), xlabel="exact g*", title=ESTIMATOR_LABELS[estimator])
axes[0].set_ylabel(f"mean of {DRAWS} draws (bars: 2 s.e.)")
fig.suptitle("tau = 0.3: each estimator's mean against the exact gradient", fontsize=10)
plt.tight_layout()
plt.show()

for estimator, draws in samples.items():
    q = gradient_quality(draws, g_star.ravel())
    print(f"{ESTIMATOR_LABELS[estimator]:>16}: bias {q['bias']:.3f} (floor {q['bias_floor']:.3f}), "
          f"variance {q['variance']:.3f}, cosine {q['cosine']:.3f}")

# %% [markdown]
# The measures (all relative to $\lVert g^\star \rVert$): **bias**
# $\lVert \bar g - g^\star \rVert / \lVert g^\star \rVert$ with $\bar g$ the mean of the
# draws; its **floor** $\sqrt{\mathrm{variance}/R}$ is what an unbiased estimator shows
# from $R$ draws, so a bias at the floor is noise; **variance** the mean squared
# deviation of a draw from $\bar g$; **cosine** the mean cosine of a draw to $g^\star$,
# the share of a step that goes the right way.
#
# ## Against the temperature

# %%
taus = (0.1, 0.3, 1.0) if QUICK else (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
quality = {estimator: [] for estimator in ESTIMATORS}
for estimator in ESTIMATORS:
    net, x_, y_ = small_network(spec, seed=0, estimator=estimator)
    for tau in taus:
        net.set_tau(tau)
        quality[estimator].append(gradient_quality(estimator_draws(net, x_, y_, DRAWS), g_star.ravel()))

fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for ax, (measure, title) in zip(axes, [("bias", "bias"), ("variance", "variance"), ("cosine", "mean cosine to g*")]):
    for estimator in ESTIMATORS:
        color, marker = ESTIMATOR_STYLES[estimator]
        ax.plot(taus, [q[measure] for q in quality[estimator]], marker=marker, color=color, label=ESTIMATOR_LABELS[estimator])
        if measure == "bias":
            ax.plot(taus, [q["bias_floor"] for q in quality[estimator]], ":", color=color, lw=1)
    ax.set_xscale("log")
    ax.set_xticks(taus, [f"{t:g}" for t in taus])
    ax.minorticks_off()
    if measure != "cosine":
        ax.set_yscale("log")
    ax.set(xlabel="tau", title=f"{spec.name}, seed 0: {title}")
    ax.grid(True, alpha=0.3)
axes[0].legend(fontsize=8, title="dotted: bias floor", title_fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The committed study
#
# `smartmixed study-estimators --out results/estimators` runs the same measurement
# on two networks (this one and 8-6-4-3) over three seeds, and trains MNIST networks
# with each estimator in phase 1 (then phase 2 as usual), three seeds each. Its
# report is `results/estimators/report.md`; here, its headline numbers.

# %%
committed = Path(smartmixed_np.__file__).resolve().parent.parent / "results" / "estimators" / "study.json"
if committed.is_file():
    study = json.loads(committed.read_text(encoding="utf-8"))
    print("command:", study["command"], "| seeds", study["seeds"])
    print(f"\n{'network':>8} {'estimator':>11} {'tau':>4} {'bias':>7} {'floor':>7} {'variance':>9} {'cosine':>7}")
    for row in study["small_networks"]["rows"]:
        if row["tau"] in (0.3, 1.0):
            print(f"{row['network']:>8} {row['estimator']:>11} {row['tau']:>4g} {row['bias']:7.3f} "
                  f"{row['bias_floor']:7.3f} {row['variance']:9.3f} {row['cosine']:7.3f}")
    if study["mnist"]:
        print("\nMNIST, test accuracy after phase 2 minus straight-through's (same seed), percentage points:")
        for entry in study["mnist"]["paired"]:
            d = entry["test_accuracy"]
            print(f"  {entry['estimator']:>10}: {100 * d['mean']:+.2f}, 95% interval "
                  f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], wins/ties/losses {d['wins']}/{d['ties']}/{d['losses']}")
    print("\nanswer:", study["answer"])
else:
    print("The committed study is not beside this installation: run `smartmixed study-estimators --out DIR`.")

# %% [markdown]
# ## Takeaway
#
# * **Straight-through is biased, but only a little at small $\tau$.** At the SmartMixed
#   default $\tau = 0.3$ its bias is 6-8% of $\lVert g^\star \rVert$ in the committed study;
#   it grows with $\tau$ (about 50% at $\tau = 2$) while its variance falls. Its draws
#   point the right way on average (mean cosine about 0.5 at $\tau = 0.3$).
# * **Gumbel-Rao** has the same expectation as straight-through (the same bias, to the
#   noise floor) and several times less variance: the best cosine at every $\tau$, for
#   $M = 10$ backwards per step.
# * **ReinMax** is nearly unbiased at $\tau = 1$, the temperature it is built for, and
#   strongly biased below it (40-90% at $\tau = 0.3$).
# * **The score function** is unbiased at every $\tau$ (its bias sits on the floor), but
#   its variance is 15-20 times $\lVert g^\star \rVert^2$: one draw is mostly noise.
# * **On MNIST none of this shows after phase 2**: with the fast recipe, three seeds,
#   no estimator beats straight-through; every paired 95% interval contains 0. Phase 1
#   only has to pick an activation per neuron, and phase 2 retrains the weights; a
#   better gradient of the logits does not buy test accuracy here.
