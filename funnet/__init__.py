"""funnet: functional neural networks on JAX with hand-derived, cross-checked gradients.

The public names are listed once, in ``__init__.pyi`` (what type checkers and editors
read); they are imported on first use (``lazy_loader``), so ``import funnet`` and the
``funnet`` command start without loading JAX: the CLI can say what it is doing before the
seconds JAX takes to import.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)

__version__ = "0.1.0"
