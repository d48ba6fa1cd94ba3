"""`SparseLU`: a sparse direct solve on a host (or GPU) factorizer, through `jax.pure_callback`."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ... import _tree
from ..._compat import silence_callback_log
from ..._lru import LRUCache
from ..._solution import RESULTS
from ...linops.composite import TaggedLinearOperator
from ...linops.functions import is_positive_semidefinite, is_symmetric
from ...linops.sparse import SparseCOOLinearOperator, SparsityPattern, check_index_range
from ..base import AbstractLinearSolver
from . import _cudss, _pardiso, _superlu
from ._cache import CACHE, digest
from ._common import SINGULAR, release_memory

BACKENDS = ("auto", "superlu", "pardiso", "cudss")
_MODULES = {"superlu": _superlu, "pardiso": _pardiso, "cudss": _cudss}
MKL_HINT = 'pip install "linopx[mkl]"'


def _unwrap(operator: Any) -> tuple[SparseCOOLinearOperator | None, Any]:
    """The sparse operator inside (possibly nested) `TaggedLinearOperator`s, and the outermost one
    (whose tags, read through the predicates, include the inner ones)."""
    inner = operator
    while isinstance(inner, TaggedLinearOperator):
        inner = inner.operator
    return (inner if isinstance(inner, SparseCOOLinearOperator) else None), operator


def _platform(values: Any) -> str:
    """Where the values live: their device's platform when concrete, else JAX's default backend
    (under `jit` a tracer has no device; the default backend is where the computation runs)."""
    try:
        return next(iter(values.devices())).platform
    except Exception:  # noqa: BLE001 - tracers and exotic arrays have no usable `.devices()`
        return jax.default_backend()


def _kind(operator: Any, dtype) -> str:
    """Which factorization the tags allow: "spd" (real, tagged positive semidefinite: with a
    nonsingular matrix that is definite), "symmetric" (real, symmetric), else "general". For complex
    matrices the tags mean Hermitian, which the backends here do not exploit."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "general"
    if is_positive_semidefinite(operator):
        return "spd"
    if is_symmetric(operator):
        return "symmetric"
    return "general"


def resolve_backend(backend: str, dtype, platform: str) -> str:
    """The backend that `SparseLU(backend)` uses for values of `dtype` living on `platform`, or an
    error saying what to install or choose instead."""
    dtype = np.dtype(dtype)
    if backend == "auto":
        if platform == "gpu" and _cudss.available():
            return "cudss"
        if (
            dtype.kind == "f"
            and dtype.itemsize in (4, 8)
            and _pardiso.is_x86()
            and _pardiso.available()
        ):
            return "pardiso"
        return "superlu"
    if backend == "pardiso":
        if not _pardiso.available():
            raise ImportError(
                "SparseLU(backend='pardiso') needs Intel MKL PARDISO through pypardiso: "
                f'`{MKL_HINT}` (x86 only). Or use backend="superlu" (always available) or "auto".'
            )
        _pardiso.factor_dtype(dtype)  # raises for complex, naming superlu
    if backend == "cudss":
        _cudss.check_available()
    return backend


class _SparseLUState(eqx.Module):
    values: jax.Array
    index: tuple | None  # a traced pattern's (rows, cols); None when `pattern` is concrete
    pattern: SparsityPattern | None = eqx.field(static=True)
    dims: tuple = eqx.field(static=True)
    backend: str = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    transposed: bool = eqx.field(static=True)
    conjugated: bool = eqx.field(static=True)


class SparseLU(AbstractLinearSolver):
    """A sparse direct solve (LU, or a symmetric/definite factorization where the tags allow and the
    backend has one) of a square `lx.SparseCOOLinearOperator`, on a host or GPU factorizer.

    **Arguments:**

    - `backend`: which factorizer.
        - `"superlu"`: SciPy's `splu` (SuperLU), always available, single-threaded, float32, float64,
          complex64 and complex128. The column ordering is chosen from the pattern: minimum degree on
          `Aᵀ + A` for a structurally symmetric pattern, COLAMD otherwise.
        - `"pardiso"`: Intel MKL PARDISO (multithreaded, x86 only; `pip install "linopx[mkl]"`). Real
          matrices only: float32 is factorized in float64 and the result cast back; complex raises
          (use `"superlu"`). A `symmetric_tag` selects PARDISO's symmetric indefinite factorization,
          a `positive_semidefinite_tag` its Cholesky (the matrix must then be definite).
        - `"cudss"`: NVIDIA cuDSS through nvmath-python, for arrays on a GPU
          (`pip install "linopx[cuda]"`).
        - `"auto"` (default): cuDSS for arrays on a GPU when installed; on the CPU PARDISO when
          installed (x86, float32/float64), else SuperLU.

    **What it computes:** `x = A⁻¹ b` for a nonsingular `A`. A singular (or numerically singular)
    matrix gives `lx.RESULTS.singular` (an error with `throw=True`); NaN or infinite values give
    `lx.RESULTS.nonfinite_input`.

    **Derivatives and batching** come from `lx.linear_solve` and cost no extra factorization: the
    JVP and the backward (transposed) solves find the forward factorization in a host-side cache
    keyed on the pattern and a digest of the values. `jax.vmap` over right-hand sides is one
    factorization and one multi-right-hand-side solve; over values that share a pattern, one callback
    that factorizes each member. The gradient with respect to the values is the `(nnz,)` vector
    `-λ[rows] * x[cols]` (conjugated for complex); nothing `n x n` is formed.

    **The cache** only ever saves time: a hit is confirmed by comparing the values byte for byte,
    and a miss refactorizes. Control it with `linopx.solvers.sparse.clear_cache()`,
    `set_cache_limits(max_entries=..., max_bytes=...)` (defaults 16 factorizations, 4 GiB) and
    `cache_info()` (entries, bytes, hits, misses, factorizations per backend). The same functions
    are available as `lx.SparseLU.clear_cache()` etc.

    ```python
    A = lx.SparseCOOLinearOperator.from_scipy(scipy_matrix)
    x = lx.linear_solve(A, b, lx.SparseLU()).value
    g = jax.grad(lambda v: jnp.sum(lx.linear_solve(lx.SparseCOOLinearOperator(v, A.rows, A.cols, A.shape), b).value))(A.values)
    ```
    """

    backend: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"SparseLU: unknown backend {self.backend!r}; choose one of {list(BACKENDS)} "
                '("auto" picks the fastest one installed).'
            )

    # Cache control, also reachable as `linopx.solvers.sparse.clear_cache()` etc.
    @staticmethod
    def clear_cache() -> None:
        """Release every cached factorization (and PARDISO analyses no longer in use)."""
        clear_cache()

    @staticmethod
    def set_cache_limits(max_entries: int | None = None, max_bytes: int | None = None) -> None:
        """Bound the factorization cache; `max_entries=0` disables caching."""
        CACHE.set_limits(max_entries, max_bytes)

    @staticmethod
    def cache_info() -> dict:
        """Entries, estimated bytes, limits, hits, misses and factorizations per backend."""
        return cache_info()

    def init(self, operator, options):
        sparse, outer = _unwrap(operator)
        if sparse is None:
            raise ValueError(
                f"SparseLU needs an `lx.SparseCOOLinearOperator` (optionally inside "
                f"`lx.TaggedLinearOperator`), got {type(operator).__name__}. Build one with "
                "`lx.SparseCOOLinearOperator.from_scipy(...)`, or use `lx.LU()` for dense operators "
                "and an iterative solver (`lx.GMRES`, `lx.BiCGStab`) for composites."
            )
        m, n = sparse.shape
        if m != n:
            raise ValueError(
                f"SparseLU needs a square operator, got {m} x {n}. For sparse least squares or "
                "minimum norm use `lx.LSMR(...)` or `lx.AutoLinearSolver(well_posed=None)`."
            )
        values = sparse.values
        backend = resolve_backend(self.backend, values.dtype, _platform(values))
        kind = _kind(outer, values.dtype)
        return _SparseLUState(
            values, sparse.index, sparse.pattern, sparse.shape, backend, kind, False, False
        )

    def compute(self, state: _SparseLUState, vector, options):
        n = state.dims[0]
        leaves = jax.tree_util.tree_leaves(vector)
        single = jax.tree_util.tree_structure(vector) == jax.tree_util.tree_structure(0)
        if not single or jnp.ndim(leaves[0]) != 1 or jnp.shape(leaves[0])[0] != n:
            raise ValueError(
                f"SparseLU solves with flat vectors of shape ({n},), got "
                f"{_tree.describe(_tree.structure_of(vector))}."
            )
        b = jnp.asarray(leaves[0])
        dtype = _tree.common_dtype(state.values.dtype, b.dtype)
        settings = (state.backend, state.kind, state.transposed, state.conjugated, np.dtype(dtype))
        if state.pattern is not None:
            host = functools.partial(_host_solve, state.pattern, *settings)
            operands = (state.values,)
        else:  # a traced pattern: its indices travel to the host with the values
            host = functools.partial(_host_solve_traced, state.dims, *settings)
            operands = (state.values, *state.index)
        x, flag = jax.pure_callback(
            host,
            (jax.ShapeDtypeStruct((n,), dtype), jax.ShapeDtypeStruct((), jnp.int32)),
            *operands,
            b.astype(dtype),
            # One call for a whole batch: unbatched inputs arrive with leading axes of size 1 and
            # `_host_solve` broadcasts, so a batch of right-hand sides is one multi-column solve.
            vmap_method="expand_dims",
        )
        result = RESULTS.where(flag == 0, RESULTS.successful, RESULTS.singular)
        return x, result, {}

    def transpose(self, state: _SparseLUState, options):
        # Aᵀ is solved with the factors of A (SuperLU trans="T", PARDISO iparm[11]=2).
        return dataclasses.replace(state, transposed=not state.transposed), options

    def conj(self, state: _SparseLUState, options):
        # conj(A) x = b  <=>  A conj(x) = conj(b): same factors, conjugated right-hand side and
        # solution. This is the elementwise conjugate, not the adjoint (that is `conj` of `transpose`).
        if not jnp.issubdtype(state.values.dtype, jnp.complexfloating):
            return state, options
        return dataclasses.replace(state, conjugated=not state.conjugated), options

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False


# ---------------------------------------------------------------------------------------------
# Host side


def _solve_member(pattern, backend, kind, transposed, conjugated, out_dtype, values, rhs):
    """Solve for one matrix (`values`, 1-D) and a block of right-hand sides `rhs` (n, k).
    Returns `(x (n, k), flag)` with flag 0 = success, 1 = singular or non-finite values."""
    n = pattern.shape[0]
    if not np.all(np.isfinite(values)):
        # Reported as `nonfinite_input` by `linear_solve` (it sees the operator's values); never
        # handed to a factorizer, some of which crash on NaN.
        return np.full((n, rhs.shape[1]), np.nan, out_dtype), 1
    module = _MODULES[backend]
    fdtype = module.factor_dtype(values.dtype)
    if conjugated:
        rhs = np.conj(rhs)
    split = rhs.dtype.kind == "c" and fdtype.kind != "c"
    if split:  # a real factorization and a complex right-hand side: solve real and imaginary parts
        k = rhs.shape[1]
        rhs = np.concatenate([rhs.real, rhs.imag], axis=1)
    rhs = rhs.astype(fdtype, copy=False)
    # cuDSS factorizes Aᵀ separately (see _cudss); the other backends transpose at solve time.
    orientation = transposed if backend == "cudss" else None

    def factorize():
        CACHE.count_factorization(backend)
        if backend == "cudss":
            return module.factorize(pattern, values, fdtype, kind, transposed)
        return module.factorize(pattern, values, fdtype, kind)

    def use(factor):
        if factor is SINGULAR:
            return None
        return factor.solve(rhs, transposed and backend != "cudss")

    x = CACHE.run((backend, kind, fdtype.str, orientation, pattern), values, factorize, use)
    if x is None:
        return np.full((n, rhs.shape[1] // (2 if split else 1)), np.nan, out_dtype), 1
    if split:
        x = x[:, :k] + 1j * x[:, k:]
    if conjugated:
        x = np.conj(x)
    return x.astype(out_dtype, copy=False), 0


def _host_solve(pattern, backend, kind, transposed, conjugated, out_dtype, values, b):
    """The `pure_callback` body. `values` has shape `(*bv, nnz)` and `b` `(*bb, n)`, where the batch
    shapes `bv`, `bb` broadcast (`vmap_method="expand_dims"` gives unbatched inputs size-1 axes).
    Members that share a matrix are solved together as one block of right-hand sides."""
    values = np.asarray(values)
    b = np.asarray(b)
    n = pattern.shape[0]
    bv, bb = values.shape[:-1], b.shape[:-1]
    batch = np.broadcast_shapes(bv, bb)
    total = math.prod(batch)
    x = np.empty((total, n), out_dtype)
    flags = np.zeros((total,), np.int32)
    vflat = values.reshape(math.prod(bv), values.shape[-1])  # nnz may be 0
    which = np.broadcast_to(np.arange(vflat.shape[0]).reshape(bv), batch).reshape(-1)
    rhs = np.broadcast_to(b, batch + (n,)).reshape(total, n)
    for v in np.unique(which):
        members = np.flatnonzero(which == v)
        xs, flag = _solve_member(
            pattern, backend, kind, transposed, conjugated, out_dtype, vflat[v], rhs[members].T
        )
        x[members] = xs.T
        flags[members] = flag
    return x.reshape(batch + (n,)), flags.reshape(batch)


class SparsePatternError(ValueError):
    """A traced sparsity pattern found invalid on the host (raised inside the solve's callback)."""


silence_callback_log(SparsePatternError)  # the error says it all; no traceback dump on stderr

_PATTERNS = LRUCache(32)


def _pattern_of(rows: np.ndarray, cols: np.ndarray, shape: tuple) -> SparsityPattern:
    """The `SparsityPattern` of traced indices, rebuilt on the host. Patterns are kept by a digest
    of the index bytes (the last 32), so a pattern seen before brings back its analysis: layouts,
    orderings, symmetric structure, and the factorization cache's keys. Out-of-range indices raise
    here, the first place a traced pattern is concrete."""

    def build():
        check_index_range(rows, cols, shape, SparsePatternError)
        return SparsityPattern(rows, cols, shape)

    key = (shape, rows.dtype.str, cols.dtype.str, digest(rows) + digest(cols))
    pattern = _PATTERNS.get(key, build)
    if np.array_equal(pattern.rows, rows) and np.array_equal(pattern.cols, cols):
        return pattern
    return build()  # a digest collision: never trust it


def _host_solve_traced(
    shape, backend, kind, transposed, conjugated, out_dtype, values, rows, cols, b
):
    """`_host_solve` for a traced pattern: `rows`, `cols` have shape `(*br, nnz)`, broadcasting
    with the values' and right-hand sides' batch shapes; members are grouped by pattern."""
    values, rows, cols, b = (np.asarray(a) for a in (values, rows, cols, b))
    n = shape[0]
    batch = np.broadcast_shapes(values.shape[:-1], rows.shape[:-1], cols.shape[:-1], b.shape[:-1])
    if rows.shape[:-1] == cols.shape[:-1] and math.prod(rows.shape[:-1]) == 1:
        pattern = _pattern_of(rows.reshape(-1), cols.reshape(-1), shape)
        return _host_solve(pattern, backend, kind, transposed, conjugated, out_dtype, values, b)
    total = math.prod(batch)
    x = np.empty((total, n), out_dtype)
    flags = np.zeros((total,), np.int32)
    nnz = values.shape[-1]
    rflat = np.broadcast_to(rows, batch + (nnz,)).reshape(total, nnz)
    cflat = np.broadcast_to(cols, batch + (nnz,)).reshape(total, nnz)
    vflat = np.broadcast_to(values, batch + (nnz,)).reshape(total, nnz)
    bflat = np.broadcast_to(b, batch + (n,)).reshape(total, n)
    for i in range(total):
        pattern = _pattern_of(rflat[i], cflat[i], shape)
        xi, fi = _host_solve(
            pattern, backend, kind, transposed, conjugated, out_dtype, vflat[i], bflat[i]
        )
        x[i], flags[i] = xi, fi
    return x.reshape(batch + (n,)), flags.reshape(batch)


def clear_cache() -> None:
    """Release every cached factorization, and the PARDISO analyses no longer in use."""
    CACHE.clear()
    if _pardiso._handles:
        _pardiso.reset()
    _superlu.sync()
    release_memory()


def clear_patterns() -> None:
    """Forget the traced patterns rebuilt on the host (and their layouts); `lx.clear_caches()`
    calls this. `clear_cache()` keeps them, as a concrete pattern keeps its own analysis."""
    _PATTERNS.clear()


def set_cache_limits(max_entries: int | None = None, max_bytes: int | None = None) -> None:
    """Bound the factorization cache (least recently used first out). `max_entries=0` turns it
    off (every solve, including each derivative solve, then factorizes afresh)."""
    CACHE.set_limits(max_entries, max_bytes)


def cache_info() -> dict:
    """A snapshot: `entries`, `bytes` (estimated), the limits, `hits`, `misses`,
    `factorizations` (per backend, since the last `reset_counters()`), `pardiso_analyses`."""
    info = CACHE.info()
    info["pardiso_analyses"] = _pardiso.analyses
    return info


def reset_counters() -> None:
    """Zero the hit/miss/factorization counters (for tests and benchmarks)."""
    CACHE.reset_counters()
    _pardiso.analyses = 0
