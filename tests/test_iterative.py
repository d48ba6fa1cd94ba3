"""Iterative solvers (CG, BiCGStab, GMRES, MINRES, LSQR, LSMR) against dense float64 references.

Tolerances: the solvers run with rtol = 1e-10 (1e-12 for gradients) on matrices of condition
number at most ~10, so the forward error is at most ~cond * rtol ≈ 1e-9 relative; we check 1e-8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla
from helpers import make_matrix, pinv_jvp, pinv_vjp, random_vector

import linopx as lx

RTOL = 1e-10
CHECK = {"rtol": 1e-8, "atol": 1e-8}


def spd(rng, n, dtype=np.float64):
    return make_matrix(rng, (n, n), dtype, "spd")


def nonsymmetric(rng, n, dtype=np.float64):
    # Singular values of the "general" matrix are in [1, 3], but its eigenvalues surround the
    # origin, which restarted GMRES handles badly; a shift puts them in the disk |z - 1.5| <= 1.
    return (make_matrix(rng, (n, n), dtype, "general") / 3 + 1.5 * np.eye(n)).astype(dtype)


def indefinite(rng, n):
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    ev = rng.uniform(1, 3, n) * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    a = (q * ev) @ q.T
    return (a + a.T) / 2


def laplacian_1d(n):
    def fn(u):
        p = jnp.pad(u, 1)
        return 2 * u - p[:-2] - p[2:]

    op = lx.FunctionLinearOperator(
        fn, jax.ShapeDtypeStruct((n,), jnp.float64), lx.positive_semidefinite_tag
    )
    dense = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    return op, dense


def laplacian_2d(n):
    def fn(u):
        p = jnp.pad(u, 1)
        return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]

    op = lx.FunctionLinearOperator(
        fn, jax.ShapeDtypeStruct((n, n), jnp.float64), lx.positive_semidefinite_tag
    )
    t = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    dense = np.kron(t, np.eye(n)) + np.kron(np.eye(n), t)
    return op, dense


SQUARE_SOLVERS = {
    "CG": lambda **kw: lx.CG(rtol=RTOL, atol=0.0, **kw),
    "BiCGStab": lambda **kw: lx.BiCGStab(rtol=RTOL, atol=0.0, **kw),
    "GMRES": lambda **kw: lx.GMRES(rtol=RTOL, atol=0.0, restart=8, **kw),
    "MINRES": lambda **kw: lx.MINRES(rtol=RTOL, atol=0.0, **kw),
}
LS_SOLVERS = {
    "LSQR": lambda **kw: lx.LSQR(rtol=RTOL, atol=0.0, **kw),
    "LSMR": lambda **kw: lx.LSMR(rtol=RTOL, atol=0.0, **kw),
}
ALL = {**SQUARE_SOLVERS, **LS_SOLVERS}


def _solve(a, b, solver, tags=(), options=None, throw=True):
    return lx.linear_solve(
        lx.MatrixLinearOperator(a, tags), b, solver, options=options, throw=throw
    )


# ---------------------------------------------------------------------------------------------
# Forward solves


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("precondition", [False, True])
def test_spd_against_dense(rng, name, precondition):
    # An SPD matrix suits every method (MINRES via the PSD tag); with a Jacobi preconditioner
    # and a nonzero initial guess.
    n = 12
    a, b = spd(rng, n), random_vector(rng, n, np.float64)
    options = None
    if precondition:
        op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
        options = {"preconditioner": lx.jacobi_preconditioner(op), "y0": jnp.ones(n)}
    sol = _solve(a, b, ALL[name](), lx.positive_semidefinite_tag, options)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    assert sol.result == lx.RESULTS.successful
    assert int(sol.stats["num_steps"]) >= 1
    assert float(sol.stats["residual_norm"]) <= RTOL * np.linalg.norm(b) * (1 + 1e-12)


@pytest.mark.parametrize("name", ["BiCGStab", "GMRES"])
def test_nonsymmetric(rng, name):
    n = 15
    a, b = nonsymmetric(rng, n), random_vector(rng, n, np.float64)
    sol = _solve(a, b, ALL[name]())
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)


def test_minres_indefinite_and_cg_nsd(rng):
    n = 14
    a, b = indefinite(rng, n), random_vector(rng, n, np.float64)
    sol = _solve(a, b, SQUARE_SOLVERS["MINRES"](), lx.symmetric_tag)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    # CG on a negative definite operator solves (-A) x = -b.
    nsd = -spd(rng, n)
    sol = _solve(nsd, b, SQUARE_SOLVERS["CG"](), lx.negative_semidefinite_tag)
    np.testing.assert_allclose(sol.value, np.linalg.solve(nsd, b), **CHECK)


@pytest.mark.parametrize("dim", [1, 2])
def test_matrix_free_laplacian(rng, dim):
    # Condition number of the 1D Laplacian of size 30 is ~400, the 2D one of size 8² ~32: 1e-10 *
    # cond stays below the 1e-7 checked.
    op, dense = laplacian_1d(30) if dim == 1 else laplacian_2d(8)
    shape = op.in_structure().shape
    b = rng.standard_normal(shape)
    ref = np.linalg.solve(dense, b.reshape(-1)).reshape(shape)
    for solver in (
        lx.CG(rtol=RTOL, atol=0.0),
        lx.GMRES(rtol=RTOL, atol=0.0),
        lx.MINRES(rtol=RTOL, atol=0.0),
    ):
        x = lx.linear_solve(op, jnp.asarray(b), solver).value
        assert x.shape == shape
        np.testing.assert_allclose(x, ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", list(LS_SOLVERS))
@pytest.mark.parametrize("shape", [(20, 8), (8, 20)], ids=["tall", "wide"])
def test_least_squares(rng, name, shape):
    a = make_matrix(rng, shape, np.float64)
    b = random_vector(rng, shape[0], np.float64)
    sol = _solve(a, b, LS_SOLVERS[name]())
    np.testing.assert_allclose(sol.value, np.linalg.pinv(a) @ b, **CHECK)
    ref = (spla.lsqr if name == "LSQR" else spla.lsmr)(a, b, atol=1e-12, btol=1e-12)[0]
    np.testing.assert_allclose(sol.value, ref, **CHECK)


@pytest.mark.parametrize("name", list(LS_SOLVERS))
def test_rank_deficient_least_squares(rng, name):
    # From x0 = 0 LSQR/LSMR converge to the minimum-norm least-squares solution pinv(A) b.
    a = make_matrix(rng, (15, 10), np.float64, "rank_deficient(4)")
    b = random_vector(rng, 15, np.float64)
    sol = _solve(a, b, LS_SOLVERS[name]())
    np.testing.assert_allclose(sol.value, np.linalg.pinv(a) @ b, **CHECK)


@pytest.mark.parametrize("name", list(LS_SOLVERS))
def test_damped(rng, name):
    a = make_matrix(rng, (14, 9), np.float64)
    b = random_vector(rng, 14, np.float64)
    d = 0.8
    x = _solve(a, b, LS_SOLVERS[name](damp=d)).value
    closed = np.linalg.solve(a.T @ a + d**2 * np.eye(9), a.T @ b)
    np.testing.assert_allclose(x, closed, **CHECK)
    scipy_fn = spla.lsqr if name == "LSQR" else spla.lsmr
    np.testing.assert_allclose(x, scipy_fn(a, b, damp=d, atol=1e-12, btol=1e-12)[0], **CHECK)


@pytest.mark.parametrize("name", ["CG", "GMRES", "LSQR", "BiCGStab"])
def test_complex(rng, name):
    n = 10
    b = random_vector(rng, n, np.complex128)
    if name == "CG":
        a, tags = spd(rng, n, np.complex128), lx.positive_semidefinite_tag
    else:
        a, tags = nonsymmetric(rng, n, np.complex128), ()
    sol = _solve(a, b, ALL[name](), tags)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    # A real operator with a complex right-hand side.
    ar = spd(rng, n)
    x = _solve(ar, b, ALL[name](), lx.positive_semidefinite_tag).value
    np.testing.assert_allclose(x, np.linalg.solve(ar, b), **CHECK)


def _hermitian_direction(rng, n):
    e = random_vector(rng, n * n, np.complex128).reshape(n, n)
    return (e + e.conj().T) / 2


@pytest.mark.parametrize(
    "kind, tag",
    [("spd", lx.positive_semidefinite_tag), ("nsd", lx.negative_semidefinite_tag)],
    ids=["psd", "nsd"],
)
def test_minres_complex_hermitian(rng, kind, tag):
    # MINRES takes a complex operator only when it is tagged (Hermitian) semidefinite: there is no
    # tag for "Hermitian" alone, so a complex Hermitian *indefinite* operator cannot be passed
    # (a complex `symmetric_tag` means A = Aᵀ, which MINRES rightly refuses, below). Here the
    # accepted cases, with derivatives along a Hermitian direction (which keeps the tag true).
    n = 10
    a = make_matrix(rng, (n, n), np.complex128, kind)
    b, db = random_vector(rng, n, np.complex128), random_vector(rng, n, np.complex128)
    u = random_vector(rng, n, np.complex128)
    da = _hermitian_direction(rng, n)
    solver = lx.MINRES(rtol=1e-12, atol=0.0)

    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tag), b, solver).value

    @jax.jit
    def everything(a, b, da, db, u):
        x, dx = jax.jvp(f, (a, b), (da, db))
        return x, dx, *jax.vjp(f, a, b)[1](u)

    x, dx, ga, gb = everything(a, b, da, db, u)
    x_ref, dx_ref = pinv_jvp(a, b, da, db)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), **CHECK)
    np.testing.assert_allclose(dx, dx_ref, **CHECK)
    np.testing.assert_allclose(gb, np.linalg.solve(a.T, u), **CHECK)  # gb = A⁻ᵀ u
    # The dot-product test: Re <u, dx> = Re <gA, dA> + Re <gb, db> (no conjugation, JAX's pairing).
    lhs = np.real(np.sum(u * dx))
    np.testing.assert_allclose(lhs, np.real(np.sum(ga * da) + np.sum(gb * db)), rtol=1e-8)
    with pytest.raises(ValueError, match="MINRES needs a symmetric"):
        sym = make_matrix(rng, (n, n), np.complex128, "symmetric")
        lx.linear_solve(lx.MatrixLinearOperator(sym, lx.symmetric_tag), b, solver)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)], ids=["tall", "wide"])
def test_lsmr_complex(rng, shape):
    # Complex least squares (tall, with a residual) and minimum norm (wide), with derivatives: the
    # JVP and the VJP against the closed-form derivative of the pseudoinverse (`helpers.pinv_jvp`,
    # `pinv_vjp`, NumPy), with rtol = 1e-12 (error ~ kappa² rtol ≈ 1e-11).
    a = make_matrix(rng, shape, np.complex128)
    b, db = random_vector(rng, shape[0], np.complex128), random_vector(rng, shape[0], np.complex128)
    da = random_vector(rng, a.size, np.complex128).reshape(shape)
    u = random_vector(rng, shape[1], np.complex128)
    solver = lx.LSMR(rtol=1e-12, atol=0.0)

    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value

    @jax.jit
    def everything(a, b, da, db, u):
        x, dx = jax.jvp(f, (a, b), (da, db))
        return x, dx, *jax.vjp(f, a, b)[1](u)

    x, dx, ga, gb = everything(a, b, da, db, u)
    np.testing.assert_allclose(x, np.linalg.lstsq(a, b, rcond=None)[0], **CHECK)
    np.testing.assert_allclose(x, spla.lsmr(a, b, atol=1e-12, btol=1e-12)[0], **CHECK)
    _, dx_ref = pinv_jvp(a, b, da, db)
    ga_ref, gb_ref = pinv_vjp(a, b, u)
    np.testing.assert_allclose(dx, dx_ref, **CHECK)
    np.testing.assert_allclose(ga, ga_ref, **CHECK)
    np.testing.assert_allclose(gb, gb_ref, **CHECK)


def test_float32(rng):
    n = 10
    a = spd(rng, n, np.float32)
    b = random_vector(rng, n, np.float32)
    x = _solve(a, b, lx.CG(rtol=1e-5, atol=0.0), lx.positive_semidefinite_tag).value
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, np.linalg.solve(a.astype(np.float64), b), rtol=1e-4, atol=1e-4)


def test_pytree_vectors(rng):
    # A dict-in, dict-out operator (same structure): vectors stay pytrees; and a dict -> tuple
    # operator (different structures) for the least-squares solvers.
    n = 8
    a = spd(rng, n)
    s = {"p": jax.ShapeDtypeStruct((3,), jnp.float64), "q": jax.ShapeDtypeStruct((5,), jnp.float64)}

    def fn(v):
        y = jnp.asarray(a) @ jnp.concatenate([v["p"], v["q"]])
        return {"p": y[:3], "q": y[3:]}

    op = lx.FunctionLinearOperator(fn, s, lx.positive_semidefinite_tag)
    b = random_vector(rng, n, np.float64)
    ref = np.linalg.solve(a, b)
    for solver in (SQUARE_SOLVERS["CG"](), SQUARE_SOLVERS["GMRES"](), LS_SOLVERS["LSMR"]()):
        x = lx.linear_solve(op, {"p": b[:3], "q": b[3:]}, solver).value
        np.testing.assert_allclose(np.concatenate([x["p"], x["q"]]), ref, **CHECK)
    tall = make_matrix(rng, (10, n), np.float64)

    def fn2(v):
        y = jnp.asarray(tall) @ jnp.concatenate([v["p"], v["q"]])
        return (y[:4], y[4:])

    op2 = lx.FunctionLinearOperator(fn2, s)
    b2 = random_vector(rng, 10, np.float64)
    x = lx.linear_solve(op2, (b2[:4], b2[4:]), LS_SOLVERS["LSQR"]()).value
    np.testing.assert_allclose(np.concatenate([x["p"], x["q"]]), np.linalg.pinv(tall) @ b2, **CHECK)


# ---------------------------------------------------------------------------------------------
# The options are used: a preconditioner cuts the steps, an exact initial guess needs none
#
# The answers match with or without a preconditioner or `y0` (that is the point of them), so only
# the step counts show that a solver uses them.


def badly_scaled_spd(rng, n, spread=1e3):
    """`S B S`: `B` symmetric with unit diagonal and off-diagonal row sums at most 0.5 (so its
    eigenvalues lie in [0.5, 1.5]), `S` diagonal with entries spread over [1, spread]. Its
    condition number is about spread², but Jacobi preconditioning (`M = S⁻²`) brings it back to
    that of `B` (<= 3) for the left/split preconditioners of CG and MINRES; for the right
    preconditioners of GMRES and BiCGStab, `A M = S B S⁻¹` is similar to `B`, so it has the same
    (clustered) eigenvalues."""
    e = rng.uniform(-1, 1, (n, n))
    e = (e + e.T) / 2
    np.fill_diagonal(e, 0)
    e *= 0.5 / np.abs(e).sum(axis=1).max()
    s = rng.permutation(np.geomspace(1, spread, n))
    return s[:, None] * (np.eye(n) + e) * s[None, :]


def badly_scaled_columns(rng, m, n, spread=1e4):
    """`Q S`: `Q` (m x n) with orthonormal columns and `S` diagonal over [1, spread] (condition
    number `spread`). The right preconditioner of LSQR/LSMR, `N = diag(1 / column norms)`, undoes
    the scaling: `A N = Q`, for which one step solves the least-squares problem."""
    q = np.linalg.qr(rng.standard_normal((m, n)))[0]
    return q * rng.permutation(np.geomspace(1, spread, n))


def _steps(sol, allow_max_steps=False):
    ok = sol.result == lx.RESULTS.successful
    assert ok or (allow_max_steps and sol.result == lx.RESULTS.max_steps_reached)
    return int(sol.stats["num_steps"])


@pytest.mark.parametrize("name", list(ALL))
def test_preconditioner_and_y0_are_used(rng, name):
    if name in SQUARE_SOLVERS:
        # Jacobi on a badly scaled SPD matrix (condition number ~1e6, ~3 after preconditioning).
        n = 30
        a = badly_scaled_spd(rng, n)
        op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
        good = lx.jacobi_preconditioner(op)
        # The identity, built the same way (so the same pytree structure: one compiled program).
        none = lx.jacobi_preconditioner(lx.MatrixLinearOperator(np.eye(n), op.tags))
    else:
        # Column scaling for a tall least-squares problem with badly scaled columns.
        a = badly_scaled_columns(rng, 40, 15)
        n = a.shape[1]
        op = lx.MatrixLinearOperator(a)
        good = lx.DiagonalLinearOperator(jnp.asarray(1 / np.linalg.norm(a, axis=0)))
        none = lx.DiagonalLinearOperator(jnp.ones(n))
    b = random_vector(rng, a.shape[0], np.float64)
    x = np.linalg.lstsq(a, b, rcond=None)[0]  # = solve(a, b) for the square case
    solver = ALL[name]()

    # One program (compilation is the cost here), run with different option values: what changes
    # between the runs is only the preconditioner's or y0's value, so a solver that ignored
    # either would take the same steps each time.
    @jax.jit
    def solve(precond, y0):
        options = {"preconditioner": precond, "y0": y0}
        return lx.linear_solve(op, b, solver, options=options, throw=False)

    zero = jnp.zeros(n)
    plain, preconditioned, warm = solve(none, zero), solve(good, zero), solve(none, jnp.asarray(x))
    # The same answer (the preconditioned solve is accurate: its system is well conditioned, so
    # its error is ~rtol * cond(A M) ~ 3e-10).
    np.testing.assert_allclose(preconditioned.value, x, rtol=1e-8, atol=0)
    # The preconditioner cuts the number of steps at least threefold (measured: CG 109 -> 11,
    # BiCGStab 222 -> 7, MINRES 130 -> 11, LSQR and LSMR 40 -> 1; GMRES with restart=8 does not
    # converge at all in its default 10 n = 300 steps, and takes 12 preconditioned).
    steps, plain_steps = _steps(preconditioned), _steps(plain, allow_max_steps=True)
    assert steps * 3 <= plain_steps, (steps, plain_steps)
    # Starting at the solution: the initial residual meets the tolerance (checked here, as float64
    # rounding of A x on a badly conditioned A could in principle exceed rtol |b|), so the square
    # methods take no step at all and return y0 unchanged. LSQR and LSMR only test |r| <= tol
    # before their first step; for this inconsistent (tall) problem |r| is of order one, and one
    # step (one product with A and one with Aᴴ) shows that |Aᴴ r| is small: their convention is 1.
    if name in SQUARE_SOLVERS:
        assert np.linalg.norm(b - a @ x) <= RTOL * np.linalg.norm(b)
        assert _steps(warm) == 0
        np.testing.assert_array_equal(warm.value, x)
    else:
        assert np.linalg.norm(b - a @ x) > 0.1 * np.linalg.norm(b)
        assert _steps(warm) == 1
        np.testing.assert_allclose(warm.value, x, rtol=1e-8, atol=0)


# ---------------------------------------------------------------------------------------------
# Derivatives


@pytest.mark.parametrize("name", list(ALL))
def test_grad_square(rng, name):
    n = 8
    a = spd(rng, n)
    b = random_vector(rng, n, np.float64)
    solver = ALL[name]()

    def loss(a, b):
        op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
        x = lx.linear_solve(op, b, eqx_replace_rtol(solver, 1e-12)).value
        return jnp.sum(jnp.sin(x))

    def ref(a, b):
        return jnp.sum(jnp.sin(jnp.linalg.solve(a, b)))

    g = jax.grad(loss, argnums=(0, 1))(a, b)
    gr = jax.grad(ref, argnums=(0, 1))(a, b)
    for x, y in zip(g, gr):
        np.testing.assert_allclose(x, y, **CHECK)


def eqx_replace_rtol(solver, rtol):
    import equinox as eqx

    return eqx.tree_at(lambda s: s.rtol, solver, rtol)


@pytest.mark.parametrize("name", list(LS_SOLVERS))
def test_grad_least_squares(rng, name):
    # Rank-deficient and tall: every term of the pseudoinverse derivative is exercised.
    a = make_matrix(rng, (9, 6), np.float64, "rank_deficient(4)")
    b = random_vector(rng, 9, np.float64)
    solver = eqx_replace_rtol(LS_SOLVERS[name](), 1e-13)

    def loss(a, b):
        return jnp.sum(jnp.sin(lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value))

    def ref(a, b):
        return jnp.sum(jnp.sin(jnp.linalg.pinv(a) @ b))

    g = jax.grad(loss, argnums=(0, 1))(a, b)
    gr = jax.grad(ref, argnums=(0, 1))(a, b)
    for x, y in zip(g, gr):
        np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", list(LS_SOLVERS))
def test_grad_damped(rng, name):
    a = make_matrix(rng, (10, 6), np.float64)
    b = random_vector(rng, 10, np.float64)

    def loss(a, b, d):
        solver = eqx_replace_rtol(LS_SOLVERS[name](damp=d), 1e-13)
        return jnp.sum(jnp.sin(lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value))

    def ref(a, b, d):
        return jnp.sum(jnp.sin(jnp.linalg.solve(a.T @ a + d**2 * jnp.eye(6), a.T @ b)))

    g = jax.grad(loss, argnums=(0, 1, 2))(a, b, 0.7)
    gr = jax.grad(ref, argnums=(0, 1, 2))(a, b, 0.7)
    for x, y in zip(g, gr):
        np.testing.assert_allclose(x, y, **CHECK)


def test_jvp_against_finite_differences(rng):
    n = 8
    a = nonsymmetric(rng, n)
    b = random_vector(rng, n, np.float64)
    da = rng.standard_normal((n, n))
    solver = lx.GMRES(rtol=1e-13, atol=0.0)

    def f(a):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value

    _, t = jax.jvp(f, (a,), (da,))
    eps = 1e-6
    fd = (f(a + eps * da) - f(a - eps * da)) / (2 * eps)
    # Central differences: O(eps²) truncation plus O(1e-13 / eps) solve noise, ~1e-7.
    np.testing.assert_allclose(t, fd, rtol=1e-6, atol=1e-6)


def test_transposed_options_are_used(rng):
    # Reverse mode solves with Aᵀ: the preconditioner must be transposed (and still work).
    n = 10
    a = nonsymmetric(rng, n)
    b = random_vector(rng, n, np.float64)
    m = lx.MatrixLinearOperator(np.linalg.inv(a) + 0.01 * rng.standard_normal((n, n)))
    solver = lx.GMRES(rtol=1e-12, atol=0.0)
    state = solver.init(lx.MatrixLinearOperator(a), {"preconditioner": m, "y0": jnp.ones(n)})
    _, options_t = solver.transpose(state, {"preconditioner": m, "y0": jnp.ones(n)})
    np.testing.assert_allclose(options_t["preconditioner"].as_matrix(), m.as_matrix().T)
    assert "y0" in options_t

    # ... and used: with the exact inverse as preconditioner, A M = I and (the reverse solve's)
    # Aᵀ Mᵀ = I take one step each, so max_steps=2 suffices; had the reverse solve kept M
    # (Aᵀ A⁻¹ is no multiple of I) or dropped it, GMRES would need up to n = 10 steps and the
    # gradient would raise `max_steps_reached`.
    exact = lx.MatrixLinearOperator(np.linalg.inv(a))
    short = lx.GMRES(rtol=1e-12, atol=0.0, max_steps=2)

    def loss(b):
        return jnp.sum(
            lx.linear_solve(
                lx.MatrixLinearOperator(a), b, short, options={"preconditioner": exact}
            ).value
        )

    np.testing.assert_allclose(jax.grad(loss)(b), np.linalg.solve(a.T, np.ones(n)), **CHECK)
    with pytest.raises(Exception, match="did not reach its tolerance"):
        # The premise: without the preconditioner two steps are not enough.
        jax.block_until_ready(lx.linear_solve(lx.MatrixLinearOperator(a.T), b, short).value)
    # A tall LSQR: y0 (size n) does not fit the transposed problem (size m) and is dropped.
    ls = lx.LSQR(rtol=RTOL, atol=0.0)
    tall = lx.MatrixLinearOperator(make_matrix(rng, (6, 4), np.float64))
    st = ls.init(tall, {})
    _, opt_t = ls.transpose(
        st,
        {
            "y0": jnp.ones(4),
            "preconditioner": lx.IdentityLinearOperator(jax.ShapeDtypeStruct((4,), jnp.float64)),
        },
    )
    assert "y0" not in opt_t and "preconditioner" not in opt_t


# ---------------------------------------------------------------------------------------------
# Batching


def test_vmap_each_member_judged_alone(rng):
    # One right-hand side is the zero vector (converges at once), one needs many steps, one is
    # limited by a tiny max_steps: results are per member.
    n = 12
    a = laplacian_1d(n)[1] + 0.01 * np.eye(n)
    bs = np.stack([np.zeros(n), random_vector(rng, n, np.float64), np.eye(n)[0]])
    solver = lx.CG(rtol=RTOL, atol=0.0, max_steps=n)
    op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    sols = jax.jit(jax.vmap(lambda b: lx.linear_solve(op, b, solver, throw=False)))(bs)
    np.testing.assert_allclose(sols.value, np.linalg.solve(a, bs.T).T, **CHECK)
    assert bool(jnp.all(sols.result == lx.RESULTS.successful))
    steps = np.asarray(sols.stats["num_steps"])
    assert steps[0] == 0 and steps[1] > 1
    # Now a second member that cannot converge in 2 steps next to one that converges in 1.
    mats = np.stack([np.eye(n) * 2.0, a])
    f = jax.vmap(
        lambda m, b: lx.linear_solve(
            lx.MatrixLinearOperator(m, lx.positive_semidefinite_tag),
            b,
            lx.CG(rtol=RTOL, atol=0.0, max_steps=2),
            throw=False,
        )
    )
    sols = f(mats, bs[1:])
    ok = np.asarray(sols.result == lx.RESULTS.successful)
    maxed = np.asarray(sols.result == lx.RESULTS.max_steps_reached)
    assert ok.tolist() == [True, False] and maxed.tolist() == [False, True]
    np.testing.assert_allclose(sols.value[0], bs[1] / 2, **CHECK)
    assert np.asarray(sols.stats["num_steps"]).tolist() == [1, 2]


def test_vmap_over_operator_least_squares(rng):
    mats = np.stack([make_matrix(rng, (9, 5), np.float64) for _ in range(3)])
    b = random_vector(rng, 9, np.float64)
    f = jax.vmap(
        lambda m: lx.linear_solve(lx.MatrixLinearOperator(m), b, LS_SOLVERS["LSMR"]()).value
    )
    np.testing.assert_allclose(f(mats), np.stack([np.linalg.pinv(m) @ b for m in mats]), **CHECK)


# ---------------------------------------------------------------------------------------------
# Failures and invariants


@pytest.mark.parametrize("name", list(ALL))
def test_max_steps(rng, name):
    n = 20
    a = spd(rng, n) if name not in LS_SOLVERS else make_matrix(rng, (25, n), np.float64)
    b = random_vector(rng, a.shape[0], np.float64)
    solver = eqx_replace_rtol(ALL[name](max_steps=2), 1e-14)
    tags = lx.positive_semidefinite_tag if name not in LS_SOLVERS else ()
    sol = _solve(a, b, solver, tags, throw=False)
    assert sol.result == lx.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 2
    with pytest.raises(Exception, match="did not reach its tolerance"):
        _solve(a, b, solver, tags, throw=True).value.block_until_ready()


def test_never_successful_above_tolerance(rng):
    # Ask for more than float32 can give: the answer must not be "successful" with a residual
    # above the tolerance, whatever the solver reports instead.
    n = 30
    a = make_matrix(rng, (n, n), np.float32, "spd")
    b = random_vector(rng, n, np.float32)
    for solver in (
        lx.CG(rtol=1e-12, atol=0.0),
        lx.GMRES(rtol=1e-12, atol=0.0),
        lx.BiCGStab(rtol=1e-12, atol=0.0),
    ):
        sol = _solve(a, b, solver, lx.positive_semidefinite_tag, throw=False)
        r = np.linalg.norm(
            b.astype(np.float64) - a.astype(np.float64) @ np.asarray(sol.value, np.float64)
        )
        ok = sol.result == lx.RESULTS.successful
        assert (not ok) or r <= 1e-12 * np.linalg.norm(b) * 10
        assert sol.result != lx.RESULTS.successful or float(
            sol.stats["residual_norm"]
        ) <= 1e-12 * np.linalg.norm(b)


def _ill_conditioned_float32(seed, n, cond):
    # A symmetric positive definite float32 matrix with eigenvalues spread geometrically over
    # [1, cond]: in float32 the residual CG updates drifts away from the true one.
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.geomspace(1, cond, n)) @ q.T
    return ((a + a.T) / 2).astype(np.float32), rng.normal(size=n).astype(np.float32)


def _true_relative_residual(a, b, x):
    a, b, x = (np.asarray(v, np.float64) for v in (a, b, x))
    return np.linalg.norm(b - a @ x) / np.linalg.norm(b)


def test_cg_drift_is_not_success():
    # Here the residual that CG updates meets rtol = 3e-5 while the true one does not: plain CG
    # (jax.scipy) stops there silently. linopx's CG checks the true residual at the end and reports
    # `stagnation`, with the true residual norm in its stats.
    a, b = _ill_conditioned_float32(0, 200, 1e3)
    rtol = 3e-5
    x_plain, _ = jax.scipy.sparse.linalg.cg(jnp.asarray(a), jnp.asarray(b), tol=rtol, atol=0.0)
    assert _true_relative_residual(a, b, x_plain) > rtol  # the premise: the recurrence drifted
    sol = _solve(a, b, lx.CG(rtol=rtol, atol=0.0), lx.positive_semidefinite_tag, throw=False)
    assert sol.result == lx.RESULTS.stagnation
    true = _true_relative_residual(a, b, sol.value)
    assert true > rtol
    # The reported residual is the true one, computed in float32: b - A x loses about
    # eps32 |A| |x| ≈ 6e-8 · 1e3 |b| to rounding, a sizeable part of a residual of 3e-5 |b|.
    np.testing.assert_allclose(
        float(sol.stats["residual_norm"]) / np.linalg.norm(b), true, rtol=0.1
    )
    with pytest.raises(Exception, match="stagnated"):
        _solve(
            a, b, lx.CG(rtol=rtol, atol=0.0), lx.positive_semidefinite_tag
        ).value.block_until_ready()


def test_cg_max_steps_reports_true_residual(rng):
    a = spd(rng, 20)
    b = random_vector(rng, 20, np.float64)
    sol = _solve(
        a, b, lx.CG(rtol=1e-14, atol=0.0, max_steps=3), lx.positive_semidefinite_tag, throw=False
    )
    assert sol.result == lx.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 3
    np.testing.assert_allclose(
        float(sol.stats["residual_norm"]), np.linalg.norm(b - a @ np.asarray(sol.value)), rtol=1e-10
    )


def test_breakdown(rng):
    # CG on a PSD-tagged operator that is indefinite: pᵀAp < 0 at the first step for b = e_1.
    a = np.diag([-1.0, 2.0, 3.0])
    sol = _solve(
        a,
        np.array([1.0, 0.0, 0.0]),
        lx.CG(rtol=RTOL, atol=0.0),
        lx.positive_semidefinite_tag,
        throw=False,
    )
    assert sol.result == lx.RESULTS.breakdown
    # BiCGStab: A = [[0, 1], [1, 0]], b = e_1: r̂ᴴ A r = 0 at the first step.
    sol = _solve(
        np.array([[0.0, 1.0], [1.0, 0.0]]),
        np.array([1.0, 0.0]),
        lx.BiCGStab(rtol=RTOL, atol=0.0),
        throw=False,
    )
    assert sol.result == lx.RESULTS.breakdown


def test_bad_input():
    a = lx.MatrixLinearOperator(np.eye(3))
    with pytest.raises(ValueError, match="positive_semidefinite_tag"):
        lx.linear_solve(a, jnp.ones(3), lx.CG(rtol=1e-6, atol=1e-6))
    with pytest.raises(ValueError, match="symmetric"):
        lx.linear_solve(
            lx.MatrixLinearOperator(np.triu(np.ones((3, 3)))),
            jnp.ones(3),
            lx.MINRES(rtol=1e-6, atol=0.0),
        )
    with pytest.raises(ValueError, match="rtol"):
        lx.CG(rtol=-1.0, atol=0.0)
    with pytest.raises(ValueError, match="atol"):
        lx.GMRES(rtol=0.0, atol=-1e-3)
    with pytest.raises(ValueError, match="max_steps"):
        lx.BiCGStab(rtol=1e-6, atol=0.0, max_steps=0)
    with pytest.raises(ValueError, match="restart"):
        lx.GMRES(rtol=1e-6, atol=0.0, restart=0)
    with pytest.raises(ValueError, match="damp"):
        lx.LSQR(rtol=1e-6, atol=0.0, damp=-1.0)
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(
            lx.MatrixLinearOperator(np.ones((3, 2))), jnp.ones(3), lx.GMRES(rtol=1e-6, atol=0.0)
        )
    with pytest.raises(ValueError, match="y0"):
        lx.linear_solve(a, jnp.ones(3), lx.GMRES(rtol=1e-6, atol=0.0), options={"y0": jnp.ones(4)})
    with pytest.raises(ValueError, match="zero or non-finite"):
        lx.jacobi_preconditioner(lx.MatrixLinearOperator(np.diag([1.0, 0.0])))


def test_jacobi_preconditioner(rng):
    a = spd(rng, 6)
    m = lx.jacobi_preconditioner(lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag))
    np.testing.assert_allclose(m.as_matrix(), np.diag(1 / np.diag(a)))
    assert lx.is_positive_semidefinite(m)
    mn = lx.jacobi_preconditioner(lx.MatrixLinearOperator(-a, lx.negative_semidefinite_tag))
    assert lx.is_negative_semidefinite(mn)
    # A matrix-free diagonal-tagged operator: one mv.
    d = lx.FunctionLinearOperator(
        lambda v: 3.0 * v, jax.ShapeDtypeStruct((4,), jnp.float64), lx.diagonal_tag
    )
    np.testing.assert_allclose(lx.jacobi_preconditioner(d).as_matrix(), np.eye(4) / 3)
