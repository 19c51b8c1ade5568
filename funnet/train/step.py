r"""The compiled training step (:func:`make_step`) and the compiled epoch of :func:`fit`.

Speed. The data stay on device; each epoch is one call of one compiled function (shuffle
and mini-batch gathers on device, the state donated, all metrics fetched as one vector),
compiled once per configuration and reused by a later ``fit`` with the same model, loss,
optimizer objects and shapes. Non-finite values cost nothing per step: the epoch checks its
summed loss and final state, and only an epoch that failed is replayed with a per-step check
that freezes the state at the first bad step.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..contract import Layer, PyTree, StatefulModelError, as_layer
from ..losses import Loss
from .devices import state_shardings
from .evaluation import eval_sums, padded_index
from .inputs import check_l2, take_rows
from .objective import accuracy_kind, check_grad, loss_and_grads, row_correct
from .permutation import shuffle
from .state import TrainState, apply_updates, check_optimizer

__all__ = ["epoch_function", "make_step", "start_function"]


def make_step(
    model: Layer,
    loss: Loss | Callable[[Any, Any], Any],
    optimizer: optax.GradientTransformation,
    *,
    l2: float = 0.0,
    grad: str = "reverse",
    donate: bool = False,
) -> Callable[[TrainState, tuple], tuple[TrainState, dict]]:
    r"""A pure, jitted training step ``step(state, batch) -> (state, metrics)``.

    The step minimises ``R = loss(model(x), y) + ½ λ Σ_l ||W(l)||²`` (``λ = l2``, over the
    params the layers declare weight-decayed): it splits ``state.key`` (one half feeds
    ``Dropout``), runs the model in training mode with ``state.model_state`` (the new model
    state comes back in the new train state), computes ``∇R``, applies the optax
    ``optimizer`` and increments ``state.step``.

    Args:
      model: a funnet :class:`~funnet.Layer` (or stax pair; ``grad="hand"`` needs a Layer).
      loss: ``loss(pred, target) -> scalar``, a mean over samples.
      optimizer: any optax ``GradientTransformation``.
      l2: ``λ`` of the L2 penalty (:func:`funnet.l2_penalty`).
      grad: ``"reverse"`` (reverse-mode autodiff, ``jax.value_and_grad``) or ``"hand"``
        (:func:`funnet.backprop.value_and_grad`: the hand-derived δ-recursion).
      donate: donate ``state``'s buffers to the step (do not reuse the old state then).

    ``batch`` is ``(x, y)`` or ``(x, y, mask)``; with a 0/1 ``mask [batch]`` the rows with
    mask 0 count neither in the loss nor in batch statistics (see
    :mod:`funnet.train.objective`). ``metrics``: ``loss`` (the data loss of the batch before
    the update, without the L2 term) and ``accuracy`` (for a classification loss).
    Integer labels are checked against the number of classes when the batch is concrete.

    >>> import jax, jax.numpy as jnp, optax, funnet
    >>> net = funnet.serial(funnet.Dense(8), funnet.Relu, funnet.Dense(3))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
    >>> tx = optax.sgd(0.1)
    >>> step = make_step(net, funnet.softmax_cross_entropy, tx)
    >>> state = TrainState.create(params, tx, jax.random.key(1))
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 2, 1, 0])
    >>> state, metrics = step(state, (x, y))
    >>> int(state.step), sorted(metrics)
    (1, ['accuracy', 'loss'])
    """
    model = as_layer(model)
    optimizer = check_optimizer(optimizer)
    objective = loss_and_grads(model, loss, l2=check_l2(l2), grad=check_grad(grad))

    def step(state: TrainState, batch: tuple) -> tuple[TrainState, dict]:
        x, y, w = _batch(batch)
        key, sub = jax.random.split(state.key)
        data, out, model_state, grads = objective(state.params, state.model_state, x, y, w,
                                                  sub)
        new = apply_updates(optimizer, state, grads, model_state)._replace(key=key)
        metrics = {"loss": data}
        kind = accuracy_kind(loss, out.shape, jnp.shape(y), jnp.asarray(y).dtype)
        if kind is not None:
            correct = row_correct(kind, out, y)
            metrics["accuracy"] = (jnp.mean(correct) if w is None
                                   else jnp.sum(w[0].astype(correct.dtype) * correct) / w[1])
        return new, metrics

    jitted = jax.jit(step, donate_argnums=0 if donate else ())
    classes: dict = {}  # batch shapes -> the model's number of classes (or None)

    def checked(state: TrainState, batch: tuple) -> tuple[TrainState, dict]:
        if model.stateful and isinstance(state.model_state, tuple) and not state.model_state:
            raise _needs_state(model)
        x, y, _ = _batch(batch)
        _check_labels(model, loss, state, x, y, classes)
        return jitted(state, batch)

    return checked


def _needs_state(model: Layer) -> Exception:
    return StatefulModelError(
        f"make_step: {model.stateful_path()} holds state: create the train state with it, "
        "TrainState.create(params, optimizer, key, model_state=state)")


def _batch(batch: Any) -> tuple[Any, Any, tuple | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError("batch must be (x, y) or (x, y, mask)")
    x, y = batch[0], batch[1]
    if len(batch) == 2:
        return x, y, None
    mask = jnp.asarray(batch[2])
    return x, y, (mask, jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0))


def _check_labels(model: Layer, loss: Any, state: TrainState, x: Any, y: Any,
                  classes: dict) -> None:
    """A scalar loss and integer labels in range, on concrete data (under ``jit``
    ``one_hot`` would silently drop an out-of-range label; a per-row loss would be weighted
    into a wrong objective). Shapes are traced once per batch shape."""
    leaves, treedef = jax.tree.flatten(x)  # x may be a tuple: (ids, mask), a graph, ...
    if any(isinstance(a, jax.core.Tracer) for a in (*leaves, y)):
        return
    specs = tuple(jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in leaves)
    y_spec = jax.ShapeDtypeStruct(np.shape(y), jnp.result_type(y))
    signature = (treedef, tuple((s.shape, s.dtype) for s in specs), y_spec.shape,
                 y_spec.dtype)
    if signature not in classes:
        out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0],
                             state.params, state.model_state, treedef.unflatten(specs))
        value = jax.eval_shape(loss, out, y_spec)
        if getattr(value, "shape", None) != ():
            raise ValueError(f"make_step: loss {loss!r} must return a scalar (the mean over "
                             f"the batch), got shape {getattr(value, 'shape', value)}")
        labels = (jnp.issubdtype(y_spec.dtype, jnp.integer)
                  and isinstance(out, jax.ShapeDtypeStruct) and len(out.shape) >= 2
                  and y_spec.shape == tuple(out.shape[:-1]))
        classes[signature] = out.shape[-1] if labels else None
    k = classes[signature]
    if k is None or np.size(y) == 0:
        return  # not class indices
    y = np.asarray(y)
    if y.min() < 0 or y.max() >= k:
        bad = np.unique(y[(y < 0) | (y >= k)])
        raise ValueError(f"make_step: batch labels must lie in [0, {k}) for the model's {k} "
                         f"outputs, got {bad[:5].tolist()}")


# ------------------------------------------------------------------------------ epoch


def tree_finite(tree: PyTree, per_leaf: bool = False) -> jax.Array:
    """Whether every float in ``tree`` is finite, as one fused reduction.

    ``Σ 0·a`` over all leaves is 0 when every entry is finite and NaN otherwise; XLA fuses
    the concatenation into the reduction (one kernel, whatever the number of leaves).
    ``per_leaf=True`` sums each leaf on its own instead: a sharded leaf then reduces where
    it lies (a scalar crosses the devices), where the concatenation would gather it whole.
    """
    leaves = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    if per_leaf:
        return jnp.isfinite(sum(jnp.sum(a * 0).astype(jnp.float32) for a in leaves))
    flat = jnp.concatenate([jnp.ravel(a).astype(jnp.result_type(*leaves)) for a in leaves])
    return jnp.isfinite(jnp.sum(flat * 0))


def learning_rate(opt_state: PyTree) -> jax.Array | None:
    """The current learning rate from an ``optax.inject_hyperparams`` state, else None."""
    def is_scalar(path, value):
        return isinstance(value, jax.Array) and value.ndim == 0  # not a schedule's state

    try:
        lr = optax.tree_utils.tree_get(opt_state, "learning_rate", filtering=is_scalar)
    except (KeyError, ValueError):  # several learning rates (chained optimisers): none shown
        return None
    return lr if isinstance(lr, jax.Array) and lr.ndim == 0 else None


def _make_epoch(objective: Callable, optimizer: optax.GradientTransformation,
                loss: Callable, *, n: int, batch_size: int, acc_kind: str | None,
                valid_kind: str | None, model: Layer, placement: tuple[Mesh, str] | None,
                eval_chunk: int | None, guarded: bool = False, shard_state: bool = False
                ) -> Callable:
    """The jitted epoch: shuffle, one ``lax.scan`` over the mini-batches, validation.

    ``epoch(state, x, y, vx, vy, rows, vrows) -> (start, state, metrics)``: ``rows`` and
    ``vrows`` are ``None``, or for data sharded by rows (``fit(local_data=True)``) the
    index of each training and validation row in ``x`` and ``vx``
    (:func:`funnet.train.devices.row_layout`). ``start`` is the epoch's
    input state (its donated buffers pass straight to it: no copy), ``state`` the state
    after the epoch, ``metrics`` a dict of floats (computed on device as one vector: a
    single transfer per epoch). ``state.key`` is split into the next epoch's key, the
    shuffling key and one key per step: the whole run follows from the key it starts with.

    Non-finite values cost nothing per step: ``metrics["finite"]`` says whether the summed
    loss and the final state are finite. When they are not, :func:`fit` replays the epoch
    from ``start`` with ``guarded=True``: every step then checks its loss, gradients and
    updated state, and from the first non-finite one on no update is applied
    (``metrics["bad_step"]`` is its index), which leaves the last good state.

    ``shard_state=True`` (``fit(shard_params=True)``, needs ``placement``): the state is pinned to
    :func:`funnet.train.devices.state_shardings` on entry, after every step and on exit, so
    each device holds its slice of every sharded leaf throughout; XLA adds the collectives
    that the matmuls need.
    """
    nb = -(-n // batch_size)
    masked = nb * batch_size != n
    axis = placement[1] if placement else None

    def shard(a, spec):
        if placement is None or a is None:
            return a
        return jax.lax.with_sharding_constraint(a, NamedSharding(placement[0], spec))

    def pin(tree):  # the train state's layout: sharded by the rule, or replicated
        if not shard_state:
            return tree
        return jax.lax.with_sharding_constraint(tree, state_shardings(tree, placement))

    def epoch(state, x, y, vx, vy, rows, vrows):
        state = start = pin(state)
        keys = jax.random.split(state.key, nb + 2)
        state = state._replace(key=keys[0])
        order = shuffle(keys[1], n)
        if rows is not None:  # data sharded by rows: where each row of the data set lies
            order = rows[order]
        idx, mask = padded_index(n, nb, batch_size, order)
        idx = shard(idx, PartitionSpec(None, axis))
        mask = shard(mask, PartitionSpec(None, axis)) if masked else None
        zero = jnp.zeros((), jnp.float32)

        def body(carry, batch):
            state, ok, bad, i, loss_sum, correct_sum, seen = carry
            ib, mb, kb = batch
            xb = jax.tree.map(lambda a: shard(a, PartitionSpec(axis)), take_rows(x, ib))
            yb = shard(y.at[ib].get(mode="promise_in_bounds"), PartitionSpec(axis))
            count = jnp.sum(mb) if masked else float(batch_size)
            data, out, model_state, grads = objective(
                state.params, state.model_state, xb, yb, (mb, count) if masked else None, kb)
            new = pin(apply_updates(optimizer, state, grads, model_state))
            loss_i = data.astype(jnp.float32) * count
            correct = zero
            if acc_kind is not None:
                hits = row_correct(acc_kind, out, yb)
                correct = jnp.sum(mb * hits) if masked else jnp.sum(hits)
            if guarded:  # slow path: check every step, freeze from the first bad one on
                finite = jnp.isfinite(data) & tree_finite(
                    (grads, new.params, new.opt_state, new.model_state), shard_state)
                good = ok & finite
                new = jax.tree.map(lambda a, b: jnp.where(good, a, b), new, state)
                bad = jnp.where(ok & ~good, i, bad)
                loss_i, correct, count = (jnp.where(good, v, 0.0)
                                          for v in (loss_i, correct, count))
                ok = good
            return (new, ok, bad, i + 1, loss_sum + loss_i, correct_sum + correct,
                    seen + count), None

        carry = (state, jnp.array(True), jnp.array(-1, jnp.int32), jnp.array(0, jnp.int32),
                 zero, zero, zero)
        (state, ok, bad, _, loss_sum, correct_sum, seen), _ = jax.lax.scan(
            body, carry, (idx, mask, keys[2:]))
        if not guarded:
            ok = jnp.isfinite(loss_sum) & tree_finite(
                (state.params, state.opt_state, state.model_state), shard_state)
        seen = jnp.maximum(seen, 1.0)
        metrics = {"finite": ok, "bad_step": bad, "train_loss": loss_sum / seen}
        if acc_kind is not None:
            metrics["train_accuracy"] = correct_sum / seen
        lr = learning_rate(state.opt_state)
        if lr is not None:
            metrics["learning_rate"] = lr
        if vx is not None:
            spread = (None if placement is None else
                      lambda a: shard(a, PartitionSpec(axis)))  # each device its rows
            scores = eval_sums(model, loss, state.params, state.model_state, vx, vy,
                               eval_chunk, spread=spread, rows=vrows)
            metrics["valid_loss"] = scores["loss"]
            if valid_kind is not None:
                metrics["valid_accuracy"] = scores["accuracy"]
        layout[:] = list(metrics)  # one vector, one transfer per epoch
        packed = jnp.stack([jnp.asarray(v).astype(jnp.result_type(float)) for v in
                            metrics.values()])
        return start, pin(state), packed

    layout: list[str] = []
    options: dict[str, Any] = {}
    if placement is not None:
        replicated = NamedSharding(placement[0], PartitionSpec())
        # sharded: the state's outputs keep the layout pinned above
        options["out_shardings"] = (None, None, replicated) if shard_state else replicated
    jitted = jax.jit(epoch, **options) if guarded else jax.jit(epoch, donate_argnums=0, **options)

    def run(state, *args):
        start, state, packed = jitted(state, *args)
        return start, state, dict(zip(layout, np.asarray(packed).tolist()))

    return run


# ----------------------------------------------------------------------------- caches

_CACHE_SIZE = 8
_EPOCH_CACHE: collections.OrderedDict = collections.OrderedDict()
_START_CACHE: collections.OrderedDict = collections.OrderedDict()


def _cached(cache: collections.OrderedDict, key: tuple, make: Callable[[], Callable]
            ) -> Callable:
    """``cache[key]``, made by ``make()`` on a miss; an LRU of ``_CACHE_SIZE`` entries.
    An unhashable key (e.g. an unhashable optimizer) is never cached."""
    try:
        hash(key)
    except TypeError:
        return make()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = fn = make()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return fn


def shapes_of(tree: PyTree) -> tuple:
    """Hashable structure, shapes and dtypes of ``tree``'s leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(np.shape(a)), str(getattr(a, "dtype", type(a).__name__)))
                          for a in leaves)


def epoch_function(model: Layer, loss: Callable, optimizer: optax.GradientTransformation, *,
                   l2: float, grad: str, guarded: bool, signature: tuple,
                   **options: Any) -> Callable:
    """:func:`_make_epoch`, compiled once per configuration and argument signature.

    Calling :func:`fit` again with the same model, loss and optimizer objects and data of
    the same shapes reuses the compiled epoch (an LRU of the last few configurations). A
    new optax object (``optax.adam(1e-3)`` called again) is a new configuration.
    """
    key = (model, loss, optimizer, l2, grad, guarded, signature, tuple(sorted(options.items())))
    return _cached(_EPOCH_CACHE, key, lambda: _make_epoch(
        loss_and_grads(model, loss, l2=l2, grad=grad), optimizer, loss, model=model,
        guarded=guarded, **options))


def _start(optimizer: optax.GradientTransformation, params: PyTree, model_state: PyTree,
           key: jax.Array) -> TrainState:
    """``TrainState.create(params, optimizer, key, model_state=...)``, traced in one program.

    On a cold start that is one small compilation instead of one per eager op (zeros,
    copies). Every leaf is an own copy (never the caller's buffers: the state gets donated)
    and strongly typed (no weak types, so the compiled epoch never retraces).
    """
    state = TrainState.create(params, optimizer, key, model_state=model_state)

    def copy(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.array(jax.random.key_data(a), copy=True),
                                            impl=jax.random.key_impl(a))
        return jnp.array(a, dtype=a.dtype, copy=True)

    return jax.tree.map(copy, state)


def start_function(optimizer: optax.GradientTransformation, sharding: Any,
                   layout: tuple[Mesh, str] | None = None) -> Callable:
    """:func:`_start` jitted, its outputs placed on ``sharding``; cached per optimizer.

    With ``layout`` (a mesh and axis: ``fit(shard_params=True)``) each leaf of the state is
    placed by :func:`funnet.train.devices.state_shardings` instead: born sharded, never
    whole on a device.
    """
    if layout is None:
        return _cached(_START_CACHE, (optimizer, sharding), lambda: jax.jit(
            functools.partial(_start, optimizer), out_shardings=sharding))

    def start(params, model_state, key):
        state = _start(optimizer, params, model_state, key)
        return jax.lax.with_sharding_constraint(state, state_shardings(state, layout))

    return _cached(_START_CACHE, (optimizer, sharding, layout), lambda: jax.jit(start))
