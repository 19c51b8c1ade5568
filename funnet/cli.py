"""The ``funnet`` command line: ``funnet train``, ``funnet predict`` and ``funnet check``.

``funnet train`` trains an MLP (``Dense → activation → … → Dense``) on the embedded
8x8 digits (or MNIST) with :func:`funnet.train.fit` and prints the history table and the
test accuracy; with ``--checkpoint DIR`` it records its flags in ``DIR/train-args.json``
and the trained params in ``DIR/params.safetensors``, so that ``funnet predict
--checkpoint DIR`` needs no other flag. ``funnet check`` compares the gradient of such an
MLP computed four ways (:func:`funnet.check.check_model`, float64) and exits 1 when a leaf
disagrees.

Exit codes: 0 success; 1 a runtime error (bad data file, non-finite loss, failed gradient
check), reported on stderr without a traceback; 2 bad flags or values (usage error).

    funnet train                                   # digits, defaults: ≥ 96 % test accuracy
    funnet train --hidden 64 --activation tanh --optimizer momentum --lr 0.05
    funnet train --data mnist:~/data/mnist --epochs 5 --checkpoint runs/a --resume
    funnet predict --checkpoint runs/a --data rows.npy --out labels.csv
    funnet check --hidden 8,8 --activation elu --methods hand,reverse,numerical
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

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
GRADS = ("reverse", "hand")
METHODS = ("hand", "formula", "reverse", "forward", "numerical")


def _activation_names() -> list[str]:
    from .activations import ACTIVATIONS

    return sorted(ACTIVATIONS) + ["prelu"]


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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``funnet`` (subcommands ``train`` and ``check``)."""
    parser = argparse.ArgumentParser(
        prog="funnet",
        description="Functional neural networks on JAX with hand-derived, cross-checked "
                    "gradients.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    activations = _activation_names()

    train = sub.add_parser(
        "train", help="train an MLP on digits or MNIST",
        description="Train an MLP (Dense → activation → … → Dense) with funnet.train.fit; "
                    "print the history and the test accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", type=_data_spec, default="digits", metavar="SPEC",
                       help="'digits' (embedded 8x8 digits, split 70/15/15 by --seed) or "
                            "'mnist:PATH' (IDX directory or .npz)")
    train.add_argument("--hidden", type=_hidden, default="128,128", metavar="N,N,...",
                       help="hidden layer sizes")
    train.add_argument("--activation", choices=activations, default="relu", metavar="NAME",
                       help=f"hidden activation: {', '.join(activations)}")
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default per optimizer: "
                            + ", ".join(f"{k} {v[2]:g}" for k, v in OPTIMIZERS.items()) + ")")
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                       help="learning-rate schedule: constant, step (halve every quarter of "
                            "the epochs) or cosine (decay to 0 over the run)")
    train.add_argument("--epochs", type=_positive_int, default=40)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--l2", type=_nonnegative_float, default=1e-4,
                       help="L2 penalty λ on the weights (½ λ Σ ||W||²)")
    train.add_argument("--patience", type=_nonnegative_int, default=0,
                       help="early stopping: stop after this many epochs without a lower "
                            "validation loss and keep the best epoch's params (0: off; with "
                            "the cosine schedule the last epochs are usually the best)")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--grad", choices=GRADS, default="reverse",
                       help="gradients by jax.grad or by the hand-derived backprop")
    train.add_argument("--checkpoint", type=_path, default=None, metavar="DIR",
                       help="save a checkpoint in DIR after every epoch (orbax), the flags "
                            "in DIR/train-args.json and the trained params in "
                            "DIR/params.safetensors (for funnet predict)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in --checkpoint DIR")
    train.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                       help="data-parallel over the first N devices")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plot", type=_path, default=None, metavar="PATH",
                       help="save the learning curves as an image (needs matplotlib)")
    train.set_defaults(run=_train)

    predict = sub.add_parser(
        "predict", help="predict classes with a model trained by funnet train --checkpoint",
        description="Load the model that funnet train --checkpoint DIR trained (its flags "
                    "from DIR/train-args.json, its params from DIR/params.safetensors), "
                    "predict the class of every row of --data and print the accuracy when "
                    "the data has labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    predict.add_argument("--checkpoint", type=_path, required=True, metavar="DIR")
    predict.add_argument("--data", default=None, metavar="SPEC",
                         help="'digits' or 'mnist:PATH' (the test split, as funnet train "
                              "made it), or a .npy/.csv file of rows (no labels); default: "
                              "the data the model was trained on")
    predict.add_argument("--out", type=_path, default=None, metavar="PATH",
                         help="write the predicted classes to PATH (CSV: row,class)")
    predict.set_defaults(run=_predict)

    check = sub.add_parser(
        "check", help="check a model's gradients by every witness (float64)",
        description="Compute the gradient of a model's loss by hand-derived backprop, "
                    "autodiff of the plain formulas, reverse mode, forward mode and "
                    "kink-aware central differences (float64), check every layer at its own "
                    "inputs, and print the report. Without TARGET: an MLP on a small batch of "
                    "the embedded digits. With TARGET = path/to/model.py:build, build() must "
                    "return (model, params, x, y, loss). Exit codes: 0 every check passed, "
                    "1 a check failed (the first wrong layer is named), 2 bad arguments or a "
                    "TARGET that cannot be loaded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    check.add_argument("target", nargs="?", default=None, metavar="TARGET",
                       help="path/to/model.py:build (default: the built-in MLP)")
    check.add_argument("--json", type=_path, default=None, metavar="PATH",
                       help="also write the report as JSON to PATH")
    check.add_argument("--hidden", type=_hidden, default="16", metavar="N,N,...")
    check.add_argument("--activation", choices=activations, default="tanh", metavar="NAME",
                       help=f"hidden activation: {', '.join(activations)}")
    check.add_argument("--methods", type=_methods, default=METHODS, metavar="M,M,...",
                       help=f"two or more of {', '.join(METHODS)}")
    check.add_argument("--batch-size", type=_positive_int, default=16,
                       help="digits rows in the batch")
    check.add_argument("--seed", type=_seed, default=0)
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
    if args.command == "train":
        _check_train_args(parser, args)
    try:
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
            parser.error(f"--devices {args.devices}: only {available} device(s) available "
                         f"({jax.devices()[0].platform})")
        if args.batch_size % args.devices:
            parser.error(f"--batch-size {args.batch_size} must be divisible by "
                         f"--devices {args.devices}")


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


def _mlp(hidden: Sequence[int], activation: str, n_out: int):
    """``serial(Dense(h1), act, …, Dense(n_out))``."""
    from . import layers
    from .activations import ACTIVATIONS

    act = layers.PRelu if activation == "prelu" else layers.ActivationLayer(
        ACTIVATIONS[activation])
    stack: list[Any] = []
    for size in hidden:
        stack += [layers.Dense(size), act]
    return layers.serial(*stack, layers.Dense(n_out))


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
    import jax
    import numpy as np

    from . import losses, train

    started = time.perf_counter()
    splits = _load(args.data, args.seed)
    n_out = int(max(np.max(part.y) for part in splits)) + 1
    model = _mlp(args.hidden, args.activation, n_out)
    n_in = int(np.prod(splits.train.x.shape[1:]))
    init_key, fit_key = jax.random.split(jax.random.PRNGKey(args.seed))
    _, params = model.init(init_key, (-1, n_in))
    steps = -(-len(splits.train) // args.batch_size)
    tx, lr = _optimizer(args.optimizer, args.lr, args.schedule, epochs=args.epochs,
                        steps_per_epoch=steps)
    devices = None if args.devices is None else jax.devices()[: args.devices]
    name = args.data[0] if args.data[1] is None else f"mnist:{args.data[1]}"
    print(f"data: {name}: train {len(splits.train)}, valid {len(splits.valid)}, "
          f"test {len(splits.test)}")
    print(f"model: {model.name}")
    print(f"optimizer: {args.optimizer}, lr {lr:g} ({args.schedule}), batch {args.batch_size}, "
          f"l2 {args.l2:g}, grad {args.grad}" + (f", devices {args.devices}" if devices else ""))
    if args.checkpoint is not None:
        _record_args(args, n_in=n_in, n_out=n_out)
    params, history = train.fit(
        model, params, splits.train, valid=splits.valid, loss=losses.softmax_cross_entropy,
        optimizer=tx, epochs=args.epochs, batch_size=args.batch_size, key=fit_key,
        l2=args.l2, patience=args.patience or None, progress=not args.no_progress,
        checkpoint=args.checkpoint, resume=args.resume, devices=devices, grad=args.grad)
    if args.checkpoint is not None:
        from .weights import save_params

        save_params(args.checkpoint / PARAMS_FILE, params, model=model, overwrite=True)
    print(history.table())
    if args.plot is not None:
        print(f"learning curves: {history.plot(args.plot)}")
    scores = train.evaluate(model, params, splits.test, loss=losses.softmax_cross_entropy)
    best = f" (params of epoch {history.best_epoch})" if args.patience and history.best_epoch \
        else ""
    print(f"test accuracy: {scores['accuracy']:.4f}, test loss: {scores['loss']:.4f}{best}; "
          f"{time.perf_counter() - started:.1f} s")
    return 0


ARGS_FILE, PARAMS_FILE = "train-args.json", "params.safetensors"
_MODEL_FLAGS = ("hidden", "activation", "data", "seed")


def _record_args(args: argparse.Namespace, *, n_in: int, n_out: int) -> None:
    """``DIR/train-args.json``: what ``funnet predict`` needs to rebuild the model. On
    ``--resume`` the recorded model flags must be the ones given now."""
    import json

    kind, where = args.data
    data = [kind, None if where is None else str(Path(where).expanduser().absolute())]
    record = {"hidden": list(args.hidden), "activation": args.activation,
              "data": data, "seed": args.seed, "n_in": n_in, "n_out": n_out}
    path = args.checkpoint / ARGS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        changed = [f"--{k} {old.get(k)!r} there, {record[k]!r} now" for k in _MODEL_FLAGS
                   if old.get(k) != record[k]]
        if changed:
            raise ValueError(f"--checkpoint {args.checkpoint} was trained with other flags: "
                             + "; ".join(changed))
        from .checkpoint import latest_step

        if not args.resume and latest_step(args.checkpoint) is not None:
            raise ValueError(f"--checkpoint {args.checkpoint} already holds checkpoints of a run; pass "
                             "--resume to continue it, or use an empty directory")
    tmp = path.with_name(f".{ARGS_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------- predict


def _rows(spec: str, recorded: dict):
    """``(x, y or None, description)`` for ``funnet predict --data``."""
    import numpy as np

    path = Path(spec).expanduser()
    if spec in ("digits",) or spec.startswith("mnist:"):
        kind = _data_spec(spec)
        test = _load(kind, recorded["seed"]).test
        return test.x, test.y, f"{spec}: test split ({len(test)} rows)"
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        x = np.loadtxt(path, delimiter=",", ndmin=2)
    else:
        raise ValueError(f"--data {spec!r}: expected 'digits', 'mnist:PATH', or a .npy/.csv "
                         "file of rows")
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.shape[1] != recorded["n_in"]:
        raise ValueError(f"--data {spec}: rows have {x.shape[1]} values, the model was "
                         f"trained on {recorded['n_in']}")
    return x, None, f"{path} ({len(x)} rows)"


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
    recorded = json.loads((directory / ARGS_FILE).read_text())
    model = _mlp(tuple(recorded["hidden"]), recorded["activation"], recorded["n_out"])
    like = model.init(jax.random.PRNGKey(0), (-1, recorded["n_in"]))[1]
    params = load_params(directory / PARAMS_FILE, like=like, model=model)
    spec = args.data or (recorded["data"][0] if recorded["data"][1] is None
                         else f"mnist:{recorded['data'][1]}")
    x, y, what = _rows(spec, recorded)
    classes = np.argmax(np.asarray(train.predict(model, params, x, batch_size=4096)), axis=-1)
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
    """``(model, params, x, y, loss)`` from ``path/to/model.py:build``; ValueError if not."""
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
    if not isinstance(built, tuple) or len(built) != 5:
        raise ValueError(f"TARGET {target!r}: {name}() must return (model, params, x, y, loss), "
                         f"got {type(built).__name__}")
    return built


def _run_check(args: argparse.Namespace) -> int:
    import json

    import jax
    import jax.numpy as jnp

    from . import check, data, losses

    if args.target is not None:
        try:
            model, params, x, y, loss = _load_target(args.target)
        except ValueError as e:
            print(f"funnet check: {e}", file=sys.stderr)
            return 2
        print(f"model: {getattr(model, 'name', model)} from {args.target}; methods "
              f"{', '.join(args.methods)}")
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
        result = check.check_model(model, params, x, y, loss, methods=methods)
        code = 0
    except check.GradientCheckError as e:
        result, code = e.result, 1
        print(result)
        print(f"funnet check: gradient check failed: {e}", file=sys.stderr)
    else:
        print(result)
    if args.json is not None and result is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return code
