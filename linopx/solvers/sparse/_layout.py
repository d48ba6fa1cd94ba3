"""Compressed (CSC/CSR) layouts of a COO pattern, computed once per pattern on the host.

A layout maps the COO `values` to the `data` array of a compressed matrix in O(nnz) without a
sort: the sort happened once, when the layout was built, and is memoised on the pattern. Duplicates
are summed; a symmetric layout keeps the upper triangle only (what PARDISO's symmetric matrix types
read); explicit zero diagonal entries can be added (PARDISO wants every diagonal entry stored for
symmetric types, and an empty row can crash it).
"""

from __future__ import annotations

import numpy as np

from ...linops.sparse import SparsityPattern, position_keys, sorted_unique


class Layout:
    """`indptr`, `indices` of the compressed matrix and how to fill its `data` from COO values."""

    __slots__ = ("dst", "indices", "indptr", "mode", "shape", "size", "src")

    def __init__(self, indptr, indices, size, src, dst, mode, shape):
        self.indptr = indptr
        self.indices = indices
        self.size = size
        # Which COO entries, in order: data = values[src] ("gather"), or the entries of values[src]
        # go to the slots dst ("scatter": distinct slots; "add": duplicates add up). `src` is
        # None for every entry in COO order (no index array kept).
        self.src = src
        self.dst = dst
        self.mode = mode
        self.shape = shape

    def data(self, values: np.ndarray, dtype) -> np.ndarray:
        """The compressed matrix's `data` for these COO `values`: a new array (one allocation of
        `size` entries when `values` already has the `dtype`)."""
        dtype = np.dtype(dtype)
        picked = values if self.src is None else values[self.src]
        if self.mode == "gather":
            return picked.astype(dtype, copy=picked is values)
        out = np.zeros(self.size, dtype)
        if self.mode == "scatter":
            out[self.dst] = picked
        else:
            np.add.at(out, self.dst, picked.astype(dtype, copy=False))
        return out


def _index_type(count: int):
    return np.int32 if count < 2**31 - 1 else np.int64


def _build(major, minor, n_major, n_minor, select, extra_diagonal, shape) -> Layout:
    """The layout of the entries `select` (a mask; None for all) of a COO pattern, compressed along
    `major`. Memory: a few int64 arrays of the entries' length while it runs (sorting, not hashing:
    see `sorted_unique`), then the int32 `indices`, `src` (or `dst`) and `indptr` it keeps."""
    src = np.flatnonzero(select).astype(_index_type(major.shape[0])) if select is not None else None
    if src is not None:
        major, minor = major[src], minor[src]
    keys = position_keys(major, minor, n_minor)
    dst = None
    if extra_diagonal:
        k = min(n_major, n_minor)
        diag_keys = np.arange(k, dtype=np.int64) * (n_minor + 1)
        unique = sorted_unique(np.concatenate([keys, diag_keys]))
        dst = np.searchsorted(unique, keys)
        del keys
        distinct = sorted_unique(dst.copy()).shape[0] == dst.shape[0]
        mode = "scatter" if distinct else "add"
        dst = dst.astype(_index_type(unique.shape[0]))
    else:
        order = np.argsort(keys, kind="stable").astype(_index_type(keys.shape[0]))
        keys.sort()  # in place: keys[order] without a second int64 array
        new = np.empty(keys.shape, bool)
        new[:1] = True
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
        if new.all():
            # One value per slot: data = values[src] with `src` the entries in slot order.
            mode, unique = "gather", keys
            src = order if src is None else src[order]
        else:
            mode, unique = "add", keys[new]
            dst = np.empty(order.shape, _index_type(unique.shape[0]))
            slot = np.cumsum(new, dtype=dst.dtype)
            slot -= 1
            dst[order] = slot
            del new, slot
        del keys, order
    itype = _index_type(unique.shape[0])
    bounds = np.arange(n_major + 1, dtype=np.int64) * n_minor
    indptr = np.searchsorted(unique, bounds).astype(itype)
    if n_minor:
        np.remainder(unique, n_minor, out=unique)
    indices = unique.astype(itype)
    return Layout(indptr, indices, indices.shape[0], src, dst, mode, shape)


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
