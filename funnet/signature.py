r"""The architecture signature of a model: what a saved file promises about its params.

``model_signature(model, params)`` is a JSON-serialisable dict recording

* ``"model"``: the layer tree. Every layer's ``name`` (which carries its options:
  ``"Dense(3)"``, ``"LeakyRelu(slope=0.2)"``, ``"Dropout(0.5)"``); a combinator adds its
  ``"kind"`` (``"serial"``, ``"parallel"``) and its ``"children"``;
* ``"params"`` and ``"state"``: one entry per leaf, ``{"path", "shape", "dtype"}``, in
  pytree order. A path names the layer the way funnet's errors do (``serial[1] ›
  serial[0]``) followed by the leaf inside the layer (``.W``), e.g. ``serial[0].W``;
* ``"input_shape"``: the input shape, when given (else ``None``);
* ``"funnet_signature"``: the version of this format (:data:`SIGNATURE_VERSION`).

``signature_difference(saved, current)`` is ``None`` when two signatures agree, else one
message naming the *first* difference by its path: the layer tree first (so two models
with the same shapes but another activation differ: ``serial[1]: saved Tanh, this model has
Relu``), then the input shape, the params and the state.

What the signature can see is what a layer's name says: a custom layer left with the
default name ``"layer"`` matches any other such layer. funnet's own layers leave options
at their defaults out of their names (``LeakyRelu(slope=0.01)`` is named ``LeakyRelu``,
``Conv(8, (3, 3), strides=(1, 1))`` is ``Conv(8, (3, 3))``), so spelling out a default
does not make another architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .contract import Layer, PyTree, as_layer

__all__ = ["SIGNATURE_VERSION", "model_signature", "signature_difference"]

#: The version of the signature format written by :func:`model_signature`.
SIGNATURE_VERSION = 1

_SEP = " › "  # between nested layers, as in funnet's error messages


def _child_where(where: str, kind: str, i: int) -> str:
    """``serial[1]`` at the top, ``serial[1] › serial[0]`` below it."""
    return f"{where}{_SEP}{kind}[{i}]" if where else f"{kind}[{i}]"


def _is_combinator(layer: Layer) -> bool:
    return bool(layer.kind or layer.children)


def _layer_tree(layer: Layer) -> dict:
    node: dict[str, Any] = {"name": layer.name}
    if _is_combinator(layer):
        node["kind"] = layer.kind
        node["children"] = [_layer_tree(as_layer(c)) for c in layer.children]
    return node


def _entry_path(where: str, key_path: Sequence[Any]) -> str:
    """``where`` followed by the leaf's place inside its layer: ``.W``, ``[0]``."""
    out = where
    for k in key_path:
        if isinstance(k, jax.tree_util.DictKey):
            out += f".{k.key}" if out else str(k.key)
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out += f".{k.name}" if out else k.name
        elif isinstance(k, jax.tree_util.SequenceKey):
            out += f"[{k.idx}]"
        else:  # FlattenedIndexKey of a custom node
            out += f"[{k.key}]"
    return out


def _shape_dtype(leaf: Any, path: str, what: str) -> dict:
    try:
        shape = [int(d) for d in np.shape(leaf)]
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    except (TypeError, ValueError) as e:  # a leaf that is not an array (an object)
        raise TypeError(f"model_signature: {what} leaf {path or '(root)'} is not an array: "
                        f"{type(leaf).__name__} ({e})") from None
    if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # a typed key: key<fry>
        dtype = np.dtype(dtype)
    return {"path": path, "shape": shape, "dtype": str(dtype)}


def _entries(layer: Layer, tree: PyTree, where: str, what: str, out: list) -> list:
    """The ``{"path", "shape", "dtype"}`` of every leaf of ``tree``, walked with ``layer``.

    A combinator's params (and state) hold one entry per child; when ``tree`` has that form
    each child's part is named after the child, otherwise the generic pytree path is used.
    """
    children = layer.children
    if children and type(tree) in (tuple, list) and len(tree) == len(children):
        for i, (child, sub) in enumerate(zip(children, tree)):
            _entries(as_layer(child), sub, _child_where(where, layer.kind or layer.name, i),
                     what, out)
        return out
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for key_path, leaf in leaves:
        out.append(_shape_dtype(leaf, _entry_path(where, key_path), what))
    return out


def _jsonable_shape(shape: Any) -> Any:
    """A (nested) input shape as nested lists of ints, as JSON gives it back."""
    if isinstance(shape, (tuple, list)):
        return [_jsonable_shape(s) for s in shape]
    return int(shape)


def model_signature(model: Any, params: PyTree, *, state: PyTree = (),
                    input_shape: Any = None) -> dict:
    r"""The architecture signature of ``model`` with these params (see the module docstring).

    Args:
      model: a funnet :class:`~funnet.Layer` (or a stax ``(init, apply)`` pair).
      params: the model's params (arrays or :class:`jax.ShapeDtypeStruct`\ s).
      state: the model's state (``()`` for a model without state).
      input_shape: the input shape the model was initialised with, recorded when given.

    Returns:
      A dict of JSON types (``json.dumps`` takes it as is).

    >>> import jax, funnet
    >>> net = funnet.serial(funnet.Dense(3), funnet.Tanh)
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> sig = funnet.model_signature(net, params, input_shape=(-1, 2))
    >>> [c["name"] for c in sig["model"]["children"]]
    ['Dense(3)', 'Tanh']
    >>> sig["params"][0]
    {'path': 'serial[0].W', 'shape': [2, 3], 'dtype': 'float32'}
    """
    model = as_layer(model)
    return {
        "funnet_signature": SIGNATURE_VERSION,
        "model": _layer_tree(model),
        "input_shape": None if input_shape is None else _jsonable_shape(input_shape),
        "params": _entries(model, params, "", "params", []),
        "state": _entries(model, state, "", "state", []),
    }


# -- comparing two signatures ----------------------------------------------------------------


def _tree_difference(saved: dict, current: dict, where: str) -> str | None:
    """The first place where two layer trees differ, or ``None``."""
    here = where or "model"
    saved_kind, current_kind = saved.get("kind"), current.get("kind")
    if "children" in saved and "children" in current and saved_kind == current_kind:
        s_kids, c_kids = saved["children"], current["children"]
        for i, (s, c) in enumerate(zip(s_kids, c_kids)):
            found = _tree_difference(s, c, _child_where(where, saved_kind or saved["name"], i))
            if found:
                return found
        if len(s_kids) != len(c_kids):
            i = min(len(s_kids), len(c_kids))
            at = _child_where(where, saved_kind or saved["name"], i)
            if len(s_kids) > i:
                return f"{at}: saved {s_kids[i]['name']}, this model has no layer there"
            return f"{at}: saved no layer there, this model has {c_kids[i]['name']}"
    if saved.get("name") != current.get("name") or ("children" in saved) != (
        "children" in current
    ):
        return f"{here}: saved {saved.get('name')}, this model has {current.get('name')}"
    return None


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _describe(entry: dict) -> str:
    return f"{_as_tuple(entry['shape'])} {entry['dtype']}"


def _entries_difference(what: str, saved: list, current: list) -> str | None:
    """The first leaf whose path, shape or dtype differs, or ``None``."""
    def at(path: str) -> str:
        return f"{what} {path}" if path else what

    for i in range(max(len(saved), len(current))):
        s = saved[i] if i < len(saved) else None
        c = current[i] if i < len(current) else None
        if s is None:
            return f"{at(c['path'])}: not in the saved model, this model has {_describe(c)}"
        if c is None:
            return f"{at(s['path'])}: saved {_describe(s)}, this model has no such leaf"
        if s["path"] != c["path"]:
            return (f"{what}: saved {s['path'] or '(root)'} {_describe(s)} where this model "
                    f"has {c['path'] or '(root)'} {_describe(c)}")
        if s["shape"] != c["shape"] or s["dtype"] != c["dtype"]:
            return (f"{at(s['path'])}: saved shape {_describe(s)}, this model "
                    f"{_describe(c)}")
    return None


def _check_form(signature: Any, which: str) -> str | None:
    if not isinstance(signature, dict) or "funnet_signature" not in signature:
        return f"the {which} signature is not a funnet model signature"
    version = signature["funnet_signature"]
    if version != SIGNATURE_VERSION:
        return (f"the {which} signature has format version {version!r}; this funnet compares "
                f"version {SIGNATURE_VERSION}")
    missing = [k for k in ("model", "params", "state") if k not in signature]
    if missing:
        return f"the {which} signature lacks {', '.join(missing)}"
    return None


def signature_difference(saved: dict, current: dict) -> str | None:
    r"""``None`` when two model signatures agree, else a message naming the first difference.

    Compared in this order, each stopping at its first difference: the layer tree (names
    with their options, combinator kinds, number of children), the input shape (only when
    both record one), the params' paths, shapes and dtypes, then the state's.

    Args:
      saved: the signature stored with the params (:func:`model_signature`, possibly
        through a JSON round trip).
      current: the signature of the model at hand.

    Returns:
      ``None``, or one line such as ``"serial[1]: saved Tanh, this model has Relu"`` or
      ``"params serial[0].W: saved shape (64, 128) float32, this model (64, 32) float32"``.

    >>> import jax, funnet
    >>> key = jax.random.PRNGKey(0)
    >>> tanh_net = funnet.serial(funnet.Dense(3), funnet.Tanh)
    >>> relu_net = funnet.serial(funnet.Dense(3), funnet.Relu)
    >>> _, params = tanh_net.init(key, (-1, 2))
    >>> saved = funnet.model_signature(tanh_net, params)
    >>> print(funnet.signature.signature_difference(saved, saved))
    None
    >>> funnet.signature.signature_difference(saved, funnet.model_signature(relu_net, params))
    'serial[1]: saved Tanh, this model has Relu'
    """
    for signature, which in ((saved, "saved"), (current, "current")):
        problem = _check_form(signature, which)
        if problem:
            return problem
    found = _tree_difference(saved["model"], current["model"], "")
    if found:
        return found
    s_in, c_in = saved.get("input_shape"), current.get("input_shape")
    if s_in is not None and c_in is not None and s_in != c_in:
        return f"input shape: saved {_as_tuple(s_in)}, this model {_as_tuple(c_in)}"
    return (_entries_difference("params", saved["params"], current["params"])
            or _entries_difference("state", saved["state"], current["state"]))
