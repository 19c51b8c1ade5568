r"""Between graphs and arrays: ``nodewise`` (a layer on every node), ``Nodes`` (the node
features out) and ``Readout`` (one row per graph), on a :class:`~funnet.graph.Graph`.

Backward rules (``dy``: the gradient of the output; ``g(i)`` the graph of node ``i``;
``m`` the graph mask, 0 for padding graphs)::

    nodewise(f)  H' = f(H)                          dH = f's backward of dy.nodes
    Nodes        Y = m_{g(i)} H_i                   dH_i = m_{g(i)} dY_i
    Readout sum  Y_g = m_g Σ_{i ∈ g} H_i            dH_i = m_{g(i)} dY_{g(i)}
    Readout mean Y_g = m_g Σ_{i ∈ g} H_i / n_g      dH_i = m_{g(i)} dY_{g(i)} / n_{g(i)}
    Readout max  Y_g = m_g max_{i ∈ g} H_i          dH_i = m_{g(i)} dY_{g(i)} [H_i = Y_g] / ties

(an empty graph's row is 0; ``max`` shares the gradient equally among tied maxima).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._validate import LayerError, expect_cotangent, expect_no_params, shape_of
from ..contract import Layer, NoBackwardRuleError, as_layer, layer
from ..graph import Graph, check_graph, n_graphs, node_graph, node_mask
from ._graph_ops import gather, graph_cotangent, graph_grad, node_input_shape, scatter

__all__ = ["Nodes", "Readout", "nodewise"]


def _masked(graph: Graph) -> jax.Array | None:
    """The node mask when the graph marks padding graphs, else ``None``."""
    return None if graph.graph_mask is None else node_mask(graph)


# --- nodewise -------------------------------------------------------------------------------


def _pieces(inner: Layer):
    """``graph -> int array``: the smooth piece of every node's input to ``inner`` (its
    kinks' sides and its declared pieces), for gradient checks; ``None`` if smooth."""
    if not inner.kinks and inner.pieces is None:
        return None

    def pieces(graph):
        x = graph.nodes
        ids = [jnp.sign(jnp.ravel(x) - kink).astype(jnp.int32) for kink in inner.kinks]
        if inner.pieces is not None:
            ids.append(jnp.ravel(inner.pieces(x)).astype(jnp.int32))
        return jnp.concatenate(ids)

    return pieces


def nodewise(layer: Any) -> Layer:
    r"""Apply ``layer`` to the node features of a graph: ``Graph -> Graph`` with ``f(nodes)``.

    The structure passes through unchanged, so an activation (or a ``Dense``, ``Dropout``,
    ``LayerNorm``, ``BatchNorm``, a ``serial`` of them) goes between graph layers:
    ``serial(GraphConv(16), nodewise(Relu), GraphConv(2))``. The layer sees the nodes as
    its rows ``[N, F]``; for a padded batch it gets the graph's node mask as its ``mask``
    (the 0/1 vector of real rows), so that batch statistics skip padding nodes. The row
    ``mask`` that training passes to the model (:func:`funnet.make_step`'s
    ``(x, y, mask)``: which output rows count in the loss, e.g. the labelled nodes) is not
    handed on: it weights the loss, while the nodes a layer computes on are all real.
    Backward: the layer's own rule on ``dy.nodes``; the structure gets ``None``. Params,
    state and weight decay are the layer's.

    Args:
      layer: a funnet :class:`~funnet.Layer` (or stax pair) on ``[N, F]`` rows.

    >>> import jax, jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.array([[-1.0], [2.0]]), jnp.array([0]), jnp.array([1]))
    >>> funnet.nodewise(funnet.Relu).apply((), g).nodes.tolist()
    [[0.0], [2.0]]
    """
    inner = as_layer(layer)
    name = f"nodewise({inner.name})"

    def init_with_state(key, input_shape):
        n, f = node_input_shape(name, input_shape)
        out, params, state = inner.init_with_state(key, (n, f))
        return out, params, state

    def prepare(graph, mask):  # the loss's row mask is not the nodes' (see above)
        check_graph(name, graph)
        return _masked(graph)

    def apply_with_state(params, state, graph, *, key=None, train=False, mask=None):
        rows = prepare(graph, mask)
        y, state = inner.apply_with_state(params, state, graph.nodes, key=key, train=train,
                                          mask=rows)
        return graph._replace(nodes=y), state

    def forward_with_state(params, state, graph, *, key=None, train=False, mask=None):
        rows = prepare(graph, mask)
        if not inner.has_backward:
            raise NoBackwardRuleError(f"{name}: {inner.name} has no hand-derived backward rule")
        y, state, res = inner.forward_with_state(params, state, graph.nodes, key=key,
                                                 train=train, mask=rows)
        return graph._replace(nodes=y), state, (res, shape_of(y))

    def backward(params, res, dy):
        res, out_shape = res
        dparams, dx = inner.backward(params, res, graph_cotangent(name, dy, out_shape))
        return dparams, graph_grad(dy, dx)

    rewire = None if inner.rewire is None else (lambda wiring: nodewise(inner.rewired(wiring)))
    rule = inner.has_backward
    return Layer(init_with_state, apply_with_state, forward_with_state if rule else None,
                 backward if rule else None, name=name, children=(inner,),
                 stateful=inner.stateful, decay=lambda p: inner.decay_mask(p), rewire=rewire,
                 pieces=_pieces(inner))


# --- Nodes ----------------------------------------------------------------------------------


def _nodes() -> Layer:
    name = "Nodes"

    def init(key, input_shape):
        return node_input_shape(name, input_shape), ()

    def forward(params, graph):
        expect_no_params(name, params)
        check_graph(name, graph)
        rows = _masked(graph)
        h = graph.nodes
        y = h if rows is None else jnp.where(rows[:, None], h, jnp.zeros((), h.dtype))
        return y, rows

    def backward(params, rows, dy):
        d = dy if rows is None else jnp.where(rows[:, None], dy, jnp.zeros((), dy.dtype))
        return (), graph_grad(None, d)  # dH_i = m_{g(i)} dY_i; the structure: None

    return layer(init, forward, backward, name=name)


#: The node features of a graph as an array ``[N, F]`` (padding nodes: 0), for node-level
#: outputs and losses: ``serial(GraphConv(16), nodewise(Relu), GraphConv(2), Nodes)``.
Nodes = _nodes()


# --- Readout --------------------------------------------------------------------------------


def Readout(kind: str = "mean") -> Layer:
    r"""One row per graph: the sum, mean or max of its real nodes' features, ``[G, F]``.

    For graph-level outputs (graph classification): ``G`` is the number of graphs of the
    batch (``len(n_node)``; 1 for a single graph), padding graphs included, whose rows are
    0 (leave them out of the loss with a row mask, e.g. :func:`funnet.make_step`'s
    ``(x, y, mask)`` with ``mask = graph.graph_mask``). An empty graph's row is 0 for every
    kind. Backward: ``sum`` sends ``dY_g`` to each of graph ``g``'s
    nodes, ``mean`` ``dY_g / n_g``, ``max`` ``dY_g`` to the node holding the maximum
    (shared equally among ties), per feature.

    Args:
      kind: ``"mean"``, ``"sum"`` or ``"max"``.

    Shapes: ``Graph(nodes [N, F], …) -> [G, F]``; ``input_shape`` is ``(N, F)`` and the
    output shape ``(-1, F)`` (the number of graphs is not part of it). No params.

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.array([[1.0], [3.0], [5.0]]), jnp.array([0]),
    ...                        jnp.array([1]), n_node=jnp.array([2, 1]),
    ...                        n_edge=jnp.array([1, 0]))
    >>> funnet.Readout("mean").apply((), g).tolist()
    [[2.0], [5.0]]
    """
    if kind not in ("mean", "sum", "max"):
        raise LayerError(f'Readout: kind must be "mean", "sum" or "max", got {kind!r}')
    name = f"Readout({kind!r})"

    def init(key, input_shape):
        _, f = node_input_shape(name, input_shape)
        return (-1, f), ()

    def forward(params, graph):
        expect_no_params(name, params)
        check_graph(name, graph)
        h = graph.nodes
        g, seg = n_graphs(graph), node_graph(graph)
        count = scatter(jnp.ones(h.shape[:1], h.dtype), seg, g)[:, None]  # n_g
        real = jnp.ones((g, 1), bool) if graph.graph_mask is None else (
            jnp.asarray(graph.graph_mask, bool)[:, None])
        keep = real & (count > 0)
        if kind == "max":
            y = jax.ops.segment_max(h, seg, num_segments=g)
        else:
            y = scatter(h, seg, g)
            y = y / jnp.maximum(count, 1) if kind == "mean" else y
        y = jnp.where(keep, y, jnp.zeros((), y.dtype))
        return y, (h, seg, count, keep, y)

    def backward(params, res, dy):
        h, seg, count, keep, y = res
        expect_cotangent(name, dy, y.shape)
        d = jnp.where(keep, dy, jnp.zeros((), dy.dtype))
        if kind == "mean":
            d = d / jnp.maximum(count, 1)
        dh = gather(d, seg)  # each node gets its graph's row
        if kind == "max":
            top = (h == gather(y, seg)).astype(h.dtype)  # the maxima, per feature
            ties = gather(scatter(top, seg, y.shape[0]), seg)
            dh = dh * top / jnp.maximum(ties, 1)
        return (), graph_grad(None, dh.astype(h.dtype))

    return layer(init, forward, backward, name=name)

