"""`SVD`: the pseudoinverse by singular value decomposition."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._solution import RESULTS
from ._misc import (
    dense_matrix,
    check_rcond,
    finite_factor_result,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


class _SVDState(eqx.Module):
    u: jax.Array
    s: jax.Array
    vh: jax.Array
    finite: jax.Array  # whether the matrix was finite (else the factors are those of zero)
    structs: tuple = eqx.field(static=True)


class SVD(AbstractLinearSolver):
    """The pseudoinverse solution `A⁺ b` through the thin SVD `A = U S Vᴴ`, for operators of any
    shape and rank. The most robust and the slowest dense solver; `PivotedQR` is usually as accurate
    and faster.

    **Arguments:**

    - `rcond`: singular values `<= rcond * max(s)` are treated as zero. Default: machine epsilon
      times `max(m, n)` (NumPy's `lstsq` default).
    """

    rcond: float | None = None

    _verdict_checks_solution = True

    def __check_init__(self):
        check_rcond("SVD", self.rcond)

    def init(self, operator, options):
        matrix = dense_matrix(operator)
        # LAPACK's SVD (gesdd) can loop forever on a matrix with an infinite entry off the diagonal
        # (`np.linalg.svd` hangs too): factorize zeros instead, and report `nonfinite_input`.
        finite = jnp.all(jnp.isfinite(matrix))
        u, s, vh = jnp.linalg.svd(jnp.where(finite, matrix, 0), full_matrices=False)
        return _SVDState(u, s, vh, finite, structures(operator))

    def compute(self, state: _SVDState, vector, options):
        b = rhs(vector, state.u.dtype)
        u, vh = state.u.astype(b.dtype), state.vh.astype(b.dtype)
        s = state.s
        m, n = u.shape[0], vh.shape[1]
        rcond = self.rcond if self.rcond is not None else jnp.finfo(s.dtype).eps * max(m, n)
        big = s > rcond * jnp.max(s, initial=0.0)
        s_inv = jnp.where(big, 1 / jnp.where(big, s, 1), 0).astype(b.dtype)
        x = jnp.conj(vh).T @ (s_inv * (jnp.conj(u).T @ b))
        # An infinite entry of A can leave x finite (its column is cut off); the spectrum shows it.
        result = RESULTS.where(
            state.finite, finite_factor_result(s, solution=x), RESULTS.nonfinite_input
        )
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _SVDState, options):
        # Aᵀ = vhᵀ S uᵀ.
        return (
            _SVDState(state.vh.T, state.s, state.u.T, state.finite, swap(state.structs)),
            options,
        )

    def conj(self, state: _SVDState, options):
        return (
            _SVDState(jnp.conj(state.u), state.s, jnp.conj(state.vh), state.finite, state.structs),
            options,
        )

    def logdet(self, state: _SVDState, options):
        # A = U S Vᴴ: log|det A| = Σ log s_i; the sign is det(U) det(Vᴴ), read with an LU of each
        # (unitary) factor: two extra O(n³) factorizations of well-conditioned matrices, which
        # `LU` or `Cholesky` avoid.
        u, s, vh = state.u, state.s, state.vh
        if u.shape[0] != vh.shape[1]:
            raise ValueError(
                f"SVD: a log-determinant needs a square operator, got {u.shape[0]} x {vh.shape[1]}."
            )
        sign_u, _ = jnp.linalg.slogdet(u)
        sign_vh, _ = jnp.linalg.slogdet(vh)
        logabsdet = jnp.where(state.finite, jnp.sum(jnp.log(s)), jnp.nan)
        sign = jnp.where(jnp.any(s == 0), 0, sign_u * sign_vh)
        return sign.astype(u.dtype), logabsdet

    def allow_dependent_rows(self, operator):
        return True

    def allow_dependent_columns(self, operator):
        return True
