"""The ``smartmixed`` command (also ``python -m smartmixed_np``).

Subcommands: ``train``, ``sweep``, ``report``, ``evaluate``, ``demo``, ``archs``, ``activations``, ``bench``,
``export`` (ONNX), ``predict`` (a user's own files), ``gradcheck`` (a gradient-verification report),
``study-estimators`` (phase 1's gradient estimators against the exact gradient).
A user error (a bad option, a missing or corrupt file, an unknown name) is one
line on stderr and exit status 2, never a traceback. Option values are checked
while parsing (bounded, ASCII numbers; paths the file system can take); activation
names after parsing, once the modules named by ``--import`` have registered theirs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from . import options
from .errors import UserError

__all__ = ["main", "build_parser", "plain_formula"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; a run stopped by SIGTERM exits 143


class _UserArgumentError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, raised rather than printed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UserArgumentError(f"{self.prog}: error: {message} (see --help)")


# --------------------------------------------------------------------- option values
# Every value is parsed by a function below: ASCII only (Python's int() and float()
# also take Arabic-Indic or full-width digits and '1_000'), short (a 5,000-digit
# number makes int() raise its own long error), finite and inside bounds that a
# machine can run (a width of 2**31 would allocate tens of GiB before anything else
# could object). Sizes that fit these bounds but not this machine's memory are
# refused by TrainConfig.validate, which estimates the footprint.

#: Largest hidden width accepted per layer, and the most hidden layers.
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
#: Seeds are kept below 2**32, the range every NumPy seeding interface takes
#: (SeedSequence takes larger ones, the legacy ``np.random.seed`` does not).
MAX_SEED = 2**32 - 1
MAX_EXAMPLES = 2**31 - 1
MAX_PROCESSES = 4096
#: Linux limits: 255 bytes per path component, 4096 per path.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
DEVICES = ("cpu", "gpu")
#: What backend.get_backend accepts besides cpu/gpu (see backend._ALIASES).
DEVICE_ALIASES = ("numpy", "np", "cupy", "cuda", "cp")

_INT_TEXT, _FLOAT_TEXT, _show = options.INT_TEXT, options.FLOAT_TEXT, options.show
_NAME_TEXT = re.compile(r"[^\s,]{1,64}")


def _escape(text: str) -> str:
    """``text`` on one printable line: control characters, line breaks and lone
    surrogates (invalid UTF-8 in argv) written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_integer, _real = options.integer, options.real

_epochs = _integer(1, MAX_EPOCHS, f"a positive integer (at most {MAX_EPOCHS})")
_estimator_samples = _integer(1, 10_000, "a positive integer (at most 10000)")
_batch_size = _integer(1, MAX_BATCH, f"a positive integer (at most {MAX_BATCH})")
_processes = _integer(1, MAX_PROCESSES, f"a positive integer (at most {MAX_PROCESSES})")
_train_limit = _integer(10, MAX_EXAMPLES, f"an integer from 10 to {MAX_EXAMPLES}")
_seed = _integer(0, MAX_SEED, "a non-negative integer below 2**32")
_tau = _real(1e-6, 1e6, "a positive number from 1e-6 to 1e6")
_lr = _real(1e-12, 1e3, "a positive number from 1e-12 to 1000")
_clip = _real(1e-12, 1e12, "a positive number from 1e-12 to 1e12, or none", none=True)
_clamp = _real(1e-3, 1e6, "a positive number from 0.001 to 1e6, or none", none=True)
_momentum = _real(0.0, 1.0, "a number from 0 to 1")
_weight_decay = _real(0.0, 100.0, "a number from 0 to 100")
_switch_threshold = _real(0.0, 0.99, "a share from 0 to 0.99")
_switch_patience = _integer(1, MAX_EPOCHS, f"a positive integer (at most {MAX_EPOCHS})")


def _hidden(text: str) -> tuple[int, ...]:
    """``"512,256,128"`` (or ``512-256-128``) -> (512, 256, 128); each width 1..MAX_WIDTH."""
    parts = [part.strip() for part in re.split(r"[,-]", text)]
    if len(parts) > MAX_LAYERS or not all(_INT_TEXT.fullmatch(part) for part in parts):
        raise argparse.ArgumentTypeError(
            f"hidden sizes must be comma-separated positive integers (at most {MAX_LAYERS} layers), got {_show(text)}"
        )
    widths = tuple(int(part) for part in parts)
    if not all(1 <= width <= MAX_WIDTH for width in widths):
        raise argparse.ArgumentTypeError(f"hidden sizes must lie in [1, {MAX_WIDTH}] per layer, got {_show(text)}")
    return widths


def _arch_id(text: str) -> int:
    """A published architecture ID (see `smartmixed archs`)."""
    from .experiments.archs import ARCHITECTURES

    stripped = text.strip()
    if _INT_TEXT.fullmatch(stripped) and int(stripped) in ARCHITECTURES:
        return int(stripped)
    shown = stripped if _INT_TEXT.fullmatch(stripped) and len(stripped) < 12 else _show(text)
    raise argparse.ArgumentTypeError(
        f"unknown architecture ID {shown}; known IDs are 1-{max(ARCHITECTURES)} (see `smartmixed archs`)"
    )


def _id_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (published architecture IDs, checked)."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts or len(parts) > 1000:
        raise argparse.ArgumentTypeError(f"expected comma-separated architecture IDs, got {_show(text)}")
    return [_arch_id(part) for part in parts]


def _seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; each seed below 2**32."""
    parts = [part for part in text.split(",") if part.strip()]
    try:
        if not parts or len(parts) > 10_000:
            raise argparse.ArgumentTypeError("")
        return [_seed(part) for part in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers below 2**32, got {_show(text)}") from None


def _names(text: str) -> tuple[str, ...]:
    """``"relu,elu"`` -> ("relu", "elu"): activation names, checked against the registry
    after parsing (a user's ``--import`` module may register them)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names or len(names) > 64 or not all(_NAME_TEXT.fullmatch(name) and name.isprintable() for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated activation names, got {_show(text)}")
    return tuple(names)


def _name(text: str) -> str:
    """``--model``: 'smartmixed' or one activation name (checked after parsing, as for _names)."""
    name = text.strip().lower()
    if not (_NAME_TEXT.fullmatch(name) and name.isprintable()):
        raise argparse.ArgumentTypeError(f"expected 'smartmixed' or an activation name, got {_show(text)}")
    return name


def _device(text: str) -> str:
    """cpu or gpu (or an alias that backend.get_backend accepts)."""
    key = text.strip().lower()
    if key in DEVICES or key in DEVICE_ALIASES:
        return key
    raise argparse.ArgumentTypeError(f"expected cpu or gpu, got {_show(text)}")


def _path(text: str) -> str:
    """A file or folder name that the file system can take, as UTF-8 on one line.

    Refused: an empty name, control characters, bytes that are not UTF-8 (they
    arrive as lone surrogates and cannot be written to JSON or printed), a path
    component longer than 255 bytes or a path longer than 4095 (Linux limits).
    """
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    if not text.isprintable():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError(f"the path is not valid UTF-8: {_show(text)}") from None
        raise argparse.ArgumentTypeError(f"the path holds control characters: {_show(text)}")
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        raise argparse.ArgumentTypeError(f"the path is longer than {MAX_PATH_BYTES} bytes: {_show(text)}")
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise argparse.ArgumentTypeError(f"a component of the path is longer than {MAX_NAME_BYTES} bytes: {_show(text)}")
    return text


def _module(text: str) -> str:
    """``--import``: a module name (``mypkg.acts``) or a path to a ``.py`` file.

    A file's path is made absolute, so that a run records where it is and
    ``evaluate``/``--resume`` find it from any folder.
    """
    text = _path(text.strip())
    if text.endswith(".py"):
        return str(Path(text).expanduser().absolute())
    if not all(part.isidentifier() for part in text.split(".")):
        raise argparse.ArgumentTypeError(f"expected a module name (such as mypkg.acts) or a .py file, got {_show(text)}")
    return text


def _url(text: str) -> str:
    """``--mirror``: an http(s) or file URL, ASCII (percent-encode anything else)."""
    bad = argparse.ArgumentTypeError(f"expected an http://, https:// or file:// URL, got {_show(text)}")
    if not text.isascii() or not text.isprintable() or " " in text or len(text) > 2048:
        raise bad
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise bad from None
    if parts.scheme in ("http", "https") and parts.hostname:
        return text
    if parts.scheme == "file" and parts.path:
        return text
    raise bad


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from .data import DATASETS

    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="mnist", choices=DATASETS, help="dataset (default: mnist)")
    _add_data_location(group)
    group.add_argument("--train-limit", type=_train_limit, metavar="N", help="use only N official training images (quick runs)")
    group.add_argument("--split-seed", type=_seed, default=0, help="seed of the train/validation split (default: 0)")


def _add_data_location(group: Any) -> None:
    """``--data-dir`` and ``--mirror``: where the data are (train, sweep, evaluate)."""
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        type=_path,
        help="folder with the IDX files (the dataset's folder, or a parent holding <dataset>/); "
        "default: $SMARTMIXED_DATA/<dataset>, else downloaded once into the user cache",
    )
    group.add_argument(
        "--mirror", metavar="URL", type=_url,
        help="download the IDX files from this base URL (URL/<file name>) instead of the dataset's own mirrors "
        "(default: $SMARTMIXED_MIRROR, else those)",
    )


def _add_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import", dest="imports", action="append", type=_module, metavar="MODULE",
        help="import MODULE (a module name or a path to a .py file) first: it may register candidate activations "
        "with smartmixed_np.core.activations.register_activation (repeatable; the run records it)",
    )


def _add_training_options(parser: argparse.ArgumentParser, *, single_run: bool) -> None:
    """The training options of ``train``; ``sweep`` shares them, less what it sets per run.

    ``single_run`` adds what only a single run has: ``--model``, ``--arch``/``--hidden``,
    ``--seed``, ``--out``, ``--resume``, ``--quiet`` (a sweep sets these per run).
    """
    from .core.activations import DEFAULT_POOL
    from .core.estimators import DEFAULT_SAMPLES, ESTIMATORS
    from .core.losses import LOSSES
    from .core.phase1 import CLAMP_GRADS, NOISE_MODES
    from .experiments.train import PRESETS, SWITCHES

    _add_data_options(parser)
    model = parser.add_argument_group("model")
    if single_run:
        model.add_argument("--model", type=_name, default="smartmixed", help="'smartmixed' or a candidate name such as relu, elu (default: smartmixed)")
        shape = model.add_mutually_exclusive_group()
        shape.add_argument("--arch", type=_arch_id, metavar="ID", help="a published architecture by ID (see `smartmixed archs`)")
        shape.add_argument("--hidden", type=_hidden, metavar="W1,W2,...", help=f"hidden widths, each at most {MAX_WIDTH} (default: 512,256,128)")
    model.add_argument(
        "--pool", type=_names, metavar="NAME,NAME,...",
        help=f"the candidates of phase 1 (see `smartmixed activations`; default: {','.join(DEFAULT_POOL)})",
    )
    _add_import_option(model)
    model.add_argument("--tau", type=_tau, default=0.3, help="Gumbel-softmax temperature (default: 0.3)")
    model.add_argument("--tau-final", type=_tau, help="anneal tau exponentially to this value over phase 1")
    model.add_argument("--soft", action="store_true", help="soft mixture instead of hard straight-through selection")
    model.add_argument("--noise", choices=NOISE_MODES, default="shared", help="Gumbel noise: one draw per batch (shared), per sample, or none")
    model.add_argument("--clamp", type=_clamp, default=10.0, help="clamp of candidate outputs (default: 10; 'none' disables)")
    model.add_argument("--estimator", choices=ESTIMATORS, default="st",
                       help="phase 1's gradient estimator for the selection logits: st (straight-through, default), "
                            "reinmax, gumbel_rao, score (REINFORCE with a running-mean baseline)")
    model.add_argument("--estimator-samples", type=_estimator_samples, default=DEFAULT_SAMPLES, metavar="M",
                       help=f"gumbel_rao: conditional Gumbel draws averaged per step (default: {DEFAULT_SAMPLES})")
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=_epochs, default=400, help="total epochs (default: 400)" + ("; with --resume: train on to this many" if single_run else ""))
    schedule.add_argument("--transition-epoch", type=_epochs, default=50, help="epochs of phase 1 (default: 50)")
    schedule.add_argument("--switch", choices=SWITCHES, default="fixed",
                          help="when phase 1 ends: fixed (after --transition-epoch epochs, default) or adaptive (once at most "
                               "--switch-threshold of the hidden neurons changed their choice in --switch-patience epochs in a row; "
                               "--transition-epoch is then the latest end)")
    schedule.add_argument("--switch-threshold", type=_switch_threshold, default=0.1, metavar="SHARE",
                          help="adaptive switch: the share of hidden neurons whose choice may still change per epoch (default: 0.1)")
    schedule.add_argument("--switch-patience", type=_switch_patience, default=2, metavar="N",
                          help="adaptive switch: epochs in a row at or below the threshold (default: 2)")
    schedule.add_argument("--phase2-init", choices=("carry", "fresh"), default=None,
                          help="phase 2 starts from the phase-1 weights (carry) or fresh ones (default: the preset's: carry, reference: fresh)")
    fidelity = parser.add_argument_group("the authors' semantics (see the README's 'Differences from the authors' code')")
    fidelity.add_argument("--preset", choices=tuple(PRESETS), default="ours",
                          help="ours (default) or reference: the authors' code, i.e. --loss double-softmax --phase2-init fresh "
                               "--phase2-clamp none --eval-noise --clamp-grad closed; options given with it win")
    fidelity.add_argument("--loss", choices=tuple(LOSSES), default=None,
                          help="cross-entropy on the logits (ours) or double-softmax (theirs: nn.Softmax, then nn.CrossEntropyLoss)")
    fidelity.add_argument("--phase2-clamp", choices=("keep", "none"), default=None,
                          help="phase 2 keeps the phase-1 clamp (ours) or has none (theirs)")
    fidelity.add_argument("--eval-noise", action=argparse.BooleanOptionalAction, default=None,
                          help="phase-1 validation (and its model selection) with Gumbel noise, as theirs, from a stream of its own "
                               "(default: the preset's; --no-eval-noise turns it off)")
    fidelity.add_argument("--clamp-grad", choices=CLAMP_GRADS, default=None,
                          help="the clamp's gradient at exactly +-c: open (ours: zero) or closed (PyTorch's: passed); "
                               "closed runs the reference engines")
    schedule.add_argument("--masked-groups", action="store_true", help="phase 2 with masked groups instead of contiguous slices")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    optim.add_argument("--lr", type=_lr, default=1e-4, help="learning rate (default: 1e-4)")
    optim.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    optim.add_argument("--momentum", type=_momentum, default=0.9, help="SGD momentum (default: 0.9)")
    optim.add_argument("--weight-decay", type=_weight_decay, default=0.0)
    optim.add_argument("--batch-size", type=_batch_size, default=128, help="(default: 128)")
    optim.add_argument("--clip", type=_clip, default=1.0, help="global gradient-norm clip (default: 1.0; 'none' disables)")
    run = parser.add_argument_group("run")
    if single_run:
        run.add_argument("--seed", type=_seed, default=0, help="seed of everything random (default: 0)")
    run.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu}", help="cpu or gpu (needs CuPy: pip install 'smartmixed_np[gpu]')")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    if single_run:
        run.add_argument("--out", metavar="DIR", type=_path, help="run folder (default: runs/<dataset>_<model>_<arch>_seed<seed>_<time>)")
        run.add_argument(
            "--resume", metavar="DIR", type=_path,
            help="continue the interrupted run in DIR with its saved options; only --epochs (more), --quiet, --device, "
            "--data-dir, --mirror and --import may be given with it",
        )
        run.add_argument("--quiet", action="store_true", help="no progress bars: one log line per epoch")


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields that ``_add_training_options`` gives to both train and sweep."""
    return dict(
        dataset=args.dataset, data_dir=args.data_dir, train_limit=args.train_limit, split_seed=args.split_seed,
        mirror=args.mirror, pool=args.pool, imports=tuple(args.imports or ()),
        epochs=args.epochs, transition_epoch=args.transition_epoch, lr=args.lr, batch_size=args.batch_size,
        clip=args.clip, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule, tau=args.tau, tau_final=args.tau_final, hard=not args.soft,
        noise_mode=args.noise, clamp=args.clamp, estimator=args.estimator, estimator_samples=args.estimator_samples,
        phase2_init=args.phase2_init, contiguous=not args.masked_groups,
        switch=args.switch, switch_threshold=args.switch_threshold, switch_patience=args.switch_patience,
        preset=args.preset, loss=args.loss, phase2_clamp=args.phase2_clamp, eval_noise=args.eval_noise,
        clamp_grad=args.clamp_grad,
        device=args.device, dtype=args.dtype,
    )


def _load_user_activations(args: argparse.Namespace, extra: Sequence[str] = ()) -> None:
    """Import the ``--import`` modules, then check the activation names given.

    The names cannot be checked while parsing: argparse converts values before the
    modules that register a user's candidates are imported.
    """
    from .core.activations import get_activation, resolve_pool
    from .experiments.plugins import load_plugins

    load_plugins([*extra, *(getattr(args, "imports", None) or ())])
    prog = f"smartmixed {args.command}"
    models = [args.model] if getattr(args, "model", None) else list(getattr(args, "models", None) or ())
    option = "--model" if getattr(args, "model", None) else "--models"
    for name in models:
        if name != "smartmixed":
            try:
                get_activation(name)
            except ValueError as err:
                raise _UserArgumentError(f"{prog}: error: argument {option}: {err} (or 'smartmixed')") from None
    if getattr(args, "pool", None) is not None:
        try:
            resolve_pool(args.pool)
        except ValueError as err:
            raise _UserArgumentError(f"{prog}: error: argument --pool: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``smartmixed`` command."""
    from .experiments.sweep import DEFAULT_MODELS

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
        "--models", type=_names, default=",".join(DEFAULT_MODELS), metavar="NAME,...",
        help=f"'smartmixed' and/or candidate activations (default: {','.join(DEFAULT_MODELS)})",
    )
    grid.add_argument("--seeds", type=_seed_list, default="0,1,2", metavar="S,S,...", help="seeds (default: 0,1,2)")
    grid.add_argument("--out", required=True, type=_path, metavar="DIR", help="the sweep folder (one run folder per combination inside)")
    grid.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed in an earlier invocation")
    grid.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each, and stop")
    grid.add_argument("--quiet", action="store_true", help="no output but errors")
    parallel = sweep.add_argument_group("parallelism")
    parallel.add_argument("--workers", type=_processes, metavar="N", help="local worker processes (default: the number of cores)")
    parallel.add_argument("--blas-threads", type=_processes, metavar="N", help="BLAS threads per local worker (default: cores // workers)")
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
    report.add_argument("sweep_dir", metavar="DIR", type=_path, help="a sweep folder written by `smartmixed sweep` (or any folder of run folders)")
    report.add_argument("--out", metavar="DIR", type=_path, help="where to write the report (default: DIR)")

    evaluate = commands.add_parser("evaluate", help="re-score a saved model on the test data", description="Re-score the model saved in a run folder on its dataset's test set and print the metrics as JSON.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a run folder written by `smartmixed train`")
    _add_data_location(evaluate)
    evaluate.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu}", help="cpu or gpu")
    evaluate.add_argument(
        "--import", dest="imports", action="append", type=_module, metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, besides the modules the run recorded (repeatable)",
    )

    demo = commands.add_parser(
        "demo",
        help="offline demo: SmartMixed vs ReLU on synth-digits (about a minute on two cores)",
        description="Train SmartMixed and a ReLU baseline on the generated synth-digits dataset (offline), "
        "write both run folders and a comparison figure.",
    )
    demo.add_argument("--out", metavar="DIR", type=_path, help="output folder (default: runs/demo_<time>)")
    demo.add_argument("--epochs", type=_integer(1, 10_000, "a positive integer (at most 10000)"), default=12, help="epochs per run (default: 12)")
    demo.add_argument("--quick", action="store_true", help="a tiny version for tests (seconds)")
    demo.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu}", help="cpu or gpu")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    commands.add_parser("archs", help="list the published architectures by ID", description="List the published architectures by ID.")
    activations = commands.add_parser(
        "activations", help="list the registered candidate activations",
        description="List the registered candidate activations: name, whether it is in the default pool, formula.",
    )
    activations.add_argument(
        "--import", dest="imports", action="append", type=_module, metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, and list what it registers too (repeatable)",
    )

    bench = commands.add_parser("bench", help="run the benchmark suite and write JSON", description="Time training steps and inference side by side (float32) and write every figure and ratio as JSON.")
    bench.add_argument("--json", required=True, type=_path, metavar="FILE", help="where to write the results")
    bench.add_argument("--figure", type=_path, metavar="FILE", help="also draw a figure (PNG)")
    scale = bench.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="few repeats, small sweep (a smoke test)")
    scale.add_argument("--plan", choices=("full", "device", "quick"),
                       help="full (the CPU's default: both sweeps, settled), device (the GPU's default: batch 128 and "
                            "8192, no width sweep, no settle: about a minute) or quick")
    bench.add_argument("--data-dir", type=_path, metavar="DIR", help="MNIST folder for the epoch-throughput benchmark (default: $SMARTMIXED_DATA)")
    bench.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu}", help="cpu or gpu (CuPy; PyTorch on CUDA when available)")
    bench.add_argument("--no-torch", action="store_true", help="leave out the PyTorch contenders")
    bench.add_argument("--no-jax", action="store_true", help="leave out the JAX contenders")
    bench.add_argument("--isa", choices=("native", "avx2"), default="native",
                       help="native, or avx2: hold NumPy, OpenBLAS, Numba, PyTorch and JAX to AVX2 on an AVX-512 CPU "
                            "(the command re-runs itself with their environment variables)")
    _add_export_and_predict(commands)
    from .experiments.estimator_study import add_study_parser
    from .experiments.gradreport import add_gradcheck_parser

    add_gradcheck_parser(commands)
    add_study_parser(commands)
    parser.commands = commands.choices  # type: ignore[attr-defined]  # name -> subparser (see _explicit_options)
    return parser


def _add_export_and_predict(commands: Any) -> None:
    """The ``export`` and ``predict`` subcommands (ONNX export; predictions on a user's files)."""
    from .experiments.export import DEFAULT_OPSET, MIN_OPSET

    export = commands.add_parser(
        "export",
        help="write a run's model as an ONNX file (pip install 'smartmixed_np[onnx]')",
        description="Write the model kept in a finished run folder as an ONNX graph: per layer MatMul and Add, "
        "per activation group a Slice and the activation's own operator (Relu, Sigmoid, Tanh, LeakyRelu, Elu, "
        "Selu), the clamp as Clip, then Concat. Input 'pixels' (batch, D), output 'logits' (batch, C), float32, "
        "any batch size; the metadata hold the architecture, each neuron's activation, the dataset and the test "
        "accuracy. A phase-1 model is exported as its argmax network. Needs the onnx package.",
        epilog="Examples:\n"
        "  smartmixed export runs/<run> --onnx model.onnx\n"
        "  python -c \"import onnxruntime as ort; ort.InferenceSession('model.onnx')\"\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a finished run folder written by `smartmixed train`")
    export.add_argument("--onnx", required=True, type=_path, metavar="FILE", help="the ONNX file to write (atomically)")
    export.add_argument(
        "--opset", type=_integer(MIN_OPSET, 999, f"an ONNX opset number from {MIN_OPSET}"), default=DEFAULT_OPSET,
        help=f"the ONNX operator set (default: {DEFAULT_OPSET}; from 20 on, gelu is the Gelu operator)",
    )
    export.add_argument(
        "--import", dest="imports", action="append", type=_module, metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, if the run recorded it (repeatable)",
    )

    predict = commands.add_parser(
        "predict",
        help="predict the classes of your own images, IDX files or .npy arrays (CSV)",
        description="Predict a class, with the probability of every class, for each example in INPUTS: IDX files, "
        ".npy arrays of shape (N, 784), (N, 28, 28) or (28, 28), and PNG or JPEG images of any size (made "
        "grayscale, resized to 28x28, scaled to [0, 1] as MNIST was; MNIST digits are white on black: use "
        "--invert for dark digits on a light background). A folder stands for the files inside it. A file that "
        "cannot be read is skipped with one line on stderr ('skipped FILE: reason'); the others go on.",
        epilog="Output: CSV with columns file, index (within the file), predicted, p0 ... p9.\n"
        "Exit status: 0 every input was read; 1 some were skipped (each named on stderr); 2 a usage error "
        "(a bad option, an unusable run folder).\n"
        "Examples:\n"
        "  smartmixed predict runs/<run> digits/ --invert --out predictions.csv\n"
        "  smartmixed predict runs/<run> t10k-images-idx3-ubyte.gz sample.npy\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a finished run folder written by `smartmixed train`")
    predict.add_argument("inputs", nargs="+", type=_path, metavar="INPUT", help="IDX, .npy, PNG or JPEG files, or folders of them")
    predict.add_argument("--out", type=_path, metavar="CSV", help="write the CSV there (atomically; default: standard output)")
    predict.add_argument("--invert", action="store_true", help="invert the pixels (1 - x): for dark digits on a light background")
    predict.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu}", help="cpu or gpu")
    predict.add_argument(
        "--import", dest="imports", action="append", type=_module, metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, if the run recorded it (repeatable)",
    )


# ---------------------------------------------------------------------------- commands
def _train(args: argparse.Namespace) -> int:
    from .experiments.train import TrainConfig, train

    if args.resume:
        result = train(resume=args.resume, overrides=_resume_overrides(args))
    else:
        _load_user_activations(args)
        config = TrainConfig(
            **_training_options(args), model=args.model, arch=args.arch, hidden=args.hidden or (512, 256, 128),
            seed=args.seed, out=args.out, quiet=args.quiet, progress=not args.quiet,
        )
        result = train(config)
    if result.interrupted:  # 128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + int(getattr(signal, result.stop_signal or "SIGINT"))
    return 1 if result.metrics.get("stopped_early") else 0


class _Unset:
    """The default of every option in the second parse of a resume: "not given"."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()

#: What may be given with ``--resume``: where and how to run, not what to train.
#: ``--epochs`` may extend the run (train() checks that it is not fewer).
_RESUME_OPTIONS = frozenset({"resume", "quiet", "device", "data_dir", "mirror", "imports", "epochs"})

#: The TrainConfig field behind an option whose dest differs from it.
_OPTION_FIELDS = {"soft": "hard", "noise": "noise_mode", "masked_groups": "contiguous", "arch": "hidden"}


def _explicit_options(argv: Sequence[str], command: str) -> set[str]:
    """The dests of the options that ``argv`` gives explicitly to ``command``.

    Parses ``argv`` again with every default of the subcommand replaced by a
    sentinel, so that an option typed with its default value (``--lr 1e-4``) or
    abbreviated (``--epoch 6``) counts as given, and an absent one does not.
    """
    parser = build_parser()
    sub = parser.commands[command]  # type: ignore[attr-defined]
    probe = sub.parse_args([])  # every dest of the subcommand, at its default
    # 'imports' appends to its default and so keeps None; None means "not given" there.
    sub.set_defaults(**{dest: _UNSET for dest in vars(probe) if dest != "imports"})
    given = parser.parse_args(argv)
    return {dest for dest, value in vars(given).items() if value is not _UNSET and value is not None and dest != "command"}


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict; CheckpointError (one line) for anything else."""
    from .errors import CheckpointError
    from .experiments.runfolder import RunFolderError, read_config

    try:
        return read_config(run_dir)
    except RunFolderError as err:
        if err.kind == "missing":
            raise CheckpointError(f"{err.path}: no such file (is {run_dir} a run folder?)") from None
        if err.kind == "unreadable":
            raise CheckpointError(str(err)) from None
        raise CheckpointError(f"{err.path}: corrupt run configuration ({err.reason})") from None


def _describe(field: str, value: Any) -> str:
    """How a recorded option reads in a message: ``lr 0.0001``, ``hidden 512-256-128``."""
    if field == "hard":
        return "hard selection" if value else "--soft"
    if field == "contiguous":
        return "contiguous groups" if value else "--masked-groups"
    if field == "hidden" and isinstance(value, (list, tuple)):
        return "hidden " + "-".join(map(str, value))
    if field == "pool" and value is None:
        return "the default pool"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"{field} {'none' if value is None else _escape(str(value))[:60]}"


def _resume_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What ``train --resume DIR ...`` passes to train(): the options that may differ on resume.

    Raises:
        _UserArgumentError: an option that would change what is trained (one line,
            naming it and the run's value), unless it repeats the run's value.
    """
    from .experiments.archs import get_architecture
    from .experiments.plugins import load_plugins
    from .experiments.runfolder import CHECKPOINT

    run_dir = Path(args.resume)
    explicit = _explicit_options(args.argv, "train")
    try:
        recorded: dict[str, Any] | None = _read_run_config(run_dir)
    except UserError:
        recorded = None
    if recorded is None and not (run_dir / CHECKPOINT).is_file():
        explicit &= _RESUME_OPTIONS  # not a run folder: train() says so, before any option matters
    wanted = {**_training_options(args), "model": args.model, "seed": args.seed,
              "hidden": get_architecture(args.arch) if args.arch else args.hidden}
    for dest in sorted(explicit - _RESUME_OPTIONS):
        option = "--" + dest.replace("_", "-")
        if dest == "out":
            if recorded is not None and Path(args.out).absolute() == run_dir.absolute():
                continue
            raise _UserArgumentError(f"--out cannot be given with --resume: the run stays in {run_dir}; start a new run with --out alone")
        field = _OPTION_FIELDS.get(dest, dest)
        if recorded is None or field not in recorded:
            raise _UserArgumentError(f"{option} cannot change when resuming (the run keeps its saved options); start a new run with --out")
        value, saved = wanted[field], recorded[field]
        if isinstance(value, tuple):
            value = list(value)
        if value == saved:
            continue  # the run's own value, repeated: nothing changes
        raise _UserArgumentError(
            f"{option} cannot change when resuming (the run was trained with {_describe(field, saved)}); start a new run with --out"
        )
    # A run started with --quiet stays quiet on resume; --quiet typed now makes it quiet.
    overrides: dict[str, Any] = {"quiet": True, "progress": False} if "quiet" in explicit else {}
    for dest in ("device", "data_dir", "mirror", "epochs"):
        if dest in explicit:
            overrides[dest] = getattr(args, dest)
    if args.imports:
        load_plugins(args.imports)
        saved_imports = (recorded or {}).get("imports") or []
        if isinstance(saved_imports, list) and all(isinstance(spec, str) for spec in saved_imports):
            overrides["imports"] = list(dict.fromkeys([*saved_imports, *args.imports]))
    return overrides


def _sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import plan_sweep, run_state, run_sweep
    from .experiments.train import TrainConfig

    _load_user_activations(args)
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
    from .experiments.checkpoint import load_model
    from .data import load_dataset
    from .errors import CheckpointError
    from .experiments.runfolder import finished_problem, run_state
    from .experiments.train import confusion_matrix, evaluate, per_class_accuracy

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder (no such file or directory)")
    config = _read_run_config(run_dir)
    problem = finished_problem(run_dir)
    if problem is not None:
        if run_state(run_dir) == "resumable":
            raise CheckpointError(
                f"{run_dir}: the run is unfinished ({problem}); finish it with `smartmixed train --resume {run_dir}`, then evaluate it"
            )
        raise CheckpointError(f"{run_dir}: not a finished run folder ({problem}) and no checkpoint to resume from")
    dataset, data_dir, split_seed = config.get("dataset"), args.data_dir or config.get("data_dir"), config.get("split_seed", 0)
    imports, mirror = config.get("imports") or [], args.mirror or config.get("mirror")
    if not (
        isinstance(dataset, str) and (data_dir is None or isinstance(data_dir, str)) and (mirror is None or isinstance(mirror, str))
        and isinstance(split_seed, int) and not isinstance(split_seed, bool) and 0 <= split_seed <= MAX_SEED
        and isinstance(imports, list) and all(isinstance(spec, str) for spec in imports)
    ):
        raise CheckpointError(f"{run_dir / 'config.json'}: corrupt run configuration (dataset, data_dir, mirror, split_seed or imports)")
    # A run trained with a user's activation records the modules that registered it;
    # they are imported only when the user names them again (--import): see plugins.py.
    _load_user_activations(args)
    from .experiments.plugins import require_loaded

    require_loaded(imports, str(run_dir / "config.json"))
    backend = get_backend(args.device)
    model = load_model(run_dir, device=backend)
    data = load_dataset(dataset, data_dir, split_seed=split_seed, progress=False, mirror=mirror)
    x_test = backend.asarray(data.x_test, dtype=model.dtype)
    y_test = backend.asarray(data.y_test)
    scores = evaluate(model, x_test, y_test)
    confusion = confusion_matrix(data.y_test, scores["predictions"], data.num_classes)
    per_class = per_class_accuracy(confusion).round(4).tolist()
    report: dict[str, Any] = {"run": str(run_dir), "dataset": dataset, "test_examples": int(len(data.y_test)),
                              "test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "per_class_accuracy": per_class}
    # Strict JSON: a model that outputs NaN gets null and a note, never a bare NaN.
    not_finite = [key for key in ("test_accuracy", "test_loss") if not math.isfinite(report[key])]
    for key in not_finite:
        report[key] = None
    if not_finite:
        report["note"] = f"{' and '.join(not_finite)} not finite (the model outputs NaN or infinity): written as null"
    print(json.dumps(report, indent=2, allow_nan=False))
    return 0


def _archs(args: argparse.Namespace) -> int:
    from .experiments.archs import ARCH_NOTES, ARCHITECTURES

    print(f"{'ID':>3}  {'layers':>6}  hidden widths")
    for arch_id, widths in ARCHITECTURES.items():
        note = f"   ({ARCH_NOTES[arch_id]})" if arch_id in ARCH_NOTES else ""
        print(f"{arch_id:>3}  {len(widths):>6}  {'-'.join(map(str, widths))}{note}")
    return 0


#: LaTeX of the registry's formulas -> plain text for a terminal (longest first).
_LATEX_WORDS = (
    (r"\lambda", "lambda*"), (r"\alpha", "alpha*"), (r"\sigma", "sigmoid"), (r"\tanh", "tanh"), (r"\max", "max"),
    (r"\min", "min"), (r"\exp", "exp"), (r"\log", "log"), (r"\pi", "pi"), (r"\cdot", "*"), (r"\,", " "), (r"\;", " "),
)


def plain_formula(latex: str) -> str:
    """A registry formula (LaTeX, e.g. ``$\\lambda\\alpha(e^x-1)$``) as plain text
    (``lambda*alpha*(e^x-1)``): no ``$``, no backslashes, one line."""
    text = latex.replace("$", "")
    # \frac{a}{b} -> (a/b) and \sqrt{a} -> sqrt(a), innermost first
    for _ in range(8):
        text, count = re.subn(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1/\2)", text)
        text, more = re.subn(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", text)
        if not count + more:
            break
    for word, plain in _LATEX_WORDS:
        text = text.replace(word, plain)
    text = re.sub(r"\*\s+(?=[\w(])", "*", text)  # lambda* x -> lambda*x
    text = re.sub(r"\*(?=$|[\s)+\-,])", "", text)  # a constant's '*' with no factor after it
    text = text.replace("{", "(").replace("}", ")").replace("\\", "")  # e^{-x} -> e^(-x)
    return _escape(re.sub(r"\s+", " ", text).strip())


def _activations(args: argparse.Namespace) -> int:
    from .core.activations import DEFAULT_POOL, SELU_ALPHA, SELU_SCALE, get_activation, list_activations
    from .experiments.plugins import load_plugins

    built_in = set(list_activations())
    load_plugins(args.imports or [])
    rows = [("name", "default pool", "origin", "f(x)")]
    for name in list_activations():
        act = get_activation(name)
        origin = "built-in" if name in built_in else "--import"
        rows.append((_escape(name), "yes" if name in DEFAULT_POOL else "no", origin, plain_formula(act.formula) or "(no formula given)"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(f"selu: lambda = {SELU_SCALE:.4f}, alpha = {SELU_ALPHA:.4f}; leaky_relu slope 0.01")
    return 0


def run_demo(out: str | Path | None = None, epochs: int = 12, quick: bool = False, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
    """Train SmartMixed and a ReLU baseline on synth-digits; write runs and a comparison figure.

    Returns:
        ``{"smartmixed": metrics, "relu": metrics, "figure": path}``.
    """
    from .experiments.train import TrainConfig, train

    folder = Path(out) if out else Path("runs") / f"demo_{time.strftime('%Y%m%d-%H%M%S')}"
    if quick:
        epochs = min(epochs, 3)
    transition = max(1, epochs // 3)  # phase 1: a third of the budget
    common = dict(
        dataset="synth-digits", hidden=(256, 128) if not quick else (32, 16), lr=1e-3, batch_size=128, epochs=epochs,
        train_limit=1500 if quick else None, seed=0, device=device, quiet=quiet, progress=not quiet,
    )
    results = {}
    runs = {}
    for label, model in (("SmartMixed", "smartmixed"), ("ReLU", "relu")):
        config = TrainConfig(model=model, transition_epoch=transition, out=str(folder / model), **common)
        result = train(config)
        if result.interrupted:  # Ctrl-C: the checkpoint is saved; main() reports it and exits 130
            raise KeyboardInterrupt
        results[model] = result.metrics
        runs[label] = {"history": result.history, "test_accuracy": result.metrics["test"]["accuracy"],
                       "transition_epoch": result.metrics["transition_epoch"]}
    figure = folder / "comparison.png"
    try:
        from .experiments.plots import plot_comparison

        plot_comparison(runs, figure, title=f"synth-digits, {epochs} epochs")
    except Exception as err:  # results are written; a figure must not lose them
        print(f"warning: comparison figure not drawn: {err}", file=sys.stderr)
    print(f"\n{'model':<11} {'val acc':>8} {'test acc':>9}")
    for model, metrics in results.items():
        print(f"{model:<11} {metrics['val']['accuracy']:>8.4f} {metrics['test']['accuracy']:>9.4f}")
    print(
        f"note: SmartMixed spends {transition} of its {epochs} epochs choosing activations (phase 1, a noisy hard selection), "
        "so on this small\ngenerated dataset it may trail ReLU; on MNIST it is within the seed spread of the best fixed "
        'activation (README, "Reproduction on MNIST"; the paper trains 400 epochs).'
    )
    print(f"runs and comparison figure in {folder}")
    return {**results, "figure": str(figure)}


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.out, args.epochs, args.quick, args.device, args.quiet)
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from .experiments.bench import ISA_ENV, ISA_LIMITS, isa_environment, run_benchmarks
    except ImportError:
        raise UserError("the benchmark suite is not available in this installation") from None
    if args.isa != (os.environ.get(ISA_ENV) or "native"):
        # The libraries read their limits when they load: run the command again in a fresh process.
        limited = {name for variables in ISA_LIMITS.values() for name in variables} | {ISA_ENV}
        env = {name: value for name, value in os.environ.items() if name not in limited}
        if args.isa != "native":
            env.update(isa_environment(args.isa))
        return subprocess.run([sys.executable, "-m", "smartmixed_np", *args.argv], env=env).returncode
    run_benchmarks(quick=args.quick, data_dir=args.data_dir, json_path=args.json, figure_path=args.figure, device=args.device,
                   with_torch=not args.no_torch, with_jax=not args.no_jax, plan=args.plan,
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .experiments.export import export_run, require_onnx

    require_onnx()  # before anything else: the one line that says how to install it
    _load_user_activations(args)
    path = export_run(args.run_dir, args.onnx, opset=args.opset)
    print(f"exported the model of {_escape(args.run_dir)} to {_escape(str(path))} (ONNX opset {args.opset}, float32; "
          "input 'pixels' (batch, D), output 'logits' (batch, C))")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .experiments.predict import predict, predictions_csv, write_predictions

    _load_user_activations(args)
    result = predict(args.run_dir, args.inputs, invert=args.invert, device=args.device,
                     on_skip=lambda file, reason: _error_line(f"skipped {_escape(file)}: {_escape(reason)}"))
    if args.out:
        write_predictions(result, args.out)
        files = len(set(result.files))
        print(f"{len(result.files)} predictions from {files} file{'s' if files != 1 else ''} written to {_escape(args.out)}"
              + (f"; {len(result.skipped)} skipped" if result.skipped else ""))
    else:
        sys.stdout.write(predictions_csv(result))
    return 1 if result.skipped else 0


def _gradcheck(args: argparse.Namespace) -> int:
    from .experiments.gradreport import run_gradcheck

    return run_gradcheck(args)


def _study_estimators(args: argparse.Namespace) -> int:
    from .experiments.estimator_study import run_study_command

    return run_study_command(args)


_COMMANDS = {
    "train": _train, "sweep": _sweep, "report": _report, "evaluate": _evaluate, "demo": _demo, "archs": _archs,
    "activations": _activations, "bench": _bench, "export": _export, "predict": _predict,
    "gradcheck": _gradcheck, "study-estimators": _study_estimators,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 run stopped, 2 user error, 130 interrupted)."""
    from .backend import BackendUnavailableError

    argv = list(sys.argv[1:] if argv is None else argv)
    previous_term = _stop_on_sigterm()
    try:
        _refuse_double_dash_values(argv)
        args = _shared_parser().parse_args(argv)
        args.argv = argv  # `train --resume` parses it again to see which options were typed
        return _COMMANDS[args.command](args)
    except (UserError, BackendUnavailableError) as err:
        message = _escape(str(err).strip()) or type(err).__name__
        _error_line(message if message.startswith("smartmixed") else f"smartmixed: error: {message}")
        return EXIT_USER_ERROR
    except _Terminated:
        print("smartmixed: terminated (SIGTERM)", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("smartmixed: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `smartmixed archs | head`
        return 0
    except OSError as err:
        # The file system refused (full disk, read-only mount, permissions): the
        # modules report the cases they foresee; this is the last line of defence.
        where = f"{err.filename}: " if err.filename else ""
        _error_line(f"smartmixed: error: {_escape(str(where))}{_escape(err.strerror or str(err))}")
        return EXIT_USER_ERROR
    except MemoryError:
        _error_line("smartmixed: error: out of memory (try a smaller --hidden, --batch-size or --train-limit)")
        return EXIT_USER_ERROR
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which handles it itself: see train.py)."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop the command like Ctrl-C (a message, exit 143) instead of killing it silently.

    Returns the previous handler, or None where none could be installed (not the main thread).
    """
    def handler(signum, frame):
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _refuse_double_dash_values(argv: Sequence[str]) -> None:
    """Refuse ``--option=--``: argparse before Python 3.12 drops the ``--`` and stores
    an empty list, which no type function sees (``--lr=--`` became ``lr=[]``)."""
    for item in argv:
        if item == "--":
            return
        option, _, value = item.partition("=")
        if option.startswith("-") and value == "--":
            raise _UserArgumentError(f"smartmixed: error: argument {_show(option)}: expected a value, got '--' (see --help)")


@functools.lru_cache(maxsize=1)
def _shared_parser() -> argparse.ArgumentParser:
    """The parser of :func:`main`, built once per process (parsing does not change it)."""
    return build_parser()


def _error_line(line: str) -> None:
    """Print one line on stderr, whatever its encoding can hold."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=sys.stderr)
