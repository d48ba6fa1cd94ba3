"""Single precision: every dense direct solver and every iterative solver in float32 and complex64,
forward and reverse mode, against float64/complex128 references computed from the same (already
rounded) inputs. The rest of the suite runs in double precision; this file checks that nothing is
silently promoted to it (outputs keep the input dtype) and that thresholds that depend on the
precision (pivot checks, `rcond` defaults, stopping tests) work at float32's.

(The session has x64 enabled, as everywhere in this suite: arrays created as float32/complex64 stay
so. `test_x64_off.py` runs solves with x64 disabled, as most users do.)

Tolerances, compared norm-wise: ||x - x_ref|| <= rtol ||x_ref||.
- Direct solvers are backward stable: the computed x solves (A + dA) x = b with |dA| <= c(n) u |A|,
  u = 2⁻²⁴ ≈ 6e-8 the unit roundoff of float32 (complex64 likewise). The forward error is then
  about c(n) kappa u for a square system and c(n) kappa² u for least squares with a residual (the
  same orders for the derivative solves, whose right-hand sides carry the primal solution). Here
  n <= 8 and kappa <= 3 (`helpers.make_matrix`): n kappa² u ≈ 4e-6; we allow `DIRECT_RTOL` = 1e-5
  (measured: at most 1e-6). A wrong conjugation or transposition gives errors of order one, a
  computation leaking into half precision ~1e-3.
- Iterative solvers stop when the true residual is at most rtol |b| (rtol = `ITER_RTOL` = 1e-5,
  comfortably above float32's attainable ~ n kappa u ≈ 4e-6 for these n <= 12). Then
  ||x - x_ref|| <= ||A⁻¹|| ||r|| <= kappa rtol ||x_ref||: with kappa <= 5 that is 5e-5 (and
  kappa² rtol ≈ 1e-4 for least squares, where the tests are on |Aᴴ r|). We allow
  `ITER_CHECK` = 2e-4.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import is_complex, make_matrix, pinv_jvp, pinv_vjp, random_vector, tags_for_kind

import linopx as lx

DTYPES = [np.float32, np.complex64]
DTYPE_IDS = ["float32", "complex64"]
DIRECT_RTOL = 1e-5
ITER_RTOL = 1e-5
ITER_CHECK = 2e-4


def _wide(x):
    """The same numbers in double precision."""
    x = np.asarray(x)
    return x.astype(np.complex128 if is_complex(x.dtype) else np.float64)


def assert_close(x, ref, rtol, what=""):
    x, ref = _wide(x), _wide(ref)
    err = np.linalg.norm(x - ref) / np.linalg.norm(ref)
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


# (id, solver, matrix kind, shape). Every dense direct solver, the two least-squares shapes, and
# the rank-deficient case where the default `rcond` (eps * max(m, n) of the *working* dtype) must
# cut off the singular values that float32 rounding left at ~eps |A|.
DIRECT_CASES = [
    ("lu", lx.LU(), "general", (6, 6)),
    ("cholesky", lx.Cholesky(), "spd", (6, 6)),
    ("triangular", lx.Triangular(), "upper", (6, 6)),
    ("diagonal", lx.Diagonal(), "diagonal", (6, 6)),
    ("tridiagonal", lx.Tridiagonal(), "tridiagonal", (6, 6)),
    ("qr-tall", lx.QR(), "general", (8, 5)),
    ("pivoted-qr-rank3-tall", lx.PivotedQR(), "rank_deficient(3)", (8, 6)),
    ("svd-rank3-wide", lx.SVD(), "rank_deficient(3)", (6, 8)),
]


def _tangent(rng, a, kind):
    """A direction dA that keeps A in its class (the tags stay true, the rank stays the same)."""
    m, n = a.shape
    dtype = a.dtype
    if kind.startswith("rank_deficient"):
        # d/dh (I + hY) A (I + hX) at 0: rank-preserving.
        y = make_matrix(rng, (m, m), dtype)
        x = make_matrix(rng, (n, n), dtype)
        return (y @ a + a @ x).astype(dtype)
    if kind in ("general", "spd", "upper", "diagonal", "tridiagonal"):
        # A matrix of the same kind: for "spd" Hermitian (any sign is fine for a tangent), for the
        # others the same sparsity pattern.
        return make_matrix(rng, (m, n), dtype, kind)
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DIRECT_CASES, ids=[c[0] for c in DIRECT_CASES])
def test_direct_solver_single_precision(case, dtype, rng):
    """The solution, a JVP (w.r.t. matrix and vector) and a VJP, in one compiled program, against
    NumPy references in double precision from the same numbers."""
    _, solver, kind, shape = case
    a = make_matrix(rng, shape, dtype, kind)
    b = random_vector(rng, shape[0], dtype)
    da = _tangent(rng, a, kind)
    db = random_vector(rng, shape[0], dtype)
    u = random_vector(rng, shape[1], dtype)
    tags = tags_for_kind(kind, dtype)

    def f(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value

    @jax.jit
    def everything(a, b, da, db, u):
        x, dx = jax.jvp(f, (a, b), (da, db))
        ga, gb = jax.vjp(f, a, b)[1](u)
        return x, dx, ga, gb

    x, dx, ga, gb = everything(a, b, da, db, u)
    for name, out in (("x", x), ("dx", dx), ("ga", ga), ("gb", gb)):
        assert out.dtype == dtype, (name, out.dtype)  # not promoted to double precision
    # The reference treats singular values below 1e-4 |A| as zero: for the rank-deficient cases
    # those are float32's rounding of exact zeros (~1e-7), for the others there are none (>= 1).
    x_ref, dx_ref = pinv_jvp(_wide(a), _wide(b), _wide(da), _wide(db), 1e-4)
    ga_ref, gb_ref = pinv_vjp(_wide(a), _wide(b), _wide(u), 1e-4)
    assert_close(x, x_ref, DIRECT_RTOL, "x")
    assert_close(dx, dx_ref, DIRECT_RTOL, "jvp")
    assert_close(gb, gb_ref, DIRECT_RTOL, "vjp wrt b")
    if kind.startswith("rank_deficient"):
        # Only the rank-preserving part of the cotangent w.r.t. A is meaningful (the pseudoinverse
        # is not differentiable across a change of rank): the dot-product test along dA.
        lhs = np.real(np.sum(_wide(u) * _wide(dx)))
        rhs = np.real(np.sum(_wide(ga) * _wide(da)) + np.sum(_wide(gb) * _wide(db)))
        assert abs(lhs - rhs) <= DIRECT_RTOL * np.linalg.norm(_wide(u)) * np.linalg.norm(_wide(dx))
    else:
        assert_close(ga, ga_ref, DIRECT_RTOL, "vjp wrt A")


# ---------------------------------------------------------------------------------------------
# Iterative solvers


def _nonsymmetric(rng, n, dtype):
    # Singular values of G / 3 in [1/3, 1]; shifted by 1.5 I: singular values in [0.5, 2.5]
    # (kappa <= 5) and eigenvalues away from the origin, which BiCGStab and GMRES need.
    return (make_matrix(rng, (n, n), dtype) / 3 + 1.5 * np.eye(n)).astype(dtype)


def _iterative_problem(name, rng, dtype):
    """`(matrix, tags)` suiting each method."""
    n = 10
    if name == "CG":
        return make_matrix(rng, (n, n), dtype, "spd"), (lx.positive_semidefinite_tag,)
    if name == "MINRES":
        if is_complex(dtype):
            # MINRES accepts complex operators only if tagged (Hermitian) semidefinite.
            return make_matrix(rng, (n, n), dtype, "spd"), (lx.positive_semidefinite_tag,)
        # Real symmetric indefinite: eigenvalues of both signs, |lambda| in [1, 3].
        return make_matrix(rng, (n, n), dtype, "symmetric"), (lx.symmetric_tag,)
    if name in ("BiCGStab", "GMRES"):
        return _nonsymmetric(rng, n, dtype), ()
    return make_matrix(rng, (12, 7), dtype), ()  # LSQR, LSMR: tall, with a residual


ITERATIVE = {
    "CG": lx.CG(rtol=ITER_RTOL, atol=0.0),
    "BiCGStab": lx.BiCGStab(rtol=ITER_RTOL, atol=0.0),
    "GMRES": lx.GMRES(rtol=ITER_RTOL, atol=0.0),
    "MINRES": lx.MINRES(rtol=ITER_RTOL, atol=0.0),
    "LSQR": lx.LSQR(rtol=ITER_RTOL, atol=0.0),
    "LSMR": lx.LSMR(rtol=ITER_RTOL, atol=0.0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(ITERATIVE))
def test_iterative_solver_single_precision(name, dtype, rng):
    """Solution and VJP w.r.t. the vector (the transposed solve, in single precision too) in one
    compiled program, against float64. (How the derivative w.r.t. the operator is assembled from
    such solves does not depend on the dtype; test_iterative.py checks it in float64.)"""
    a, tags = _iterative_problem(name, rng, dtype)
    b = random_vector(rng, a.shape[0], dtype)
    u = random_vector(rng, a.shape[1], dtype)
    solver = ITERATIVE[name]

    @jax.jit
    def everything(a, b, u):
        x, vjp = jax.vjp(
            lambda b: lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value, b
        )
        return x, vjp(u)[0]

    x, gb = everything(a, b, u)
    assert x.dtype == dtype and gb.dtype == dtype
    # All these matrices have full rank (kappa <= 5); gb = (A⁺)ᵀ u (JAX's unconjugated pairing).
    pinv = np.linalg.pinv(_wide(a))
    assert_close(x, pinv @ _wide(b), ITER_CHECK, "x")
    assert_close(gb, pinv.T @ _wide(u), ITER_CHECK, "vjp wrt b")
