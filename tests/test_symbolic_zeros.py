"""Operator tangents that vanish on part of the output (symbolic zeros). The Levenberg-Marquardt
pattern: `(J @ y, sqrt(lam) * y)` differentiated in `lam` has a zero tangent on `J @ y`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linopx as lx

_ITER = dict(rtol=1e-12, atol=1e-12)
SOLVERS = [
    lx.AutoLinearSolver(well_posed=None),
    lx.QR(),
    lx.SVD(),
    lx.Normal(lx.Cholesky()),
    lx.LSQR(**_ITER),
    lx.LSMR(**_ITER),
]


def _problem(rng):
    j = jnp.asarray(rng.standard_normal((5, 3)))
    k = jnp.asarray(rng.standard_normal((4, 2)))
    r = jnp.asarray(rng.standard_normal(5))
    return j, k, r


def _solve(p, solver, j, k, r):
    lam, mu = p[0], p[1]
    struct = (jax.ShapeDtypeStruct((3,), jnp.float64), jax.ShapeDtypeStruct((2,), jnp.float64))

    def mv(y):
        # Each output part depends on at most one parameter: every tangent has symbolic zeros.
        return (j @ y[0], jnp.sqrt(lam) * y[0], mu * (k @ y[1]), y[1])

    op = lx.FunctionLinearOperator(mv, struct)
    rhs = (r, jnp.zeros(3), mu * jnp.ones(4), jnp.zeros(2))
    x = lx.linear_solve(op, rhs, solver, throw=False).value
    return jnp.concatenate(x)


def _reference(p, j, k, r):
    """The same least-squares problem with the block matrix formed and the normal equations
    solved by `jnp.linalg.solve` (well conditioned here)."""
    lam, mu = p[0], p[1]
    top = jnp.concatenate([j, jnp.zeros((5, 2))], axis=1)
    mid = jnp.concatenate([jnp.sqrt(lam) * jnp.eye(3), jnp.zeros((3, 2))], axis=1)
    low = jnp.concatenate([jnp.zeros((4, 3)), mu * k], axis=1)
    bot = jnp.concatenate([jnp.zeros((2, 3)), jnp.eye(2)], axis=1)
    m = jnp.concatenate([top, mid, low, bot])
    b = jnp.concatenate([r, jnp.zeros(3), mu * jnp.ones(4), jnp.zeros(2)])
    return jnp.linalg.solve(m.T @ m, m.T @ b)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0), (0.7, -0.3)])
def test_jvp_with_partly_zero_operator_tangent(solver, direction, rng):
    j, k, r = _problem(rng)
    p = jnp.array([2.0, 1.5])
    t = jnp.asarray(direction)
    x, dx = jax.jvp(lambda p: _solve(p, solver, j, k, r), (p,), (t,))
    x_ref, dx_ref = jax.jvp(lambda p: _reference(p, j, k, r), (p,), (t,))
    # Normal equations of a matrix with cond ~ 10: ~1e-13 accuracy; iterative solvers to 1e-12.
    np.testing.assert_allclose(x, x_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVERS[:2] + SOLVERS[-1:], ids=lambda s: type(s).__name__)
def test_grad_with_partly_zero_operator_tangent(solver, rng):
    j, k, r = _problem(rng)
    p = jnp.array([2.0, 1.5])
    g = jax.jit(jax.grad(lambda p: jnp.sum(_solve(p, solver, j, k, r) ** 2)))(p)
    g_ref = jax.grad(lambda p: jnp.sum(_reference(p, j, k, r) ** 2))(p)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-10)
