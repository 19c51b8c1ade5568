"""Every ``>>>`` example in every funnet module runs and prints what its docstring says.

Modules are discovered with ``pkgutil``, so a new module is covered without editing this file
(``__main__`` modules are skipped: importing one runs the program). A module whose source
has ``>>>`` lines must have every one of them run: doctest does not look inside instances
(an ``Activation``'s or ``Loss``'s docstring), so an example that doctest cannot find would
otherwise pass silently; here the number run must equal the number of ``>>>`` lines.

Why a subprocess: ``conftest.py`` turns on ``jax_enable_x64`` and
``jax_numpy_rank_promotion="raise"`` for the whole session, but the examples document what a
user sees with JAX's defaults (float32, for instance, shows in reprs). So the doctests run
in one child Python with the default configuration, all modules in one go (one JAX import),
reporting per module as JSON. ``conftest.py`` starts the child as soon as collection
selects this file, so it runs on the second core while the other tests run; each test here
only waits for it. (``pytest --doctest-modules funnet`` would have the same effect, but it
is not part of the ordinary ``pytest`` run, and it would run in this process's x64 config.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import funnet

ROOT = Path(__file__).resolve().parents[1]


def discover() -> list[str]:
    """``funnet`` and every module below it (pkgutil: new modules are picked up)."""
    names = ["funnet"]
    for info in pkgutil.walk_packages(funnet.__path__, prefix="funnet."):
        if not info.name.endswith(".__main__"):
            names.append(info.name)
    return sorted(names)


def examples_in_source(module: str) -> int:
    """How many ``>>>`` lines the module's source file has (each is one doctest example)."""
    spec = importlib.util.find_spec(module)
    text = Path(spec.origin).read_text(encoding="utf-8")
    return len(re.findall(r"^\s*>>> ", text, flags=re.MULTILINE))


MODULES = discover()

_RUNNER = r"""
import doctest, importlib, json, sys
flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
results = {}
for name in sys.argv[2:]:
    try:
        module = importlib.import_module(name)
        runner = doctest.DocTestRunner(optionflags=flags)
        report = []
        for test in doctest.DocTestFinder().find(module, name):
            runner.run(test, out=report.append)
        results[name] = {"failed": runner.failures, "attempted": runner.tries,
                         "report": "".join(report)}
    except BaseException as e:  # an import error is a failure of that module, not of the run
        results[name] = {"error": f"{type(e).__name__}: {e}"}
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""

_RUN: dict = {}


def start() -> None:
    """Start the child running every module's doctests (once; idempotent)."""
    if _RUN:
        return
    fd, out = tempfile.mkstemp(suffix=".json", prefix="funnet-doctests-")
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # JAX's defaults
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    _RUN["out"] = Path(out)
    _RUN["proc"] = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, out, *MODULES],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def stop() -> None:
    """Kill the child if it is still running (the doctest tests were deselected) and tidy up."""
    if _RUN:
        if _RUN["proc"].poll() is None:
            _RUN["proc"].kill()
            _RUN["proc"].wait()
        _RUN["out"].unlink(missing_ok=True)


@pytest.fixture(scope="module")
def results() -> dict:
    start()
    output, _ = _RUN["proc"].communicate(timeout=600)
    assert _RUN["proc"].returncode == 0, output
    return json.loads(_RUN["out"].read_text())


def test_discovery_finds_the_core_modules():
    # private modules and the modules of the layers package are covered too
    for name in [*CORE, "funnet.layers", "funnet._validate", "funnet._table",
                 *LAYER_MODULES]:
        assert name in MODULES
    assert not any(name.endswith("__main__") for name in MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module, results):
    result = results[module]
    assert "error" not in result, result.get("error")
    assert result["failed"] == 0, result["report"]
    expected = examples_in_source(module)
    assert result["attempted"] == expected, (
        f"{module}: {expected} '>>>' lines in the source but doctest ran {result['attempted']}"
    )
    if module in CORE:
        assert result["attempted"] > 0


# ``funnet.layers`` is a package whose ``__init__`` only re-exports: its examples live in
# the modules below it, which count as core (each must have examples).
LAYER_MODULES = ["funnet.layers.combinators", "funnet.layers.dense", "funnet.layers.dropout",
                 "funnet.layers.elementwise", "funnet.layers.reshape", "funnet.layers.inspection",
                 "funnet.layers.pooling", "funnet.layers.normalization", "funnet.layers.conv",
                 "funnet.layers.embedding", "funnet.layers.recurrent", "funnet.layers.sequence",
                 "funnet.layers.attention", "funnet.layers.graph_conv", "funnet.layers.message_passing",
                 "funnet.layers.graph_nodes"]
CORE = ["funnet.contract", "funnet.activations", *LAYER_MODULES, "funnet.losses",
        "funnet.backprop", "funnet.signature", "funnet.weights", "funnet.graph"]
