"""Graph networks (docs/math.md §10): GraphConv, GraphAttention, MessagePassing, nodewise,
Nodes, Readout, and the funnet.graph helpers.

Every layer's hand backward is compared in float64 with two independent witnesses on a
padded batch of random graphs that has an isolated node, a self loop, duplicate edges and
an empty graph: ``jax.vjp`` of a dense ``N × N`` formula written here (one-hot matrices in
place of the library's gathers and segment sums), and central differences of the layer's
own forward pass. The GCN's values are also compared with a NumPy formula, and the batch
(values and parameter gradients) with each graph run alone. tests/test_graph_conventions.py
has the conventions worked out by hand, tests/test_graph_structure.py the funnet.graph
helpers, the errors and the karate club data.

Tolerances (float64, entries O(1)): hand vs vjp are the same sums in another order, a few
ulp of O(10) values: rtol 1e-10, atol 1e-12 (as tests/test_layers.py). Central differences
with step h = 1e-5 have a truncation error h²·|f'''|/6 ≈ 1e-10 and a rounding error
≈ ε·|L|/h ≈ 1e-10 for |L| ≈ 10: rtol 1e-6 with atol 1e-6 leaves a margin of 1e4 and still
catches a wrong factor or sign (errors of order 1). The scores, messages and features are
kept at least 1e-3 away from every kink (LeakyReLU at 0, a change of maximum), so no
difference quotient straddles one (asserted).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _graphs import D, array_of, graphs, padded, random_params
from _registry import assert_trees_close, dense_ref, gat_ref, membership, readout_ref
from jax.flatten_util import ravel_pytree

import funnet
from funnet.graph import Graph

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-6}
H_STEP = 1e-5


# --- dense N × N formulas ----------------------------------------------------------------


def one_hot_edges(g):
    """``(S, R) [E, N]``: ``S[e, j] = 1`` iff edge ``e`` leaves ``j``; ``R`` likewise into."""
    n = g.nodes.shape[0]
    return jax.nn.one_hot(g.senders, n), jax.nn.one_hot(g.receivers, n)


def adjacency_plus(g, self_loops):
    """``A (+ I)`` with ``A_ij`` = the number of edges ``j → i``: ``Rᵀ S``."""
    s, r = one_hot_edges(g)
    a = r.T @ s
    return a + jnp.eye(a.shape[0]) if self_loops else a


def rsqrt0(d):
    return jnp.where(d > 0, 1 / jnp.sqrt(jnp.where(d > 0, d, 1)), 0)


def gcn_dense(p, g, self_loops=True):
    a = adjacency_plus(g, self_loops)
    a_hat = rsqrt0(a.sum(1))[:, None] * a * rsqrt0(a.sum(0))[None, :]
    z = a_hat @ g.nodes @ p["W"]
    return g._replace(nodes=z + p["b"][None, :])


def gat_scores(p, g, heads, slope, self_loops):
    """``(u [N, N, K], Ã [N, N, 1])``: the pre-LeakyReLU score of every pair (i, j)."""
    n = g.nodes.shape[0]
    v = (g.nodes @ p["W"]).reshape(n, heads, -1)
    u = (jnp.einsum("ikm,km->ik", v, p["a_dst"])[:, None, :]
         + jnp.einsum("jkm,km->jk", v, p["a_src"])[None, :, :])
    return u, adjacency_plus(g, self_loops)[:, :, None], v


def gat_dense(p, g, heads=1, combine="concat", slope=0.2, self_loops=True):
    u, a, v = gat_scores(p, g, heads, slope, self_loops)
    e = jnp.where(u > 0, u, slope * u)
    w = a * jnp.exp(e)  # each edge j → i is one term: Ã_ij counts them
    total = w.sum(axis=1, keepdims=True)
    alpha = w / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("ijk,jkm->ikm", alpha, v)
    out = out.reshape(out.shape[0], -1) if combine == "concat" else out.mean(axis=1)
    return g._replace(nodes=out + p["b"][None, :])


def messages_dense(p_msg, g, inputs, message):
    s, r = one_hot_edges(g)
    part = {"sender": s @ g.nodes, "receiver": r @ g.nodes, "edges": g.edges}
    return message(p_msg, jnp.concatenate([part[k] for k in inputs], axis=1)), r


def mp_dense(p, g, *, inputs, aggregate, message, update):
    m, r = messages_dense(p[0], g, inputs, message)
    count = r.sum(axis=0)[:, None]
    if aggregate == "max":
        into = r.T[:, :, None] > 0  # [N, E, 1]
        agg = jnp.max(jnp.where(into, m[None], -jnp.inf), axis=1)
        agg = jnp.where(count > 0, agg, 0.0)
    else:
        agg = r.T @ m
        agg = agg / jnp.where(count > 0, count, 1.0) if aggregate == "mean" else agg
    h = agg if update is None else update(p[1], jnp.concatenate([g.nodes, agg], axis=1))
    return g._replace(nodes=h)


def dense_tanh(p, x):
    return jnp.tanh(dense_ref(p[0], x))


# --- every layer, every witness ------------------------------------------------------------

MSG = funnet.serial(funnet.Dense(3), funnet.Tanh)
LAYERS = {
    "GraphConv": (funnet.GraphConv(3), gcn_dense),
    "GraphConv(self_loops=False)": (funnet.GraphConv(3, self_loops=False),
                                    lambda p, g: gcn_dense(p, g, self_loops=False)),
    "GraphAttention(heads=2)": (funnet.GraphAttention(2, heads=2),
                                lambda p, g: gat_dense(p, g, heads=2)),
    "GraphAttention(mean, slope 0.1, no loops)": (
        funnet.GraphAttention(3, heads=2, combine="mean", negative_slope=0.1,
                              self_loops=False),
        lambda p, g: gat_dense(p, g, heads=2, combine="mean", slope=0.1, self_loops=False)),
    "MessagePassing(sum, sender+receiver+edges)": (
        funnet.MessagePassing(MSG, funnet.Dense(2), inputs=("sender", "receiver", "edges"),
                              edge_dim=D),
        lambda p, g: mp_dense(p, g, inputs=("sender", "receiver", "edges"), aggregate="sum",
                              message=dense_tanh, update=dense_ref)),
    "MessagePassing(mean, edges+sender, no update)": (
        funnet.MessagePassing(funnet.Dense(2), aggregate="mean", inputs=("edges", "sender"),
                              edge_dim=D),
        lambda p, g: mp_dense(p, g, inputs=("edges", "sender"), aggregate="mean",
                              message=dense_ref, update=None)),
    "MessagePassing(max)": (
        funnet.MessagePassing(MSG, funnet.Dense(2), aggregate="max"),
        lambda p, g: mp_dense(p, g, inputs=("sender", "receiver"), aggregate="max",
                              message=dense_tanh, update=dense_ref)),
    "nodewise(Tanh)": (funnet.nodewise(funnet.Tanh),
                       lambda p, g: g._replace(nodes=jnp.tanh(g.nodes))),
    "Nodes": (funnet.Nodes, lambda p, g: g.nodes * membership(g).sum(axis=0)[:, None]),
    **{f"Readout({k})": (funnet.Readout(k), lambda p, g, k=k: readout_ref(k, g))
       for k in ("sum", "mean", "max")},
}


def _inputs(g):
    """The float inputs of a graph (its nodes and edge features)."""
    return {"nodes": g.nodes, "edges": g.edges}


def _hand(layer, params, graph, dy):
    """``(dparams, dx)`` by the hand rules for the gradient ``dy`` of the output's array."""
    out = layer.apply(params, graph)
    # no gradient reaches the output's edge features (None): L reads the nodes only
    cotangent = out._replace(nodes=dy, edges=None) if isinstance(out, Graph) else dy
    return funnet.backprop.backward(layer, params, graph, cotangent)


@functools.cache
def witnesses(name: str) -> dict:
    """Hand backward, jax.vjp of the dense formula, and central differences of the layer's
    forward pass, for ``L = Σ dy ⊙ y`` at a generic ``dy`` (zero on padding rows); and each
    graph alone: its output, and the sum of its hand parameter gradients (for its rows of
    ``dy``). One compile per layer."""
    layer, dense = LAYERS[name]
    g = padded()
    params = random_params(layer)
    y = jax.eval_shape(lambda: array_of(layer.apply(params, g)))
    graph_level = y.shape[0] == len(g.n_node)
    rows = (g.graph_mask if graph_level else funnet.graph.node_mask(g))[:, None]
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape)) * rows
    sizes = [1 if graph_level else h.nodes.shape[0] for h in graphs()]
    starts = np.cumsum([0, *sizes])

    def run(params, inputs):
        graph = g._replace(**inputs)
        dparams, dx = _hand(layer, params, graph, dy)
        hand = (dparams, {"nodes": dx.nodes, "edges": dx.edges})
        ref_out, pullback = jax.vjp(lambda p, v: array_of(dense(p, g._replace(**v))),
                                    params, inputs)
        theta, unravel = ravel_pytree((params, inputs))

        def objective(t):
            p, v = unravel(t)
            return jnp.sum(dy * array_of(layer.apply(p, g._replace(**v))))

        steps = H_STEP * jnp.eye(theta.size)
        fd = jax.vmap(lambda d: (objective(theta + d) - objective(theta - d)) / (2 * H_STEP))(
            steps)
        alone = [array_of(layer.apply(params, h)) for h in graphs()]
        summed = jax.tree_util.tree_map(lambda *v: sum(v), *(
            _hand(layer, params, h, dy[a:b])[0] for h, a, b in zip(graphs(), starts, starts[1:])))
        return {"y": array_of(layer.apply(params, graph)), "ref": ref_out, "hand": hand,
                "vjp": pullback(dy), "numerical": unravel(fd), "alone": alone,
                "alone_dparams": summed, "graph_level": graph_level,
                "dx_structure": dx._replace(nodes=None, edges=None)}

    return jax.jit(run)(params, _inputs(g))


@pytest.mark.parametrize("name", list(LAYERS))
def test_hand_backward_equals_dense_formula_and_central_differences(name):
    w = witnesses(name)
    assert_trees_close(w["y"], w["ref"], **TIGHT)  # the layer computes the dense formula
    (dparams, dx), (ref_dparams, ref_dx) = w["hand"], w["vjp"]
    assert_trees_close(dparams, ref_dparams, **TIGHT)
    assert_trees_close(dx["nodes"], ref_dx["nodes"], **TIGHT)
    num_dparams, num_dx = w["numerical"]
    assert_trees_close(dparams, num_dparams, **FD)
    assert_trees_close(dx["nodes"], num_dx["nodes"], **FD)
    if dx["edges"] is None:  # edge features unread: their gradient is 0
        np.testing.assert_array_equal(num_dx["edges"], 0.0)
        np.testing.assert_array_equal(ref_dx["edges"], 0.0)
    else:
        assert "edges" in name
        assert_trees_close(dx["edges"], ref_dx["edges"], **TIGHT)
        assert_trees_close(dx["edges"], num_dx["edges"], **FD)
    assert all(v is None for v in w["dx_structure"])  # the structure: no gradient
    assert np.abs(np.asarray(dx["nodes"])).max() > 1e-3  # a gradient that could be wrong


def test_the_witnesses_stay_away_from_kinks():
    g = padded()
    real = np.asarray(funnet.graph.node_mask(g))[:, None, None]  # padding nodes sit at u = 0,
    for name, heads, slope, loops in (("GraphAttention(heads=2)", 2, 0.2, True),
                                      ("GraphAttention(mean, slope 0.1, no loops)", 2, 0.1,
                                       False)):
        layer, _ = LAYERS[name]
        u, a, _ = gat_scores(random_params(layer), g, heads, slope, loops)
        on_edges = np.broadcast_to((np.asarray(a) > 0) & real, u.shape)  # but dy = 0 there
        assert np.abs(np.asarray(u)[on_edges]).min() > 1e-3
    # the maxima of Readout('max') and of the max messages win by more than 1e-3
    member = np.asarray(membership(g)) > 0
    for k in range(member.shape[0]):
        x = np.sort(np.asarray(g.nodes)[member[k]], axis=0)
        assert len(x) < 2 or (x[-1] - x[-2]).min() > 1e-3
    layer, _ = LAYERS["MessagePassing(max)"]
    p = random_params(layer)
    m, r = messages_dense(p[0], g, ("sender", "receiver"), dense_tanh)
    m, r = np.asarray(m), np.asarray(r)
    for i in range(r.shape[1]):
        into = m[r[:, i] > 0]
        distinct = np.unique(into.round(12), axis=0)  # duplicate edges give equal messages
        if len(distinct) > 1:
            top2 = np.sort(distinct, axis=0)[-2:]
            assert (top2[1] - top2[0]).min() > 1e-3


# --- values ---------------------------------------------------------------------------------


def numpy_gcn(h, senders, receivers, W, b, self_loops=True):
    """``D_in^{-1/2} (A + I) D_out^{-1/2} H W + b`` in NumPy, A counting edges j → i."""
    n = h.shape[0]
    a = np.zeros((n, n))
    np.add.at(a, (receivers, senders), 1.0)
    if self_loops:
        a += np.eye(n)
    d_in, d_out = a.sum(axis=1), a.sum(axis=0)
    with np.errstate(divide="ignore"):
        left = np.where(d_in > 0, d_in ** -0.5, 0.0)
        right = np.where(d_out > 0, d_out ** -0.5, 0.0)
    return (left[:, None] * a * right[None, :]) @ h @ W + b


@pytest.mark.parametrize("self_loops", [True, False])
def test_graph_conv_equals_a_dense_numpy_formula(self_loops):
    g = padded()
    layer = funnet.GraphConv(4, self_loops=self_loops)
    p = random_params(layer)
    expected = numpy_gcn(*(np.asarray(v) for v in (g.nodes, g.senders, g.receivers,
                                                   p["W"], p["b"])), self_loops=self_loops)
    np.testing.assert_allclose(layer.apply(p, g).nodes, expected, rtol=1e-12, atol=1e-12)
    a_hat = numpy_gcn(np.eye(12), np.asarray(g.senders), np.asarray(g.receivers), np.eye(12),
                      0.0, self_loops=self_loops)
    np.testing.assert_allclose(funnet.graph.normalized_adjacency(g, self_loops=self_loops),
                               a_hat, rtol=1e-14, atol=1e-15)


def test_graph_conv_of_an_undirected_graph_uses_the_symmetric_normalisation():
    # a path 0 - 1 - 2: D̃ = diag(2, 3, 2), Â = D̃^{-1/2} (A + I) D̃^{-1/2}
    g = funnet.graph.from_adjacency(jnp.eye(3), jnp.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]))
    expected = np.array([[1 / 2, 1 / np.sqrt(6), 0], [1 / np.sqrt(6), 1 / 3, 1 / np.sqrt(6)],
                         [0, 1 / np.sqrt(6), 1 / 2]])
    np.testing.assert_allclose(funnet.graph.normalized_adjacency(g), expected, rtol=1e-15)
    p = {"W": jnp.eye(3), "b": jnp.zeros(3)}
    np.testing.assert_allclose(funnet.GraphConv(3).apply(p, g).nodes, expected, rtol=1e-15)


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_batch_computes_each_graph_as_if_alone(name):
    w = witnesses(name)
    y, alone = np.asarray(w["y"]), np.concatenate(w["alone"])
    if w["graph_level"]:
        np.testing.assert_allclose(y[:3], alone, **TIGHT)
        np.testing.assert_array_equal(y[3:], 0.0)  # padding graphs: rows of zeros
        np.testing.assert_array_equal(y[1], 0.0)  # the empty graph too
    else:  # nodes 0-4 of graph 0, none of graph 1, 5-8 of graph 2; padding 9-11
        np.testing.assert_allclose(y[:9], alone, **TIGHT)
    # the batch's parameter gradient is the sum of the graphs' (dy zero on padding rows)
    assert_trees_close(w["hand"][0], w["alone_dparams"], **TIGHT)


# --- graph attention at its edge cases ---------------------------------------------------------


def _gat_witnesses(layer, params, heads, dense):
    """``(y, (dparams, dx), dense y, jax.vjp of the dense formula)`` on the padded batch, for
    a generic ``dy`` on the real nodes."""
    g = padded()
    dy = (jnp.asarray(np.random.default_rng(2).standard_normal((12, 2 * heads)))
          * funnet.graph.node_mask(g)[:, None])

    @jax.jit
    def run(params, nodes):
        graph = g._replace(nodes=nodes)
        dparams, dx = _hand(layer, params, graph, dy)
        ref, pull = jax.vjp(lambda p, x: dense(p, g._replace(nodes=x)).nodes, params, nodes)
        return layer.apply(params, graph).nodes, (dparams, dx.nodes), ref, pull(dy)

    return run(params, g.nodes)


def test_graph_attention_subtracts_each_receivers_largest_score():
    # scores of size ~1e3 (unnormalised features, or large attention vectors): exp
    # overflows float64 beyond ≈ 709, so the segment softmax must subtract each receiver's
    # largest score first. The witness (the registry's dense formula) does so too.
    layer = funnet.GraphAttention(2, heads=2)
    p = random_params(layer)
    p = {**p, "a_src": 3e3 * p["a_src"], "a_dst": 3e3 * p["a_dst"]}
    u, a, _ = gat_scores(p, padded(), 2, 0.2, True)
    on_edges = np.broadcast_to(np.asarray(a) > 0, u.shape)
    assert np.asarray(u)[on_edges].max() > 1e3  # exp(u) = inf without the shift
    y, (dparams, dx), ref, (ref_dparams, ref_dx) = _gat_witnesses(
        layer, p, 2, lambda p, g: gat_ref(p, g, heads=2))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_trees_close(y, ref, **TIGHT)
    assert_trees_close(dparams, ref_dparams, **TIGHT)
    assert_trees_close(dx, ref_dx, **TIGHT)


def test_graph_attention_with_zero_attention_vectors_takes_the_slope_at_the_kink():
    # a_src = a_dst = 0 (a_init=zeros: the layer starts as a mean over the neighbours)
    # puts every score at u = 0, the LeakyReLU's kink; its derivative there is the slope
    # (the rule for u <= 0, as jax.grad of where(u > 0, u, slope u) takes it), else hand
    # and reverse-mode training part at the first step
    layer = funnet.GraphAttention(2, heads=2, negative_slope=0.1)
    p = random_params(layer)
    p = {**p, "a_src": jnp.zeros((2, 2)), "a_dst": jnp.zeros((2, 2))}
    y, (dparams, dx), ref, (ref_dparams, ref_dx) = _gat_witnesses(
        layer, p, 2, lambda p, g: gat_dense(p, g, heads=2, slope=0.1))
    # uniform attention: each node's output is the mean of V over its incoming edges
    # (with multiplicity, its self loop included), in NumPy
    g = padded()
    a_tilde = np.zeros((12, 12))
    np.add.at(a_tilde, (np.asarray(g.receivers), np.asarray(g.senders)), 1.0)
    a_tilde += np.eye(12)
    v = np.asarray(g.nodes) @ np.asarray(p["W"])
    np.testing.assert_allclose(y, a_tilde @ v / a_tilde.sum(1, keepdims=True)
                               + np.asarray(p["b"]), **TIGHT)
    assert_trees_close(y, ref, **TIGHT)
    assert_trees_close(dparams, ref_dparams, **TIGHT)
    assert_trees_close(dx, ref_dx, **TIGHT)
    assert np.abs(np.asarray(dparams["a_src"])).max() > 1e-2  # a gradient that could be wrong
