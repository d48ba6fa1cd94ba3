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
from ..._sharding import from_host, gathered
from ..._solution import RESULTS
from ...linops.composite import TaggedLinearOperator
from ...linops.functions import is_positive_semidefinite, is_symmetric
from ...linops.sparse import SparseCOOLinearOperator, SparsityPattern, check_index_range
from ..base import AbstractLinearSolver
from . import _cudss, _pardiso, _selinv, _suitesparse, _superlu
from ._cache import CACHE, digest
from ._common import SINGULAR, release_memory

BACKENDS = ("auto", "superlu", "pardiso", "umfpack", "cudss")
_MODULES = {
    "superlu": _superlu,
    "pardiso": _pardiso,
    "cudss": _cudss,
    "umfpack": _suitesparse.UMFPACK,
    "cholmod": _suitesparse.CHOLMOD,
}
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


def resolve_backend(backend: str, dtype, platform: str, kind: str = "general") -> str:
    """The backend that `SparseLU(backend)` uses for values of `dtype` living on `platform` with
    the factorization `kind` the tags allow, or an error saying what to install or choose instead.

    `"auto"` takes the fastest one installed (measured on Poisson matrices, see the docs' Sparse
    page): on a GPU cuDSS; for a positive definite tag CHOLMOD, then PARDISO's Cholesky; otherwise
    PARDISO (real), then UMFPACK, then SuperLU (always there)."""
    dtype = np.dtype(dtype)
    if backend == "auto":
        if platform == "gpu" and _cudss.available():
            return "cudss"
        if kind == "spd" and _suitesparse.available():
            return "cholmod"
        if dtype.kind in "fc" and _pardiso.is_x86() and _pardiso.available():
            return "pardiso"
        if _suitesparse.available():
            return "umfpack"
        return "superlu"
    if backend == "umfpack":
        _suitesparse.check_available("umfpack")
    if backend == "pardiso":
        if not _pardiso.available():
            raise ImportError(
                "SparseLU(backend='pardiso') needs Intel MKL PARDISO through pypardiso: "
                f'`{MKL_HINT}` (x86 only). Or use backend="superlu" (always available) or "auto".'
            )
        _pardiso.factor_dtype(dtype)  # raises for dtypes it does not take
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
        - `"pardiso"`: Intel MKL PARDISO (multithreaded, x86 only; `pip install "linopx[mkl]"`),
          in the operator's own precision: float64, complex128, and float32/complex64 in its
          single-precision mode. For real matrices a `symmetric_tag` selects PARDISO's symmetric
          indefinite factorization, a `positive_semidefinite_tag` its Cholesky (the matrix must
          then be definite); complex matrices use its unsymmetric type.
        - `"umfpack"`: SuiteSparse's UMFPACK through kvxopt (`pip install "linopx[suitesparse]"`,
          GPL-licensed): float64 and complex128 (single precision factorized in double); the
          symbolic analysis is done once per pattern. Several times faster than SuperLU on 3-D
          meshes.
        - `"cudss"`: NVIDIA cuDSS through nvmath-python, for arrays on a GPU
          (`pip install "linopx[cuda]"`).
        - `"auto"` (default): cuDSS for arrays on a GPU when installed; on the CPU, for a positive
          definite tag CHOLMOD's Cholesky (`linopx[suitesparse]`) when installed; then PARDISO
          (x86), then UMFPACK, when installed; else SuperLU.

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
        kind = _kind(outer, values.dtype)
        backend = resolve_backend(self.backend, values.dtype, _platform(values), kind)
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
        # On sharded inputs the callback reads the values and the right-hand side whole: they are
        # gathered once, and the solution is placed back as the right-hand side was.
        x, flag = jax.pure_callback(
            host,
            (jax.ShapeDtypeStruct((n,), dtype), jax.ShapeDtypeStruct((), jnp.int32)),
            *(gathered(op) for op in operands),
            gathered(b.astype(dtype)),
            # One call for a whole batch: unbatched inputs arrive with leading axes of size 1 and
            # `_host_solve` broadcasts, so a batch of right-hand sides is one multi-column solve.
            vmap_method="expand_dims",
        )
        result = RESULTS.where(flag == 0, RESULTS.successful, RESULTS.singular)
        return from_host(x, b), result, {}

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

    # ---- log-determinants (`lx.slogdet`) ------------------------------------------------------

    def logdet(self, state: _SparseLUState, options):
        """`(sign, log|det A|)` read off the factorization that the solve uses (the same cache entry:
        a solve followed by `lx.slogdet` with the same values factorizes once).

        - SuperLU: `Pr A Pc = L U` with unit-diagonal `L`, so `det A = sign(perm_r) sign(perm_c)
          Π U_ii` (see `_superlu.slogdet`).
        - PARDISO: oneMKL PARDISO has no determinant output (see `_pardiso`). For a
          `positive_semidefinite_tag` (its Cholesky-type factorization) `log det A` is the sum of the
          logs of the pivots (`pardiso_getdiag`). Otherwise the determinant comes from a SuperLU
          factorization of the same values (one extra factorization, cached like a SuperLU solve's).
        - cuDSS: from the factorization's diagonal and permutations (see `_cudss`).

        A matrix that the solve calls singular (exactly, or numerically: see
        `linopx.solvers.sparse._common.condition_check`) gives `sign = 0`, `logabsdet = -inf`;
        NaN or infinite values give NaN for both. `sign` has the operator's dtype, `logabsdet` its
        real dtype. `det Aᵀ = det A` and `det conj(A) = conj(det A)` for transposed/conjugated
        states. One host callback for a whole `vmap` batch of values."""
        dtype = np.dtype(state.values.dtype)
        real = np.finfo(dtype).dtype
        settings = (state.backend, state.kind, state.transposed, state.conjugated, dtype)
        host, operands = _host_function(state, _host_logdet, _host_logdet_traced, settings)
        sign, logabsdet = jax.pure_callback(
            host,
            (jax.ShapeDtypeStruct((), dtype), jax.ShapeDtypeStruct((), real)),
            *operands,
            vmap_method="expand_dims",
        )
        return sign, logabsdet

    def logdet_tangent(self, state: _SparseLUState, operator, tangent, options):
        """`tr(A⁻¹ A') = Σ_k G_k v̇_k`, where `v̇ = A'`'s values (the tangent of the sparse operator's
        `values`) and `G_k = (A⁻¹)[cols_k, rows_k]`: the entries of `A⁻ᵀ` on the pattern (duplicates
        share theirs). `G` is computed exactly on the host, without forming anything `n x n`, by
        selected inversion (Takahashi's equations) from the `L U` factors of SuperLU's
        factorization, found in the factorization cache (see `_selinv`). PARDISO, cuDSS, CHOLMOD
        and UMFPACK do not expose their factors in a form used here (CHOLMOD's permutation is not
        exposed by kvxopt), so for them `G` comes from a SuperLU factorization of the same values
        (one extra factorization, cached).

        Cost: of the order of the factorization's (dense products of the same shapes as its
        updates, about twice its flops). Measured on a loaded 2-core x86 machine (SuperLU,
        OpenBLAS, best of 3; 2-D 5-point Poisson, MMD ordering, no pivoting):

        | grid | factorization | selinv analysis | selinv numerical | `value_and_grad` of `slogdet[1]` |
        |------|---------------|-----------------|------------------|----------------------------------|
        | 100 x 100 | 0.02 s | 0.03 s | 0.04 s | 0.10 s (0.07 s with the analysis memoised) |
        | 200 x 200 | 0.13 s | 0.15 s | 0.17 s | 0.48 s (0.35 s) |
        | 300 x 300 | 0.35 s | 0.40 s | 0.45 s | 1.42 s (1.03 s) |

        (`lx.slogdet` alone costs one factorization, like a solve.) The analysis is memoised per
        factor structure, so repeated gradients whose pivoting does not change pay only the
        numerical part. An unsymmetric matrix with heavy pivoting costs more: the pattern is
        symmetrized (random 6000 x 6000, 34k nonzeros, 12M in the factors: factorization 6.6 s,
        selected inversion 22 s).

        Memory: the factors' entries as dense blocks, plus the dense fronts `Z[J ∪ R, J ∪ R]` along
        a path of the elimination tree; reading the factors makes SciPy keep CSC copies of `L` and
        `U` with the cached factorization (about doubling that cache entry). The result is linear in `tangent(...)` (`G` is held
        constant: reverse mode transposes it into `G * cotangent`)."""
        sparse, _ = _unwrap(operator)
        if sparse is None or sparse.values.shape != state.values.shape:
            raise ValueError(
                "SparseLU.logdet_tangent needs the `lx.SparseCOOLinearOperator` (optionally inside "
                "`lx.TaggedLinearOperator`) that the state was made from."
            )
        g = jax.lax.stop_gradient(self._inverse_entries(state))
        v_dot = tangent(lambda op: _unwrap(op)[0].values)
        dtype = jnp.result_type(g.dtype, v_dot.dtype)
        return jnp.sum(g.astype(dtype) * v_dot.astype(dtype))

    def _inverse_entries(self, state: _SparseLUState):
        """`G_k = (A⁻¹)[cols_k, rows_k]`, shape `(nnz,)` (batched under `vmap`), for the matrix of
        `state` (conjugated for a conjugated state; a transposed state's operator has the same
        values at transposed positions, so the same `G`)."""
        dtype = np.dtype(state.values.dtype)
        settings = (state.kind, state.conjugated, dtype)  # every backend: SuperLU's factors
        host, operands = _host_function(
            state, _host_inverse_entries, _host_inverse_entries_traced, settings
        )
        return jax.pure_callback(
            host,
            jax.ShapeDtypeStruct(state.values.shape, dtype),
            *operands,
            vmap_method="expand_dims",
        )


def _host_function(state: _SparseLUState, concrete, traced, settings: tuple):
    """A host callback for `state`'s matrix and its operands: `concrete` with the pattern bound
    (operands: the values), or for a traced pattern `traced` with the shape bound (operands: the
    values and the indices). The values are held constant (no derivative flows into the host)."""
    values = jax.lax.stop_gradient(state.values)
    if state.pattern is not None:
        return functools.partial(concrete, state.pattern, *settings), (values,)
    return functools.partial(traced, state.dims, *settings), (values, *state.index)


# ---------------------------------------------------------------------------------------------
# Host side


def _frozen(array: Any) -> bool:
    """Whether a callback operand is a JAX array: immutable, so that the factorization cache may
    keep a (read-only, zero-copy) NumPy view of it instead of a copy. `jax.pure_callback` hands the
    callback a fresh CPU copy of each operand, which only the callback refers to."""
    return isinstance(array, jax.Array) and not isinstance(array, jax.core.Tracer)


def _solve_member(
    pattern, backend, kind, transposed, conjugated, out_dtype, values, rhs, frozen=False
):
    """Solve for one matrix (`values`, 1-D) and a block of right-hand sides `rhs` (n, k).
    Returns `(x (n, k), flag)` with flag 0 = success, 1 = singular or non-finite values.
    `frozen`: `values` views an immutable array (see `_frozen`), which the cache may keep."""
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

    def use(factor):
        if factor is SINGULAR:
            return None
        # cuDSS factorizes Aᵀ separately (see _cudss); the other backends transpose when solving.
        return factor.solve(rhs, transposed and backend != "cudss")

    x = _with_factor(pattern, backend, kind, transposed, values, use, frozen)
    if x is None:
        return np.full((n, rhs.shape[1] // (2 if split else 1)), np.nan, out_dtype), 1
    if split:
        x = x[:, :k] + 1j * x[:, k:]
    if conjugated:
        x = np.conj(x)
    return x.astype(out_dtype, copy=False), 0


def _host_solve(pattern, backend, kind, transposed, conjugated, out_dtype, values, b, frozen=None):
    """The `pure_callback` body. `values` has shape `(*bv, nnz)` and `b` `(*bb, n)`, where the batch
    shapes `bv`, `bb` broadcast (`vmap_method="expand_dims"` gives unbatched inputs size-1 axes).
    Members that share a matrix are solved together as one block of right-hand sides. `frozen`
    (default: whether `values` is a JAX array) lets the cache keep `values` rather than a copy when
    they are one matrix."""
    frozen = _frozen(values) if frozen is None else frozen
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
    # One matrix: the cache may keep the values themselves. Rows of a batch are copied instead (a
    # kept row would keep the whole batch alive).
    frozen = frozen and vflat.shape[0] == 1
    for v in np.unique(which):
        members = np.flatnonzero(which == v)
        xs, flag = _solve_member(
            pattern, backend, kind, transposed, conjugated, out_dtype, vflat[v], rhs[members].T,
            frozen,
        )  # fmt: skip
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


def _traced_members(shape, values, rows, cols, *extra):
    """Split a traced pattern's callback operands (`values`, `rows`, `cols`, then any `extra`
    arrays such as right-hand sides, each with a batch shape before its last axis) by pattern.

    Returns `(pattern, None, None)` when every member shares one pattern (the operands are then
    used as they are), else `(None, batch, members)` with `members` a list of `(pattern, values_i,
    *extra_i)`, one per member of the broadcast batch."""
    if rows.shape[:-1] == cols.shape[:-1] and math.prod(rows.shape[:-1]) == 1:
        return _pattern_of(rows.reshape(-1), cols.reshape(-1), shape), None, None
    arrays = (values, rows, cols, *extra)
    batch = np.broadcast_shapes(*(a.shape[:-1] for a in arrays))
    total = math.prod(batch)
    flat = [np.broadcast_to(a, batch + a.shape[-1:]).reshape(total, a.shape[-1]) for a in arrays]
    members = [
        (_pattern_of(flat[1][i], flat[2][i], shape), flat[0][i], *(f[i] for f in flat[3:]))
        for i in range(total)
    ]
    return None, batch, members


def _host_solve_traced(
    shape, backend, kind, transposed, conjugated, out_dtype, values, rows, cols, b
):
    """`_host_solve` for a traced pattern: `rows`, `cols` have shape `(*br, nnz)`, broadcasting
    with the values' and right-hand sides' batch shapes; members are grouped by pattern."""
    frozen = _frozen(values)
    values, rows, cols, b = (np.asarray(a) for a in (values, rows, cols, b))
    settings = (backend, kind, transposed, conjugated, out_dtype)
    pattern, batch, members = _traced_members(shape, values, rows, cols, b)
    if pattern is not None:
        return _host_solve(pattern, *settings, values, b, frozen)
    x = np.empty((len(members), shape[0]), out_dtype)
    flags = np.zeros((len(members),), np.int32)
    for i, (pattern_i, values_i, b_i) in enumerate(members):
        x[i], flags[i] = _host_solve(pattern_i, *settings, values_i, b_i, False)
    return x.reshape(batch + (shape[0],)), flags.reshape(batch)


# ---------------------------------------------------------------------------------------------
# Host side: log-determinants and selected inverses (`lx.slogdet`)


def _with_factor(pattern, backend, kind, transposed, values, use, frozen=False):
    """`use(factor)` with the factorization a solve with these settings uses (the same cache key,
    so the solve's factorization is found, or the one made here is found by a later solve);
    `factor` is `SINGULAR` for a (numerically) singular matrix. `use` runs under the cache lock.
    `frozen` as in `_solve_member`."""
    module = _MODULES[backend]
    fdtype = module.factor_dtype(values.dtype)
    # cuDSS factorizes Aᵀ separately, cached apart; the others solve with Aᵀ from A's factors.
    orientation = transposed if backend == "cudss" else None

    def factorize():
        CACHE.count_factorization(backend)
        if backend == "cudss":
            return module.factorize(pattern, values, fdtype, kind, transposed)
        return module.factorize(pattern, values, fdtype, kind)

    key = (backend, kind, fdtype.str, orientation, pattern)
    return CACHE.run(key, values, factorize, use, frozen)


def _logdet_member(
    pattern, backend, kind, transposed, values, frozen=False
) -> tuple[complex, float]:
    """`(sign, log|det|)` of one matrix; `(nan, nan)` for non-finite values, `(0, -inf)` for a
    singular one."""
    if not np.all(np.isfinite(values)):
        return np.nan, np.nan
    if pattern.shape[0] == 0:
        return 1.0, 0.0

    def read(factor):
        if factor is SINGULAR:
            return 0.0, -np.inf
        if isinstance(factor, _superlu.SuperLUFactor):
            return _superlu.slogdet(factor)
        return factor.slogdet()  # PARDISO (None when its factors do not give it) and cuDSS

    if backend == "pardiso" and kind == "spd":
        out = _with_factor(pattern, backend, kind, transposed, values, read, frozen)
        if out is not None:
            return out
    if backend == "cudss":
        return _with_factor(pattern, backend, kind, transposed, values, read, frozen)
    # SuperLU, and PARDISO's types whose factors do not give the determinant.
    return _with_factor(pattern, "superlu", kind, False, values, read, frozen)


def _host_logdet(pattern, backend, kind, transposed, conjugated, out_dtype, values, frozen=None):
    """The `pure_callback` body of `SparseLU.logdet`: `values` `(*batch, nnz)` gives `sign` and
    `logabsdet` of shape `batch`. `frozen` as in `_host_solve`."""
    frozen = _frozen(values) if frozen is None else frozen
    values = np.asarray(values)
    batch = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    out_dtype = np.dtype(out_dtype)
    sign = np.empty(flat.shape[0], out_dtype)
    logabs = np.empty(flat.shape[0], np.finfo(out_dtype).dtype)
    frozen = frozen and flat.shape[0] == 1
    for i in range(flat.shape[0]):
        s, la = _logdet_member(pattern, backend, kind, transposed, flat[i], frozen)
        if out_dtype.kind != "c":
            s = np.real(s)
        sign[i] = np.conj(s) if conjugated else s
        logabs[i] = la
    return sign.reshape(batch), logabs.reshape(batch)


def _host_logdet_traced(
    shape, backend, kind, transposed, conjugated, out_dtype, values, rows, cols
):
    """`_host_logdet` for a traced pattern (indices batched like the values, or not)."""
    frozen = _frozen(values)
    values, rows, cols = (np.asarray(a) for a in (values, rows, cols))
    settings = (backend, kind, transposed, conjugated, out_dtype)
    pattern, batch, members = _traced_members(shape, values, rows, cols)
    if pattern is not None:
        return _host_logdet(pattern, *settings, values, frozen)
    out_dtype = np.dtype(out_dtype)
    sign = np.empty(len(members), out_dtype)
    logabs = np.empty(len(members), np.finfo(out_dtype).dtype)
    for i, (pattern_i, values_i) in enumerate(members):
        sign[i], logabs[i] = _host_logdet(pattern_i, *settings, values_i, False)
    return sign.reshape(batch), logabs.reshape(batch)


def _inverse_member(pattern, kind, values, frozen=False) -> np.ndarray:
    """`G_k = (A⁻¹)[cols_k, rows_k]` for one matrix, by selected inversion from SuperLU's factors
    (the other backends' factors are not used: a SuperLU factorization of the same values, cached).
    NaN for non-finite values or a singular matrix."""
    nnz = values.shape[0]
    if not np.all(np.isfinite(values)):
        return np.full(nnz, np.nan, values.dtype)
    if pattern.shape[0] == 0 or nnz == 0:
        return (
            np.zeros(nnz, values.dtype)
            if pattern.shape[0] == 0
            else np.full(nnz, np.nan, values.dtype)
        )
    out = _with_factor(
        pattern, "superlu", kind, False, values,
        lambda f: None if f is SINGULAR else _superlu.factors(f), frozen,
    )  # fmt: skip
    if out is None:
        return np.full(nnz, np.nan, values.dtype)
    lower, upper, perm_r, perm_c = out
    # Pr A Pc = L U = B, B[perm_r[i], perm_c[j]] = A[i, j], so A⁻¹ = Pc B⁻¹ Pr:
    # (A⁻¹)[j, i] = (B⁻¹)[perm_c[j], perm_r[i]].
    g = _selinv.selected_inverse(lower, upper, perm_c[pattern.cols], perm_r[pattern.rows])
    return g.astype(values.dtype, copy=False)


def _host_inverse_entries(pattern, kind, conjugated, out_dtype, values, frozen=None):
    """The `pure_callback` body of `SparseLU._inverse_entries`: `values` `(*batch, nnz)` gives
    `G` of the same shape. `frozen` as in `_host_solve`."""
    frozen = _frozen(values) if frozen is None else frozen
    values = np.asarray(values)
    flat = values.reshape(-1, values.shape[-1])
    out = np.empty(flat.shape, out_dtype)
    frozen = frozen and flat.shape[0] == 1
    for i in range(flat.shape[0]):
        g = _inverse_member(pattern, kind, flat[i], frozen)
        out[i] = np.conj(g) if conjugated else g
    return out.reshape(values.shape)


def _host_inverse_entries_traced(shape, kind, conjugated, out_dtype, values, rows, cols):
    """`_host_inverse_entries` for a traced pattern."""
    frozen = _frozen(values)
    values, rows, cols = (np.asarray(a) for a in (values, rows, cols))
    settings = (kind, conjugated, out_dtype)
    pattern, batch, members = _traced_members(shape, values, rows, cols)
    if pattern is not None:
        return _host_inverse_entries(pattern, *settings, values, frozen)
    nnz = values.shape[-1]
    out = np.empty((len(members), nnz), out_dtype)
    for i, (pattern_i, values_i) in enumerate(members):
        out[i] = _host_inverse_entries(pattern_i, *settings, values_i, False)
    return out.reshape(batch + (nnz,))


def clear_cache() -> None:
    """Release every cached factorization, the PARDISO analyses no longer in use, and the
    selected-inversion analyses (`lx.slogdet`'s gradients) derived from factorizations."""
    CACHE.clear()
    _selinv.clear()
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
