"""`QR` (least squares / minimum norm for full-rank operators) and `PivotedQR` (any rank)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.lax.linalg import qr as lax_qr, triangular_solve

from .._solution import RESULTS
from ._misc import rhs, solution_structure, structures, swap, unflat
from .base import AbstractLinearSolver


def _h(x: jax.Array) -> jax.Array:
    return jnp.conj(x).T


class _QRState(eqx.Module):
    q: jax.Array
    r: jax.Array
    # "ls": the operator is q r (tall or square: least squares); "mn": it is (q r)ᴴ (wide: minimum norm).
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

    def init(self, operator, options):
        matrix = operator.as_matrix()
        m, n = matrix.shape
        if m >= n:
            q, r = lax_qr(matrix, full_matrices=False)
            mode = "ls"
        else:
            q, r = lax_qr(_h(matrix), full_matrices=False)
            mode = "mn"
        return _QRState(q, r, mode, structures(operator))

    def compute(self, state: _QRState, vector, options):
        b = rhs(vector, state.q.dtype)
        q, r = state.q.astype(b.dtype), state.r.astype(b.dtype)
        if state.mode == "ls":
            # A = q r: x = r⁻¹ qᴴ b.
            x = triangular_solve(r, (_h(q) @ b)[:, None], left_side=True, lower=False)[:, 0]
        else:
            # A = rᴴ qᴴ: x = q r⁻ᴴ b.
            y = triangular_solve(
                r, b[:, None], left_side=True, lower=False, transpose_a=True, conjugate_a=True
            )[:, 0]
            x = q @ y
        return unflat(x, solution_structure(state.structs)), RESULTS.successful, {}

    def transpose(self, state: _QRState, options):
        # (q r)ᵀ = (q̄ r̄)ᴴ and ((q r)ᴴ)ᵀ = q̄ r̄: conjugate the factors and swap the mode.
        mode = "mn" if state.mode == "ls" else "ls"
        return _QRState(jnp.conj(state.q), jnp.conj(state.r), mode, swap(state.structs)), options

    def conj(self, state: _QRState, options):
        return _QRState(jnp.conj(state.q), jnp.conj(state.r), state.mode, state.structs), options

    def allow_dependent_rows(self, operator):
        return operator.out_size() > operator.in_size()

    def allow_dependent_columns(self, operator):
        return operator.out_size() < operator.in_size()


class _PivotedQRState(eqx.Module):
    q: jax.Array  # (m, k)
    t: jax.Array  # (k, k) upper triangular, zero outside the leading rank x rank block
    z: jax.Array  # (n, k)
    perm: jax.Array  # (n,)
    mask: jax.Array  # (k,) True for the first `rank` components
    transposed: bool = eqx.field(static=True)
    structs: tuple = eqx.field(static=True)


class PivotedQR(AbstractLinearSolver):
    """Rank-revealing solve for operators of any shape and rank: column-pivoted QR (LAPACK `geqp3`)
    followed by a second QR that completes an orthogonal decomposition `A = Q Tᴴ Zᴴ Pᵀ`
    (as LAPACK's `gelsy`). Gives the minimum-norm least-squares solution `A⁺ b`, like `SVD`, and is
    several times faster than it. The numerical rank counts the diagonal entries of the pivoted R
    with `|R_ii| > rcond * |R_00|`.

    **Arguments:**

    - `rcond`: relative threshold for the rank; default machine epsilon times `max(m, n)`.
    """

    rcond: float | None = None

    def __check_init__(self):
        if self.rcond is not None and not self.rcond >= 0:
            raise ValueError(f"PivotedQR: `rcond` must be non-negative, got {self.rcond}.")

    def init(self, operator, options):
        matrix = operator.as_matrix()
        m, n = matrix.shape
        k = min(m, n)
        q, r, perm = lax_qr(matrix, pivoting=True, full_matrices=False)
        rcond = self.rcond if self.rcond is not None else jnp.finfo(matrix.dtype).eps * max(m, n)
        diag = jnp.abs(jnp.diagonal(r))
        mask = diag > rcond * diag[0] if k > 0 else jnp.zeros((0,), bool)
        r = jnp.where(mask[:, None], r, 0)
        # Rotate the trapezoidal [R11 R12] onto a triangle: rᴴ = z t.
        z, t = lax_qr(_h(r), full_matrices=False)
        return _PivotedQRState(q, t, z, perm, mask, False, structures(operator))

    def compute(self, state: _PivotedQRState, vector, options):
        b = rhs(vector, state.q.dtype)
        dtype = b.dtype
        q, t, z = state.q.astype(dtype), state.t.astype(dtype), state.z.astype(dtype)
        mask = state.mask
        k = mask.shape[0]
        keep = mask[:, None] & mask[None, :]
        t_masked = jnp.where(keep, t, jnp.eye(k, dtype=dtype))
        if not state.transposed:
            # A⁺ b = P z (tᴴ)⁺ qᴴ b
            c = jnp.where(mask, _h(q) @ b, 0)
            w = triangular_solve(
                t_masked, c[:, None], left_side=True, lower=False, transpose_a=True, conjugate_a=True
            )[:, 0]
            y = z @ w
            x = jnp.zeros_like(y).at[state.perm].set(y)
        else:
            # (Aᵀ)⁺ b = q̄ t̄⁺ zᵀ Pᵀ b
            c = jnp.where(mask, z.T @ b[state.perm], 0)
            w = triangular_solve(jnp.conj(t_masked), c[:, None], left_side=True, lower=False)[:, 0]
            x = jnp.conj(q) @ w
        return unflat(x, solution_structure(state.structs)), RESULTS.successful, {}

    def transpose(self, state: _PivotedQRState, options):
        return (
            _PivotedQRState(
                state.q, state.t, state.z, state.perm, state.mask, not state.transposed,
                swap(state.structs),
            ),
            options,
        )

    def conj(self, state: _PivotedQRState, options):
        return (
            _PivotedQRState(
                jnp.conj(state.q), jnp.conj(state.t), jnp.conj(state.z), state.perm, state.mask,
                state.transposed, state.structs,
            ),
            options,
        )

    def allow_dependent_rows(self, operator):
        return True

    def allow_dependent_columns(self, operator):
        return True
