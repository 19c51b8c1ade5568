"""``python -m funnet``: the same as the ``funnet`` command (:mod:`funnet.cli`)."""

from .cli import main

raise SystemExit(main())
