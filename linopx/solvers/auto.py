"""`AutoLinearSolver`: picks a solver from the operator's tags and shape, at trace time."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _tree
from ..linops.base import AbstractLinearOperator
from ..linops.functions import (
    is_diagonal,
    is_lower_triangular,
    is_negative_semidefinite,
    is_positive_semidefinite,
    is_tridiagonal,
    is_upper_triangular,
)
from .base import AbstractLinearSolver
from .cholesky import Cholesky
from .diagonal import Diagonal
from .lu import LU
from .qr import QR, PivotedQR
from .triangular import Triangular
from .tridiagonal import Tridiagonal


def _sparse_types() -> tuple:
    try:
        from ..linops.sparse import SparseCOOLinearOperator
    except ImportError:  # pragma: no cover - the sparse module is part of the package
        return ()
    return (SparseCOOLinearOperator,)


def _unwrap(operator: AbstractLinearOperator) -> AbstractLinearOperator:
    from ..linops.composite import TaggedLinearOperator

    while isinstance(operator, TaggedLinearOperator):
        operator = operator.operator
    return operator


def _contains_sparse(operator: AbstractLinearOperator, sparse_types: tuple) -> bool:
    if not sparse_types:
        return False
    found = jax.tree_util.tree_leaves(operator, is_leaf=lambda x: isinstance(x, sparse_types))
    return any(isinstance(x, sparse_types) for x in found)


def _operator_dtype(operator: AbstractLinearOperator):
    return _tree.common_dtype(
        _tree.structure_dtype(operator.in_structure()),
        _tree.structure_dtype(operator.out_structure()),
    )


class _AutoState(eqx.Module):
    solver: AbstractLinearSolver = eqx.field(static=True)
    state: Any


class AutoLinearSolver(AbstractLinearSolver):
    """Choose a solver from the operator's structure (tags, type, shape), at trace time.

    **Arguments:**

    - `well_posed`:
        - `True`: the operator is square and nonsingular. Picks, in order: `Diagonal` (diagonal),
          `Tridiagonal`, `Triangular`, `Cholesky` (positive/negative semidefinite tag), `SparseLU`
          (sparse), `LU`. A non-square operator raises `ValueError`.
        - `None` (default): as `True` for square operators; for non-square ones the least-squares
          (tall) or minimum-norm (wide) solution, assuming full rank: `QR` (dense), `LSMR` (sparse).
        - `False`: any shape and rank, the minimum-norm least-squares solution: `Diagonal(well_posed=False)`
          for diagonal operators, `PivotedQR` for dense ones, `LSMR` for sparse ones.

    A sparse operator is never densified: a sparse operator inside a composite (e.g. a sum) raises
    an error asking for an explicit solver. Use `select_solver(operator)` to see the choice.
    """

    well_posed: bool | None = None

    def __check_init__(self):
        if self.well_posed not in (True, False, None):
            raise ValueError(f"`well_posed` must be True, False or None, got {self.well_posed!r}.")

    def select_solver(self, operator: AbstractLinearOperator) -> AbstractLinearSolver:
        """Return the solver this `AutoLinearSolver` uses for `operator`."""
        if not isinstance(operator, AbstractLinearOperator):
            raise TypeError(
                "select_solver needs a linopx operator; wrap arrays in `lx.MatrixLinearOperator`."
            )
        m, n = operator.out_size(), operator.in_size()
        square = m == n
        if self.well_posed is True and not square:
            raise ValueError(
                f"AutoLinearSolver(well_posed=True) needs a square operator, got {m} x {n}. Use "
                "`well_posed=None` for least squares / minimum norm, or `well_posed=False` for a "
                "possibly rank-deficient operator."
            )
        sparse_types = _sparse_types()
        if sparse_types and isinstance(_unwrap(operator), sparse_types):
            if square and self.well_posed is not False:
                from .sparse import SparseCholesky, SparseLU, _suitesparse

                definite = is_positive_semidefinite(operator) or is_negative_semidefinite(operator)
                if definite and _suitesparse.available():
                    return SparseCholesky()
                return SparseLU()
            from .lsmr import LSMR

            # 1e-10, but never below 100 eps: float32 (eps 1.2e-7) cannot reach 1e-10, and LSMR
            # would end every float32 solve with `stagnation` despite an accurate answer.
            eps = float(jnp.finfo(_operator_dtype(operator)).eps)
            tol = max(1e-10, 100 * eps)
            return LSMR(rtol=tol, atol=tol)
        if _contains_sparse(operator, sparse_types):
            raise ValueError(
                "AutoLinearSolver will not densify a sparse operator inside a composite "
                f"({type(operator).__name__}). Build a single `lx.SparseCOOLinearOperator` (e.g. "
                "with `.from_scipy`), or pass an iterative solver such as `lx.GMRES(...)` or "
                "`lx.LSMR(...)` explicitly."
            )
        if self.well_posed is False:
            if square and is_diagonal(operator):
                return Diagonal(well_posed=False)
            return PivotedQR()
        if not square:
            return QR()
        if is_diagonal(operator):
            return Diagonal(well_posed=True)
        if is_tridiagonal(operator):
            return Tridiagonal()
        if is_lower_triangular(operator) or is_upper_triangular(operator):
            return Triangular()
        if is_positive_semidefinite(operator) or is_negative_semidefinite(operator):
            return Cholesky()
        return LU()

    def init(self, operator, options):
        solver = self.select_solver(operator)
        return _AutoState(solver, solver.init(operator, options))

    def compute(self, state: _AutoState, vector, options):
        return state.solver.compute(state.state, vector, options)

    def transpose(self, state: _AutoState, options):
        inner, options = state.solver.transpose(state.state, options)
        return _AutoState(state.solver, inner), options

    def conj(self, state: _AutoState, options):
        inner, options = state.solver.conj(state.state, options)
        return _AutoState(state.solver, inner), options

    def logdet(self, state: _AutoState, options):
        return state.solver.logdet(state.state, options)

    def logdet_tangent(self, state: _AutoState, operator, tangent, options):
        return state.solver.logdet_tangent(state.state, operator, tangent, options)

    def allow_dependent_rows(self, operator):
        return self.select_solver(operator).allow_dependent_rows(operator)

    def allow_dependent_columns(self, operator):
        return self.select_solver(operator).allow_dependent_columns(operator)
