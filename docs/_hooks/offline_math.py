"""MkDocs hook: serve MathJax from the built site, so that math renders without a network.

The MathJax 3 browser components come from the `django-static-mathjax` wheel (in the `docs` extra:
MathJax 3.2.2, Apache-2.0; the wheel needs no Django to be read from). On every build this hook
adds the files the page needs to the site under `javascripts/mathjax/`: the combined
`tex-mml-chtml.js` component that `mkdocs.yml` loads, the directories it loads on demand (TeX
extensions, the CHTML fonts, the context menu and its accessibility parts) and MathJax's licence.
Nothing is copied into `docs/`, so the repository holds no copy of MathJax.
"""

from __future__ import annotations

import importlib.util
import json
import os

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

# Where the files land in the site; `extra_javascript` in mkdocs.yml names TARGET/ENTRY.
TARGET = "javascripts/mathjax"
ENTRY = "tex-mml-chtml.js"
# What ENTRY loads on demand: \require'd and autoloaded TeX extensions, the CHTML (and, from the
# menu, SVG) output and fonts, the menu itself and its speech/explorer options.
ON_DEMAND = ("a11y", "adaptors", "input", "output", "sre", "ui")


def _mathjax_root() -> str:
    """The `static/mathjax` folder of the installed django-static-mathjax (MathJax 3)."""
    hint = "MathJax for the docs comes from django-static-mathjax: pip install '.[docs]'"
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"cannot find the 'mathjax' package. {hint}")
    for location in spec.submodule_search_locations:
        root = os.path.join(location, "static", "mathjax")
        if os.path.isfile(os.path.join(root, "es5", ENTRY)):
            break
    else:
        raise PluginError(f"the 'mathjax' package found has no static/mathjax/es5/{ENTRY}. {hint}")
    with open(os.path.join(root, "package.json"), encoding="utf-8") as f:
        version = json.load(f).get("version", "")
    if not version.startswith("3."):
        # docs/javascripts/mathjax.js is written for MathJax 3's configuration API.
        raise PluginError(f"MathJax {version or '(unknown)'} found, MathJax 3 expected. {hint}")
    return root


def _add(files: Files, config, src_uri: str, path: str) -> None:
    if files.get_file_from_path(src_uri) is None:
        files.append(File.generated(config, src_uri, abs_src_path=path))


def on_files(files: Files, config) -> Files:
    root = _mathjax_root()
    es5 = os.path.join(root, "es5")
    _add(files, config, f"{TARGET}/{ENTRY}", os.path.join(es5, ENTRY))
    _add(files, config, f"{TARGET}/LICENSE", os.path.join(root, "LICENSE"))
    for sub in ON_DEMAND:
        for folder, _, names in os.walk(os.path.join(es5, sub)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, es5).replace(os.sep, "/")
                _add(files, config, f"{TARGET}/{rel}", path)
    return files
