"""`jax.linear_transpose` of a solve (issue: the run-time check made a solve look non-linear to
JAX). A solve `b ↦ A⁺ b` is linear in `b`; its transpose is `c ↦ (A⁺)ᵀ c = pinv(A)ᵀ c`. Checked
for every solver, with `throw=True` and `throw=False`, under `jit` and `vmap`, and in the places
where JAX transposes a linearised program for the user (reverse mode through `jax.checkpoint` and
`lax.scan`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import linopx as lx


def _well_conditioned(rng, m, n):
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.linspace(1.0, 3.0, min(m, n))
    a = np.zeros((m, n))
    a[: len(s), : len(s)] = np.diag(s)
    return u @ a @ v.T


def _matrix(kind, rng):
    n = 6
    if kind == "general":
        return _well_conditioned(rng, n, n)
    if kind == "tall":
        return _well_conditioned(rng, 9, n)
    if kind == "wide":
        return _well_conditioned(rng, n, 9)
    if kind == "spd":
        q = _well_conditioned(rng, n, n)
        return q @ q.T + np.eye(n)
    if kind == "symmetric_indefinite":
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return q @ np.diag([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]) @ q.T
    if kind == "lower":
        return np.tril(rng.standard_normal((n, n))) + 4 * np.eye(n)
    if kind == "diagonal":
        return np.diag(rng.uniform(1.0, 3.0, n))
    if kind == "tridiagonal":
        return np.diag(rng.uniform(3, 4, n)) + np.diag(rng.standard_normal(n - 1), 1) + np.diag(
            rng.standard_normal(n - 1), -1
        )
    if kind == "rank_deficient":
        a = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 6))
        return a
    raise AssertionError(kind)


_TAGS = {
    "spd": (lx.symmetric_tag, lx.positive_semidefinite_tag),
    "symmetric_indefinite": (lx.symmetric_tag,),
    "lower": (lx.lower_triangular_tag,),
    "diagonal": (lx.diagonal_tag,),
    "tridiagonal": (lx.tridiagonal_tag,),
}

_ITER = dict(rtol=1e-12, atol=1e-12)

# (id, solver, matrix kind, tolerance): direct solvers to rounding (cond <= ~10 here), iterative
# ones to their rtol 1e-12 times the condition number, with room.
CASES = [
    ("LU", lambda: lx.LU(), "general", 1e-10),
    ("QR-square", lambda: lx.QR(), "general", 1e-10),
    ("QR-tall", lambda: lx.QR(), "tall", 1e-10),
    ("QR-wide", lambda: lx.QR(), "wide", 1e-10),
    ("PivotedQR-rank-deficient", lambda: lx.AutoLinearSolver(well_posed=False), "rank_deficient", 1e-9),
    ("SVD-rank-deficient", lambda: lx.SVD(), "rank_deficient", 1e-9),
    ("Cholesky", lambda: lx.Cholesky(), "spd", 1e-10),
    ("Diagonal", lambda: lx.Diagonal(), "diagonal", 1e-12),
    ("Triangular", lambda: lx.Triangular(), "lower", 1e-10),
    ("Tridiagonal", lambda: lx.Tridiagonal(), "tridiagonal", 1e-10),
    ("Normal-Cholesky-tall", lambda: lx.Normal(lx.Cholesky()), "tall", 1e-9),
    ("CG", lambda: lx.CG(**_ITER), "spd", 1e-8),
    ("BiCGStab", lambda: lx.BiCGStab(**_ITER), "general", 1e-8),
    ("GMRES", lambda: lx.GMRES(**_ITER), "general", 1e-8),
    ("MINRES", lambda: lx.MINRES(**_ITER), "symmetric_indefinite", 1e-8),
    ("LSQR-tall", lambda: lx.LSQR(**_ITER), "tall", 1e-8),
    ("LSMR-wide", lambda: lx.LSMR(**_ITER), "wide", 1e-8),
]


def _operator(kind, a):
    op = lx.MatrixLinearOperator(jnp.asarray(a), _TAGS.get(kind, ()))
    return op


@pytest.mark.parametrize("throw", [True, False])
@pytest.mark.parametrize("name,make_solver,kind,tol", CASES, ids=[c[0] for c in CASES])
def test_linear_transpose_is_pinv_transpose(name, make_solver, kind, tol, throw, rng):
    a = _matrix(kind, rng)
    m, n = a.shape
    op = _operator(kind, a)
    solver = make_solver()

    def solve(v):
        return lx.linear_solve(op, v, solver, throw=throw).value

    transpose = jax.linear_transpose(solve, jax.ShapeDtypeStruct((m,), jnp.float64))
    c = rng.standard_normal(n)
    (got,) = transpose(jnp.asarray(c))
    want = np.linalg.pinv(a).T @ c
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.max(np.abs(want)))
    if throw:  # jit and vmap over cotangents, with the run-time check (once per solver: cost)
        cs = rng.standard_normal((3, n))
        (got_batch,) = jax.jit(jax.vmap(transpose))(jnp.asarray(cs))
        want_batch = cs @ np.linalg.pinv(a)
        np.testing.assert_allclose(
            got_batch, want_batch, rtol=tol, atol=tol * np.max(np.abs(want_batch))
        )


@pytest.mark.parametrize("throw", [True, False])
def test_linear_transpose_sparse(throw, rng):
    k = 6
    t = sp.diags([-1.0, 2.5, -1.2], [-1, 0, 1], shape=(k, k))
    a = (sp.kron(sp.identity(k), t) + sp.kron(t, sp.identity(k))).tocoo()
    n = k * k
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    transpose = jax.linear_transpose(
        lambda v: lx.linear_solve(op, v, lx.SparseLU(backend="superlu"), throw=throw).value,
        jax.ShapeDtypeStruct((n,), jnp.float64),
    )
    c = rng.standard_normal(n)
    (got,) = jax.jit(transpose)(jnp.asarray(c))
    np.testing.assert_allclose(got, np.linalg.solve(a.toarray().T, c), rtol=1e-10)


def test_linear_transpose_raises_in_the_transposed_solve():
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]])
    transpose = jax.linear_transpose(
        lambda v: lx.linear_solve(lx.MatrixLinearOperator(singular), v, lx.LU()).value,
        jax.ShapeDtypeStruct((2,), jnp.float64),
    )
    with pytest.raises((RuntimeError, ValueError), match="singular"):
        jax.block_until_ready(transpose(jnp.ones(2)))
    with pytest.raises((RuntimeError, ValueError), match="singular"):
        jax.block_until_ready(jax.jit(transpose)(jnp.ones(2)))
    # throw=False: the transposed solve does not raise either; its output is not finite.
    quiet = jax.linear_transpose(
        lambda v: lx.linear_solve(lx.MatrixLinearOperator(singular), v, lx.LU(), throw=False).value,
        jax.ShapeDtypeStruct((2,), jnp.float64),
    )
    (out,) = quiet(jnp.ones(2))
    assert not np.all(np.isfinite(out))


@pytest.mark.parametrize("solver", [lx.LU(), lx.GMRES(rtol=1e-12, atol=1e-12)], ids=["LU", "GMRES"])
def test_grad_through_checkpointed_scan_of_solves(solver, rng):
    """An implicit time stepper, `(I - h A(p)) y_{k+1} = y_k`, rematerialised by `jax.checkpoint`
    inside `lax.scan` and reverse-differentiated: JAX transposes the linearised body, solves included.
    Reference: the same program with `jnp.linalg.solve`."""
    n, steps, h = 5, 6, 0.1
    base = rng.standard_normal((n, n))
    y0 = jnp.asarray(rng.standard_normal(n))

    def a_of(p):
        return jnp.asarray(base) * p[0] - p[1] * jnp.eye(n)

    def run(p, solve):
        m = jnp.eye(n) - h * a_of(p)

        @jax.checkpoint
        def body(y, _):
            return solve(m, y), None

        y, _ = jax.lax.scan(body, y0, None, length=steps)
        return jnp.sum(y**2)

    def lx_solve(m, y):
        return lx.linear_solve(lx.MatrixLinearOperator(m), y, solver).value

    p = jnp.array([0.3, 1.0])
    got = jax.jit(jax.grad(lambda p: run(p, lx_solve)))(p)
    want = jax.grad(lambda p: run(p, jnp.linalg.solve))(p)
    np.testing.assert_allclose(got, want, rtol=1e-8)
