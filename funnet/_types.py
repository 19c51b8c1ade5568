"""The one contract of funnet: a :class:`Layer`.

A layer constructor returns a ``Layer``, which unpacks as the stax pair::

    init, apply = layer
    output_shape, params = init(key, input_shape)
    y = apply(params, x, key=None)

and also carries the hand-derived backward rule used by :mod:`funnet.backprop`::

    y, residuals = layer.forward(params, x, key=None)
    dparams, dx = layer.backward(params, residuals, dy)

``dparams`` has exactly the pytree structure of ``params``; ``dx`` that of ``x``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax

PyTree = Any
InitFn = Callable[[jax.Array, Any], tuple[Any, PyTree]]
ApplyFn = Callable[..., Any]
ForwardFn = Callable[..., tuple[Any, Any]]
BackwardFn = Callable[[PyTree, Any, Any], tuple[PyTree, Any]]


class LayerError(ValueError):
    """Bad shapes for a layer; the message names the layer and the shapes involved."""


class ParamsError(TypeError):
    """Params of the wrong structure for a layer; the message names the layer."""


class NoBackwardRuleError(TypeError):
    """A layer without a hand-derived backward rule was asked for one."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """An ``(init, apply)`` pair plus a hand-derived ``backward``.

    Attributes:
      init: ``(key, input_shape) -> (output_shape, params)``.
      apply: ``(params, x, *, key=None) -> y``.
      forward: ``(params, x, *, key=None) -> (y, residuals)``; what ``backward`` needs.
      backward: ``(params, residuals, dy) -> (dparams, dx)`` or ``None`` when the layer has
        no hand-derived rule (then :mod:`funnet.backprop` raises, naming it).
      name: how errors and :func:`funnet.summary` refer to the layer, e.g. ``"Dense(4)"``.
      children: the sub-layers of a combinator (``serial``, ``parallel``), else ``()``.
      kind: ``"serial"`` or ``"parallel"`` for those combinators, else ``""``.
    """

    init: InitFn
    apply: ApplyFn
    forward: ForwardFn | None = None
    backward: BackwardFn | None = None
    name: str = "layer"
    children: tuple[Layer, ...] = ()
    kind: str = ""
    configure: Callable[..., Layer] | None = None

    def __call__(self, **options: Any) -> Layer:
        """``Elu(alpha=0.5)``: a copy of a configurable layer with other options."""
        if self.configure is None:
            raise TypeError(f"{self.name} is a layer, not a layer constructor; it takes no options")
        return self.configure(**options)

    def _stax_pair(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        # stax combinators call `apply(params, x, rng=rng, **kwargs)`: accept `rng` as `key`
        # and ignore the other stax keywords, so a funnet layer also works inside stax.serial.
        def apply(params, x, *, key=None, rng=None, **unused):
            return self.apply(params, x, key=rng if key is None else key)

        return self.init, apply

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        # `init, apply = layer`, exactly as with stax.
        return iter(self._stax_pair())

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Callable[..., Any]:
        return self._stax_pair()[i]

    def __repr__(self) -> str:
        return self.name



def as_layer(layer: Any) -> Layer:
    """A ``Layer`` as is; a plain stax ``(init, apply)`` pair as a ``Layer`` without backward."""
    if isinstance(layer, Layer):
        return layer
    try:
        init, apply = layer
    except (TypeError, ValueError):
        raise TypeError(f"expected a funnet Layer or an (init, apply) pair, got {layer!r}") from None
    if not (callable(init) and callable(apply)):
        raise TypeError(f"expected a funnet Layer or an (init, apply) pair, got {layer!r}")

    try:
        accepted = inspect.signature(apply).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())

    def apply_with_key(params, x, *, key=None):
        if takes_kwargs:  # stax layers read `rng` from **kwargs and ignore the rest
            return apply(params, x, key=key, rng=key)
        if "key" in accepted:
            return apply(params, x, key=key)
        if "rng" in accepted:
            return apply(params, x, rng=key)
        return apply(params, x)

    return Layer(init, apply_with_key, name=getattr(apply, "__name__", "custom"))
