"""Pieces shared by the host-side backends."""

from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np


class _Singular:
    """Stands in for the factorization of a matrix found singular (cached like a factor, so a
    gradient of a failed solve does not retry the factorization)."""

    def __repr__(self) -> str:
        return "SINGULAR"


SINGULAR = _Singular()


def norm_inf(a) -> float:
    """`‖A‖∞`, the largest row sum of `|A|`, of a SciPy sparse matrix. For CSC the row sums are
    accumulated entry by entry in storage order, as SciPy's `abs(a).sum(axis=1)` does (the same
    additions in the same order and precision, so the same number), a block of entries at a time:
    no copy of the matrix, only `|data|` of one block."""
    nnz = int(a.nnz)
    if not nnz:
        return 0.0
    if a.format != "csc":
        return float(np.max(np.asarray(abs(a).sum(axis=1))))
    data, rows = a.data, a.indices
    sums = np.zeros(a.shape[0], np.abs(data[:0]).dtype)
    for start in range(0, nnz, _NORM_BLOCK):
        stop = min(start + _NORM_BLOCK, nnz)
        np.add.at(sums, rows[start:stop], np.abs(data[start:stop]))
    return float(np.max(sums))


_NORM_BLOCK = 2**20


def condition_check(a, factor, dtype) -> bool:
    """Whether the factorization is usable: `False` if `A` is numerically singular.

    A lower bound on the condition number costs one extra solve: with `e` a fixed vector of random
    signs, `κ∞(A) ≥ ‖A‖∞ ‖A⁻¹e‖∞` (as `‖e‖∞ = 1`). A random `e` has a component along the
    near-null direction of a numerically singular matrix with probability one, and rounding leaves
    that matrix's smallest pivot at a few `eps · ‖A‖`, so the bound comes out near `1 / eps`. We flag
    `κ ≥ 1 / (32 eps)`, matching the dense solvers' pivot-ratio threshold of `32 eps` (see
    `linopx.solvers._misc.pivot_result`). A heuristic, like theirs: it never flags a matrix whose true
    condition number is below the threshold, and exact singularity is caught by the factorizer itself.
    The extra solve costs a few percent of a factorization (a triangular solve pair against an LU)."""
    n = a.shape[0]
    if n == 0:
        return True
    real = np.finfo(dtype).dtype
    e = np.random.default_rng(20240521).choice(np.array([-1.0, 1.0], real), n).astype(dtype)
    x = factor.solve(e, False)
    if not np.all(np.isfinite(x)):
        return False
    norm_a = norm_inf(a)
    bound = norm_a * float(np.max(np.abs(x)))
    return bool(np.isfinite(bound) and bound < 1.0 / (32.0 * np.finfo(real).eps))


def _load_trim():
    """glibc's `malloc_trim`, or `None` elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the symbols already loaded: libc's among them
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_trim()
_TRIM_EVERY = 64 * 2**20
_freed = 0
_freed_lock = threading.Lock()


def note_freed(nbytes: int) -> None:
    """Hand freed factor memory back to the operating system once 64 MiB of factors have been
    released (by any backend).

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), after
    which factors of that size come from the heap; the heap fragments between long-lived arrays and
    resident memory creeps up over thousands of factorizations although nothing is leaked (measured
    here: +310 MiB over 600 solves of a 150x150 Poisson matrix, flat with `malloc_trim`).
    `malloc_trim(0)` costs about 0.4 ms in a JAX process, so it runs once per 64 MiB of factors
    freed, not per factor. A no-op off glibc."""
    global _freed
    if _malloc_trim is None:
        return
    with _freed_lock:
        _freed += nbytes
        if _freed < _TRIM_EVERY:
            return
        _freed = 0
    _malloc_trim(0)


def release_memory() -> None:
    """Return the free memory of the C heap to the operating system now (`clear_cache()` does)."""
    global _freed
    if _malloc_trim is not None:
        with _freed_lock:
            _freed = 0
        _malloc_trim(0)
