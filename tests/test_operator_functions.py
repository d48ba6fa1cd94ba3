"""`materialise`, `linearise`, `diagonal`, `tridiagonal`, `conj` and the predicates, against NumPy and
against what the tags provably promise."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OPERATOR_BUILDERS,
    STRUCTURED_BUILDERS,
    build_function,
    build_matrix,
    is_complex,
    make_matrix,
    random_vector,
    tags_for_kind,
    tolerances,
)

import linopx as lx

BUILDER_IDS = [n for n, _ in OPERATOR_BUILDERS]
STRUCTURED_IDS = [n for n, _ in STRUCTURED_BUILDERS]
SDS = jax.ShapeDtypeStruct

PREDICATES = [
    lx.is_symmetric,
    lx.is_diagonal,
    lx.is_tridiagonal,
    lx.is_lower_triangular,
    lx.is_upper_triangular,
    lx.is_positive_semidefinite,
    lx.is_negative_semidefinite,
    lx.has_unit_diagonal,
]


def predicates(op) -> dict:
    return {p.__name__: bool(p(op)) for p in PREDICATES}


def true_predicates(op) -> set:
    return {name for name, value in predicates(op).items() if value}


def _np(x):
    return np.asarray(x)


def _wide(a):
    a = np.asarray(a)
    return a.astype(np.complex128 if is_complex(a.dtype) else np.float64)


def check_action(built, op, dense, rng, dtype):
    """`op` (with `built`'s structures) acts as `dense`: mv, transpose-mv and as_matrix."""
    m, n = dense.shape
    tol = tolerances(dtype)
    v = random_vector(rng, n, dtype)
    w = random_vector(rng, m, dtype)
    np.testing.assert_allclose(
        _np(built.to_flat_out(op.mv(built.from_flat_in(v)))), _wide(dense) @ v, **tol
    )
    np.testing.assert_allclose(
        _np(built.to_flat_in(op.T.mv(built.from_flat_out(w)))), _wide(dense).T @ w, **tol
    )
    np.testing.assert_allclose(_np(op.as_matrix()), _wide(dense), **tol)


def _is_matrix_free(x) -> bool:
    return isinstance(x, (lx.FunctionLinearOperator, lx.JacobianLinearOperator))


def _contains_matrix_free(op) -> bool:
    nodes = jax.tree_util.tree_leaves(
        op, is_leaf=lambda x: isinstance(x, lx.AbstractLinearOperator) and x is not op
    )
    if _is_matrix_free(op):
        return True
    return any(isinstance(x, lx.AbstractLinearOperator) and _contains_matrix_free(x) for x in nodes)


# (kind, shape) cases: an untagged square matrix, tagged ones (tags that change how `diagonal` and
# `tridiagonal` work, and tags that must survive `materialise`), and a non-square one.
CASES = [
    ("general", (3, 3)),
    ("spd", (3, 3)),
    ("unit_lower", (3, 3)),
    ("diagonal", (3, 3)),
    ("tridiagonal", (3, 3)),
    ("general", (2, 4)),
]
CASE_IDS = [f"{k}-{s[0]}x{s[1]}" for k, s in CASES]


# ---------------------------------------------------------------------------------------------
# materialise / linearise


@pytest.mark.parametrize("kind, shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_materialise_and_linearise_preserve_action_and_tags(name, builder, kind, shape, rng):
    dtype = np.float64
    a = make_matrix(rng, shape, dtype, kind)
    built = builder(a, tags_for_kind(kind, dtype))
    before = predicates(built.operator)
    for fn in (lx.materialise, lx.linearise):
        new = fn(built.operator)
        assert isinstance(new, lx.AbstractLinearOperator)
        check_action(built, new, a, rng, dtype)
        assert predicates(new) == before, fn.__name__
    # Materialising stores the action: no function is left to be re-run.
    assert not _contains_matrix_free(lx.materialise(built.operator))


@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_materialise_and_linearise_complex(name, builder, rng):
    dtype = np.complex128
    a = make_matrix(rng, (3, 3), dtype, "spd")
    built = builder(a, tags_for_kind("spd", dtype))
    for fn in (lx.materialise, lx.linearise):
        new = fn(built.operator)
        check_action(built, new, a, rng, dtype)
        assert predicates(new) == predicates(built.operator)


@pytest.mark.parametrize("name, make", STRUCTURED_BUILDERS, ids=STRUCTURED_IDS)
def test_materialise_and_linearise_structured(name, make, rng):
    built, dense = make(rng, 3, np.float64)
    for fn in (lx.materialise, lx.linearise):
        new = fn(built.operator)
        check_action(built, new, dense, rng, np.float64)
        assert predicates(new) == predicates(built.operator)


def test_materialise_keeps_structured_operators_structured(rng):
    d = jnp.asarray(random_vector(rng, 4, np.float64))
    for op in [
        lx.DiagonalLinearOperator(d),
        lx.TridiagonalLinearOperator(d, d[1:], d[:-1]),
        lx.IdentityLinearOperator(SDS((4,), jnp.float64)),
    ]:
        assert type(lx.materialise(op)) is type(op)
    composed = lx.DiagonalLinearOperator(d) @ lx.FunctionLinearOperator(
        lambda v: 2 * v, SDS((4,), jnp.float64)
    )
    new = lx.materialise(composed)
    assert isinstance(new, lx.ComposedLinearOperator)
    assert isinstance(new.operator1, lx.DiagonalLinearOperator)
    assert isinstance(new.operator2, lx.MatrixLinearOperator)
    np.testing.assert_allclose(_np(new.as_matrix()), 2 * np.diag(_np(d)))


def test_materialise_pytree_function_operator(rng):
    """A matrix-free operator between pytrees materialises to a dense operator with the same structures."""
    a = make_matrix(rng, (3, 3), np.float64)
    in_s = {"x": SDS((1,), jnp.float64), "y": SDS((2,), jnp.float64)}

    def fn(t):
        flat = jnp.concatenate([t["x"], t["y"]])
        out = jnp.asarray(a) @ flat
        return {"x": out[:1], "y": out[1:]}

    op = lx.FunctionLinearOperator(fn, in_s)
    new = lx.materialise(op)
    assert isinstance(new, lx.PyTreeLinearOperator)
    v = {"x": jnp.array([1.0]), "y": jnp.array([2.0, 3.0])}
    out = new.mv(v)
    np.testing.assert_allclose(
        _np(jnp.concatenate([out["x"], out["y"]])), a @ np.array([1.0, 2.0, 3.0]), rtol=1e-12
    )


def _walk_eqns(jaxpr):
    """Every equation of a jaxpr, including those of sub-jaxprs (jit, cond, scan, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            subs = param if isinstance(param, (tuple, list)) else (param,)
            for sub in subs:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk_eqns(inner)


def _primitive_names(closed_jaxpr) -> list[str]:
    return [eqn.primitive.name for eqn in _walk_eqns(closed_jaxpr.jaxpr)]


def test_linearise_jacobian_does_not_recompute_the_primal(rng):
    """After `linearise`, `mv` is the linear map only: the primal `sin` of `fn` is gone."""
    x0 = jnp.asarray(random_vector(rng, 3, np.float64))
    v = jnp.asarray(random_vector(rng, 3, np.float64))
    for jac in (None, "bwd"):
        op = lx.JacobianLinearOperator(lambda x, _: jnp.sin(x) * x, x0, jac=jac)
        lin = lx.linearise(op)
        assert isinstance(lin, lx.FunctionLinearOperator)
        before = _primitive_names(jax.make_jaxpr(op.mv)(v))
        after = _primitive_names(jax.make_jaxpr(lin.mv)(v))
        assert "sin" in before
        assert "sin" not in after and "cos" not in after, after
        # d/dx [x sin x] = sin x + x cos x
        ref = (np.sin(_np(x0)) + _np(x0) * np.cos(_np(x0))) * _np(v)
        np.testing.assert_allclose(_np(lin.mv(v)), ref, rtol=1e-12)
        np.testing.assert_allclose(_np(lin.T.mv(v)), ref, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# diagonal / tridiagonal


# The cases whose tags change how `diagonal`/`tridiagonal` are computed.
BAND_CASES = [c for c in CASES if c[0] in ("general", "diagonal", "tridiagonal")]


@pytest.mark.parametrize(
    "kind, shape", BAND_CASES, ids=[f"{k}-{s[0]}x{s[1]}" for k, s in BAND_CASES]
)
@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_diagonal_and_tridiagonal(name, builder, kind, shape, rng):
    dtype = np.float64
    a = make_matrix(rng, shape, dtype, kind)
    op = builder(a, tags_for_kind(kind, dtype)).operator
    np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(a), rtol=1e-12, atol=1e-12)
    if shape[0] != shape[1]:
        with pytest.raises(ValueError, match="needs a square operator"):
            lx.tridiagonal(op)
    else:
        for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(a, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_diagonal_and_tridiagonal_complex_float32(name, builder, rng):
    # Untagged (probing, or the dense matrix) and tagged (three probes) paths.
    for dtype, tags in [
        (np.complex128, ()),
        (np.complex128, lx.tridiagonal_tag),
        (np.float32, lx.tridiagonal_tag),
    ]:
        a = make_matrix(rng, (3, 3), dtype, "tridiagonal")
        op = builder(a, tags).operator
        tol = tolerances(dtype)
        np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(a), **tol)
        for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(a, k), **tol)


@pytest.mark.parametrize("name, make", STRUCTURED_BUILDERS, ids=STRUCTURED_IDS)
def test_diagonal_and_tridiagonal_structured(name, make, rng):
    built, dense = make(rng, 4, np.float64)
    np.testing.assert_allclose(_np(lx.diagonal(built.operator)), np.diagonal(dense), rtol=1e-12)
    if dense.shape[0] != dense.shape[1]:
        with pytest.raises(ValueError, match="needs a square operator"):
            lx.tridiagonal(built.operator)
    else:
        for band, k in zip(lx.tridiagonal(built.operator), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(dense, k), rtol=1e-12, atol=1e-15)


def _count_probes(fn) -> int:
    """How many `mv`s of the marked operator `fn()` performs (see `_marked_tridiagonal`)."""
    return _primitive_names(jax.make_jaxpr(fn)()).count("optimization_barrier")


def _marked_tridiagonal(t: np.ndarray, tags):
    """A matrix-free O(n) operator acting as the tridiagonal matrix `t`, each `mv` marked by one
    `optimization_barrier` in the jaxpr so that the number of `mv`s can be counted."""
    d, lo, up = (jnp.asarray(np.diagonal(t, k).copy()) for k in (0, -1, 1))

    def fn(v):
        v = jax.lax.optimization_barrier(v)
        out = d * v
        out = out.at[1:].add(lo * v[:-1])
        return out.at[:-1].add(up * v[1:])

    return lx.FunctionLinearOperator(fn, SDS((t.shape[0],), jnp.dtype(t.dtype)), tags)


# n = 4: columns 0 and 3 share a colour, so the colouring itself is tested.
@pytest.mark.parametrize("n", [1, 4])
def test_tridiagonal_tagged_function_uses_three_probes(n, rng):
    t = make_matrix(rng, (n, n), np.float64, "tridiagonal")
    op = _marked_tridiagonal(t, lx.tridiagonal_tag)
    assert _count_probes(lambda: lx.tridiagonal(op)) == 3
    # A 1 x 1 operator is diagonal (whatever its tags): its diagonal is one probe.
    assert _count_probes(lambda: lx.diagonal(op)) == (1 if n == 1 else 3)
    for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
        np.testing.assert_allclose(_np(band), np.diagonal(t, k), rtol=1e-14)
    np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(t), rtol=1e-14)
    # The same through a wrapper that adds the tag, and through arithmetic.
    tagged = lx.TaggedLinearOperator(_marked_tridiagonal(t, ()), lx.tridiagonal_tag)
    assert _count_probes(lambda: lx.tridiagonal(tagged)) == 3
    for band, k in zip(lx.tridiagonal(2.0 * tagged - op), (0, -1, 1)):
        np.testing.assert_allclose(_np(band), np.diagonal(t, k), rtol=1e-14, atol=1e-15)


def test_probing_pytree_input(rng):
    """Probing (three colours, or one basis vector at a time) through a pytree input structure."""
    t = make_matrix(rng, (4, 4), np.float64, "tridiagonal")
    in_s = {"x": SDS((1,), jnp.float64), "y": SDS((3,), jnp.float64)}

    def fn(v):
        out = jnp.asarray(t) @ jnp.concatenate([v["x"], v["y"]])
        return {"x": out[:1], "y": out[1:]}

    tagged = lx.FunctionLinearOperator(fn, in_s, lx.tridiagonal_tag)
    untagged = lx.FunctionLinearOperator(fn, in_s)
    for op in (tagged, untagged):
        for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(t, k), rtol=1e-14)
        np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(t), rtol=1e-14)
        np.testing.assert_allclose(
            _np(
                lx.diagonal(
                    op @ lx.DiagonalLinearOperator({"x": jnp.ones(1), "y": 2 * jnp.ones(3)})
                )
            ),
            np.diagonal(t) * [1, 2, 2, 2],
            rtol=1e-14,
        )


def test_mixed_precision_pytree_input(rng):
    """A matrix-free operator on `{"a": float32, "b": float64}`: every basis vector and probe must be
    cast back to each leaf's own dtype (the function accepts nothing else)."""
    a = make_matrix(rng, (3, 3), np.float64, "tridiagonal")
    in_s = {"a": SDS((2,), jnp.float32), "b": SDS((1,), jnp.float64)}

    def fn(v):
        # Mixes precisions explicitly; `a` is tridiagonal.
        x = jnp.concatenate([v["a"].astype(jnp.float64), v["b"]])
        y = jnp.asarray(a) @ x
        return {"a": y[:2].astype(jnp.float32), "b": y[2:]}

    for tags in ((), lx.tridiagonal_tag):
        op = lx.FunctionLinearOperator(fn, in_s, tags)
        tol = tolerances(np.float32)
        np.testing.assert_allclose(_np(op.as_matrix()), a, **tol)
        np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(a), **tol)
        for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(a, k), **tol)
        out = op.T.mv({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(1)})
        assert out["a"].dtype == jnp.float32 and out["b"].dtype == jnp.float64
        np.testing.assert_allclose(
            np.concatenate([_np(out["a"]), _np(out["b"])]), a.T @ np.ones(3), **tol
        )


def test_diagonal_tagged_function_uses_one_probe(rng):
    d = make_matrix(rng, (4, 4), np.float64, "diagonal")
    op = _marked_tridiagonal(d, lx.diagonal_tag)
    assert _count_probes(lambda: lx.diagonal(op)) == 1
    np.testing.assert_allclose(_np(lx.diagonal(op)), np.diagonal(d))
    tagged = lx.TaggedLinearOperator(_marked_tridiagonal(d, ()), lx.diagonal_tag)
    assert _count_probes(lambda: lx.diagonal(tagged)) == 1
    np.testing.assert_allclose(_np(lx.diagonal(tagged)), np.diagonal(d))


def test_tridiagonal_of_composites(rng):
    t = make_matrix(rng, (4, 4), np.float64, "tridiagonal")
    d = np.diagonal(make_matrix(rng, (4, 4), np.float64, "diagonal")).copy()
    T = lx.TridiagonalLinearOperator(*(jnp.asarray(np.diagonal(t, k).copy()) for k in (0, -1, 1)))
    D = lx.DiagonalLinearOperator(jnp.asarray(d))
    cases = [
        (D @ T, np.diag(d) @ t),
        (T @ D, t @ np.diag(d)),
        (T + D, t + np.diag(d)),
        (-T / 2.0, -t / 2.0),
        (T.T, t.T),
        (D @ _marked_tridiagonal(t, lx.tridiagonal_tag), np.diag(d) @ t),
    ]
    for op, dense in cases:
        assert lx.is_tridiagonal(op)
        for band, k in zip(lx.tridiagonal(op), (0, -1, 1)):
            np.testing.assert_allclose(_np(band), np.diagonal(dense, k), rtol=1e-13, atol=1e-15)
    # A composition of two tridiagonals is pentadiagonal: `tridiagonal` still returns its three
    # central bands (from the dense matrix).
    bands = lx.tridiagonal(T @ T)
    for band, k in zip(bands, (0, -1, 1)):
        np.testing.assert_allclose(_np(band), np.diagonal(t @ t, k), rtol=1e-13)


N_BIG = 300


def _largest_intermediate(fn, *args) -> int:
    """The largest number of elements of any value computed in `fn`'s jaxpr (inputs excluded)."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    sizes = [0]
    for eqn in _walk_eqns(jaxpr.jaxpr):
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            sizes.append(int(np.prod(shape)) if shape else 1)
    return max(sizes)


def _cheap_operator(coeffs: np.ndarray):
    """A matrix-free O(n) operator: `v -> c * v + roll(v, 1)`, whose diagonal is `c` (for n > 1)."""
    c = jnp.asarray(coeffs)
    return lx.FunctionLinearOperator(
        lambda v: c * v + jnp.roll(v, 1), SDS((coeffs.shape[0],), jnp.float64)
    )


def test_diagonal_never_forms_a_dense_matrix(rng):
    n = N_BIG
    c = rng.standard_normal(n)
    d = rng.standard_normal(n)
    m = rng.standard_normal((n, n))
    D = lx.DiagonalLinearOperator(jnp.asarray(d))
    M = lx.MatrixLinearOperator(jnp.asarray(m))
    F = _cheap_operator(c)
    G = _cheap_operator(d)
    x0 = jnp.asarray(c)
    J = lx.JacobianLinearOperator(lambda x, _: jnp.sin(x) + jnp.roll(x, 1) ** 2, x0)
    # Inputs (the stored matrix) may be n x n; nothing computed from them may be.
    limit = n * n
    assert _largest_intermediate(lambda D, M: lx.diagonal(D @ M), D, M) < limit
    assert _largest_intermediate(lambda D, M: lx.diagonal(M @ D), D, M) < limit
    assert _largest_intermediate(lambda D, M: lx.diagonal(2.0 * (D @ M) + M), D, M) < limit
    np.testing.assert_allclose(_np(lx.diagonal(D @ M)), d * np.diagonal(m), rtol=1e-13)
    np.testing.assert_allclose(_np(lx.diagonal(M @ D)), np.diagonal(m) * d, rtol=1e-13)
    # Matrix-free operators: closed over, since their `fn` is not an array.
    for op in (F, D @ F, F @ D, F + G, -F * 3.0, J):
        assert _largest_intermediate(lambda op=op: lx.diagonal(op)) < limit
    # Values (compiling each is slow at this size, so only some; small sizes are checked elsewhere).
    np.testing.assert_allclose(_np(lx.diagonal(D @ F)), d * c, rtol=1e-13)
    np.testing.assert_allclose(_np(lx.diagonal(J)), np.cos(c), rtol=1e-13)
    # Two matrix-free factors: probed as a whole, still without an n x n intermediate.
    FG = F @ G
    assert _largest_intermediate(lambda: lx.diagonal(FG)) < limit
    # (diag(c) + P)(diag(d) + P) with P the cyclic shift: the diagonal is c * d (n > 2).
    np.testing.assert_allclose(_np(lx.diagonal(FG)), c * d, rtol=1e-13)


def test_jaxpr_size_check_can_fail(rng):
    """The check above detects a dense intermediate when there is one."""
    F = _cheap_operator(rng.standard_normal(N_BIG))
    assert _largest_intermediate(lambda: F.as_matrix()) >= N_BIG * N_BIG


# ---------------------------------------------------------------------------------------------
# conj


@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_conj(name, builder, rng):
    for dtype, shape in [(np.complex128, (3, 3)), (np.complex128, (2, 4)), (np.float64, (2, 4))]:
        a = make_matrix(rng, shape, dtype)
        built = builder(a, ())
        c = lx.conj(built.operator)
        check_action(built, c, np.conj(a), rng, dtype)


def test_conj_of_structured_and_scaled(rng):
    dtype = np.complex128
    a = make_matrix(rng, (3, 3), dtype)
    d = np.diagonal(make_matrix(rng, (3, 3), dtype, "diagonal")).copy()
    t = make_matrix(rng, (3, 3), dtype, "tridiagonal")
    s = 1.5 - 2j
    M = lx.MatrixLinearOperator(a)
    D = lx.DiagonalLinearOperator({"d": jnp.asarray(d)})
    T = lx.TridiagonalLinearOperator(*(jnp.asarray(np.diagonal(t, k).copy()) for k in (0, -1, 1)))
    cases = [
        (T, t),
        (M * s, a * s),
        (M / jnp.asarray(s), a / s),
        (s * M - T @ M, s * a - t @ a),
        (lx.TaggedLinearOperator(M, ()), a),
    ]
    v = random_vector(rng, 3, dtype)
    for op, dense in cases:
        np.testing.assert_allclose(
            _np(lx.conj(op).mv(jnp.asarray(v))), np.conj(dense) @ v, rtol=1e-12
        )
        np.testing.assert_allclose(_np(lx.conj(op).as_matrix()), np.conj(dense), rtol=1e-12)
    out = lx.conj(D).mv({"d": jnp.asarray(v)})["d"]
    np.testing.assert_allclose(_np(out), np.conj(d) * v, rtol=1e-12)
    ident = lx.IdentityLinearOperator(SDS((3,), jnp.complex128))
    np.testing.assert_array_equal(_np(lx.conj(ident).as_matrix()), np.eye(3))


def test_conj_keeps_tags(rng):
    a = make_matrix(rng, (3, 3), np.complex128, "spd")
    op = build_function(a, lx.positive_semidefinite_tag).operator
    assert lx.is_positive_semidefinite(lx.conj(op))
    assert lx.is_lower_triangular(
        lx.conj(lx.MatrixLinearOperator(np.tril(a), lx.lower_triangular_tag))
    )


# ---------------------------------------------------------------------------------------------
# Predicates


def expected_from_tags(tags, dtype) -> set:
    """What linopx may conclude from `tags` alone."""
    out = set()
    if lx.symmetric_tag in tags or lx.diagonal_tag in tags:
        out.add("is_symmetric")
    if not is_complex(dtype) and (
        lx.positive_semidefinite_tag in tags or lx.negative_semidefinite_tag in tags
    ):
        out.add("is_symmetric")
    if lx.diagonal_tag in tags:
        out |= {"is_diagonal", "is_tridiagonal", "is_lower_triangular", "is_upper_triangular"}
    names = {
        lx.tridiagonal_tag: "is_tridiagonal",
        lx.lower_triangular_tag: "is_lower_triangular",
        lx.upper_triangular_tag: "is_upper_triangular",
        lx.positive_semidefinite_tag: "is_positive_semidefinite",
        lx.negative_semidefinite_tag: "is_negative_semidefinite",
        lx.unit_diagonal_tag: "has_unit_diagonal",
    }
    out |= {names[t] for t in tags if t in names}
    return out


# Scaling and negation cannot keep a unit diagonal (linopx does not track that 0.5 + 0.5 == 1).
LOSES_UNIT_DIAGONAL = {"sum_of_halves", "scaled_divided", "double_negation"}

TAG_SETS = [
    (),
    (lx.symmetric_tag,),
    (lx.positive_semidefinite_tag,),
    (lx.negative_semidefinite_tag,),
    (lx.positive_semidefinite_tag, lx.symmetric_tag),
    (lx.diagonal_tag,),
    (lx.tridiagonal_tag,),
    (lx.lower_triangular_tag,),
    (lx.upper_triangular_tag,),
    (lx.lower_triangular_tag, lx.unit_diagonal_tag),
    (lx.upper_triangular_tag, lx.unit_diagonal_tag),
]


@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=BUILDER_IDS)
def test_predicates_follow_tags(name, builder):
    # Predicates read tags and types, never values, so any matrix will do.
    for dtype in (np.float64, np.complex128):
        a = np.eye(3, dtype=dtype)
        for tags in TAG_SETS:
            op = builder(a, tags).operator
            expected = expected_from_tags(tags, dtype)
            if name in LOSES_UNIT_DIAGONAL:
                expected.discard("has_unit_diagonal")
            assert true_predicates(op) == expected, (tags, dtype)
            # The transpose has the transposed tags.
            assert true_predicates(op.T) == (
                expected_from_tags(lx.transpose_tags(tags), dtype)
                - ({"has_unit_diagonal"} if name in LOSES_UNIT_DIAGONAL else set())
            ), (tags, dtype)


def test_predicates_of_structured_operators():
    s3 = SDS((3,), jnp.float64)
    everything_but_nsd = set(predicates(lx.IdentityLinearOperator(s3))) - {
        "is_negative_semidefinite"
    }
    assert true_predicates(lx.IdentityLinearOperator(s3)) == everything_but_nsd
    assert true_predicates(lx.IdentityLinearOperator({"a": s3})) == everything_but_nsd
    assert true_predicates(lx.IdentityLinearOperator(s3, SDS((4,), jnp.float64))) == set()
    assert true_predicates(lx.IdentityLinearOperator(s3, {"a": s3})) == set()
    assert true_predicates(lx.DiagonalLinearOperator(jnp.ones(3))) == {
        "is_symmetric",
        "is_diagonal",
        "is_tridiagonal",
        "is_lower_triangular",
        "is_upper_triangular",
    }
    tri = lx.TridiagonalLinearOperator(jnp.ones(3), jnp.ones(2), jnp.ones(2))
    assert true_predicates(tri) == {"is_tridiagonal"}


PSD = lx.MatrixLinearOperator(np.eye(3), lx.positive_semidefinite_tag)
NSD = lx.MatrixLinearOperator(-np.eye(3), lx.negative_semidefinite_tag)
SYM = lx.MatrixLinearOperator(np.eye(3), lx.symmetric_tag)
GEN = lx.MatrixLinearOperator(np.eye(3))
LOW = lx.MatrixLinearOperator(np.eye(3), lx.lower_triangular_tag)
UP = lx.MatrixLinearOperator(np.eye(3), lx.upper_triangular_tag)
UNIT_LOW = lx.MatrixLinearOperator(np.eye(3), (lx.lower_triangular_tag, lx.unit_diagonal_tag))
UNIT_UP = lx.MatrixLinearOperator(np.eye(3), (lx.upper_triangular_tag, lx.unit_diagonal_tag))
DIAG = lx.DiagonalLinearOperator(jnp.ones(3))
DIAG_TAGGED = lx.MatrixLinearOperator(np.eye(3), lx.diagonal_tag)
TRI = lx.TridiagonalLinearOperator(jnp.ones(3), jnp.ones(2), jnp.ones(2))
IDENT = lx.IdentityLinearOperator(SDS((3,), jnp.float64))


def _definite(op) -> tuple[bool, bool]:
    return lx.is_positive_semidefinite(op), lx.is_negative_semidefinite(op)


def test_scaling_propagates_definiteness():
    assert _definite(PSD * -2.0) == (False, True)
    assert _definite(-2 * PSD) == (False, True)
    assert _definite(PSD * 3.0) == (True, False)
    assert _definite(PSD / 4) == (True, False)
    assert _definite(PSD / -4.0) == (False, True)
    assert _definite(NSD * -0.5) == (True, False)
    assert _definite(NSD / -3) == (True, False)
    # Zero times anything is both; NaN has no sign.
    assert _definite(PSD * 0.0) == (True, True)
    assert _definite(GEN * 0) == (True, True)
    assert _definite(PSD * float("nan")) == (False, False)
    assert _definite(PSD / np.float64("nan")) == (False, False)
    # Unknown signs: arrays (also 0-d, also concrete), complex numbers.
    for s in (jnp.asarray(2.0), jnp.asarray(-2.0), np.asarray(2.0), 2.0 + 0j, 1j):
        assert _definite(PSD * s) == (False, False), s
        assert _definite(PSD / s) == (False, False), s
    # Structure survives any scalar.
    for s in (-2.0, jnp.asarray(3.0), 1j):
        assert (
            lx.is_symmetric(SYM * s)
            and lx.is_lower_triangular(LOW / s)
            and lx.is_diagonal(DIAG * s)
        )
        assert not lx.has_unit_diagonal(UNIT_LOW * s)


def test_scaling_by_traced_scalar_is_neither():
    def f(c):
        op = PSD * c
        assert _definite(op) == (False, False)
        assert lx.is_symmetric(op)
        return op.mv(jnp.ones(3))

    jax.jit(f)(2.0)
    jax.grad(lambda c: f(c).sum())(2.0)


def test_python_scalar_sign_survives_jit():
    """A Python scalar becomes a traced leaf under `jax.jit`, but its sign (static) is kept, also by
    the operator's transpose, `materialise`, `linearise` and `conj`."""

    @jax.jit
    def f(op):
        for derived in (op, op.T, op.T.T, lx.materialise(op), lx.linearise(op), lx.conj(op)):
            assert _definite(derived) == (False, True), derived
        return op.mv(jnp.ones(3))

    for op, factor in [(PSD * -2.0, -2.0), (PSD / -4, -0.25), (-2.0 * (PSD + PSD) / 2.0, -2.0)]:
        np.testing.assert_allclose(_np(f(op)), factor * np.ones(3))
        # ... and the same outside `jit`.
        for derived in (op.T, lx.materialise(op), lx.linearise(op), lx.conj(op)):
            assert _definite(derived) == (False, True)


def test_negation_swaps_definiteness():
    assert _definite(-PSD) == (False, True)
    assert _definite(-NSD) == (True, False)
    assert _definite(-(-PSD)) == (True, False)  # noqa: B002
    assert _definite(-IDENT) == (False, True)
    assert _definite(-GEN) == (False, False)


def test_sum_keeps_only_shared_properties():
    assert _definite(PSD + PSD) == (True, False)
    assert _definite(NSD + NSD) == (False, True)
    assert _definite(PSD + NSD) == (False, False)
    assert _definite(PSD + GEN) == (False, False)
    assert _definite(PSD - NSD) == (True, False)
    assert _definite(PSD - PSD) == (False, False)
    assert _definite(PSD + IDENT) == (True, False)
    assert lx.is_symmetric(SYM + PSD)
    assert not lx.is_symmetric(SYM + GEN)
    assert not lx.is_lower_triangular(LOW + UP) and not lx.is_upper_triangular(LOW + UP)
    assert lx.is_lower_triangular(LOW + DIAG)
    assert lx.is_tridiagonal(TRI + DIAG) and not lx.is_diagonal(TRI + DIAG)
    assert lx.is_diagonal(DIAG + DIAG_TAGGED)
    assert not lx.has_unit_diagonal(UNIT_LOW + UNIT_LOW)
    assert lx.is_lower_triangular(UNIT_LOW + UNIT_LOW)


def test_composition_keeps_only_provable_properties():
    # Identity on either side keeps everything.
    for op in (PSD, NSD, SYM, LOW, UNIT_LOW):
        assert predicates(IDENT @ op) == predicates(op)
        assert predicates(op @ IDENT) == predicates(op)
    # Products of symmetric/definite factors need not be symmetric/definite.
    assert not lx.is_symmetric(SYM @ SYM)
    assert _definite(PSD @ PSD) == (False, False)
    assert not lx.is_symmetric(PSD @ PSD)
    # Diagonal @ diagonal is diagonal and symmetric (but definiteness is not known).
    assert lx.is_symmetric(DIAG @ DIAG_TAGGED) and lx.is_diagonal(DIAG @ DIAG_TAGGED)
    assert _definite(DIAG @ DIAG) == (False, False)
    # Triangular products.
    assert lx.is_lower_triangular(LOW @ LOW) and not lx.is_upper_triangular(LOW @ LOW)
    assert lx.is_upper_triangular(UP @ UP)
    assert not lx.is_lower_triangular(LOW @ UP) and not lx.is_upper_triangular(LOW @ UP)
    # Band products.
    assert lx.is_tridiagonal(DIAG @ TRI) and lx.is_tridiagonal(TRI @ DIAG)
    assert not lx.is_tridiagonal(TRI @ TRI)
    # Unit diagonals.
    assert lx.has_unit_diagonal(UNIT_LOW @ UNIT_LOW)
    assert lx.has_unit_diagonal(UNIT_UP @ UNIT_UP)
    assert lx.is_lower_triangular(UNIT_LOW @ UNIT_LOW)
    assert not lx.has_unit_diagonal(UNIT_LOW @ UNIT_UP)
    assert not lx.has_unit_diagonal(UNIT_LOW @ LOW)
    # A rectangular identity proves nothing as a factor; `rect.T @ rect` is a Gram product,
    # hence symmetric positive semidefinite (it is the 3 x 3 identity).
    rect = lx.IdentityLinearOperator(SDS((3,), jnp.float64), SDS((4,), jnp.float64))
    other = lx.IdentityLinearOperator(SDS((4,), jnp.float64), SDS((3,), jnp.float64))
    assert true_predicates(other @ rect) == set()
    assert true_predicates(rect.T @ rect) == {"is_symmetric", "is_positive_semidefinite"}


def test_unit_lower_product_is_unit_lower_numerically(rng):
    """What `has_unit_diagonal(L1 @ L2)` promises holds for actual unit-lower matrices."""
    l1 = make_matrix(rng, (4, 4), np.float64, "unit_lower")
    l2 = make_matrix(rng, (4, 4), np.float64, "unit_lower")
    tags = tags_for_kind("unit_lower", np.float64)
    op = build_matrix(l1, tags).operator @ build_function(l2, tags).operator
    assert lx.has_unit_diagonal(op) and lx.is_lower_triangular(op)
    np.testing.assert_allclose(_np(lx.diagonal(op)), np.ones(4), rtol=1e-14)
    np.testing.assert_allclose(np.triu(_np(op.as_matrix()), 1), 0.0, atol=1e-15)


def test_transpose_swaps_triangular_tags(rng):
    a = make_matrix(rng, (3, 3), np.float64, "lower")
    for name, builder in OPERATOR_BUILDERS:
        op = builder(a, (lx.lower_triangular_tag, lx.unit_diagonal_tag)).operator
        assert lx.is_upper_triangular(op.T) and not lx.is_lower_triangular(op.T), name
        assert lx.is_lower_triangular(op.T.T), name
    assert lx.is_upper_triangular((LOW @ LOW).T)
    assert lx.is_upper_triangular((2.0 * LOW - LOW).T) and not lx.is_lower_triangular((2.0 * LOW).T)


def test_transpose_tags():
    assert lx.transpose_tags(()) == frozenset()
    assert lx.transpose_tags(lx.lower_triangular_tag) == frozenset({lx.upper_triangular_tag})
    assert lx.transpose_tags([lx.upper_triangular_tag]) == frozenset({lx.lower_triangular_tag})
    both = [lx.lower_triangular_tag, lx.upper_triangular_tag]
    assert lx.transpose_tags(both) == frozenset(both)
    kept = [
        lx.symmetric_tag,
        lx.diagonal_tag,
        lx.tridiagonal_tag,
        lx.unit_diagonal_tag,
        lx.positive_semidefinite_tag,
        lx.negative_semidefinite_tag,
    ]
    assert lx.transpose_tags(kept + [lx.lower_triangular_tag]) == frozenset(
        kept + [lx.upper_triangular_tag]
    )
    with pytest.raises(TypeError, match="is not a linopx tag"):
        lx.transpose_tags(["symmetric"])


def test_complex_psd_is_not_symmetric():
    for tag in (lx.positive_semidefinite_tag, lx.negative_semidefinite_tag):
        real = lx.MatrixLinearOperator(np.eye(2), tag)
        cplx = lx.MatrixLinearOperator(np.eye(2, dtype=np.complex128), tag)
        assert lx.is_symmetric(real)
        assert not lx.is_symmetric(cplx)
        f = lx.FunctionLinearOperator(lambda v: v, SDS((2,), jnp.complex128), tag)
        assert not lx.is_symmetric(f)
        assert not lx.is_symmetric(
            lx.TaggedLinearOperator(lx.MatrixLinearOperator(np.eye(2, dtype=np.complex128)), tag)
        )
        assert lx.is_symmetric(lx.TaggedLinearOperator(lx.MatrixLinearOperator(np.eye(2)), tag))


def test_predicates_are_static_under_jit():
    """Predicates are decided at trace time: they give plain bools inside `jit`."""

    @eqx.filter_jit
    def f(op):
        assert lx.is_positive_semidefinite(op) is True
        assert lx.is_symmetric(op) is True
        return op.mv(jnp.ones(3))

    f(PSD)
    f(lx.TaggedLinearOperator(GEN, (lx.positive_semidefinite_tag,)))
