"""`Cholesky`: for positive (or negative) semidefinite-tagged operators."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.lax.linalg import cholesky, triangular_solve

from ..linops.functions import is_negative_semidefinite, is_positive_semidefinite
from ._logdet import slogdet_from_diagonal
from ._misc import (
    dense_matrix,
    check_square,
    matrix_diagonal,
    pivot_result,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


class _CholeskyState(eqx.Module):
    factor: jax.Array  # lower triangular L with ±A = L Lᴴ
    negative: bool = eqx.field(static=True)
    structs: tuple = eqx.field(static=True)


class Cholesky(AbstractLinearSolver):
    """Cholesky decomposition `A = L Lᴴ`, about twice as fast as `LU`, for operators tagged
    `lx.positive_semidefinite_tag` (or `negative_semidefinite_tag`, factorizing `-A`). For complex
    operators the tag means Hermitian. The matrix must in fact be definite (nonsingular): a singular
    or indefinite one gives `RESULTS.singular`.

    ```python
    A = lx.MatrixLinearOperator(spd_matrix, lx.positive_semidefinite_tag)
    lx.linear_solve(A, b, lx.Cholesky())
    ```
    """

    _verdict_checks_solution = True

    def init(self, operator, options):
        check_square(operator, "Cholesky")
        if is_positive_semidefinite(operator):
            negative = False
        elif is_negative_semidefinite(operator):
            negative = True
        else:
            raise ValueError(
                "Cholesky needs an operator tagged `lx.positive_semidefinite_tag` or "
                "`lx.negative_semidefinite_tag`; use `lx.LU()` for a general square matrix."
            )
        matrix = dense_matrix(operator)
        factor = cholesky(-matrix if negative else matrix, symmetrize_input=False)
        return _CholeskyState(factor, negative, structures(operator))

    def compute(self, state: _CholeskyState, vector, options):
        b = rhs(vector, state.factor.dtype)
        L = state.factor.astype(b.dtype)
        y = triangular_solve(L, b[:, None], left_side=True, lower=True)
        x = triangular_solve(L, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True)[
            :, 0
        ]
        if state.negative:
            x = -x
        # The pivots of A = L Lᴴ are |L_ii|².
        result = pivot_result(jnp.abs(matrix_diagonal(state.factor)) ** 2, solution=x)
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _CholeskyState, options):
        # A is Hermitian, so Aᵀ = conj(A), whose factor is conj(L).
        return _CholeskyState(jnp.conj(state.factor), state.negative, swap(state.structs)), options

    def conj(self, state: _CholeskyState, options):
        return _CholeskyState(jnp.conj(state.factor), state.negative, state.structs), options

    def logdet(self, state: _CholeskyState, options):
        # ±A = L Lᴴ: log|det A| = 2 Σ log|L_ii|; det A > 0, or (-1)ⁿ |det A| when -A was factorized.
        d = jnp.abs(matrix_diagonal(state.factor))
        n = d.shape[0]
        sign, half = slogdet_from_diagonal(d)
        if state.negative and n % 2:
            sign = -sign
        return sign.astype(state.factor.dtype), 2 * half

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
