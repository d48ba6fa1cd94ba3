"""`Normal`: solve through the normal equations with any inner solver."""

from __future__ import annotations

from typing import Any

import equinox as eqx

from .. import _tree
from ..linops.base import AbstractLinearOperator
from ..linops.composite import TaggedLinearOperator
from ..linops.functions import conj as conj_operator
from ..linops.tags import positive_semidefinite_tag, symmetric_tag
from .base import AbstractLinearSolver


def _adjoint(operator: AbstractLinearOperator) -> AbstractLinearOperator:
    return conj_operator(operator.transpose())


def _normal_operator(operator: AbstractLinearOperator, tall: bool) -> AbstractLinearOperator:
    """`AᴴA` (tall) or `AAᴴ` (wide), tagged positive semidefinite (and symmetric when real)."""
    adj = _adjoint(operator)
    normal = adj @ operator if tall else operator @ adj
    complex_ = _tree.is_complex_structure(operator.in_structure()) or _tree.is_complex_structure(
        operator.out_structure()
    )
    tags = (positive_semidefinite_tag,) if complex_ else (positive_semidefinite_tag, symmetric_tag)
    return TaggedLinearOperator(normal, tags)


class _NormalState(eqx.Module):
    inner_state: Any
    operator: AbstractLinearOperator
    tall: bool = eqx.field(static=True)


class Normal(AbstractLinearSolver):
    """Solve the normal equations: `x = (AᴴA)⁻¹ Aᴴ b` for a tall (or square) operator, `x = Aᴴ (AAᴴ)⁻¹ b`
    for a wide one, with `inner_solver` on the (positive semidefinite-tagged) normal operator.

    Squares the condition number, so prefer `QR` for ill-conditioned problems; useful with a
    matrix-free operator and an iterative inner solver (`lx.Normal(lx.CG(...))`), or `lx.Cholesky()`
    for small, well-conditioned least squares.

    **Arguments:**

    - `inner_solver`: any solver for the normal operator, e.g. `lx.Cholesky()`, `lx.LU()`, `lx.CG(...)`.
    """

    inner_solver: AbstractLinearSolver

    def __check_init__(self):
        if not isinstance(self.inner_solver, AbstractLinearSolver):
            raise TypeError("Normal(inner_solver) needs a linopx solver, e.g. `lx.Normal(lx.Cholesky())`.")

    def init(self, operator, options):
        tall = operator.out_size() >= operator.in_size()
        inner_state = self.inner_solver.init(_normal_operator(operator, tall), options)
        return _NormalState(inner_state, operator, tall)

    def compute(self, state: _NormalState, vector, options):
        adj = _adjoint(state.operator)
        if state.tall:
            x, result, stats = self.inner_solver.compute(state.inner_state, adj.mv(vector), options)
        else:
            y, result, stats = self.inner_solver.compute(state.inner_state, vector, options)
            x = adj.mv(y)
        return x, result, stats

    def transpose(self, state: _NormalState, options):
        # (AᴴA) for A becomes conj(AᴴA) = (Aᵀ)(Aᵀ)ᴴ for Aᵀ, and vice versa: conjugate the inner state.
        inner_state, options = self.inner_solver.conj(state.inner_state, options)
        return _NormalState(inner_state, state.operator.transpose(), not state.tall), options

    def conj(self, state: _NormalState, options):
        inner_state, options = self.inner_solver.conj(state.inner_state, options)
        return _NormalState(inner_state, conj_operator(state.operator), state.tall), options

    def _inner_allows_singular(self, operator) -> bool:
        tall = operator.out_size() >= operator.in_size()
        normal = _normal_operator(operator, tall)
        return self.inner_solver.allow_dependent_rows(normal) and self.inner_solver.allow_dependent_columns(
            normal
        )

    def allow_dependent_rows(self, operator):
        return operator.out_size() > operator.in_size() or self._inner_allows_singular(operator)

    def allow_dependent_columns(self, operator):
        return operator.out_size() < operator.in_size() or self._inner_allows_singular(operator)
