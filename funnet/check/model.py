"""``check_model``: a model's gradient by several methods, compared."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._table import table
from ..contract import Layer, PyTree, StatefulModelError, as_layer
from ..layers import parallel, param_count, serial
from ..layers.combinators import _expect_sequence
from ..losses import Loss, l2_penalty
from . import programs
from .comparison import GradientCheckError, Report, Row, compare, default_tolerances, on_host
from .gradients import _float_dtype, numerical_grad
from .layer import _layer_at
from .visits import walk
from .witnesses import (
    BatchConsistency,
    DeltaTrace,
    KinkExclusion,
    LayerVerdict,
    Taylor,
    _max_abs,
    batch_consistency,
    delta_trace,
    has_pieces,
    kink_aware_numerical_grad,
    layer_verdicts,
    piece_ids,
    sensitivity,
    taylor_slope,
)

__all__ = ["METHODS", "CheckResult", "check_model"]

#: The gradient methods :func:`check_model` knows, in its default order.
METHODS: tuple[str, ...] = ("hand", "formula", "reverse", "forward", "numerical")
#: exact up to rounding, in order of preference as the reference: "formula" first, the one
#: witness that shares no hand-written derivative with anything it checks
_EXACT = ("formula", "reverse", "hand", "forward")
_ANALYTIC = ("hand", "formula", "reverse", "forward")


@dataclasses.dataclass(frozen=True, eq=False)
class CheckResult:
    """What :func:`check_model` found; ``str(result)`` prints every table.

    Attributes:
      reference: the method every other one is compared against.
      reports: ``{(method, reference): Report}``, in the order of ``methods``.
      grads: ``{method: gradient pytree}``.
      value: the objective ``loss(model(x), y) + l2 penalty`` at ``params``.
      dtype: the params' dtype name, which chose the default tolerances.
      layers: a :class:`~funnet.check.witnesses.LayerVerdict` per leaf layer (its hand
        backward against ``jax.vjp`` of its formula at the inputs it saw), by path.
      deltas: the δ-trace (:class:`~funnet.check.witnesses.DeltaTrace`) or ``None``.
      kinks: the coordinates the numerical method excluded
        (:class:`~funnet.check.witnesses.KinkExclusion`) or ``None``.
      taylor: Taylor-remainder slopes (:class:`~funnet.check.witnesses.Taylor`) or ``None``.
      sensitivity: ``(noticed, leaf, relative error)`` of the self-test, or ``None``.
      batch: :class:`~funnet.check.witnesses.BatchConsistency` or ``None``.
    """

    reference: str
    reports: dict[tuple[str, str], Report]
    grads: dict[str, PyTree]
    value: float
    dtype: str
    layers: tuple[LayerVerdict, ...] = ()
    deltas: DeltaTrace | None = None
    kinks: KinkExclusion | None = None
    taylor: Taylor | None = None
    sensitivity: tuple[bool, str, float] | None = None
    batch: BatchConsistency | None = None

    @property
    def first_wrong_layer(self) -> LayerVerdict | None:
        """The first leaf layer (in forward order) whose own check fails, or ``None``."""
        return next((v for v in self.layers if not v.ok), None)

    @property
    def ok(self) -> bool:
        return (all(r.ok for r in self.reports.values()) and self.first_wrong_layer is None
                and (self.deltas is None or self.deltas.ok)
                and (self.taylor is None or all(self.taylor.ok(m) for m in self.taylor.slopes))
                and (self.sensitivity is None or self.sensitivity[0])
                and (self.batch is None or self.batch.ok))

    @property
    def first_failure(self) -> tuple[tuple[str, str], Row] | None:
        """``((method, reference), row)`` of the first leaf out of tolerance, or ``None``."""
        for pair, report in self.reports.items():
            if report.first_failure is not None:
                return pair, report.first_failure
        return None

    def _leaf_table(self) -> str:
        header = ["methods", "leaf", "shape", "max|ref|", "max abs err", "max rel err",
                  "rtol", "atol", "err/tol", "ok"]
        rows = []
        for (method, ref), report in self.reports.items():
            for cells in report.table_rows():
                rows.append([f"{method} vs {ref}", *cells[:5], f"{report.rtol:.0e}",
                             f"{report.atol:.1e}", *cells[5:]])
        return table(header, rows)

    def __str__(self) -> str:
        n = param_count(self.grads[self.reference])
        title = (f"gradient check ({self.dtype}, {n} parameters, loss {self.value:.6g}): "
                 f"every method vs {self.reference}")
        parts = [title, self._leaf_table()]
        if self.layers:
            rows = [[v.path, v.status, v.detail] for v in self.layers]
            title = "layers (hand backward vs jax.vjp of the formula, at their inputs):"
            parts += [title, table(["layer", "verdict", "detail"], rows)]
        if self.deltas is not None:
            rows = [[p, f"{max(row.abs_err for row in r.rows):.2e}" if r.rows else "-",
                     "ok" if r.ok else "DIVERGES"] for p, r in self.deltas.rows]
            title = ("δ-trace (hand δ at each layer's output, and inside recurrent layers, vs "
                     "reverse mode, output first):")
            parts += [title,
                      table(["output of", "max abs err", "ok"], rows)]
        if self.kinks is not None:
            parts.append(str(self.kinks))
        if self.taylor is not None:
            slopes = ", ".join(f"{m} {s:.2f}" if s is not None else f"{m} n/a"
                               for m, s in self.taylor.slopes.items())
            parts.append(f"Taylor remainder slope (want {self.taylor.order}): {slopes}")
        if self.sensitivity is not None:
            noticed, leaf, rel = self.sensitivity
            parts.append(f"sensitivity self-test: a relative error of {rel:g} in hand {leaf} is "
                         + ("noticed" if noticed else "NOT noticed: the tolerances are too loose"))
        if self.batch is not None:
            parts.append(f"batch consistency: {self.batch.verdict}")
        parts.append("OK" if self.ok else "FAILED")
        return "\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A machine-readable form (plain dicts, lists, numbers and strings), e.g. for CI."""
        def rows(report):
            return [{"leaf": r.leaf, "shape": list(r.shape), "scale": r.scale,
                     "abs_err": r.abs_err, "rel_err": r.rel_err, "err_over_tol": r.tol_ratio,
                     "ok": r.ok} for r in report.rows]

        out: dict[str, Any] = {
            "ok": self.ok, "dtype": self.dtype, "value": self.value,
            "reference": self.reference,
            "pairs": [{"method": m, "reference": r, "rtol": rep.rtol, "atol": rep.atol,
                       "ok": rep.ok, "leaves": rows(rep)} for (m, r), rep in self.reports.items()],
            "layers": [{"path": v.path, "verdict": v.status, "detail": v.detail}
                       for v in self.layers],
        }
        if self.deltas is not None:
            out["deltas"] = {"first_divergence": self.deltas.first_divergence,
                             "layers": [{"output_of": p, "ok": r.ok} for p, r in self.deltas.rows]}
        if self.kinks is not None:
            out["kinks"] = {"excluded": self.kinks.count, "total": self.kinks.total,
                            "examples": list(self.kinks.examples)}
        if self.taylor is not None:
            out["taylor"] = {"order": self.taylor.order, "slopes": self.taylor.slopes}
        if self.sensitivity is not None:
            out["sensitivity"] = {"noticed": self.sensitivity[0], "leaf": self.sensitivity[1],
                                  "relative_error": self.sensitivity[2]}
        if self.batch is not None:
            out["batch"] = self.batch.verdict
        return out


def _reference(methods: Sequence[str]) -> str:
    return next((m for m in _EXACT if m in methods), methods[0])


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
    methods: Sequence[str] | None = None,
    l2: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
    state: PyTree = (),
    rtol: float | None = None,
    atol: float | None = None,
    eps: float | None = None,
    batch_size: int | None = None,
    layers: bool = True,
    kinks: bool = True,
    taylor: bool = False,
    sensitivity_error: float | None = None,
    batch: bool = False,
    verbose: bool = False,
) -> CheckResult:
    r"""A model's gradient by several independent methods, and the witnesses that localise.

    The objective (docs/math.md §4) is
    ``R(θ) = loss(model.apply(θ, x, key=key, train=train), y) + ½ λ Σ ||W||²`` with
    ``λ = l2`` over the params the layers declare weight-decayed. For a model holding
    state (``BatchNorm``) ``model.apply`` is ``model.apply_with_state(θ, state, x, ...)[0]``:
    ``R`` is a function of the params alone, the state an input held fixed, the new state
    discarded; every method and witness differentiates that same ``R``.

    Args:
      model: the model (a :class:`~funnet.Layer` or stax pair); one holding state needs
        ``state``.
      params: its params.
      x: the inputs.
      y: the targets.
      loss: ``loss(pred, target) -> scalar``; a funnet :class:`~funnet.Loss` for
        ``"hand"``, else any callable.
      methods: two or more of :data:`METHODS` (default: all of them, less ``"hand"`` when
        ``loss`` is a plain callable without a hand gradient):

        * ``"hand"``: :func:`funnet.backprop.value_and_grad`, the hand δ-recursion;
        * ``"formula"``: ``jax.grad`` of the model in the ``"formula"`` wiring, every
          activation through its plain formula ``f``: independent of every hand-written
          derivative, and the reference whenever it is listed;
        * ``"reverse"``: ``jax.grad(R)`` through the hand-wired ``custom_vjp`` rules;
        * ``"forward"``: :func:`forward_grad` (``N`` JVPs) on :func:`funnet.forward_twin`;
        * ``"numerical"``: central differences (:func:`numerical_grad`, step ``eps``).
      l2: ``λ`` of the L2 penalty.
      key: PRNG key for stochastic layers (the same mask for every method and evaluation).
      train: the mode, as for ``apply`` (``Dropout`` drops with ``train=True``;
        ``BatchNorm`` uses the batch statistics).
      state: the model's state (from ``init_with_state``), required when it holds state.
      rtol: overrides the relative tolerance of :func:`default_tolerances` for every pair.
      atol: overrides the absolute tolerance likewise.
      eps: the relative step of the numerical method.
      batch_size: how many coordinates the numerical method evaluates at once under
        ``jax.vmap`` (default: all of them, up to a memory bound; see
        :func:`numerical_grad`). Vmapped over ``B`` perturbed kernels, a convolution is
        one grouped convolution; with XLA's CPU backend at ``-O0`` (as the test suite
        compiles) one padded on both sides takes time growing as ``B²`` (4.7 s at
        ``B = 128`` for a ``[3, 6, 6, 6]`` input): pass 1 for such a network there.
      layers: check every leaf layer's hand backward against ``jax.vjp`` of its formula at
        the inputs the forward pass gave it, and name the first wrong one.
      kinks: the numerical method excludes the coordinates whose stencil moves a unit onto
        or across a kink of an activation (``Layer.kinks``) or onto another piece of a
        piecewise layer (``Layer.pieces``: MaxPool's arg-max), and reports them; when more
        than half are excluded it warns (``UserWarning``) that the numerical witness checked
        little.
      taylor: fit the Taylor-remainder slope of every analytic gradient (2 when right).
      sensitivity_error: inject this relative error (e.g. ``1e-3``) into the hand
        gradient's largest leaf and require that the check notices it.
      batch: compare the batch gradient with the mean of per-example gradients and with
        the gradient of the shuffled batch (a model with state in training mode may couple
        the batch: its verdict is then ``"coupled"``, not ``"failed"``).
      verbose: print the report.

    With ``"hand"`` in ``methods`` and a ``serial`` model, the δ-trace compares the hand
    δ at each top-level layer's output with reverse mode (zero probes added there).

    Returns a :class:`CheckResult`. Raises :class:`GradientCheckError` naming the first
    wrong layer (by its own check) and the first method pair and params leaf out of
    tolerance; ``err.result`` holds the whole report.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.Dense(4), funnet.Softplus, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 3))
    >>> x = jnp.linspace(-1.0, 1.0, 18).reshape(6, 3)
    >>> y = jnp.sum(x, axis=1, keepdims=True)
    >>> result = check_model(net, params, x, y, funnet.mse, l2=0.1,
    ...                      methods=("hand", "formula", "numerical"))
    >>> result.ok, result.reference, sorted(result.reports)
    (True, 'formula', [('hand', 'formula'), ('numerical', 'formula')])
    """
    if methods is None:
        methods = METHODS if isinstance(loss, Loss) else tuple(m for m in METHODS if m != "hand")
    methods = _validate_methods(methods, loss)
    model = as_layer(model)
    couples = model.stateful and bool(train)  # batch statistics: batch-coupled in training
    if model.stateful:
        if not jax.tree_util.tree_leaves(state):
            raise StatefulModelError(
                f"check_model: {model.stateful_path()} holds state: pass state= (from "
                "model.init_with_state); the gradient is then that of the params with the "
                "state held fixed")
        model = _state_held(model, state)
    reference = _reference(methods)
    dtype = _float_dtype(params, "check_model")
    if l2:
        model.decay_mask(params)  # a layer that declares no decayed params: refuse it now
    l2 = float(l2)
    train = bool(train)

    def penalty(p):
        return l2_penalty(p, l2, model=model) if l2 else 0.0

    def objective(p, net=model):  # R(θ) = loss(model(x), y) + ½ λ Σ ||W||²
        return loss(net.apply(p, x, key=key, train=train), y) + penalty(p)

    @functools.cache
    def kinked() -> tuple:
        """The leaf layers with kinks (path, layer), from an abstract trace: no forward pass."""
        box = []
        jax.eval_shape(lambda p: box.extend(walk(model, p, x, key=key, train=train)[1]) or 0,
                       params)
        return tuple(v for v in box if has_pieces(v.layer))

    def probed(p):  # R(θ) and the pre-activations of the kinked layers
        out, vs = walk(model, p, x, key=key, train=train)
        return loss(out, y) + penalty(p), [v.x for v in vs if has_pieces(v.layer)]

    values, exclusion, deltas, directions = {}, None, None, None

    def compute(method: str) -> PyTree:
        nonlocal exclusion, deltas, directions
        if method == "hand":
            serial = model.kind == "serial"
            out = programs.hand(model, loss, l2, train, serial)(params, x, y, key)
            values[method], g = out[0], out[1]
            if serial:
                deltas = delta_trace(model, params, x, y, loss, out[2], key=key, train=train,
                                     l2=l2, dtype=dtype, rtol=rtol, atol=atol)
            return g
        if method in ("formula", "reverse"):
            wiring = "formula" if method == "formula" else "vjp"
            values[method], g = programs.value_and_grad(model, loss, l2, train, wiring)(
                params, x, y, key)
            return g
        if method == "forward":
            g, directions = programs.directional(model, loss, l2, train)(params, x, y, key)
            return g
        if kinks and kinked():
            g, exclusion = kink_aware_numerical_grad(probed, params, kinked(), eps=eps,
                                                     batch_size=batch_size)
            if exclusion.mostly_excluded:
                warnings.warn(f"check_model: {exclusion}", UserWarning, stacklevel=3)
            return g
        return numerical_grad(objective, params, eps=eps, batch_size=batch_size)

    grads = {m: compute(m) for m in methods}
    value = next((values[m] for m in ("formula", "reverse", "hand") if m in values), None)
    value = float(objective(params) if value is None else value)
    ref = grads[reference]
    if exclusion is not None and exclusion.count:  # excluded entries take the reference's
        grads["numerical"] = jax.tree_util.tree_map(
            lambda g, r, m: jnp.where(m, r, g), grads["numerical"], ref, exclusion.mask)
    g_max = max((float(np.max(np.abs(g), initial=0.0)) for g in jax.tree_util.tree_leaves(ref)),
                default=0.0)

    def tolerances(numerical: bool) -> tuple[float, float]:
        scale = max(g_max, abs(value)) if numerical else g_max
        scale = scale if scale > 0 and math.isfinite(scale) else 1.0
        r, a = default_tolerances(dtype, numerical=numerical, scale=scale)
        return (r if rtol is None else rtol), (a if atol is None else atol)

    reports = {}
    projected = None
    if directions is not None:  # ⟨∇_l R, v_l⟩ of the reference, leaf by leaf
        host = on_host(jax.tree_util.tree_leaves((ref, directions)))  # NumPy: no compile
        projected = jax.tree_util.tree_map(
            lambda g, v: np.vdot(np.asarray(g), np.asarray(v)) if host else jnp.vdot(g, v),
            ref, directions)
    for m in methods:
        if m == reference:
            continue
        pair_rtol, pair_atol = tolerances("numerical" in (m, reference))
        if m == "forward":
            scale = max(_max_abs(projected), 1e-300)
            r, a = default_tolerances(dtype, numerical=False, scale=scale)
            reports[m, reference] = compare(projected, grads[m], names=(reference, m),
                                            rtol=r if rtol is None else rtol,
                                            atol=a if atol is None else atol)
        else:
            reports[m, reference] = compare(ref, grads[m], names=(reference, m),
                                            rtol=pair_rtol, atol=pair_atol)

    verdicts = layer_verdicts(model, params, x, key=key, train=train, rtol=rtol,
                              atol=atol) if layers else ()
    slopes = None
    if taylor:
        analytic = {m: grads[m] for m in methods if m in _ANALYTIC and m != "forward"}
        slopes = taylor_slope(objective, params, analytic,
                              probes=lambda p: probed(p)[1],
                              pieces=[functools.partial(piece_ids, v.layer)
                                      for v in kinked()])
    self_test = None
    if sensitivity_error is not None:
        target = "hand" if "hand" in methods and reference != "hand" else next(
            m for m in methods if m not in (reference, "forward"))
        noticed, leaf = sensitivity(ref, grads[target], *tolerances(
            "numerical" in (target, reference)), relative_error=sensitivity_error)
        self_test = (noticed, leaf, float(sensitivity_error))
    consistency = None
    if batch:
        formula = programs.value_and_grad(model, loss, l2, train, "formula")
        consistency = batch_consistency(lambda xb, yb: formula(params, xb, yb, key)[1], x, y,
                                        dtype=dtype, couples=couples)

    result = CheckResult(reference, reports, grads, value, np.dtype(dtype).name, verdicts,
                         deltas, exclusion, slopes, self_test, consistency)
    if verbose:
        print(result)
    if not result.ok:
        raise GradientCheckError(_failure_message(result, model, params), result)
    return result


def _state_held(model: Layer, state: PyTree) -> Layer:
    """``model`` with ``state`` bound: a stateless layer of the same tree (paths, names,
    params, rules), whose passes run with ``state`` held fixed and drop the new state."""
    if not model.stateful:
        return model
    if model.kind in ("serial", "parallel"):
        _expect_sequence(model.kind, state, len(model.children), "state")
        combine = serial if model.kind == "serial" else parallel
        return combine(*(_state_held(c, s) for c, s in zip(model.children, state)))

    def init_with_state(key, input_shape):
        return (*model.init_with_state(key, input_shape)[:2], ())

    def apply_with_state(params, _, x, *, key=None, train=False, mask=None):
        return model.apply_with_state(params, state, x, key=key, train=train, mask=mask)[0], ()

    forward_with_state = None
    if model.forward_with_state is not None:
        def forward_with_state(params, _, x, *, key=None, train=False, mask=None):
            y, _, res = model.forward_with_state(params, state, x, key=key, train=train,
                                                 mask=mask)
            return y, (), res

    rewire = None if model.rewire is None else (
        lambda wiring: _state_held(model.rewired(wiring), state))
    return dataclasses.replace(model, init_with_state=init_with_state,
                               apply_with_state=apply_with_state,
                               forward_with_state=forward_with_state, stateful=False,
                               rewire=rewire)


def _failure_message(result: CheckResult, model: Layer, params: PyTree) -> str:
    """What went wrong, most specific first: the layer, the leaf, the δ, the self-tests."""
    parts = []
    wrong = result.first_wrong_layer
    if wrong is not None:
        parts.append(f"the first wrong layer is {wrong.path}: its hand backward disagrees "
                     f"with jax.vjp of its formula ({wrong.detail})")
    failure = result.first_failure
    if failure is not None:
        (m, ref_name), row = failure
        report = result.reports[m, ref_name]
        n_bad = sum(not r.ok for rep in result.reports.values() for r in rep.rows)
        parts.append(
            f"{m} vs {ref_name} disagree at params leaf {row.leaf} "
            f"(shape {row.shape}, layer {_layer_at(model, params, row.leaf)}): "
            f"max abs err {row.abs_err:.3e}, max rel err {row.rel_err:.3e} exceed "
            f"rtol={report.rtol:.1e}, atol={report.atol:.1e} ({result.dtype}); "
            f"{n_bad} (pair, leaf) row(s) out of tolerance")
    if result.deltas is not None and not result.deltas.ok:
        where = result.deltas.first_divergence
        if where in result.deltas.inside:
            parts.append(f"the hand δ first diverges inside a layer, at {where} (computed by "
                         "that layer's own backward)")
        else:
            parts.append(f"the hand δ first diverges at the output of {where} (computed by "
                         "the backward of the layer after it)")
    if result.taylor is not None:
        bad = {m: s for m, s in result.taylor.slopes.items() if not result.taylor.ok(m)}
        if bad:
            parts.append(f"Taylor remainder slope {bad} below {result.taylor.order - 0.5} "
                         f"(want {result.taylor.order}): the gradient is wrong")
    if result.sensitivity is not None and not result.sensitivity[0]:
        parts.append(f"sensitivity self-test: a relative error of {result.sensitivity[2]:g} in "
                     f"{result.sensitivity[1]} goes unnoticed at these tolerances")
    if result.batch is not None and not result.batch.ok:
        parts.append("batch consistency failed: the gradient depends on the order of the batch "
                     "or is not the mean of per-example gradients")
    return "; ".join(parts) + "; print(err.result) for the tables"
