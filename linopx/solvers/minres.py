"""`MINRES`: the minimal residual method, for symmetric (Hermitian) indefinite operators."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from ..linops.functions import is_hermitian
from . import _krylov as K
from ._misc import check_square
from .base import AbstractLinearSolver


class MINRES(AbstractLinearSolver):
    """MINRES (Paige & Saunders 1975), matrix-free.

    Solves `A x = b` for a symmetric (Hermitian, if complex) and possibly *indefinite* `A`, by
    minimising the residual over the Krylov space with short (Lanczos) recurrences: one product
    with `A` per iteration and a fixed handful of vectors. Use it for saddle-point systems,
    shifted operators `A - σI`, and other symmetric indefinite problems; use `CG` when `A` is
    definite (it is a little cheaper per step).

    The operator must be known to be symmetric: a real operator tagged `lx.symmetric_tag`, or an
    operator tagged `lx.positive_semidefinite_tag` / `lx.negative_semidefinite_tag` (these mean
    Hermitian for complex operators; a complex `lx.symmetric_tag` means `A = Aᵀ`, which MINRES
    cannot use). Otherwise `init` raises a `ValueError`.

    **Convergence.** Stops when `|b - A x| <= max(rtol |b|, atol)` (2-norms). Without a
    preconditioner the recurrence's residual estimate is this 2-norm; with one it is the
    `M`-norm, and the loop stops when that has dropped by the same factor (a heuristic); in both
    cases the true residual is computed at the end and decides success, restarting from the
    current `x` if needed.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: the maximum number of iterations; `None` (default) means `10 n`.

    **Options:**

    - `"y0"`: an initial guess (default zero).
    - `"preconditioner"`: an operator `M ≈ A⁻¹` that must be Hermitian *positive definite* even
      though `A` is indefinite (e.g. the inverse of `|A|`'s diagonal), applied symmetrically (the
      method works with `M`-inner products, which is a split preconditioner `L⁻¹ A L⁻ᴴ`,
      `M = L⁻ᴴL⁻¹`).

    **Returns:** `stats = {"num_steps", "residual_norm"}`: iterations (each one product with `A`)
    and the true residual norm at the end. `result` is `successful`, `max_steps_reached`,
    `breakdown` (`rᴴ M r < 0`: the preconditioner is not positive definite) or `stagnation`.

    MINRES does not return the pseudoinverse solution for singular operators (for an
    incompatible `b` its iterates are not the minimum-norm least-squares solution), so
    derivatives assume a nonsingular operator.

    ```python
    A = lx.MatrixLinearOperator(a, lx.symmetric_tag)        # symmetric, indefinite
    sol = lx.linear_solve(A, b, lx.MINRES(rtol=1e-8, atol=1e-8))
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        K.check_tolerances("MINRES", self.rtol, self.atol, self.max_steps)

    def init(self, operator, options):
        check_square(operator, "MINRES")
        if not is_hermitian(operator):
            raise ValueError(
                "MINRES needs a symmetric (Hermitian) operator: tag a real operator with "
                "`lx.symmetric_tag`, a complex Hermitian one (indefinite or not) with "
                "`lx.hermitian_tag` (or `lx.positive_semidefinite_tag` / "
                "`lx.negative_semidefinite_tag` if definite). For a nonsymmetric operator use "
                "`lx.GMRES` or `lx.BiCGStab`."
            )
        K.check_options("MINRES", operator, options, least_squares=False)
        return K.KrylovState(operator)

    def compute(self, state: K.KrylovState, vector, options):
        operator = state.operator
        K.check_options("MINRES", operator, options, least_squares=False)
        dtype = K.working_dtype(operator, vector)
        rdtype = K.real_dtype(dtype)
        xs, rs = K.spaces(operator, dtype, square=True)
        b = rs.pack(vector)
        mv = K.space_mv(operator, xs, rs)
        precond = K.preconditioner_mv(options, rs, xs)
        apply_m = (lambda v: v) if precond is None else precond
        max_steps = K.default_max_steps(self.max_steps, operator.in_size())
        tol = K.tolerance(self.rtol, self.atol, K.norm(b))
        eps = jnp.finfo(rdtype).eps

        def c(s):
            return jnp.asarray(s).astype(dtype)

        def inner(x, start, k):
            # The preconditioned Lanczos process and the QR factorisation of its tridiagonal
            # matrix by Givens rotations: Paige & Saunders, SIAM J. Numer. Anal. 12 (1975); the
            # variable names follow their MINRES code (as SciPy's `minres` does).
            r, rnorm = start
            y = apply_m(r)
            beta2 = K.rdot(r, y)
            ok = beta2 >= 0
            beta1 = jnp.sqrt(jnp.maximum(beta2, 0))
            # The recurrence tracks the M-norm of the residual; stop it when that has dropped by
            # the factor the 2-norm must drop by (exact without a preconditioner).
            inner_tol = tol * beta1 / jnp.where(rnorm > 0, rnorm, 1)
            zero_s = jnp.zeros((), rdtype)
            zero_v = K.scale(jnp.zeros((), dtype), r)

            def cond(cr):
                return (cr[11] > inner_tol) & (cr[14] < max_steps) & cr[15] & (cr[7] > 0)

            def body(cr):
                x, r1, r2, y, w, w2, oldb, beta, dbar, epsln, _, phibar, cs, sn, k, _, j = cr
                v = K.scale(c(1 / beta), y)
                y = mv(v)
                y = K.axpy(c(-jnp.where(j > 0, beta / jnp.where(oldb > 0, oldb, 1), 0)), r1, y)
                alfa = K.rdot(v, y)
                y = K.axpy(c(-alfa / beta), r2, y)
                r1, r2 = r2, y
                y = apply_m(r2)
                oldb = beta
                beta2 = K.rdot(r2, y)
                ok = beta2 >= 0
                beta = jnp.sqrt(jnp.maximum(beta2, 0))
                # Apply the previous rotation, then make and apply the new one.
                oldeps = epsln
                delta = cs * dbar + sn * alfa
                gbar = sn * dbar - cs * alfa
                epsln = sn * beta
                dbar = -cs * beta
                gamma = jnp.maximum(jnp.hypot(gbar, beta), eps)
                cs = gbar / gamma
                sn = beta / gamma
                phi = cs * phibar
                phibar = sn * phibar
                w1, w2 = w2, w
                w = K.scale(c(1 / gamma), K.axpy(c(-delta), w2, K.axpy(c(-oldeps), w1, v)))
                x = K.axpy(c(phi), w, x)
                return (x, r1, r2, y, w, w2, oldb, beta, dbar, epsln, phi, phibar, cs, sn,
                        k + 1, ok, j + 1)  # fmt: skip

            one = jnp.ones((), rdtype)
            init = (x, r, r, y, zero_v, zero_v, zero_s, beta1, zero_s, zero_s, zero_s, beta1,
                    -one, zero_s, k, ok, jnp.zeros((), jnp.int32))  # fmt: skip
            out = K.while_loop(cond, body, init)
            return out[0], out[14], jnp.logical_not(out[15]), None

        x, result, stats = K.refine_from_residual(
            inner, b, mv, tol, options, xs, max_steps, K.fixed_iterations(self.rtol, self.atol)
        )
        return xs.unpack_solution(x), result, stats

    def transpose(self, state: K.KrylovState, options):
        return K.transposed(state, options, least_squares=False)

    def conj(self, state: K.KrylovState, options):
        return K.conjugated(state, options)

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
