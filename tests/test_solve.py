"""`linear_solve` with every dense solver against NumPy's `solve`/`lstsq`/`pinv`: every operator kind,
every tag a solver reads, square, tall, wide and rank-deficient matrices, float64 and complex128;
`AutoLinearSolver.select_solver`; `invert`; reusing `state=`; what a `Solution` holds.

Tolerances. The matrices from `helpers.make_matrix` have condition number at most 3 (rank-deficient
ones: nonzero singular values in [1, 3]), the vectors entries of order one, n <= 6. A backward-stable
solver then has a forward error of order n * kappa * eps ~ 6 * 3 * 1.1e-16 ~ 2e-15 relative to
|x| ~ 1 (kappa² ~ 9 for `Normal`, still ~ 1e-14). `helpers.tolerances` (1e-10 for float64 and
complex128) leaves four orders of magnitude of room, and is still far below any real mistake (a
wrong transpose, a dropped conjugate, a missing residual term, all of order one).
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LAPACK_FACTORIZATION,
    OPERATOR_BUILDERS,
    STRUCTURED_BUILDERS,
    build_pytree,
    count_compiled_calls,
    make_matrix,
    random_vector,
    tags_for_kind,
    tolerances,
)
from hypothesis import HealthCheck, given, settings

import linopx as lx

DTYPES = [np.float64, np.complex128]
DTYPE_IDS = ["float64", "complex128"]

SQUARE, TALL, WIDE = (4, 4), (6, 4), (4, 6)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The pseudoinverse solution `A⁺ b` from NumPy: `solve` for square full-rank matrices (an LU
    in LAPACK, independent of linopx's code path), otherwise the minimum-norm least-squares
    solution from `lstsq` (LAPACK `gelsd`, an SVD)."""
    a = np.asarray(a)
    b = np.asarray(b)
    m, n = a.shape
    if m == n and np.linalg.matrix_rank(a) == n:
        return np.linalg.solve(a, b)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def assert_structure(tree, structure):
    """`tree` has the tree structure, leaf shapes and leaf dtypes of `structure`."""
    lt, tt = jax.tree_util.tree_flatten(tree)
    ls, ts = jax.tree_util.tree_flatten(structure)
    assert tt == ts, (tt, ts)
    assert [(x.shape, jnp.dtype(x.dtype)) for x in lt] == [
        (tuple(s.shape), jnp.dtype(s.dtype)) for s in ls
    ]


# ---------------------------------------------------------------------------------------------
# Every dense solver x operator kind x tags x shape x dtype

# (id, solver, matrix kind, shape). The kind's tags (`tags_for_kind`) are put on the operator, so
# that e.g. Cholesky sees a positive semidefinite tag and Triangular a triangular one.
SOLVER_CASES = [
    ("lu", lx.LU(), "general", SQUARE),
    ("lu-symmetric", lx.LU(), "symmetric", SQUARE),
    ("cholesky-psd", lx.Cholesky(), "spd", SQUARE),
    ("cholesky-nsd", lx.Cholesky(), "nsd", SQUARE),
    ("triangular-lower", lx.Triangular(), "lower", SQUARE),
    ("triangular-upper", lx.Triangular(), "upper", SQUARE),
    ("triangular-unit-lower", lx.Triangular(), "unit_lower", SQUARE),
    ("diagonal-well-posed", lx.Diagonal(well_posed=True), "diagonal", SQUARE),
    ("diagonal", lx.Diagonal(well_posed=False), "diagonal", SQUARE),
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
    ("normal-cholesky-square", lx.Normal(lx.Cholesky()), "general", SQUARE),
    ("normal-cholesky-tall", lx.Normal(lx.Cholesky()), "general", TALL),
    ("normal-cholesky-wide", lx.Normal(lx.Cholesky()), "general", WIDE),
    ("normal-lu-tall", lx.Normal(lx.LU()), "general", TALL),
    ("normal-lu-wide", lx.Normal(lx.LU()), "general", WIDE),
    ("auto-true-general", lx.AutoLinearSolver(well_posed=True), "general", SQUARE),
    ("auto-true-spd", lx.AutoLinearSolver(well_posed=True), "spd", SQUARE),
    ("auto-true-upper", lx.AutoLinearSolver(well_posed=True), "upper", SQUARE),
    ("auto-none-general", lx.AutoLinearSolver(well_posed=None), "general", SQUARE),
    ("auto-none-tridiagonal", lx.AutoLinearSolver(well_posed=None), "tridiagonal", SQUARE),
    ("auto-none-tall", lx.AutoLinearSolver(well_posed=None), "general", TALL),
    ("auto-none-wide", lx.AutoLinearSolver(well_posed=None), "general", WIDE),
    ("auto-false-rank2-square", lx.AutoLinearSolver(well_posed=False), "rank_deficient(2)", SQUARE),
    ("auto-false-rank2-tall", lx.AutoLinearSolver(well_posed=False), "rank_deficient(2)", TALL),
    ("auto-false-rank1-wide", lx.AutoLinearSolver(well_posed=False), "rank_deficient(1)", WIDE),
    ("auto-false-diagonal", lx.AutoLinearSolver(well_posed=False), "diagonal", SQUARE),
]
SOLVER_CASE_IDS = [c[0] for c in SOLVER_CASES]

# The full product with every operator builder is ~900 cases; most of what a builder can get wrong
# (structures, tags, transposes, as_matrix) shows up with any solver that reads it. So every builder
# runs with the solvers below, which between them read every tag and every code path of the
# solvers (transposed QR for wide, pinv for rank-deficient, the normal operator, the auto choice);
# the remaining solver cases run with the plain matrix and function operators.
ALL_BUILDER_CASES = {
    "lu",
    "cholesky-psd",
    "cholesky-nsd",
    "triangular-upper",
    "triangular-unit-lower",
    "diagonal",
    "tridiagonal",
    "qr-tall",
    "qr-wide",
    "pivoted-qr-rank2-wide",
    "svd-rank2-tall",
    "normal-cholesky-tall",
    "auto-none-general",
}
_BUILDERS = dict(OPERATOR_BUILDERS)
SOLVE_PARAMS = [
    pytest.param(builder_name, case, id=f"{case[0]}-{builder_name}")
    for case in SOLVER_CASES
    for builder_name in _BUILDERS
    if case[0] in ALL_BUILDER_CASES or builder_name in ("matrix", "function")
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("builder_name, case", SOLVE_PARAMS)
def test_dense_solver_matches_numpy(builder_name, case, dtype, rng):
    _, solver, kind, shape = case
    a = make_matrix(rng, shape, dtype, kind)
    b = random_vector(rng, shape[0], dtype)
    built = _BUILDERS[builder_name](a, tags_for_kind(kind, dtype))
    sol = lx.linear_solve(built.operator, built.from_flat_out(b), solver)
    assert sol.result == lx.RESULTS.successful
    assert_structure(sol.value, built.in_structure)
    np.testing.assert_allclose(built.to_flat_in(sol.value), reference(a, b), **tolerances(dtype))


def test_tall_solution_has_a_residual(rng):
    # Guards the test cases above: the tall right-hand sides are not in the range of A, so the
    # least-squares cases really are least squares (a residual of order one).
    a = make_matrix(rng, TALL, np.float64)
    b = random_vector(rng, TALL[0], np.float64)
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.QR()).value
    residual = b - a @ np.asarray(x)
    assert np.linalg.norm(residual) > 0.1
    # ... and it is orthogonal to the range of A (the normal equations hold).
    np.testing.assert_allclose(a.T @ residual, 0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "solver",
    [lx.SVD(), lx.PivotedQR(), lx.AutoLinearSolver(well_posed=False)],
    ids=["svd", "pivoted-qr", "auto-false"],
)
def test_rank_deficient_gives_minimum_norm(solver, dtype, rng):
    # The pseudoinverse solution is the least-squares solution of smallest norm: no component in
    # the null space. Checked directly against the null space of A, not only against lstsq.
    a = make_matrix(rng, (5, 4), dtype, "rank_deficient(2)")
    b = random_vector(rng, 5, dtype)
    x = np.asarray(lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value)
    _, s, vh = np.linalg.svd(a)
    null = vh[2:]  # rows spanning the null space
    np.testing.assert_allclose(null @ x, 0, atol=1e-12)
    np.testing.assert_allclose(x, np.linalg.pinv(a) @ b, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name, make", STRUCTURED_BUILDERS, ids=[n for n, _ in STRUCTURED_BUILDERS])
@pytest.mark.parametrize(
    "solver",
    [lx.AutoLinearSolver(well_posed=None), lx.AutoLinearSolver(well_posed=False), lx.SVD()],
    ids=["auto-none", "auto-false", "svd"],
)
def test_structured_operators(solver, name, make, dtype, rng):
    built, dense = make(rng, 4, dtype)
    b = random_vector(rng, dense.shape[0], dtype)
    sol = lx.linear_solve(built.operator, built.from_flat_out(b), solver)
    assert_structure(sol.value, built.in_structure)
    np.testing.assert_allclose(
        built.to_flat_in(sol.value), reference(dense, b), **tolerances(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "name, solver",
    [
        ("diagonal", lx.Diagonal()),
        ("diagonal", lx.Diagonal(well_posed=True)),
        ("pytree_diagonal", lx.Diagonal()),
        ("tridiagonal", lx.Tridiagonal()),
        ("tridiagonal", lx.LU()),
        ("tridiagonal_plus_diagonal", lx.Tridiagonal()),
    ],
    ids=[
        "diagonal",
        "diagonal-well-posed",
        "pytree-diagonal",
        "tridiagonal",
        "tridiagonal-lu",
        "tridiagonal-plus-diagonal",
    ],
)
def test_structured_operators_explicit_solver(name, solver, dtype, rng):
    built, dense = dict(STRUCTURED_BUILDERS)[name](rng, 5, dtype)
    b = random_vector(rng, 5, dtype)
    sol = lx.linear_solve(built.operator, built.from_flat_out(b), solver)
    np.testing.assert_allclose(
        built.to_flat_in(sol.value), np.linalg.solve(dense, b), **tolerances(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "solver",
    [
        lx.Diagonal(well_posed=False),
        lx.AutoLinearSolver(well_posed=False),
        lx.SVD(),
        lx.PivotedQR(),
    ],
    ids=["diagonal", "auto-false", "svd", "pivoted-qr"],
)
def test_diagonal_with_zero_entry_gives_pinv(solver, dtype, rng):
    d = np.diagonal(make_matrix(rng, (4, 4), dtype, "diagonal")).copy()
    d[1] = 0
    b = random_vector(rng, 4, dtype)
    op = lx.DiagonalLinearOperator(jnp.asarray(d))
    sol = lx.linear_solve(op, b, solver)
    expected = np.where(d == 0, 0, b / np.where(d == 0, 1, d))
    np.testing.assert_allclose(sol.value, expected, **tolerances(dtype))
    np.testing.assert_allclose(sol.value, np.linalg.pinv(np.diag(d)) @ b, **tolerances(dtype))


def test_diagonal_rcond_truncates_small_entries():
    d = jnp.array([1.0, 1e-9, 2.0])
    b = jnp.array([1.0, 1.0, 1.0])
    op = lx.DiagonalLinearOperator(d)
    # Below the threshold 1e-8 * max|d| = 2e-8: treated as zero.
    np.testing.assert_allclose(
        lx.linear_solve(op, b, lx.Diagonal(rcond=1e-8)).value, [1.0, 0.0, 0.5]
    )
    # Default threshold n * eps: kept.
    np.testing.assert_allclose(
        lx.linear_solve(op, b, lx.Diagonal()).value, [1.0, 1e9, 0.5], rtol=1e-14
    )


@pytest.mark.parametrize(
    "solver", [lx.SVD(rcond=1e-3), lx.PivotedQR(rcond=1e-3)], ids=["svd", "pivoted-qr"]
)
def test_rcond_truncates_small_singular_values(solver, rng):
    # A full-rank matrix with one singular value at 1e-6: with rcond=1e-3 it is treated as rank 3.
    u, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    s = np.array([3.0, 2.0, 1.0, 1e-6])
    a = (u * s) @ v.T
    b = rng.standard_normal(4)
    truncated = (u[:, :3] * s[:3]) @ v[:, :3].T
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value
    # The solve is the pinv of the truncated matrix, up to the O(1e-6) the dropped term perturbs
    # the kept part of a pivoted QR (for the SVD it is exact up to rounding).
    np.testing.assert_allclose(x, np.linalg.pinv(truncated) @ b, rtol=1e-5, atol=1e-5)
    assert np.linalg.norm(x) < 10  # not the ~1e6 of the untruncated solve


def test_real_operator_complex_vector(rng):
    # A real operator applied to a complex right-hand side: the solution is complex, A⁻¹ b.
    a = make_matrix(rng, SQUARE, np.float64)
    b = random_vector(rng, 4, np.complex128)
    for solver in (lx.LU(), lx.QR(), lx.SVD()):
        x = lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value
        assert jnp.iscomplexobj(x)
        np.testing.assert_allclose(x, np.linalg.solve(a, b), **tolerances(np.complex128))


def test_complex_operator_real_vector(rng):
    a = make_matrix(rng, TALL, np.complex128)
    b = random_vector(rng, 6, np.float64)
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.QR()).value
    assert x.dtype == jnp.complex128
    np.testing.assert_allclose(x, reference(a, b), **tolerances(np.complex128))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pytree_vectors_under_jit(dtype, rng):
    # Vectors that are dicts / tuples of arrays of several shapes, inside `jax.jit`.
    a = make_matrix(rng, TALL, dtype)
    b = random_vector(rng, 6, dtype)
    built = build_pytree(a)

    @jax.jit
    def solve(op, vec):
        return lx.linear_solve(op, vec, lx.QR()).value

    out = solve(built.operator, built.from_flat_out(b))
    assert_structure(out, built.in_structure)
    assert set(out) == {"s", "v"}
    np.testing.assert_allclose(built.to_flat_in(out), reference(a, b), **tolerances(dtype))


def test_default_solver_is_auto(rng):
    a = make_matrix(rng, TALL, np.float64)
    b = random_vector(rng, 6, np.float64)
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b)
    assert isinstance(sol.state.solver, lx.QR)
    np.testing.assert_allclose(sol.value, reference(a, b), **tolerances(np.float64))


# ---------------------------------------------------------------------------------------------
# AutoLinearSolver.select_solver

# (matrix kind, shape, well_posed) -> the solver type expected, for the plain matrix operator
# tagged with the kind's tags.
SELECT_CASES = [
    ("general", SQUARE, True, lx.LU),
    ("general", SQUARE, None, lx.LU),
    ("symmetric", SQUARE, None, lx.LU),
    ("spd", SQUARE, True, lx.Cholesky),
    ("spd", SQUARE, None, lx.Cholesky),
    ("nsd", SQUARE, None, lx.Cholesky),
    ("lower", SQUARE, None, lx.Triangular),
    ("upper", SQUARE, True, lx.Triangular),
    ("unit_lower", SQUARE, None, lx.Triangular),
    ("diagonal", SQUARE, True, lx.Diagonal),
    ("diagonal", SQUARE, None, lx.Diagonal),
    ("diagonal", SQUARE, False, lx.Diagonal),
    ("tridiagonal", SQUARE, None, lx.Tridiagonal),
    ("general", TALL, None, lx.QR),
    ("general", WIDE, None, lx.QR),
    ("general", SQUARE, False, lx.PivotedQR),
    ("spd", SQUARE, False, lx.PivotedQR),
    ("tridiagonal", SQUARE, False, lx.PivotedQR),
    ("lower", SQUARE, False, lx.PivotedQR),
    ("general", TALL, False, lx.PivotedQR),
    ("general", WIDE, False, lx.PivotedQR),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("builder_name", list(_BUILDERS))
@pytest.mark.parametrize(
    "kind, shape, well_posed, expected",
    SELECT_CASES,
    ids=[f"{k}-{s[0]}x{s[1]}-{w}" for k, s, w, _ in SELECT_CASES],
)
def test_select_solver(kind, shape, well_posed, expected, builder_name, dtype, rng):
    a = make_matrix(rng, shape, dtype, kind)
    op = _BUILDERS[builder_name](a, tags_for_kind(kind, dtype)).operator
    chosen = lx.AutoLinearSolver(well_posed=well_posed).select_solver(op)
    assert type(chosen) is expected
    if expected is lx.Diagonal:
        # A well-posed diagonal solve reports zeros as singular; `well_posed=False` gives the pinv.
        assert chosen.well_posed is (well_posed is not False)


@pytest.mark.parametrize(
    "name, well_posed, expected",
    [
        ("diagonal", None, lx.Diagonal),
        ("pytree_diagonal", True, lx.Diagonal),
        ("tridiagonal", None, lx.Tridiagonal),
        ("identity", None, lx.Diagonal),
        ("identity_pytree", False, lx.Diagonal),
        ("identity_padding", None, lx.QR),
        ("identity_truncating", False, lx.PivotedQR),
        ("diagonal_at_matrix", None, lx.LU),
    ],
)
def test_select_solver_structured(name, well_posed, expected, rng):
    built, _ = dict(STRUCTURED_BUILDERS)[name](rng, 4, np.float64)
    assert (
        type(lx.AutoLinearSolver(well_posed=well_posed).select_solver(built.operator)) is expected
    )


def test_auto_state_records_the_choice(rng):
    a = make_matrix(rng, SQUARE, np.float64, "spd")
    op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    sol = lx.linear_solve(
        op, random_vector(rng, 4, np.float64), lx.AutoLinearSolver(well_posed=True)
    )
    assert isinstance(sol.state.solver, lx.Cholesky)


# ---------------------------------------------------------------------------------------------
# invert

INVERT_CASES = [
    ("lu", lx.LU(), "general", SQUARE),
    ("cholesky", lx.Cholesky(), "spd", SQUARE),
    ("triangular", lx.Triangular(), "lower", SQUARE),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", SQUARE),
    ("qr-tall", lx.QR(), "general", TALL),
    ("qr-wide", lx.QR(), "general", WIDE),
    ("pivoted-qr-rank2", lx.PivotedQR(), "rank_deficient(2)", TALL),
    ("svd-rank2", lx.SVD(), "rank_deficient(2)", WIDE),
    ("normal-cholesky-tall", lx.Normal(lx.Cholesky()), "general", TALL),
    ("normal-lu-wide", lx.Normal(lx.LU()), "general", WIDE),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", INVERT_CASES, ids=[c[0] for c in INVERT_CASES])
def test_invert(case, dtype, rng):
    _, solver, kind, shape = case
    m, n = shape
    a = make_matrix(rng, shape, dtype, kind)
    pinv = np.linalg.pinv(a)
    b = random_vector(rng, m, dtype)
    c = random_vector(rng, n, dtype)
    inv = lx.invert(lx.MatrixLinearOperator(a, tags_for_kind(kind, dtype)), solver)
    tol = tolerances(dtype)
    assert inv.in_size() == m and inv.out_size() == n
    np.testing.assert_allclose(inv.mv(b), pinv @ b, **tol)
    # The transpose of A⁺ is (Aᵀ)⁺, solved with the transposed factorization (plain transpose, no
    # conjugation, also for complex).
    np.testing.assert_allclose(inv.T.mv(c), pinv.T @ c, **tol)
    np.testing.assert_allclose(inv.T.T.mv(b), pinv @ b, **tol)
    np.testing.assert_allclose(lx.conj(inv).mv(b), pinv.conj() @ b, **tol)
    np.testing.assert_allclose(inv.as_matrix(), pinv, **tol)


def test_invert_pytree_structures(rng):
    a = make_matrix(rng, TALL, np.float64)
    built = build_pytree(a)
    inv = lx.invert(built.operator, lx.QR())
    assert_structure(inv.in_structure(), built.out_structure)
    b = random_vector(rng, 6, np.float64)
    out = inv.mv(built.from_flat_out(b))
    assert_structure(out, built.in_structure)
    np.testing.assert_allclose(built.to_flat_in(out), reference(a, b), **tolerances(np.float64))


def test_invert_factorizes_once(rng):
    a = make_matrix(rng, SQUARE, np.float64)
    b1, b2 = random_vector(rng, 4, np.float64), random_vector(rng, 4, np.float64)

    def f(a, b1, b2):
        inv = lx.invert(lx.MatrixLinearOperator(a), lx.LU())
        return inv.mv(b1), inv.T.mv(b2)

    # Counted in the compiled program, where the two solves (inside the solve primitive) are
    # lowered too: one LU for both, however many solves use it.
    assert count_compiled_calls(f, "getrf", a, b1, b2) == 1
    x1, x2 = jax.jit(f)(a, b1, b2)
    np.testing.assert_allclose(x1, np.linalg.solve(a, b1), **tolerances(np.float64))
    np.testing.assert_allclose(x2, np.linalg.solve(a.T, b2), **tolerances(np.float64))


# ---------------------------------------------------------------------------------------------
# Reusing state; what a Solution holds

STATE_SOLVERS = [
    (lx.LU(), "general", SQUARE, "lu"),
    (lx.Cholesky(), "spd", SQUARE, "cholesky"),
    (lx.QR(), "general", TALL, "qr"),
    (lx.PivotedQR(), "rank_deficient(2)", WIDE, "pivoted_qr"),
    (lx.SVD(), "general", WIDE, "svd"),
]


@pytest.mark.parametrize(
    "solver, kind, shape, factorization", STATE_SOLVERS, ids=[s[3] for s in STATE_SOLVERS]
)
def test_reuse_state(solver, kind, shape, factorization, rng):
    a = make_matrix(rng, shape, np.float64, kind)
    op = lx.MatrixLinearOperator(a, tags_for_kind(kind, np.float64))
    b1, b2 = random_vector(rng, shape[0], np.float64), random_vector(rng, shape[0], np.float64)
    sol1 = lx.linear_solve(op, b1, solver)
    sol2 = lx.linear_solve(op, b2, solver, state=sol1.state)
    np.testing.assert_allclose(sol2.value, reference(a, b2), **tolerances(np.float64))
    state = solver.init(op, {})
    sol3 = lx.linear_solve(op, b2, solver, state=state)
    np.testing.assert_allclose(sol3.value, sol2.value, rtol=0, atol=0)

    # With a state given, nothing is factorized again: counted in the compiled program, which
    # includes what `compute` does inside the solve primitive (a jaxpr would not show it).
    def with_state(a, b, state):
        return lx.linear_solve(lx.MatrixLinearOperator(a, op.tags), b, solver, state=state).value

    def without_state(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, op.tags), b, solver).value

    routine = LAPACK_FACTORIZATION[factorization]
    assert count_compiled_calls(without_state, routine, a, b2) == 1
    assert count_compiled_calls(with_state, routine, a, b2, state) == 0
    np.testing.assert_allclose(
        jax.jit(with_state)(a, b2, state), sol2.value, **tolerances(np.float64)
    )


@pytest.mark.parametrize(
    "solver",
    [lx.LU(), lx.QR(), lx.PivotedQR(), lx.SVD(), lx.AutoLinearSolver(well_posed=None)],
    ids=["lu", "qr", "pivoted-qr", "svd", "auto"],
)
def test_solution_fields(solver, rng):
    a = make_matrix(rng, SQUARE, np.float64)
    b = random_vector(rng, 4, np.float64)
    op = lx.MatrixLinearOperator(a)
    sol = lx.linear_solve(op, b, solver)
    assert isinstance(sol, lx.Solution)
    assert isinstance(sol.stats, dict)
    assert sol.result == lx.RESULTS.successful
    # The state is the solver's own `init` of the operator (same leaves, same structure).
    expected = solver.init(op, {})
    assert jax.tree_util.tree_structure(sol.state) == jax.tree_util.tree_structure(expected)
    for x, y in zip(jax.tree_util.tree_leaves(sol.state), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(x, y)
    # Under jit too, with the result comparable inside.
    out = jax.jit(lambda op, b: lx.linear_solve(op, b, solver))(op, b)
    assert bool(out.result == lx.RESULTS.successful)
    np.testing.assert_allclose(out.value, sol.value, **tolerances(np.float64))


# ---------------------------------------------------------------------------------------------
# Property test: any shape, rank and dtype


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    m=st.integers(1, 5),
    n=st.integers(1, 5),
    rank_drop=st.integers(0, 2),
    complex_=st.booleans(),
    solver_index=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_any_shape_and_rank_property(m, n, rank_drop, complex_, solver_index, seed):
    rng = np.random.default_rng(seed)
    dtype = np.complex128 if complex_ else np.float64
    rank = max(min(m, n) - rank_drop, 0)
    a = make_matrix(rng, (m, n), dtype, ("rank_deficient", rank))
    b = random_vector(rng, m, dtype)
    solver = [lx.SVD(), lx.PivotedQR(), lx.AutoLinearSolver(well_posed=False)][solver_index]
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value
    # For rank 0 (the zero matrix) lstsq gives exactly 0, as must linopx.
    np.testing.assert_allclose(x, np.linalg.lstsq(a, b, rcond=None)[0], **tolerances(dtype))


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 5),
    n=st.integers(1, 5),
    complex_=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_full_rank_qr_and_normal_property(m, n, complex_, seed):
    rng = np.random.default_rng(seed)
    dtype = np.complex128 if complex_ else np.float64
    a = make_matrix(rng, (m, n), dtype)
    b = random_vector(rng, m, dtype)
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    for solver in (lx.QR(), lx.Normal(lx.Cholesky()), lx.AutoLinearSolver(well_posed=None)):
        x = lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value
        np.testing.assert_allclose(x, expected, **tolerances(dtype))


# ---------------------------------------------------------------------------------------------
# Tracing: a solve is traced once per compilation (its lowering reuses that trace)


class _CountingLU(lx.LU):
    def init(self, operator, options):
        _INIT_CALLS.append(1)
        return super().init(operator, options)

    def compute(self, state, vector, options):
        _COMPUTE_CALLS.append(1)
        return super().compute(state, vector, options)


_COMPUTE_CALLS: list = []
_INIT_CALLS: list = []


def test_solver_is_traced_once_per_compilation(rng):
    a = make_matrix(rng, (5, 5), np.float64)
    b = random_vector(rng, 5, np.float64)
    _COMPUTE_CALLS.clear()
    # A fresh shape, so that nothing is cached yet; `throw=False` keeps the checks out.
    a7 = make_matrix(rng, (7, 7), np.float64)
    b7 = random_vector(rng, 7, np.float64)
    fn = jax.jit(
        lambda a, b: (
            lx.linear_solve(lx.MatrixLinearOperator(a), b, _CountingLU(), throw=False).value
        )
    )
    np.testing.assert_allclose(fn(a7, b7), np.linalg.solve(a7, b7), rtol=1e-10)
    assert len(_COMPUTE_CALLS) == 1
    np.testing.assert_allclose(fn(a, b), np.linalg.solve(a, b), rtol=1e-10)
    assert len(_COMPUTE_CALLS) == 2


_GLOBAL_MATRIX: list = []


def _apply_global_matrix(v):
    return _GLOBAL_MATRIX[0] @ v


def test_solve_with_a_large_global_constant(rng):
    # An operator function that reads a large array from a global (a closure's arrays become
    # operands, but a global's become constants of the traced program). GMRES applies the
    # operator inside the solve, so the program captures 1.3 MB: it is not cached (the cache must
    # not keep users' arrays alive), the lowering traces again, and the solve is still right.
    from linopx.autodiff import primitive

    n = 400
    _GLOBAL_MATRIX[:] = [jnp.asarray(make_matrix(rng, (n, n), np.float64) + 3 * np.eye(n))]
    struct = jax.ShapeDtypeStruct((n,), jnp.float64)
    b = random_vector(rng, n, np.float64)

    @jax.jit
    def solve(b):
        op = lx.FunctionLinearOperator(_apply_global_matrix, struct)
        return lx.linear_solve(op, b, lx.GMRES(rtol=1e-12, atol=0.0)).value

    primitive._TRACE_CACHE.clear()
    expected = np.linalg.solve(np.asarray(_GLOBAL_MATRIX[0]), b)
    # GMRES stops at |r| <= 1e-12 |b|; the condition number here is ~1e2.
    assert np.linalg.norm(solve(b) - expected) <= 1e-8 * np.linalg.norm(expected)
    entries = list(primitive._TRACE_CACHE.values())
    assert entries and all(e[2] is None for e in entries)
    _GLOBAL_MATRIX.clear()


def test_eager_calls_compile_once(rng):
    # Outside `jit`, a solve compiles once per signature and is then reused: neither `init` nor
    # `compute` runs in Python again on the second call, and the answers are right.
    a = make_matrix(rng, (6, 6), np.float64)
    b1, b2 = random_vector(rng, 6, np.float64), random_vector(rng, 6, np.float64)
    _COMPUTE_CALLS.clear()
    _INIT_CALLS.clear()
    x1 = lx.linear_solve(lx.MatrixLinearOperator(a), b1, _CountingLU()).value
    calls = (len(_INIT_CALLS), len(_COMPUTE_CALLS))
    assert calls[0] >= 1 and calls[1] >= 1
    x2 = lx.linear_solve(lx.MatrixLinearOperator(a + 1.0), b2, _CountingLU()).value
    assert (len(_INIT_CALLS), len(_COMPUTE_CALLS)) == calls
    np.testing.assert_allclose(x1, np.linalg.solve(a, b1), rtol=1e-10)
    np.testing.assert_allclose(x2, np.linalg.solve(a + 1.0, b2), rtol=1e-10)


def test_eager_grad_reuses_compiled_solves(rng):
    # An eager `jax.grad` binds the primitive with concrete values: those binds are compiled once
    # per signature too, so a second gradient traces no solver code.
    a = make_matrix(rng, (6, 6), np.float64)
    b = random_vector(rng, 6, np.float64)

    def loss(a, b):
        return jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), b, _CountingLU()).value ** 2)

    g1 = jax.grad(loss, argnums=(0, 1))(a, b)
    calls = len(_COMPUTE_CALLS)
    g2 = jax.grad(loss, argnums=(0, 1))(a + 1.0, b)
    assert len(_COMPUTE_CALLS) == calls
    for g, shift in ((g1, 0.0), (g2, 1.0)):
        m = a + shift
        x = np.linalg.solve(m, b)
        lam = np.linalg.solve(m.T, 2 * x)  # d loss / d b
        np.testing.assert_allclose(g[1], lam, rtol=1e-9)
        np.testing.assert_allclose(g[0], -np.outer(lam, x), rtol=1e-9)
