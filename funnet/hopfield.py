r"""Hopfield networks: Hebbian storage, asynchronous updates, energy (docs/math.md §9.5).

A Hopfield network is ``N`` binary units ``s ∈ {−1, 1}^N`` coupled by a symmetric weight
matrix ``W`` with zero diagonal. It is a memory, not a layer: patterns are stored by a
formula (no gradients, no training), and recalled by running the units until nothing
changes. Everything here is a pure function of arrays::

    hebbian(patterns) -> W               W = (1/N) Σ_μ ξ^μ ξ^μᵀ − (P/N) I   (zero diagonal)
    energy(W, s) -> E                    E = −½ sᵀ W s
    update(W, s, key, *, steps)          s_i ← sign(h_i),  h_i = Σ_j W_ij s_j,
                                         one unit i at a time (asynchronous), lax.scan
    recall(W, s, key, *, max_sweeps)     sweeps of ``update`` until a sweep changes nothing
    is_fixed_point(W, s)                 no unit would change: s_i h_i ≥ 0 for every i

**sign(0) keeps the current state**: a unit whose local field ``h_i`` is ``0`` does not
change. With that convention a unit changes only when ``s_i h_i < 0``, and then the energy
falls by ``2 |h_i| > 0``; ``E`` never increases, and strictly decreases at every change,
so a run reaches a fixed point after finitely many changes (docs/math.md §9.5). (The
other common choice, ``sign(0) = +1``, lets a unit flip at unchanged energy.)

"Zero" allows for rounding. A unit changes only when its computed field is beyond
``±τ_i``, ``τ_i = N ε Σ_j |W_ij|`` (``ε`` the machine epsilon of ``W``'s dtype): that is
twice the classic bound ``γ_N Σ_j |W_ij|``, ``γ_N ≈ N ε / 2``, on the rounding error of a
dot product summed in any order, which leaves room for the rounding of ``W``'s own
entries; so a unit changes only when the exact field certainly has the opposite sign.
Fields that are exactly ``0`` in exact arithmetic, as they often are for Hebbian
matrices (``N h_i`` is an integer there), come out as tiny nonzero numbers (``±1e-17``
in float64) once ``1/N`` is rounded; without the margin their sign would depend on the
order of summation, and a batch and its rows run alone could disagree. ``τ_i`` is tiny:
``≈ 2e-14 Σ_j |W_ij|`` in float64 for ``N = 100``. With Hebbian weights a nonzero exact
field is at least ``1/N`` and ``τ_i < N P ε``, so the computed dynamics are the exact ones
while ``2 N² P ε < 1`` (float32: for ``N = 100`` up to ``P ≈ 400``; float64: any
practical size).

States are ``[N]`` or a batch ``[B, N]`` (each row its own network run, with its own
random order of units); ``W`` is ``[N, N]``. Concrete inputs are checked before anything
is computed: states and patterns must hold only ``−1`` and ``1``, ``W`` must be square
and, for :func:`update`, :func:`recall` and :func:`is_fixed_point`, finite, symmetric (to
rounding) with an exactly zero diagonal (:func:`energy` is the formula of any real square
``W``), and the sizes must agree; a bad input raises ``ValueError`` (``TypeError`` for a
wrong kind of argument) naming the function, the argument and the shapes. Under
``jax.jit`` of the caller the values are not known and are not checked.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from ._validate import check_int

__all__ = ["Recall", "energy", "hebbian", "is_fixed_point", "recall", "update"]

_ORDERS = ("random", "sequential")


class Recall(NamedTuple):
    """What :func:`recall` returns.

    Attributes:
      states: the final states, ``[N]`` or ``[B, N]``, in the dtype of the input states.
      sweeps: how many sweeps ran (``[]`` or ``[B]``, int32), including the last sweep, in
        which nothing changed when the run converged.
      converged: whether the final state is a fixed point (``[]`` or ``[B]``, bool);
        ``False`` only when ``max_sweeps`` ran out first.
    """

    states: jax.Array
    sweeps: jax.Array
    converged: jax.Array


# -- checks (on concrete values, before any compute) ----------------------------------------


def _concrete(*arrays: Any) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _states(s: ArrayLike, fn: str, what: str = "s", *, ranks: tuple[int, ...] = (1, 2)
            ) -> jax.Array:
    """``s`` as an array of rank in ``ranks`` holding only ±1 (checked when concrete)."""
    if isinstance(s, jax.core.Tracer):
        arr = s
    else:
        try:
            arr = jnp.asarray(s)
        except TypeError as e:
            raise TypeError(f"{fn}: {what} must be an array of ±1, got {type(s).__name__}: "
                            f"{e}") from None
    shape = tuple(np.shape(arr))
    if arr.ndim not in ranks:
        wanted = " or ".join({1: "[N]", 2: "[B, N]" if what == "s" else "[P, N]"}[r]
                             for r in ranks)
        raise ValueError(f"{fn}: {what} must have shape {wanted}, got shape {shape}")
    if shape[-1] == 0 or (arr.ndim == 2 and shape[0] == 0):
        raise ValueError(f"{fn}: {what} must not be empty, got shape {shape}")
    kind = jnp.result_type(arr)
    if not (jnp.issubdtype(kind, jnp.integer) or jnp.issubdtype(kind, jnp.floating)):
        raise TypeError(f"{fn}: {what} must hold ±1 as integers or floats, got dtype {kind} "
                        f"of shape {shape}")
    if _concrete(arr):
        values = np.asarray(arr)
        bad = (values != 1) & (values != -1)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{fn}: {what} must hold only -1 and 1 (binary states), got "
                f"{values[where].item()!r} at index {where} ({int(bad.sum())} of {values.size} "
                f"entries of {what} of shape {shape} are neither -1 nor 1)")
    return arr


def _weights(W: ArrayLike, fn: str, *, hopfield: bool = True) -> jax.Array:
    """``W`` as a square float matrix; with ``hopfield``: finite, symmetric, zero diagonal."""
    arr = W if isinstance(W, jax.core.Tracer) else jnp.asarray(W)
    shape = tuple(np.shape(arr))
    if arr.ndim != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"{fn}: W must be a square matrix [N, N], got shape {shape}")
    kind = jnp.result_type(arr)
    if not (jnp.issubdtype(kind, jnp.integer) or jnp.issubdtype(kind, jnp.floating)):
        raise TypeError(f"{fn}: W must be real (integers or floats), got dtype {kind}")
    if not jnp.issubdtype(kind, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if hopfield and _concrete(arr):
        w = np.asarray(arr)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{fn}: W of shape {shape} holds NaN or inf")
        diagonal = np.diagonal(w)
        if np.any(diagonal != 0):
            i = int(np.flatnonzero(diagonal)[0])
            raise ValueError(f"{fn}: W must have a zero diagonal (no self-coupling), got "
                             f"W[{i}, {i}] = {diagonal[i].item()!r} ({int(np.sum(diagonal != 0))} "
                             f"of {shape[0]} diagonal entries are not 0)")
        gap = np.abs(w - w.T)
        # rounding: a symmetric matrix computed in floating point is symmetric to a few ulps
        tol = 16 * np.finfo(w.dtype).eps * max(float(np.max(np.abs(w))), np.finfo(w.dtype).tiny)
        if np.max(gap) > tol:
            i, j = (int(k) for k in np.unravel_index(np.argmax(gap), gap.shape))
            raise ValueError(f"{fn}: W of shape {shape} must be symmetric: W[{i}, {j}] = "
                             f"{w[i, j].item()!r} but W[{j}, {i}] = {w[j, i].item()!r}")
    return arr


def _agree(W: jax.Array, s: jax.Array, fn: str) -> None:
    if W.shape[0] != s.shape[-1]:
        raise ValueError(f"{fn}: W of shape {tuple(W.shape)} is for {W.shape[0]} units but s "
                         f"of shape {tuple(s.shape)} has {s.shape[-1]}")


def _order(order: Any, key: Any, fn: str) -> str:
    if order not in _ORDERS:
        raise ValueError(f"{fn}: order must be 'random' or 'sequential', got {order!r}")
    if order == "random" and key is None:
        raise TypeError(f"{fn}: order='random' needs a PRNG key, e.g. jax.random.key(0)")
    return order


# -- the formulas ---------------------------------------------------------------------------


def hebbian(patterns: ArrayLike) -> jax.Array:
    r"""The Hebbian weights that store ``patterns``: ``W = (1/N) Σ_μ ξ^μ ξ^μᵀ − (P/N) I``.

    ``Σ_μ ξ^μ ξ^μᵀ = Ξᵀ Ξ`` for the patterns as rows of ``Ξ [P, N]``; its diagonal is ``P``
    (``ξ_i² = 1``), so subtracting ``(P/N) I`` makes the diagonal zero: it is computed as
    ``ΞᵀΞ / N`` with the diagonal set to exactly ``0``. ``W`` is symmetric (the entries of
    ``ΞᵀΞ`` are sums of ±1, exact in floating point). A pattern is a fixed point of :func:`update` when its crosstalk with the
    others is small, which holds for random patterns while ``P ≲ 0.138 N``.

    Args:
      patterns: ``[P, N]``, the ``P`` patterns ``ξ^μ ∈ {−1, 1}^N`` as rows (integers or
        floats).

    Returns:
      ``W [N, N]``, in the patterns' float dtype (JAX's default float for integer patterns).

    >>> import jax.numpy as jnp, funnet
    >>> W = funnet.hopfield.hebbian(jnp.array([[1, -1, 1, -1], [1, 1, -1, -1]]))
    >>> W.tolist()
    [[0.0, 0.0, 0.0, -0.5], [0.0, 0.0, -0.5, 0.0], [0.0, -0.5, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]]
    """
    xi = _states(patterns, "hebbian", "patterns", ranks=(2,))
    kind = jnp.result_type(xi)
    xi = xi.astype(kind if jnp.issubdtype(kind, jnp.floating) else jnp.result_type(float))
    return _hebbian(xi, xi.shape[1])


@functools.partial(jax.jit, static_argnums=(1,))
def _hebbian(xi: jax.Array, n: int) -> jax.Array:
    # (1/N) ΞᵀΞ − (P/N) I: the diagonal of (1/N) ΞᵀΞ is P/N, set to 0 exactly (subtracting
    # a rounded P/N from a rounded P/N need not give 0 in floating point)
    return jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), xi.dtype), xi.T @ xi / n)


def energy(W: ArrayLike, s: ArrayLike) -> jax.Array:
    r"""The energy ``E(s) = −½ sᵀ W s = −½ Σ_ij W_ij s_i s_j`` of a state (or of each row).

    Args:
      W: ``[N, N]``, any real square matrix (the formula needs no symmetry and no zero
        diagonal; it is not checked for NaN or inf either, which give that energy).
      s: ``[N]`` or ``[B, N]``, states of ±1.

    Returns:
      ``E``: ``[]`` or ``[B]``, in ``W``'s float dtype.

    >>> import jax.numpy as jnp, funnet
    >>> W = funnet.hopfield.hebbian(jnp.array([[1, -1, 1, -1]]))
    >>> float(funnet.hopfield.energy(W, jnp.array([1, -1, 1, -1])))  # the stored pattern
    -1.5
    >>> float(funnet.hopfield.energy(W, jnp.array([1, 1, -1, -1])))  # two bits off: higher
    0.5
    """
    W = _weights(W, "energy", hopfield=False)
    s = _states(s, "energy")
    _agree(W, s, "energy")
    return _energy(W, s.astype(W.dtype))


@jax.jit
def _energy(W: jax.Array, s: jax.Array) -> jax.Array:
    return -0.5 * jnp.einsum("...i,ij,...j->...", s, W, s)  # −½ sᵀ W s


def is_fixed_point(W: ArrayLike, s: ArrayLike) -> jax.Array:
    r"""Whether no unit of ``s`` would change: ``s_i h_i ≥ 0`` for every ``i``, ``h = W s``.

    With ``sign(0)`` keeping the state, unit ``i`` keeps its value when ``h_i`` has its sign
    or is ``0``: a state is a fixed point of :func:`update` exactly when this holds. ``0``
    allows for rounding as in :func:`update`: the test is ``s_i h_i ≥ −τ_i``.

    Args:
      W: ``[N, N]``, symmetric with zero diagonal.
      s: ``[N]`` or ``[B, N]``, states of ±1.

    Returns:
      ``[]`` or ``[B]``, bool.

    >>> import jax.numpy as jnp, funnet
    >>> W = funnet.hopfield.hebbian(jnp.array([[1, -1, 1, -1]]))
    >>> funnet.hopfield.is_fixed_point(W, jnp.array([[1, -1, 1, -1], [1, 1, 1, -1]])).tolist()
    [True, False]
    """
    W = _weights(W, "is_fixed_point")
    s = _states(s, "is_fixed_point")
    _agree(W, s, "is_fixed_point")
    return _fixed(W, s.astype(W.dtype))


def _margin(W: jax.Array) -> jax.Array:
    """``τ_i = N ε Σ_j |W_ij|``: a bound on the rounding error of ``h_i = Σ_j W_ij s_j``."""
    n = W.shape[0]
    return n * jnp.finfo(W.dtype).eps * jnp.sum(jnp.abs(W), axis=1)


@jax.jit
def _fixed(W: jax.Array, s: jax.Array) -> jax.Array:
    h = jnp.einsum("ij,...j->...i", W, s)  # h_i = Σ_j W_ij s_j
    tau = jnp.broadcast_to(_margin(W), s.shape)
    return jnp.all(s * h >= -tau, axis=-1)  # no unit changes: s_i h_i ≥ 0, to rounding


# -- asynchronous dynamics ------------------------------------------------------------------


def _units(key: Any, n: int, steps: int, order: str) -> jax.Array:
    """The unit updated at each step, ``[steps]`` int32.

    ``"sequential"``: ``t mod N``. ``"random"``: sweep after sweep, each a fresh random
    permutation of the ``N`` units (every unit once per sweep), cut at ``steps``.
    """
    if order == "sequential":
        return jnp.arange(steps, dtype=jnp.int32) % n
    sweeps = max(1, -(-steps // n))
    keys = jax.random.split(key, sweeps)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
    return perms.reshape(-1)[:steps].astype(jnp.int32)


def _run(W: jax.Array, s: jax.Array, units: jax.Array, energies: bool):
    """Asynchronous updates of one state ``s [N]`` at ``units``; energies after each."""
    tau = _margin(W)

    def step(s, i):
        h = jnp.dot(W[i], s)  # h_i = Σ_j W_ij s_j
        up, down = h > tau[i], h < -tau[i]  # |h_i| ≤ τ_i: 0 to rounding, sign(0) keeps s_i
        new = jnp.where(up, 1.0, jnp.where(down, -1.0, s[i])).astype(s.dtype)
        s = s.at[i].set(new)
        return s, (_energy(W, s) if energies else None)

    return lax.scan(step, s, units)


@functools.partial(jax.jit, static_argnames=("steps", "order", "energies", "batched"))
def _update(W, s, key, *, steps, order, energies, batched):
    n = W.shape[0]

    def one(s, key):
        s_end, trace = _run(W, s, _units(key, n, steps, order), energies)
        if energies:
            trace = jnp.concatenate([_energy(W, s)[None], trace])
        return s_end, trace

    if not batched:
        return one(s, key)
    keys = jax.random.split(key, s.shape[0]) if order == "random" else None
    return jax.vmap(one, in_axes=(0, 0 if keys is not None else None))(s, keys)


def update(W: ArrayLike, s: ArrayLike, key: Any = None, *, steps: int,
           order: str = "random", energies: bool = False
           ) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""``steps`` asynchronous updates ``s_i ← sign(Σ_j W_ij s_j)``, one unit at a time.

    At step ``t`` one unit ``i_t`` takes the sign of its local field ``h_i = Σ_j W_ij s_j``
    computed from the current state (which already holds the earlier steps' changes); a
    field of ``0`` keeps the unit's state (``|h_i| ≤ τ_i``, zero to rounding: see
    :mod:`funnet.hopfield`). The steps run in one ``lax.scan``.
    With ``W`` symmetric and zero on the diagonal the energy :func:`energy` never
    increases from one step to the next (docs/math.md §9.5).

    Args:
      W: ``[N, N]``, symmetric with zero diagonal (e.g. from :func:`hebbian`).
      s: ``[N]`` or ``[B, N]``, states of ±1 (integers or floats).
      key: a PRNG key for ``order="random"`` (a batch splits it into one key per row);
        unused (may be ``None``) for ``"sequential"``.
      steps: the number of single-unit updates (``N`` of them make one sweep).
      order: ``"random"``: each sweep of ``N`` steps visits every unit once, in a fresh
        random order; ``"sequential"``: units ``0, 1, …, N−1, 0, 1, …``.
      energies: also return the energy before the first step and after every step.

    Returns:
      The states after ``steps`` updates (shape and dtype of ``s``); with ``energies``,
      ``(states, E)`` with ``E [steps + 1]`` (``[B, steps + 1]`` for a batch) in ``W``'s
      float dtype, ``E[0]`` the starting energy.

    >>> import jax, jax.numpy as jnp, funnet
    >>> W = funnet.hopfield.hebbian(jnp.array([[1, -1, 1, -1, 1, -1]]))
    >>> s, E = funnet.hopfield.update(W, jnp.array([1, 1, 1, -1, 1, -1]), steps=6,
    ...                               order="sequential", energies=True)
    >>> s.tolist()  # the second update repairs the flipped bit
    [1, -1, 1, -1, 1, -1]
    >>> [round(float(e), 4) for e in E]  # E[0], then after each update: never increases
    [-0.8333, -0.8333, -2.5, -2.5, -2.5, -2.5, -2.5]
    """
    W = _weights(W, "update")
    s = _states(s, "update")
    _agree(W, s, "update")
    steps = check_int(steps, "update: steps", minimum=0)
    order = _order(order, key, "update")
    if not isinstance(energies, bool):
        raise TypeError(f"update: energies must be True or False, got {energies!r}")
    if order == "sequential":
        key = jnp.zeros((2,), jnp.uint32)  # unused
    end, trace = _update(W, s.astype(W.dtype), key, steps=steps, order=order,
                         energies=energies, batched=s.ndim == 2)
    end = end.astype(s.dtype)
    return (end, trace) if energies else end


@functools.partial(jax.jit, static_argnames=("max_sweeps", "order", "batched"))
def _recall(W, s, key, *, max_sweeps, order, batched):
    n = W.shape[0]

    def one(s, key):
        def sweep(carry):
            s, key, sweeps, _ = carry
            key, sub = jax.random.split(key)
            new, _ = _run(W, s, _units(sub, n, n, order), False)
            return new, key, sweeps + 1, jnp.any(new != s)

        def going(carry):
            _, _, sweeps, changed = carry
            return changed & (sweeps < max_sweeps)

        start = (s, key, jnp.zeros((), jnp.int32), jnp.array(True))
        s, _, sweeps, _ = lax.while_loop(going, sweep, start)
        return s, sweeps, _fixed(W, s)

    if not batched:
        return one(s, key)
    keys = jax.random.split(key, s.shape[0])
    return jax.vmap(one)(s, keys)


def recall(W: ArrayLike, s: ArrayLike, key: Any = None, *, max_sweeps: int = 100,
           order: str = "random") -> Recall:
    r"""Run :func:`update` sweep after sweep until a sweep changes no unit (a fixed point).

    A sweep is ``N`` asynchronous steps that visit every unit once (in a fresh random
    order, or ``0 … N−1`` for ``order="sequential"``). When a whole sweep changes nothing,
    every unit agreed with its field in that state: it is a fixed point, and the run stops
    (one ``lax.while_loop``; a batch runs until its last row stops). Since the energy falls
    at every change the run always ends at a fixed point given enough sweeps.

    Args:
      W: ``[N, N]``, symmetric with zero diagonal (e.g. from :func:`hebbian`).
      s: ``[N]`` or ``[B, N]``, the starting states of ±1 (a cue: a noisy pattern).
      key: a PRNG key for ``order="random"``; unused (may be ``None``) for ``"sequential"``.
      max_sweeps: stop after this many sweeps even without a fixed point.
      order: ``"random"`` or ``"sequential"``, as for :func:`update`.

    Returns:
      :class:`Recall` ``(states, sweeps, converged)``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> xi = jnp.array([[1, -1, 1, -1, 1, -1, 1, -1], [1, 1, 1, 1, -1, -1, -1, -1]])
    >>> W = funnet.hopfield.hebbian(xi)
    >>> cue = xi[1].at[0].set(-1)  # pattern 1 with one bit flipped
    >>> out = funnet.hopfield.recall(W, cue, jax.random.key(0))
    >>> bool(jnp.all(out.states == xi[1])), int(out.sweeps), bool(out.converged)
    (True, 2, True)
    """
    W = _weights(W, "recall")
    s = _states(s, "recall")
    _agree(W, s, "recall")
    max_sweeps = check_int(max_sweeps, "recall: max_sweeps", minimum=1)
    order = _order(order, key, "recall")
    if order == "sequential":
        key = jnp.zeros((2,), jnp.uint32)  # unused
    end, sweeps, converged = _recall(W, s.astype(W.dtype), key, max_sweeps=max_sweeps,
                                     order=order, batched=s.ndim == 2)
    return Recall(end.astype(s.dtype), sweeps, converged)
