"""Operators against independent dense NumPy matrices: action, transpose, structures, the adjoint
identity, arithmetic, dtypes, `jit`/`vmap`/`grad`, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OPERATOR_BUILDERS,
    STRUCTURED_BUILDERS,
    build_matrix,
    built_from_structures,
    is_complex,
    make_matrix,
    pytree_blocks,
    random_vector,
    tolerances,
    tree_to_flat,
)

import linopx as lx

DTYPES = [np.float32, np.float64, np.complex128]
DTYPE_IDS = ["float32", "float64", "complex128"]
# (dtype, shape) cases: every dtype on a square matrix, and a wide one (whose transpose is tall) in
# float64 and complex128. Few distinct shapes keep JAX's per-shape compilation of eager operations
# (the bulk of the run time) small.
CASES = [
    (np.float32, (3, 3)),
    (np.float64, (3, 3)),
    (np.complex128, (3, 3)),
    (np.float64, (2, 4)),
    (np.complex128, (2, 4)),
]
CASE_IDS = [f"{np.dtype(d).name}-{m}x{n}" for d, (m, n) in CASES]


def _wide(a) -> np.ndarray:
    """`a` as complex128 (or float64), for NumPy references that do not round."""
    return np.asarray(a).astype(np.complex128 if is_complex(np.asarray(a).dtype) else np.float64)


def _np(x) -> np.ndarray:
    return np.asarray(x)


def assert_structure(actual, expected):
    """Same tree, same leaf shapes and dtypes."""
    la, ta = jax.tree_util.tree_flatten(actual)
    le, te = jax.tree_util.tree_flatten(expected)
    assert ta == te, (ta, te)
    assert [(tuple(x.shape), jnp.dtype(x.dtype)) for x in la] == [
        (tuple(x.shape), jnp.dtype(x.dtype)) for x in le
    ]


def assert_matches_structure(tree, structure):
    """The pytree of arrays `tree` has exactly the shapes and dtypes `structure` promises."""
    assert_structure(
        jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree), structure
    )


def check_against_dense(built, dense, rng, dtype):
    """mv, as_matrix, transpose, .T, structures and sizes of `built.operator` against `dense`."""
    op, to_in, from_in, to_out, from_out, in_s, out_s = built
    m, n = dense.shape
    tol = tolerances(dtype)
    ref = _wide(dense)
    v = random_vector(rng, n, dtype)
    w = random_vector(rng, m, dtype)

    assert_structure(op.in_structure(), in_s)
    assert_structure(op.out_structure(), out_s)
    assert op.in_size() == n and op.out_size() == m

    y = op.mv(from_in(v))
    assert_matches_structure(y, out_s)
    np.testing.assert_allclose(_np(to_out(y)), ref @ v, **tol)
    matrix = op.as_matrix()
    assert matrix.shape == (m, n)
    np.testing.assert_allclose(_np(matrix), ref, **tol)

    t = op.transpose()
    assert_structure(t.in_structure(), out_s)
    assert_structure(t.out_structure(), in_s)
    assert t.in_size() == m and t.out_size() == n
    np.testing.assert_allclose(_np(t.as_matrix()), ref.T, **tol)
    z = op.T.mv(from_out(w))
    assert_matches_structure(z, in_s)
    np.testing.assert_allclose(_np(to_in(z)), ref.T @ w, **tol)
    # (`.T.T` is checked for every builder by test_operator_properties.py.)


def check_adjoint_identity(built, dense, rng, dtype):
    """`<A v, w> = <v, Aᵀ w>` (bilinear, unconjugated), both equal to NumPy's `w · (A v)`."""
    op, to_in, from_in, to_out, from_out, *_ = built
    m, n = dense.shape
    tol = tolerances(dtype)
    v = random_vector(rng, n, dtype)
    w = random_vector(rng, m, dtype)
    lhs = np.dot(_np(to_out(op.mv(from_in(v)))).astype(complex), w)
    rhs = np.dot(v, _np(to_in(op.transpose().mv(from_out(w)))).astype(complex))
    ref = w @ _wide(dense) @ v
    scale = np.linalg.norm(v) * np.linalg.norm(w) * max(np.abs(dense).max(), 1.0)
    assert abs(lhs - rhs) <= tol["rtol"] * scale * max(m, n)
    assert abs(lhs - ref) <= tol["rtol"] * scale * max(m, n)


# ---------------------------------------------------------------------------------------------
# Every builder, every structured operator


@pytest.mark.parametrize("dtype, shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=[n for n, _ in OPERATOR_BUILDERS])
def test_builder_against_dense(name, builder, dtype, shape, rng):
    a = make_matrix(rng, shape, dtype)
    check_against_dense(builder(a, ()), a, rng, dtype)


@pytest.mark.parametrize("dtype, shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=[n for n, _ in OPERATOR_BUILDERS])
def test_builder_adjoint_identity(name, builder, dtype, shape, rng):
    a = make_matrix(rng, shape, dtype)
    check_adjoint_identity(builder(a, ()), a, rng, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name, make", STRUCTURED_BUILDERS, ids=[n for n, _ in STRUCTURED_BUILDERS])
def test_structured_against_dense(name, make, dtype, rng):
    built, dense = make(rng, 3, dtype)
    check_against_dense(built, dense, rng, dtype)
    check_adjoint_identity(built, dense, rng, dtype)


def test_tridiagonal_size_one(rng):
    op = lx.TridiagonalLinearOperator(jnp.array([2.0]), jnp.zeros(0), jnp.zeros(0))
    np.testing.assert_allclose(_np(op.as_matrix()), [[2.0]])
    np.testing.assert_allclose(_np(op.mv(jnp.array([3.0]))), [6.0])


def test_identity_transpose_swaps_structures():
    s_in = {"a": jax.ShapeDtypeStruct((2,), jnp.float64)}
    s_out = (jax.ShapeDtypeStruct((3,), jnp.float64),)
    op = lx.IdentityLinearOperator(s_in, s_out)
    y = op.mv({"a": jnp.array([1.0, 2.0])})
    np.testing.assert_array_equal(_np(y[0]), [1.0, 2.0, 0.0])
    z = op.T.mv((jnp.array([4.0, 5.0, 6.0]),))
    np.testing.assert_array_equal(_np(z["a"]), [4.0, 5.0])
    np.testing.assert_array_equal(_np(op.as_matrix()), np.eye(3, 2))


def test_identity_accepts_arrays_as_structure():
    op = lx.IdentityLinearOperator(jnp.zeros((2, 2)))
    assert_structure(op.in_structure(), jax.ShapeDtypeStruct((2, 2), jnp.float64))
    np.testing.assert_array_equal(_np(op.as_matrix()), np.eye(4))


# ---------------------------------------------------------------------------------------------
# Arithmetic


def _compose_partner(built, c):
    """An operator `C` with `C`'s output structure equal to `built`'s input structure, acting as the
    dense matrix `c` (of shape (n, k)) on flat `(k,)` vectors."""
    k = c.shape[1]
    in_s = jax.ShapeDtypeStruct((k,), jnp.dtype(c.dtype))
    return lx.PyTreeLinearOperator(pytree_blocks(c, in_s, built.in_structure), built.in_structure)


# complex128 (complex scalars, transposes that must not conjugate) for every builder; float32
# (promotion by scalars) for the three basic kinds of operator. float64 adds nothing these miss.
ARITHMETIC_CASES = [(n, b, np.complex128) for n, b in OPERATOR_BUILDERS] + [
    (n, b, np.float32) for n, b in OPERATOR_BUILDERS if n in ("matrix", "function", "pytree")
]


@pytest.mark.parametrize(
    "name, builder, dtype",
    ARITHMETIC_CASES,
    ids=[f"{n}-{np.dtype(d).name}" for n, _, d in ARITHMETIC_CASES],
)
def test_arithmetic(name, builder, dtype, rng):
    m, n, k = 3, 3, 2  # square, as in CASES, so most eager compilations are shared
    a = make_matrix(rng, (m, n), dtype)
    b = make_matrix(rng, (m, n), dtype)
    c = make_matrix(rng, (n, k), dtype)
    A = builder(a, ())
    B = builder(b, ())
    tol = tolerances(dtype)
    v = random_vector(rng, n, dtype)
    s = 2.5 - 1.5j if is_complex(dtype) else 2.5
    s_arr = jnp.asarray(s, dtype)  # a 0-d array of the operator's dtype (strict promotion)

    def check(op, dense, name):
        y = op.mv(A.from_flat_in(v))
        assert_matches_structure(y, op.out_structure())
        np.testing.assert_allclose(_np(A.to_flat_out(y)), _wide(dense) @ v, **tol, err_msg=name)
        np.testing.assert_allclose(_np(op.as_matrix()), _wide(dense), **tol, err_msg=name)

    op1, op2 = A.operator, B.operator
    check(op1 + op2, a + b, "+")
    check(op1 - op2, a - b, "-")
    check(-op1, -a, "neg")
    check(s * op1, s * _wide(a), "scalar * A")
    check(op1 * s, s * _wide(a), "A * scalar")
    check(3 * op1, 3 * _wide(a), "int * A")
    check(op1 / s, _wide(a) / s, "A / scalar")
    check(op1 / 4, _wide(a) / 4, "A / int")
    check(s_arr * op1, s * _wide(a), "0-d array * A")
    check(op1 * s_arr, s * _wide(a), "A * 0-d array")
    check(op1 / s_arr, _wide(a) / s, "A / 0-d array")
    check(op1 * np.asarray(s, dtype), s * _wide(a), "A * NumPy 0-d array")
    check(np.dtype(dtype).type(s) * op1, s * _wide(a), "NumPy scalar * A")
    mixed = 2.0 * op1 - op2 / 2.0 + (-op1)
    check(mixed, 2.0 * _wide(a) - _wide(b) / 2.0 - _wide(a), "mixed")
    np.testing.assert_allclose(_np(mixed.T.as_matrix()), (_wide(a) - _wide(b) / 2.0).T, **tol)

    C = _compose_partner(A, c)
    u = random_vector(rng, k, dtype)
    composed = op1 @ C
    y = composed.mv(u)
    np.testing.assert_allclose(_np(A.to_flat_out(y)), _wide(a) @ _wide(c) @ u, **tol)
    np.testing.assert_allclose(_np(composed.as_matrix()), _wide(a) @ _wide(c), **tol)
    np.testing.assert_allclose(_np(composed.T.as_matrix()), (_wide(a) @ _wide(c)).T, **tol)
    assert composed.in_size() == k and composed.out_size() == m


@pytest.mark.parametrize("name", ["matrix", "function", "jacobian_fwd"])
def test_complex_scalar_on_real_operator(name, rng):
    """`A * s` with a complex `s` maps `A`'s (real) input to complex output. Strict promotion
    (tests/conftest.py) forbids real * complex even in plain JAX, so this runs under JAX's standard
    rules."""
    a = make_matrix(rng, (2, 3), np.float64)
    built = dict(OPERATOR_BUILDERS)[name](a, ())
    v = random_vector(rng, 3, np.float64)
    w = random_vector(rng, 2, np.float64)
    with jax.numpy_dtype_promotion("standard"):
        for op, dense in [
            (built.operator * (1 + 2j), (1 + 2j) * a),
            ((1 + 2j) * built.operator, (1 + 2j) * a),
            (built.operator / 2j, a / 2j),
            (built.operator * jnp.asarray(1 - 1j), (1 - 1j) * a),
        ]:
            # The input is what `mv` accepts: still real (a real `FunctionLinearOperator` or
            # Jacobian rejects complex vectors); the output is complex.
            assert_structure(op.in_structure(), built.in_structure)
            for leaf in jax.tree_util.tree_leaves(op.out_structure()):
                assert leaf.dtype == jnp.complex128
            y = op.mv(built.from_flat_in(v))
            assert_matches_structure(y, op.out_structure())
            np.testing.assert_allclose(_np(tree_to_flat(y)), dense @ v, rtol=1e-12)
            np.testing.assert_allclose(_np(op.as_matrix()), dense, rtol=1e-12)
            z = op.T.mv(built.from_flat_out(w))
            assert_matches_structure(z, op.T.out_structure())
            np.testing.assert_allclose(_np(tree_to_flat(z)), dense.T @ w, rtol=1e-12)


def test_composition_input_is_what_the_right_factor_accepts(rng):
    """`A @ B` with a complex `A` and a real matrix-free `B` accepts `B`'s real vectors."""
    a = make_matrix(rng, (2, 2), np.complex128)
    b = make_matrix(rng, (2, 3), np.float64)
    B = dict(OPERATOR_BUILDERS)["function"](b, ()).operator
    op = lx.MatrixLinearOperator(a) @ B
    v = random_vector(rng, 3, np.float64)
    with jax.numpy_dtype_promotion("standard"):
        assert op.in_structure().dtype == jnp.float64
        assert op.out_structure().dtype == jnp.complex128
        y = op.mv(jnp.asarray(v))
        assert y.dtype == jnp.complex128
        np.testing.assert_allclose(_np(y), a @ b @ v, rtol=1e-12)
        np.testing.assert_allclose(_np(op.as_matrix()), a @ b, rtol=1e-12)


def test_scalar_keeps_float32(rng):
    """A Python or weakly typed scalar does not promote a float32 operator (mv and the structures
    agree), also when `jax.jit` turns a Python scalar leaf into a tracer."""
    a = make_matrix(rng, (3, 3), np.float32)
    A = lx.MatrixLinearOperator(a)
    v = jnp.asarray(random_vector(rng, 3, np.float32))
    for op in [2.0 * A, A / 3, A * jnp.asarray(2.0), -A * 0.5 + A]:
        assert op.out_structure().dtype == jnp.float32
        assert op.mv(v).dtype == jnp.float32

        @jax.jit
        def f(op, v):
            y = op.mv(v)
            assert_matches_structure(y, op.out_structure())
            assert_matches_structure(v, op.in_structure())
            return y

        assert f(op, v).dtype == jnp.float32


def test_numpy_scalar_promotes_like_jax(rng):
    """A NumPy float64 scalar is strongly typed in JAX: it promotes a float32 operator (standard
    promotion), and the structures say so."""
    a = make_matrix(rng, (3, 3), np.float32)
    v = jnp.asarray(random_vector(rng, 3, np.float32))
    with jax.numpy_dtype_promotion("standard"):
        op = lx.MatrixLinearOperator(a) * np.float64(2.0)
        y = op.mv(v)
        assert y.dtype == jnp.float64
        assert_matches_structure(y, op.out_structure())
    # Its sign is known, so tags can follow it.
    psd = lx.MatrixLinearOperator(np.eye(3), lx.positive_semidefinite_tag)
    assert lx.is_negative_semidefinite(psd * np.float64(-2.0))
    assert lx.is_positive_semidefinite(psd / np.float32(3.0))


def test_zero_dimensional_array_scalar_is_not_a_python_scalar(rng):
    a = make_matrix(rng, (2, 2), np.float64)
    op = jnp.asarray(2.0) * lx.MatrixLinearOperator(a)
    assert isinstance(op, lx.MulLinearOperator)
    np.testing.assert_allclose(_np(op.as_matrix()), 2.0 * a, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Transformations


def _jit_for(op):
    """`jax.jit` for operators whose leaves are all arrays; `eqx.filter_jit` for those holding
    Python functions (matrix-free operators closing over no tracers) or Python scalars."""
    if all(eqx.is_array(x) for x in jax.tree_util.tree_leaves(op)):
        return jax.jit
    return eqx.filter_jit


@pytest.mark.parametrize(
    "name, builder",
    OPERATOR_BUILDERS
    + [
        (n, lambda a, t, _m=m: _m(np.random.default_rng(1), a.shape[0], a.dtype)[0])
        for n, m in STRUCTURED_BUILDERS[:5]
    ],
    ids=[n for n, _ in OPERATOR_BUILDERS] + [n for n, _ in STRUCTURED_BUILDERS[:5]],
)
def test_jit_with_operator_argument(name, builder, rng):
    a = make_matrix(rng, (3, 3), np.float64)
    built = builder(a, ())
    op = built.operator
    dense = np.asarray(op.as_matrix())
    n = dense.shape[1]
    v = jnp.asarray(random_vector(rng, n, np.float64))
    w = jnp.asarray(random_vector(rng, dense.shape[0], np.float64))

    def f(op, v, w):
        y = op.mv(built.from_flat_in(v))
        z = op.transpose().mv(built.from_flat_out(w))
        return built.to_flat_out(y), built.to_flat_in(z), op.as_matrix()

    y, z, mat = _jit_for(op)(f)(op, v, w)
    np.testing.assert_allclose(_np(y), dense @ _np(v), rtol=1e-12)
    np.testing.assert_allclose(_np(z), dense.T @ _np(w), rtol=1e-12)
    np.testing.assert_allclose(_np(mat), dense, rtol=1e-12)


def test_plain_jit_on_array_only_operators(rng):
    """Operators holding only arrays (and Python scalars) go through `jax.jit` directly."""
    a = make_matrix(rng, (3, 3), np.float64)
    d = jnp.asarray(random_vector(rng, 3, np.float64))
    v = jnp.asarray(random_vector(rng, 3, np.float64))
    ops = [
        (lx.MatrixLinearOperator(a), a),
        (lx.DiagonalLinearOperator(d), np.diag(_np(d))),
        (
            lx.TridiagonalLinearOperator(d, d[:2], d[1:]),
            np.diag(_np(d)) + np.diag(_np(d[:2]), -1) + np.diag(_np(d[1:]), 1),
        ),
        (lx.IdentityLinearOperator(jax.ShapeDtypeStruct((3,), jnp.float64)), np.eye(3)),
        (
            2.0 * lx.MatrixLinearOperator(a) - lx.DiagonalLinearOperator(d) / 4.0,
            2.0 * a - np.diag(_np(d)) / 4.0,
        ),
        (
            lx.MatrixLinearOperator(a)
            @ lx.TaggedLinearOperator(lx.MatrixLinearOperator(a), lx.symmetric_tag),
            a @ a,
        ),
    ]
    mv = jax.jit(lambda op, v: op.mv(v))
    for op, dense in ops:
        np.testing.assert_allclose(_np(mv(op, v)), dense @ _np(v), rtol=1e-12)


@pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS, ids=[n for n, _ in OPERATOR_BUILDERS])
def test_vmap_over_matrix(name, builder, rng):
    batch, m, n = 3, 2, 4
    mats = np.stack([make_matrix(rng, (m, n), np.float64) for _ in range(batch)])
    vs = np.stack([random_vector(rng, n, np.float64) for _ in range(batch)])

    def f(a, v):
        built = builder(a, ())
        return built.to_flat_out(
            built.operator.mv(built.from_flat_in(v))
        ), built.operator.T.as_matrix()

    ys, ts = jax.vmap(f)(jnp.asarray(mats), jnp.asarray(vs))
    np.testing.assert_allclose(_np(ys), np.einsum("bij,bj->bi", mats, vs), rtol=1e-12)
    np.testing.assert_allclose(_np(ts), np.swapaxes(mats, 1, 2), rtol=1e-12)


def test_vmap_over_operator(rng):
    """`eqx.filter_vmap` over a batch of operators (batched leaves)."""
    mats = np.stack([make_matrix(rng, (3, 3), np.float64) for _ in range(4)])
    ops = eqx.filter_vmap(lambda a: 2.0 * lx.MatrixLinearOperator(a))(jnp.asarray(mats))
    v = random_vector(rng, 3, np.float64)
    ys = eqx.filter_vmap(lambda op: op.mv(jnp.asarray(v)))(ops)
    np.testing.assert_allclose(_np(ys), 2.0 * mats @ v, rtol=1e-12)


STRUCT3 = jax.ShapeDtypeStruct((3,), jnp.float64)


def test_function_operator_inside_grad_closes_over_tracer():
    with jax.checking_leaks():
        g = jax.grad(
            lambda c: lx.FunctionLinearOperator(lambda v: c * v, STRUCT3).mv(jnp.ones(3)).sum()
        )(2.0)
    assert float(g) == 3.0


def test_function_operator_inside_grad_matrix_and_transpose(rng):
    a = make_matrix(rng, (3, 3), np.float64)
    v = random_vector(rng, 3, np.float64)
    w = random_vector(rng, 3, np.float64)

    def loss(c):
        op = lx.FunctionLinearOperator(lambda x: c * (jnp.asarray(a) @ x), STRUCT3)
        return jnp.dot(op.T.mv(jnp.asarray(w)), jnp.asarray(v)) + op.as_matrix()[0, 1] * c

    with jax.checking_leaks():
        g = jax.grad(loss)(1.5)
    # d/dc [c vᵀAᵀw + c² a01] = vᵀAᵀw + 2 c a01
    np.testing.assert_allclose(float(g), v @ a.T @ w + 2 * 1.5 * a[0, 1], rtol=1e-12)


def test_jacobian_operator_inside_grad_and_jit(rng):
    x0 = jnp.asarray(random_vector(rng, 3, np.float64))
    v = jnp.asarray(random_vector(rng, 3, np.float64))

    def mv_sum(c, jac):
        op = lx.JacobianLinearOperator(
            lambda x, args: c * jnp.sin(x) * args, x0, jnp.ones(3), jac=jac
        )
        return op.mv(v).sum()

    for jac in (None, "bwd"):
        with jax.checking_leaks():
            g = jax.grad(mv_sum)(2.0, jac)
            val = jax.jit(mv_sum, static_argnums=1)(2.0, jac)
        np.testing.assert_allclose(float(g), np.sum(np.cos(_np(x0)) * _np(v)), rtol=1e-12)
        np.testing.assert_allclose(float(val), 2.0 * np.sum(np.cos(_np(x0)) * _np(v)), rtol=1e-12)


def test_jacobian_operator_at_traced_point(rng):
    """The linearisation point itself is a tracer (created inside `jit` and `grad`)."""
    x0 = random_vector(rng, 3, np.float64)
    v = jnp.asarray(random_vector(rng, 3, np.float64))

    def f(x):
        op = lx.JacobianLinearOperator(lambda y, _: y**3, x)
        return jnp.dot(op.mv(v), op.T.mv(v))

    with jax.checking_leaks():
        val = jax.jit(f)(jnp.asarray(x0))
        g = jax.grad(f)(jnp.asarray(x0))
    # J = diag(3 x²); f = sum(9 x⁴ v²); df/dx = 36 x³ v²
    np.testing.assert_allclose(float(val), np.sum(9 * x0**4 * _np(v) ** 2), rtol=1e-12)
    np.testing.assert_allclose(_np(g), 36 * x0**3 * _np(v) ** 2, rtol=1e-12)


@pytest.mark.parametrize("jac", [None, "bwd"])
def test_jacobian_between_pytrees(jac, rng):
    """The Jacobian of `{"a": (2,), "b": (2, 2)} -> ((2,), ())`, against the hand-derived matrix."""
    a0 = random_vector(rng, 2, np.float64)
    b0 = make_matrix(rng, (2, 2), np.float64)

    def fn(x, _):
        return (x["b"] @ x["a"], jnp.sum(x["a"] ** 2) + x["b"][0, 0])

    op = lx.JacobianLinearOperator(fn, {"a": jnp.asarray(a0), "b": jnp.asarray(b0)}, jac=jac)
    # Unknowns in order a0, a1, b00, b01, b10, b11; outputs y1_0, y1_1, y2.
    dense = np.zeros((3, 6))
    dense[:2, :2] = b0  # d(b a)_i / d a_j = b_ij
    dense[0, 2:4] = a0  # d(b a)_0 / d b_0l = a_l
    dense[1, 4:6] = a0
    dense[2, :2] = 2 * a0
    dense[2, 2] = 1.0
    in_s = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float64),
        "b": jax.ShapeDtypeStruct((2, 2), jnp.float64),
    }
    out_s = (jax.ShapeDtypeStruct((2,), jnp.float64), jax.ShapeDtypeStruct((), jnp.float64))
    built = built_from_structures(op, in_s, out_s)
    check_against_dense(built, dense, rng, np.float64)
    mat = lx.materialise(op)
    assert isinstance(mat, lx.PyTreeLinearOperator)
    assert_structure(mat.in_structure(), in_s)
    assert_structure(mat.out_structure(), out_s)
    np.testing.assert_allclose(_np(mat.as_matrix()), dense, rtol=1e-12)


def test_operator_created_inside_jit_is_returned_without_leaking():
    make = eqx.filter_jit(
        lambda c: lx.FunctionLinearOperator(lambda v: c * v, STRUCT3, lx.symmetric_tag)
    )
    with jax.checking_leaks():
        op = make(jnp.asarray(2.0))
    np.testing.assert_allclose(_np(op.mv(jnp.ones(3))), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(_np(op.as_matrix()), 2.0 * np.eye(3))
    assert lx.is_symmetric(op)


def test_function_operator_under_vmap_of_closure():
    cs = jnp.asarray([1.0, 2.0, 3.0])
    out = jax.vmap(
        lambda c: lx.FunctionLinearOperator(lambda v: c * v, STRUCT3).T.mv(jnp.arange(3.0))
    )(cs)
    np.testing.assert_allclose(_np(out), np.outer([1.0, 2.0, 3.0], np.arange(3.0)))


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_matrix_operator_needs_2d(shape):
    with pytest.raises(ValueError, match="2-D matrix"):
        lx.MatrixLinearOperator(jnp.zeros(shape))


def test_add_mismatched_structures():
    a = lx.MatrixLinearOperator(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="Cannot add operators with different structures"):
        a + lx.MatrixLinearOperator(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="Cannot add operators with different structures"):
        a - lx.MatrixLinearOperator(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="Cannot add operators with different structures"):
        lx.IdentityLinearOperator({"a": STRUCT3}) + lx.IdentityLinearOperator(STRUCT3)


def test_compose_mismatched_structures():
    with pytest.raises(ValueError, match="Cannot compose"):
        lx.MatrixLinearOperator(jnp.zeros((2, 3))) @ lx.MatrixLinearOperator(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="Cannot compose"):
        lx.IdentityLinearOperator({"a": STRUCT3}) @ lx.IdentityLinearOperator(STRUCT3)


SQUARE_ONLY = [
    lx.symmetric_tag,
    lx.positive_semidefinite_tag,
    lx.negative_semidefinite_tag,
    lx.lower_triangular_tag,
    lx.upper_triangular_tag,
    lx.diagonal_tag,
    lx.tridiagonal_tag,
    lx.unit_diagonal_tag,
]


@pytest.mark.parametrize("tag", SQUARE_ONLY, ids=repr)
@pytest.mark.parametrize("name", ["matrix", "function", "jacobian_fwd", "pytree", "tagged"])
def test_square_only_tag_on_non_square_operator(name, tag, rng):
    a = make_matrix(rng, (2, 3), np.float64)
    with pytest.raises(ValueError, match="need the input and output structures to match"):
        dict(OPERATOR_BUILDERS)[name](a, tag)


def test_square_only_tag_on_equal_size_but_different_structure():
    blocks = {"x": jnp.eye(2)}  # output (2,) from input {"x": (2,)}: same size, different tree
    with pytest.raises(ValueError, match="need the input and output structures to match"):
        lx.PyTreeLinearOperator(blocks, jax.ShapeDtypeStruct((2,), jnp.float64), lx.symmetric_tag)


def test_unknown_tag():
    with pytest.raises(TypeError, match="is not a linopx tag"):
        lx.MatrixLinearOperator(jnp.eye(2), "symmetric")
    with pytest.raises(TypeError, match="must be a tag or an iterable of tags"):
        lx.MatrixLinearOperator(jnp.eye(2), 3)


def test_multiply_by_non_scalar():
    a = lx.MatrixLinearOperator(jnp.eye(2))
    with pytest.raises(ValueError, match="by a scalar, got an array of shape"):
        a * jnp.ones(2)
    with pytest.raises(ValueError, match="by a scalar, got an array of shape"):
        a * np.ones((1, 1))
    with pytest.raises(ValueError, match="by a scalar, got an array of shape"):
        a / jnp.ones(2)
    with pytest.raises(ValueError, match="by a scalar, got an array of shape"):
        jnp.ones(2) * a
    # NumPy on the left defers to the operator rather than building an object array.
    with pytest.raises(ValueError, match="by a scalar, got an array of shape"):
        np.ones(2) * a
    with pytest.raises(TypeError, match="pass a scalar"):
        a * "2"
    for flag in (True, np.bool_(True), jnp.asarray(False)):
        with pytest.raises(TypeError, match="by a boolean"):
            a * flag
    with pytest.raises(ValueError, match="divide an operator by zero"):
        a / 0


def test_operator_times_operator():
    a = lx.MatrixLinearOperator(jnp.eye(2))
    with pytest.raises(TypeError, match=r"use `A @ B` for composition"):
        a * a
    with pytest.raises(TypeError, match="linear_solve"):
        a / a


def test_matmul_with_vector():
    a = lx.MatrixLinearOperator(jnp.eye(2))
    with pytest.raises(TypeError, match=r"A.mv\(x\)"):
        a @ jnp.ones(2)
    with pytest.raises(TypeError, match=r"A.mv\(x\)"):
        a @ np.ones((2, 2))
    with pytest.raises(TypeError, match="wrap matrices in"):
        jnp.ones(2) @ a
    with pytest.raises(TypeError, match="wrap matrices in"):
        np.ones((2, 2)) @ a


def test_add_non_operator():
    a = lx.MatrixLinearOperator(jnp.eye(2))
    with pytest.raises(TypeError, match="unsupported operand"):
        a + 1.0
    with pytest.raises(TypeError, match="unsupported operand"):
        a - jnp.eye(2).tolist()


def test_composites_reject_non_operators():
    with pytest.raises(TypeError, match="needs a linopx operator"):
        lx.TaggedLinearOperator(jnp.eye(2), lx.symmetric_tag)
    with pytest.raises(TypeError, match="needs a linopx operator"):
        lx.AddLinearOperator(jnp.eye(2), lx.MatrixLinearOperator(jnp.eye(2)))
    with pytest.raises(TypeError, match="needs a linopx operator"):
        lx.ComposedLinearOperator(lx.MatrixLinearOperator(jnp.eye(2)), jnp.eye(2))
    with pytest.raises(TypeError, match="needs a linopx operator"):
        lx.NegLinearOperator(jnp.eye(2))


def test_other_constructor_errors():
    with pytest.raises(ValueError, match="lower and upper diagonals of length 2"):
        lx.TridiagonalLinearOperator(jnp.ones(3), jnp.ones(3), jnp.ones(2))
    with pytest.raises(ValueError, match="three 1-D arrays"):
        lx.TridiagonalLinearOperator(jnp.ones((3, 1)), jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match="non-empty diagonal"):
        lx.DiagonalLinearOperator({})
    with pytest.raises(ValueError, match="not floating or complex"):
        lx.FunctionLinearOperator(lambda v: v, jax.ShapeDtypeStruct((2,), jnp.int32))
    with pytest.raises(ValueError, match="`jac` must be"):
        lx.JacobianLinearOperator(lambda x, a: x, jnp.ones(2), jac="rev")
    with pytest.raises(ValueError, match="does not start with"):
        lx.PyTreeLinearOperator(
            {"a": jnp.ones((3, 2))}, {"a": jax.ShapeDtypeStruct((2,), jnp.float64)}
        )
    with pytest.raises(ValueError, match="tree structure of `output_structure`"):
        lx.PyTreeLinearOperator((jnp.ones((2, 2)),), {"a": jax.ShapeDtypeStruct((2,), jnp.float64)})


@pytest.mark.parametrize(
    "fn",
    [
        lx.is_symmetric,
        lx.is_diagonal,
        lx.is_tridiagonal,
        lx.is_lower_triangular,
        lx.is_upper_triangular,
        lx.is_positive_semidefinite,
        lx.is_negative_semidefinite,
        lx.has_unit_diagonal,
        lx.materialise,
        lx.linearise,
        lx.diagonal,
        lx.tridiagonal,
        lx.conj,
    ],
    ids=lambda f: f.__name__,
)
def test_operator_functions_reject_non_operators(fn):
    with pytest.raises(TypeError, match="takes a linopx operator"):
        fn(jnp.eye(2))
    with pytest.raises(TypeError, match="takes a linopx operator"):
        fn(np.eye(2))


def test_operator_functions_on_unregistered_user_operator():
    class MyOperator(lx.AbstractLinearOperator):
        def mv(self, vector):
            return vector

        def as_matrix(self):
            return jnp.eye(2)

        def transpose(self):
            return self

        def in_structure(self):
            return jax.ShapeDtypeStruct((2,), jnp.float64)

        def out_structure(self):
            return jax.ShapeDtypeStruct((2,), jnp.float64)

    with pytest.raises(
        NotImplementedError, match=r"Register a rule with `@lx.is_symmetric.register\(MyOperator\)`"
    ):
        lx.is_symmetric(MyOperator())
    with pytest.raises(NotImplementedError, match="Register a rule"):
        lx.materialise(MyOperator())


# ---------------------------------------------------------------------------------------------
# Integer and boolean input


def test_integer_matrix_cast_to_float64_under_x64():
    assert lx.MatrixLinearOperator(np.arange(4).reshape(2, 2)).matrix.dtype == jnp.float64
    assert (
        lx.MatrixLinearOperator(jnp.arange(4, dtype=jnp.int32).reshape(2, 2)).matrix.dtype
        == jnp.float64
    )
    assert lx.MatrixLinearOperator(np.eye(2, dtype=bool)).matrix.dtype == jnp.float64
    assert lx.MatrixLinearOperator([[1, 2], [3, 4]]).matrix.dtype == jnp.float64
    assert lx.DiagonalLinearOperator(np.arange(3)).diagonal.dtype == jnp.float64
    tri = lx.TridiagonalLinearOperator(np.arange(3), np.arange(2), np.arange(2))
    assert tri.diagonal.dtype == jnp.float64
    assert (
        lx.JacobianLinearOperator(lambda x, a: x, np.arange(3)).in_structure().dtype == jnp.float64
    )
    op = lx.PyTreeLinearOperator(
        {"a": {"a": np.eye(2, dtype=int)}}, {"a": jax.ShapeDtypeStruct((2,), jnp.int64)}
    )
    assert op.out_structure()["a"].dtype == jnp.float64
    np.testing.assert_array_equal(_np(op.mv({"a": jnp.array([1.0, 2.0])})["a"]), [1.0, 2.0])


def test_integer_matrix_cast_to_float32_without_x64():
    code = textwrap.dedent(
        """
        import jax, numpy as np
        assert not jax.config.jax_enable_x64
        import linopx as lx
        print(lx.MatrixLinearOperator(np.arange(4).reshape(2, 2)).matrix.dtype,
              lx.DiagonalLinearOperator(np.arange(3)).diagonal.dtype)
        """
    )
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["float32", "float32"]


def test_builders_honour_tags(rng):
    """A sanity check of the helpers: the tags given to a builder reach the operator."""
    a = make_matrix(rng, (3, 3), np.float64, "spd")
    for name, builder in OPERATOR_BUILDERS:
        op = builder(a, (lx.positive_semidefinite_tag, lx.symmetric_tag)).operator
        assert lx.is_positive_semidefinite(op), name
        assert lx.is_symmetric(op), name
        assert not lx.is_positive_semidefinite(builder(a, ()).operator), name
    assert isinstance(build_matrix(a).operator, lx.MatrixLinearOperator)
