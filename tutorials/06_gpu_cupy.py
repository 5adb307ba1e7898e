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
# # 6. The same code on the GPU (CuPy)
#
# Every numerical function in `smartmixed_np` asks its input arrays which *array
# module* they belong to (`numpy` on the CPU, `cupy` on the GPU) and calls that module.
# So the GPU needs no second implementation: put the data and the model on the GPU
# and the same code runs there.
#
# You will
#
# * ask for the GPU backend, and fall back to the CPU **clearly** when there is no
#   GPU or no CuPy;
# * see `array_module`, and the two conversions at the edges: host to device
#   (`backend.asarray`) and device to host (`to_host`);
# * train a small SmartMixed network on whichever device you got.
#
# *The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); the test suite executes it in quick mode, with smaller sizes, in a few seconds. The first code cell prints the mode.* *The saved outputs were produced on a machine without a GPU, so they
# show the CPU fallback; on a machine with CUDA and CuPy
# (`pip install -e ".[gpu]"`) the same cells run on the GPU.*

# %%
import os
import time

import numpy as np

from smartmixed_np import MLP, Adam, clip_grad_norm, get_activation, softmax_cross_entropy, to_host
from smartmixed_np.backend import BackendUnavailableError, array_module, get_backend
from smartmixed_np.data import load_dataset

QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook
print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")

# %% [markdown]
# ## Choosing the device
#
# `get_backend("gpu")` imports CuPy and looks for a CUDA device. If either is missing it
# raises `BackendUnavailableError` with the reason; we catch it and continue on the CPU.

# %%
try:
    backend = get_backend("gpu")
    print(f"GPU backend available: {backend}")
except BackendUnavailableError as err:
    print("No GPU backend on this machine:")
    print("   ", err)
    print("-> running on the CPU instead. Everything below is the same code either way.")
    backend = get_backend("cpu")
print(f"device: {backend.device}, array module: {backend.xp.__name__}")

# %% [markdown]
# ## Arrays know their module
#
# Data is loaded on the host (NumPy) and moved to the device **once**, at the edge, by
# `backend.asarray`. From then on, every function finds the right module through
# `array_module(x)`, the same way `cupy.get_array_module` does. On the CPU `asarray`
# returns the array itself; on the GPU it copies it into device memory.

# %%
x_host = np.linspace(-2, 2, 5)
x_dev = backend.asarray(x_host)                    # host -> device (the edge)
print("host array:  ", type(x_host).__module__, type(x_host).__name__)
print("device array:", type(x_dev).__module__, type(x_dev).__name__)
print("array_module(x_dev) is", array_module(x_dev).__name__)

y_dev = get_activation("elu").forward(x_dev)        # runs wherever x_dev lives
print("elu on the device returns a", type(y_dev).__module__, "array")
print("back on the host, for printing:", to_host(y_dev))   # device -> host (the edge)

# %% [markdown]
# CuPy refuses to mix host and device arrays in arithmetic, and refuses to convert a
# device array to NumPy implicitly; both raise `TypeError`. That strictness is useful:
# it turns a silent, slow host-device round trip into an error. The model checks its
# input for the same reason:

# %%
probe = MLP([5, 4, 2], "smartmixed", device=backend, seed=0)
if backend.device == "gpu":
    try:
        probe.forward(np.ones((3, 5), dtype=np.float32))      # a host array into a GPU model
    except TypeError as err:
        print("TypeError:", err)
else:
    print("(on the CPU, host and device memory are the same: there is nothing to mix up)")

# %% [markdown]
# ## The same model, on either device
#
# Initial weights and Gumbel noise are drawn on the host from seeded generators and then
# moved to the device, so the same seed gives the same network on the CPU and the GPU:

# %%
sizes = [784, 64, 32, 10] if QUICK else [784, 256, 128, 10]
model = MLP(sizes, "smartmixed", device=backend, seed=0)
reference = MLP(sizes, "smartmixed", device="cpu", seed=0)
same = all(np.array_equal(to_host(p), reference.parameters()[name]) for name, p in model.parameters().items())
print(f"model on {backend.device}: {model.num_parameters():,} parameters; same initial values as on the CPU: {same}")

# %% [markdown]
# ## A short training run on the chosen device
#
# The data moves to the device once; batches are gathered there. Inside the loop nothing
# goes back to the host: the loss is accumulated as a device scalar and read with
# `to_host` once per epoch. `backend.synchronize()` waits for queued GPU work, so the
# timings are honest (on the CPU it does nothing).

# %%
data = load_dataset("synth-digits", n_train=1000 if QUICK else 8000, n_val=200 if QUICK else 1000, n_test=200)
x_train = backend.asarray(data.x_train)            # host -> device, once
y_train = backend.asarray(data.y_train)
x_val, y_val = backend.asarray(data.x_val), backend.asarray(data.y_val)
xp = backend.xp
optimizer = Adam(model.parameters(), lr=1e-3)
shuffle = np.random.default_rng(0)
BATCH, EPOCHS = 128, (2 if QUICK else 5)

for epoch in range(1, EPOCHS + 1):
    backend.synchronize()
    started = time.perf_counter()
    order = backend.asarray(shuffle.permutation(len(data.y_train)))
    loss_sum = xp.zeros((), dtype=np.float64)
    for start in range(0, len(data.y_train), BATCH):
        idx = order[start:start + BATCH]
        logits = model.forward(x_train[idx], train=True)                # forward
        loss, dlogits = softmax_cross_entropy(logits, y_train[idx], check=False)
        model.backward(dlogits)                                        # backward
        clip_grad_norm(model.gradients(), 1.0)                          # update
        optimizer.step(model.gradients())
        loss_sum += loss * int(idx.shape[0])
    backend.synchronize()
    seconds = time.perf_counter() - started
    val_acc = float(to_host(xp.mean(model.predict(x_val) == y_val)))    # device -> host: one number
    print(f"epoch {epoch} on {backend.device}: train loss {float(to_host(loss_sum)) / len(data.y_train):.4f}, "
          f"validation accuracy {val_acc:.3f}, {seconds:.2f} s")

# %% [markdown]
# The whole training run, freezing included, goes through the same switch:
# `MLP(..., device="gpu")` in code, `TrainConfig(device="gpu")` for `train()`, and
# `smartmixed train --device gpu` on the command line. On NumPy a run is reproducible
# bit for bit; on the GPU the matrix products may add in a different order, so
# results agree with the CPU to rounding, not to the last bit.

# %%
frozen = model.freeze()                             # phase 2 lives on the same device
print("frozen model on", frozen.backend.device, "| shares, layer 1:",
      {k: round(v, 2) for k, v in frozen.choice_shares()[0].items()})
