"""Every parameter of the public API is documented in its docstring's ``Args:`` section.

The public API is everything ``funnet/__init__.py`` re-exports and each public module's
``__all__``. griffe (the parser mkdocstrings uses, installed with the ``docs`` extra)
loads the package statically and parses the google-style docstrings; a function's
parameters, or a class's ``__init__`` parameters (a dataclass's fields), must each be
named in an ``Args:`` (or ``Other Parameters:``) section, a class's also in
``Attributes:``. The API pages render that section as a table, one row per argument.

The test fails for every public callable with a parameter that no such section names (a
description in prose alone does not count), listing each with its missing parameters.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import funnet

griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra")

REPO = Path(__file__).resolve().parent.parent


def _public() -> list[tuple[str, str]]:
    """``(module, name)`` for funnet's ``__all__`` and each public module's."""
    pairs = [("funnet", name) for name in funnet.__all__]
    for name in funnet.__all__:
        obj = getattr(funnet, name)
        if type(obj).__name__ == "module":
            module = importlib.import_module(f"funnet.{name}")
            pairs += [(module.__name__, n) for n in getattr(module, "__all__", ())]
    return pairs


def missing_from_docstring(obj: griffe.Object) -> list[str]:
    """The parameters of a griffe function, or of a class's ``__init__``, that its docstrings
    (the class's and its ``__init__``'s) do not name in a section that documents them."""
    if obj.is_function:
        function, sections = obj, ("parameters", "other parameters")
    elif obj.is_class and "__init__" in obj.all_members:
        function = obj.all_members["__init__"]
        if function.is_alias or not function.is_function:
            return []
        sections = ("parameters", "other parameters", "attributes")
    else:
        return []
    params = [p.name for p in function.parameters
              if p.name not in ("self", "cls") and not p.name.startswith("_")]
    named: set[str] = set()
    for docstring in (obj.docstring, function.docstring if function is not obj else None):
        for section in docstring.parse("google") if docstring else ():
            if section.kind.value in sections:
                named |= {p.name.lstrip("*") for p in section.value}
    return [p for p in params if p not in named]


def load(package: str, directory: Path) -> griffe.Object:
    """The package found in ``directory``, loaded as mkdocstrings loads funnet."""
    return griffe.load(package, search_paths=[str(directory)], docstring_parser="google",
                       resolve_aliases=True, resolve_external=False)


def undocumented() -> dict[str, list[str]]:
    """``{path: undocumented parameters}`` over the public functions and classes, every one
    checked (an empty list: all documented)."""
    package = load("funnet", REPO)
    found: dict[str, list[str]] = {}
    for module, name in _public():
        key = name if module == "funnet" else f"{module.removeprefix('funnet.')}.{name}"
        try:
            obj = package[key]
            if obj.is_alias:
                obj = obj.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue  # not a static definition (an Activation instance, a layer value)
        found[obj.path] = missing_from_docstring(obj)
    return found


@pytest.fixture(scope="module")
def checked() -> dict[str, list[str]]:
    return undocumented()


def test_every_public_parameter_is_documented(checked):
    missing = {path: params for path, params in checked.items() if params}
    assert not missing, "parameters missing from the docstring's Args section:\n" + "\n".join(
        f"{path}: {', '.join(params)}" for path, params in sorted(missing.items()))


def test_the_public_callables_are_checked(checked):
    # the scan reaches them (through funnet's and the public modules' __all__), with the
    # definitions behind the re-exports: fit documents every parameter (keep included)
    assert checked["funnet.train.loop.fit"] == []
    assert checked["funnet.backprop.value_and_grad"] == []
    assert checked["funnet.data.split"] == []
    assert checked["funnet.losses.Loss"] == []  # a dataclass: its fields


_SAMPLE = '''
import dataclasses

def documented(a, *args, b=1, _private=2, **kwargs):
    """Every parameter (but the private one) in Args.

    Args:
      a: one.
      *args: more.
      b: two.
      **kwargs: the rest.
    """

def prose(a, b=1):
    """``a`` and ``b`` are only described here."""

def half(a, b):
    """One of two.

    Args:
      a: documented; b is not.
    """

def attributes(a):
    """In the wrong section.

    Attributes:
      a: a function's Attributes section documents no parameter.
    """

@dataclasses.dataclass
class Fields:
    """A dataclass: its fields are its parameters.

    Attributes:
      x: documented.
    """
    x: int
    y: int = 0

class ByInit:
    """The class's prose."""

    def __init__(self, p, q=None):
        """Make one.

        Args:
          p: documented in ``__init__``'s docstring.
        """
'''


def test_the_check_names_exactly_the_undocumented_parameters():
    with griffe.temporary_pypackage("sample", {"__init__.py": _SAMPLE}) as tmp:
        module = load("sample", tmp.tmpdir)
        found = {name: missing_from_docstring(module[name]) for name in
                 ("documented", "prose", "half", "attributes", "Fields", "ByInit")}
    assert found == {"documented": [], "prose": ["a", "b"], "half": ["b"], "attributes": ["a"],
                     "Fields": ["y"], "ByInit": ["q"]}
