"""Sparse operators and sparse direct solves (`SparseCOOLinearOperator`, `SparseLU`).

References are SciPy's `spsolve` and NumPy's dense `solve`, in float64/complex128. Tolerances: the
test matrices are well conditioned (condition numbers below ~200: the 2-D Poisson matrix on a 20x20
grid has κ ≈ 180, the random ones are diagonally dominant), so a backward-stable solve agrees with
the reference to about κ·eps·(a modest growth factor) ≈ 1e-12 relative in float64; we allow 1e-10.
In float32 κ·eps ≈ 2e-5, and we allow 1e-3 relative.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
from jax.experimental import sparse as jsparse

import linopx as lx
from linopx.solvers import sparse as sparse_solvers
from linopx.solvers.sparse import _cudss, _pardiso, _solver

F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-3, "atol": 1e-3}

HAVE_PARDISO = _pardiso.is_x86() and _pardiso.available()
needs_pardiso = pytest.mark.skipif(not HAVE_PARDISO, reason="MKL PARDISO (pypardiso) not installed")
REAL_BACKENDS = ["superlu", pytest.param("pardiso", marks=needs_pardiso)]


@pytest.fixture(autouse=True)
def _fresh_cache():
    sparse_solvers.set_cache_limits(max_entries=16, max_bytes=4 * 2**30)
    sparse_solvers.clear_cache()
    sparse_solvers.reset_counters()
    yield
    sparse_solvers.set_cache_limits(max_entries=16, max_bytes=4 * 2**30)
    sparse_solvers.clear_cache()


def poisson2d(k: int) -> sp.coo_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k))
    return (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k))).tocoo()


def random_sparse(rng, n: int, density: float = 0.15, complex_: bool = False) -> sp.coo_matrix:
    """Nonsymmetric pattern and values, made diagonally dominant (so well conditioned)."""
    a = sp.random(n, n, density=density, random_state=rng, format="coo")
    if complex_:
        a = a + 1j * sp.random(n, n, density=density, random_state=rng, format="coo")
    d = np.abs(a).sum(axis=1).A.ravel() + 1.0
    return (a + sp.diags(d)).tocoo()


def op_of(a: sp.coo_matrix, tags=()) -> lx.SparseCOOLinearOperator:
    return lx.SparseCOOLinearOperator.from_scipy(a, tags)


def with_values(op, values):
    return lx.SparseCOOLinearOperator(values, op.rows, op.cols, op.shape, op.tags)


def factorizations() -> int:
    return sum(sparse_solvers.cache_info()["factorizations"].values())


# ---------------------------------------------------------------------------------------------
# The operator


def test_mv_transpose_as_matrix_against_scipy(rng):
    a = random_sparse(rng, 30)
    # Non-square, with duplicates: append a second copy of some entries.
    a = sp.coo_matrix(
        (np.r_[a.data, a.data[:7]], (np.r_[a.row, a.row[:7]], np.r_[a.col, a.col[:7]] % 25)),
        shape=(30, 25),
    )
    dense = a.toarray()  # scipy sums duplicates
    op = op_of(a)
    v, u = rng.normal(size=25), rng.normal(size=30)
    np.testing.assert_allclose(op.mv(jnp.asarray(v)), dense @ v, **F64)
    np.testing.assert_allclose(op.T.mv(jnp.asarray(u)), dense.T @ u, **F64)
    np.testing.assert_allclose(op.as_matrix(), dense, **F64)
    np.testing.assert_allclose(op.T.as_matrix(), dense.T, **F64)
    assert op.in_structure().shape == (25,) and op.out_structure().shape == (30,)
    assert op.T.T.pattern == op.pattern


def test_adjoint_identity_complex(rng):
    a = random_sparse(rng, 20, complex_=True)
    op = op_of(a)
    u = rng.normal(size=20) + 1j * rng.normal(size=20)
    v = rng.normal(size=20) + 1j * rng.normal(size=20)
    lhs = np.vdot(u, op.mv(jnp.asarray(v)))
    rhs = np.vdot(lx.conj(op).T.mv(jnp.asarray(u)), v)
    np.testing.assert_allclose(lhs, rhs, **F64)
    np.testing.assert_allclose(lx.conj(op).as_matrix(), np.conj(a.toarray()), **F64)


def test_duplicates_add_up():
    op = lx.SparseCOOLinearOperator(
        jnp.array([1.0, 2.0, 3.0]), np.array([0, 0, 1]), np.array([1, 1, 0]), (2, 2)
    )
    np.testing.assert_allclose(op.as_matrix(), [[0.0, 3.0], [3.0, 0.0]])
    np.testing.assert_allclose(op.mv(jnp.array([1.0, 10.0])), [30.0, 3.0])
    np.testing.assert_allclose(op.to_scipy().toarray(), [[0.0, 3.0], [3.0, 0.0]])
    x = lx.linear_solve(op, jnp.array([3.0, 6.0]), lx.SparseLU("superlu")).value
    np.testing.assert_allclose(x, [2.0, 1.0], **F64)


def test_from_to_scipy_round_trip(rng):
    a = random_sparse(rng, 15).tocsr()
    op = op_of(a)
    back = op.to_scipy()
    assert isinstance(back, sp.coo_array)
    np.testing.assert_array_equal(back.toarray(), a.toarray())
    assert op.values.dtype == jnp.float64 and op.nnz == a.nnz


def test_from_bcoo_drops_padding(rng):
    dense = random_sparse(rng, 8).toarray()
    bcoo = jsparse.BCOO.fromdense(jnp.asarray(dense), nse=int((dense != 0).sum()) + 3)
    op = lx.SparseCOOLinearOperator.from_bcoo(bcoo)
    assert op.nnz == int((dense != 0).sum())
    np.testing.assert_allclose(op.as_matrix(), dense, **F64)
    with pytest.raises(TypeError, match="BCOO"):
        lx.SparseCOOLinearOperator.from_bcoo(dense)


def test_integer_values_are_cast_to_float():
    op = lx.SparseCOOLinearOperator(np.array([1, 2]), np.array([0, 1]), np.array([0, 1]), (2, 2))
    assert op.values.dtype == jnp.float64


def test_diagonal_and_tridiagonal_without_densifying(rng):
    a = poisson2d(6) + sp.coo_matrix(
        ([5.0], ([3], [3])), shape=(36, 36)
    )  # a duplicate on the diagonal
    a = sp.coo_matrix(a)
    op = op_of(a)
    dense = a.toarray()
    np.testing.assert_allclose(lx.diagonal(op), np.diagonal(dense), **F64)
    d, lo, up = lx.tridiagonal(op)
    np.testing.assert_allclose(d, np.diagonal(dense), **F64)
    np.testing.assert_allclose(lo, np.diagonal(dense, -1), **F64)
    np.testing.assert_allclose(up, np.diagonal(dense, 1), **F64)
    big = op_of(poisson2d(40))  # n = 1600
    jaxpr = jax.make_jaxpr(lambda v: lx.diagonal(with_values(big, v)))(big.values)
    assert max(np.prod(v.aval.shape) for e in jaxpr.eqns for v in e.outvars) < 1600**2 // 100


def test_tags_and_predicates():
    a = poisson2d(3)
    op = op_of(a, lx.positive_semidefinite_tag)
    assert lx.is_positive_semidefinite(op) and lx.is_symmetric(op)
    assert lx.is_positive_semidefinite(op.T)
    assert not lx.is_symmetric(op_of(a))
    assert lx.materialise(op) is op and lx.linearise(op) is op
    with pytest.raises(ValueError, match="Remove these tags"):
        lx.SparseCOOLinearOperator(
            jnp.ones(2), np.array([0, 1]), np.array([0, 1]), (2, 3), lx.symmetric_tag
        )


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((jnp.ones(2), np.array([0, 5]), np.array([0, 1]), (3, 3)), ValueError, "index 5, outside"),
        (
            (jnp.ones(2), np.array([0, 1]), np.array([-1, 1]), (3, 3)),
            ValueError,
            "`cols` holds the index -1",
        ),
        ((jnp.ones(3), np.array([0, 1]), np.array([0, 1]), (3, 3)), ValueError, "same length"),
        ((jnp.ones(2), np.array([0.0, 1.0]), np.array([0, 1]), (3, 3)), TypeError, "integer dtype"),
        ((jnp.ones((2, 1)), np.array([0, 1]), np.array([0, 1]), (3, 3)), ValueError, "1-D"),
        (([1.0, 2.0], np.array([0, 1]), np.array([0, 1]), (3, 3)), TypeError, "NumPy or JAX array"),
        ((jnp.ones(2), [0, 1], np.array([0, 1]), (3, 3)), TypeError, "integer array"),
        (
            (jnp.ones(2), np.array([[0, 1]]), np.array([0, 1]), (3, 3)),
            ValueError,
            "`rows` must be 1-D",
        ),
        ((jnp.ones(2), np.array([0, 1]), np.array([0, 1]), (3,)), TypeError, "pair"),
        ((jnp.ones(2), np.array([0, 1]), np.array([0, 1]), (3, -1)), ValueError, "non-negative"),
    ],
)
def test_bad_construction(args, error, match):
    with pytest.raises(error, match=match):
        lx.SparseCOOLinearOperator(*args)


def test_scipy_matrix_as_values_rejected_and_traced_indices_accepted():
    with pytest.raises(TypeError, match="from_scipy"):
        lx.SparseCOOLinearOperator(sp.eye(2), np.array([0]), np.array([0]), (2, 2))

    # Traced indices are accepted (see test_sparse_traced.py): the pattern travels as leaves.
    @jax.jit
    def build(rows):
        op = lx.SparseCOOLinearOperator(jnp.ones(2), rows, np.array([0, 1]), (2, 2))
        assert op.is_traced
        return op.as_matrix()

    np.testing.assert_array_equal(build(jnp.array([0, 1])), np.eye(2))


def test_mv_needs_a_flat_vector():
    op = op_of(poisson2d(2))
    with pytest.raises(ValueError, match=r"flat vector of shape \(4,\)"):
        op.mv(jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"expected a vector of shape \(4,\)"):
        op.mv(jnp.ones(3))


# ---------------------------------------------------------------------------------------------
# Solves


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_poisson_and_random_against_spsolve(rng, backend):
    for a in (poisson2d(20), random_sparse(rng, 60)):
        b = rng.normal(size=a.shape[0])
        ref = spl.spsolve(a.tocsc(), b)
        op = op_of(a)
        solve = jax.jit(
            lambda v, b, op=op: lx.linear_solve(with_values(op, v), b, lx.SparseLU(backend)).value
        )
        x = solve(op.values, jnp.asarray(b))
        np.testing.assert_allclose(x, ref, **F64)
        np.testing.assert_allclose(x, np.linalg.solve(a.toarray(), b), **F64)


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_transposed_and_conjugated_states(rng, backend):
    a = random_sparse(rng, 40)
    op, solver = op_of(a), lx.SparseLU(backend)
    b = jnp.asarray(rng.normal(size=40))
    state_t, _ = solver.transpose(solver.init(op, {}), {})
    x = lx.linear_solve(op.T, b, solver, state=state_t).value
    np.testing.assert_allclose(x, np.linalg.solve(a.toarray().T, b), **F64)
    # Conjugating a real state changes nothing (the complex case: the SuperLU test below): the
    # adjoint state solves Aᵀ with the same factors.
    state_h, _ = solver.conj(state_t, {})
    x = lx.linear_solve(lx.conj(op).T, b, solver, state=state_h).value
    np.testing.assert_allclose(x, np.linalg.solve(a.toarray().T, b), **F64)
    assert factorizations() == 1


def test_complex_superlu_transpose_and_conj(rng):
    a = random_sparse(rng, 30, complex_=True)
    dense = a.toarray()
    op, solver = op_of(a), lx.SparseLU("superlu")
    b = jnp.asarray(rng.normal(size=30) + 1j * rng.normal(size=30))
    state = solver.init(op, {})
    np.testing.assert_allclose(
        lx.linear_solve(op, b, solver).value, spl.spsolve(a.tocsc(), b), **F64
    )
    st, _ = solver.transpose(state, {})
    np.testing.assert_allclose(
        lx.linear_solve(op.T, b, solver, state=st).value, np.linalg.solve(dense.T, b), **F64
    )
    sc, _ = solver.conj(state, {})
    np.testing.assert_allclose(
        lx.linear_solve(lx.conj(op), b, solver, state=sc).value,
        np.linalg.solve(dense.conj(), b),
        **F64,
    )
    sh, _ = solver.conj(st, {})
    np.testing.assert_allclose(
        lx.linear_solve(lx.conj(op).T, b, solver, state=sh).value,
        np.linalg.solve(dense.conj().T, b),
        **F64,
    )
    assert factorizations() == 1
    # A real matrix with a complex right-hand side: one real factorization, both parts solved.
    r = random_sparse(rng, 30)
    np.testing.assert_allclose(
        lx.linear_solve(op_of(r), b, solver).value, np.linalg.solve(r.toarray(), b), **F64
    )


@pytest.mark.parametrize(
    "backend, dtype",
    [
        ("superlu", np.float32),
        ("superlu", np.complex64),
        ("superlu", np.complex128),
        pytest.param("pardiso", np.float32, marks=needs_pardiso),
        ("auto", np.complex64),
    ],
)
def test_dtypes(rng, backend, dtype):
    a = random_sparse(rng, 40, complex_=np.dtype(dtype).kind == "c")
    op = lx.SparseCOOLinearOperator(jnp.asarray(a.data.astype(dtype)), a.row, a.col, a.shape)
    b = rng.normal(size=40).astype(dtype)
    x = lx.linear_solve(op, jnp.asarray(b), lx.SparseLU(backend)).value
    assert x.dtype == dtype
    tol = F64 if dtype == np.complex128 else F32
    np.testing.assert_allclose(x, np.linalg.solve(a.toarray().astype(dtype), b), **tol)


@needs_pardiso
@pytest.mark.parametrize(
    "tag, kind", [(lx.symmetric_tag, "symmetric"), (lx.positive_semidefinite_tag, "spd")]
)
def test_pardiso_tags_select_matrix_types(rng, tag, kind):
    a = poisson2d(12)
    if kind == "symmetric":  # indefinite: shift the spectrum across zero
        a = sp.coo_matrix(a - 3.3 * sp.eye(a.shape[0]))
    op, solver = op_of(a, tag), lx.SparseLU("pardiso")
    assert solver.init(op, {}).kind == kind
    b = jnp.asarray(rng.normal(size=a.shape[0]))
    np.testing.assert_allclose(
        lx.linear_solve(op, b, solver).value, np.linalg.solve(a.toarray(), b), **F64
    )
    g = jax.grad(lambda b: jnp.sum(lx.linear_solve(op, b, solver).value ** 3))(b)
    x = np.linalg.solve(a.toarray(), b)
    np.testing.assert_allclose(g, np.linalg.solve(a.toarray().T, 3 * x**2), **F64)


@needs_pardiso
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
def test_pardiso_native_precisions(rng, dtype):
    """PARDISO factorizes float32/complex64 in single precision and complex128 natively: results
    in the operator's dtype, forward, transposed (reverse-mode) and value gradients against dense
    references; auto picks PARDISO for all of them."""
    complex_ = np.dtype(dtype).kind == "c"
    a = random_sparse(rng, 30, complex_=complex_)
    a = sp.coo_matrix((a.data.astype(dtype), (a.row, a.col)), shape=a.shape)
    op = op_of(a)
    assert lx.SparseLU().init(op, {}).backend == "pardiso"
    b = (rng.normal(size=30) + (1j * rng.normal(size=30) if complex_ else 0)).astype(dtype)
    single = np.dtype(dtype) in (np.float32, np.complex64)
    tol = {"rtol": 2e-4, "atol": 1e-5} if single else {"rtol": 1e-9, "atol": 1e-12}
    dense = a.toarray().astype(np.complex128 if complex_ else np.float64)
    x = lx.linear_solve(op, jnp.asarray(b), lx.SparseLU("pardiso")).value
    assert x.dtype == np.dtype(dtype)
    np.testing.assert_allclose(x, np.linalg.solve(dense, b.astype(dense.dtype)), **tol)

    def loss(v, b):
        o = lx.SparseCOOLinearOperator(v, op.rows, op.cols, op.shape)
        return jnp.sum(jnp.abs(lx.linear_solve(o, b, lx.SparseLU("pardiso")).value) ** 2)

    gv, gb = jax.grad(loss, argnums=(0, 1))(op.values, jnp.asarray(b))
    ref_m, ref_b = jax.grad(
        lambda m, b: jnp.sum(jnp.abs(jnp.linalg.solve(m, b)) ** 2), argnums=(0, 1)
    )(jnp.asarray(dense), jnp.asarray(b.astype(dense.dtype)))
    np.testing.assert_allclose(gb, ref_b, **tol)
    np.testing.assert_allclose(gv, ref_m[op.rows, op.cols], **tol)


# ---------------------------------------------------------------------------------------------
# Derivatives


def _small(rng, complex_=False):
    a = random_sparse(rng, 6, density=0.3, complex_=complex_)
    return a, op_of(a)


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_grad_closed_form_and_one_factorization(rng, backend):
    a = poisson2d(20)
    op = op_of(a)
    b = jnp.asarray(rng.normal(size=a.shape[0]))
    w = jnp.asarray(rng.normal(size=a.shape[0]))

    def loss(v, b):
        return jnp.dot(w, lx.linear_solve(with_values(op, v), b, lx.SparseLU(backend)).value)

    gv, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(op.values, b)
    assert factorizations() == 1  # the backward solve reused the forward factorization
    x = spl.spsolve(a.tocsc(), np.asarray(b))
    lam = spl.spsolve(a.T.tocsc(), np.asarray(w))
    np.testing.assert_allclose(gv, -lam[op.rows] * x[op.cols], **F64)
    np.testing.assert_allclose(gb, lam, **F64)


def test_grad_complex_closed_form(rng):
    a, op = _small(rng, complex_=True)
    b = jnp.asarray(rng.normal(size=6) + 1j * rng.normal(size=6))

    def loss(v):
        x = lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value
        return jnp.sum(jnp.abs(x) ** 2)

    g = jax.grad(loss)(op.values)
    x = np.linalg.solve(a.toarray(), b)
    lam = np.linalg.solve(a.toarray().conj().T, x)  # adjoint solve with dL/dx̄ = x
    # dL = 2 Re(xᴴ dx) with dx = -A⁻¹ dA x, so ∂L/∂A_ij = -conj(λ_i) x_j (λ = A⁻ᴴ x); JAX's
    # gradient of a real function of complex inputs is 2 ∂L/∂z (checked against the dense solve below).
    expected = -2 * np.conj(lam[op.rows]) * x[op.cols]
    np.testing.assert_allclose(g, expected, **F64)
    dense = jax.grad(
        lambda v: jnp.sum(jnp.abs(jnp.linalg.solve(with_values(op, v).as_matrix(), b)) ** 2)
    )(op.values)
    np.testing.assert_allclose(g, dense, **F64)


def test_grad_against_finite_differences(rng):
    _, op = _small(rng)
    b = jnp.asarray(rng.normal(size=6))

    def loss(v):
        return jnp.sum(
            jnp.sin(lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value)
        )

    g = jax.grad(loss)(op.values)
    d = jnp.asarray(rng.normal(size=op.nnz))
    h = 1e-6
    fd = (loss(op.values + h * d) - loss(op.values - h * d)) / (2 * h)
    # Central differences: truncation O(h²) ≈ 1e-12, rounding O(eps/h) ≈ 1e-10.
    np.testing.assert_allclose(jnp.dot(g, d), fd, rtol=1e-7, atol=1e-7)


def test_jvp_jacfwd_jacrev_hessian(rng):
    a, op = _small(rng)
    b = jnp.asarray(rng.normal(size=6))
    dense = a.toarray()

    def solve(v, b):
        return lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value

    def dense_solve(v, b):
        return jnp.linalg.solve(with_values(op, v).as_matrix(), b)

    v = op.values
    dv = jnp.asarray(rng.normal(size=op.nnz))
    _, t = jax.jvp(solve, (v, b), (dv, b))
    _, t_ref = jax.jvp(dense_solve, (v, b), (dv, b))
    np.testing.assert_allclose(t, t_ref, **F64)
    np.testing.assert_allclose(jax.jacfwd(solve)(v, b), jax.jacfwd(dense_solve)(v, b), **F64)
    np.testing.assert_allclose(jax.jacrev(solve, 1)(v, b), np.linalg.inv(dense), **F64)
    hess = jax.hessian(lambda v: jnp.sum(solve(v, b) ** 2))(v)
    hess_ref = jax.hessian(lambda v: jnp.sum(dense_solve(v, b) ** 2))(v)
    np.testing.assert_allclose(hess, hess_ref, rtol=1e-8, atol=1e-8)


def test_gradient_forms_nothing_n_by_n(rng):
    a = poisson2d(30)  # n = 900: an (n, n) array would have 810,000 elements
    op = op_of(a)
    n = a.shape[0]
    b = jnp.asarray(rng.normal(size=n))

    def loss(v, b):
        return jnp.sum(lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    sizes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            sizes.extend(
                int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape")
            )
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(grad)(op.values, b).jaxpr)
    assert max(sizes) < n * n // 10
    hlo = jax.jit(grad).lower(op.values, b).as_text()
    shapes = [
        tuple(int(d) for d in m.split("x")) for m in re.findall(r"tensor<(\d+(?:x\d+)+)x", hlo)
    ]
    assert all(np.prod(s) < n * n // 10 for s in shapes), shapes


# ---------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_vmap_over_b_values_and_both(rng, backend):
    a = random_sparse(rng, 30)
    op = op_of(a)
    k = 4
    bs = jnp.asarray(rng.normal(size=(k, 30)))
    vs = jnp.stack([op.values * (1.0 + 0.1 * i) for i in range(k)])

    def solve(v, b):
        return lx.linear_solve(with_values(op, v), b, lx.SparseLU(backend)).value

    def ref(i_v, b):
        return np.linalg.solve(a.toarray() * (1.0 + 0.1 * i_v), b)

    x = jax.vmap(solve, (None, 0))(op.values, bs)
    assert factorizations() == 1  # one factorization, one multi-right-hand-side solve
    for i in range(k):
        np.testing.assert_allclose(x[i], ref(0, bs[i]), **F64)
    sparse_solvers.clear_cache()  # member 0 equals the matrix just factorized
    sparse_solvers.reset_counters()
    x = jax.vmap(solve, (0, None))(vs, bs[0])
    assert factorizations() == k
    for i in range(k):
        np.testing.assert_allclose(x[i], ref(i, bs[0]), **F64)
    x = jax.vmap(solve)(vs, bs)
    for i in range(k):
        np.testing.assert_allclose(x[i], ref(i, bs[i]), **F64)
    # Gradient of a batched solve: each member's backward solve reuses its forward factorization.
    sparse_solvers.clear_cache()
    sparse_solvers.reset_counters()
    g = jax.grad(lambda vs: jnp.sum(jax.vmap(solve)(vs, bs)))(vs)
    assert factorizations() == k
    lam = np.linalg.solve(a.toarray().T * 1.1, np.ones(30))
    x1 = ref(1, bs[1])
    np.testing.assert_allclose(g[1], -lam[op.rows] * x1[op.cols], **F64)


def test_nested_vmap(rng):
    a = random_sparse(rng, 12)
    op = op_of(a)
    vs = jnp.stack([op.values, 2 * op.values])
    bs = jnp.asarray(rng.normal(size=(2, 3, 12)))

    def solve(v, b):
        return lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value

    x = jax.vmap(jax.vmap(solve, (None, 0)), (0, 0))(vs, bs)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(
                x[i, j], np.linalg.solve((i + 1) * a.toarray(), bs[i, j]), **F64
            )


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_bounds_and_results_do_not_depend_on_it(rng):
    a = random_sparse(rng, 25)
    op = op_of(a)
    b = jnp.asarray(rng.normal(size=25))
    solve = jax.jit(
        lambda v, b: lx.linear_solve(with_values(op, v), b, lx.SparseLU("superlu")).value
    )
    sparse_solvers.set_cache_limits(max_entries=2)
    xs = [solve(op.values * s, b) for s in (1.0, 2.0, 3.0)]
    assert sparse_solvers.cache_info()["entries"] == 2
    one = sparse_solvers.cache_info()["bytes"] // 2
    sparse_solvers.set_cache_limits(max_bytes=one + one // 2)  # room for one
    assert sparse_solvers.cache_info()["entries"] == 1
    sparse_solvers.set_cache_limits(max_entries=0)
    assert sparse_solvers.cache_info()["entries"] == 0
    again = solve(op.values, b)
    np.testing.assert_array_equal(again, xs[0])  # bitwise: same factorization, same solve
    sparse_solvers.set_cache_limits(max_entries=16, max_bytes=2**32)
    sparse_solvers.clear_cache()
    np.testing.assert_array_equal(solve(op.values, b), xs[0])
    np.testing.assert_array_equal(solve(op.values, b), xs[0])  # from the cache now
    info = sparse_solvers.cache_info()
    assert info["hits"] >= 1 and info["entries"] == 1
    with pytest.raises(ValueError, match="max_entries"):
        sparse_solvers.set_cache_limits(max_entries=-1)


def test_a_changed_value_is_a_miss(rng):
    a = random_sparse(rng, 10)
    op = op_of(a)
    b = jnp.asarray(rng.normal(size=10))
    solver = lx.SparseLU("superlu")
    lx.linear_solve(op, b, solver)
    v = np.asarray(op.values).copy()
    v[0] += 1e-12  # a different matrix, however slightly
    lx.linear_solve(with_values(op, jnp.asarray(v)), b, solver)
    assert factorizations() == 2


@needs_pardiso
def test_pardiso_reuses_the_analysis_per_pattern(rng):
    a = random_sparse(rng, 30)
    op = op_of(a)
    b = jnp.asarray(rng.normal(size=30))
    for s in (1.0, 2.0, 3.0):
        x = lx.linear_solve(with_values(op, op.values * s), b, lx.SparseLU("pardiso")).value
        np.testing.assert_allclose(x, np.linalg.solve(s * a.toarray(), b), **F64)
    info = sparse_solvers.cache_info()
    assert info["factorizations"] == {"pardiso": 3} and info["pardiso_analyses"] == 1


# ---------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_singular(backend):
    # Exactly singular (two equal columns) and numerically singular (a perturbation at rounding
    # level: the smallest pivot is then ~1e-15 relative, below the 32 eps threshold).
    d = np.array(
        [[2.0, 1.0, 1.0, 0.0], [1.0, 3.0, 3.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 4.0]]
    )
    for eps in (0.0, 4e-16):
        m = d.copy()
        m[0, 2] += eps
        op = op_of(sp.coo_matrix(m))
        sol = lx.linear_solve(op, jnp.ones(4), lx.SparseLU(backend), throw=False)
        assert sol.result == lx.RESULTS.singular
        with pytest.raises(Exception, match="singular"):
            lx.linear_solve(op, jnp.ones(4), lx.SparseLU(backend)).value.block_until_ready()


def test_singular_empty_row_and_column():
    op = lx.SparseCOOLinearOperator(
        jnp.array([1.0, 2.0]), np.array([0, 1]), np.array([0, 1]), (3, 3)
    )
    for backend in ["superlu"] + (["pardiso"] if HAVE_PARDISO else []):
        sol = lx.linear_solve(op, jnp.ones(3), lx.SparseLU(backend), throw=False)
        assert sol.result == lx.RESULTS.singular


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_nan_values_give_nonfinite_input(rng, backend):
    a = random_sparse(rng, 10)
    v = np.asarray(op_of(a).values).copy()
    v[3] = np.nan
    op = with_values(op_of(a), jnp.asarray(v))
    sol = lx.linear_solve(op, jnp.ones(10), lx.SparseLU(backend), throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input
    sol = lx.linear_solve(op_of(a), jnp.full(10, jnp.nan), lx.SparseLU(backend), throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input


# ---------------------------------------------------------------------------------------------
# Solver selection and bad arguments


def test_solver_argument_errors(rng):
    with pytest.raises(ValueError, match="unknown backend 'klu'"):
        lx.SparseLU("klu")
    wide = lx.SparseCOOLinearOperator(jnp.ones(2), np.array([0, 1]), np.array([0, 2]), (2, 3))
    with pytest.raises(ValueError, match="square operator, got 2 x 3.*LSMR"):
        lx.linear_solve(wide, jnp.ones(2), lx.SparseLU())
    with pytest.raises(ValueError, match="SparseCOOLinearOperator.*lx.LU"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(2)), jnp.ones(2), lx.SparseLU())
    op = op_of(random_sparse(rng, 4))
    state = lx.SparseLU("superlu").init(op, {})
    with pytest.raises(ValueError, match=r"flat vectors of shape \(4,\)"):
        lx.SparseLU("superlu").compute(state, {"a": jnp.ones(4)}, {})


def test_missing_backends_name_the_extra(monkeypatch, rng):
    from linopx.solvers.sparse import _suitesparse

    op = op_of(random_sparse(rng, 4))
    monkeypatch.setattr(_suitesparse, "available", lambda: False)
    with pytest.raises(ImportError, match=re.escape('pip install "linopx[suitesparse]"')):
        lx.SparseLU("umfpack").init(op, {})
    monkeypatch.setattr(_pardiso, "available", lambda: False)
    with pytest.raises(ImportError, match=re.escape('pip install "linopx[mkl]"')):
        lx.SparseLU("pardiso").init(op, {})
    assert lx.SparseLU().init(op, {}).backend == "superlu"  # auto falls back
    monkeypatch.setattr(_cudss, "installed", lambda: False)
    with pytest.raises(ImportError, match=re.escape('pip install "linopx[cuda]"')):
        lx.SparseLU("cudss").init(op, {})
    monkeypatch.setattr(_cudss, "installed", lambda: True)
    monkeypatch.setattr(_cudss, "gpu_present", lambda: False)
    with pytest.raises(ValueError, match=r"GPU.*linopx\[cuda\]"):
        lx.SparseLU("cudss").init(op, {})


def test_auto_backend_choice(monkeypatch):
    from linopx.solvers.sparse import _suitesparse

    monkeypatch.setattr(_suitesparse, "available", lambda: False)
    monkeypatch.setattr(_cudss, "available", lambda: True)
    monkeypatch.setattr(_pardiso, "available", lambda: True)
    monkeypatch.setattr(_pardiso, "is_x86", lambda: True)
    assert _solver.resolve_backend("auto", np.float64, "gpu") == "cudss"
    assert _solver.resolve_backend("auto", np.float32, "cpu") == "pardiso"
    assert _solver.resolve_backend("auto", np.float64, "cpu", "spd") == "pardiso"
    assert _solver.resolve_backend("auto", np.complex128, "cpu") == "pardiso"
    monkeypatch.setattr(_pardiso, "available", lambda: False)
    assert _solver.resolve_backend("auto", np.complex128, "cpu") == "superlu"
    monkeypatch.setattr(_pardiso, "available", lambda: True)
    # With SuiteSparse: CHOLMOD for positive definite tags, then PARDISO, then UMFPACK.
    monkeypatch.setattr(_suitesparse, "available", lambda: True)
    assert _solver.resolve_backend("auto", np.float64, "cpu", "spd") == "cholmod"
    assert _solver.resolve_backend("auto", np.float64, "cpu", "symmetric") == "pardiso"
    assert _solver.resolve_backend("auto", np.complex128, "cpu") == "pardiso"
    monkeypatch.setattr(_pardiso, "is_x86", lambda: False)
    assert _solver.resolve_backend("auto", np.complex128, "cpu") == "umfpack"
    monkeypatch.setattr(_suitesparse, "available", lambda: False)
    monkeypatch.setattr(_pardiso, "is_x86", lambda: False)
    assert _solver.resolve_backend("auto", np.float64, "cpu") == "superlu"
    monkeypatch.setattr(_cudss, "available", lambda: False)
    assert _solver.resolve_backend("auto", np.float64, "gpu") == "superlu"


def test_auto_linear_solver_picks_sparse_lu_without_densifying(rng):
    a = poisson2d(30)
    op = op_of(a)
    auto = lx.AutoLinearSolver(well_posed=None)
    assert isinstance(auto.select_solver(op), lx.SparseLU)
    tagged = lx.TaggedLinearOperator(op, lx.positive_semidefinite_tag)
    # A definite tag: a sparse Cholesky where CHOLMOD is installed, else SparseLU (which uses
    # PARDISO's Cholesky where MKL is).
    chosen = lx.AutoLinearSolver(well_posed=True).select_solver(tagged)
    assert isinstance(chosen, (lx.SparseLU, lx.SparseCholesky))
    b = jnp.asarray(rng.normal(size=a.shape[0]))
    n = a.shape[0]
    jaxpr = jax.make_jaxpr(lambda v, b: lx.linear_solve(with_values(op, v), b).value)(op.values, b)
    assert max(int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars) < n * n // 10
    np.testing.assert_allclose(lx.linear_solve(tagged, b).value, spl.spsolve(a.tocsc(), b), **F64)
    with pytest.raises(ValueError, match="will not densify"):
        auto.select_solver(op + op)
