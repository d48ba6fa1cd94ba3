"""Mistakes and failures: trace-time mistakes raise `TypeError`/`ValueError` saying what to do;
run-time failures are a `RESULTS` value (`throw=False`) or an error carrying its message
(`throw=True`); integer input is promoted rather than rejected."""

from __future__ import annotations

import re
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import build_pytree, make_matrix, random_vector, tolerances
from hypothesis import given, settings

import linopx as lx

# The run-time error carries the `RESULTS` message. Match all of it: the error text also contains
# a stack trace, whose function names (e.g. "test_singular") must not satisfy the match.
SINGULAR_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.singular])
NONFINITE_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.nonfinite_input])

TOL = tolerances(np.float64)


def _op(rng, shape=(3, 3), kind="general", tags=()):
    return lx.MatrixLinearOperator(make_matrix(rng, shape, np.float64, kind), tags)


# ---------------------------------------------------------------------------------------------
# Trace-time mistakes


@pytest.mark.parametrize("raw", [np.eye(3), jnp.eye(3)], ids=["numpy", "jax"])
def test_raw_array_as_operator(raw):
    with pytest.raises(TypeError, match="MatrixLinearOperator"):
        lx.linear_solve(raw, jnp.ones(3))
    with pytest.raises(TypeError, match="MatrixLinearOperator"):
        lx.invert(raw)
    with pytest.raises(TypeError, match="MatrixLinearOperator"):
        lx.AutoLinearSolver().select_solver(raw)
    with pytest.raises(TypeError, match="MatrixLinearOperator"):
        jax.jit(lambda a: lx.linear_solve(a, jnp.ones(3)))(raw)


def test_non_operator_without_shape():
    with pytest.raises(TypeError, match="linopx operator"):
        lx.linear_solve(lambda v: v, jnp.ones(3))


@pytest.mark.parametrize(
    "vector",
    [
        jnp.ones(4),
        jnp.ones((3, 1)),
        jnp.ones(()),
        {"a": jnp.ones(3)},
        (jnp.ones(3),),
        [jnp.ones(3)],
    ],
    ids=["long", "2d", "scalar", "dict", "tuple", "list"],
)
def test_vector_structure_mismatch(vector, rng):
    with pytest.raises(ValueError, match="output structure"):
        lx.linear_solve(_op(rng), vector)


def test_pytree_vector_structure_mismatch(rng):
    built = build_pytree(make_matrix(rng, (4, 3), np.float64))
    good = built.from_flat_out(np.ones(4))
    lx.linear_solve(built.operator, good, lx.QR())  # the right structure is accepted
    with pytest.raises(ValueError, match="output structure"):
        lx.linear_solve(built.operator, jnp.ones(4), lx.QR())  # flat instead of a tuple
    with pytest.raises(ValueError, match="output structure"):
        lx.linear_solve(built.operator, good[::-1], lx.QR())  # leaves swapped


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 4),
    n=st.integers(1, 4),
    k=st.integers(0, 5),
    extra_dim=st.booleans(),
)
def test_vector_shape_property(m, n, k, extra_dim):
    # Any vector whose shape is not (m,) is rejected at trace time, before anything is computed.
    op = lx.MatrixLinearOperator(jnp.ones((m, n)))
    shape = (k, 1) if extra_dim else (k,)
    if shape == (m,):
        assert lx.linear_solve(op, jnp.zeros(shape), lx.SVD()).value.shape == (n,)
    else:
        with pytest.raises(ValueError, match="output structure"):
            lx.linear_solve(op, jnp.zeros(shape), lx.SVD())


@pytest.mark.parametrize("shape", [(4, 3), (3, 4)], ids=["tall", "wide"])
def test_well_posed_auto_rejects_non_square(shape, rng):
    op = _op(rng, shape)
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(op, jnp.ones(shape[0]), lx.AutoLinearSolver(well_posed=True))
    with pytest.raises(ValueError, match="square"):
        lx.AutoLinearSolver(well_posed=True).select_solver(op)


@pytest.mark.parametrize(
    "solver, match",
    [
        (lx.Cholesky(), "positive_semidefinite_tag"),
        (lx.Triangular(), "triangular_tag"),
        (lx.Diagonal(), "diagonal"),
        (lx.Tridiagonal(), "tridiagonal"),
    ],
    ids=["cholesky", "triangular", "diagonal", "tridiagonal"],
)
def test_structured_solver_without_tag(solver, match, rng):
    # A symmetric tag is not enough for Cholesky (symmetric is not definite).
    op = _op(rng, (3, 3), "symmetric", lx.symmetric_tag)
    with pytest.raises(ValueError, match=match):
        lx.linear_solve(op, jnp.ones(3), solver)
    with pytest.raises(ValueError, match=match):
        lx.invert(op, solver)


@pytest.mark.parametrize(
    "solver",
    [lx.LU(), lx.Cholesky(), lx.Triangular(), lx.Diagonal(), lx.Tridiagonal()],
    ids=["lu", "cholesky", "triangular", "diagonal", "tridiagonal"],
)
@pytest.mark.parametrize("shape", [(4, 3), (3, 4)], ids=["tall", "wide"])
def test_square_only_solvers_reject_non_square(solver, shape):
    op = lx.MatrixLinearOperator(jnp.ones(shape))
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(op, jnp.ones(shape[0]), solver)


def test_options(rng):
    op = _op(rng)
    with pytest.raises(ValueError, match="Unknown options"):
        lx.linear_solve(op, jnp.ones(3), options={"x0": jnp.ones(3)})
    with pytest.raises(ValueError, match="Unknown options"):
        lx.invert(op, options={"tol": 1e-3})
    with pytest.raises(TypeError, match="dict"):
        lx.linear_solve(op, jnp.ones(3), options=[("y0", jnp.ones(3))])
    # The known ones are accepted (and ignored by direct solvers).
    x = lx.linear_solve(
        op, jnp.ones(3), lx.LU(), options={"y0": jnp.zeros(3), "preconditioner": op}
    )
    np.testing.assert_allclose(x.value, np.linalg.solve(op.matrix, np.ones(3)), **TOL)


@pytest.mark.parametrize(
    "solver", ["LU", lx.LU, None, np.linalg.solve], ids=["str", "class", "none", "function"]
)
def test_non_solver(solver, rng):
    with pytest.raises(TypeError, match="solver"):
        lx.linear_solve(_op(rng), jnp.ones(3), solver)


def test_bad_solver_fields():
    with pytest.raises(TypeError, match="solver"):
        lx.Normal("Cholesky")
    with pytest.raises(ValueError, match="well_posed"):
        lx.AutoLinearSolver(well_posed="yes")


@pytest.mark.parametrize(
    "cls", [lx.SVD, lx.PivotedQR, lx.Diagonal], ids=["svd", "pivoted-qr", "diagonal"]
)
@pytest.mark.parametrize(
    "rcond", [-1.0, -1e-30, float("nan")], ids=["minus-one", "tiny-negative", "nan"]
)
def test_bad_rcond(cls, rcond):
    with pytest.raises(ValueError, match="rcond"):
        cls(rcond=rcond)
    cls(rcond=0.0)  # zero is allowed


# ---------------------------------------------------------------------------------------------
# Integer input


@pytest.mark.parametrize(
    "solver",
    [lx.LU(), lx.QR(), lx.SVD(), lx.AutoLinearSolver(well_posed=None)],
    ids=["lu", "qr", "svd", "auto"],
)
def test_integer_input_is_cast_to_float64(solver):
    a_int = np.array([[4, 1, 0], [1, 3, 1], [0, 2, 5]])
    b_int = np.array([1, -2, 3])
    expected = np.linalg.solve(a_int.astype(np.float64), b_int.astype(np.float64))
    for a in (a_int, jnp.asarray(a_int)):
        for b in (b_int, jnp.asarray(b_int)):
            sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, solver)
            assert sol.value.dtype == jnp.float64
            np.testing.assert_allclose(sol.value, expected, **TOL)
    # A float matrix with an integer vector, and under jit.
    out = jax.jit(lambda b: lx.linear_solve(lx.MatrixLinearOperator(a_int * 1.0), b, solver).value)(
        b_int
    )
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, expected, **TOL)


def test_integer_vector_pytree():
    op = lx.DiagonalLinearOperator({"a": jnp.array([2.0, 4.0]), "b": jnp.array([8.0])})
    out = lx.linear_solve(op, {"a": jnp.array([1, 2]), "b": jnp.array([4])}).value
    assert out["a"].dtype == jnp.float64 and out["b"].dtype == jnp.float64
    np.testing.assert_allclose(out["a"], [0.5, 0.5])
    np.testing.assert_allclose(out["b"], [0.5])


# ---------------------------------------------------------------------------------------------
# Run-time failures: RESULTS

# (solver, matrix kind, tags) for a 3 x 3 operator.
ALL_SOLVERS = [
    ("lu", lx.LU(), "general", ()),
    ("qr", lx.QR(), "general", ()),
    ("pivoted-qr", lx.PivotedQR(), "general", ()),
    ("svd", lx.SVD(), "general", ()),
    ("cholesky", lx.Cholesky(), "spd", (lx.positive_semidefinite_tag,)),
    ("triangular", lx.Triangular(), "lower", (lx.lower_triangular_tag,)),
    ("diagonal", lx.Diagonal(), "diagonal", (lx.diagonal_tag,)),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", (lx.tridiagonal_tag,)),
    ("normal", lx.Normal(lx.Cholesky()), "general", ()),
    ("auto", lx.AutoLinearSolver(well_posed=None), "general", ()),
]


@pytest.mark.parametrize("where", ["matrix", "vector"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name, solver, kind, tags", ALL_SOLVERS, ids=[c[0] for c in ALL_SOLVERS])
def test_nonfinite_input(name, solver, kind, tags, bad, where, rng):
    a = make_matrix(rng, (3, 3), np.float64, kind)
    b = random_vector(rng, 3, np.float64)
    if where == "matrix":
        a[1, 1] = bad  # on the diagonal, so that every structured solver reads it
    else:
        b[2] = bad

    @jax.jit
    def solve(a, b):
        sol = lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver, throw=False)
        return sol.result == lx.RESULTS.nonfinite_input, sol.result == lx.RESULTS.successful

    is_nonfinite, ok = solve(a, b)
    assert bool(is_nonfinite) and not bool(ok)
    with pytest.raises(Exception, match=NONFINITE_MESSAGE):
        jax.block_until_ready(lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("part", ["real", "imag"])
def test_nonfinite_complex_entry_is_named_when_thrown(bad, part, rng):
    # The thrown error classifies the failure from "all entries finite" flags worked out in the
    # program (`isfinite(sum(a * 0))`): a non-finite real or imaginary part alone must trip them.
    a = make_matrix(rng, (3, 3), np.float64, "general").astype(np.complex128)
    b = random_vector(rng, 3, np.float64).astype(np.complex128)
    a[0, 2] = complex(bad, 1.0) if part == "real" else complex(1.0, bad)
    with pytest.raises(Exception, match=NONFINITE_MESSAGE):
        jax.block_until_ready(lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value)


def test_nonfinite_input_in_pytree_vector_and_function_operator():
    struct = {"x": jax.ShapeDtypeStruct((2,), jnp.float64)}
    op = lx.FunctionLinearOperator(lambda v: {"x": 2 * v["x"]}, struct)
    sol = lx.linear_solve(op, {"x": jnp.array([1.0, jnp.nan])}, lx.LU(), throw=False)
    assert sol.result == lx.RESULTS.nonfinite_input


# Exactly singular 3 x 3 matrices of each structure (an exact zero pivot / diagonal entry).
SINGULAR = {
    "general": np.array([[1.0, 0.0, 2.0], [2.0, 0.0, 1.0], [3.0, 0.0, 1.0]]),
    "spd": np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]),
    "lower": np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 3.0]]),
    "diagonal": np.diag([1.0, 0.0, 2.0]),
    "tridiagonal": np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]),
}


@pytest.mark.parametrize(
    "name, solver, kind, tags",
    [c for c in ALL_SOLVERS if c[0] not in ("pivoted-qr", "svd", "diagonal")]
    + [("diagonal-well-posed", lx.Diagonal(well_posed=True), "diagonal", (lx.diagonal_tag,))],
    ids=[c[0] for c in ALL_SOLVERS if c[0] not in ("pivoted-qr", "svd", "diagonal")]
    + ["diagonal-well-posed"],
)
def test_singular(name, solver, kind, tags):
    a = SINGULAR[kind]
    b = np.array([1.0, 2.0, 3.0])
    sol = lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver, throw=False)
    assert sol.result == lx.RESULTS.singular
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value)


@pytest.mark.parametrize(
    "solver",
    [
        lx.PivotedQR(),
        lx.SVD(),
        lx.Diagonal(well_posed=False),
        lx.AutoLinearSolver(well_posed=False),
    ],
    ids=["pivoted-qr", "svd", "diagonal", "auto-false"],
)
def test_singular_is_fine_for_pseudoinverse_solvers(solver):
    a = SINGULAR["diagonal"]
    b = np.array([1.0, 2.0, 3.0])
    sol = lx.linear_solve(lx.MatrixLinearOperator(a, lx.diagonal_tag), b, solver)
    assert sol.result == lx.RESULTS.successful
    np.testing.assert_allclose(sol.value, [1.0, 0.0, 1.5], **TOL)


def test_cholesky_indefinite_is_singular():
    # Tagged positive semidefinite but indefinite: documented to give RESULTS.singular.
    a = np.array([[1.0, 2.0], [2.0, 1.0]])
    sol = lx.linear_solve(
        lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag),
        np.ones(2),
        lx.Cholesky(),
        throw=False,
    )
    assert sol.result == lx.RESULTS.singular


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "name, solver, kind, tags",
    [
        ("lu", lx.LU(), "general", ()),
        ("qr", lx.QR(), "general", ()),
        ("qr-tall", lx.QR(), "tall", ()),
        ("cholesky", lx.Cholesky(), "spd", (lx.positive_semidefinite_tag,)),
    ],
    ids=["lu", "qr", "qr-tall", "cholesky"],
)
def test_numerically_singular_is_reported(name, solver, kind, tags, seed):
    # "A singular matrix gives `singular`, never a silent wrong number" (STYLE.md), and
    # `RESULTS.singular` is documented as "singular (or numerically so)". A rank-deficient matrix
    # that is singular only up to rounding (smallest singular value ~1e-16 instead of exactly 0)
    # must not come back as `successful` with a solution of size ~1e16.
    rng = np.random.default_rng(seed)
    if kind == "spd":
        q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        a = (q * np.array([1.0, 2.0, 3.0, 0.0])) @ q.T
        a = (a + a.T) / 2
    elif kind == "tall":
        a = make_matrix(rng, (6, 4), np.float64, "rank_deficient(3)")
    else:
        a = make_matrix(rng, (4, 4), np.float64, "rank_deficient(3)")
    b = random_vector(rng, a.shape[0], np.float64)
    sol = lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver, throw=False)
    assert sol.result == lx.RESULTS.singular, (
        f"successful, with |x| = {np.linalg.norm(sol.value):.3g}"
    )


@pytest.mark.parametrize(
    "solver, tags",
    [
        (lx.LU(), ()),
        (lx.QR(), ()),
        (lx.Cholesky(), (lx.positive_semidefinite_tag,)),
        (lx.Diagonal(), (lx.diagonal_tag,)),
        (lx.Triangular(), (lx.lower_triangular_tag,)),
        (lx.Tridiagonal(), (lx.tridiagonal_tag,)),
    ],
    ids=["lu", "qr", "cholesky", "diagonal", "triangular", "tridiagonal"],
)
def test_overflowing_solution_of_finite_inputs_is_singular(solver, tags):
    # Finite inputs, well-scaled pivots, but x = 1e200 / 1e-200 overflows: the solve must fail, and
    # as `singular` (the inputs are finite, so "non-finite input" would be the wrong message).
    a = 1e-200 * np.eye(3)
    b = np.full(3, 1e200)
    sol = lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver, throw=False)
    assert sol.result == lx.RESULTS.singular
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value)


def test_error_under_jit_carries_message(rng):
    a = SINGULAR["general"]

    @jax.jit
    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(solve(a, np.ones(3)))
    # The same compiled function works on a good matrix.
    good = make_matrix(rng, (3, 3), np.float64)
    np.testing.assert_allclose(solve(good, np.ones(3)), np.linalg.solve(good, np.ones(3)), **TOL)


def test_result_is_successful_otherwise(rng):
    sol = lx.linear_solve(_op(rng), np.ones(3), throw=False)
    assert sol.result == lx.RESULTS.successful
    assert not bool(sol.result == lx.RESULTS.singular)
