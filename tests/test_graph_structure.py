"""funnet.graph: batching, padding and unbatching, masks, dense adjacency, the errors graph
layers raise for a bad graph, and the karate club data set (docs/math.md §10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funnet
from funnet.graph import Graph

KEY = jax.random.PRNGKey(0)


def _g(n, senders, receivers, *, f=2, edges=None, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, f))
    return Graph(jnp.asarray(x), jnp.asarray(senders, jnp.int32),
                 jnp.asarray(receivers, jnp.int32),
                 edges=None if edges is None else jnp.asarray(edges, float))


# --- batch, pad, unbatch, masks ---------------------------------------------------------------


def test_batch_offsets_edges_and_records_the_blocks():
    a = _g(3, [0, 1], [1, 2], edges=[[1.0], [2.0]], seed=1)
    b = _g(0, [], [], edges=np.zeros((0, 1)))
    c = _g(2, [1, 1], [0, 1], edges=[[3.0], [4.0]], seed=2)
    batch = funnet.graph.batch([a, b, c])
    assert batch.senders.tolist() == [0, 1, 4, 4] and batch.receivers.tolist() == [1, 2, 3, 4]
    assert batch.n_node.tolist() == [3, 0, 2] and batch.n_edge.tolist() == [2, 0, 2]
    assert batch.graph_mask is None
    np.testing.assert_array_equal(batch.nodes, np.concatenate([a.nodes, c.nodes]))
    np.testing.assert_array_equal(batch.edges[:, 0], [1.0, 2.0, 3.0, 4.0])
    assert funnet.graph.node_graph(batch).tolist() == [0, 0, 0, 2, 2]
    assert funnet.graph.edge_graph(batch).tolist() == [0, 0, 2, 2]
    # a batch of batches keeps every graph's block
    again = funnet.graph.batch([batch, a])
    assert again.n_node.tolist() == [3, 0, 2, 3] and again.senders.tolist()[-2:] == [5, 6]


def test_pad_adds_a_padding_graph_and_unbatch_returns_the_real_graphs():
    a, c = _g(3, [0, 1], [1, 2], seed=1), _g(0, [], [])
    padded = funnet.graph.pad(funnet.graph.batch([a, c]), n_node=5, n_edge=4, n_graph=4)
    assert padded.n_node.tolist() == [3, 0, 2, 0] and padded.n_edge.tolist() == [2, 0, 2, 0]
    assert padded.graph_mask.tolist() == [True, True, False, False]
    assert padded.senders.tolist()[2:] == [3, 3] and padded.receivers.tolist()[2:] == [3, 3]
    np.testing.assert_array_equal(padded.nodes[3:], 0.0)
    assert funnet.graph.node_mask(padded).tolist() == [True] * 3 + [False] * 2
    assert funnet.graph.edge_mask(padded).tolist() == [True] * 2 + [False] * 2
    assert funnet.graph.n_graphs(padded) == 4
    back = funnet.graph.unbatch(padded)
    assert len(back) == 2  # the empty graph is real; the padding graphs are dropped
    for got, want in zip(back, (a, c)):
        np.testing.assert_array_equal(got.nodes, want.nodes)
        assert got.senders.tolist() == want.senders.tolist()
        assert got.receivers.tolist() == want.receivers.tolist()
    funnet.graph.check_graph("test", padded)  # a valid graph


@pytest.mark.parametrize("sizes, fragment", [
    ({"n_node": 2, "n_edge": 2, "n_graph": 2}, "more than n_node=2"),
    ({"n_node": 4, "n_edge": 3, "n_graph": 1}, "needs a padding graph"),
    ({"n_node": 3, "n_edge": 3, "n_graph": 2}, "need a padding node"),
])
def test_pad_needs_room(sizes, fragment):
    with pytest.raises(funnet.LayerError, match=fragment):
        funnet.graph.pad(_g(3, [0, 1], [1, 2]), **sizes)


def test_batch_refuses_what_does_not_fit_together():
    with pytest.raises(funnet.LayerError, match=r"differ in width: \[2, 3\]"):
        funnet.graph.batch([_g(2, [0], [1]), _g(2, [0], [1], f=3)])
    with pytest.raises(funnet.LayerError, match="edge features"):
        funnet.graph.batch([_g(2, [0], [1]), _g(2, [0], [1], edges=[[1.0]])])
    with pytest.raises(TypeError, match="concrete graphs"):
        jax.jit(lambda g: funnet.graph.batch([g]).nodes)(_g(2, [0], [1]))


def test_dense_adjacency_both_ways():
    a = np.array([[0, 1, 0], [2, 0, 1], [0, 0, 1]])  # a duplicate 0 → 1, a loop at 2
    g = funnet.graph.from_adjacency(jnp.zeros((3, 1)), a)
    assert g.senders.tolist() == [1, 0, 0, 2, 2] and g.receivers.tolist() == [0, 1, 1, 1, 2]
    np.testing.assert_array_equal(funnet.graph.adjacency(g), a)
    with pytest.raises(funnet.LayerError, match="edge counts"):
        funnet.graph.from_adjacency(jnp.zeros((2, 1)), np.array([[0, 0.5], [0.5, 0]]))
    with pytest.raises(funnet.LayerError, match=r"\(2, 3\) must be \[N, N\]"):
        funnet.graph.from_adjacency(jnp.zeros((2, 1)), np.zeros((2, 3)))


# --- bad graphs: named errors before any compute --------------------------------------------------

GOOD = _g(3, [0, 1], [1, 2])
GCN = funnet.GraphConv(2)
GCN_PARAMS = {"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}

BAD = [
    ("an array", jnp.ones((3, 2)), ["GraphConv(2)", "funnet.graph.Graph", "(3, 2)"]),
    ("integer nodes", GOOD._replace(nodes=jnp.ones((3, 2), jnp.int32)),
     ["nodes must be floating point", "int32"]),
    ("rank-1 nodes", GOOD._replace(nodes=jnp.ones(3)), ["nodes must be [N, F]", "(3,)"]),
    ("float senders", GOOD._replace(senders=jnp.array([0.0, 1.0])),
     ["senders must be a rank-1 integer array", "float"]),
    ("mismatched lengths", GOOD._replace(receivers=jnp.array([1, 2, 0], jnp.int32)),
     ["senders (2,) and receivers (3,)", "same length"]),
    ("wrong width", GOOD._replace(nodes=jnp.ones((3, 4))),
     ["nodes have shape (3, 4)", "W has shape (2, 2)"]),
    ("edge features of another length", GOOD._replace(edges=jnp.ones((3, 1))),
     ["edges (edge features) of shape (3, 1)", "one row per edge (2)"]),
    ("n_node without n_edge", GOOD._replace(n_node=jnp.array([3])), ["come together"]),
    ("graph_mask of another length",
     GOOD._replace(n_node=jnp.array([3]), n_edge=jnp.array([2]),
                   graph_mask=jnp.array([True, False])), ["graph_mask of shape (2,)"]),
]
# values, checked when concrete (outside jit)
BAD_VALUES = [
    ("sender out of range", GOOD._replace(senders=jnp.array([0, 3], jnp.int32)),
     ["senders must be node indices in 0 … 2", "got 3", "the first at edge 1"]),
    ("negative receiver", GOOD._replace(receivers=jnp.array([-1, 2], jnp.int32)),
     ["receivers must be node indices", "got -1"]),
    ("blocks not adding up", GOOD._replace(n_node=jnp.array([2, 2]), n_edge=jnp.array([1, 1])),
     ["n_node [2, 2] must be ≥ 0 and sum to the 3 nodes"]),
    ("an edge joining two graphs",
     GOOD._replace(n_node=jnp.array([2, 1]), n_edge=jnp.array([2, 0])),
     ["edge 1 of graph 0", "receivers 2, a node of graph 1"]),
]


@pytest.mark.parametrize("x, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_a_bad_graph_is_named_before_compute(x, fragments):
    with pytest.raises(funnet.LayerError) as info:
        GCN.apply(GCN_PARAMS, x)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(funnet.LayerError) as jitted:  # while tracing: the same error
        jax.jit(lambda: GCN.apply(GCN_PARAMS, x))()
    assert str(jitted.value) == str(info.value)


@pytest.mark.parametrize("x, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD_VALUES])
def test_bad_indices_and_blocks_are_named_on_concrete_graphs(x, fragments):
    for layer, params in ((GCN, GCN_PARAMS), (funnet.Readout("sum"), ())):
        with pytest.raises(funnet.LayerError) as info:
            layer.apply(params, x)
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))


def test_under_jit_an_out_of_range_sender_gives_nan_not_a_clamped_row():
    bad = GOOD._replace(senders=jnp.array([0, 7], jnp.int32))
    y = jax.jit(lambda g: GCN.apply(GCN_PARAMS, g).nodes)(bad)
    assert np.isnan(np.asarray(y)[2]).all() and not np.isnan(np.asarray(y)[:2]).any()


def test_bad_params_and_cotangents_are_named():
    with pytest.raises(funnet.ParamsError, match=r"GraphConv\(2\): W \(2, 3\) and b \(2,\)"):
        GCN.apply({"W": jnp.ones((2, 3)), "b": jnp.zeros(2)}, GOOD)
    gat = funnet.GraphAttention(2, heads=2)
    _, p = gat.init(KEY, (-1, 2))
    with pytest.raises(funnet.ParamsError, match=r"a_src has shape \(2,\), expected \(2, 2\)"):
        gat.apply({**p, "a_src": jnp.ones(2)}, GOOD)
    _, res = GCN.forward(GCN_PARAMS, GOOD)
    with pytest.raises(funnet.LayerError, match="dy must be one too"):
        GCN.backward(GCN_PARAMS, res, jnp.ones((3, 2)))
    with pytest.raises(funnet.LayerError, match=r"dy of shape \(3, 5\)"):
        GCN.backward(GCN_PARAMS, res, GOOD._replace(nodes=jnp.ones((3, 5))))
    with pytest.raises(funnet.LayerError, match=r"input_shape must be the node-feature shape"):
        GCN.init(KEY, (-1, 4, 2))
    mp = funnet.MessagePassing(funnet.Dense(2), inputs=("edges",), edge_dim=3)
    _, q = mp.init(KEY, (-1, 2))
    with pytest.raises(funnet.LayerError, match=r"floating point \[E, 3\]; graph.edges is None"):
        mp.apply(q, GOOD)


# --- Zachary's karate club ----------------------------------------------------------------------

#: Degrees of members 0 … 33 (Zachary 1977; networkx's karate_club_graph)
KARATE_DEGREES = [16, 9, 10, 6, 3, 4, 4, 4, 5, 2, 3, 1, 2, 5, 2, 2, 2, 2, 2, 3, 2, 2, 2, 5, 3,
                  3, 2, 4, 3, 4, 4, 6, 12, 17]


def test_karate_club_has_78_ties_and_the_known_degrees():
    g, labels = funnet.graph.karate_club()
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    ties = {tuple(sorted(e)) for e in zip(s.tolist(), r.tolist())}
    assert len(s) == 156 and len(ties) == 78  # each tie both ways, none repeated
    assert not np.any(s == r)  # no self loops
    a = np.asarray(funnet.graph.adjacency(g))
    np.testing.assert_array_equal(a, a.T)
    assert a.sum(axis=1).tolist() == KARATE_DEGREES
    assert a[0].sum() == 16 and a[33].sum() == 17  # the instructor and the officer
    assert labels.shape == (34,) and labels.sum() == 17
    assert labels[0] == 0 and labels[33] == 1
    assert np.flatnonzero(labels == 0).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13,
                                                    16, 17, 19, 21]
    np.testing.assert_array_equal(g.nodes, np.eye(34))
