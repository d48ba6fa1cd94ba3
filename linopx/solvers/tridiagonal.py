"""`Tridiagonal`: for tridiagonal operators."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.lax.linalg import tridiagonal_solve

from ..linops.functions import is_tridiagonal, tridiagonal
from ._misc import (
    check_square,
    finite_factor_result,
    rhs,
    solution_structure,
    structures,
    swap,
    unflat,
)
from .base import AbstractLinearSolver


class _TridiagonalState(eqx.Module):
    diagonal: jax.Array
    lower: jax.Array
    upper: jax.Array
    structs: tuple = eqx.field(static=True)


class Tridiagonal(AbstractLinearSolver):
    """O(n) solve for tridiagonal operators (`lx.TridiagonalLinearOperator` or tagged
    `lx.tridiagonal_tag`), through `jax.lax.linalg.tridiagonal_solve`. A matrix-free operator tagged
    tridiagonal is read with three `mv`s. A singular system gives `RESULTS.singular`."""

    _verdict_checks_solution = True

    def init(self, operator, options):
        check_square(operator, "Tridiagonal")
        if not is_tridiagonal(operator):
            raise ValueError(
                "Tridiagonal needs a tridiagonal operator (`lx.TridiagonalLinearOperator` or one "
                "tagged `lx.tridiagonal_tag`)."
            )
        d, lo, up = tridiagonal(operator)
        return _TridiagonalState(d, lo, up, structures(operator))

    def compute(self, state: _TridiagonalState, vector, options):
        b = rhs(vector, state.diagonal.dtype)
        dtype = b.dtype
        zero = jnp.zeros((1,), dtype)
        # LAPACK layout: dl[0] = 0 and du[-1] = 0.
        dl = jnp.concatenate([zero, state.lower.astype(dtype)])
        du = jnp.concatenate([state.upper.astype(dtype), zero])
        x = tridiagonal_solve(dl, state.diagonal.astype(dtype), du, b[:, None])[:, 0]
        result = finite_factor_result(state.diagonal, state.lower, state.upper, solution=x)
        return unflat(x, solution_structure(state.structs, x.dtype)), result, {}

    def transpose(self, state: _TridiagonalState, options):
        return (
            _TridiagonalState(state.diagonal, state.upper, state.lower, swap(state.structs)),
            options,
        )

    def conj(self, state: _TridiagonalState, options):
        return (
            _TridiagonalState(
                jnp.conj(state.diagonal),
                jnp.conj(state.lower),
                jnp.conj(state.upper),
                state.structs,
            ),
            options,
        )

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
