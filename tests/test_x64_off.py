"""linopx with x64 disabled, as most users run JAX. The rest of the suite runs with x64 on (see
conftest.py), a process-wide setting that no test may flip under the others. So a representative
script runs in a fresh interpreter with `JAX_ENABLE_X64=0` and JAX's default (standard) dtype
promotion: dense solves, least squares, structured solvers, derivatives, `vmap`, `jit`, `invert`,
a sparse direct solve, iterative solves, complex64, and a failed solve. Every answer is checked
against NumPy in float64 from the same (float32) numbers.

The script prints one line per check and a final count; the test fails if the interpreter exits
with an error, if any check failed, or if fewer checks ran than expected.

Tolerances, norm-wise relative (see test_single_precision.py for the reasoning): direct solves and
their derivatives 1e-5 (>= n kappa² u with n <= 8, kappa <= 3, u = 6e-8; the sparse matrix has
n = 30 but kappa = 2.3 and is solved without a least-squares term: n kappa u = 4e-6); iterative
solves with rtol = 1e-5 and kappa <= 5: 2e-4.

(Run time: a fresh interpreter imports JAX and compiles every solve anew, ~10 s; the checks are
chosen to cover the code paths whose dtypes depend on x64, not every solver.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from helpers import make_matrix, random_vector
import linopx as lx

assert not jax.config.jax_enable_x64, "x64 is on: the environment did not switch it off"
assert jnp.asarray(1.0).dtype == jnp.float32

DIRECT, ITERATIVE = 1e-5, 2e-4
rng = np.random.default_rng(0)
failures, passed = [], []


def wide(x):
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def close(x, ref, rtol, dtype=np.float32):
    assert np.asarray(x).dtype == dtype, f"dtype {np.asarray(x).dtype}, expected {dtype}"
    err = np.linalg.norm(wide(x) - wide(ref)) / np.linalg.norm(wide(ref))
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def check(fn):
    try:
        fn()
    except Exception:
        failures.append(fn.__name__)
        print(f"FAIL {fn.__name__}\n{traceback.format_exc()}", flush=True)
    else:
        passed.append(fn.__name__)
        print(f"ok {fn.__name__}", flush=True)


a = make_matrix(rng, (6, 6), np.float32)
b = random_vector(rng, 6, np.float32)
spd = make_matrix(rng, (6, 6), np.float32, "spd")
tall = make_matrix(rng, (8, 5), np.float32)
bt = random_vector(rng, 8, np.float32)


@check
def lu_solve():
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value
    close(x, np.linalg.solve(wide(a), wide(b)), DIRECT)


@check
def python_floats_default_to_float32():
    # Inputs without a dtype (Python lists of floats) become float32 with x64 off.
    m, v = jnp.asarray([[2.0, 1.0], [1.0, 3.0]]), jnp.asarray([1.0, 2.0])
    x = lx.linear_solve(lx.MatrixLinearOperator(m), v).value
    close(x, np.linalg.solve([[2.0, 1.0], [1.0, 3.0]], [1.0, 2.0]), DIRECT)


@check
def auto_least_squares_and_structured():
    x = lx.linear_solve(lx.MatrixLinearOperator(tall), bt).value
    close(x, np.linalg.lstsq(wide(tall), wide(bt), rcond=None)[0], DIRECT)
    op = lx.MatrixLinearOperator(spd, lx.positive_semidefinite_tag)
    assert isinstance(lx.AutoLinearSolver(well_posed=None).select_solver(op), lx.Cholesky)
    close(lx.linear_solve(op, b).value, np.linalg.solve(wide(spd), wide(b)), DIRECT)
    d = jnp.asarray(rng.uniform(2, 3, 6), jnp.float32)
    lo, up = (jnp.asarray(rng.uniform(-0.5, 0.5, 5), jnp.float32) for _ in range(2))
    dense = np.diag(wide(d)) + np.diag(wide(lo), -1) + np.diag(wide(up), 1)
    x = lx.linear_solve(lx.TridiagonalLinearOperator(d, lo, up), b).value
    close(x, np.linalg.solve(dense, wide(b)), DIRECT)


@check
def rank_deficient_pseudoinverse():
    # float32 rounding leaves the "zero" singular values at ~1e-7: the default rcond must cut them.
    r = make_matrix(rng, (7, 5), np.float32, "rank_deficient(3)")
    br = random_vector(rng, 7, np.float32)
    ref = np.linalg.pinv(wide(r), rcond=1e-4) @ wide(br)
    for solver in (lx.SVD(), lx.PivotedQR()):
        close(lx.linear_solve(lx.MatrixLinearOperator(r), br, solver).value, ref, DIRECT)


@check
def gradients():
    # loss = |x|², x = A⁻¹ b: d/db = A⁻ᵀ (2x), d/dA = -(A⁻ᵀ 2x) xᵀ.
    loss = lambda a, b: jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value ** 2)
    ga, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    x = np.linalg.solve(wide(a), wide(b))
    lam = np.linalg.solve(wide(a).T, 2 * x)
    close(gb, lam, DIRECT)
    close(ga, -np.outer(lam, x), DIRECT)


@check
def jvp_least_squares():
    # x = A⁺ b for a tall full-rank A: dx = A⁺ (db - dA x) + (AᵀA)⁻¹ dAᵀ (b - A x).
    da = make_matrix(rng, (8, 5), np.float32)
    db = random_vector(rng, 8, np.float32)
    f = lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.QR()).value
    _, dx = jax.jit(lambda *args: jax.jvp(f, args[:2], args[2:]))(tall, bt, da, db)
    A, B, dA, dB = map(wide, (tall, bt, da, db))
    x = np.linalg.lstsq(A, B, rcond=None)[0]
    ref = np.linalg.pinv(A) @ (dB - dA @ x) + np.linalg.solve(A.T @ A, dA.T @ (B - A @ x))
    close(dx, ref, DIRECT)


@check
def vmap_and_jit():
    bs = np.stack([random_vector(rng, 6, np.float32) for _ in range(3)])
    ms = np.stack([make_matrix(rng, (6, 6), np.float32) for _ in range(3)])
    solve = lambda m, v: lx.linear_solve(lx.MatrixLinearOperator(m), v, lx.LU()).value
    both = lambda a, bs, ms: (jax.vmap(solve, in_axes=(None, 0))(a, bs), jax.vmap(solve)(ms, bs))
    over_b, over_both = jax.jit(both)(a, bs, ms)
    close(over_b, np.linalg.solve(wide(a), wide(bs).T).T, DIRECT)
    for i in range(3):
        close(over_both[i], np.linalg.solve(wide(ms[i]), wide(bs[i])), DIRECT)


@check
def invert_operator():
    inv = lx.invert(lx.MatrixLinearOperator(tall), lx.QR())
    p = np.linalg.pinv(wide(tall))
    close(inv.mv(bt), p @ wide(bt), DIRECT)
    c = random_vector(rng, 5, np.float32)
    close(inv.T.mv(c), p.T @ wide(c), DIRECT)


@check
def complex64_solves():
    ac = make_matrix(rng, (6, 6), np.complex64)
    bc = random_vector(rng, 6, np.complex64)
    ref = np.linalg.solve(wide(ac), wide(bc))
    x = lx.linear_solve(lx.MatrixLinearOperator(ac), bc, lx.LU()).value
    close(x, ref, DIRECT, np.complex64)
    qr = jax.jit(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.QR()).value)
    close(qr(ac, bc), ref, DIRECT, np.complex64)


@check
def sparse_direct_solve():
    # Diagonally dominant, condition number 2.3.
    m = (sp.random(30, 30, density=0.1, random_state=1) + 4 * sp.eye(30)).astype(np.float32)
    v = random_vector(rng, 30, np.float32)
    op = lx.SparseCOOLinearOperator.from_scipy(m)
    ref = np.linalg.solve(m.toarray().astype(np.float64), wide(v))
    close(jax.jit(lambda op, v: lx.linear_solve(op, v, lx.SparseLU()).value)(op, v), ref, DIRECT)
    # The derivative w.r.t. the right-hand side: (A⁻ᵀ) applied to the cotangent.
    g = jax.grad(lambda v: jnp.sum(lx.linear_solve(op, v).value))(v)
    close(g, np.linalg.solve(m.toarray().astype(np.float64).T, np.ones(30)), DIRECT)


@check
def iterative_solves():
    # CG (one loop, then a true-residual check) and GMRES (restarts in an outer loop), the two
    # loop structures of linopx's Krylov solvers; the derivative w.r.t. b is a transposed CG solve.
    op = lx.MatrixLinearOperator(spd, lx.positive_semidefinite_tag)
    cg = lx.CG(rtol=1e-5, atol=0.0)
    sol = lx.linear_solve(op, b, cg)
    assert sol.result == lx.RESULTS.successful
    close(sol.value, np.linalg.solve(wide(spd), wide(b)), ITERATIVE)
    g = jax.grad(lambda v: jnp.sum(lx.linear_solve(op, v, cg).value))(b)
    close(g, np.linalg.solve(wide(spd), np.ones(6)), ITERATIVE)
    ns = (make_matrix(rng, (6, 6), np.float32) / 3 + 1.5 * np.eye(6)).astype(np.float32)
    x = lx.linear_solve(lx.MatrixLinearOperator(ns), b, lx.GMRES(rtol=1e-5, atol=0.0)).value
    close(x, np.linalg.solve(wide(ns), wide(b)), ITERATIVE)


@check
def failed_solve_reports_and_raises():
    s = jnp.asarray([[1.0, 2.0], [2.0, 4.0]])
    sol = lx.linear_solve(lx.MatrixLinearOperator(s), jnp.ones(2), lx.LU(), throw=False)
    assert sol.result == lx.RESULTS.singular
    try:
        lx.linear_solve(lx.MatrixLinearOperator(s), jnp.ones(2), lx.LU()).value.block_until_ready()
    except Exception as e:
        assert "singular" in str(e), str(e)
    else:
        raise AssertionError("a singular solve with throw=True did not raise")


print(f"{len(passed)} passed, {len(failures)} failed: {failures}")
sys.exit(1 if failures else 0)
"""

# Every check above, by name: the test fails if one of them did not run.
CHECKS = [
    "lu_solve",
    "python_floats_default_to_float32",
    "auto_least_squares_and_structured",
    "rank_deficient_pseudoinverse",
    "gradients",
    "jvp_least_squares",
    "vmap_and_jit",
    "invert_operator",
    "complex64_solves",
    "sparse_direct_solve",
    "iterative_solves",
    "failed_solve_reports_and_raises",
]


def test_representative_solves_with_x64_disabled():
    env = dict(os.environ)
    env["JAX_ENABLE_X64"] = "0"
    env.pop("JAX_NUMPY_DTYPE_PROMOTION", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert [line.removeprefix("ok ") for line in lines if line.startswith("ok ")] == CHECKS, report
    assert lines[-1] == f"{len(CHECKS)} passed, 0 failed: []", report
