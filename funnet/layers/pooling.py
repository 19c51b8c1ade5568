r"""Pooling layers: ``MaxPool``, ``AvgPool``, ``SumPool``, ``GlobalAvgPool`` (docs/math.md §8.2).

Inputs are channels-last, ``x [batch, *spatial, C]`` with 1, 2 or 3 (or more) spatial
axes: the spatial rank is the input's, unless a tuple argument fixes it. A window of size
``k`` moves with stride ``s`` over the input padded by ``(lo, hi)`` per spatial axis;
along one axis output ``i`` covers the padded positions ``s·i + a``, ``0 ≤ a < k``, and
there are ``⌊(n + lo + hi − k) / s⌋ + 1`` of them.

Backward rules (``dy = ∂L/∂y``; ``xp`` the padded input, sums over the windows ``i`` that
contain a position, so overlapping windows, ``s < k``, accumulate)::

    SumPool  y[i] = Σ_a xp[s·i+a]           dxp[h] = Σ_{i,a: s·i+a=h} dy[i]
    AvgPool  y[i] = Σ_a xp[s·i+a] / cnt[i]  dxp[h] = Σ_{i,a: s·i+a=h} dy[i] / cnt[i]
    MaxPool  y[i] = max_a xp[s·i+a]         dxp[s·i + a*(i)] += dy[i]  (a*: first argmax)
    GlobalAvgPool  y[n,c] = mean_p x[n,p,c]  dx[n,p,c] = dy[n,c] / (number of positions p)

and ``dx`` is ``dxp`` with the padding cropped. Conventions:

* **Strides** default to the window (non-overlapping windows, as PyTorch and Keras);
  stax's and flax's pooling default to stride 1 instead: pass ``strides=1`` for theirs.
* **MaxPool ties**: the whole ``dy[i]`` goes to the *first* maximum of window ``i`` in
  row-major order of the window offsets (as the autodiff of ``lax.reduce_window`` max,
  XLA's select-and-scatter, and PyTorch); ``jnp.max`` over a window would split it
  equally among the maxima instead. MaxPool pads with ``-inf``: a padded position never
  wins and never receives gradient.
* **AvgPool count**: ``count_padding=False`` (the default, as stax and TensorFlow/Keras)
  divides by the number of *real* input elements in the window, so the average of a
  constant input is that constant everywhere, borders included; ``count_padding=True``
  (the default of flax's ``avg_pool`` and PyTorch's ``count_include_pad``) divides by the
  full window size ``Π k``, padded zeros included. With ``"VALID"`` padding they agree.
* **Padding**: ``"VALID"`` (none), ``"SAME"`` (``⌈n/s⌉`` outputs; the total padding
  ``max((⌈n/s⌉ − 1)·s + k − n, 0)`` split with the extra cell at the end, as
  ``lax.padtype_to_pads``) or one ``(lo, hi)`` pair per spatial axis. Each side must be
  smaller than the window (``lo, hi < k``), so that every window holds a real element.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validate import (
    LayerError,
    check_input_shape,
    check_int,
    expect_cotangent,
    expect_no_params,
    refuse_graph,
    shape_of,
)
from ..contract import Layer, input_grad, layer

__all__ = ["AvgPool", "GlobalAvgPool", "MaxPool", "SumPool"]

Ints = tuple[int, ...]


# --- the window geometry --------------------------------------------------------------------


def _ints(value: Any, what: str) -> int | Ints:
    """An int ``≥ 1`` or a non-empty tuple of them, else a LayerError naming ``what``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return check_int(value, what, error=LayerError)
    try:
        items = tuple(value)
    except TypeError:
        raise LayerError(f"{what} must be an int ≥ 1 or a tuple of them, got {value!r}") from None
    if not items:
        raise LayerError(f"{what} must be an int ≥ 1 or a non-empty tuple of them, got {value!r}")
    return tuple(check_int(v, what, error=LayerError) for v in items)


def _padding(value: Any, what: str) -> str | tuple[tuple[int, int], ...]:
    """``"VALID"``, ``"SAME"`` (any case) or a tuple of ``(lo, hi)`` pairs of ints ``≥ 0``."""
    if isinstance(value, str):
        if value.upper() not in ("VALID", "SAME"):
            raise LayerError(f"{what} must be 'VALID', 'SAME' or (lo, hi) pairs, got {value!r}")
        return value.upper()
    try:
        pairs = tuple(tuple(p) for p in value)
    except TypeError:
        raise LayerError(f"{what} must be 'VALID', 'SAME' or a sequence of (lo, hi) pairs, one "
                         f"per spatial axis, got {value!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise LayerError(f"{what} must be 'VALID', 'SAME' or a sequence of (lo, hi) pairs, one "
                         f"per spatial axis, got {value!r}")
    return tuple((check_int(lo, what, minimum=0, error=LayerError),
                  check_int(hi, what, minimum=0, error=LayerError)) for lo, hi in pairs)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """The window of one pooling layer as given: ``window`` and ``strides`` an int (for
    every spatial axis) or a tuple (one per axis), ``padding`` a mode or ``(lo, hi)`` pairs."""

    name: str
    window: int | Ints
    strides: int | Ints
    padding: str | tuple[tuple[int, int], ...]

    @property
    def rank(self) -> int | None:
        """The spatial rank fixed by a tuple argument, or ``None`` (inferred from the input)."""
        for v in (self.window, self.strides, self.padding):
            if isinstance(v, tuple):
                return len(v)
        return None

    def check(self) -> None:
        """Agreeing ranks; explicit padding smaller than the window on each side."""
        ranks = {f"{arg} {_show(v)}": len(v) for arg, v in
                 (("window", self.window), ("strides", self.strides), ("padding", self.padding))
                 if isinstance(v, tuple)}
        if len(set(ranks.values())) > 1:
            raise LayerError(f"{self.name}: the spatial ranks do not agree: "
                             + ", ".join(f"{k} has {r}" for k, r in ranks.items()))
        if isinstance(self.padding, tuple):
            window = self._per_axis(self.window, len(self.padding))
            for (lo, hi), k in zip(self.padding, window):
                if max(lo, hi) >= k:
                    raise LayerError(
                        f"{self.name}: padding {self.padding} must be smaller than the window "
                        f"{_show(self.window)} on each side (lo, hi < k), else a window holds "
                        "only padding")

    @staticmethod
    def _per_axis(v: int | Ints, rank: int) -> Ints:
        return v if isinstance(v, tuple) else (v,) * rank

    def resolve(self, shape: Sequence[int]) -> tuple[Ints, Ints, tuple[tuple[int, int], ...],
                                                      Ints]:
        """``(window, strides, pads, out)`` per spatial axis for an input of ``shape``.

        ``shape`` is ``[batch, *spatial, C]``; raises a LayerError naming the layer and the
        shape when its spatial rank does not fit or a window is larger than the padded input.
        """
        shape = tuple(shape)
        d = len(shape) - 2
        if d < 1 or (self.rank is not None and d != self.rank):
            need = f"{self.rank} spatial axes" if self.rank else "at least 1 spatial axis"
            raise LayerError(
                f"{self.name}: input of shape {shape} has rank {len(shape)}, i.e. {max(d, 0)} "
                f"spatial axes in [batch, *spatial, C], but the layer needs {need} "
                f"(rank {(self.rank or 1) + 2})")
        spatial = shape[1:-1]
        k, s = self._per_axis(self.window, d), self._per_axis(self.strides, d)
        if self.padding == "VALID":
            pads = ((0, 0),) * d
        elif self.padding == "SAME":  # ⌈n/s⌉ outputs, the odd padding cell at the end
            total = [max((-(-n // sd) - 1) * sd + kd - n, 0) for n, kd, sd in zip(spatial, k, s)]
            pads = tuple((t // 2, t - t // 2) for t in total)
        else:
            pads = self.padding
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads))
        if any(p < kd for p, kd in zip(padded, k)):
            raise LayerError(
                f"{self.name}: window {k} is larger than the input: spatial shape {spatial} of "
                f"input {shape}, padded by {pads}, is {padded}")
        out = tuple((p - kd) // sd + 1 for p, kd, sd in zip(padded, k, s))
        return k, s, pads, out


def _same_per_axis(a: int | Ints, b: int | Ints) -> bool:
    """Whether ``a`` and ``b`` are the same per spatial axis: equal, or one a tuple of the
    other's int at the rank of a tuple window (``strides=2`` beside ``window=(2, 2)``)."""
    if isinstance(a, tuple) == isinstance(b, tuple):
        return a == b
    return isinstance(b, tuple) and all(e == a for e in b)  # a tuple a fixes the rank


def _collapsed(v: int | Ints, window: int | Ints) -> int | Ints:
    """``v``'s name: a tuple of one int ``e`` is ``e`` beside a tuple ``window`` of its rank."""
    if (isinstance(v, tuple) and isinstance(window, tuple) and len(v) == len(window)
            and len(set(v)) == 1):
        return v[0]
    return v


def _geometry(kind: str, window: Any, strides: Any, padding: Any, extra: str = "") -> _Geometry:
    """The checked geometry, named by the options that differ from their defaults.

    Two spellings of one computation get one name (and one model signature): lists are
    tuples, and strides equal to the window per axis are the default, left out
    (``MaxPool((2, 2), strides=2)`` and ``strides=(2, 2)`` are ``MaxPool((2, 2))``);
    beside a tuple window, strides whose entries are all ``v`` are named ``v``.
    ``MaxPool(2)`` and ``MaxPool((2, 2))`` keep different names: the first takes its
    spatial rank from the input, the second is 2-D.
    """
    w = _ints(window, f"{kind}: window")
    s = w if strides is None else _ints(strides, f"{kind}: strides")
    p = _padding(padding, f"{kind}: padding")
    opts = [_show(w)]
    if strides is not None and not _same_per_axis(s, w):
        opts.append(f"strides={_show(_collapsed(s, w))}")
    if p != "VALID":
        opts.append(f"padding={_show(p)}")
    geometry = _Geometry(f"{kind}({', '.join(opts + ([extra] if extra else []))})", w, s, p)
    geometry.check()
    return geometry


def _dims(spatial: Sequence[Any]) -> tuple[tuple[int, int, int], ...]:
    """lax padding config ``(lo, hi, interior)``: nothing on the batch and channel axes."""
    return ((0, 0, 0), *spatial, (0, 0, 0))


def _window_reduce(x, init, op, k: Ints, s: Ints, pads) -> Any:
    """``op`` over every window: ``lax.reduce_window`` with batch and channel windows of 1."""
    return lax.reduce_window(x, np.array(init, x.dtype), op, (1, *k, 1), (1, *s, 1),
                             ((0, 0), *pads, (0, 0)))


def _lowest(dtype) -> Any:
    """MaxPool's padding value: ``-inf`` (the smallest integer for integer inputs)."""
    return -np.inf if jnp.issubdtype(dtype, jnp.inexact) else np.iinfo(dtype).min


def _spread(dy, spatial: Ints, k: Ints, s: Ints, pads) -> Any:
    r"""``dx[h] = Σ_{i,a: s·i+a = h+lo} dy[i]``: the transpose of the window sum, cropped.

    ``dy`` is dilated by ``s`` (``s − 1`` zeros between entries), padded by ``k − 1 − lo``
    before and ``k − 1 + r − hi`` after (``r = (n + lo + hi − k) mod s``, the cells no
    window reached), and summed over windows of ``k`` with stride 1: output ``h`` then adds
    exactly the ``dy[i]`` whose window covers padded position ``h + lo``.
    """
    cfg = []
    for n, kd, sd, (lo, hi), m in zip(spatial, k, s, pads, dy.shape[1:-1]):
        r = (n + lo + hi - kd) - (m - 1) * sd
        cfg.append((kd - 1 - lo, kd - 1 + r - hi, sd - 1))
    dilated = lax.pad(dy, np.array(0, dy.dtype), _dims(cfg))
    return _window_reduce(dilated, 0, lax.add, k, (1,) * len(k), ((0, 0),) * len(k))


def _counts(spatial: Ints, k: Ints, s: Ints, pads, out: Ints) -> np.ndarray:
    """The real (unpadded) input elements of each window, ``[*out]``: a product over axes
    of ``min(s·i − lo + k, n) − max(s·i − lo, 0)``."""
    per_axis = []
    for n, kd, sd, (lo, _), m in zip(spatial, k, s, pads, out):
        start = np.arange(m) * sd - lo
        per_axis.append(np.minimum(start + kd, n) - np.maximum(start, 0))
    return math.prod(np.ix_(*per_axis))


def _offsets(k: Ints) -> list[Ints]:
    """The window offsets ``a`` in row-major order (the order ties are broken in)."""
    return list(itertools.product(*(range(kd) for kd in k)))


def _first_max(x, k: Ints, s: Ints, pads, out: Ints) -> tuple[Any, Any]:
    """``(a*, xp)``: the index (in :func:`_offsets` order) of the first maximum of every
    window, ``[batch, *out, C]``, and the padded input.

    ``xp[s·i + a]`` for every output ``i`` is one strided slice per offset ``a``; stacked in
    row-major offset order, ``argmax`` picks the first maximum. It also names the linear
    piece MaxPool is on (``Layer.pieces``): gradient checks exclude finite-difference
    steps that change it.
    """
    xp = lax.pad(x, np.array(_lowest(x.dtype), x.dtype), _dims((lo, hi, 0) for lo, hi in pads))
    ends = [(m - 1) * sd + 1 for m, sd in zip(out, s)]  # span of the strided slice

    def entry(a):  # xp[n, s·i + a, c] for every output i
        return lax.slice(xp, (0, *a, 0), (xp.shape[0], *(ad + e for ad, e in zip(a, ends)),
                                          xp.shape[-1]), (1, *s, 1))

    return jnp.argmax(jnp.stack([entry(a) for a in _offsets(k)], axis=-2), axis=-2), xp


def _route_to_first_max(x, dy, k: Ints, s: Ints, pads, out: Ints) -> Any:
    r"""MaxPool's ``dx``: each ``dy[i]`` added at the first maximum of window ``i``.

    ``xp[s·i + a]`` for every output ``i`` is one strided slice per offset ``a``; stacked
    in row-major offset order, ``argmax`` (the first maximum) picks ``a*(i)``. The
    transpose of each strided slice (a dilating pad) carries ``dy[i]·[a*(i) = a]`` back,
    so windows that overlap add up.
    """
    first, xp = _first_max(x, k, s, pads, out)
    padded, offsets = xp.shape[1:-1], _offsets(k)
    ends = [(m - 1) * sd + 1 for m, sd in zip(out, s)]  # span of the strided slice
    zero = np.array(0, dy.dtype)
    dxp = jnp.zeros(xp.shape, dy.dtype)
    for j, a in enumerate(offsets):
        routed = jnp.where(first == j, dy, zero)  # dy[i]·[a*(i) = a]
        dxp = dxp + lax.pad(routed, zero, _dims(
            (ad, p - ad - e, sd - 1) for ad, p, e, sd in zip(a, padded, ends, s)))
    lo = tuple(p[0] for p in pads)
    hi = tuple(start + n for start, n in zip(lo, x.shape[1:-1]))
    return lax.slice(dxp, (0, *lo, 0), (x.shape[0], *hi, x.shape[-1]))  # crop the padding


# --- the layers -----------------------------------------------------------------------------


def _pool_layer(g: _Geometry, forward_fn, backward_fn, *, keep_input: bool,
                pieces_fn=None) -> Layer:
    """A pooling layer on ``g``: ``forward_fn(x, *geometry) -> y`` and
    ``backward_fn(x, dy, *geometry) -> dx`` with ``geometry = (k, s, pads, out)``.

    The residual is ``x`` when ``keep_input`` (MaxPool needs the values); otherwise only its
    shape and dtype, and ``backward_fn`` gets a ``jax.ShapeDtypeStruct`` for ``x``.
    """

    def init(key, input_shape):
        shape = check_input_shape(g.name, input_shape, features=True)
        _, _, _, out = g.resolve(shape)
        return (shape[0], *out, shape[-1]), ()

    def apply(params, x):
        expect_no_params(g.name, params)
        refuse_graph(g.name, x)
        return forward_fn(x, *g.resolve(shape_of(x)))

    def forward(params, x):
        return apply(params, x), (x if keep_input else (x.shape, x.dtype))

    def backward(params, res, dy):
        x = res if keep_input else jax.ShapeDtypeStruct(*res)
        geometry = g.resolve(x.shape)
        expect_cotangent(g.name, dy, (x.shape[0], *geometry[3], x.shape[-1]))
        return (), input_grad(backward_fn(x, dy, *geometry), x.dtype)  # None for int x

    pieces = None if pieces_fn is None else (lambda x: pieces_fn(x, *g.resolve(shape_of(x))))
    return layer(init, forward, backward, apply=apply, name=g.name, pieces=pieces)


def MaxPool(window: int | Sequence[int], *, strides: int | Sequence[int] | None = None,
            padding: str | Sequence[tuple[int, int]] = "VALID") -> Layer:
    r"""Max pooling ``y[n, i, c] = max_a xp[n, s·i + a, c]`` over windows of ``window``.

    Padded positions are ``-inf``: they never win. Backward: ``dy[n, i, c]`` goes to the
    *first* maximum of its window in row-major order (as ``lax.reduce_window``'s autodiff
    and PyTorch), overlapping windows accumulate (module docstring).

    Args:
      window: the window size ``k``: an int for every spatial axis (the spatial rank is
        then the input's), or a tuple, one per spatial axis.
      strides: the step ``s`` between windows; default ``window`` (non-overlapping, as
        PyTorch; stax and flax default to 1).
      padding: ``"VALID"``, ``"SAME"`` or one ``(lo, hi)`` pair per spatial axis, each
        smaller than the window.

    Shapes: ``x [batch, *spatial, C] -> y [batch, *out, C]``,
    ``out = ⌊(n + lo + hi − k)/s⌋ + 1`` per axis; no params.

    >>> import jax.numpy as jnp, funnet
    >>> x = jnp.array([1.0, 3.0, 3.0, 2.0, 0.0, 5.0]).reshape(1, 6, 1)
    >>> funnet.MaxPool(2).apply((), x).ravel().tolist()
    [3.0, 3.0, 5.0]
    >>> pool = funnet.MaxPool(3, strides=1)  # windows [1 3 3] [3 3 2] [3 2 0] [2 0 5]
    >>> y, res = pool.forward((), x)
    >>> pool.backward((), res, jnp.ones_like(y))[1].ravel().tolist()  # ties: the first
    [0.0, 2.0, 1.0, 0.0, 0.0, 1.0]
    """
    g = _geometry("MaxPool", window, strides, padding)
    return _pool_layer(
        g,
        lambda x, k, s, pads, out: _window_reduce(x, _lowest(x.dtype), lax.max, k, s, pads),
        lambda x, dy, k, s, pads, out: _route_to_first_max(x, dy, k, s, pads, out),
        keep_input=True,
        pieces_fn=lambda x, k, s, pads, out: _first_max(x, k, s, pads, out)[0],
    )


def SumPool(window: int | Sequence[int], *, strides: int | Sequence[int] | None = None,
            padding: str | Sequence[tuple[int, int]] = "VALID") -> Layer:
    r"""Sum pooling ``y[n, i, c] = Σ_a xp[n, s·i + a, c]`` (zero padding).

    Backward: ``dx[h] = Σ_{i,a: s·i+a = h+lo} dy[i]``, every window sending its ``dy`` to
    each of its positions (module docstring).

    Args:
      window: the window size ``k``: an int for every spatial axis, or one per axis.
      strides: the step ``s`` between windows; default ``window``.
      padding: ``"VALID"``, ``"SAME"`` or one ``(lo, hi)`` pair per spatial axis, each
        smaller than the window.

    Shapes: ``x [batch, *spatial, C] -> y [batch, *out, C]``; no params.

    >>> import jax.numpy as jnp, funnet
    >>> x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    >>> funnet.SumPool(2, strides=1).apply((), x).ravel().tolist()
    [3.0, 5.0, 7.0, 9.0]
    """
    g = _geometry("SumPool", window, strides, padding)
    return _pool_layer(
        g,
        lambda x, k, s, pads, out: _window_reduce(x, 0, lax.add, k, s, pads),
        lambda x, dy, k, s, pads, out: _spread(dy, x.shape[1:-1], k, s, pads),
        keep_input=False,
    )


def AvgPool(window: int | Sequence[int], *, strides: int | Sequence[int] | None = None,
            padding: str | Sequence[tuple[int, int]] = "VALID",
            count_padding: bool = False) -> Layer:
    r"""Average pooling ``y[n, i, c] = Σ_a xp[n, s·i + a, c] / cnt[i]``.

    ``cnt[i]`` is the number of real input elements in window ``i`` (``count_padding=False``,
    the default, as stax's ``AvgPool``) or the full window size ``Π k`` (``True``, as flax's
    ``avg_pool`` and PyTorch, padded zeros counted). Backward: ``dx[h] = Σ_{i,a: s·i+a =
    h+lo} dy[i] / cnt[i]`` (module docstring).

    Args:
      window: the window size ``k``: an int for every spatial axis, or one per axis.
      strides: the step ``s`` between windows; default ``window``.
      padding: ``"VALID"``, ``"SAME"`` or one ``(lo, hi)`` pair per spatial axis, each
        smaller than the window.
      count_padding: whether padded cells count in the divisor (see above).

    Shapes: ``x [batch, *spatial, C] -> y [batch, *out, C]``; no params.

    >>> import jax.numpy as jnp, funnet
    >>> x = jnp.ones((1, 3, 1))
    >>> funnet.AvgPool(2, strides=1, padding="SAME").apply((), x).ravel().tolist()
    [1.0, 1.0, 1.0]
    >>> funnet.AvgPool(2, strides=1, padding="SAME", count_padding=True).apply(
    ...     (), x).ravel().tolist()
    [1.0, 1.0, 0.5]
    """
    if not isinstance(count_padding, (bool, np.bool_)):
        raise LayerError(f"AvgPool: count_padding must be True or False, got {count_padding!r}")
    g = _geometry("AvgPool", window, strides, padding,
                  "count_padding=True" if count_padding else "")

    def divisor(x, k, s, pads, out):  # cnt[i], shaped [1, *out, 1]
        cnt = (np.full(out, math.prod(k)) if count_padding
               else _counts(x.shape[1:-1], k, s, pads, out))
        return jnp.asarray(np.asarray(cnt).reshape((1, *out, 1)), jnp.result_type(x, float))

    def forward(x, k, s, pads, out):
        return _window_reduce(x, 0, lax.add, k, s, pads) / divisor(x, k, s, pads, out)

    def backward(x, dy, k, s, pads, out):
        return _spread(dy / divisor(x, k, s, pads, out), x.shape[1:-1], k, s, pads)

    return _pool_layer(g, forward, backward, keep_input=False)


def _global_avg_pool() -> Layer:
    name = "GlobalAvgPool"

    def check(shape):
        if len(shape) < 3:
            raise LayerError(f"{name}: input of shape {tuple(shape)} has rank {len(shape)}, "
                             "needs ≥ 3 ([batch, *spatial, C], at least 1 spatial axis)")

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, features=True)
        check(shape)
        return (shape[0], shape[-1]), ()

    def apply(params, x):
        expect_no_params(name, params)
        refuse_graph(name, x)
        check(shape_of(x))
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))  # y[n, c] = mean_p x[n, p, c]

    def forward(params, x):
        return apply(params, x), (x.shape, x.dtype)

    def backward(params, res, dy):
        shape, dtype = res
        expect_cotangent(name, dy, (shape[0], shape[-1]))
        size = math.prod(shape[1:-1])
        per_position = (dy / size).reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
        return (), input_grad(jnp.broadcast_to(per_position, shape), dtype)  # dy[n, c] / |p|

    return layer(init, forward, backward, apply=apply, name=name)


#: Mean over every spatial axis, ``[batch, *spatial, C] -> [batch, C]``;
#: backward ``dx[n, p, c] = dy[n, c] / (number of positions p)``.
GlobalAvgPool = _global_avg_pool()
