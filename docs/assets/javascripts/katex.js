// Typesets the formulas of a page with the vendored KaTeX (docs/assets/katex/).
// pymdownx.arithmatex (generic mode) leaves each formula in an element of class
// "arithmatex" as \( ... \) (inline) or \[ ... \] (display); only those elements are
// rendered, so a "$" in prose or code is never read as math.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.typeset) return;
      var tex = el.textContent.trim();
      var display = tex.startsWith("\\[");
      if (tex.startsWith("\\(") || display) tex = tex.slice(2, -2);
      katex.render(tex, el, {
        displayMode: display || el.tagName === "DIV",
        // A bad formula shows in red (.katex-error) and the page still renders; the
        // browser test (tests/test_docs_browser.py) fails on any .katex-error.
        throwOnError: false,
      });
      el.dataset.typeset = "1";
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function (doc) { typeset(doc.body); });  // material's page hook
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document.body); });
  }
})();
