"""``Conv`` and ``ConvTranspose`` (docs/math.md §8.1) against references written here.

Three witnesses, none of which uses funnet or a lax convolution:

* ``np_conv``: a NumPy loop over output positions, in float64 (the forward values and,
  by central differences, the gradients);
* ``selection_conv``: the same sum as linear algebra in ``jax.numpy``, through a 0/1
  tensor ``T[p, q, t]`` (output position ``p`` reads input entry ``t`` at kernel offset
  ``q``; built by a NumPy loop) and two einsums; ``jax.vjp`` of it is more einsums,
  sharing nothing with the hand rules' transposed convolutions;
* for ``"SAME"``/``"VALID"``, ``lax.conv_general_dilated`` / ``lax.conv_transpose`` called
  with the padding *string*, so the layer's own padding arithmetic is checked against lax's.

Every case runs eagerly on tiny shapes (a few hundred entries), so each op compiles once
per shape and the file stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close
from jax import lax

import funnet

KEY = jax.random.PRNGKey(0)
# float64, sums of ≤ 100 products of O(1) numbers in another order: a few ulp of O(10).
TIGHT = {"rtol": 1e-11, "atol": 1e-11}
SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


# --- the references ------------------------------------------------------------------------


def _per_dim(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def ref_pads(kind: str, padding, spatial, kernel, strides, dilation) -> tuple:
    """Explicit ``(lo, hi)`` pads: lax's padtype_to_pads for a Conv's string padding; for a
    ConvTranspose's, the docstring's formulas (checked against lax.conv_transpose below)."""
    n = len(spatial)
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if not isinstance(padding, str):
        return tuple(padding)
    if kind == "Conv":
        return tuple(lax.padtype_to_pads(spatial, k_eff, strides, padding))
    if padding == "VALID":
        return tuple((k - 1, max(k, s) - 1) for k, s in zip(k_eff, strides))
    pads = []
    for k, s in zip(k_eff, strides):
        lo = k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)
        pads.append((lo, k + s - 2 - lo))
    return tuple(pads)


def dilate(x, strides):
    """``s − 1`` zeros between neighbouring entries along every spatial dim."""
    shape = (x.shape[0], *((i - 1) * s + 1 for i, s in zip(x.shape[1:-1], strides)), x.shape[-1])
    u = np.zeros(shape, x.dtype)
    u[(slice(None), *(slice(None, None, s) for s in strides), slice(None))] = x
    return u


def np_conv(x, W, b, strides, pads, dilation, groups):
    """``y[n, i, o] = b[o] + Σ_{a, c} xp[n, s·i + d·a, c] W[a, c, o]``: a loop over ``i``.

    ``W`` and ``b`` may carry the same leading axes ``V`` (variants of the params, for the
    central differences), giving ``y [*V, N, *out, O]``.
    """
    x, W, b = (np.asarray(v, np.float64) for v in (x, W, b))
    n, lead = x.ndim - 2, b.shape[:-1]
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    kernel, c_g, out_c = W.shape[len(lead):len(lead) + n], W.shape[-2], W.shape[-1]
    o_g = out_c // groups
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    out = [(p - k) // s + 1 for p, k, s in zip(xp.shape[1:-1], k_eff, strides)]
    y = np.empty((*lead, x.shape[0], *out, out_c))
    for i in np.ndindex(*out):
        window = xp[(slice(None), *(slice(s * j, s * j + k, d) for j, s, k, d
                                    in zip(i, strides, k_eff, dilation)))]  # [N, *K, C]
        for g in range(groups):
            patch = window[..., g * c_g:(g + 1) * c_g].reshape(x.shape[0], -1)
            w = W[..., g * o_g:(g + 1) * o_g].reshape(*lead, -1, o_g)
            y[(Ellipsis, *i, slice(g * o_g, (g + 1) * o_g))] = patch @ w
    return y + b.reshape(*lead, *(1,) * (n + 1), out_c)


def np_conv_transpose(x, W, b, strides, pads, dilation):
    """Correlate ``pad(dilate(x, s), lo, hi)`` with ``W`` at stride 1 (kernel not flipped)."""
    n = x.ndim - 2
    return np_conv(dilate(np.asarray(x, np.float64), strides), W, b, (1,) * n, pads,
                   dilation, 1)


def selection(spatial, kernel, strides, dilation, pads, lhs_dilation) -> tuple:
    """``T[p, q, t] = 1`` where output position ``p`` reads input entry ``t`` at kernel
    offset ``q``; 0 where it reads padding (or, with ``lhs_dilation``, an inserted zero).

    Built by a loop over output positions and kernel offsets; returns ``(T, out)``.
    """
    extent = [(i - 1) * u + 1 for i, u in zip(spatial, lhs_dilation)]
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    out = [(e + lo + hi - k) // s + 1
           for e, (lo, hi), k, s in zip(extent, pads, k_eff, strides)]
    T = np.zeros((math.prod(out), math.prod(kernel), math.prod(spatial)))
    for p, i in enumerate(np.ndindex(*out)):
        for q, a in enumerate(np.ndindex(*kernel)):
            # the position read in the padded (dilated) input, back in the input's own
            source = [(s * j + d * k - lo, u) for j, k, s, d, (lo, _), u
                      in zip(i, a, strides, dilation, pads, lhs_dilation)]
            if all(t % u == 0 and 0 <= t // u < size
                   for (t, u), size in zip(source, spatial)):
                T[p, q, np.ravel_multi_index([t // u for t, u in source], spatial)] = 1.0
    return T, tuple(out)


def selection_conv(x, W, b, T, out, groups):
    """``y[n, p, o] = b[o] + Σ_{q, t, c} T[p, q, t] x[n, t, c] W[q, c, o]`` per group (jnp):
    linear algebra only, so ``jax.vjp`` of it shares nothing with a convolution."""
    n, c_in, out_c = x.ndim - 2, x.shape[-1], W.shape[-1]
    xs = x.reshape(x.shape[0], -1, groups, c_in // groups)
    cols = jnp.einsum("pqt,ntgc->npqgc", T, xs)
    w = W.reshape(T.shape[1], c_in // groups, groups, out_c // groups)
    y = jnp.einsum("npqgc,qcgo->npgo", cols, w).reshape(x.shape[0], *out, out_c)
    return y + b.reshape((1,) * (n + 1) + (out_c,))


# --- the cases -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "Conv" or "ConvTranspose"
    x_shape: tuple[int, ...]
    out_channels: int
    kernel: Any
    options: dict

    def __repr__(self) -> str:
        return self.id

    @property
    def n(self) -> int:
        return len(self.x_shape) - 2

    def layer(self) -> funnet.Layer:
        return getattr(funnet, self.kind)(self.out_channels, self.kernel, **self.options)

    def resolved(self) -> dict:
        n, o = self.n, self.options
        kernel = _per_dim(self.kernel, n)
        strides, dilation = _per_dim(o.get("strides", 1), n), _per_dim(o.get("dilation", 1), n)
        pads = ref_pads(self.kind, o.get("padding", "VALID"), self.x_shape[1:-1], kernel,
                        strides, dilation)
        return {"strides": strides, "dilation": dilation, "pads": pads,
                "groups": o.get("groups", 1)}

    def np_ref(self, p, x):
        r = self.resolved()
        if self.kind == "Conv":
            return np_conv(x, p["W"], p["b"], r["strides"], r["pads"], r["dilation"], r["groups"])
        return np_conv_transpose(x, p["W"], p["b"], r["strides"], r["pads"], r["dilation"])

    def selection(self) -> tuple:
        r = self.resolved()
        kernel, ones = _per_dim(self.kernel, self.n), (1,) * self.n
        if self.kind == "Conv":
            return selection(self.x_shape[1:-1], kernel, r["strides"], r["dilation"],
                             r["pads"], ones)
        return selection(self.x_shape[1:-1], kernel, ones, r["dilation"], r["pads"],
                         r["strides"])

    def jnp_ref(self, p, x, T, out):
        return selection_conv(x, p["W"], p["b"], T, out, self.resolved()["groups"])


def _conv(id, x_shape, out, kernel, **options):
    return Case(id, "Conv", x_shape, out, kernel, options)


def _transpose(id, x_shape, out, kernel, **options):
    return Case(id, "ConvTranspose", x_shape, out, kernel, options)


X2 = (2, 5, 6, 3)  # odd and even spatial sizes
X2G = (2, 5, 6, 4)
CASES = [
    _conv("2d valid s1", X2, 4, (3, 3)),
    _conv("2d valid s2 (a row unused)", X2, 4, (3, 3), strides=2),
    _conv("2d same s1", X2, 4, 3, padding="SAME"),
    _conv("2d same s2", X2, 2, (3, 3), strides=2, padding="SAME"),
    _conv("2d same even kernel", X2, 2, (2, 4), padding="SAME"),
    _conv("2d int padding s2", X2, 2, (3, 2), strides=2, padding=1),
    _conv("2d explicit asymmetric", X2, 2, (3, 2), strides=(2, 1), padding=((2, 0), (1, 3))),
    _conv("2d explicit > kernel, s3", X2, 2, (3, 2), strides=3, padding=((3, 4), (5, 0))),
    _conv("2d dilation 2", X2, 2, (3, 2), dilation=2),
    _conv("2d dilation 2 same s2", X2, 2, 3, strides=2, padding="SAME", dilation=(2, 1)),
    _conv("2d groups 2", X2G, 6, (3, 2), groups=2),
    _conv("2d groups 2 s2 d2 same", X2G, 4, (2, 3), strides=2, padding="SAME", dilation=2,
          groups=2),
    _conv("2d groups 4 (depthwise)", X2G, 4, 3, padding=1, groups=4),
    _conv("2d batch 1", (1, 7, 4, 2), 3, (3, 2), strides=2),
    _conv("1d same s2", (2, 7, 3), 2, 3, strides=2, padding="SAME"),
    _conv("1d groups dilation", (1, 8, 4), 2, (2,), padding=((1, 2),), dilation=3, groups=2),
    _conv("3d valid", (1, 3, 4, 5, 2), 2, (2, 3, 2), strides=(1, 1, 2)),
    _conv("3d same s2 groups", (2, 3, 4, 3, 2), 2, 2, strides=2, padding="SAME", groups=2),
    _transpose("T 2d valid s1", X2, 2, (3, 2)),
    _transpose("T 2d valid s2", X2, 2, (3, 3), strides=2),
    _transpose("T 2d same s2", X2, 2, (3, 2), strides=2, padding="SAME"),
    _transpose("T 2d same s1 even kernel", X2, 2, (2, 4), padding="SAME"),
    _transpose("T 2d int padding", X2, 2, 3, strides=2, padding=1),
    _transpose("T 2d explicit asymmetric", X2, 2, (3, 2), strides=(2, 1),
               padding=((2, 0), (1, 3))),
    _transpose("T 2d explicit > kernel", X2, 2, (3, 2), strides=2, padding=((5, 0), (0, 4))),
    _transpose("T 2d dilation 2 s2", X2, 2, (3, 2), strides=2, dilation=2),
    _transpose("T 2d stride > kernel", X2, 2, 2, strides=3),
    _transpose("T 2d batch 1", (1, 4, 3, 2), 3, (2, 2), strides=2, padding="SAME"),
    _transpose("T 1d same s2", (2, 5, 3), 2, 3, strides=2, padding="SAME"),
    _transpose("T 3d valid s2", (1, 2, 3, 2, 2), 2, 2, strides=2),
]
PARAMS = [pytest.param(c, id=c.id) for c in CASES]
CASES_BY_ID = {c.id: c for c in CASES}


def init_shapes(layer: funnet.Layer, input_shape) -> tuple[Any, dict]:
    """``(output shape, params as ShapeDtypeStructs)`` from init, traced: nothing is drawn
    or compiled."""
    box = {}

    def init(key):
        box["out"], p = layer.init(key, input_shape)
        return p

    shapes = jax.eval_shape(init, KEY)
    return box["out"], shapes


def _params(case: Case, seed: int = 0) -> tuple[Any, dict]:
    """``(output shape from init, random float64 params of init's shapes)``."""
    out, shapes = init_shapes(case.layer(), (-1, *case.x_shape[1:]))
    rng = np.random.default_rng(seed)
    return out, {k: jnp.asarray(rng.standard_normal(s.shape)) for k, s in shapes.items()}


@functools.cache
def problem(case_id: str) -> dict:
    """The inputs of a case: params, x and a cotangent dy shaped as the NumPy output."""
    case = CASES_BY_ID[case_id]
    out_shape, params = _params(case)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(case.x_shape))
    expected = case.np_ref(params, x)
    dy = jnp.asarray(rng.standard_normal(expected.shape))
    T, out = case.selection()
    return {"out_shape": out_shape, "params": params, "x": x, "dy": dy, "expected": expected,
            "T": jnp.asarray(T), "out": out}


def _computed_case(case: Case, params, x, dy, T) -> dict:
    layer = case.layer()
    y, residuals = layer.forward(params, x)

    def ref(p, x):
        return case.jnp_ref(p, x, T, problem(case.id)["out"])

    return {
        "y": layer.apply(params, x),
        "forward": y,
        "backward": layer.backward(params, residuals, dy),
        "ref": ref(params, x),
        "vjp_ref": jax.vjp(ref, params, x)[1](dy),
    }


@functools.cache
def _all_computed() -> dict:
    inputs = {c.id: tuple(problem(c.id)[k] for k in ("params", "x", "dy", "T")) for c in CASES}
    return jax.jit(lambda inputs: {  # one compile for every case (the file stays fast)
        c.id: _computed_case(c, *inputs[c.id]) for c in CASES
    })(inputs)


def computed(case_id: str) -> dict:
    """The layer's apply, forward and hand backward, and the selection form with its vjp."""
    return _all_computed()[case_id]


# --- forward values ------------------------------------------------------------------------


@pytest.mark.parametrize("case", PARAMS)
def test_values_against_the_numpy_loop_and_the_init_shape(case):
    pr, c = problem(case.id), computed(case.id)
    y, expected = c["y"], pr["expected"]
    assert pr["out_shape"] == (-1, *y.shape[1:])  # init's output shape is apply's
    assert init_shapes(case.layer(), case.x_shape)[0] == y.shape  # a concrete batch too
    assert y.shape == expected.shape and y.dtype == jnp.float64
    np.testing.assert_allclose(y, expected, **TIGHT)
    np.testing.assert_array_equal(c["forward"], y)
    np.testing.assert_allclose(c["ref"], expected, **TIGHT)  # the vjp witness computes y


@pytest.mark.parametrize("case", [c for c in PARAMS
                                  if isinstance(c.values[0].options.get("padding", "VALID"), str)])
def test_string_padding_is_lax_padding(case):
    # lax given the padding string: the layer's "SAME"/"VALID" arithmetic is lax's, and so
    # is the formula ref_pads uses for ConvTranspose
    pr = problem(case.id)
    params, x = pr["params"], pr["x"]
    o = case.options
    n, padding = case.n, o.get("padding", "VALID")
    strides, dilation = _per_dim(o.get("strides", 1), n), _per_dim(o.get("dilation", 1), n)
    if case.kind == "Conv":
        y = lax.conv_general_dilated(x, params["W"], strides, padding, rhs_dilation=dilation,
                                     dimension_numbers=SPECS[n],
                                     feature_group_count=o.get("groups", 1))
    else:
        y = lax.conv_transpose(x, params["W"], strides, padding, rhs_dilation=dilation,
                               dimension_numbers=SPECS[n])
    y = y + params["b"].reshape((1,) * (n + 1) + (-1,))
    np.testing.assert_allclose(computed(case.id)["y"], y, **TIGHT)
    np.testing.assert_allclose(pr["expected"], y, **TIGHT)


def test_eager_equals_jit():
    for case in (CASES_BY_ID["2d groups 2 s2 d2 same"], CASES_BY_ID["T 2d explicit > kernel"]):
        pr, c = problem(case.id), computed(case.id)
        layer = case.layer()
        y, residuals = layer.forward(pr["params"], pr["x"])
        assert_trees_close(y, c["y"], **TIGHT)
        assert_trees_close(layer.backward(pr["params"], residuals, pr["dy"]), c["backward"],
                           **TIGHT)


# --- the hand backward ---------------------------------------------------------------------


def central_differences(f, params, x, dy, h=0.5):
    """``∂⟨f(p, x), dy⟩ / ∂θ`` for every entry θ of ``params`` and ``x``, by
    ``(L(θ + h) − L(θ − h)) / 2h``. ``L`` is linear in each single entry (the layer is
    bilinear in ``(W, x)`` and affine in ``b``), so the difference quotient is exact for any
    ``h``: only rounding remains, ~1e-16 of the terms of ``L`` over ``h``.

    Every perturbed input is evaluated in one call: the perturbed copies of ``x`` stacked
    along the batch, those of ``W`` and ``b`` as leading variant axes of the params.
    """
    dy, x = np.asarray(dy), np.asarray(x)
    W, b = np.asarray(params["W"]), np.asarray(params["b"])

    def steps(v):  # [2·size, *v.shape]: v + h·e_k, then v − h·e_k
        e = h * np.eye(v.size).reshape(v.size, *v.shape)
        return np.concatenate([v + e, v - e])

    def quotient(losses):
        plus, minus = np.split(losses, 2)
        return (plus - minus) / (2 * h)

    def loss_of_outputs(y):  # y [V, N, *out, O] -> ⟨y_v, dy⟩ per variant v
        return np.tensordot(y, dy, axes=dy.ndim)

    xs = steps(x)
    ys = f(params, xs.reshape(-1, *x.shape[1:])).reshape(len(xs), *dy.shape)
    dx = quotient(loss_of_outputs(ys)).reshape(x.shape)
    grads = {}
    for name, v in (("W", W), ("b", b)):
        vs = steps(v)
        other = {"W": W, "b": b}
        variants = {k: vs if k == name else np.broadcast_to(a, (len(vs), *a.shape))
                    for k, a in other.items()}
        grads[name] = quotient(loss_of_outputs(f(variants, x))).reshape(v.shape)
    return grads, dx


@pytest.mark.parametrize("case", PARAMS)
def test_hand_backward_equals_vjp_of_the_selection_form_and_central_differences(case):
    pr, c = problem(case.id), computed(case.id)
    params, x, dy = pr["params"], pr["x"], pr["dy"]
    dparams, dx = c["backward"]
    assert jax.tree_util.tree_map(jnp.shape, dparams) == jax.tree_util.tree_map(jnp.shape, params)
    assert dx.shape == x.shape
    assert_trees_close((dparams, dx), c["vjp_ref"], **TIGHT)
    # exact difference quotients of a sum of ~10³ O(1) terms: rounding ~1e-13 at worst
    assert_trees_close((dparams, dx), central_differences(case.np_ref, params, x, dy),
                       rtol=1e-10, atol=1e-10)
    assert np.all(np.abs(np.asarray(dparams["W"])) > 0)  # every kernel entry is reached


def test_unused_rows_get_zero_gradient():
    # strides 2 over 6 columns with a 3-wide kernel: column 5 is read by no window
    layer = funnet.Conv(1, (1, 3), strides=2)
    params = {"W": jnp.ones((1, 3, 1, 1)), "b": jnp.zeros(1)}
    x = jnp.arange(6.0).reshape(1, 1, 6, 1)
    y, res = layer.forward(params, x)
    assert y.shape == (1, 1, 2, 1)
    np.testing.assert_array_equal(y.ravel(), [0 + 1 + 2, 2 + 3 + 4])
    (dparams, dx) = layer.backward(params, res, jnp.ones_like(y))
    np.testing.assert_array_equal(dx.ravel(), [1, 1, 2, 1, 1, 0])
    np.testing.assert_array_equal(dparams["W"].ravel(), [0 + 2, 1 + 3, 2 + 4])


def test_check_layer():
    for case in (CASES_BY_ID["2d groups 2 s2 d2 same"], CASES_BY_ID["T 2d same s2"]):
        pr = problem(case.id)
        result = funnet.check_layer(case.layer(), pr["params"], pr["x"])
        assert result.ok and result.dtype == "float64"


@pytest.mark.parametrize("kind", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("param_dtype, x_dtype", [
    (jnp.float32, jnp.float64), (jnp.float64, jnp.float32), (jnp.bfloat16, jnp.float32)])
def test_gradients_have_the_dtype_of_what_they_differentiate(kind, param_dtype, x_dtype):
    layer = getattr(funnet, kind)(2, 2, strides=2)
    params = {"W": jnp.full((2, 2, 2, 2), 0.5, param_dtype), "b": jnp.ones(2, param_dtype)}
    x = jnp.ones((2, 4, 3, 2), x_dtype)
    y, res = layer.forward(params, x)
    dparams, dx = layer.backward(params, res, jnp.ones_like(y))
    ref_dparams, ref_dx = jax.grad(lambda p, x: jnp.sum(layer.apply(p, x)), argnums=(0, 1))(
        params, x)
    assert jax.tree_util.tree_map(lambda a: a.dtype, dparams) == jax.tree_util.tree_map(
        lambda a: a.dtype, ref_dparams) == {"W": param_dtype, "b": param_dtype}
    assert dx.dtype == ref_dx.dtype == x_dtype
    assert y.dtype == jnp.result_type(param_dtype, x_dtype)


@pytest.mark.parametrize("kind", ["Conv", "ConvTranspose"])
def test_an_integer_input_is_computed_in_float_and_gets_no_gradient(kind):
    # dx came back cast to int32 (a truncated gradient); integers have none: dx = None
    layer = getattr(funnet, kind)(2, 2, strides=2)
    _, params = layer.init(KEY, (-1, 4, 4, 2))
    xi = jnp.asarray(np.arange(64).reshape(2, 4, 4, 2) % 5, jnp.int32)
    y, res = layer.forward(params, xi)
    assert y.dtype == params["W"].dtype
    np.testing.assert_array_equal(y, layer.apply(params, xi.astype(params["W"].dtype)))
    dparams, dx = layer.backward(params, res, jnp.ones_like(y))
    assert dx is None and dparams["W"].dtype == params["W"].dtype


def test_a_small_cnn_passes_check_model():
    net = funnet.serial(funnet.Conv(3, 3, strides=2, padding="SAME"), funnet.Tanh,
                        funnet.ConvTranspose(2, 2, strides=2), funnet.Tanh, funnet.Flatten,
                        funnet.Dense(3))
    _, params = net.init(KEY, (-1, 4, 4, 1))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 4, 1)))
    result = funnet.check_model(net, params, x, jnp.array([0, 2, 1]),
                                funnet.softmax_cross_entropy)
    assert result.ok, str(result)


# --- params, inspection, init --------------------------------------------------------------


def test_param_count_and_decay():
    conv = funnet.Conv(6, (3, 2), groups=2)
    _, params = init_shapes(conv, (-1, 5, 6, 4))
    assert params["W"].shape == (3, 2, 2, 6)
    assert funnet.param_count(params) == 3 * 2 * 4 * 6 // 2 + 6 == 78
    assert conv.decay_mask(params) == {"W": True, "b": False}
    _, tparams = init_shapes(funnet.ConvTranspose(5, 2), (-1, 3, 3, 3, 4))
    assert funnet.param_count(tparams) == 2 * 2 * 2 * 4 * 5 + 5


def test_summary_shows_conv_shapes():
    net = funnet.serial(funnet.Conv(4, 3, padding="SAME"), funnet.Relu,
                        funnet.Conv(8, (3, 3), strides=2, groups=2), funnet.Flatten,
                        funnet.Dense(3))
    text = funnet.summary(net, (-1, 9, 9, 2), print_fn=None)
    rows = [line.split(maxsplit=2) for line in text.splitlines()[1:]]
    assert [r[1] for r in rows[:-1]] == [
        "Conv(4,", "Relu", "Conv(8,", "Flatten", "Dense(3)"]
    lines = text.splitlines()
    assert "Conv(4, 3, padding='SAME')" in lines[1] and "(-1, 9, 9, 4)" in lines[1]
    assert lines[1].split()[-1] == str(3 * 3 * 2 * 4 + 4)
    assert "Conv(8, (3, 3), strides=2, groups=2)" in lines[3] and "(-1, 4, 4, 8)" in lines[3]
    assert lines[3].split()[-1] == str(3 * 3 * 2 * 8 + 8)
    assert "(-1, 128)" in lines[4] and lines[5].split()[-1] == str(128 * 3 + 3)
    assert lines[6].split()[-1] == str(76 + 152 + 387)


def test_init_values_and_initializers():
    conv = funnet.Conv(8, (3, 3))
    _, params = conv.init(KEY, (-1, 6, 6, 4))
    np.testing.assert_array_equal(params["b"], np.zeros(8))
    # Glorot normal: std √(2 / (fan_in + fan_out)), fan_in = 3·3·4, fan_out = 3·3·8;
    # 288 draws: the sample std is within ~4% (1σ) of it, 15% is > 3σ
    target = math.sqrt(2 / (36 + 72))
    assert abs(float(np.std(params["W"])) / target - 1) < 0.15
    again = conv.init(KEY, (-1, 6, 6, 4))[1]
    np.testing.assert_array_equal(again["W"], params["W"])
    init = jax.nn.initializers
    _, custom = funnet.ConvTranspose(2, 2, W_init=init.constant(0.5), b_init=init.ones).init(
        KEY, (-1, 3, 3))
    np.testing.assert_array_equal(custom["W"], np.full((2, 3, 2), 0.5))
    np.testing.assert_array_equal(custom["b"], np.ones(2))


def test_names():
    assert funnet.Conv(4, 3).name == "Conv(4, 3)"
    assert funnet.Conv(4, [3, 3], strides=2).name == "Conv(4, (3, 3), strides=2)"
    assert (funnet.ConvTranspose(2, (2,), padding="SAME", dilation=2).name
            == "ConvTranspose(2, (2,), padding='SAME', dilation=2)")
    # one name per computation: all-equal per-dim entries beside a tuple kernel, lists
    assert funnet.Conv(4, (3, 3), strides=(2, 2)).name == "Conv(4, (3, 3), strides=2)"
    assert (funnet.Conv(4, (3, 3), padding=[[1, 1], [1, 2]]).name
            == "Conv(4, (3, 3), padding=((1, 1), (1, 2)))")
    assert funnet.Conv(4, (3, 3), strides=[2, 1]).name == "Conv(4, (3, 3), strides=(2, 1))"
    # a tuple option beside an int kernel fixes the rank: another layer, another name
    assert funnet.Conv(4, 3, strides=(2, 2)).name == "Conv(4, 3, strides=(2, 2))"
    assert funnet.Conv(4, 3).name != funnet.Conv(4, (3, 3)).name
    # per-dim options spelled out at their defaults beside a tuple kernel compute the same
    # layer: one name, so one model signature (found by the mutation review)
    assert funnet.Conv(4, (3, 3), strides=(1, 1), dilation=[1, 1]).name == "Conv(4, (3, 3))"
    assert (funnet.Conv(4, (3, 3), strides=(1, 2), dilation=(1, 1)).name
            == "Conv(4, (3, 3), strides=(1, 2))")
    assert funnet.Conv(4, 3, strides=(1, 1)).name == "Conv(4, 3, strides=(1, 1))"  # fixes rank


@pytest.mark.parametrize("kind", ["Conv", "ConvTranspose"])
def test_padding_modes_in_any_case_as_the_pools(kind):
    # Conv and ConvTranspose refused padding="same" while the pools took any case
    make = getattr(funnet, kind)
    for spelled in ("same", "Same", "valid"):
        layer, upper = make(2, (3,), padding=spelled), make(2, (3,), padding=spelled.upper())
        assert layer.init(KEY, (-1, 5, 2))[0] == upper.init(KEY, (-1, 5, 2))[0]
    assert make(2, (3,), padding="same").name == f"{kind}(2, (3,), padding='SAME')"
    assert make(2, (3,), padding="valid").name == f"{kind}(2, (3,))"



@pytest.mark.parametrize("layer", [funnet.Conv(4, 3), funnet.ConvTranspose(4, 3, strides=2)],
                         ids=lambda v: v.name)
def test_backward_refuses_a_dy_of_the_wrong_shape(layer):
    # Conv returned a wrong-shaped dx for dy [2, 5, 5, 4] (not [2, 4, 4, 4]), no error
    _, params = layer.init(KEY, (-1, 6, 6, 2))
    y, res = layer.forward(params, jnp.ones((2, 6, 6, 2)))
    for bad in ((*y.shape[:-1], 3), (2, 5, 5, 4), y.shape[1:]):
        with pytest.raises(funnet.LayerError) as info:
            layer.backward(params, res, jnp.ones(bad))
        for fragment in (layer.name, "backward", f"dy of shape {bad}", str(y.shape)):
            assert fragment in str(info.value), (fragment, str(info.value))

# --- bad input: clear errors, before any compute --------------------------------------------

CONV2 = funnet.Conv(4, (3, 3))
P2 = {"W": jnp.ones((3, 3, 2, 4)), "b": jnp.ones(4)}
X2_BAD = jnp.ones((2, 5, 6, 2))

BAD = [
    ("feature vector to a 2-D conv (init)", lambda: CONV2.init(KEY, (-1, 10)),
     funnet.LayerError, ["Conv(4, (3, 3))", "(-1, 10)", "rank 2", "2-D", "rank 4"]),
    ("feature vector to an int-kernel conv", lambda: funnet.Conv(4, 3).init(KEY, (-1, 10)),
     funnet.LayerError, ["Conv(4, 3)", "(-1, 10)", "rank 2", "at least one spatial dim"]),
    ("3-D input to a 2-D conv (apply)", lambda: CONV2.apply(P2, jnp.ones((2, 5, 6, 6, 2))),
     funnet.LayerError, ["Conv(4, (3, 3))", "(2, 5, 6, 6, 2)", "rank 5", "2-D"]),
    ("kernel rank vs strides", lambda: funnet.Conv(4, (3, 3), strides=(1, 1, 1)),
     funnet.LayerError, ["Conv(4, (3, 3)", "kernel_shape (3, 3) (2 dims)",
                         "strides (1, 1, 1) (3 dims)"]),
    ("padding pairs vs input rank", lambda: funnet.Conv(4, 3, padding=((1, 1),)).init(
        KEY, (-1, 5, 6, 2)),
     funnet.LayerError, ["Conv(4, 3, padding=((1, 1),))", "(-1, 5, 6, 2)", "1-D"]),
    ("C_in not divisible by groups", lambda: funnet.Conv(4, 3, groups=2).init(KEY, (-1, 5, 3)),
     funnet.LayerError, ["Conv(4, 3, groups=2)", "(-1, 5, 3)", "C_in = 3", "groups = 2"]),
    ("C_in not divisible by groups (apply)",
     lambda: funnet.Conv(4, 3, groups=2).apply({"W": jnp.ones((3, 1, 4)), "b": jnp.ones(4)},
                                               jnp.ones((1, 5, 3))),
     funnet.LayerError, ["Conv(4, 3, groups=2)", "(1, 5, 3)", "C_in = 3"]),
    ("out_channels not divisible by groups", lambda: funnet.Conv(5, 3, groups=2),
     funnet.LayerError, ["Conv(5, 3, groups=2)", "out_channels = 5", "groups = 2"]),
    ("kernel larger than the input", lambda: CONV2.init(KEY, (-1, 2, 6, 2)),
     funnet.LayerError, ["Conv(4, (3, 3))", "(-1, 2, 6, 2)", "(2, 6)", "(3, 3)"]),
    ("dilated kernel larger than the padded input",
     lambda: funnet.Conv(4, 3, dilation=4, padding=1).apply(P2, X2_BAD),
     funnet.LayerError, ["dilation=4", "(2, 5, 6, 2)", "(7, 8)", "(9, 9)"]),
    ("transpose: kernel larger than the dilated input",
     lambda: funnet.ConvTranspose(2, 5, padding=((0, 0), (0, 0))).init(KEY, (-1, 2, 2, 1)),
     funnet.LayerError, ["ConvTranspose(2, 5", "(-1, 2, 2, 1)", "stride-dilated", "(2, 2)",
                         "(5, 5)"]),
    ("unknown padding string", lambda: funnet.Conv(4, 3, padding="full"),
     funnet.LayerError, ["Conv(4, 3, padding='FULL')", "padding must be", "'full'"]),
    ("transpose: W of the wrong shape", lambda: funnet.ConvTranspose(4, 3).apply(
        {"W": jnp.ones((3, 3, 2, 4)), "b": jnp.ones(4)}, jnp.ones((1, 4, 4, 3))),
     funnet.ParamsError, ["ConvTranspose(4, 3)", "(3, 3, 2, 4)", "(1, 4, 4, 3)",
                          "[*kernel, C_in, C_out] = (3, 3, 3, 4)"]),
    ("negative padding", lambda: funnet.Conv(4, 3, padding=-1),
     funnet.LayerError, ["padding", "≥ 0", "-1"]),
    ("padding not pairs", lambda: funnet.Conv(4, 3, padding=((1, 2, 3),)),
     funnet.LayerError, ["padding must be", "(1, 2, 3)"]),
    ("padding pair with a float", lambda: funnet.Conv(4, 3, padding=[(1, 1.5)]),
     funnet.LayerError, ["padding must be", "1.5"]),
    ("zero stride", lambda: funnet.Conv(4, 3, strides=0),
     funnet.LayerError, ["Conv(4, 3, strides=0): strides", "≥ 1", "0"]),
    ("bad kernel_shape", lambda: funnet.Conv(4, (3, 0)),
     funnet.LayerError, ["Conv(4): kernel_shape", "≥ 1", "0"]),
    ("bad out_channels", lambda: funnet.ConvTranspose(0, 3),
     funnet.LayerError, ["ConvTranspose: out_channels", "≥ 1"]),
    ("W shape does not match", lambda: CONV2.apply({"W": jnp.ones((3, 3, 3, 4)),
                                                    "b": jnp.ones(4)}, X2_BAD),
     funnet.ParamsError, ["Conv(4, (3, 3))", "(3, 3, 3, 4)", "(2, 5, 6, 2)", "(3, 3, 2, 4)"]),
    ("W of a 1-D kernel", lambda: CONV2.apply({"W": jnp.ones((3, 2, 4)), "b": jnp.ones(4)},
                                              X2_BAD),
     funnet.ParamsError, ["Conv(4, (3, 3))", "(3, 2, 4)"]),
    ("b shape", lambda: CONV2.apply({"W": P2["W"], "b": jnp.ones(3)}, X2_BAD),
     funnet.ParamsError, ["Conv(4, (3, 3))", "b has shape (3,)", "(4,)"]),
    ("missing b", lambda: CONV2.apply({"W": P2["W"]}, X2_BAD),
     funnet.ParamsError, ["Conv(4, (3, 3))", "['W', 'b']"]),
    ("inside serial", lambda: funnet.serial(funnet.Dense(3), CONV2).init(KEY, (-1, 4)),
     funnet.LayerError, ["serial[1]", "Conv(4, (3, 3))", "(-1, 3)"]),
]


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # raised while tracing, before XLA sees anything: under jit, the very same error
    with pytest.raises(error) as jitted:
        jax.jit(lambda: call())()
    assert str(jitted.value) == str(info.value)
