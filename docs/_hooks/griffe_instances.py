"""Griffe extension: give module-level *instances* their runtime docstring.

funnet defines activations and losses as instances (``relu = Activation(..., doc=...)``,
``mse = Loss(..., doc=...)``) whose docstring is set at runtime. Static analysis sees an
attribute without a docstring and mkdocstrings would skip it; this extension imports the
object and uses its ``__doc__`` when that is its own, or its private class's
(``prelu = _PRelu()``), rather than a public class's (``Relu``, a ``Layer``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


class InstanceDocstrings(griffe.Extension):
    """Fill in the docstring of a module attribute from the live object's ``__doc__``."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        parent = attr.parent
        if attr.docstring is not None or parent is None or not parent.is_module:
            return
        try:
            obj = getattr(importlib.import_module(parent.path), attr.name)
        except Exception:  # noqa: BLE001 (a module that cannot be imported keeps static docs)
            return
        doc = getattr(obj, "__doc__", None)
        if not isinstance(doc, str) or not doc.strip():
            return
        if doc == type(obj).__doc__ and not type(obj).__name__.startswith("_"):
            return  # a public class's docstring: documented with the class
        attr.docstring = griffe.Docstring(inspect.cleandoc(doc), parent=attr)
