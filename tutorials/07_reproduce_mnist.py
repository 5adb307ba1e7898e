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
# # 7. Reproducing the MNIST experiment
#
# The paper trains SmartMixed on MNIST with architecture 2 (784-512-256-128-10), Adam at
# learning rate $10^{-4}$, batch 128, gradient norm clipped to 1, 400 epochs of which the
# first 50 are phase 1, $\tau = 0.3$, and compares with a ReLU network.
#
# This notebook runs that comparison: SmartMixed against a ReLU baseline with the same
# seed, data split and optimiser, then the learning curves and the activations each
# layer preferred. It has three settings:
#
# * **quick** (`SMARTMIXED_QUICK=1`, the test suite): a few thousand images, tiny
#   network, three epochs;
# * **default**: the full training data and architecture 2, but a short schedule
#   (learning rate $10^{-3}$, 15 epochs, phase 2 from epoch 6), a few minutes on a
#   laptop CPU;
# * **published** (`FULL_PUBLISHED = True` below): the paper's settings. 400 epochs take
#   hours on a GPU and days on a CPU.
#
# Data: MNIST is read from `DATA_DIR` (set it below) or from the folder named by the
# environment variable `SMARTMIXED_DATA` (a parent folder holding `mnist/`), else
# downloaded once into the cache (checksums verified). If none of that works, the
# notebook says so and falls back to `synth-digits`, so that it still runs.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from smartmixed_np.data import load_dataset
from smartmixed_np.errors import DataError
from smartmixed_np.experiments.plots import model_color
from smartmixed_np.experiments.train import TrainConfig, train

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")

# A folder holding the four MNIST IDX files, or a parent folder holding mnist/.
# None: use $SMARTMIXED_DATA, then the download cache.
DATA_DIR = None
ALLOW_DOWNLOAD = not QUICK      # the test suite runs offline: quick mode never downloads
FULL_PUBLISHED = False          # True: the paper's schedule (hours on a GPU, days on a CPU)
DEVICE = "cpu"                  # "gpu" with CuPy installed (see notebook 6)

# %% [markdown]
# ## The data
#
# The paper's protocol: pixels scaled to $[0, 1]$ and flattened; the official training
# set split 90/10 into training and validation sets (stratified, fixed seed); the
# official test set for testing.

# %%
try:
    data = load_dataset("mnist", DATA_DIR, download=ALLOW_DOWNLOAD, train_limit=2000 if QUICK else None)
    DATASET = "mnist"
except DataError as err:
    print("MNIST is not available here:", err)
    print("-> falling back to synth-digits (generated 28x28 glyphs), so that the notebook still runs.")
    DATASET = "synth-digits"
    data = load_dataset(DATASET, train_limit=2000 if QUICK else None)
# data.source holds the full path of the folder read; its name is enough to show here
source = "generated" if data.source == "synthetic" else f"read from a folder named {Path(data.source).name}/"
print(f"{data.name}: {data.input_dim} inputs, {data.num_classes} classes, {source}")
print(f"training {len(data.y_train):,}, validation {len(data.y_val):,}, test {len(data.y_test):,} images")

# %% [markdown]
# Check the sizes printed above: the official MNIST training set has 60,000 images
# (54,000 + 6,000 after the split) and the test set 10,000. A local copy may hold fewer
# training images; say which data a result was measured on when you report it.

# %%
fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
for ax, image, label in zip(axes.ravel(), data.x_train, data.y_train):
    ax.imshow(image.reshape(28, 28), cmap="gray_r")
    ax.set_title(str(label), fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The settings

# %%
if FULL_PUBLISHED:
    # the published settings: lr 1e-4, 400 epochs, phase 2 after epoch 50, architecture 2
    settings = dict(hidden=(512, 256, 128), lr=1e-4, epochs=400, transition_epoch=50, train_limit=None)
elif QUICK:
    settings = dict(hidden=(128, 64), lr=1e-3, epochs=3, transition_epoch=1, train_limit=2000)
else:
    # architecture 2 on all the data, a short schedule with a larger learning rate
    settings = dict(hidden=(512, 256, 128), lr=1e-3, epochs=15, transition_epoch=5, train_limit=None)
# train() reads the very folder loaded above (made absolute: the working directory changes below)
data_dir = os.path.abspath(data.source) if DATASET == "mnist" else None
common = dict(dataset=DATASET, data_dir=data_dir, batch_size=128,
              clip=1.0, tau=0.3, seed=0, device=DEVICE, progress=False, **settings)
workdir = tempfile.mkdtemp(prefix="smartmixed-mnist-")    # run folders go here...
os.chdir(workdir)                                          # ...and are named relative to it
print(settings)

# %% [markdown]
# ## SmartMixed
#
# Phase 1 for `transition_epoch` epochs, then the best phase-1 weights (by validation
# loss) are frozen and trained on as a fixed mixed network. One line per epoch; phase-1
# lines end with the activation most chosen in each layer.

# %%
smart = train(TrainConfig(model="smartmixed", out="smartmixed", **common))

# %% [markdown]
# ## The ReLU baseline
#
# The same network with ReLU everywhere, the same seed, split and optimiser, trained for
# the same number of epochs in one phase.

# %%
relu = train(TrainConfig(model="relu", out="relu", **common))

# %% [markdown]
# ## Results

# %%
for label, run in (("SmartMixed", smart), ("ReLU", relu)):
    m = run.metrics
    print(f"{label:<11} test accuracy {m['test']['accuracy']:.4f}  (loss {m['test']['loss']:.4f}; "
          f"model of epoch {m['selected']['epoch']})")
p1 = smart.metrics["phase1"]
print(f"SmartMixed after phase 1 only (epoch {p1['epoch']}): test accuracy {p1['test_accuracy']:.4f}")

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
for label, run in (("SmartMixed", smart), ("ReLU", relu)):
    color = model_color(label)                             # the same colours as every figure of the library
    epochs = [row["epoch"] for row in run.history]
    ax_loss.plot(epochs, [row["val_loss"] for row in run.history], "o-", ms=3, color=color, label=f"{label}, validation")
    ax_loss.plot(epochs, [row["train_loss"] for row in run.history], ":", color=color, label=f"{label}, training")
    ax_acc.plot(epochs, [row["val_acc"] for row in run.history], "o-", ms=3, color=color, label=label)
for ax in (ax_loss, ax_acc):
    ax.axvline(settings["transition_epoch"] + 0.5, color="0.4", ls="--", lw=1)
    ax.set_xlabel("epoch (dashed: SmartMixed enters phase 2)")
    ax.grid(alpha=0.3)
ax_loss.set(ylabel="cross-entropy", title="loss", yscale="log")
ax_acc.set(ylabel="validation accuracy", title=f"validation accuracy ({DATASET}, {len(data.y_train):,} training images)")
ax_loss.legend(fontsize=8)
ax_acc.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Layer preferences
#
# Which activation each hidden layer's neurons chose, as the share of each candidate
# (from the frozen model), how the shares moved during phase 1, and every neuron's
# choice as a coloured cell. These are the figures `train()` writes into the run folder.

# %%
for layer, shares in enumerate(smart.metrics["choice_shares"]):
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    print(f"layer {layer + 1}:", ", ".join(f"{name} {share:.0%}" for name, share in ranked))
figures = smart.run_dir / "figures"
display(Image(filename=str(figures / "activation_shares.png"), width=640))

# %%
display(Image(filename=str(figures / "share_evolution.png"), width=760))
display(Image(filename=str(figures / "choice_map.png"), width=640))

# %% [markdown]
# **Reading the results.** The default schedule is short and its learning rate ten
# times the published one, so the validation loss bottoms out within a few epochs and
# then creeps up (the model kept is the one with the lowest validation loss). It is
# also one seed on one split: treat differences of a few tenths of a percent as
# noise. The published comparison needs the full schedule (`FULL_PUBLISHED = True`)
# and several seeds. The run folders under
# `workdir` (the working directory since the settings cell) hold everything (`history.csv`, `metrics.json`, `choices.csv`, the model);
# `smartmixed evaluate <run folder>` re-scores a saved model.
