"""``check_model``: a model's gradient by several methods, compared."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .. import backprop
from .._table import table
from ..contract import Layer, PyTree, StatefulModelError, as_layer, forward_twin
from ..layers import param_count
from ..losses import Loss, l2_penalty
from .comparison import GradientCheckError, Report, Row, compare, default_tolerances
from .gradients import _float_dtype, forward_grad, numerical_grad
from .layer import _layer_at

__all__ = ["METHODS", "CheckResult", "check_model"]

#: The gradient methods :func:`check_model` knows, in its default order.
METHODS: tuple[str, ...] = ("hand", "reverse", "forward", "numerical")
_EXACT = ("reverse", "hand", "forward")  # exact up to rounding; "reverse" preferred as reference


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
