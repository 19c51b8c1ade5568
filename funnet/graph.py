r"""Graphs for graph layers: :class:`Graph`, batching and padding, masks, adjacency.

A graph of ``N`` nodes and ``E`` directed edges is a :class:`Graph`::

    nodes      [N, F]  float   node features (what graph layers transform)
    senders    [E]     int     edge e goes from node senders[e] ...
    receivers  [E]     int     ... to node receivers[e]: messages flow sender → receiver
    n_node     [G]     int     nodes of each graph of a batch, in consecutive blocks (None: one)
    n_edge     [G]     int     edges of each graph, in consecutive blocks (None: one graph)
    graph_mask [G]     bool    which graphs are real (None: all); padding graphs are not
    edges      [E, D]  float   edge features, or None

The adjacency matrix this stands for counts edges, row = receiver: ``A_ij`` = the number
of edges from ``j`` to ``i``, so that ``(A H)_i = Σ_{e: receivers[e] = i} H[senders[e]]``
sums what node ``i`` receives. An undirected graph lists each edge both ways. A self loop
``i → i`` is an edge like any other (``A_ii = 1``) and a duplicate edge counts twice
(``A_ij = 2``). The structure (``senders``, ``receivers``, ``n_node``, ``n_edge``,
``graph_mask``) has no gradient: a layer's backward gives ``None`` for it; ``edges`` is
data and gets its gradient.

**Batches.** :func:`batch` puts graphs side by side: one graph whose node and edge blocks
are the graphs' (senders and receivers offset), ``n_node``/``n_edge`` telling the blocks
apart. No edge joins two graphs, so a layer computes on each graph what it would compute
on it alone (the tests check this). :func:`pad` pads a batch to fixed sizes, so that
``jax.jit`` compiles once for every batch: it adds a *padding graph* holding every padding
node (features 0) and every padding edge (a self loop of its first node), and empty
padding graphs up to the graph count; ``graph_mask`` is ``False`` for those (jraph's
``pad_with_graphs``, with the mask explicit so that a real graph may be empty).
:func:`node_mask` and :func:`edge_mask` tell real nodes and edges from padding;
:func:`unbatch` returns the real graphs.

**Dense adjacency.** :func:`from_adjacency` turns an adjacency matrix into the edge list
and :func:`adjacency` back; :func:`normalized_adjacency` is the GCN's
``Â = D_in^{-1/2} (A + I) D_out^{-1/2}`` as a dense matrix (docs/math.md §10; for an
undirected graph ``D_in = D_out = D̃``, the degree matrix of ``A + I``).
Graph layers never form an ``N × N`` matrix: they work on the edge list with
``jax.ops.segment_sum`` (:mod:`funnet.layers.graph_conv`).

>>> import jax.numpy as jnp, funnet
>>> g = funnet.graph.Graph(jnp.ones((3, 2)), senders=jnp.array([0, 1]),
...                        receivers=jnp.array([1, 2]))
>>> funnet.graph.adjacency(g).tolist()    # 0 → 1 → 2
[[0, 0, 0], [1, 0, 0], [0, 1, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._validate import LayerError, refuse_list_input, shape_of

__all__ = [
    "STRUCTURE",
    "Graph",
    "adjacency",
    "batch",
    "check_graph",
    "edge_graph",
    "edge_mask",
    "from_adjacency",
    "karate_club",
    "n_graphs",
    "node_graph",
    "node_mask",
    "normalized_adjacency",
    "pad",
    "unbatch",
]

#: The fields of a :class:`Graph` that are structure (no gradient, ``None`` in ``dx``).
STRUCTURE = ("senders", "receivers", "n_node", "n_edge", "graph_mask")


class Graph(NamedTuple):
    r"""One graph, or a (padded) batch of graphs, as graph layers take and return it.

    Graph layers map a ``Graph`` to a ``Graph`` with new ``nodes`` and the same structure,
    so they stack in :func:`funnet.serial`; ``funnet.Nodes`` and
    :func:`funnet.Readout` turn one into an array of node or graph outputs.

    Attributes:
      nodes: node features ``[N, F]`` (floating point).
      senders: ``[E]`` integers in ``0 … N-1``: edge ``e`` starts at ``senders[e]``.
      receivers: ``[E]`` integers in ``0 … N-1``: edge ``e`` ends at ``receivers[e]``.
      n_node: ``[G]`` integers, the nodes of each graph of a batch (consecutive blocks,
        summing to ``N``); ``None``: one graph.
      n_edge: ``[G]`` integers, the edges of each graph (consecutive blocks, summing to
        ``E``); given with ``n_node``.
      graph_mask: ``[G]`` bools, ``False`` for the padding graphs :func:`pad` adds;
        ``None``: every graph is real.
      edges: edge features ``[E, D]``, or ``None``.
    """

    nodes: Any
    senders: Any
    receivers: Any
    n_node: Any = None
    n_edge: Any = None
    graph_mask: Any = None
    edges: Any = None


# --- validation -------------------------------------------------------------------------


def _concrete(*values: Any) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def _integers(name: str, what: str, v: Any, rank: int = 1) -> None:
    if np.ndim(v) != rank or not jnp.issubdtype(jnp.result_type(v), jnp.integer):
        raise LayerError(f"{name}: {what} must be a rank-{rank} integer array, got "
                         f"{jnp.result_type(v)} of shape {shape_of(v)}")


def _indices_in_range(name: str, what: str, idx: Any, n: int) -> None:
    if not _concrete(idx):
        return
    v = np.asarray(idx)
    bad = (v < 0) | (v >= n)
    if bad.any():
        first = int(np.argmax(bad))
        shown = ", ".join(str(x) for x in np.unique(v[bad])[:8])
        raise LayerError(f"{name}: {what} must be node indices in 0 … {n - 1} (nodes has "
                         f"{n} rows); got {shown} ({int(bad.sum())} of {v.size} edges, the "
                         f"first at edge {first})")


def check_graph(name: str, graph: Any) -> None:
    r"""Raise a :class:`funnet.LayerError` naming ``name`` unless ``graph`` is a valid Graph.

    Shapes and dtypes are checked always; values (indices in range, block sizes adding up,
    no edge leaving its graph) when they are concrete, i.e. outside ``jax.jit``. Under
    ``jax.jit`` out-of-range indices are not checked: graph layers then gather ``NaN`` for
    an out-of-range sender and drop a message to an out-of-range receiver.

    Args:
      name: the layer (or function) to name in the message.
      graph: what was given.
    """
    if not isinstance(graph, Graph):
        got = type(graph).__name__ + (f" of shape {shape_of(graph)}"
                                      if hasattr(graph, "shape") else "")
        raise LayerError(f"{name}: input must be a funnet.graph.Graph(nodes, senders, "
                         f"receivers, ...), got {got}")
    refuse_list_input(name, tuple(graph))
    nodes, s, r = graph.nodes, graph.senders, graph.receivers
    if np.ndim(nodes) != 2:
        raise LayerError(f"{name}: nodes must be [N, F], got shape {shape_of(nodes)}")
    if not jnp.issubdtype(jnp.result_type(nodes), jnp.floating):
        raise LayerError(f"{name}: nodes must be floating point, got {jnp.result_type(nodes)} "
                         f"of shape {shape_of(nodes)}")
    _integers(name, "senders", s)
    _integers(name, "receivers", r)
    if shape_of(s) != shape_of(r):
        raise LayerError(f"{name}: senders {shape_of(s)} and receivers {shape_of(r)} must "
                         "have the same length (one entry per edge)")
    n, e = shape_of(nodes)[0], shape_of(s)[0]
    _indices_in_range(name, "senders", s, n)
    _indices_in_range(name, "receivers", r, n)
    if graph.edges is not None and (np.ndim(graph.edges) < 1 or shape_of(graph.edges)[0] != e):
        raise LayerError(f"{name}: edges (edge features) of shape {shape_of(graph.edges)} must "
                         f"have one row per edge ({e})")
    _check_blocks(name, graph, n, e)


def _check_blocks(name: str, graph: Graph, n: int, e: int) -> None:
    """``n_node``, ``n_edge`` and ``graph_mask``: shapes, sums, and edges inside graphs."""
    n_node, n_edge = graph.n_node, graph.n_edge
    if (n_node is None) != (n_edge is None):
        raise LayerError(f"{name}: n_node and n_edge come together (got n_node "
                         f"{shape_of(n_node) if n_node is not None else None}, n_edge "
                         f"{shape_of(n_edge) if n_edge is not None else None})")
    g = 1 if n_node is None else shape_of(n_node)[0] if np.ndim(n_node) == 1 else -1
    if n_node is not None:
        _integers(name, "n_node", n_node)
        _integers(name, "n_edge", n_edge)
        if shape_of(n_node) != shape_of(n_edge):
            raise LayerError(f"{name}: n_node {shape_of(n_node)} and n_edge {shape_of(n_edge)} "
                             "must have one entry per graph")
    if graph.graph_mask is not None and shape_of(graph.graph_mask) != (g,):
        raise LayerError(f"{name}: graph_mask of shape {shape_of(graph.graph_mask)} must have "
                         f"one entry per graph ({g})")
    if n_node is None or not _concrete(n_node, n_edge):
        return
    nn, ne = np.asarray(n_node), np.asarray(n_edge)
    for what, counts, total, rows in (("n_node", nn, n, "nodes"), ("n_edge", ne, e, "edges")):
        if (counts < 0).any() or counts.sum() != total:
            raise LayerError(f"{name}: {what} {counts.tolist()} must be ≥ 0 and sum to the "
                             f"{total} {rows} of the graph")
    if not _concrete(graph.senders, graph.receivers):
        return
    owner = np.repeat(np.arange(g), ne)
    for what, idx in (("senders", graph.senders), ("receivers", graph.receivers)):
        inside = np.repeat(np.arange(g), nn)[np.asarray(idx)] == owner
        if not inside.all():
            k = int(np.argmin(inside))
            raise LayerError(f"{name}: edge {k} of graph {owner[k]} (by n_edge) has {what} "
                             f"{int(np.asarray(idx)[k])}, a node of graph "
                             f"{int(np.repeat(np.arange(g), nn)[np.asarray(idx)[k]])} (by "
                             "n_node): an edge must join nodes of its own graph")


# --- blocks and masks (jit-friendly) --------------------------------------------------------


def n_graphs(graph: Graph) -> int:
    """The number of graphs ``G`` of a batch (static): ``len(n_node)``, or 1.

    Args:
      graph: a :class:`Graph` (a single graph or a batch).
    """
    return 1 if graph.n_node is None else int(shape_of(graph.n_node)[0])


def node_graph(graph: Graph) -> jax.Array:
    """``[N]``: the graph each node belongs to (0 for a single graph).

    Args:
      graph: a :class:`Graph` (a single graph or a batch).
    """
    n = shape_of(graph.nodes)[0]
    if graph.n_node is None:
        return jnp.zeros((n,), jnp.int32)
    return jnp.repeat(jnp.arange(n_graphs(graph)), graph.n_node, total_repeat_length=n)


def edge_graph(graph: Graph) -> jax.Array:
    """``[E]``: the graph each edge belongs to (0 for a single graph).

    Args:
      graph: a :class:`Graph` (a single graph or a batch).
    """
    e = shape_of(graph.senders)[0]
    if graph.n_edge is None:
        return jnp.zeros((e,), jnp.int32)
    return jnp.repeat(jnp.arange(n_graphs(graph)), graph.n_edge, total_repeat_length=e)


def node_mask(graph: Graph) -> jax.Array:
    """``[N]`` bools: ``True`` for the nodes of real graphs, ``False`` for padding.

    Args:
      graph: a :class:`Graph` (a single graph or a batch).
    """
    if graph.graph_mask is None:
        return jnp.ones((shape_of(graph.nodes)[0],), bool)
    return jnp.asarray(graph.graph_mask, bool)[node_graph(graph)]


def edge_mask(graph: Graph) -> jax.Array:
    """``[E]`` bools: ``True`` for the edges of real graphs, ``False`` for padding.

    Args:
      graph: a :class:`Graph` (a single graph or a batch).
    """
    if graph.graph_mask is None:
        return jnp.ones((shape_of(graph.senders)[0],), bool)
    return jnp.asarray(graph.graph_mask, bool)[edge_graph(graph)]


def adjacency(graph: Graph) -> jax.Array:
    r"""The dense adjacency ``A [N, N]`` (integers): ``A_ij`` = number of edges ``j → i``.

    Row = receiver, so that ``A H`` sums each node's incoming neighbours; self loops are on
    the diagonal, duplicate edges count with their multiplicity. For small graphs (docs,
    checks); graph layers never form it.

    Args:
      graph: a :class:`Graph` (or batch; its padding edges are counted too).
    """
    n = shape_of(graph.nodes)[0]
    return jnp.zeros((n, n), jnp.int32).at[graph.receivers, graph.senders].add(1)


def normalized_adjacency(graph: Graph, *, self_loops: bool = True) -> jax.Array:
    r"""The GCN's ``Â = D_in^{-1/2} (A + I) D_out^{-1/2}`` as a dense ``[N, N]`` matrix.

    ``D_in`` holds the row sums of ``Ã = A + I`` (each node's incoming edges plus its self
    loop), ``D_out`` the column sums (outgoing); for an undirected graph both are the
    degree matrix ``D̃`` of ``A + I`` and ``Â = D̃^{-1/2} Ã D̃^{-1/2}`` (docs/math.md §10).
    With ``self_loops=False``, ``Ã = A`` and a node without edges has a zero row.

    Args:
      graph: a :class:`Graph`.
      self_loops: add ``I`` (Kipf & Welling's renormalisation trick).

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.from_adjacency(jnp.ones((2, 1)), jnp.array([[0, 1], [1, 0]]))
    >>> funnet.graph.normalized_adjacency(g).round(4).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    a = adjacency(graph).astype(jnp.result_type(graph.nodes))
    if self_loops:
        a = a + jnp.eye(a.shape[0], dtype=a.dtype)
    d_in, d_out = a.sum(axis=1), a.sum(axis=0)

    def rsqrt(d):
        return jnp.where(d > 0, 1 / jnp.sqrt(jnp.where(d > 0, d, 1)), 0)

    return rsqrt(d_in)[:, None] * a * rsqrt(d_out)[None, :]


# --- building graphs on the host ----------------------------------------------------------------


def _host(name: str, graph: Graph) -> Graph:
    """``graph`` with NumPy fields, checked; a traced graph is refused (host-side helper)."""
    check_graph(name, graph)
    if not _concrete(*(v for v in graph if v is not None)):
        raise TypeError(f"{name} works on concrete graphs (data preparation, outside jax.jit)")
    return Graph(*(None if v is None else np.asarray(v) for v in graph))


def _blocks(g: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, e = g.nodes.shape[0], g.senders.shape[0]
    n_node = np.array([n]) if g.n_node is None else g.n_node
    n_edge = np.array([e]) if g.n_edge is None else g.n_edge
    mask = np.ones(len(n_node), bool) if g.graph_mask is None else g.graph_mask.astype(bool)
    return n_node, n_edge, mask


def _device(g: Graph) -> Graph:
    return Graph(*(None if v is None else jnp.asarray(v) for v in g))


def from_adjacency(nodes: Any, adjacency: Any) -> Graph:
    r"""The :class:`Graph` of node features ``[N, F]`` and a dense adjacency ``[N, N]``.

    ``adjacency[i, j]`` counts the edges from ``j`` to ``i`` (row = receiver); an entry
    ``k > 1`` gives ``k`` duplicate edges. For an undirected graph pass a symmetric matrix.
    Edges are listed by receiver, then sender.

    Args:
      nodes: node features ``[N, F]``.
      adjacency: non-negative integer counts ``[N, N]`` (0/1 for a simple graph).

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.from_adjacency(jnp.zeros((3, 1)), jnp.array([[0, 1, 0], [1, 0, 0],
    ...                                                              [0, 0, 0]]))
    >>> g.senders.tolist(), g.receivers.tolist()
    ([1, 0], [0, 1])
    """
    name = "from_adjacency"
    a = np.asarray(adjacency)
    n = shape_of(nodes)[0] if np.ndim(nodes) >= 1 else -1
    if a.shape != (n, n):
        raise LayerError(f"{name}: adjacency of shape {a.shape} must be [N, N] for nodes of "
                         f"shape {shape_of(nodes)}")
    if a.size and (not np.all(a == np.round(a)) or a.min() < 0):
        raise LayerError(f"{name}: adjacency entries must be edge counts (integers ≥ 0); "
                         "weighted graphs are not supported")
    counts = a.astype(np.int64)
    receivers, senders = np.nonzero(counts)
    reps = counts[receivers, senders]
    graph = Graph(jnp.asarray(nodes), jnp.asarray(np.repeat(senders, reps)),
                  jnp.asarray(np.repeat(receivers, reps)))
    check_graph(name, graph)
    return graph


def batch(graphs: Sequence[Graph]) -> Graph:
    r"""Graphs (or batches) side by side as one batch; edges are offset to their nodes.

    The result has ``n_node``/``n_edge`` with one entry per graph (a batch given contributes
    its own entries) and ``graph_mask`` when some input has one. Every input must have
    ``edges`` or none. On concrete arrays (data preparation).

    Args:
      graphs: the graphs to batch (at least one); their node features must have one width.

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.ones((2, 1)), jnp.array([0]), jnp.array([1]))
    >>> b = funnet.graph.batch([g, g])
    >>> b.senders.tolist(), b.receivers.tolist(), b.n_node.tolist()
    ([0, 2], [1, 3], [2, 2])
    """
    graphs = [_host("batch", g) for g in graphs]
    if not graphs:
        raise LayerError("batch: needs at least one graph")
    widths = {g.nodes.shape[1] for g in graphs}
    if len(widths) != 1:
        raise LayerError(f"batch: the graphs' node features differ in width: {sorted(widths)}")
    if len({g.edges is None for g in graphs}) != 1:
        raise LayerError("batch: either every graph has edge features (edges) or none")
    offsets = np.cumsum([0] + [g.nodes.shape[0] for g in graphs])[:-1]
    blocks = [_blocks(g) for g in graphs]
    masked = any(g.graph_mask is not None for g in graphs)
    out = Graph(
        nodes=np.concatenate([g.nodes for g in graphs]),
        senders=np.concatenate([g.senders + o for g, o in zip(graphs, offsets)]),
        receivers=np.concatenate([g.receivers + o for g, o in zip(graphs, offsets)]),
        n_node=np.concatenate([b[0] for b in blocks]),
        n_edge=np.concatenate([b[1] for b in blocks]),
        graph_mask=np.concatenate([b[2] for b in blocks]) if masked else None,
        edges=None if graphs[0].edges is None else np.concatenate([g.edges for g in graphs]),
    )
    return _device(out)


def pad(graph: Graph, *, n_node: int, n_edge: int, n_graph: int) -> Graph:
    r"""``graph`` padded to ``n_node`` nodes, ``n_edge`` edges and ``n_graph`` graphs.

    One padding graph takes every padding node (features 0) and every padding edge (a self
    loop of the first padding node, edge features 0); empty padding graphs fill up to
    ``n_graph``. ``graph_mask`` marks the padding graphs ``False``. Padding needs room:
    ``n_graph`` above the graph count (for the padding graph), and a padding node when
    there are padding edges. Sizes already reached give the graph back (with ``n_node``,
    ``n_edge`` and ``graph_mask`` filled in).

    Args:
      graph: a graph or batch (:func:`batch`), concrete.
      n_node: the total number of nodes after padding.
      n_edge: the total number of edges after padding.
      n_graph: the total number of graphs after padding.

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.ones((2, 1)), jnp.array([0]), jnp.array([1]))
    >>> p = funnet.graph.pad(g, n_node=4, n_edge=3, n_graph=3)
    >>> p.n_node.tolist(), p.n_edge.tolist(), p.graph_mask.tolist()
    ([2, 2, 0], [1, 2, 0], [True, False, False])
    >>> funnet.graph.node_mask(p).tolist()
    [True, True, False, False]
    """
    g = _host("pad", graph)
    nn, ne, mask = _blocks(g)
    n, e, count = g.nodes.shape[0], g.senders.shape[0], len(nn)
    extra_n, extra_e, extra_g = n_node - n, n_edge - e, n_graph - count
    if min(extra_n, extra_e, extra_g) < 0:
        raise LayerError(f"pad: the graph has {n} nodes, {e} edges and {count} graphs, more "
                         f"than n_node={n_node}, n_edge={n_edge}, n_graph={n_graph}")
    if (extra_n or extra_e) and not extra_g:
        raise LayerError(f"pad: padding {extra_n} nodes and {extra_e} edges needs a padding "
                         f"graph: n_graph must exceed the {count} graphs")
    if extra_e and not extra_n:
        raise LayerError(f"pad: {extra_e} padding edges need a padding node to start and end "
                         f"at: n_node must exceed the {n} nodes")
    pad_n = [extra_n] + [0] * (extra_g - 1) if extra_g else []
    pad_e = [extra_e] + [0] * (extra_g - 1) if extra_g else []
    loop = np.full(extra_e, n, g.senders.dtype)
    edges = g.edges
    if edges is not None:
        edges = np.concatenate([edges, np.zeros((extra_e, *edges.shape[1:]), edges.dtype)])
    out = Graph(
        nodes=np.concatenate([g.nodes, np.zeros((extra_n, g.nodes.shape[1]), g.nodes.dtype)]),
        senders=np.concatenate([g.senders, loop]),
        receivers=np.concatenate([g.receivers, loop.astype(g.receivers.dtype)]),
        n_node=np.concatenate([nn, np.array(pad_n, nn.dtype)]),
        n_edge=np.concatenate([ne, np.array(pad_e, ne.dtype)]),
        graph_mask=np.concatenate([mask, np.zeros(extra_g, bool)]),
        edges=edges,
    )
    return _device(out)


def unbatch(graph: Graph) -> list[Graph]:
    r"""The real graphs of a batch, each on its own (padding graphs dropped).

    The inverse of :func:`batch` followed by :func:`pad`: each graph comes back with its
    own node numbering and without ``n_node``, ``n_edge`` and ``graph_mask``.

    Args:
      graph: a batch (concrete).

    >>> import jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.ones((2, 1)), jnp.array([0]), jnp.array([1]))
    >>> [h.senders.tolist() for h in funnet.graph.unbatch(funnet.graph.batch([g, g]))]
    [[0], [0]]
    """
    g = _host("unbatch", graph)
    nn, ne, mask = _blocks(g)
    starts_n, starts_e = np.cumsum(nn) - nn, np.cumsum(ne) - ne
    out = []
    for k in np.flatnonzero(mask):
        nodes = slice(starts_n[k], starts_n[k] + nn[k])
        edges = slice(starts_e[k], starts_e[k] + ne[k])
        out.append(_device(Graph(
            g.nodes[nodes], g.senders[edges] - starts_n[k], g.receivers[edges] - starts_n[k],
            edges=None if g.edges is None else g.edges[edges])))
    return out


# --- data ---------------------------------------------------------------------------------------


def karate_club() -> tuple[Graph, np.ndarray]:
    r"""Zachary's karate club: 34 members, 78 ties, and the faction each member joined.

    Zachary (1977) recorded the friendships among the 34 members of a university karate
    club that then split in two: members who followed the instructor ("Mr. Hi", label 0)
    and members who stayed with the club's officer ("Officer", label 1). Node numbers and
    labels are networkx's ``karate_club_graph`` (its ``club`` attribute): the instructor
    is node 0, the officer node 33. Source and format: ``funnet/_data/KARATE_README.txt``.

    Returns:
      ``(graph, labels)``: the undirected graph with each tie listed both ways (156
      directed edges) and one-hot node features ``nodes = I [34, 34]`` (float32), and the
      labels ``[34]`` (int32, 0 or 1).

    >>> import funnet
    >>> g, labels = funnet.graph.karate_club()
    >>> g.nodes.shape, g.senders.shape, int(labels.sum())
    ((34, 34), (156,), 17)
    """
    from importlib import resources

    text = (resources.files("funnet") / "_data" / "karate_club.txt").read_text("utf-8")
    rows = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    ties = np.array([(int(a), int(b)) for a, b in (r for r in rows if r[0] != "label")])
    labels = np.array([int(r[2]) for r in rows if r[0] == "label"], np.int32)
    senders = np.concatenate([ties[:, 0], ties[:, 1]])
    receivers = np.concatenate([ties[:, 1], ties[:, 0]])
    graph = Graph(jnp.eye(34, dtype=jnp.float32), jnp.asarray(senders, jnp.int32),
                  jnp.asarray(receivers, jnp.int32))
    return graph, labels
