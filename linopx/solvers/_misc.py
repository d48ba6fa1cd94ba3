"""Helpers shared by the solvers: flattening vectors, shape checks, result bookkeeping."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .. import _tree
from .._solution import RESULTS
from ..linops.base import AbstractLinearOperator


def check_square(operator: AbstractLinearOperator, solver_name: str) -> None:
    """Raise a `ValueError` naming the fix if `operator` is not square."""
    m, n = operator.out_size(), operator.in_size()
    if m != n:
        raise ValueError(
            f"{solver_name} needs a square operator, got {m} x {n}. For least squares or minimum "
            "norm use `lx.QR()`, `lx.SVD()`, `lx.LSMR()` or `lx.AutoLinearSolver(well_posed=None)`."
        )


def flat(vector: Any, dtype: Any = None) -> jax.Array:
    """The vector's leaves concatenated into one 1-D array."""
    return _tree.ravel(vector, dtype)


def unflat(x: jax.Array, structure: Any) -> Any:
    """Split a 1-D array back into `structure` (a pytree of `jax.ShapeDtypeStruct`)."""
    return _tree.unravel(x, structure)


def pivot_result(pivots: jax.Array) -> Any:
    """`RESULTS.singular` if the smallest pivot magnitude is at most `32 · eps` times the largest (or
    is not finite), else `RESULTS.successful`.

    Rounding leaves the "zero" pivot of an exactly singular matrix at a few `eps · |A|` rather than
    at zero, and a solve would then return a finite number dominated by rounding. The threshold does
    not grow with the size: in float32 a well-conditioned random matrix of size 2000 already has
    pivots spanning 3e4, so a size-scaled threshold would flag good systems. It is a heuristic (a
    pivot ratio is not a condition number): it catches the common case, and exact zeros are caught
    independently by the finiteness check on the solution."""
    a = jnp.abs(pivots)
    if a.size == 0:
        return RESULTS.successful
    eps = jnp.finfo(a.dtype).eps
    # The largest and (minus) the smallest magnitude in one reduction: this check is compiled into
    # every solve, and each reduction is a kernel XLA has to build.
    largest, neg_smallest = jnp.max(jnp.stack([a, -a]), axis=1)
    ok = -neg_smallest > 32 * eps * largest
    return RESULTS.where(ok, RESULTS.successful, RESULTS.singular)


def matrix_diagonal(matrix: jax.Array) -> jax.Array:
    """The diagonal of a square matrix as a strided slice of its flattening (cheaper to compile
    than `jnp.diagonal`, which lowers to a gather)."""
    n = matrix.shape[0]
    return matrix.reshape(-1)[:: n + 1]


def finite_factor_result(*arrays: jax.Array) -> Any:
    """`RESULTS.nonfinite_input` unless every entry of `arrays` (a solver's factors or stored
    diagonals) is finite. For solvers where an infinite entry can still give a finite solution
    (`x = b / inf = 0`), so that the solution's own finiteness check would not catch it."""
    return RESULTS.where(
        _tree.tree_all_finite(list(arrays)), RESULTS.successful, RESULTS.nonfinite_input
    )


def matrix_dtype(operator: AbstractLinearOperator):
    return _tree.common_dtype(
        _tree.structure_dtype(operator.in_structure()), _tree.structure_dtype(operator.out_structure())
    )


def structures(operator: AbstractLinearOperator) -> tuple:
    """Hashable `(input, output)` structures of `operator`, for a solver state to unflatten with.
    A transposed state swaps them."""
    return (_tree.freeze_structure(operator.in_structure()), _tree.freeze_structure(operator.out_structure()))


def solution_structure(structs: tuple) -> Any:
    return _tree.thaw_structure(structs[0])


def swap(structs: tuple) -> tuple:
    return (structs[1], structs[0])


def rhs(vector: Any, dtype: Any) -> jax.Array:
    """Flatten the right-hand side, promoting to the factorization's dtype (or complex if the vector is)."""
    b = _tree.ravel(vector)
    return b.astype(_tree.common_dtype(b.dtype, dtype))
