"""`CG`: the conjugate gradient method, for positive (or negative) semidefinite operators."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from ..linops.functions import is_negative_semidefinite, is_positive_semidefinite
from . import _krylov as K
from .._solution import RESULTS
from ._misc import check_square
from .base import AbstractLinearSolver

# The scalars CG carries, packed into one array of the real dtype: rᴴ M r, |r|², the number of
# steps, and whether the method broke down (0/1).
_RZ, _RR, _K, _BROKE = range(4)


def _pack(dtype, *scalars):
    return jnp.stack([jnp.asarray(v).astype(dtype) for v in scalars])


def _result(rr_true, tol2, finite, s, loop_steps):
    """The verdict from the true residual `rr_true = |b - A x|²` and the loop's scalars `s`."""
    return RESULTS.where(
        (rr_true <= tol2) & finite,
        RESULTS.successful,
        RESULTS.where(
            jnp.logical_not(finite),
            RESULTS.nonfinite_input,
            RESULTS.where(
                s[_BROKE] > 0,
                RESULTS.breakdown,
                RESULTS.where(s[_K] >= loop_steps, RESULTS.max_steps_reached, RESULTS.stagnation),
            ),
        ),
    )


class CG(AbstractLinearSolver):
    """The (preconditioned) conjugate gradient method (Hestenes & Stiefel 1952), matrix-free.

    Solves `A x = b` for a Hermitian positive definite `A` with one product `A p` per iteration
    and short recurrences, so memory stays at a few vectors. It is the method of choice for
    large symmetric positive definite systems (discretised elliptic PDEs, Gram and kernel matrices,
    normal equations via `lx.Normal(lx.CG(...))`).

    The operator must carry `lx.positive_semidefinite_tag` or `lx.negative_semidefinite_tag`
    (for complex operators these tags mean Hermitian semidefinite); otherwise `init` raises a
    `ValueError`. A negative semidefinite operator is solved as `(-A) x = -b`. Only `operator.mv`
    is used, never `as_matrix`.

    **Convergence.** Iterates until `|b - A x| <= max(rtol |b|, atol)` (2-norms, the criterion of
    `scipy.sparse.linalg.cg` and `jax.scipy.sparse.linalg.cg`). The loop watches the recursively
    updated residual, as theirs do; at the end the true residual `b - A x` is computed (one extra
    product) and decides the result, so a solve is never reported successful with its true residual
    above the tolerance. If rounding made the two residuals drift apart so that the recursive one
    met the tolerance and the true one does not, the result is `stagnation`: the tolerance is below
    the accuracy CG can attain on this problem in this precision (loosen it, precondition, or use
    float64). CG does not restart in that case: a restart loop costs about half as much again in
    compile time, for a gain only in that rare case.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance, as above (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: the maximum number of iterations; `None` (default) means `10 n` for `n`
      unknowns, as SciPy (at most 2²⁴ in float32, where the count is carried).

    **Options** (the `options` dict of `lx.linear_solve`):

    - `"y0"`: an initial guess, with the operator's input structure (default zero).
    - `"preconditioner"`: an operator `M ≈ A⁻¹`, applied as a *left* (split-symmetric) preconditioner
      in the usual way of preconditioned CG. It must be positive semidefinite like `A` (negative
      semidefinite if `A` is; `lx.jacobi_preconditioner` keeps the right sign). The convergence test
      is on the unpreconditioned residual.

    **Returns** (in `lx.Solution`): `stats = {"num_steps", "residual_norm"}`, the number of
    iterations (each one product with `A`) and the true residual norm `|b - A x|` at the end.
    `result` is `successful`, `max_steps_reached`, `breakdown` (`pᴴ A p <= 0` or
    `rᴴ M r <= 0`: the operator or the preconditioner is not positive definite despite its tag) or
    `stagnation` (the recursive residual met the tolerance but the true one does not, see above).

    CG does not return the pseudoinverse solution for a singular operator (it diverges when `b`
    is not in the range), so derivatives assume a nonsingular operator.

    ```python
    A = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    sol = lx.linear_solve(A, b, lx.CG(rtol=1e-8, atol=1e-8))
    sol.value, sol.stats["num_steps"]
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)

    # The result is decided on the true residual `b - A x`, which is not finite when `x` is not
    # (a NaN or an infinity in `x` reaches `A x`: 0 · inf is NaN), so a non-finite solution is
    # already reported; no second finiteness pass over `x` (a kernel to compile) is needed.
    _verdict_checks_solution = True

    def __check_init__(self):
        K.check_tolerances("CG", self.rtol, self.atol, self.max_steps)

    def init(self, operator, options):
        check_square(operator, "CG")
        if is_positive_semidefinite(operator):
            negate = False
        elif is_negative_semidefinite(operator):
            negate = True
        else:
            raise ValueError(
                "CG needs an operator tagged `lx.positive_semidefinite_tag` or "
                "`lx.negative_semidefinite_tag` (Hermitian semidefinite, for complex operators), "
                "e.g. `lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)`. For a symmetric "
                "indefinite operator use `lx.MINRES`; for a general one `lx.GMRES` or "
                "`lx.BiCGStab`."
            )
        K.check_options("CG", operator, options, least_squares=False)
        return K.KrylovState(operator, negate)

    def compute(self, state: K.KrylovState, vector, options):
        operator = state.operator
        K.check_options("CG", operator, options, least_squares=False)
        dtype = K.working_dtype(operator, vector)
        xs, rs = K.spaces(operator, dtype, square=True)
        b = rs.pack(vector)
        mv = K.space_mv(operator, xs, rs)
        precond = K.preconditioner_mv(options, rs, xs)
        if state.negate:
            # Solve (-A) x = -b, which is positive semidefinite; a negative semidefinite
            # preconditioner is negated with it.
            mv_pos, b = (lambda v: K.neg(mv(v))), K.neg(b)
            precond = None if precond is None else (lambda v, m=precond: K.neg(m(v)))
        else:
            mv_pos = mv
        max_steps = K.default_max_steps(self.max_steps, operator.in_size())
        tol2 = K.tolerance_squared(self.rtol, self.atol, K.rdot(b, b))
        x0, r0 = K.initial_guess(options, xs, b, mv_pos)
        z0 = r0 if precond is None else precond(r0)
        rz0 = K.rdot(r0, z0)
        rr0 = rz0 if precond is None else K.rdot(r0, r0)
        real = rz0.dtype

        # Preconditioned CG, e.g. Saad, "Iterative Methods for Sparse Linear Systems" (2003),
        # Algorithm 9.1. The carry is the minimum: x, r, p, and the scalars as one small array `s`
        # (indexed by `_RZ`, `_RR`, `_K`, `_BROKE`), so that XLA builds one kernel for their
        # bookkeeping rather than one per scalar (compile time).
        def cond(c):
            s = c[3]
            return (s[_BROKE] == 0) & (s[_RR] > tol2) & (s[_K] < loop_steps)

        def body(c):
            x, r, p, s = c
            rz = s[_RZ]
            ap = mv_pos(p)
            pap = K.rdot(p, ap)
            ok = pap > 0
            # On breakdown leave x and r as they are (a scalar `where`, not a vector one).
            alpha = jnp.where(ok, rz / jnp.where(ok, pap, 1), 0).astype(dtype)
            x = K.axpy(alpha, p, x)
            r = K.axpy(-alpha, ap, r)
            z = r if precond is None else precond(r)
            rz_new = K.rdot(r, z)
            rr = rz_new if precond is None else K.rdot(r, r)
            # rᴴ M r <= 0 with r != 0: the preconditioner is not positive definite.
            ok = ok & ((rz_new > 0) | (rr <= tol2))
            beta = (rz_new / rz).astype(dtype)
            p = K.axpy(beta, p, z)
            return x, r, p, _pack(real, rz_new, rr, s[_K] + 1, jnp.logical_not(ok))

        # The count is carried in the real dtype: cap it where that stops counting exactly (2²⁴
        # steps in float32, far beyond any useful CG run; 2⁵³ in float64).
        loop_steps = min(max_steps, 2 ** (jnp.finfo(real).nmant + 1))
        broke0 = jnp.logical_not((rz0 > 0) | (rr0 <= tol2))
        s0 = _pack(real, rz0, rr0, 0, broke0)
        x, _, _, s = K.while_loop(cond, body, (x0, r0, z0, s0))
        # The true residual decides the result. It must be finite: with an infinite `b` the
        # tolerance is infinite too. A non-finite residual is `nonfinite_input` (NaN or infinity in
        # A, b, y0 or the preconditioner; `linear_solve` says `singular` if they are all finite).
        r_true = K.sub(b, mv_pos(x))
        rr_true = K.rdot(r_true, r_true)
        finite = jnp.isfinite(rr_true)
        if K.fixed_iterations(self.rtol, self.atol):
            # A fixed number of iterations (both tolerances 0): done unless it broke down or
            # met a non-finite number.
            result = RESULTS.where(
                jnp.logical_not(finite),
                RESULTS.nonfinite_input,
                RESULTS.where(s[_BROKE] > 0, RESULTS.breakdown, RESULTS.successful),
            )
        else:
            result = _result(rr_true, tol2, finite, s, loop_steps)
        stats = {"num_steps": s[_K].astype(jnp.int32), "residual_norm": jnp.sqrt(rr_true)}
        return xs.unpack_solution(x), result, stats

    def transpose(self, state: K.KrylovState, options):
        return K.transposed(state, options, least_squares=False)

    def conj(self, state: K.KrylovState, options):
        return K.conjugated(state, options)

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
