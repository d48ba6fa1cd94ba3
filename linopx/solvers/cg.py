"""`CG`: the conjugate gradient method, for positive (or negative) semidefinite operators."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from ..linops.functions import is_negative_semidefinite, is_positive_semidefinite
from . import _krylov as K
from ._misc import check_square
from .base import AbstractLinearSolver


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
    updated residual; at the end the true residual `b - A x` is computed (one extra product) and, if
    rounding made the two drift apart so that the true residual misses the tolerance, CG restarts
    from the current `x`. A solve is never reported successful with its true residual above the
    tolerance.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance, as above (non-negative).
    - `max_steps`: the maximum number of iterations; `None` (default) means `10 n` for `n`
      unknowns, as SciPy.

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
    `stagnation` (restarting from the true residual no longer reduces it: the tolerance is below
    the attainable accuracy).

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
        bnorm = K.norm(b)
        tol2 = K.tolerance(self.rtol, self.atol, bnorm) ** 2

        def inner(x, start, k):
            # Preconditioned CG, e.g. Saad, "Iterative Methods for Sparse Linear Systems" (2003),
            # Algorithm 9.1. The carry is the minimum: x, r, p, rᴴz (and |r|² if preconditioned).
            r, rr = start
            z = r if precond is None else precond(r)
            rz = rr if precond is None else K.rdot(r, z)
            ok = (rz > 0) | (rr <= tol2)

            def cond(c):
                return (c[4] > tol2) & (c[5] < max_steps) & c[6]

            def body(c):
                x, r, p, rz, _, k, _ = c
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
                return x, r, p, rz_new, rr, k + 1, ok

            x, r, _, _, _, k, ok = lax.while_loop(cond, body, (x, r, z, rz, rr, k, ok))
            return x, k, jnp.logical_not(ok), None

        check = K.true_residual_check(b, mv_pos, tol2, squared=True)
        x0, r0 = K.initial_guess(options, xs, b, mv_pos)
        rr0 = K.rdot(r0, r0)
        x, result, stats = K.refine(
            inner, check, x0, (r0, rr0), rr0 <= tol2, jnp.sqrt(rr0)[None], max_steps
        )
        return xs.unpack(x), result, stats

    def transpose(self, state: K.KrylovState, options):
        return K.transposed(state, options, least_squares=False)

    def conj(self, state: K.KrylovState, options):
        return K.conjugated(state, options)

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
