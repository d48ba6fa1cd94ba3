"""`SparseCholesky` (CHOLMOD, PARDISO) and `SparseLU(backend="umfpack")`, against SciPy and dense
references in float64. The SuiteSparse backends need the optional `linopx[suitesparse]` extra
(kvxopt); without it these tests are skipped, and the errors that say what to install are tested."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import linopx as lx
from linopx.solvers import sparse as lxs
from linopx.solvers.sparse import _suitesparse

jax.config.update("jax_enable_x64", True)

HAVE = _suitesparse.available()
needs_kvxopt = pytest.mark.skipif(not HAVE, reason="kvxopt (linopx[suitesparse]) not installed")


def _poisson2d(k):
    t = sp.diags([-np.ones(k - 1), 2 * np.ones(k), -np.ones(k - 1)], [-1, 0, 1])
    i = sp.eye(k)
    return (sp.kron(t, i) + sp.kron(i, t)).tocoo()


def _spd(k=12):
    """A 2D Poisson matrix with a random positive diagonal shift (so values vary by test)."""
    a = _poisson2d(k).tocsr()
    a = a + sp.diags(np.random.default_rng(k).uniform(0.1, 1.0, a.shape[0]))
    return a.tocoo()


def _general(n=60, seed=0, complex_=False):
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=0.08, random_state=seed, format="coo")
    a = (a + sp.eye(n) * 0.5).tocoo()
    data = a.data + (1j * rng.normal(size=a.data.shape) if complex_ else 0)
    return sp.coo_matrix((data, (a.row, a.col)), shape=a.shape)


def _op(a, *tags):
    return (
        lx.SparseCOOLinearOperator.from_scipy(a, *tags)
        if tags
        else (lx.SparseCOOLinearOperator.from_scipy(a))
    )


@needs_kvxopt
@pytest.mark.parametrize("negative", [False, True])
def test_cholmod_solve_grad_slogdet(negative):
    a = _spd()
    tag = lx.negative_semidefinite_tag if negative else lx.positive_semidefinite_tag
    if negative:
        a = -a
    A = _op(a, tag)
    b = jnp.asarray(np.random.default_rng(1).normal(size=a.shape[0]))
    solver = lx.SparseCholesky(backend="cholmod")
    x = lx.linear_solve(A, b, solver).value
    np.testing.assert_allclose(x, spla.spsolve(a.tocsc(), np.asarray(b)), rtol=1e-10, atol=1e-12)
    sign, logabsdet = lx.slogdet(A, solver)
    ref = np.linalg.slogdet(a.toarray())
    assert sign == ref.sign
    np.testing.assert_allclose(logabsdet, ref.logabsdet, rtol=1e-12)

    # Gradient with respect to the nonzeros against the dense gradient gathered on the pattern:
    # d/dA of sum(x²) is -λ xᵀ with λ = A⁻ᵀ (2x); the COO entries (r, c) read (r, c) of it.
    def loss(values):
        op = lx.SparseCOOLinearOperator(values, A.rows, A.cols, A.shape, tag)
        return jnp.sum(lx.linear_solve(op, b, solver).value ** 2)

    def dense_loss(m):
        return jnp.sum(jnp.linalg.solve(m, b) ** 2)

    lxs.clear_cache()
    lxs.reset_counters()
    grad = jax.jit(jax.grad(loss))(A.values)
    assert lxs.cache_info()["factorizations"].get("cholmod", 0) == 1
    dense = jax.grad(dense_loss)(jnp.asarray(a.toarray()))
    np.testing.assert_allclose(grad, dense[A.rows, A.cols], rtol=1e-8, atol=1e-12)


@needs_kvxopt
def test_cholmod_indefinite_and_singular_give_results():
    a = _poisson2d(6).tocsr()
    indefinite = (a - 3.0 * sp.eye(a.shape[0])).tocoo()  # eigenvalues span (-3, 5)
    A = _op(indefinite, lx.positive_semidefinite_tag)  # a wrong tag: the factorization fails
    b = jnp.ones(indefinite.shape[0])
    sol = lx.linear_solve(A, b, lx.SparseCholesky(backend="cholmod"), throw=False)
    assert sol.result == lx.RESULTS.singular
    singular = sp.coo_matrix(np.diag([1.0, 1.0, 0.0]) + 0.0)
    singular = sp.coo_matrix((np.array([1.0, 1.0, 0.0]), ([0, 1, 2], [0, 1, 2])), shape=(3, 3))
    sol = lx.linear_solve(
        _op(singular, lx.positive_semidefinite_tag),
        jnp.ones(3),
        lx.SparseCholesky(backend="cholmod"),
        throw=False,
    )
    assert sol.result == lx.RESULTS.singular


@needs_kvxopt
def test_cholmod_complex_hermitian_and_float32():
    rng = np.random.default_rng(3)
    g = _general(30, seed=3, complex_=True).toarray()
    h = sp.coo_matrix(g @ g.conj().T + np.eye(30))
    A = _op(h, lx.positive_semidefinite_tag)
    b = jnp.asarray(rng.normal(size=30) + 1j * rng.normal(size=30))
    x = lx.linear_solve(A, b, lx.SparseCholesky()).value
    np.testing.assert_allclose(x, np.linalg.solve(h.toarray(), np.asarray(b)), rtol=1e-9)
    # The transposed solve (reverse mode) of a complex Hermitian matrix: Aᵀ = conj(A).
    g_b = jax.grad(
        lambda b: jnp.sum(jnp.abs(lx.linear_solve(A, b, lx.SparseCholesky()).value) ** 2)
    )
    ref = jax.grad(lambda b: jnp.sum(jnp.abs(jnp.linalg.solve(jnp.asarray(h.toarray()), b)) ** 2))
    np.testing.assert_allclose(g_b(b), ref(b), rtol=1e-8)
    sign, logabsdet = lx.slogdet(A, lx.SparseCholesky())
    ref_sign, ref_log = np.linalg.slogdet(h.toarray())
    np.testing.assert_allclose(sign, ref_sign, atol=1e-12)
    np.testing.assert_allclose(logabsdet, ref_log, rtol=1e-12)

    a32 = _spd(8)
    A32 = lx.SparseCOOLinearOperator(
        jnp.asarray(a32.data, jnp.float32),
        jnp.asarray(a32.row),
        jnp.asarray(a32.col),
        a32.shape,
        lx.positive_semidefinite_tag,
    )
    x32 = lx.linear_solve(A32, jnp.ones(a32.shape[0], jnp.float32), lx.SparseCholesky()).value
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, spla.spsolve(a32.tocsc(), np.ones(a32.shape[0])), rtol=1e-5)


@needs_kvxopt
@pytest.mark.parametrize("complex_", [False, True])
def test_umfpack_solve_transpose_grad_slogdet(complex_):
    a = _general(60, seed=4, complex_=complex_)
    A = _op(a)
    rng = np.random.default_rng(5)
    b = rng.normal(size=60) + (1j * rng.normal(size=60) if complex_ else 0)
    b = jnp.asarray(b)
    solver = lx.SparseLU(backend="umfpack")
    dense = a.toarray()
    x = lx.linear_solve(A, b, solver).value
    np.testing.assert_allclose(x, np.linalg.solve(dense, np.asarray(b)), rtol=1e-9, atol=1e-12)
    # vmap over right-hand sides and the transposed solve through reverse mode.
    bs = jnp.stack([b, 2 * b, b + 1])
    xs = jax.vmap(lambda v: lx.linear_solve(A, v, solver).value)(bs)
    np.testing.assert_allclose(xs, np.linalg.solve(dense, np.asarray(bs).T).T, rtol=1e-9)
    lxs.clear_cache()
    lxs.reset_counters()
    grad = jax.grad(
        lambda v: jnp.sum(
            jnp.abs(
                lx.linear_solve(
                    lx.SparseCOOLinearOperator(v, A.rows, A.cols, A.shape), b, solver
                ).value
            )
            ** 2
        )
    )(A.values)
    assert lxs.cache_info()["factorizations"].get("umfpack", 0) == 1
    dense_grad = jax.grad(lambda m: jnp.sum(jnp.abs(jnp.linalg.solve(m, b)) ** 2))(
        jnp.asarray(dense)
    )
    np.testing.assert_allclose(grad, dense_grad[A.rows, A.cols], rtol=1e-7, atol=1e-12)
    sign, logabsdet = lx.slogdet(A, solver)
    ref = np.linalg.slogdet(dense)
    np.testing.assert_allclose(sign, ref.sign, atol=1e-12)
    np.testing.assert_allclose(logabsdet, ref.logabsdet, rtol=1e-12)


@needs_kvxopt
def test_umfpack_singular():
    s = sp.coo_matrix(np.array([[1.0, 2.0], [2.0, 4.0]]))
    sol = lx.linear_solve(_op(s), jnp.ones(2), lx.SparseLU(backend="umfpack"), throw=False)
    assert sol.result == lx.RESULTS.singular


@needs_kvxopt
def test_auto_chooses_cholmod_for_tagged_sparse():
    a = _spd(6)
    tagged = _op(a, lx.positive_semidefinite_tag)
    solver = lx.AutoLinearSolver(well_posed=True).select_solver(tagged)
    assert isinstance(solver, lx.SparseCholesky)
    assert isinstance(lx.AutoLinearSolver(well_posed=True).select_solver(_op(a)), lx.SparseLU)
    x = lx.linear_solve(tagged, jnp.ones(a.shape[0])).value
    np.testing.assert_allclose(x, spla.spsolve(a.tocsc(), np.ones(a.shape[0])), rtol=1e-10)


def test_errors_name_the_fix():
    a = _spd(4)
    with pytest.raises(ValueError, match="unknown backend"):
        lx.SparseCholesky(backend="superlu")
    with pytest.raises(ValueError, match="positive_semidefinite_tag"):
        lx.linear_solve(_op(a), jnp.ones(a.shape[0]), lx.SparseCholesky(backend="cholmod"))
    with pytest.raises(ValueError, match="SparseCOOLinearOperator"):
        lx.linear_solve(
            lx.MatrixLinearOperator(jnp.eye(3), lx.positive_semidefinite_tag),
            jnp.ones(3),
            lx.SparseCholesky(),
        )
    if not HAVE:
        with pytest.raises(ImportError, match=r"linopx\[suitesparse\]"):
            lx.linear_solve(
                _op(a, lx.positive_semidefinite_tag),
                jnp.ones(a.shape[0]),
                lx.SparseCholesky(backend="cholmod"),
            )
        with pytest.raises(ImportError, match=r"linopx\[suitesparse\]"):
            lx.linear_solve(_op(a), jnp.ones(a.shape[0]), lx.SparseLU(backend="umfpack"))


@needs_kvxopt
def test_cholmod_vmap_over_values_and_slogdet_gradient():
    a = _spd(8)
    A = _op(a, lx.positive_semidefinite_tag)
    b = jnp.ones(a.shape[0])
    scales = jnp.asarray([1.0, 2.0, 0.5])

    def solve(scale):
        op = lx.SparseCOOLinearOperator(scale * A.values, A.rows, A.cols, A.shape, A.tags)
        return lx.linear_solve(op, b, lx.SparseCholesky()).value

    xs = jax.jit(jax.vmap(solve))(scales)
    ref = spla.spsolve(a.tocsc(), np.ones(a.shape[0]))
    np.testing.assert_allclose(xs, ref[None] / np.asarray(scales)[:, None], rtol=1e-10)

    def logdet(values):
        op = lx.SparseCOOLinearOperator(values, A.rows, A.cols, A.shape, A.tags)
        return lx.slogdet(op, lx.SparseCholesky())[1]

    grad = jax.grad(logdet)(A.values)
    dense = np.linalg.inv(a.toarray()).T
    np.testing.assert_allclose(grad, dense[np.asarray(A.rows), np.asarray(A.cols)], rtol=1e-9)
