"""The `reformulate` hook of `AbstractLinearSolver`: the solver, not `linear_solve`, decides to solve
an equivalent problem (damped `LSQR`/`LSMR` solve the undamped one for `[A; d I]` and `(b, 0)`).

References are dense float64: the normal equations `(AᴴA + d²I) x = Aᴴ b` and SciPy's
`lsqr`/`lsmr` with `damp`. The solvers run with rtol = 1e-12 on matrices with singular values in
[1, 3], so we check 1e-8.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla
from helpers import make_matrix, random_vector

import linopx as lx

CHECK = {"rtol": 1e-8, "atol": 1e-8}
LS = {"LSQR": lx.LSQR, "LSMR": lx.LSMR}
SCIPY = {"LSQR": spla.lsqr, "LSMR": spla.lsmr}


def _ls(name, damp=0.0, rtol=1e-12):
    return LS[name](rtol=rtol, atol=0.0, damp=damp)


def _ridge(a, b, d):
    """`(AᴴA + d²I)⁻¹ Aᴴ b` in float64 (complex128 for a complex `a`)."""
    ah = np.conj(a).T
    return np.linalg.solve(ah @ a + d**2 * np.eye(a.shape[1]), ah @ b)


# -------------------------------------------------------------------------------------------------
# (1) The entry point knows no solver by name.


def test_solve_module_names_no_solver():
    path = pathlib.Path(inspect.getsourcefile(lx.linear_solve))
    assert path.name == "_solve.py"
    source = path.read_text()
    for word in ("lsqr", "lsmr", "damp", "_damped", "stacked"):
        assert word not in source.lower(), f"`_solve.py` mentions {word!r}"
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if any(w in m.lower() for w in ("lsqr", "lsmr", "damp"))}
    assert "reformulate" in source


def test_default_hook_changes_nothing(rng):
    a = lx.MatrixLinearOperator(make_matrix(rng, (4, 4), np.float64))
    b = jnp.asarray(random_vector(rng, 4, np.float64))
    for solver in (lx.LU(), lx.CG(rtol=1e-6, atol=1e-6), _ls("LSQR"), _ls("LSMR")):
        operator, vector, new_solver, rebuild = solver.reformulate(a, b, {})
        assert operator is a and vector is b and new_solver is solver and rebuild is False
    # A damp that is a concrete zero array is undamped too.
    out = lx.LSQR(rtol=1e-6, atol=1e-6, damp=np.float64(0.0)).reformulate(a, b, {})
    assert out[0] is a and out[3] is False


# -------------------------------------------------------------------------------------------------
# (2) A custom solver's hook is called.


_CALLS: list = []


class _Wrapped(lx.AbstractLinearSolver):
    """Delegates the six methods to `inner`."""

    inner: lx.AbstractLinearSolver

    def init(self, operator, options):
        return self.inner.init(operator, options)

    def compute(self, state, vector, options):
        return self.inner.compute(state, vector, options)

    def transpose(self, state, options):
        return self.inner.transpose(state, options)

    def conj(self, state, options):
        return self.inner.conj(state, options)

    def allow_dependent_rows(self, operator):
        return self.inner.allow_dependent_rows(operator)

    def allow_dependent_columns(self, operator):
        return self.inner.allow_dependent_columns(operator)


class Scaled(_Wrapped):
    """Solves `(c A) x = c b` with `inner`: the same solution, through a rewritten problem."""

    scale: float
    rebuild: bool = eqx.field(static=True, default=True)

    def reformulate(self, operator, vector, options):
        _CALLS.append((type(operator).__name__, self.scale, dict(options)))
        c = self.scale
        return (
            operator * c,
            jax.tree_util.tree_map(lambda v: c * v, vector),
            self.inner,
            self.rebuild,
        )


class Shifted(_Wrapped):
    """Solves `(A + s I) x = b` (not `A⁺ b`): exact derivatives, also in `s`, come from the hook."""

    shift: jax.Array

    def reformulate(self, operator, vector, options):
        identity = lx.IdentityLinearOperator(operator.in_structure())
        return operator + identity * self.shift, vector, self.inner, True


def _square(rng, n=5):
    a = make_matrix(rng, (n, n), np.float64)
    return a, random_vector(rng, n, np.float64)


def test_custom_hook_is_called_and_state_rebuilt(rng):
    a, b = _square(rng)
    other = make_matrix(rng, (5, 5), np.float64)
    op = lx.MatrixLinearOperator(a)
    _CALLS.clear()
    sol = lx.linear_solve(op, b, Scaled(lx.LU(), 3.0))
    assert _CALLS == [("MatrixLinearOperator", 3.0, {})]
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    # The state is the inner solver's, made for the scaled operator.
    expected = lx.LU().init(op * 3.0, {})
    for x, y in zip(jax.tree_util.tree_leaves(sol.state), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(x, y, rtol=1e-14, atol=1e-14)
    # rebuild_state=True: a state the caller passes (here one for another matrix) is discarded.
    wrong = lx.LU().init(lx.MatrixLinearOperator(other), {})
    sol = lx.linear_solve(op, b, Scaled(lx.LU(), 5.0), state=wrong)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    assert len(_CALLS) == 2


def test_custom_hook_keeps_state(rng):
    a, b = _square(rng)
    other = make_matrix(rng, (5, 5), np.float64)
    op = lx.MatrixLinearOperator(a)
    solver = Scaled(lx.LU(), 2.0, rebuild=False)
    # rebuild_state=False: the passed state is used with the returned solver, as is.
    good = lx.LU().init(op * 2.0, {})
    sol = lx.linear_solve(op, b, solver, state=good)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), **CHECK)
    used = lx.LU().init(lx.MatrixLinearOperator(other) * 2.0, {})
    sol = lx.linear_solve(op, b, solver, state=used)
    np.testing.assert_allclose(sol.value, np.linalg.solve(other, b), **CHECK)
    # ... and checked against the returned solver's `init`.
    with pytest.raises(ValueError, match="state"):
        lx.linear_solve(op, b, solver, state=lx.QR().init(op, {}))


def test_custom_hook_under_jit_vmap_and_options(rng):
    a, b = _square(rng)
    spd = a @ a.T + np.eye(5)
    op = lx.MatrixLinearOperator(spd, lx.positive_semidefinite_tag)
    solver = Scaled(lx.CG(rtol=1e-12, atol=0.0), 0.5)
    options = {"y0": jnp.ones(5)}
    _CALLS.clear()

    @jax.jit
    @jax.vmap
    def solve(b):
        return lx.linear_solve(op, b, solver, options=options).value

    bs = np.stack([b, 2 * b])
    out = solve(bs)
    np.testing.assert_allclose(out, np.linalg.solve(spd, bs.T).T, **CHECK)
    assert len(_CALLS) == 1 and set(_CALLS[0][2]) == {"y0"}


def test_custom_hook_gives_exact_derivatives(rng):
    a, b = _square(rng)
    n = a.shape[0]

    def loss(a, b, s):
        x = lx.linear_solve(lx.MatrixLinearOperator(a), b, Shifted(lx.LU(), s)).value
        return jnp.sum(jnp.sin(x))

    def ref(a, b, s):
        return jnp.sum(jnp.sin(jnp.linalg.solve(a + s * jnp.eye(n), b)))

    s = jnp.asarray(0.3)
    np.testing.assert_allclose(loss(a, b, s), ref(a, b, s), **CHECK)
    for x, y in zip(jax.grad(loss, (0, 1, 2))(a, b, s), jax.grad(ref, (0, 1, 2))(a, b, s)):
        np.testing.assert_allclose(x, y, **CHECK)
    tangents = (jnp.asarray(rng.standard_normal(a.shape)), jnp.asarray(b), jnp.asarray(1.0))
    _, t = jax.jvp(loss, (a, b, s), tangents)
    _, tr = jax.jvp(ref, (a, b, s), tangents)
    np.testing.assert_allclose(t, tr, **CHECK)


def test_bad_hook_return_is_a_type_error(rng):
    class Bad(_Wrapped):
        def reformulate(self, operator, vector, options):
            return operator, vector

    class BadFlag(_Wrapped):
        def reformulate(self, operator, vector, options):
            return operator, vector, self.inner, "yes"

    a, b = _square(rng)
    op = lx.MatrixLinearOperator(a)
    with pytest.raises(TypeError, match="reformulate must return a tuple"):
        lx.linear_solve(op, b, Bad(lx.LU()))
    with pytest.raises(TypeError, match="rebuild_state"):
        lx.linear_solve(op, b, BadFlag(lx.LU()))


# -------------------------------------------------------------------------------------------------
# (3) Damped LSQR/LSMR through the hook: values and derivatives against dense references.


@pytest.mark.parametrize("name", list(LS))
@pytest.mark.parametrize("shape", [(12, 7), (6, 9), (8, 8)], ids=["tall", "wide", "square"])
def test_damped_matches_dense(rng, name, shape):
    a = make_matrix(rng, shape, np.float64)
    b = random_vector(rng, shape[0], np.float64)
    d = 0.6
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, _ls(name, d))
    np.testing.assert_allclose(sol.value, _ridge(a, b, d), **CHECK)
    scipy_x = SCIPY[name](a, b, damp=d, atol=1e-14, btol=1e-14)[0]
    np.testing.assert_allclose(sol.value, scipy_x, **CHECK)
    # `residual_norm` is that of the damped problem, sqrt(|b - A x|² + d² |x|²).
    x = _ridge(a, b, d)
    expected = np.sqrt(np.sum((b - a @ x) ** 2) + d**2 * np.sum(x**2))
    np.testing.assert_allclose(sol.stats["residual_norm"], expected, rtol=1e-7)


@pytest.mark.parametrize("name", list(LS))
def test_damped_complex(rng, name):
    a = make_matrix(rng, (10, 6), np.complex128)
    b = random_vector(rng, 10, np.complex128)
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, _ls(name, 0.5))
    np.testing.assert_allclose(sol.value, _ridge(a, b, 0.5), **CHECK)


@pytest.mark.parametrize("name", list(LS))
def test_damped_gradients(rng, name):
    a = make_matrix(rng, (9, 6), np.float64)
    b = random_vector(rng, 9, np.float64)

    def loss(a, b, d):
        x = lx.linear_solve(lx.MatrixLinearOperator(a), b, _ls(name, d)).value
        return jnp.sum(jnp.sin(x))

    def ref(a, b, d):
        return jnp.sum(jnp.sin(jnp.linalg.solve(a.T @ a + d**2 * jnp.eye(6), a.T @ b)))

    d = jnp.asarray(0.7)
    g = jax.grad(loss, (0, 1, 2))(a, b, d)
    gr = jax.grad(ref, (0, 1, 2))(a, b, d)
    for x, y in zip(g, gr):
        np.testing.assert_allclose(x, y, **CHECK)
    tangents = (jnp.asarray(rng.standard_normal(a.shape)), jnp.asarray(b), jnp.asarray(-0.5))
    _, t = jax.jvp(loss, (a, b, d), tangents)
    _, tr = jax.jvp(ref, (a, b, d), tangents)
    np.testing.assert_allclose(t, tr, **CHECK)


@pytest.mark.parametrize("name", list(LS))
def test_damped_vmap_over_damp(rng, name):
    a = make_matrix(rng, (8, 5), np.float64)
    b = random_vector(rng, 8, np.float64)
    ds = jnp.asarray([0.0, 0.3, 1.5])
    op = lx.MatrixLinearOperator(a)
    xs = jax.jit(jax.vmap(lambda d: lx.linear_solve(op, b, _ls(name, d)).value))(ds)
    for d, x in zip(np.asarray(ds), xs):
        np.testing.assert_allclose(x, _ridge(a, b, d), **CHECK)


@pytest.mark.parametrize("name", list(LS))
def test_damped_state_is_rebuilt(rng, name):
    a = make_matrix(rng, (10, 6), np.float64)
    b = random_vector(rng, 10, np.float64)
    op = lx.MatrixLinearOperator(a)
    solver = _ls(name, 0.4)
    sol = lx.linear_solve(op, b, solver, state=solver.init(op, {}))
    np.testing.assert_allclose(sol.value, _ridge(a, b, 0.4), **CHECK)
    # The state returned is for the stacked operator [A; d I]: two output blocks.
    stacked = sol.state.operator
    assert isinstance(stacked.out_structure(), tuple) and len(stacked.out_structure()) == 2
    assert stacked.in_structure() == op.in_structure()
    # The undamped solve keeps a passed state.
    plain = _ls(name)
    state = plain.init(op, {})
    kept = lx.linear_solve(op, b, plain, state=state).state.operator
    assert type(kept) is lx.MatrixLinearOperator
    np.testing.assert_array_equal(kept.matrix, a)


@pytest.mark.parametrize("name", list(LS))
def test_damped_compute_called_directly(rng, name):
    a = make_matrix(rng, (10, 6), np.float64)
    b = jnp.asarray(random_vector(rng, 10, np.float64))
    op = lx.MatrixLinearOperator(a)
    solver = _ls(name, 0.9)
    x, _, _ = solver.compute(solver.init(op, {}), b, {})
    np.testing.assert_allclose(x, _ridge(a, b, 0.9), **CHECK)


@pytest.mark.parametrize("name", list(LS))
def test_damped_invert(rng, name):
    a = make_matrix(rng, (9, 5), np.float64)
    b = random_vector(rng, 9, np.float64)
    y = random_vector(rng, 5, np.float64)
    d = 0.8
    inv = lx.invert(lx.MatrixLinearOperator(a), _ls(name, d))
    np.testing.assert_allclose(inv.mv(b), _ridge(a, b, d), **CHECK)
    # The transpose of b ↦ (AᵀA + d²I)⁻¹Aᵀb is y ↦ A (AᵀA + d²I)⁻¹ y = (AAᵀ + d²I)⁻¹ A y.
    expected = a @ np.linalg.solve(a.T @ a + d**2 * np.eye(5), y)
    np.testing.assert_allclose(inv.transpose().mv(y), expected, **CHECK)


def test_damped_has_no_logdet(rng):
    a = lx.MatrixLinearOperator(make_matrix(rng, (4, 4), np.float64))
    with pytest.raises(TypeError, match="no log-determinant"):
        lx.slogdet(a, _ls("LSQR", 0.5))
