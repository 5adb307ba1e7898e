#!/usr/bin/env bash
# The GPU check: what a machine with an NVIDIA GPU and no network runs, from the repository root.
#
#   benchmarks/gpu_check.sh                 # results under ./gpu_out (or $OUT)
#   GPU_CHECK_DRY=1 benchmarks/gpu_check.sh # print the commands, run nothing
#
# Steps, each under `timeout` (SIGINT first, so pytest still prints what it ran), each with its
# log under $OUT and its exit status in $OUT/summary.txt:
#   1. install: pip install --no-deps --no-build-isolation -e . (the machine has cupy-cuda13x,
#      torch, jax, numba, pytest, hypothesis already; nothing is downloaded);
#   2. environment: nvidia-smi and CuPy's configuration;
#   3. tests, CUDA kernels off: the core, engine and gradient test files below on the CuPy
#      backend (SMARTMIXED_TEST_BACKENDS=cupy; numpy and strict are CI's), plus
#      tests/test_cuda_engine.py, whose GPU tests compare every kernel with the reference;
#   4. the same tests with the kernels on (SMARTMIXED_CUDA_KERNELS=1): every layer the tests build
#      on the GPU then runs the kernels' engines;
#   5. kernel timing: train steps of the 784-512-256-128-10 network, phase 1 and phase 2, kernels
#      off against on ($OUT/kernel_timing.json; GPU_CHECK_TIMING_ROUNDS steps each, 40 by default,
#      on the backend GPU_CHECK_DEVICE, "gpu" by default: the test suite runs it on host-kernels);
#   6. smartmixed bench --device gpu --json $OUT/bench_gpu.json --plan device --no-jax, with the
#      kernels on (GPU_CHECK_BENCH_KERNELS=0 for the plain path; the JSON's config.cuda_kernels says
#      which families passed their self-check and ran): the issue's
#      network at batch 128 and 8192 and the MNIST epoch when SMARTMIXED_DATA is set, no width sweep,
#      no settle, JAX left out (its compiles would take the step's time); GPU_CHECK_BENCH=quick for a
#      smoke test, =full for the CPU's plan (both sweeps, about 4 minutes of settle times alone),
#      each with its own limit.
# The limits add up to 6 minutes (360 s with the device bench), so the check fits twice in 15 minutes
# of device time with the machine's start; a test step cut by its limit still reports what ran (and
# the 15 slowest tests, to choose the files for the next run).
# Exit status: 0 when every step passed, else 1 (the steps after a failure still run).

set -u -o pipefail

OUT=${OUT:-./gpu_out}
DRY=${GPU_CHECK_DRY:-0}
BACKENDS=${GPU_CHECK_BACKENDS:-cupy}
INSTALL_LIMIT=${GPU_CHECK_INSTALL_LIMIT:-40}
ENV_LIMIT=15
TEST_LIMIT=${GPU_CHECK_TEST_LIMIT:-95}
TIMING_LIMIT=${GPU_CHECK_TIMING_LIMIT:-40}
case "${GPU_CHECK_BENCH:-device}" in
    full)  # the CPU's plan, both sweeps and their settle times
        BENCH_ARGS=(--plan full)
        BENCH_LIMIT=${GPU_CHECK_BENCH_LIMIT:-300} ;;
    quick)  # a smoke test: a small network, figures not meaningful
        BENCH_ARGS=(--quick)
        BENCH_LIMIT=${GPU_CHECK_BENCH_LIMIT:-50} ;;
    *)  # the GPU's plan: the network at batch 128 and 8192, the MNIST epoch; JAX left out for time
        BENCH_ARGS=(--plan device --no-jax)
        BENCH_LIMIT=${GPU_CHECK_BENCH_LIMIT:-75} ;;
esac
PYTHON=${PYTHON:-python}

# The core, engine and gradient tests (the ones parametrised over the backend fixture, and the
# engines' own); the experiment-side files (train, sweep, report, CLI...) are left out for time.
# Most telling first: a step cut by its limit has run these.
TESTS=(
    tests/test_cuda_engine.py
    tests/test_fixed.py
    tests/test_mixture.py
    tests/test_optim.py
    tests/test_step.py
    tests/test_kernels.py
    tests/test_backend.py
    tests/test_mlp.py
    tests/test_activations.py
    tests/test_linear.py
    tests/test_losses.py
    tests/test_gradcheck.py
)
PYTEST_ARGS=(-q -ra -p no:cacheprovider --durations=15)

failed=0
if [ "$DRY" != "1" ]; then
    mkdir -p "$OUT"
    : > "$OUT/summary.txt"
fi

# step NAME LIMIT COMMAND...: run COMMAND under `timeout LIMIT`, output to $OUT/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    if [ "$DRY" = "1" ]; then
        printf '[%s] timeout --signal=INT --kill-after=10 %s' "$name" "$limit"
        printf ' %q' "$@"
        printf ' > %q 2>&1\n' "$OUT/$name.log"
        return 0
    fi
    local start rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

step install "$INSTALL_LIMIT" "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e .
step environment "$ENV_LIMIT" bash -c "nvidia-smi; $PYTHON -c 'import cupy; cupy.show_config()'"
step tests_kernels_off "$TEST_LIMIT" env SMARTMIXED_TEST_BACKENDS="$BACKENDS" SMARTMIXED_CUDA_KERNELS=0 \
    "$PYTHON" -m pytest "${TESTS[@]}" "${PYTEST_ARGS[@]}" --junitxml="$OUT/tests_kernels_off.xml"
step tests_kernels_on "$TEST_LIMIT" env SMARTMIXED_TEST_BACKENDS="$BACKENDS" SMARTMIXED_CUDA_KERNELS=1 \
    "$PYTHON" -m pytest "${TESTS[@]}" "${PYTEST_ARGS[@]}" --junitxml="$OUT/tests_kernels_on.xml"
step kernel_timing "$TIMING_LIMIT" "$PYTHON" -c '
import json, os, sys, time
import numpy as np
from smartmixed_np.backend import get_backend
from smartmixed_np.fast import cuda
from smartmixed_np.nn.mlp import MLP
from smartmixed_np.nn.optim import Adam
from smartmixed_np.nn.step import train_step

backend = get_backend(os.environ.get("GPU_CHECK_DEVICE", "gpu"))
rounds = int(os.environ.get("GPU_CHECK_TIMING_ROUNDS", "40"))
rng = np.random.default_rng(0)
x = backend.asarray(rng.standard_normal((128, 784)).astype(np.float32))
y = backend.asarray(rng.integers(0, 10, 128))
report = {"status": {}}
for on in (False, True):
    cuda.enable(on)
    cuda.reset()
    for kind in ("smartmixed", "frozen"):
        model = MLP([784, 512, 256, 128, 10], "smartmixed", seed=0, device=backend)
        if kind == "frozen":
            model = model.freeze()
        optimizer = Adam(model.parameters())
        grads = model.gradients()
        for _ in range(5):
            train_step(model, optimizer, x, y, clip=1.0, grads=grads)
        backend.synchronize()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            train_step(model, optimizer, x, y, clip=1.0, grads=grads)
            backend.synchronize()
            times.append(time.perf_counter() - start)
        engines = sorted({getattr(a, "engine", None).name for a in model.activations})
        key = ("on_" if on else "off_") + kind
        report[key] = {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times)),
                       "engines": engines, "adam_kernel": optimizer.cuda is not None}
        print(key, report[key], flush=True)
    report["status"]["on" if on else "off"] = cuda.status()
json.dump(report, open(sys.argv[1], "w"), indent=2)
' "$OUT/kernel_timing.json"
step bench "$BENCH_LIMIT" env SMARTMIXED_CUDA_KERNELS="${GPU_CHECK_BENCH_KERNELS:-1}" \
    smartmixed bench --device gpu --json "$OUT/bench_gpu.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}

if [ "$DRY" != "1" ]; then
    echo "== summary ($OUT/summary.txt)"
    cat "$OUT/summary.txt"
fi
exit "$failed"
