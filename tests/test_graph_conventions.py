"""Graph layers on the cases a graph may hold, worked out by hand: isolated nodes, nodes
without incoming edges, self loops, duplicate edges, empty graphs and padding
(docs/graph.md); and graph layers composed: check_model on a graph network, nodewise and
batch statistics, plain callables (no hand rule), make_step with a row mask, bad options.

Each test computes what it compares in one jax.jit (one compile) in float64; values are
O(1) sums of a few terms, compared to rtol 1e-12 (the same sums in another order)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _graphs import KEY, F, graphs, padded, random_params
from _registry import assert_trees_close

import funnet
from funnet.graph import Graph

CLOSE = {"rtol": 1e-12, "atol": 1e-13}


def _small(senders, receivers, n=3, seed=5):
    rng = np.random.default_rng(seed)
    return Graph(jnp.asarray(rng.standard_normal((n, F))), jnp.asarray(senders, jnp.int32),
                 jnp.asarray(receivers, jnp.int32))


def test_isolated_nodes_and_nodes_without_incoming_edges():
    g = _small([0], [1])  # 0 → 1: node 0 receives nothing, node 2 is isolated
    gcn, gat = funnet.GraphConv(2), funnet.GraphAttention(2, heads=2)
    p, q = random_params(gcn), random_params(gat)
    mps = {k: funnet.MessagePassing(funnet.Dense(2), aggregate=k, inputs=("sender",))
           for k in ("sum", "mean", "max")}
    r = random_params(mps["sum"])

    @jax.jit
    def outputs():
        return {"gcn": gcn.apply(p, g).nodes,
                "gcn_no_loops": funnet.GraphConv(2, self_loops=False).apply(p, g).nodes,
                "gat": gat.apply(q, g).nodes,
                "gat_no_loops": funnet.GraphAttention(2, heads=2, self_loops=False).apply(
                    q, g).nodes,
                **{k: mp.apply(r, g).nodes for k, mp in mps.items()}}

    y = jax.tree_util.tree_map(np.asarray, outputs())
    h, W, b = (np.asarray(v) for v in (g.nodes, p["W"], p["b"]))
    np.testing.assert_allclose(y["gcn"][2], h[2] @ W + b, **CLOSE)  # Â_22 = 1
    # node 0: only its self loop comes in, but it sends two edges (the loop, 0 → 1), so
    # Â_00 = 1/√(d_in d_out) = 1/√2 (in- and out-degrees of A + I)
    np.testing.assert_allclose(y["gcn"][0], h[0] @ W / np.sqrt(2) + b, **CLOSE)
    np.testing.assert_allclose(y["gcn_no_loops"][[0, 2]], np.stack([b, b]), **CLOSE)
    # attending to itself alone, node 2 gets α = 1
    np.testing.assert_allclose(y["gat"][2], h[2] @ np.asarray(q["W"]) + q["b"], **CLOSE)
    np.testing.assert_allclose(y["gat_no_loops"][[0, 2]], np.stack([q["b"]] * 2), **CLOSE)
    for k in ("sum", "mean", "max"):  # no message: the aggregate is 0, for every kind
        np.testing.assert_array_equal(y[k][[0, 2]], 0.0)
        np.testing.assert_allclose(y[k][1], h[0] @ np.asarray(r[0]["W"]) + r[0]["b"], **CLOSE)


def test_self_loops_and_duplicate_edges_count_with_their_multiplicity():
    # GraphConv adds I: on a graph that lists the loop 1 → 1, Ã_11 = 2, as if every loop
    # were listed and none added
    g = _small([0, 1, 1, 2], [1, 1, 2, 1])
    every_loop = g._replace(senders=jnp.concatenate([g.senders, jnp.arange(3)]),
                            receivers=jnp.concatenate([g.receivers, jnp.arange(3)]))
    # a duplicate edge is A_ij = 2: the graph of a matrix with a 2
    twice = _small([0, 0, 2], [1, 1, 1])
    a = np.zeros((3, 3), int)
    a[1, 0], a[1, 2] = 2, 1
    same = funnet.graph.from_adjacency(twice.nodes, a)
    gcn, gat = funnet.GraphConv(2), funnet.GraphAttention(2, self_loops=False)
    p, q = random_params(gcn), random_params(gat)

    @jax.jit
    def outputs():
        return (gcn.apply(p, g).nodes,
                funnet.GraphConv(2, self_loops=False).apply(p, every_loop).nodes,
                gcn.apply(p, twice).nodes, gcn.apply(p, same).nodes, gat.apply(q, twice).nodes)

    loop, loops, dup, counted, attention = outputs()
    np.testing.assert_allclose(loop, loops, **CLOSE)
    np.testing.assert_allclose(dup, counted, **CLOSE)
    # GraphAttention: node 1's softmax has two terms for the doubled neighbour 0
    v = np.asarray(twice.nodes) @ np.asarray(q["W"])
    src, dst = v @ np.asarray(q["a_src"])[0], v @ np.asarray(q["a_dst"])[0]
    e = np.array([dst[1] + src[0], dst[1] + src[2]])
    e = np.where(e > 0, e, 0.2 * e)
    w = np.array([2, 1]) * np.exp(e)
    expected = (w[0] * v[0] + w[1] * v[2]) / w.sum() + np.asarray(q["b"])
    np.testing.assert_allclose(attention[1], expected, **CLOSE)


def test_an_empty_graph_gives_no_node_rows_and_a_zero_readout():
    empty = graphs()[1]
    layers = [funnet.GraphConv(2), funnet.GraphAttention(2, heads=2),
              funnet.MessagePassing(funnet.Dense(2), funnet.Dense(2), aggregate="max"),
              funnet.nodewise(funnet.Tanh)]
    params = [random_params(layer) for layer in layers]

    @jax.jit
    def run():
        out = []
        for layer, p in zip(layers, params):
            y = layer.apply(p, empty)
            out.append((y.nodes, *funnet.backprop.backward(layer, p, empty, y)))
        return out, [funnet.Readout(k).apply((), empty) for k in ("sum", "mean", "max")]

    results, readouts = run()
    for y, dp, dx in results:
        assert y.shape[0] == 0 and dx.nodes.shape == (0, F)
        assert all(np.all(np.asarray(v) == 0) for v in jax.tree_util.tree_leaves(dp))
    for r in readouts:
        np.testing.assert_array_equal(r, np.zeros((1, F)))


def test_padding_nodes_and_graphs_get_zeros_and_no_gradient():
    g = padded()
    real = np.asarray(funnet.graph.node_mask(g))
    assert real.tolist() == [True] * 9 + [False] * 3

    @jax.jit
    def run():
        readouts = [funnet.backprop.backward(funnet.Readout(k), (), g, jnp.ones((5, F)))[1]
                    for k in ("sum", "mean", "max")]
        nodes = funnet.Nodes.apply((), g)
        d_nodes = funnet.backprop.backward(funnet.Nodes, (), g, jnp.ones((12, F)))[1].nodes
        return nodes, d_nodes, [dx.nodes for dx in readouts]

    nodes, d_nodes, d_readouts = jax.tree_util.tree_map(np.asarray, run())
    np.testing.assert_array_equal(nodes[~real], 0.0)
    np.testing.assert_array_equal(nodes[real], np.asarray(g.nodes)[real])
    np.testing.assert_array_equal(d_nodes, np.broadcast_to(real[:, None], (12, F)) * 1.0)
    for kind, dx in zip(("sum", "mean", "max"), d_readouts):
        np.testing.assert_array_equal(dx[~real], 0.0)
        assert kind == "max" or np.all(dx[real] != 0)


def test_readout_max_shares_the_gradient_of_ties():
    g = Graph(jnp.array([[1.0, 2.0], [3.0, 2.0], [3.0, 0.0]]), jnp.zeros(0, jnp.int32),
              jnp.zeros(0, jnp.int32))
    layer = funnet.Readout("max")
    np.testing.assert_array_equal(layer.apply((), g), [[3.0, 2.0]])
    _, dx = funnet.backprop.backward(layer, (), g, jnp.array([[1.0, 1.0]]))
    np.testing.assert_array_equal(dx.nodes, [[0.0, 0.5], [0.5, 0.5], [0.5, 0.0]])


# --- composition ------------------------------------------------------------------------------


def test_a_graph_network_passes_check_model_with_its_delta_trace():
    # graph classification on the padded batch (the padding graphs' rows, logits b, count)
    net = funnet.serial(funnet.GraphConv(4), funnet.nodewise(funnet.Tanh),
                        funnet.GraphAttention(2, heads=2), funnet.Readout("mean"),
                        funnet.Dense(2))
    assert net.init(KEY, (-1, F))[0] == (-1, 2)
    result = funnet.check_model(net, random_params(net), padded(), jnp.array([0, 1, 1, 0, 0]),
                                funnet.softmax_cross_entropy, methods=("hand", "formula"))
    assert result.ok
    assert [v.path.split(" › ")[1] for v in result.layers] == [
        "GraphConv(4)", "nodewise(Tanh)", "GraphAttention(2, heads=2)", "Readout('mean')",
        "Dense(2)"]
    assert all(v.status == "ok" for v in result.layers)
    assert result.deltas is not None and result.deltas.ok  # δ at each output, graphs too
    assert len(result.deltas.rows) == 5


def test_nodewise_hands_the_node_mask_to_batch_statistics():
    g = padded()
    bn = funnet.nodewise(funnet.BatchNorm())
    _, params, state = bn.init_with_state(KEY, (-1, F))
    real = np.asarray(funnet.graph.node_mask(g))
    labelled = jnp.zeros(12).at[0].set(1.0)

    @jax.jit
    def run():
        y, _ = bn.apply_with_state(params, state, g, train=True)
        alone, _ = funnet.BatchNorm().apply_with_state(params, state, g.nodes[real], train=True)
        # the loss's row mask (labelled nodes, say) is not the nodes' mask: not handed on
        other, _ = bn.apply_with_state(params, state, g, train=True, mask=labelled)
        return y.nodes, alone, other.nodes

    y, alone, other = run()
    np.testing.assert_allclose(np.asarray(y)[real], alone, **CLOSE)
    np.testing.assert_array_equal(other, y)
    assert funnet.nodewise(funnet.Relu).pieces is not None  # kinks, for gradient checks
    assert funnet.nodewise(funnet.Tanh).pieces is None


def test_a_plain_callable_message_has_no_hand_rule_and_says_so():
    g = padded()
    mp = funnet.MessagePassing(jnp.tanh, funnet.Dense(2), inputs=("sender",))
    assert not mp.has_backward and mp.init(KEY, (-1, F))[0] == (-1, 2)
    p = random_params(mp)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(mp.apply(p, g).nodes ** 2)))(p)  # trains
    assert np.abs(np.asarray(grads[1]["W"])).max() > 0
    with pytest.raises(funnet.NoBackwardRuleError, match=r"tanh \(plain callable\)"):
        funnet.backprop.value_and_grad(funnet.serial(mp, funnet.Nodes), funnet.mse)(
            p, g, jnp.zeros((12, 2)))


def test_make_step_trains_a_graph_model_by_hand_with_a_row_mask():
    g, labels = funnet.graph.karate_club()
    g = g._replace(nodes=g.nodes.astype(jnp.float64))
    net = funnet.serial(funnet.GraphConv(4), funnet.nodewise(funnet.Tanh), funnet.GraphConv(2),
                        funnet.Nodes)
    mask = jnp.zeros(34).at[jnp.array([0, 33])].set(1.0)  # one labelled node per faction
    params, tx = random_params(net, features=34), optax.sgd(0.5)
    after = {}
    for grad in ("hand", "reverse"):
        step = funnet.make_step(net, funnet.softmax_cross_entropy, tx, grad=grad)
        state = funnet.TrainState.create(params, tx, jax.random.key(0))
        after[grad] = step(state, (g, jnp.asarray(labels), mask))[0].params
    assert_trees_close(after["hand"], after["reverse"], rtol=1e-10, atol=1e-12)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), after["hand"],
                                   params)
    assert min(jax.tree_util.tree_leaves(moved)) > 0


BAD_OPTIONS = [
    (lambda: funnet.GraphConv(0), "GraphConv: out_dim"),
    (lambda: funnet.GraphConv(2, self_loops="yes"), "self_loops must be True or False"),
    (lambda: funnet.GraphAttention(2, heads=0), "GraphAttention: heads"),
    (lambda: funnet.GraphAttention(2, combine="sum"), 'combine must be "concat" or "mean"'),
    (lambda: funnet.GraphAttention(2, negative_slope=1.5), "negative_slope must be"),
    (lambda: funnet.Readout("median"), 'kind must be "mean", "sum" or "max"'),
    (lambda: funnet.MessagePassing(funnet.Dense(2), aggregate="prod"), "aggregate must be"),
    (lambda: funnet.MessagePassing(funnet.Dense(2), inputs=("sender", "nodes")),
     "inputs must be distinct names"),
    (lambda: funnet.MessagePassing(funnet.Dense(2), inputs=("edges",)), "edge_dim"),
    (lambda: funnet.MessagePassing(funnet.Dense(2), edge_dim=2), "inputs has no 'edges'"),
]


@pytest.mark.parametrize("make, fragment", BAD_OPTIONS)
def test_bad_options_are_named(make, fragment):
    with pytest.raises(funnet.LayerError) as info:
        make()
    assert fragment in str(info.value)


def test_stateful_message_layers_are_refused():
    with pytest.raises(funnet.StatefulModelError, match="BatchNorm"):
        funnet.MessagePassing(funnet.BatchNorm())


def test_fit_evaluate_and_predict_refuse_a_graph_even_with_as_many_edges_as_nodes():
    # a directed 4-cycle: 4 nodes, 4 edges. fit took the same rows of nodes, senders and
    # receivers as samples (one row count) and trained on a scrambled graph, silently
    g = _small([0, 1, 2, 3], [1, 2, 3, 0], n=4)
    net = funnet.serial(funnet.GraphConv(2), funnet.Nodes)
    p, y = random_params(net), jnp.array([0, 1, 0, 1])
    calls = {
        "train.x": lambda: funnet.fit(net, p, (g, y), loss=funnet.softmax_cross_entropy,
                                      optimizer=optax.sgd(0.1), epochs=1, batch_size=4,
                                      key=KEY),
        "data.x": lambda: funnet.evaluate(net, p, (g, y), loss=funnet.softmax_cross_entropy),
        "predict.x[0]": lambda: funnet.predict(net, p, (g,)),
    }
    for label, call in calls.items():
        with pytest.raises(TypeError, match=rf"^{re.escape(label)} is a funnet.graph.Graph "
                                            r"\(nodes \(4, 3\), senders \(4,\)\).*make_step"):
            call()


_G = _small([0, 1], [1, 2])
ARRAY_ONLY = [  # (what is called, the name the error starts with, the suggested fix)
    ("Dense", lambda: funnet.Dense(2).apply(random_params(funnet.Dense(2)), _G), "Dense",
     "nodewise"),
    ("Relu", lambda: funnet.Relu.apply((), _G), "Relu", "nodewise"),
    ("Dropout, training", lambda: funnet.Dropout(0.5).apply((), _G, key=KEY, train=True),
     "Dropout", "nodewise"),
    ("BatchNorm", lambda: funnet.BatchNorm().apply_with_state(
        *funnet.BatchNorm().init_with_state(KEY, (-1, F))[1:], _G), "BatchNorm", "nodewise"),
    ("MaxPool", lambda: funnet.MaxPool((1,)).apply((), _G), "MaxPool", "nodewise"),
    ("a Dense after a graph layer", lambda: funnet.serial(funnet.GraphConv(2), funnet.Dense(2))
     .apply(random_params(funnet.serial(funnet.GraphConv(2), funnet.Dense(2))), _G),
     r"serial\[1\] › Dense", "nodewise"),
    ("FanInSum of two graphs", lambda: funnet.FanInSum.apply((), (_G, _G)), "FanInSum",
     "input 0 is"),
    ("FanInConcat of a graph", lambda: funnet.FanInConcat().apply((), (_G.nodes, _G)),
     "FanInConcat", "input 1 is"),
    ("a loss", lambda: funnet.softmax_cross_entropy(_G, jnp.zeros(3, jnp.int32)),
     "softmax_cross_entropy", "the predictions are"),
]


@pytest.mark.parametrize("call, name, fix", [pytest.param(*c[1:], id=c[0]) for c in ARRAY_ONLY])
def test_a_graph_where_an_array_belongs_is_named_with_the_fix(call, name, fix):
    # NumPy's "inhomogeneous shape" (or "None is not a valid value for jnp.array") named
    # neither the layer nor what to do: forgetting Nodes before the loss is the usual slip
    with pytest.raises(funnet.LayerError, match=rf"^{name}(\(.*\))?: .*funnet.graph.Graph "
                                                r"\(nodes of shape \(3, \d\)\).*Nodes.*Readout"):
        call()
    with pytest.raises(funnet.LayerError, match=fix):
        call()


def test_make_step_names_a_graph_output_reaching_the_loss():
    g, mask = _small([0, 1], [1, 2]), jnp.array([1.0, 0.0, 1.0])
    net = funnet.serial(funnet.GraphConv(2), funnet.nodewise(funnet.Tanh))  # no Nodes
    tx = optax.sgd(0.1)
    for grad in ("hand", "reverse"):
        step = funnet.make_step(net, funnet.softmax_cross_entropy, tx, grad=grad)
        state = funnet.TrainState.create(random_params(net), tx, jax.random.key(0))
        for batch in ((g, jnp.zeros(3, jnp.int32)), (g, jnp.zeros(3, jnp.int32), mask)):
            with pytest.raises(funnet.LayerError, match="the predictions are a funnet.graph"):
                step(state, batch)
