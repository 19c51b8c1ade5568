r"""Scaled dot-product attention and ``MultiHeadAttention`` (docs/math.md §11).

The core, for one head of one sequence, with ``Q [T_q, d]``, ``K [T_k, d]``, ``V [T_k, d_v]``
and a boolean ``A [T_q, T_k]`` of the allowed (query, key) pairs::

    S = Q Kᵀ / √d,   P = softmax_rows(S restricted to A),   O = P V

and its hand backward (Vaswani et al. 2017; the rule of FlashAttention, Dao et al. 2022)::

    dV = Pᵀ dO,   dP = dO Vᵀ,   D = rowsum(dO ⊙ O),   dS = P ⊙ (dP − D),
    dQ = dS K / √d,   dK = dSᵀ Q / √d

A masked entry has ``P = 0`` and so ``dS = 0``: it gets no gradient. A query row with no
allowed key (*fully masked*) has ``P = 0`` on the whole row: its output is ``O = 0`` and
every gradient through it is 0, never NaN. (``jax.nn.dot_product_attention`` and flax
replace masked scores by a large negative number instead, so a fully masked row attends
uniformly to every key, masked ones included; on every other row the two agree.)

Arrays are laid out as ``jax.nn.dot_product_attention``'s: ``[batch, time, heads, dim]``
for ``q``, ``k``, ``v`` and the output, ``[batch, heads, T_q, T_k]`` for the mask and the
attention weights ``P``. :func:`MultiHeadAttention` wraps the core in Dense projections
and follows the sequence input convention of :mod:`funnet.layers.sequence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validate import (
    LayerError,
    ParamsError,
    check_int,
    expect_cotangent,
    expect_params,
    shape_of,
)
from ..contract import Layer, layer
from .sequence import _same, join, join_dx, split_input, split_shape

__all__ = [
    "MultiHeadAttention",
    "attention_weights",
    "dot_product_attention",
    "dot_product_attention_backward",
]

Initializer = Callable[..., jax.Array]
_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()
_ZEROS = jax.nn.initializers.zeros
_FN = "dot_product_attention"


# -- the core: one einsum per product, on [B, T, N, d] ----------------------------------------


def _causal(t_q: int, t_k: int) -> jax.Array:
    """``[1, 1, T_q, T_k]``: query ``i`` may see key ``j`` iff ``j ≤ i`` (as jax's
    ``is_causal``: aligned at the first step of both sequences)."""
    return (jnp.arange(t_k)[None, :] <= jnp.arange(t_q)[:, None])[None, None]


def _allowed(mask: jax.Array | None, causal: bool, t_q: int, t_k: int) -> jax.Array | None:
    """The boolean ``A`` of allowed (query, key) pairs, or ``None`` when all are allowed."""
    if causal:
        c = _causal(t_q, t_k)
        mask = c if mask is None else mask & c
    return mask


def _softmax_rows(s: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """``P = softmax_rows(S)`` over the allowed entries; 0 elsewhere and on a row with none.

    ``P_ij = A_ij exp(S_ij − m_i) / Σ_j A_ij exp(S_ij − m_i)``, ``m_i`` the row's largest
    allowed score (a constant shift, 0 on a fully masked row, whose sum is then 0 and which
    is divided by 1 instead: ``P = 0``, no NaN in values or in gradients).
    """
    if allowed is None:
        m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        e = jnp.exp(s - m)
        return e / jnp.sum(e, axis=-1, keepdims=True)
    m = jnp.max(jnp.where(allowed, s, -jnp.inf), axis=-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros((), s.dtype)))
    # where twice: the masked branch never computes exp of anything large
    e = jnp.where(allowed, jnp.exp(jnp.where(allowed, s - m, jnp.zeros((), s.dtype))), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, jnp.ones((), s.dtype))


def _core(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None,
          scale: float) -> tuple[jax.Array, jax.Array]:
    """``(O [B, T_q, N, d_v], P [B, N, T_q, T_k])``: ``S = Q Kᵀ · scale``, ``P``, ``O = P V``.

    The scale multiplies ``Q`` (``[B, T_q, N, d]``), not ``S`` (``[B, N, T_q, T_k]``, ``T_k / d``
    times larger): the same ``S``, and ``jax.grad`` has no ``S``-sized product to transpose.
    """
    s = jnp.einsum("btnd,bsnd->bnts", q * scale, k)  # S = (Q / √d) Kᵀ
    p = _softmax_rows(s, allowed)  # P = softmax_rows(S), masked entries 0
    return jnp.einsum("bnts,bsnd->btnd", p, v), p  # O = P V


def _core_backward(q: jax.Array, k: jax.Array, v: jax.Array, p: jax.Array, o: jax.Array,
                   do: jax.Array, scale: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(dQ, dK, dV)`` from the saved ``P`` and ``O`` (docs/math.md §11)."""
    dv = jnp.einsum("bnts,btnd->bsnd", p, do)  # dV = Pᵀ dO
    dp = jnp.einsum("btnd,bsnd->bnts", do, v)  # dP = dO Vᵀ
    d = jnp.einsum("btnd,btnd->bnt", do, o)[..., None]  # D = rowsum(dO ⊙ O)
    ds = p * (dp - d)  # dS = P ⊙ (dP − D); 0 where P = 0 (masked)
    dq = jnp.einsum("bnts,bsnd->btnd", ds, k) * scale  # dQ = dS K / √d
    dk = jnp.einsum("bnts,btnd->bsnd", ds, q) * scale  # dK = dSᵀ Q / √d
    return dq, dk, dv


# -- the functions -------------------------------------------------------------------------


class _Checked(NamedTuple):
    q: jax.Array
    k: jax.Array
    v: jax.Array
    allowed: jax.Array | None
    scale: float
    dtype: Any  # what the output is returned in


def _check_attention(q: Any, k: Any, v: Any, mask: Any, causal: Any,
                     name: str = _FN) -> _Checked:
    """The checked, promoted arrays of an attention call; a LayerError naming the shapes.

    ``v`` may be ``None`` (the attention weights alone); then ``v`` comes back ``None``.
    """
    arrays = {"q": q, "k": k, "v": v} if v is not None else {"q": q, "k": k}
    for what, a in arrays.items():
        if np.ndim(a) != 4:
            raise LayerError(f"{name}: {what} of shape {shape_of(a)} must be [batch, time, "
                             "heads, dim] (rank 4, as jax.nn.dot_product_attention)")
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise LayerError(f"{name}: {what} must be floating point, got "
                             f"{jnp.result_type(a)} of shape {shape_of(a)}")
    (b, t_q, n, d), (bk, t_k, nk, dk) = shape_of(q), shape_of(k)
    bv, tv, nv = (b, t_k, n) if v is None else shape_of(v)[:3]
    if (bk, nk, dk) != (b, n, d) or (bv, tv, nv) != (b, t_k, n):
        vs = "" if v is None else f" and v {shape_of(v)}"
        raise LayerError(f"{name}: q {shape_of(q)}, k {shape_of(k)}{vs} do not fit: q and "
                         "k need the same batch, heads and dim, and v the batch, time and "
                         "heads of k")
    if not isinstance(causal, (bool, np.bool_)):
        raise LayerError(f"{name}: causal must be True or False, got {causal!r}")
    want = (b, n, t_q, t_k)
    if mask is not None:
        m_shape = shape_of(mask)
        if len(m_shape) != 4 or any(g not in (1, w) for g, w in zip(m_shape, want)):
            raise LayerError(f"{name}: mask of shape {m_shape} must broadcast to [batch, "
                             f"heads, T_q, T_k] = {want} (rank 4, sizes 1 or equal)")
        mask = jnp.broadcast_to(jnp.asarray(mask) != 0, m_shape)
    given = (q, k) if v is None else (q, k, v)
    dtype = jnp.result_type(*given)
    work = jnp.promote_types(dtype, jnp.float32)  # softmax in ≥ float32, as jax's
    q, k, v = (None if a is None else jnp.asarray(a).astype(work) for a in (q, k, v))
    return _Checked(q, k, v, _allowed(mask, bool(causal), t_q, t_k), 1.0 / float(np.sqrt(d)),
                    dtype)


def dot_product_attention(q: Any, k: Any, v: Any, *, mask: Any = None,
                          causal: bool = False) -> jax.Array:
    r"""Scaled dot-product attention ``O = softmax_rows(Q Kᵀ / √d) V`` (docs/math.md §11).

    Per batch entry and head: ``S = Q Kᵀ / √d`` with ``d`` the dim of ``q``, the masked
    entries left out of the row softmax (``P = 0`` there), ``O = P V``. A query row without
    any allowed key gives ``O = 0`` (``jax.nn.dot_product_attention`` gives the mean of all
    values there); every other row equals ``jax.nn.dot_product_attention(q, k, v,
    mask=mask, is_causal=causal)``. The hand backward is
    :func:`dot_product_attention_backward`; ``jax.grad`` of this function differentiates
    its plain formula.

    Args:
      q: queries ``[B, T_q, N, d]`` (batch, time, heads, dim, as jax's layout).
      k: keys ``[B, T_k, N, d]``.
      v: values ``[B, T_k, N, d_v]``.
      mask: ``True`` (or nonzero) where query ``i`` may attend to key ``j``; any shape that
        broadcasts to ``[B, N, T_q, T_k]`` with rank 4 (e.g. ``[B, 1, 1, T_k]`` for key
        padding); ``None``: every pair.
      causal: also forbid the keys after the query: ``j > i`` (aligned at step 0, as
        jax's ``is_causal``).

    Returns:
      ``O [B, T_q, N, d_v]`` in the dtype of the inputs (the softmax is computed in at
      least float32).

    >>> import jax.numpy as jnp, funnet
    >>> q = k = jnp.zeros((1, 3, 1, 2))
    >>> v = jnp.arange(6.0).reshape(1, 3, 1, 2)
    >>> funnet.dot_product_attention(q, k, v, causal=True)[0, :, 0].tolist()  # running means
    [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]
    """
    c = _check_attention(q, k, v, mask, causal)
    return _core(c.q, c.k, c.v, c.allowed, c.scale)[0].astype(c.dtype)


def attention_weights(q: Any, k: Any, *, mask: Any = None, causal: bool = False) -> jax.Array:
    r"""The attention weights ``P = softmax_rows(Q Kᵀ / √d)`` ``[B, N, T_q, T_k]``.

    The ``P`` of :func:`dot_product_attention` (the same arguments, without ``v``): each row
    sums to 1 over its allowed keys, is 0 at masked entries, and is 0 everywhere on a row
    without an allowed key.

    Args:
      q: queries ``[B, T_q, N, d]``.
      k: keys ``[B, T_k, N, d]``.
      mask: as :func:`dot_product_attention`'s.
      causal: as :func:`dot_product_attention`'s.

    >>> import jax.numpy as jnp, funnet
    >>> q = k = jnp.zeros((1, 2, 1, 4))
    >>> funnet.attention_weights(q, k, mask=jnp.array([True, False]).reshape(1, 1, 1, 2))
    Array([[[[1., 0.],
             [1., 0.]]]], dtype=float32)
    """
    c = _check_attention(q, k, None, mask, causal, name="attention_weights")
    s = jnp.einsum("btnd,bsnd->bnts", c.q * c.scale, c.k)
    return _softmax_rows(s, c.allowed).astype(c.dtype)


def dot_product_attention_backward(q: Any, k: Any, v: Any, do: Any, *, mask: Any = None,
                                   causal: bool = False) -> tuple[jax.Array, jax.Array,
                                                                  jax.Array]:
    r"""The hand backward of :func:`dot_product_attention`: ``(dq, dk, dv)`` for ``dO = do``.

    ``P`` and ``O`` are recomputed from ``q``, ``k``, ``v`` (as FlashAttention's backward
    does; :func:`MultiHeadAttention` keeps them from its forward pass instead), then::

        dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ⊙ (dP − rowsum(dO ⊙ O)),
        dQ = dS K / √d,   dK = dSᵀ Q / √d

    Masked entries have ``P = 0``, hence ``dS = 0``: no gradient flows through them, and a
    fully masked query row (``O = 0``) sends none to ``q``, ``k`` or ``v``.

    Args:
      q: queries ``[B, T_q, N, d]``.
      k: keys ``[B, T_k, N, d]``.
      v: values ``[B, T_k, N, d_v]``.
      do: ``∂L/∂O`` ``[B, T_q, N, d_v]``.
      mask: as :func:`dot_product_attention`'s.
      causal: as :func:`dot_product_attention`'s.

    Returns:
      ``(dq, dk, dv)``, each in the dtype of the array it differentiates.

    >>> import jax, jax.numpy as jnp, funnet
    >>> q, k, v, do = (jax.random.normal(jax.random.PRNGKey(i), (2, 3, 2, 4)) for i in range(4))
    >>> hand = funnet.dot_product_attention_backward(q, k, v, do, causal=True)
    >>> _, pull = jax.vjp(lambda *a: funnet.dot_product_attention(*a, causal=True), q, k, v)
    >>> all(bool(jnp.allclose(a, b, atol=1e-5)) for a, b in zip(hand, pull(do)))
    True
    """
    c = _check_attention(q, k, v, mask, causal, name="dot_product_attention_backward")
    if shape_of(do) != shape_of(q)[:3] + shape_of(v)[3:]:
        raise LayerError(f"dot_product_attention_backward: do of shape {shape_of(do)} must "
                         f"have the output's shape {shape_of(q)[:3] + shape_of(v)[3:]}")
    o, p = _core(c.q, c.k, c.v, c.allowed, c.scale)
    grads = _core_backward(c.q, c.k, c.v, p, o, jnp.asarray(do).astype(o.dtype), c.scale)
    return tuple(g.astype(jnp.result_type(a)) for g, a in zip(grads, (q, k, v)))


# -- the layer --------------------------------------------------------------------------------

_KEYS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")


# The projections act on the heads' axes directly, as flax's DenseGeneral: the weights are
# reshaped (W [F, N·dh] as [F, N, dh], free), never the activations. The matrix products
# leave [B, T, N, dh] arrays in whatever layout suits the attention products next to them;
# reshaping those to [B, T, N·dh] would force a transposing copy of each (and, under
# jax.grad, one more of each gradient). With those copies and the scale on S, jax.grad's
# train step ran 1.21× flax's on a CPU (docs/attention.md, docs/benchmarks.md).


def _split_heads(x: jax.Array, W: jax.Array, b: jax.Array, heads: int) -> jax.Array:
    """``x W + b`` on ``x [B, T, F]``, as ``[B, T, N, dh]``: column ``h·dh + j`` is head
    ``h``'s ``j``."""
    f, dim = W.shape
    dh = dim // heads
    return (jnp.einsum("btf,fnd->btnd", x, W.reshape(f, heads, dh))
            + b.reshape(1, 1, heads, dh))


def _split_heads_back(x: jax.Array, W: jax.Array, dz: jax.Array):
    """:func:`_split_heads`' backward for ``dz [B, T, N, dh]``: ``(dW = Σ xᵀ dz [F, N·dh],
    db = Σ dz [N·dh], dx = dz Wᵀ [B, T, F])``."""
    f, dim = W.shape
    heads, dh = dz.shape[2:]
    dW = jnp.einsum("btf,btnd->fnd", x, dz).reshape(f, dim)
    dx = jnp.einsum("btnd,fnd->btf", dz, W.reshape(f, heads, dh))
    return dW, jnp.sum(dz, axis=(0, 1)).reshape(dim), dx


def _merge_heads(o: jax.Array, W: jax.Array, b: jax.Array) -> jax.Array:
    """``[O_1 ‖ … ‖ O_N] W + b`` for ``o [B, T, N, dh]``, ``W [N·dh, K]``: ``[B, T, K]``."""
    heads, dh = o.shape[2:]
    # contracted in the order (n, d), as flax's DenseGeneral (einsum picks (d, n), which
    # costs a transposing copy of O)
    y = lax.dot_general(o, W.reshape(heads, dh, -1), (((2, 3), (0, 1)), ((), ())))
    return y + b.reshape(1, 1, -1)


def _merge_heads_back(o: jax.Array, W: jax.Array, dy: jax.Array):
    """:func:`_merge_heads`' backward: ``(dW = Oᵀ dy [N·dh, K], db = Σ dy [K],
    dO = dy Wᵀ [B, T, N, dh])``."""
    heads, dh = o.shape[2:]
    w3 = W.reshape(heads, dh, -1)
    dW = jnp.einsum("btnd,btk->ndk", o, dy).reshape(W.shape)
    return dW, jnp.sum(dy, axis=(0, 1)), jnp.einsum("btk,ndk->btnd", dy, w3)


class _Parts(NamedTuple):
    """An attention layer's input, taken apart: the query and the key/value sequences."""

    xq: jax.Array
    mq: jax.Array | None  # [B, T_q] bool
    xkv: jax.Array
    mkv: jax.Array | None  # [B, T_k] bool
    form_q: int  # 1: an array, 2: (x, mask)
    form_kv: int
    mask_q_given: Any  # the query mask as given (echoed in the output)


def MultiHeadAttention(
    heads: int,
    dim: int,
    *,
    out_dim: int | None = None,
    causal: bool = False,
    cross: bool = False,
    W_init: Initializer = _GLOROT_NORMAL,
    b_init: Initializer = _ZEROS,
) -> Layer:
    r"""Multi-head attention: Dense projections around :func:`dot_product_attention`.

    With ``dh = dim / heads`` and head ``h``'s columns ``h·dh … (h+1)·dh − 1``::

        Q = x_q W_q + b_q,   K = x_kv W_k + b_k,   V = x_kv W_v + b_v     [B, T, dim]
        O_h = softmax_rows(Q_h K_hᵀ / √dh  restricted to A) V_h,   O = [O_1 ‖ … ‖ O_N]
        y = O W_o + b_o                                                  [B, T_q, out_dim]

    Backward: the output projection's Dense rule (``dW_o = Oᵀ dy``, ``db_o = Σ dy``,
    ``dO = dy W_oᵀ``), the core's rule per head (``dV = Pᵀ dO``, ``dP = dO Vᵀ``,
    ``dS = P ⊙ (dP − rowsum(dO ⊙ O))``, ``dQ = dS K / √dh``, ``dK = dSᵀ Q / √dh``), then the
    projections' (``dW_q = x_qᵀ dQ``, …, ``dx_q = dQ W_qᵀ``, ``dx_kv = dK W_kᵀ + dV W_vᵀ``; in
    self-attention ``dx = dx_q + dx_kv``). ``P`` and ``O`` are kept from the forward pass.

    Inputs (the sequence convention of :mod:`funnet.layers.sequence`; a tuple in gives a
    tuple out, the mask gets no gradient)::

        self-attention   x [B, T, D]  or  (x, mask)              mask [B, T]
        cross=True       (queries, memory), each x or (x, mask)  queries [B, T_q, D_q],
                                                                 memory [B, T_k, D_kv]

    The allowed pairs ``A``: key ``j`` is a real step of its sequence (its mask is
    nonzero), query ``i`` is a real step, and with ``causal=True`` also ``j ≤ i``. A
    padding query step attends to nothing and its output is 0 (as a recurrent layer's), so
    padding steps get no gradient. A real query without an allowed key (in
    cross-attention: a memory without a real step) has ``O = 0`` (the core's convention),
    so ``y = b_o`` there, and no gradient reaches the inputs through it.

    Args:
      heads: the number of heads ``N``.
      dim: the width of ``Q``, ``K`` and ``V`` over all heads, ``N · dh`` (flax's
        ``qkv_features``, PyTorch's ``embed_dim``); a multiple of ``heads``.
      out_dim: the output width; ``None``: the query feature size ``D`` (so that a residual
        connection ``x + attention(x)`` fits).
      causal: forbid each query the keys after it (``j > i``), for autoregressive models.
      cross: take ``(queries, memory)`` instead of one sequence (see above).
      W_init: initializer of the four weight matrices (Glorot normal, as ``Dense``).
      b_init: initializer of the four biases (zeros).

    Params ``{"W_q" [D_q, dim], "b_q" [dim], "W_k" [D_kv, dim], "b_k", "W_v" [D_kv, dim],
    "b_v", "W_o" [dim, out_dim], "b_o" [out_dim]}``; weight decay applies to the four
    ``W``. From flax's ``MultiHeadDotProductAttention``: ``W_q = query.kernel.reshape(D,
    dim)``, ``b_q = query.bias.reshape(dim)`` (likewise key, value), ``W_o =
    out.kernel.reshape(dim, out_dim)``, ``b_o = out.bias`` (docs/attention.md).

    >>> import jax, jax.numpy as jnp, funnet
    >>> mha = funnet.MultiHeadAttention(2, 8, causal=True)
    >>> out_shape, params = mha.init(jax.random.PRNGKey(0), ((-1, 5, 6), (-1, 5)))
    >>> out_shape, params["W_q"].shape, params["W_o"].shape
    (((-1, 5, 6), (-1, 5)), (6, 8), (8, 6))
    >>> x, mask = jnp.ones((1, 5, 6)), jnp.array([[1, 1, 1, 0, 0]])
    >>> y, _ = mha.apply(params, (x, mask))
    >>> y.shape, bool(jnp.all(y[0, 3:] == 0))  # padding steps output 0
    ((1, 5, 6), True)
    """
    heads = check_int(heads, "MultiHeadAttention: heads", error=LayerError)
    dim = check_int(dim, "MultiHeadAttention: dim", error=LayerError)
    out_dim = check_int(out_dim, "MultiHeadAttention: out_dim", allow_none=True,
                        error=LayerError)
    for flag, value in (("causal", causal), ("cross", cross)):
        if not isinstance(value, (bool, np.bool_)):
            raise LayerError(f"MultiHeadAttention: {flag} must be True or False, got {value!r}")
    if dim % heads:
        raise LayerError(f"MultiHeadAttention: dim {dim} must be a multiple of heads {heads} "
                         "(each head gets dim / heads columns)")
    causal, cross = bool(causal), bool(cross)
    dh = dim // heads
    options = [str(heads), str(dim)] + [f"{k}={v}" for k, v in (
        ("out_dim", out_dim), ("causal", causal), ("cross", cross)) if v not in (None, False)]
    name = f"MultiHeadAttention({', '.join(options)})"
    scale = 1.0 / float(np.sqrt(dh))

    def init(key, input_shape):
        if cross:
            if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 2:
                raise LayerError(f"{name}: input_shape must be (queries, memory), each the "
                                 f"shape of x or of (x, mask), got {input_shape!r}")
            q_shape, mq_shape, _, form = split_shape(name, input_shape[0], with_state=False)
            kv_shape, _, _, _ = split_shape(name, input_shape[1], with_state=False)
            if not _same(q_shape[:1], kv_shape[:1]):
                raise LayerError(f"{name}: queries {q_shape} and memory {kv_shape} must have "
                                 "the same batch size")
        else:
            q_shape, mq_shape, _, form = split_shape(name, input_shape, with_state=False)
            kv_shape = q_shape
        width = q_shape[-1] if out_dim is None else out_dim
        keys = jax.random.split(key, 8)
        sizes = {"W_q": (q_shape[-1], dim), "b_q": (dim,), "W_k": (kv_shape[-1], dim),
                 "b_k": (dim,), "W_v": (kv_shape[-1], dim), "b_v": (dim,),
                 "W_o": (dim, width), "b_o": (width,)}
        params = {k: (W_init if k[0] == "W" else b_init)(kk, sizes[k])
                  for k, kk in zip(_KEYS, keys)}
        return join((q_shape[0], q_shape[1], width), mq_shape, form), params

    def parts(inputs) -> _Parts:
        if not cross:
            x, m, _, form = split_input(name, inputs, with_state=False)
            return _Parts(x, m, x, m, form, form, inputs[1] if form > 1 else None)
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            got = (f"a tuple of {len(inputs)}" if isinstance(inputs, (tuple, list))
                   else f"an array of shape {shape_of(inputs)}")
            raise LayerError(f"{name}: the input must be (queries, memory), each x or (x, "
                             f"mask), got {got}")
        xq, mq, _, fq = split_input(name, inputs[0], with_state=False)
        xkv, mkv, _, fkv = split_input(name, inputs[1], with_state=False)
        if shape_of(xq)[0] != shape_of(xkv)[0]:
            raise LayerError(f"{name}: queries {shape_of(xq)} and memory {shape_of(xkv)} "
                             "must have the same batch size")
        return _Parts(xq, mq, xkv, mkv, fq, fkv, inputs[0][1] if fq > 1 else None)

    def check(params, p: _Parts):
        expect_params(name, params, _KEYS)
        s = {k: shape_of(params[k]) for k in _KEYS}
        width = s["W_o"][1:]
        fits = (len(s["W_q"]) == len(s["W_k"]) == len(s["W_o"]) == 2
                and s["W_q"][1] == s["W_k"][1] == s["W_o"][0] == dim
                and s["W_v"] == s["W_k"] and s["b_q"] == s["b_k"] == s["b_v"] == (dim,)
                and s["b_o"] == width and (out_dim is None or width == (out_dim,)))
        if not fits:
            got = ", ".join(f"{k} {s[k]}" for k in _KEYS)
            raise ParamsError(f"{name}: params have shapes {got}; expected W_q [D_q, {dim}], "
                              f"W_k and W_v [D_kv, {dim}], W_o [{dim}, "
                              f"{'out_dim' if out_dim is None else out_dim}], a bias per "
                              "matrix of its column count")
        d_q, d_kv = shape_of(p.xq)[-1], shape_of(p.xkv)[-1]
        if s["W_q"][0] != d_q or s["W_k"][0] != d_kv:
            raise LayerError(f"{name}: queries of shape {shape_of(p.xq)} and memory of shape "
                             f"{shape_of(p.xkv)} do not fit W_q {s['W_q']} and W_k "
                             f"{s['W_k']} (rows: the feature sizes {d_q}, {d_kv})")
        if out_dim is None and width != (d_q,):
            raise ParamsError(f"{name}: W_o has shape {s['W_o']}, but without out_dim the "
                              f"output width is the query feature size {d_q}")

    def allowed(p: _Parts) -> jax.Array | None:
        """``A [B, 1, T_q, T_k]``: both steps real (and ``j ≤ i`` with ``causal``)."""
        t_q, t_k = p.xq.shape[1], p.xkv.shape[1]
        a = None
        if p.mq is not None or p.mkv is not None:
            b = p.xq.shape[0]
            mq = jnp.ones((b, t_q), bool) if p.mq is None else p.mq
            mkv = jnp.ones((b, t_k), bool) if p.mkv is None else p.mkv
            a = (mq[:, :, None] & mkv[:, None, :])[:, None]
        return _allowed(a, causal, t_q, t_k)

    def run(params, inputs):
        p = parts(inputs)
        check(params, p)
        dtype = jnp.result_type(p.xq, p.xkv, *params.values())
        work = jnp.promote_types(dtype, jnp.float32)
        w = {k: v.astype(work) for k, v in params.items()}
        xq, xkv = p.xq.astype(work), p.xkv.astype(work)
        q = _split_heads(xq, w["W_q"], w["b_q"], heads)  # Q = x_q W_q + b_q  [B, T_q, N, dh]
        k = _split_heads(xkv, w["W_k"], w["b_k"], heads)  # K = x_kv W_k + b_k
        v = _split_heads(xkv, w["W_v"], w["b_v"], heads)  # V = x_kv W_v + b_v
        o4, att = _core(q, k, v, allowed(p), scale)  # O_h = softmax(Q_h K_hᵀ / √dh) V_h
        y = _merge_heads(o4, w["W_o"], w["b_o"])  # y = [O_1 ‖ … ‖ O_N] W_o + b_o
        if p.mq is not None:  # padding query steps output 0
            y = jnp.where(p.mq[:, :, None], y, jnp.zeros((), work))
        out = join(y.astype(dtype), p.mask_q_given, p.form_q)
        return out, (p, w, xq, xkv, q, k, v, att, o4, y.shape)

    def apply(params, inputs):
        return run(params, inputs)[0]

    def backward(params, res, dy):
        p, w, xq, xkv, q, k, v, att, o4, y_shape = res
        dy = dy[0] if p.form_q > 1 else dy  # (dy, d_mask): the mask has no gradient
        expect_cotangent(name, dy, y_shape)
        dy = dy.astype(xq.dtype)
        if p.mq is not None:  # y = 0 at padding steps: no gradient reaches them
            dy = jnp.where(p.mq[:, :, None], dy, jnp.zeros((), dy.dtype))
        g = {}
        g["W_o"], g["b_o"], do = _merge_heads_back(o4, w["W_o"], dy)
        dq, dk, dv = _core_backward(q, k, v, att, o4, do, scale)
        g["W_q"], g["b_q"], dx_q = _split_heads_back(xq, w["W_q"], dq)
        g["W_k"], g["b_k"], dx_k = _split_heads_back(xkv, w["W_k"], dk)
        g["W_v"], g["b_v"], dx_v = _split_heads_back(xkv, w["W_v"], dv)
        grads = {k: g[k].astype(jnp.result_type(params[k])) for k in _KEYS}
        dx_kv = dx_k + dx_v  # dx_kv = dK W_kᵀ + dV W_vᵀ
        if not cross:  # x is both the queries and the memory
            return grads, join_dx((dx_q + dx_kv).astype(p.xq.dtype), None, p.form_q)
        return grads, (join_dx(dx_q.astype(p.xq.dtype), None, p.form_q),
                       join_dx(dx_kv.astype(p.xkv.dtype), None, p.form_kv))

    def forward(params, inputs):
        return run(params, inputs)

    return layer(init, forward, backward, apply=apply, name=name,
                 decay=("W_q", "W_k", "W_v", "W_o"))
