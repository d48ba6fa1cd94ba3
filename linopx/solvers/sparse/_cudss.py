"""NVIDIA cuDSS through nvmath-python (extra `linopx[cuda]`), for arrays that live on a GPU.

Written against the documented API of `nvmath.sparse.advanced.DirectSolver(a, b, options=...,
execution=...)` with `plan()` (reordering and symbolic factorization), `factorize()`, `solve()`,
`reset_operands(b=...)` and `free()`; `a` a CSR matrix (SciPy here, int32 indices), `b` a
column-major `(n, k)` block; float32/float64/complex64/complex128 (NVIDIA nvmath-python
documentation, `nvmath.sparse.advanced`).

Not exercised on this project's CI, which has no GPU: only the selection logic and the error
messages are tested. The data reach the callback on the host (`jax.pure_callback`), and nvmath copies
them to the device; a zero-copy path would use `jax.experimental.buffer_callback` (see FIELD-NOTES).

Transposed solves: nvmath-python does not document a transpose-solve switch for cuDSS, so a
transposed solve factorizes `Aᵀ` (its CSR arrays are the CSC arrays of `A`), cached separately, except
for symmetric-tagged matrices where `Aᵀ = A`. A reverse-mode gradient therefore costs two
factorizations on this backend (one of `A`, one of `Aᵀ`), unlike SuperLU and PARDISO.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ...linops.sparse import SparsityPattern
from . import _layout

NAME = "cudss"
INSTALL_HINT = 'pip install "linopx[cuda]"'


def installed() -> bool:
    return importlib.util.find_spec("nvmath") is not None


def gpu_present() -> bool:
    import jax

    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def available() -> bool:
    return installed() and gpu_present()


def check_available() -> None:
    if not installed():
        raise ImportError(
            "SparseLU(backend='cudss') needs NVIDIA nvmath-python with cuDSS: "
            f'`{INSTALL_HINT}`. Or use backend="superlu" (always available) or backend="auto".'
        )
    if not gpu_present():
        raise ValueError(
            "SparseLU(backend='cudss') runs on an NVIDIA GPU, and JAX sees none here. Install a CUDA "
            f'build of JAX and `{INSTALL_HINT}`, or use backend="auto"/"superlu"/"pardiso" on the CPU.'
        )


def factor_dtype(dtype) -> np.dtype:
    return np.dtype(dtype)


def _matrix_type(kind: str):
    from nvmath.sparse import advanced

    types = getattr(advanced, "DirectSolverMatrixType", None)
    if types is None:
        return None
    name = {"general": "GENERAL", "symmetric": "SYMMETRIC", "spd": "SPD"}[kind]
    return getattr(types, name, getattr(types, "GENERAL", None))


class CudssFactor:
    __slots__ = ("info", "n", "solver", "transposed")

    def __init__(self, solver, n: int, transposed: bool, info=None):
        self.solver = solver
        self.n = n
        self.transposed = transposed
        self.info = info  # what `factorize()` returned (a `DirectSolverFactorizationInfo`)

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        del transposed  # a factor serves one orientation; the caller keys the cache on it
        vec = b.ndim == 1
        b2 = np.asfortranarray(b.reshape(b.shape[0], -1))
        self.solver.reset_operands(b=b2)
        x = np.asarray(self.solver.solve())
        x = x.reshape(self.n, -1)
        return x[:, 0] if vec else np.ascontiguousarray(x)

    def slogdet(self) -> tuple[complex, float]:
        """`(sign, log|det A|)` from the factorization's diagonal and permutations (see the module
        docstring). `det Aᵀ = det A`, so a factor of either orientation serves."""
        from ._superlu import permutation_sign

        info = self.info
        if info is None:  # pragma: no cover - needs a GPU
            raise RuntimeError("cuDSS: the factorization info is not available.")
        d = _to_host(info.diag).reshape(-1)
        sign = 1
        for perm in (info.row_permutation, info.col_permutation):
            if perm is not None:
                sign *= permutation_sign(_to_host(perm).reshape(-1))
        modulus = np.abs(d)
        if np.any(modulus == 0):
            return 0.0, -np.inf
        logabs = float(np.sum(np.log(modulus.astype(np.float64))))
        if d.dtype.kind == "c":
            return complex(sign * np.exp(1j * float(np.sum(np.angle(d))))), logabs
        return float(sign * (-1 if np.count_nonzero(d < 0) % 2 else 1)), logabs

    def close(self) -> None:
        self.solver.free()


def _to_host(x) -> np.ndarray:
    """A NumPy copy of a host or device (CuPy) array."""
    get = getattr(x, "get", None)
    return np.asarray(get() if callable(get) else x)


def factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str, transposed: bool):
    import scipy.sparse as sp
    from nvmath.sparse import advanced

    # CSR of Aᵀ = CSC of A, read as rows.
    layout = (
        _layout.csc(pattern) if transposed else _layout.csr(pattern, upper=False, diagonal=False)
    )
    data = layout.data(values, dtype)
    a = sp.csr_matrix((data, layout.indices, layout.indptr), shape=pattern.shape)
    b = np.zeros((pattern.shape[0], 1), dtype, order="F")
    mtype = _matrix_type(kind)
    options = advanced.DirectSolverOptions(sparse_system_type=mtype) if mtype is not None else None
    solver = advanced.DirectSolver(a, b, options=options, execution="cuda")
    solver.plan()
    info = solver.factorize()
    nbytes = int(pattern.nnz) * 4 * (np.dtype(dtype).itemsize + 4)  # rough: fill-in unknown here
    return CudssFactor(solver, pattern.shape[0], transposed, info), nbytes
