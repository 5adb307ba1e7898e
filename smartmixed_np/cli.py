"""The ``smartmixed`` command (also ``python -m smartmixed_np``).

Subcommands: ``train``, ``sweep``, ``report``, ``evaluate``, ``demo``, ``archs``, ``activations``, ``bench``.
A user error (a bad option, a missing or corrupt file, an unknown name) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import UserError

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _UserArgumentError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, raised rather than printed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UserArgumentError(f"{self.prog}: error: {message} (see --help)")


def _bounded(convert: Any, lowest: float, inclusive: bool, description: str) -> Any:
    """An argparse type: ``convert(text)``, at least (or above) ``lowest``, finite."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not (value >= lowest if inclusive else value > lowest) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, 1, True, "a positive integer")
_non_negative_int = _bounded(int, 0, True, "a non-negative integer")
_positive_float = _bounded(float, 0.0, False, "a positive number")


def _optional_positive_float(text: str) -> float | None:
    """A positive number, or ``none``/``0`` to disable."""
    if text.lower() in ("none", "off", "0", "0.0"):
        return None
    return _positive_float(text)


def _hidden(text: str) -> tuple[int, ...]:
    from .archs import parse_hidden

    try:
        return parse_hidden(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from .data import DATASETS

    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="mnist", choices=DATASETS, help="dataset (default: mnist)")
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the IDX files (the dataset's folder, or a parent holding <dataset>/); "
        "default: $SMARTMIXED_DATA/<dataset>, else downloaded once into the user cache",
    )
    group.add_argument("--train-limit", type=_positive_int, metavar="N", help="use only N official training images (quick runs)")
    group.add_argument("--split-seed", type=_non_negative_int, default=0, help="seed of the train/validation split (default: 0)")


def _add_training_options(parser: argparse.ArgumentParser, *, single_run: bool) -> None:
    """The training options of ``train``; ``sweep`` shares them, less what it sets per run.

    ``single_run`` adds what only a single run has: ``--model``, ``--arch``/``--hidden``,
    ``--seed``, ``--out``, ``--resume``, ``--quiet`` (a sweep sets these per run).
    """
    from .mixture import NOISE_MODES

    _add_data_options(parser)
    model = parser.add_argument_group("model")
    if single_run:
        model.add_argument("--model", default="smartmixed", help="'smartmixed' or a candidate name such as relu, elu (default: smartmixed)")
        shape = model.add_mutually_exclusive_group()
        shape.add_argument("--arch", type=int, metavar="ID", help="a published architecture by ID (see `smartmixed archs`)")
        shape.add_argument("--hidden", type=_hidden, metavar="W1,W2,...", help="hidden widths (default: 512,256,128)")
    model.add_argument("--tau", type=_positive_float, default=0.3, help="Gumbel-softmax temperature (default: 0.3)")
    model.add_argument("--tau-final", type=_positive_float, help="anneal tau exponentially to this value over phase 1")
    model.add_argument("--soft", action="store_true", help="soft mixture instead of hard straight-through selection")
    model.add_argument("--noise", choices=NOISE_MODES, default="shared", help="Gumbel noise: one draw per batch (shared), per sample, or none")
    model.add_argument("--clamp", type=_optional_positive_float, default=10.0, help="clamp of candidate outputs (default: 10; 'none' disables)")
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=_positive_int, default=400, help="total epochs (default: 400)")
    schedule.add_argument("--transition-epoch", type=_positive_int, default=50, help="epochs of phase 1 (default: 50)")
    schedule.add_argument("--phase2-init", choices=("carry", "fresh"), default="carry", help="phase 2 starts from the phase-1 weights (carry) or fresh ones")
    schedule.add_argument("--masked-groups", action="store_true", help="phase 2 with masked groups instead of contiguous slices")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    optim.add_argument("--lr", type=_positive_float, default=1e-4, help="learning rate (default: 1e-4)")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--batch-size", type=_positive_int, default=128, help="(default: 128)")
    optim.add_argument("--clip", type=_optional_positive_float, default=1.0, help="global gradient-norm clip (default: 1.0; 'none' disables)")
    run = parser.add_argument_group("run")
    if single_run:
        run.add_argument("--seed", type=_non_negative_int, default=0, help="seed of everything random (default: 0)")
    run.add_argument("--device", default="cpu", help="cpu or gpu (needs CuPy: pip install 'smartmixed_np[gpu]')")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    if single_run:
        run.add_argument("--out", metavar="DIR", help="run folder (default: runs/<dataset>_<model>_<arch>_seed<seed>_<time>)")
        run.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its saved options are used)")
        run.add_argument("--quiet", action="store_true", help="no progress bars: one log line per epoch")


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields that ``_add_training_options`` gives to both train and sweep."""
    return dict(
        dataset=args.dataset, data_dir=args.data_dir, train_limit=args.train_limit, split_seed=args.split_seed,
        epochs=args.epochs, transition_epoch=args.transition_epoch, lr=args.lr, batch_size=args.batch_size,
        clip=args.clip, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule, tau=args.tau, tau_final=args.tau_final, hard=not args.soft,
        noise_mode=args.noise, clamp=args.clamp, phase2_init=args.phase2_init, contiguous=not args.masked_groups,
        device=args.device, dtype=args.dtype,
    )


def _id_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (published architecture IDs, checked)."""
    from .archs import get_architecture

    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated architecture IDs, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"expected comma-separated architecture IDs, got {text!r}")
    for arch_id in ids:
        try:
            get_architecture(arch_id)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return ids


def _name_list(text: str) -> list[str]:
    """``"relu,smartmixed"`` -> names, each 'smartmixed' or a registered activation."""
    from .activations import get_activation

    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    for name in names:
        if name != "smartmixed":
            try:
                get_activation(name)
            except ValueError as err:
                raise argparse.ArgumentTypeError(f"{err} (or 'smartmixed')") from None
    return names


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [_non_negative_int(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``smartmixed`` command."""
    from .sweep import DEFAULT_MODELS

    parser = _Parser(
        prog="smartmixed",
        description="SmartMixed adaptive-activation networks in NumPy/CuPy: train, evaluate, benchmark.",
        epilog="Examples:\n"
        "  smartmixed demo\n"
        "  smartmixed train --dataset mnist --data-dir ~/data --arch 2 --epochs 30 --transition-epoch 10 --lr 1e-3\n"
        "  smartmixed train --resume runs/mnist_smartmixed_512-256-128_seed0_20260101-120000\n"
        "  smartmixed evaluate runs/<run>\n"
        "  smartmixed sweep --archs 1,2,4 --seeds 0,1,2 --epochs 30 --transition-epoch 10 --out sweeps/mnist\n"
        "  smartmixed report sweeps/mnist\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smartmixed_np {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train SmartMixed (two phases) or a fixed-activation baseline",
        description="Train a SmartMixed network through both phases, or a fixed-activation baseline, "
        "and write a run folder (config, history, metrics, model, figures). Defaults are the published ones.",
    )
    _add_training_options(train, single_run=True)

    sweep = commands.add_parser(
        "sweep",
        help="train every (architecture, model, seed) combination in parallel, resumably",
        description="Train one ordinary run folder per (architecture, model, seed) under --out "
        "(OUT/arch2/smartmixed/seed0/, ...), in parallel. Run the same command again to continue a stopped "
        "sweep: finished runs are skipped, interrupted ones resumed, failed ones retried. "
        "The training options are those of `smartmixed train`.",
        epilog="Examples:\n"
        "  smartmixed sweep --archs 1,2,4 --seeds 0,1,2 --dataset mnist --data-dir ~/data --epochs 30 "
        "--transition-epoch 10 --lr 1e-3 --out sweeps/mnist\n"
        "  smartmixed sweep ... --executor dask --scheduler tcp://10.0.0.5:8786   (pip install 'smartmixed_np[dask]')\n"
        "  smartmixed report sweeps/mnist\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = sweep.add_argument_group("sweep")
    grid.add_argument("--archs", required=True, type=_id_list, metavar="ID,ID,...", help="published architecture IDs (see `smartmixed archs`)")
    grid.add_argument(
        "--models", type=_name_list, default=",".join(DEFAULT_MODELS), metavar="NAME,...",
        help=f"'smartmixed' and/or candidate activations (default: {','.join(DEFAULT_MODELS)})",
    )
    grid.add_argument("--seeds", type=_seed_list, default="0,1,2", metavar="S,S,...", help="seeds (default: 0,1,2)")
    grid.add_argument("--out", required=True, metavar="DIR", help="the sweep folder (one run folder per combination inside)")
    grid.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed in an earlier invocation")
    grid.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each, and stop")
    grid.add_argument("--quiet", action="store_true", help="no output but errors")
    parallel = sweep.add_argument_group("parallelism")
    parallel.add_argument("--workers", type=_positive_int, metavar="N", help="local worker processes (default: the number of cores)")
    parallel.add_argument("--blas-threads", type=_positive_int, metavar="N", help="BLAS threads per local worker (default: cores // workers)")
    parallel.add_argument("--executor", choices=("process", "dask"), default="process", help="a local process pool (default) or a Dask cluster")
    parallel.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.5:8786 (with --executor dask)")
    _add_training_options(sweep, single_run=False)

    report = commands.add_parser(
        "report",
        help="summarise a sweep: tables, rankings, statistics, figures",
        description="Read every run folder under DIR and write summary.csv (one row per run), report.md, "
        "report.json and figures: accuracy per architecture and model, ranks and mean reciprocal rank, "
        "SmartMixed against the best fixed activation, layer-wise activation preferences, weight statistics "
        "between activation groups, phase 1 against phase 2.",
    )
    report.add_argument("sweep_dir", metavar="DIR", help="a sweep folder written by `smartmixed sweep` (or any folder of run folders)")
    report.add_argument("--out", metavar="DIR", help="where to write the report (default: DIR)")

    evaluate = commands.add_parser("evaluate", help="re-score a saved model on the test data", description="Re-score the model saved in a run folder on its dataset's test set and print the metrics as JSON.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `smartmixed train`")
    evaluate.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are (default: as for train)")
    evaluate.add_argument("--device", default="cpu", help="cpu or gpu")

    demo = commands.add_parser(
        "demo",
        help="offline demo: SmartMixed vs ReLU on synth-digits (about a minute on two cores)",
        description="Train SmartMixed and a ReLU baseline on the generated synth-digits dataset (offline), "
        "write both run folders and a comparison figure.",
    )
    demo.add_argument("--out", metavar="DIR", help="output folder (default: runs/demo_<time>)")
    demo.add_argument("--epochs", type=_positive_int, default=12, help="epochs per run (default: 12)")
    demo.add_argument("--quick", action="store_true", help="a tiny version for tests (seconds)")
    demo.add_argument("--device", default="cpu", help="cpu or gpu")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    commands.add_parser("archs", help="list the published architectures by ID", description="List the published architectures by ID.")
    commands.add_parser("activations", help="list the registered candidate activations", description="List the registered candidate activations.")

    bench = commands.add_parser("bench", help="run the benchmark suite and write JSON", description="Time training steps and inference side by side (float32) and write every figure and ratio as JSON.")
    bench.add_argument("--json", required=True, metavar="FILE", help="where to write the results")
    bench.add_argument("--figure", metavar="FILE", help="also draw a figure (PNG)")
    bench.add_argument("--quick", action="store_true", help="few repeats, small sweep (a smoke test)")
    bench.add_argument("--data-dir", metavar="DIR", help="MNIST folder for the epoch-throughput benchmark (default: $SMARTMIXED_DATA)")
    bench.add_argument("--device", default="cpu", help="cpu or gpu (CuPy; PyTorch on CUDA when available)")
    return parser


# ---------------------------------------------------------------------------- commands
def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    if args.resume:
        overrides = {"quiet": args.quiet, "progress": not args.quiet, "device": args.device}
        if args.data_dir:
            overrides["data_dir"] = args.data_dir
        result = train(resume=args.resume, overrides=overrides)
    else:
        config = TrainConfig(
            **_training_options(args), model=args.model.lower(), arch=args.arch, hidden=args.hidden or (512, 256, 128),
            seed=args.seed, out=args.out, quiet=args.quiet, progress=not args.quiet,
        )
        result = train(config)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 1 if result.metrics.get("stopped_early") else 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import plan_sweep, run_state, run_sweep
    from .train import TrainConfig

    config = TrainConfig(**_training_options(args))
    if args.dry_run:
        specs = plan_sweep(args.out, args.archs, args.models, args.seeds, config)
        actions = {"finished": "skip (finished)", "failed": "keep (failed)" if args.skip_failed else "retry (failed)",
                   "resumable": "resume", "new": "start"}
        for spec in specs:
            print(f"{spec.key:<32} {'-'.join(map(str, spec.hidden)):<24} {actions[run_state(spec.run_dir)]}")
        print(f"{len(specs)} runs")
        return 0
    result = run_sweep(
        args.out, args.archs, args.models, args.seeds, config, workers=args.workers, blas_threads=args.blas_threads,
        executor=args.executor, scheduler=args.scheduler, retry_failed=not args.skip_failed, quiet=args.quiet,
    )
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 0 if result.ok else 1


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    paths = write_report(args.sweep_dir, args.out)
    print(f"report written: {paths['report_md']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .backend import get_backend
    from .checkpoint import load_model
    from .data import load_dataset
    from .errors import CheckpointError
    from .train import confusion_matrix, evaluate, per_class_accuracy

    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: no such file (is {run_dir} a run folder?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        dataset, data_dir = config["dataset"], args.data_dir or config.get("data_dir")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{config_path}: corrupt run configuration ({err!r})") from None
    backend = get_backend(args.device)
    model = load_model(run_dir, device=backend)
    data = load_dataset(dataset, data_dir, split_seed=config.get("split_seed", 0), progress=False)
    x_test = backend.asarray(data.x_test, dtype=model.dtype)
    y_test = backend.asarray(data.y_test)
    scores = evaluate(model, x_test, y_test)
    confusion = confusion_matrix(data.y_test, scores["predictions"], data.num_classes)
    per_class = per_class_accuracy(confusion).round(4).tolist()
    print(json.dumps({"run": str(run_dir), "dataset": dataset, "test_examples": int(len(data.y_test)),
                      "test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "per_class_accuracy": per_class}, indent=2))
    return 0


def _archs(args: argparse.Namespace) -> int:
    from .archs import ARCH_NOTES, ARCHITECTURES

    print(f"{'ID':>3}  {'layers':>6}  hidden widths")
    for arch_id, widths in ARCHITECTURES.items():
        note = f"   ({ARCH_NOTES[arch_id]})" if arch_id in ARCH_NOTES else ""
        print(f"{arch_id:>3}  {len(widths):>6}  {'-'.join(map(str, widths))}{note}")
    return 0


def _activations(args: argparse.Namespace) -> int:
    from .activations import DEFAULT_POOL, get_activation, list_activations

    for name in list_activations():
        act = get_activation(name)
        pool = "default pool" if name in DEFAULT_POOL else ""
        print(f"{name:<11} {pool:<12} {act.formula}")
    return 0


def run_demo(out: str | Path | None = None, epochs: int = 12, quick: bool = False, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
    """Train SmartMixed and a ReLU baseline on synth-digits; write runs and a comparison figure.

    Returns:
        ``{"smartmixed": metrics, "relu": metrics, "figure": path}``.
    """
    from .train import TrainConfig, train

    folder = Path(out) if out else Path("runs") / f"demo_{time.strftime('%Y%m%d-%H%M%S')}"
    if quick:
        epochs = min(epochs, 3)
    common = dict(
        dataset="synth-digits", hidden=(256, 128) if not quick else (32, 16), lr=1e-3, batch_size=128, epochs=epochs,
        train_limit=1500 if quick else None, seed=0, device=device, quiet=quiet, progress=not quiet,
    )
    results = {}
    runs = {}
    for label, model in (("SmartMixed", "smartmixed"), ("ReLU", "relu")):
        config = TrainConfig(model=model, transition_epoch=max(1, epochs // 3), out=str(folder / model), **common)
        result = train(config)
        results[model] = result.metrics
        runs[label] = {"history": result.history, "test_accuracy": result.metrics["test"]["accuracy"],
                       "transition_epoch": result.metrics["transition_epoch"]}
    figure = folder / "comparison.png"
    try:
        from .plots import plot_comparison

        plot_comparison(runs, figure, title=f"synth-digits, {epochs} epochs")
    except Exception as err:  # results are written; a figure must not lose them
        print(f"warning: comparison figure not drawn: {err}", file=sys.stderr)
    print(f"\n{'model':<11} {'val acc':>8} {'test acc':>9}")
    for model, metrics in results.items():
        print(f"{model:<11} {metrics['val']['accuracy']:>8.4f} {metrics['test']['accuracy']:>9.4f}")
    print(f"runs and comparison figure in {folder}")
    return {**results, "figure": str(figure)}


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.out, args.epochs, args.quick, args.device, args.quiet)
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from .bench import run_benchmarks
    except ImportError:
        raise UserError("the benchmark suite is not available in this installation") from None
    run_benchmarks(quick=args.quick, data_dir=args.data_dir, json_path=args.json, figure_path=args.figure, device=args.device)
    return 0


_COMMANDS = {
    "train": _train, "sweep": _sweep, "report": _report, "evaluate": _evaluate, "demo": _demo, "archs": _archs,
    "activations": _activations, "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 run stopped, 2 user error, 130 interrupted)."""
    from .backend import BackendUnavailableError

    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except (UserError, BackendUnavailableError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"smartmixed: error: {message}" if not message.startswith("smartmixed") else message, file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("smartmixed: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `smartmixed archs | head`
        return 0
