"""Lineax's public surface on linopx: code written for Lineax (Optimistix, Diffrax, user solvers)
runs with `sys.modules["lineax"] = linopx`.

Covers `lx.internal` (norms, dtype helpers, `linear_solve_p`, packed structures),
`TangentLinearOperator`, `NormalCG`, `transpose_tags_rules`, `assume_full_rank` (and solvers that
implement only it), and the behaviours Lineax's own tests pin: mixed-dtype solves under strict
promotion, 1 x 1 operators being diagonal, identities between different structures, the zero-sized
`as_matrix`, preconditioners in the backward solve, and iterative solvers run for exactly
`max_steps` steps when both tolerances are 0.

References are NumPy in float64 (or closed forms), never linopx itself.
"""

from __future__ import annotations

import importlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_matrix, pinv_jvp, random_vector

import linopx
import linopx as lx

SDS = jax.ShapeDtypeStruct
f32 = lambda x: jnp.asarray(x, jnp.float32)
f64 = lambda x: jnp.asarray(x, jnp.float64)
c64 = lambda x: jnp.asarray(x, jnp.complex64)
c128 = lambda x: jnp.asarray(x, jnp.complex128)


def _np(x):
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Importing everything through the alias


@pytest.fixture
def lineax_alias(monkeypatch):
    """`lineax` is linopx for the duration of a test (and `lineax.internal` is imported afresh
    through it, as a client's `from lineax.internal import ...` would)."""
    monkeypatch.setitem(sys.modules, "lineax", linopx)
    monkeypatch.delitem(sys.modules, "lineax.internal", raising=False)
    yield
    sys.modules.pop("lineax.internal", None)


def test_every_name_imports_through_the_alias(lineax_alias):
    import lineax as lx_alias
    from lineax.internal import (
        PackedStructures,
        complex_to_real_dtype,
        default_floating_dtype,
        linear_solve_p,
        max_norm,
        pack_structures,
        ravel_vector,
        rms_norm,
        sum_squares,
        transpose_packed_structures,
        tree_dot,
        two_norm,
        unravel_solution,
    )

    assert lx_alias is linopx
    for name in ("TangentLinearOperator", "NormalCG", "transpose_tags_rules", "__version__"):
        assert hasattr(lx_alias, name), name
    assert callable(lx_alias.AbstractLinearSolver.assume_full_rank)
    # `lineax.internal` may be a second module object (loaded through linopx's `__path__`), but
    # what it holds are linopx's own objects, not copies: one primitive, one set of functions.
    imported = {
        "PackedStructures": PackedStructures,
        "complex_to_real_dtype": complex_to_real_dtype,
        "default_floating_dtype": default_floating_dtype,
        "linear_solve_p": linear_solve_p,
        "max_norm": max_norm,
        "pack_structures": pack_structures,
        "ravel_vector": ravel_vector,
        "rms_norm": rms_norm,
        "sum_squares": sum_squares,
        "transpose_packed_structures": transpose_packed_structures,
        "tree_dot": tree_dot,
        "two_norm": two_norm,
        "unravel_solution": unravel_solution,
    }
    for name, obj in imported.items():
        assert obj is getattr(linopx.internal, name), name
    assert linear_solve_p is importlib.import_module("linopx.autodiff.primitive").linear_solve_p
    assert lx_alias.internal.linear_solve_p is linear_solve_p

    # And the primitive is the one a solve binds.
    a = jnp.array([[2.0, 1.0], [0.0, 3.0]])
    jaxpr = jax.make_jaxpr(
        lambda b: lx_alias.linear_solve(lx_alias.MatrixLinearOperator(a), b).value
    )(jnp.ones(2))
    assert any(eqn.primitive is linear_solve_p for eqn in jaxpr.eqns)


# ---------------------------------------------------------------------------------------------
# Norms and dtype helpers


def _flat(tree):
    return np.concatenate(
        [np.ravel(np.asarray(x, np.complex128)) for x in jax.tree_util.tree_leaves(tree)]
    )


def test_norms_match_numpy(rng):
    tree = {
        "a": f32(rng.standard_normal((2, 3))),
        "b": (c128(rng.standard_normal(4) + 1j * rng.standard_normal(4)), f64(-7.5)),
    }
    flat = _flat(tree)
    li = lx.internal
    # Mixed float32/complex128 leaves are promoted explicitly, also under strict promotion.
    # The float32 leaf converts exactly; the sums run in double precision.
    np.testing.assert_allclose(_np(li.two_norm(tree)), np.linalg.norm(flat), rtol=1e-14)
    np.testing.assert_allclose(_np(li.sum_squares(tree)), np.sum(np.abs(flat) ** 2), rtol=1e-14)
    np.testing.assert_allclose(
        _np(li.rms_norm(tree)), np.sqrt(np.mean(np.abs(flat) ** 2)), rtol=1e-14
    )
    np.testing.assert_allclose(_np(li.max_norm(tree)), np.max(np.abs(flat)), rtol=1e-15)
    assert li.max_norm(tree).dtype == jnp.float64 and li.two_norm(tree).dtype == jnp.float64

    # tree_dot conjugates its first argument; a pytree of another structure is an error.
    other = jax.tree_util.tree_map(lambda x: x * 0.5 + 1.0, tree)
    np.testing.assert_allclose(
        _np(li.tree_dot(tree, other)), np.vdot(flat, _flat(other)), rtol=1e-6
    )  # `other`'s float32 leaf was computed in float32
    with pytest.raises(ValueError, match="same structure"):
        li.tree_dot(tree, [1.0])

    # A single entry: its modulus (no squaring, so no overflow); no entries: 0.
    np.testing.assert_allclose(_np(li.two_norm(f64(-1e200))), 1e200)
    for norm in (li.two_norm, li.rms_norm, li.max_norm, li.sum_squares):
        assert float(norm({"e": jnp.zeros((0,), jnp.float32)})) == 0.0
    assert (
        li.rms_norm([]).dtype == jnp.float64 and li.max_norm(c64(np.zeros(0))).dtype == jnp.float32
    )

    assert li.default_floating_dtype() == jnp.float64  # conftest turns x64 on
    assert li.complex_to_real_dtype(jnp.complex64) == jnp.float32
    assert li.complex_to_real_dtype(jnp.float32) == jnp.float32


def test_norm_gradients_are_zero_at_zero_and_exact_elsewhere():
    li = lx.internal
    x = f64([3.0, -4.0])
    np.testing.assert_allclose(_np(jax.grad(li.two_norm)(x)), [0.6, -0.8], rtol=1e-15)
    np.testing.assert_allclose(_np(jax.grad(li.rms_norm)(x)), np.array([0.6, -0.8]) / np.sqrt(2))
    np.testing.assert_allclose(_np(jax.grad(li.max_norm)(x)), [0.0, -1.0])
    zero = jnp.zeros(3)
    for norm in (li.two_norm, li.rms_norm, li.max_norm):
        g = jax.grad(norm)(zero)  # sqrt and max have no derivative at 0: taken as 0, not NaN
        assert np.all(_np(g) == 0), norm
    # Complex leaves: d|z| = Re(conj(z) dz) / |z|.
    z = c128([3.0 + 4.0j])
    _, t = jax.jvp(li.two_norm, (z,), (c128([1.0j]),))
    np.testing.assert_allclose(_np(t), 0.8, rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# A solver written against Lineax: packed structures and `assume_full_rank` only


class _LineaxStyleLstsq(lx.AbstractLinearSolver):
    """Least squares with `jnp.linalg.lstsq`, in the style of a Lineax >= 0.1 solver:
    packed structures in the state, and `assume_full_rank` instead of `allow_dependent_*`."""

    full_rank: bool = True

    def init(self, operator, options):
        return operator.as_matrix(), lx.internal.pack_structures(operator)

    def compute(self, state, vector, options):
        matrix, packed = state
        b = lx.internal.ravel_vector(vector, packed)
        x = jnp.linalg.lstsq(matrix.astype(b.dtype), b)[0]
        return lx.internal.unravel_solution(x, packed), lx.RESULTS.successful, {}

    def transpose(self, state, options):
        matrix, packed = state
        return (matrix.T, lx.internal.transpose_packed_structures(packed)), options

    def conj(self, state, options):
        matrix, packed = state
        return (jnp.conj(matrix), packed), options

    def assume_full_rank(self):
        return self.full_rank


def test_lineax_style_solver_with_packed_structures_and_its_derivatives(rng):
    a = make_matrix(rng, (5, 3), np.float64, "general")  # tall, full column rank
    b = rng.standard_normal(5)
    da, db = rng.standard_normal((5, 3)), rng.standard_normal(5)
    # Pytrees on both sides: {"p": (1,), "q": (2,)} -> ((2,), (3,)).
    in_s = {"p": SDS((1,), jnp.float64), "q": SDS((2,), jnp.float64)}

    def to_in(x):
        return jnp.concatenate([x["p"], x["q"]])

    def solve(m, v):
        def fn(x):
            y = m @ to_in(x)
            return y[:2], y[2:]

        op = lx.FunctionLinearOperator(fn, in_s)
        return to_in(lx.linear_solve(op, (v[:2], v[2:]), _LineaxStyleLstsq()).value)

    x = solve(jnp.asarray(a), jnp.asarray(b))
    x_ref, dx_ref = pinv_jvp(a, b, da, db)
    np.testing.assert_allclose(_np(x), x_ref, rtol=1e-10)
    # The derivative needs the residual term (a tall matrix's rows are dependent): derived from
    # `assume_full_rank()`, as the solver has no `allow_dependent_rows`.
    _, dx = jax.jvp(solve, (jnp.asarray(a), jnp.asarray(b)), (jnp.asarray(da), jnp.asarray(db)))
    np.testing.assert_allclose(_np(dx), dx_ref, rtol=1e-9, atol=1e-12)

    solver = _LineaxStyleLstsq()
    tall, wide = (
        lx.MatrixLinearOperator(jnp.zeros((3, 2))),
        lx.MatrixLinearOperator(jnp.zeros((2, 3))),
    )
    assert solver.allow_dependent_rows(tall) and not solver.allow_dependent_columns(tall)
    assert solver.allow_dependent_columns(wide) and not solver.allow_dependent_rows(wide)
    rank_deficient = _LineaxStyleLstsq(full_rank=False)
    assert rank_deficient.allow_dependent_rows(wide) and rank_deficient.allow_dependent_columns(
        tall
    )

    packed = lx.internal.pack_structures(lx.MatrixLinearOperator(jnp.zeros((3, 2))))
    assert isinstance(packed, lx.internal.PackedStructures)
    hash(packed)  # static: a solver state may hold it
    with pytest.raises(ValueError, match="output structure"):
        lx.internal.ravel_vector(jnp.ones(2), packed)


def test_assume_full_rank_matches_lineax():
    # Lineax's values for its solvers (rank min(m, n) assumed or not).
    expected = [
        (lx.LU(), True),
        (lx.QR(), True),
        (lx.Cholesky(), True),
        (lx.Triangular(), True),
        (lx.Tridiagonal(), True),
        (lx.Diagonal(), False),
        (lx.Diagonal(well_posed=True), True),
        (lx.SVD(), False),
        (lx.CG(1e-6, 1e-6), True),
        (lx.GMRES(1e-6, 1e-6), True),
        (lx.BiCGStab(1e-6, 1e-6), True),
        (lx.LSMR(1e-6, 1e-6), False),
        (lx.Normal(lx.Cholesky()), True),
        (lx.Normal(lx.SVD()), False),
        (lx.AutoLinearSolver(well_posed=None), True),
        (lx.AutoLinearSolver(well_posed=False), False),
    ]
    for solver, full_rank in expected:
        assert solver.assume_full_rank() is full_rank, solver
    # With an operator: a tall one's rows are dependent by shape, which QR still handles.
    tall = lx.MatrixLinearOperator(jnp.zeros((4, 2)))
    assert lx.QR().assume_full_rank(tall) and lx.QR().assume_full_rank(tall.T)
    assert not lx.SVD().assume_full_rank(tall)

    class Neither(lx.AbstractLinearSolver):
        def init(self, operator, options):
            return None

        def compute(self, state, vector, options):
            return vector, lx.RESULTS.successful, {}

        def transpose(self, state, options):
            return state, options

        def conj(self, state, options):
            return state, options

    with pytest.raises(TypeError, match="allow_dependent"):
        Neither()


# ---------------------------------------------------------------------------------------------
# TangentLinearOperator, NormalCG, transpose_tags_rules


def test_tangent_linear_operator(rng):
    m = make_matrix(rng, (3, 3), np.float64, "symmetric")
    dm = rng.standard_normal((3, 3))
    dm = dm + dm.T  # a tangent within the symmetric family
    v = rng.standard_normal(3)
    builders = {
        "matrix": lambda x: lx.MatrixLinearOperator(x, lx.symmetric_tag),
        "pytree": lambda x: lx.PyTreeLinearOperator(x, SDS((3,), jnp.float64), lx.symmetric_tag),
        "composed": lambda x: (
            lx.MatrixLinearOperator(x, lx.symmetric_tag)
            @ lx.IdentityLinearOperator(SDS((3,), jnp.float64))
        ),
    }
    for name, build in builders.items():
        op, t_op = eqx.filter_jvp(build, (jnp.asarray(m),), (jnp.asarray(dm),))
        tangent = lx.TangentLinearOperator(op, t_op)
        np.testing.assert_allclose(_np(tangent.as_matrix()), dm, rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(
            _np(tangent.mv(jnp.asarray(v))), dm @ v, rtol=1e-13, err_msg=name
        )
        np.testing.assert_allclose(_np(tangent.T.as_matrix()), dm.T, rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(_np(lx.materialise(tangent).as_matrix()), dm, rtol=1e-14)
        np.testing.assert_allclose(
            _np(lx.linearise(tangent).mv(jnp.asarray(v))), dm @ v, rtol=1e-13
        )
        np.testing.assert_allclose(_np(lx.diagonal(tangent)), np.diag(dm), rtol=1e-14)
        for band, k in zip(lx.tridiagonal(tangent), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(dm, k), rtol=1e-14)
        assert tangent.in_structure() == op.in_structure()
        # Structure carries over to the tangent, definiteness does not.
        assert lx.is_symmetric(tangent) and not lx.is_positive_semidefinite(tangent)
    cm = m + 1j * m
    op, t_op = eqx.filter_jvp(lx.MatrixLinearOperator, (c128(cm),), (c128(dm + 2j * dm),))
    np.testing.assert_allclose(
        _np(lx.conj(lx.TangentLinearOperator(op, t_op)).as_matrix()), np.conj(dm + 2j * dm)
    )
    with pytest.raises(TypeError, match="same type"):
        lx.TangentLinearOperator(op, lx.DiagonalLinearOperator(jnp.ones(3)))


def test_normal_cg_is_cg_on_the_normal_equations(rng):
    with pytest.warns(DeprecationWarning, match=r"lx\.Normal\(lx\.CG"):
        solver = lx.NormalCG(rtol=1e-10, atol=1e-10, max_steps=100)
    assert solver == lx.Normal(lx.CG(rtol=1e-10, atol=1e-10, max_steps=100))
    a = make_matrix(rng, (6, 4), np.float64, "general")
    b = rng.standard_normal(6)
    x = lx.linear_solve(lx.MatrixLinearOperator(jnp.asarray(a)), jnp.asarray(b), solver).value
    np.testing.assert_allclose(_np(x), np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-8)


def test_transpose_tags_rules():
    rules = lx.transpose_tags_rules
    assert isinstance(rules, list) and all(callable(r) for r in rules)
    tags = frozenset({lx.lower_triangular_tag, lx.unit_diagonal_tag, lx.positive_semidefinite_tag})
    assert lx.transpose_tags(tags) == {
        lx.upper_triangular_tag,
        lx.unit_diagonal_tag,
        lx.positive_semidefinite_tag,
    }

    # Rules are extensible, as in Lineax: the transpose of a real PSD operator is symmetric too.
    def psd_is_symmetric(t):
        return lx.symmetric_tag if lx.positive_semidefinite_tag in t else None

    rules.append(psd_is_symmetric)
    try:
        assert lx.symmetric_tag in lx.transpose_tags({lx.positive_semidefinite_tag})
        op = lx.MatrixLinearOperator(jnp.eye(2), lx.positive_semidefinite_tag)
        assert lx.symmetric_tag in op.T.tags
    finally:
        rules.remove(psd_is_symmetric)
    assert lx.transpose_tags({lx.positive_semidefinite_tag}) == {lx.positive_semidefinite_tag}


# ---------------------------------------------------------------------------------------------
# Mixed dtypes under strict promotion (conftest)

_DENSE = [lx.LU(), lx.QR(), lx.SVD(), lx.PivotedQR(), lx.AutoLinearSolver(well_posed=None)]


@pytest.mark.parametrize(
    "blocks, vector, expected",
    [
        # Lineax's examples: blocks of two dtypes; linopx promotes the operator to one.
        ([[f32(1), f64(5)], [f32(-2), f64(-2)]], [f64(3), f64(4)], [-3.25, 1.25]),
        (
            [[c64(1), c128(5j)], [c64(2j), c128(-2)]],
            [c128(3), c128(4)],
            [-0.75 - 2.5j, 0.5 - 0.75j],
        ),
        ([[f64(1), c128(-5j)], [f64(2), c128(-2j)]], [c128(3), c128(4)], [1.75, 0.25j]),
    ],
    ids=["float32-float64", "complex64-complex128", "float64-complex128"],
)
def test_mixed_dtype_pytree_solves(blocks, vector, expected):
    op = lx.PyTreeLinearOperator(blocks, jax.eval_shape(lambda: vector))
    promoted = np.result_type(*[np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(blocks)])
    for solver in _DENSE:
        out = lx.linear_solve(op, vector, solver).value
        assert [x.dtype for x in out] == [promoted, promoted], solver
        # Exact small-integer data: only rounding of a 2 x 2 solve in double precision.
        np.testing.assert_allclose(np.array(out), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(
    "blocks, expected",
    [
        ([[f32(1), f64(0)], [f32(-2), f64(-2)]], [3, -5]),
        ([[c64(1), c128(0)], [c64(2j), c128(-2)]], [3, -2 + 3j]),
        ([[f64(1), c128(0)], [f64(2), c128(2j)]], [3, 1j]),
    ],
    ids=["float32-float64", "complex64-complex128", "float64-complex128"],
)
def test_mixed_dtype_triangular(blocks, expected):
    vector = [c128(3), c128(4)] if jnp.iscomplexobj(blocks[1][1]) else [f64(3), f64(4)]
    op = lx.PyTreeLinearOperator(blocks, jax.eval_shape(lambda: vector), lx.lower_triangular_tag)
    for solver in (lx.Triangular(), lx.AutoLinearSolver(well_posed=True)):
        out = lx.linear_solve(op, vector, solver).value
        np.testing.assert_allclose(np.array(out), expected, rtol=1e-15)


# (name, operator dtype, vector dtype, solution dtype, every dense solver or a sample). Every
# solver runs for the two precision promotions; the complex/real mixes go through the same code
# (`_misc.solution_structure`), so a direct, a triangular and an iterative solver check them.
_PROMOTING = [
    ("float32 op, float64 b", np.float32, np.float64, np.float64, True),
    ("complex64 op, complex128 b", np.complex64, np.complex128, np.complex128, True),
    ("complex128 op, float64 b", np.complex128, np.float64, np.complex128, False),
    ("float64 op, complex128 b", np.float64, np.complex128, np.complex128, False),
    ("complex64 op, float64 b", np.complex64, np.float64, np.complex128, False),
]

# Every dense solver, on a matrix of the kind its tags promise.
_DENSE_BY_KIND = [
    (lx.LU(), "general"),
    (lx.QR(), "general"),
    (lx.SVD(), "general"),
    (lx.PivotedQR(), "general"),
    (lx.Cholesky(), "spd"),
    (lx.Triangular(), "lower"),
    (lx.Diagonal(), "diagonal"),
    (lx.Tridiagonal(), "tridiagonal"),
    (lx.Normal(lx.Cholesky()), "general"),
    ("GMRES", "general"),  # tolerance set by the operator's precision, below
]
_KIND_TAGS = {
    "general": (),
    "spd": lx.positive_semidefinite_tag,
    "lower": lx.lower_triangular_tag,
    "diagonal": lx.diagonal_tag,
    "tridiagonal": lx.tridiagonal_tag,
}


@pytest.mark.parametrize(
    "name, op_dtype, b_dtype, result_dtype, every", _PROMOTING, ids=[p[0] for p in _PROMOTING]
)
def test_a_wider_vector_gives_the_promoted_dtype(name, op_dtype, b_dtype, result_dtype, every):
    """The solution has the dtype `jnp.linalg.solve` gives under standard promotion, and keeps
    the vector's precision: a substitution or division with a float32 matrix (exact in float64)
    gives the float64 answer to float64 accuracy, not a float32-rounded one."""
    rng = np.random.default_rng(1)
    b = random_vector(rng, 4, b_dtype)
    single = np.dtype(op_dtype) in (np.dtype(np.float32), np.dtype(np.complex64))
    for solver, kind in _DENSE_BY_KIND:
        if not (every or solver == "GMRES" or isinstance(solver, (lx.LU, lx.Triangular))):
            continue
        if solver == "GMRES":
            # The products with the operator are in its precision: so is the attainable residual.
            solver = lx.GMRES(rtol=1e-6, atol=1e-6) if single else lx.GMRES(rtol=1e-13, atol=1e-13)
        a = make_matrix(rng, (4, 4), op_dtype, kind)
        op = lx.MatrixLinearOperator(jnp.asarray(a), _KIND_TAGS[kind])
        x = lx.linear_solve(op, jnp.asarray(b), solver).value
        assert x.dtype == result_dtype, (name, solver)
        ref = np.linalg.solve(a.astype(np.complex128), b.astype(np.complex128))
        # Condition numbers are <= 4 (`make_matrix`). Factorizations and products run in the
        # operator's precision: 1e-5 bounds single precision (GMRES's 1e-6 residual included).
        # Substitutions and divisions by the (exactly widened) entries are double precision.
        exact = kind in ("lower", "diagonal", "tridiagonal") or not single
        np.testing.assert_allclose(_np(x), ref, rtol=1e-12 if exact else 1e-5, err_msg=f"{solver}")


def test_mixed_dtype_derivatives(rng):
    a = make_matrix(rng, (3, 3), np.float32, "general")
    b = rng.standard_normal(3)
    da = rng.standard_normal((3, 3)).astype(np.float32)
    db = rng.standard_normal(3)

    def solve(m, v):
        return lx.linear_solve(lx.MatrixLinearOperator(m), v, lx.LU()).value

    x, dx = jax.jvp(solve, (jnp.asarray(a), jnp.asarray(b)), (jnp.asarray(da), jnp.asarray(db)))
    x_ref, dx_ref = pinv_jvp(a.astype(np.float64), b, da.astype(np.float64), db)
    assert x.dtype == dx.dtype == jnp.float64
    # Products with the float32 operator and its factorization are in single precision.
    np.testing.assert_allclose(_np(x), x_ref, rtol=1e-5)
    np.testing.assert_allclose(_np(dx), dx_ref, rtol=1e-5)
    ga, gb = jax.grad(lambda m, v: jnp.sum(solve(m, v)), argnums=(0, 1))(
        jnp.asarray(a), jnp.asarray(b)
    )
    assert ga.dtype == jnp.float32 and gb.dtype == jnp.float64
    gb_ref = np.linalg.solve(a.astype(np.float64).T, np.ones(3))
    np.testing.assert_allclose(_np(gb), gb_ref, rtol=1e-5)
    np.testing.assert_allclose(_np(ga), -np.outer(gb_ref, x_ref), rtol=1e-4)
    # A complex right-hand side for a real operator: the derivative in the operator, too.
    bc = b + 1j * rng.standard_normal(3)
    a64 = a.astype(np.float64)
    _, dxc = jax.jvp(lambda m: solve(m, c128(bc)), (f64(a64),), (f64(da),))
    np.testing.assert_allclose(
        _np(dxc), pinv_jvp(a64, bc, da.astype(np.float64), 0 * bc)[1], rtol=1e-12
    )


def test_mixed_precision_input_structure_is_kept():
    """Lineax's convention, which Optimistix relies on (it subtracts the solution from its own
    iterate): a vector no wider than the operator gives a solution with exactly the operator's
    input dtypes, here one float32 and one float64 leaf."""
    in_s = {"a": SDS((2,), jnp.float32), "b": SDS((1,), jnp.float64)}
    m = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])

    def fn(v):
        return jnp.asarray(m) @ jnp.concatenate([v["a"].astype(jnp.float64), v["b"]])

    op = lx.FunctionLinearOperator(fn, in_s)
    b = np.array([1.0, 2.0, 3.0])
    # (GMRES's tolerance: its products round the float32 leaf, as `fn` does.)
    for solver in (lx.LU(), lx.GMRES(rtol=1e-6, atol=1e-6)):
        x = lx.linear_solve(op, f64(b), solver).value
        assert x["a"].dtype == jnp.float32 and x["b"].dtype == jnp.float64
        ref = np.linalg.solve(m, b)
        np.testing.assert_allclose(np.concatenate([_np(x["a"]), _np(x["b"])]), ref, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 1 x 1 operators, identities between structures, zero-sized matrices


def _scalar_operators():
    a = jnp.array([[2.5]])
    yield "matrix", lx.MatrixLinearOperator(a)
    yield "pytree", lx.PyTreeLinearOperator(jnp.array(2.5), SDS((), jnp.float64))
    yield "function", lx.FunctionLinearOperator(lambda x: 2.5 * x, SDS((), jnp.float64))
    yield "jacobian", lx.JacobianLinearOperator(lambda x, _: 2.5 * x + x**3 - 1.0, f64(0.0))
    yield "tridiagonal", lx.TridiagonalLinearOperator(f64([2.5]), f64([]), f64([]))
    # Different structures of one entry each: still a 1 x 1 matrix.
    yield (
        "function () -> (1,)",
        lx.FunctionLinearOperator(lambda x: jnp.reshape(2.5 * x, (1,)), SDS((), jnp.float64)),
    )
    yield (
        "composed",
        lx.MatrixLinearOperator(jnp.array([[1.0, 2.0]]))
        @ lx.MatrixLinearOperator(jnp.array([[0.5], [1.0]])),
    )
    yield "sum", lx.MatrixLinearOperator(a) + lx.MatrixLinearOperator(a)
    yield "tagged", lx.TaggedLinearOperator(lx.MatrixLinearOperator(a), lx.symmetric_tag)


def test_one_by_one_operators_are_diagonal_and_tridiagonal():
    for name, op in _scalar_operators():
        assert lx.is_diagonal(op), name
        assert lx.is_tridiagonal(op), name
        matrix = _np(op.as_matrix())
        assert matrix.shape == (1, 1)
        b = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 5.0, s.dtype), op.out_structure())
        x = lx.linear_solve(op, b, lx.Diagonal(well_posed=True)).value
        np.testing.assert_allclose(np.ravel(_np(jax.tree_util.tree_leaves(x)[0])), 5.0 / matrix[0])
    # Controls: larger untagged operators are not.
    for op in (
        lx.MatrixLinearOperator(jnp.eye(2)),
        lx.MatrixLinearOperator(jnp.ones((1, 2))),
        lx.TridiagonalLinearOperator(f64([1.0, 2.0]), f64([0.0]), f64([0.0])),
    ):
        assert not lx.is_diagonal(op)
    assert not lx.is_tridiagonal(lx.MatrixLinearOperator(jnp.eye(3)))


def test_identity_between_different_structures():
    s1 = (SDS((), jnp.float32), SDS((2, 3), jnp.float16))
    s2 = {"a": SDS((5,), jnp.float32)}
    op1, op2 = lx.IdentityLinearOperator(s1, s2), lx.IdentityLinearOperator(s2, s1)
    assert op1.T == op2 and op1.in_size() == 7 and op1.out_size() == 5
    np.testing.assert_array_equal(_np(op1.as_matrix()), np.eye(5, 7))
    v1 = (f32(1.0), jnp.array([[2, 3, 4], [5, 6, 7]], jnp.float16))
    out = op1.mv(v1)
    assert out["a"].dtype == jnp.float32
    np.testing.assert_array_equal(_np(out["a"]), [1, 2, 3, 4, 5])
    back = op2.mv({"a": f32([1, 2, 3, 4, 5])})
    assert (back[0].dtype, back[1].dtype) == (jnp.float32, jnp.float16)
    np.testing.assert_array_equal(_np(back[1]), [[2, 3, 4], [5, 0, 0]])


def test_identity_between_different_complex_structures():
    s1 = (SDS((), jnp.complex128), SDS((2, 3), jnp.float16))
    s2 = {"a": SDS((5,), jnp.complex128)}
    op1, op2 = lx.IdentityLinearOperator(s1, s2), lx.IdentityLinearOperator(s2, s1)
    assert op1.T == op2
    np.testing.assert_array_equal(_np(op1.as_matrix()), np.eye(5, 7, dtype=np.complex128))
    assert op1.as_matrix().dtype == jnp.complex128
    v1 = (c128(1.0), jnp.array([[2, 3, 4], [5, 6, 7]], jnp.float16))
    out = op1.mv(v1)
    assert out["a"].dtype == jnp.complex128
    np.testing.assert_array_equal(_np(out["a"]), [1, 2, 3, 4, 5])
    # Output leaves get exactly the output structure's dtypes (the float16 leaf is real).
    back = op2.mv({"a": c128([1, 2, 3, 4, 5 + 1j])})
    assert (back[0].dtype, back[1].dtype) == (jnp.complex128, jnp.float16)
    np.testing.assert_array_equal(_np(back[1]), [[2, 3, 4], [5, 0, 0]])
    # A vector wider than the input structure (complex for a real identity) is not truncated.
    real = lx.IdentityLinearOperator(SDS((3,), jnp.float64), SDS((2,), jnp.float64))
    np.testing.assert_array_equal(_np(real.mv(c128([1j, 2, 3]))), [1j, 2])


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
def test_zero_sized_pytree_as_matrix(dtype):
    a = jnp.zeros((2, 1, 0, 2, 1, 0), dtype)
    op = lx.PyTreeLinearOperator(a, SDS((2, 1, 0), dtype))
    assert op.as_matrix().shape == (0, 0)
    assert op.as_matrix().dtype == dtype


# ---------------------------------------------------------------------------------------------
# Preconditioners in the backward solve (Lineax's test for its issue 160)


def _preconditioned_problem(symmetric: bool):
    key, subkey = jax.random.split(jax.random.key(123))
    a = jax.random.uniform(key, (10, 10), jnp.float64)
    a = a + jnp.diag(jnp.arange(10.0) ** 6)
    b = jax.random.uniform(subkey, (10,), jnp.float64)
    if symmetric:
        a = a.T @ a
    return a, b


# Lineax's four solvers. With the exact inverse as preconditioner one step solves each problem,
# so `max_steps` of 3-4 fails loudly (`throw=True`) unless the backward (transposed) solve keeps a
# fitting preconditioner (and, for Normal, reads it as M ≈ A⁻¹ as Lineax does). The tolerance is
# 1e-8: these matrices have condition numbers up to 1e11, and linopx checks the true residual,
# which cannot get below ~1e-11 |b| here (Lineax's test asks for 1e-12 of its recursive estimate).
_PRECONDITIONED = [
    ("GMRES", lambda: lx.GMRES(1e-8, 1e-8, max_steps=4, restart=1), False, ()),
    ("BiCGStab", lambda: lx.BiCGStab(1e-8, 1e-8, max_steps=3), False, ()),
    ("Normal(CG)", lambda: lx.Normal(lx.CG(1e-8, 1e-8, max_steps=4)), False, ()),
    ("CG", lambda: lx.CG(1e-8, 1e-8, max_steps=3), True, lx.positive_semidefinite_tag),
]


@pytest.mark.parametrize(
    "name, make, symmetric, tags", _PRECONDITIONED, ids=[p[0] for p in _PRECONDITIONED]
)
def test_preconditioner_in_the_adjoint(name, make, symmetric, tags):
    a, b = _preconditioned_problem(symmetric)
    operator = lx.MatrixLinearOperator(a, tags)
    # M ≈ A⁻¹ (for Normal too, as in Lineax: it is applied as M Mᴴ to the normal equations).
    m = lx.MatrixLinearOperator(jnp.linalg.inv(a), tags)
    solver = make()

    def solve(v):
        return lx.linear_solve(operator, v, solver, options={"preconditioner": m}).value

    inverse = np.linalg.inv(np.asarray(a))
    # One preconditioned step is exact up to rounding (~1e-11 relative here); 1e-7 has room.
    tol = {"rtol": 1e-7, "atol": 1e-7 * np.abs(inverse).max()}
    np.testing.assert_allclose(_np(jax.jacrev(solve)(b)), inverse, **tol)
    if name == "Normal(CG)":
        np.testing.assert_allclose(_np(jax.jacfwd(solve)(b)), inverse, **tol)


def test_normal_preconditioner_structure_is_checked(rng):
    a = make_matrix(rng, (5, 3), np.float64, "general")
    op = lx.MatrixLinearOperator(jnp.asarray(a))
    # M ≈ A⁺ maps the output space (5) to the input space (3); an n x n one is refused.
    wrong = lx.MatrixLinearOperator(jnp.eye(3))
    with pytest.raises(ValueError, match="preconditioner must map"):
        lx.linear_solve(
            op, jnp.ones(5), lx.Normal(lx.CG(1e-8, 1e-8)), options={"preconditioner": wrong}
        )
    good = lx.MatrixLinearOperator(jnp.asarray(np.linalg.pinv(a)))
    sol = lx.linear_solve(
        op,
        jnp.asarray(rng.standard_normal(5)),
        lx.Normal(lx.CG(1e-10, 1e-10, max_steps=2)),
        options={"preconditioner": good},
    )
    assert int(sol.stats["num_steps"]) <= 2


# ---------------------------------------------------------------------------------------------
# rtol = atol = 0 with max_steps = k: exactly k iterations, reported successful (Lineax)


def _krylov_basis(a, b, k):
    """An orthonormal basis of the Krylov space K_k(a, b), in NumPy."""
    cols = [b]
    for _ in range(k - 1):
        cols.append(a @ cols[-1])
    return np.linalg.qr(np.stack(cols, axis=1))[0]


def _k_step_reference(method, a, b, k):
    """The k-th iterate of each method from x0 = 0, by its optimality property (exact
    arithmetic), computed independently in NumPy."""
    if method in ("CG", "MINRES", "GMRES"):
        v = _krylov_basis(a, b, k)
        if method == "CG":  # minimises the A-norm of the error over K_k(A, b)
            return v @ np.linalg.solve(v.T @ a @ v, v.T @ b)
        return v @ np.linalg.lstsq(a @ v, b, rcond=None)[0]  # minimises |b - A x| over K_k
    v = _krylov_basis(a.T @ a, a.T @ b, k)  # LSQR and LSMR: over K_k(AᵀA, Aᵀb)
    if method == "LSQR":  # minimises |b - A x|
        return v @ np.linalg.lstsq(a @ v, b, rcond=None)[0]
    return v @ np.linalg.lstsq(a.T @ a @ v, a.T @ b, rcond=None)[0]  # LSMR: minimises |Aᵀ(b - A x)|


_FIXED = [
    ("CG", lambda k: lx.CG(0.0, 0.0, max_steps=k), "spd"),
    ("MINRES", lambda k: lx.MINRES(0.0, 0.0, max_steps=k), "symmetric"),
    ("GMRES", lambda k: lx.GMRES(0.0, 0.0, max_steps=k), "general"),
    ("BiCGStab", lambda k: lx.BiCGStab(0.0, 0.0, max_steps=k), "general"),
    ("LSQR", lambda k: lx.LSQR(0.0, 0.0, max_steps=k), "general"),
    ("LSMR", lambda k: lx.LSMR(0.0, 0.0, max_steps=k), "general"),
    ("Normal(CG)", lambda k: lx.Normal(lx.CG(0.0, 0.0, max_steps=k)), "general"),
]


@pytest.mark.parametrize("method, make, kind", _FIXED, ids=[f[0] for f in _FIXED])
def test_zero_tolerances_run_exactly_max_steps(method, make, kind):
    rng = np.random.default_rng(7)
    n, k = 8, 3
    # Condition numbers <= 4 (`make_matrix`): the 3-step iterates are far from the solution, and
    # the NumPy references (3-dimensional least-squares problems) are accurate to ~1e-14.
    a = make_matrix(rng, (n, n), np.float64, kind)
    b = rng.standard_normal(n)
    tags = {"spd": lx.positive_semidefinite_tag, "symmetric": lx.symmetric_tag}.get(kind, ())
    op = lx.MatrixLinearOperator(jnp.asarray(a), tags)
    sol = lx.linear_solve(op, jnp.asarray(b), make(k))  # throw=True: raises unless successful
    assert sol.result == lx.RESULTS.successful
    assert int(sol.stats["num_steps"]) == k
    x = _np(sol.value)
    assert np.linalg.norm(b - a @ x) > 1e-3 * np.linalg.norm(b)  # really stopped early
    if method in ("CG", "MINRES", "GMRES", "LSQR", "LSMR"):
        np.testing.assert_allclose(x, _k_step_reference(method, a, b, k), rtol=1e-9, atol=1e-12)
    if method != "Normal(CG)":
        np.testing.assert_allclose(
            _np(sol.stats["residual_norm"]), np.linalg.norm(b - a @ x), rtol=1e-9
        )
    # A positive tolerance that k steps cannot meet is still a failure (`max_steps_reached`, or
    # `stagnation` where the true residual has not decreased, as BiCGStab's need not).
    tight = type(make(k).inner_solver if method == "Normal(CG)" else make(k))
    fields = {"rtol": 1e-12, "atol": 0.0, "max_steps": k}
    solver = lx.Normal(tight(**fields)) if method == "Normal(CG)" else tight(**fields)
    failed = lx.linear_solve(op, jnp.asarray(b), solver, throw=False)
    assert failed.result in (lx.RESULTS.max_steps_reached, lx.RESULTS.stagnation)


def test_zero_tolerances_on_lineax_poisson_problem():
    """From Lineax's tests: the negative definite 1-D Poisson matrix of size 100, two steps with
    zero tolerances must not raise (CG negates a negative definite problem; Normal wraps CG)."""
    n = 100
    poisson = -2 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    op = lx.MatrixLinearOperator(
        jnp.asarray(poisson), (lx.negative_semidefinite_tag, lx.symmetric_tag)
    )
    rhs = jax.random.normal(jax.random.key(0), (n,), jnp.float64)
    for solver in (lx.CG(0.0, 0.0, max_steps=2), lx.Normal(lx.CG(0.0, 0.0, max_steps=2))):
        sol = lx.linear_solve(op, rhs, solver)
        assert int(sol.stats["num_steps"]) == 2, solver


# ---------------------------------------------------------------------------------------------
# Optional: Optimistix on linopx (not a test dependency; skipped when it is not installed)


def test_optimistix_newton_and_its_gradient_on_linopx(lineax_alias):
    optx = pytest.importorskip("optimistix", reason="optimistix is not installed (optional check)")
    a = f64([2.0, 3.0])

    def fn(y, args):
        return jnp.tanh(y) + args * y - 1.0

    def root(args):
        solver = optx.Newton(rtol=1e-12, atol=1e-12)
        return optx.root_find(fn, solver, f64([0.3, 0.1]), args=args).value

    y = root(a)
    np.testing.assert_allclose(_np(fn(y, a)), 0.0, atol=1e-12)
    # Implicit function theorem: dy/da = -diag(1 - tanh(y)² + a)⁻¹ diag(y), so d(Σy)/da is:
    y_np = _np(y)
    expected = -y_np / (1 - np.tanh(y_np) ** 2 + _np(a))
    np.testing.assert_allclose(_np(jax.grad(lambda p: jnp.sum(root(p)))(a)), expected, rtol=1e-10)
