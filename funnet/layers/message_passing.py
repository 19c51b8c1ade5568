r"""Message passing: the general graph layer that ``GraphConv`` and ``GraphAttention`` are
instances of (docs/math.md §10), with user-given message and update layers.

With ``s_e``, ``r_e`` the sender and receiver of edge ``e`` and ``x_e`` its features::

    m_e  = φ([h_{s_e} ‖ h_{r_e} ‖ x_e])          the message (a layer on [E, ·] rows)
    M_i  = ⊕_{e: r_e = i} m_e                    aggregation: sum, mean or max (0 if no edge)
    h_i' = ψ([h_i ‖ M_i])                        the update (a layer on [N, ·] rows), or M_i

Backward (``δ`` the gradient of the output nodes): ``ψ``'s rule gives ``dh_i`` (direct)
and ``dM_i``; the aggregation's transpose sends ``dM_{r_e}`` (sum), ``dM_{r_e} / n_{r_e}``
(mean) or ``dM_{r_e}`` to the maxima (max, shared among ties) to each message; ``φ``'s
rule gives the gradient of its input rows, whose sender and receiver parts are summed
into the nodes along the edges (``scatter``), and whose edge part is ``dx_e``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import LayerError, ParamsError, check_int, shape_of
from ..contract import Layer, StatefulModelError, as_layer
from ..graph import check_graph
from ._graph_ops import gather, graph_cotangent, graph_grad, node_input_shape, scatter

__all__ = ["MessagePassing"]

_PARTS = ("sender", "receiver", "edges")
_AGGREGATES = ("sum", "mean", "max")


def _plain(fn: Callable[[Any], Any]) -> Layer:
    """A plain callable ``x -> y`` as a layer without params and without a hand rule."""
    label = getattr(fn, "__name__", type(fn).__name__)

    def init_with_state(key, input_shape):
        probe = jax.ShapeDtypeStruct((1, *input_shape[1:]), jnp.result_type(float))
        out = jax.eval_shape(fn, probe)
        return (input_shape[0], *out.shape[1:]), (), ()

    def apply_with_state(params, state, x, *, key=None, train=False, mask=None):
        return fn(x), state

    return Layer(init_with_state, apply_with_state, name=f"{label} (plain callable)")


def _as_part(fn: Any) -> Layer:
    """A funnet Layer or stax pair as it is; a plain callable wrapped by :func:`_plain`."""
    if isinstance(fn, (Layer, tuple, list)):
        return as_layer(fn)
    if callable(fn):
        return _plain(fn)
    raise TypeError(f"MessagePassing: expected a funnet Layer, an (init, apply) pair or a "
                    f"callable, got {fn!r}")


def _rows_out(name: str, what: str, shape: Any) -> int:
    if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int)):
        raise LayerError(f"{name}: the {what} layer must map rows [R, d] to rows [R, d'], "
                         f"its output shape is {shape!r}")
    return shape[1]


def MessagePassing(
    message: Any,
    update: Any = None,
    *,
    aggregate: str = "sum",
    inputs: Sequence[str] = ("sender", "receiver"),
    edge_dim: int | None = None,
) -> Layer:
    r"""A message-passing layer: messages along the edges, aggregated, then a node update.

    ``m_e = φ([h_{s_e} ‖ h_{r_e} ‖ x_e])``, ``M_i = ⊕_{e: r_e = i} m_e``,
    ``h_i' = ψ([h_i ‖ M_i])`` (Gilmer et al. 2017, Battaglia et al. 2018): the general form
    of the graph layers. ``GraphConv`` is ``φ = c_e h_{s_e} W`` (``c_e`` the entry of
    ``Â``), ``⊕ = Σ``, ``ψ = M + b``; ``GraphAttention`` is ``φ = α_e W h_{s_e}`` with
    ``α`` the segment softmax of the edge scores, ``⊕ = Σ``; both are their own layers
    here, for speed. With ``φ = Dense`` on the sender, ``⊕ = mean`` and ``ψ = Dense`` on
    ``[h ‖ M]`` this is GraphSAGE's mean aggregator.

    The hand backward composes the message and update layers' own backward rules with the
    aggregation's (see :mod:`funnet.layers.message_passing`). A plain callable
    ``f(x) -> y`` (no params) is accepted too, but its derivative is not hand-derived:
    the layer then has no hand rule, so ``jax.grad`` trains it and :mod:`funnet.backprop`
    (``grad="hand"``) raises :class:`funnet.NoBackwardRuleError` naming it; funnet never
    substitutes ``jax.vjp`` for a missing rule.

    Args:
      message: ``φ``, a layer mapping message inputs ``[E, d_in]`` to messages ``[E, M]``
        (e.g. ``serial(Dense(16), Relu)``), where ``d_in`` is ``F`` for each node part of
        ``inputs`` plus ``edge_dim``.
      update: ``ψ``, a layer mapping ``[N, F + M]`` (each node's features, then its
        aggregate) to ``[N, F']``; ``None``: ``h' = M``.
      aggregate: ``⊕``: ``"sum"``, ``"mean"`` or ``"max"`` (per feature; a node without
        incoming edges gets 0; ``max`` shares the gradient equally among tied messages).
      inputs: what each message sees, concatenated in this order: any of ``"sender"``
        (``h_{s_e}``), ``"receiver"`` (``h_{r_e}``), ``"edges"`` (``x_e``, the graph's
        edge features, which then get their gradient).
      edge_dim: the width ``D`` of the edge features, needed at init when ``inputs``
        has ``"edges"``.

    Shapes: ``Graph(nodes [N, F], …) -> Graph(nodes [N, F'], …)``; ``input_shape`` is
    ``(N, F)``. Params ``(params of φ, params of ψ)`` (``()`` without ``update``); weight
    decay as each layer declares. Self loops are not added (put them in the edge list).

    >>> import jax, jax.numpy as jnp, funnet
    >>> mp = funnet.MessagePassing(funnet.Dense(3), funnet.Dense(2), inputs=("sender",))
    >>> out_shape, (p_msg, p_upd) = mp.init(jax.random.PRNGKey(0), (-1, 4))
    >>> out_shape, p_msg["W"].shape, p_upd["W"].shape  # φ: 4 -> 3, ψ: 4 + 3 -> 2
    ((-1, 2), (4, 3), (7, 2))
    """
    phi = _as_part(message)
    psi = None if update is None else _as_part(update)
    if aggregate not in _AGGREGATES:
        raise LayerError(f"MessagePassing: aggregate must be one of {_AGGREGATES}, got "
                         f"{aggregate!r}")
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not inputs or any(p not in _PARTS for p in inputs) or len(set(inputs)) != len(inputs):
        raise LayerError(f"MessagePassing: inputs must be distinct names among {_PARTS}, "
                         f"got {inputs!r}")
    if "edges" in inputs:
        edge_dim = check_int(edge_dim, "MessagePassing: edge_dim (the width of the edge "
                             "features, as inputs has 'edges')", error=LayerError)
    elif edge_dim is not None:
        raise LayerError("MessagePassing: edge_dim is given, but inputs has no 'edges'")
    children = (phi,) if psi is None else (phi, psi)
    for child in children:
        if child.stateful:
            raise StatefulModelError(f"MessagePassing: {child.name} holds state, which "
                                     "MessagePassing does not carry")
    name = (f"MessagePassing({', '.join(c.name for c in children)}, {aggregate}, "
            f"inputs={'+'.join(inputs)})")
    return _build(name, phi, psi, aggregate, inputs, edge_dim)


def _build(name: str, phi: Layer, psi: Layer | None, aggregate: str, inputs: tuple,
           edge_dim: int | None) -> Layer:
    def width(f: int) -> int:
        return sum(f if p != "edges" else edge_dim for p in inputs)

    def init_with_state(key, input_shape):
        n, f = node_input_shape(name, input_shape)
        k_m, k_u = jax.random.split(key)
        out_m, p_m, _ = phi.init_with_state(k_m, (-1, width(f)))
        m = _rows_out(name, "message", out_m)
        if psi is None:
            return (n, m), (p_m, ()), ()
        out_u, p_u, _ = psi.init_with_state(k_u, (-1, f + m))
        return (n, _rows_out(name, "update", out_u)), (p_m, p_u), ()

    def check(params, graph):
        if not isinstance(params, (tuple, list)) or len(params) != 2:
            raise ParamsError(f"{name}: params must be (params of the message layer, params "
                              f"of the update layer), got {type(params).__name__}")
        check_graph(name, graph)
        if "edges" in inputs:
            x = graph.edges
            if x is None or np.ndim(x) != 2 or shape_of(x)[1] != edge_dim or not (
                    jnp.issubdtype(jnp.result_type(x), jnp.floating)):
                got = "None" if x is None else f"{jnp.result_type(x)} {shape_of(x)}"
                raise LayerError(f"{name}: the messages read the edge features, which must "
                                 f"be floating point [E, {edge_dim}]; graph.edges is {got}")

    def messages_in(graph):
        h = graph.nodes
        part = {"sender": lambda: gather(h, graph.senders),
                "receiver": lambda: gather(h, graph.receivers),
                "edges": lambda: jnp.asarray(graph.edges)}
        return jnp.concatenate([part[p]() for p in inputs], axis=1)

    def run(params, graph, key, rule):
        check(params, graph)
        h, r = graph.nodes, graph.receivers
        n = h.shape[0]
        k_m, k_u = jax.random.split(key) if key is not None else (None, None)
        m, res_m = rule(phi, params[0], messages_in(graph), k_m)
        if np.ndim(m) != 2 or shape_of(m)[0] != shape_of(r)[0]:
            raise LayerError(f"{name}: the message layer gave {shape_of(m)} for "
                             f"{shape_of(r)[0]} edges; it must give one row per edge")
        count = scatter(jnp.ones(r.shape, m.dtype), r, n)[:, None]  # n_i, incoming edges
        if aggregate == "max":
            agg = jax.ops.segment_max(m, r, num_segments=n)
            agg = jnp.where(count > 0, agg, jnp.zeros((), m.dtype))
        else:
            agg = scatter(m, r, n)  # M_i = Σ_{e → i} m_e
            agg = agg / jnp.maximum(count, 1) if aggregate == "mean" else agg
        if psi is None:
            y, res_u = agg, None
        else:
            y, res_u = rule(psi, params[1], jnp.concatenate([h, agg], axis=1), k_u)
        res = (res_m, res_u, h, graph.senders, r, m, agg, count, shape_of(y))
        return graph._replace(nodes=y), res

    def apply_with_state(params, state, graph, *, key=None, train=False, mask=None):
        out, _ = run(params, graph, key, lambda c, p, x, k: (
            c.apply_with_state(p, (), x, key=k, train=train)[0], None))
        return out, state

    def forward_with_state(params, state, graph, *, key=None, train=False, mask=None):
        out, res = run(params, graph, key, lambda c, p, x, k: (
            c.forward_with_state(p, (), x, key=k, train=train)[::2]))
        return out, state, res

    def backward(params, res, dy):
        res_m, res_u, h, s, r, m, agg, count, out_shape = res
        n, f = h.shape
        delta = graph_cotangent(name, dy, out_shape)
        if psi is None:
            dp_u, dh, d_agg = (), jnp.zeros_like(h), delta
        else:
            dp_u, du = psi.backward(params[1], res_u, delta)
            dh, d_agg = du[:, :f], du[:, f:]
        d_m = gather(d_agg, r)  # sum: dm_e = dM_{r_e}
        if aggregate == "mean":
            d_m = d_m / gather(jnp.maximum(count, 1), r)
        elif aggregate == "max":
            top = (m == gather(agg, r)).astype(m.dtype)  # the maxima, per feature
            d_m = d_m * top / gather(jnp.maximum(scatter(top, r, n), 1), r)
        dp_m, dx_e = phi.backward(params[0], res_m, d_m.astype(m.dtype))
        d_edges, start = None, 0
        for p in inputs:
            size = f if p != "edges" else edge_dim
            part = dx_e[:, start:start + size]
            start += size
            if p == "edges":
                d_edges = part
            else:  # the sender (receiver) rows were gathered: scatter their gradient back
                dh = dh + scatter(part, s if p == "sender" else r, n)
        return (dp_m, dp_u), graph_grad(dy, dh.astype(h.dtype), d_edges)

    children = (phi,) if psi is None else (phi, psi)

    def decay(params):
        return (phi.decay_mask(params[0]), () if psi is None else psi.decay_mask(params[1]))

    rewire = None
    if any(c.rewire is not None for c in children):
        def rewire(wiring):
            return _build(name, phi.rewired(wiring), None if psi is None else
                          psi.rewired(wiring), aggregate, inputs, edge_dim)

    rule = all(c.has_backward for c in children)
    return Layer(init_with_state, apply_with_state, forward_with_state if rule else None,
                 backward if rule else None, name=name, children=children, decay=decay,
                 rewire=rewire)

