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
# # 5. Phase 2, fast: masked groups vs contiguous groups
#
# After freezing, neuron $n$ of a layer applies its own activation $f_{c_n}$. Looping
# over neurons in Python would be hopelessly slow; instead the neurons are split into
# one **group** per activation, and each activation runs once, vectorised, over its
# group. There are two ways to address a group:
#
# * **masked**: the group is an index array; the forward pass gathers
#   `z[:, idx]`, applies $f$, and scatters the result back (copies, every step);
# * **contiguous**: the neurons are *reordered* once, at freezing time, so that each
#   group is a slice `z[:, start:stop]` (views, no copies).
#
# You will see the groups, the **function-preserving permutation** of the weights that
# makes the contiguous layout possible (rows of $W_i$, entries of $b_i$ and columns of
# $W_{i+1}$ permuted together), and **timings** measured here: a uniform ReLU network
# against the masked and the contiguous phase-2 networks.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from smartmixed_np import DEFAULT_POOL, MLP, softmax_cross_entropy
from smartmixed_np.core.activations import resolve_pool
from smartmixed_np.backend import get_backend
from smartmixed_np.core.phase2 import contiguous_order, fixed_backward, fixed_forward
from smartmixed_np.nn.layers import make_groups
from smartmixed_np.experiments.plots import ACTIVATION_COLORS

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
pool = resolve_pool(DEFAULT_POOL)
cpu = get_backend("cpu")
rng = np.random.default_rng(0)

# %% [markdown]
# ## Groups
#
# A layer of ten neurons with frozen choices (indices into the pool). `make_groups`
# builds one group per activation present; in masked mode each group holds the
# indices of its neurons:

# %%
choices = np.array([2, 0, 5, 0, 1, 2, 0, 3, 5, 2])
print("choices:", [pool[c].name for c in choices])
for group in make_groups(choices, pool, cpu, contiguous=False, clamp=10.0):
    print(f"  masked     {group.activation.name:<11} columns {group.columns}")

# %% [markdown]
# `contiguous_order` is the stable sort of the neurons by choice. After reordering,
# each group is a slice:

# %%
order = contiguous_order(choices)
print("order (original index of each new position):", order)
print("sorted choices:", choices[order])
for group in make_groups(choices[order], pool, cpu, contiguous=True, clamp=10.0):
    print(f"  contiguous {group.activation.name:<11} columns {group.columns}")

# %% [markdown]
# Both layouts compute the same activations, up to the order of the columns:

# %%
z = rng.standard_normal((4, 10))
a_masked, _ = fixed_forward(z, make_groups(choices, pool, cpu, contiguous=False, clamp=10.0))
a_contig, _ = fixed_forward(z[:, order], make_groups(choices[order], pool, cpu, contiguous=True, clamp=10.0))
print("a_masked[:, order] == a_contig:", np.array_equal(a_masked[:, order], a_contig))

# %% [markdown]
# ## The permutation that leaves the network's function unchanged
#
# Hidden neurons have no inherent order. If $P$ is a permutation matrix, then
# $P^\top P = I$, and an elementwise activation commutes with permutation, so
#
# $$W_{i+1}\, f(W_i x + b_i) = (W_{i+1} P^\top)\, f\big((P W_i) x + P b_i\big)$$
#
# with each neuron keeping its own activation. In words: permute the **rows** of $W_i$
# and the entries of $b_i$ (the neuron's incoming weights) and the **columns** of
# $W_{i+1}$ (its outgoing weights) with the same permutation. `MLP.freeze(contiguous=True)`
# does exactly this, layer by layer. A small network to look at:

# %%
small = MLP([5, 8, 6, 3], "smartmixed", dtype="float64", seed=1)
masked = small.freeze(contiguous=False)      # original neuron order, index groups
contig = small.freeze(contiguous=True)       # sorted by activation, slice groups
order1, order2 = (act.order for act in contig.activations)
print("layer 1 order:", order1, " layer 2 order:", order2)

W0, b0, W1 = masked.linears[0].W, masked.linears[0].b, masked.linears[1].W
print("rows of W0 permuted:          ", np.array_equal(contig.linears[0].W, W0[order1]))
print("entries of b0 permuted:       ", np.array_equal(contig.linears[0].b, b0[order1]))
print("W1: rows by layer 2, columns by layer 1:", np.array_equal(contig.linears[1].W, W1[order2][:, order1]))
print("W2: columns by layer 2:       ", np.array_equal(contig.linears[2].W, masked.linears[2].W[:, order2]))

# %% [markdown]
# The matrix $W_1$ connects the two hidden layers, so it is permuted on both sides.
# Its columns are layer-1 neurons, its rows layer-2 neurons; the tick labels carry
# each neuron's activation. After the permutation the activations form blocks, and
# every weight has moved together with its two neurons:

# %%
names1 = masked.choice_names()[0]
names2 = masked.choice_names()[1]

def show(ax, matrix, rows, cols, title):
    ax.imshow(matrix, cmap="RdBu", vmin=-0.5, vmax=0.5)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for label, name in zip(ax.get_xticklabels(), cols):
        label.set_color(ACTIVATION_COLORS[name])
    for label, name in zip(ax.get_yticklabels(), rows):
        label.set_color(ACTIVATION_COLORS[name])
    ax.set_title(title, fontsize=10)

fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(10, 4.2))
show(ax_m, W1, names2, names1, "$W_1$, original order (masked)")
show(ax_c, contig.linears[1].W, [names2[i] for i in order2], [names1[i] for i in order1],
     "$W_1$, sorted by activation (contiguous)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Same function, same gradients (permuted the same way). Forward and backward on a
# batch, in float64:

# %%
x = rng.standard_normal((16, 5))
labels = rng.integers(0, 3, 16)
grads = {}
for name, net in (("masked", masked), ("contiguous", contig)):
    logits = net.forward(x, train=True)                   # forward
    _, dlogits = softmax_cross_entropy(logits, labels)
    net.backward(dlogits)                                # backward
    grads[name] = (logits, net.gradients()["layers.0.weight"].copy())
print("largest logit difference:", np.abs(grads["masked"][0] - grads["contiguous"][0]).max())
print("largest dW0 difference (rows permuted):", np.abs(grads["masked"][1][order1] - grads["contiguous"][1]).max())

# %% [markdown]
# The differences are rounding only: the next layer adds the same products in a
# different order.
#
# ## Timings
#
# Now the cost. A realistic size, the paper's architecture 2 on MNIST-shaped input:
# 784-512-256-128-10 with a batch of 128 (smaller in quick mode). Four networks with the
# same weights:
#
# * **uniform ReLU**, a plain network: the reference cost;
# * **phase 2, masked** and **phase 2, contiguous**, frozen from a phase-1 network whose
#   choices are spread evenly over the six candidates (the initial state: the harder
#   case for grouping);
# * **phase 1** (training mode, all six candidates evaluated per neuron, for context).
#
# One step is forward + loss + backward (no optimizer update). The networks take turns
# in every round, so a slow moment of the machine hits all of them alike, and we report
# the median over the rounds.

# %%
SIZES = [784, 128, 64, 32, 10] if QUICK else [784, 512, 256, 128, 10]
BATCH = 64 if QUICK else 128
ROUNDS = 5 if QUICK else 60

x = rng.random((BATCH, SIZES[0]), dtype=np.float32)
labels = rng.integers(0, 10, BATCH)
phase1 = MLP(SIZES, "smartmixed", seed=0)
nets = {
    "uniform ReLU": (MLP(SIZES, "relu", seed=0), False),
    "phase 2, masked": (phase1.freeze(contiguous=False), False),
    "phase 2, contiguous": (phase1.freeze(contiguous=True), False),
    "phase 1 (training)": (phase1, True),
}
print("choice shares, layer 1:", {k: round(v, 2) for k, v in phase1.choice_shares()[0].items()})


# %%
def step(net, train):
    logits = net.forward(x, train=train)                  # forward
    _, dlogits = softmax_cross_entropy(logits, labels, check=False)
    net.backward(dlogits)                                 # backward

for net, train in nets.values():                          # warm-up
    step(net, train)
times = {name: [] for name in nets}
for _ in range(ROUNDS):
    for name, (net, train) in nets.items():
        started = time.perf_counter()
        step(net, train)
        times[name].append(time.perf_counter() - started)
ms = {name: 1e3 * np.array(t) for name, t in times.items()}
base = np.median(ms["uniform ReLU"])
print(f"sizes {SIZES}, batch {BATCH}, median of {ROUNDS} rounds (forward + backward):")
for name, t in ms.items():
    q1, q3 = np.percentile(t, [25, 75])
    print(f"  {name:<20} {np.median(t):7.2f} ms  {np.median(t) / base:5.2f}x uniform ReLU"
          f"   (middle half {q1:.2f}..{q3:.2f}, best {t.min():.2f})")

# %%
names = list(ms)
medians = [np.median(ms[n]) for n in names]
spread = np.array([[m - np.percentile(ms[n], 25), np.percentile(ms[n], 75) - m] for n, m in zip(names, medians)]).T
fig, ax = plt.subplots(figsize=(7.5, 3.2))
ax.barh(names, medians, xerr=spread, color=["0.55", "#d62728", "#2ca02c", "#9467bd"], capsize=4)
for i, m in enumerate(medians):
    ax.text(m, i, f"  {m:.2f} ms", va="center", fontsize=9)
ax.invert_yaxis()
ax.set(xlabel="milliseconds per forward + backward (median; bars: middle half)",
       title=f"{'-'.join(map(str, SIZES))}, batch {BATCH}", xlim=(0, max(medians) * 1.3))
plt.show()

# %% [markdown]
# Phase 1 is the expensive phase: every neuron evaluates all six candidates (and their
# derivatives) at every step. Once frozen, a mixed network pays for each neuron's own
# activation only, and the cost falls back towards the uniform network's: most of a
# step is spent in the matrix products, which are the same for all three.
#
# How much the two group layouts differ depends on how the library applies a group.
# With Numba installed (the `fast` extra), `FixedMixedActivation` runs all the groups of
# a layer in one compiled forward pass and one compiled backward pass
# (`smartmixed_np/compiled.py`), which read each neuron's row of the feature-major
# buffers wherever it lies: then a masked layer needs no gather or scatter, and the
# two layouts cost about the same. Without Numba it runs a few NumPy calls per group,
# and a masked layer pays for one permutation of its rows each way. The line below
# says which this notebook ran with.
#
# To see the cost of gathering and scattering itself, here is one activation layer
# alone (512 neurons, batch 128), through the plain reference functions
# `fixed_forward`/`fixed_backward`, next to a Python loop over neurons and a single
# uniform ReLU group:

# %%
from smartmixed_np.fast import compiled
print("compiled loops:", compiled.status())

WIDTH = 128 if QUICK else 512
z = rng.standard_normal((BATCH, WIDTH)).astype(np.float32)
da = rng.standard_normal((BATCH, WIDTH)).astype(np.float32)
layer_choices = rng.integers(0, len(pool), WIDTH)
perm = contiguous_order(layer_choices)
z_sorted = np.ascontiguousarray(z[:, perm])
layouts = {
    "uniform ReLU (1 group)": (z, make_groups(np.zeros(WIDTH, dtype=np.int64), pool, cpu, contiguous=True, clamp=None)),
    "masked groups": (z, make_groups(layer_choices, pool, cpu, contiguous=False, clamp=10.0)),
    "contiguous groups": (z_sorted, make_groups(layer_choices[perm], pool, cpu, contiguous=True, clamp=10.0)),
}

def per_neuron_loop(z):
    a = np.empty_like(z)
    for n, c in enumerate(layer_choices):                 # one activation call per neuron
        a[:, n] = np.clip(pool[c].forward(z[:, n]), -10, 10)
    return a


# %%
layer_times = {name: [] for name in [*layouts, "loop over neurons (forward only)"]}
for _ in range(max(5, ROUNDS // 2)):
    for name, (zz, groups) in layouts.items():
        started = time.perf_counter()
        a, cache = fixed_forward(zz, groups)               # forward
        fixed_backward(da, cache, groups)                  # backward
        layer_times[name].append(time.perf_counter() - started)
    started = time.perf_counter()
    per_neuron_loop(z)
    layer_times["loop over neurons (forward only)"].append(time.perf_counter() - started)
contiguous_ms = 1e3 * np.median(layer_times["contiguous groups"])
print(f"one activation layer, {WIDTH} neurons, batch {BATCH}: median time per forward + backward")
for name, t in layer_times.items():
    print(f"  {name:<34} {1e3 * np.median(t):8.3f} ms  {1e3 * np.median(t) / contiguous_ms:6.2f}x contiguous")

# %% [markdown]
# Reading the layer timings:
#
# * the **loop over neurons** makes one small call per neuron (hundreds per layer)
#   instead of at most six large ones; even without its backward pass it is the
#   slowest, and it gets worse with width;
# * **masked vs contiguous**: the masked layout pays for a gather (`z[:, idx]` copies)
#   and a scatter (`a[:, idx] = ...`) per group, in the forward and again in the
#   backward pass; the contiguous layout works on slices. The permutation that makes
#   slices possible is paid once, at freezing time;
# * the **uniform ReLU** layer is cheaper still, but not because of its layout: ReLU
#   is the cheapest candidate and needs no clamp, while a mixed layer also evaluates
#   exponentials (sigmoid, ELU, SELU) and tanh on its other groups.
#
# Timings depend on the machine: these come from the one that executed this notebook
# (a small 2-core CPU for the saved outputs). Other work on the machine shows up as a
# wide middle half; the best time is then the better guide to the intrinsic cost. To
# measure on yours, re-run the cells, or use `smartmixed bench`.
