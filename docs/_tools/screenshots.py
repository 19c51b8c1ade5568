"""Screenshots of the built documentation site, for a person to review.

    mkdocs build -d /tmp/site
    python docs/_tools/screenshots.py /tmp/site /tmp/shots            # the key pages
    python docs/_tools/screenshots.py /tmp/site /tmp/shots math/ api/layers/

Serves the built site on 127.0.0.1 (a free port), opens each page in headless Chromium
(``CHROMIUM`` or ``/usr/bin/chromium``; playwright, the ``test`` extra, drives it), waits
for the formulas to be typeset and writes ``<page>.png`` (full page) into the output folder.
``--dark`` takes them in the dark palette. Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

#: Pages shown by default: the math, the two pages with the most formulas, an API page.
PAGES = ("", "math/", "backprop/", "activations/", "api/activations/")

#: Chromium's flags for a closed network and a container (no sandbox, no GPU, no updates).
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium_path() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, ``/usr/bin/chromium`` or one on ``PATH``."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request on stderr
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve the folder ``site`` on 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browser(user_data_dir: Path) -> Iterator[object]:
    """A headless Chromium context (playwright), with a fresh profile in ``user_data_dir``."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no Chromium found: apt-get install chromium, or set CHROMIUM")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=executable, headless=True,
            args=list(CHROMIUM_ARGS), viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def wait_for_math(page) -> None:
    """Wait until every formula of the page has been typeset (or 10 s have passed)."""
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.arithmatex'))"
        ".every(e => e.dataset.typeset)", timeout=10_000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build -d SITE)")
    parser.add_argument("out", type=Path, help="folder for the PNG files (created)")
    parser.add_argument("pages", nargs="*", default=list(PAGES),
                        help=f"pages, relative to the site (default: {' '.join(PAGES)!r})")
    parser.add_argument("--dark", action="store_true", help="the dark palette")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"{args.site} is not a built site (no index.html): run mkdocs build")
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(args.site) as base, browser(args.out / ".chromium-profile") as context:
        for name in args.pages:
            page = context.new_page()
            if args.dark:
                page.emulate_media(color_scheme="dark")
            page.goto(base + name, wait_until="networkidle")
            wait_for_math(page)
            stem = re.sub(r"[^\w-]+", "-", name.strip("/")) or "index"
            path = args.out / f"{stem}{'-dark' if args.dark else ''}.png"
            page.screenshot(path=str(path), full_page=True)
            page.close()
            print(path)
    shutil.rmtree(args.out / ".chromium-profile", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
