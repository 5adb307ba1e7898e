"""Run the benchmark suite: ``python -m benchmarks.run --json FILE [--figure PNG] [--quick] [--data-dir D] [--no-torch] [--no-jax]``.

A thin command line over :func:`smartmixed_np.experiments.bench.run_benchmarks` (the same
function that ``smartmixed bench`` calls). The data directory defaults to
``$SMARTMIXED_DATA``; without one the MNIST epoch benchmark is skipped. The progress
log on stderr opens with the machine: CPU model and vector extensions, BLAS library,
version, kernels and threads, and the versions of PyTorch and JAX (or the line saying
that a contender is skipped).
"""

from __future__ import annotations

import argparse
import json
import sys

from smartmixed_np.experiments.bench import run_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the report (JSON)")
    parser.add_argument("--figure", default=None, help="where to write the PNG figure")
    parser.add_argument("--quick", action="store_true", help="tiny network, few repeats (a smoke test)")
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $SMARTMIXED_DATA)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch contenders")
    parser.add_argument("--no-jax", action="store_true", help="leave out the JAX contenders")
    args = parser.parse_args(argv)
    report = run_benchmarks(args.quick, args.data_dir, args.json, args.figure, with_torch=not args.no_torch,
                            with_jax=not args.no_jax,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
