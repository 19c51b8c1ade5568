"""The documentation site: every Python example runs, the site builds, every public name is there.

* Each ```` ```python ```` block of ``docs/*.md`` is executed, the blocks of one page in
  order in one fresh namespace, in a subprocess per page: the suite's ``conftest.py`` turns
  on ``jax_enable_x64``, the docs are written for JAX's defaults (float32). Pages run
  concurrently (one worker per CPU).
* ``mkdocs build --strict`` succeeds (needs the ``docs`` extra; skipped, saying so, when
  mkdocs is not installed).
* The API reference is one page per module, ``docs/api/<module>.md`` (an overview in
  ``docs/api/index.md``): every name in ``funnet.__all__`` appears in it, in the text or as
  a member of a module rendered with a ``::: funnet.<module>`` directive.
* No line of a fenced code block of any page is longer than 88 characters (a reader's
  screen, and the copy button, show it whole).
* The build warns on a link to an anchor a page lacks (``validation: anchors: warn``), so
  ``--strict`` fails on it, and no "does not contain an anchor" line is in the log.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import funnet

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
API_PAGES = sorted((DOCS / "api").glob("*.md"))
ALL_PAGES = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
ANY_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$",
                       re.DOTALL | re.MULTILINE)
MAX_CODE_LINE = 88
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
PAGE_TIMEOUT_S = 900

# Runs in the subprocess: argv[1] is the page; its blocks share one namespace.
RUNNER = r"""
import re, sys
page = sys.argv[1]
text = open(page, encoding="utf-8").read()
fence = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
namespace = {"__name__": "__docs__"}
for i, match in enumerate(fence.finditer(text)):
    line = text.count("\n", 0, match.start()) + 2
    code = compile(match.group(1), f"{page}, block {i} (line {line})", "exec")
    exec(code, namespace)
"""


def python_blocks(path: Path) -> list[str]:
    """The code of every ```` ```python ```` block of a Markdown file, in order."""
    return [m.group(1) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)  # the docs run with JAX's defaults
    env["MPLBACKEND"] = "Agg"
    env["NO_MKDOCS_2_WARNING"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_page(page: Path, jax_cache: Path) -> subprocess.CompletedProcess:
    env = _env()
    # One persistent compilation cache for all pages: most pages compile the same small
    # programs (PRNG keys, Dense init); later pages, and later runs, reuse them.
    env["JAX_COMPILATION_CACHE_DIR"] = str(jax_cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(page.relative_to(REPO))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
        check=False,
    )


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """Start every page's subprocess at once (bounded by the CPU count); futures by page."""
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    jax_cache = (cache.mkdir("funnet-docs-jax-cache") if cache is not None
                 else tmp_path_factory.mktemp("jax-cache"))
    workers = max(2, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        yield {page.name: pool.submit(_run_page, page, jax_cache) for page in PAGES_WITH_CODE}


def test_docs_have_pages_and_code():
    for page in ("index.md", "concepts.md", "custom-layers.md", "activations.md", "backprop.md",
                 "gradient-checking.md", "training.md", "multi-device.md", "gallery.md",
                 "benchmarks.md", "conv.md", "recurrent.md", "api/index.md"):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"
    assert len(PAGES_WITH_CODE) >= 6, [p.name for p in PAGES_WITH_CODE]


@pytest.mark.parametrize("page", [p.name for p in PAGES_WITH_CODE])
def test_python_blocks_run(page, page_runs):
    result = page_runs[page].result()
    assert result.returncode == 0, (
        f"a python block of docs/{page} failed:\n{result.stderr[-6000:]}\n"
        f"--- stdout ---\n{result.stdout[-2000:]}"
    )


def test_block_extraction(tmp_path):
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    assert python_blocks(path) == ["x = 1\n", "y = x + 1\n"]


def test_benchmarks_page_has_table_marker():
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert "<!-- BENCHMARK TABLE -->" in text
    assert "python -m benchmarks.run" in text
    # the page quotes measured tables, not placeholders
    assert "filled in from" not in text
    for row in ("| funnet fit |", "| funnet make_step (per-step) |",
                "| fn.backprop.value_and_grad |"):
        assert row in text, row
    # user documentation: what was measured and the tables; the targets and why a missed
    # one is missed live beside the code, in benchmarks/README.md
    assert "## What was measured, in short" in text
    assert "| target | measured" not in text and "Where a target is missed" not in text
    readme = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert "## Targets, as measured" in readme and "Where a target is missed" in readme


def test_activation_plots_exist_and_are_shown():
    spec = importlib.util.spec_from_file_location("plot_activations",
                                                  REPO / "scripts" / "plot_activations.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    page = (DOCS / "activations.md").read_text(encoding="utf-8")
    builtin = set(funnet.activations.ACTIVATIONS) | {"prelu"}
    assert set(plots.PLOTS) == builtin
    for name in plots.PLOTS:
        png = DOCS / "img" / "activations" / f"{name}.png"
        assert png.is_file(), f"{png} missing: run python scripts/plot_activations.py"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"img/activations/{name}.png" in page, f"activations.md does not show {name}"


def long_code_lines(text: str, limit: int = MAX_CODE_LINE) -> list[tuple[int, int]]:
    """``(line number, length)`` of each line of a fenced block longer than ``limit``."""
    found = []
    for m in ANY_FENCE.finditer(text):
        first = text.count("\n", 0, m.start(2)) + 1
        for k, line in enumerate(m.group(2).splitlines()):
            if len(line) > limit:
                found.append((first + k, len(line)))
    return found


def test_no_code_line_is_longer_than_88_characters():
    too_long = [f"docs/{p.relative_to(DOCS)}:{n}: {width} characters"
                for p in ALL_PAGES for n, width in long_code_lines(p.read_text("utf-8"))]
    assert not too_long, f"code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(too_long)


def test_long_code_line_check():
    text = "a long prose line " * 10 + "\n```text\n" + "x" * 89 + "\nok\n```\n"
    text += "~~~~\n" + "y" * 88 + "\n~~~~\n  ```python\n  " + "z" * 90 + "\n  ```\n"
    assert long_code_lines(text) == [(3, 89), (10, 92)]


def _api_text() -> str:
    assert API_PAGES, "docs/api/ has no pages"
    return "\n".join(p.read_text(encoding="utf-8") for p in API_PAGES)


def _rendered_modules(api_text: str) -> list[str]:
    return re.findall(r"^:::\s+(funnet(?:\.\w+)*)\s*$", api_text, re.MULTILINE)


def test_every_public_name_is_in_the_api_reference():
    api = _api_text()
    exported: set[str] = set()
    for target in _rendered_modules(api):
        try:
            module = importlib.import_module(target)
        except ImportError:
            continue  # a class or function directive, not a module
        exported |= {target.rsplit(".", 1)[-1]} | set(getattr(module, "__all__", ()))
    missing = [
        name for name in funnet.__all__
        if name not in exported
        and not re.search(rf"`(funnet\.)?{re.escape(name)}`", api)
    ]
    assert not missing, f"public names without a line in docs/api/: {missing}"


def test_api_reference_renders_every_module_on_its_own_page():
    for module in ("contract", "activations", "layers", "losses", "backprop", "check", "train",
                   "data", "checkpoint", "weights", "signature", "hopfield"):
        page = DOCS / "api" / f"{module}.md"
        assert page.is_file(), f"docs/api/{module}.md is missing"
        rendered = _rendered_modules(page.read_text(encoding="utf-8"))
        assert f"funnet.{module}" in rendered, f"docs/api/{module}.md does not render it"
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in API_PAGES:
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in mkdocs.yml's nav"


def test_doctest_fencing_hook():
    pytest.importorskip("mkdocs", reason="the docs hook needs mkdocs (the docs extra)")
    spec = importlib.util.spec_from_file_location("docs_hook", DOCS / "_hooks" / "docstrings.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    lines = [
        "See :func:`funnet.relu` and :class:`~funnet.Layer`::",
        "",
        "Softplus :math:`\\log(1 + e^x)`; :math:` f'(x) = \\sigma(x) `.",
        "",
        ">>> x = [1, 2]",
        ">>> x[0]",
        "1",
        "",
        "```python",
        ">>> untouched",
        "```",
        "=====  ======",
        "dtype  Δ₀",
        "=====  ======",
        "f64    8.7e-6",
        "f32    |x|",
        "=====  ======",
    ]
    assert hook._convert(lines) == [
        "See `funnet.relu` and `funnet.Layer`:",
        "",
        "Softplus $\\log(1 + e^x)$; $f'(x) = \\sigma(x)$.",
        "",
        "```pycon",
        ">>> x = [1, 2]",
        ">>> x[0]",
        "1",
        "```",
        "",
        "",
        "```python",
        ">>> untouched",
        "```",
        "",
        "| dtype | Δ₀ |",
        "|---|---|",
        "| f64 | 8.7e-6 |",
        "| f32 | \\|x\\| |",
        "",
    ]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]
    assert "does not contain an anchor" not in log, log[-6000:]
    for page, anchor in (("layers", "funnet.layers.Dense"),
                         ("activations", "funnet.activations.relu"),
                         ("losses", "funnet.losses.mse"),
                         ("backprop", "funnet.backprop.value_and_grad"),
                         ("checkpoint", "funnet.checkpoint.save_step"),
                         ("weights", "funnet.weights.save_params"),
                         ("train", "funnet.train.EarlyStopping"),
                         ("train", "funnet.train.objective"), ("contract", "funnet.layer"),
                         ("contract", "funnet.forward_twin"),
                         ("check", "funnet.check.check_layer")):
        html = (tmp_path / "site" / "api" / page / "index.html").read_text(encoding="utf-8")
        assert f'id="{anchor}"' in html, f"the API page {page} has no entry {anchor}"
    assert (tmp_path / "site" / "img" / "activations" / "relu.png").is_file()


def test_no_command_writes_over_the_docs_images():
    """Commands in the docs write figures to a scratch folder, not into docs/img/."""
    offenders = [f"docs/{p.relative_to(DOCS)}:{n + 1}: {line.strip()}"
                 for p in ALL_PAGES
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines())
                 if re.search(r"--out[ =]+(\./)?docs/", line)]
    offenders += [f"examples/{p.name}" for p in sorted((REPO / "examples").glob("*.py"))
                  if re.search(r"--out[ =]+(\./)?docs/", p.read_text(encoding="utf-8"))]
    assert not offenders, "commands writing into docs/:\n" + "\n".join(offenders)
def test_the_readme_layout_table_names_every_module():
    """README's Layout table: every public module of funnet/ (a file ``x.py`` named as
    ``funnet/x.py``, a module of a package as `` `x` `` in the package's row) and no module
    that does not exist (it named ``summary``, whose file is ``layers/inspection.py``, and
    no ``recurrent``, ``sequence``, ``embedding`` or ``hopfield``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in layout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0]] = cells[1]
    paths = " ".join(rows)
    for path in sorted((REPO / "funnet").glob("[a-z]*.py")):
        assert f"funnet/{path.name}" in paths, f"README's Layout has no row for {path.name}"
    for package in ("layers", "check", "train"):
        row = rows[f"`funnet/{package}/`"]
        named = set(re.findall(r"`(\w+)` \(", row))
        files = {p.stem for p in (REPO / "funnet" / package).glob("[a-z]*.py")}
        assert named == files, (package, sorted(named - files), sorted(files - named))
