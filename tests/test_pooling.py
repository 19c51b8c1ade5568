"""Pooling layers (docs/math.md §8.2): values, hand backward rules, ties, errors.

Witnesses, all written here independently of funnet:

* a NumPy loop over every window (forward, and backward with the first-maximum rule
  found by a strict ``>`` scan in row-major window order);
* ``jax.vjp`` of a plain ``lax.reduce_window`` formula (the max one is XLA's
  select-and-scatter: the gradient of a tie goes to the first maximum);
* stax's pooling layers (2-D configurations, forward values);
* central differences in float64 on inputs whose entries are ≥ 0.05 apart, so a step of
  ``h = 1e-3`` never changes a window's argmax: each layer is then linear on the stencil,
  the differences have no truncation error, and only rounding (≈ 1e-16 · |f| / h ≈ 1e-12
  for |f| ~ 10) separates them from the exact gradient.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.example_libraries import stax

import funnet

KEY = jax.random.PRNGKey(0)
# float64 sums of ≤ 27 O(1) terms in another order: a few ulp.
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
H = 1e-3
FD = {"rtol": 1e-8, "atol": 1e-8}  # rounding ≈ 1e-12 (module docstring), with margin


# --- independent references -------------------------------------------------------------------


def same_pads(spatial, k, s):
    """TensorFlow's SAME: ⌈n/s⌉ outputs, total padding split with the extra cell after."""
    pads = []
    for n, kd, sd in zip(spatial, k, s):
        total = max((math.ceil(n / sd) - 1) * sd + kd - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def np_pads(spatial, k, s, padding):
    if padding == "VALID":
        return ((0, 0),) * len(spatial)
    if padding == "SAME":
        return same_pads(spatial, k, s)
    return tuple(padding)


def np_windows(xp_spatial, k, s):
    """Every output index ``i`` with the list of padded positions of its window, row-major."""
    out = [(p - kd) // sd + 1 for p, kd, sd in zip(xp_spatial, k, s)]
    for i in np.ndindex(*out):
        yield i, [tuple(ii * sd + a for ii, sd, a in zip(i, s, off)) for off in np.ndindex(*k)]


def np_pool(x, kind, k, s, pads, count_padding=False):
    """``y`` by a loop over windows; ``kind`` in max / sum / avg."""
    x = np.asarray(x)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    real = np.pad(np.ones(x.shape[1:-1]), pads)
    windows = list(np_windows(xp.shape[1:-1], k, s))
    out = tuple(np.max([i for i, _ in windows], axis=0) + 1)
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for i, positions in windows:
        vals = np.stack([xp[(slice(None), *p, slice(None))] for p in positions])  # [K, B, C]
        if kind == "max":
            y[(slice(None), *i, slice(None))] = vals.max(axis=0)
        else:
            total = vals.sum(axis=0)
            count = len(positions) if count_padding else sum(real[p] for p in positions)
            y[(slice(None), *i, slice(None))] = total if kind == "sum" else total / count
    return y


def np_pool_backward(x, dy, kind, k, s, pads, count_padding=False):
    """``dx`` by a loop: each window sends ``dy`` to all its cells (sum, avg: divided by
    its count) or to its first maximum in row-major order (max, strict ``>`` scan)."""
    x, dy = np.asarray(x), np.asarray(dy)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf if kind == "max" else 0)
    real = np.pad(np.ones(x.shape[1:-1]), pads)
    dxp = np.zeros(xp.shape)
    for i, positions in np_windows(xp.shape[1:-1], k, s):
        count = len(positions) if count_padding else sum(real[p] for p in positions)
        for b in range(x.shape[0]):
            for c in range(x.shape[-1]):
                g = dy[(b, *i, c)]
                if kind == "max":
                    best = positions[0]
                    for p in positions[1:]:
                        if xp[(b, *p, c)] > xp[(b, *best, c)]:
                            best = p
                    dxp[(b, *best, c)] += g
                else:
                    for p in positions:
                        dxp[(b, *p, c)] += g if kind == "sum" else g / count
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1]))
    return dxp[(slice(None), *crop, slice(None))]


def lax_pool(x, kind, k, s, pads, count_padding=False):
    """The plain formula with ``lax.reduce_window`` (stax's way of counting for avg)."""
    dims, strides, padding = (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0))
    if kind == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, padding)
    if kind == "sum":
        return total
    if count_padding:
        return total / math.prod(k)
    return total / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, strides, padding)


# --- configurations ----------------------------------------------------------------------------

#: (batch, spatial, C, window, strides, padding): 1-D/2-D/3-D, strides 1 and 2 (and = window),
#: every padding mode, odd and even sizes, batch 1.
CONFIGS = [
    (2, (7,), 2, 3, None, "VALID"),  # stride = window, one cell left over
    (1, (6,), 1, 2, 1, "SAME"),  # even, batch 1, overlapping
    (2, (5,), 1, 3, 2, ((1, 2),)),  # explicit padding, overlapping
    (2, (4, 4), 2, 2, None, "VALID"),
    (1, (5, 5), 1, (3, 3), 1, "SAME"),
    (2, (5, 4), 1, (3, 2), (2, 1), ((1, 1), (0, 1))),
    (1, (6, 5), 2, (2, 3), 2, "SAME"),
    (1, (3, 3), 2, 3, None, "VALID"),  # one window: the whole input
    (1, (4, 4, 4), 1, 2, None, "VALID"),
    (1, (3, 4, 5), 1, (2, 2, 2), 1, "SAME"),
    (2, (3, 3, 3), 1, (2, 3, 2), (1, 2, 1), ((1, 0), (1, 1), (0, 1))),
]
KINDS = [("max", False), ("sum", False), ("avg", False), ("avg", True)]


def _id(config) -> str:
    b, spatial, _, k, s, p = config
    return f"{len(spatial)}d-{'x'.join(map(str, spatial))}-k{k}-s{s}-{p}-b{b}"


def make_layer(kind, count_padding, k, s, p):
    if kind == "max":
        return funnet.MaxPool(k, strides=s, padding=p)
    if kind == "sum":
        return funnet.SumPool(k, strides=s, padding=p)
    return funnet.AvgPool(k, strides=s, padding=p, count_padding=count_padding)


def geometry(config):
    _, spatial, _, k, s, p = config
    d = len(spatial)
    kt = k if isinstance(k, tuple) else (k,) * d
    st = kt if s is None else (s if isinstance(s, tuple) else (s,) * d)
    return kt, st, np_pads(spatial, kt, st, p)


def distinct_input(shape, seed=0):
    """Entries a random permutation of 0.1·(0, 1, …) − centre: all ≥ 0.1 apart, both signs."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    return jnp.asarray((rng.permutation(n) - n / 2).reshape(shape) * 0.1 + 0.013)


@functools.cache
def computed(config) -> dict:
    """For every kind at ``config``: y, hand dx, vjp witness dx, central differences (one jit)."""
    b, spatial, c, k, s, p = config
    kt, st, pads = geometry(config)
    x = distinct_input((b, *spatial, c))
    layers = {kc: make_layer(*kc, k, s, p) for kc in KINDS}

    def run(x):
        out = {}
        for (kind, cp), layer in layers.items():
            y, res = layer.forward((), x)
            dy = jnp.cos(jnp.arange(y.size, dtype=x.dtype).reshape(y.shape))  # generic
            ref_y, pull = jax.vjp(lambda v, kind=kind, cp=cp: lax_pool(v, kind, kt, st, pads, cp),
                                  x)

            def f(v, layer=layer, dy=dy):
                return jnp.vdot(layer.apply((), v), dy)

            basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
            fd = jax.vmap(lambda e, f=f: (f(x + H * e) - f(x - H * e)) / (2 * H))(basis)
            out[kind, cp] = {"y": y, "dy": dy, "hand": layer.backward((), res, dy)[1],
                             "vjp": pull(dy)[0], "ref_y": ref_y, "fd": fd.reshape(x.shape)}
        return out

    return {"x": x, **jax.jit(run)(x)}


CASES = [pytest.param(cfg, kind, cp, id=f"{_id(cfg)}-{kind}{'-countpad' if cp else ''}")
         for cfg in CONFIGS for kind, cp in KINDS]


@pytest.mark.parametrize("config, kind, count_padding", CASES)
def test_values_against_numpy_loop(config, kind, count_padding):
    kt, st, pads = geometry(config)
    r = computed(config)
    got = r[kind, count_padding]
    expected = np_pool(r["x"], kind, kt, st, pads, count_padding)
    assert got["y"].shape == expected.shape
    np.testing.assert_allclose(got["y"], expected, **TIGHT)
    np.testing.assert_allclose(got["ref_y"], expected, **TIGHT)  # the witness formula agrees
    layer = make_layer(kind, count_padding, *config[3:])
    assert layer.init(KEY, (-1, *config[1], config[2]))[0] == (-1, *expected.shape[1:])


@pytest.mark.parametrize("config, kind, count_padding", CASES)
def test_hand_backward_against_vjp_numpy_loop_and_central_differences(config, kind,
                                                                      count_padding):
    kt, st, pads = geometry(config)
    r = computed(config)
    got = r[kind, count_padding]
    assert got["hand"].shape == r["x"].shape and got["hand"].dtype == r["x"].dtype
    np.testing.assert_allclose(got["hand"], got["vjp"], **TIGHT)
    loop = np_pool_backward(r["x"], got["dy"], kind, kt, st, pads, count_padding)
    np.testing.assert_allclose(got["hand"], loop, **TIGHT)
    np.testing.assert_allclose(got["hand"], got["fd"], **FD)
    assert np.any(np.asarray(got["hand"]) != 0)


@pytest.mark.parametrize("config", [c for c in CONFIGS if len(c[1]) == 2
                                    and isinstance(c[5], str)], ids=_id)  # stax: modes only
def test_2d_forward_matches_stax(config):
    b, spatial, c, _, _, p = config
    kt, st, _ = geometry(config)
    r = computed(config)
    for kind, stax_layer in (("max", stax.MaxPool), ("sum", stax.SumPool),
                             ("avg", stax.AvgPool)):  # stax's AvgPool counts real cells only
        init, apply = stax_layer(kt, st, p)
        assert init(KEY, (b, *spatial, c))[0] == r[kind, False]["y"].shape
        np.testing.assert_allclose(r[kind, False]["y"], apply((), r["x"]), **TIGHT)


def test_same_padding_is_lax_padtype_to_pads():
    for spatial, k, s in [((7,), (3,), (2,)), ((6, 5), (2, 3), (2, 2)), ((5, 4), (4, 1), (3, 1))]:
        assert same_pads(spatial, k, s) == tuple(lax.padtype_to_pads(spatial, k, s, "SAME"))


def test_strides_default_to_the_window():
    x = distinct_input((1, 6, 4, 1))
    np.testing.assert_array_equal(funnet.MaxPool(2).apply((), x),
                                  funnet.MaxPool(2, strides=2).apply((), x))
    assert funnet.MaxPool((2, 2)).init(KEY, (-1, 6, 4, 1))[0] == (-1, 3, 2, 1)
    assert funnet.AvgPool((3, 1)).init(KEY, (-1, 6, 4, 1))[0] == (-1, 2, 4, 1)


def test_names():
    assert funnet.MaxPool(2).name == "MaxPool(2)"
    assert (funnet.SumPool((2, 3), strides=1, padding="same").name
            == "SumPool((2, 3), strides=1, padding='SAME')")
    assert (funnet.AvgPool(3, padding=((1, 1),), count_padding=True).name
            == "AvgPool(3, padding=((1, 1),), count_padding=True)")
    # one name per computation: strides equal to the window per axis are the default
    assert funnet.MaxPool((2, 2), strides=2).name == "MaxPool((2, 2))"
    assert funnet.MaxPool([2, 2], strides=[1, 1]).name == "MaxPool((2, 2), strides=1)"
    assert funnet.MaxPool((2, 3), strides=2).name == "MaxPool((2, 3), strides=2)"
    # tuple strides beside an int window fix the rank: another layer, another name
    assert funnet.MaxPool(2, strides=(2, 2)).name == "MaxPool(2, strides=(2, 2))"
    assert funnet.MaxPool(2).name != funnet.MaxPool((2, 2)).name
    # strides spelled out at their default (the window) compute the same layer: one name, so
    # one model signature (funnet.signature compares names); found by the mutation review
    assert funnet.MaxPool(2, strides=2).name == "MaxPool(2)"
    assert funnet.AvgPool((2, 3), strides=(2, 3)).name == "AvgPool((2, 3))"
    assert funnet.SumPool(2, strides=(2, 2)).name == "SumPool(2, strides=(2, 2))"  # fixes rank


# --- the AvgPool count convention ---------------------------------------------------------------


def test_avg_pool_count_padding_convention():
    x = jnp.ones((1, 4, 4, 1))
    real = funnet.AvgPool(3, strides=1, padding="SAME").apply((), x)
    np.testing.assert_array_equal(real, np.ones((1, 4, 4, 1)))  # a constant stays constant
    full = funnet.AvgPool(3, strides=1, padding="SAME", count_padding=True).apply((), x)
    np.testing.assert_allclose(full[0, :, :, 0], np.outer([2, 3, 3, 2], [2, 3, 3, 2]) / 9,
                               rtol=1e-15)  # corner 4/9, edge 6/9, inside 1
    valid = [funnet.AvgPool(2, count_padding=cp).apply((), distinct_input((1, 4, 4, 1)))
             for cp in (False, True)]
    np.testing.assert_array_equal(*valid)  # no padding: the conventions agree


# --- MaxPool ties: the first maximum, row-major ---------------------------------------------------


def first_max_witness(x, k, s, pads):
    """``dx`` for ``dy = 1`` by jax.vjp of lax.reduce_window max (XLA's select-and-scatter)."""
    def dx(x):
        y, pull = jax.vjp(lambda v: lax_pool(v, "max", k, s, pads), x)
        return pull(jnp.ones_like(y))[0]

    return jax.jit(dx)(x)


def split_witness(x, k, s, pads):
    """``dx`` for ``dy = 1`` when each window's max is ``jnp.max`` (ties split equally)."""
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)

    def f(xp):
        total = 0.0
        for _, positions in np_windows(xp.shape[1:-1], k, s):
            window = jnp.stack([xp[(slice(None), *p, slice(None))] for p in positions])
            total = total + jnp.sum(jnp.max(window, axis=0))
        return total

    g = jax.jit(jax.grad(f))(xp)
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1]))
    return g[(slice(None), *crop, slice(None))]


def np_split_backward(x, dy, k, s, pads):
    """``dx`` by a loop when each window's ``dy`` is split equally among its maxima
    (what ``jnp.max`` over a window does): the convention funnet does not take."""
    x = np.asarray(x)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
    dxp = np.zeros(xp.shape)
    for i, positions in np_windows(xp.shape[1:-1], k, s):
        for b, c in np.ndindex(x.shape[0], x.shape[-1]):
            vals = [xp[(b, *p, c)] for p in positions]
            winners = [p for p, v in zip(positions, vals) if v == max(vals)]
            for p in winners:
                dxp[(b, *p, c)] += dy[(b, *i, c)] / len(winners)
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1]))
    return dxp[(slice(None), *crop, slice(None))]


def hand_dx(layer, x, dy=None):
    def dx(x, dy):
        y, res = layer.forward((), x)
        return layer.backward((), res, jnp.ones_like(y) if dy is None else dy)[1]

    return jax.jit(dx)(x, dy)


def test_two_equal_maxima_in_a_window_1d():
    x = jnp.asarray([1.0, 5.0, 5.0, 2.0, 5.0, 0.0]).reshape(1, 6, 1)
    dx = hand_dx(funnet.MaxPool(3, strides=1), x)
    # windows [1 5 5] [5 5 2] [5 2 5] [2 5 0]: first maxima at 1, 1, 2, 4
    np.testing.assert_array_equal(dx.ravel(), [0, 2, 1, 0, 1, 0])
    np.testing.assert_array_equal(dx, first_max_witness(x, (3,), (1,), ((0, 0),)))
    np.testing.assert_array_equal(
        dx, np_pool_backward(x, np.ones((1, 4, 1)), "max", (3,), (1,), ((0, 0),)))


def test_two_equal_maxima_in_a_window_2d_row_major():
    x = jnp.asarray([[1.0, 7.0], [7.0, 0.0]]).reshape(1, 2, 2, 1)
    dx = hand_dx(funnet.MaxPool(2), x)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 1], [0, 0]])  # (0, 1) before (1, 0)
    np.testing.assert_array_equal(dx, first_max_witness(x, (2, 2), (2, 2), ((0, 0),) * 2))
    split = split_witness(x, (2, 2), (2, 2), ((0, 0),) * 2)  # what jnp.max does instead
    np.testing.assert_allclose(split[0, :, :, 0], [[0, 0.5], [0.5, 0]])
    np.testing.assert_allclose(split, np_split_backward(x, np.ones((1, 1, 1, 1)), (2, 2),
                                                        (2, 2), ((0, 0),) * 2))


@pytest.mark.parametrize("spatial, k, s, padding", [
    ((4, 4), (2, 2), (1, 1), "VALID"),
    ((4, 4), (2, 2), (2, 2), "VALID"),
    ((5, 5), (3, 3), (2, 2), "SAME"),
    ((5,), (3,), (1,), ((2, 1),)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), "SAME"),
], ids=str)
def test_constant_input_sends_each_window_to_its_first_cell(spatial, k, s, padding):
    x = jnp.full((1, *spatial, 1), -2.0)  # negative: a 0 in the padding would win
    layer = funnet.MaxPool(k, strides=s, padding=padding)
    pads = np_pads(spatial, k, s, padding)
    np.testing.assert_array_equal(layer.apply((), x), np.full(layer.apply((), x).shape, -2.0))
    dx = hand_dx(layer, x)
    np.testing.assert_array_equal(dx, first_max_witness(x, k, s, pads))
    y = layer.apply((), x)
    np.testing.assert_array_equal(dx, np_pool_backward(x, np.ones(y.shape), "max", k, s, pads))
    assert float(dx.sum()) == y.size  # every window's gradient lands on a real cell
    assert not np.allclose(dx, np_split_backward(x, np.ones(y.shape), k, s, pads))


@pytest.mark.parametrize("spatial, k, s, padding", [
    ((6, 6), (3, 3), (1, 1), "VALID"),
    ((6, 5), (3, 2), (2, 1), "SAME"),
    ((7,), (4,), (1,), ((3, 3),)),
    ((3, 4, 3), (2, 3, 2), (1, 1, 1), ((1, 0), (1, 1), (0, 1))),
], ids=str)
def test_many_ties_in_overlapping_windows(spatial, k, s, padding):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(-1, 2, (2, *spatial, 2)).astype(np.float64))  # {-1, 0, 1}
    dy = jnp.asarray(rng.standard_normal(funnet.MaxPool(k, strides=s, padding=padding)
                                         .init(KEY, x.shape)[0]))
    pads = np_pads(spatial, k, s, padding)
    layer = funnet.MaxPool(k, strides=s, padding=padding)
    dx = hand_dx(layer, x, dy)
    _, pull = jax.vjp(lambda v: lax_pool(v, "max", k, s, pads), x)
    np.testing.assert_allclose(dx, pull(dy)[0], **TIGHT)
    np.testing.assert_allclose(dx, np_pool_backward(x, dy, "max", k, s, pads), **TIGHT)


def test_max_pool_padding_never_wins():
    x = -1.0 - distinct_input((1, 3, 3, 1)) ** 2  # every entry < -1
    layer = funnet.MaxPool(3, strides=1, padding="SAME")
    y = layer.apply((), x)
    np.testing.assert_allclose(y, np_pool(x, "max", (3, 3), (1, 1), ((1, 1), (1, 1))), **TIGHT)
    assert float(y.max()) < -1  # zero padding would have given 0 at every output
    dy = jnp.ones_like(y)
    np.testing.assert_allclose(hand_dx(layer, x, dy).sum(), dy.sum(), rtol=1e-15)


def test_max_pool_of_integers_pads_with_the_smallest_integer():
    # integer inputs have no -inf: the padding is iinfo.min, so it never wins either (a 0
    # would win every border window of a negative input); found by the mutation review
    x = jnp.asarray(-1 - np.arange(12).reshape(1, 3, 4, 1) % 5, jnp.int32)  # every entry < 0
    y = funnet.MaxPool(3, strides=1, padding="SAME").apply((), x)
    assert y.dtype == jnp.int32
    expected = np_pool(np.asarray(x, np.float64), "max", (3, 3), (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(y, expected)
    assert int(y.max()) < 0


# --- GlobalAvgPool ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 3), (1, 3, 4, 2), (2, 2, 3, 2, 1)], ids=str)
def test_global_avg_pool(shape):
    layer = funnet.GlobalAvgPool
    x = distinct_input(shape)
    assert layer.init(KEY, (-1, *shape[1:]))[0] == (-1, shape[-1])
    y, res = layer.forward((), x)
    xs = np.asarray(x)
    expected = np.array([[np.mean([xs[(n, *p, c)] for p in np.ndindex(*shape[1:-1])])
                          for c in range(shape[-1])] for n in range(shape[0])])
    np.testing.assert_allclose(y, expected, **TIGHT)
    dy = jnp.cos(jnp.arange(y.size, dtype=x.dtype)).reshape(y.shape)
    dx = layer.backward((), res, dy)[1]
    _, pull = jax.vjp(lambda v: jnp.mean(v, axis=tuple(range(1, v.ndim - 1))), x)
    np.testing.assert_allclose(dx, pull(dy)[0], **TIGHT)
    basis = np.eye(x.size).reshape((x.size, *shape))
    f = jax.jit(jax.vmap(lambda v: jnp.vdot(layer.apply((), v), dy)))
    fd = (f(x[None] + H * basis) - f(x[None] - H * basis)) / (2 * H)
    np.testing.assert_allclose(dx, fd.reshape(shape), **FD)


def test_pooling_layers_in_a_network():
    # [2, 5, 4, 2] -> MaxPool [2, 4, 3, 2] -> AvgPool [2, 2, 2, 2] -> SumPool [2, 1, 1, 2]
    # -> GlobalAvgPool [2, 2] -> Dense [2, 3]: the hand δ-recursion through every pooling
    # rule against jax.vjp of the same network written with lax.reduce_window
    net = funnet.serial(funnet.MaxPool(2, strides=1), funnet.AvgPool(2, padding="SAME"),
                        funnet.SumPool(2), funnet.GlobalAvgPool, funnet.Dense(3))
    _, params = net.init(KEY, (-1, 5, 4, 2))
    x = distinct_input((2, 5, 4, 2))
    dy = jnp.cos(jnp.arange(6.0)).reshape(2, 3)

    def ref(p, v):
        v = lax_pool(v, "max", (2, 2), (1, 1), ((0, 0), (0, 0)))
        v = lax_pool(v, "avg", (2, 2), (2, 2), ((0, 0), (0, 1)))  # SAME on (4, 3)
        v = lax_pool(v, "sum", (2, 2), (2, 2), ((0, 0), (0, 0)))
        return jnp.mean(v, axis=(1, 2)) @ p[4]["W"] + p[4]["b"][None, :]

    def both(p, v):
        return funnet.backprop.backward(net, p, v, dy), jax.vjp(ref, p, v)[1](dy)

    (grads, dx), (ref_grads, ref_dx) = jax.jit(both)(params, x)
    np.testing.assert_allclose(dx, ref_dx, **TIGHT)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(got, want, **TIGHT)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [funnet.MaxPool(2), funnet.AvgPool(2), funnet.SumPool(2),
                                   funnet.GlobalAvgPool], ids=lambda v: v.name)
def test_backward_refuses_a_dy_of_the_wrong_shape(layer):
    # these failed with raw lax/broadcast errors (or not at all) on a wrong-shaped dy
    y, res = layer.forward((), jnp.ones((2, 6, 6, 2)))
    for bad in ((*y.shape[:-1], 3), (3, *y.shape[1:]), y.shape[1:]):
        with pytest.raises(funnet.LayerError) as info:
            layer.backward((), res, jnp.ones(bad))
        for fragment in (layer.name, "backward", f"dy of shape {bad}", str(y.shape)):
            assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize("layer", [funnet.MaxPool(2), funnet.AvgPool(2), funnet.SumPool(2),
                                   funnet.GlobalAvgPool], ids=lambda v: v.name)
def test_an_integer_input_gets_no_gradient(layer):
    # dx came back cast to int32 (AvgPool's dy/4 truncated); integers have none: dx = None
    xi = jnp.asarray(np.arange(32).reshape(2, 4, 2, 2) % 5, jnp.int32)
    y, res = layer.forward((), xi)
    assert layer.backward((), res, jnp.ones_like(y))[1] is None

X2D = jnp.ones((1, 4, 4, 1))

BAD_CALLS = [
    # (id, call, fragments): raised while tracing, the same under jit
    ("window larger than the input", lambda: funnet.MaxPool(5).apply((), X2D),
     ["MaxPool(5)", "(5, 5)", "larger", "(1, 4, 4, 1)", "(4, 4)"]),
    ("window larger than the padded input",
     lambda: funnet.AvgPool(3, padding=((1, 0),)).apply((), jnp.ones((2, 1, 3))),
     ["AvgPool(3, padding=((1, 0),))", "(3,)", "larger", "(2, 1, 3)", "((1, 0),)", "(2,)"]),
    ("tuple window, wrong spatial rank", lambda: funnet.MaxPool((2, 2)).apply((), jnp.ones((1, 4, 1))),
     ["MaxPool((2, 2))", "(1, 4, 1)", "1 spatial axes", "needs 2 spatial axes"]),
    ("strides fix the rank", lambda: funnet.SumPool(2, strides=(1, 1, 1)).apply((), X2D),
     ["SumPool(2, strides=(1, 1, 1))", "(1, 4, 4, 1)", "2 spatial axes", "needs 3"]),
    ("no spatial axis", lambda: funnet.MaxPool(2).apply((), jnp.ones((4, 3))),
     ["MaxPool(2)", "(4, 3)", "0 spatial axes", "at least 1 spatial axis"]),
    ("GlobalAvgPool without a spatial axis",
     lambda: funnet.GlobalAvgPool.apply((), jnp.ones((4, 3))),
     ["GlobalAvgPool", "(4, 3)", "rank 2", "≥ 3"]),
]


@pytest.mark.parametrize("call, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD_CALLS])
def test_bad_input_raises_clear_error(call, fragments):
    with pytest.raises(funnet.LayerError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(funnet.LayerError) as jitted:
        jax.jit(lambda: call())()
    assert str(jitted.value) == str(info.value)


BAD_INIT = [
    (funnet.MaxPool(3), (-1, 2, 5, 1), ["MaxPool(3)", "(3, 3)", "larger", "(2, 5)"]),
    (funnet.MaxPool((2, 2)), (-1, 4, 4, 4, 1), ["MaxPool((2, 2))", "3 spatial axes", "needs 2"]),
    (funnet.AvgPool(2), (-1, 4, -1, 1), ["AvgPool(2)", "(-1, 4, -1, 1)", "negative"]),
    (funnet.GlobalAvgPool, (-1, 3), ["GlobalAvgPool", "(-1, 3)", "rank 2"]),
]


@pytest.mark.parametrize("layer, shape, fragments", BAD_INIT, ids=lambda v: str(v))
def test_bad_input_shape_at_init(layer, shape, fragments):
    with pytest.raises(funnet.LayerError) as info:
        layer.init(KEY, shape)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


BAD_OPTIONS = [
    (lambda: funnet.MaxPool(0), ["MaxPool: window", "int ≥ 1", "0"]),
    (lambda: funnet.MaxPool((2, 0)), ["MaxPool: window", "int ≥ 1", "0"]),
    (lambda: funnet.MaxPool(2.5), ["MaxPool: window", "2.5"]),
    (lambda: funnet.SumPool(()), ["SumPool: window", "non-empty"]),
    (lambda: funnet.AvgPool(2, strides=0), ["AvgPool: strides", "int ≥ 1", "0"]),
    (lambda: funnet.AvgPool(2, strides=(1, -1)), ["AvgPool: strides", "-1"]),
    (lambda: funnet.MaxPool(2, padding="FULL"), ["MaxPool: padding", "'FULL'", "'SAME'"]),
    (lambda: funnet.MaxPool(2, padding=3), ["MaxPool: padding", "(lo, hi) pairs", "3"]),
    (lambda: funnet.MaxPool(2, padding=((1,),)), ["MaxPool: padding", "(lo, hi) pairs"]),
    (lambda: funnet.MaxPool(2, padding=((-1, 0),)), ["MaxPool: padding", "≥ 0", "-1"]),
    (lambda: funnet.MaxPool(2, padding=((2, 0),)),
     ["MaxPool(2, padding=((2, 0),))", "smaller than the window", "only padding"]),
    (lambda: funnet.MaxPool((3, 2), padding=((1, 1), (0, 2))),
     ["MaxPool((3, 2)", "smaller than the window"]),
    (lambda: funnet.MaxPool((2, 2), strides=(1, 1, 1)),
     ["MaxPool((2, 2), strides=(1, 1, 1))", "window (2, 2) has 2", "strides (1, 1, 1) has 3"]),
    (lambda: funnet.SumPool(2, padding=((0, 0),), strides=(1, 1)),
     ["SumPool", "strides (1, 1) has 2", "padding ((0, 0),) has 1"]),
    (lambda: funnet.AvgPool(2, count_padding="yes"), ["AvgPool: count_padding", "'yes'"]),
]


@pytest.mark.parametrize("call, fragments", BAD_OPTIONS, ids=lambda v: None if callable(v) else str(v))
def test_bad_options_at_construction(call, fragments):
    with pytest.raises(funnet.LayerError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_params_must_be_empty():
    with pytest.raises(funnet.ParamsError, match="MaxPool"):
        funnet.MaxPool(2).apply({"W": jnp.ones(2)}, X2D)

