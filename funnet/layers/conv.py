r"""Convolutions over channels-last inputs: ``Conv`` and ``ConvTranspose`` (docs/math.md §8.1).

Layout (as stax and flax): inputs ``[batch, *spatial, C_in]``, kernels
``[*kernel, C_in / groups, C_out]``, outputs ``[batch, *spatial_out, C_out]``, for any number
``n ≥ 1`` of spatial dims (1-D ``[batch, W, C]``, 2-D ``[batch, H, W, C]``, 3-D
``[batch, D, H, W, C]``), the rank taken from the input shape at init.

``Conv`` is a cross-correlation (the kernel is not flipped), per spatial dim, with stride
``s``, dilation ``d``, effective kernel size ``k_eff = d (k - 1) + 1`` and padding
``(lo, hi)`` (``xp`` the padded input)::

    y[n, i, o]  = b[o] + Σ_{a, c} xp[n, s·i + d·a, g(o)·C_g + c] · W[a, c, o]
    out         = ⌊(in + lo + hi − k_eff) / s⌋ + 1
    db[o]       = Σ_{n, i} dy[n, i, o]
    dW[a, c, o] = Σ_{n, i} xp[n, s·i + d·a, g(o)·C_g + c] · dy[n, i, o]
    dxp[n, h, c]= Σ_{(i, a): s·i + d·a = h} Σ_{o ∈ group(c)} dy[n, i, o] · W[a, c mod C_g, o]

with ``C_g = C_in / groups`` and ``g(o)`` the group of output channel ``o`` (channels are
split into contiguous groups, group-major). The backward rules are convolutions again:
``dW`` correlates the input with ``dy`` (window stride ``d``, ``dy`` dilated by ``s``);
``dx`` is the transposed convolution: ``dy`` dilated by ``s``, padded, correlated with the
spatially flipped kernel whose in/out channels are swapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validate import (
    LayerError,
    ParamsError,
    check_input_shape,
    check_int,
    expect_cotangent,
    expect_params,
    refuse_graph,
    shape_of,
)
from ..contract import Layer, input_grad, layer

__all__ = ["Conv", "ConvTranspose"]

# receptive field prod(kernel): fan_in = prod(kernel)·C_in/groups, fan_out = prod(kernel)·C_out
_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()
_Pairs = tuple[tuple[int, int], ...]


# --- options -------------------------------------------------------------------------------


def _ints(value: Any, what: str, *, minimum: int) -> int | tuple[int, ...]:
    """An int ``≥ minimum`` or a non-empty tuple of them (one per spatial dim)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return check_int(value, what, minimum=minimum, error=LayerError)
    try:
        entries = tuple(value)
    except TypeError:
        raise LayerError(f"{what} must be an int or a tuple of ints, got {value!r}") from None
    if not entries:
        raise LayerError(f"{what} must be an int or a non-empty tuple of ints, got {value!r}")
    return tuple(check_int(v, what, minimum=minimum, error=LayerError) for v in entries)


def _padding(value: Any, name: str) -> str | int | _Pairs:
    """``"VALID"``, ``"SAME"`` (any case, as the pools), an int ``≥ 0`` or a tuple of
    ``(low, high)`` pairs ``≥ 0``."""
    how = ('"VALID", "SAME" (any case), an int ≥ 0 (both sides of every dim) or a sequence '
           "of (low, high) int pairs ≥ 0, one per spatial dim")
    if isinstance(value, str):
        if value.upper() not in ("VALID", "SAME"):
            raise LayerError(f"{name}: padding must be {how}, got {value!r}")
        return value.upper()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return check_int(value, f"{name}: padding", minimum=0, error=LayerError)
    try:
        pairs = tuple(tuple(p) for p in value)
    except TypeError:
        raise LayerError(f"{name}: padding must be {how}, got {value!r}") from None
    ok = pairs and all(
        len(p) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                            and v >= 0 for v in p) for p in pairs)
    if not ok:
        raise LayerError(f"{name}: padding must be {how}, got {value!r}")
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def _rank_of_options(name: str, **options: Any) -> int | None:
    """The spatial rank fixed by the tuple-valued options (they must agree), else ``None``."""
    lengths = {k: len(v) for k, v in options.items() if isinstance(v, tuple)}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"{k} {options[k]!r} ({n} dims)" for k, n in lengths.items())
        raise LayerError(f"{name}: the per-dimension options disagree on the number of "
                         f"spatial dims: {given}")
    return next(iter(lengths.values()), None)


def _spelling(value: Any) -> Any:
    """``value`` with every list spelled as a tuple: ``[(1, 1), (1, 1)]`` is ``((1, 1), (1, 1))``."""
    if isinstance(value, (list, tuple)):
        return tuple(_spelling(v) for v in value)
    return value


def _name(kind: str, out_channels: int, kernel: Any, defaults: dict, given: dict) -> str:
    """``Conv(8, (3, 3), strides=2)``: the options that differ from their defaults.

    Two spellings of one computation get one name (and one model signature): lists are
    tuples (``[3, 3]`` is ``(3, 3)``); beside a tuple kernel, which fixes the spatial rank,
    a per-dimension option whose entries are all ``v`` is ``v`` (``strides=(2, 2)`` beside
    ``(3, 3)`` is ``strides=2``), and one at its default (``strides=(1, 1)``) is left out;
    a padding mode is upper case (``"same"`` is ``'SAME'``).
    ``Conv(4, 3)`` and ``Conv(4, (3, 3))`` keep different names: the first takes its
    spatial rank from the input (it is also a 1-D or 3-D convolution), the second is 2-D.
    """
    kernel = _spelling(kernel)

    def shown(v: Any) -> Any:
        v = _spelling(v)
        if isinstance(v, str):
            return v.upper()  # padding="same" is "SAME"
        if (isinstance(v, tuple) and isinstance(kernel, tuple) and len(v) == len(kernel)
                and all(isinstance(e, int) for e in v) and len(set(v)) == 1):
            return v[0]  # per-dim, all equal, at the kernel's fixed rank
        return v

    extra = "".join(f", {k}={shown(v)!r}" for k, v in given.items()
                    if shown(v) != defaults[k])
    return f"{kind}({out_channels}, {kernel!r}{extra})"


# --- geometry: per-dim sizes and paddings of one input shape --------------------------------


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """The static shape arithmetic of one convolution (one entry per spatial dim)."""

    n: int  # spatial rank
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: _Pairs  # of the input (Conv) or of the stride-dilated input (ConvTranspose)
    spatial: tuple[int, ...]  # input spatial sizes
    out: tuple[int, ...]  # output spatial sizes
    c_in: int

    @property
    def k_eff(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def unused(self) -> tuple[int, ...]:
        """Conv: the trailing padded rows no window reaches, ``(in + lo + hi − k_eff) mod s``."""
        return tuple((i + lo + hi - k) % s for i, (lo, hi), k, s
                     in zip(self.spatial, self.pads, self.k_eff, self.strides))


def _per_dim(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else value


def _same_pads(spatial, k_eff, strides) -> _Pairs:
    # lax's "SAME": out = ⌈in / s⌉, total = max((out − 1)·s + k_eff − in, 0), extra row high
    pads = []
    for i, k, s in zip(spatial, k_eff, strides):
        total = max((-(-i // s) - 1) * s + k - i, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _transpose_pads(how: str, k_eff, strides) -> _Pairs:
    # lax.conv_transpose's "SAME"/"VALID" padding of the stride-dilated input
    pads = []
    for k, s in zip(k_eff, strides):
        if how == "SAME":
            total, lo = k + s - 2, (k - 1 if s > k - 1 else -(-(k + s - 2) // 2))
        else:
            total, lo = k + s - 2 + max(k - s, 0), k - 1
        pads.append((lo, total - lo))
    return tuple(pads)


def _rank(name: str, shape: tuple[int, ...], fixed: int | None, what: str) -> int:
    """The spatial rank of an input of ``shape`` ``[batch, *spatial, C_in]``."""
    n = len(shape) - 2
    if fixed is not None and n != fixed:
        raise LayerError(f"{name}: {what} {shape} has rank {len(shape)}, but the layer is a "
                         f"{fixed}-D convolution: it takes [batch, *{fixed} spatial dims, "
                         f"C_in] (rank {fixed + 2})")
    if n < 1:
        raise LayerError(f"{name}: {what} {shape} has rank {len(shape)}; a convolution takes "
                         "[batch, *spatial, C_in] with at least one spatial dim (rank ≥ 3); "
                         "reshape a feature vector [batch, F] first, e.g. Reshape((F, 1))")
    return n


def _geometry(name: str, opts: dict, shape: tuple[int, ...], what: str,
              transpose: bool) -> _Geometry:
    """Sizes and paddings for an input of ``shape``, or a LayerError naming the misfit."""
    n = _rank(name, shape, opts["rank"], what)
    kernel, strides, dilation = (_per_dim(opts[k], n) for k in ("kernel", "strides", "dilation"))
    spatial, c_in = tuple(shape[1:-1]), shape[-1]
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    how = opts["padding"]
    if how == "VALID" and not transpose:
        pads = ((0, 0),) * n
    elif how == "SAME" and not transpose:
        pads = _same_pads(spatial, k_eff, strides)
    elif isinstance(how, str):
        pads = _transpose_pads(how, k_eff, strides)
    else:
        pads = ((how, how),) * n if isinstance(how, int) else how
    # the extent the kernel slides over: the padded input, or the padded dilated input
    extent = tuple((i - 1) * s + 1 if transpose else i for i, s in zip(spatial, strides))
    padded = tuple(e + lo + hi for e, (lo, hi) in zip(extent, pads))
    if any(p < k for p, k in zip(padded, k_eff)):
        what_padded = "stride-dilated, padded input" if transpose else "padded input"
        raise LayerError(f"{name}: {what} {shape}: the {what_padded} has spatial size "
                         f"{padded}, smaller than the (dilated) kernel {k_eff} (kernel "
                         f"{kernel}, dilation {dilation}, padding {pads})")
    step = (1,) * n if transpose else strides
    out = tuple((p - k) // s + 1 for p, k, s in zip(padded, k_eff, step))
    return _Geometry(n, kernel, strides, dilation, pads, spatial, out, c_in)


def _layout(n: int) -> lax.ConvDimensionNumbers:
    """``[batch, *spatial, C]`` inputs and outputs, ``[*kernel, C_in, C_out]`` kernels."""
    spatial = tuple(range(1, n + 1))
    return lax.ConvDimensionNumbers(lhs_spec=(0, n + 1, *spatial),
                                    rhs_spec=(n + 1, n, *range(n)),
                                    out_spec=(0, n + 1, *spatial))


def _weight_grad_layout(n: int) -> lax.ConvDimensionNumbers:
    """For ``dW``: ``x``'s channels play the batch, the batch is summed as the features, ``dy``
    is the kernel ``[batch, *spatial_out, C_out]``, the result has the kernel's layout."""
    spatial = tuple(range(1, n + 1))
    return lax.ConvDimensionNumbers(lhs_spec=(n + 1, 0, *spatial),
                                    rhs_spec=(n + 1, 0, *spatial),
                                    out_spec=(n, n + 1, *range(n)))


def _flip(W: jax.Array, n: int) -> jax.Array:
    return lax.rev(W, tuple(range(n)))  # W[k−1−a]: the kernel flipped in every spatial dim


def _swap_channels(W: jax.Array, n: int, groups: int) -> jax.Array:
    """``[*K, C_g, G·O_g] -> [*K, O_g, G·C_g]``: in and out channels swapped within each group,
    ``Wᵗ[a, o', g·C_g + c] = W[a, c, g·O_g + o']``."""
    *kernel, c_g, out = W.shape
    W = W.reshape((*kernel, c_g, groups, out // groups))
    W = jnp.transpose(W, (*range(n), n + 2, n + 1, n))
    return W.reshape((*kernel, out // groups, groups * c_g))


# --- the layers -----------------------------------------------------------------------------


def _check_params(name: str, params: Any, g: _Geometry, out_channels: int, groups: int,
                  x_shape: tuple[int, ...], layout: str) -> None:
    expect_params(name, params, ("W", "b"))
    W, b = params["W"], params["b"]
    want = (*g.kernel, g.c_in // groups, out_channels)
    if shape_of(W) != want:
        raise ParamsError(f"{name}: W has shape {shape_of(W)}, but an input of shape {x_shape} "
                          f"needs {layout} = {want}")
    if shape_of(b) != (out_channels,):
        raise ParamsError(f"{name}: b has shape {shape_of(b)}, expected ({out_channels},)")


def _conv_layer(kind: str, name: str, opts: dict, forward_fn: Callable, grads_fn: Callable,
                W_init: Callable, b_init: Callable) -> Layer:
    """The Layer around a convolution's forward formula and its hand gradients."""
    out_channels, groups, transpose = opts["out"], opts["groups"], kind == "ConvTranspose"

    def geometry(shape, what):
        g = _geometry(name, opts, shape, what, transpose)
        if g.c_in % groups:
            raise LayerError(f"{name}: {what} {shape} has C_in = {g.c_in} channels, not "
                             f"divisible by groups = {groups}")
        return g

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, features=True)
        g = geometry(shape, "input_shape")
        k1, k2 = jax.random.split(key)
        return (shape[0], *g.out, out_channels), {
            "W": W_init(k1, (*g.kernel, g.c_in // groups, out_channels)),
            "b": b_init(k2, (out_channels,)),
        }

    def checked(params, x):
        refuse_graph(name, x)
        x = jnp.asarray(x)
        g = geometry(x.shape, "input of shape")
        layout = "[*kernel, C_in, C_out]" if transpose else "[*kernel, C_in/groups, C_out]"
        _check_params(name, params, g, out_channels, groups, x.shape, layout)
        return x, g

    def apply(params, x):
        x, g = checked(params, x)
        W, b = params["W"], params["b"]
        dtype = jnp.result_type(x.dtype, W.dtype, b.dtype)
        y = forward_fn(x.astype(dtype), W.astype(dtype), g, groups)
        return y + b.astype(dtype).reshape((1,) * (g.n + 1) + (-1,))  # + b[o], explicit

    def forward(params, x):
        x = jnp.asarray(x)
        return apply(params, x), x  # residual: the input

    def backward(params, x, dy):
        g = geometry(x.shape, "input of shape")
        expect_cotangent(name, dy, (x.shape[0], *g.out, out_channels))
        W, b = params["W"], params["b"]
        dtype = jnp.result_type(x.dtype, W.dtype, dy.dtype)
        dy_ = dy.astype(dtype)
        dW, dx = grads_fn(x.astype(dtype), W.astype(dtype), dy_, g, groups)
        return {  # each gradient in the dtype of what it differentiates; none for int x
            "W": dW.astype(W.dtype),
            "b": dy_.sum(axis=tuple(range(g.n + 1))).astype(b.dtype),  # db = Σ_{n,i} dy
        }, input_grad(dx, x.dtype)

    return layer(init, forward, backward, apply=apply, name=name, decay=("W",))


def _options(kind: str, out_channels, kernel_shape, strides, padding, dilation,
             groups) -> tuple[str, dict]:
    out = check_int(out_channels, f"{kind}: out_channels", error=LayerError)
    kernel = _ints(kernel_shape, f"{kind}({out}): kernel_shape", minimum=1)
    name = _name(kind, out, kernel, {"strides": 1, "padding": "VALID", "dilation": 1,
                                     "groups": 1},
                 {"strides": strides, "padding": padding, "dilation": dilation,
                  "groups": groups})
    opts = {
        "out": out,
        "kernel": kernel,
        "strides": _ints(strides, f"{name}: strides", minimum=1),
        "dilation": _ints(dilation, f"{name}: dilation", minimum=1),
        "padding": _padding(padding, name),
        "groups": check_int(groups, f"{name}: groups", error=LayerError),
    }
    pairs = opts["padding"] if isinstance(opts["padding"], tuple) else None
    opts["rank"] = _rank_of_options(name, kernel_shape=kernel, strides=opts["strides"],
                                    dilation=opts["dilation"], padding=pairs)
    if out % opts["groups"]:
        raise LayerError(f"{name}: out_channels = {out} is not divisible by groups = "
                         f"{opts['groups']}")
    return name, opts


def _conv_forward(x, W, g: _Geometry, groups: int) -> jax.Array:
    # y[n, i, o] = Σ_{a, c} xp[n, s·i + d·a, c] W[a, c, o]
    return lax.conv_general_dilated(x, W, window_strides=g.strides, padding=g.pads,
                                    rhs_dilation=g.dilation, dimension_numbers=_layout(g.n),
                                    feature_group_count=groups)


def _conv_grads(x, W, dy, g: _Geometry, groups: int) -> tuple[jax.Array, jax.Array]:
    n, ones = g.n, (1,) * g.n
    # dW[a, c, o] = Σ_{n, i} xp[n, s·i + d·a, c] dy[n, i, o]: windows of xp at stride d,
    # "kernel" dy dilated by s; the `unused` trailing rows of xp are cropped (negative pad)
    cropped = tuple((lo, hi - r) for (lo, hi), r in zip(g.pads, g.unused))
    dW = lax.conv_general_dilated(x, dy, window_strides=g.dilation, padding=cropped,
                                  rhs_dilation=g.strides, dimension_numbers=_weight_grad_layout(n),
                                  batch_group_count=groups)
    # dxp[h] = Σ_{s·i + d·a = h} dy[i] W[a]: dy dilated by s, padded by k_eff − 1 (minus the
    # input's padding, cropping dxp to dx; plus the unused rows), ⋆ flipped, swapped W
    pads = tuple((k - 1 - lo, k - 1 - hi + r)
                 for k, (lo, hi), r in zip(g.k_eff, g.pads, g.unused))
    dx = lax.conv_general_dilated(dy, _flip(_swap_channels(W, n, groups), n),
                                  window_strides=ones, padding=pads, lhs_dilation=g.strides,
                                  rhs_dilation=g.dilation, dimension_numbers=_layout(n),
                                  feature_group_count=groups)
    return dW, dx


def _transpose_forward(x, W, g: _Geometry, groups: int) -> jax.Array:
    # y[n, j, o] = Σ_{a, c} u[n, j + d·a, c] W[a, c, o], u = pad(dilate(x, s), lo, hi)
    return lax.conv_transpose(x, W, strides=g.strides, padding=g.pads, rhs_dilation=g.dilation,
                              dimension_numbers=_layout(g.n), transpose_kernel=False)


def _transpose_grads(x, W, dy, g: _Geometry, groups: int) -> tuple[jax.Array, jax.Array]:
    n, ones = g.n, (1,) * g.n
    # dW[a, c, o] = Σ_{n, j} u[n, j + d·a, c] dy[n, j, o]: windows of u at stride d
    dW = lax.conv_general_dilated(x, dy, window_strides=g.dilation, padding=g.pads,
                                  lhs_dilation=g.strides, rhs_dilation=ones,
                                  dimension_numbers=_weight_grad_layout(n))
    # du[t] = Σ_{j + d·a = t} dy[j] W[a] (dy padded by k_eff − 1, ⋆ flipped, swapped W);
    # dx[i] = du[lo + s·i]: the same correlation at stride s, shifted by the padding
    pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(g.k_eff, g.pads))
    dx = lax.conv_general_dilated(dy, _flip(_swap_channels(W, n, 1), n),
                                  window_strides=g.strides, padding=pads,
                                  rhs_dilation=g.dilation, dimension_numbers=_layout(n))
    return dW, dx


def Conv(
    out_channels: int,
    kernel_shape: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[tuple[int, int]] = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Convolution (cross-correlation) over ``n ≥ 1`` spatial dims (docs/math.md §8.1).

    Per spatial dim, with stride ``s``, dilation ``d``, padding ``(lo, hi)`` and
    ``k_eff = d (k − 1) + 1``::

        y[n, i, o] = b[o] + Σ_{a, c} xp[n, s·i + d·a, c] · W[a, c, o]     (xp: padded x)
        out        = ⌊(in + lo + hi − k_eff) / s⌋ + 1

    computed by ``lax.conv_general_dilated``. Backward (by hand, lax convolutions):
    ``db = Σ_{n, i} dy``; ``dW`` correlates ``xp`` with ``dy`` (window stride ``d``, ``dy``
    dilated by ``s``; rows of ``xp`` that no window reaches when ``s`` does not divide
    ``in + lo + hi − k_eff`` are cropped); ``dx`` is the transposed convolution: ``dy``
    dilated by ``s``, padded by ``k_eff − 1 − lo`` low and ``k_eff − 1 − hi + r`` high
    (``r`` those unused rows), correlated with ``W`` flipped spatially and with its in/out
    channels swapped (per group).

    Args:
      out_channels: ``C_out``, divisible by ``groups``.
      kernel_shape: the kernel's spatial size: an int (the same in every dim; the rank is
        then taken from the input) or a tuple, one entry per spatial dim.
      strides: the window step ``s``: an int or a tuple per spatial dim.
      padding: ``"VALID"`` (none), ``"SAME"`` (as lax: ``out = ⌈in / s⌉``, the odd row of
        padding at the high end; either in any case), an int (the same on both sides of every dim) or a
        sequence of ``(low, high)`` pairs, one per spatial dim.
      dilation: the kernel dilation ``d`` (``rhs_dilation``): an int or a tuple.
      groups: ``feature_group_count``: input and output channels are split into ``groups``
        contiguous groups, output group ``g`` seeing only input group ``g``.
      W_init: initializer for ``W`` of shape ``[*kernel, C_in / groups, C_out]``; default
        Glorot normal (``jax.nn.initializers.glorot_normal()``, as ``stax.Conv``; flax's
        default is ``lecun_normal()``).
      b_init: initializer for ``b`` of shape ``[C_out]``; default zeros.

    Shapes: ``x [batch, *spatial, C_in] -> y [batch, *spatial_out, C_out]``; params
    ``{"W", "b"}`` with ``prod(kernel)·C_in·C_out / groups + C_out`` entries; weight decay
    applies to ``W``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> conv = funnet.Conv(8, (3, 3), strides=2, padding="SAME")
    >>> out_shape, params = conv.init(jax.random.PRNGKey(0), (-1, 28, 28, 1))
    >>> out_shape, params["W"].shape, params["b"].shape
    ((-1, 14, 14, 8), (3, 3, 1, 8), (8,))
    >>> conv.apply(params, jnp.ones((2, 28, 28, 1))).shape
    (2, 14, 14, 8)
    """
    name, opts = _options("Conv", out_channels, kernel_shape, strides, padding, dilation,
                          groups)
    return _conv_layer("Conv", name, opts, _conv_forward, _conv_grads, W_init, b_init)


def ConvTranspose(
    out_channels: int,
    kernel_shape: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[tuple[int, int]] = "VALID",
    dilation: int | Sequence[int] = 1,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Transposed convolution, ``lax.conv_transpose`` (as ``flax.linen.ConvTranspose``).

    The input is dilated by the stride (``s − 1`` zeros between entries), padded by
    ``(lo, hi)``, and correlated with ``W`` at stride 1; the kernel is **not** flipped
    (``transpose_kernel=False``, flax's and stax's default), so this is the transpose of a
    ``Conv`` only up to flipping its kernel and swapping its channels. Per spatial dim::

        u          = pad(dilate(x, s), lo, hi)
        y[n, j, o] = b[o] + Σ_{a, c} u[n, j + d·a, c] · W[a, c, o]
        out        = (in − 1)·s + 1 + lo + hi − k_eff + 1

    Padding convention (lax's): an int or explicit pairs pad the *stride-dilated* input
    (this is not PyTorch's ``padding``, which removes rows from the output); ``"VALID"``
    is ``lo = k_eff − 1``, ``hi = max(k_eff, s) − 1``, so ``out = in·s + max(k_eff − s, 0)``;
    ``"SAME"`` pads ``k_eff + s − 2`` in all (``lo = k_eff − 1`` if ``s > k_eff − 1``, else
    ``⌈(k_eff + s − 2) / 2⌉``), so ``out = in·s``. Backward (by hand):
    ``db = Σ dy``; ``dW[a, c, o] = Σ_{n, j} u[n, j + d·a, c] dy[n, j, o]`` (a correlation of
    ``u`` with ``dy``); ``dx`` is a strided correlation: ``dy`` padded by
    ``k_eff − 1 − lo`` and ``k_eff − 1 − hi``, correlated at stride ``s`` with the flipped,
    channel-swapped kernel.

    Args:
      out_channels: ``C_out``.
      kernel_shape: the kernel's spatial size: an int or a tuple, one entry per spatial dim.
      strides: the input dilation ``s`` (the upsampling factor): an int or a tuple.
      padding: ``"VALID"``, ``"SAME"`` (any case), an int or a sequence of ``(low, high)``
        pairs, as ``lax.conv_transpose`` (see above).
      dilation: the kernel dilation ``d``: an int or a tuple.
      W_init: initializer for ``W`` of shape ``[*kernel, C_in, C_out]``; default Glorot
        normal (as ``stax.ConvTranspose``; flax's default is ``lecun_normal()``).
      b_init: initializer for ``b`` of shape ``[C_out]``; default zeros.

    Shapes: ``x [batch, *spatial, C_in] -> y [batch, *spatial_out, C_out]``; params
    ``{"W", "b"}`` with ``prod(kernel)·C_in·C_out + C_out`` entries; weight decay applies
    to ``W``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> up = funnet.ConvTranspose(3, (2, 2), strides=2)
    >>> out_shape, params = up.init(jax.random.PRNGKey(0), (-1, 4, 4, 8))
    >>> out_shape, params["W"].shape
    ((-1, 8, 8, 3), (2, 2, 8, 3))
    """
    name, opts = _options("ConvTranspose", out_channels, kernel_shape, strides, padding,
                          dilation, 1)
    return _conv_layer("ConvTranspose", name, opts, _transpose_forward, _transpose_grads,
                       W_init, b_init)
