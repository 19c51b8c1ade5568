r"""The witnesses beyond a second gradient: per-layer verdicts, the δ-trace, kink-aware
finite differences, the Taylor-remainder slope, the sensitivity self-test and batch
consistency. :func:`funnet.check_model` runs them; each is usable alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..contract import Layer, PyTree
from . import programs
from .comparison import GradientCheckError, Report, compare, default_tolerances, on_host
from .gradients import _chunk, _float_dtype, default_eps
from .layer import LayerCheck, layer_report
from .visits import Visit

__all__ = [
    "BatchConsistency",
    "DeltaTrace",
    "KinkExclusion",
    "LayerVerdict",
    "Taylor",
    "batch_consistency",
    "delta_trace",
    "has_pieces",
    "kink_aware_numerical_grad",
    "layer_verdicts",
    "piece_ids",
    "sensitivity",
    "taylor_slope",
]


@jax.jit
def _max_abs_device(leaves: list) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(v)).astype(jnp.float32) for v in leaves]))


def _max_abs(tree: PyTree) -> float:
    """``max |entry|`` over the leaves of ``tree`` (0 for none): on device, or in NumPy for
    small arrays in host memory (:func:`funnet.check.comparison.on_host`)."""
    leaves = [v for v in jax.tree_util.tree_leaves(tree) if np.size(v)]
    if not leaves:
        return 0.0
    if on_host(leaves):
        return float(np.max([np.max(np.abs(np.asarray(v).astype(np.float32))) for v in leaves]))
    return float(_max_abs_device(leaves))


def _analytic_report(ref: PyTree, got: PyTree, dtype: Any, names: tuple[str, str],
                     rtol: float | None = None, atol: float | None = None) -> Report:
    scale = _max_abs(ref)
    r, a = default_tolerances(dtype, numerical=False, scale=scale if scale > 0 else 1.0)
    return compare(ref, got, names=names, rtol=r if rtol is None else rtol,
                   atol=a if atol is None else atol)


# ---------------------------------------------------------------------------------------
# Per-layer verdicts.


@dataclasses.dataclass(frozen=True)
class LayerVerdict:
    """One leaf layer's hand backward against ``jax.vjp`` of its formula, at the inputs the
    forward pass gave it. ``status``: ``"ok"``, ``"wrong"`` or ``"no hand rule"``."""

    path: str
    status: str
    detail: str = ""
    check: LayerCheck | None = None

    @property
    def ok(self) -> bool:
        return self.status != "wrong"


def layer_verdicts(model: Layer, params: PyTree, x: Any, *, key: jax.Array | None = None,
                   train: bool = False, rtol: float | None = None,
                   atol: float | None = None) -> tuple[LayerVerdict, ...]:
    """Every leaf layer's hand backward against ``jax.vjp`` of its formula, at the inputs,
    params and key the forward pass gave it (one compiled program for all of them)."""
    fn, visits = programs.layer_pullbacks(model, train)
    results = fn(params, x, key)
    verdicts = []
    for (path, layer), (p, xin, pulled) in zip(visits, results):
        if pulled is None:
            verdicts.append(LayerVerdict(path, "no hand rule"))
            continue
        try:
            c = layer_report(layer, p, xin, *pulled, rtol=rtol, atol=atol)
            verdicts.append(LayerVerdict(path, "ok", "", c))
        except GradientCheckError as e:
            verdicts.append(LayerVerdict(path, "wrong", _what_is_off(e), e.result))
    return tuple(verdicts)


def _what_is_off(error: GradientCheckError) -> str:
    """``dparams['W']: max rel err 1.0e-02 > rtol 1e-09`` for the first leaf out of tolerance."""
    check = error.result
    if not isinstance(check, LayerCheck):
        return str(error)
    if check.missing:
        return f"no gradient for {', '.join(check.missing)}, but jax.vjp gives one"
    for what, report in (("dparams", check.params), ("dx", check.inputs)):
        row = report.first_failure
        if row is not None:
            leaf = row.leaf if what == "dparams" else row.leaf.strip("[]'")[1:]
            return (f"{what}{leaf and ' ' + leaf}: max abs err {row.abs_err:.2e}, max rel err "
                    f"{row.rel_err:.2e} > rtol {report.rtol:.0e}")
    return str(error)


# ---------------------------------------------------------------------------------------
# The δ-trace.


@dataclasses.dataclass(frozen=True)
class DeltaTrace:
    """Hand ``δ`` at each top-level layer's output against reverse mode with zero probes.

    ``rows``: ``(path, Report)`` from the output layer down; a layer with
    :attr:`~funnet.Layer.inner_deltas` (a recurrent layer) adds, after the row of its
    output, one row per error term inside it (``serial[1] › LSTM(3) › h``: ``∂L/∂h_t``
    through time), its paths listed in ``inside``. ``first_divergence``: the first row
    that disagrees, or ``None``: an output row means the layer above has the first wrong
    backward, an ``inside`` row that the layer itself computes it wrongly.
    """

    rows: tuple[tuple[str, Report], ...]
    inside: tuple[str, ...] = ()

    @property
    def first_divergence(self) -> str | None:
        return next((path for path, r in self.rows if not r.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None


def delta_trace(model: Layer, params: PyTree, x: Any, y: Any, loss: Callable, hand_deltas:
                Sequence[Any], *, key: jax.Array | None, train: bool, l2: float,
                dtype: Any, rtol: float | None = None, atol: float | None = None) -> DeltaTrace:
    """Compare ``hand_deltas[l]`` (from ``return_deltas``) with ``∂R/∂probe_l`` at 0, where
    ``probe_l`` is added to the output of top-level layer ``l`` of the formula wiring; and
    a layer's inner deltas (``∂L/∂h_t`` of a recurrent layer) with ``∂R/∂probes`` at 0 of
    probes added inside it by its ``probed`` forward."""
    inner = {i: d for i, d in enumerate(hand_deltas)
             if d is not None and model.children[i].inner_rule is not None}
    zeros = {f"serial[{i}]": jax.tree_util.tree_map(jnp.zeros_like, d._replace(output=None))
             for i, d in inner.items()}
    ref, ref_inside = programs.delta_reference(model, loss, l2, train)(params, x, y, key, zeros)
    rows, inside = [], []
    for i in reversed(range(len(ref))):
        if hand_deltas[i] is None:
            continue
        name = f"serial[{i}] › {model.children[i].name}"
        hand = hand_deltas[i].output if i in inner else hand_deltas[i]
        # where the hand rule sends no gradient (None: a sequence mask), neither is compared
        pruned = jax.tree_util.tree_map(lambda h, r: None if h is None else r, hand,
                                        ref[i], is_leaf=lambda v: v is None)
        rows.append((name, _analytic_report(pruned, hand, dtype, ("reverse δ", "hand δ"),
                                            rtol, atol)))
        if i in inner:
            for field, got in inner[i]._asdict().items():
                if field == "output" or got is None:
                    continue
                want = getattr(ref_inside[f"serial[{i}]"], field)
                rows.append((f"{name} › {field}", _analytic_report(
                    want, got, dtype, ("reverse δ", "hand δ"), rtol, atol)))
                inside.append(rows[-1][0])
    return DeltaTrace(tuple(rows), tuple(inside))


# ---------------------------------------------------------------------------------------
# Kink-aware central differences.


@dataclasses.dataclass(frozen=True)
class KinkExclusion:
    """The params coordinates whose central-difference stencil straddles a kink.

    ``count`` of ``total`` coordinates were excluded (their numerical entries replaced by the
    reference's, so they do not count); ``examples``: the first few, in words.
    """

    count: int
    total: int
    examples: tuple[str, ...]
    mask: PyTree = None

    @property
    def mostly_excluded(self) -> bool:
        """More than half of the coordinates excluded: the numerical witness says little."""
        return self.count > self.total / 2

    def __str__(self) -> str:
        if not self.count:
            return f"kink-aware differences: no stencil of the {self.total} coordinates " \
                   "reaches a kink"
        more = "" if self.count <= len(self.examples) else f", and {self.count - len(self.examples)} more"
        text = (f"kink-aware differences: {self.count} of {self.total} coordinates excluded, "
                f"their stencil reaches a kink: {'; '.join(self.examples)}{more}")
        if self.mostly_excluded:
            text += (f" (the numerical witness checked only {self.total - self.count} of "
                     f"{self.total}: move the inputs off the kinks, e.g. other inputs or "
                     "nonzero biases)")
        return text


def piece_ids(layer: Layer, z: Any) -> list:
    """The smooth piece each unit of ``layer``'s input ``z`` lies on, as integer arrays:
    ``sign(z - k)`` for every kink ``k`` of ``layer.kinks`` (0 exactly at the kink), and
    ``layer.pieces(z)`` (e.g. MaxPool's arg-max per window) when the layer declares it. Two
    inputs are on the same piece of the layer iff every id agrees."""
    ids = [jnp.sign(jnp.ravel(z) - k).astype(jnp.int8) for k in layer.kinks]
    if layer.pieces is not None:
        ids.append(jnp.ravel(layer.pieces(z)).astype(jnp.int32))
    return ids


def has_pieces(layer: Layer) -> bool:
    """Whether ``layer`` is piecewise smooth (kinks or declared pieces)."""
    return bool(layer.kinks) or layer.pieces is not None


def kink_aware_numerical_grad(objective: Callable[[PyTree], tuple[Any, list]], params: PyTree,
                              probe_visits: Sequence[Visit], *, eps: float | None = None,
                              batch_size: int | None = None) -> tuple[PyTree, KinkExclusion]:
    r"""Central differences that know where the kinks are.

    ``objective(p) -> (R(p), [z_j])`` returns the inputs ``z_j`` of the piecewise layers
    ``probe_visits[j]`` (elementwise kinks ``layer.kinks``, or a ``layer.pieces`` function
    such as MaxPool's arg-max). Coordinate ``i`` is *excluded* when some unit is on another
    piece (:func:`piece_ids`: for a kink ``k``, another sign of ``z - k``, 0 counting as
    its own) at ``θ - Δ_i e_i`` or ``θ + Δ_i e_i`` than at ``θ``: there the difference
    quotient mixes two one-sided slopes. A unit that sits exactly on a kink but that
    coordinate ``i`` does not move excludes nothing. Returns ``(g, exclusion)``; ``g`` has
    NaN at excluded coordinates.
    """
    dtype = _float_dtype(params, "numerical_grad")
    step = default_eps(dtype) if eps is None else float(eps)
    theta0, unravel = ravel_pytree(params)
    n = int(theta0.size)
    # per entry of the concatenated crossing vector: (visit j, its shape, flat unit, kink or
    # None for a declared piece)
    meta: list = []
    _, z0s = objective(params)
    for j, (v, z) in enumerate(zip(probe_visits, z0s)):
        for k in v.layer.kinks:
            meta += [(j, np.shape(z), u, k) for u in range(int(np.size(z)))]
        if v.layer.pieces is not None:
            shape = jax.eval_shape(v.layer.pieces, z).shape
            meta += [(j, shape, u, None) for u in range(math.prod(shape))]
    if n == 0:
        return params, KinkExclusion(0, 0, ())

    def crossings(za, zb, z0):
        parts = []
        for v, a, b, c in zip(probe_visits, za, zb, z0):
            for ia, ib, ic in zip(piece_ids(v.layer, a), piece_ids(v.layer, b),
                                  piece_ids(v.layer, c)):
                parts.append((ia != ic) | (ib != ic))
        return jnp.concatenate(parts) if parts else jnp.zeros((1,), bool)

    @jax.jit
    def run(theta):
        _, z0 = objective(unravel(theta))

        def one(i):
            t = theta[i]
            d = step * jnp.maximum(1, jnp.abs(t))
            up, down = t + d, t - d
            fu, zu = objective(unravel(theta.at[i].set(up)))
            fd, zd = objective(unravel(theta.at[i].set(down)))
            g = (fu - fd) / (up - down)
            c = crossings(zu, zd, z0)
            return g.astype(theta.dtype), jnp.any(c), jnp.argmax(c)

        return jax.lax.map(one, jnp.arange(n), batch_size=_chunk(n, batch_size))

    g, crossed, first = (np.asarray(a) for a in run(theta0))
    examples = []
    flat_names = [jax.tree_util.keystr(p) for p, leaf in
                  jax.tree_util.tree_flatten_with_path(params)[0] for _ in range(np.size(leaf))]
    for i in np.flatnonzero(crossed)[:3]:
        j, shape, u, k = meta[int(first[i])]
        idx = tuple(int(d) for d in np.unravel_index(u, shape)) if shape else ()
        unit = idx[1:] if len(idx) > 1 else ()
        unit = unit[0] if len(unit) == 1 else unit
        what = "unit" if k is not None else "window"
        where = f"sample {idx[0]}, {what} {unit}" if len(idx) > 1 else f"entry {idx}"
        change = f"reaches or crosses {k:g}" if k is not None else "changes its piece (arg-max)"
        examples.append(f"params {flat_names[i]} #{i}: {where} of {probe_visits[j].path} "
                        f"{change}")
    g = np.where(crossed, np.nan, g)
    mask = unravel(jnp.asarray(crossed))
    return unravel(jnp.asarray(g, theta0.dtype)), KinkExclusion(int(crossed.sum()), n,
                                                               tuple(examples), mask)


# ---------------------------------------------------------------------------------------
# The Taylor-remainder test.


@dataclasses.dataclass(frozen=True)
class Taylor:
    """Fitted log-log slopes of the Taylor remainder, one per gradient method.

    ``slopes[method]``: the slope of ``log r(h)`` against ``log h`` with
    ``r(h) = |R(θ + h v) - R(θ) - h ∇R·v|``, the median over directions ``v``: 2 for a right
    gradient, 1 for a wrong one; ``None`` when fewer than 3 steps were usable (each step
    must keep every pre-activation on its side of every kink and ``r`` above rounding).
    ``order=3`` adds ``½ h² vᵀ H v`` (slope 3) with the Hessian-vector product.
    """

    slopes: dict[str, float | None]
    order: int
    steps: tuple[float, ...]

    def ok(self, method: str) -> bool:
        s = self.slopes.get(method)
        return s is None or s > self.order - 0.5


def _fit_slope(hs: np.ndarray, rs: np.ndarray, floor: float, points: int = 7) -> float | None:
    """Least-squares slope of ``log r`` on ``log h`` over the ``points`` smallest usable
    steps (the asymptotic regime: a wrong gradient's ``h`` term dominates there), or None
    when fewer than 3 remain or they span less than a decade."""
    keep = np.isfinite(rs) & (rs > floor)
    h, r = hs[keep], rs[keep]
    order = np.argsort(h)[:points]
    h, r = h[order], r[order]
    if h.size < 3 or h.max() / h.min() < 10:
        return None
    return float(np.polyfit(np.log(h), np.log(r), 1)[0])


def taylor_slope(objective: Callable[[PyTree], Any], params: PyTree, grads: dict[str, PyTree],
                 *, probes: Callable[[PyTree], list] | None = None,
                 kinks: Sequence[tuple[float, ...]] = (),
                 pieces: Sequence[Callable[[Any], list]] = (), hvp: Callable | None = None,
                 directions: int = 3, seed: int = 0) -> Taylor:
    """The Taylor-remainder test for each gradient in ``grads`` (see :class:`Taylor`).

    Along each direction ``v`` the remainder is evaluated at 17 steps ``h`` from 1e-1 down
    to 1e-5 (log-spaced, :attr:`Taylor.steps`); a step that carries a kinked
    pre-activation onto or across a kink is dropped.

    Args:
      objective: ``R(params) -> scalar``, traceable by JAX (it runs under ``jax.jit``).
      params: the point ``θ``, a pytree of floating-point arrays; its dtype sets the
        rounding floor below which remainders are ignored.
      grads: ``{method: gradient}``, the gradients of ``R`` at ``θ`` to test (pytrees like
        ``params``); :attr:`Taylor.slopes` has the same keys.
      probes: ``probes(p) -> [z, ...]``: the kinked pre-activations at params ``p``, watched
        along each step. ``None`` (the default): no step is dropped.
      kinks: ``kinks[i]``: the kink points of ``probes(p)[i]``; a step is dropped when the
        sign of ``z - k`` changes for an entry ``z`` and a kink ``k`` (it crosses, reaches
        or leaves the kink).
      pieces: ``pieces[i]``: ``z -> [integer arrays]``, the piece of ``probes(p)[i]`` each
        unit lies on (e.g. ``functools.partial(piece_ids, layer)``); a step is dropped when
        any id changes.
      hvp: ``hvp(v) -> H v``, the Hessian-vector product (pytrees like ``params``, e.g.
        ``jax.jvp`` of ``jax.grad`` on :func:`funnet.forward_twin`); it switches to order 3.
        ``None`` (the default): order 2.
      directions: how many random directions ``v`` (normal, scaled to the norm
        ``max(|θ|, 1)``); each slope is the median over them.
      seed: direction ``d`` is drawn with ``jax.random.PRNGKey(seed + d)``.
    """
    theta, unravel = ravel_pytree(params)
    dtype = theta.dtype
    eps = float(np.finfo(dtype).eps)
    hs = np.logspace(-1, -5, 17)
    order = 3 if hvp is not None else 2
    f0 = float(objective(params))
    floor = 64 * eps * max(abs(f0), 1.0)
    flat = {m: np.asarray(ravel_pytree(g)[0], np.float64) for m, g in grads.items()}
    z0 = probes(params) if probes is not None else []
    scale = max(float(jnp.linalg.norm(theta)), 1.0)
    f = jax.jit(lambda t: objective(unravel(t)))
    zf = jax.jit(lambda t: probes(unravel(t))) if probes is not None else None
    slopes: dict[str, list[float]] = {m: [] for m in grads}
    for d in range(directions):
        v = jax.random.normal(jax.random.PRNGKey(seed + d), theta.shape, dtype)
        v = v * (scale / jnp.linalg.norm(v))
        vn = np.asarray(v, np.float64)
        quad = (0.5 * float(jnp.vdot(v, ravel_pytree(hvp(unravel(v)))[0]))
                if hvp is not None else 0.0)
        usable = np.ones(hs.size, bool)
        values = np.empty(hs.size)
        for j, h in enumerate(hs):
            t = theta + h * v
            values[j] = float(f(t))
            if zf is not None:
                zt = zf(t)
                for a, b, ks in zip(z0, zt, kinks):
                    for k in ks:
                        if np.any(np.sign(np.asarray(a) - k) != np.sign(np.asarray(b) - k)):
                            usable[j] = False
                for a, b, ids in zip(z0, zt, pieces):
                    if any(np.any(np.asarray(p) != np.asarray(q)) for p, q in zip(ids(a),
                                                                                 ids(b))):
                        usable[j] = False
        for m, g in flat.items():
            r = np.abs(values - f0 - hs * float(g @ vn) - hs**2 * quad)
            slope = _fit_slope(hs[usable], r[usable], floor)
            if slope is not None:
                slopes[m].append(slope)
    return Taylor({m: (float(np.median(s)) if s else None) for m, s in slopes.items()}, order,
                  tuple(float(h) for h in hs))


# ---------------------------------------------------------------------------------------
# The sensitivity self-test.


def sensitivity(reference: PyTree, hand: PyTree, rtol: float, atol: float, *,
                relative_error: float = 1e-3) -> tuple[bool, str]:
    """Would the comparison at ``rtol``/``atol`` notice ``relative_error`` in one leaf?

    The leaf of ``hand`` holding the largest entry is scaled by ``1 + relative_error`` and
    compared with ``reference`` again. Returns ``(noticed, leaf)``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(hand)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(hand)[0]]
    big = int(np.argmax([float(np.max(np.abs(np.asarray(v)), initial=0.0)) for v in leaves]))
    leaves = list(leaves)
    leaves[big] = leaves[big] * (1 + relative_error)
    report = compare(reference, treedef.unflatten(leaves), rtol=rtol, atol=atol)
    return not report.ok, paths[big]


# ---------------------------------------------------------------------------------------
# Batch consistency.


@dataclasses.dataclass(frozen=True)
class BatchConsistency:
    """The batch gradient against the mean of per-example gradients and under shuffling.

    ``verdict``: ``"consistent"``; ``"coupled"`` (shuffle invariant, but not the mean of
    per-example gradients: a layer couples the batch, e.g. batch statistics); ``"failed"``
    (not shuffle invariant, or not separable though no layer couples the batch: a mean/sum
    or mask mistake).
    """

    verdict: str
    per_example: Report
    shuffled: Report

    @property
    def ok(self) -> bool:
        return self.verdict != "failed"


def batch_consistency(grad_fn: Callable[[Any, Any], PyTree], x: Any, y: Any, *, dtype: Any,
                      couples: bool, seed: int = 0) -> BatchConsistency:
    """``grad_fn(x, y)`` on the batch, on each example alone (``vmap``) and shuffled."""
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    full = grad_fn(x, y)
    per = jax.vmap(lambda xi, yi: grad_fn(jax.tree_util.tree_map(lambda a: a[None], xi),
                                          jax.tree_util.tree_map(lambda a: a[None], yi)))(x, y)
    mean = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), per)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = grad_fn(jax.tree_util.tree_map(lambda a: a[order], x),
                       jax.tree_util.tree_map(lambda a: a[order], y))
    r_per = _analytic_report(full, mean, dtype, ("batch", "mean of per-example"))
    r_shuf = _analytic_report(full, shuffled, dtype, ("batch", "shuffled batch"))
    if not r_shuf.ok:
        verdict = "failed"
    elif r_per.ok:
        verdict = "consistent"
    else:
        verdict = "coupled" if couples else "failed"
    return BatchConsistency(verdict, r_per, r_shuf)
