"""Compressed (CSC/CSR) layouts of a COO pattern, computed once per pattern on the host.

A layout maps the COO `values` to the `data` array of a compressed matrix in O(nnz) without a
sort: the sort happened once, when the layout was built, and is memoised on the pattern. Duplicates
are summed; a symmetric layout keeps the upper triangle only (what PARDISO's symmetric matrix types
read); explicit zero diagonal entries can be added (PARDISO wants every diagonal entry stored for
symmetric types, and an empty row can crash it).
"""

from __future__ import annotations

import numpy as np

from ...linops.sparse import SparsityPattern


class Layout:
    """`indptr`, `indices` of the compressed matrix and how to fill its `data` from COO values."""

    __slots__ = ("dst", "indices", "indptr", "mode", "shape", "size", "src")

    def __init__(self, indptr, indices, size, src, dst, mode, shape):
        self.indptr = indptr
        self.indices = indices
        self.size = size
        self.src = src
        self.dst = dst
        self.mode = mode  # "gather": data = values[src]; "scatter": unique dst; "add": duplicates
        self.shape = shape

    def data(self, values: np.ndarray, dtype) -> np.ndarray:
        if self.mode == "gather":
            return values[self.src].astype(dtype, copy=False)
        out = np.zeros(self.size, dtype)
        if self.mode == "scatter":
            out[self.dst] = values[self.src]
        else:
            np.add.at(out, self.dst, values[self.src].astype(dtype, copy=False))
        return out


def _build(major, minor, n_major, n_minor, select, extra_diagonal, shape) -> Layout:
    src = np.flatnonzero(select) if select is not None else np.arange(major.shape[0])
    keys = major[src].astype(np.int64) * n_minor + minor[src]
    if extra_diagonal:
        k = min(n_major, n_minor)
        diag_keys = np.arange(k, dtype=np.int64) * (n_minor + 1)
        unique = np.union1d(keys, diag_keys)
    else:
        unique = np.unique(keys)
    dst = np.searchsorted(unique, keys)
    if unique.shape[0] == keys.shape[0] and not extra_diagonal:
        # One value per slot: reorder `src` by slot so that data = values[src].
        order = np.empty_like(dst)
        order[dst] = np.arange(dst.shape[0])
        mode, src, dst = "gather", src[order], None
    elif np.unique(dst).shape[0] == dst.shape[0]:
        mode = "scatter"
    else:
        mode = "add"
    itype = np.int32 if unique.shape[0] < 2**31 - 1 else np.int64
    maj = (unique // n_minor).astype(np.int64)
    indptr = np.zeros(n_major + 1, itype)
    np.cumsum(np.bincount(maj, minlength=n_major), out=indptr[1:])
    indices = (unique % n_minor).astype(itype)
    return Layout(indptr, indices, unique.shape[0], src, dst, mode, shape)


def csc(pattern: SparsityPattern) -> Layout:
    """Compressed sparse columns of the full matrix (SuperLU's input)."""

    def compute():
        m, n = pattern.shape
        return _build(pattern.cols, pattern.rows, n, m, None, False, (m, n))

    return pattern.memo("layout_csc", compute)


def csr(pattern: SparsityPattern, upper: bool, diagonal: bool) -> Layout:
    """Compressed sparse rows, optionally of the upper triangle only, optionally with every
    diagonal entry stored (PARDISO's input)."""

    def compute():
        m, n = pattern.shape
        select = pattern.cols >= pattern.rows if upper else None
        return _build(pattern.rows, pattern.cols, m, n, select, diagonal, (m, n))

    return pattern.memo(("layout_csr", upper, diagonal), compute)
