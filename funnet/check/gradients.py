"""Gradients by the generic methods: central differences and forward mode, coordinate by
coordinate over the raveled params (docs/math.md §7)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._validate import check_int
from ..contract import PyTree
from ..layers import param_count

__all__ = ["default_eps", "forward_grad", "numerical_grad"]


# Elements of the perturbed/tangent parameter vectors one vmapped chunk may hold: bounds memory
# at ~32 MiB of float64 per chunk (plus the forward pass of the chunk).
_CHUNK_ELEMENTS = 1 << 22


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

    Args:
      dtype: the floating-point dtype of the params (anything :class:`numpy.finfo` accepts);
        its machine epsilon is ``ε``.

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
    Costs ``2N`` evaluations of ``f`` (``N`` = parameter count), run under ``jax.jit`` as a
    ``jax.lax.map`` over the coordinates, ``batch_size`` of them at a time under ``jax.vmap``.

    At a kink of ``f`` (``relu`` at 0, …) within ``Δ`` of ``θ``, the difference quotient mixes
    the two one-sided slopes (``relu`` at 0: ``0.5``) and differs from the analytic
    (sub)gradient, whatever ``eps``.

    Returns a pytree like ``params`` (same structure, shapes and dtypes).

    Args:
      f: ``f(params) -> scalar``, traceable by JAX (it runs under ``jax.jit`` and
        ``jax.vmap``) and returning a floating-point scalar (else ``TypeError``).
      params: the pytree of floating-point arrays to differentiate at (else ``TypeError``).
      eps: the relative step (``Δ_i = eps · max(1, |θ_i|)``), a positive finite number; the
        default ``None`` takes :func:`default_eps` of the params' dtype, ``(3ε)^(1/3)``:
        8.7e-6 in float64, 7.1e-3 in float32.
      batch_size: how many coordinates one ``jax.vmap`` chunk perturbs, an int ``≥ 1``
        (capped at ``N``); the default ``None`` takes as many as keep a chunk's
        ``batch_size × N`` perturbed vectors under 4 Mi elements.

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

    Args:
      f: ``f(params) -> scalar``, traceable by JAX and differentiable in forward mode (as
        above), returning a floating-point scalar (else ``TypeError``).
      params: the pytree of floating-point arrays to differentiate at (else ``TypeError``).
      batch_size: how many tangents one ``jax.vmap`` chunk evaluates, an int ``≥ 1``
        (capped at ``N``); the default ``None`` takes as many as keep a chunk's
        ``batch_size × N`` tangent vectors under 4 Mi elements.

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


