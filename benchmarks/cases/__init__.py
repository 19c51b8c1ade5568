"""Benchmark cases; each module has ``run(ctx: Ctx) -> CaseResult``.

``CASES`` is the run order. ``compile`` calls ``jax.clear_caches()`` and so runs after
the steady-state cases; ``multidevice`` is last.
"""

CASES = ("digits", "training", "wide", "activations", "backprop", "gradmethods", "checkcost",
         "cnn", "recurrent", "attention", "graph", "compile", "multidevice")
