"""`LSQR`: least squares by Golub–Kahan bidiagonalisation, for operators of any shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _damped
from . import _krylov as K
from ._misc import check_real_scalar
from .base import AbstractLinearSolver


def check_damp(name: str, damp: Any) -> None:
    """`damp` is a finite, non-negative real scalar (it minimises |A x - b|² + damp² |x|²); a
    traced one is accepted unchecked."""
    check_real_scalar(name, "damp", damp, f"{name}(rtol=1e-8, atol=1e-8, damp=0.1)")


class LeastSquaresSetup(eqx.Module):
    """What LSQR and LSMR share: the preconditioned operator `B = A N` and its adjoint on working
    vectors, `b`, the initial guess and the tolerances."""

    b: Any
    x0: Any
    tol: jax.Array
    rtol: jax.Array
    bmv: Callable
    badj: Callable
    amv: Callable
    apply_n: Callable
    xs: K.Space
    rs: K.Space
    dtype: Any = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    fixed: bool = eqx.field(static=True, default=False)  # `K.fixed_iterations`


def setup(name: str, solver, operator, vector, options, factor: int = 10) -> LeastSquaresSetup:
    K.check_options(name, operator, options, least_squares=True)
    dtype = K.working_dtype(operator, vector)
    xs, rs = K.spaces(operator, dtype, square=False)
    b = rs.pack(vector)
    amv = K.space_mv(operator, xs, rs)
    aadj = K.space_adjoint_mv(operator, xs, rs)
    n_mv = K.preconditioner_mv(options, xs, xs)
    if n_mv is None:
        bmv, badj, apply_n = amv, aadj, (lambda v: v)
    else:
        n_adj = K.space_adjoint_mv(options["preconditioner"], xs, xs)
        bmv = lambda v: amv(n_mv(v))
        badj = lambda u: n_adj(aadj(u))
        apply_n = n_mv
    size = min(operator.in_size(), operator.out_size())
    max_steps = K.default_max_steps(solver.max_steps, size, factor)
    tol = K.tolerance(solver.rtol, solver.atol, K.norm(b))
    y0 = options.get("y0")
    x0 = None if y0 is None else xs.pack(y0)
    rtol = jnp.asarray(solver.rtol, K.real_dtype(dtype))
    fixed = K.fixed_iterations(solver.rtol, solver.atol)
    return LeastSquaresSetup(
        b, x0, tol, rtol, bmv, badj, amv, apply_n, xs, rs, dtype, max_steps, fixed
    )


def run_least_squares(s: LeastSquaresSetup, inner: Callable):
    """The outer loop shared by LSQR and LSMR: `inner(x, (r, |r|), k) -> (x, k, broke, |B|)`, then
    the Paige–Saunders tests on the true residual."""

    def check(x, norm_b_op):
        r = K.sub(s.b, s.amv(x))
        rnorm = K.norm(r)
        arnorm = K.norm(s.badj(r))
        done = (rnorm <= s.tol) | (arnorm <= s.rtol * norm_b_op * rnorm)
        return (r, rnorm), done, jnp.stack([rnorm, arnorm]), rnorm

    if s.x0 is None:
        # Zeros placed as the solution will be (`Bᴴ b`'s type; `eval_shape` computes nothing).
        x0, r0 = s.xs.zeros(like=jax.eval_shape(s.badj, s.b)), s.b
    else:
        x0 = s.x0
        r0 = K.sub(s.b, s.amv(x0))
    rnorm0 = K.norm(r0)
    inf = jnp.full((), jnp.inf, rnorm0.dtype)
    x, result, stats = K.refine(
        inner,
        check,
        x0,
        (r0, rnorm0),
        rnorm0 <= s.tol,
        jnp.stack([rnorm0, inf]),
        s.max_steps,
        fixed=s.fixed,
    )
    return s.xs.unpack_solution(x), result, stats


def _safe_inv(x):
    return jnp.where(x > 0, 1 / jnp.where(x > 0, x, 1), 0)


class LSQR(AbstractLinearSolver):
    """LSQR (Paige & Saunders 1982), matrix-free least squares for operators of any shape.

    Computes the minimum-norm least-squares solution `x = A⁺ b`, i.e. minimises `|A x - b|` and
    among the minimisers takes the one of least norm, using one product with `A` and one with
    `Aᴴ` per iteration (only `operator.mv` and `operator.transpose().mv`). It is CG on the normal
    equations done stably: use it for large sparse or matrix-free least-squares problems, tall,
    wide or rank-deficient. `LSMR` is the same cost and usually preferable when stopping early,
    as its `|Aᴴ r|` decreases monotonically.

    With `damp = d > 0` it minimises `|A x - b|² + d² |x|²` (Tikhonov regularisation, SciPy's
    meaning), whose solution is `(AᴴA + d²I)⁻¹ Aᴴ b`. Through `reformulate`, `lx.linear_solve`
    solves this as the undamped least-squares problem for `[A; d I]` and `(b, 0)`, so derivatives
    (also with respect to `d`, which may be a traced array) are exact; a `state` passed with
    `damp != 0` is rebuilt for the stacked operator.

    **Convergence** (the Paige–Saunders stopping tests, as `scipy.sparse.linalg.lsqr`, with our
    `rtol` in the roles of SciPy's `atol` and `btol`). It stops when either

    1. `|r| <= max(rtol |b|, atol)`: `x` solves `A x = b` (a compatible system), or
    2. `|Aᴴ r| <= rtol |A| |r|`: `x` solves the least-squares problem,

    with `r = b - A x` and `|A|` the Frobenius-norm estimate that the bidiagonalisation builds.
    The recurrences decide when to stop; the tests are then checked on the true residual, which
    decides success (restarting from the current `x` if they fail).

    **Arguments:**

    - `rtol`, `atol`: tolerances as above (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: maximum iterations; `None` (default) means `10 min(m, n)`.
    - `damp`: the regularisation `d >= 0` above (default 0).

    **Options:**

    - `"y0"`: an initial guess (default zero). From zero the iterates stay in the range of `Aᴴ`,
      which is why the limit is the minimum-norm solution; from `y0` the limit is the
      least-squares solution nearest `y0`, `A⁺b + (I - A⁺A) y0`, which equals `A⁺b` only when
      `A` has independent columns. Do not pass `y0` for an operator with dependent columns.
    - `"preconditioner"`: an operator `N` on the *solution* space (n × n), applied on the *right*:
      it solves `min |A N y - b|` and returns `x = N y`. A good `N` makes the columns of `A N` of
      similar norm (e.g. `1 / |column norms|` as a diagonal operator). As with `y0`, with a
      preconditioner the result is the minimum-norm solution for `y`, so `A⁺b` only when `A`
      has independent columns.

    **Returns:** `stats = {"num_steps", "residual_norm"}`: iterations (each one product with `A`
    and one with `Aᴴ`) and the true `|b - A x|` at the end (for `damp > 0`:
    `sqrt(|b - A x|² + d² |x|²)`). `result` is `successful`, `max_steps_reached` or `stagnation`.

    ```python
    A = lx.MatrixLinearOperator(a)                 # any shape
    x = lx.linear_solve(A, b, lx.LSQR(rtol=1e-10, atol=1e-10)).value
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)
    damp: Any = 0.0

    def __check_init__(self):
        K.check_tolerances("LSQR", self.rtol, self.atol, self.max_steps)
        check_damp("LSQR", self.damp)

    def init(self, operator, options):
        K.check_options("LSQR", operator, options, least_squares=True)
        return K.KrylovState(operator)

    def reformulate(self, operator, vector, options):
        # Damped: solve the undamped problem for [A; damp I] and (b, 0) (see `_damped.py`).
        return _damped.reformulate(self, operator, vector)

    def compute(self, state: K.KrylovState, vector, options):
        operator, vector, solver, rebuilt = _damped.reformulate(self, state.operator, vector)
        if rebuilt:
            # Reached only when called directly: `linear_solve` reformulates damped solves first.
            return solver.compute(K.KrylovState(operator), vector, options)
        s = setup("LSQR", self, state.operator, vector, options)
        dtype = s.dtype

        def c(v):
            return jnp.asarray(v).astype(dtype)

        def inner(x, start, k):
            # Paige & Saunders, ACM TOMS 8 (1982), Algorithm LSQR (damp = 0), on B = A N.
            r, beta = start
            u = K.scale(c(_safe_inv(beta)), r)
            v = s.badj(u)
            alfa = K.norm(v)
            v = K.scale(c(_safe_inv(alfa)), v)
            zero_x = s.xs.zeros(like=v)
            rdt = beta.dtype
            false = jnp.zeros((), bool)
            # Already a least-squares solution (Bᴴ r = 0): nothing to do.
            done0 = alfa * beta <= 0

            def cond(cr):
                return jnp.logical_not(cr[9]) & (cr[8] < s.max_steps)

            def body(cr):
                dy, u, v, w, alfa, phibar, rhobar, anorm2, k, _ = cr
                u = K.axpy(c(-alfa), u, s.bmv(v))
                beta = K.norm(u)
                u = K.scale(c(_safe_inv(beta)), u)
                anorm2 = anorm2 + alfa**2 + beta**2
                v = K.axpy(c(-beta), v, s.badj(u))
                alfa = K.norm(v)
                v = K.scale(c(_safe_inv(alfa)), v)
                rho = jnp.hypot(rhobar, beta)
                rinv = _safe_inv(rho)
                cs, sn = rhobar * rinv, beta * rinv
                theta = sn * alfa
                rhobar = -cs * alfa
                phi = cs * phibar
                phibar = sn * phibar
                dy = K.axpy(c(phi * rinv), w, dy)
                w = K.axpy(c(-theta * rinv), w, v)
                # |r| = φ̄ and |Bᴴ r| = φ̄ α |c| (Paige & Saunders 1982, section 5.1).
                arnorm = phibar * alfa * jnp.abs(cs)
                done = (phibar <= s.tol) | (arnorm <= s.rtol * jnp.sqrt(anorm2) * phibar)
                return dy, u, v, w, alfa, phibar, rhobar, anorm2, k + 1, done

            init = (zero_x, u, v, v, alfa, beta, alfa, jnp.zeros((), rdt), k, done0 | false)
            dy, *_, anorm2, k, _ = K.while_loop(cond, body, init)
            return K.add(x, s.apply_n(dy)), k, false, jnp.sqrt(anorm2)

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
