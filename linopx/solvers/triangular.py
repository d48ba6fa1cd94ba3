"""`Triangular`: for lower- or upper-triangular operators."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.lax.linalg import triangular_solve

from ..linops.functions import has_unit_diagonal, is_lower_triangular, is_upper_triangular
from ._logdet import slogdet_from_diagonal
from ._misc import (
    dense_matrix,
    check_square,
    finite_factor_result,
    matrix_diagonal,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


class _TriangularState(eqx.Module):
    matrix: jax.Array
    lower: bool = eqx.field(static=True)
    unit_diagonal: bool = eqx.field(static=True)
    transposed: bool = eqx.field(static=True)
    structs: tuple = eqx.field(static=True)


class Triangular(AbstractLinearSolver):
    """Forward or back substitution (LAPACK `trsm`), O(n²), for operators tagged
    `lx.lower_triangular_tag` or `lx.upper_triangular_tag` (with `lx.unit_diagonal_tag` the diagonal is
    not read). A zero on the diagonal gives `RESULTS.singular`."""

    _verdict_checks_solution = True

    def init(self, operator, options):
        check_square(operator, "Triangular")
        if is_lower_triangular(operator):
            lower = True
        elif is_upper_triangular(operator):
            lower = False
        else:
            raise ValueError(
                "Triangular needs an operator tagged `lx.lower_triangular_tag` or "
                "`lx.upper_triangular_tag`."
            )
        return _TriangularState(
            dense_matrix(operator), lower, has_unit_diagonal(operator), False, structures(operator)
        )

    def compute(self, state: _TriangularState, vector, options):
        b = rhs(vector, state.matrix.dtype)
        x = triangular_solve(
            state.matrix.astype(b.dtype),
            b[:, None],
            left_side=True,
            lower=state.lower,
            transpose_a=state.transposed,
            unit_diagonal=state.unit_diagonal,
        )[:, 0]
        result = finite_factor_result(matrix_diagonal(state.matrix), solution=x)
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _TriangularState, options):
        return (
            _TriangularState(
                state.matrix,
                state.lower,
                state.unit_diagonal,
                not state.transposed,
                swap(state.structs),
            ),
            options,
        )

    def conj(self, state: _TriangularState, options):
        return eqx.tree_at(lambda s: s.matrix, state, jnp.conj(state.matrix)), options

    def logdet(self, state: _TriangularState, options):
        # The determinant of a triangular matrix is the product of its diagonal (1 with a unit
        # diagonal). The derivative is the default's, tr(A⁻¹ A') with the full A' (as for
        # `jnp.linalg.slogdet`): A' need not be triangular.
        d = matrix_diagonal(state.matrix)
        if state.unit_diagonal:
            d = jnp.ones_like(d)
        return slogdet_from_diagonal(d)

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
