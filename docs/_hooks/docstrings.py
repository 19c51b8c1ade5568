"""MkDocs hook: render funnet's docstrings (``>>>`` examples, reST roles) as Markdown.

funnet's docstrings follow the doctest convention: ``>>>`` examples sit in the text, not
under an ``Examples:`` header, and cross-references use reST roles (``:func:`x```).
Markdown would read ``>>>`` as nested block quotes and ``a[0]["W"]`` as a reference link,
so this hook adds a Markdown preprocessor, to the site and to mkdocstrings' renderer, that

- wraps each run of doctest lines (``>>>``, ``...`` and the expected output up to the
  next blank line) in a ```` ```pycon ```` fence;
- turns ``:func:`x```, ``:class:`x```, ``:mod:`x``` etc. into the code span ```x```;
- turns the role ``:math:`TeX``` into ``$TeX$``, a formula that ``pymdownx.arithmatex``
  marks and KaTeX typesets (a docstring reads as Sphinx's ``:math:`` in ``help()``);
- turns a paragraph ending in the reST literal marker ``::`` into one ending in ``:``;
- turns a reST simple table (rows framed by ``=====  =====`` borders) into a Markdown table.

Fenced blocks already in the text are left alone.
"""

from __future__ import annotations

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")
_PROMPT = re.compile(r"^(\s*)>>>( |$)")
_MATH = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")
_LITERAL = re.compile(r"(\S)::$")
_BORDER = re.compile(r"^\s*=+(?:[ \t]+=+)+\s*$")


def _table(lines: list[str], start: int) -> tuple[list[str], int] | None:
    """The reST simple table starting at ``lines[start]`` as Markdown, and the next index."""
    spans = [m.span() for m in re.finditer(r"=+", lines[start])]
    rows: list[list[str]] = []
    header = False
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if _BORDER.match(line):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if not header and len(rows) == 1 and following.strip():
                header = True  # the border under the header row
                continue
            return (_markdown_table(rows, len(spans)), i + 1) if rows else None
        if not line.strip():
            return None
        cuts = [a for a, _ in spans] + [len(line)]
        rows.append([line[cuts[k]:cuts[k + 1]].strip() for k in range(len(spans))])
    return None


def _markdown_table(rows: list[list[str]], columns: int) -> list[str]:
    def cell(text: str) -> str:
        parts = re.split(r"(`[^`]*`)", text)  # escape | outside code spans
        return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)

    out = ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    out.insert(1, "|" + "---|" * columns)
    return ["", *out, ""]


def _convert(lines: list[str]) -> list[str]:
    out: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if fence is not None:
            out.append(line)
            if m and m.group(2)[0] == fence[0] and len(m.group(2)) >= len(fence):
                fence = None
            i += 1
            continue
        if m:
            fence = m.group(2)
            out.append(line)
            i += 1
            continue
        p = _PROMPT.match(line)
        if p:
            indent = p.group(1)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i].removeprefix(indent))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```", ""]
            continue
        if _BORDER.match(line) and (table := _table(lines, i)) is not None:
            md, i = table
            out += md
            continue
        line = _MATH.sub(lambda m: f"${m.group(1).strip()}$", line)
        line = _ROLE.sub(r"`\1`", line)
        line = _LITERAL.sub(r"\1:", line)
        out.append(line)
        i += 1
    return out


class _DoctestPreprocessor(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return _convert(lines)


class DoctestExtension(Extension):
    """Markdown extension registering the preprocessor (before fenced code is parsed)."""

    def extendMarkdown(self, md):
        md.preprocessors.register(_DoctestPreprocessor(md), "funnet_doctest", 28)


@event_priority(100)  # before mkdocstrings copies the extension list for its renderer
def on_config(config):
    config.markdown_extensions.append(DoctestExtension())
    return config
