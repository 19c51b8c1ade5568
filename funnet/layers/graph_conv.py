r"""Graph convolution (``GraphConv``, Kipf & Welling) and graph attention (``GraphAttention``,
Veličković et al.) on a :class:`~funnet.graph.Graph` (docs/math.md §10).

Both map a graph to a graph with new node features and the same structure, and compute
on the edge list with segment sums, never an ``N × N`` matrix. With ``s_e``, ``r_e`` the
sender and receiver of edge ``e`` (self loops ``i → i`` appended by default) and ``δ``
the gradient reaching the output nodes::

    GraphConv       Z = Â H W + b,   Â_ij = Σ_{e: j → i} c_e,  c_e = d_in(r_e)^{-1/2} d_out(s_e)^{-1/2}
                    dW = (Â H)ᵀ δ = Hᵀ (Âᵀ δ),   db = Σ_nodes δ,   dH = (Âᵀ δ) Wᵀ
    GraphAttention  V = H W (per head k: V^k),   u_e = a_dst·V_{r_e} + a_src·V_{s_e},
                    e_e = LeakyReLU(u_e),   α_e = softmax of e over the edges into r_e,
                    out_i = Σ_{e: r_e = i} α_e V_{s_e},   heads concatenated (or averaged)
                    dα_e = ⟨δ_{r_e}, V_{s_e}⟩,   de_e = α_e (dα_e − Σ_{e' → r_e} α_e' dα_e'),
                    du_e = de_e · LeakyReLU'(u_e),   dV = Σ_{e: s_e = ·} α_e δ_{r_e}
                          + (Σ_{e → ·} du_e) a_dst + (Σ_{e: s_e = ·} du_e) a_src,
                    da_dst = Σ_i (Σ_{e → i} du_e) V_i,   dW = Hᵀ dV,   dH = dV Wᵀ
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import LayerError, ParamsError, check_int, expect_params, shape_of
from ..contract import Layer, layer
from ..graph import Graph, check_graph
from ._graph_ops import (
    edge_list,
    gather,
    gcn_scales,
    graph_cotangent,
    graph_grad,
    node_input_shape,
    scatter,
    segment_softmax,
    segment_softmax_backward,
)

__all__ = ["GraphAttention", "GraphConv"]

_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()


def _graph_input(name: str, graph: Graph, W: jax.Array, loops: bool):
    """``(H, N, senders, receivers)`` of a checked graph whose node width fits ``W``,
    self loops appended when ``loops``."""
    check_graph(name, graph)
    if shape_of(graph.nodes)[1] != shape_of(W)[0]:
        raise LayerError(f"{name}: nodes have shape {shape_of(graph.nodes)}, "
                         f"{shape_of(graph.nodes)[1]} features, but W has shape "
                         f"{shape_of(W)} (expects {shape_of(W)[0]} features)")
    s, r = edge_list(graph, loops)
    return graph.nodes, shape_of(graph.nodes)[0], s, r


def _static_bool(value: object, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise LayerError(f"{what} must be True or False, got {value!r}")
    return bool(value)


# --- GraphConv ------------------------------------------------------------------------------


def GraphConv(
    out_dim: int,
    *,
    self_loops: bool = True,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Graph convolution (Kipf & Welling 2017): ``H' = Â H W + b`` (docs/math.md §10.1).

    ``Â = D_in^{-1/2} (A + I) D_out^{-1/2}`` with ``A_ij`` the number of edges ``j → i``
    and ``D_in``, ``D_out`` the in- and out-degrees of ``A + I`` (for an undirected graph
    both are ``D̃``: ``Â = D̃^{-1/2}(A + I)D̃^{-1/2}``). It is computed along the edges from
    the degrees at every call, ``(Â X)_i = Σ_{e: r_e = i} c_e X_{s_e}`` with
    ``c_e = d_in(r_e)^{-1/2} d_out(s_e)^{-1/2}``, as ``Â (H W)`` (the same product as
    ``(Â H) W``), the two degree factors applied on the nodes:
    ``Â X = d_in^{-1/2} ⊙ Σ_{e → i} (d_out^{-1/2} ⊙ X)_{s_e}``, so no per-edge array other
    than the gathered messages is formed. Hand backward: with ``δ`` the gradient of the
    output nodes and ``Âᵀ δ = d_out^{-1/2} ⊙ Σ_{e: s_e = j} (d_in^{-1/2} ⊙ δ)_{r_e}`` one
    segment sum along the reversed edges, ``dW = (Â H)ᵀ δ = Hᵀ (Âᵀ δ)``,
    ``db = Σ_nodes δ``, ``dH = (Âᵀ δ) Wᵀ``; the structure gets ``None``.

    Isolated nodes keep their own features (``Â_ii = 1``: ``h' = h W + b``); a self loop
    already in the edge list and duplicate edges count with their multiplicity in ``A``.
    No activation is applied: compose one with :func:`funnet.nodewise`.

    Args:
      out_dim: output features per node ``M``.
      self_loops: add ``I`` to ``A`` (the renormalisation trick). ``False``: ``Â`` from
        ``A`` alone, and a node without incoming edges gets ``h' = b``.
      W_init: initializer of ``W [F, M]``; default Glorot normal.
      b_init: initializer of ``b [M]``; default zeros.

    Shapes: ``Graph(nodes [N, F], …) -> Graph(nodes [N, M], …)``, the structure unchanged;
    ``input_shape`` is the node-feature shape ``(N, F)`` (``N`` may be -1). Params
    ``{"W", "b"}``; weight decay applies to ``W``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.ones((3, 2)), jnp.array([0, 1]), jnp.array([1, 2]))
    >>> gcn = funnet.GraphConv(4)
    >>> out_shape, params = gcn.init(jax.random.PRNGKey(0), (-1, 2))
    >>> out_shape, gcn.apply(params, g).nodes.shape
    ((-1, 4), (3, 4))
    """
    out_dim = check_int(out_dim, "GraphConv: out_dim", error=LayerError)
    loops = _static_bool(self_loops, "GraphConv: self_loops")
    name = f"GraphConv({out_dim})" if loops else f"GraphConv({out_dim}, self_loops=False)"

    def init(key, input_shape):
        n, f = node_input_shape(name, input_shape)
        k1, k2 = jax.random.split(key)
        return (n, out_dim), {"W": W_init(k1, (f, out_dim)), "b": b_init(k2, (out_dim,))}

    def check(params):
        expect_params(name, params, ("W", "b"))
        W, b = params["W"], params["b"]
        if np.ndim(W) != 2 or shape_of(b) != (out_dim,) or shape_of(W)[1] != out_dim:
            raise ParamsError(f"{name}: W {shape_of(W)} and b {shape_of(b)} must be [F, "
                              f"{out_dim}] and [{out_dim}]")

    def forward(params, graph):
        check(params)
        h, n, s, r = _graph_input(name, graph, params["W"], loops)
        c_in, c_out = gcn_scales(s, r, n, jnp.result_type(h, params["W"]))
        hw = h @ params["W"]
        # Â (H W) = c_in ⊙ Σ_{e → i} (c_out ⊙ H W)_{s_e}: the degree scaling on the nodes
        z = c_in[:, None] * scatter(gather(c_out[:, None] * hw, s), r, n)
        z = z + params["b"].reshape(1, -1)
        return graph._replace(nodes=z), (h, s, r, c_in, c_out)

    def backward(params, res, dy):
        h, s, r, c_in, c_out = res
        delta = graph_cotangent(name, dy, (h.shape[0], out_dim))
        # Âᵀ δ = c_out ⊙ Σ_{e: s_e = j} (c_in ⊙ δ)_{r_e}, along the reversed edges
        g = c_out[:, None] * scatter(gather(c_in[:, None] * delta, r), s, h.shape[0])
        W, b = params["W"], params["b"]
        return {
            "W": (h.T @ g).astype(W.dtype),  # dW = Hᵀ Âᵀ δ = (Â H)ᵀ δ
            "b": delta.sum(axis=0).astype(b.dtype),  # db = Σ_nodes δ
        }, graph_grad(dy, (g @ W.T).astype(h.dtype))  # dH = Âᵀ δ Wᵀ

    return layer(init, forward, backward, name=name, decay=("W",))


# --- GraphAttention -------------------------------------------------------------------------


def _leaky(u: jax.Array, slope: float) -> jax.Array:
    return jnp.where(u > 0, u, slope * u)  # LeakyReLU; its derivative at 0 is the slope


def GraphAttention(
    out_dim: int,
    *,
    heads: int = 1,
    combine: str = "concat",
    negative_slope: float = 0.2,
    self_loops: bool = True,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    a_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Graph attention (Veličković et al. 2018): ``h_i' = Σ_j α_ij W h_j`` (docs/math.md §10.2).

    Per head ``k`` (``V = H W``, split into heads ``V^k [N, M]``), every edge ``j → i``
    gets the score ``e_ij = LeakyReLU(aᵀ [W h_i ‖ W h_j])`` with ``a = [a_dst ‖ a_src]``
    (``a_dst`` on the receiver ``i``, ``a_src`` on the sender ``j``), and
    ``α_ij = softmax_j e_ij`` over the edges into ``i``: a segment softmax per receiver,
    made stable by subtracting each receiver's maximum score (``segment_max``). Then
    ``h_i'^k = Σ_j α_ij V^k_j``; the heads are concatenated (``[N, heads · M]``) or, with
    ``combine="mean"``, averaged (``[N, M]``, as the paper's output layer); ``b`` is
    added. Hand backward through the aggregation, the segment softmax (the softmax
    backward within each receiver's edges), the LeakyReLU (slope ``negative_slope`` for
    ``u ≤ 0``) and ``W`` (see :mod:`funnet.layers.graph_conv`).

    Every node attends to itself (self loops appended, as in the paper: ``N(i)`` includes
    ``i``), so an isolated node gets ``h' = W h + b``. A duplicate edge ``j → i`` is two
    terms of the softmax (``j`` weighs double), and a self loop already listed is one more.
    With ``self_loops=False`` a node without incoming edges gets ``h' = b``. No activation
    is applied (the paper's ELU: ``funnet.nodewise(funnet.Elu)``).

    Args:
      out_dim: features per head ``M``.
      heads: the number of attention heads ``K``.
      combine: ``"concat"`` (``[N, K M]``) or ``"mean"`` (``[N, M]``) of the heads.
      negative_slope: the LeakyReLU's slope for negative scores (0.2 in the paper).
      self_loops: append ``i → i`` for every node.
      W_init: initializer of ``W [F, K M]`` (head ``k`` is columns ``k M … (k+1) M - 1``).
      a_init: initializer of ``a_src`` and ``a_dst``, each ``[K, M]``.
      b_init: initializer of ``b`` (``[K M]``, or ``[M]`` for ``combine="mean"``).

    Shapes: ``Graph(nodes [N, F], …) -> Graph(nodes [N, K M] or [N, M], …)``;
    ``input_shape`` is ``(N, F)``. Params ``{"W", "a_src", "a_dst", "b"}``; weight decay
    applies to ``W``, ``a_src`` and ``a_dst``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> g = funnet.graph.Graph(jnp.ones((3, 2)), jnp.array([0, 1]), jnp.array([1, 2]))
    >>> gat = funnet.GraphAttention(4, heads=2)
    >>> out_shape, params = gat.init(jax.random.PRNGKey(0), (-1, 2))
    >>> out_shape, params["a_src"].shape, gat.apply(params, g).nodes.shape
    ((-1, 8), (2, 4), (3, 8))
    """
    out_dim = check_int(out_dim, "GraphAttention: out_dim", error=LayerError)
    k = check_int(heads, "GraphAttention: heads", error=LayerError)
    if combine not in ("concat", "mean"):
        raise LayerError(f'GraphAttention: combine must be "concat" or "mean", got {combine!r}')
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or not (
            0 <= negative_slope < 1):
        raise LayerError("GraphAttention: negative_slope must be a number in [0, 1), got "
                         f"{negative_slope!r}")
    slope = float(negative_slope)
    loops = _static_bool(self_loops, "GraphAttention: self_loops")
    options = [f"heads={k}"] if k != 1 else []
    options += [f"combine={combine!r}"] if combine != "concat" else []
    options += [f"negative_slope={slope}"] if slope != 0.2 else []
    options += ["self_loops=False"] if not loops else []
    name = f"GraphAttention({', '.join([str(out_dim), *options])})"
    width = k * out_dim if combine == "concat" else out_dim
    shapes = {"W": None, "a_src": (k, out_dim), "a_dst": (k, out_dim), "b": (width,)}

    def init(key, input_shape):
        n, f = node_input_shape(name, input_shape)
        kw, ks, kd, kb = jax.random.split(key, 4)
        return (n, width), {"W": W_init(kw, (f, k * out_dim)), "a_src": a_init(ks, (k, out_dim)),
                            "a_dst": a_init(kd, (k, out_dim)), "b": b_init(kb, (width,))}

    def check(params):
        expect_params(name, params, tuple(shapes))
        W = params["W"]
        if np.ndim(W) != 2 or shape_of(W)[1] != k * out_dim:
            raise ParamsError(f"{name}: W has shape {shape_of(W)}, expected [F, {k * out_dim}] "
                              f"({k} heads of {out_dim})")
        for key in ("a_src", "a_dst", "b"):
            if shape_of(params[key]) != shapes[key]:
                raise ParamsError(f"{name}: {key} has shape {shape_of(params[key])}, expected "
                                  f"{shapes[key]}")

    def forward(params, graph):
        check(params)
        h, n, s, r = _graph_input(name, graph, params["W"], loops)
        v = (h @ params["W"]).reshape(n, k, out_dim)  # V = H W, per head
        # u_e = a_dst·V_{r_e} + a_src·V_{s_e}, per head [E, K]
        u = (gather(jnp.sum(v * params["a_dst"][None], axis=-1), r)
             + gather(jnp.sum(v * params["a_src"][None], axis=-1), s))
        alpha = segment_softmax(_leaky(u, slope), r, n)  # α_e over the edges into r_e
        out = scatter(alpha[..., None] * gather(v, s), r, n)  # h_i' = Σ_{e → i} α_e V_{s_e}
        out = out.reshape(n, k * out_dim) if combine == "concat" else out.mean(axis=1)
        y = out + params["b"].reshape(1, -1)
        return graph._replace(nodes=y), (h, v, s, r, u, alpha)

    def backward(params, res, dy):
        h, v, s, r, u, alpha = res
        n = h.shape[0]
        dout = graph_cotangent(name, dy, (n, width))
        if combine == "concat":
            d_heads = dout.reshape(n, k, out_dim)
        else:  # mean over heads: each head gets δ / K
            d_heads = jnp.broadcast_to(dout[:, None, :] / k, (n, k, out_dim))
        d_at_r = gather(d_heads, r)  # δ_{r_e}
        v_s = gather(v, s)  # V_{s_e}
        d_alpha = jnp.sum(d_at_r * v_s, axis=-1)  # dα_e = ⟨δ_{r_e}, V_{s_e}⟩
        dv = scatter(alpha[..., None] * d_at_r, s, n)  # through the messages α_e V_{s_e}
        de = segment_softmax_backward(alpha, d_alpha, r, n)
        du = de * jnp.where(u > 0, 1.0, slope).astype(de.dtype)  # LeakyReLU'(u)
        d_dst, d_src = scatter(du, r, n), scatter(du, s, n)  # [N, K]
        a_src, a_dst = params["a_src"], params["a_dst"]
        dv = dv + d_dst[..., None] * a_dst[None] + d_src[..., None] * a_src[None]
        dv2 = dv.reshape(n, k * out_dim)
        W, b = params["W"], params["b"]
        grads = {
            "W": (h.T @ dv2).astype(W.dtype),  # dW = Hᵀ dV
            "a_src": jnp.sum(d_src[..., None] * v, axis=0).astype(a_src.dtype),
            "a_dst": jnp.sum(d_dst[..., None] * v, axis=0).astype(a_dst.dtype),
            "b": dout.sum(axis=0).astype(b.dtype),  # db = Σ_nodes δ
        }
        return grads, graph_grad(dy, (dv2 @ W.T).astype(h.dtype))  # dH = dV Wᵀ

    return layer(init, forward, backward, name=name, decay=("W", "a_src", "a_dst"))
