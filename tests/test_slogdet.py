"""`lx.slogdet` on dense and structured operators, its derivatives, and the opt-in estimators.

References are independent: `numpy.linalg.slogdet`, `jax.grad` of `jnp.linalg.slogdet` (whose
derivative is `A⁻ᵀ`), closed forms, and central finite differences, all in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import InverseSolver

import linopx as lx

jax.config.update("jax_enable_x64", True)

N = 7  # odd, so that the sign of a negated matrix flips


def _rng(seed=0):
    return np.random.default_rng(seed)


def _general(n=N, complex_=False, seed=0):
    rng = _rng(seed)
    a = rng.normal(size=(n, n))
    if complex_:
        a = a + 1j * rng.normal(size=(n, n))
    return a


def _spd(n=N, complex_=False, seed=1):
    a = _general(n, complex_, seed)
    return a @ a.conj().T + n * np.eye(n)


def _tridiagonal(n=N, seed=2, complex_=False):
    rng = _rng(seed)
    parts = [rng.normal(size=k) for k in (n, n - 1, n - 1)]
    if complex_:
        parts = [p + 1j * rng.normal(size=p.shape) for p in parts]
    return parts


def _cases(complex_):
    """(name, operator, solver) covering every solver with a log-determinant."""
    a = _general(complex_=complex_)
    spd = _spd(complex_=complex_)
    d, lo, up = _tridiagonal(complex_=complex_)
    M = lx.MatrixLinearOperator
    return [
        ("LU", M(jnp.asarray(a)), lx.LU()),
        ("auto", M(jnp.asarray(a)), lx.AutoLinearSolver(well_posed=True)),
        ("QR", M(jnp.asarray(a)), lx.QR()),
        ("SVD", M(jnp.asarray(a)), lx.SVD()),
        ("Cholesky", M(jnp.asarray(spd), lx.positive_semidefinite_tag), lx.Cholesky()),
        ("Cholesky-neg", M(jnp.asarray(-spd), lx.negative_semidefinite_tag), lx.Cholesky()),
        ("auto-psd", M(jnp.asarray(spd), lx.positive_semidefinite_tag), lx.AutoLinearSolver(True)),
        ("Triangular-lower", M(jnp.asarray(np.tril(a)), lx.lower_triangular_tag), lx.Triangular()),
        ("Triangular-upper", M(jnp.asarray(np.triu(a)), lx.upper_triangular_tag), lx.Triangular()),
        ("Diagonal", lx.DiagonalLinearOperator(jnp.asarray(np.diag(a))), lx.Diagonal()),
        ("Diagonal-tagged", M(jnp.asarray(np.diag(np.diag(a))), lx.diagonal_tag), lx.Diagonal()),
        (
            "Tridiagonal",
            lx.TridiagonalLinearOperator(*map(jnp.asarray, (d, lo, up))),
            lx.Tridiagonal(),
        ),
        (
            "Tridiagonal-tagged-matrix",
            M(jnp.asarray(np.diag(d) + np.diag(lo, -1) + np.diag(up, 1)), lx.tridiagonal_tag),
            lx.Tridiagonal(),
        ),
    ]


def _ids(cases):
    return [c[0] for c in cases]


def _inexact_leaves(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx_inexact(x)]


def eqx_inexact(x):
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


REAL = _cases(False)
COMPLEX = _cases(True)


@pytest.mark.parametrize(
    "name,operator,solver", REAL + COMPLEX, ids=_ids(REAL) + [c + "-complex" for c in _ids(COMPLEX)]
)
def test_value_matches_numpy(name, operator, solver):
    sign, logabsdet = lx.slogdet(operator, solver)
    ref_sign, ref_log = np.linalg.slogdet(np.asarray(operator.as_matrix()))
    assert sign.dtype == operator.as_matrix().dtype
    assert logabsdet.dtype == jnp.float64
    # Backward-stable factorizations: the relative error of det is O(n eps cond).
    np.testing.assert_allclose(logabsdet, ref_log, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sign, ref_sign, atol=1e-12)


@pytest.mark.parametrize("name,operator,solver", REAL, ids=_ids(REAL))
def test_gradient_matches_jnp(name, operator, solver):
    grad = jax.jit(jax.grad(lambda op: lx.slogdet(op, solver)[1]))(operator)
    ref = jax.grad(lambda op: jnp.linalg.slogdet(op.as_matrix())[1])(operator)
    for g, r in zip(_inexact_leaves(grad), _inexact_leaves(ref), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,operator,solver", COMPLEX, ids=_ids(COMPLEX))
def test_complex_jvp_matches_jnp(name, operator, solver):
    """For complex operators both outputs move: log|det| by Re tr(A⁻¹A'), the phase by Im."""
    rng = _rng(5)
    tangent = jax.tree_util.tree_map(
        lambda x: (
            jnp.asarray(rng.normal(size=x.shape) + 1j * rng.normal(size=x.shape))
            if eqx_inexact(x)
            else x
        ),
        operator,
    )
    (s, l), (ds, dl) = jax.jvp(lambda op: lx.slogdet(op, solver), (operator,), (tangent,))
    (rs, rl), (rds, rdl) = jax.jvp(
        lambda op: jnp.linalg.slogdet(op.as_matrix()), (operator,), (tangent,)
    )
    np.testing.assert_allclose(dl, rdl, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ds, rds, rtol=1e-10, atol=1e-12)


def test_finite_differences_and_jvp():
    """Central differences of log|det(A + t E)| against the JVP and the gradient's pairing."""
    a = _general(seed=3)
    e = _rng(4).normal(size=a.shape)
    f = lambda m: lx.slogdet(lx.MatrixLinearOperator(m), lx.LU())[1]  # noqa: E731
    h = 1e-6
    fd = (f(jnp.asarray(a + h * e)) - f(jnp.asarray(a - h * e))) / (2 * h)
    _, jvp = jax.jvp(f, (jnp.asarray(a),), (jnp.asarray(e),))
    grad = jax.grad(f)(jnp.asarray(a))
    # The central difference's truncation error is O(h²) ~ 1e-12; rounding O(eps/h) ~ 1e-10.
    np.testing.assert_allclose(jvp, fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(jnp.sum(grad * e), jvp, rtol=1e-12)


def test_second_derivative():
    """Hessian-vector product of log det (the JVP rule is itself differentiable):
    d² log det A [E, E] = -tr(A⁻¹ E A⁻¹ E)."""
    a, e = _general(seed=6), _rng(7).normal(size=(N, N))
    f = lambda m: lx.slogdet(lx.MatrixLinearOperator(m), lx.LU())[1]  # noqa: E731
    second = jax.jvp(
        lambda m: jax.jvp(f, (m,), (jnp.asarray(e),))[1], (jnp.asarray(a),), (jnp.asarray(e),)
    )[1]
    inv_e = np.linalg.solve(a, e)
    np.testing.assert_allclose(second, -np.trace(inv_e @ inv_e), rtol=1e-9)


def test_vmap_over_matrices_and_jit():
    batch = jnp.asarray(np.stack([_general(seed=s) for s in range(4)]))
    fn = jax.jit(jax.vmap(lambda m: lx.slogdet(lx.MatrixLinearOperator(m), lx.LU())))
    sign, logabsdet = fn(batch)
    ref = np.linalg.slogdet(np.asarray(batch))
    np.testing.assert_allclose(logabsdet, ref.logabsdet, rtol=1e-12)
    np.testing.assert_allclose(sign, ref.sign)
    grads = jax.vmap(jax.grad(lambda m: lx.slogdet(lx.MatrixLinearOperator(m))[1]))(batch)
    np.testing.assert_allclose(
        grads, np.linalg.inv(np.asarray(batch)).transpose(0, 2, 1), rtol=1e-9
    )


def test_shared_state_factorizes_once():
    """The Gaussian-process pattern: one Cholesky for the solve, the log-determinant and the
    gradient of both (counted in the traced program)."""
    k, y = _spd(seed=8), _rng(9).normal(size=N)

    def nll(k):
        K = lx.MatrixLinearOperator(k, lx.positive_semidefinite_tag)
        solver = lx.Cholesky()
        state = solver.init(K, {})
        alpha = lx.linear_solve(K, y, solver, state=state).value
        return 0.5 * y @ alpha + 0.5 * lx.slogdet(K, solver, state=state)[1]

    def reference(k):
        c = jax.scipy.linalg.cho_factor(k, lower=True)
        alpha = jax.scipy.linalg.cho_solve(c, y)
        return 0.5 * y @ alpha + jnp.sum(jnp.log(jnp.diag(c[0])))

    value, grad = jax.value_and_grad(nll)(jnp.asarray(k))
    ref_value, ref_grad = jax.value_and_grad(reference)(jnp.asarray(k))
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    # The references' gradients differ by how they split the symmetric perturbation: compare the
    # symmetrised ones (the derivative along symmetric directions, which is what a kernel has).
    sym = lambda g: (g + g.T) / 2  # noqa: E731
    np.testing.assert_allclose(sym(grad), sym(ref_grad), rtol=1e-9, atol=1e-12)
    jaxpr = str(jax.make_jaxpr(jax.value_and_grad(nll))(jnp.asarray(k)))
    assert jaxpr.count("cholesky") == 1, jaxpr.count("cholesky")


def test_lu_shared_state_factorizes_once():
    a, b = _general(seed=10), _rng(11).normal(size=N)

    def loss(a):
        A = lx.MatrixLinearOperator(a)
        state = lx.LU().init(A, {})
        x = lx.linear_solve(A, b, lx.LU(), state=state).value
        return jnp.sum(x**2) + lx.slogdet(A, lx.LU(), state=state)[1]

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(jnp.asarray(a)))
    assert jaxpr.count(" lu[") + jaxpr.count(" lu ") == 1
    fd_dir = _rng(12).normal(size=(N, N))
    h = 1e-6
    fd = (loss(jnp.asarray(a + h * fd_dir)) - loss(jnp.asarray(a - h * fd_dir))) / (2 * h)
    np.testing.assert_allclose(jnp.sum(jax.grad(loss)(jnp.asarray(a)) * fd_dir), fd, rtol=1e-6)


def test_function_operator_parameter_gradient():
    """Differentiating through a closure: log det(θ M) = n log θ + log det M, so d/dθ = n/θ."""
    m = jnp.asarray(_general(seed=13))
    structure = jax.ShapeDtypeStruct((N,), jnp.float64)

    def f(theta):
        op = lx.FunctionLinearOperator(lambda x: theta * (m @ x), structure)
        return lx.slogdet(op, lx.LU())[1]

    np.testing.assert_allclose(jax.grad(f)(2.5), N / 2.5, rtol=1e-12)
    np.testing.assert_allclose(f(2.5), N * np.log(2.5) + np.linalg.slogdet(m)[1], rtol=1e-12)


def test_tridiagonal_million_no_overflow():
    """n = 10⁶: the Toeplitz tridiagonal (c, 1, 1) has eigenvalues c + 2 cos(kπ/(n+1)), so
    log det = Σ log(c + 2 cos(kπ/(n+1))) (≈ 6.9e5, far beyond float64's exp range) and
    d/dc log det = tr(A⁻¹) = Σ 1/(c + 2 cos(kπ/(n+1)))."""
    n, c = 10**6, 2.5
    op = lx.TridiagonalLinearOperator(jnp.full(n, c), jnp.ones(n - 1), jnp.ones(n - 1))
    k = np.arange(1, n + 1)
    eig = c + 2 * np.cos(k * np.pi / (n + 1))
    sign, logabsdet = jax.jit(lambda op: lx.slogdet(op, lx.Tridiagonal()))(op)
    assert sign == 1
    np.testing.assert_allclose(logabsdet, np.sum(np.log(eig)), rtol=1e-12)
    grad = jax.jit(jax.grad(lambda op: lx.slogdet(op, lx.Tridiagonal())[1]))(op)
    np.testing.assert_allclose(jnp.sum(grad.diagonal), np.sum(1 / eig), rtol=1e-9)


def test_tridiagonal_laplacian_accuracy():
    """The 1-D Laplacian (2, -1, -1) has det = n + 1 exactly; its transfer matrices are all one
    Jordan block, so any rounding in the rescaled products is amplified (an inexact power-of-two
    scaling once gave 12.646 instead of log(10⁶ + 1) = 13.8155)."""
    n = 10**6
    op = lx.TridiagonalLinearOperator(jnp.full(n, 2.0), -jnp.ones(n - 1), -jnp.ones(n - 1))
    sign, logabsdet = jax.jit(lambda op: lx.slogdet(op, lx.Tridiagonal()))(op)
    assert sign == 1
    np.testing.assert_allclose(logabsdet, np.log(n + 1), rtol=1e-9)


def test_tridiagonal_zero_pivot_and_sign():
    """[[0, 1], [1, 0]] needs pivoting in an LU, not in the continuant: det = -1."""
    op = lx.TridiagonalLinearOperator(jnp.zeros(2), jnp.ones(1), jnp.ones(1))
    sign, logabsdet = lx.slogdet(op, lx.Tridiagonal())
    assert sign == -1 and logabsdet == 0


@pytest.mark.parametrize(
    "operator,solver",
    [
        (lx.MatrixLinearOperator(jnp.asarray([[1.0, 2.0], [2.0, 4.0]])), lx.LU()),
        (lx.DiagonalLinearOperator(jnp.asarray([1.0, 0.0, 3.0])), lx.Diagonal()),
        (
            lx.MatrixLinearOperator(jnp.asarray([[1.0, 0.0], [5.0, 0.0]]), lx.lower_triangular_tag),
            lx.Triangular(),
        ),
        (lx.TridiagonalLinearOperator(jnp.ones(3), jnp.ones(2), jnp.ones(2)), lx.Tridiagonal()),
    ],
    ids=["LU", "Diagonal", "Triangular", "Tridiagonal"],
)
def test_singular_gives_zero_sign_and_minus_inf(operator, solver):
    # det [[1,1,0],[1,1,1],[0,1,1]] = 1(1-1) - 1(1-0) = -1 for the tridiagonal: not singular.
    sign, logabsdet = lx.slogdet(operator, solver)
    ref_sign, ref_log = np.linalg.slogdet(np.asarray(operator.as_matrix()))
    assert sign == ref_sign
    if ref_sign == 0:
        assert logabsdet == -np.inf
    else:
        np.testing.assert_allclose(logabsdet, ref_log, atol=1e-12)


def test_nan_input_gives_nan():
    a = _general()
    a[2, 3] = np.nan
    _, logabsdet = lx.slogdet(lx.MatrixLinearOperator(jnp.asarray(a)), lx.LU())
    assert np.isnan(logabsdet)


def test_float32():
    a = _general(seed=14).astype(np.float32)
    sign, logabsdet = lx.slogdet(lx.MatrixLinearOperator(jnp.asarray(a)), lx.LU())
    assert logabsdet.dtype == jnp.float32 and sign.dtype == jnp.float32
    np.testing.assert_allclose(logabsdet, np.linalg.slogdet(a.astype(np.float64))[1], rtol=1e-5)


def test_empty_operator():
    op = lx.MatrixLinearOperator(jnp.zeros((0, 0)))
    sign, logabsdet = lx.slogdet(op, lx.LU())
    assert sign == 1 and logabsdet == 0


def test_errors_say_what_to_do():
    square = lx.MatrixLinearOperator(jnp.asarray(_general()))
    with pytest.raises(ValueError, match="square"):
        lx.slogdet(lx.MatrixLinearOperator(jnp.ones((3, 2))), lx.QR())
    with pytest.raises(TypeError, match="MatrixLinearOperator"):
        lx.slogdet(jnp.eye(3))
    with pytest.raises(
        TypeError, match=r"CG has no log-determinant.*lx\.LU\(\).*StochasticLanczos"
    ):
        lx.slogdet(square, lx.CG(rtol=1e-6, atol=1e-6))
    with pytest.raises(ValueError, match="Unknown options"):
        lx.slogdet(square, lx.LU(), options={"probes": 3})
    with pytest.raises(TypeError, match="estimator"):
        lx.slogdet(square, lx.LU(), options={"estimator": 64})
    est = lx.StochasticLanczos(num_probes=4, num_steps=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="positive_semidefinite_tag"):
        lx.slogdet(square, lx.CG(rtol=1e-6, atol=1e-6), options={"estimator": est})
    with pytest.raises(ValueError, match="positive integer"):
        lx.Hutchinson(num_probes=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="state"):
        lx.slogdet(square, lx.LU(), state=lx.QR().init(square, {}))


def test_custom_solver_gets_derivatives_for_free():
    """A solver that implements only `logdet` (besides the six methods) is differentiable: the
    default `logdet_tangent` forms A⁻¹ with its `compute`."""

    class InverseSolverWithLogdet(InverseSolver):
        def logdet(self, state, options):
            # det A = 1 / det A⁻¹.
            sign, logabsdet = jnp.linalg.slogdet(state)
            return sign, -logabsdet

    a = jnp.asarray(_general(seed=15))
    f = lambda m: lx.slogdet(lx.MatrixLinearOperator(m), InverseSolverWithLogdet())[1]  # noqa: E731
    np.testing.assert_allclose(f(a), np.linalg.slogdet(np.asarray(a))[1], rtol=1e-12)
    np.testing.assert_allclose(jax.grad(f)(a), np.linalg.inv(np.asarray(a)).T, rtol=1e-9)


def test_hutchinson_derivative_is_unbiased_with_exact_value():
    a = _spd(40, seed=16)
    A = lx.MatrixLinearOperator(jnp.asarray(a))
    exact = np.linalg.inv(a).T

    @jax.jit
    def estimate(key):
        est = lx.Hutchinson(num_probes=32, key=key)
        f = lambda op: lx.slogdet(op, lx.LU(), options={"estimator": est})[1]  # noqa: E731
        return f(A), jax.grad(f)(A).matrix

    values, grads = jax.vmap(estimate)(jax.random.split(jax.random.key(0), 64))
    np.testing.assert_allclose(values, np.linalg.slogdet(a)[1], rtol=1e-12)  # the value is exact
    # The mean of 64 x 32 probes: each entry's standard error is about sd/sqrt(2048); the
    # estimate of entry (i, j) has variance Σ_k≠... bounded by |A⁻ᵀ row|² — use the measured spread.
    mean, spread = grads.mean(0), grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(mean - exact) < 5 * spread + 1e-12)
    assert not np.allclose(
        grads[0], exact, rtol=1e-3
    )  # one estimate is not exact: it is stochastic


def test_stochastic_lanczos_error_falls_like_inverse_sqrt_probes():
    """RMS error over independent keys against the exact value, at 4 and 64 probes: the ratio
    should be about sqrt(64/4) = 4 (accepted between 2.5 and 6.4, a wide margin for 20 keys)."""
    n = 80
    rng = _rng(17)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.logspace(0, 2, n)
    a = (q * eig) @ q.T
    A = lx.MatrixLinearOperator(jnp.asarray(a), lx.positive_semidefinite_tag)
    exact = np.sum(np.log(eig))
    solver = lx.CG(rtol=1e-10, atol=1e-10)

    def rms(num_probes):
        def one(key):
            est = lx.StochasticLanczos(num_probes=num_probes, num_steps=30, key=key)
            return lx.slogdet(A, solver, options={"estimator": est})[1]

        values = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(num_probes), 20))
        return np.sqrt(np.mean((np.asarray(values) - exact) ** 2))

    few, many = rms(4), rms(64)
    assert 2.5 < few / many < 6.4, (few, many)
    assert many / abs(exact) < 0.03


def test_stochastic_lanczos_gradient_and_exact_quadrature():
    """With num_steps = n the quadrature is exact for each probe, so the only error is
    Hutchinson's; and the gradient estimate averages to A⁻ᵀ (symmetric here)."""
    n = 30
    a = _spd(n, seed=18)
    A = lx.MatrixLinearOperator(jnp.asarray(a), lx.positive_semidefinite_tag)
    solver = lx.CG(rtol=1e-12, atol=1e-12)

    @jax.jit
    def one(key):
        est = lx.StochasticLanczos(num_probes=16, num_steps=n, key=key)
        f = lambda op: lx.slogdet(op, solver, options={"estimator": est})[1]  # noqa: E731
        return f(A), jax.grad(f)(A).matrix

    values, grads = jax.vmap(one)(jax.random.split(jax.random.key(1), 128))
    exact = np.linalg.slogdet(a)[1]
    assert abs(values.mean() - exact) < 5 * values.std() / np.sqrt(values.shape[0])
    mean, spread = grads.mean(0), grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(mean - np.linalg.inv(a).T) < 5 * spread + 1e-10)
