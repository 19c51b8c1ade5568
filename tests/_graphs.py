"""The graphs the graph tests share (tests/test_graph*.py): a padded batch of three graphs
with an isolated node, a self loop, duplicate edges and an empty graph, and random params."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import funnet
from funnet.graph import Graph

F, D = 3, 2  # node and edge feature widths
KEY = jax.random.PRNGKey(0)


def _graph(rng, n, senders, receivers):
    return Graph(jnp.asarray(rng.standard_normal((n, F))), jnp.asarray(senders, jnp.int32),
                 jnp.asarray(receivers, jnp.int32),
                 edges=jnp.asarray(rng.standard_normal((len(senders), D))))


@functools.cache
def graphs() -> tuple[Graph, ...]:
    """Graph 0: a duplicate edge (0 → 1 twice), a self loop (2 → 2), node 4 isolated, node
    3 without incoming edges; graph 1 empty; graph 2 an undirected triangle with a tail."""
    rng = np.random.default_rng(7)
    return (_graph(rng, 5, [0, 0, 1, 2, 3, 1], [1, 1, 2, 2, 1, 0]),
            _graph(rng, 0, [], []),
            _graph(rng, 4, [0, 1, 1, 2, 0, 2, 2, 3], [1, 0, 2, 1, 2, 0, 3, 2]))


@functools.cache
def padded() -> Graph:
    """The three graphs batched and padded to 12 nodes, 17 edges and 5 graphs: real nodes
    0-8 (graph 0: 0-4, graph 2: 5-8), padding nodes 9-11; real graphs 0-2."""
    return funnet.graph.pad(funnet.graph.batch(list(graphs())), n_node=12, n_edge=17,
                            n_graph=5)


def random_params(layer, seed=1, scale=0.5, features=F):
    """Random float64 params of ``layer`` for ``features`` node features (NumPy, σ = 0.5)."""
    _, shapes = jax.eval_shape(lambda k: layer.init(k, (-1, features)), KEY)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape)),
                                  shapes)


def array_of(y):
    """The array of a layer's output: a graph's node features, or the output itself."""
    return y.nodes if isinstance(y, Graph) else y
