"""Derivatives of `linear_solve`: forward mode against central finite differences and against JAX's
own derivative of `jnp.linalg.pinv` / `jnp.linalg.solve`; reverse mode against forward mode (the
dot-product test); `jacfwd == jacrev`; second order; complex gradients; a user-written solver with
no derivative code; operators closing over differentiated parameters; zero derivatives for options
and solver fields; `throw`; and that reverse mode reuses the forward factorization.

Tolerances.
- Against `jnp.linalg` references: both sides are exact formulas evaluated in float64 on matrices
  of condition number <= 3 (derivatives involve at most kappa² ~ 9, or kappa⁴ for second order),
  so they agree to ~1e-13; we allow `helpers.tolerances` (1e-10), or 1e-9 for second order.
- Against central finite differences with step h: the truncation error is h²/6 |x'''| and the
  rounding error eps |x| / h. With |x| and its derivatives of order one (kappa <= 3), h = 1e-5 gives
  ~2e-11 and ~1e-11: we allow 1e-7 (relative to the size of the derivative, and absolute).
"""

from __future__ import annotations

import re
from collections import Counter

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OPERATOR_BUILDERS,
    InverseSolver,
    make_matrix,
    random_vector,
    tags_for_kind,
)

import linopx as lx

# The run-time error carries the `RESULTS` message. Match all of it: the error text also contains
# a stack trace, whose function names (e.g. "test_singular") must not satisfy the match.
SINGULAR_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.singular])
NONFINITE_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.nonfinite_input])

DTYPES = [np.float64, np.complex128]
DTYPE_IDS = ["float64", "complex128"]
SQUARE, TALL, WIDE = (4, 4), (6, 4), (4, 6)
FD_STEP = 1e-5
FD_TOL = {"rtol": 1e-7, "atol": 1e-7}
REF_TOL = {"rtol": 1e-10, "atol": 1e-10}


def _rand(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _real_dot(x, y):
    """Re Σ x·y (no conjugation): the pairing under which JAX's VJP is the transpose of its JVP,
    for real and complex arrays alike."""
    return float(np.real(np.sum(np.asarray(x) * np.asarray(y))))


def count_primitives(jaxpr, counter=None) -> Counter:
    """Names of all primitives in a (closed) jaxpr, including those in sub-jaxprs (jit, cond, ...)."""
    counter = Counter() if counter is None else counter
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        counter[eqn.primitive.name] += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count_primitives(sub, counter)
    return counter


# ---------------------------------------------------------------------------------------------
# Tangent directions that keep the matrix in its class
#
# A tangent must not leave the set the tags (or the rank) promise: the pseudoinverse is not even
# continuous across a change of rank, and a PSD-tagged solve of a nonsymmetric matrix is not a
# solve of that matrix. Each `direction` returns (dA, path) with path(h) a matrix in the same class
# and path'(0) = dA, so that the finite difference of the solve along `path` is its JVP along dA.


def _structured_tangent(rng, a, kind):
    n = a.shape[0]
    e = _rand(rng, a.shape, a.dtype)
    if kind in ("spd", "nsd"):
        return (e + e.conj().T) / 2
    if kind == "symmetric":
        return (e + e.T) / 2
    if kind == "lower":
        return np.tril(e)
    if kind == "upper":
        return np.triu(e)
    if kind == "unit_lower":
        return np.tril(e, -1)
    if kind == "diagonal":
        return np.diag(np.diagonal(e)) * (np.abs(np.diagonal(a)) > 0)
    if kind == "tridiagonal":
        return np.triu(np.tril(e, 1), -1)
    assert kind == "general" and n >= 0
    return e


def direction(rng, a, kind):
    name = kind.split("(")[0]
    if name == "rank_deficient":
        # A(h) = (I + hY) A (I + hX) has the rank of A for small h; A'(0) = Y A + A X.
        m, n = a.shape
        x = _rand(rng, (n, n), a.dtype)
        y = _rand(rng, (m, m), a.dtype)

        def path(h):
            return (np.eye(m) + h * y) @ a @ (np.eye(n) + h * x)

        return y @ a + a @ x, path
    da = _structured_tangent(rng, a, kind)
    return da, lambda h: a + h * da


# (id, solver, matrix kind, shape). Between them: every solver family, and the four derivative
# cases of the pseudoinverse: square full rank (no extra term); tall full column rank with a
# residual (dependent rows: the residual term); wide (dependent columns: the null-space term);
# rank-deficient (both).
JVP_CASES = [
    ("lu", lx.LU(), "general", SQUARE),
    ("cholesky-psd", lx.Cholesky(), "spd", SQUARE),
    ("cholesky-nsd", lx.Cholesky(), "nsd", SQUARE),
    ("triangular-lower", lx.Triangular(), "lower", SQUARE),
    ("triangular-upper", lx.Triangular(), "upper", SQUARE),
    ("triangular-unit", lx.Triangular(), "unit_lower", SQUARE),
    ("diagonal-well-posed", lx.Diagonal(well_posed=True), "diagonal", SQUARE),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", SQUARE),
    ("qr-square", lx.QR(), "general", SQUARE),
    ("qr-tall", lx.QR(), "general", TALL),
    ("qr-wide", lx.QR(), "general", WIDE),
    ("pivoted-qr-square", lx.PivotedQR(), "general", SQUARE),
    ("pivoted-qr-tall", lx.PivotedQR(), "general", TALL),
    ("pivoted-qr-wide", lx.PivotedQR(), "general", WIDE),
    ("pivoted-qr-rank2-square", lx.PivotedQR(), "rank_deficient(2)", SQUARE),
    ("pivoted-qr-rank2-tall", lx.PivotedQR(), "rank_deficient(2)", TALL),
    ("pivoted-qr-rank2-wide", lx.PivotedQR(), "rank_deficient(2)", WIDE),
    ("svd-square", lx.SVD(), "general", SQUARE),
    ("svd-tall", lx.SVD(), "general", TALL),
    ("svd-wide", lx.SVD(), "general", WIDE),
    ("svd-rank2-square", lx.SVD(), "rank_deficient(2)", SQUARE),
    ("svd-rank2-tall", lx.SVD(), "rank_deficient(2)", TALL),
    ("svd-rank1-wide", lx.SVD(), "rank_deficient(1)", WIDE),
    ("normal-cholesky-tall", lx.Normal(lx.Cholesky()), "general", TALL),
    ("normal-cholesky-wide", lx.Normal(lx.Cholesky()), "general", WIDE),
    ("normal-lu-tall", lx.Normal(lx.LU()), "general", TALL),
    ("auto-none-tall", lx.AutoLinearSolver(well_posed=None), "general", TALL),
    ("auto-false-rank2-wide", lx.AutoLinearSolver(well_posed=False), "rank_deficient(2)", WIDE),
]
JVP_IDS = [c[0] for c in JVP_CASES]


def _solve_fn(solver, tags):
    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value

    return f


def _pinv_solve(a, b):
    return jnp.linalg.pinv(a) @ b


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", JVP_CASES, ids=JVP_IDS)
def test_jvp_and_vjp(case, dtype, rng):
    """Forward mode w.r.t. the matrix, the vector, and both, against central finite differences
    and against JAX's derivative of `pinv`; reverse mode against forward mode by the dot-product
    test Re <u, J v> = Re <Jᵀ u, v>, and against JAX's reverse mode of `pinv`. Everything for one
    case is computed in one compiled function (compilation is the cost of these tests)."""
    _, solver, kind, shape = case
    a = make_matrix(rng, shape, dtype, kind)
    b = random_vector(rng, shape[0], dtype)
    da, path = direction(rng, a, kind)
    db = random_vector(rng, shape[0], dtype)
    u = random_vector(rng, shape[1], dtype)
    zero_a, zero_b = np.zeros_like(a), np.zeros_like(b)
    f = _solve_fn(solver, tags_for_kind(kind, dtype))
    h = FD_STEP
    a_plus, a_minus, b_plus, b_minus = path(h), path(-h), b + h * db, b - h * db

    @jax.jit
    def everything(a, b, da, db, u, a_plus, a_minus, b_plus, b_minus):
        jvps = {
            "matrix": jax.jvp(f, (a, b), (da, zero_b))[1],
            "vector": jax.jvp(f, (a, b), (zero_a, db))[1],
            "both": jax.jvp(f, (a, b), (da, db))[1],
        }
        fds = {
            "matrix": (f(a_plus, b) - f(a_minus, b)) / (2 * h),
            "vector": (f(a, b_plus) - f(a, b_minus)) / (2 * h),
            "both": (f(a_plus, b_plus) - f(a_minus, b_minus)) / (2 * h),
        }
        x, vjp = jax.vjp(f, a, b)
        return x, jvps, fds, vjp(u)

    x, jvps, fds, (ga, gb) = everything(a, b, da, db, u, a_plus, a_minus, b_plus, b_minus)
    tangents = {"matrix": (da, zero_b), "vector": (zero_a, db), "both": (da, db)}
    for wrt, (ta, tb) in tangents.items():
        dx, fd = np.asarray(jvps[wrt]), np.asarray(fds[wrt])
        scale = max(1.0, np.max(np.abs(fd)))
        np.testing.assert_allclose(dx, fd, rtol=FD_TOL["rtol"], atol=FD_TOL["atol"] * scale, err_msg=wrt)
        # JAX's own derivative of pinv (the same Golub-Pereyra formula, with dense matrices).
        x_ref, dx_ref = jax.jvp(_pinv_solve, (a, b), (ta, tb))
        np.testing.assert_allclose(dx, dx_ref, **REF_TOL, err_msg=wrt)
        assert np.max(np.abs(dx)) > 1e-3  # the derivative is not trivially zero
    np.testing.assert_allclose(x, x_ref, **REF_TOL)
    # Linearity in the tangent (a cheap consistency check of the three cases).
    np.testing.assert_allclose(jvps["both"], jvps["matrix"] + jvps["vector"], **REF_TOL)

    # Reverse mode: the dot-product test, and JAX's reverse mode of pinv.
    dx = np.asarray(jvps["both"])
    np.testing.assert_allclose(_real_dot(u, dx), _real_dot(ga, da) + _real_dot(gb, db), rtol=1e-10)
    _, vjp_ref = jax.vjp(_pinv_solve, a, b)
    ga_ref, gb_ref = vjp_ref(u)
    np.testing.assert_allclose(gb, gb_ref, **REF_TOL)
    if not kind.startswith("rank"):
        # For a rank-deficient A only the rank-preserving part of the cotangent is meaningful
        # (the pseudoinverse is not differentiable across a change of rank); the dot-product test
        # along a rank-preserving direction is the check there.
        np.testing.assert_allclose(ga, ga_ref, **REF_TOL)


def test_jvp_cases_cover_the_four_derivative_cases():
    # Which terms of the pseudoinverse derivative each case exercises; guards the table above.
    seen = set()
    for _, solver, kind, (m, n) in JVP_CASES:
        op = lx.MatrixLinearOperator(jnp.zeros((m, n)))
        seen.add((solver.allow_dependent_rows(op), solver.allow_dependent_columns(op), kind.startswith("rank")))
    assert (False, False, False) in seen  # square
    assert (True, False, False) in seen  # tall
    assert (False, True, False) in seen  # wide
    assert (True, True, True) in seen  # rank-deficient


@pytest.mark.parametrize("builder_name, builder", OPERATOR_BUILDERS, ids=[n for n, _ in OPERATOR_BUILDERS])
@pytest.mark.parametrize(
    "solver, kind, shape",
    [
        (lx.LU(), "general", (3, 3)),
        (lx.QR(), "general", (4, 3)),
        (lx.SVD(), "rank_deficient(2)", (3, 4)),
    ],
    ids=["lu", "qr-tall", "svd-rank2-wide"],
)
def test_derivatives_through_every_operator_kind(builder_name, builder, solver, kind, shape, rng):
    # The builders close over the matrix (function, Jacobian and composite operators) or store it
    # as a leaf (matrix, pytree): both must carry derivatives.
    dtype = np.float64
    a = make_matrix(rng, shape, dtype, kind)
    b = random_vector(rng, shape[0], dtype)
    da, _ = direction(rng, a, kind)
    db = random_vector(rng, shape[0], dtype)
    u = random_vector(rng, shape[1], dtype)

    def f(a, b):
        built = builder(a, ())
        return built.to_flat_in(lx.linear_solve(built.operator, built.from_flat_out(b), solver).value)

    @jax.jit
    def derivatives(a, b, da, db, u):
        _, dx = jax.jvp(f, (a, b), (da, db))
        ga, gb = jax.vjp(f, a, b)[1](u)
        return dx, ga, gb

    dx, ga, gb = derivatives(a, b, da, db, u)
    _, dx_ref = jax.jvp(_pinv_solve, (a, b), (da, db))
    np.testing.assert_allclose(dx, dx_ref, **REF_TOL)
    np.testing.assert_allclose(_real_dot(u, dx), _real_dot(ga, da) + _real_dot(gb, db), rtol=1e-10)
    _, gb_ref = jax.vjp(_pinv_solve, a, b)[1](u)
    np.testing.assert_allclose(gb, gb_ref, **REF_TOL)


@pytest.mark.parametrize(
    "solver, kind, shape",
    [
        (lx.LU(), "general", (3, 3)),
        (lx.Cholesky(), "spd", (3, 3)),
        (lx.QR(), "general", (4, 3)),
        (lx.QR(), "general", (3, 4)),
        (lx.SVD(), "general", (4, 3)),
        (lx.PivotedQR(), "general", (3, 4)),
        (lx.Normal(lx.Cholesky()), "general", (4, 3)),
    ],
    ids=["lu", "cholesky", "qr-tall", "qr-wide", "svd-tall", "pivoted-qr-wide", "normal-tall"],
)
def test_jacfwd_equals_jacrev(solver, kind, shape, rng):
    a = make_matrix(rng, shape, np.float64, kind)
    b = random_vector(rng, shape[0], np.float64)
    f = _solve_fn(solver, tags_for_kind(kind, np.float64))
    jf = jax.jit(jax.jacfwd(f, argnums=(0, 1)))(a, b)
    jr = jax.jit(jax.jacrev(f, argnums=(0, 1)))(a, b)
    jref = jax.jacfwd(_pinv_solve, argnums=(0, 1))(a, b)
    for x, y, z in zip(jf, jr, jref):
        np.testing.assert_allclose(x, y, **REF_TOL)
        np.testing.assert_allclose(x, z, **REF_TOL)


@pytest.mark.parametrize(
    "solver, shape, reference",
    [
        (lx.LU(), (3, 3), lambda a, b: jnp.linalg.solve(a, b)),
        (lx.QR(), (4, 3), _pinv_solve),
        (lx.QR(), (3, 4), _pinv_solve),
    ],
    ids=["lu", "qr-tall", "qr-wide"],
)
def test_hessian(solver, shape, reference, rng):
    # Second order: forward over reverse (jax.hessian) of a nonlinear loss of the solution.
    a = make_matrix(rng, shape, np.float64)
    b = random_vector(rng, shape[0], np.float64)
    w = random_vector(rng, shape[1], np.float64)

    def loss(solve):
        def f(a, b):
            x = solve(a, b)
            return jnp.sum(x**2) + jnp.sum(jnp.sin(w * x))

        return f

    ours = jax.jit(jax.hessian(loss(_solve_fn(solver, ())), argnums=(0, 1)))(a, b)
    ref = jax.hessian(loss(reference), argnums=(0, 1))(a, b)
    for x, y in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)
    assert np.max(np.abs(ours[0][0])) > 1e-2


def test_third_order_jvp(rng):
    # jvp of jvp of jvp: every derivative solve is again the primitive.
    a = make_matrix(rng, (3, 3), np.float64)
    b = random_vector(rng, 3, np.float64)
    da = _rand(rng, (3, 3), np.float64)

    def nth(solve, k):
        f = lambda t: solve(a + t * da, b)  # noqa: E731
        for _ in range(k):
            f = (lambda g: lambda t: jax.jvp(g, (t,), (jnp.ones_like(t),))[1])(f)
        return f

    ours = jax.jit(nth(_solve_fn(lx.LU(), ()), 3))(0.0)
    ref = nth(jnp.linalg.solve, 3)(0.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Complex gradients of real losses

COMPLEX_GRAD_CASES = [
    ("lu", lx.LU(), "general", SQUARE),
    ("cholesky", lx.Cholesky(), "spd", SQUARE),
    ("triangular", lx.Triangular(), "upper", SQUARE),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", SQUARE),
    ("diagonal", lx.Diagonal(well_posed=True), "diagonal", SQUARE),
    ("qr-tall", lx.QR(), "general", TALL),
    ("qr-wide", lx.QR(), "general", WIDE),
    ("pivoted-qr-tall", lx.PivotedQR(), "general", TALL),
    ("svd-wide", lx.SVD(), "general", WIDE),
    ("normal-cholesky-tall", lx.Normal(lx.Cholesky()), "general", TALL),
    ("normal-lu-wide", lx.Normal(lx.LU()), "general", WIDE),
]


@pytest.mark.parametrize(
    "loss",
    [lambda x: jnp.real(jnp.vdot(x, x)), lambda x: jnp.sum(jnp.abs(x))],
    ids=["vdot", "abs"],
)
@pytest.mark.parametrize("case", COMPLEX_GRAD_CASES, ids=[c[0] for c in COMPLEX_GRAD_CASES])
def test_complex_gradient_of_real_loss(case, loss, rng):
    _, solver, kind, shape = case
    dtype = np.complex128
    a = make_matrix(rng, shape, dtype, kind)
    b = random_vector(rng, shape[0], dtype)
    f = _solve_fn(solver, tags_for_kind(kind, dtype))
    ga, gb = jax.jit(jax.grad(lambda a, b: loss(f(a, b)), argnums=(0, 1)))(a, b)
    ga_ref, gb_ref = jax.grad(lambda a, b: loss(_pinv_solve(a, b)), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(gb, gb_ref, **REF_TOL)
    if kind in ("spd", "upper", "tridiagonal", "diagonal"):
        # A structured solver reads only part of the matrix, so the gradient w.r.t. the entries it
        # does not read is a convention. Compare along tangents that keep the structure.
        da = _structured_tangent(rng, a, kind)
        np.testing.assert_allclose(_real_dot(ga, da), _real_dot(ga_ref, da), rtol=1e-10)
    else:
        np.testing.assert_allclose(ga, ga_ref, **REF_TOL)


def test_complex_gradient_rank_deficient(rng):
    a = make_matrix(rng, TALL, np.complex128, "rank_deficient(2)")
    b = random_vector(rng, TALL[0], np.complex128)
    da, path = direction(rng, a, "rank_deficient(2)")

    def loss(solve):
        return lambda a, b: jnp.real(jnp.vdot(solve(a, b), solve(a, b)))

    for solver in (lx.SVD(), lx.PivotedQR()):
        ga, gb = jax.grad(loss(_solve_fn(solver, ())), argnums=(0, 1))(a, b)
        ga_ref, gb_ref = jax.grad(loss(_pinv_solve), argnums=(0, 1))(a, b)
        np.testing.assert_allclose(gb, gb_ref, **REF_TOL)
        # Along a rank-preserving direction, the derivative of the loss (a real number) is
        # Re <grad, dA> in JAX's convention (grad = ∂f/∂Re A - i ∂f/∂Im A).
        fd = (loss(_pinv_solve)(path(FD_STEP), b) - loss(_pinv_solve)(path(-FD_STEP), b)) / (2 * FD_STEP)
        np.testing.assert_allclose(_real_dot(ga, da), fd, rtol=1e-7)
        np.testing.assert_allclose(_real_dot(ga, da), _real_dot(ga_ref, da), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# A user-written solver gets derivatives for free


class JacobiSolver(lx.AbstractLinearSolver):
    """Weighted Jacobi iteration, for diagonally dominant matrices: x <- x + ω D⁻¹ (b - A x).
    `omega` is an array field (a solver leaf), to check that solver fields get zero derivatives."""

    omega: jax.Array
    steps: int = 200

    def init(self, operator, options):
        return operator.as_matrix()

    def compute(self, state, vector, options):
        d = jnp.diagonal(state)
        x0 = options.get("y0", jnp.zeros_like(vector))

        omega = self.omega.astype(vector.dtype)

        def body(_, x):
            return x + omega * (vector - state @ x) / d

        x = jax.lax.fori_loop(0, self.steps, body, x0)
        return x, lx.RESULTS.successful, {"num_steps": self.steps}

    def transpose(self, state, options):
        return state.T, options

    def conj(self, state, options):
        return jnp.conj(state), options

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False


class PinvSolver(InverseSolver):
    """Any rank, through `jnp.linalg.pinv` of the materialised matrix (applied, transposed and
    conjugated as `InverseSolver`'s explicit inverse)."""

    def init(self, operator, options):
        return jnp.linalg.pinv(operator.as_matrix())

    def allow_dependent_rows(self, operator):
        return True

    def allow_dependent_columns(self, operator):
        return True


def _diagonally_dominant(rng, n, dtype):
    return _rand(rng, (n, n), dtype) * 0.2 + 4 * np.eye(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "solver, kind",
    [
        (InverseSolver(), "general"),
        (JacobiSolver(jnp.array(0.9)), "dominant"),
        (PinvSolver(), "rank_deficient(2)"),
    ],
    ids=["inverse", "jacobi", "pinv"],
)
def test_custom_solver_derivatives(solver, kind, dtype, rng):
    n = 4
    a = _diagonally_dominant(rng, n, dtype) if kind == "dominant" else make_matrix(rng, (n, n), dtype, kind)
    b = random_vector(rng, n, dtype)
    da, _ = direction(rng, a, "general" if kind == "dominant" else kind)
    db = random_vector(rng, n, dtype)
    u = random_vector(rng, n, dtype)
    f = _solve_fn(solver, ())

    @jax.jit
    def derivatives(a, b, da, db, u):
        x, dx = jax.jvp(f, (a, b), (da, db))
        ga, gb = jax.vjp(f, a, b)[1](u)
        return x, dx, ga, gb

    x, dx, ga, gb = derivatives(a, b, da, db, u)
    x_ref, dx_ref = jax.jvp(_pinv_solve, (a, b), (da, db))
    ga_ref, gb_ref = jax.vjp(_pinv_solve, a, b)[1](u)
    np.testing.assert_allclose(x, x_ref, **REF_TOL)
    np.testing.assert_allclose(dx, dx_ref, **REF_TOL)
    np.testing.assert_allclose(gb, gb_ref, **REF_TOL)
    np.testing.assert_allclose(_real_dot(u, dx), _real_dot(ga, da) + _real_dot(gb, db), rtol=1e-10)
    if kind != "rank_deficient(2)":
        np.testing.assert_allclose(ga, ga_ref, **REF_TOL)


def test_custom_solver_under_vmap_and_grad(rng):
    a = np.stack([_diagonally_dominant(rng, 3, np.float64) for _ in range(2)])
    b = rng.standard_normal((2, 3))
    solver = JacobiSolver(jnp.array(1.0))

    def loss(solve):
        return lambda a, b: jnp.sum(jax.vmap(solve)(a, b) ** 3)

    ga, gb = jax.jit(jax.grad(loss(_solve_fn(solver, ())), argnums=(0, 1)))(a, b)
    ga_ref, gb_ref = jax.grad(loss(jnp.linalg.solve), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga, ga_ref, **REF_TOL)
    np.testing.assert_allclose(gb, gb_ref, **REF_TOL)


# ---------------------------------------------------------------------------------------------
# Operators closing over differentiated parameters


def _nonlinear(x, theta):
    """A nonlinear function whose Jacobian in `x` depends on `theta` and on `x`."""
    m = jnp.array([[1.0, 0.3, -0.2], [0.1, 2.0, 0.4], [-0.3, 0.2, 1.5]])
    return theta[0] * (m @ x) + theta[1] * jnp.sin(x) + jnp.tanh(theta[2] * x) ** 2


@pytest.mark.parametrize("jac", [None, "bwd"])
@pytest.mark.parametrize("how", ["args", "closure"])
def test_jacobian_operator_parameter_derivatives(how, jac, rng):
    theta = np.array([1.2, 0.7, 0.5])
    x0 = rng.standard_normal(3) * 0.5
    b = rng.standard_normal(3)

    def ours(theta, x0):
        if how == "args":
            op = lx.JacobianLinearOperator(_nonlinear, x0, theta, jac=jac)
        else:
            op = lx.JacobianLinearOperator(lambda x, _: _nonlinear(x, theta), x0, None, jac=jac)
        return lx.linear_solve(op, b, lx.LU()).value

    def ref(theta, x0):
        return jnp.linalg.solve(jax.jacfwd(_nonlinear)(x0, theta), b)

    u = rng.standard_normal(3)
    # Derivatives w.r.t. the parameter and the linearisation point, forward and reverse.
    g = jax.jit(jax.grad(lambda t, x: u @ ours(t, x), argnums=(0, 1)))(theta, x0)
    g_ref = jax.grad(lambda t, x: u @ ref(t, x), argnums=(0, 1))(theta, x0)
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, **REF_TOL)
    if jac is None:
        j = jax.jit(jax.jacfwd(ours, argnums=(0, 1)))(theta, x0)
        j_ref = jax.jacfwd(ref, argnums=(0, 1))(theta, x0)
        for x, y in zip(j, j_ref):
            np.testing.assert_allclose(x, y, **REF_TOL)


def test_function_operator_closing_over_parameter(rng):
    a0 = make_matrix(rng, (4, 3), np.float64)
    a1 = rng.standard_normal((4, 3))
    b = rng.standard_normal(4)
    struct = jax.ShapeDtypeStruct((3,), jnp.float64)

    def ours(t):
        op = lx.FunctionLinearOperator(lambda v: (a0 + t * a1) @ v, struct)
        return lx.linear_solve(op, b, lx.QR()).value

    def ref(t):
        return jnp.linalg.pinv(a0 + t * a1) @ b

    t = 0.3
    np.testing.assert_allclose(jax.jit(jax.jacfwd(ours))(t), jax.jacfwd(ref)(t), **REF_TOL)
    np.testing.assert_allclose(jax.jit(jax.jacrev(ours))(t), jax.jacfwd(ref)(t), **REF_TOL)
    fd = (np.asarray(ours(t + FD_STEP)) - np.asarray(ours(t - FD_STEP))) / (2 * FD_STEP)
    np.testing.assert_allclose(jax.jacfwd(ours)(t), fd, **FD_TOL)


@pytest.mark.parametrize(
    "solver, shape",
    [(lx.LU(), SQUARE), (lx.SVD(), TALL), (lx.QR(), TALL), (lx.PivotedQR(), WIDE)],
    ids=["lu", "svd", "qr", "pivoted-qr"],
)
def test_state_argument_does_not_change_derivatives(solver, shape, rng):
    # The documented way to reuse a factorization, `state = solver.init(operator, options)`, inside
    # a differentiated function: the state is stop-gradiented by `linear_solve`, and the derivative
    # still comes from the operator.
    a = make_matrix(rng, shape, np.float64)
    b = random_vector(rng, shape[0], np.float64)

    def with_state(a, b):
        op = lx.MatrixLinearOperator(a)
        return jnp.sum(lx.linear_solve(op, b, solver, state=solver.init(op, {})).value ** 2)

    def without(a, b):
        return jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value ** 2)

    g1 = jax.grad(with_state, argnums=(0, 1))(a, b)
    g2 = jax.grad(without, argnums=(0, 1))(a, b)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(x, y, **REF_TOL)


def test_invert_derivatives(rng):
    a = make_matrix(rng, TALL, np.float64)
    b = random_vector(rng, 6, np.float64)
    c = random_vector(rng, 4, np.float64)

    def ours(a, b, c):
        inv = lx.invert(lx.MatrixLinearOperator(a), lx.QR())
        return jnp.sum(inv.mv(b) ** 2) + jnp.sum(inv.T.mv(c) ** 3)

    def ref(a, b, c):
        p = jnp.linalg.pinv(a)
        return jnp.sum((p @ b) ** 2) + jnp.sum((p.T @ c) ** 3)

    g = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(a, b, c)
    g_ref = jax.grad(ref, argnums=(0, 1, 2))(a, b, c)
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, **REF_TOL)


# ---------------------------------------------------------------------------------------------
# Options and solver fields: zero derivatives, not errors


def test_options_get_zero_derivatives(rng):
    a = _diagonally_dominant(rng, 3, np.float64)
    b = rng.standard_normal(3)
    y0 = rng.standard_normal(3)

    def f(y0, solver):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver, options={"y0": y0}).value

    for solver in (lx.LU(), JacobiSolver(jnp.array(1.0))):
        g = jax.grad(lambda y: jnp.sum(f(y, solver) ** 2))(y0)
        np.testing.assert_array_equal(g, np.zeros(3))
        _, t = jax.jvp(lambda y: f(y, solver), (y0,), (np.ones(3),))
        np.testing.assert_array_equal(t, np.zeros(3))
    # ... and the initial guess does not change the (converged) answer.
    np.testing.assert_allclose(f(y0, JacobiSolver(jnp.array(1.0))), np.linalg.solve(a, b), **REF_TOL)
    # A preconditioner operator in the options is not differentiated either, with a solver that
    # really applies it: GMRES (on the right, x = M y). Stopped after one step, its iterate
    # depends on M = I + t Q, and still no derivative flows into t (derivatives come from the
    # operator and the vector only, by the implicit function theorem).
    q = rng.standard_normal((3, 3)) * 0.3

    def one_step(t):
        m = lx.MatrixLinearOperator(jnp.eye(3) + t * q)
        gmres = lx.GMRES(rtol=1e-12, atol=0.0, max_steps=1)
        op = lx.MatrixLinearOperator(a)
        return lx.linear_solve(op, b, gmres, options={"preconditioner": m}, throw=False).value

    @jax.jit  # one compilation for all of it
    def values_and_derivatives(t):
        x_t, x_dot = jax.jvp(one_step, (t,), (jnp.ones_like(t),))
        return one_step(jnp.zeros_like(t)), x_t, x_dot, jax.grad(lambda t: jnp.sum(one_step(t)))(t)

    x0, x1, x_dot, g = values_and_derivatives(jnp.asarray(1.0))
    assert np.max(np.abs(x0 - x1)) > 1e-3  # the preconditioner is used
    np.testing.assert_array_equal(x_dot, np.zeros(3))
    assert g == 0


def test_solver_fields_get_zero_derivatives(rng):
    a = _diagonally_dominant(rng, 3, np.float64)
    b = rng.standard_normal(3)
    op = lx.MatrixLinearOperator(a)

    def jacobi(omega):
        return jnp.sum(lx.linear_solve(op, b, JacobiSolver(omega)).value ** 2)

    assert jax.grad(jacobi)(jnp.array(0.8)) == 0
    assert jax.jit(jax.grad(jacobi))(jnp.array(0.8)) == 0

    def svd(rcond):
        return jnp.sum(lx.linear_solve(op, b, lx.SVD(rcond=rcond)).value ** 2)

    assert jax.grad(svd)(1e-8) == 0


# ---------------------------------------------------------------------------------------------
# throw

# Exactly singular: a zero column (so every factorization meets an exact zero pivot), and an
# upper-triangular matrix with a zero on its diagonal.
SINGULAR = np.array([[1.0, 0.0, 2.0], [2.0, 0.0, 1.0], [3.0, 0.0, 1.0]])
SINGULAR_UPPER = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])


@pytest.mark.parametrize(
    "solver, a, tags",
    [
        (lx.LU(), SINGULAR, ()),
        (lx.QR(), SINGULAR, ()),
        (lx.AutoLinearSolver(well_posed=True), SINGULAR, ()),
        (lx.Triangular(), SINGULAR_UPPER, (lx.upper_triangular_tag,)),
    ],
    ids=["lu", "qr", "auto-true", "triangular"],
)
def test_throw_false_singular_does_not_raise(solver, a, tags):
    b = np.ones(3)

    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver, throw=False)

    sol = f(a, b)
    assert sol.result == lx.RESULTS.singular
    # Neither the forward nor any derivative raises; they return whatever the arithmetic gives.
    jax.block_until_ready(jax.grad(lambda a, b: jnp.sum(f(a, b).value), argnums=(0, 1))(a, b))
    jax.block_until_ready(jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b).value), argnums=(0, 1)))(a, b))
    jax.block_until_ready(jax.jvp(lambda a: f(a, b).value, (a,), (np.ones((3, 3)),)))


def test_throw_true_singular_raises():
    b = np.ones(3)

    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(f(SINGULAR, b))
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(jax.jit(f)(SINGULAR, b))
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(jax.grad(lambda a: jnp.sum(f(a, b)))(SINGULAR))
    # A nonsingular matrix does not raise, and a failed solve does not poison later ones.
    np.testing.assert_allclose(f(np.eye(3), b), b)


@pytest.mark.parametrize("how", ["jacfwd", "jvp-tangent"])
def test_throw_true_singular_raises_singular_under_forward_mode(how):
    # Forward mode on a singular matrix: the user's inputs are all finite, so the error must say
    # "singular". (The tangent solve's right-hand side contains the primal solution, which is not
    # finite; that must not be reported as the input containing NaN or infinity.) Compiled, so that
    # only the tangent's check is left when the primal output is unused (deterministic).
    b = np.ones(3)

    def f(a):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    if how == "jacfwd":
        fn = jax.jit(jax.jacfwd(f))
    else:
        fn = jax.jit(lambda a: jax.jvp(f, (a,), (jnp.eye(3),))[1])
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(fn(SINGULAR))


# ---------------------------------------------------------------------------------------------
# Reverse mode reuses the factorization


def _hlo_custom_calls(fn, *args) -> Counter:
    text = jax.jit(fn).lower(*args).as_text()
    return Counter(re.findall(r"custom_call @(\w+)", text))


@pytest.mark.parametrize(
    "solver, shape, primitive, lapack",
    [
        (lx.LU(), (4, 4), "lu", "getrf"),
        (lx.QR(), (5, 3), "geqrf", "geqrf"),
        (lx.QR(), (3, 5), "geqrf", "geqrf"),
        (lx.PivotedQR(), (5, 3), "geqp3", "geqp3"),
        (lx.SVD(), (5, 3), "svd", "gesdd"),
    ],
    ids=["lu", "qr-tall", "qr-wide", "pivoted-qr", "svd"],
)
def test_derivatives_factorize_once(solver, shape, primitive, lapack, rng):
    a = make_matrix(rng, shape, np.float64)
    b = random_vector(rng, shape[0], np.float64)

    def loss(a, b):
        return jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value ** 2)

    fns = {
        "grad": jax.grad(loss, argnums=(0, 1)),
        "jvp": lambda a, b: jax.jvp(loss, (a, b), (a, b)),
        "hessian": jax.hessian(loss),
    }
    for name, fn in fns.items():
        counts = count_primitives(jax.make_jaxpr(fn)(a, b))
        assert counts[primitive] == 1, (name, counts)
        # The same in the compiled program, where the solve primitive has been lowered too:
        # exactly one LAPACK factorization call.
        calls = _hlo_custom_calls(fn, a, b)
        assert sum(c for k, c in calls.items() if lapack in k) == 1, (name, calls)


def test_reverse_mode_through_custom_vjp_only_function(rng):
    # A Jacobian operator whose function has only a custom VJP: linopx must apply it (and its
    # transpose) by reverse mode when asked for jac="bwd", for the solve and its gradient w.r.t. b.
    a = make_matrix(rng, (3, 3), np.float64)
    builder = dict(OPERATOR_BUILDERS)["jacobian_bwd"]
    built = builder(a, ())
    b = random_vector(rng, 3, np.float64)
    g = jax.grad(lambda b: jnp.sum(lx.linear_solve(built.operator, b, lx.LU()).value ** 2))(b)
    g_ref = jax.grad(lambda b: jnp.sum(jnp.linalg.solve(a, b) ** 2))(b)
    np.testing.assert_allclose(g, g_ref, **REF_TOL)


def test_linear_transpose_in_vector(rng):
    # The solve is linear in b; jax.linear_transpose gives b ↦ (Aᵀ)⁺ b.
    a = make_matrix(rng, TALL, np.complex128)
    op = lx.MatrixLinearOperator(a)
    struct = jax.ShapeDtypeStruct((6,), jnp.complex128)
    # (With throw=False: the run-time check of `throw=True` is not a linear function of b.)
    t = jax.linear_transpose(lambda b: lx.linear_solve(op, b, lx.QR(), throw=False).value, struct)
    c = random_vector(rng, 4, np.complex128)
    np.testing.assert_allclose(t(c)[0], np.linalg.pinv(a).T @ c, **REF_TOL)


def test_eqx_filter_grad_of_operator(rng):
    # Differentiating w.r.t. the operator object itself (as optimisation libraries do).
    a = make_matrix(rng, (3, 3), np.float64)
    b = random_vector(rng, 3, np.float64)

    @eqx.filter_grad
    def g(op):
        return jnp.sum(lx.linear_solve(op, b, lx.LU()).value ** 2)

    out = g(lx.MatrixLinearOperator(a))
    ref = jax.grad(lambda a: jnp.sum(jnp.linalg.solve(a, b) ** 2))(a)
    np.testing.assert_allclose(out.matrix, ref, **REF_TOL)
