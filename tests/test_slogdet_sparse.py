"""`lx.slogdet` with `SparseLU`: the determinant read off the sparse factorization, and its exact
derivative by selected inversion (`linopx.solvers.sparse._selinv`).

References are NumPy's dense `inv`/`slogdet` and `jax.grad` of `jnp.linalg.slogdet` of the densified
matrix, in float64/complex128. The random test matrices have condition numbers below ~1e4, so a
backward-stable factorization and selected inversion agree with the dense inverse to about
κ·eps·(growth) ≲ 1e-11 relative (to the largest entry of `A⁻¹`); we allow 1e-10. float32 results are
compared with 1e-4 relative tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import splu

import linopx as lx
from linopx.solvers import sparse as sparse_solvers
from linopx.solvers.sparse import _pardiso, _selinv, _solver, _superlu

HAVE_PARDISO = _pardiso.is_x86() and _pardiso.available()
needs_pardiso = pytest.mark.skipif(not HAVE_PARDISO, reason="MKL PARDISO (pypardiso) not installed")


@pytest.fixture(autouse=True)
def _fresh_cache():
    sparse_solvers.set_cache_limits(max_entries=16, max_bytes=4 * 2**30)
    sparse_solvers.clear_cache()
    sparse_solvers.reset_counters()
    _selinv.clear()
    yield
    sparse_solvers.clear_cache()


def poisson2d(k: int) -> sp.coo_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k))
    return (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k))).tocoo()


def random_matrix(rng, n, density=0.2, complex_=False, weak_diagonal=False) -> sp.coo_matrix:
    """Unsymmetric pattern and values. With `weak_diagonal` the diagonal is small next to the
    off-diagonal entries, so partial pivoting swaps rows."""
    a = sp.random(n, n, density=density, random_state=rng, format="coo")
    a.data = rng.normal(size=a.nnz)
    if complex_:
        a = a + 1j * sp.random(n, n, density=density, random_state=rng, format="coo")
    d = rng.uniform(0.5, 1.0, n) * (0.05 if weak_diagonal else 2.0 + abs(a).sum(axis=1).A.ravel())
    return (a + sp.diags(d)).tocoo()


def with_duplicates(a: sp.coo_matrix, rng) -> sp.coo_matrix:
    """The same matrix with some entries split into two COO entries that add up."""
    k = max(1, a.nnz // 5)
    pick = rng.choice(a.nnz, k, replace=False)
    part = rng.uniform(0.2, 0.8, k)
    data = np.r_[a.data, a.data[pick] * part]
    data[pick] = a.data[pick] * (1 - part)
    return sp.coo_matrix((data, (np.r_[a.row, a.row[pick]], np.r_[a.col, a.col[pick]])), a.shape)


def op_of(a, tags=()) -> lx.SparseCOOLinearOperator:
    return lx.SparseCOOLinearOperator.from_scipy(a, tags)


def with_values(op, values):
    return lx.SparseCOOLinearOperator(values, op.rows, op.cols, op.shape, op.tags)


def dense_of(op, values):
    n = op.shape[0]
    return jnp.zeros((n, n), values.dtype).at[op.rows, op.cols].add(values)


def factorizations() -> dict:
    return sparse_solvers.cache_info()["factorizations"]


def inverse_entries_by_selinv(a: sp.coo_matrix, permc_spec: str) -> np.ndarray:
    lu = splu(sp.csc_matrix(a), permc_spec=permc_spec)
    return _selinv.selected_inverse(lu.L, lu.U, lu.perm_c[a.col], lu.perm_r[a.row]), lu


def assert_inverse_entries(a: sp.coo_matrix, g: np.ndarray) -> None:
    inv = np.linalg.inv(a.toarray())
    ref = inv[a.col, a.row]
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10 * np.max(np.abs(inv)))


# ---------------------------------------------------------------------------------------------
# Selected inversion (host side) against the dense inverse


@pytest.mark.parametrize("permc_spec", ["COLAMD", "NATURAL", "MMD_AT_PLUS_A", "MMD_ATA"])
@pytest.mark.parametrize("complex_", [False, True])
def test_selected_inverse_matches_dense_inverse(rng, permc_spec, complex_):
    for n in (1, 2, 7, 25, 60):
        for weak in (False, True):
            a = random_matrix(rng, n, complex_=complex_, weak_diagonal=weak)
            if np.linalg.cond(a.toarray()) > 1e6:
                continue
            g, _ = inverse_entries_by_selinv(a, permc_spec)
            assert_inverse_entries(a, g)


def test_selected_inverse_with_pivoting_and_duplicates(rng):
    a = with_duplicates(random_matrix(rng, 40, weak_diagonal=True), rng)
    g, lu = inverse_entries_by_selinv(a, "NATURAL")
    # NATURAL column order: any row permutation is partial pivoting at work.
    assert not np.array_equal(lu.perm_r, np.arange(40))
    assert_inverse_entries(a, g)
    # Entries sharing a position share G.
    first = {}
    for k, key in enumerate(zip(a.row, a.col, strict=True)):
        first.setdefault(key, k)
        assert g[k] == g[first[key]]


def test_selected_inverse_on_poisson_uses_multicolumn_blocks():
    a = poisson2d(20)
    g, lu = inverse_entries_by_selinv(a, "MMD_AT_PLUS_A")
    assert_inverse_entries(a, g)
    info = _selinv.analyse(
        400, (lu.L.indptr, lu.L.indices), (lu.U.indptr, lu.U.indices), a.col, a.row
    )
    assert info.widths.max() > 1 and info.starts.shape[0] < 400


def test_selected_inverse_survives_exact_zeros_in_the_factors(rng):
    """SciPy drops entries of L and U that come out exactly zero, which can leave the factors'
    pattern not closed under the recurrences; the completion puts them back."""
    a = sp.coo_matrix(np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 0.5], [1.0, 0.5, 2.0]]))
    g, lu = inverse_entries_by_selinv(a, "NATURAL")
    assert lu.U.nnz < 6  # U[1, 2] = 0.5 - 0.5 * 1 cancelled exactly
    assert_inverse_entries(a, g)
    for _ in range(20):  # small integers: many exact cancellations
        n = 30
        m = sp.random(n, n, density=0.2, random_state=rng, format="coo")
        m.data = rng.integers(-2, 3, m.nnz).astype(float)
        a = (m + sp.diags(rng.integers(3, 6, n).astype(float))).tocoo()
        if np.linalg.cond(a.toarray()) > 1e6:
            continue
        g, _ = inverse_entries_by_selinv(a, "COLAMD")
        assert_inverse_entries(a, g)


def test_pattern_completion_matches_column_sweep(rng, monkeypatch):
    for _ in range(10):
        n = int(rng.integers(2, 60))
        m = abs(sp.random(n, n, density=0.1, random_state=rng, format="csc"))
        lower = sp.tril(m + m.T + sp.eye(n), format="csc").astype(np.int32)
        lower.data[:] = 1
        lower.sort_indices()
        fast = _selinv._close(lower.copy())
        sweep = _selinv._close_by_columns(lower.copy())
        fast.data[:] = 1
        sweep.data[:] = 1
        assert (fast != sweep).nnz == 0
    # The column sweep also serves as the fallback of the numerical method.
    monkeypatch.setattr(_selinv, "_MAX_CLOSURE_ROUNDS", 0)
    a = random_matrix(rng, 30, weak_diagonal=True)
    g, _ = inverse_entries_by_selinv(a, "COLAMD")
    assert_inverse_entries(a, g)


def test_analysis_is_memoised(rng):
    a = random_matrix(rng, 30)
    lu = splu(sp.csc_matrix(a), permc_spec="COLAMD")
    rows, cols = lu.perm_c[a.col], lu.perm_r[a.row]
    _selinv.selected_inverse(lu.L, lu.U, rows, cols)
    misses = _selinv._ANALYSES.misses
    _selinv.selected_inverse(lu.L, lu.U, rows, cols)
    assert _selinv._ANALYSES.misses == misses


def test_permutation_sign(rng):
    for n in (0, 1, 2, 5, 17, 64):
        for _ in range(5):
            p = rng.permutation(n)
            expected = np.linalg.det(np.eye(n)[p]) if n else 1.0
            assert _superlu.permutation_sign(p) == round(expected)


# ---------------------------------------------------------------------------------------------
# SparseLU.logdet


def solver_slogdet(op, backend="superlu"):
    solver = lx.SparseLU(backend)
    return solver.logdet(solver.init(op, {}), {})


@pytest.mark.parametrize("complex_", [False, True])
def test_logdet_matches_numpy(rng, complex_):
    for n in (1, 5, 30):
        for weak in (False, True):
            a = with_duplicates(random_matrix(rng, n, complex_=complex_, weak_diagonal=weak), rng)
            sign, logabsdet = solver_slogdet(op_of(a))
            ref_sign, ref_logabsdet = np.linalg.slogdet(a.toarray())
            assert sign.dtype == a.dtype and logabsdet.dtype == np.finfo(a.dtype).dtype
            np.testing.assert_allclose(sign, ref_sign, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(logabsdet, ref_logabsdet, rtol=1e-12, atol=1e-12)


def test_logdet_float32_and_complex64(rng):
    for complex_ in (False, True):
        a = random_matrix(rng, 20, complex_=complex_, weak_diagonal=True)
        low = a.astype(np.complex64 if complex_ else np.float32)
        sign, logabsdet = solver_slogdet(op_of(low))
        assert sign.dtype == low.dtype and logabsdet.dtype == np.float32
        ref_sign, ref_logabsdet = np.linalg.slogdet(low.toarray().astype(a.dtype))
        np.testing.assert_allclose(sign, ref_sign, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logabsdet, ref_logabsdet, rtol=1e-4, atol=1e-4)


def test_logdet_singular_and_nonfinite(rng):
    a = random_matrix(rng, 10).tolil()
    a[3, :] = 0  # an explicit zero row: exactly singular
    a = a.tocoo()
    sign, logabsdet = solver_slogdet(op_of(a))
    assert sign == 0 and logabsdet == -np.inf
    b = random_matrix(rng, 10)
    b.data[4] = np.nan
    sign, logabsdet = solver_slogdet(op_of(b))
    assert np.isnan(sign) and np.isnan(logabsdet)
    c = random_matrix(rng, 10, complex_=True)
    c.data[0] = np.inf
    sign, logabsdet = solver_slogdet(op_of(c))
    assert np.isnan(sign) and np.isnan(logabsdet)


def test_logdet_transposed_and_conjugated_states(rng):
    a = random_matrix(rng, 15, complex_=True, weak_diagonal=True)
    solver = lx.SparseLU("superlu")
    state = solver.init(op_of(a), {})
    ref_sign, ref_logabsdet = np.linalg.slogdet(a.toarray())
    for transform, expect in (
        (lambda s: solver.transpose(s, {})[0], ref_sign),
        (lambda s: solver.conj(s, {})[0], np.conj(ref_sign)),
        (lambda s: solver.conj(solver.transpose(s, {})[0], {})[0], np.conj(ref_sign)),
    ):
        sign, logabsdet = solver.logdet(transform(state), {})
        np.testing.assert_allclose(sign, expect, rtol=1e-12)
        np.testing.assert_allclose(logabsdet, ref_logabsdet, rtol=1e-12)


def test_logdet_traced_pattern_and_vmap_over_values(rng):
    a = random_matrix(rng, 12, weak_diagonal=True)
    solver = lx.SparseLU("superlu")

    @jax.jit
    def traced(values, rows, cols):
        op = lx.SparseCOOLinearOperator(values, rows, cols, a.shape)
        return solver.logdet(solver.init(op, {}), {})

    sign, logabsdet = traced(jnp.asarray(a.data), jnp.asarray(a.row), jnp.asarray(a.col))
    ref = np.linalg.slogdet(a.toarray())
    np.testing.assert_allclose([sign, logabsdet], [ref[0], ref[1]], rtol=1e-12)
    # vmap over values: one host callback for the batch, one factorization per member.
    values = jnp.stack([a.data, -a.data, 2 * a.data])
    op = op_of(a)
    sign, logabsdet = jax.vmap(lambda v: solver.logdet(solver.init(with_values(op, v), {}), {}))(
        values
    )
    for i, v in enumerate(values):
        r = np.linalg.slogdet(sp.coo_matrix((np.asarray(v), (a.row, a.col)), a.shape).toarray())
        np.testing.assert_allclose([sign[i], logabsdet[i]], [r[0], r[1]], rtol=1e-12)
    # ... and with a batch of traced patterns (one per member).
    sign, logabsdet = jax.vmap(traced, in_axes=(0, None, None))(
        values, jnp.asarray(a.row), jnp.asarray(a.col)
    )
    np.testing.assert_allclose(logabsdet[2], ref[1] + 12 * np.log(2), rtol=1e-12)


def test_solve_then_logdet_factorizes_once(rng):
    a = random_matrix(rng, 20)
    op = op_of(a)
    solver = lx.SparseLU("superlu")
    lx.linear_solve(op, jnp.ones(20), solver)
    solver_slogdet(op)
    assert factorizations() == {"superlu": 1}


# ---------------------------------------------------------------------------------------------
# lx.slogdet end to end: values and derivatives with respect to the nonzeros


def dense_grad(op, values):
    return jax.grad(lambda v: jnp.linalg.slogdet(dense_of(op, v))[1])(values)


@pytest.mark.parametrize("complex_", [False, True])
def test_slogdet_value_and_grad_match_dense(rng, complex_):
    a = with_duplicates(random_matrix(rng, 25, complex_=complex_, weak_diagonal=True), rng)
    op = op_of(a)
    solver = lx.SparseLU("superlu")

    def f(v):
        return lx.slogdet(with_values(op, v), solver)

    sign, logabsdet = f(op.values)
    ref = np.linalg.slogdet(a.toarray())
    np.testing.assert_allclose([sign, logabsdet], [ref[0], ref[1]], rtol=1e-12)
    sparse_solvers.clear_cache()
    sparse_solvers.reset_counters()
    value, g = jax.jit(jax.value_and_grad(lambda v: f(v)[1]))(op.values)
    assert factorizations() == {"superlu": 1}  # one factorization for the value and gradient
    np.testing.assert_allclose(value, ref[1], rtol=1e-12)
    np.testing.assert_allclose(g, dense_grad(op, op.values), rtol=1e-9, atol=1e-10)
    if complex_:  # the phase's derivative: d sign = i Im tr(A⁻¹ A') sign
        t = jax.random.normal(jax.random.PRNGKey(1), (op.values.shape[0],), jnp.float64)
        tangent = jax.lax.complex(t, t[::-1])
        _, (ds, dl) = jax.jvp(f, (op.values,), (tangent,))
        _, (ds_ref, dl_ref) = jax.jvp(
            lambda v: jnp.linalg.slogdet(dense_of(op, v)), (op.values,), (tangent,)
        )
        np.testing.assert_allclose([ds, dl], [ds_ref, dl_ref], rtol=1e-9, atol=1e-10)


def test_slogdet_grad_matches_finite_differences(rng):
    a = random_matrix(rng, 15, weak_diagonal=True)
    op = op_of(a)

    def f(v):
        return lx.slogdet(with_values(op, v), lx.SparseLU("superlu"))[1]

    g = jax.grad(f)(op.values)
    h = 1e-6
    for k in rng.choice(op.nnz, 6, replace=False):
        e = jnp.zeros(op.nnz).at[k].set(h)
        fd = (f(op.values + e) - f(op.values - e)) / (2 * h)
        np.testing.assert_allclose(g[k], fd, rtol=1e-6, atol=1e-7)


def test_slogdet_jvp_vmap_and_traced_pattern(rng):
    a = poisson2d(6)
    op = op_of(a)
    solver = lx.SparseLU("superlu")
    tangent = jnp.asarray(rng.normal(size=op.nnz))
    _, dl = jax.jvp(lambda v: lx.slogdet(with_values(op, v), solver)[1], (op.values,), (tangent,))
    _, dl_ref = jax.jvp(lambda v: jnp.linalg.slogdet(dense_of(op, v))[1], (op.values,), (tangent,))
    np.testing.assert_allclose(dl, dl_ref, rtol=1e-10)

    # vmap over values of value-and-grad, with the pattern traced through jit.
    @jax.jit
    def value_and_grad(values, rows, cols):
        def f(v):
            return lx.slogdet(lx.SparseCOOLinearOperator(v, rows, cols, op.shape), solver)[1]

        return jax.vmap(jax.value_and_grad(f))(values)

    values = jnp.stack([op.values, op.values * 3.0])
    sparse_solvers.clear_cache()
    sparse_solvers.reset_counters()
    logabsdet, grads = value_and_grad(values, jnp.asarray(a.row), jnp.asarray(a.col))
    assert factorizations() == {"superlu": 2}  # one per member
    for i in range(2):
        np.testing.assert_allclose(
            logabsdet[i], np.linalg.slogdet(np.asarray(dense_of(op, values[i])))[1], rtol=1e-12
        )
        np.testing.assert_allclose(grads[i], dense_grad(op, values[i]), rtol=1e-10, atol=1e-12)


def test_slogdet_shared_state_and_singular_gradient(rng):
    a = random_matrix(rng, 20)
    op = op_of(a)
    solver = lx.SparseLU("superlu")
    state = solver.init(op, {})
    x = lx.linear_solve(op, jnp.ones(20), solver, state=state).value
    _, logabsdet = lx.slogdet(op, solver, state=state)
    assert factorizations() == {"superlu": 1}
    np.testing.assert_allclose(logabsdet, np.linalg.slogdet(a.toarray())[1], rtol=1e-12)
    np.testing.assert_allclose(a @ np.asarray(x), np.ones(20), rtol=1e-10)
    # A singular matrix: sign 0, logabsdet -inf, and a NaN gradient (no exception).
    b = a.tolil()
    b[2, :] = 0
    op_b = op_of(b.tocoo())
    sign, logabsdet = lx.slogdet(op_b, solver)
    assert sign == 0 and logabsdet == -np.inf
    g = jax.grad(lambda v: lx.slogdet(with_values(op_b, v), solver)[1])(op_b.values)
    assert np.all(np.isnan(g))


def test_slogdet_float32(rng):
    a = random_matrix(rng, 20).astype(np.float32)
    op = op_of(a)
    value, g = jax.value_and_grad(
        lambda v: lx.slogdet(with_values(op, v), lx.SparseLU("superlu"))[1]
    )(op.values)
    assert value.dtype == jnp.float32 and g.dtype == jnp.float32
    ref = dense_grad(op_of(a.astype(np.float64)), op.values.astype(jnp.float64))
    np.testing.assert_allclose(
        value, np.linalg.slogdet(a.toarray().astype(np.float64))[1], rtol=1e-4
    )
    np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# PARDISO


@needs_pardiso
def test_pardiso_positive_definite_reads_its_own_pivots():
    pytest.importorskip("pypardiso")
    a = poisson2d(8)
    op = op_of(a, lx.positive_semidefinite_tag)
    solver = lx.SparseLU("pardiso")
    lx.linear_solve(op, jnp.ones(64), solver)
    sign, logabsdet = lx.slogdet(op, solver)
    assert factorizations() == {"pardiso": 1}  # the solve's factorization: no SuperLU fallback
    ref = np.linalg.slogdet(a.toarray())
    np.testing.assert_allclose([sign, logabsdet], [ref[0], ref[1]], rtol=1e-12)
    # The gradient's selected inverse comes from a SuperLU factorization of the same values.
    g = jax.grad(lambda v: lx.slogdet(with_values(op, v), solver)[1])(op.values)
    np.testing.assert_allclose(g, dense_grad(op, op.values), rtol=1e-10, atol=1e-12)
    assert factorizations() == {"pardiso": 1, "superlu": 1}


@needs_pardiso
@pytest.mark.parametrize("tags", [(), (lx.symmetric_tag,)])
def test_pardiso_other_types_fall_back_to_superlu(rng, tags):
    pytest.importorskip("pypardiso")
    shift = 3.1 if tags else 0.0
    a = (poisson2d(6) - shift * sp.eye(36)).tocoo() if tags else random_matrix(rng, 30)
    op = op_of(a, tags)
    solver = lx.SparseLU("pardiso")
    value, g = jax.value_and_grad(lambda v: lx.slogdet(with_values(op, v), solver)[1])(op.values)
    np.testing.assert_allclose(value, np.linalg.slogdet(a.toarray())[1], rtol=1e-12)
    np.testing.assert_allclose(g, dense_grad(op, op.values), rtol=1e-9, atol=1e-11)
    assert factorizations() == {"superlu": 1}
    sign, _ = lx.slogdet(op, solver)
    assert sign == np.linalg.slogdet(a.toarray())[0]


def test_logdet_tangent_rejects_a_foreign_operator(rng):
    a = random_matrix(rng, 5)
    solver = lx.SparseLU("superlu")
    state = solver.init(op_of(a), {})
    with pytest.raises(ValueError, match="SparseCOOLinearOperator"):
        solver.logdet_tangent(state, lx.MatrixLinearOperator(jnp.eye(5)), lambda fn: None, {})


def test_host_helpers_report_nan_for_nonfinite_values(rng):
    a = random_matrix(rng, 6)
    pattern = op_of(a).pattern
    values = np.array(a.data)
    values[1] = np.nan
    g = _solver._inverse_member(pattern, "general", values)
    assert g.shape == values.shape and np.all(np.isnan(g))


def test_hutchinson_on_sparse_is_opt_in_and_unbiased():
    """The stochastic derivative on a sparse operator: exact value, a gradient of shape (nnz,)
    whose mean over keys matches the exact selected-inverse gradient within its standard error."""
    k = 6
    t = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], (k, k))
    a = (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k))).tocoo()
    A = lx.SparseCOOLinearOperator.from_scipy(a)
    exact = jax.grad(
        lambda v: lx.slogdet(lx.SparseCOOLinearOperator(v, A.rows, A.cols, A.shape), lx.SparseLU())[
            1
        ]
    )(A.values)

    @jax.jit
    def estimate(key):
        est = lx.Hutchinson(num_probes=16, key=key)

        def f(v):
            op = lx.SparseCOOLinearOperator(v, A.rows, A.cols, A.shape)
            return lx.slogdet(op, lx.SparseLU(), options={"estimator": est})[1]

        return f(A.values), jax.grad(f)(A.values)

    values, grads = jax.vmap(estimate)(jax.random.split(jax.random.key(3), 48))
    np.testing.assert_allclose(values, np.linalg.slogdet(a.toarray())[1], rtol=1e-12)
    assert grads.shape == (48, a.nnz)
    mean, spread = grads.mean(0), grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(mean - exact) < 5 * spread + 1e-12)
    assert not np.allclose(grads[0], exact, rtol=1e-3)
