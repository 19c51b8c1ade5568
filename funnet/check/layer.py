"""One layer's hand backward against ``jax.vjp`` of its formula wiring."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..contract import Layer, NoBackwardRuleError, PyTree, StatefulModelError, as_layer
from .comparison import GradientCheckError, Report, compare, default_tolerances

__all__ = ["LayerCheck", "check_layer"]


def _layer_at(model: Layer, params: PyTree, leaf: str) -> str:
    """``serial[2] › Dense(8)``: the (innermost) layer that owns the params leaf ``leaf``."""
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jax.tree_util.keystr(path) != leaf:
            continue
        layer, where = model, []
        for k in path:
            if not (isinstance(k, jax.tree_util.SequenceKey) and layer.children):
                break
            where.append(f"{layer.name.split('(')[0]}[{k.idx}]")
            layer = layer.children[k.idx]
        return " › ".join([*where, layer.name])
    return model.name




@dataclasses.dataclass(frozen=True, eq=False)
class LayerCheck:
    """What :func:`check_layer` found; ``str(check)`` prints both tables.

    Attributes:
      layer: the layer's name.
      params: :class:`Report` of the hand ``dparams`` against ``jax.vjp`` of the formula.
      inputs: :class:`Report` of the hand ``dx`` against it (float inputs only).
      no_gradient: paths of the inputs the hand rule gives no gradient (``None``).
      dtype: the dtype that chose the default tolerances.
      missing: the inputs among ``no_gradient`` whose reference gradient is not zero: the
        hand rule wrongly drops their gradient (the check fails).
    """

    layer: str
    params: Report
    inputs: Report
    no_gradient: tuple[str, ...]
    dtype: str
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.params.ok and self.inputs.ok and not self.missing

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        title = (f"layer check of {self.layer} ({self.dtype}): hand backward vs jax.vjp of "
                 "the formula")
        parts = [title, "params (dparams): " + str(self.params),
                 "input (dx): " + str(self.inputs)]
        if self.no_gradient:
            parts.append(f"no gradient (None) for input(s): {', '.join(self.no_gradient)}")
        if self.missing:
            parts.append(f"but jax.vjp gives a non-zero gradient for: {', '.join(self.missing)}")
        return "\n".join(parts + [verdict])


def _random_like(tree: PyTree, seed: int) -> PyTree:
    """A generic cotangent like ``tree``: entries spread over (-1, 1) by an integer hash of
    their index, the leaf and ``seed`` (exact integer arithmetic, so every use of it in a
    compiled program sees the same values), cheaper on a CPU than a PRNG."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for k, v in enumerate(leaves):
        h = jnp.arange(np.size(v), dtype=jnp.uint32).reshape(jnp.shape(v))
        h = h * jnp.uint32(2654435761) + jnp.uint32((seed * 7919 + k * 104729 + 1) % 2**32)
        for _ in range(2):  # xorshift-multiply rounds
            h = (h ^ (h >> 16)) * jnp.uint32(0x45D9F3B)
        h = h ^ (h >> 16)
        unit = (h >> 8).astype(jnp.float32) / jnp.float32(2**24)  # [0, 1), exact
        out.append((2 * unit - 1).astype(jnp.result_type(v)))
    return treedef.unflatten(out)


def _input_pairs(hand_dx: Any, ref_dx: Any) -> tuple[dict, dict, tuple[str, ...], tuple]:
    """Float input leaves by path for the hand and the reference ``dx``; the ``None`` paths,
    and those of them whose reference gradient is not zero (a wrongly missing gradient)."""
    hand = jax.tree_util.tree_flatten_with_path(hand_dx, is_leaf=lambda v: v is None)[0]
    ref = [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(ref_dx)[0]]
    a, b, none, missing = {}, {}, [], []
    for path, v in hand:
        key = jax.tree_util.keystr(path)
        name = "x" + key
        if v is None:
            none.append(name)
            below = [r for k, r in ref if k.startswith(key)
                     and jnp.issubdtype(jnp.result_type(r), jnp.floating)]
            if any(np.any(np.asarray(r) != 0) for r in below):
                missing.append(name)
        elif jnp.issubdtype(jnp.result_type(v), jnp.floating):
            a[name], b[name] = dict(ref)[key], v
    return a, b, tuple(none), tuple(missing)


def check_layer(
    layer: Layer,
    params: PyTree,
    x: Any,
    *,
    state: PyTree = (),
    key: jax.Array | None = None,
    train: bool = False,
    dy: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> LayerCheck:
    r"""Check one layer's hand ``backward`` against ``jax.vjp`` of its plain formulas.

    With ``y = layer(params, x)`` and a cotangent ``dy`` (generic entries in (-1, 1), from ``seed``,
    unless given), the hand rule's ``(dparams, dx) = backward(params, residuals, dy)`` must
    equal ``jax.vjp`` of the layer's forward pass in the ``"formula"`` wiring: activations
    through their formula ``f``, not their hand ``f'``, so the witness shares no derivative
    with what it checks. Inputs the rule gives no gradient (``None``) are listed, not
    compared; integer inputs have none. Tolerances as :func:`check_model`'s between exact
    methods (:func:`default_tolerances`, ``atol`` scaled by the largest reference entry).

    Returns a :class:`LayerCheck`; raises :class:`GradientCheckError` naming the layer and
    the first leaf out of tolerance.

    Args:
        layer: the :class:`funnet.Layer` whose ``backward`` is checked.
        params: its params.
        x: the input to check at (a tuple for a layer of several inputs).
        state: the layer's state, ``()`` for a layer without.
        key: the PRNG key of the forward pass (``Dropout`` with ``train=True``).
        train: the forward pass's training mode.
        dy: the output cotangent; ``None`` draws generic entries from ``seed``.
        rtol: the relative tolerance; ``None`` takes the dtype's default.
        atol: the absolute tolerance; ``None`` takes the dtype's default, scaled.
        seed: the seed of the drawn ``dy``.
        verbose: print the report (the :class:`LayerCheck`).

    >>> import jax, jax.numpy as jnp, funnet
    >>> layer = funnet.serial(funnet.Dense(3), funnet.Tanh)
    >>> _, params = layer.init(jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.check_layer(layer, params, jnp.ones((4, 2))).ok
    True
    """
    layer = as_layer(layer)
    if not layer.has_backward:
        raise NoBackwardRuleError(f"check_layer: {layer.name} has no hand-derived backward rule")
    if layer.stateful and not jax.tree_util.tree_leaves(state):
        raise StatefulModelError(f"check_layer: {layer.stateful_path()} holds state: pass "
                                 "state= (from init_with_state)")
    pulled = pullbacks(layer, params, x, state=state, key=key, train=train, dy=dy, seed=seed)
    return layer_report(layer, params, x, *pulled, rtol=rtol, atol=atol, verbose=verbose)


def pullbacks(layer: Layer, params: PyTree, x: Any, *, state: PyTree = (),
              key: jax.Array | None = None, train: bool = False, dy: Any = None,
              seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """``(ref_dparams, ref_dx, dparams, dx)``: ``jax.vjp`` of the formula wiring and the hand
    backward, for the same cotangent ``dy`` (a generic one from ``seed`` unless given).
    Traceable: :func:`funnet.check_model` runs it for every layer inside one ``jax.jit``."""
    formula = layer.rewired("formula")

    def plain(p, inputs):
        return formula.apply_with_state(p, state, inputs, key=key, train=train)[0]

    y, pullback = jax.vjp(plain, params, x)
    dy = _random_like(y, seed) if dy is None else dy
    ref_dparams, ref_dx = pullback(dy)
    _, _, residuals = layer.forward_with_state(params, state, x, key=key, train=train)
    out = layer.backward(params, residuals, dy)
    if not isinstance(out, tuple) or len(out) != 2:
        raise GradientCheckError(f"check_layer: the backward of {layer.name} must return "
                                 f"(dparams, dx), got {type(out).__name__}")
    return ref_dparams, ref_dx, out[0], out[1]


def layer_report(layer: Layer, params: PyTree, x: Any, ref_dparams: Any, ref_dx: Any,
                 dparams: Any, dx: Any, *, rtol: float | None = None,
                 atol: float | None = None, verbose: bool = False,
                 name: str | None = None) -> LayerCheck:
    """The :class:`LayerCheck` of computed pullbacks; raises :class:`GradientCheckError`."""
    name = layer.name if name is None else name
    try:
        ref_in, hand_in, none, missing = _input_pairs(dx, ref_dx)
    except (KeyError, ValueError) as e:
        raise GradientCheckError(f"check_layer: the dx of {name}'s backward does not have "
                                 f"the structure of its input: {e}") from None
    leaves = jax.tree_util.tree_leaves((params, x))
    floats = [v for v in leaves if jnp.issubdtype(jnp.result_type(v), jnp.floating)]
    dtype = np.dtype(jnp.result_type(*floats)) if floats else np.dtype(np.float32)

    def report(a, b):
        scale = max((float(np.max(np.abs(v), initial=0.0)) for v in jax.tree_util.tree_leaves(a)),
                    default=0.0)
        r, t = default_tolerances(dtype, numerical=False, scale=scale if scale > 0 else 1.0)
        try:
            return compare(a, b, names=("vjp", "hand"), rtol=r if rtol is None else rtol,
                           atol=t if atol is None else atol)
        except ValueError as e:  # another structure or shape: name the layer
            raise GradientCheckError(f"check_layer: the backward of {name}: {e}") from None

    result = LayerCheck(name, report(ref_dparams, dparams), report(ref_in, hand_in),
                        none, dtype.name, missing)
    if verbose:
        print(result)
    if result.missing:
        raise GradientCheckError(
            f"check_layer: the hand backward of {name} returns no gradient (None) for "
            f"input(s) {', '.join(result.missing)}, but jax.vjp of its formula gives a "
            "non-zero one", result)
    if not result.ok:
        what, rep = ("params leaf", result.params) if not result.params.ok else (
            "input", result.inputs)
        row = rep.first_failure
        where = _layer_at(layer, params, row.leaf) if what == "params leaf" else name
        raise GradientCheckError(
            f"check_layer: the hand backward of {where} disagrees with jax.vjp of its formula "
            f"at {what} {row.leaf} (shape {row.shape}): max abs err {row.abs_err:.3e}, max rel "
            f"err {row.rel_err:.3e} exceed rtol={rep.rtol:.1e}, atol={rep.atol:.1e}; "
            "print(err.result) for the tables",
            result,
        )
    return result
