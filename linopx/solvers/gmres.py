"""`GMRES`: the restarted generalised minimal residual method, for general square operators."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _tree
from . import _krylov as K
from ._misc import check_square
from .base import AbstractLinearSolver


def _givens(a: jax.Array, b: jax.Array):
    """`(c, s, r)` with `c` real, `[[c, s], [-conj(s), c]] @ [a, b] = [r, 0]` (complex-safe)."""
    aa, ab = jnp.abs(a), jnp.abs(b)
    t = jnp.hypot(aa, ab)
    zero_t = t == 0
    t_safe = jnp.where(zero_t, 1, t)
    phase = jnp.where(aa == 0, 1, a / jnp.where(aa == 0, 1, aa).astype(a.dtype))
    c = jnp.where(zero_t, 1, aa / t_safe)
    s = jnp.where(zero_t, 0, phase * jnp.conj(b) / t_safe.astype(a.dtype))
    return c.astype(a.dtype), s.astype(a.dtype), phase * t.astype(a.dtype)


def _project(stack, w) -> jax.Array:
    """`Vᴴ w` for a stack of vectors `V` (leading axis) and a vector `w`, both pytrees."""
    parts = [
        jnp.tensordot(
            jnp.conj(vl), wl, axes=wl.ndim, out_sharding=_tree.replicated_result(vl, wl, ndim=1)
        )
        for vl, wl in zip(jax.tree_util.tree_leaves(stack), jax.tree_util.tree_leaves(w))
    ]
    return sum(parts[1:], parts[0])


def _combine(coeffs, stack):
    """`Σ_i coeffs[i] V[i]`."""
    return jax.tree_util.tree_map(lambda vl: jnp.tensordot(coeffs, vl, axes=1), stack)


class GMRES(AbstractLinearSolver):
    """Restarted GMRES (Saad & Schultz 1986), matrix-free.

    Solves `A x = b` for a general square nonsingular `A`: each cycle builds an orthonormal basis
    of the Krylov space of dimension up to `restart` (Arnoldi with classical Gram–Schmidt applied
    twice, which is as accurate as modified Gram–Schmidt and runs as matrix products), keeps the
    small Hessenberg least-squares problem in QR form with Givens rotations (so the residual norm
    is known at every step and a cycle stops as soon as it is small enough), then updates `x`
    and restarts from the true residual. Robust for nonsymmetric and indefinite problems; memory
    grows with `restart` (`restart + 1` vectors).

    **Convergence.** Stops when the true residual satisfies `|b - A x| <= max(rtol |b|, atol)`
    (2-norms, as `scipy.sparse.linalg.gmres` and `jax.scipy.sparse.linalg.gmres`). The Givens
    estimate decides when a cycle ends; the true residual, recomputed at every restart, decides
    success. Never reports success with a true residual above the tolerance.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance (non-negative).
      Both 0, with an explicit `max_steps`, runs exactly `max_steps` iterations (fewer only if
      the residual becomes exactly 0) and reports `successful` unless the method breaks down:
      Lineax's fixed-iteration mode.
    - `max_steps`: the maximum total number of *inner* (Arnoldi) iterations, over all cycles;
      `None` (default) means `10 n`.
    - `restart`: the Krylov dimension of a cycle (default 20, as `jax.scipy`); capped at `n`.

    **Options:**

    - `"y0"`: an initial guess (default zero).
    - `"preconditioner"`: an operator `M ≈ A⁻¹`, applied on the *right* (`A M y = b`, `x = M y`),
      so the minimised and monitored residual is the true one. No definiteness needed.

    **Returns:** `stats = {"num_steps", "residual_norm"}`: `num_steps` counts *inner* Arnoldi
    iterations (each one product with `A`; the one product per restart that recomputes the true
    residual is not counted), not restart cycles. `result` is `successful`, `max_steps_reached`,
    `breakdown` (a zero on the diagonal of the small triangular factor: `A` is singular on the
    Krylov space) or `stagnation` (a whole cycle did not reduce the residual, which happens for
    restarted GMRES on some indefinite problems: raise `restart`).

    GMRES does not return the pseudoinverse solution for singular operators; derivatives assume
    a nonsingular operator.

    ```python
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.GMRES(rtol=1e-8, atol=1e-8, restart=30))
    ```
    """

    rtol: Any
    atol: Any
    max_steps: int | None = eqx.field(static=True, default=None)
    restart: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        K.check_tolerances("GMRES", self.rtol, self.atol, self.max_steps)
        if isinstance(self.restart, bool) or not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(
                f"GMRES: `restart` must be a positive int (the Krylov dimension per cycle, e.g. "
                f"20), got {self.restart!r}."
            )

    def init(self, operator, options):
        check_square(operator, "GMRES")
        K.check_options("GMRES", operator, options, least_squares=False)
        return K.KrylovState(operator)

    def compute(self, state: K.KrylovState, vector, options):
        operator = state.operator
        K.check_options("GMRES", operator, options, least_squares=False)
        dtype = K.working_dtype(operator, vector)
        rdtype = K.real_dtype(dtype)
        xs, rs = K.spaces(operator, dtype, square=True)
        b = rs.pack(vector)
        mv = K.space_mv(operator, xs, rs)
        precond = K.preconditioner_mv(options, rs, xs)
        apply_m = (lambda v: v) if precond is None else precond
        n = operator.in_size()
        max_steps = K.default_max_steps(self.max_steps, n)
        m = max(1, min(self.restart, n))
        tol = K.tolerance(self.rtol, self.atol, K.norm(b))
        idx = jnp.arange(m, dtype=jnp.int32)

        def inner(x, start, k):
            r, beta = start
            v0 = K.scale((1 / beta).astype(dtype), r)
            basis = jax.tree_util.tree_map(
                # Built from `leaf` (not `jnp.zeros`) so that the basis is sharded like it.
                lambda leaf: jnp.broadcast_to(jnp.zeros_like(leaf, dtype), (m + 1,) + leaf.shape)
                .at[0]
                .set(leaf),
                v0,
            )
            # Q accumulates the Givens rotations ((m+1) x (m+1), small): applying it to a new
            # Hessenberg column is one small matrix-vector product instead of a loop over the
            # previous rotations. Rt holds the columns of the triangular factor R as rows; unused
            # rows stay identity rows so that the final triangular solve is always well defined.
            q = jnp.eye(m + 1, dtype=dtype)
            rt = jnp.eye(m, dtype=dtype)

            def cond(c):
                _, _, _, j, est, k, ok = c
                return (j < m) & (est > tol) & (k < max_steps) & ok

            def body(c):
                basis, q, rt, j, _, k, _ = c
                vj = jax.tree_util.tree_map(lambda vl: vl[j], basis)
                w = mv(apply_m(vj))
                # Classical Gram–Schmidt, twice ("twice is enough": Giraud, Langou & Rozložník,
                # Comput. Math. Appl. 50 (2005)). Unused rows of the basis are zero.
                h = _project(basis, w)
                w = K.sub(w, _combine(h, basis))
                h2 = _project(basis, w)
                w = K.sub(w, _combine(h2, basis))
                hn = K.norm(w)
                # hn = 0: the Krylov space is invariant and the solution lies in it ("happy
                # breakdown"); the next basis vector is zero and the estimate below becomes 0.
                inv = jnp.where(hn > 0, 1 / jnp.where(hn > 0, hn, 1), 0).astype(dtype)
                basis = jax.tree_util.tree_map(lambda vl, wl: vl.at[j + 1].set(inv * wl), basis, w)
                col = (h + h2).at[j + 1].set(hn.astype(dtype))
                col = q @ col
                c_, s_, rjj = _givens(col[j], col[j + 1])
                qj, qj1 = q[j], q[j + 1]
                q = q.at[j].set(c_ * qj + s_ * qj1).at[j + 1].set(c_ * qj1 - jnp.conj(s_) * qj)
                rcol = jnp.where(idx < j, col[:m], 0).at[j].set(rjj)
                rt = rt.at[j].set(rcol)
                est = beta * jnp.abs(q[j + 1, 0])
                return basis, q, rt, j + 1, est.astype(rdtype), k + 1, rjj != 0

            init = (basis, q, rt, jnp.zeros((), jnp.int32), beta, k, jnp.ones((), bool))
            basis, q, rt, j, _, k, ok = K.while_loop(cond, body, init)
            g = jnp.where(idx < j, beta.astype(dtype) * q[:m, 0], 0)
            # On breakdown the last diagonal entry is zero: drop that column.
            keep = ok | (idx < j - 1)
            g = jnp.where(keep, g, 0)
            rt = jnp.where(keep[:, None], rt, jnp.eye(m, dtype=dtype))
            y = lax.linalg.triangular_solve(
                rt, g[:, None], left_side=True, lower=True, transpose_a=True
            )[:, 0]
            head = jax.tree_util.tree_map(lambda vl: vl[:m], basis)
            x = K.add(x, apply_m(_combine(y, head)))
            return x, k, jnp.logical_not(ok), None

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
