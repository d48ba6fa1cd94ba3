"""Hypothesis property tests for operators: shapes 1..6 x 1..6, float32/float64/complex128, tags.

Every example runs eagerly (no `jax.jit` inside examples: compiling per example would dominate the
run time), and examples are derandomised so that CI runs are reproducible and equally fast.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    MATRIX_KINDS,
    OPERATOR_BUILDERS,
    SQUARE_KINDS,
    is_complex,
    make_matrix,
    random_vector,
    tags_for_kind,
    tolerances,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import linopx as lx

# Each example with a new shape or dtype compiles JAX's eager operations afresh (~0.1-0.3 s), so
# the example counts are modest; the heavier properties (two operators of independent shapes) get
# fewer.
PROPERTY_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

BUILDERS = dict(OPERATOR_BUILDERS)
# Builders whose structures are flat vectors (so any two compose regardless of builder).
FLAT_BUILDERS = [name for name in BUILDERS if name != "pytree"]
DTYPES = [np.float32, np.float64, np.complex128]

dims = st.integers(1, 6)
shapes = st.tuples(dims, dims)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)
builder_names = st.sampled_from(sorted(BUILDERS))
flat_builder_names = st.sampled_from(FLAT_BUILDERS)
SQUARE_ONLY_TAGS = [
    lx.symmetric_tag,
    lx.positive_semidefinite_tag,
    lx.negative_semidefinite_tag,
    lx.lower_triangular_tag,
    lx.upper_triangular_tag,
    lx.diagonal_tag,
    lx.tridiagonal_tag,
    lx.unit_diagonal_tag,
]


def _rank(kind):
    return int(kind[len("rank_deficient(") : -1]) if kind.startswith("rank_deficient") else 0


@st.composite
def matrices(draw, shape=None, kinds=MATRIX_KINDS):
    """`(matrix, tags, dtype)`: a random matrix of one of `kinds`, with the tags it honestly
    carries.

    The kind is drawn first and the shape to fit it (square for the square-only kinds), so that
    8 of the 11 kinds, and so most examples, are tagged (PSD, NSD, symmetric, triangular, unit
    diagonal, diagonal, tridiagonal): drawing the shape first made square shapes, and so tags,
    rare (one example in six at best). With `shape` given, only the kinds that fit it are drawn."""
    if shape is not None:
        m, n = shape
        kinds = [k for k in kinds if (m == n or k not in SQUARE_KINDS) and _rank(k) <= min(m, n)]
        kind = draw(st.sampled_from(kinds))
    else:
        kind = draw(st.sampled_from(kinds))
        if kind in SQUARE_KINDS:
            m = n = draw(dims)
        else:
            side = st.integers(max(_rank(kind), 1), 6)
            m, n = draw(st.tuples(side, side))
    dtype = draw(dtypes)
    event(f"kind: {kind}")
    a = make_matrix(np.random.default_rng(draw(seeds)), (m, n), dtype, kind)
    return a, tags_for_kind(kind, dtype), dtype


def _wide(a):
    a = np.asarray(a)
    return a.astype(np.complex128 if is_complex(a.dtype) else np.float64)


def _tol(dtype, size):
    tol = tolerances(dtype)
    return {"rtol": tol["rtol"], "atol": tol["atol"] * max(size, 1)}


@PROPERTY_SETTINGS
@given(case=matrices(), name=builder_names, seed=seeds)
def test_adjoint_identity(case, name, seed):
    a, tags, dtype = case
    m, n = a.shape
    built = BUILDERS[name](a, tags)
    rng = np.random.default_rng(seed)
    v = random_vector(rng, n, dtype)
    w = random_vector(rng, m, dtype)
    av = np.asarray(built.to_flat_out(built.operator.mv(built.from_flat_in(v))))
    atw = np.asarray(built.to_flat_in(built.operator.transpose().mv(built.from_flat_out(w))))
    lhs, rhs, ref = np.dot(av, w), np.dot(v, atw), w @ _wide(a) @ v
    # ||A||_2 <= 4 for every kind `make_matrix` makes (tridiagonal: |d| <= 3, off-diagonals <= 0.5).
    scale = np.linalg.norm(v) * np.linalg.norm(w) * 4.0
    rtol = tolerances(dtype)["rtol"] * max(m, n)
    assert abs(lhs - rhs) <= rtol * scale
    assert abs(lhs - ref) <= rtol * scale


@settings(PROPERTY_SETTINGS, max_examples=6)
@given(data=st.data(), name1=builder_names, seed=seeds)
def test_sum_and_difference_are_elementwise(data, name1, seed):
    a, tags_a, dtype = data.draw(matrices())
    shape = a.shape
    b = make_matrix(np.random.default_rng(seed), shape, dtype)
    # Same builder on both sides when pytree-structured; any flat builder otherwise.
    name2 = name1 if name1 == "pytree" else data.draw(flat_builder_names)
    A = BUILDERS[name1](a, tags_a).operator
    B = BUILDERS[name2](b, ()).operator
    tol = _tol(dtype, max(shape))
    np.testing.assert_allclose(np.asarray((A + B).as_matrix()), _wide(a) + _wide(b), **tol)
    np.testing.assert_allclose(np.asarray((A - B).as_matrix()), _wide(a) - _wide(b), **tol)
    np.testing.assert_allclose(np.asarray((A + B).T.as_matrix()), (_wide(a) + _wide(b)).T, **tol)
    # Properties survive a sum only if both terms have them; B has no tags.
    assert not lx.is_positive_semidefinite(A + B) and not lx.is_symmetric(A - B)


@settings(PROPERTY_SETTINGS, max_examples=6)
@given(
    m=dims,
    k=dims,
    n=dims,
    dtype=dtypes,
    name1=flat_builder_names,
    name2=flat_builder_names,
    seed=seeds,
)
def test_composition_is_matrix_product(m, k, n, dtype, name1, name2, seed):
    rng = np.random.default_rng(seed)
    a = make_matrix(rng, (m, k), dtype)
    b = make_matrix(rng, (k, n), dtype)
    A = BUILDERS[name1](a, ()).operator
    B = BUILDERS[name2](b, ()).operator
    C = A @ B
    assert C.in_size() == n and C.out_size() == m
    ref = _wide(a) @ _wide(b)
    tol = _tol(dtype, k)
    np.testing.assert_allclose(np.asarray(C.as_matrix()), ref, **tol)
    np.testing.assert_allclose(np.asarray(C.T.as_matrix()), ref.T, **tol)
    v = random_vector(rng, n, dtype)
    np.testing.assert_allclose(np.asarray(C.mv(jnp.asarray(v))), ref @ v, **tol)


@PROPERTY_SETTINGS
@given(case=matrices(), name=builder_names, scalar=st.floats(-4, 4).filter(lambda x: abs(x) > 0.1))
def test_scaling(case, name, scalar):
    a, tags, dtype = case
    built = BUILDERS[name](a, tags)
    op = built.operator
    tol = _tol(dtype, 1)
    for scaled, ref in [
        (scalar * op, scalar * _wide(a)),
        (op * scalar, scalar * _wide(a)),
        (op / scalar, _wide(a) / scalar),
        (-op, -_wide(a)),
    ]:
        np.testing.assert_allclose(np.asarray(scaled.as_matrix()), ref, **tol)


@PROPERTY_SETTINGS
@given(
    case=matrices(kinds=("spd", "nsd")),
    name=builder_names,
    scalar=st.floats(0.1, 4),
)
def test_scaling_keeps_definiteness(case, name, scalar):
    # Definiteness follows the sign of a Python scalar; a traced (array) scalar's sign is unknown.
    a, tags, dtype = case
    op = BUILDERS[name](a, tags).operator
    psd = lx.is_positive_semidefinite(op)
    assert psd != lx.is_negative_semidefinite(op)  # exactly one of the two tags
    same, flipped = (lx.is_positive_semidefinite, lx.is_negative_semidefinite)[:: 1 if psd else -1]
    assert same(op * scalar) and same(scalar * op) and same(op / scalar)
    assert flipped(op * -scalar) and flipped(-op) and flipped(op / -scalar)
    assert not same(op * -scalar) and not flipped(op * scalar)
    assert not same(op * jnp.asarray(scalar)) and not flipped(op * jnp.asarray(scalar))


@PROPERTY_SETTINGS
@given(case=matrices(), name=builder_names, seed=seeds)
def test_double_transpose_is_original(case, name, seed):
    a, tags, dtype = case
    built = BUILDERS[name](a, tags)
    op = built.operator
    tt = op.transpose().transpose()
    tol = _tol(dtype, a.shape[1])
    np.testing.assert_allclose(np.asarray(tt.as_matrix()), _wide(a), **tol)
    v = random_vector(np.random.default_rng(seed), a.shape[1], dtype)
    np.testing.assert_allclose(
        np.asarray(built.to_flat_out(tt.mv(built.from_flat_in(v)))), _wide(a) @ v, **tol
    )
    assert tt.in_size() == op.in_size() and tt.out_size() == op.out_size()
    for pred in (
        lx.is_symmetric,
        lx.is_lower_triangular,
        lx.is_upper_triangular,
        lx.is_positive_semidefinite,
    ):
        assert pred(tt) == pred(op)
    # Lower and upper swap once.
    assert lx.is_lower_triangular(op.T) == lx.is_upper_triangular(op)


@PROPERTY_SETTINGS
@given(case=matrices(), name=builder_names)
def test_diagonal_and_materialise(case, name):
    a, tags, dtype = case
    op = BUILDERS[name](a, tags).operator
    tol = _tol(dtype, a.shape[1])
    np.testing.assert_allclose(np.asarray(lx.diagonal(op)), np.diagonal(a), **tol)
    np.testing.assert_allclose(np.asarray(lx.materialise(op).as_matrix()), _wide(a), **tol)


# Which solver `AutoLinearSolver(well_posed=None)` must pick for each kind of (full-rank) matrix,
# given the tags the kind carries: every tag-driven branch of the automatic choice.
AUTO_CHOICES = {
    "cholesky": (("spd", "nsd"), lx.Cholesky),
    "triangular": (("lower", "upper", "unit_lower"), lx.Triangular),
    "diagonal": (("diagonal",), lx.Diagonal),
    "tridiagonal": (("tridiagonal",), lx.Tridiagonal),
    "lu": (("symmetric",), lx.LU),  # no solver for symmetric indefinite: LU
    "qr": (("general",), lx.QR),  # non-square (square general matrices are the "lu" case too)
}


@pytest.mark.parametrize("choice", list(AUTO_CHOICES))
def test_auto_solve_on_tagged_operators(choice):
    """Solve with the automatic solver on every operator kind, size, dtype and tagged kind of
    matrix: the tagged solver is the one chosen, and the answer is NumPy's. Parametrized over the
    choices (not drawn), so that every tagged branch runs whatever examples hypothesis picks."""
    kinds, expected = AUTO_CHOICES[choice]
    strategy = matrices(kinds=kinds)
    if choice == "qr":
        strategy = strategy.filter(lambda case: case[0].shape[0] != case[0].shape[1])

    @settings(PROPERTY_SETTINGS, max_examples=3)
    @given(case=strategy, name=builder_names, seed=seeds)
    def solve(case, name, seed):
        a, tags, dtype = case
        built = BUILDERS[name](a, tags)
        solver = lx.AutoLinearSolver(well_posed=None)
        # A 1 x 1 operator is diagonal whatever its tags (as in Lineax): `Diagonal` is chosen.
        want = lx.Diagonal if a.shape == (1, 1) else expected
        assert type(solver.select_solver(built.operator)) is want
        b = random_vector(np.random.default_rng(seed), a.shape[0], dtype)
        x = built.to_flat_in(lx.linear_solve(built.operator, built.from_flat_out(b), solver).value)
        # Condition numbers <= 4 (`helpers.make_matrix`): `tolerances` holds with room to spare.
        ref = np.linalg.lstsq(_wide(a), _wide(b), rcond=None)[0]
        np.testing.assert_allclose(np.asarray(x), ref, **_tol(dtype, max(a.shape)))

    solve()


@PROPERTY_SETTINGS
@given(
    shape=shapes.filter(lambda s: s[0] != s[1]),
    tag=st.sampled_from(SQUARE_ONLY_TAGS),
    name=builder_names,
    dtype=dtypes,
)
def test_square_only_tag_on_non_square_raises(shape, tag, name, dtype):
    a = np.ones(shape, dtype)
    with pytest.raises(ValueError, match="need the input and output structures to match"):
        BUILDERS[name](a, tag)
    with pytest.raises(ValueError, match="need the input and output structures to match"):
        lx.TaggedLinearOperator(lx.MatrixLinearOperator(a), (tag,))


@PROPERTY_SETTINGS
@given(shape1=shapes, shape2=shapes)
def test_mismatched_shapes_raise(shape1, shape2):
    A = lx.MatrixLinearOperator(np.ones(shape1))
    B = lx.MatrixLinearOperator(np.ones(shape2))
    if shape1 != shape2:
        with pytest.raises(ValueError, match="Cannot add operators with different structures"):
            A + B
    else:
        assert (A + B).out_size() == shape1[0]
    if shape1[1] != shape2[0]:
        with pytest.raises(ValueError, match="Cannot compose"):
            A @ B
    else:
        assert (A @ B).in_size() == shape2[1]
