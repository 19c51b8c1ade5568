"""Test configuration shared by the whole suite.

* float64 everywhere it is asked for (``jax_enable_x64``): gradients are compared in float64;
* ``jax_numpy_rank_promotion = "raise"``: an implicit ``[N, D] + [D]`` broadcast (the classic
  bias bug) is an error, so library code must broadcast explicitly;
* hypothesis: few examples, no deadline (JAX traces on first call), to keep the suite fast;
* XLA compiles with LLVM's optimisation level 0 unless ``XLA_FLAGS`` is already set: the
  tests compile hundreds of tiny programs, and at -O0 that takes ~35% less CPU. It changes
  no floating-point semantics (fast-math stays off either way);
* the doctest child process (``test_doctests.py``) starts as soon as it is collected, so it
  runs beside the other tests (under pytest-xdist: when its worker reaches the file).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import hypothesis
import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
    "funnet",
    max_examples=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("funnet")

# `import _registry` from the test modules, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(session, config, items):
    doctest_modules = {item.module for item in items if item.module.__name__ == "test_doctests"}
    for module in doctest_modules:
        if "PYTEST_XDIST_WORKER" not in os.environ:
            # one process: run the doctests on the other core from the start. Under
            # pytest-xdist every worker collects every test, so the worker that is handed
            # test_doctests.py starts the child itself (its `results` fixture)
            module.start()
        config.add_cleanup(module.stop)
