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
# # 4. SmartMixed end to end: learn the activations, freeze, train on
#
# This notebook trains SmartMixed networks from start to finish, first on `spirals`
# (two inputs, so you can *see* what the network computes) and then on
# `synth-digits` (generated 28x28 digit-like glyphs).
#
# You will
#
# * write the **phase-1** training loop yourself: forward with fresh Gumbel noise,
#   backward (straight-through gradients for the selection logits), gradient
#   clipping, Adam;
# * watch the **share of each activation** in each layer evolve as the logits learn;
# * **freeze** each neuron's argmax choice and check that freezing keeps the function;
# * train **phase 2** as a fixed mixed network and compare decision boundaries
#   before and after;
# * run the same two phases with the library's `train()` on `synth-digits` and read
#   the figures it writes.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.*

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from matplotlib.colors import ListedColormap

from smartmixed_np import DEFAULT_POOL, MLP, Adam, clip_grad_norm, softmax_cross_entropy
from smartmixed_np.data import load_dataset
from smartmixed_np.experiments.plots import ACTIVATION_COLORS, model_color
from smartmixed_np.experiments.train import TrainConfig, evaluate, train

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")
CLASS_COLORS = ListedColormap(["#4477aa", "#ee6677", "#228833"])

# %% [markdown]
# ## The data: three interleaved spirals
#
# Each class is one arm of a spiral; telling them apart needs a curved boundary that
# winds around the origin, which a linear model cannot draw.

# %%
data = load_dataset("spirals", n_train=600 if QUICK else 2400)
print(data)
fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.scatter(*data.x_train.T, c=data.y_train, cmap=CLASS_COLORS, s=5)
ax.set(title="spirals: training set", aspect="equal")
plt.show()

# %% [markdown]
# ## The network
#
# `MLP([2, H, H, 3], "smartmixed")`: two hidden layers of $H$ neurons, each neuron with
# six selection logits. The logits start at zero with a tiny bump (0.001) on one
# random candidate per neuron, so the untrained network's argmax choices are spread
# over the pool instead of all being the first candidate.

# %%
H = 32 if QUICK else 64
model = MLP([2, H, H, 3], "smartmixed", tau=0.3, seed=0)
for name, p in model.parameters().items():
    print(f"{name:<22} {p.shape}")
print("initial shares, layer 1:", {k: round(v, 2) for k, v in model.choice_shares()[0].items()})

# %% [markdown]
# To draw decision boundaries we evaluate the network on a grid. In evaluation mode
# a phase-1 network uses each neuron's argmax choice, without noise.

# %%
GRID = 60 if QUICK else 250
gx, gy = np.meshgrid(np.linspace(-1.3, 1.3, GRID), np.linspace(-1.3, 1.3, GRID))
grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)

def snapshot(net):
    # predicted class on the grid, and the test accuracy
    return net.predict(grid).reshape(gx.shape), evaluate(net, data.x_test, data.y_test)["accuracy"]

snapshots = {"untrained": snapshot(model)}

# %% [markdown]
# ## Phase 1: learning which activation each neuron uses
#
# One epoch is a pass over the shuffled training set in mini-batches. Every step:
#
# 1. **forward** in training mode: each phase-1 layer draws fresh Gumbel noise (one
#    draw per layer, shared by the batch), and each neuron applies the candidate its
#    noisy logits select;
# 2. **loss** and its gradient (`softmax_cross_entropy`);
# 3. **backward**: ordinary gradients for the weights, straight-through gradients for
#    the selection logits;
# 4. **update**: clip the global gradient norm to 1 (as the paper does), one Adam step
#    on all parameters, logits included.

# %%
EPOCHS_1 = 8 if QUICK else 60
EPOCHS_2 = 8 if QUICK else 60
BATCH, LR, CLIP = 64, 1e-2, 1.0
shuffle = np.random.default_rng(0)

def train_one_epoch(net, optimizer):
    n = len(data.y_train)
    order = shuffle.permutation(n)
    for start in range(0, n, BATCH):
        idx = order[start:start + BATCH]
        # forward (training mode: Gumbel noise in phase 1)
        logits = net.forward(data.x_train[idx], train=True)
        loss, dlogits = softmax_cross_entropy(logits, data.y_train[idx])
        # backward
        net.backward(dlogits)
        # update
        clip_grad_norm(net.gradients(), CLIP)
        optimizer.step(net.gradients())


# %% [markdown]
# These lines, forward to update, are what `smartmixed_np.train_step(net, optimizer, x, y, clip)`
# runs: the step that `smartmixed train` and the benchmarks take (it folds the clipping
# factor into the optimizer's pass, with the same numbers).

# %%
optimizer = Adam(model.parameters(), lr=LR)
history = []
for epoch in range(1, EPOCHS_1 + 1):
    train_one_epoch(model, optimizer)
    val = evaluate(model, data.x_val, data.y_val)
    history.append({"epoch": epoch, "phase": 1, "val_acc": val["accuracy"], "shares": model.choice_shares()})
    if epoch % max(1, EPOCHS_1 // 6) == 0 or epoch == EPOCHS_1:
        top = [max(layer, key=layer.get) for layer in model.choice_shares()]
        print(f"epoch {epoch:3d}  validation accuracy {val['accuracy']:.3f}  most chosen per layer: {top}")
snapshots["end of phase 1"] = snapshot(model)

# %% [markdown]
# ### How the choices evolve
#
# The share of each activation among a layer's neurons, after every epoch of phase 1
# (from the argmax of the logits, i.e. what freezing would keep at that moment):

# %%
epochs = [row["epoch"] for row in history]
fig, axes = plt.subplots(1, model.num_hidden, figsize=(11, 3.6), sharey=True)
for layer, ax in enumerate(axes):
    for name in DEFAULT_POOL:
        ax.plot(epochs, [row["shares"][layer][name] for row in history],
                color=ACTIVATION_COLORS[name], label=name, lw=2)
    ax.set(title=f"hidden layer {layer + 1} ({H} neurons)", xlabel="phase-1 epoch")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("share of neurons")
axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Freezing
#
# `model.freeze()` builds the phase-2 network: every neuron keeps its argmax choice,
# the weights are copied, the logits are dropped. With `contiguous=True` (the default)
# the neurons of each layer are also reordered so that each activation's neurons sit
# side by side (notebook 5 explains why and shows the permutation). Because a
# phase-1 network in evaluation mode already uses exactly the argmax choices, the
# frozen network computes the same function:

# %%
phase2 = model.freeze(contiguous=True)
before, after = model.forward(data.x_val), phase2.forward(data.x_val)
print("largest logit difference, phase-1 (eval) vs frozen:", float(np.abs(before - after).max()))
print("same predictions:", np.array_equal(before.argmax(1), after.argmax(1)))
print("parameters:", sorted(model.parameters()), "->", sorted(phase2.parameters()))

# %% [markdown]
# The tiny difference is float32 rounding: the reordered neurons are summed in a
# different order by the next layer's matrix product.
#
# ## Phase 2: training the fixed mixed network
#
# The same loop, on the frozen network, with a fresh Adam (the set of parameters has
# changed, and the moments of the phase-1 run belong to a different problem). There
# is no noise any more: training mode and evaluation mode compute the same thing.

# %%
optimizer2 = Adam(phase2.parameters(), lr=LR)
for epoch in range(EPOCHS_1 + 1, EPOCHS_1 + EPOCHS_2 + 1):
    train_one_epoch(phase2, optimizer2)
    val = evaluate(phase2, data.x_val, data.y_val)
    history.append({"epoch": epoch, "phase": 2, "val_acc": val["accuracy"]})
print(f"validation accuracy after phase 2: {history[-1]['val_acc']:.3f}")
snapshots["end of phase 2"] = snapshot(phase2)

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot([r["epoch"] for r in history], [r["val_acc"] for r in history], lw=2, color=model_color("SmartMixed"))
ax.axvline(EPOCHS_1 + 0.5, color="0.4", ls="--", label="freeze: phase 2 starts")
ax.set(xlabel="epoch", ylabel="validation accuracy", title="spirals, SmartMixed")
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# ## Decision boundaries
#
# The class each point of the plane is assigned to, with the test points on top:
# untrained, at the freeze (the end of phase 1; by the check above this is also the
# frozen network before phase 2), and after phase 2.

# %%
fig, axes = plt.subplots(1, len(snapshots), figsize=(13, 4.4))
for ax, (label, (regions, accuracy)) in zip(axes, snapshots.items()):
    ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], cmap=CLASS_COLORS, alpha=0.35)
    ax.scatter(*data.x_test.T, c=data.y_test, cmap=CLASS_COLORS, s=3)
    ax.set(title=f"{label}\ntest accuracy {accuracy:.3f}", aspect="equal", xticks=[], yticks=[])
plt.tight_layout()
plt.show()


# %% [markdown]
# ## Which activations did the layers prefer?
#
# The final choices per layer (in phase 2 they no longer change):

# %%
def plot_shares(shares, title):
    fig, ax = plt.subplots(figsize=(8, 0.7 + 0.55 * len(shares)))
    for layer, layer_shares in enumerate(shares):
        left = 0.0
        for name in DEFAULT_POOL:
            width = layer_shares.get(name, 0.0)
            if width > 0:
                ax.barh(layer, width, left=left, color=ACTIVATION_COLORS[name], edgecolor="white",
                        label=name if layer == 0 else None)
                if width >= 0.06:
                    ax.text(left + width / 2, layer, f"{width:.0%}", ha="center", va="center", fontsize=8, color="white")
                left += width
    ax.set_yticks(range(len(shares)), [f"layer {i + 1}" for i in range(len(shares))])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="share of neurons", title=title)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(shares) < 3 else -0.25))
    plt.show()

plot_shares(phase2.choice_shares(), "spirals: activation chosen per neuron, by layer")
for layer, shares in enumerate(phase2.choice_shares()):
    print(f"layer {layer + 1}:", ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))

# %% [markdown]
# Which candidates win depends on the data, the width, the seed and the learning
# rate; what matters is that the choice is *learned* from the loss, per neuron, and
# that mixed layers are the rule, not the exception.
#
# ## The same with `train()`, on synth-digits
#
# `smartmixed_np.experiments.train.train` runs both phases with the published protocol: a
# validation split, the best phase-1 weights (lowest validation loss) carried into
# phase 2, the best phase-2 model kept and scored on the test set. It writes a run
# folder with the history, metrics and figures; here it goes into a scratch folder
# that becomes the working directory, so the path it prints is a short relative one.

# %%
digits = load_dataset("synth-digits", n_train=20, n_val=0, n_test=0)
fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
for ax, image, label in zip(axes.ravel(), digits.x_train, digits.y_train):
    ax.imshow(image.reshape(28, 28), cmap="gray_r")
    ax.set_title(str(label), fontsize=8)
    ax.axis("off")
plt.show()

# %%
os.chdir(tempfile.mkdtemp(prefix="smartmixed-"))   # scratch working directory for the run folder
config = TrainConfig(
    dataset="synth-digits",
    train_limit=1500 if QUICK else None,      # default: 12,000 training images
    hidden=(64, 32) if QUICK else (256, 128),
    epochs=3 if QUICK else 12,
    transition_epoch=2 if QUICK else 4,       # phase 1: epochs 1..4; phase 2: the rest
    lr=1e-3,
    seed=0,
    out="synth-digits-smartmixed",            # relative: inside the scratch folder
    progress=False,
)
result = train(config)

# %%
metrics = result.metrics
print(f"phase-1 model (epoch {metrics['phase1']['epoch']}): test accuracy {metrics['phase1']['test_accuracy']:.4f}")
print(f"final model (phase {metrics['selected']['phase']}, epoch {metrics['selected']['epoch']}): "
      f"test accuracy {metrics['test']['accuracy']:.4f}")
figures = result.run_dir / "figures"
print("run folder:", sorted(p.name for p in result.run_dir.iterdir()))
display(Image(filename=str(figures / "curves.png"), width=720))

# %%
display(Image(filename=str(figures / "share_evolution.png"), width=720))
display(Image(filename=str(figures / "activation_shares.png"), width=620))

# %% [markdown]
# **Summary.** Phase 1 is an ordinary training loop in which the forward pass
# samples an activation per neuron and the backward pass gives the logits a
# straight-through gradient; the argmax choices move most in the first epochs and
# drift more slowly afterwards. Freezing
# keeps the function and drops the logits; phase 2 then trains a plain network whose
# neurons happen to use different activations. Notebook 5 shows how phase 2 is made
# as fast as a uniform network.
