"""`lx.amg_preconditioner` (pyamg) and `lx.ilu_preconditioner` (SciPy spilu): solutions against
SciPy's sparse direct solve, fewer iterations than unpreconditioned, exact transposes, gradients
equal to the unpreconditioned ones (and to finite differences), one setup per forward and backward
solve (concrete and traced setup), results independent of the setup cache, and clear errors."""

from __future__ import annotations

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import linopx as lx
from linopx.solvers import _host_preconditioners as H

METHODS = ("smoothed_aggregation", "ruge_stuben")


def _poisson(k=30):
    """The 2-D five-point Laplacian on a k x k grid (symmetric positive definite)."""
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    return (sp.kron(sp.identity(k), t) + sp.kron(t, sp.identity(k))).tocsr()


def _convection_diffusion(k=20, wind=(40.0, 20.0)):
    """-Δu + w·∇u on a k x k grid, upwind differences (nonsymmetric M-matrix)."""
    h = 1.0 / (k + 1)
    e = np.ones(k)
    lap = sp.diags([-e[1:], 2 * e, -e[1:]], [-1, 0, 1]) / h**2
    # Upwind first derivative for a positive wind: (u_i - u_{i-1}) / h.
    d = sp.diags([-e[1:], e], [-1, 0]) / h
    i = sp.identity(k)
    a = sp.kron(i, lap) + sp.kron(lap, i) + wind[0] * sp.kron(i, d) + wind[1] * sp.kron(d, i)
    return a.tocsr()


def _spd(k=30):
    return lx.SparseCOOLinearOperator.from_scipy(_poisson(k), lx.positive_semidefinite_tag)


def _rhs(n, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(n))


def _rel(x, y):
    return float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(np.asarray(y)))


# ---------------------------------------------------------------------------------------------
# Multigrid


@pytest.mark.parametrize("method", METHODS)
def test_amg_cg_solves_and_cuts_iterations(method):
    pytest.importorskip("pyamg")
    a = _poisson()
    A = lx.SparseCOOLinearOperator.from_scipy(a, lx.positive_semidefinite_tag)
    b = _rhs(a.shape[0])
    M = lx.amg_preconditioner(A, method)
    assert lx.is_positive_semidefinite(M)
    solver = lx.CG(rtol=1e-10, atol=0.0)
    sol = lx.linear_solve(A, b, solver, options={"preconditioner": M})
    plain = lx.linear_solve(A, b, solver)
    assert _rel(sol.value, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8
    # Multigrid: a handful of iterations, against ~100 for plain CG on this grid.
    assert int(sol.stats["num_steps"]) <= 15
    assert int(sol.stats["num_steps"]) * 5 <= int(plain.stats["num_steps"])


def test_amg_v_cycle_is_symmetric_positive_definite_and_works_with_minres():
    pytest.importorskip("pyamg")
    a = _poisson(12)
    A = lx.SparseCOOLinearOperator.from_scipy(a, lx.positive_semidefinite_tag)
    M = lx.amg_preconditioner(A)
    m = np.asarray(M.as_matrix())
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert np.linalg.eigvalsh(m).min() > 0
    np.testing.assert_allclose(np.asarray(M.T.as_matrix()), m.T, atol=1e-12)
    b = _rhs(a.shape[0])
    sol = lx.linear_solve(A, b, lx.MINRES(rtol=1e-10, atol=0.0), options={"preconditioner": M})
    assert _rel(sol.value, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("smoothed_aggregation", {"symmetry": "nonsymmetric"}),
        ("ruge_stuben", {}),
        # Unsymmetric smoothing: forward sweeps before and after.
        ("ruge_stuben", {"presmoother": "gauss_seidel", "postsmoother": ("sor", {"omega": 1.2})}),
    ],
)
def test_amg_transpose_is_exact_for_nonsymmetric_problems(method, kwargs):
    pytest.importorskip("pyamg")
    a = _convection_diffusion(9)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    M = lx.amg_preconditioner(A, method, **kwargs)
    assert not lx.is_symmetric(M)
    m = np.asarray(M.as_matrix())
    assert np.abs(m - m.T).max() > 1e-6  # a genuinely nonsymmetric V-cycle
    np.testing.assert_allclose(np.asarray(M.T.as_matrix()), m.T, atol=1e-12 * np.abs(m).max())
    b = _rhs(a.shape[0])
    sol = lx.linear_solve(A, b, lx.GMRES(rtol=1e-10, atol=0.0), options={"preconditioner": M})
    assert _rel(sol.value, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8


def test_unsymmetric_smoothing_is_not_tagged_definite():
    pytest.importorskip("pyamg")
    A = _spd(8)
    M = lx.amg_preconditioner(A, presmoother="gauss_seidel", postsmoother="gauss_seidel")
    assert not lx.is_positive_semidefinite(M)
    M2 = lx.amg_preconditioner(
        A,
        presmoother=("gauss_seidel", {"sweep": "forward"}),
        postsmoother=("gauss_seidel", {"sweep": "backward"}),
    )
    assert lx.is_positive_semidefinite(M2)
    m = np.asarray(M2.as_matrix())
    np.testing.assert_allclose(m, m.T, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Incomplete LU


def test_ilu_matches_spilu_and_transposes_exactly():
    a = _convection_diffusion(12)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    M = lx.ilu_preconditioner(A, drop_tol=1e-3, fill_factor=5)
    # A structurally symmetric pattern: linopx orders by minimum degree on Aᵀ + A, as SparseLU.
    ref = spla.spilu(a.tocsc(), drop_tol=1e-3, fill_factor=5, permc_spec="MMD_AT_PLUS_A")
    v = np.random.default_rng(1).standard_normal(a.shape[0])
    np.testing.assert_allclose(np.asarray(M.mv(jnp.asarray(v))), ref.solve(v), rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(M.T.mv(jnp.asarray(v))), ref.solve(v, trans="T"), rtol=1e-12
    )
    assert not lx.is_symmetric(M)


@pytest.mark.parametrize(
    "solver", [lx.GMRES(rtol=1e-10, atol=0.0), lx.BiCGStab(rtol=1e-10, atol=0.0)]
)
def test_ilu_gmres_bicgstab_solve_and_cut_iterations(solver):
    a = _convection_diffusion(20)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    b = _rhs(a.shape[0])
    M = lx.ilu_preconditioner(A)
    sol = lx.linear_solve(A, b, solver, options={"preconditioner": M})
    plain = lx.linear_solve(A, b, solver)
    assert _rel(sol.value, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8
    assert int(sol.stats["num_steps"]) * 5 <= int(plain.stats["num_steps"])


def test_ilu_complex():
    a = (_convection_diffusion(8) + 1j * sp.identity(64) * 50.0).tocsr()
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    rng = np.random.default_rng(0)
    b = jnp.asarray(rng.standard_normal(64) + 1j * rng.standard_normal(64))
    M = lx.ilu_preconditioner(A)
    sol = lx.linear_solve(A, b, lx.GMRES(rtol=1e-10, atol=0.0), options={"preconditioner": M})
    assert _rel(sol.value, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8
    # conj(M) is the preconditioner of conj(A) (used by adjoint solves): exact, from the same factors.
    v = np.asarray(b)
    np.testing.assert_allclose(
        np.asarray(lx.conj(M).mv(jnp.asarray(v))),
        np.conj(np.asarray(M.mv(jnp.asarray(np.conj(v))))),
        rtol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# Derivatives and setup counts


def _loss(values, b, pattern_op, solver, M=None, make=None):
    A = lx.SparseCOOLinearOperator(
        values, pattern_op.rows, pattern_op.cols, pattern_op.shape, pattern_op.tags
    )
    if make is not None:
        M = make(A)
    options = None if M is None else {"preconditioner": M}
    x = lx.linear_solve(A, b, solver, options=options).value
    return jnp.sum(jnp.sin(x))


def _fd(f, values, i, eps=1e-6):
    e = jnp.zeros_like(values).at[i].set(eps)
    return (f(values + e) - f(values - e)) / (2 * eps)


def _gradient_problem(kind):
    """`(A, make, solver)`: an SPD operator with AMG and CG, or a nonsymmetric one with ILU and
    GMRES."""
    if kind == "amg":
        pytest.importorskip("pyamg")
        return _spd(16), lx.amg_preconditioner, lx.CG(rtol=1e-12, atol=0.0)
    A = lx.SparseCOOLinearOperator.from_scipy(_convection_diffusion(12))
    return A, lx.ilu_preconditioner, lx.GMRES(rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("kind", ["amg", "ilu"])
def test_gradient_equals_unpreconditioned_and_one_setup(kind):
    A, make, solver = _gradient_problem(kind)
    b = _rhs(A.shape[0])
    before = H.SETUPS[kind]
    M = make(A)
    assert H.SETUPS[kind] == before + 1
    # M, set up above from concrete values, goes into `jit` as an argument (a token and values).
    grad = jax.jit(jax.grad(lambda v, b, M: _loss(v, b, A, solver, M), argnums=(0, 1)))
    g_v, g_b = jax.block_until_ready(grad(A.values, b, M))
    assert H.SETUPS[kind] == before + 1  # forward and backward solves reuse the one setup
    r_v, r_b = grad(A.values, b, None)
    assert _rel(g_v, r_v) < 1e-8 and _rel(g_b, r_b) < 1e-8
    # Finite differences of a direct solve with the operator untagged (a perturbed entry makes it
    # unsymmetric, which a definite-tagged direct solve would not see).
    untagged = lx.SparseCOOLinearOperator(A.values, A.rows, A.cols, A.shape)
    direct = jax.jit(lambda v: _loss(v, b, untagged, lx.SparseLU()))
    for i in (0, 7):
        np.testing.assert_allclose(g_v[i], _fd(direct, A.values, i), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["amg", "ilu"])
def test_traced_setup_once_under_jit_grad(kind):
    A, make, solver = _gradient_problem(kind)
    b = _rhs(A.shape[0])
    H.clear_cache()
    before = H.SETUPS[kind]
    f = jax.jit(jax.grad(lambda v, b: _loss(v, b, A, solver, make=make), argnums=(0, 1)))
    g_v, g_b = jax.block_until_ready(f(A.values, b))  # callbacks run asynchronously
    assert H.SETUPS[kind] == before + 1
    r_v, r_b = jax.grad(_loss, argnums=(0, 1))(A.values, b, A, solver)
    assert _rel(g_v, r_v) < 1e-8 and _rel(g_b, r_b) < 1e-8
    # New values: one new setup; results do not depend on the cache (cleared: same numbers).
    g2 = jax.block_until_ready(f(A.values * 1.5, b))
    assert H.SETUPS[kind] == before + 2
    H.clear_cache()
    g3 = jax.block_until_ready(f(A.values * 1.5, b))
    np.testing.assert_array_equal(np.asarray(g2[0]), np.asarray(g3[0]))


def test_evicted_setup_is_rebuilt_with_the_same_result():
    A = lx.SparseCOOLinearOperator.from_scipy(_convection_diffusion(10))
    M = lx.ilu_preconditioner(A)
    v = _rhs(A.shape[0])
    y1 = np.asarray(M.mv(v))
    before = H.SETUPS["ilu"]
    H.clear_cache()
    y2 = np.asarray(M.mv(v))
    assert H.SETUPS["ilu"] == before + 1
    np.testing.assert_array_equal(y1, y2)
    # A token moved onto other values is not trusted: the setup of the new values is used.
    M2 = lx.ilu_preconditioner(lx.SparseCOOLinearOperator(A.values * 2, A.rows, A.cols, A.shape))
    swapped = eqx.tree_at(lambda m: m.token, M2, M.token)
    np.testing.assert_allclose(np.asarray(swapped.mv(v)), y1 / 2, rtol=1e-12)


def test_pure_callback_path_gives_the_same_result(monkeypatch):
    """Off the CPU the applications go through `jax.pure_callback` (operands copied to the host)
    rather than `buffer_callback` (CPU buffers read in place): same numbers, also under `vmap`."""
    a = _convection_diffusion(8)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    M = lx.ilu_preconditioner(A)
    vs = jnp.stack([_rhs(64, s) for s in range(2)])
    fast = np.asarray(jax.vmap(M.mv)(vs))
    monkeypatch.setattr(H, "_on_cpu", lambda values: False)
    slow = np.asarray(jax.vmap(M.mv)(vs))
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_allclose(
        slow[1],
        spla.spilu(a.tocsc(), permc_spec="MMD_AT_PLUS_A").solve(np.asarray(vs[1])),
        rtol=1e-12,
    )


def test_vmap_and_traced_pattern():
    a = _convection_diffusion(8)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    n = a.shape[0]
    bs = jnp.stack([_rhs(n, s) for s in range(3)])
    M = lx.ilu_preconditioner(A)
    solver = lx.GMRES(rtol=1e-10, atol=0.0)
    xs = jax.vmap(lambda b: lx.linear_solve(A, b, solver, options={"preconditioner": M}).value)(bs)
    for x, b in zip(xs, bs):
        assert _rel(x, spla.spsolve(a.tocsc(), np.asarray(b))) < 1e-8
    # A batch of matrices, each with its own setup made inside `vmap`; and a traced pattern.
    scales = jnp.asarray([1.0, 2.0, 3.0])

    def solve(s, b, rows, cols):
        op = lx.SparseCOOLinearOperator(A.values * s, rows, cols, A.shape)
        M = lx.ilu_preconditioner(op)
        return lx.linear_solve(op, b, solver, options={"preconditioner": M}).value

    xs = jax.jit(jax.vmap(solve, in_axes=(0, 0, None, None)))(
        scales, bs, jnp.asarray(A.rows), jnp.asarray(A.cols)
    )
    for s, x, b in zip(scales, xs, bs):
        assert _rel(x, spla.spsolve(float(s) * a.tocsc(), np.asarray(b))) < 1e-8


# ---------------------------------------------------------------------------------------------
# Failures and errors


@pytest.mark.parametrize("traced", [False, True])
def test_nan_values_give_a_result_not_a_crash(traced):
    a = _convection_diffusion(8)
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    bad = A.values.at[3].set(jnp.nan)
    b = _rhs(a.shape[0])

    def solve(values):
        op = lx.SparseCOOLinearOperator(values, A.rows, A.cols, A.shape)
        M = lx.ilu_preconditioner(op)
        return lx.linear_solve(
            op, b, lx.GMRES(rtol=1e-8, atol=0.0), options={"preconditioner": M}, throw=False
        )

    sol = jax.jit(solve)(bad) if traced else solve(bad)
    assert sol.result == lx.RESULTS.nonfinite_input


def test_nan_values_amg_cg():
    pytest.importorskip("pyamg")
    A = _spd(8)
    op = lx.SparseCOOLinearOperator(A.values.at[0].set(jnp.nan), A.rows, A.cols, A.shape, A.tags)
    M = lx.amg_preconditioner(op)
    sol = lx.linear_solve(
        op, _rhs(64), lx.CG(rtol=1e-8, atol=0.0), options={"preconditioner": M}, throw=False
    )
    assert sol.result == lx.RESULTS.nonfinite_input


def test_errors():
    rect = lx.SparseCOOLinearOperator.from_scipy(sp.random(4, 5, density=0.5, random_state=0))
    with pytest.raises(ValueError, match="square"):
        lx.ilu_preconditioner(rect)
    with pytest.raises(TypeError, match="from_scipy"):
        lx.ilu_preconditioner(lx.MatrixLinearOperator(jnp.eye(3)))
    with pytest.raises(TypeError, match="SparseCOOLinearOperator"):
        lx.ilu_preconditioner(lx.DiagonalLinearOperator(jnp.ones(3)))
    A = lx.SparseCOOLinearOperator.from_scipy(_convection_diffusion(4))
    with pytest.raises(ValueError, match="drop_tol"):
        lx.ilu_preconditioner(A, drop_tol=-1.0)
    with pytest.raises(TypeError, match="unknown keyword argument 'drop'"):
        lx.ilu_preconditioner(A, drop=1.0)
    with pytest.raises(ValueError, match="unknown method 'geometric'"):
        lx.amg_preconditioner(A, "geometric")
    # A structurally singular matrix (a zero column): the incomplete factor is singular.
    z = _convection_diffusion(4).tolil()
    z[:, 5] = 0
    with pytest.raises(ValueError, match="incomplete factorization failed"):
        lx.ilu_preconditioner(lx.SparseCOOLinearOperator.from_scipy(z.tocsr()))


def test_amg_errors():
    pytest.importorskip("pyamg")
    A = _spd(6)
    with pytest.raises(TypeError, match="unknown keyword argument 'max_coarsest'"):
        lx.amg_preconditioner(A, max_coarsest=10)
    with pytest.raises(ValueError, match="presmoother 'chebyshev' is not supported"):
        lx.amg_preconditioner(A, presmoother="chebyshev")


def test_missing_pyamg_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyamg", None)  # `import pyamg` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "linopx\[amg\]"'):
        lx.amg_preconditioner(_spd(4))
