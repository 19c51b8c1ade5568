r"""A 2-layer GCN trained full-batch by raw jax, jraph and funnet, from one numpy init.

The network, on one graph of ``N`` nodes with features ``X [N, F]`` and an edge list
``senders``, ``receivers`` (``E`` directed edges, messages flow sender → receiver)::

    Z = Â relu(Â X W1 + b1) W2 + b2,   Â = D_in^{-1/2} (A + I) D_out^{-1/2}

with ``A_ij`` the number of edges ``j → i``, ``I`` one self loop per node and ``D_in``,
``D_out`` the in- and out-degrees of ``A + I`` (for an undirected graph both are ``D̃``
and ``Â = D̃^{-1/2}(A + I)D̃^{-1/2}``; the benchmark's random edges are directed, and every
competitor normalises the same way, the receiver's row by its in-degree and the sender's
column by its out-degree). The loss is the softmax cross-entropy of the labelled nodes,
``L = -1/|S| Σ_{i ∈ S} log softmax(Z_i)_{y_i}`` with ``S`` the nodes whose 0/1 ``mask``
is 1; one call of a competitor is one full-batch training step (forward over the whole
graph, gradient, optax update).

Every competitor computes the normalisation inside its step, from the degrees, as
``jraph.GraphConvolution(symmetric_normalization=True)`` and ``funnet.GraphConv`` both
do (neither takes a precomputed ``Â``); the raw baseline computes it once per step and
shares it between its two layers (a hand-written GCN would). The competitors:

- ``RawSegmentSum`` (**the baseline**): the GCN written out in plain jax, each layer
  ``c_in ⊙ segment_sum((c_out ⊙ H W)[senders], receivers)`` with the self loops appended
  to the edge list and ``c = deg^{-1/2}`` per node, ``jax.value_and_grad`` + optax;
- ``Jraph``: two ``jraph.GraphConvolution(update_node_fn=h ↦ h W, add_self_edges=True)``
  on a ``jraph.GraphsTuple``, the bias added after the aggregation (jraph's
  ``update_node_fn`` runs before it: a bias inside it would be aggregated too, ``Â 1 b``,
  which is not the same function), ``jax.value_and_grad`` + optax;
- ``Funnet``: ``serial(GraphConv(H), nodewise(Relu), GraphConv(C), Nodes)`` trained by
  ``fn.make_step(model, fn.softmax_cross_entropy, tx, grad=...)`` on the batch
  ``(Graph, labels, mask)``: ``grad="reverse"`` (``jax.grad`` through funnet's ``apply``)
  or ``"hand"`` (funnet's hand-derived backward rules along the edges).

Interface: ``step()`` runs one training step on the graph the peer holds (on the device)
and returns the loss before the update (a device scalar, not fetched); ``lowered()`` is
the jitted step lowered for that graph (for the compiled program's memory analysis and
HLO).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Init = dict[str, np.ndarray]


# ------------------------------------------------------------------------ graph & init


def make_graph(nodes: int, edges: int, features: int, classes: int, *, labelled: float,
               seed: int = 0) -> dict[str, np.ndarray]:
    r"""A synthetic node-classification graph (numpy, fixed seed).

    ``senders``, ``receivers``: ``edges`` directed edges drawn uniformly (int32; a few
    duplicates and self loops may occur, counted with multiplicity by every competitor);
    ``x ~ N(0, 1)`` ``[N, F]`` float32; labels a function of the graph, so that the GCN can
    learn them: ``y = argmax(Â_rw X R)`` with ``Â_rw X`` each node's mean of its own and its
    in-neighbours' features and ``R ~ N(0, 1)`` ``[F, C]``; ``mask``: 1 on a random
    ``labelled`` fraction of the nodes (float32), the nodes the loss sees.
    """
    rng = np.random.default_rng(seed)
    senders = rng.integers(0, nodes, edges, dtype=np.int32)
    receivers = rng.integers(0, nodes, edges, dtype=np.int32)
    x = rng.standard_normal((nodes, features), dtype=np.float32)
    from scipy import sparse

    a = sparse.csr_matrix((np.ones(edges, np.float32), (receivers, senders)),
                          shape=(nodes, nodes))  # A_ij = edges j → i (duplicates summed)
    agg = (x + a @ x) / (1 + np.bincount(receivers, minlength=nodes))[:, None]
    r = rng.standard_normal((features, classes)).astype(np.float32)
    labels = np.argmax(agg @ r, axis=1).astype(np.int32)
    mask = np.zeros(nodes, np.float32)
    mask[rng.choice(nodes, max(1, round(labelled * nodes)), replace=False)] = 1.0
    return {"x": x, "senders": senders, "receivers": receivers, "labels": labels,
            "mask": mask}


def gcn_init(features: int, hidden: int, classes: int, *, seed: int = 0) -> Init:
    """The shared numpy init: ``W ~ N(0, 1/fan_in)``, ``b = 0`` (the suite's convention)."""
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "W2": (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """``-Σ_i m_i log softmax(z_i)_{y_i} / Σ_i m_i``: the mean over the labelled nodes."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return -jnp.sum(mask * picked) / jnp.maximum(jnp.sum(mask), 1.0)


def _device(graph: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in graph.items()}


class GraphPeer:
    """Base: a peer holds the graph on the device; ``step()`` is one full-batch step."""

    name = "?"

    def step(self) -> Any:
        raise NotImplementedError

    def lowered(self) -> Any:
        raise NotImplementedError


class _OptaxPeer(GraphPeer):
    """Raw params + optax: the jitted ``(params, opt_state, graph) -> (params, opt_state,
    loss)`` of ``loss_fn(params, graph)`` by ``jax.value_and_grad``."""

    def _setup(self, params: Any, tx: optax.GradientTransformation, loss_fn: Any,
               graph: dict[str, jax.Array]) -> None:
        self.params, self.opt_state, self.graph = params, tx.init(params), graph
        self.loss_fn = loss_fn

        @jax.jit
        def step(params, opt_state, graph):
            loss, grads = jax.value_and_grad(loss_fn)(params, graph)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = step

    def step(self) -> Any:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, self.graph)
        return loss

    def lowered(self) -> Any:
        return self._step.lower(self.params, self.opt_state, self.graph)


# ----------------------------------------------------------------------------- raw jax


def raw_gcn(params: dict[str, jax.Array], x: jax.Array, senders: jax.Array,
            receivers: jax.Array) -> jax.Array:
    """The 2-layer GCN in plain jax: ``Â H = c_in ⊙ segment_sum((c_out ⊙ H)[s], r)`` along
    the edge list with one self loop per node appended, ``c = deg^{-1/2}``."""
    n = x.shape[0]
    loops = jnp.arange(n, dtype=senders.dtype)
    s, r = jnp.concatenate([senders, loops]), jnp.concatenate([receivers, loops])
    ones = jnp.ones(s.shape, x.dtype)
    c_out = jax.lax.rsqrt(jax.ops.segment_sum(ones, s, num_segments=n))[:, None]
    c_in = jax.lax.rsqrt(jax.ops.segment_sum(ones, r, num_segments=n))[:, None]

    def propagate(h):  # Â h
        return c_in * jax.ops.segment_sum((c_out * h)[s], r, num_segments=n)

    h = jax.nn.relu(propagate(x @ params["W1"]) + params["b1"])
    return propagate(h @ params["W2"]) + params["b2"]


class RawSegmentSum(_OptaxPeer):
    """The baseline: :func:`raw_gcn`, ``jax.value_and_grad`` + optax, per-step ``jax.jit``."""

    name = "raw jax segment_sum GCN (jax.grad)"

    def __init__(self, init: Init, tx: optax.GradientTransformation,
                 graph: dict[str, np.ndarray]):
        def loss_fn(p, g):
            z = raw_gcn(p, g["x"], g["senders"], g["receivers"])
            return masked_cross_entropy(z, g["labels"], g["mask"])

        self._setup(jax.tree.map(jnp.asarray, init), tx, loss_fn, _device(graph))

    def predict(self) -> Any:
        g = self.graph
        return raw_gcn(self.params, g["x"], g["senders"], g["receivers"])


# ------------------------------------------------------------------------------- jraph


class Jraph(_OptaxPeer):
    """Two ``jraph.GraphConvolution(h ↦ h W, add_self_edges=True)`` on a ``GraphsTuple``,
    ReLU between, each layer's bias added after its aggregation."""

    name = "jraph GraphConvolution (jax.grad)"

    def __init__(self, init: Init, tx: optax.GradientTransformation,
                 graph: dict[str, np.ndarray]):
        import jraph

        n, e = len(graph["x"]), len(graph["senders"])

        def net(p, g):
            gt = jraph.GraphsTuple(nodes=g["x"], edges=None, senders=g["senders"],
                                   receivers=g["receivers"], n_node=jnp.array([n]),
                                   n_edge=jnp.array([e]), globals=None)
            conv1 = jraph.GraphConvolution(lambda h: h @ p["W1"], add_self_edges=True)
            conv2 = jraph.GraphConvolution(lambda h: h @ p["W2"], add_self_edges=True)
            gt = conv1(gt)
            gt = gt._replace(nodes=jax.nn.relu(gt.nodes + p["b1"]))
            return conv2(gt).nodes + p["b2"]

        self.net = net

        def loss_fn(p, g):
            return masked_cross_entropy(net(p, g), g["labels"], g["mask"])

        self._setup(jax.tree.map(jnp.asarray, init), tx, loss_fn, _device(graph))

    def predict(self) -> Any:
        return self.net(self.params, self.graph)


# ------------------------------------------------------------------------------ funnet


def funnet_gcn(fn: ModuleType, hidden: int, classes: int) -> Any:
    """``serial(GraphConv(H), nodewise(Relu), GraphConv(C), Nodes)``."""
    return fn.serial(fn.GraphConv(hidden), fn.nodewise(fn.Relu), fn.GraphConv(classes),
                     fn.Nodes)


def funnet_gcn_params(init: Init) -> tuple:
    """The shared init in funnet's params structure (``serial``: one entry per layer)."""
    return ({"W": jnp.asarray(init["W1"]), "b": jnp.asarray(init["b1"])}, (),
            {"W": jnp.asarray(init["W2"]), "b": jnp.asarray(init["b2"])}, ())


def funnet_graph(fn: ModuleType, graph: dict[str, np.ndarray]) -> Any:
    """The graph as a ``funnet.graph.Graph`` on the device."""
    return fn.graph.Graph(jnp.asarray(graph["x"]), jnp.asarray(graph["senders"]),
                          jnp.asarray(graph["receivers"]))


class Funnet(GraphPeer):
    """``fn.make_step(model, fn.softmax_cross_entropy, tx, grad=...)`` on
    ``fn.TrainState.create``, batch ``(Graph, labels, mask)``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation,
                 graph: dict[str, np.ndarray], *, grad: str):
        self.name = f"funnet make_step, grad={grad!r}"
        hidden, classes = init["W1"].shape[1], init["W2"].shape[1]
        self.model = funnet_gcn(fn, hidden, classes)
        self._step = fn.make_step(self.model, fn.softmax_cross_entropy, tx, grad=grad)
        self.state = fn.TrainState.create(funnet_gcn_params(init), tx, jax.random.key(0))
        self.batch = (funnet_graph(fn, graph), jnp.asarray(graph["labels"]),
                      jnp.asarray(graph["mask"]))

    def step(self) -> Any:
        self.state, metrics = self._step(self.state, self.batch)
        return metrics["loss"]

    def predict(self) -> Any:
        return self.model.apply(self.state.params, self.batch[0])

    def lowered(self) -> Any:
        from benchmarks._cnn_peers import jitted_program

        return jitted_program(self._step).lower(self.state, self.batch)


class FunnetInner(Funnet):
    """The jitted program inside ``make_step`` called directly, without the wrapper's
    per-call host work (the integer-label check): a profiling reference. It reaches the
    program through the wrapper's closure, so a changed ``make_step`` makes it raise (the
    table then says "unavailable") instead of timing something else."""

    name = "funnet make_step's jitted program alone (no host checks), reverse"

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation,
                 graph: dict[str, np.ndarray]):
        from benchmarks._cnn_peers import jitted_program

        super().__init__(fn, init, tx, graph, grad="reverse")
        self.name = type(self).name
        self._step = jitted_program(self._step)


class FunnetPlain(_OptaxPeer):
    """funnet's model in the baseline's plain jitted step: ``jax.value_and_grad`` of
    :func:`masked_cross_entropy` of ``model.apply``, then optax; no key split, no metrics,
    no host checks. A profiling reference that separates funnet's layers from
    ``make_step``."""

    name = "funnet layers in the baseline's plain jitted step, reverse"

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation,
                 graph: dict[str, np.ndarray]):
        self.model = funnet_gcn(fn, init["W1"].shape[1], init["W2"].shape[1])
        model = self.model

        def loss_fn(p, g):
            return masked_cross_entropy(model.apply(p, g["graph"]), g["labels"], g["mask"])

        data = {"graph": funnet_graph(fn, graph), "labels": jnp.asarray(graph["labels"]),
                "mask": jnp.asarray(graph["mask"])}
        self._setup(funnet_gcn_params(init), tx, loss_fn, data)


#: the non-funnet competitors, in table order (the first is the baseline)
PEERS = {RawSegmentSum.name: RawSegmentSum, Jraph.name: Jraph}
