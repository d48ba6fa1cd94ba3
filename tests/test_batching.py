"""`jax.vmap` of `linear_solve`: over the operator, the vector or both, with `in_axes`/`out_axes`
other than 0, nested, composed with `grad`/`jvp` either way round, and under `jax.jit`; batched
results; and that a batch of right-hand sides shares one factorization.

References are computed member by member with NumPy (`solve`/`pinv`) or with `jnp.linalg` under
the same transformation. Tolerances: as in test_solve.py (condition numbers <= 3, float64/complex128:
errors ~1e-14; we allow 1e-10 = `helpers.tolerances`)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OPERATOR_BUILDERS,
    compiled_custom_calls,
    make_matrix,
    random_vector,
    tags_for_kind,
    tolerances,
)

import linopx as lx

# The run-time error carries the `RESULTS` message. Match all of it: the error text also contains
# a stack trace, whose function names (e.g. "test_singular") must not satisfy the match.
SINGULAR_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.singular])
NONFINITE_MESSAGE = re.escape(lx.RESULTS[lx.RESULTS.nonfinite_input])

TOL = tolerances(np.float64)
B = 3  # batch size


def _stack(rng, shape, dtype, kind, size=B):
    return np.stack([make_matrix(rng, shape, dtype, kind) for _ in range(size)])


def _pinv_solve_np(a, b):
    return np.linalg.pinv(a) @ b


# (id, solver, kind, shape)
CASES = [
    ("lu", lx.LU(), "general", (4, 4)),
    ("cholesky", lx.Cholesky(), "spd", (4, 4)),
    ("triangular", lx.Triangular(), "lower", (4, 4)),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", (4, 4)),
    ("diagonal", lx.Diagonal(), "diagonal", (4, 4)),
    ("qr-tall", lx.QR(), "general", (5, 3)),
    ("qr-wide", lx.QR(), "general", (3, 5)),
    ("pivoted-qr-rank2", lx.PivotedQR(), "rank_deficient(2)", (5, 4)),
    ("svd-rank2", lx.SVD(), "rank_deficient(2)", (4, 5)),
    ("normal-cholesky", lx.Normal(lx.Cholesky()), "general", (5, 3)),
    ("auto", lx.AutoLinearSolver(well_posed=None), "general", (4, 4)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=["float64", "complex128"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vmap_operator_vector_both(case, dtype, rng):
    _, solver, kind, (m, n) = case
    tags = tags_for_kind(kind, dtype)
    tol = tolerances(dtype)
    a_stack = _stack(rng, (m, n), dtype, kind)  # (B, m, n)
    b_stack = np.stack([random_vector(rng, m, dtype) for _ in range(B)])  # (B, m)
    a0, b0 = a_stack[0], b_stack[0]

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value

    # Batch axes other than 0 on the way in, and out_axes=1 on the way out.
    a_last = np.moveaxis(a_stack, 0, 2)  # (m, n, B)
    b_last = np.moveaxis(b_stack, 0, 1)  # (m, B)

    @jax.jit
    def batched(a_last, b_last, a0, b0):
        over_op = jax.vmap(solve, in_axes=(2, None), out_axes=1)(a_last, b0)
        over_vec = jax.vmap(solve, in_axes=(None, 1))(a0, b_last)
        over_both = jax.vmap(solve, in_axes=(2, 1), out_axes=1)(a_last, b_last)
        return over_op, over_vec, over_both

    over_op, over_vec, over_both = batched(a_last, b_last, a0, b0)
    for i in range(B):
        np.testing.assert_allclose(over_op[:, i], _pinv_solve_np(a_stack[i], b0), **tol)
        np.testing.assert_allclose(over_vec[i], _pinv_solve_np(a0, b_stack[i]), **tol)
        np.testing.assert_allclose(over_both[:, i], _pinv_solve_np(a_stack[i], b_stack[i]), **tol)
    # Eagerly (no jit) too, for one of them.
    eager = jax.vmap(solve, in_axes=(2, 1), out_axes=1)(a_last, b_last)
    np.testing.assert_allclose(eager, over_both, **tol)


@pytest.mark.parametrize(
    "builder_name, builder", OPERATOR_BUILDERS, ids=[n for n, _ in OPERATOR_BUILDERS]
)
def test_vmap_every_operator_kind(builder_name, builder, rng):
    # Operators built inside vmap (closing over a batched matrix, or storing it as a leaf), with
    # pytree vectors for the pytree operator.
    a_stack = _stack(rng, (4, 3), np.float64, "general")
    b_stack = np.stack([random_vector(rng, 4, np.float64) for _ in range(B)])

    def solve(a, b):
        built = builder(a, ())
        out = lx.linear_solve(built.operator, built.from_flat_out(b), lx.QR()).value
        return built.to_flat_in(out)

    out = jax.jit(jax.vmap(solve))(a_stack, b_stack)
    for i in range(B):
        np.testing.assert_allclose(out[i], _pinv_solve_np(a_stack[i], b_stack[i]), **TOL)


def test_vmap_structured_operators(rng):
    # Batched diagonals of a tridiagonal operator and a pytree-diagonal operator.
    d = rng.uniform(2, 3, (B, 5))
    lo = rng.uniform(-0.5, 0.5, (B, 4))
    up = rng.uniform(-0.5, 0.5, (B, 4))
    b = rng.standard_normal((B, 5))

    def tri(d, lo, up, b):
        return lx.linear_solve(lx.TridiagonalLinearOperator(d, lo, up), b).value

    def diag(d, b):
        op = lx.DiagonalLinearOperator({"x": d[:2], "y": d[2:]})
        out = lx.linear_solve(op, {"x": b[:2], "y": b[2:]}).value
        return jnp.concatenate([out["x"], out["y"]])

    out_tri = jax.jit(jax.vmap(tri, in_axes=(0, 0, 0, None)))(d, lo, up, b[0])
    out_diag = jax.jit(jax.vmap(diag))(d, b)
    for i in range(B):
        dense = np.diag(d[i]) + np.diag(lo[i], -1) + np.diag(up[i], 1)
        np.testing.assert_allclose(out_tri[i], np.linalg.solve(dense, b[0]), **TOL)
        np.testing.assert_allclose(out_diag[i], b[i] / d[i], **TOL)


def test_vmap_pytree_vector_axes(rng):
    # A pytree vector whose leaves are batched along different axes.
    a = make_matrix(rng, (3, 3), np.float64)
    in_s = {"p": jax.ShapeDtypeStruct((1,), jnp.float64), "q": jax.ShapeDtypeStruct((2,), jnp.float64)}
    op = lx.FunctionLinearOperator(
        lambda v: {"p": (a @ jnp.concatenate([v["p"], v["q"]]))[:1], "q": (a @ jnp.concatenate([v["p"], v["q"]]))[1:]},
        in_s,
    )
    bp = rng.standard_normal((1, B))  # batch axis 1
    bq = rng.standard_normal((B, 2))  # batch axis 0
    out = jax.jit(
        jax.vmap(lambda v: lx.linear_solve(op, v, lx.LU()).value, in_axes=({"p": 1, "q": 0},))
    )({"p": bp, "q": bq})
    for i in range(B):
        x = np.linalg.solve(a, np.concatenate([bp[:, i], bq[i]]))
        np.testing.assert_allclose(out["p"][i], x[:1], **TOL)
        np.testing.assert_allclose(out["q"][i], x[1:], **TOL)


def test_nested_vmap(rng):
    # A 2 x 3 grid: operators along one axis, vectors along the other, and both batched.
    a = _stack(rng, (4, 3), np.float64, "general", size=2)
    b = rng.standard_normal((3, 4))
    bb = rng.standard_normal((2, 3, 4))

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.QR()).value

    grid = jax.vmap(jax.vmap(solve, in_axes=(None, 0)), in_axes=(0, None))
    grid_t = jax.vmap(jax.vmap(solve, in_axes=(0, None)), in_axes=(None, 0), out_axes=1)
    full = jax.vmap(jax.vmap(solve, in_axes=(None, 0)), in_axes=(0, 0))
    out1 = jax.jit(grid)(a, b)
    out2 = jax.jit(grid_t)(a, b)
    out3 = full(a, bb)  # eager
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out1[i, j], _pinv_solve_np(a[i], b[j]), **TOL)
            np.testing.assert_allclose(out3[i, j], _pinv_solve_np(a[i], bb[i, j]), **TOL)
    np.testing.assert_allclose(out2, out1, **TOL)


@pytest.mark.parametrize(
    "solver, shape, reference",
    [
        (lx.LU(), (3, 3), jnp.linalg.solve),
        (lx.QR(), (4, 3), lambda a, b: jnp.linalg.pinv(a) @ b),
        (lx.SVD(), (3, 4), lambda a, b: jnp.linalg.pinv(a) @ b),
    ],
    ids=["lu", "qr-tall", "svd-wide"],
)
def test_vmap_and_grad_compose(solver, shape, reference, rng):
    m, n = shape
    a = _stack(rng, shape, np.float64, "general")
    b = rng.standard_normal((B, m))
    b_single = rng.standard_normal(m)
    w = rng.standard_normal(n)

    def loss(solve):
        return lambda a, b: jnp.sum(jnp.sin(w * solve(a, b))) + jnp.sum(solve(a, b) ** 2)

    ours = loss(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value)
    ref = loss(reference)

    # vmap of grad, over both arguments.
    g1 = jax.jit(jax.vmap(jax.grad(ours, argnums=(0, 1))))(a, b)
    r1 = jax.vmap(jax.grad(ref, argnums=(0, 1)))(a, b)
    # grad of vmap, w.r.t. an unbatched vector under vmap over the operator, and w.r.t. the
    # batched operator.
    def summed(f):
        return lambda a, b: jnp.sum(jax.vmap(f, in_axes=(0, None))(a, b))

    g2 = jax.jit(jax.grad(summed(ours), argnums=(0, 1)))(a, b_single)
    r2 = jax.grad(summed(ref), argnums=(0, 1))(a, b_single)
    # vmap (over vectors only) of grad w.r.t. the unbatched operator.
    g3 = jax.jit(jax.vmap(jax.grad(ours), in_axes=(None, 0)))(a[0], b)
    r3 = jax.vmap(jax.grad(ref), in_axes=(None, 0))(a[0], b)
    # jvp of vmap and vmap of jvp.
    da = rng.standard_normal(a.shape)
    t4 = jax.jit(lambda a, b, da: jax.jvp(lambda a: jax.vmap(ours)(a, b), (a,), (da,))[1])(a, b, da)
    r4 = jax.jvp(lambda a: jax.vmap(ref)(a, b), (a,), (da,))[1]
    t5 = jax.jit(jax.vmap(lambda a, b, da: jax.jvp(lambda a: ours(a, b), (a,), (da,))[1]))(a, b, da)
    for x, y in [(g1, r1), (g2, r2), (g3, r3), (t4, r4), (t5, r4)]:
        for p, q in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)):
            np.testing.assert_allclose(p, q, **TOL)


def test_vmap_of_hessian(rng):
    a = _stack(rng, (3, 3), np.float64, "general", size=2)
    b = rng.standard_normal((2, 3))

    def loss(solve):
        return lambda b, a: jnp.sum(solve(a, b) ** 3)

    ours = loss(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value)
    h = jax.jit(jax.vmap(jax.hessian(ours)))(b, a)
    h_ref = jax.vmap(jax.hessian(loss(jnp.linalg.solve)))(b, a)
    np.testing.assert_allclose(h, h_ref, rtol=1e-9, atol=1e-9)


def _getrf_shapes(fn, *args) -> list[str]:
    """The result shapes of the LU factorizations (LAPACK getrf) in the compiled `jax.jit(fn)`: the
    solve primitive is lowered there too, so a factorization inside `compute` shows up."""
    return [shape for target, shape in compiled_custom_calls(fn, *args) if "getrf" in target]


def test_vector_batch_factorizes_once(rng):
    a = make_matrix(rng, (4, 4), np.float64)
    b = rng.standard_normal((5, 4))

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    for fn in (
        jax.vmap(solve, in_axes=(None, 0)),
        jax.vmap(jax.grad(lambda a, b: jnp.sum(solve(a, b) ** 2)), in_axes=(None, 0)),
    ):
        shapes = _getrf_shapes(fn, a, b)
        # One factorization, of the single, unbatched (4, 4) matrix, not a broadcast batch of
        # copies (whose result would be f64[5,4,4]).
        assert len(shapes) == 1, shapes
        assert shapes[0].startswith("(f64[4,4]"), shapes
    out = jax.jit(jax.vmap(solve, in_axes=(None, 0)))(a, b)
    np.testing.assert_allclose(out, np.linalg.solve(a, b.T).T, **TOL)
    # A batch of operators: one batched factorization.
    a_stack = _stack(rng, (4, 4), np.float64, "general")
    shapes = _getrf_shapes(jax.vmap(solve, in_axes=(0, None)), a_stack, b[0])
    assert len(shapes) == 1 and shapes[0].startswith(f"(f64[{B},4,4]"), shapes


def test_vmap_results_per_member(rng):
    # One singular member among nonsingular ones: with throw=False each member has its result.
    a = _stack(rng, (3, 3), np.float64, "general")
    a[1] = np.array([[1.0, 0.0, 2.0], [2.0, 0.0, 1.0], [3.0, 0.0, 1.0]])
    b = rng.standard_normal(3)

    def solve(a):
        sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU(), throw=False)
        return sol.value, sol.result == lx.RESULTS.successful, sol.result == lx.RESULTS.singular

    x, ok, singular = jax.jit(jax.vmap(solve))(a)
    np.testing.assert_array_equal(ok, [True, False, True])
    np.testing.assert_array_equal(singular, [False, True, False])
    np.testing.assert_allclose(x[0], np.linalg.solve(a[0], b), **TOL)
    np.testing.assert_allclose(x[2], np.linalg.solve(a[2], b), **TOL)
    # With throw=True, the batch raises.
    with pytest.raises(Exception, match=SINGULAR_MESSAGE):
        jax.block_until_ready(
            jax.vmap(lambda a: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value)(a)
        )


def test_vmap_solution_and_state(rng):
    # The whole `Solution` comes out batched, and a batched state can be reused under vmap.
    a = _stack(rng, (4, 4), np.float64, "general")
    b = rng.standard_normal((B, 4))
    solver = lx.LU()

    @jax.jit
    @jax.vmap
    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver)

    sol = solve(a, b)
    assert sol.value.shape == (B, 4)
    assert sol.state.lu.shape == (B, 4, 4)
    np.testing.assert_array_equal(sol.result == lx.RESULTS.successful, [True] * B)

    @jax.jit
    def resolve(a, state, b):
        return jax.vmap(
            lambda a, s, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, solver, state=s).value,
            in_axes=(0, 0, None),
        )(a, state, b)

    out = resolve(a, sol.state, b[0])
    for i in range(B):
        np.testing.assert_allclose(out[i], np.linalg.solve(a[i], b[0]), **TOL)


def test_vmap_invert(rng):
    a = _stack(rng, (4, 3), np.float64, "general")
    b = rng.standard_normal(4)
    c = rng.standard_normal(3)

    def apply(a):
        inv = lx.invert(lx.MatrixLinearOperator(a), lx.QR())
        return inv.mv(b), inv.T.mv(c)

    x, y = jax.jit(jax.vmap(apply))(a)
    for i in range(B):
        p = np.linalg.pinv(a[i])
        np.testing.assert_allclose(x[i], p @ b, **TOL)
        np.testing.assert_allclose(y[i], p.T @ c, **TOL)


def test_vmap_over_jacobian_linearisation_point(rng):
    # The operator varies over the batch through its linearisation point, not an explicit matrix.
    x0 = rng.standard_normal((B, 3)) * 0.3
    b = rng.standard_normal(3)
    m = make_matrix(rng, (3, 3), np.float64)

    def fn(x, _):
        return m @ x + 0.5 * jnp.sin(x)

    def solve(x0):
        return lx.linear_solve(lx.JacobianLinearOperator(fn, x0), b, lx.LU()).value

    out = jax.jit(jax.vmap(solve))(x0)
    g = jax.jit(jax.vmap(jax.grad(lambda x0: jnp.sum(solve(x0) ** 2))))(x0)
    g_ref = jax.vmap(jax.grad(lambda x0: jnp.sum(jnp.linalg.solve(jax.jacfwd(fn)(x0, None), b) ** 2)))(x0)
    for i in range(B):
        np.testing.assert_allclose(out[i], np.linalg.solve(m + 0.5 * np.diag(np.cos(x0[i])), b), **TOL)
    np.testing.assert_allclose(g, g_ref, **TOL)


def test_throw_check_under_vmap_does_not_tile_the_operator():
    # The run-time check of a vmapped solve over right-hand sides must not copy the (unbatched)
    # matrix once per batch member: no array of shape (batch, n, n) in the compiled program.
    n, k = 30, 7
    a = jnp.asarray(np.eye(n) * 3.0 + 0.1)
    bs = jnp.ones((k, n))

    def f(a, bs):
        return jax.vmap(lambda b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value)(bs)

    text = jax.jit(f).lower(a, bs).compile().as_text()
    assert f"f64[{k},{n},{n}]" not in text
    np.testing.assert_allclose(f(a, bs), np.linalg.solve(np.asarray(a), np.asarray(bs).T).T, rtol=1e-12)


def test_throw_check_under_nested_vmap_names_the_first_failure():
    # Two vmap levels (matrices outside, right-hand sides inside) and two failed members with
    # different causes: the error names the cause of the first failed member in row-major order
    # over (matrix, vector), so swapping which failure comes first swaps the message. A batch
    # without failures does not raise.
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]])
    b = jnp.ones((3, 2)).at[2, 0].set(jnp.nan)  # vector 2 has a NaN

    def f(a, b):
        def per_matrix(m):
            solve = lambda v: lx.linear_solve(lx.MatrixLinearOperator(m), v, lx.LU()).value  # noqa: E731
            return jax.vmap(solve)(b)

        return jax.vmap(per_matrix)(a)

    f = jax.jit(f)
    # Failed: (0, 2) with NaN input, then (1, 0), (1, 1), (1, 2) singular: the NaN comes first.
    with pytest.raises(Exception, match=NONFINITE_MESSAGE) as info:
        jax.block_until_ready(f(jnp.stack([jnp.eye(2), singular]), b))
    assert "singular" not in str(info.value)
    # Failed: (0, 0), (0, 1), (0, 2) singular (for (0, 2) too: the solver blames the matrix), then
    # (1, 2) with NaN input: "singular" comes first.
    with pytest.raises(Exception, match=SINGULAR_MESSAGE) as info:
        jax.block_until_ready(f(jnp.stack([singular, jnp.eye(2)]), b))
    assert "NaN" not in str(info.value)
    good = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    np.testing.assert_allclose(f(good, b.at[2, 0].set(1.0))[1], 0.5 * np.ones((3, 2)))
