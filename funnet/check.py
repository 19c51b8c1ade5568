r"""Gradient checking: the same gradient four ways, compared leaf by leaf (docs/math.md §7).

A model's gradient can be computed by

* ``"hand"``: the hand-derived δ-recursion, :func:`funnet.backprop.value_and_grad`;
* ``"reverse"``: reverse-mode autodiff, :func:`jax.grad`;
* ``"forward"``: forward-mode autodiff, :func:`forward_grad` (one JVP per parameter);
* ``"numerical"``: central differences, :func:`numerical_grad`,
  ``∂f/∂θ_i ≈ (f(θ + Δe_i) - f(θ - Δe_i)) / (2Δ)``.

The first three are exact up to rounding; the fourth also has a truncation error ``O(Δ²)``.
:func:`check_model` computes the gradient by each, compares each against a reference with
:func:`compare`, and raises :class:`GradientCheckError` naming the first method pair and
params leaf that disagree beyond the tolerance.

The ``"forward"`` method runs on :func:`funnet.forward_twin` of the model: activations are
wired with ``jax.custom_vjp`` (their hand derivative), which JAX cannot push tangents
through; the twin wires them with ``jax.custom_jvp`` built from the *same* derivative. No
global switch is involved.

:func:`check_layer` checks one layer's hand ``backward`` against ``jax.vjp`` of its plain
formulas (activations through their formula ``f``, not their hand ``f'``).

>>> import jax, jax.numpy as jnp, funnet
>>> from funnet.check import check_model
>>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(2))
>>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
>>> x, y = jnp.linspace(-2.0, 2.0, 20).reshape(5, 4), jnp.array([0, 1, 0, 1, 1])
>>> result = check_model(net, params, x, y, funnet.softmax_cross_entropy)
>>> result.ok, [f"{m} vs {r}" for m, r in result.reports]
(True, ['hand vs reverse', 'forward vs reverse', 'numerical vs reverse'])
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import backprop
from ._table import table
from ._validate import check_int
from .contract import (
    Layer,
    NoBackwardRuleError,
    PyTree,
    StatefulModelError,
    as_layer,
    forward_twin,
)
from .layers import param_count
from .losses import Loss, l2_penalty

__all__ = [
    "METHODS",
    "CheckResult",
    "GradientCheckError",
    "LayerCheck",
    "Report",
    "Row",
    "check_layer",
    "check_model",
    "compare",
    "default_eps",
    "default_tolerances",
    "forward_grad",
    "numerical_grad",
]

#: The gradient methods :func:`check_model` knows, in its default order.
METHODS: tuple[str, ...] = ("hand", "reverse", "forward", "numerical")
_EXACT = ("reverse", "hand", "forward")  # exact up to rounding; "reverse" preferred as reference

# Elements of the perturbed/tangent parameter vectors one vmapped chunk may hold: bounds memory
# at ~32 MiB of float64 per chunk (plus the forward pass of the chunk).
_CHUNK_ELEMENTS = 1 << 22


class GradientCheckError(AssertionError):
    """Two gradient methods disagree beyond the tolerance.

    The message names the method pair, the params leaf, the errors and the tolerance;
    ``.result`` holds the whole :class:`CheckResult` (``print(err.result)`` for the table).
    """

    def __init__(self, message: str, result: CheckResult | None = None):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------
# Flat-vector plumbing shared by the numerical and forward-mode gradients.


def _float_dtype(params: PyTree, what: str) -> np.dtype:
    """The dtype ``ravel_pytree(params)`` would have; must be floating point."""
    leaves = jax.tree_util.tree_leaves(params)
    dtype = np.dtype(jnp.result_type(*leaves)) if leaves else np.dtype(jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what}: params must be floating point, got dtype {dtype}")
    return dtype


def _chunk(n: int, batch_size: int | None) -> int:
    if batch_size is None:
        return max(1, min(n, _CHUNK_ELEMENTS // max(n, 1)))
    return min(check_int(batch_size, "batch_size"), n)


def _coordinatewise(
    what: str, params: PyTree, batch_size: int | None, partial_i: Callable[..., jax.Array]
) -> PyTree:
    """``[partial_i(unravel, θ, i) for i < N]`` as a pytree like ``params``, in one ``jax.jit``.

    ``θ, unravel = ravel_pytree(params)``; the coordinates ``i`` run as a ``jax.lax.map``,
    ``batch_size`` of them at a time under ``jax.vmap``.
    """
    _float_dtype(params, what)
    n = param_count(params)
    if n == 0:
        return jax.tree_util.tree_map(jnp.zeros_like, params)
    chunk = _chunk(n, batch_size)

    @jax.jit
    def run(params):
        theta, unravel = ravel_pytree(params)
        return unravel(jax.lax.map(lambda i: partial_i(unravel, theta, i), jnp.arange(n),
                                   batch_size=chunk).astype(theta.dtype))

    return run(params)


def _scalar(f: Callable[[PyTree], Any], p: PyTree, what: str) -> jax.Array:
    """``f(p)``, checked (at trace time) to be a floating-point scalar."""
    out = jnp.asarray(f(p))
    if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{what}: f must return a floating-point scalar, got shape {out.shape} "
            f"dtype {out.dtype}"
        )
    return out


# ---------------------------------------------------------------------------------------
# Numerical gradient.


def default_eps(dtype: Any) -> float:
    r"""Default relative step of :func:`numerical_grad`: ``Δ₀ = (3ε)^(1/3)``, ε = machine eps.

    Central differences err by truncation ``Δ² |f'''| / 6`` plus rounding ``ε |f| / Δ``
    (``f(θ ± Δ)`` are each off by about ``ε |f|/2``); the sum is least at
    ``Δ* = (3 ε |f| / |f'''|)^(1/3)``. Taking ``|f| ≈ |f'''|`` on the scale of the parameter
    gives ``Δ₀ = (3ε)^(1/3)``, applied as ``Δ_i = Δ₀ · max(1, |θ_i|)``; the error is then
    about ``ε^(2/3)`` relative to the loss: ~4e-11 in float64, ~2e-5 in float32.

    ==========  =============  ==========
    dtype       ε              Δ₀
    ==========  =============  ==========
    float64     2.2e-16        8.7e-6
    float32     1.2e-7         7.1e-3
    float16     9.8e-4         0.14
    ==========  =============  ==========

    A smaller step *raises* the error (rounding ``ε/Δ`` grows): on the 21-layer mixed network of
    the test suite (float64, loss ≈ 1.1) the worst entry of the numerical gradient was off by
    1.4e-10, 1.2e-11, 2.8e-11, 2.1e-10, 2.1e-9, 2.3e-8 for ``Δ₀`` = 1e-4, 3e-5, 8.7e-6 (the
    default), 1e-6, 1e-7, 1e-8.

    >>> import numpy as np
    >>> f"{default_eps(np.float64):.1e}", f"{default_eps(np.float32):.1e}"
    ('8.7e-06', '7.1e-03')
    """
    return float((3 * np.finfo(dtype).eps) ** (1 / 3))


def numerical_grad(
    f: Callable[[PyTree], Any],
    params: PyTree,
    *,
    eps: float | None = None,
    batch_size: int | None = None,
) -> PyTree:
    r"""Gradient of a scalar ``f(params)`` by central differences, for every scalar of every leaf.

    With ``θ`` the params raveled into one vector (:func:`jax.flatten_util.ravel_pytree`)::

        g_i = (f(θ + Δ_i e_i) - f(θ - Δ_i e_i)) / ((θ_i + Δ_i) - (θ_i - Δ_i))
        Δ_i = eps · max(1, |θ_i|)

    The denominator is the step actually taken after rounding ``θ_i ± Δ_i`` (≈ ``2Δ_i``).
    ``eps`` defaults to :func:`default_eps` of the params' dtype, ``(3ε)^(1/3)``: 8.7e-6 in
    float64, 7.1e-3 in float32. Costs ``2N`` evaluations of ``f`` (``N`` = parameter count),
    run under ``jax.jit`` as a ``jax.lax.map`` over the coordinates, ``batch_size`` of them at a
    time under ``jax.vmap`` (default: as many as keep a chunk's ``batch_size × N`` perturbed
    vectors under 4 Mi elements). ``f`` must be traceable by JAX and return a scalar.

    At a kink of ``f`` (``relu`` at 0, …) within ``Δ`` of ``θ``, the difference quotient mixes
    the two one-sided slopes (``relu`` at 0: ``0.5``) and differs from the analytic
    (sub)gradient, whatever ``eps``.

    Returns a pytree like ``params`` (same structure, shapes and dtypes).

    >>> import jax.numpy as jnp
    >>> p = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    >>> g = numerical_grad(lambda p: jnp.sum(p["a"] ** 2) * p["b"], p)   # (2 a b, |a|²)
    >>> bool(jnp.allclose(g["a"], jnp.array([6.0, 12.0]), rtol=1e-3)), bool(
    ...     jnp.allclose(g["b"], 5.0, rtol=1e-3))
    (True, True)
    """
    dtype = _float_dtype(params, "numerical_grad")
    step = default_eps(dtype) if eps is None else float(eps)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"numerical_grad: eps must be a positive finite number, got {eps!r}")

    def central_difference(unravel, theta, i):
        def fun(v):
            return _scalar(f, unravel(v), "numerical_grad")

        t = theta[i]
        d = step * jnp.maximum(1, jnp.abs(t))  # Δ_i = eps · max(1, |θ_i|)
        up, down = t + d, t - d
        return (fun(theta.at[i].set(up)) - fun(theta.at[i].set(down))) / (up - down)

    return _coordinatewise("numerical_grad", params, batch_size, central_difference)


# ---------------------------------------------------------------------------------------
# Forward-mode gradient.


def forward_grad(
    f: Callable[[PyTree], Any], params: PyTree, *, batch_size: int | None = None
) -> PyTree:
    r"""Gradient of a scalar ``f(params)`` by forward-mode autodiff: one JVP per parameter.

    ``g_i = ∂f/∂θ_i = jvp(f, θ, e_i)`` for each standard basis vector ``e_i`` of the raveled
    params ``θ``: this is ``jax.jacfwd`` on the raveled vector, evaluated ``batch_size``
    tangents at a time (``jax.lax.map`` of ``jax.vmap``) to bound memory, under ``jax.jit``.
    ``N`` JVPs for ``N`` parameters (docs/math.md §7), each ``O(cost of f)``.

    ``f`` must be differentiable in forward mode: call funnet activations through their
    twin (``funnet.relu.jvp_twin``) and models through :func:`funnet.forward_twin`, whose
    ``custom_jvp`` wiring is built from the same hand-derived derivatives (the plain
    ``custom_vjp`` wiring raises a ``TypeError`` that says so). Returns a pytree like
    ``params``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> p = {"w": jnp.array([-1.0, 0.5, 2.0])}
    >>> relu = funnet.relu.jvp_twin
    >>> g = forward_grad(lambda p: jnp.sum(relu(p["w"]) ** 2), p)   # 2 relu(w)
    >>> g["w"].tolist() == [0.0, 1.0, 4.0]
    True
    """

    def jvp_i(unravel, theta, i):
        def fun(v):
            return _scalar(f, unravel(v), "forward_grad")

        e_i = jnp.zeros_like(theta).at[i].set(1)
        return jax.jvp(fun, (theta,), (e_i,))[1]  # ∂f/∂θ_i = ⟨∇f, e_i⟩

    return _coordinatewise("forward_grad", params, batch_size, jvp_i)


# ---------------------------------------------------------------------------------------
# Comparing two gradient pytrees.


class Row(NamedTuple):
    """One params leaf of a :class:`Report`.

    ``scale = max|a|``, ``abs_err = max|a - b|``, ``rel_err = max |a - b| / max(|a|, |b|, atol)``
    (the ``atol`` floor is ``tiny`` when ``atol = 0``),
    ``tol_ratio = max |a - b| / (atol + rtol max(|a|, |b|))`` (the worst element's error in
    units of its tolerance), ``ok``: every element within tolerance (``tol_ratio ≤ 1``, no NaN).
    """

    leaf: str
    shape: tuple[int, ...]
    scale: float
    abs_err: float
    rel_err: float
    tol_ratio: float
    ok: bool


def _fmt(v: float) -> str:
    return f"{v:.2e}"


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-leaf comparison of two pytrees (see :func:`compare`); ``str(report)`` is a table."""

    rows: tuple[Row, ...]
    names: tuple[str, str] = ("a", "b")
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def ok(self) -> bool:
        """Every element of every leaf within tolerance."""
        return all(r.ok for r in self.rows)

    @property
    def first_failure(self) -> Row | None:
        """The first leaf (in pytree order) out of tolerance, or ``None``."""
        return next((r for r in self.rows if not r.ok), None)

    def table_rows(self) -> list[list[str]]:
        return [
            [r.leaf, str(r.shape), _fmt(r.scale), _fmt(r.abs_err), _fmt(r.rel_err),
             _fmt(r.tol_ratio), str(r.ok)]
            for r in self.rows
        ]

    def __str__(self) -> str:
        a, b = self.names
        header = ["leaf", "shape", f"max|{a}|", "max abs err", "max rel err", "err/tol", "ok"]
        title = f"{b} vs {a}: rtol={self.rtol:.1e}, atol={self.atol:.1e}"
        return title + "\n" + table(header, self.table_rows())


def _leaf_row(path: str, a: Any, b: Any, rtol: float, atol: float) -> Row:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ValueError(
            f"compare: leaf {path} has shape {a64.shape} in one tree, {b64.shape} in the other"
        )
    if a64.size == 0:
        return Row(path, a64.shape, 0.0, 0.0, 0.0, 0.0, True)
    with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf, 0/0: NaN, not ok
        err = np.abs(a64 - b64)
        mag = np.maximum(np.abs(a64), np.abs(b64))
        tol = atol + rtol * mag
        rel = np.where(err == 0, 0.0, err / np.maximum(mag, atol or np.finfo(np.float64).tiny))
        ratio = np.where(err == 0, 0.0, err / tol)
    ok = bool(np.all(err <= tol))  # NaN compares False: NaN fails

    def worst(v: np.ndarray) -> float:
        return float("nan") if np.isnan(v).any() else float(np.max(v))

    scale = float(np.max(np.abs(a64)))
    return Row(path, a64.shape, scale, worst(err), worst(rel), worst(ratio), ok)


def compare(
    a: PyTree,
    b: PyTree,
    *,
    names: tuple[str, str] = ("a", "b"),
    rtol: float = 1e-7,
    atol: float = 0.0,
) -> Report:
    r"""Compare two pytrees of arrays leaf by leaf; ``a`` is the reference.

    For each element ``j`` of a leaf, with ``m_j = max(|a_j|, |b_j|)``::

        abs err  e_j = |a_j - b_j|
        rel err  r_j = e_j / max(m_j, atol)      (0 where e_j = 0; floor tiny if atol = 0)
        ok       e_j ≤ atol + rtol · m_j         (symmetric numpy.allclose; NaN is never ok)

    Each :class:`Row` holds the leaf path (``jax.tree_util.keystr``), its shape, ``max|a|``,
    ``max_j e_j``, ``max_j r_j``, ``max_j e_j / (atol + rtol m_j)`` (``err/tol``: ok iff ≤ 1)
    and whether every element is ok. Values are compared in
    float64 (numpy). Different tree structures or leaf shapes raise ``ValueError``.

    >>> import jax.numpy as jnp
    >>> a = {"W": jnp.array([[1.0, 2.0]]), "b": jnp.array([0.5])}
    >>> b = {"W": jnp.array([[1.0, 2.5]]), "b": jnp.array([0.5])}
    >>> report = compare(a, b, rtol=1e-3)
    >>> report.ok, report.first_failure.leaf, report.first_failure.abs_err
    (False, "['W']", 0.5)
    >>> print(report)
    b vs a: rtol=1.0e-03, atol=0.0e+00
    leaf   shape   max|a|    max abs err  max rel err  err/tol   ok
    ['W']  (1, 2)  2.00e+00  5.00e-01     2.00e-01     2.00e+02  False
    ['b']  (1,)    5.00e-01  0.00e+00     0.00e+00     0.00e+00  True
    """
    rtol, atol = float(rtol), float(atol)
    if rtol < 0 or atol < 0:
        raise ValueError(f"compare: rtol and atol must be ≥ 0, got rtol={rtol}, atol={atol}")
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if sa != sb:
        raise ValueError(
            f"compare: {names[0]} and {names[1]} have different pytree structures:\n"
            f"  {names[0]}: {sa}\n  {names[1]}: {sb}"
        )
    leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree_util.tree_leaves(b)
    rows = tuple(
        _leaf_row(jax.tree_util.keystr(path) or "<root>", la, lb, rtol, atol)
        for (path, la), lb in zip(leaves_a, leaves_b)
    )
    return Report(rows, tuple(names), rtol, atol)


# ---------------------------------------------------------------------------------------
# Checking a model.

# (rtol, atol / scale) by precision and by kind of pair (see default_tolerances).
_TOLERANCES = {
    ("float64", "analytic"): (1e-9, 1e-12),
    ("float64", "numerical"): (1e-5, 1e-8),
    ("float32", "analytic"): (1e-4, 1e-6),
    ("float32", "numerical"): (5e-2, 1e-3),
}


def default_tolerances(dtype: Any, *, numerical: bool, scale: float = 1.0) -> tuple[float, float]:
    r"""``(rtol, atol)`` that :func:`check_model` uses for a pair of methods; ``atol = k · scale``.

    ==========  ========================  ======  ============
    dtype       pair                      rtol    atol
    ==========  ========================  ======  ============
    float64     analytic vs analytic      1e-9    1e-12·scale
    float64     numerical vs analytic     1e-5    1e-8·scale
    float32     analytic vs analytic      1e-4    1e-6·scale
    float32     numerical vs analytic     5e-2    1e-3·scale
    ==========  ========================  ======  ============

    ``check_model`` passes ``scale = max|g_ref|`` (the largest entry of the reference
    gradient) for analytic pairs and ``scale = max(max|g_ref|, |R(θ)|)`` (also the objective's
    value) for numerical pairs, 1 if that is 0. Scaling makes the check independent of the
    units of the loss. Derivation, ``ε`` = machine epsilon (2.2e-16, 1.2e-7):

    * Analytic vs analytic (``hand``/``reverse``/``forward``): the same sums in another order,
      so they differ by rounding, ``≈ ε ·`` (terms summed) ``·`` scale: ~1e-16..1e-14 · scale
      in float64, ~1e-7..1e-5 · scale in float32. ``atol`` sits 2 orders above that; entries
      well above ``atol`` must agree to ``rtol``, so a 1 % error in any of them fails.
    * Numerical vs analytic: with the step of :func:`default_eps`, rounding in
      ``f(θ ± Δe_i)`` gives an absolute error ``≈ ε^(2/3) |R(θ)|`` (4e-11 |R| in float64,
      2.4e-5 |R| in float32), plus truncation ``Δ² |∂³R/∂θ_i³| / 6``. ``atol`` is 2 orders
      (float64) and 1.5 orders (float32) above the rounding part; ``rtol`` covers the
      truncation part for the larger entries.

    Any other float dtype (float16, bfloat16) gets the float32 values, which are likely too
    tight there: pass your own.

    >>> default_tolerances("float64", numerical=False)
    (1e-09, 1e-12)
    >>> default_tolerances("float32", numerical=True, scale=2.0)
    (0.05, 0.002)
    """
    precision = "float64" if np.dtype(dtype) == np.float64 else "float32"
    rtol, atol = _TOLERANCES[precision, "numerical" if numerical else "analytic"]
    return rtol, atol * float(scale)


@dataclasses.dataclass(frozen=True, eq=False)
class CheckResult:
    """What :func:`check_model` found; ``str(result)`` is one table over all method pairs.

    Attributes:
      reference: the method every other one is compared against.
      reports: ``{(method, reference): Report}``, in the order of ``methods``.
      grads: ``{method: gradient pytree}``.
      value: the objective ``loss(model(x), y) + l2 penalty`` at ``params``.
      dtype: the params' dtype name, which chose the default tolerances.
    """

    reference: str
    reports: dict[tuple[str, str], Report]
    grads: dict[str, PyTree]
    value: float
    dtype: str

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports.values())

    @property
    def first_failure(self) -> tuple[tuple[str, str], Row] | None:
        """``((method, reference), row)`` of the first leaf out of tolerance, or ``None``."""
        for pair, report in self.reports.items():
            if report.first_failure is not None:
                return pair, report.first_failure
        return None

    def __str__(self) -> str:
        n = param_count(self.grads[self.reference])
        title = (
            f"gradient check ({self.dtype}, {n} parameters, loss {self.value:.6g}): "
            f"every method vs {self.reference}"
        )
        header = ["methods", "leaf", "shape", "max|ref|", "max abs err", "max rel err",
                  "rtol", "atol", "err/tol", "ok"]
        rows = []
        for (method, ref), report in self.reports.items():
            for cells in report.table_rows():
                rows.append([f"{method} vs {ref}", *cells[:5], f"{report.rtol:.0e}",
                             f"{report.atol:.1e}", *cells[5:]])
        verdict = "OK" if self.ok else "FAILED"
        return f"{title}\n{table(header, rows)}\n{verdict}"


def _reference(methods: Sequence[str]) -> str:
    if "reverse" in methods:
        return "reverse"
    return next((m for m in methods if m in _EXACT), methods[0])


def _layer_at(model: Layer, params: PyTree, leaf: str) -> str:
    """``serial[2] Dense(8)``: the (innermost) layer that owns the params leaf ``leaf``."""
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jax.tree_util.keystr(path) != leaf:
            continue
        layer, where = model, []
        for k in path:
            if not (isinstance(k, jax.tree_util.SequenceKey) and layer.children):
                break
            where.append(f"{layer.name.split('(')[0]}[{k.idx}]")
            layer = layer.children[k.idx]
        return f"{' › '.join(where)} {layer.name}".strip()
    return model.name


def _validate_methods(methods: Sequence[str], loss: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"check_model: unknown method(s) {unknown}; choose from {list(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"check_model: methods {list(methods)} repeat a method")
    if len(methods) < 2:
        raise ValueError(f"check_model: needs at least two methods to compare, got {list(methods)}")
    if "hand" in methods and not isinstance(loss, Loss):
        raise TypeError(
            f"check_model: method 'hand' needs a funnet Loss with a hand-derived .grad "
            f"(e.g. funnet.softmax_cross_entropy, funnet.mse), got {loss!r}; "
            "drop 'hand' from methods to check a plain loss callable"
        )
    if not callable(loss):
        raise TypeError(f"check_model: loss must be callable, got {loss!r}")
    return methods


def check_model(
    model: Layer,
    params: PyTree,
    x: Any,
    y: Any,
    loss: Loss | Callable[[Any, Any], Any],
    *,
    methods: Sequence[str] = METHODS,
    l2: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    eps: float | None = None,
    verbose: bool = False,
) -> CheckResult:
    r"""Gradient of the objective by several methods, compared; raises if any pair disagrees.

    The objective (docs/math.md §4) is
    ``R(θ) = loss(model.apply(θ, x, key=key, train=train), y) + ½ λ Σ ||W||²`` with
    ``λ = l2`` over the params the layers declare weight-decayed.
    Methods (any two or more of :data:`METHODS`):

    * ``"hand"``: :func:`funnet.backprop.value_and_grad` (needs a funnet :class:`~funnet.Loss`);
    * ``"reverse"``: ``jax.grad(R)``;
    * ``"forward"``: :func:`forward_grad` (``N`` JVPs) on :func:`funnet.forward_twin`;
    * ``"numerical"``: :func:`numerical_grad` (central differences, step ``eps``).

    The reference is ``"reverse"`` if listed, else the first exact method listed (``"hand"``,
    ``"forward"``); every other method is compared with it by :func:`compare`. Tolerances:
    ``rtol``/``atol`` if given (``atol`` absolute, applied to every pair), else
    :func:`default_tolerances` for the params' dtype and the pair: in float64 ``rtol = 1e-9``
    between exact methods and ``1e-5`` against ``"numerical"``; in float32 ``1e-4`` and
    ``5e-2``; ``atol`` scaled by ``max|reference gradient|`` (and ``|R(θ)|`` for numerical).

    At a kink of an activation (a ``Relu`` pre-activation within ``eps`` of 0, …) the
    numerical gradient legitimately differs from the analytic ones: check at inputs away from
    kinks. ``key`` and ``train=True`` make ``Dropout`` drop (the same mask for every method and
every evaluation).

    Returns a :class:`CheckResult` (``print`` it for the table); with ``verbose=True`` the
    table is printed as well. Raises :class:`GradientCheckError` (an ``AssertionError``) naming
    the first method pair and params leaf out of tolerance, its errors and the tolerance.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.Dense(4), funnet.Softplus, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 3))
    >>> x = jnp.linspace(-1.0, 1.0, 18).reshape(6, 3)
    >>> y = jnp.sum(x, axis=1, keepdims=True)
    >>> result = check_model(net, params, x, y, funnet.mse, l2=0.1,
    ...                      methods=("hand", "reverse", "numerical"))
    >>> result.ok, result.reference, sorted(result.reports)
    (True, 'reverse', [('hand', 'reverse'), ('numerical', 'reverse')])
    """
    methods = _validate_methods(methods, loss)
    model = as_layer(model)
    if model.stateful:
        raise StatefulModelError(
            f"check_model: {model.stateful_path()} holds state, which check_model does not "
            "carry yet; check the layer alone with funnet.check_layer(layer, params, x, "
            "state=state)")
    reference = _reference(methods)
    dtype = _float_dtype(params, "check_model")

    mask = model.decay_mask(params) if l2 else None

    def risk(p, x, y, key, net=model):  # R(θ) = loss(model(x), y) + ½ λ Σ ||W||²
        out = loss(net.apply(p, x, key=key, train=train), y)
        return out + l2_penalty(p, l2, mask=mask) if l2 else out

    def objective(p, net=model):
        return risk(p, x, y, key, net)

    values = {}  # the objective's value, as a by-product of "reverse" or "hand"

    def compute(method: str) -> PyTree:
        if method == "hand":
            hand = backprop.value_and_grad(model, loss, l2=l2)
            values[method], g = jax.jit(functools.partial(hand, train=train))(params, x, y,
                                                                             key=key)
            return g
        if method == "reverse":
            values[method], g = jax.jit(jax.value_and_grad(risk))(params, x, y, key)
            return g
        if method == "forward":
            twin = forward_twin(model)
            return forward_grad(lambda p: objective(p, twin), params)
        return numerical_grad(objective, params, eps=eps)

    grads = {m: compute(m) for m in methods}
    value = values.get("reverse", values.get("hand"))
    value = float(objective(params) if value is None else value)
    ref = grads[reference]
    g_max = max((float(np.max(np.abs(g), initial=0.0)) for g in jax.tree_util.tree_leaves(ref)),
                default=0.0)

    reports = {}
    for m in methods:
        if m == reference:
            continue
        numerical = "numerical" in (m, reference)
        scale = max(g_max, abs(value)) if numerical else g_max
        scale = scale if scale > 0 and math.isfinite(scale) else 1.0
        pair_rtol, pair_atol = default_tolerances(dtype, numerical=numerical, scale=scale)
        reports[m, reference] = compare(
            ref,
            grads[m],
            names=(reference, m),
            rtol=pair_rtol if rtol is None else rtol,
            atol=pair_atol if atol is None else atol,
        )

    result = CheckResult(reference, reports, grads, value, np.dtype(dtype).name)
    if verbose:
        print(result)
    failure = result.first_failure
    if failure is not None:
        (m, ref_name), row = failure
        report = reports[m, ref_name]
        n_bad = sum(not other.ok for rep in reports.values() for other in rep.rows)
        raise GradientCheckError(
            f"{m} vs {ref_name} disagree at params leaf {row.leaf} "
            f"(shape {row.shape}, layer {_layer_at(model, params, row.leaf)}): "
            f"max abs err {row.abs_err:.3e}, max rel err {row.rel_err:.3e} exceed "
            f"rtol={report.rtol:.1e}, atol={report.atol:.1e} ({result.dtype}); "
            f"{n_bad} (pair, leaf) row(s) out of tolerance, print(err.result) for the table",
            result,
        )
    return result


# ---------------------------------------------------------------------------------------
# Checking one layer.


@dataclasses.dataclass(frozen=True, eq=False)
class LayerCheck:
    """What :func:`check_layer` found; ``str(check)`` prints both tables.

    Attributes:
      layer: the layer's name.
      params: :class:`Report` of the hand ``dparams`` against ``jax.vjp`` of the formula.
      inputs: :class:`Report` of the hand ``dx`` against it (float inputs only).
      no_gradient: paths of the inputs the hand rule gives no gradient (``None``).
      dtype: the dtype that chose the default tolerances.
      missing: the inputs among ``no_gradient`` whose reference gradient is not zero: the
        hand rule wrongly drops their gradient (the check fails).
    """

    layer: str
    params: Report
    inputs: Report
    no_gradient: tuple[str, ...]
    dtype: str
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.params.ok and self.inputs.ok and not self.missing

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        title = (f"layer check of {self.layer} ({self.dtype}): hand backward vs jax.vjp of "
                 "the formula")
        parts = [title, "params (dparams): " + str(self.params),
                 "input (dx): " + str(self.inputs)]
        if self.no_gradient:
            parts.append(f"no gradient (None) for input(s): {', '.join(self.no_gradient)}")
        if self.missing:
            parts.append(f"but jax.vjp gives a non-zero gradient for: {', '.join(self.missing)}")
        return "\n".join(parts + [verdict])


def _random_like(tree: PyTree, seed: int) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    return treedef.unflatten([
        jax.random.normal(k, jnp.shape(v), jnp.result_type(v)) for k, v in zip(keys, leaves)
    ])


def _input_pairs(hand_dx: Any, ref_dx: Any) -> tuple[dict, dict, tuple[str, ...], tuple]:
    """Float input leaves by path for the hand and the reference ``dx``; the ``None`` paths,
    and those of them whose reference gradient is not zero (a wrongly missing gradient)."""
    hand = jax.tree_util.tree_flatten_with_path(hand_dx, is_leaf=lambda v: v is None)[0]
    ref = [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(ref_dx)[0]]
    a, b, none, missing = {}, {}, [], []
    for path, v in hand:
        key = jax.tree_util.keystr(path)
        name = "x" + key
        if v is None:
            none.append(name)
            below = [r for k, r in ref if k.startswith(key)
                     and jnp.issubdtype(jnp.result_type(r), jnp.floating)]
            if any(np.any(np.asarray(r) != 0) for r in below):
                missing.append(name)
        elif jnp.issubdtype(jnp.result_type(v), jnp.floating):
            a[name], b[name] = dict(ref)[key], v
    return a, b, tuple(none), tuple(missing)


def check_layer(
    layer: Layer,
    params: PyTree,
    x: Any,
    *,
    state: PyTree = (),
    key: jax.Array | None = None,
    train: bool = False,
    dy: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> LayerCheck:
    r"""Check one layer's hand ``backward`` against ``jax.vjp`` of its plain formulas.

    With ``y = layer(params, x)`` and a cotangent ``dy`` (random normal, from ``seed``,
    unless given), the hand rule's ``(dparams, dx) = backward(params, residuals, dy)`` must
    equal ``jax.vjp`` of the layer's forward pass in the ``"formula"`` wiring: activations
    through their formula ``f``, not their hand ``f'``, so the witness shares no derivative
    with what it checks. Inputs the rule gives no gradient (``None``) are listed, not
    compared; integer inputs have none. Tolerances as :func:`check_model`'s between exact
    methods (:func:`default_tolerances`, ``atol`` scaled by the largest reference entry).

    Returns a :class:`LayerCheck`; raises :class:`GradientCheckError` naming the layer and
    the first leaf out of tolerance.

    >>> import jax, jax.numpy as jnp, funnet
    >>> layer = funnet.serial(funnet.Dense(3), funnet.Tanh)
    >>> _, params = layer.init(jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.check_layer(layer, params, jnp.ones((4, 2))).ok
    True
    """
    layer = as_layer(layer)
    if not layer.has_backward:
        raise NoBackwardRuleError(f"check_layer: {layer.name} has no hand-derived backward rule")
    if layer.stateful and not jax.tree_util.tree_leaves(state):
        raise StatefulModelError(f"check_layer: {layer.stateful_path()} holds state: pass "
                                 "state= (from init_with_state)")
    formula = layer.rewired("formula")

    def plain(p, inputs):
        return formula.apply_with_state(p, state, inputs, key=key, train=train)[0]

    y, pullback = jax.vjp(plain, params, x)
    dy = _random_like(y, seed) if dy is None else dy
    ref_dparams, ref_dx = pullback(dy)
    _, _, residuals = layer.forward_with_state(params, state, x, key=key, train=train)
    out = layer.backward(params, residuals, dy)
    if not isinstance(out, tuple) or len(out) != 2:
        raise GradientCheckError(f"check_layer: the backward of {layer.name} must return "
                                 f"(dparams, dx), got {type(out).__name__}")
    dparams, dx = out

    try:
        ref_in, hand_in, none, missing = _input_pairs(dx, ref_dx)
    except (KeyError, ValueError) as e:
        raise GradientCheckError(f"check_layer: the dx of {layer.name}'s backward does not have "
                                 f"the structure of its input: {e}") from None
    leaves = jax.tree_util.tree_leaves((params, x))
    floats = [v for v in leaves if jnp.issubdtype(jnp.result_type(v), jnp.floating)]
    dtype = np.dtype(jnp.result_type(*floats)) if floats else np.dtype(np.float32)

    def report(a, b):
        scale = max((float(np.max(np.abs(v), initial=0.0)) for v in jax.tree_util.tree_leaves(a)),
                    default=0.0)
        r, t = default_tolerances(dtype, numerical=False, scale=scale if scale > 0 else 1.0)
        try:
            return compare(a, b, names=("vjp", "hand"), rtol=r if rtol is None else rtol,
                           atol=t if atol is None else atol)
        except ValueError as e:  # another structure or shape: name the layer
            raise GradientCheckError(f"check_layer: the backward of {layer.name}: {e}") from None

    result = LayerCheck(layer.name, report(ref_dparams, dparams), report(ref_in, hand_in),
                        none, dtype.name, missing)
    if verbose:
        print(result)
    if result.missing:
        raise GradientCheckError(
            f"check_layer: the hand backward of {layer.name} returns no gradient (None) for "
            f"input(s) {', '.join(result.missing)}, but jax.vjp of its formula gives a "
            "non-zero one", result)
    if not result.ok:
        what, rep = ("params leaf", result.params) if not result.params.ok else (
            "input", result.inputs)
        row = rep.first_failure
        where = _layer_at(layer, params, row.leaf) if what == "params leaf" else layer.name
        raise GradientCheckError(
            f"check_layer: the hand backward of {where} disagrees with jax.vjp of its formula "
            f"at {what} {row.leaf} (shape {row.shape}): max abs err {row.abs_err:.3e}, max rel "
            f"err {row.rel_err:.3e} exceed rtol={rep.rtol:.1e}, atol={rep.atol:.1e}; "
            "print(err.result) for the tables",
            result,
        )
    return result
