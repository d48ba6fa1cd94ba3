"""SuperLU (through `scipy.sparse.linalg.splu`): always available, single-threaded, all four dtypes.

SuperLU does its ordering, symbolic and numeric factorization in one call, so a repeated pattern
cannot reuse the symbolic analysis here; only the ordering choice and the CSC layout are reused
(memoised on the pattern). Transposed solves use `SuperLU.solve(trans="T")` with the same factors.
"""

from __future__ import annotations

import numpy as np

from ...linops.sparse import SparsityPattern
from . import _layout
from ._common import SINGULAR, condition_check

NAME = "superlu"


def available() -> bool:
    return True


def factor_dtype(dtype) -> np.dtype:
    # SuperLU has single and double precision, real and complex: no conversion needed.
    return np.dtype(dtype)


def ordering(pattern: SparsityPattern) -> str:
    """The column ordering for `splu`. On a structurally symmetric pattern, minimum degree on
    `Aᵀ + A` keeps the symmetric structure and typically fills in much less than COLAMD (FIELD-NOTES:
    1.2-3x faster on Poisson matrices); COLAMD is SuperLU's choice for unsymmetric patterns."""
    return "MMD_AT_PLUS_A" if pattern.is_structurally_symmetric() else "COLAMD"


class SuperLUFactor:
    __slots__ = ("lu",)

    def __init__(self, lu):
        self.lu = lu

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        return self.lu.solve(b, trans="T" if transposed else "N")


def factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str):
    """Return `(factor, nbytes)`; `factor` is `SINGULAR` for a singular matrix."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    del kind  # SuperLU has no symmetric variant: tags do not change the factorization
    layout = _layout.csc(pattern)
    data = layout.data(values, dtype)
    a = sp.csc_matrix((data, layout.indices, layout.indptr), shape=pattern.shape)
    try:
        lu = splu(a, permc_spec=ordering(pattern))
    except RuntimeError as err:  # "Factor is exactly singular"
        if "singular" in str(err).lower():
            return SINGULAR, 0
        raise
    factor = SuperLUFactor(lu)
    if not condition_check(a, factor, dtype):
        return SINGULAR, 0
    # `lu.nnz` counts the entries of L and U; each costs a value and (about) one int32 index.
    nbytes = int(lu.nnz) * (np.dtype(dtype).itemsize + 4) + 16 * pattern.shape[0]
    return factor, nbytes
