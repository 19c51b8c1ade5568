"""The repository is self-contained: no tracked file points outside it.

A user who clones the repository has nothing beside it, so every reference must resolve
inside the clone. Over every text file that git tracks (binary files skipped):

* no path into the project's external workspace (the sibling folder that held the spec and
  the source texts): ``../<that folder>``, ``<that folder>/spec``, ``<that folder>/seeds``;
* the math reference is ``docs/math.md``: Python files, the READMEs, ``.ci/`` and every
  other file cite it by that path; the pages under ``docs/`` link it relatively (a link
  target of the bare file name, with the section's anchor), and ``mkdocs.yml`` names it in
  ``nav``;
* every relative Markdown link resolves to a path inside the repository;
* ``docs/math.md`` exists with the numbered sections §1–§7, and every "§N" citation of it and
  every anchor of a link to it from the docs names a section that exists.

The forbidden strings are assembled from pieces below, so this file does not trip itself.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MATH_PAGE = REPO / "docs/math.md"

# Assembled from pieces so that this file does not contain the strings it forbids.
_WORKSPACE = "sha" + "red"  # the external folder beside the clone
_MATH = r"math\." + "md"  # the file name of the math reference, as a regex

#: Any path into the external workspace: ``../x``, ``../../x``, ``x/spec``, ``x/seeds``.
OUTSIDE = re.compile(
    r"\.\./" + _WORKSPACE + r"(?![\w-])"
    r"|(?<![\w.-])" + _WORKSPACE + r"/(?:spec|seeds)(?![\w-])"
)
#: The math reference's file name as a whole word (not as the tail of a longer name, and
#: not with a longer suffix); each occurrence must be in one of the allowed forms below.
MATH_NAME = re.compile(r"(?<![\w-])" + _MATH + r"(?![\w-])")
#: Allowed outside ``docs/``: the repository path ``docs/math.md`` (also as ``../docs/...``).
CITE_OK = re.compile(r"(?<![\w.-])docs/" + _MATH + r"(?![\w-])")
#: Allowed in ``docs/*.md``: the bare file name as a relative link target, optionally with
#: an anchor, or the repository path ``docs/math.md`` written as text.
DOCS_LINK_OK = re.compile(r"\]\(" + _MATH + r"(?:#[\w-]+)?\)")
#: Allowed in ``mkdocs.yml``: a ``nav`` entry ``- Title: <file name>``.
NAV_OK = re.compile(r"^\s*-\s+[^:\n]+:\s+" + _MATH + r"\s*$", re.MULTILINE)

#: ``docs/math.md §N`` (Python, READMEs) and the link text ``[math §N]`` (docs pages).
SECTION_CITE = re.compile(r"(?:docs/" + _MATH + r"|\[math) §(\d+)")
#: A link into the math page from a docs page, with its anchor.
ANCHOR_LINK = re.compile(r"\]\(" + _MATH + r"#([\w-]+)\)")
#: Relative link targets in Markdown: inline ``](target)``, reference ``[x]: target``,
#: and HTML ``src=""`` / ``href=""``.
MD_LINK = re.compile(
    r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)|(?:src|href)=\"([^\"]+)\"",
    re.MULTILINE,
)
#: A numbered section heading of the math page: ``## 5. Backpropagation``.
SECTION_HEADING = re.compile(r"^## (\d+)\. (.+?)\s*$", re.MULTILINE)
#: A numbered subsection heading: ``### 8.1 Convolution`` (anchor ``81-convolution``).
SUBSECTION_HEADING = re.compile(r"^### (\d+\.\d+) (.+?)\s*$", re.MULTILINE)

BINARY_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".pdf", ".npz", ".npy", ".pkl", ".gz",
    ".zip", ".tar", ".whl", ".woff", ".woff2", ".ttf",
}


@cache
def tracked_texts() -> dict[str, str]:
    """``{path relative to the repository: text}`` for every text file git tracks or would."""
    try:
        # Tracked files, and new ones git does not ignore (they are about to be tracked).
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed)")
    texts = {}
    for name in out.decode("utf-8").split("\0"):
        path = REPO / name
        if not name or Path(name).suffix.lower() in BINARY_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary without a known suffix
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def _is_docs_page(name: str) -> bool:
    return name.startswith("docs/") and name.endswith(".md")


def _line(text: str, pos: int) -> tuple[int, str]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text.count("\n", 0, pos) + 1, text[start:end if end >= 0 else None].strip()


def _spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


def outside_references(name: str, text: str) -> list[str]:
    """``"path:line: text"`` for each reference of ``text`` (file ``name``) out of the repo."""
    found = []
    for m in OUTSIDE.finditer(text):
        found.append(m.start())
    allowed = _spans(CITE_OK, text)
    if _is_docs_page(name):
        allowed += _spans(DOCS_LINK_OK, text)
    elif name == "mkdocs.yml":
        allowed += _spans(NAV_OK, text)
    for m in MATH_NAME.finditer(text):
        if not _inside(m.start(), allowed):
            found.append(m.start())
    if name.endswith(".md"):
        for m in MD_LINK.finditer(text):
            target = next(g for g in m.groups() if g is not None)
            if re.match(r"^(?:[a-z][a-z0-9+.-]*:|#|/)", target, re.IGNORECASE):
                continue  # a URL, a mail address, an anchor on the same page, or site-absolute
            path = target.split("#", 1)[0].split("?", 1)[0]
            resolved = ((REPO / name).parent / path).resolve()
            if not resolved.is_relative_to(REPO):
                found.append(m.start())
    return [f"{name}:{n}: {line}" for n, line in sorted({_line(text, p) for p in found})]


def test_no_reference_points_outside_the_repository():
    offenders = [o for name, text in sorted(tracked_texts().items())
                 for o in outside_references(name, text)]
    assert not offenders, (
        "references outside the repository (cite docs/math.md; docs pages link it relatively):\n"
        + "\n".join(offenders)
    )


def test_the_patterns():
    """The rules catch what they should and leave ordinary text alone."""
    ws, mm = _WORKSPACE, "math" + ".md"

    def bad(name, text):
        return bool(outside_references(name, text))

    assert bad("README.md", f"see [spec](../{ws}/spec/{mm})")
    assert bad("x.py", f"# data in ../../{ws}/seeds/")
    assert bad("x.py", f"the texts in {ws}/seeds")
    assert bad("x.py", f'"""Activations ({mm} §2)."""')
    assert bad("x.py", f"the table of {mm}'s section 2")
    assert bad("x.py", f"spec/{mm} §5")
    assert bad("docs/page.md", f"as in {mm} §5")
    assert bad("docs/page.md", f"[math §5](../{ws}/spec/{mm})")
    assert bad("docs/page.md", "[a link](../../elsewhere/file.md)")
    assert bad("mkdocs.yml", f"# formulas: {mm} §5")

    assert not bad("x.py", f'"""Activations (docs/{mm} §2)."""')
    assert not bad("examples/README.md", f"[`docs/{mm}`](../docs/{mm})")
    assert not bad("docs/page.md", f"of [math §5]({mm}#5-backpropagation), and [all]({mm})")
    assert not bad("docs/page.md", "[API](api.md#funnet.fit), [site](https://example.org/a/../b)")
    assert not bad("mkdocs.yml", f"nav:\n  - Math reference: {mm}\n")
    assert not bad("x.py", f"a {ws} machine, {ws} init, {ws}_state, ../{ws}_cache, mathx.md")
    assert not bad("README.md", "[docs](docs/index.md), [img](docs/img/a.png)")


def _slug(title: str) -> str:
    """The anchor Python-Markdown's ``toc`` extension (and GitHub) gives a heading."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _sections() -> dict[int, str]:
    """``{N: anchor}`` of the math page's numbered ``## N. Title`` headings."""
    text = MATH_PAGE.read_text(encoding="utf-8")
    return {int(n): _slug(f"{n}. {title}") for n, title in SECTION_HEADING.findall(text)}


def _subsection_anchors() -> set[str]:
    """The anchors of the math page's ``### N.M Title`` headings."""
    text = MATH_PAGE.read_text(encoding="utf-8")
    return {_slug(f"{n} {title}") for n, title in SUBSECTION_HEADING.findall(text)}


def test_math_reference_has_sections_1_to_7():
    assert MATH_PAGE.is_file(), "docs/math.md is missing"
    text = MATH_PAGE.read_text(encoding="utf-8")
    numbers = [int(n) for n, _ in SECTION_HEADING.findall(text)]
    assert numbers[:7] == list(range(1, 8)), numbers
    assert numbers == list(range(1, len(numbers) + 1)), f"sections out of order: {numbers}"
    assert _sections()[5] == "5-backpropagation"


def test_citations_name_existing_sections():
    sections = _sections()
    anchors = set(sections.values()) | _subsection_anchors()
    bad = []
    for name, text in sorted(tracked_texts().items()):
        for m in SECTION_CITE.finditer(text):
            if int(m.group(1)) not in sections:
                bad.append("{}:{}: {}".format(name, *_line(text, m.start())))
        if _is_docs_page(name):
            for m in ANCHOR_LINK.finditer(text):
                if m.group(1) not in anchors:
                    bad.append("{}:{}: {}".format(name, *_line(text, m.start())))
    assert not bad, "citations of sections that docs/math.md does not have:\n" + "\n".join(bad)
