"""The products of `SparseCOOLinearOperator`: the native CPU kernel (`linopx/_native`), and on the
pure-XLA path (its fallback) the diagonal (DIA) fast path chosen at trace time for concrete
patterns with few diagonals, and the general gather + segment-sum path otherwise. Every test runs
on both paths (the `product_path` fixture).

Every product is checked against SciPy's CSR product in float64 (the reference), for `mv`, for the
transpose's `mv`, for complex values with `conj`, under `vmap` (over values and over vectors) and
under `grad` with respect to the values (whose cotangent is `ct[rows] * x[cols]`). Each test also
asserts which layout the pattern got, so that a change of the selection rules cannot quietly leave
a form untested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import force_xla_sparse_products

import linopx as lx
from linopx.linops.sparse import SparsityPattern, _diagonal_form, diagonal_layout


@pytest.fixture(autouse=True, params=["native", "xla"])
def product_path(request, monkeypatch):
    """Run each test with the native kernel, then with it switched off (the XLA path)."""
    if request.param == "native":
        info = lx.native_info()
        if not info["available"]:
            pytest.skip(f"native kernels unavailable: {info['reason']}")
    else:
        force_xla_sparse_products(monkeypatch)
    return request.param


def poisson(shape) -> sp.coo_matrix:
    """The Laplacian (2d on each axis, -1 to each neighbour) on a grid of `shape`, row-sorted COO."""
    out = None
    for axis, k in enumerate(shape):
        t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k))
        term = sp.eye(1)
        for j, kj in enumerate(shape):
            term = sp.kron(term, t if j == axis else sp.eye(kj))
        out = term if out is None else out + term
    return out.tocsr().tocoo()


def banded(rng, m, n, offsets, dtype=np.float64) -> sp.coo_matrix:
    """A random `m x n` matrix with entries on the diagonals `offsets` only, row-sorted COO."""
    rows, cols = [], []
    for o in offsets:
        i = np.arange(max(0, -o), min(m, n - o))
        rows.append(i)
        cols.append(i + o)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    values = rng.normal(size=rows.size)
    if np.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.normal(size=rows.size)
    return sp.coo_matrix((values.astype(dtype), (rows, cols)), (m, n)).tocsr().tocoo()


def assert_close(got, ref) -> None:
    """Equal up to rounding: the products sum in another order than SciPy, so an entry that cancels
    to near zero is compared with a tolerance relative to the largest entry."""
    ref = np.asarray(ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-13, atol=1e-14 * scale)


def permuted(a: sp.coo_matrix, order) -> sp.coo_matrix:
    """The same matrix with its entries stored in `order`."""
    return sp.coo_matrix((a.data[order], (a.row[order], a.col[order])), a.shape)


def layout_kind(op) -> str:
    """Which path `op.mv` takes: "window", "gather" or "general"; the transpose's layout for a
    pattern that is sorted by column only (see `SparseCOOLinearOperator.mv`)."""
    form = _diagonal_form(op.pattern)
    if form is None:
        return "general"
    return "window" if form[0].gather is None else "gather"


def check_products(a: sp.coo_matrix, rng, kind: str) -> None:
    """`mv` and `transpose().mv` of `a` against SciPy, jitted, with fresh vectors."""
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    assert layout_kind(op) == kind
    assert layout_kind(op.transpose()) == kind
    m, n = a.shape
    dtype = a.dtype
    x = rng.normal(size=n).astype(dtype)
    u = rng.normal(size=m).astype(dtype)
    csr = a.tocsr()
    mv = jax.jit(lambda v, x: lx.SparseCOOLinearOperator(v, op.pattern).mv(x))
    rmv = jax.jit(lambda v, u: lx.SparseCOOLinearOperator(v, op.pattern).transpose().mv(u))
    assert_close(mv(op.values, x), csr @ x)
    assert_close(rmv(op.values, u), csr.T @ u)


@pytest.mark.parametrize("shape", [(30, 30), (7, 8, 9), (1, 1), (5,)])
def test_stencil_matrices_take_the_window_form(shape, rng):
    check_products(poisson(shape), rng, "window")


@pytest.mark.parametrize(
    "m, n, offsets",
    [(40, 40, (-3, 0, 2)), (30, 45, (-2, 0, 1, 20)), (45, 30, (-20, -1, 0, 3)), (6, 50, (0, 44))],
)
def test_rectangular_banded_matrices(m, n, offsets, rng):
    check_products(banded(rng, m, n, offsets), rng, "window")


def test_unsorted_entries_take_the_gather_form(rng):
    a = poisson((12, 13))
    check_products(permuted(a, rng.permutation(a.nnz)), rng, "gather")


def test_column_sorted_entries_use_the_transposes_layout(rng):
    # Sorted by column (a CSC matrix's order): the product uses the row-sorted layout of the
    # transpose and its transposed product.
    a = banded(rng, 25, 35, (-4, 0, 1, 7))
    by_column = permuted(a, np.lexsort((a.row, a.col)))
    op = lx.SparseCOOLinearOperator.from_scipy(by_column)
    assert not op.pattern.rows_sorted and op.pattern.cols_sorted
    check_products(by_column, rng, "window")


def test_rows_in_reverse_column_order(rng):
    # Sorted by row, but each row's entries in decreasing column order: the windows then start at
    # the row's first entry (the shift that aligns boundary rows would overrun them).
    a = poisson((9, 11))
    order = np.lexsort((-a.col, a.row))
    check_products(permuted(a, order), rng, "window")


def test_empty_rows_and_columns(rng):
    a = banded(rng, 20, 20, (-1, 0, 1))
    keep = (a.row != 5) & (a.col != 12)
    check_products(
        sp.coo_matrix((a.data[keep], (a.row[keep], a.col[keep])), a.shape), rng, "window"
    )


def test_unstructured_and_duplicate_patterns_keep_the_general_path(rng):
    check_products(sp.random(60, 50, density=0.2, random_state=1, format="coo"), rng, "general")
    a = banded(rng, 30, 30, (-1, 0, 1))
    dup = sp.coo_matrix(
        (np.concatenate([a.data, [1.5]]), (np.append(a.row, 3), np.append(a.col, 3))), a.shape
    )
    check_products(dup, rng, "general")
    # Diagonals mostly empty: more slots than the fill limit allows.
    sparse_diagonals = sp.coo_matrix((np.ones(3), ([0, 50, 99], [99, 0, 50])), (100, 100))
    check_products(sparse_diagonals, rng, "general")


def test_complex_values_conj_and_transpose(rng):
    a = banded(rng, 30, 30, (-5, -1, 0, 2), np.complex128)
    check_products(a, rng, "window")
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    x = rng.normal(size=30) + 1j * rng.normal(size=30)
    csr = a.tocsr()
    assert_close(lx.conj(op).mv(x), csr.conj() @ x)
    assert_close(lx.conj(op).transpose().mv(x), csr.conj().T @ x)
    # A real operator applied to a complex vector.
    real = lx.SparseCOOLinearOperator.from_scipy(poisson((6, 7)))
    z = rng.normal(size=42) + 1j * rng.normal(size=42)
    assert_close(real.mv(z), real.to_scipy().tocsr() @ z)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_vmap_over_values_and_vectors(order, rng):
    a = poisson((8, 9))
    if order == "shuffled":
        a = permuted(a, rng.permutation(a.nnz))
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    p = op.pattern
    values = op.values[None, :] * jnp.asarray(rng.uniform(0.5, 2.0, (3, 1)))
    xs = jnp.asarray(rng.normal(size=(4, 72)))

    def apply(v, x):
        return lx.SparseCOOLinearOperator(v, p).mv(x)

    def apply_t(v, x):
        return lx.SparseCOOLinearOperator(v, p).transpose().mv(x)

    for f in (apply, apply_t):
        got = jax.jit(jax.vmap(jax.vmap(f, (None, 0)), (0, None)))(values, xs)
        for i in range(3):
            csr = sp.coo_matrix((np.asarray(values[i]), (p.rows, p.cols)), p.shape).tocsr()
            ref = csr if f is apply else csr.T
            assert_close(got[i], (ref @ np.asarray(xs).T).T)


@pytest.mark.parametrize("order", ["sorted", "shuffled", "by column"])
def test_gradient_lives_on_the_nonzeros(order, rng):
    a = banded(rng, 20, 24, (-2, 0, 1, 3))
    if order == "shuffled":
        a = permuted(a, rng.permutation(a.nnz))
    elif order == "by column":
        a = permuted(a, np.lexsort((a.row, a.col)))
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    p = op.pattern
    x = jnp.asarray(rng.normal(size=24))
    ct = jnp.asarray(rng.normal(size=20))

    def loss(v):
        return ct @ lx.SparseCOOLinearOperator(v, p).mv(x)

    def loss_t(v):
        return x @ lx.SparseCOOLinearOperator(v, p).transpose().mv(ct)

    expected = np.asarray(ct)[p.rows] * np.asarray(x)[p.cols]
    assert_close(jax.jit(jax.grad(loss))(op.values), expected)
    assert_close(jax.jit(jax.grad(loss_t))(op.values), expected)
    # Forward mode agrees: the product is linear in the values.
    dv = jnp.asarray(rng.normal(size=a.nnz))
    _, tangent = jax.jvp(loss, (op.values,), (dv,))
    np.testing.assert_allclose(tangent, expected @ np.asarray(dv), rtol=1e-12)


def test_traced_patterns_keep_the_general_path(rng):
    a = poisson((10, 10))
    rows, cols = jnp.asarray(a.row), jnp.asarray(a.col)
    x = jnp.asarray(rng.normal(size=100))

    @jax.jit
    def f(v, rows, cols, x):
        op = lx.SparseCOOLinearOperator(v, rows, cols, (100, 100))
        assert op.is_traced
        return op.mv(x), op.transpose().mv(x)

    y, yt = f(jnp.asarray(a.data), rows, cols, x)
    csr = a.tocsr()
    assert_close(y, csr @ np.asarray(x))
    assert_close(yt, csr.T @ np.asarray(x))


def test_layout_is_computed_once_per_pattern():
    a = poisson((6, 6))
    p = SparsityPattern(a.row, a.col, a.shape)
    first = diagonal_layout(p)
    assert first is not None and diagonal_layout(p) is first
    assert first.offsets == (-6, -1, 0, 1, 6)


def test_cg_on_the_fast_path_matches_scipy(rng):
    # The solve itself (each product on the diagonal path), against SciPy's direct solve.
    a = poisson((20, 20))
    op = lx.SparseCOOLinearOperator.from_scipy(a, lx.positive_semidefinite_tag)
    b = rng.normal(size=400)
    sol = lx.linear_solve(op, jnp.asarray(b), lx.CG(rtol=1e-12, atol=0.0))
    ref = sp.linalg.spsolve(a.tocsc(), b)
    np.testing.assert_allclose(sol.value, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", [(32, 32, 32), (60, 70)])
def test_products_fused_into_reductions(shape, rng):
    # What a Krylov solver does right after a product: reduce it, `|b - A x|` or `bᵀ A x`, which
    # XLA fuses with the product. An earlier form of the diagonal product (each term padded, then
    # summed) was miscompiled by XLA CPU in such a fusion on 3-D stencils: the product alone was
    # right, the fused norm off by 5e-4 and the inner product by 26%, and CG reported stagnation.
    a = poisson(shape).tocsr()
    a = (a + sp.diags(rng.uniform(0, 1, a.shape[0] - 1), 1, shape=a.shape)).tocsr().tocoo()
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    assert diagonal_layout(op.pattern) is not None
    x = rng.standard_normal(a.shape[0])
    b = rng.standard_normal(a.shape[0])
    for o, m in ((op, a), (op.transpose(), a.T)):
        norm = jax.jit(lambda x, b: jnp.linalg.norm(b - o.mv(x)))(x, b)
        dot = jax.jit(lambda x, b: jnp.vdot(b, o.mv(x)))(x, b)
        np.testing.assert_allclose(float(norm), np.linalg.norm(b - m @ x), rtol=1e-12)
        np.testing.assert_allclose(float(dot), b @ (m @ x), rtol=1e-10)
