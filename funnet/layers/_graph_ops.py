r"""What the graph layers share: gathers and segment sums over edges, self loops, the GCN
coefficients, the segment softmax, and the gradient of a :class:`~funnet.graph.Graph`.

With ``s``, ``r`` the senders and receivers (docs/math.md §10)::

    gather(X, s)[e]     = X[s_e]                        (NaN for an index out of range)
    scatter(V, r, N)[i] = Σ_{e: r_e = i} V[e]           (jax.ops.segment_sum; out of range: dropped)
    scatterᵀ = gather:  d gather(X, s) = scatter(dV, s, N),  d scatter(V, r) = gather(dY, r)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._validate import LayerError, check_input_shape, expect_cotangent, shape_of
from ..graph import Graph


def gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``x[idx]`` along the first axis; an out-of-range index (possible only under jit,
    where indices are not checked) gives a row of NaN, never a clamped row."""
    return jnp.take(x, idx, axis=0, mode="fill", fill_value=jnp.nan)


def scatter(values: jax.Array, idx: jax.Array, n: int) -> jax.Array:
    """``out[i] = Σ_{e: idx_e = i} values[e]`` for ``i < n`` (an empty sum is 0)."""
    return jax.ops.segment_sum(values, idx, num_segments=n)


def edge_list(graph: Graph, self_loops: bool) -> tuple[jax.Array, jax.Array]:
    """``(senders, receivers)``, with the self loops ``i → i`` of every node appended when
    ``self_loops`` (``A + I``: a loop already listed then counts twice)."""
    s, r = jnp.asarray(graph.senders), jnp.asarray(graph.receivers)
    if not self_loops:
        return s, r
    loops = jnp.arange(shape_of(graph.nodes)[0], dtype=s.dtype)
    return jnp.concatenate([s, loops]), jnp.concatenate([r, loops.astype(r.dtype)])


def inverse_sqrt(d: jax.Array) -> jax.Array:
    """``d^{-1/2}``, and 0 where ``d = 0`` (a node without edges)."""
    return jnp.where(d > 0, 1 / jnp.sqrt(jnp.where(d > 0, d, 1)), 0)


def gcn_scales(s: jax.Array, r: jax.Array, n: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
    r"""``(c_in, c_out)`` ``[N]``: ``d_in^{-1/2}`` and ``d_out^{-1/2}`` per node, the two
    diagonal factors of ``Â = D_in^{-1/2} Ã D_out^{-1/2}``.

    ``d_in(i)`` counts the edges into ``i``, ``d_out(j)`` those out of ``j`` (self loops
    included when they are in the list). Edge ``e`` carries ``Â``'s entry
    ``c_e = c_in[r_e] c_out[s_e]``, so ``Â X = c_in ⊙ scatter(gather(c_out ⊙ X, s), r)``:
    the scaling is done on the ``N`` nodes, not on the ``E`` edges (no per-edge
    coefficient array is gathered, multiplied or kept for the backward).
    """
    ones = jnp.ones(s.shape, dtype)
    d_in, d_out = scatter(ones, r, n), scatter(ones, s, n)
    return inverse_sqrt(d_in), inverse_sqrt(d_out)


def segment_softmax(scores: jax.Array, r: jax.Array, n: int) -> jax.Array:
    r"""``α_e = exp(x_e) / Σ_{e': r_e' = r_e} exp(x_e')``: a softmax over each receiver's
    incoming edges, along axis 0 (any trailing axes: one softmax per entry). Stable: each
    segment's maximum is subtracted first (``segment_max``; a constant shift, hence
    ``stop_gradient``)."""
    top = jax.lax.stop_gradient(jax.ops.segment_max(scores, r, num_segments=n))
    p = jnp.exp(scores - gather(top, r))
    return p / gather(scatter(p, r, n), r)


def segment_softmax_backward(alpha: jax.Array, d_alpha: jax.Array, r: jax.Array,
                             n: int) -> jax.Array:
    r"""``dx_e = α_e (dα_e − Σ_{e': r_e' = r_e} α_e' dα_e')``: the softmax backward of
    docs/math.md §5 within each receiver's segment."""
    return alpha * (d_alpha - gather(scatter(alpha * d_alpha, r, n), r))


def graph_grad(dy: Graph, d_nodes: jax.Array, d_edges: Any = None) -> Graph:
    """The gradient of a layer's input graph: ``d_nodes``; ``None`` for the structure;
    for float ``edges``, ``d_edges`` plus the gradient reaching the output's edges (a
    layer that passes them through unchanged gives them that gradient)."""
    passed = dy.edges if isinstance(dy, Graph) else None
    if passed is not None and not jnp.issubdtype(jnp.result_type(passed), jnp.inexact):
        passed = None
    if passed is not None and d_edges is not None:
        d_edges = d_edges + passed
    elif d_edges is None:
        d_edges = passed
    return Graph(d_nodes, None, None, None, None, None, d_edges)


def graph_cotangent(name: str, dy: Any, nodes_shape: tuple[int, ...]) -> jax.Array:
    """``dy.nodes``, checked: the gradient reaching a graph layer's output is a Graph whose
    ``nodes`` have the shape of the output nodes."""
    if not isinstance(dy, Graph):
        raise LayerError(f"{name}: backward got dy of type {type(dy).__name__}, but the "
                         "forward output is a funnet.graph.Graph: dy must be one too (its "
                         "nodes the gradient of the output nodes)")
    expect_cotangent(name, dy.nodes, nodes_shape)
    return dy.nodes


def node_input_shape(name: str, input_shape: Any) -> tuple[int, ...]:
    """The node-feature shape ``(N, F)`` a graph layer is initialised with (``N`` may be
    -1); the structure does not enter ``init``."""
    shape = check_input_shape(name, input_shape, min_rank=2, features=True)
    if len(shape) != 2:
        raise LayerError(f"{name}: input_shape must be the node-feature shape (N, F), got "
                         f"{shape} (N may be -1)")
    return shape
