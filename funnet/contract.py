r"""The layer contract of funnet.

**A layer is a pure pair** ``init_with_state(key, input_shape) -> (output_shape, params,
state)`` **and** ``apply_with_state(params, state, x, *, key=None, train=False) -> (y,
state)`` **over immutable pytrees, with a hand-derived** ``backward(params, residuals, dy)
-> (dparams, dx)`` **for the residuals its** ``forward_with_state`` **saved; a layer without
state (``state == ()``) also unpacks as the stax pair** ``init, apply``.

Stateless use, exactly as stax::

    init, apply = layer
    output_shape, params = init(key, input_shape)
    y = apply(params, x)                               # key=None, train=False

Stateful use (any layer; required for a model holding state, such as running statistics)::

    output_shape, params, state = model.init_with_state(key, input_shape)
    y, state = model.apply_with_state(params, state, x, key=key, train=True)

The hand-derived backward rule (:mod:`funnet.backprop`)::

    y, state, residuals = model.forward_with_state(params, state, x, key=key, train=True)
    dparams, dx = model.backward(params, residuals, dy)

* ``dparams`` has the pytree structure of ``params``; ``dx`` that of ``x``, or is ``None``
  for an input without a gradient (integer ids, a graph's structure). State is never
  differentiated.
* ``train`` is the mode: ``Dropout`` drops only when ``train=True`` (and then needs a
  ``key``); layers with running statistics use batch statistics in training.
* ``mask`` (keyword, default ``None``: every row counts) is a 0/1 vector ``[batch]``
  marking the rows of ``x`` that are real data; :func:`funnet.fit` passes it for the
  padded last batch so that batch statistics (``BatchNorm``) ignore the padding rows.
  Combinators hand it to every child; a layer that does not take it never sees it.
* Each layer declares which of its params are weight-decayed (:meth:`Layer.decay_mask`):
  ``Dense``'s ``W``, not biases, slopes or norm scales.
* Forward mode: funnet activations are wired with ``jax.custom_vjp`` (their hand
  derivative), which ``jax.jvp`` cannot push tangents through. :func:`forward_twin` gives
  the same model rewired with ``jax.custom_jvp`` built from the same hand derivatives; no
  process-wide switch is involved.

New layers are made with :func:`layer` (see docs/custom-layers.md).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._validate import LayerError, ParamsError, refuse_list_input

__all__ = [
    "WIRINGS",
    "InnerDeltas",
    "Layer",
    "LayerError",
    "NoBackwardRuleError",
    "ParamsError",
    "StatefulModelError",
    "as_layer",
    "forward_twin",
    "layer",
]

PyTree = Any

#: How the hand-derived derivatives are wired into JAX: ``"vjp"`` (``jax.custom_vjp``,
#: the default: ``jax.grad`` uses them), ``"jvp"`` (``jax.custom_jvp`` built from the same
#: derivatives: ``jax.jvp``/``jacfwd`` work too), ``"formula"`` (no custom rule: JAX
#: differentiates the forward formulas themselves, a witness independent of every hand rule).
WIRINGS: tuple[str, ...] = ("vjp", "jvp", "formula")


def input_grad(dx: Any, dtype: Any) -> Any:
    """A backward's ``dx`` in the input's ``dtype``, or ``None`` for an integer (or bool)
    input, which has no gradient (as ``Embedding``'s ids)."""
    return dx.astype(dtype) if jnp.issubdtype(dtype, jnp.inexact) else None


class NoBackwardRuleError(TypeError):
    """A layer without a hand-derived backward rule was asked for one."""


class StatefulModelError(TypeError):
    """A model holding state was called through the stateless ``init``/``apply``."""


def _keywords(fn: Callable, names: Sequence[str]) -> Callable[..., Any]:
    """``fn`` called with only those of the keywords ``names`` its signature accepts.

    Lets a user write ``forward(params, x)`` when the layer needs neither ``key`` nor
    ``train``; decided once, when the layer is built.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return fn
    accepted = tuple(n for n in names if n in parameters)
    if len(accepted) == len(names):
        return fn

    def call(*args, **kwargs):
        return fn(*args, **{k: v for k, v in kwargs.items() if k in accepted})

    return call


def _array_input(fn: Callable, name: str, index: int) -> Callable:
    """``fn`` refusing a Python list of numbers as its input ``x`` (positional ``index``):
    jax.numpy does not take lists, and its error would name neither the layer nor ``x``."""

    def call(*args, **kwargs):
        refuse_list_input(name, args[index] if len(args) > index else None)
        return fn(*args, **kwargs)

    return call


def _returns(fn: Callable, n: int, name: str, what: str, form: str) -> Callable:
    """``fn``, checked to return a tuple of ``n`` values (named in the error otherwise)."""

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not isinstance(out, tuple) or len(out) != n:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise LayerError(f"{name}: {what} must return {form}, got {got}")
        return out

    return call


def _check_wiring(wiring: str) -> str:
    if wiring not in WIRINGS:
        raise ValueError(f"wiring must be one of {WIRINGS}, got {wiring!r}")
    return wiring


@dataclasses.dataclass(frozen=True)
class InnerDeltas:
    r"""The error terms a layer's backward computes inside it, for ``return_deltas``.

    :func:`funnet.backprop.value_and_grad` with ``return_deltas=True`` gives every top-level
    layer of a ``serial`` the gradient reaching its output; a layer with ``inner_deltas``
    gives more: what its own backward pass computes at points inside it (a recurrent layer:
    ``∂L/∂h_t`` at every step, :class:`funnet.backprop.TimeDeltas`), from the same pass.

    Attributes:
      backward: ``(params, residuals, dy) -> (dparams, dx, deltas)``: the layer's hand
        backward (the same ``dparams``, ``dx``) that also returns ``deltas``, a NamedTuple
        whose ``output`` field is ``dy`` and whose other fields are the gradients of the
        loss at the points inside the layer.
      probed: ``(params, x, probes) -> y``: the layer's forward pass with ``probes`` (a
        NamedTuple like ``deltas``, ``output`` ignored) added at those points, so that
        ``∂L/∂probes`` at zero probes is what ``backward`` must return; the δ-trace of
        :func:`funnet.check_model` checks it by reverse mode through the formula wiring.
      extends: the layer's plain ``backward`` that ``backward`` extends. The inner deltas
        are used only while the layer's :attr:`Layer.backward` is that function: a copy
        whose backward was replaced (``dataclasses.replace(layer, backward=...)``, as
        gradient-check tests do) runs its own backward, and its entry is the output's
        gradient alone.
    """

    backward: Callable[..., tuple[PyTree, Any, Any]]
    probed: Callable[..., Any]
    extends: Callable[..., tuple[PyTree, Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    r"""A layer: stateful ``init``/``apply``, a hand ``backward``, and what tools need to know.

    Build one with :func:`layer` (or a constructor such as :func:`funnet.Dense`); the
    fields are the stateful form of the contract (see the module docstring).

    Attributes:
      init_with_state: ``(key, input_shape) -> (output_shape, params, state)``.
      apply_with_state: ``(params, state, x, *, key=None, train=False, mask=None) -> (y,
        state)``.
      forward_with_state: ``(params, state, x, *, key=None, train=False, mask=None) -> (y,
        state, residuals)``, or ``None`` when the layer has no hand-derived rule.
      backward: ``(params, residuals, dy) -> (dparams, dx)`` (``dx`` may be ``None``), or
        ``None`` when the layer has no hand-derived rule (then :mod:`funnet.backprop`
        raises, naming it).
      name: how errors and :func:`funnet.summary` refer to the layer, e.g. ``"Dense(4)"``.
      children: the sub-layers of a combinator (``serial``, ``parallel``), else ``()``.
      kind: ``"serial"`` or ``"parallel"`` for those combinators, else ``""``.
      stateful: whether the layer (or a sub-layer) holds state.
      decay: ``params -> bool pytree like params``: which leaves weight decay applies to;
        ``None`` when the layer declares nothing (a stax layer).
      rewire: ``wiring -> Layer``, the same layer with its activations wired another way
        (see :data:`WIRINGS`); ``None`` when the layer has no custom derivative inside.
      configure: ``**options -> Layer`` for configurable layers (``Elu(alpha=0.5)``).
      kinks: for an elementwise layer, the input values where its derivative jumps
        (``Relu``: ``(0.0,)``); gradient checks keep finite differences away from them.
      pieces: for a piecewise-smooth layer whose pieces are not elementwise kinks,
        ``x -> integer array`` naming the smooth piece ``x`` lies on (``MaxPool``: each
        window's arg-max); gradient checks treat a change of it as they treat a kink.
      inner_deltas: how the layer's backward exposes the error terms inside it
        (:class:`InnerDeltas`; recurrent layers: ``∂L/∂h_t`` through time), else ``None``.
      input_check: ``(x, label) -> None``, a check of concrete inputs on the host that
        raises a ValueError naming ``label`` (``Embedding``: ids out of range, which under
        ``jax.jit`` would give NaN rows); ``None``: nothing to check. Run by
        :meth:`check_inputs`, which :func:`funnet.fit`, :func:`funnet.evaluate` and
        :func:`funnet.predict` call on their data before anything is compiled.
    """

    init_with_state: Callable[..., tuple[Any, PyTree, PyTree]]
    apply_with_state: Callable[..., tuple[Any, PyTree]]
    forward_with_state: Callable[..., tuple[Any, PyTree, Any]] | None = None
    backward: Callable[..., tuple[PyTree, Any]] | None = None
    name: str = "layer"
    children: tuple[Layer, ...] = ()
    kind: str = ""
    stateful: bool = False
    decay: Callable[[PyTree], PyTree] | None = None
    rewire: Callable[[str], Layer] | None = None
    configure: Callable[..., Layer] | None = None
    kinks: tuple[float, ...] = ()
    pieces: Callable[[Any], Any] | None = None
    inner_deltas: InnerDeltas | None = None
    input_check: Callable[[Any, str], None] | None = None

    # -- the stateless (stax) view ------------------------------------------------------

    def _stateless(self, entry: str) -> None:
        if self.stateful:
            where = self.stateful_path() or self.name
            raise StatefulModelError(
                f"{where} holds state, so {self.name}.{entry} cannot be used: call "
                "model.init_with_state(key, input_shape) -> (out_shape, params, state) and "
                "model.apply_with_state(params, state, x, key=..., train=...) -> (y, state)"
            )

    def init(self, key: jax.Array, input_shape: Any) -> tuple[Any, PyTree]:
        """``(output_shape, params)`` of a stateless layer (stax's ``init_fun``)."""
        self._stateless("init")
        out_shape, params, _ = self.init_with_state(key, input_shape)
        return out_shape, params

    def apply(self, params: PyTree, x: Any, *, key: jax.Array | None = None,
              train: bool = False, mask: Any = None) -> Any:
        """``y`` of a stateless layer (stax's ``apply_fun``)."""
        self._stateless("apply")
        return self.apply_with_state(params, (), x, key=key, train=train, mask=mask)[0]

    def forward(self, params: PyTree, x: Any, *, key: jax.Array | None = None,
                train: bool = False, mask: Any = None) -> tuple[Any, Any]:
        """``(y, residuals)`` of a stateless layer, for :attr:`backward`."""
        self._stateless("forward")
        y, _, res = self._forward_rule()(params, (), x, key=key, train=train, mask=mask)
        return y, res

    def _forward_rule(self) -> Callable[..., tuple[Any, PyTree, Any]]:
        if self.forward_with_state is None or self.backward is None:
            raise NoBackwardRuleError(
                f"{self.name} has no hand-derived backward rule; build it with "
                "funnet.layer(init, forward, backward) or use jax.grad"
            )
        return self.forward_with_state

    def _stax_pair(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        # stax combinators call `apply(params, x, rng=rng, **kwargs)`: accept `rng` as `key`,
        # pass `train` through, and ignore other stax keywords, so a funnet layer also works
        # inside stax.serial (there, `train=True` is given as a keyword to stax's apply).
        def apply(params, x, *, key=None, rng=None, train=False, **unused):
            return self.apply(params, x, key=rng if key is None else key, train=train)

        return self.init, apply

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        # `init, apply = layer`, exactly as with stax.
        return iter(self._stax_pair())

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Callable[..., Any]:
        return self._stax_pair()[i]

    def __call__(self, *args: Any, **options: Any) -> Layer:
        """``Elu(alpha=0.5)``: a copy of a configurable layer with other options."""
        if args:
            raise TypeError(f"{self.name} is not called on data: use {self.name}.apply(params, "
                            "x) (or apply_with_state), or init, apply = layer")
        if self.configure is None:
            raise TypeError(f"{self.name} is a layer, not a layer constructor; it takes no options")
        return self.configure(**options)

    def __repr__(self) -> str:
        return self.name

    @property
    def inner_rule(self) -> InnerDeltas | None:
        """:attr:`inner_deltas` while they belong to :attr:`backward`, else ``None``."""
        d = self.inner_deltas
        return d if d is not None and d.extends is self.backward else None

    # -- what tools ask of a layer -------------------------------------------------------

    def check_inputs(self, x: Any, label: str = "x") -> None:
        """Check concrete inputs ``x`` on the host (NumPy, one pass), before any compile.

        Raises a ValueError naming ``label`` (``"train.x"``; a part of a ``parallel``
        input is ``"train.x[1]"``), the layer and the offending value; a layer without
        :attr:`input_check` accepts anything (what its ``apply`` refuses, it refuses
        there). ``serial`` hands ``x`` to its first layer, ``parallel`` each part to its
        layer.

        >>> import jax.numpy as jnp, funnet
        >>> net = funnet.parallel(funnet.Embedding(5, 2), funnet.Identity)
        >>> try:
        ...     net.check_inputs((jnp.array([[1, 7]]), jnp.array([[1, 0]])), "train.x")
        ... except ValueError as e:
        ...     print(str(e).split(";")[0])
        train.x[0]: id 7 at index (0, 1) is out of range for Embedding(5, 2) (ids 0 … 4)
        """
        if self.input_check is not None:
            self.input_check(x, label)

    @property
    def has_backward(self) -> bool:
        """Whether the layer carries a hand-derived backward rule."""
        return self.forward_with_state is not None and self.backward is not None

    def stateful_path(self) -> str | None:
        """``serial[1] › BatchNorm``: where the first layer holding state sits, or ``None``."""
        if not self.stateful:
            return None
        for i, child in enumerate(self.children):
            inner = child.stateful_path()
            if inner is not None:
                return f"{self.kind or self.name}[{i}] › {inner}"
        return self.name

    def decay_mask(self, params: PyTree) -> PyTree:
        """A bool pytree like ``params``: ``True`` for the leaves weight decay applies to.

        Raises :class:`ParamsError` naming the layer when a layer with params declares nothing
        (a stax pair wrapped by :func:`as_layer`).

        >>> import jax, funnet
        >>> net = funnet.serial(funnet.Dense(2), funnet.PRelu)
        >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 3))
        >>> net.decay_mask(params)
        ({'W': True, 'b': False}, {'slope': False})
        """
        if self.decay is None:
            if not jax.tree_util.tree_leaves(params):
                return jax.tree_util.tree_map(lambda _: False, params)
            raise ParamsError(
                f"{self.name} declares no weight-decayed params (a stax layer?), so l2 > 0 "
                "cannot tell its weights from its biases; build it with funnet.layer(..., "
                "decay=(...)) or add its penalty to the loss"
            )
        return self.decay(params)

    def rewired(self, wiring: str) -> Layer:
        """The same layer with its hand derivatives wired as ``wiring`` (:data:`WIRINGS`).

        ``"vjp"`` is how every layer is built; ``"jvp"`` is :func:`forward_twin`;
        ``"formula"`` evaluates activations through their plain formulas.
        """
        _check_wiring(wiring)
        return self if self.rewire is None else self.rewire(wiring)


def _decay_by_name(layer_name: str, names: Sequence[str]) -> Callable[[PyTree], PyTree]:
    """The mask of a layer whose params are a dict: leaves under ``names`` are decayed."""
    names = frozenset(names)

    def mask(params):
        if not names:
            return jax.tree_util.tree_map(lambda _: False, params)
        if not isinstance(params, dict) or not names <= set(params):
            have = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ParamsError(f"{layer_name}: decay names {sorted(names)}, but its params "
                              f"have keys {have}")
        return {k: jax.tree_util.tree_map(lambda _, k=k: k in names, v) for k, v in params.items()}

    return mask


def layer(
    init: Callable[..., Any],
    forward: Callable[..., Any] | None = None,
    backward: Callable[..., Any] | None = None,
    *,
    apply: Callable[..., Any] | None = None,
    name: str = "layer",
    decay: Sequence[str] = (),
    stateful: bool = False,
    rewire: Callable[[str], Layer] | None = None,
    configure: Callable[..., Layer] | None = None,
    kinks: Sequence[float] = (),
    pieces: Callable[[Any], Any] | None = None,
    inner_deltas: InnerDeltas | None = None,
    input_check: Callable[[Any, str], None] | None = None,
) -> Layer:
    r"""A :class:`Layer` from its ``init``, ``forward`` (with residuals) and hand ``backward``.

    Without state (``stateful=False``)::

        init(key, input_shape) -> (output_shape, params)
        forward(params, x, *, key, train, mask) -> (y, residuals)
        backward(params, residuals, dy) -> (dparams, dx)      # dx may be None
        apply(params, x, *, key, train, mask) -> y             # optional

    With ``stateful=True`` the same with state::

        init(key, input_shape) -> (output_shape, params, state)
        forward(params, state, x, *, key, train, mask) -> (y, new_state, residuals)
        apply(params, state, x, *, key, train, mask) -> (y, new_state)

    ``forward`` and ``apply`` may leave out the ``key``/``train``/``mask`` keywords they do
    not use (``mask``: the 0/1 ``[batch]`` vector of real rows, or ``None``; see the
    module docstring).
    ``apply`` defaults to ``forward`` without its residuals; give it when the plain formula
    is cheaper. A layer with only ``apply`` (no ``forward``/``backward``) is fine for
    ``jax.grad`` training; :mod:`funnet.backprop` then names it as lacking a hand rule.

    Args:
      init: the initialiser (see above).
      forward: the forward pass returning what ``backward`` needs.
      backward: the hand-derived backward rule.
      apply: the forward pass without residuals (optional).
      name: how errors, summaries and gradient reports refer to the layer.
      decay: the keys of the params dict that weight decay applies to, e.g. ``("W",)``.
      stateful: whether the functions take and return state.
      rewire: ``wiring -> Layer`` when the layer calls funnet activations (see
        :meth:`Layer.rewired`); without it the layer is its own forward twin.
      configure: ``**options -> Layer`` when the layer takes options.
      kinks: for an elementwise layer, the input values where its derivative jumps.
      pieces: ``x -> integer array`` naming the smooth piece of a piecewise layer
        (``MaxPool``: each window's arg-max); see :class:`Layer`.
      inner_deltas: the backward that also returns the error terms inside the layer, and
        its probed forward (:class:`InnerDeltas`), for ``return_deltas``; optional.
      input_check: ``(x, label) -> None``, a host-side check of concrete inputs raising a
        ValueError that names ``label`` (see :meth:`Layer.check_inputs`); optional.

    >>> import jax, jax.numpy as jnp, funnet
    >>> def init(key, input_shape):
    ...     return input_shape, {"scale": jnp.ones(input_shape[-1])}
    >>> def forward(params, x):
    ...     return x * params["scale"], x                     # y = s ⊙ x; keep x
    >>> def backward(params, x, dy):
    ...     return {"scale": (dy * x).sum(0)}, dy * params["scale"]
    >>> scale = funnet.layer(init, forward, backward, name="Scale")
    >>> _, params = scale.init(jax.random.PRNGKey(0), (-1, 2))
    >>> scale.apply(params, jnp.ones((1, 2))).tolist()
    [[1.0, 1.0]]
    """
    if forward is None and apply is None:
        raise TypeError(f"layer {name!r}: give forward (with backward) or apply")
    if (forward is None) != (backward is None):
        raise TypeError(f"layer {name!r}: forward and backward come together "
                        f"(got forward={forward is not None}, backward={backward is not None})")
    if inner_deltas is not None and (backward is None
                                     or not isinstance(inner_deltas, InnerDeltas)):
        raise TypeError(f"layer {name!r}: inner_deltas must be a funnet.contract.InnerDeltas "
                        f"and comes with backward, got {inner_deltas!r}")
    if isinstance(decay, str):
        decay = (decay,)
    kw = ("key", "train", "mask")
    if stateful:
        init = _returns(init, 3, name, "init", "(output_shape, params, state)")
        forms = ("(y, new_state, residuals)", "(y, new_state)")
    else:
        init = _returns(init, 2, name, "init", "(output_shape, params)")
        forms = ("(y, residuals)", None)
    fwd = app = None
    x_at = 2 if stateful else 1  # forward(params, [state,] x, ...)
    if forward is not None:
        fwd = _returns(_keywords(forward, kw), 3 if stateful else 2, name, "forward", forms[0])
        fwd = _array_input(fwd, name, x_at)
    if apply is not None:
        app = _array_input(_keywords(apply, kw), name, x_at)
        if stateful:
            app = _returns(app, 2, name, "apply", forms[1])

    if stateful:
        init_with_state = init
        forward_with_state = fwd
        if app is not None:
            apply_with_state = app
        else:
            def apply_with_state(params, state, x, *, key=None, train=False, mask=None):
                y, new_state, _ = fwd(params, state, x, key=key, train=train, mask=mask)
                return y, new_state
    else:
        def init_with_state(key, input_shape):
            out_shape, params = init(key, input_shape)
            return out_shape, params, ()

        forward_with_state = None
        if fwd is not None:
            def forward_with_state(params, state, x, *, key=None, train=False, mask=None):
                y, res = fwd(params, x, key=key, train=train, mask=mask)
                return y, state, res

        def apply_with_state(params, state, x, *, key=None, train=False, mask=None):
            if app is not None:
                return app(params, x, key=key, train=train, mask=mask), state
            return fwd(params, x, key=key, train=train, mask=mask)[0], state

    return Layer(init_with_state, apply_with_state, forward_with_state, backward, name=name,
                 stateful=stateful, decay=_decay_by_name(name, decay), rewire=rewire,
                 configure=configure, kinks=tuple(float(k) for k in kinks), pieces=pieces,
                 inner_deltas=inner_deltas, input_check=input_check)


def as_layer(obj: Any) -> Layer:
    """A ``Layer`` as is; a plain stax ``(init, apply)`` pair as a ``Layer`` without backward.

    The pair declares no weight-decayed params and has no hand rule; it is its own forward
    twin (it must not call funnet activations, whose ``custom_vjp`` forward mode refuses).

    Args:
      obj: a :class:`Layer`, returned unchanged, or a pair of callables ``init(key,
        input_shape) -> (out_shape, params)`` and ``apply(params, x, **kwargs)``; ``apply``
        gets ``key``, ``rng`` and ``train`` if it takes ``**kwargs``, else those of them it
        names. Anything else raises ``TypeError``.
    """
    if isinstance(obj, Layer):
        return obj
    try:
        init, apply = obj
    except (TypeError, ValueError):
        raise TypeError(f"expected a funnet Layer or an (init, apply) pair, got {obj!r}") from None
    if not (callable(init) and callable(apply)):
        raise TypeError(f"expected a funnet Layer or an (init, apply) pair, got {obj!r}")

    try:
        accepted = inspect.signature(apply).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())

    def apply_with_state(params, state, x, *, key=None, train=False, mask=None):
        if takes_kwargs:  # stax layers read `rng` from **kwargs and ignore the rest
            return apply(params, x, key=key, rng=key, train=train), state
        kwargs = {k: v for k, v in (("key", key), ("rng", key), ("train", train))
                  if k in accepted}
        return apply(params, x, **kwargs), state

    def init_with_state(key, input_shape):
        out_shape, params = init(key, input_shape)
        return out_shape, params, ()

    qualname = getattr(apply, "__qualname__", None) or getattr(apply, "__name__", "custom")
    outer = qualname.split(".<locals>")[0]  # stax.Dense(3)'s apply_fun -> "Dense"
    return Layer(init_with_state, apply_with_state, name=f"{outer} (stax pair)")


def forward_twin(model: Any) -> Layer:
    r"""``model`` with every funnet activation wired by ``jax.custom_jvp`` instead of ``custom_vjp``.

    The twin computes the same values, and its derivatives are the same hand-derived
    ``f'`` — pushed forward (``jax.jvp``, ``jax.jacfwd``, Hessian-vector products) as well as
    pulled back (``jax.grad``). It is a new pure value: nothing global changes, jit caches
    of the original model and of the user's functions stay valid, threads do not interact.

    Args:
        model: a :class:`funnet.Layer`, or a stax ``(init, apply)`` pair.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.Dense(2), funnet.Tanh)
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> twin = funnet.forward_twin(net)
    >>> x = jnp.ones((1, 2))
    >>> y, t = jax.jvp(lambda x: twin.apply(params, x), (x,), (x,))
    >>> bool(jnp.allclose(y, net.apply(params, x)))
    True
    """
    return as_layer(model).rewired("jvp")
