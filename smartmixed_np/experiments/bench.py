"""Benchmarks: every contender measured side by side, with ratios.

One call, :func:`run_benchmarks`, measures (CPU, float32, one process):

* a training step (forward, softmax cross-entropy, backward, clipping to global norm
  1.0, Adam; ours applies the clipping factor inside Adam's pass, see
  :func:`~smartmixed_np.nn.optim.clip_factor`) and an inference forward of
  - ``floor``: the matrix products of a step alone, with preallocated outputs
    (per layer ``x @ W.T``, ``dz.T @ x``, and ``dz @ W`` except for the first layer,
    whose input needs no gradient; inference: ``x @ W.T`` per layer);
  - ``relu``: ``MLP(sizes, "relu")``;
  - ``phase1``: ``MLP(sizes, "smartmixed")`` in training mode (inference: its
    evaluation forward, the argmax network);
  - ``phase2_masked`` / ``phase2_contiguous``: ``phase1.freeze(contiguous=...)``,
    with the phase-1 logits randomised first so that all six activations occur in
    every layer;
  - when PyTorch is importable, ``torch_relu``, ``torch_phase1`` (the published
    reference's semantics: ``torch.stack`` of the six candidates, clamp to [-10, 10],
    ``F.gumbel_softmax(alpha, tau, hard=True)`` = one-hot - y.detach() + y, weighted
    sum, clamp) and ``torch_phase2`` (index gather and scatter per activation
    group), with ``torch.optim.Adam`` and ``clip_grad_norm_``;
* the same over a sweep of batch sizes and of hidden widths;
* one epoch of MNIST (ours vs PyTorch, phase 2 and phase 1) in samples per second,
  when a data directory is given;
* our phase-2 inference against ONNX Runtime on the exported graph, batch 1 and 128
  (:func:`_onnx_inference`; skipped with the reason when onnxruntime is missing);
* peak memory (tracemalloc, which sees NumPy's allocations) and the memory held
  after two successive windows of steps after warm-up: "no growth" when the
  second window adds nothing (a leak would add in every window).

Timing: ``time.perf_counter``; in each repeat round every contender runs, in a
shuffled order, untimed calls for a settling time (60 ms; the other library's
worker threads spin on the cores that long after their last task) and then one
timed call, so that machine noise (other processes, frequency changes) falls on all
of them alike; a figure is the median over rounds, after warm-up. Ratios are of medians taken in the same rounds. The
report records the load average before and after: on a shared machine, compare
runs taken at low load. Timings are never asserted by tests.

    >>> from smartmixed_np.experiments.bench import run_benchmarks
    >>> report = run_benchmarks(quick=True)                          # doctest: +SKIP
    >>> report["ratios"]["phase2_vs_relu_step_ratio"]                # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
import resource
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..fast import compiled
from ..backend import Backend, get_backend, to_host
from ..errors import UserError
from ..fileio import atomic_writer, write_json
from ..nn.mlp import MLP
from ..nn.optim import Adam
from ..nn.step import train_step

__all__ = ["run_benchmarks", "DEFAULT_SIZES", "DATA_ENV"]

DEFAULT_SIZES = (784, 512, 256, 128, 10)
DATA_ENV = "SMARTMIXED_DATA"
CLAMP = 10.0
TAU = 0.3

OURS = ("floor", "relu", "phase1", "phase2_masked", "phase2_contiguous")
THEIRS = ("torch_relu", "torch_phase1", "torch_phase2")

_FULL = dict(repeats=60, warmup=10, sweep_repeats=20, settle_s=0.06, batches=(32, 64, 128, 256, 512, 1024),
             widths=((256, 128, 64), (512, 256, 128), (1024, 512, 256)), memory_steps=60, epoch_rounds=3)
_QUICK = dict(repeats=3, warmup=1, sweep_repeats=2, settle_s=0.0, batches=(8, 16), widths=((16, 8),),
              memory_steps=4, epoch_rounds=1)


# --------------------------------------------------------------------------- the device
@dataclass(frozen=True)
class _Device:
    """Where the contenders run: our backend, PyTorch's device, and how to wait for both.

    On a GPU, work is queued asynchronously; :meth:`sync` waits for it so that a
    timer measures the work and not only its launch.
    """

    backend: Backend
    torch_device: str = "cpu"

    def sync(self) -> None:
        self.backend.synchronize()
        if self.torch_device != "cpu":
            import torch

            torch.cuda.synchronize()


def _device(name: str, with_torch: bool) -> _Device:
    backend = get_backend(name)
    torch_device = "cpu"
    if backend.device == "gpu" and with_torch:
        import torch

        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return _Device(backend, torch_device)


_CPU = _Device(get_backend("cpu"))


# --------------------------------------------------------------------------- our contenders
def _phase1_network(sizes: Sequence[int], seed: int, dev: _Device = _CPU) -> MLP:
    """A phase-1 network whose logits are random, so that every layer uses all six candidates."""
    model = MLP(sizes, "smartmixed", seed=seed, tau=TAU, clamp=CLAMP, device=dev.backend)
    rng = np.random.default_rng(seed)
    for act in model.activations:
        act.logits[...] = dev.backend.asarray(rng.standard_normal(tuple(act.logits.shape)).astype(model.dtype))
    return model


def _numpy_networks(sizes: Sequence[int], seed: int, dev: _Device = _CPU) -> dict[str, MLP]:
    phase1 = _phase1_network(sizes, seed, dev)
    return {
        "relu": MLP(sizes, "relu", seed=seed, device=dev.backend),
        "phase1": phase1,
        "phase2_masked": phase1.freeze(contiguous=False),
        "phase2_contiguous": phase1.freeze(contiguous=True),
    }


def _numpy_step(model: MLP, x: np.ndarray, y: np.ndarray, train: bool = True) -> Callable[[], None]:
    """One training step: forward, softmax-CE, backward, clip to norm 1, Adam."""
    optimizer = Adam(model.parameters(), lr=1e-3)
    params, grads = model.parameters(), model.gradients()

    def step() -> None:
        train_step(model, optimizer, x, y, 1.0, grads=grads, train=train)

    assert params.keys() == grads.keys()
    return step


def _numpy_infer(model: MLP, x: np.ndarray) -> Callable[[], None]:
    return lambda: model.forward(x, train=False)


def _floor(sizes: Sequence[int], batch: int, seed: int, dev: _Device = _CPU) -> tuple[Callable[[], None], Callable[[], None]]:
    """The matrix products of a training step (and of inference) alone, outputs preallocated."""
    rng = np.random.default_rng(seed)
    xp, put = dev.backend.xp, dev.backend.asarray
    f32 = np.float32
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(dict(
            x=put(rng.standard_normal((batch, d_in)).astype(f32)), W=put(rng.standard_normal((d_out, d_in)).astype(f32)),
            z=xp.empty((batch, d_out), f32), dz=put(rng.standard_normal((batch, d_out)).astype(f32)),
            dW=xp.empty((d_out, d_in), f32), dx=xp.empty((batch, d_in), f32) if i > 0 else None,
        ))

    def step() -> None:
        for layer in layers:
            xp.matmul(layer["x"], layer["W"].T, out=layer["z"])
        for layer in reversed(layers):
            xp.matmul(layer["dz"].T, layer["x"], out=layer["dW"])
            if layer["dx"] is not None:
                xp.matmul(layer["dz"], layer["W"], out=layer["dx"])

    def infer() -> None:
        for layer in layers:
            xp.matmul(layer["x"], layer["W"].T, out=layer["z"])

    return step, infer


# --------------------------------------------------------------------------- PyTorch contenders
def _torch_models(sizes: Sequence[int], seed: int, threads: int, torch_device: str = "cpu") -> dict[str, Any]:
    """PyTorch networks with the published reference's semantics (empty if torch is missing)."""
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    candidates = [F.relu, torch.sigmoid, torch.tanh, F.leaky_relu, F.elu, F.selu]

    class Phase1(nn.Module):
        """Hard Gumbel-softmax over the stacked, clamped candidates (reference semantics)."""

        def __init__(self, width: int, alpha: np.ndarray) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.from_numpy(alpha))

        def forward(self, z):
            stacked = torch.stack([f(z) for f in candidates], dim=-1).clamp(-CLAMP, CLAMP)  # (B, N, K)
            weights = F.gumbel_softmax(self.alpha, tau=TAU, hard=True)  # one-hot - y.detach() + y
            return (stacked * weights).sum(dim=-1).clamp(-CLAMP, CLAMP)

    class Phase2(nn.Module):
        """A frozen choice per neuron: gather each group's columns, apply, scatter back."""

        def __init__(self, choices: np.ndarray) -> None:
            super().__init__()
            self.groups = [
                (candidates[k], torch.from_numpy(np.flatnonzero(choices == k)).to(torch_device)) for k in np.unique(choices)
            ]

        def forward(self, z):
            out = torch.empty_like(z)
            for f, idx in self.groups:
                out[:, idx] = f(z.index_select(1, idx)).clamp(-CLAMP, CLAMP)
            return out

    phase1_np = _phase1_network(sizes, seed)
    alphas = [to_host(act.logits).copy() for act in phase1_np.activations]

    def network(make_act: Callable[[int, int], nn.Module]) -> nn.Module:
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(sizes) - 2:
                layers.append(make_act(i, d_out))
        return nn.Sequential(*layers)

    return {
        "torch_relu": network(lambda i, n: nn.ReLU()).to(torch_device),
        "torch_phase1": network(lambda i, n: Phase1(n, alphas[i])).to(torch_device),
        "torch_phase2": network(lambda i, n: Phase2(alphas[i].argmax(axis=1))).to(torch_device),
    }


def _torch_contenders(sizes: Sequence[int], batch: int, seed: int, threads: int, dev: _Device = _CPU) -> dict[str, tuple[Callable, Callable]]:
    """(step, infer) of each PyTorch network on a fixed random batch."""
    models = _torch_models(sizes, seed, threads, dev.torch_device)
    if not models:
        return {}
    import torch

    rng = np.random.default_rng(seed + 1)
    x = torch.from_numpy(rng.standard_normal((batch, sizes[0])).astype(np.float32)).to(dev.torch_device)
    y = torch.from_numpy(rng.integers(0, sizes[-1], batch)).to(dev.torch_device)
    return {name: (_torch_step(model, x, y), _torch_infer(model, x)) for name, model in models.items()}


def _torch_step(model, x, y) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def _torch_infer(model, x) -> Callable[[], None]:
    import torch

    def infer() -> None:
        with torch.no_grad():
            model(x)

    return infer


# --------------------------------------------------------------------------- timing
def _interleaved(functions: dict[str, Callable[[], None]], repeats: int, warmup: int, seed: int = 0,
                 sync: Callable[[], None] = lambda: None, settle_s: float = 0.0) -> dict[str, dict[str, float]]:
    """Median, quartiles and min of seconds per call, contenders interleaved round by round.

    Each round runs every contender in a freshly shuffled order: untimed calls first,
    for at least ``settle_s`` seconds and at least one call, then one timed call. The
    untimed calls absorb the switch from the previous contender: caches, and above
    all the other library's idle worker threads, which keep spinning on the cores for
    tens of milliseconds after their last task (measured here: a PyTorch step right
    after ours ran 2x slower for its first five calls, and ours after PyTorch's for
    its first three). ``sync`` waits for queued device work before the clock starts
    and before it stops.
    """
    names = list(functions)
    order_rng = np.random.default_rng(seed)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for index in order_rng.permutation(len(names)):
            name = names[index]
            settle_until = time.perf_counter() + settle_s
            functions[name]()
            while time.perf_counter() < settle_until:
                functions[name]()
            sync()
            start = time.perf_counter()
            functions[name]()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * float(np.median(s)),
            "q25_ms": 1e3 * float(np.percentile(s, 25)),
            "q75_ms": 1e3 * float(np.percentile(s, 75)),
            "min_ms": 1e3 * float(np.min(s)),
            "repeats": len(s),
        }
        for name, s in samples.items()
    }


def _measure(sizes: Sequence[int], batch: int, seed: int, repeats: int, warmup: int, threads: int, with_torch: bool,
             dev: _Device = _CPU, settle_s: float = 0.0) -> dict[str, Any]:
    """Step and inference timings of every contender at one size and batch."""
    rng = np.random.default_rng(seed + 1)
    x = dev.backend.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = dev.backend.asarray(rng.integers(0, sizes[-1], batch))
    floor_step, floor_infer = _floor(sizes, batch, seed, dev)
    steps: dict[str, Callable[[], None]] = {"floor": floor_step}
    infers: dict[str, Callable[[], None]] = {"floor": floor_infer}
    for name, model in _numpy_networks(sizes, seed, dev).items():
        steps[name] = _numpy_step(model, x, y)
        infers[name] = _numpy_infer(model, x)
    if with_torch:
        for name, (step, infer) in _torch_contenders(sizes, batch, seed, threads, dev).items():
            steps[name], infers[name] = step, infer
    return {
        "step": _interleaved(steps, repeats, warmup, sync=dev.sync, settle_s=settle_s),
        "infer": _interleaved(infers, repeats, warmup, sync=dev.sync, settle_s=settle_s),
    }


def _ratios(timings: dict[str, Any], statistic: str = "median_ms") -> dict[str, float | None]:
    """Every ratio of interest from one :func:`_measure` result (None where a side is missing).

    ``statistic``: ``"median_ms"`` (the headline) or ``"min_ms"`` (the fastest call of
    each contender: on a machine shared with other work, noise only ever adds time,
    so ratios of minima show the intrinsic costs when medians are disturbed).
    """

    def ratio(kind: str, a: str, b: str) -> float | None:
        table = timings[kind]
        if a not in table or b not in table:
            return None
        return table[a][statistic] / table[b][statistic]

    out: dict[str, float | None] = {}
    for kind in ("step", "infer"):
        out[f"phase2_vs_relu_{kind}_ratio"] = ratio(kind, "phase2_contiguous", "relu")
        out[f"phase2_masked_vs_relu_{kind}_ratio"] = ratio(kind, "phase2_masked", "relu")
        out[f"phase1_vs_relu_{kind}_ratio"] = ratio(kind, "phase1", "relu")
        out[f"relu_vs_floor_{kind}_ratio"] = ratio(kind, "relu", "floor")
        out[f"phase1_vs_torch_{kind}_ratio"] = ratio(kind, "phase1", "torch_phase1")
        out[f"phase2_vs_torch_{kind}_ratio"] = ratio(kind, "phase2_contiguous", "torch_phase2")
        out[f"phase2_masked_vs_torch_{kind}_ratio"] = ratio(kind, "phase2_masked", "torch_phase2")
        out[f"relu_vs_torch_{kind}_ratio"] = ratio(kind, "relu", "torch_relu")
    return out


# --------------------------------------------------------------------------- epoch throughput
def _epoch_throughput(data_dir: str, sizes: Sequence[int], batch: int, seed: int, rounds: int, threads: int,
                      with_torch: bool, train_limit: int | None, dev: _Device = _CPU) -> dict[str, Any]:
    """Samples per second over one shuffled epoch of MNIST, ours and PyTorch's, interleaved by epoch."""
    from ..data import load_dataset

    data = load_dataset("mnist", data_dir, train_limit=train_limit, download=False)
    x_host, y_host = data.x_train.astype(np.float32), data.y_train.astype(np.int64)
    x_all, y_all = dev.backend.asarray(x_host), dev.backend.asarray(y_host)  # moved once, batches gathered there
    n = len(x_host)
    rng = np.random.default_rng(seed)
    epoch_sizes = list(sizes)
    epoch_sizes[0], epoch_sizes[-1] = data.input_dim, data.num_classes
    networks = _numpy_networks(epoch_sizes, seed, dev)

    def ours(model: MLP, train_flag: bool) -> Callable[[], None]:
        optimizer = Adam(model.parameters(), lr=1e-3)
        grads = model.gradients()

        def epoch() -> None:
            order = dev.backend.asarray(rng.permutation(n))
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                train_step(model, optimizer, x_all[idx], y_all[idx], 1.0, grads=grads, train=train_flag)

        return epoch

    epochs: dict[str, Callable[[], None]] = {
        "phase2": ours(networks["phase2_contiguous"], False),
        "phase1": ours(networks["phase1"], True),
    }
    if with_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
        if torch is not None:
            contenders = _torch_models(epoch_sizes, seed, threads, dev.torch_device)
            xt, yt = torch.from_numpy(x_host).to(dev.torch_device), torch.from_numpy(y_host).to(dev.torch_device)

            def theirs(model) -> Callable[[], None]:
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                params = list(model.parameters())

                def epoch() -> None:
                    order = torch.from_numpy(rng.permutation(n)).to(dev.torch_device)
                    for start in range(0, n, batch):
                        idx = order[start:start + batch]
                        optimizer.zero_grad(set_to_none=True)
                        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
                        torch.nn.utils.clip_grad_norm_(params, 1.0)
                        optimizer.step()

                return epoch

            epochs["torch_phase2"] = theirs(contenders["torch_phase2"])
            epochs["torch_phase1"] = theirs(contenders["torch_phase1"])
    times = _interleaved(epochs, rounds, warmup=0, sync=dev.sync)
    result: dict[str, Any] = {"dataset": f"mnist training split (a folder named {Path(str(data.source)).name}/, {n} images)", "samples": n, "batch": batch}
    for name, t in times.items():
        result[f"{name}_samples_per_s"] = n / (t["median_ms"] / 1e3)
        result[f"{name}_epoch_s"] = t["median_ms"] / 1e3
    for phase in ("phase2", "phase1"):
        if f"torch_{phase}_samples_per_s" in result:
            key = "epoch_throughput_vs_torch_ratio" if phase == "phase2" else "phase1_epoch_throughput_vs_torch_ratio"
            result[key] = result[f"{phase}_samples_per_s"] / result[f"torch_{phase}_samples_per_s"]
    return result


# --------------------------------------------------------------------------- ONNX Runtime
ONNX_BATCHES = (1, 128)


def _onnx_inference(sizes: Sequence[int], seed: int, threads: int, repeats: int, warmup: int,
                    settle_s: float = 0.0, batches: Sequence[int] = ONNX_BATCHES) -> dict[str, Any]:
    """Our phase-2 network's inference against ONNX Runtime's on its exported graph (CPU, float32).

    The network is ``phase2_contiguous`` (all six activations in every layer, clamp 10);
    ONNX Runtime runs :func:`~smartmixed_np.experiments.export.build_onnx`'s graph with
    the CPU provider and as many intra-op threads as our BLAS has. Per batch size:
    ``ours_forward`` (logits, as ONNX Runtime returns), ``ours_predict`` (logits and
    argmax) and ``onnxruntime``, interleaved by :func:`_interleaved`; the ratio is
    ours_forward / onnxruntime (above 1: ours is slower). Skipped, with the reason,
    when onnx or onnxruntime is missing.
    """
    try:
        import onnxruntime
        from .export import DEFAULT_OPSET, build_onnx, require_onnx

        require_onnx()
    except ImportError:
        return {"skipped": "onnxruntime is not installed: pip install 'smartmixed_np[onnx]'"}
    except UserError as err:  # onnx itself is missing
        return {"skipped": str(err)}
    model = _phase1_network(sizes, seed).freeze(contiguous=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(build_onnx(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {"sizes": list(sizes), "onnxruntime": onnxruntime.__version__, "opset": DEFAULT_OPSET,
                              "provider": "CPUExecutionProvider", "intra_op_threads": threads}
    rng = np.random.default_rng(seed + 3)
    for batch in batches:
        x = rng.random((batch, sizes[0]), dtype=np.float32)
        contenders = {
            "ours_forward": lambda: model.forward(x, train=False),
            "ours_predict": lambda: model.predict(x),
            "onnxruntime": lambda: session.run(None, {"pixels": x}),
        }
        times = _interleaved(contenders, repeats, warmup, settle_s=settle_s)
        ours, theirs = model.forward(x), session.run(None, {"pixels": x})[0]
        result[f"batch_{batch}"] = {
            **times,
            "ours_vs_onnxruntime_ratio": times["ours_forward"]["median_ms"] / times["onnxruntime"]["median_ms"],
            "max_abs_logit_difference": float(np.abs(ours - theirs).max()),
        }
    return result


def _onnx_ratios(onnx: dict[str, Any], batches: Sequence[int] = ONNX_BATCHES) -> dict[str, float | None]:
    """``phase2_vs_onnxruntime_infer_batch{B}_ratio`` from :func:`_onnx_inference` (None when skipped)."""
    return {f"phase2_vs_onnxruntime_infer_batch{b}_ratio": onnx.get(f"batch_{b}", {}).get("ours_vs_onnxruntime_ratio")
            for b in batches}


# --------------------------------------------------------------------------- memory
def _memory(sizes: Sequence[int], batch: int, seed: int, steps: int) -> dict[str, Any]:
    """tracemalloc: NumPy memory held after warm-up vs after ``steps`` more steps, and peaks."""
    rng = np.random.default_rng(seed + 2)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    result: dict[str, Any] = {}
    for name, model in _numpy_networks(sizes, seed).items():
        step = _numpy_step(model, x, y)
        for _ in range(3):
            step()
        tracemalloc.start()
        try:
            step()
            tracemalloc.reset_peak()
            held_after_warmup, _ = tracemalloc.get_traced_memory()
            for _ in range(steps):
                step()
            held_mid, _ = tracemalloc.get_traced_memory()
            for _ in range(steps):
                step()
            held_after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        result[name] = {
            "held_after_warmup_bytes": held_after_warmup,
            "held_after_steps_bytes": held_mid,
            "held_after_twice_the_steps_bytes": held_after,
            "growth_first_window_bytes": held_mid - held_after_warmup,
            "growth_bytes": held_after - held_mid,
            "peak_during_steps_bytes": peak,
            "steps_per_window": steps,
            # A leak grows in every window; a one-off (a cache filled once) only in the
            # first. A few KiB of interpreter bookkeeping is not a (B, N) array (10^4+ bytes).
            "no_growth": bool(held_after - held_mid <= 4096),
        }
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


# --------------------------------------------------------------------------- machine, figure
def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info

        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def _machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "numpy": np.__version__, "blas_threads": threads, "dtype": "float32", "compiled_loops": compiled.status(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - the build description is informative only
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def _figure(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = report["main"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    names = [n for n in OURS + THEIRS if n in main["step"]]
    colors = ["#555555" if n == "floor" else ("#d62728" if n.startswith("torch") else "#1f77b4") for n in names]
    for ax, kind, title in ((axes[0], "step", "training step"), (axes[1], "infer", "inference forward")):
        med = [main[kind][n]["median_ms"] for n in names]
        err = [[m - main[kind][n]["q25_ms"] for n, m in zip(names, med)], [main[kind][n]["q75_ms"] - m for n, m in zip(names, med)]]
        ax.barh(names, med, xerr=err, color=colors)
        for i, (m, n) in enumerate(zip(med, names)):
            ax.text(max(m, main[kind][n]["q75_ms"]), i, f"  {m:.2f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median, bars: quartiles)")
        ax.set_title(f"{title}, {'-'.join(map(str, report['config']['sizes']))}, batch {report['config']['batch']}")
    ax = axes[2]
    sweep = report["batch_sweep"]
    batches = [row["batch"] for row in sweep]
    for name in names:
        ys = [1e3 * row["step"][name]["median_ms"] / row["batch"] for row in sweep if name in row["step"]]
        if len(ys) == len(batches):
            ax.plot(batches, ys, marker="o", label=name, linestyle="--" if name.startswith("torch") else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("µs per sample (training step)")
    ax.set_title("batch-size sweep")
    ax.legend(fontsize=8)
    machine = report["machine"]
    load = machine.get("load_average_at_start")
    load_text = f", 1-min load average at start {load[0]:.1f}" if load else ""
    fig.suptitle(f"smartmixed_np benchmarks: {machine['cpu']}, {machine['cpu_count']} cores, {machine['blas_threads']} BLAS threads "
                 f"(torch threads {machine.get('torch_threads')}), float32{load_text}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_writer(path, "wb") as file:
        fig.savefig(file, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point
def run_benchmarks(
    quick: bool = False,
    data_dir: str | None = None,
    json_path: str | None = None,
    figure_path: str | None = None,
    *,
    sizes: Sequence[int] | None = None,
    batch: int | None = None,
    seed: int = 0,
    with_torch: bool = True,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the benchmark suite and return (and optionally write) its report.

    Args:
        quick: a small network, few repeats, two batch sizes: seconds, for smoke
            tests; the figures are then not meaningful.
        data_dir: folder holding ``mnist/`` (or the MNIST folder itself) for the
            epoch-throughput benchmark; default ``$SMARTMIXED_DATA``; skipped (with a
            note in the report) when neither is set.
        json_path: write the report there as JSON (None: don't).
        figure_path: write a PNG of step times and the batch sweep there (None: don't).
        sizes: layer widths (default 784-512-256-128-10; quick: 784-64-32-10).
        batch: the main batch size (default 128; quick: 32).
        seed: seeds weights, data and noise.
        with_torch: include the PyTorch contenders when torch is importable.
        log: called with a line of progress per stage (default: silent).
        device: ``"cpu"`` or ``"gpu"`` (CuPy; PyTorch then runs on CUDA when it can).
            Every timed call is followed by a device synchronisation. The memory
            check (tracemalloc) sees host memory only and is skipped off the CPU.

    Returns:
        A dict: ``machine``, ``config``, ``main`` (step and infer timings per
        contender), ``onnx`` (ours against ONNX Runtime), ``ratios`` (every key contains ``ratio``; None where PyTorch or
        data are missing), ``batch_sweep``, ``width_sweep``, ``epoch``, ``memory``,
        ``targets`` (each target with its threshold, value and whether it is met).
    """
    say = log or (lambda line: None)
    plan = _QUICK if quick else _FULL
    sizes = list(sizes or ((784, 64, 32, 10) if quick else DEFAULT_SIZES))
    batch = int(batch or (32 if quick else 128))
    threads = _blas_threads()
    has_torch = with_torch and _torch_importable()
    dev = _device(device, has_torch)
    report: dict[str, Any] = {
        "machine": {**_machine(threads), "backend": dev.backend.name, "device": dev.backend.device,
                    "torch_device": dev.torch_device if has_torch else None},
        "config": {"quick": quick, "sizes": sizes, "batch": batch, "seed": seed, "repeats": plan["repeats"],
                   "warmup": plan["warmup"], "settle_s": plan["settle_s"], "clamp": CLAMP, "tau": TAU, "torch": has_torch},
    }
    if has_torch:
        import torch

        torch.set_num_threads(threads)
        report["machine"]["torch_threads"] = torch.get_num_threads()

    say(f"compiled loops: {report['machine']['compiled_loops']}")
    say(f"main: {'-'.join(map(str, sizes))} at batch {batch}")
    report["main"] = _measure(sizes, batch, seed, plan["repeats"], plan["warmup"], threads, has_torch, dev, plan["settle_s"])
    ratios = _ratios(report["main"])
    report["ratios_of_minima"] = {f"{key}_of_minima": value for key, value in _ratios(report["main"], "min_ms").items()}

    report["batch_sweep"] = []
    for b in plan["batches"]:
        say(f"batch sweep: {b}")
        timings = _measure(sizes, b, seed, plan["sweep_repeats"], max(2, plan["warmup"] // 2), threads, has_torch, dev,
                           plan["settle_s"])
        report["batch_sweep"].append({"batch": b, **timings, "ratios": _ratios(timings)})
    report["width_sweep"] = []
    for hidden in plan["widths"]:
        widths = [sizes[0], *hidden, sizes[-1]]
        say(f"width sweep: {'-'.join(map(str, widths))}")
        timings = _measure(widths, batch, seed, plan["sweep_repeats"], max(2, plan["warmup"] // 2), threads, has_torch, dev,
                           plan["settle_s"])
        report["width_sweep"].append({"sizes": widths, **timings, "ratios": _ratios(timings)})

    data_dir = data_dir or os.environ.get(DATA_ENV)
    if data_dir:
        say(f"epoch: MNIST from {data_dir}")
        epoch = _epoch_throughput(data_dir, sizes if not quick else sizes, batch, seed, plan["epoch_rounds"], threads,
                                  has_torch, train_limit=2000 if quick else None, dev=dev)
        report["epoch"] = epoch
        ratios["epoch_throughput_vs_torch_ratio"] = epoch.get("epoch_throughput_vs_torch_ratio")
        ratios["phase1_epoch_throughput_vs_torch_ratio"] = epoch.get("phase1_epoch_throughput_vs_torch_ratio")
    else:
        report["epoch"] = {"skipped": f"no data directory: pass data_dir or set {DATA_ENV}"}
        ratios["epoch_throughput_vs_torch_ratio"] = None
        ratios["phase1_epoch_throughput_vs_torch_ratio"] = None

    say("memory")
    if dev.backend.name == "numpy":
        report["memory"] = _memory(sizes, batch, seed, plan["memory_steps"])
    else:
        report["memory"] = {"skipped": f"tracemalloc sees host memory only; not measured on {dev.backend.name}"}
    say("ONNX Runtime")
    if dev.backend.name == "numpy":
        report["onnx"] = _onnx_inference(sizes, seed, threads, plan["repeats"], plan["warmup"], plan["settle_s"])
    else:
        report["onnx"] = {"skipped": f"ONNX Runtime is compared on the CPU only, not on {dev.backend.name}"}
    ratios.update(_onnx_ratios(report["onnx"]))
    report["ratios"] = ratios
    report["targets"] = _targets(ratios, report["memory"])
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        write_json(json_path, report)
    if figure_path:
        _figure(report, figure_path)
    return report


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


_TARGETS = (
    ("phase2_vs_relu_step_ratio", "<=", 1.10),
    ("phase2_vs_relu_infer_ratio", "<=", 1.10),
    ("relu_vs_floor_step_ratio", "<=", 1.5),
    ("phase1_vs_torch_step_ratio", "<=", 0.8),
    ("phase2_vs_torch_step_ratio", "<=", 0.7),
    ("epoch_throughput_vs_torch_ratio", ">=", 1.0),
)


def _targets(ratios: dict[str, float | None], memory: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for key, op, threshold in _TARGETS:
        value = ratios.get(key)
        met = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
        targets[key] = {"target": f"{op} {threshold}", "value": value, "met": met}
    measured = [v["no_growth"] for v in memory.values() if isinstance(v, dict)]
    targets["no_memory_growth"] = {"target": "no growth after warm-up", "met": all(measured) if measured else None}
    return targets
