"""`BiCGStab`: the stabilised biconjugate gradient method, for general square operators."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from . import _krylov as K
from ._misc import check_square
from .base import AbstractLinearSolver


class BiCGStab(AbstractLinearSolver):
    """The stabilised biconjugate gradient method (van der Vorst 1992), matrix-free.

    Solves `A x = b` for a general (nonsymmetric) square nonsingular `A`, with two products with
    `A` per iteration and a fixed amount of memory (a handful of vectors), unlike `GMRES`, whose
    memory grows with `restart`. Its convergence is irregular and it can break down; prefer `GMRES`
    when robustness matters more than memory, and `CG` when `A` is positive definite.

    **Convergence.** Iterates until `|b - A x| <= max(rtol |b|, atol)` (2-norms, as
    `scipy.sparse.linalg.bicgstab`). The loop watches the recursively updated residual; at the end
    the true residual is computed and, if it misses the tolerance, the method restarts from the
    current `x` (see `CG`). Never reports success with a true residual above the tolerance.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: the maximum number of iterations; `None` (default) means `10 n`.

    **Options:**

    - `"y0"`: an initial guess (default zero).
    - `"preconditioner"`: an operator `M ≈ A⁻¹`, applied on the *right* (`A M y = b`, `x = M y`),
      so that the residual being monitored is the true, unpreconditioned one. No definiteness
      needed.

    **Returns:** `stats = {"num_steps", "residual_norm"}`: iterations (each two products with `A`)
    and the true residual norm at the end. `result` is `successful`, `max_steps_reached`,
    `breakdown` (`r̂ᴴ r = 0`, `r̂ᴴ A p = 0` or `ω = 0`: a division by zero in the method; try
    `GMRES`) or `stagnation`.

    BiCGStab does not return the pseudoinverse solution for singular operators; derivatives
    assume a nonsingular operator.

    ```python
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.BiCGStab(rtol=1e-8, atol=1e-8))
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        K.check_tolerances("BiCGStab", self.rtol, self.atol, self.max_steps)

    def init(self, operator, options):
        check_square(operator, "BiCGStab")
        K.check_options("BiCGStab", operator, options, least_squares=False)
        return K.KrylovState(operator)

    def compute(self, state: K.KrylovState, vector, options):
        operator = state.operator
        K.check_options("BiCGStab", operator, options, least_squares=False)
        dtype = K.working_dtype(operator, vector)
        xs, rs = K.spaces(operator, dtype, square=True)
        b = rs.pack(vector)
        mv = K.space_mv(operator, xs, rs)
        precond = K.preconditioner_mv(options, rs, xs)
        apply_m = (lambda v: v) if precond is None else precond
        max_steps = K.default_max_steps(self.max_steps, operator.in_size())
        tol2 = K.tolerance(self.rtol, self.atol, K.norm(b)) ** 2
        one = jnp.ones((), dtype)

        def inner(x, start, k):
            # Right-preconditioned BiCGStab: van der Vorst, SIAM J. Sci. Stat. Comput. 13 (1992),
            # with the shadow residual r̂ = r at the start of each round.
            r, rr = start

            def cond(c):
                return (c[8] > tol2) & (c[9] < max_steps) & c[10]

            def body(c):
                x, r, rhat, p, v, rho, alpha, omega, _, k, _ = c
                rho_new = K.cdot(rhat, r)
                beta = (rho_new / rho) * (alpha / omega)
                p = K.axpy(beta, K.axpy(-omega, v, p), r)
                phat = apply_m(p)
                v = mv(phat)
                rv = K.cdot(rhat, v)
                ok = (rho_new != 0) & (rv != 0)
                # On breakdown α = ω = 0 leaves x and r as they are (scalar `where`s only).
                alpha = jnp.where(ok, rho_new / jnp.where(ok, rv, one), 0).astype(dtype)
                s = K.axpy(-alpha, v, r)
                ss = K.rdot(s, s)
                # Converged at the half step: ω = 0 makes x and r below take the half step,
                # instead of selecting between vectors.
                half = ss <= tol2
                shat = apply_m(s)
                t = mv(shat)
                tt = K.rdot(t, t)
                ts = K.cdot(t, s)
                skip = half | (tt == 0) | jnp.logical_not(ok)
                omega = jnp.where(skip, 0, ts / jnp.where(tt == 0, 1, tt).astype(dtype))
                omega = omega.astype(dtype)
                ok = ok & (half | (omega != 0))
                x = K.axpy(omega, shat, K.axpy(alpha, phat, x))
                r = K.axpy(-omega, t, s)
                rr = jnp.where(half, ss, K.rdot(r, r))
                return x, r, rhat, p, v, rho_new, alpha, omega, rr, k + 1, ok

            zero = K.scale(jnp.zeros((), dtype), r)
            init = (x, r, r, zero, zero, one, one, one, rr, k, jnp.ones((), bool))
            x, *_, k, ok = K.while_loop(cond, body, init)
            return x, k, jnp.logical_not(ok), None

        check = K.true_residual_check(b, mv, tol2, squared=True)
        x0, r0 = K.initial_guess(options, xs, b, mv)
        rr0 = K.rdot(r0, r0)
        return _finish(
            xs,
            K.refine(
                inner,
                check,
                x0,
                (r0, rr0),
                rr0 <= tol2,
                jnp.sqrt(rr0)[None],
                max_steps,
                fixed=K.fixed_iterations(self.rtol, self.atol),
            ),
        )

    def transpose(self, state: K.KrylovState, options):
        return K.transposed(state, options, least_squares=False)

    def conj(self, state: K.KrylovState, options):
        return K.conjugated(state, options)

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False


def _finish(xs, out):
    x, result, stats = out
    return xs.unpack_solution(x), result, stats
