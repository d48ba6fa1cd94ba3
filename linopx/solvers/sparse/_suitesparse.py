"""SuiteSparse's CHOLMOD (sparse Cholesky) and UMFPACK (sparse LU), through `kvxopt`.

`kvxopt` (the CVXOPT fork that ships SuiteSparse in its wheels: Linux x86-64 and ARM, macOS on
Apple silicon, Windows x86-64) is an optional extra: `pip install "linopx[suitesparse]"`. It is GPL-3.0 licensed,
and CHOLMOD's supernodal module is GPL-2.0+: installing the extra means using GPL code (linopx
itself stays Apache-2.0 and never requires it).

Both work in float64 and complex128 (float32 is factorized in float64 and the result cast back).

- **CHOLMOD** factorizes `P A Pᵀ = L Lᴴ` (supernodal) for operators tagged positive (or negative)
  semidefinite; it reads the lower triangle. The symbolic analysis (AMD ordering, elimination tree,
  supernodes) is done once per pattern; a numeric factorization refactorizes a released factor of
  the same pattern in place (a small pool per pattern), so a new factorization skips the analysis.
  An indefinite or singular matrix leaves CHOLMOD with an incomplete factor: reported as singular.
  `log|det A| = 2 Σ log L_ii`.
- **UMFPACK** factorizes `P R A Q = L U` (row scaling `R`) for general square matrices. The
  symbolic analysis (column ordering) is done once per pattern and reused. A numeric factor keeps
  its own copy of the matrix, which UMFPACK's solves read for iterative refinement.
"""

from __future__ import annotations

import threading

import numpy as np

from ...linops.sparse import SparsityPattern
from . import _layout
from ._common import SINGULAR, condition_check

HINT = 'pip install "linopx[suitesparse]"'
_POOL_SIZE = 2  # released CHOLMOD factors kept per pattern for in-place refactorization


def available() -> bool:
    try:
        import kvxopt.cholmod  # noqa: F401
        import kvxopt.umfpack  # noqa: F401
    except ImportError:
        return False
    return True


def check_available(backend: str) -> None:
    if not available():
        raise ImportError(
            f"backend={backend!r} needs SuiteSparse through kvxopt: `{HINT}` (GPL-licensed, "
            "see the docs' licence note). Or use backend='superlu' (always available) or 'auto'."
        )


def factor_dtype(dtype) -> np.dtype:
    """kvxopt works in double precision only: float32 is factorized in float64, complex64 in
    complex128."""
    return np.dtype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64)


def _typecode(dtype) -> str:
    return "z" if np.dtype(dtype).kind == "c" else "d"


def _column_major(b: np.ndarray):
    from kvxopt import matrix

    return matrix(np.asfortranarray(b), tc=_typecode(b.dtype))


def _scipy_matrix(pattern: SparsityPattern, values: np.ndarray, dtype, data=None):
    """The full matrix as SciPy CSC (for the condition check's norm); `data`, if given, is its
    CSC data already computed from `values`."""
    import scipy.sparse as sp

    layout = _layout.csc(pattern)
    if data is None:
        data = layout.data(values, dtype)
    return sp.csc_matrix((data, layout.indices, layout.indptr), shape=pattern.shape)


def _compressed_columns(layout, n: int, dtype, fill: float = 0):
    """A kvxopt `spmatrix` with the structure of a compressed-column `layout` (its `indptr` read
    as column pointers and `indices` as rows), every value `fill`; its values are set later."""
    from kvxopt import matrix, spmatrix

    rows = layout.indices.astype(np.int64)
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(layout.indptr))
    data = np.full(rows.shape[0], fill, dtype)
    return spmatrix(matrix(data, tc=_typecode(dtype)), matrix(rows), matrix(cols), (n, n))


def _nbytes(nnz: int, dtype) -> int:
    return int(nnz) * (np.dtype(dtype).itemsize + 8)


# ---------------------------------------------------------------------------------------------
# CHOLMOD


class _CholmodPattern:
    """Per pattern and dtype: the lower triangle as a kvxopt `spmatrix` (its values refilled per
    factorization) and a pool of analysed factors."""

    def __init__(self, pattern: SparsityPattern, dtype, layout):
        from kvxopt import cholmod

        # CSR of the upper triangle == CSC of the lower triangle of Aᵀ; for a symmetric A that is
        # the lower triangle itself (for a Hermitian one, its conjugate: conjugated in `fill`).
        self.layout = layout
        self.matrix = _compressed_columns(layout, pattern.shape[0], dtype)
        self.dtype = dtype
        self.lock = threading.Lock()
        self.pool: list = []
        self._symbolic = lambda: cholmod.symbolic(self.matrix, uplo="L")

    def fill(self, values: np.ndarray):
        from kvxopt import matrix

        data = self.layout.data(values, self.dtype)
        if np.dtype(self.dtype).kind == "c":
            data = np.conj(data)
        self.matrix.V = matrix(data, tc=_typecode(self.dtype))

    def factor(self):
        """An analysed factor object: one from the pool, or a new symbolic analysis."""
        if self.pool:
            return self.pool.pop()
        return self._symbolic()

    def release(self, f) -> None:
        with self.lock:
            if len(self.pool) < _POOL_SIZE:
                self.pool.append(f)


class CholmodFactor:
    __slots__ = ("_f", "diagonal", "negative", "owner")

    def __init__(self, f, owner: _CholmodPattern, negative: bool, diagonal: np.ndarray):
        self._f = f
        self.owner = owner
        self.negative = negative
        self.diagonal = diagonal

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        from kvxopt import cholmod

        # A is Hermitian: Aᵀ = conj(A), so Aᵀ x = b  <=>  A conj(x) = conj(b).
        flip = transposed and b.dtype.kind == "c"
        rhs = _column_major(np.conj(b) if flip else b)
        cholmod.solve(self._f, rhs)
        x = np.array(rhs).reshape(b.shape)
        if flip:
            x = np.conj(x)
        return -x if self.negative else x

    def slogdet(self) -> tuple[complex, float]:
        """`(sign, log|det A|)`: `det(±A) = Π L_ii²`."""
        n = self.diagonal.shape[0]
        sign = -1.0 if (self.negative and n % 2) else 1.0
        return sign, float(2 * np.sum(np.log(self.diagonal)))

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            self.owner.release(f)


def cholmod_factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str):
    """Return `(factor, nbytes)`; `factor` is `SINGULAR` for a singular or indefinite matrix.
    `kind` is "spd" or "nsd" (factorize `-A`)."""
    from kvxopt import cholmod

    negative = kind == "nsd"
    # (The layout is memoised on the pattern too: fetched first, as `memo` does not nest.)
    layout = _layout.csr(pattern, upper=True, diagonal=True)
    state = pattern.memo(
        ("cholmod", np.dtype(dtype).str), lambda: _CholmodPattern(pattern, dtype, layout)
    )
    with state.lock:
        f = state.factor()
        state.fill(-values if negative else values)
        try:
            cholmod.numeric(state.matrix, f)
            # An indefinite or singular matrix stops CHOLMOD at the failing column; the factor is
            # then incomplete, which `diag` refuses.
            diagonal = np.asarray(cholmod.diag(f)).ravel().real  # L_ii > 0
        except (ArithmeticError, ValueError):
            diagonal = None
    if diagonal is None or not np.all(np.isfinite(diagonal) & (diagonal > 0)):
        state.release(f)
        return SINGULAR, 0
    factor = CholmodFactor(f, state, negative, diagonal)
    a = _scipy_matrix(pattern, values, dtype)
    if not condition_check(a, factor, dtype):
        factor.close()
        return SINGULAR, 0
    # CHOLMOD does not report the factor's size through kvxopt: L has at least the lower
    # triangle's entries; typical fill for 2D and 3D meshes is 5-20 times that (an estimate, for
    # the cache's byte bound only).
    return factor, _nbytes(8 * state.layout.size, dtype)


# ---------------------------------------------------------------------------------------------
# UMFPACK


class _UmfpackPattern:
    """Per pattern and dtype: the index arrays in CCS order and the symbolic analysis."""

    def __init__(self, pattern: SparsityPattern, dtype, layout):
        from kvxopt import umfpack

        self.layout = layout
        self.template = _compressed_columns(layout, pattern.shape[0], dtype, fill=1)
        self.dtype = dtype
        self.symbolic = umfpack.symbolic(self.template)

    def matrix(self, data: np.ndarray):
        """A new `spmatrix` with this CSC `data` (each numeric factor keeps its own)."""
        from kvxopt import matrix, sparse

        a = sparse(self.template)  # a copy (about 1 ms per 10⁶ entries)
        a.V = matrix(data, tc=_typecode(self.dtype))
        return a


class UmfpackFactor:
    __slots__ = ("a", "numeric", "owner")

    def __init__(self, a, numeric, owner: _UmfpackPattern):
        self.a = a
        self.numeric = numeric
        self.owner = owner

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        from kvxopt import umfpack

        rhs = _column_major(b)
        umfpack.solve(self.a, self.numeric, rhs, trans="T" if transposed else "N")
        return np.array(rhs).reshape(b.shape)

    def slogdet(self) -> tuple[complex, float]:
        """`(sign, log|det A|)` from `P R A Q = L U` (L unit lower triangular, R a positive
        diagonal scaling): `det A = det(P) det(Q) Π U_ii / Π R_ii`."""
        from kvxopt import umfpack

        _, u, p, q, r = umfpack.get_numeric(self.a, self.numeric)
        u_diag = _spdiag(u)
        r_diag = _spdiag(r).real
        absu = np.abs(u_diag)
        logabsdet = float(np.sum(np.log(absu)) - np.sum(np.log(r_diag)))
        if u_diag.dtype.kind == "c":
            phase = complex(np.prod(u_diag / absu))
        else:
            phase = float(np.prod(np.sign(u_diag)))
        return phase * _parity(p) * _parity(q), logabsdet

    def close(self) -> None:
        self.a = self.numeric = None


def _spdiag(m) -> np.ndarray:
    """The diagonal of a kvxopt `spmatrix`."""
    n = m.size[0]
    rows = np.asarray(m.I).ravel()
    cols = np.asarray(m.J).ravel()
    values = np.asarray(m.V).ravel()
    out = np.zeros(n, values.dtype)
    on = rows == cols
    out[rows[on]] = values[on]
    return out


def _parity(perm_matrix) -> int:
    """The determinant (±1) of a permutation matrix given as a kvxopt `spmatrix`."""
    from ._superlu import permutation_sign

    n = perm_matrix.size[0]
    target = np.empty(n, np.int64)
    target[np.asarray(perm_matrix.J).ravel()] = np.asarray(perm_matrix.I).ravel()
    return permutation_sign(target)


def umfpack_factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str):
    """Return `(factor, nbytes)`; `factor` is `SINGULAR` for a singular matrix."""
    from kvxopt import umfpack

    del kind  # UMFPACK has no symmetric variant here
    layout = _layout.csc(pattern)
    state = pattern.memo(
        ("umfpack", np.dtype(dtype).str), lambda: _UmfpackPattern(pattern, dtype, layout)
    )
    data = layout.data(values, dtype)  # CSC data, for UMFPACK and for the condition check
    a = state.matrix(data)
    try:
        numeric = umfpack.numeric(a, state.symbolic)
    except ArithmeticError:  # "singular matrix"
        return SINGULAR, 0
    factor = UmfpackFactor(a, numeric, state)
    if not condition_check(_scipy_matrix(pattern, values, dtype, data), factor, dtype):
        factor.close()
        return SINGULAR, 0
    return factor, _nbytes(8 * state.layout.size, dtype)


class _Backend:
    """The module-like interface `_solver.py` expects of a backend (`factorize`, `factor_dtype`)."""

    def __init__(self, name: str, factorize):
        self.NAME = name
        self.factorize = factorize
        self.factor_dtype = factor_dtype
        self.available = available


CHOLMOD = _Backend("cholmod", cholmod_factorize)
UMFPACK = _Backend("umfpack", umfpack_factorize)
