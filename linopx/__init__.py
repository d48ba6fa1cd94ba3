"""linopx: differentiable linear operators and linear solvers for JAX."""

import importlib.metadata

from .linops import *  # noqa: F401,F403  (the names are listed explicitly in linops/__init__.py)
from .linops import __dict__ as _linops_namespace

try:
    __version__ = importlib.metadata.version("linopx")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
