"""`QR` (least squares / minimum norm for full-rank operators) and `PivotedQR` (any rank).

Both keep Q in LAPACK's compact Householder form and apply it with `ormqr`, never forming it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.lax.linalg import ormqr, triangular_solve

from .._compat import geqp3, geqrf
from ._logdet import slogdet_from_diagonal
from ._misc import (
    dense_matrix,
    check_rcond,
    finite_factor_result,
    matrix_diagonal,
    pivot_result,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


def _h(x: jax.Array) -> jax.Array:
    return jnp.conj(x).T


def _pad(x: jax.Array, n: int) -> jax.Array:
    return jnp.concatenate([x, jnp.zeros(n - x.shape[0], x.dtype)]) if n > x.shape[0] else x


def _apply_q(h, taus, v, adjoint: bool) -> jax.Array:
    """`Q v` or `Qᴴ v` for the full square Q of the compact factorization `(h, taus)`."""
    return ormqr(h, taus, v[:, None], left=True, transpose=adjoint)[:, 0]


def _apply_q_conj(h, taus, v, adjoint: bool) -> jax.Array:
    """`conj(Q) v` or `Qᵀ v`."""
    return jnp.conj(_apply_q(h, taus, jnp.conj(v), adjoint))


class _QRState(eqx.Module):
    h: jax.Array
    taus: jax.Array
    # "ls": the operator is Q R (tall or square: least squares); "mn": it is (Q R)ᴴ (wide: minimum norm).
    mode: str = eqx.field(static=True)
    structs: tuple = eqx.field(static=True)


class QR(AbstractLinearSolver):
    """Householder QR. For a tall (or square) full-column-rank operator it gives the least-squares
    solution `argmin |A x - b|`; for a wide full-row-rank operator the minimum-norm solution. Much
    cheaper than `SVD`; for rank-deficient operators use `PivotedQR` or `SVD`.

    ```python
    x = lx.linear_solve(lx.MatrixLinearOperator(tall), b, lx.QR()).value   # least squares
    ```
    """

    _verdict_checks_solution = True

    def init(self, operator, options):
        matrix = dense_matrix(operator)
        m, n = matrix.shape
        if m >= n:
            h, taus = geqrf(matrix)
            mode = "ls"
        else:
            h, taus = geqrf(_h(matrix))
            mode = "mn"
        return _QRState(h, taus, mode, structures(operator))

    def compute(self, state: _QRState, vector, options):
        b = rhs(vector, state.h.dtype)
        h, taus = state.h.astype(b.dtype), state.taus.astype(b.dtype)
        p, q = h.shape  # the factored matrix is p x q with p >= q
        r = h[:q, :q]  # triangular_solve reads only the upper triangle
        if state.mode == "ls":
            # A = Q R: x = R⁻¹ (Qᴴ b)[:q].
            c = _apply_q(h, taus, b, adjoint=True)[:q]
            x = triangular_solve(r, c[:, None], left_side=True, lower=False)[:, 0]
        else:
            # A = Rᴴ Qᴴ: x = Q [R⁻ᴴ b; 0].
            y = triangular_solve(
                r, b[:, None], left_side=True, lower=False, transpose_a=True, conjugate_a=True
            )[:, 0]
            x = _apply_q(h, taus, _pad(y, p), adjoint=False)
        # QR assumes full rank (use PivotedQR or SVD otherwise): report a rank-deficient R.
        result = pivot_result(matrix_diagonal(r), solution=x)
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _QRState, options):
        # (Q R)ᵀ = (Q̄ R̄)ᴴ and ((Q R)ᴴ)ᵀ = Q̄ R̄; conjugating the reflectors and taus conjugates Q.
        mode = "mn" if state.mode == "ls" else "ls"
        return _QRState(jnp.conj(state.h), jnp.conj(state.taus), mode, swap(state.structs)), options

    def conj(self, state: _QRState, options):
        return _QRState(jnp.conj(state.h), jnp.conj(state.taus), state.mode, state.structs), options

    def logdet(self, state: _QRState, options):
        # Square only. The factored matrix M (A, or Aᴴ after a transpose) is H_0 ⋯ H_{n-1} R with
        # Householder reflectors H_i = I - τ_i v_i v_iᴴ (v_i = [0, …, 1, h[i+1:, i]]), whose
        # determinants are 1 - τ_i |v_i|² (-1 for a real reflection, 1 for τ = 0).
        p, q = state.h.shape
        if p != q:
            raise ValueError(
                f"QR: a log-determinant needs a square operator, got {p} x {q} (after any "
                "transpose)."
            )
        h, taus = state.h, state.taus
        below = jnp.tril(h, -1)
        norms = 1 + jnp.sum(jnp.abs(below) ** 2, axis=0)[: taus.shape[0]]
        reflections = 1 - taus * norms.astype(taus.dtype)
        sign, logabsdet = slogdet_from_diagonal(matrix_diagonal(h))
        q_det = jnp.prod(reflections)
        q_det = q_det / jnp.abs(q_det).astype(q_det.dtype)
        sign = sign * q_det.astype(sign.dtype)
        if state.mode == "mn":  # A = Mᴴ: det A = conj(det M)
            sign = jnp.conj(sign)
        return sign, logabsdet

    def allow_dependent_rows(self, operator):
        return operator.out_size() > operator.in_size()

    def allow_dependent_columns(self, operator):
        return operator.out_size() < operator.in_size()


class _PivotedQRState(eqx.Module):
    h1: jax.Array  # compact A[:, perm] = Q1 R, (m, n)
    taus1: jax.Array
    h2: jax.Array  # compact R_rᴴ = Q2 T, (n, k)
    taus2: jax.Array
    t: jax.Array  # (k, k) upper triangular, identity outside the leading rank x rank block
    perm: jax.Array  # (n,)
    mask: jax.Array  # (k,) True for the first `rank` components
    transposed: bool = eqx.field(static=True)
    structs: tuple = eqx.field(static=True)


class PivotedQR(AbstractLinearSolver):
    """Rank-revealing solve for operators of any shape and rank: column-pivoted QR (LAPACK `geqp3`),
    truncated at the numerical rank, then a second QR that completes an orthogonal decomposition
    `A = Q₁ [Tᴴ 0; 0 0] Q₂ᴴ Pᵀ` (the approach of LAPACK's `gelsy`). Gives the minimum-norm
    least-squares solution `A⁺ b`, like `SVD`, at a fraction of its cost. The numerical rank counts
    the diagonal entries of the pivoted R with `|R_ii| > rcond * |R_00|`.

    **Arguments:**

    - `rcond`: relative threshold for the rank; default machine epsilon times `max(m, n)`.
    """

    rcond: float | None = None

    _verdict_checks_solution = True

    def __check_init__(self):
        check_rcond("PivotedQR", self.rcond)

    def init(self, operator, options):
        matrix = dense_matrix(operator)
        m, n = matrix.shape
        k = min(m, n)
        h1, perm, taus1 = geqp3(matrix)
        rcond = self.rcond if self.rcond is not None else jnp.finfo(matrix.dtype).eps * max(m, n)
        diag = jnp.abs(jnp.diagonal(h1))
        # `diag[:1]`, not `diag[0]`: an empty operator (k = 0) has no leading entry.
        mask = diag > rcond * diag[:1]
        r = jnp.where(mask[:, None], jnp.triu(h1[:k]), 0)
        # Rotate the trapezoid [R11 R12] onto a triangle: rᴴ = Q2 [T; 0].
        h2, taus2 = geqrf(_h(r))
        keep = mask[:, None] & mask[None, :]
        t = jnp.where(keep, jnp.triu(h2[:k, :k]), jnp.eye(k, dtype=h2.dtype))
        return _PivotedQRState(h1, taus1, h2, taus2, t, perm, mask, False, structures(operator))

    def compute(self, state: _PivotedQRState, vector, options):
        b = rhs(vector, state.h1.dtype)
        dtype = b.dtype
        h1, taus1 = state.h1.astype(dtype), state.taus1.astype(dtype)
        h2, taus2 = state.h2.astype(dtype), state.taus2.astype(dtype)
        t, mask = state.t.astype(dtype), state.mask
        m, n = h1.shape
        k = mask.shape[0]
        if not state.transposed:
            # A⁺ b = P Q2 [T⁻ᴴ (Q1ᴴ b)[:k]; 0] on the rank-r block.
            c = jnp.where(mask, _apply_q(h1, taus1, b, adjoint=True)[:k], 0)
            w = triangular_solve(
                t, c[:, None], left_side=True, lower=False, transpose_a=True, conjugate_a=True
            )[:, 0]
            y = _apply_q(h2, taus2, _pad(w, n), adjoint=False)
            x = jnp.zeros_like(y).at[state.perm].set(y)
        else:
            # Aᵀ = P Q̄2 [T̄ 0; 0 0] Q1ᵀ, so (Aᵀ)⁺ b = Q̄1 [T̄⁻¹ (Q2ᵀ Pᵀ b)[:k]; 0].
            c = jnp.where(mask, _apply_q_conj(h2, taus2, b[state.perm], adjoint=True)[:k], 0)
            w = triangular_solve(jnp.conj(t), c[:, None], left_side=True, lower=False)[:, 0]
            x = _apply_q_conj(h1, taus1, _pad(w, m), adjoint=False)
        # An infinite entry of A can leave x finite (its column is cut off); R's diagonal shows it.
        result = finite_factor_result(matrix_diagonal(h1[:k, :k]), solution=x)
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _PivotedQRState, options):
        return _flip(state), options

    def conj(self, state: _PivotedQRState, options):
        conj = jnp.conj
        return (
            _PivotedQRState(
                conj(state.h1),
                conj(state.taus1),
                conj(state.h2),
                conj(state.taus2),
                conj(state.t),
                state.perm,
                state.mask,
                state.transposed,
                state.structs,
            ),
            options,
        )

    def allow_dependent_rows(self, operator):
        return True

    def allow_dependent_columns(self, operator):
        return True


def _flip(state: _PivotedQRState) -> _PivotedQRState:
    return _PivotedQRState(
        state.h1,
        state.taus1,
        state.h2,
        state.taus2,
        state.t,
        state.perm,
        state.mask,
        not state.transposed,
        swap(state.structs),
    )
