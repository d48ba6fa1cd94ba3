"""The host-side compressed layouts of a COO pattern (built with one sort, no hashing), the
symmetry check, and what the factorization cache keeps to confirm a hit: against SciPy's own COO
conversions, on random patterns with duplicates, empty rows and explicit zeros."""

import numpy as np
import pytest
import scipy.sparse as sp

from linopx.linops.sparse import SparsityPattern
from linopx.solvers.sparse import _layout
from linopx.solvers.sparse._cache import FactorCache
from linopx.solvers.sparse._common import norm_inf


def _random_coo(rng, m, n, nnz):
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    values = rng.normal(size=nnz)
    values[rng.random(nnz) < 0.05] = 0.0  # explicit zeros stay entries
    return rows.astype(np.int32), cols.astype(np.int32), values


@pytest.mark.parametrize("seed", range(25))
def test_layouts_match_scipy(seed):
    rng = np.random.default_rng(seed)
    m = n = int(rng.integers(1, 40))
    nnz = int(rng.integers(0, 3 * n * n // 2 + 1))  # duplicates likely for larger nnz
    rows, cols, values = _random_coo(rng, m, n, nnz)
    pattern = SparsityPattern(rows, cols, (m, n))
    dense = np.zeros((m, n))
    np.add.at(dense, (rows, cols), values)

    csc = _layout.csc(pattern)
    a = sp.csc_matrix((csc.data(values, np.float64), csc.indices, csc.indptr), shape=(m, n))
    np.testing.assert_array_equal(a.toarray(), dense)
    assert np.all(np.diff(csc.indptr) >= 0)
    for j in range(n):  # sorted, unique row indices per column
        col = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
        assert np.all(np.diff(col) > 0)
    for upper in (False, True):
        for diagonal in (False, True):
            lay = _layout.csr(pattern, upper=upper, diagonal=diagonal)
            b = sp.csr_matrix((lay.data(values, np.float64), lay.indices, lay.indptr), shape=(m, n))
            expected = np.triu(dense) if upper else dense
            np.testing.assert_array_equal(b.toarray(), expected)
            if diagonal:  # every diagonal entry stored
                assert np.all(np.isin(np.arange(m), b.tocoo().row[b.tocoo().row == b.tocoo().col]))
    structure = _structure(rows, cols, (m, n))
    assert pattern.is_structurally_symmetric() == np.array_equal(structure, structure.T)


def _structure(rows, cols, shape):
    s = np.zeros(shape, bool)
    s[rows, cols] = True
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_norm_inf_matches_scipy(dtype):
    a = sp.random(60, 60, density=0.2, random_state=2, format="csc").astype(dtype)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * sp.random(60, 60, density=0.2, random_state=3, format="csc").astype(dtype)
    expected = float(np.max(np.asarray(abs(a).sum(axis=1))))
    assert norm_inf(a) == pytest.approx(expected, rel=1e-6 if np.dtype(dtype).itemsize <= 8 else 1e-15)


def test_cache_keeps_a_reference_only_for_frozen_values():
    cache = FactorCache()
    calls = []

    def factorize():
        calls.append(1)
        return object(), 8

    frozen = np.arange(5.0)
    frozen.flags.writeable = False
    cache.run(("k",), frozen, factorize, lambda f: None, frozen=True)
    entry = next(iter(cache._entries.values()))
    assert entry.values is frozen  # a reference, not a second copy
    writable = np.arange(5.0) + 10
    cache.run(("k",), writable, factorize, lambda f: None, frozen=True)  # writable: copied
    entry = list(cache._entries.values())[-1]
    assert entry.values is not writable
    writable[0] = -1.0  # mutating the caller's array afterwards forces a new factorization
    cache.run(("k",), writable, factorize, lambda f: None)
    assert len(calls) == 3
