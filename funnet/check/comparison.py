"""Comparing two gradient pytrees leaf by leaf, and the tolerances that decide."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._table import table
from ..contract import PyTree

__all__ = ["GradientCheckError", "Report", "Row", "compare", "default_tolerances"]


class GradientCheckError(AssertionError):
    """Two gradient methods disagree beyond the tolerance.

    Raised by :func:`~funnet.check_model` and :func:`~funnet.check_layer` (a hand backward
    that returns the wrong structure or no gradient raises it too).

    Args:
      message: what disagrees: the method pair (or the layer's hand backward and
        ``jax.vjp`` of its formula), the params leaf or input, the errors and the tolerance.
      result: the whole result, kept as ``err.result`` (``print(err.result)`` for the
        tables): the :class:`CheckResult` of ``check_model`` or the :class:`LayerCheck` of
        ``check_layer``; ``None`` (the default) when the check stopped before one existed.
    """

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result



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
    """Per-leaf comparison of two pytrees (see :func:`compare`); ``str(report)`` is a table.

    Attributes:
      rows: one :class:`Row` per params leaf, in pytree order.
      names: the names of the reference and the compared tree, in the table's title
        (``"b vs a"``) and header (``max|a|``).
      rtol: the relative tolerance the rows were judged by.
      atol: the absolute tolerance the rows were judged by.
    """

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


def _leaf_stats(a: Any, b: Any, rtol: Any, atol: Any, xp: Any = jnp) -> Any:
    """``[max|a|, max err, max rel err, max err/tol, ok]`` of one leaf (NaN: not ok); ``xp``
    is ``jax.numpy`` (on the arrays' device) or ``numpy`` (on the host): the same formulas."""
    dtype = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    a, b = a.astype(dtype), b.astype(dtype)
    rtol, atol = xp.asarray(rtol).astype(dtype), xp.asarray(atol).astype(dtype)
    err = xp.abs(a - b)
    mag = xp.maximum(xp.abs(a), xp.abs(b))
    tol = atol + rtol * mag
    floor = xp.where(atol > 0, atol, jnp.finfo(dtype).tiny)
    zero = err == 0
    rel = xp.where(zero, 0, err / xp.where(zero, 1, xp.maximum(mag, floor)))
    ratio = xp.where(zero, 0, err / xp.where(zero, 1, tol))

    def worst(v):
        return xp.where(xp.any(xp.isnan(v)), xp.nan, xp.max(v))

    ok = xp.all(err <= tol)  # NaN compares False: NaN fails
    return xp.stack([xp.max(xp.abs(a)), worst(err), worst(rel), worst(ratio),
                     ok.astype(dtype)]).astype(dtype)


@jax.jit
def _stats(a: list, b: list, rtol: jax.Array, atol: jax.Array) -> list:
    # one compiled program per structure and shapes: the comparison runs where the arrays
    # are, and only five numbers per leaf come back
    return [_leaf_stats(x, y, rtol, atol) for x, y in zip(a, b)]


#: Up to this many elements in all, arrays already in host memory (NumPy arrays, jax arrays
#: on the CPU) are compared with NumPy: compiling a program for them would take longer
#: (about 0.1 s per tree structure) than the comparison itself.
HOST_LIMIT = 1 << 15


def on_host(leaves: list) -> bool:
    """Whether ``leaves`` are small and in host memory (see :data:`HOST_LIMIT`)."""
    total = 0
    for v in leaves:
        if isinstance(v, jax.core.Tracer):
            return False
        if isinstance(v, jax.Array) and any(d.platform != "cpu" for d in v.devices()):
            return False
        total += int(np.size(v))
    return total <= HOST_LIMIT


def _host_stats(a: list, b: list, rtol: float, atol: float) -> list:
    with np.errstate(all="ignore"):  # as jax: x / 0 = inf, NaN propagates, no warnings
        return [_leaf_stats(np.asarray(x), np.asarray(y), np.float64(rtol), np.float64(atol),
                            xp=np) for x, y in zip(a, b)]


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
    and whether every element is ok. Values are compared in the wider of their dtypes (at
    least float32): on the arrays' device by one compiled program, or, for small arrays in
    host memory (:data:`HOST_LIMIT`), by the same formulas in NumPy. Different tree
    structures or leaf shapes raise ``ValueError``.

    Args:
      a: the reference pytree of arrays.
      b: the pytree compared with it: the same structure and leaf shapes.
      names: what to call ``a`` and ``b`` in the report and in error messages.
      rtol: the relative tolerance, ``≥ 0``.
      atol: the absolute tolerance, ``≥ 0``; the default 0 judges by ``rtol`` alone.

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
    paths = [jax.tree_util.keystr(path) or "<root>" for path, _ in leaves_a]
    shapes = [tuple(np.shape(la)) for _, la in leaves_a]
    for path, shape, lb in zip(paths, shapes, leaves_b):
        if shape != tuple(np.shape(lb)):
            raise ValueError(f"compare: leaf {path} has shape {shape} in one tree, "
                             f"{tuple(np.shape(lb))} in the other")
    full = [i for i, shape in enumerate(shapes) if math.prod(shape) > 0]
    xs, ys = [leaves_a[i][1] for i in full], [leaves_b[i] for i in full]
    if on_host(xs + ys):
        stats = _host_stats(xs, ys, rtol, atol)
    else:
        stats = jax.device_get(_stats([jnp.asarray(v) for v in xs], [jnp.asarray(v) for v in ys],
                                      np.float64(rtol), np.float64(atol)))
    by_index = dict(zip(full, stats))
    rows = []
    for i, (path, shape) in enumerate(zip(paths, shapes)):
        if i not in by_index:
            rows.append(Row(path, shape, 0.0, 0.0, 0.0, 0.0, True))
            continue
        scale, err, rel, ratio, ok = (float(v) for v in by_index[i])
        rows.append(Row(path, shape, scale, err, rel, ratio, ok == 1.0))
    return Report(tuple(rows), tuple(names), rtol, atol)


# ---------------------------------------------------------------------------------------
# Checking a model.

# (rtol, atol / scale) by precision and by kind of pair (see default_tolerances).
_TOLERANCES = {
    ("float64", "analytic"): (1e-9, 1e-12),
    ("float64", "numerical"): (1e-5, 1e-8),
    ("float32", "analytic"): (1e-4, 1e-6),
    ("float32", "numerical"): (5e-2, 1e-3),
    ("float16", "analytic"): (5e-3, 3e-3),
    ("float16", "numerical"): (1e-1, 1e-1),
    ("bfloat16", "analytic"): (4e-2, 2e-2),
    ("bfloat16", "numerical"): (3e-1, 3e-1),
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
    float16     analytic vs analytic      5e-3    3e-3·scale
    float16     numerical vs analytic     1e-1    1e-1·scale
    bfloat16    analytic vs analytic      4e-2    2e-2·scale
    bfloat16    numerical vs analytic     3e-1    3e-1·scale
    ==========  ========================  ======  ============

    ``check_model`` passes ``scale = max|g_ref|`` (the largest entry of the reference
    gradient) for analytic pairs and ``scale = max(max|g_ref|, |R(θ)|)`` (also the objective's
    value) for numerical pairs, 1 if that is 0 (or not finite); the ``forward`` pair, which
    compares directional derivatives ``⟨∇R, v⟩``, passes the largest of those. Scaling makes
    the check independent of the units of the loss. Derivation, ``ε`` = machine epsilon (2.2e-16, 1.2e-7):

    * Analytic vs analytic (``hand``/``reverse``/``forward``): the same sums in another order,
      so they differ by rounding, ``≈ ε ·`` (terms summed) ``·`` scale: ~1e-16..1e-14 · scale
      in float64, ~1e-7..1e-5 · scale in float32. ``atol`` sits 2 orders above that; entries
      well above ``atol`` must agree to ``rtol``, so a 1 % error in any of them fails.
    * Numerical vs analytic: with the step of :func:`default_eps`, rounding in
      ``f(θ ± Δe_i)`` gives an absolute error ``≈ ε^(2/3) |R(θ)|`` (4e-11 |R| in float64,
      2.4e-5 |R| in float32), plus truncation ``Δ² |∂³R/∂θ_i³| / 6``. ``atol`` is 2 orders
      (float64) and 1.5 orders (float32) above the rounding part; ``rtol`` covers the
      truncation part for the larger entries.

    * float16 (ε = 9.8e-4) and bfloat16 (ε = 7.8e-3): XLA accumulates their products in
      float32 and rounds each stored value once, so two analytic methods differ by about one
      ulp of the largest entry, ``≈ ε · scale``: measured 0.92 ε · scale at worst (a
      Dense-Tanh-Dense-Relu-Dense network, 8 seeds, hand vs formula). ``atol`` is 3 ε ·
      scale; the numerical pair was measured at 2.7e-2 · scale (float16) and 9.7e-2 ·
      scale (bfloat16), and gets about 3.5 times that. In these formats a relative error
      below ~ε cannot be told from rounding: the sensitivity self-test says so.

    Any other float dtype gets the float32 values.

    Args:
      dtype: the dtype of the compared gradients (anything :class:`numpy.dtype` accepts:
        ``"float64"``, ``jnp.bfloat16``, ...); selects the row of the table.
      numerical: whether one method of the pair is numerical (central differences) rather
        than both analytic.
      scale: the magnitude ``atol`` is relative to (see above); the default 1 gives the
        table's ``k`` itself.

    >>> default_tolerances("float64", numerical=False)
    (1e-09, 1e-12)
    >>> default_tolerances("float32", numerical=True, scale=2.0)
    (0.05, 0.002)
    """
    name = np.dtype(dtype).name
    precision = name if name in ("float64", "float16", "bfloat16") else "float32"
    rtol, atol = _TOLERANCES[precision, "numerical" if numerical else "analytic"]
    return rtol, atol * float(scale)


