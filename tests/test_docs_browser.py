"""The built site in a real browser: formulas typeset, nothing missing, nothing fetched.

The site is built once (``mkdocs build``) and served on 127.0.0.1; headless Chromium
(Debian's ``chromium``, driven by playwright: the ``test`` extra) opens a few key pages:

* every formula that ``pymdownx.arithmatex`` marked is typeset by KaTeX (a ``.katex``
  element, and no ``.katex-error``), and the visible text outside code has no raw TeX
  left (no ``$``, ``\\(``, ``\\[`` and no ``\\command``);
* each page has at least a stated number of formulas, so a page whose math went back to
  plain text fails;
* no request for the page, a stylesheet, a script, an image or a font answers 4xx/5xx or
  fails, and none leaves 127.0.0.1 (the renderer, KaTeX, is vendored in
  ``docs/assets/katex/``: the site renders its math with no network);
* every link of those pages to another page of the site resolves to a built file;
* the math page opened as a file (``file://``), the way a downloaded site is read, is
  typeset too, and loads everything but the search index: the theme's search runs in a
  web worker, which a browser does not start from ``file://``; it needs the site served
  (``mkdocs serve``, or ``python -m http.server`` in the built folder).

Skipped, saying so, when playwright, Chromium or mkdocs is not installed; ``.ci/run``
installs them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install '.[docs]')")
pytest.importorskip("playwright.sync_api",
                    reason="playwright is not installed (pip install '.[test]')")

_spec = importlib.util.spec_from_file_location("screenshots",
                                               REPO / "docs" / "_tools" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

if shots.chromium_path() is None:
    pytest.skip("no Chromium (apt-get install chromium, or set CHROMIUM)",
                allow_module_level=True)

#: Page (relative to the site) -> the fewest formulas it must show typeset.
PAGES = {
    "math/": 300,
    "backprop/": 20,
    "activations/": 20,
    "api/activations/": 5,
}

#: Raw TeX in the visible text: a dollar, a \( \) \[ \] delimiter or a \command.
RAW_TEX = r"/\$|\\[()\[\]]|\\[A-Za-z]+/"

#: The visible text of the article without code and without KaTeX's hidden MathML copy
#: (which holds the TeX source for screen readers and copying).
VISIBLE_TEXT_JS = """() => {
  const article = document.querySelector('article').cloneNode(true);
  article.querySelectorAll('pre, code, .katex-mathml, script, style')
         .forEach(e => e.remove());
  return article.textContent;
}"""

MATH_JS = """() => ({
  marked: document.querySelectorAll('.arithmatex').length,
  typeset: document.querySelectorAll('.arithmatex .katex').length,
  errors: Array.from(document.querySelectorAll('.katex-error')).map(e => e.title || e.textContent),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
})"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(":")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-f", str(REPO / "mkdocs.yml"),
         "-d", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with shots.browser(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(scope="module")
def base_url(site):
    with shots.serve(site) as url:
        yield url


def _open(context, url: str, host: tuple[str, str], ignore: str | None = None):
    """Open ``url``; returns the page and the list of bad requests (failed, 4xx, off-host).

    ``host`` is the ``(scheme, netloc)`` the requests may go to; a request whose URL
    contains ``ignore`` is not reported.
    """
    bad: list[str] = []
    page = context.new_page()

    def on_route(route):
        target = urlsplit(route.request.url)
        if target.scheme in ("data", "blob") or (target.scheme, target.netloc) == host:
            route.continue_()
        else:
            bad.append(f"left the site: {route.request.url}")
            route.abort()

    page.route("**/*", on_route)
    def on_failed(request):
        if (ignore is None or ignore not in request.url) and not any(
                b.endswith(request.url) for b in bad):  # already reported as off-host
            bad.append(f"failed {request.url}: {request.failure}")

    page.on("response", lambda r: r.status >= 400 and bad.append(f"{r.status} {r.url}"))
    page.on("requestfailed", on_failed)
    page.goto(url, wait_until="networkidle")
    shots.wait_for_math(page)
    return page, bad


def _check_math(page, least: int) -> list[str]:
    found = page.evaluate(MATH_JS)
    problems = []
    if found["typeset"] != found["marked"]:
        problems.append(f"{found['marked'] - found['typeset']} of {found['marked']} "
                        "formulas not typeset")
    if found["typeset"] < least:
        problems.append(f"only {found['typeset']} formulas typeset, expected >= {least}")
    problems += [f"KaTeX error: {e}" for e in found["errors"]]
    raw = page.evaluate(f"""() => {{
      const text = ({VISIBLE_TEXT_JS})();
      const re = new RegExp({RAW_TEX}.source, 'g');
      return Array.from(text.matchAll(re)).map(m =>
        text.slice(Math.max(0, m.index - 40), m.index + 40).replace(/\\s+/g, ' '));
    }}""")
    problems += [f"raw TeX in the text: ...{r}..." for r in raw[:10]]
    return problems


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_its_math_and_loads_everything(name, site, browser, base_url):
    host = urlsplit(base_url)
    page, bad = _open(browser, base_url + name, (host.scheme, host.netloc))
    problems = _check_math(page, PAGES[name])
    for href in page.evaluate(MATH_JS)["links"]:
        target = urlsplit(href)
        if (target.scheme, target.netloc) != (host.scheme, host.netloc):
            continue  # an outside link (none is fetched)
        path = site / target.path.lstrip("/")
        if not (path.is_file() or (path / "index.html").is_file()):
            problems.append(f"link to a missing page: {href}")
    page.close()
    assert not bad + problems, f"{name}:\n" + "\n".join(bad + problems)


def test_math_renders_from_a_file_url(site, browser):
    url = (site / "math" / "index.html").as_uri()
    page, bad = _open(browser, url, ("file", ""), ignore="/search/search_index")
    problems = _check_math(page, PAGES["math/"])
    page.close()
    assert not bad + problems, "\n".join(bad + problems)


def test_the_checks_catch_raw_tex(browser, base_url, tmp_path):
    """The raw-TeX check is not vacuous: a page with an untypeset formula fails it."""
    page = browser.new_page()
    page.set_content('<article><p>loss $L$ and \\frac{a}{b}</p>'
                     '<span class="arithmatex">\\(x\\)</span><pre>$ ok</pre></article>')
    problems = _check_math(page, 1)
    page.close()
    assert any("not typeset" in p for p in problems), problems
    # $, $, \frac and the \( \) of the untypeset formula; not the $ of <pre>
    assert sum("raw TeX" in p for p in problems) == 5, problems
