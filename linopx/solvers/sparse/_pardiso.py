"""MKL PARDISO, called through `ctypes` on the MKL runtime that pypardiso locates (extra `linopx[mkl]`).

We call `pardiso` ourselves rather than through `pypardiso.PyPardisoSolver.solve` for three things
that wrapper does not offer: the phases separately (analysis once per pattern, together with the
first numeric factorization in phase 12; phase 22 alone for further values of the same pattern;
solve, phase 33), several numeric factorizations of one pattern
held at once (`maxfct`/`mnum`), and transposed solves (`iparm[11] = 2`, 0-based, i.e. iparm(12) in
the 1-based numbering of Intel's reference: "solve a transposed system Aᵀx = b based on the
factorization of the matrix A"). Zero-based indices: `iparm[34] = 1`.

Native precisions: float64 and complex128, and float32 and complex64 in PARDISO's single-precision
mode (`iparm[27] = 1`: the matrix, right-hand sides and solutions are all single precision; the
factorization runs in single precision too, as SuperLU's does for float32).

Matrix types (Intel oneMKL PARDISO reference, `mtype`): 11 real unsymmetric, -2 real symmetric
indefinite, 2 real symmetric positive definite, 13 complex unsymmetric. The symmetric types read
the upper triangle of the CSR matrix, with every diagonal entry stored. Transposed solves use
`iparm[11] = 2`, the plain transpose (1 would be the conjugate transpose), for complex matrices
too.

**Determinants.** oneMKL PARDISO has no determinant output: the `iparm[32]` switch with its result
in `dparm[32]` belongs to the other PARDISO (Panua's pardiso-project library, whose `pardiso` takes
a `dparm` array); in oneMKL `pardiso` has no `dparm` and the determinant is only offered by the DSS
interface (`dss_statistics`, a separate factorization). What oneMKL does offer is
`pardiso_getdiag(pt, df, da, mnum, error)`, the diagonal of the factorized matrix, when `iparm[55]`
was set to 1 before the analysis. For the positive definite type (no scaling or matching) that
diagonal holds the pivots `d_i` of the factorization, `det A = Π d_i` (checked against
`numpy.linalg.slogdet` on Poisson and on randomly scaled random SPD matrices: 1e-14 relative);
`iparm[55] = 1` is therefore set for that type (measured on 2-D Poisson 300 x 300: no change in
factorization time). For the unsymmetric type (scaled and permuted by the
matching, `iparm[10]`, `iparm[12]`) and the symmetric indefinite type (symmetric scaling) the
diagonal is that of the scaled matrix and `log |det A|` cannot be recovered from it (measured: off
by the scaling); `SparseLU.logdet` then uses a SuperLU factorization of the same values instead.
"""

from __future__ import annotations

import ctypes
import platform
import threading

import numpy as np

from ...linops.sparse import SparsityPattern
from . import _layout
from ._common import SINGULAR, condition_check

NAME = "pardiso"
MTYPES = {"general": 11, "symmetric": -2, "spd": 2}
SLOTS = 8  # numeric factorizations of one pattern kept side by side under one analysis
_ERROR_ZERO_PIVOT = -4

_lock = threading.Lock()
_lib = None
_getdiag = None


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def available() -> bool:
    try:
        _library()
    except (ImportError, OSError):
        return False
    return True


def _library():
    global _lib, _getdiag
    with _lock:
        if _lib is None:
            import pypardiso  # raises ImportError when the extra is not installed

            # pypardiso's constructor finds and loads `mkl_rt`; we open our own handle to the same
            # library so that our prototype declaration does not touch pypardiso's.
            found = pypardiso.PyPardisoSolver().libmkl
            lib = ctypes.CDLL(found._name)
            fn = lib.pardiso
            i32 = ctypes.POINTER(ctypes.c_int32)
            fn.argtypes = [ctypes.POINTER(ctypes.c_int64)] + [i32] * 5 + [ctypes.c_void_p, i32, i32, i32, i32, i32, i32, ctypes.c_void_p, ctypes.c_void_p, i32]  # fmt: skip
            fn.restype = None
            getdiag = getattr(lib, "pardiso_getdiag", None)  # absent: SuperLU gives determinants
            if getdiag is not None:
                getdiag.argtypes = [ctypes.c_void_p] * 3 + [i32, i32]
                getdiag.restype = None
            _getdiag = getdiag
            _lib = fn
        return _lib


def factor_dtype(dtype) -> np.dtype:
    """PARDISO factorizes in the operator's own precision (single or double, real or complex)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "fc" or dtype.itemsize not in (4, 8, 16):
        raise ValueError(
            f"SparseLU(backend='pardiso') takes float32, float64, complex64 or complex128, got "
            f"{dtype}."
        )
    return dtype


class _Handle:
    """One PARDISO instance (`pt`) holding the analysis of one pattern and up to `SLOTS` numeric
    factorizations of it."""

    def __init__(self, pattern: SparsityPattern, mtype: int, dtype):
        self.fn = _library()
        self.pattern = pattern
        self.mtype = mtype
        self.dtype = np.dtype(dtype)
        self.n = pattern.shape[0]
        self.layout = _layout.csr(pattern, upper=mtype not in (11, 13), diagonal=True)
        self.pt = np.zeros(64, np.int64)
        self.iparm = np.zeros(64, np.int32)
        ip = self.iparm
        ip[0] = 1  # our settings, not the defaults
        ip[1] = 3  # METIS nested dissection ordering, its parallel (OpenMP) version (as pypardiso)
        ip[7] = 0  # iterative refinement: automatic (two steps if pivots were perturbed)
        # Pivot perturbation threshold 1e-13 (unsymmetric) / 1e-8 (symmetric), Intel's defaults.
        ip[9] = 13 if mtype in (11, 13) else 8
        ip[10] = 0 if mtype == 2 else 1  # scaling (not for SPD)
        ip[12] = 0 if mtype == 2 else 1  # weighted matching (not for SPD)
        ip[17] = -1  # report the number of nonzeros in the factors
        ip[55] = 1 if mtype == 2 else 0  # `pardiso_getdiag` (the SPD log-determinant, see above)
        ip[34] = 1  # zero-based indices
        ip[27] = 1 if self.dtype.itemsize == 4 or self.dtype == np.complex64 else 0  # precision
        self.lock = threading.Lock()
        self.free = list(range(1, SLOTS + 1))
        self.analysed = False
        self.closed = False
        self.factor_nnz = 0

    def _call(self, phase: int, mnum: int, data, b=None, x=None, nrhs: int = 1) -> int:
        i32 = ctypes.c_int32
        err = i32(0)
        if b is None:
            b = x = np.zeros(1)
        self.fn(
            self.pt.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            ctypes.byref(i32(SLOTS)),
            ctypes.byref(i32(mnum)),
            ctypes.byref(i32(self.mtype)),
            ctypes.byref(i32(phase)),
            ctypes.byref(i32(self.n)),
            data.ctypes.data if data is not None else None,
            self.layout.indptr.ctypes.data_as(ctypes.POINTER(i32)),
            self.layout.indices.ctypes.data_as(ctypes.POINTER(i32)),
            None,
            ctypes.byref(i32(nrhs)),
            self.iparm.ctypes.data_as(ctypes.POINTER(i32)),
            ctypes.byref(i32(0)),
            b.ctypes.data,
            x.ctypes.data,
            ctypes.byref(err),
        )
        return err.value

    def factorize(self, values: np.ndarray):
        """Return `(factor, nbytes)` with a free slot, or None when all slots are in use."""
        data = self.layout.data(values, self.dtype)
        with self.lock:
            if not self.free:
                return None
            slot = self.free.pop()
            if not self.analysed:
                # The first values of a pattern: analysis and factorization in one call (phase 12
                # measured 20% faster here than phase 11 followed by phase 22 on 2D Poisson 300²).
                err = self._call(12, slot, data)
                if err == 0:
                    self.analysed = True
                    self.factor_nnz = int(self.iparm[17])
            else:
                err = self._call(22, slot, data)
            perturbed = int(self.iparm[13])
            if err != 0:
                self._call(0, slot, data)
                self.free.append(slot)
                if err == _ERROR_ZERO_PIVOT:  # e.g. an SPD factorization of a non-definite matrix
                    return SINGULAR, 0
                raise RuntimeError(f"PARDISO factorization failed with error {err}.")
        factor = PardisoFactor(self, slot, data)
        nbytes = max(int(self.iparm[17]), self.factor_nnz) * 12 + 16 * self.n
        if perturbed > 0:
            # PARDISO replaced tiny pivots (below 1e-13 ‖A‖ or 1e-8 ‖A‖) instead of failing: the
            # matrix is numerically singular at that threshold, and the solution would be that of
            # a nearby matrix.
            factor.close()
            return SINGULAR, 0
        import scipy.sparse as sp

        a = sp.csr_matrix((data, self.layout.indices, self.layout.indptr), shape=self.pattern.shape)
        if self.mtype not in (11, 13):
            a = a + sp.triu(a, 1).T  # the full symmetric matrix, for the norm only
        if not condition_check(a, factor, self.dtype):
            factor.close()
            return SINGULAR, 0
        return factor, nbytes

    def release(self, slot: int) -> None:
        with self.lock:
            if self.closed:
                return
            self._call(0, slot, None)  # phase 0: free the factors of matrix number `slot`
            self.free.append(slot)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self._call(-1, 1, None)  # phase -1: free everything of this instance
                self.closed = True


class PardisoFactor:
    __slots__ = ("_closed", "data", "handle", "slot")

    def __init__(self, handle: _Handle, slot: int, data: np.ndarray):
        self.handle = handle
        self.slot = slot
        self.data = data  # phase 33 reads the matrix again (iterative refinement)
        self._closed = False

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        h = self.handle
        vec = b.ndim == 1
        b2 = np.asfortranarray(b.reshape(b.shape[0], -1), dtype=h.dtype)
        x = np.zeros_like(b2, order="F")
        with h.lock:
            # iparm[11]: 0 normal, 2 transposed solve with the factors of A. For the symmetric
            # types Aᵀ = A, and PARDISO is told nothing.
            h.iparm[11] = 2 if (transposed and h.mtype in (11, 13)) else 0
            err = h._call(33, self.slot, self.data, b2, x, b2.shape[1])
            h.iparm[11] = 0
        if err != 0:
            raise RuntimeError(f"PARDISO solve failed with error {err}.")
        return x[:, 0] if vec else np.ascontiguousarray(x)

    def slogdet(self) -> tuple[float, float] | None:
        """`(1.0, log det A)` from the pivots of the positive definite factorization
        (`pardiso_getdiag`, see the module docstring); `None` for the other matrix types, whose
        diagonal does not give the determinant."""
        h = self.handle
        if h.mtype != 2 or _getdiag is None or h.dtype != np.float64:
            return None
        df = np.zeros(h.n, np.float64)
        da = np.zeros(h.n, np.float64)
        err = ctypes.c_int32(0)
        with h.lock:
            _getdiag(h.pt.ctypes.data, df.ctypes.data, da.ctypes.data,
                     ctypes.byref(ctypes.c_int32(self.slot)), ctypes.byref(err))  # fmt: skip
        if err.value != 0:
            raise RuntimeError(f"PARDISO pardiso_getdiag failed with error {err.value}.")
        if not np.all(df > 0):  # pragma: no cover - a definite factorization has positive pivots
            return None
        return 1.0, float(np.sum(np.log(df)))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.handle.release(self.slot)


# Handles by (pattern, mtype). A pattern's analysis is reused as long as its handle lives; at most
# `_MAX_HANDLES` patterns are kept analysed (least recently used first out, once their factors are gone).
_MAX_HANDLES = 4
_handles: dict = {}
_handles_lock = threading.Lock()
analyses = 0


def factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str):
    global analyses
    dtype = np.dtype(dtype)
    # Complex matrices: the unsymmetric type (the tags' definiteness means Hermitian there, which
    # `kind` does not carry for complex values).
    mtype = 13 if dtype.kind == "c" else MTYPES[kind]
    key = (pattern, mtype, dtype.str)
    while True:
        with _handles_lock:
            handles = _handles.setdefault(key, [])
            _handles[key] = _handles.pop(key)  # most recently used last
            fresh = False
            if not handles or not any(h.free for h in handles):
                handles.append(_Handle(pattern, mtype, dtype))
                analyses += 1
                fresh = True
            handle = next(h for h in handles if h.free)
            _trim_locked()
        out = handle.factorize(values)
        if out is not None:
            return out
        if fresh:  # pragma: no cover - a fresh handle always has free slots
            raise RuntimeError("PARDISO: no free factorization slot.")


def _trim_locked() -> None:
    """Drop the analyses of the least recently used patterns whose factors have all been released."""
    while len(_handles) > _MAX_HANDLES:
        for key, hs in _handles.items():
            if all(len(h.free) == SLOTS for h in hs):
                for h in hs:
                    h.close()
                del _handles[key]
                break
        else:
            return


def reset() -> None:
    """Release every PARDISO instance whose factors are all released (used by `clear_cache`)."""
    with _handles_lock:
        for key in list(_handles):
            hs = _handles[key]
            keep = []
            for h in hs:
                if len(h.free) == SLOTS:
                    h.close()
                else:
                    keep.append(h)
            if keep:
                _handles[key] = keep
            else:
                del _handles[key]
