"""The benchmark suite runs end to end in quick mode and reports every figure (no timing assertions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smartmixed_np.experiments import bench
from smartmixed_np.experiments.bench import parse_cpuinfo, run_benchmarks

RATIO_KEYS = [
    "phase2_vs_relu_step_ratio",
    "phase2_vs_relu_infer_ratio",
    "phase2_masked_vs_relu_step_ratio",
    "relu_vs_floor_step_ratio",
    "phase1_vs_relu_step_ratio",
    "floor_update_vs_floor_step_ratio",
    "relu_vs_floor_update_step_ratio",
]
TORCH_RATIO_KEYS = ["phase1_vs_torch_step_ratio", "phase2_vs_torch_step_ratio", "relu_vs_torch_step_ratio"]
EPOCH_RATIO_KEYS = ["epoch_throughput_vs_torch_ratio", "phase1_epoch_throughput_vs_torch_ratio"]
JAX_RATIO_KEYS = [f"{ours}_vs_jax_{kind}_ratio" for kind in ("step", "infer") for ours in ("phase1", "phase2", "relu")]
JAX_MISSING = "JAX contenders skipped: jax is not installed (a planted absence)"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick run, with JAX planted as missing (its contenders compile for seconds
    per shape; they are tested on their own below): the run must skip them cleanly."""
    folder = tmp_path_factory.mktemp("bench")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SMARTMIXED_DATA", raising=False)  # no data: the epoch benchmark is skipped
        patch.setattr(bench, "_jax_available", lambda: JAX_MISSING)
        report = run_benchmarks(
            quick=True, data_dir=None, json_path=str(folder / "bench.json"), figure_path=str(folder / "bench.png"),
            sizes=[20, 12, 8, 4], batch=8, log=lines.append,
        )
    report["log"] = lines
    return report, folder


def test_quick_run_writes_json_and_figure(quick_report):
    report, folder = quick_report
    on_disk = json.loads((folder / "bench.json").read_text())
    assert on_disk["ratios"].keys() == report["ratios"].keys()
    assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("machine", "config", "main", "ratios", "batch_sweep", "width_sweep", "epoch", "memory", "targets"):
        assert key in on_disk
    assert on_disk["machine"]["blas_threads"] >= 1 and on_disk["machine"]["numpy"]
    assert "skipped" in on_disk["epoch"]  # no data directory was given


def test_every_ratio_is_named_as_one_and_is_finite_where_measurable(quick_report):
    report, _ = quick_report
    ratios = report["ratios"]
    assert all("ratio" in key for key in ratios)
    for key in RATIO_KEYS:
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    torch_present = report["config"]["torch"]
    for key in TORCH_RATIO_KEYS:
        assert key in ratios
        if torch_present:
            assert math.isfinite(ratios[key]) and ratios[key] > 0, key
        else:
            assert ratios[key] is None
    for key in EPOCH_RATIO_KEYS:
        assert key in ratios and ratios[key] is None  # no data: reported as missing, not invented
    for row in report["batch_sweep"] + report["width_sweep"]:
        for key in RATIO_KEYS:
            assert math.isfinite(row["ratios"][key]), key


def test_every_contender_is_timed_for_step_and_inference(quick_report):
    report, _ = quick_report
    names = ["floor", "relu", "phase1", "phase2_masked", "phase2_contiguous"]
    if report["config"]["torch"]:
        names += ["torch_relu", "torch_phase1", "torch_phase2"]
    for kind in ("step", "infer"):
        for name in names:
            timing = report["main"][kind][name]
            assert timing["median_ms"] > 0 and timing["repeats"] >= 1
    # the products plus the update: a training step's contender only
    assert report["main"]["step"]["floor_update"]["median_ms"] > 0 and "floor_update" not in report["main"]["infer"]
    assert "floor_update_vs_floor_infer_ratio" not in report["ratios"]


def test_floor_update_runs_the_update_of_a_step():
    """The update contender is the floor's products, then the clipping factor and Adam's step
    over a ReLU network's fixed random gradients: its parameters after two calls are those
    of a twin network updated by hand."""
    from smartmixed_np.core.optim import clip_factor
    from smartmixed_np.nn.mlp import MLP
    from smartmixed_np.nn.optim import Adam

    calls = []
    step = bench._floor_update([6, 5, 3], 0, lambda: calls.append(1))
    twin = MLP([6, 5, 3], "relu", seed=0)
    grads = twin.gradients()
    rng = np.random.default_rng(2)
    for g in grads.values():
        g[...] = rng.standard_normal(g.shape).astype(twin.dtype)
    optimizer = Adam(twin.parameters(), lr=1e-3)
    start = {k: v.copy() for k, v in twin.parameters().items()}
    for _ in range(2):
        step()
        optimizer.step(grads, scale=clip_factor(grads, 1.0)[1])
    assert calls == [1, 1]
    ours = step.model.parameters()
    for name, p in twin.parameters().items():
        assert np.array_equal(ours[name], p), name
        assert not np.array_equal(p, start[name]), name  # every parameter moved


def test_memory_section_reports_growth_per_network(quick_report):
    report, _ = quick_report
    for name in ("relu", "phase1", "phase2_masked", "phase2_contiguous"):
        entry = report["memory"][name]
        assert {"growth_bytes", "peak_during_steps_bytes", "no_growth"} <= entry.keys()
    assert report["targets"]["no_memory_growth"]["met"] in (True, False)


@pytest.mark.parametrize("device", ["strict", "host-kernels"])
def test_the_suite_runs_on_a_device_backend(tmp_path, device):
    """On a device backend every contender runs there and syncs: the strict CuPy-like one, and
    host-kernels with the CUDA kernels on (their C compiled for the CPU, tests/host_kernels.py),
    where every network of the suite takes the kernels' engines and Adam the kernel."""
    from smartmixed_np.backend import available_backends
    from smartmixed_np.fast import cuda

    if device not in available_backends():
        pytest.skip(f"no {device} backend here (host-kernels needs a C++ compiler)")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SMARTMIXED_DATA", raising=False)
        patch.setenv(cuda.KERNELS_ENV, "1" if device == "host-kernels" else "0")
        cuda.reset()
        networks = bench._numpy_networks([20, 12, 8, 4], 0, bench._device(device, False))
        engines = {act.engine.name for model in networks.values() for act in model.activations}
        report = run_benchmarks(quick=True, json_path=str(tmp_path / "b.json"), sizes=[20, 12, 8, 4], batch=8,
                                with_torch=False, with_jax=False, device=device)  # JAX on a device: tested below
        cuda.reset()
    assert engines == ({"cuda"} if device == "host-kernels" else {"fused"})
    status = report["config"]["cuda_kernels"]  # which kernel families ran, for reading GPU figures
    assert (status == "host-kernels: " + ", ".join(f"{family} on" for family in cuda.Kernels.FAMILIES)
            if device == "host-kernels" else status.startswith("off"))
    assert report["machine"]["backend"] == device
    assert "skipped" in report["memory"] and report["targets"]["no_memory_growth"]["met"] is None
    for key in RATIO_KEYS:
        assert math.isfinite(report["ratios"][key]), key


def test_pytorch_cuda_graph_contenders_only_on_cuda_and_a_refused_capture_is_one_line():
    torch = pytest.importorskip("torch")
    assert bench._torch_graph_contenders([20, 12, 4], 8, 0, 1, bench._CPU) == ({}, None)
    if torch.cuda.is_available():  # pragma: no cover - the GPU machine's: the capture itself, replayed
        graphed, why = bench._torch_graph_contenders([20, 12, 4], 8, 0, 1, bench._Device(bench._CPU.backend, "cuda"))
        assert why is None and sorted(graphed) == ["torch_phase1_graph", "torch_phase2_graph", "torch_relu_graph"]
        for step in graphed.values():
            step()
        return
    graphed, why = bench._torch_graph_contenders([20, 12, 4], 8, 0, 1, bench._Device(bench._CPU.backend, "cuda"))
    assert graphed == {} and why.startswith("PyTorch CUDA-graph contenders skipped: ") and "\n" not in why


def test_ratios_against_pytorch_cuda_graphs_where_they_were_timed():
    def timed(*names):
        return {name: {"median_ms": float(i + 1), "min_ms": 1.0} for i, name in enumerate(names)}

    ours = ("relu", "phase1", "phase2_contiguous")
    plain = bench._ratios({"step": timed(*ours), "infer": timed(*ours)})
    assert "phase1_vs_torch_graph_step_ratio" not in plain
    steps = {**timed(*ours), **timed("torch_relu_graph", "torch_phase1_graph", "torch_phase2_graph")}
    graphed = bench._ratios({"step": steps, "infer": timed(*ours)})
    assert graphed["phase1_vs_torch_graph_step_ratio"] == 2.0 / 2.0
    assert graphed["phase2_vs_torch_graph_step_ratio"] == 3.0 / 3.0 and graphed["relu_vs_torch_graph_step_ratio"] == 1.0
    targets = bench._targets(graphed, {}, {}, "gpu", jit=False)
    assert targets["phase1_vs_torch_graph_step_ratio"]["target"] == "<= 1.0"
    assert "phase1_vs_torch_graph_step_ratio" not in bench._targets(graphed, {}, {}, "cpu", jit=False)


def test_a_gpu_takes_the_device_plan_with_the_floor_batch_and_its_target(tmp_path):
    """On a backend that stands for a GPU the default plan is ``device``: batch 128 and the floor
    target's batch, no width sweep, no settle; the ReLU/floor ratio at that batch is a GPU target."""
    from smartmixed_np.backend import available_backends

    if "host-kernels" not in available_backends():
        pytest.skip("no host-kernels backend here (it needs a C++ compiler)")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SMARTMIXED_DATA", raising=False)
        report = run_benchmarks(sizes=[20, 12, 8, 4], with_torch=False, with_jax=False, device="host-kernels")
    assert report["config"]["plan"] == "device" and report["config"]["settle_s"] == 0.0
    assert [row["batch"] for row in report["batch_sweep"]] == [bench.FLOOR_BATCH] and report["width_sweep"] == []
    key = f"relu_vs_floor_step_ratio_at_batch_{bench.FLOOR_BATCH}"
    assert math.isfinite(report["ratios"][key]) and math.isfinite(report["ratios_of_minima"][f"{key}_of_minima"])
    assert report["targets"][key]["target"] == "<= 1.3" and report["targets"][key]["met"] in (True, False)
    with pytest.raises(ValueError, match="plan must be one of"):
        run_benchmarks(plan="thorough", with_torch=False, with_jax=False)


# --------------------------------------------------------------------------- machine facts
CPUINFO_AVX512 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile

processor\t: 1
model name\t: a second processor that must not be read
flags\t\t: sse2
"""
CPUINFO_AVX2 = "processor : 0\nmodel name : AMD Ryzen 7 3700X\nflags : sse4_1 sse4_2 avx avx2 fma\n"
CPUINFO_ARM = "processor : 0\nBogoMIPS : 50.00\nFeatures : fp asimd evtstrm aes sve sve2\nCPU implementer : 0x41\n"


@pytest.mark.parametrize(
    "text, cpu, flags, simd",
    [
        (CPUINFO_AVX512, "Intel(R) Xeon(R) Platinum 8480+",
         ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
          "avx512_bf16", "amx_tile"], "AVX-512"),
        (CPUINFO_AVX512.replace(" amx_tile", ""), "Intel(R) Xeon(R) Platinum 8480+",
         ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
          "avx512_bf16"], "AVX-512"),
        (CPUINFO_AVX2, "AMD Ryzen 7 3700X", ["sse4_1", "sse4_2", "avx", "avx2", "fma"], "AVX2"),
        ("model name : old\nflags : sse2 sse4_2\n", "old", ["sse4_2"], "SSE4.2"),
        (CPUINFO_ARM, None, ["asimd", "sve", "sve2"], "SVE"),
        (CPUINFO_ARM.replace(" sve sve2", ""), None, ["asimd"], "NEON"),
        ("", None, [], None),
    ],
)
def test_parse_cpuinfo_names_the_model_the_vector_extensions_and_the_widest(text, cpu, flags, simd):
    assert parse_cpuinfo(text) == {"cpu": cpu, "cpu_flags": flags, "simd": simd}


def test_the_machine_section_reads_cpuinfo_and_blas_and_the_header_says_so(tmp_path):
    planted = tmp_path / "cpuinfo"
    planted.write_text(CPUINFO_AVX2)
    machine = bench._machine(2, cpuinfo_path=str(planted))
    assert (machine["cpu"], machine["simd"], machine["cpu_flags"][-1]) == ("AMD Ryzen 7 3700X", "AVX2", "fma")
    assert machine["cpus_usable"] >= 1 and machine["blas_threads"] == 2
    blas = machine["blas_library"]  # NumPy's BLAS is loaded, so threadpoolctl sees it
    assert blas == machine["blas_libraries"][0]
    assert blas["internal_api"] and blas["version"] and blas["num_threads"] >= 1 and "architecture" in blas
    assert not any("filepath" in entry for entry in machine["blas_libraries"])  # no path of the machine in a report
    header = bench._machine_header(machine)
    assert header[0].startswith("cpu: AMD Ryzen 7 3700X") and "SIMD AVX2 (sse4_1 sse4_2 avx avx2 fma)" in header[0]
    assert header[1].startswith(f"blas: {blas['internal_api']} {blas['version']} (")
    assert bench._machine(2, cpuinfo_path=str(tmp_path / "absent"))["simd"] is None  # no /proc: unknown, not a failure


def test_the_quick_run_reports_the_machine_and_skips_jax_in_one_line(quick_report):
    report, _ = quick_report
    machine = report["machine"]
    assert {"cpu", "cpu_flags", "simd", "blas_library", "blas_libraries", "cpus_usable", "jax"} <= machine.keys()
    assert machine["jax"] is None and report["config"]["jax"] is False
    assert report["log"][0].startswith("cpu: ") and report["log"][1].startswith("blas: ")
    assert [line for line in report["log"] if "JAX" in line] == [JAX_MISSING]
    assert not [key for key in report["ratios"] if "jax" in key]
    assert not [name for name in report["main"]["step"] if name.startswith("jax")]


# --------------------------------------------------------------------------- JAX contenders
SIZES, BATCH, SEED = [20, 12, 8, 4], 8, 0  # shared by the tests below, so that jit compiles each step once


@pytest.fixture(scope="module")
def jax_batch():
    pytest.importorskip("jax")
    rng = np.random.default_rng(SEED + 1)
    return rng.standard_normal((BATCH, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], BATCH)


def _twins(kind):
    """Our network of ``kind`` and its JAX twin's (groups, params), on the same weights."""
    ours = {"relu": "relu", "phase1": "phase1", "phase2": "phase2_contiguous"}[kind]
    model = bench._numpy_networks(SIZES, SEED)[ours]
    return model, *bench._jax_network(model, kind)


def _shared_noise(model, seed=7):
    rng = np.random.default_rng(seed)
    return [rng.gumbel(size=tuple(act.logits.shape)).astype(np.float32) for act in model.activations]


@pytest.mark.parametrize("kind", ["relu", "phase1", "phase2"])
def test_the_jitted_jax_step_computes_our_loss_gradients_and_update(jax_batch, kind, monkeypatch):
    """Two jitted JAX steps against two of our ``train_step`` on the same weights and batch,
    in phase 1 with the same Gumbel noise (the noise the step draws from its key, served
    to our layers): the same loss before each update, the same clipped gradients (Adam's
    first moment after step 1 is $(1-\\beta_1) f g$), the same moments and parameters after
    step 2. To float32 rounding, measured against each array's largest entry (1e-5 of
    it): the operations are the same, their order is not (XLA fuses and reassociates),
    and the logits' gradient, a softmax backward $y (dy - \\langle y, dy\\rangle)$, cancels,
    so its small entries keep fewer correct digits than the large ones (seen: 3.6e-5
    relative on an entry 1/15 of the largest)."""
    import jax
    import jax.numpy as jnp

    from smartmixed_np.core.optim import clip_factor
    from smartmixed_np.nn.step import train_step

    x, y = jax_batch
    x = 4 * x  # large enough inputs that the clipping acts (factor < 0.9, asserted below)
    model, groups, params = _twins(kind)
    kit = bench._jax_kit()
    device = jax.devices("cpu")[0]
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)  # noqa: E731
    state = jax.device_put(({k: jnp.asarray(p) for k, p in params.items()}, zeros(params), zeros(params),
                            jnp.zeros((), jnp.float32), jax.random.PRNGKey(SEED)), device)
    step_x, step_y = jax.device_put((jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32)), device)
    optimizer = bench.Adam(model.parameters(), lr=1e-3)

    def assert_close(theirs, ours, what):
        assert theirs.keys() == ours.keys()
        for name, value in ours.items():
            np.testing.assert_allclose(np.asarray(theirs[name]), value, rtol=1e-5, atol=1e-5 * float(np.abs(value).max()),
                                       err_msg=f"{what} {name}")

    for step in (1, 2):
        if kind == "phase1":
            noise = kit.draw_noise(state[0], state[4])[0]
            for act, g in zip(model.activations, noise):
                monkeypatch.setattr(act, "draw_noise", lambda batch, rng=None, g=np.asarray(g): g.copy())
        state, value = kit.step(state, step_x, step_y, kind=kind, groups=groups)
        loss, _ = train_step(model, optimizer, x, y, 1.0)
        assert float(value) == pytest.approx(float(loss), rel=1e-6), step
        if step == 1:
            assert clip_factor(model.gradients(), 1.0)[1] < 0.9  # the clipping is part of what is compared
            assert_close(state[1], optimizer.m, "first moment (the clipped gradient) of")
    assert float(state[3]) == 2.0
    assert_close(state[1], optimizer.m, "first moment of")
    assert_close(state[2], optimizer.v, "second moment of")
    assert_close(state[0], model.parameters(), "parameter")


def test_the_jax_contenders_are_timed_beside_ours_and_get_their_ratios(jax_batch):
    """Through the harness, beside ours on a device backend (the strict CuPy-like one: our
    weights reach JAX through ``to_host``; JAX itself runs on the CPU, having no GPU here)."""
    timings = bench._measure(SIZES, BATCH, SEED, repeats=2, warmup=1, threads=1, with_torch=False,
                             dev=bench._device("strict", False), with_jax=True)
    for kind in ("step", "infer"):
        for name in bench.JAX:
            assert timings[kind][name]["median_ms"] > 0 and timings[kind][name]["repeats"] == 2
    ratios = bench._ratios(timings)
    for key in JAX_RATIO_KEYS:
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    machine = bench._jax_machine(started=True)
    assert machine["jax"] and machine["jaxlib"] and machine["jax_default_backend"] == "cpu"
    assert any(line.startswith(f"jax {machine['jax']}") for line in bench._machine_header({**bench._machine(1), **machine}))


# --------------------------------------------------------------------------- targets, instruction-set limit
def test_targets_follow_the_device_and_the_compiled_loops():
    """The issue's thresholds: phase 1 <= 1.3x ReLU with the compiled loops, <= 1.8x without; the
    JAX and floor targets on the CPU only, the epoch-throughput one on the GPU only; each checked on
    medians and on minima."""
    ratios = {"phase1_vs_relu_step_ratio": 1.5, "relu_vs_floor_step_ratio": 1.2, "phase2_vs_relu_step_ratio": 1.06,
              "relu_vs_jax_step_ratio": 0.69, "epoch_throughput_vs_torch_ratio": 2.5}
    minima = {"phase1_vs_relu_step_ratio_of_minima": 1.25, "phase2_vs_relu_step_ratio_of_minima": 1.0}
    memory = {"relu": {"no_growth": True}, "ru_maxrss_kib": 1}
    peaks = {"batch": 1024, "phase1_vs_relu_peak_ratio": 1.6}
    jit = bench._targets(ratios, memory, minima, "cpu", jit=True, memory_peaks=peaks)
    assert jit["phase1_vs_relu_step_ratio"] == {"target": "<= 1.3", "value": 1.5, "met": False, "value_of_minima": 1.25,
                                                "met_by_minima": True}
    assert jit["relu_vs_floor_step_ratio"]["met"] is True and jit["relu_vs_jax_step_ratio"]["met"] is True
    assert jit["phase2_vs_relu_step_ratio"]["met"] is False and jit["phase2_vs_relu_step_ratio"]["met_by_minima"] is True
    assert jit["phase1_vs_jax_step_ratio"]["met"] is None  # not measured
    assert "epoch_throughput_vs_torch_ratio" not in jit
    assert jit["no_memory_growth"]["met"] is True
    assert jit["phase1_vs_relu_peak_memory_ratio"] == {"target": "<= 1.5 at batch 1024", "value": 1.6, "met": False}
    nojit = bench._targets(ratios, memory, minima, "cpu", jit=False)
    assert nojit["phase1_vs_relu_step_ratio"]["target"] == "<= 1.8" and nojit["phase1_vs_relu_step_ratio"]["met"] is True
    gpu = bench._targets(ratios, {}, {}, "gpu", jit=False)
    assert gpu["epoch_throughput_vs_torch_ratio"]["met"] is True
    assert "relu_vs_floor_step_ratio" not in gpu and "relu_vs_jax_step_ratio" not in gpu
    assert gpu["no_memory_growth"]["met"] is None and gpu["phase1_vs_relu_peak_memory_ratio"]["met"] is None


def test_memory_peaks_compare_phase1_with_relu_from_before_the_network_is_built():
    peaks = bench._memory_peaks([30, 16, 8, 4], 32, 0, steps=2)
    # at least the weights and Adam's two moments of every parameter (float32)
    n_params = sum(i * o + o for i, o in zip([30, 16, 8], [16, 8, 4]))
    assert peaks["relu_peak_bytes"] >= 3 * 4 * n_params
    assert peaks["phase1_peak_bytes"] >= peaks["phase1_held_bytes"] > 0
    assert peaks["phase1_vs_relu_peak_ratio"] == peaks["phase1_peak_bytes"] / peaks["relu_peak_bytes"]


def test_isa_environment_names_every_library_and_refuses_an_unknown_limit():
    env = bench.isa_environment("avx2")
    assert env[bench.ISA_ENV] == "avx2"
    assert {"NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE", "NUMBA_CPU_NAME", "XLA_FLAGS"} <= env.keys()
    with pytest.raises(ValueError, match="unknown instruction-set limit 'avx9'"):
        bench.isa_environment("avx9")


def test_compiled_loops_under_the_avx2_limit_use_no_avx512_instruction(tmp_path):
    """Numba, started with the limit's environment, emits no zmm register and no mask register
    (with NUMBA_CPU_NAME alone it would: the features default to the host's)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("numba", reason="the compiled loops need the 'fast' extra (numba)")
    code = (
        "import re, numpy as np\n"
        "from smartmixed_np.fast import compiled\n"
        "from smartmixed_np.nn.layers import FixedMixedActivation\n"
        "layer = FixedMixedActivation(np.arange(6), None, contiguous=True)\n"
        "zT = np.ones((6, 64), np.float32)\n"
        "compiled.grouped_forward(zT, layer.engine.table(zT.dtype), np.empty_like(zT), np.empty_like(zT))\n"
        "loop = compiled._float32_forward_loop.dispatcher()\n"
        "asm = loop.inspect_asm(loop.signatures[0])\n"
        "print(len(re.findall('zmm', asm)), len(re.findall('%k[1-7]', asm)), len(asm))"
    )
    from smartmixed_np.fast import compiled

    # the loops on in the child whatever this process's switch says (it inspects their code)
    env = {**os.environ, **bench.isa_environment("avx2"), "NUMBA_CACHE_DIR": str(tmp_path), compiled.JIT_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    zmm, masks, size = map(int, done.stdout.split())
    assert size > 1000 and zmm == 0 and masks == 0


def test_numpy_under_the_avx2_limit_dispatches_to_nothing_wider():
    """In a process started with the limit's environment NumPy reports no AVX-512 target
    (on a CPU without AVX-512 that holds trivially; on one with it, it is the limit at work)."""
    import os
    import subprocess
    import sys

    code = "from smartmixed_np.backend import numpy_simd; print(' '.join(numpy_simd()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **bench.isa_environment("avx2")},
                         capture_output=True, text=True, check=True).stdout.split()
    assert not any(name.startswith(("AVX512", "X86_V4")) for name in out), out


def test_bench_isa_option_runs_the_command_again_with_the_limit(monkeypatch, tmp_path):
    """`smartmixed bench --isa avx2` re-runs itself in a fresh process with the limit's environment
    (the libraries read it when they load) and returns that process's status; a parent environment's
    limit is dropped for --isa native."""
    import subprocess

    from smartmixed_np import cli

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, env: calls.append((argv, env)) or subprocess.CompletedProcess(argv, 3))
    monkeypatch.setattr(bench, "run_benchmarks", lambda **kw: pytest.fail("the parent must not measure"))
    argv = ["bench", "--quick", "--isa", "avx2", "--json", str(tmp_path / "b.json")]
    assert cli.main(argv) == 3
    (child_argv, env), = calls
    assert child_argv[1:] == ["-m", "smartmixed_np", *argv]
    assert env[bench.ISA_ENV] == "avx2" and env["OPENBLAS_CORETYPE"] == "Haswell"
    calls.clear()
    monkeypatch.setenv(bench.ISA_ENV, "avx2")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert cli.main(["bench", "--quick", "--json", str(tmp_path / "b.json")]) == 3
    (_, env), = calls
    assert bench.ISA_ENV not in env and "OPENBLAS_CORETYPE" not in env
