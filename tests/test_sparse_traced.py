"""Sparse patterns that are traced: a BCOO or index arrays passed into `jax.jit`. Same answers and
gradients as the concrete (static) pattern, one factorization per gradient, `vmap` over values and
right-hand sides, and clear errors for indices out of range."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from jax.experimental import sparse as jsparse

import linopx as lx
from linopx.solvers.sparse import _solver as sparse_solver

from test_memory import SPARSE_BACKENDS


def _matrix(k=7, seed=0):
    rng = np.random.default_rng(seed)
    t = sp.diags([-1.0, 2.5, -1.2], [-1, 0, 1], shape=(k, k))
    a = (sp.kron(sp.identity(k), t) + sp.kron(t, sp.identity(k))).tocoo()
    a.data = a.data * (1.0 + 0.1 * rng.random(a.nnz))  # unsymmetric values
    return a


def _solve(values, rows, cols, n, b, backend="superlu", throw=True):
    op = lx.SparseCOOLinearOperator(values, rows, cols, (n, n))
    return lx.linear_solve(op, b, lx.SparseLU(backend=backend), throw=throw).value


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_indices_as_jit_arguments(backend):
    a = _matrix()
    n = a.shape[0]
    b = np.linspace(-1.0, 1.0, n)
    f = jax.jit(lambda v, r, c, b: _solve(v, r, c, n, b, backend))
    x = f(jnp.asarray(a.data), jnp.asarray(a.row), jnp.asarray(a.col), jnp.asarray(b))
    np.testing.assert_allclose(x, spla.spsolve(a.tocsc(), b), rtol=1e-10)
    # Another pattern with the same nnz reuses the compiled program and gets its own answer.
    p = np.random.default_rng(1).permutation(n)
    a2 = sp.coo_matrix((a.data, (p[a.row], a.col)), shape=a.shape)
    x2 = f(jnp.asarray(a2.data), jnp.asarray(a2.row), jnp.asarray(a2.col), jnp.asarray(b))
    np.testing.assert_allclose(x2, spla.spsolve(a2.tocsc(), b), rtol=1e-10)


def test_bcoo_under_jit_with_padding():
    a = _matrix()
    n = a.shape[0]
    bcoo = jsparse.BCOO.fromdense(jnp.asarray(a.toarray()), nse=a.nnz + 5)  # 5 padding entries
    b = jnp.linspace(1.0, 2.0, n)
    f = jax.jit(lambda m, b: lx.linear_solve(lx.SparseCOOLinearOperator.from_bcoo(m), b).value)
    np.testing.assert_allclose(f(bcoo, b), np.linalg.solve(a.toarray(), b), rtol=1e-10)

    def loss(data, indices):
        m = jsparse.BCOO((data, indices), shape=(n, n))
        return jnp.sum(lx.linear_solve(lx.SparseCOOLinearOperator.from_bcoo(m), b).value ** 2)

    g = jax.jit(jax.grad(loss))(bcoo.data, bcoo.indices)
    dense = a.toarray()
    x = np.linalg.solve(dense, np.asarray(b))
    lam = np.linalg.solve(dense.T, 2 * x)
    idx = np.asarray(bcoo.indices)
    valid = (idx[:, 0] < n) & (idx[:, 1] < n)
    want = np.where(valid, -lam[np.minimum(idx[:, 0], n - 1)] * x[np.minimum(idx[:, 1], n - 1)], 0)
    np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_gradient_matches_concrete_and_factorizes_once(backend):
    a = _matrix()
    n = a.shape[0]
    b = jnp.linspace(-1.0, 1.0, n)

    def loss(v, r, c):
        return jnp.sum(_solve(v, r, c, n, b, backend) ** 2)

    traced = jax.jit(jax.grad(loss))
    v = jnp.asarray(a.data)
    rows, cols = jnp.asarray(a.row), jnp.asarray(a.col)
    traced(v, rows, cols)  # compile
    lx.SparseLU.clear_cache()
    sparse_solver.reset_counters()
    v2 = v * 1.5  # fresh values: not in the cache
    g = traced(v2, rows, cols)
    assert lx.SparseLU.cache_info()["factorizations"] == {backend: 1}
    concrete = jax.jit(jax.grad(lambda v: loss(v, a.row, a.col)))(v2)
    np.testing.assert_allclose(g, concrete, rtol=1e-10, atol=1e-14)
    dense = 1.5 * a.toarray()
    x = np.linalg.solve(dense, np.asarray(b))
    lam = np.linalg.solve(dense.T, 2 * x)
    np.testing.assert_allclose(g, -lam[a.row] * x[a.col], rtol=1e-9, atol=1e-12)


def test_vmap_over_values_and_right_hand_sides():
    a = _matrix()
    n = a.shape[0]
    rows, cols = jnp.asarray(a.row), jnp.asarray(a.col)
    scales = np.array([1.0, 2.0, 3.0])
    vs = jnp.asarray(np.stack([a.data * s for s in scales]))
    bs = jnp.asarray(np.random.default_rng(2).standard_normal((3, n)))
    f = jax.jit(lambda v, r, c, b: _solve(v, r, c, n, b))
    out = jax.vmap(f, in_axes=(0, None, None, 0))(vs, rows, cols, bs)
    for i, s in enumerate(scales):
        np.testing.assert_allclose(out[i], np.linalg.solve(s * a.toarray(), bs[i]), rtol=1e-10)
    out = jax.vmap(f, in_axes=(None, None, None, 0))(vs[0], rows, cols, bs)
    np.testing.assert_allclose(out, np.linalg.solve(a.toarray(), np.asarray(bs).T).T, rtol=1e-10)
    # Patterns batched too: each member its own pattern.
    p = np.random.default_rng(3).permutation(n)
    rows2 = jnp.stack([rows, jnp.asarray(p[a.row].astype(a.row.dtype))])
    out = jax.vmap(f, in_axes=(None, 0, None, None))(vs[0], rows2, cols, bs[0])
    a2 = sp.coo_matrix((a.data, (p[a.row], a.col)), shape=a.shape).toarray()
    np.testing.assert_allclose(out[1], np.linalg.solve(a2, bs[0]), rtol=1e-10)


def test_complex_values_with_traced_pattern():
    a = _matrix()
    n = a.shape[0]
    rng = np.random.default_rng(4)
    data = a.data + 1j * 0.3 * rng.standard_normal(a.nnz)
    b = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    f = jax.jit(lambda v, r, c, b: _solve(v, r, c, n, b))
    x = f(jnp.asarray(data), jnp.asarray(a.row), jnp.asarray(a.col), jnp.asarray(b))
    dense = sp.coo_matrix((data, (a.row, a.col)), shape=a.shape).toarray()
    np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-10)


def test_operator_functions_and_iterative_solve_on_traced_pattern():
    a = _matrix()
    n = a.shape[0]
    concrete = lx.SparseCOOLinearOperator.from_scipy(a)

    @jax.jit
    def parts(v, r, c, x):
        op = lx.SparseCOOLinearOperator(v, r, c, (n, n))
        return op.mv(x), op.transpose().mv(x), lx.diagonal(op), lx.tridiagonal(op), op.as_matrix()

    x = jnp.asarray(np.random.default_rng(5).standard_normal(n))
    got = parts(jnp.asarray(a.data), jnp.asarray(a.row), jnp.asarray(a.col), x)
    want = (concrete.mv(x), concrete.transpose().mv(x), lx.diagonal(concrete),
            lx.tridiagonal(concrete), concrete.as_matrix())
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-14)
    gm = jax.jit(lambda v, r, c, b: lx.linear_solve(
        lx.SparseCOOLinearOperator(v, r, c, (n, n)), b, lx.GMRES(rtol=1e-12, atol=1e-12)).value)
    b = jnp.linspace(1.0, 2.0, n)
    np.testing.assert_allclose(
        gm(jnp.asarray(a.data), jnp.asarray(a.row), jnp.asarray(a.col), b),
        np.linalg.solve(a.toarray(), b), rtol=1e-9)


def test_out_of_range_traced_index_raises_clearly():
    a = _matrix()
    n = a.shape[0]
    rows = np.array(a.row)
    rows[3] = n + 2
    f = jax.jit(lambda v, r, c, b: _solve(v, r, c, n, b))
    with pytest.raises(RuntimeError, match=r"`rows` holds the index .*outside \[0, 49\)"):
        jax.block_until_ready(f(jnp.asarray(a.data), jnp.asarray(rows), jnp.asarray(a.col), jnp.ones(n)))


def test_traced_index_dtype_and_length_checked_at_trace_time():
    a = _matrix()
    n = a.shape[0]
    f = jax.jit(lambda v, r, c: lx.SparseCOOLinearOperator(v, r, c, (n, n)).mv(jnp.ones(n)))
    with pytest.raises(TypeError, match="integer dtype"):
        f(jnp.asarray(a.data), jnp.asarray(a.row, jnp.float64), jnp.asarray(a.col))
    with pytest.raises(ValueError, match="same length"):
        f(jnp.asarray(a.data), jnp.asarray(a.row[:-1]), jnp.asarray(a.col))
