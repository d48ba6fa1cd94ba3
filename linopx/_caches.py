"""`clear_caches()`: release everything linopx keeps between calls."""

from __future__ import annotations

import gc

from . import _solve
from .autodiff import _checks, primitive
from .solvers import _host_preconditioners as preconditioners
from .solvers.sparse import _solver as sparse


def clear_caches() -> None:
    """Release every cache linopx keeps: compiled eager solves, the primitive's traced programs and
    eager binds, the sparse factorizations and PARDISO analyses (`SparseLU.clear_cache()`), the traced
    sparsity patterns rebuilt on the host, and the set-up AMG and ILU preconditioners (rebuilt from
    their operator's values when next applied).

    Every cache is already bounded (least recently used first out) and only ever saves time, never
    changes a result; call this to hand the memory back at once, e.g. between the phases of a long
    program. It does not clear JAX's own caches: `jax.clear_caches()` does that.

    ```python
    lx.clear_caches()
    ```
    """
    _solve._EAGER_SOLVES.clear()
    primitive._TRACE_CACHE.clear()
    primitive._EAGER_CACHE.clear()
    _checks.EAGER_CHECKS.clear()
    # Compiled programs can sit in reference cycles (a jitted function and the closure it
    # traced): collect them before handing the C heap back.
    gc.collect()
    sparse.clear_patterns()
    sparse.clear_cache()
    preconditioners.clear_cache()


def cache_info() -> dict:
    """A snapshot of every linopx cache: `{"eager_solves": ..., "traced_programs": ...,
    "eager_binds": ..., "sparse": ..., "preconditioners": ...}`, each with its entries, bounds, hits and misses."""
    return {
        "eager_solves": _solve._EAGER_SOLVES.info(),
        "traced_programs": primitive._TRACE_CACHE.info(),
        "eager_binds": primitive._EAGER_CACHE.info(),
        "sparse": sparse.cache_info(),
        "preconditioners": preconditioners.cache_info(),
    }
