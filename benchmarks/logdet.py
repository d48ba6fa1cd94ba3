"""Log-determinant benchmarks: `lx.slogdet` against the same log-determinant written by hand.

    python benchmarks/logdet.py           # full sizes
    python benchmarks/logdet.py --quick   # small sizes, a smoke test
    python -m benchmarks --suites logdet --out /tmp/logdet   # as part of the report machinery

Rows:

- "GP NLL value+grad": `jax.jit(jax.value_and_grad(nll))` of a Gaussian process's negative log
  likelihood `½ yᵀK⁻¹y + ½ log|K| + (n/2) log 2π` with respect to three log-hyperparameters (RBF
  lengthscale, signal variance, noise variance). linopx: `lx.Cholesky()` with one state shared by
  `lx.linear_solve` and `lx.slogdet`; "cho_factor": the same by hand with
  `jax.scipy.linalg.cho_factor` / `cho_solve` and `2 Σ log L_ii`; "linopx, no shared state" (a
  note): `linear_solve` and `slogdet` each make their own state, so the traced program holds two
  Cholesky factorizations of the same matrix. XLA's common-subexpression elimination merges them
  under `jit` (the compiled program has one `potrf` either way, and the times agree); sharing the
  state makes one factorization certain, also outside `jit`.
- "sparse slogdet value": the 5-point Laplacian on a k x k grid. linopx: `lx.slogdet(A,
  lx.SparseLU(backend="superlu"))` under `jit`, from the values; "splu": SciPy's
  `splu(A, permc_spec="MMD_AT_PLUS_A")` on the CSC matrix (the ordering linopx's SuperLU backend
  picks for a symmetric pattern), then `Σ log|U_ii|` and the sign from `U`'s diagonal and the
  parities of both permutations. Measured only when `SparseLU` has a `logdet`. "value+grad" (a
  note) is linopx's `jax.value_and_grad` with respect to the nonzeros (selected inversion), which
  SciPy has no counterpart for.
- "SLQ logdet": the opt-in `StochasticLanczos` estimate against matfree's stochastic Lanczos
  quadrature (same probes count, steps, reorthogonalisation), time and RMS error over 16 keys.
- "tridiagonal slogdet value" / "value+grad": `lx.TridiagonalLinearOperator` with `lx.Tridiagonal()`
  at n = 10⁶, random and strictly diagonally dominant. "lax.scan": the pivots of Gaussian
  elimination without pivoting in log form, `r_k = d_k - l_{k-1} u_{k-1} / r_{k-1}`,
  `log|det| = Σ log|r_k|` (what one writes by hand in JAX: O(n), no overflow, exact for a
  diagonally dominant matrix, differentiable by `jax.grad` through the scan); "LAPACK gttrf" (value
  only): SciPy's `dgttrf` (tridiagonal LU with partial pivoting) on the host. `jnp.linalg.slogdet`
  cannot run at this size: the dense matrix alone is n² float64 = 8 TB. The accuracy notes compare
  with LAPACK, and with the exact `log(n + 1)` of the 1-D Laplacian (2 on the diagonal, -1 beside
  it) of the same size, a hard case for any product of transfer matrices (they are all the same
  Jordan block).

Every call gets fresh values: each implementation cycles through a pool of distinct inputs at
least as long as its warm-up plus repetitions for the sparse row (so that no factorization cache
can answer), and through a few for the others (which have no cache). Times are medians of
interleaved repetitions after warm-up (`benchmarks/_timing.py`); ratios are linopx / alternative.
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import linopx as lx  # noqa: E402
from benchmarks._timing import fmt_time, interleaved, row, suite_main  # noqa: E402


def cycling(fn, pool):
    """A zero-argument callable that calls `fn(*args)` with the next `args` of `pool` each time."""
    state = {"i": 0}

    def call():
        args = pool[state["i"] % len(pool)]
        state["i"] += 1
        return fn(*args)

    return call


# ---------------------------------------------------------------------------------------------
# Gaussian-process negative log likelihood


def _kernel(log_params, x):
    log_lengthscale, log_signal, log_noise = log_params
    sq_dist = (x[:, None] - x[None, :]) ** 2
    k = jnp.exp(log_signal) * jnp.exp(-0.5 * sq_dist / jnp.exp(2 * log_lengthscale))
    return k + jnp.exp(log_noise) * jnp.eye(x.shape[0])


def _nll_linopx(log_params, x, y):
    K = lx.MatrixLinearOperator(_kernel(log_params, x), lx.positive_semidefinite_tag)
    solver = lx.Cholesky()
    state = solver.init(K, {})
    alpha = lx.linear_solve(K, y, solver, state=state).value
    _, logdet = lx.slogdet(K, solver, state=state)
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def _nll_unshared(log_params, x, y):
    K = lx.MatrixLinearOperator(_kernel(log_params, x), lx.positive_semidefinite_tag)
    alpha = lx.linear_solve(K, y, lx.Cholesky()).value
    _, logdet = lx.slogdet(K, lx.Cholesky())
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def _nll_cho(log_params, x, y):
    factor = jsl.cho_factor(_kernel(log_params, x), lower=True)
    alpha = jsl.cho_solve(factor, y)
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(factor[0])))
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def gp_case(n, repeats):
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.sort(rng.uniform(0.0, 10.0, n)))
    y = jnp.asarray(np.sin(np.asarray(x)) + 0.1 * rng.standard_normal(n))
    pool = [
        (jnp.log(jnp.asarray([0.5 + 0.1 * i, 1.0 + 0.05 * i, 0.05 + 0.01 * i])), x, y)
        for i in range(5)
    ]
    fns = {
        "linopx": jax.jit(jax.value_and_grad(_nll_linopx)),
        "cho_factor": jax.jit(jax.value_and_grad(_nll_cho)),
        "linopx, no shared state": jax.jit(jax.value_and_grad(_nll_unshared)),
    }
    (v, g), (v_ref, g_ref) = fns["linopx"](*pool[0]), fns["cho_factor"](*pool[0])
    value_diff = float(abs(v - v_ref) / abs(v_ref))
    grad_diff = float(jnp.max(jnp.abs(g - g_ref)) / jnp.max(jnp.abs(g_ref)))
    assert value_diff < 1e-9 and grad_diff < 1e-9, (value_diff, grad_diff)
    times = interleaved({k: cycling(f, pool) for k, f in fns.items()}, repeats)
    unshared = times.pop("linopx, no shared state")
    return [
        row(
            "GP NLL value+grad",
            f"n={n}",
            times,
            **{
                "linopx, no shared state": fmt_time(unshared),
                "rel. diff (value, grad)": f"{value_diff:.0e}, {grad_diff:.0e}",
            },
        )
    ]


# ---------------------------------------------------------------------------------------------
# Sparse: 2-D Poisson


def has_sparse_logdet() -> bool:
    return lx.SparseLU.logdet is not lx.AbstractLinearSolver.logdet


def _poisson_2d(k):
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    return (sp.kron(eye, t) + sp.kron(t, eye)).tocoo()


def permutation_parity(p: np.ndarray) -> int:
    """±1: the sign of the permutation `p`, from its number of cycles, found by pointer doubling
    (O(n log n), vectorised): every element ends labelled by the smallest index on its cycle."""
    n = p.shape[0]
    label = np.arange(n)
    jump = np.asarray(p)
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2)))) + 1)):
        label = np.minimum(label, label[jump])
        jump = jump[jump]
    cycles = int(np.count_nonzero(label == np.arange(n)))
    return -1 if (n - cycles) % 2 else 1


def splu_slogdet(csc):
    """`(sign, log|det|)` from SciPy's `splu`: `Pr A Pc = L U` with unit-diagonal `L`."""
    from scipy.sparse.linalg import splu

    lu = splu(csc, permc_spec="MMD_AT_PLUS_A")
    d = lu.U.diagonal()
    sign = permutation_parity(lu.perm_r) * permutation_parity(lu.perm_c)
    sign *= -1 if np.count_nonzero(d < 0) % 2 else 1
    return float(sign), float(np.sum(np.log(np.abs(d))))


def sparse_case(k, repeats, warmup=2):
    import scipy.sparse as sp

    a = _poisson_2d(k)
    n = a.shape[0]
    rng = np.random.default_rng(0)
    rows, cols = a.row, a.col
    # Fresh values at every call: the Poisson values times 1 + 0.1 u, u ~ U(0, 1) per entry, kept
    # symmetric (the same factor for (i, j) and (j, i)) so that the matrix stays positive definite.
    size = warmup + repeats
    upper = rows <= cols
    pos = {(i, j): m for m, (i, j) in enumerate(zip(rows[upper], cols[upper]))}
    sym_index = np.array([pos[(min(i, j), max(i, j))] for i, j in zip(rows, cols)])
    values = [
        a.data * (1 + 0.1 * rng.uniform(size=int(upper.sum())))[sym_index] for _ in range(size)
    ]
    cscs = [sp.coo_matrix((v, (rows, cols)), (n, n)).tocsc() for v in values]
    jvalues = [jnp.asarray(v) for v in values]
    solver = lx.SparseLU(backend="superlu")

    def logdet(v):
        op = lx.SparseCOOLinearOperator(v, rows, cols, (n, n))
        return lx.slogdet(op, solver)

    fwd = jax.jit(logdet)
    grad = jax.jit(jax.value_and_grad(lambda v: logdet(v)[1]))
    sign, value = fwd(jvalues[0])
    ref_sign, ref_value = splu_slogdet(cscs[0])
    diff = abs(float(value) - ref_value) / abs(ref_value)
    assert float(sign) == ref_sign and diff < 1e-12, (float(sign), ref_sign, diff)
    fns = {
        "linopx": cycling(fwd, [(v,) for v in jvalues]),
        "splu": cycling(splu_slogdet, [(c,) for c in cscs]),
    }
    times = interleaved(fns, repeats, warmup)
    # The gradient alone (no SciPy counterpart), with its own fresh values.
    grad_times = interleaved(
        {"grad": cycling(grad, [(v * 1.01,) for v in jvalues])}, repeats, warmup
    )
    return [
        row(
            "sparse slogdet value",
            f"{k}^2",
            times,
            **{
                "linopx value+grad": fmt_time(grad_times["grad"]),
                "rel. diff vs splu": f"{diff:.0e}",
            },
        )
    ]


# ---------------------------------------------------------------------------------------------
# Tridiagonal


def _tridiagonal_linopx(d, lower, upper):
    return lx.slogdet(lx.TridiagonalLinearOperator(d, lower, upper), lx.Tridiagonal())[1]


def _tridiagonal_scan(d, lower, upper):
    """`log|det|` from the pivots `r_k = d_k - l_{k-1} u_{k-1} / r_{k-1}` (no pivoting), by scan."""
    products = jnp.concatenate([jnp.zeros((1,), d.dtype), lower * upper])

    def step(r_prev, x):
        d_k, p_k = x
        r = d_k - p_k / r_prev
        return r, jnp.log(jnp.abs(r))

    _, logs = jax.lax.scan(step, jnp.ones((), d.dtype), (d, products))
    return jnp.sum(logs)


def gttrf_slogdet(d, lower, upper):
    """`log|det|` by LAPACK's tridiagonal LU with partial pivoting (SciPy's `dgttrf`, host)."""
    from scipy.linalg.lapack import dgttrf

    _, u_diag, _, _, _, info = dgttrf(lower, d, upper)
    if info < 0:
        raise ValueError(f"dgttrf: argument {-info} is invalid")
    return float(np.sum(np.log(np.abs(u_diag))))


def tridiagonal_case(n, repeats):
    rng = np.random.default_rng(0)
    pool_np = [
        (rng.uniform(2.0, 3.0, n), rng.uniform(-1.0, 1.0, n - 1), rng.uniform(-1.0, 1.0, n - 1))
        for _ in range(3)
    ]
    pool = [tuple(jnp.asarray(a) for a in args) for args in pool_np]
    value = {
        "linopx": jax.jit(_tridiagonal_linopx),
        "lax.scan": jax.jit(_tridiagonal_scan),
    }
    value_grad = {
        name: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
        for name, f in (("linopx", _tridiagonal_linopx), ("lax.scan", _tridiagonal_scan))
    }
    reference = gttrf_slogdet(*pool_np[0])
    linopx_value = float(value["linopx"](*pool[0]))
    scan_value = float(value["lax.scan"](*pool[0]))
    diff = abs(linopx_value - reference) / abs(reference)
    scan_diff = abs(scan_value - reference) / abs(reference)
    assert diff < 1e-10 and scan_diff < 1e-10, (diff, scan_diff)
    (_, g), (_, g_scan) = value_grad["linopx"](*pool[0]), value_grad["lax.scan"](*pool[0])
    grad_diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(g, g_scan))
    assert grad_diff < 1e-8, grad_diff
    # The 1-D Laplacian of the same size: det = n + 1 exactly.
    laplacian = (jnp.full(n, 2.0), jnp.full(n - 1, -1.0), jnp.full(n - 1, -1.0))
    laplacian_error = abs(float(value["linopx"](*laplacian)) - float(np.log(n + 1)))

    fns = {k: cycling(f, pool) for k, f in value.items()}
    fns["LAPACK gttrf"] = cycling(gttrf_slogdet, pool_np)
    times = interleaved(fns, repeats)
    grad_times = interleaved({k: cycling(f, pool) for k, f in value_grad.items()}, repeats)
    size = f"n={n}"
    return [
        row(
            "tridiagonal slogdet value",
            size,
            times,
            **{
                "rel. diff vs LAPACK": f"{diff:.0e}",
                "1-D Laplacian abs. error": f"{laplacian_error:.0e}",
                "jnp.linalg.slogdet": f"n² memory ({8 * n * n / 1e12:.0f} TB)"
                if n >= 10**5
                else "",
            },
        ),
        row(
            "tridiagonal slogdet value+grad",
            size,
            grad_times,
            **{"rel. diff (grad)": f"{grad_diff:.0e}"},
        ),
    ]


def _slq_matrix(n):
    """A symmetric positive definite matrix with eigenvalues spread over [1, 100]."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.logspace(0, 2, n)
    return jnp.asarray((q * eig) @ q.T), float(np.sum(np.log(eig)))


def slq_case(n, num_probes, num_steps, repeats):
    """Stochastic Lanczos quadrature: linopx's opt-in `StochasticLanczos` against matfree's
    `funm.monte_carlo_funm_sym_logdet` (the reference implementation of the method in JAX), same
    number of Rademacher probes and Lanczos steps with full reorthogonalisation, same matrix.
    Times are for one estimate under `jit`; the error is the RMS over 16 keys against the exact
    value."""
    a, exact = _slq_matrix(n)
    A = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)

    def ours(key):
        est = lx.StochasticLanczos(num_probes=num_probes, num_steps=num_steps, key=key)
        return lx.slogdet(A, lx.CG(rtol=1e-8, atol=1e-8), options={"estimator": est})[1]

    fns = {"linopx": jax.jit(ours)}
    try:
        from matfree import decomp, funm, stochtrace
    except ImportError:
        matfree = None
    else:
        tridiag = decomp.tridiag_sym(num_steps, reortho="full")
        integrand = funm.monte_carlo_funm_sym_logdet(tridiag)
        sampler = stochtrace.sampler_signs(jnp.zeros(n), num=num_probes)
        matfree = stochtrace.estimator_monte_carlo(integrand, sampler=sampler)
        fns["matfree"] = jax.jit(lambda key: matfree(lambda v: a @ v, key))
    keys = jax.random.split(jax.random.key(0), 16)
    errors = {
        name: float(np.sqrt(np.mean([(float(f(k)) - exact) ** 2 for k in keys])))
        for name, f in fns.items()
    }
    times = interleaved({k: (lambda f=f: f(keys[0])) for k, f in fns.items()}, repeats)
    notes = {f"RMS rel. error ({name})": f"{err / abs(exact):.1e}" for name, err in errors.items()}
    if matfree is None:
        notes["matfree"] = "not installed (pip install matfree)"
    return [row(f"SLQ logdet ({num_probes} probes, {num_steps} steps)", f"n={n}", times, **notes)]


# ---------------------------------------------------------------------------------------------


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs; each thunk returns a list of rows (`_timing.row`)."""
    repeats = 5 if quick else 20
    n_gp = 100 if quick else 500
    k = 30 if quick else 300
    n_tri = 10**4 if quick else 10**6
    out = [(f"GP NLL n={n_gp}", lambda: gp_case(n_gp, repeats))]
    if has_sparse_logdet():
        out.append((f"sparse slogdet {k}^2", lambda: sparse_case(k, 3 if quick else 7)))
    out.append((f"tridiagonal n={n_tri}", lambda: tridiagonal_case(n_tri, 3 if quick else 10)))
    n_slq = 200 if quick else 1000
    out.append((f"SLQ n={n_slq}", lambda: slq_case(n_slq, 32, 30, 3 if quick else 10)))
    return out


def notes() -> list[str]:
    if has_sparse_logdet():
        return []
    return ["note: `SparseLU` has no `logdet` in this version; the sparse row is skipped"]


def report_notes(rows: list[dict]) -> list[str]:
    lines = [
        (
            "Log-determinant rows: linopx's `slogdet` against the same quantity written by hand "
            "(see `benchmarks/logdet.py`). Every call gets fresh values."
        ),
    ]
    lines += notes()
    return [*lines, ""]


if __name__ == "__main__":
    suite_main(__doc__, cases, notes())
