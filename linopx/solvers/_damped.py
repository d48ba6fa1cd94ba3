"""Damped least squares as an undamped one: `min |A x - b|² + d² |x|²` is exactly the least-squares
problem for the stacked operator `[A; d I]` and right-hand side `(b, 0)`.

`LSQR` and `LSMR` apply this rewrite in their `reformulate` hook (which `linear_solve` calls before
`init`) when `damp != 0`. The stacked operator has independent columns (for `d != 0`), so its
least-squares solution is its pseudoinverse solution, and the pseudoinverse derivative rules of the
solve primitive give exact derivatives, also with respect to `d` itself. (The damped solution
`(AᴴA + d²I)⁻¹Aᴴb` is not `A⁺b`, so differentiating the damped solve as if it were would be wrong.)

This module imports neither solver: they import it (no import cycle). It works on any solver with
a `damp` field.
"""

from __future__ import annotations

import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _tree
from ..linops import functions as F
from ..linops.base import AbstractLinearOperator


class _StackedLinearOperator(AbstractLinearOperator):
    """`x ↦ (A x, d x)`, or its transpose `(u, w) ↦ Aᵀ u + d w` when `transposed`."""

    operator: AbstractLinearOperator
    damp: jax.Array
    transposed: bool = eqx.field(static=True, default=False)

    def _scaled(self, x):
        return jax.tree_util.tree_map(lambda leaf: self.damp.astype(leaf.dtype) * leaf, x)

    def mv(self, vector):
        if not self.transposed:
            return (self.operator.mv(vector), self._scaled(vector))
        u, w = vector
        at_u = self.operator.transpose().mv(u)
        return jax.tree_util.tree_map(
            lambda a, b: (
                a.astype(_tree.common_dtype(a.dtype, b.dtype))
                + b.astype(_tree.common_dtype(a.dtype, b.dtype))
            ),
            at_u,
            self._scaled(w),
        )

    def as_matrix(self):
        from ..linops.function import matrix_from_mv

        return matrix_from_mv(self.mv, self.in_structure(), self.out_structure())

    def transpose(self):
        return _StackedLinearOperator(self.operator, self.damp, not self.transposed)

    def _stacked_structure(self):
        return (self.operator.out_structure(), self.operator.in_structure())

    def in_structure(self):
        return self._stacked_structure() if self.transposed else self.operator.in_structure()

    def out_structure(self):
        return self.operator.in_structure() if self.transposed else self._stacked_structure()


def _register() -> None:
    for pred in (
        F.is_symmetric,
        F.is_diagonal,
        F.is_tridiagonal,
        F.is_lower_triangular,
        F.is_upper_triangular,
        F.is_positive_semidefinite,
        F.is_negative_semidefinite,
        F.has_unit_diagonal,
    ):
        pred.register(_StackedLinearOperator)(lambda op: False)
    F.conj.register(_StackedLinearOperator)(
        lambda op: _StackedLinearOperator(F.conj(op.operator), op.damp, op.transposed)
    )
    F.materialise.register(_StackedLinearOperator)(
        lambda op: _StackedLinearOperator(F.materialise(op.operator), op.damp, op.transposed)
    )
    F.linearise.register(_StackedLinearOperator)(
        lambda op: _StackedLinearOperator(F.linearise(op.operator), op.damp, op.transposed)
    )
    F.diagonal.register(_StackedLinearOperator)(F._probe_diagonal)


_register()


def is_damped(damp: Any) -> bool:
    """Whether a solver's `damp` is not a concrete zero (a traced `damp` counts as damped: the
    rewrite is exact for `damp == 0` too)."""
    if isinstance(damp, numbers.Number):
        return damp != 0
    if isinstance(damp, jax.core.Tracer):
        return True
    return bool(np.any(np.asarray(damp) != 0))


def undamp(operator: AbstractLinearOperator, vector: Any, solver: Any):
    """Return `(stacked operator, (vector, 0), solver with damp=0)` for a solver with a `damp`
    field."""
    real = jnp.finfo(_tree.structure_dtype(operator.in_structure())).dtype
    damp = jnp.asarray(solver.damp).astype(real)
    stacked = _StackedLinearOperator(operator, damp)
    zeros = _tree.tree_zeros(operator.in_structure())
    return stacked, (vector, zeros), eqx.tree_at(lambda s: s.damp, solver, 0.0)


def reformulate(solver: Any, operator: AbstractLinearOperator, vector: Any):
    """`AbstractLinearSolver.reformulate` for a least-squares solver with a `damp` field: the
    problem unchanged when undamped, else the stacked undamped problem of `undamp`, with
    `rebuild_state=True` (a state made for `A` does not fit `[A; d I]`; an iterative solver's
    `init` is cheap)."""
    if not is_damped(solver.damp):
        return operator, vector, solver, False
    operator, vector, solver = undamp(operator, vector, solver)
    return operator, vector, solver, True
