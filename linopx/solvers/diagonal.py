"""`Diagonal`: for diagonal operators."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..linops.functions import diagonal, is_diagonal
from ._logdet import slogdet_from_diagonal
from ._misc import (
    check_rcond,
    check_square,
    finite_factor_result,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


class _DiagonalState(eqx.Module):
    diagonal: jax.Array
    structs: tuple = eqx.field(static=True)


class Diagonal(AbstractLinearSolver):
    """Elementwise division, for operators that are diagonal (`lx.DiagonalLinearOperator`, or tagged
    `lx.diagonal_tag`). Reads the diagonal with `lx.diagonal` (one `mv` for a matrix-free operator).

    **Arguments:**

    - `well_posed`: if `False` (the default), zero or tiny diagonal entries are treated as a
      rank deficiency and give the pseudoinverse (those components of the solution are zero). If
      `True`, the diagonal is assumed nonzero and a zero entry gives `RESULTS.singular`.
    - `rcond`: with `well_posed=False`, entries with `|d_i| <= rcond * max|d|` count as zero.
      Default: machine epsilon times `n`.
    """

    well_posed: bool = False
    rcond: float | None = None

    _verdict_checks_solution = True

    def __check_init__(self):
        check_rcond("Diagonal", self.rcond)
        if not isinstance(self.well_posed, (bool, np.bool_)):
            raise TypeError(
                f"Diagonal: `well_posed` must be True or False, got {self.well_posed!r}."
            )

    def init(self, operator, options):
        check_square(operator, "Diagonal")
        if not is_diagonal(operator):
            raise ValueError(
                "Diagonal needs a diagonal operator (`lx.DiagonalLinearOperator` or one tagged "
                "`lx.diagonal_tag`)."
            )
        return _DiagonalState(diagonal(operator), structures(operator))

    def compute(self, state: _DiagonalState, vector, options):
        b = rhs(vector, state.diagonal.dtype)
        d = state.diagonal.astype(b.dtype)
        if self.well_posed:
            x = b / d
        else:
            rcond = self.rcond
            if rcond is None:
                rcond = jnp.finfo(d.dtype).eps * d.shape[0]
            tiny = jnp.abs(d) <= rcond * jnp.max(jnp.abs(d), initial=0.0)
            x = jnp.where(tiny, 0, b / jnp.where(tiny, 1, d))
        return (
            unflat(x, solution_structure(state.structs, x.dtype)),
            finite_factor_result(d, solution=x),
            {},
        )

    def transpose(self, state, options):
        return _DiagonalState(state.diagonal, swap(state.structs)), options

    def conj(self, state, options):
        return _DiagonalState(jnp.conj(state.diagonal), state.structs), options

    def logdet(self, state: _DiagonalState, options):
        return slogdet_from_diagonal(state.diagonal)

    def logdet_tangent(self, state: _DiagonalState, operator, tangent, options):
        # A⁻¹ is diagonal, so tr(A⁻¹ A') = Σ A'_ii / d_i: O(n), whatever A' is off the diagonal.
        # `d` is read from the operator (not the state), so that it carries derivatives.
        d = diagonal(operator)
        d_dot = tangent(diagonal)
        dtype = jnp.result_type(d, d_dot)
        return jnp.sum(d_dot.astype(dtype) / d.astype(dtype))

    def allow_dependent_rows(self, operator):
        return not self.well_posed

    def allow_dependent_columns(self, operator):
        return not self.well_posed
