// MathJax 3 configuration. It must load before javascripts/mathjax/tex-mml-chtml.js, which the
// build copies into the site from the django-static-mathjax package (docs/_hooks/offline_math.py),
// so the math renders with no network.
// pymdownx.arithmatex (generic mode) wraps every formula in an element of class "arithmatex",
// inline as \( ... \) and displayed as \[ ... \]: typeset only those.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Material for MkDocs emits document$ for every page it shows (also on instant navigation);
// MathJax typesets the first page itself once it has started, so only later pages need this.
document$.subscribe(() => {
  if (typeof MathJax.typesetPromise !== "function") {
    return;
  }
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
