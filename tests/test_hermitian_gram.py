"""`lx.hermitian_tag` / `lx.is_hermitian` (MINRES on complex Hermitian indefinite operators) and
Gram products `A.T @ A`, `conj(A.T) @ A` recognised as positive semidefinite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linopx as lx

jax.config.update("jax_enable_x64", True)


def _hermitian_indefinite(n=12, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
    eig = np.linspace(-3.0, 4.0, n)  # indefinite, nonsingular (no eigenvalue at 0)
    eig[np.abs(eig) < 0.3] = 0.5
    return (q * eig) @ q.conj().T


def test_minres_complex_hermitian_indefinite():
    h = _hermitian_indefinite()
    rng = np.random.default_rng(1)
    b = jnp.asarray(rng.normal(size=12) + 1j * rng.normal(size=12))
    H = lx.MatrixLinearOperator(jnp.asarray(h), lx.hermitian_tag)
    solver = lx.MINRES(rtol=1e-12, atol=1e-12)
    x = lx.linear_solve(H, b, solver).value
    np.testing.assert_allclose(x, np.linalg.solve(h, np.asarray(b)), rtol=1e-9, atol=1e-11)
    # Reverse mode through the matrix, against jnp.linalg.solve's.
    loss = lambda m, s: jnp.sum(jnp.abs(lx.linear_solve(  # noqa: E731
        lx.MatrixLinearOperator(m, lx.hermitian_tag), b, s).value) ** 2)
    ref = lambda m: jnp.sum(jnp.abs(jnp.linalg.solve(m, b)) ** 2)  # noqa: E731
    g = jax.grad(loss)(jnp.asarray(h), solver)
    g_ref = jax.grad(ref)(jnp.asarray(h))
    np.testing.assert_allclose(g, g_ref, rtol=1e-7, atol=1e-9)


def test_is_hermitian_rules():
    h = jnp.asarray(_hermitian_indefinite(4))
    H = lx.MatrixLinearOperator(h, lx.hermitian_tag)
    assert lx.is_hermitian(H)
    assert lx.is_hermitian(H.T)  # Hᵀ = conj(H), Hermitian too
    assert lx.is_hermitian(lx.conj(H))
    assert lx.is_hermitian(-2.0 * H) and lx.is_hermitian(H + H) and lx.is_hermitian(H / 3.0)
    assert not lx.is_hermitian(2j * H)  # a complex scaling breaks it
    # A complex symmetric tag is A = Aᵀ, not Hermitian.
    assert not lx.is_hermitian(lx.MatrixLinearOperator(h, lx.symmetric_tag))
    # Real symmetric and (Hermitian) definite operators are Hermitian.
    assert lx.is_hermitian(lx.MatrixLinearOperator(jnp.eye(3), lx.symmetric_tag))
    assert lx.is_hermitian(lx.MatrixLinearOperator(h, lx.positive_semidefinite_tag))
    # A real operator tagged Hermitian is symmetric.
    assert lx.is_symmetric(lx.MatrixLinearOperator(jnp.eye(3), lx.hermitian_tag))
    assert not lx.is_hermitian(lx.MatrixLinearOperator(h))
    with pytest.raises(ValueError, match="hermitian_tag"):
        lx.linear_solve(lx.MatrixLinearOperator(h), jnp.ones(4, h.dtype), lx.MINRES(1e-8, 1e-8))


@pytest.mark.parametrize("complex_", [False, True])
def test_gram_products_are_positive_semidefinite(complex_):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(9, 5)) + (1j * rng.normal(size=(9, 5)) if complex_ else 0)
    A = lx.MatrixLinearOperator(jnp.asarray(a))
    adjoint = lx.conj(A.T) if complex_ else A.T
    for G in (adjoint @ A, A @ adjoint, lx.conj(A).T @ A):
        assert G.gram and lx.is_positive_semidefinite(G)
        assert isinstance(lx.AutoLinearSolver(well_posed=None).select_solver(G), lx.Cholesky)
        assert lx.is_positive_semidefinite(G.T) and lx.is_positive_semidefinite(lx.conj(G))
    if complex_:
        assert not (A.T @ A).gram  # Aᵀ A of a complex A is complex symmetric, not Hermitian
    else:
        assert lx.is_symmetric(A.T @ A)
    B = lx.MatrixLinearOperator(jnp.asarray(a.T.copy()))  # equal values, but not made as A.T
    assert not (B @ A).gram
    # The recognition is made when the product is built, so it survives `jit`.
    G = adjoint @ A
    b = jnp.asarray(rng.normal(size=5) + (1j * rng.normal(size=5) if complex_ else 0))
    x = jax.jit(lambda G, b: lx.linear_solve(G, b).value)(G, b)
    gram = a.conj().T @ a
    np.testing.assert_allclose(x, np.linalg.solve(gram, np.asarray(b)), rtol=1e-9)
    cg = lx.linear_solve(G, b, lx.CG(rtol=1e-12, atol=1e-12)).value  # CG accepts it untagged
    np.testing.assert_allclose(cg, np.linalg.solve(gram, np.asarray(b)), rtol=1e-8)


def test_explicit_gram_flag():
    a = jnp.asarray(np.random.default_rng(3).normal(size=(6, 4)))
    At = lx.MatrixLinearOperator(a.T)
    G = lx.ComposedLinearOperator(At, lx.MatrixLinearOperator(a), gram=True)
    assert lx.is_positive_semidefinite(G)
