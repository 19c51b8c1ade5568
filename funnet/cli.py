"""The ``funnet`` command line: ``funnet train``, ``funnet predict`` and ``funnet check``.

``funnet train`` trains an MLP (``Dense → activation → … → Dense``, ``--model mlp``, the
default) or a small CNN (``--model cnn``: per ``--hidden`` entry a block ``Conv 3×3 →
BatchNorm → activation → MaxPool 2×2``, then ``Flatten → Dense``) on the embedded 8x8
digits (or MNIST) with :func:`funnet.train.fit` and prints the history table and the test
accuracy; with ``--checkpoint DIR`` it records its flags in ``DIR/train-args.json`` and the
trained params (and the model state: BatchNorm's running statistics) in
``DIR/params.safetensors``, so that ``funnet predict --checkpoint DIR`` needs no other flag.
:func:`train_args`, :func:`setup_training` and :func:`fit_training` are the steps of
``funnet train`` as functions, for scripts that want exactly its model and recipe
(``examples/cnn_digits.py`` compares the two models with them). ``funnet check`` compares the gradient of such an
MLP computed four ways (:func:`funnet.check.check_model`, float64) and exits 1 when a leaf
disagrees.

Exit codes: 0 success; 1 a runtime error (bad data file, non-finite loss, failed gradient
check), reported on stderr without a traceback; 2 bad flags or values (usage error).

    funnet train                                   # digits, defaults: ≥ 96 % test accuracy
    funnet train --hidden 64 --activation tanh --optimizer momentum --lr 0.05
    funnet train --model cnn --grad hand                # Conv–BatchNorm–ReLU–MaxPool ×2, Dense
    funnet train --data mnist:~/data/mnist --epochs 5 --checkpoint runs/a --resume
    funnet predict --checkpoint runs/a --data rows.npy --out labels.csv
    funnet check --hidden 8,8 --activation elu --methods hand,reverse,numerical
    funnet check path/to/cnn.py:build --train     # build() -> (model, params, x, y, loss, state)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "fit_training", "main", "setup_training", "train_args"]

#: ``name: (optax constructor name, extra hyperparameters, default learning rate)``
OPTIMIZERS: dict[str, tuple[str, dict[str, float], float]] = {
    "sgd": ("sgd", {}, 0.1),
    "momentum": ("sgd", {"momentum": 0.9}, 0.02),
    "adagrad": ("adagrad", {}, 0.05),
    "adadelta": ("adadelta", {}, 1.0),
    "rmsprop": ("rmsprop", {}, 1e-3),
    "adam": ("adam", {}, 1e-3),
}
SCHEDULES = ("constant", "step", "cosine")
MODELS = ("mlp", "cnn")
#: ``--hidden`` when not given: the hidden Dense widths (mlp) or the conv blocks' channels (cnn)
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"mlp": (128, 128), "cnn": (16, 32)}
GRADS = ("reverse", "hand")
AUTO = "auto"  # --coordinator auto: the cluster's environment, as JAX reads it
METHODS = ("hand", "formula", "reverse", "forward", "numerical")


#: ``--activation``'s choices: the names of ``funnet.activations.ACTIVATIONS`` and ``prelu``,
#: written out so that ``funnet --help`` and argument errors need no JAX import
#: (tests/test_cli.py checks the list against the registry).
ACTIVATION_NAMES = (
    "elu", "exp", "gelu", "hard_logistic", "hard_tanh", "leaky_relu", "logistic", "relu",
    "selu", "softplus", "step", "swish", "tanh", "prelu",
)


def _activation_names() -> list[str]:
    return list(ACTIVATION_NAMES)


# ------------------------------------------------------------------------ value types


def _hidden(text: str) -> tuple[int, ...]:
    """``"128,128"`` → ``(128, 128)``; ``""`` → ``()`` (no hidden layer)."""
    if not text.strip():
        return ()
    sizes = []
    for part in text.split(","):
        try:
            size = int(part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated positive ints like 128,128; "
                f"{part.strip()!r} is not an int") from None
        if size <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: layer sizes must be positive, got {size}")
        sizes.append(size)
    return tuple(sizes)


def _number(kind: type, *, minimum: float, strict: bool, maximum: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be finite")
        if value < minimum or (strict and value == minimum):
            bound = ">" if strict else "≥"
            raise argparse.ArgumentTypeError(f"{text!r}: must be {bound} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be ≤ {maximum}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive_float = _number(float, minimum=0.0, strict=True)
_nonnegative_float = _number(float, minimum=0.0, strict=False)
_positive_int = _number(int, minimum=0, strict=True)
_nonnegative_int = _number(int, minimum=0, strict=False)
_seed = _number(int, minimum=0, strict=False, maximum=2**32 - 1)  # a uint32 PRNG seed


def _path(text: str) -> Path:
    """A path argument: ``~`` expanded; an empty string is refused (it would mean ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or directory name")
    return Path(text).expanduser()


def _data_spec(text: str) -> tuple[str, str | None]:
    """``digits`` or ``mnist:PATH``."""
    if text == "digits":
        return "digits", None
    if text.startswith("mnist:") and len(text) > len("mnist:"):
        return "mnist", text[len("mnist:"):]
    raise argparse.ArgumentTypeError(f"{text!r}: expected 'digits' or 'mnist:PATH'")


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if len(methods) < 2 or len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"{text!r}: give two or more different methods")
    return methods


# ---------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, as a value (``16,32``, not ``(16, 32)``).

    Flags (``--resume``) show none; an option whose default is ``None`` says in its own
    help what leaving it out means, so no ``(default: None)`` is printed.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, argparse.SUPPRESS) or action.nargs == 0
                or action.required or isinstance(action, argparse._VersionAction)):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(str(d) for d in default)
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``funnet`` (subcommands ``train`` and ``check``)."""
    parser = argparse.ArgumentParser(
        prog="funnet",
        description="Functional neural networks on JAX with hand-derived, cross-checked "
                    "gradients.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"funnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    activations = _activation_names()

    train = sub.add_parser(
        "train", help="train an MLP or a CNN on digits or MNIST",
        description="Train an MLP (Dense → activation → … → Dense) or a CNN (per --hidden "
                    "entry Conv 3x3 → BatchNorm → activation → MaxPool 2x2, then Flatten → "
                    "Dense) with funnet.train.fit; print the history and the test accuracy.",
        formatter_class=_HelpFormatter)
    train.add_argument("--data", type=_data_spec, default="digits", metavar="SPEC",
                       help="'digits' (embedded 8x8 digits, split 70/15/15 by --seed) or "
                            "'mnist:PATH' (IDX directory or .npz)")
    train.add_argument("--model", choices=MODELS, default="mlp",
                       help="mlp: Dense layers on the flattened pixels; cnn: conv blocks on "
                            "the square images [N, side, side, 1] (side = √pixels)")
    train.add_argument("--hidden", type=_hidden, default=None, metavar="N,N,...",
                       help="hidden layer sizes: the Dense widths of the mlp (default "
                            "128,128), the channels of the cnn's conv blocks, one block per "
                            "entry (default 16,32)")
    train.add_argument("--activation", choices=activations, default="relu", metavar="NAME",
                       help=f"hidden activation: {', '.join(activations)}")
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                       help="the optax optimizer")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default per optimizer: "
                            + ", ".join(f"{k} {v[2]:g}" for k, v in OPTIMIZERS.items()) + ")")
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                       help="learning-rate schedule: constant, step (halve every quarter of "
                            "the epochs) or cosine (decay to 0 over the run)")
    train.add_argument("--epochs", type=_positive_int, default=40, help="passes over the data")
    train.add_argument("--batch-size", type=_positive_int, default=32,
                       help="rows per training step")
    train.add_argument("--l2", type=_nonnegative_float, default=1e-4,
                       help="L2 penalty λ on the weights (½ λ Σ ||W||²)")
    train.add_argument("--patience", type=_nonnegative_int, default=0,
                       help="early stopping: stop after this many epochs without a lower "
                            "validation loss and keep the best epoch's params (0: off; with "
                            "the cosine schedule the last epochs are usually the best)")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seeds the split, the initial params and the batch order")
    train.add_argument("--grad", choices=GRADS, default="reverse",
                       help="gradients by jax.grad or by the hand-derived backprop")
    train.add_argument("--checkpoint", type=_path, default=None, metavar="DIR",
                       help="save a checkpoint in DIR after every epoch (orbax), the flags "
                            "in DIR/train-args.json and the trained params in "
                            "DIR/params.safetensors (for funnet predict); default: no "
                            "checkpoint")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --checkpoint DIR")
    train.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                       help="data-parallel over the first N devices (jax.devices()); "
                            "default: one device, no sharding. On a CPU, emulate N devices "
                            "with XLA_FLAGS=--xla_force_host_platform_device_count=N")
    train.add_argument("--shard-params", action="store_true",
                       help="split the params and optimiser state over the devices "
                            "(FSDP-style fit(shard_params=True): each device holds 1/N of "
                            "every large weight); needs --devices N ≥ 2 or several "
                            "processes")
    train.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="one process of a multi-process run coordinated at HOST:PORT "
                            "(process 0 serves it), or 'auto': found by JAX in a Slurm, "
                            "Open MPI, Kubernetes or Cloud TPU job's environment; default: "
                            "$FUNNET_COORDINATOR, as python -m funnet.launch sets it, else "
                            "a single process")
    train.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                       help="processes of the run (default: $FUNNET_NUM_PROCESSES)")
    train.add_argument("--process-id", type=_nonnegative_int, default=None, metavar="I",
                       help="this process's rank, 0..N-1 (default: $FUNNET_PROCESS_ID)")
    train.add_argument("--init-timeout", type=_positive_int, default=300, metavar="S",
                       help="seconds to wait for the coordinator and the other processes")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress display: on a terminal a progress bar (on stderr) "
                            "then the history table; when the output is not a terminal a "
                            "line per epoch as it ends; with this flag the table only")
    train.add_argument("--plot", type=_path, default=None, metavar="PATH",
                       help="save the learning curves as an image (needs matplotlib); "
                            "default: no image")
    train.set_defaults(run=_train)

    predict = sub.add_parser(
        "predict", help="predict classes with a model trained by funnet train --checkpoint",
        description="Load the model that funnet train --checkpoint DIR trained (its flags "
                    "from DIR/train-args.json, its params from DIR/params.safetensors), "
                    "predict the class of every row of --data and print the accuracy when "
                    "the data has labels.",
        formatter_class=_HelpFormatter)
    predict.add_argument("--checkpoint", type=_path, required=True, metavar="DIR")
    predict.add_argument("--data", default=None, metavar="SPEC",
                         help="'digits' or 'mnist:PATH' (the test split, as funnet train "
                              "made it), or a .npy/.csv file of rows (no labels); default: "
                              "the data the model was trained on")
    predict.add_argument("--out", type=_path, default=None, metavar="PATH",
                         help="write the predicted classes to PATH (CSV: row,class); "
                              "default: print them")
    predict.set_defaults(run=_predict)

    check = sub.add_parser(
        "check", help="check a model's gradients by every witness (float64)",
        description="Compute the gradient of a model's loss by hand-derived backprop, "
                    "autodiff of the plain formulas, reverse mode, forward mode and "
                    "kink-aware central differences (float64), check every layer at its own "
                    "inputs, and print the report. Without TARGET: an MLP on a small batch of "
                    "the embedded digits. With TARGET = path/to/model.py:build, build() must "
                    "return (model, params, x, y, loss), or (model, params, x, y, loss, state) "
                    "for a model holding state (BatchNorm's running statistics, from "
                    "init_with_state); --train checks it in training mode (batch "
                    "statistics). Exit codes: 0 every check passed, "
                    "1 a check failed (the first wrong layer is named), 2 bad arguments or a "
                    "TARGET that cannot be loaded.",
        formatter_class=_HelpFormatter)
    check.add_argument("target", nargs="?", default=None, metavar="TARGET",
                       help="path/to/model.py:build (default: the built-in MLP)")
    check.add_argument("--json", type=_path, default=None, metavar="PATH",
                       help="also write the report as JSON to PATH; default: no JSON")
    check.add_argument("--hidden", type=_hidden, default="16", metavar="N,N,...",
                       help="hidden Dense widths of the built-in MLP")
    check.add_argument("--activation", choices=activations, default="tanh", metavar="NAME",
                       help=f"hidden activation: {', '.join(activations)}")
    check.add_argument("--methods", type=_methods, default=METHODS, metavar="M,M,...",
                       help=f"two or more of {', '.join(METHODS)}")
    check.add_argument("--batch-size", type=_positive_int, default=16,
                       help="digits rows in the batch")
    check.add_argument("--seed", type=_seed, default=0,
                       help="seeds the params and the batch of the built-in MLP")
    check.add_argument("--train", action="store_true",
                       help="check the model in training mode (train=True: batch statistics "
                            "in BatchNorm); default: evaluation mode")
    check.set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``funnet`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Usage errors exit with code 2 (``SystemExit``) as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2)
    try:
        if args.command == "train":
            _resolve_train_args(args)
            if (args.process_id or 0) == 0 and args.coordinator != AUTO:  # only process 0
                # the first line within a second of start: importing JAX takes seconds
                print("funnet train: loading JAX…", flush=True)
            _check_processes_args(parser, args)
            if args.coordinator is not None:
                _connect(args)  # before anything else touches JAX
            _check_train_args(parser, args)
            if args.coordinator is not None and args.process_id > 0:
                with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                    return args.run(args)  # only process 0 prints
        return args.run(args)
    except KeyboardInterrupt:
        print("funnet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError, ImportError, RuntimeError,
            MemoryError) as e:  # runtime errors, e.g. XLA's out of memory: no traceback
        print(f"funnet {args.command}: error: {_first_lines(e)}", file=sys.stderr)
        return 1


def _first_lines(e: BaseException, most: int = 6) -> str:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return "\n".join(lines[:most]) + ("\n…" if len(lines) > most else "")


def _check_processes_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A multi-process run needs all of --coordinator, --num-processes, --process-id."""
    given = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
             "--process-id": args.process_id}
    if all(v is None for v in given.values()):
        return
    missing = [k for k, v in given.items() if v is None]
    if args.coordinator == AUTO:  # the cluster's variables give what is missing
        missing = []
    if missing:
        parser.error(f"a multi-process run needs {', '.join(missing)} too (or the "
                     "FUNNET_* variables python -m funnet.launch sets)")
    if None not in (args.process_id, args.num_processes) and \
            args.process_id >= args.num_processes:
        parser.error(f"--process-id {args.process_id} must be below --num-processes "
                     f"{args.num_processes}")
    if args.devices is not None:
        parser.error("--devices: a multi-process run trains on every device of every "
                     "process; leave --devices out")


def _connect(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` for this process; a coordinator that cannot be
    reached within --init-timeout is a ``RuntimeError`` naming it (JAX itself would abort
    the process without naming the address)."""
    import socket

    if args.coordinator == AUTO:
        return _connect_to_cluster(args)
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
    if args.process_id > 0:  # process 0 serves the coordinator; the others wait for it
        deadline = time.monotonic() + args.init_timeout
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"coordinator {args.coordinator} unreachable after "
                        f"{args.init_timeout} s ({e.strerror or e}); is process 0 running "
                        "there?") from None
                time.sleep(0.2)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=args.init_timeout)


def _connect_to_cluster(args: argparse.Namespace) -> None:
    """``--coordinator auto``: ``jax.distributed.initialize`` finds the coordinator, the
    number of processes and this one's rank in the cluster's environment variables (Slurm,
    Open MPI, a Kubernetes indexed Job, Cloud TPU); ``--num-processes`` and
    ``--process-id`` override theirs. Then ``args`` holds what it found."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    try:
        jax.distributed.initialize(num_processes=args.num_processes,
                                   process_id=args.process_id,
                                   initialization_timeout=args.init_timeout)
    except ValueError as e:  # JAX: "coordinator_address should be defined."
        raise RuntimeError(
            f"--coordinator auto: JAX found no cluster to join ({e}): it reads Slurm "
            "(SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), "
            "Open MPI (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK), "
            "a Kubernetes indexed Job (with the kubernetes package) or Cloud TPU; elsewhere "
            "pass --coordinator HOST:PORT --num-processes N --process-id I") from None
    args.num_processes, args.process_id = jax.process_count(), jax.process_index()


def _check_train_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything checkable before training starts, so that no run is wasted on it."""
    from .checkpoint import CheckpointError, check_writable

    if args.resume and args.checkpoint is None:
        parser.error("--resume needs --checkpoint DIR")
    if args.checkpoint is not None:
        try:
            check_writable(args.checkpoint)
        except CheckpointError as e:
            parser.error(f"--checkpoint {args.checkpoint}: {e}")
    if args.plot is not None:
        _check_plot_path(parser, args.plot)
    if args.devices is not None:
        import jax

        available = len(jax.devices())
        if args.devices > available:
            platform = jax.devices()[0].platform
            hint = (f"; to emulate {args.devices} devices on the CPU, run with "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}"
                    if platform == "cpu" else "")
            parser.error(f"--devices {args.devices}: only {available} device(s) available "
                         f"({platform}){hint}")
        if args.batch_size % args.devices:
            parser.error(f"--batch-size {args.batch_size} must be divisible by "
                         f"--devices {args.devices}")
    if args.shard_params and (args.devices or 1) < 2 and (args.num_processes or 1) < 2:
        parser.error("--shard-params splits the params over several devices: pass "
                     "--devices N with N ≥ 2, or run several processes")


def _check_plot_path(parser: argparse.ArgumentParser, path: Path) -> None:
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        parser.error("--plot needs matplotlib: pip install 'funnet[plot]'")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        parser.error(f"--plot {path}: unknown image format {path.suffix!r}; use one of "
                     f"{', '.join('.' + f for f in sorted(formats))}")
    if not path.parent.is_dir():
        parser.error(f"--plot {path}: directory {path.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".funnet-plot-"):
            pass
    except OSError as e:
        parser.error(f"--plot {path}: directory {path.parent} is not writable: "
                     f"{e.strerror or e}")


# ----------------------------------------------------------------------------- train


def _activation(activation: str):
    from . import layers
    from .activations import ACTIVATIONS

    return layers.PRelu if activation == "prelu" else layers.ActivationLayer(
        ACTIVATIONS[activation])


# The builders are cached: the same flags give the same Layer object, so that fit, which
# compiles once per model object, reuses its compiled epoch across runs (seeds) of a script.
@functools.lru_cache(maxsize=64)
def _cached_mlp(hidden: tuple[int, ...], activation: str, n_out: int):
    from . import layers

    act = _activation(activation)
    stack: list[Any] = []
    for size in hidden:
        stack += [layers.Dense(size), act]
    return layers.serial(*stack, layers.Dense(n_out))


def _mlp(hidden: Sequence[int], activation: str, n_out: int):
    """``serial(Dense(h1), act, …, Dense(n_out))``."""
    return _cached_mlp(tuple(hidden), activation, n_out)


@functools.lru_cache(maxsize=64)
def _cached_cnn(channels: tuple[int, ...], activation: str, n_out: int):
    from . import layers

    act = _activation(activation)
    stack: list[Any] = []
    for c in channels:
        stack += [layers.Conv(c, (3, 3), padding="SAME"), layers.BatchNorm(), act,
                  layers.MaxPool((2, 2))]
    return layers.serial(*stack, layers.Flatten, layers.Dense(n_out))


def _cnn(channels: Sequence[int], activation: str, n_out: int):
    """``serial(Conv(c1, 3×3, SAME), BatchNorm, act, MaxPool(2×2), …, Flatten, Dense(n_out))``.

    One block per entry of ``channels``; each block keeps the spatial size through the
    convolution (``"SAME"``) and halves it (rounding down) in the pooling, so 8×8 digits
    allow three blocks (8 → 4 → 2 → 1) and 28×28 MNIST four (28 → 14 → 7 → 3 → 1).
    """
    return _cached_cnn(tuple(channels), activation, n_out)


def _model(kind: str, hidden: Sequence[int], activation: str, n_out: int):
    return _mlp(hidden, activation, n_out) if kind == "mlp" else _cnn(hidden, activation, n_out)


def _sample_shape(kind: str, x: Any) -> tuple[int, ...]:
    """One model input: a row ``(D,)`` (mlp) or an image ``(H, W, C)`` (cnn).

    For the cnn, rows of ``D`` pixels are square one-channel images ``(√D, √D, 1)``;
    ``[N, H, W]`` inputs get one channel; ``[N, H, W, C]`` inputs are kept.
    """
    shape = tuple(int(d) for d in x.shape[1:])
    size = math.prod(shape)
    if kind == "mlp":
        return (size,)
    if len(shape) in (2, 3):
        return shape if len(shape) == 3 else (*shape, 1)
    side = math.isqrt(size)
    if len(shape) != 1 or side * side != size:
        raise ValueError(f"--model cnn takes square one-channel images: samples of shape "
                         f"{shape} ({size} values) are not side × side pixels; use --model mlp")
    return (side, side, 1)


@dataclasses.dataclass(frozen=True)
class Training:
    """What :func:`setup_training` prepares for :func:`fit_training`: ``funnet train``
    before its ``fit`` call."""

    model: Any  #: the Layer
    params: Any  #: its initial params
    state: Any  #: its initial state (BatchNorm running statistics; ``()`` for the mlp)
    optimizer: Any  #: the optax transformation (with the learning-rate schedule)
    lr: float  #: the (peak) learning rate
    key: Any  #: fit's PRNG key (shuffles)
    splits: Any  #: the :class:`funnet.data.Splits`, inputs shaped as the model takes them
    input_shape: tuple[int, ...]  #: one input's shape: ``(D,)`` or ``(H, W, C)``
    n_out: int  #: the number of classes


def _resolve_train_args(args: argparse.Namespace) -> None:
    """Fill in the defaults that depend on other flags (``--hidden`` on ``--model``)."""
    if args.hidden is None:
        args.hidden = DEFAULT_HIDDEN[args.model]
    for flag, variable in (("coordinator", "FUNNET_COORDINATOR"),
                           ("num_processes", "FUNNET_NUM_PROCESSES"),
                           ("process_id", "FUNNET_PROCESS_ID")):
        if getattr(args, flag) is None and os.environ.get(variable):
            value = os.environ[variable]
            setattr(args, flag, value if flag == "coordinator" else int(value))


def train_args(argv: Sequence[str] = ()) -> argparse.Namespace:
    """The flags of ``funnet train ARGV``, checked and completed as ``funnet train`` does.

    >>> args = train_args(["--model", "cnn", "--epochs", "3"])
    >>> args.model, args.hidden, args.activation, args.optimizer, args.epochs
    ('cnn', (16, 32), 'relu', 'adam', 3)
    """
    parser = build_parser()
    args = parser.parse_args(["train", *argv])
    _resolve_train_args(args)
    _check_train_args(parser, args)
    return args


def setup_training(args: argparse.Namespace, splits: Any) -> Training:
    """The model, its initial params and state, the optimizer and the key of ``funnet train``.

    Args:
      args: the flags, from :func:`train_args`.
      splits: ``Splits(train, valid, test)``; inputs may be rows ``[N, D]`` or, for the
        cnn, images ``[N, H, W(, C)]``; they are reshaped to what the model takes.
    """
    import jax
    import numpy as np

    from . import data

    n_out = int(max(np.max(part.y) for part in splits)) + 1
    shape = _sample_shape(args.model, splits.train.x)
    splits = data.Splits(*(data.Dataset(np.asarray(p.x).reshape(len(p.x), *shape), p.y)
                           for p in splits))
    model = _model(args.model, args.hidden, args.activation, n_out)
    init_key, fit_key = jax.random.split(jax.random.PRNGKey(args.seed))
    _, params, state = model.init_with_state(init_key, (-1, *shape))
    steps = -(-len(splits.train) // args.batch_size)
    tx, lr = _optimizer(args.optimizer, args.lr, args.schedule, epochs=args.epochs,
                        steps_per_epoch=steps)
    return Training(model, params, state, tx, lr, fit_key, splits, shape, n_out)


def fit_training(args: argparse.Namespace, training: Training) -> tuple[Any, Any, Any]:
    """``funnet train``'s :func:`funnet.train.fit` call: ``(params, state, history)``.

    With several processes each passes only its own part of the training and validation
    rows (:func:`funnet.data.shard`, ``fit(local_data=True)``): the same run, each device
    holding its part of the data."""
    import jax

    from . import data, losses, train

    devices = None if args.devices is None else jax.devices()[: args.devices]
    t = training
    local = jax.process_count() > 1

    def part(d):  # several processes: this process's own rows only
        return data.shard(d, jax.process_index(), jax.process_count()) if local else d

    return train.fit(
        t.model, t.params, part(t.splits.train), valid=part(t.splits.valid), state=t.state,
        local_data=local,
        loss=losses.softmax_cross_entropy, optimizer=t.optimizer, epochs=args.epochs,
        batch_size=args.batch_size, key=t.key, l2=args.l2, patience=args.patience or None,
        progress=_progress(args) == "bar", checkpoint=args.checkpoint, resume=args.resume,
        devices=devices, shard_params=args.shard_params, grad=args.grad,
        on_epoch=_print_epoch(args.epochs) if _progress(args) == "log" else None)


def _progress(args: argparse.Namespace) -> str:
    """How ``funnet train`` shows progress: ``"bar"`` (a terminal: tqdm, then the table),
    ``"log"`` (output piped or redirected: a line per epoch, no table) or ``"table"``."""
    if args.no_progress:
        return "table"
    return "bar" if sys.stdout.isatty() else "log"


def _print_epoch(total: int):
    from .train.history import epoch_line

    def show(record: dict) -> None:
        print(epoch_line(record, total), flush=True)

    return show


def _load(spec: tuple[str, str | None], seed: int):
    """``Splits(train, valid, test)`` for ``--data``."""
    import numpy as np

    from . import data

    kind, path = spec
    if kind == "digits":
        return data.split(data.load_digits(), seed=seed)
    source = Path(path).expanduser()
    train = data.load_mnist(source, split="train")
    if source.is_dir():
        has_test = any(source.glob("t10k-images-idx3-ubyte*"))
    else:
        has_test = data._npz_has_split(source, "test")
    if not has_test:  # one set of samples: split it three ways
        return data.split(train, seed=seed)
    test = data.load_mnist(source, split="test")
    parts = data.split(train, seed=seed, fractions=(0.9, 0.05, 0.05))
    valid = data.Dataset(np.concatenate([parts.valid.x, parts.test.x]),
                         np.concatenate([parts.valid.y, parts.test.y]))
    return data.Splits(parts.train, valid, test)


@functools.lru_cache(maxsize=64)
def _optimizer(name: str, lr: float | None, schedule: str, *, epochs: int,
               steps_per_epoch: int):
    import optax

    ctor, extra, default_lr = OPTIMIZERS[name]
    lr = default_lr if lr is None else lr
    total = max(1, epochs * steps_per_epoch)
    if schedule == "constant":
        rate: Any = lr
    elif schedule == "step":
        rate = optax.exponential_decay(lr, transition_steps=steps_per_epoch * max(1, epochs // 4),
                                       decay_rate=0.5, staircase=True)
    else:
        rate = optax.cosine_decay_schedule(lr, decay_steps=total)
    return optax.inject_hyperparams(getattr(optax, ctor))(learning_rate=rate, **extra), lr


def _train(args: argparse.Namespace) -> int:
    from . import losses, train

    started = time.perf_counter()
    splits = _load(args.data, args.seed)
    t = setup_training(args, splits)
    name = args.data[0] if args.data[1] is None else f"mnist:{args.data[1]}"
    print(f"data: {name}: train {len(splits.train)}, valid {len(splits.valid)}, "
          f"test {len(splits.test)}")
    print(f"model: {t.model.name}")
    print(f"optimizer: {args.optimizer}, lr {t.lr:g} ({args.schedule}), batch "
          f"{args.batch_size}, l2 {args.l2:g}, grad {args.grad}"
          + (f", devices {args.devices}" if args.devices is not None else "")
          + (", params sharded" if args.shard_params else ""))
    first = (args.process_id or 0) == 0  # several processes: only process 0 writes files
    if args.checkpoint is not None:
        _record_args(args, t, write=first)  # checked by every process: refused alike
    print("training (the first epoch includes compiling the step)…", flush=True)
    params, state, history = fit_training(args, t)
    if args.coordinator is not None:  # global arrays: each process scores on its own
        import jax

        params, state = jax.device_get((params, state))
    if args.checkpoint is not None and first:
        from .weights import save_params

        save_params(args.checkpoint / PARAMS_FILE, params, model=t.model, state=state,
                    input_shape=(-1, *t.input_shape), overwrite=True)
    # fit returns the best epoch's params with --patience, else the last epoch's
    last = history[-1]["epoch"] if history else None
    used = history.best_epoch if args.patience and history.best_epoch else last
    which = " (--patience: the best)" if args.patience else " (the last)"
    if _progress(args) != "log":  # the per-epoch lines were the history already
        print(history.table())
        if history.best_epoch is not None:
            print(f"* lowest validation loss; the test score uses the params of epoch {used}"
                  + which)
    else:
        if history.stopped_early:
            print(f"stopped early; best epoch {history.best_epoch}")
        if history.best_epoch is not None:
            print(f"lowest validation loss: epoch {history.best_epoch}; the test score uses "
                  f"the params of epoch {used}" + which)
    if args.plot is not None and (args.process_id or 0) == 0:
        print(f"learning curves: {history.plot(args.plot)}")
    scores = train.evaluate(t.model, params, t.splits.test, state=state,
                            loss=losses.softmax_cross_entropy)
    print(f"test accuracy: {scores['accuracy']:.4f}, test loss: {scores['loss']:.4f} "
          f"(params of epoch {used}); {time.perf_counter() - started:.1f} s")
    return 0


ARGS_FILE, PARAMS_FILE = "train-args.json", "params.safetensors"
_MODEL_FLAGS = ("model", "hidden", "activation", "data", "seed")
_RECORDED_DEFAULTS = {"model": "mlp"}  # flags that records written before them lack


def _record_args(args: argparse.Namespace, training: Training, *, write: bool = True
                 ) -> None:
    """``DIR/train-args.json``: what ``funnet predict`` needs to rebuild the model. On
    ``--resume`` the recorded model flags must be the ones given now. ``write=False``
    checks only (the processes other than 0 of a multi-process run)."""
    import json

    t = training
    kind, where = args.data
    data = [kind, None if where is None else str(Path(where).expanduser().absolute())]
    record = {"model": args.model, "hidden": list(args.hidden), "activation": args.activation,
              "data": data, "seed": args.seed,
              "n_in": math.prod(t.input_shape), "input_shape": list(t.input_shape),
              "n_out": t.n_out}
    path = args.checkpoint / ARGS_FILE
    if path.exists():
        old = {**_RECORDED_DEFAULTS, **json.loads(path.read_text())}
        changed = [f"--{k} {old.get(k)!r} there, {record[k]!r} now" for k in _MODEL_FLAGS
                   if old.get(k) != record[k]]
        if changed:
            raise ValueError(f"--checkpoint {args.checkpoint} was trained with other flags: "
                             + "; ".join(changed))
        from .checkpoint import latest_step

        if not args.resume and latest_step(args.checkpoint) is not None:
            raise ValueError(f"--checkpoint {args.checkpoint} already holds checkpoints of a run; pass "
                             "--resume to continue it, or use an empty directory")
    if args.coordinator is not None:  # every process checked before process 0 writes:
        from jax.experimental import multihost_utils  # else a late one would see the file

        multihost_utils.sync_global_devices("funnet train: flags checked")
    if not write:
        return
    tmp = path.with_name(f".{ARGS_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------- predict


def _rows(spec: str, recorded: dict):
    """``(x, y or None, description)`` for ``funnet predict --data``; ``x`` is ``[N, n_in]``."""
    import numpy as np

    path = Path(spec).expanduser()
    if spec in ("digits",) or spec.startswith("mnist:"):
        test = _load(_data_spec(spec), recorded["seed"]).test
        x, y, what = test.x, test.y, f"{spec}: test split"
    elif path.suffix == ".npy":
        x, y, what = np.load(path, allow_pickle=False), None, str(path)
    elif path.suffix == ".csv":
        x, y, what = np.loadtxt(path, delimiter=",", ndmin=2), None, str(path)
    else:
        raise ValueError(f"--data {spec!r}: expected 'digits', 'mnist:PATH', or a .npy/.csv "
                         "file of rows")
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.shape[1] != recorded["n_in"]:
        raise ValueError(f"--data {spec}: rows have {x.shape[1]} values, the model was "
                         f"trained on {recorded['n_in']}")
    return x, y, f"{what} ({len(x)} rows)"


def _predict(args: argparse.Namespace) -> int:
    import json

    import jax
    import numpy as np

    from . import train
    from .weights import load_params

    directory = args.checkpoint
    if not (directory / ARGS_FILE).is_file():
        raise ValueError(f"--checkpoint {directory}: no {ARGS_FILE}; it was not written by "
                         "funnet train --checkpoint")
    if not (directory / PARAMS_FILE).is_file():
        raise ValueError(f"--checkpoint {directory}: no {PARAMS_FILE}: the run has not "
                         "finished; finish it with funnet train --checkpoint DIR --resume")
    recorded = {**_RECORDED_DEFAULTS, **json.loads((directory / ARGS_FILE).read_text())}
    shape = tuple(recorded.get("input_shape", [recorded["n_in"]]))
    model = _model(recorded["model"], tuple(recorded["hidden"]), recorded["activation"],
                   recorded["n_out"])
    like = model.init_with_state(jax.random.PRNGKey(0), (-1, *shape))[1:]
    params, state = load_params(directory / PARAMS_FILE, like=like, model=model,
                                with_state=True)
    spec = args.data or (recorded["data"][0] if recorded["data"][1] is None
                         else f"mnist:{recorded['data'][1]}")
    x, y, what = _rows(spec, recorded)
    out = train.predict(model, params, x.reshape(len(x), *shape), state=state, batch_size=4096)
    classes = np.argmax(np.asarray(out), axis=-1)
    print(f"model: {model.name} from {directory}; data: {what}")
    if y is not None:
        print(f"accuracy: {float(np.mean(classes == np.asarray(y))):.4f}")
    table = "row,class\n" + "".join(f"{i},{c}\n" for i, c in enumerate(classes.tolist()))
    if args.out is not None:
        args.out.write_text(table)
        print(f"predictions: {args.out}")
    elif y is None:  # no labels to score: the predictions are the result
        print(table, end="")
    return 0


# ----------------------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        return _run_check(args)
    finally:
        jax.config.update("jax_enable_x64", previous)


def _load_target(target: str) -> tuple:
    """``(model, params, x, y, loss, state)`` from ``path/to/model.py:build``, whose
    ``build()`` returns those five or six items (``state`` ``()`` when it returns five);
    ValueError if not."""
    import importlib.util

    path, _, name = target.rpartition(":")
    if not path or not name:
        raise ValueError(f"TARGET {target!r}: expected path/to/model.py:build")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"TARGET {target!r}: no file {file}")
    spec = importlib.util.spec_from_file_location(f"_funnet_check_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file: it cannot be loaded
        raise ValueError(f"TARGET {target!r}: {file} cannot be loaded: "
                         f"{type(e).__name__}: {e}") from None
    build = getattr(module, name, None)
    if not callable(build):
        raise ValueError(f"TARGET {target!r}: {file} defines no function {name}()")  # noqa: TRY004
    try:
        built = build()
    except Exception as e:  # noqa: BLE001 - reported as a bad target, not a traceback
        raise ValueError(f"TARGET {target!r}: {name}() raised {type(e).__name__}: {e}") from None
    if not isinstance(built, tuple) or len(built) not in (5, 6):
        got = f"a tuple of {len(built)}" if isinstance(built, tuple) else type(built).__name__
        raise ValueError(f"TARGET {target!r}: {name}() must return (model, params, x, y, loss) "
                         f"or, for a model holding state, (model, params, x, y, loss, state), "
                         f"got {got}")
    return built if len(built) == 6 else (*built, ())


def _run_check(args: argparse.Namespace) -> int:
    import json

    import jax
    import jax.numpy as jnp

    from . import check, data, losses
    from .contract import StatefulModelError

    state = ()
    if args.target is not None:
        try:
            model, params, x, y, loss, state = _load_target(args.target)
        except ValueError as e:
            print(f"funnet check: {e}", file=sys.stderr)
            return 2
        mode = "training" if args.train else "evaluation"
        print(f"model: {getattr(model, 'name', model)} from {args.target}; {mode} mode; "
              f"methods {', '.join(args.methods)}")
    else:
        digits = data.split(data.load_digits(), seed=args.seed).train
        x = jnp.asarray(digits.x[: args.batch_size], jnp.float64)
        y = jnp.asarray(digits.y[: args.batch_size])
        model = _mlp(args.hidden, args.activation, 10)
        _, params = model.init(jax.random.PRNGKey(args.seed), (-1, x.shape[1]))
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        loss = losses.softmax_cross_entropy
        print(f"model: {model.name}; {len(x)} digits rows; methods {', '.join(args.methods)}")
    methods = args.methods if isinstance(loss, losses.Loss) else tuple(
        m for m in args.methods if m != "hand")
    try:
        result = check.check_model(model, params, x, y, loss, methods=methods, state=state,
                                   train=args.train)
        code = 0
    except StatefulModelError as e:
        print(f"funnet check: {e}; build() returns it as a 6th item, (model, params, x, y, "
              "loss, state)", file=sys.stderr)
        return 2
    except check.GradientCheckError as e:
        result, code = e.result, 1
        print(result)
        print(f"funnet check: gradient check failed: {e}", file=sys.stderr)
    else:
        print(result)
    if args.json is not None and result is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return code
