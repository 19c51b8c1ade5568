"""funnet benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--out DIR]``.

Not part of the installed package. Peers (flax, dm-haiku, equinox) are the optional
``bench`` extra; see ``benchmarks/README.md``.
"""
