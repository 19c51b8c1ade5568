"""The one plain-text table formatter: layer summaries, gradient reports and histories."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["table"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
          align: str | Sequence[str] = "left", sep: str = "  ") -> str:
    """Rows of strings as aligned columns; ``align``: ``"left"``, ``"right"`` or one per column.

    >>> print(table(["a", "bb"], [["1", "2"], ["333", "4"]]))
    a    bb
    1    2
    333  4
    """
    n = len(header)
    aligns = [align] * n if isinstance(align, str) else list(align)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(n)]

    def cell(text: str, w: int, a: str) -> str:
        return text.rjust(w) if a == "right" else text.ljust(w)

    return "\n".join(
        sep.join(cell(c, w, a) for c, w, a in zip(r, widths, aligns)).rstrip()
        for r in [header, *rows]
    )
