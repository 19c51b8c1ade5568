r"""``fit``: mini-batch training composed of the train package's parts.

The loop is the stochastic gradient descent of docs/math.md §5 with an optax optimiser
(docs/math.md §6)::

    repeat for each epoch                                   (one compiled call, step.py)
        shuffle the training set                            (permutation.py)
        for each mini-batch (one lax.scan):
            forward, backward                               (objective.py: autodiff or hand)
            params ← optimiser(params, ∇ [loss + ½ λ Σ ||W||²])
        validate                                            (evaluation.py)
    until the validation loss stops falling for `patience` epochs   (early_stopping.py)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from .._validate import check_int, static_bool
from ..contract import Layer, PyTree
from ..data import Dataset
from ..losses import Loss
from ..signature import model_signature
from . import resume as checkpoints
from .agreement import check_agreement, fingerprint, on_every_process
from .devices import placement as make_placement
from .early_stopping import EarlyStopping
from .evaluation import EVAL_CHUNK
from .history import History, ProgressBar
from .inputs import (
    as_inputs,
    as_targets,
    check_data,
    check_l2,
    model_and_state,
    num_rows,
    unpack,
)
from .objective import check_grad
from .state import TrainState, as_key, check_optimizer
from .step import epoch_function, shapes_of, start_function

__all__ = ["NonFiniteLossError", "fit"]


class NonFiniteLossError(FloatingPointError):
    """The loss, a gradient or the updated state became NaN/inf during :func:`fit`.

    Args:
      message: what became non-finite where (epoch, step, global step), whether the last
        good state was saved, and what to try.

    Attributes:
      epoch: the epoch (1-based, as in the history) in which it happened.
      step: the mini-batch index within that epoch (0-based).
      global_step: the number of updates applied before it.
      last_good_state: the :class:`TrainState` just before the failing update.
      last_good_params: ``last_good_state.params``.
      history: the :class:`History` of the completed epochs.
      path: where the last good state was saved (``fit(checkpoint=...)``), else ``None``.
      best_params: the params of the best epoch so far by the monitored validation
        metric, or ``None`` without validation data or before the first epoch completed.
      best_epoch: that epoch's number, or ``None`` likewise.
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 last_good_state: TrainState, history: History, path: Path | None = None,
                 best_params: PyTree | None = None, best_epoch: int | None = None):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.last_good_state = last_good_state
        self.last_good_params = last_good_state.params
        self.history = history
        self.path = path
        self.best_params, self.best_epoch = best_params, best_epoch


def fit(
    model: Layer,
    params: PyTree,
    train: Dataset | tuple[Any, Any],
    *,
    loss: Loss | Any,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: Any,
    valid: Dataset | tuple[Any, Any] | None = None,
    state: PyTree | None = None,
    l2: float = 0.0,
    patience: int | None = None,
    monitor: str = "valid_loss",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    keep: int = 3,
    checkpoint_every: int = 1,
    devices: Sequence[Any] | Any | None = None,
    shard_params: bool = False,
    local_data: bool = False,
    grad: str = "reverse",
    on_epoch: Callable[[dict], Any] | None = None,
) -> tuple[PyTree, History] | tuple[PyTree, PyTree, History]:
    r"""Train ``model`` on ``train`` with mini-batch SGD and an optax ``optimizer``.

    The objective is the structural risk of docs/math.md §4,
    ``R = 1/N Σ_n loss(model(x_n), y_n) + ½ λ Σ_l ||W(l)||²`` (``λ = l2``, over the params
    the layers declare weight-decayed). The model runs in training mode (``train=True``:
    ``Dropout`` drops, ``BatchNorm`` uses batch statistics); validation in evaluation mode.

    Each epoch is one call of one compiled function: it permutes the rows on device, runs a
    ``lax.scan`` over the ``ceil(N / batch_size)`` mini-batches (the last one padded with
    repeated rows and masked out of the loss and of batch statistics: every sample counts
    once per epoch), and evaluates ``valid``. It is compiled once per configuration; a later
    ``fit`` with the same model, loss and optimizer *objects* and data shapes reuses it (a
    new optax object, e.g. ``optax.adam(1e-3)`` written again, compiles anew).

    Args:
      model: a funnet :class:`~funnet.Layer` (or stax pair).
      params: its initial params (not modified).
      train: an ``(x, y)`` pair or :class:`funnet.data.Dataset`, checked before anything
        runs (NaN/inf, lengths, label range, shapes against the model and ``loss``). ``x``
        may be a tuple of arrays with one row per sample each, the input of a model that
        takes several (a sequence layer's ``(x, mask)``): rows are shuffled and batched
        together.
      loss: ``loss(pred, target) -> scalar``, a mean over samples (any funnet loss; a
        :class:`~funnet.Loss` declaring a classification task gets accuracies).
      optimizer: an optax transformation (``optax.inject_hyperparams`` shows the learning
        rate in the history).
      epochs: the total number of epochs (also when resuming).
      batch_size: rows per step; capped (with a warning) at the number of rows.
      key: the PRNG key of the run (any implementation: ``jax.random.key(0,
        impl="rbg")`` too); it gives every epoch's shuffle and every step's dropout key.
      valid: validation data, checked like ``train``.
      state: the model's state (``BatchNorm`` running statistics); required for a model
        holding state. When given, ``fit`` returns ``(params, state, history)``.
      l2: ``λ`` of the L2 penalty.
      patience: early stopping (needs ``valid``): stop once the monitored metric has not
        improved for ``patience`` epochs, and return the params (and state) of the best
        epoch. Without it all epochs run and the last params are returned.
      monitor: ``"valid_loss"`` (default, as Keras) or ``"valid_error"`` (``1 - accuracy``,
        ties broken by the validation loss); see :class:`EarlyStopping`.
      progress: a tqdm bar (a line per epoch without tqdm) when stderr is a terminal;
        with several processes only process 0 shows it.
      checkpoint: a directory for orbax checkpoints (:mod:`funnet.checkpoint`): the train
        state, the best epoch and the history, every ``checkpoint_every`` epochs and at the
        end. Checked writable and locked before training; it must hold no checkpoints
        unless ``resume=True``.
      resume: continue from the newest checkpoint (start afresh if there is none); the run
        is then bitwise that of an uninterrupted one. Another configuration or
        architecture is refused, naming the difference.
      keep: how many checkpoints to keep (the newest).
      checkpoint_every: save every this many epochs (and after the last one).
      devices: a list of devices or a 1-D ``jax.sharding.Mesh``: data parallelism (the
        batch axis sharded, params and optimiser state replicated unless
        ``shard_params``); ``batch_size`` must be
        divisible by the number of devices. After ``jax.distributed.initialize`` (several
        processes), ``None`` means every device of every process; each process passes the
        same params and key and the same full ``train``/``valid`` (or, with
        ``local_data``, its own rows), and gets the same params and history;
        ``checkpoint`` is one directory all processes see. ``fit`` compares a hash of the
        data, params, state, key, model and options across the processes first and raises
        ``ValueError`` naming what differs (``loss`` and ``optimizer`` are not compared).
      shard_params: FSDP-style parameter sharding over the ``devices`` (at least 2; a
        ``ValueError`` otherwise): every leaf of the train state (params, optimiser state,
        model state) of at least 1024 elements is split along its largest axis that the
        number of devices divides, each device holding ``1/n`` of it; smaller leaves and
        leaves without such an axis stay replicated. XLA's SPMD partitioner adds the
        collectives (it gathers a weight, or the activations, where a layer needs them
        whole); the results equal the replicated run's up to float32 rounding (some sums
        run in another order), which Adam can amplify. Checkpoints hold the
        sharded state and restore onto the sharding of the resuming ``fit`` (sharded or
        not). The returned params (and state, and the best epoch's) are gathered:
        replicated over the devices as without sharding, usable on every process.
      local_data: each process passes only its own rows of ``train`` and ``valid``
        (:func:`funnet.data.shard` cuts them); the data set is their concatenation in
        process order, and the run is the one a single process would train on it. The
        processes may hold different numbers of rows; each checks its own rows, and a bad
        one raises on every process, naming the process. The rows stay sharded: each device
        holds about ``1/n`` of the data (with one process and several ``devices`` too);
        each step then sums the mini-batch over the devices (one all-reduce of the batch).
        Without several devices it changes nothing. Passing the same rows everywhere is
        refused (each row would count once per process).
      grad: ``"reverse"`` (``jax.value_and_grad``) or ``"hand"`` (the hand δ-recursion).
      on_epoch: called after each epoch (on every process) with its :class:`History`
        record, e.g. to log it (``funnet train`` prints
        :func:`funnet.train.history.epoch_line` when its output is not a terminal).

    Returns:
      ``(params, history)``, or ``(params, state, history)`` when ``state`` was given.

    Raises:
      ValueError: bad data or arguments (naming the array or argument).
      funnet.checkpoint.CheckpointError: an unusable checkpoint directory (before training).
      NonFiniteLossError: the loss, a gradient or the updated state became NaN/inf; no
        update from the first bad step on is applied, and the error carries (and, with
        ``checkpoint``, saves in ``DIR/last_good``) the last good state.

    >>> import jax, jax.numpy as jnp, optax, funnet
    >>> net = funnet.serial(funnet.Dense(16), funnet.Tanh, funnet.Dense(2))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (100, 2))
    >>> y = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)
    >>> params, history = fit(net, params, (x, y), loss=funnet.softmax_cross_entropy,
    ...                       optimizer=optax.adam(0.05), epochs=10, batch_size=32,
    ...                       key=jax.random.key(2), progress=False)
    >>> len(history), history[-1]["train_accuracy"] > 0.9
    (10, True)
    """
    return_state = state is not None
    model, model_state = model_and_state(model, state, "fit")
    optimizer, grad, l2 = check_optimizer(optimizer), check_grad(grad), check_l2(l2)
    epochs = check_int(epochs, "epochs", minimum=0)
    every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    stopping = EarlyStopping(patience, monitor)
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be a callable taking an epoch's record, got "
                        f"{type(on_epoch).__name__}")
    if patience is not None and valid is None:
        raise ValueError("patience (early stopping) needs validation data: pass valid=")
    if l2:
        model.decay_mask(params)  # a layer that declares no decayed params: refuse it now
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    local_data = static_bool(local_data, "local_data")
    seen: dict[str, Any] = {}

    def inspect() -> dict:  # this process's data (its own rows with local_data=True)
        seen.update(_inspect(model, params, model_state, loss, train, valid, batch_size))
        if monitor == "valid_error" and valid is not None and seen["valid_kind"] is None:
            stopping.value(0.0)  # raises: no accuracy to monitor
        shard = {"rows": seen["n"], "valid_rows": seen["nv"], "local_data": local_data}
        if local_data and jax.process_count() > 1:
            shard["digest"] = fingerprint((seen["x"], seen["y"])).hex()
        return shard

    # Several processes: a check that fails on one process only (its data, its batch_size)
    # must raise on every process, else the others wait in their next collective; and
    # every process runs the same collectives whatever its arguments, so that differing
    # arguments reach check_agreement below instead of mismatched collectives.
    what = "fit(local_data=True)" if local_data else "fit"
    shards = on_every_process(inspect, what)  # one process: [inspect()]
    _check_local_data(shards)
    x, y, vx, vy = (seen[k] for k in ("x", "y", "vx", "vy"))
    acc_kind, valid_kind = seen["acc_kind"], seen["valid_kind"]
    if not local_data:  # every process passed the full data: its own count is the count
        shards = [shards[jax.process_index()]]
    n = sum(s["rows"] for s in shards)
    batch_size = _batch_size(batch_size, n)
    placed: list = []  # a Placement is no JSON-able result: kept here, not gathered
    on_every_process(lambda: placed.append(make_placement(devices, batch_size, shard_params)),
                     what)
    place = placed[0]
    config = {"n_train": n, "batch_size": batch_size, "grad": grad, "l2": l2,
              "patience": patience, "monitor": monitor, "valid": valid is not None}
    signature = model_signature(model, params, state=model_state)
    if place.multiprocess:  # collectively, before anything else that is collective
        data = ((x, y), (vx, vy))
        if local_data:  # each process its own rows: compare their kinds, not their values
            data = jax.tree.map(lambda a: (np.dtype(a.dtype).str, np.shape(a)[1:]), data)
        check_agreement({"options": {**config, "epochs": epochs,
                                     "checkpoint": None if checkpoint is None
                                     else str(checkpoint), "resume": bool(resume),
                                     "keep": keep, "checkpoint_every": every,
                                     "shard_params": place.shard_params},
                         "model": signature, "params": params, "state": model_state,
                         "key": as_key(key), "train data": data[0], "valid data": data[1]})
    if local_data:  # after check_agreement: every process passed local_data=True
        _check_shards(shards)
    run = checkpoints.open_checkpoints(checkpoint, resume=resume,
                                       keep=check_int(keep, "keep", minimum=1))
    try:
        if local_data:
            (x, y), rows = place.put_rows((x, y), [s["rows"] for s in shards])
            (vx, vy), vrows = ((None, None), None) if vx is None else place.put_rows(
                (vx, vy), [s["valid_rows"] for s in shards])
        else:
            x, y, vx, vy = place.put(x, y, vx, vy)
            rows = vrows = None
        nv = None if vx is None else sum(s["valid_rows"] for s in shards)
        first = start_function(optimizer, place.replicated, place.layout)(
            params, model_state, as_key(key))
        run_state = checkpoints.RunState(first, History(), stopping)
        if run is not None:
            run_state = checkpoints.restore(run, run_state, config=config,
                                            signature=signature)
        if run_state.epoch > epochs:
            raise ValueError(f"checkpoint {str(checkpoint)!r} is at epoch {run_state.epoch}, "
                             f"past epochs={epochs}: resume with epochs ≥ {run_state.epoch} "
                             "(the total number of epochs, not the ones to add)")
        options = {"l2": l2, "grad": grad, "n": n, "batch_size": batch_size,
                   "acc_kind": acc_kind, "valid_kind": valid_kind, "placement": place.mesh,
                   "shard_state": place.shard_params,
                   "eval_chunk": _eval_chunk(nv, place),
                   "signature": shapes_of((run_state.state, x, y, vx, vy, rows, vrows))}
        bar = ProgressBar(progress and jax.process_index() == 0, epochs, run_state.epoch)
        try:
            while run_state.epoch < epochs and not run_state.history.stopped_early:
                _one_epoch(run_state, model, loss, optimizer, options,
                           (x, y, vx, vy, rows, vrows), run, place)
                bar.update(run_state.history[-1], epochs)
                if on_epoch is not None:
                    on_epoch(dict(run_state.history[-1]))
                if run is not None and (run_state.epoch % every == 0 or run_state.epoch == epochs
                                        or run_state.history.stopped_early):
                    checkpoints.save_epoch(run, run_state, config=config, signature=signature)
        finally:
            bar.close()
    finally:
        if run is not None:
            run.close()
    use_best = patience is not None and run_state.best is not None
    params, model_state = place.gather(run_state.best if use_best else (
        run_state.state.params, run_state.state.model_state))
    return (params, model_state, run_state.history) if return_state else (
        params, run_state.history)


def _one_epoch(run_state, model, loss, optimizer, options, data, run, place) -> None:
    """Run one epoch in place on ``run_state``; replay it step-checked if not finite."""
    t0 = time.perf_counter()
    number = run_state.epoch + 1
    backup, state, m = epoch_function(model, loss, optimizer, guarded=False, **options)(
        run_state.state, *data)
    if not m["finite"]:  # replay the epoch, checking every step, to find the bad one
        _, state, m = epoch_function(model, loss, optimizer, guarded=True, **options)(
            backup, *data)
        if not m["finite"]:
            _raise_non_finite(state, run_state, number, int(m["bad_step"]), run, place)
    del backup
    run_state.state = state
    record = {"epoch": number, "train_loss": m["train_loss"]}
    for k in ("train_accuracy", "valid_loss", "valid_accuracy", "learning_rate"):
        record[k] = m.get(k)
    record["seconds"] = time.perf_counter() - t0
    run_state.record(record, track=data[2] is not None)


def _raise_non_finite(state, run_state, epoch: int, step: int, run, place) -> None:
    path = checkpoints.save_last_good(run, state, epoch, step)
    state = place.gather(state)
    where = f"; the last good state is saved in {str(path)!r}" if path else ""
    global_step = int(state.step)
    raise NonFiniteLossError(
        f"non-finite loss or gradient at epoch {epoch}, step {step} (global step "
        f"{global_step}); the update was not applied, training stopped{where}. Try a lower "
        f"learning rate, gradient clipping (optax.clip_by_global_norm) or check the data.",
        epoch=epoch, step=step, global_step=global_step, last_good_state=state,
        history=run_state.history, path=path,
        best_params=None if run_state.best is None else place.gather(run_state.best[0]),
        best_epoch=run_state.stopping.best_epoch)


def _inspect(model, params, model_state, loss, train, valid, batch_size: int) -> dict:
    """This process's ``train`` and ``valid`` as arrays, checked against the model and
    ``loss`` (:func:`funnet.train.inputs.check_data`), with their row counts and accuracy
    kinds."""
    x, y = unpack(train, "train")
    x, y = as_inputs(x), as_targets(y, "train")
    n = num_rows(x, "train")
    acc_kind = check_data(model, params, model_state, loss, x, y,
                          batch=min(batch_size, max(n, 1)), name="train")
    vx = vy = valid_kind = nv = None
    if valid is not None:
        vx, vy = unpack(valid, "valid")
        vx, vy = as_inputs(vx), as_targets(vy, "valid")
        nv = num_rows(vx, "valid")
        valid_kind = check_data(model, params, model_state, loss, vx, vy,
                                batch=min(max(nv, 1), EVAL_CHUNK), name="valid")
    return {"x": x, "y": y, "vx": vx, "vy": vy, "n": n, "nv": nv, "acc_kind": acc_kind,
            "valid_kind": valid_kind}


def _check_local_data(shards: list[dict]) -> None:
    """Every process must pass the same ``local_data`` (its rows are then counted alike)."""
    flags = [s["local_data"] for s in shards]
    if len(set(flags)) > 1:
        raise ValueError("fit: the processes differ in local_data: " + ", ".join(
            f"{flag} on process {p}" for p, flag in enumerate(flags)) + "; every process "
            "passes either its own rows (local_data=True) or all rows (False)")


def _check_shards(shards: list[dict]) -> None:
    """With ``local_data=True`` the processes' rows must be their own: rows that two
    processes both pass would count twice (every row ``process_count`` times when all pass
    the same)."""
    fix = ("pass each process its own part, e.g. funnet.data.shard(train, "
           "jax.process_index(), jax.process_count()), or pass the full data everywhere "
           "with local_data=False")
    if len(shards) < 2:
        return
    if len({s["digest"] for s in shards}) == 1:
        raise ValueError(
            f"fit(local_data=True): all {len(shards)} processes passed the same training "
            f"rows ({shards[0]['rows']} each), which would count every row "
            f"{len(shards)} times; {fix}")
    same: dict[str, list[int]] = {}
    for p, s in enumerate(shards):
        same.setdefault(s["digest"], []).append(p)
    for group in same.values():
        if len(group) > 1:
            raise ValueError(
                f"fit(local_data=True): processes {', '.join(map(str, group))} passed the "
                f"same training rows ({shards[group[0]]['rows']} each), which would count "
                f"those rows {len(group)} times; {fix}")


def _batch_size(batch_size: int, n: int) -> int:
    if batch_size > n:  # padding every epoch up to batch_size rows
        warnings.warn(f"batch_size {batch_size} is larger than the {n} training rows; "
                      f"using batch_size={n}", stacklevel=3)
        return n
    return batch_size


def _eval_chunk(nv: int | None, place: Any) -> int | None:
    if nv is None:
        return None
    if place.mesh is not None:  # data parallel: chunks that split evenly over the devices
        return -(-min(nv, EVAL_CHUNK) // place.size) * place.size
    return EVAL_CHUNK if nv > EVAL_CHUNK else None
