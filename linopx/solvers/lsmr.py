"""`LSMR`: least squares by Golub–Kahan bidiagonalisation with monotone `|Aᴴ r|`, any shape."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from . import _damped
from . import _krylov as K
from .base import AbstractLinearSolver
from .lsqr import _safe_inv, check_damp, run_least_squares, setup


def _rotation(a, b):
    """`(c, s, r)` with `[[c, s], [-s, c]] @ [a, b] = [r, 0]` for real `a`, `b`."""
    r = jnp.hypot(a, b)
    rinv = _safe_inv(r)
    return jnp.where(r > 0, a * rinv, 1), b * rinv, r


class LSMR(AbstractLinearSolver):
    """LSMR (Fong & Saunders 2011), matrix-free least squares for operators of any shape.

    Computes the minimum-norm least-squares solution `x = A⁺ b` like `LSQR`, at the same cost
    (one product with `A` and one with `Aᴴ` per iteration), but minimises `|Aᴴ r|` over the
    Krylov space instead of `|r|`: `|Aᴴ r|` then decreases monotonically, which makes stopping
    early safer. It is MINRES on the normal equations done stably. `lx.AutoLinearSolver` uses it
    for non-square sparse operators.

    With `damp = d > 0` it minimises `|A x - b|² + d² |x|²` (SciPy's meaning), solution
    `(AᴴA + d²I)⁻¹ Aᴴ b`; through `reformulate`, `lx.linear_solve` solves this as the undamped
    problem for `[A; d I]` and `(b, 0)`, so derivatives (also with respect to `d`) are exact; a
    `state` passed with `damp != 0` is rebuilt for the stacked operator.

    **Convergence** (Paige–Saunders stopping tests, as `scipy.sparse.linalg.lsmr`, with our
    `rtol` in the roles of SciPy's `atol` and `btol`): stops when

    1. `|r| <= max(rtol |b|, atol)` (a compatible system is solved), or
    2. `|Aᴴ r| <= rtol |A| |r|` (the least-squares problem is solved),

    with `r = b - A x` and `|A|` the Frobenius-norm estimate from the bidiagonalisation. The
    recurrences decide when to stop; the tests are then checked on the true residual, which
    decides success (restarting from the current `x` if they fail).

    **Arguments:**

    - `rtol`, `atol`: tolerances as above (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: maximum iterations; `None` (default) means `10 min(m, n)`.
    - `damp`: the regularisation `d >= 0` (default 0).

    **Options:** as `LSQR`: `"y0"` (the limit is then `A⁺b + (I - A⁺A) y0`, equal to `A⁺b`
    only for independent columns) and `"preconditioner"` (an `n × n` operator `N` applied on the
    *right*: `min |A N y - b|`, `x = N y`).

    **Returns:** `stats = {"num_steps", "residual_norm"}`: iterations (each one product with `A`
    and one with `Aᴴ`) and the true `|b - A x|` at the end (for `damp > 0`:
    `sqrt(|b - A x|² + d² |x|²)`). `result` is `successful`, `max_steps_reached` or `stagnation`.

    ```python
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LSMR(rtol=1e-10, atol=1e-10)).value
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)
    damp: Any = 0.0

    def __check_init__(self):
        K.check_tolerances("LSMR", self.rtol, self.atol, self.max_steps)
        check_damp("LSMR", self.damp)

    def init(self, operator, options):
        K.check_options("LSMR", operator, options, least_squares=True)
        return K.KrylovState(operator)

    def reformulate(self, operator, vector, options):
        # Damped: solve the undamped problem for [A; damp I] and (b, 0) (see `_damped.py`).
        return _damped.reformulate(self, operator, vector)

    def compute(self, state: K.KrylovState, vector, options):
        operator, vector, solver, rebuilt = _damped.reformulate(self, state.operator, vector)
        if rebuilt:
            # Reached only when called directly: `linear_solve` reformulates damped solves first.
            return solver.compute(K.KrylovState(operator), vector, options)
        s = setup("LSMR", self, state.operator, vector, options)
        dtype = s.dtype

        def c(v):
            return jnp.asarray(v).astype(dtype)

        def inner(x, start, k):
            # Fong & Saunders, SIAM J. Sci. Comput. 33 (2011), Algorithm LSMR with damp = 0 (so
            # the rotation Q̂ is the identity), on B = A N, with their estimate of |r|.
            r, beta = start
            u = K.scale(c(_safe_inv(beta)), r)
            v = s.badj(u)
            alpha = K.norm(v)
            v = K.scale(c(_safe_inv(alpha)), v)
            rdt = beta.dtype
            zero, one = jnp.zeros((), rdt), jnp.ones((), rdt)
            zero_x = s.xs.zeros(like=v)
            done0 = alpha * beta <= 0

            def cond(cr):
                return jnp.logical_not(cr[-1]) & (cr[-2] < s.max_steps)

            def body(cr):
                (dy, u, v, h, hbar, alpha, alphabar, zetabar, rho, rhobar, cbar, sbar, zeta,
                 betadd, betad, rhodold, tautildeold, thetatilde, norma2, k, _) = cr  # fmt: skip
                # Bidiagonalisation step.
                u = K.axpy(c(-alpha), u, s.bmv(v))
                beta = K.norm(u)
                u = K.scale(c(_safe_inv(beta)), u)
                v = K.axpy(c(-beta), v, s.badj(u))
                alpha = K.norm(v)
                v = K.scale(c(_safe_inv(alpha)), v)
                # Rotation P_k.
                rhoold = rho
                cs, sn, rho = _rotation(alphabar, beta)
                thetanew = sn * alpha
                alphabar = cs * alpha
                # Rotation P̄_k.
                rhobarold, zetaold = rhobar, zeta
                thetabar = sbar * rho
                cbar, sbar, rhobar = _rotation(cbar * rho, thetanew)
                zeta = cbar * zetabar
                zetabar = -sbar * zetabar
                # Update h, h̄ and the solution.
                hbar = K.axpy(c(-thetabar * rho * _safe_inv(rhoold * rhobarold)), hbar, h)
                dy = K.axpy(c(zeta * _safe_inv(rho * rhobar)), hbar, dy)
                h = K.axpy(c(-thetanew * _safe_inv(rho)), h, v)
                # Estimate |r| (section 3.3 of the paper).
                betahat = cs * betadd
                betadd = -sn * betadd
                thetatildeold = thetatilde
                ctildeold, stildeold, rhotildeold = _rotation(rhodold, thetabar)
                thetatilde = stildeold * rhobar
                rhodold = ctildeold * rhobar
                betad = -stildeold * betad + ctildeold * betahat
                tautildeold = (zetaold - thetatildeold * tautildeold) * _safe_inv(rhotildeold)
                taud = (zeta - thetatilde * tautildeold) * _safe_inv(rhodold)
                normr = jnp.sqrt((betad - taud) ** 2 + betadd**2)
                # |B|_F estimate, then the tests (|Bᴴ r| = |ζ̄|).
                norma2 = norma2 + beta**2
                norma = jnp.sqrt(norma2)
                norma2 = norma2 + alpha**2
                normar = jnp.abs(zetabar)
                done = (normr <= s.tol) | (normar <= s.rtol * norma * normr)
                return (dy, u, v, h, hbar, alpha, alphabar, zetabar, rho, rhobar, cbar, sbar, zeta,
                        betadd, betad, rhodold, tautildeold, thetatilde, norma2, k + 1, done)  # fmt: skip

            zero_h = K.scale(c(0), v)
            init = (zero_x, u, v, v, zero_h, alpha, alpha, alpha * beta, one, one, one, zero,
                    zero, beta, zero, one, zero, zero, alpha**2, k, done0)  # fmt: skip
            out = K.while_loop(cond, body, init)
            dy, k, norma2 = out[0], out[-2], out[-3]
            return K.add(x, s.apply_n(dy)), k, jnp.zeros((), bool), jnp.sqrt(norma2)

        return run_least_squares(s, inner)

    def transpose(self, state: K.KrylovState, options):
        return K.transposed(state, options, least_squares=True)

    def conj(self, state: K.KrylovState, options):
        return K.conjugated(state, options)

    def allow_dependent_rows(self, operator):
        # Least squares: b outside the range of A is handled.
        return True

    def allow_dependent_columns(self, operator):
        # From x0 = 0 the iterates lie in range(Aᴴ): the limit is the minimum-norm solution.
        return True
