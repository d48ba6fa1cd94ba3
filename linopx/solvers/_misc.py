"""Helpers shared by the solvers: flattening vectors, shape checks, result bookkeeping."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from .. import _tree
from .._sharding import gathered
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


def check_real_scalar(name: str, field: str, value: Any, example: str) -> None:
    """Raise a `ValueError` unless `value` is a finite non-negative real scalar: a Python or NumPy
    number, or a 0-d real array (a traced one is accepted unchecked, as its value is not known)."""
    ok_type = (isinstance(value, numbers.Real) and not isinstance(value, bool)) or (
        hasattr(value, "dtype")
        and hasattr(value, "shape")
        and tuple(value.shape) == ()
        and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    )
    if not ok_type:
        shape = getattr(value, "shape", None)
        what = f"an array of shape {tuple(shape)}" if shape is not None else repr(value)
        raise ValueError(  # solver fields raise ValueError (API.md), even for a wrong type
            f"{name}: `{field}` must be a real, non-negative scalar, got {what:.80}. Pass e.g. "
            f"`{example}`."
        )
    if isinstance(value, jax.core.Tracer):
        return
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(
            f"{name}: `{field}` must be a finite, non-negative number, got {value!r}. Pass e.g. "
            f"`{example}`."
        )


def check_rcond(name: str, rcond: Any) -> None:
    """`rcond` is None (the default) or a finite, non-negative real scalar."""
    if rcond is not None:
        check_real_scalar(name, "rcond", rcond, f"{name}(rcond=1e-10)")


def dense_matrix(operator: AbstractLinearOperator) -> jax.Array:
    """`operator.as_matrix()`, whole on every device: a dense factorization needs all of it, and
    JAX's factorizations refuse a matrix sharded over `Explicit` mesh axes (e.g. the rows of a
    materialised Jacobian of a sharded function). Batches are `vmap`ped outside, so this never
    gathers a batch axis."""
    return gathered(operator.as_matrix())


def flat(vector: Any, dtype: Any = None) -> jax.Array:
    """The vector's leaves concatenated into one 1-D array."""
    return _tree.ravel(vector, dtype)


def unflat(x: jax.Array, structure: Any) -> Any:
    """Split a 1-D array back into `structure` (a pytree of `jax.ShapeDtypeStruct`)."""
    return _tree.unravel(x, structure)


def _widest_real(*arrays: jax.Array):
    return max((jnp.finfo(jnp.result_type(a)).dtype for a in arrays), key=lambda d: d.itemsize)


def _zero_if_finite(a: jax.Array, real) -> jax.Array:
    """`a` raveled as `a * 0` (real plus imaginary part for complex) in dtype `real`: zero where
    finite, NaN where not, so that a sum says whether all of it was finite."""
    a = jnp.ravel(a)
    if jnp.iscomplexobj(a):
        a = jnp.real(a) + jnp.imag(a)
    return (a * 0).astype(real)


def pivot_result(pivots: jax.Array, solution: jax.Array) -> Any:
    """`RESULTS.singular` if the smallest pivot magnitude is at most `32 · eps` times the largest (or
    is not finite); else `RESULTS.nonfinite_input` if `solution` is not finite (the factorization is
    sound, so the right-hand side is not; `linear_solve` reports `singular` if it is finite);
    else `RESULTS.successful`.

    Rounding leaves the "zero" pivot of an exactly singular matrix at a few `eps · |A|` rather than
    at zero, and a solve would then return a finite number dominated by rounding. The threshold does
    not grow with the size: in float32 a well-conditioned random matrix of size 2000 already has
    pivots spanning 3e4, so a size-scaled threshold would flag good systems. It is a heuristic (a
    pivot ratio is not a condition number): it catches the common case.

    Solvers that call this (or `finite_factor_result`) with their solution set
    `_verdict_checks_solution`, so that the solve adds no finiteness check of its own."""
    real = _widest_real(pivots, solution)
    x = _zero_if_finite(solution, real)
    if jnp.size(pivots) == 0:
        ok = jnp.isfinite(jnp.sum(x))
        return RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite_input)
    p = jnp.abs(jnp.ravel(pivots)).astype(real)
    # The checks are compiled into every solve, and each reduction is a kernel XLA builds (tens of
    # milliseconds of compile time apiece on a CPU), so the largest pivot, the smallest pivot and
    # the solution's check come out of one variadic reduction; each operand is padded to the common
    # length with the neutral value of its own reduction.
    n, k = p.size, x.size
    operands = (
        jnp.concatenate([p, jnp.full((k,), -jnp.inf, real)]),
        jnp.concatenate([p, jnp.full((k,), jnp.inf, real)]),
        jnp.concatenate([jnp.zeros((n,), real), x]),
    )
    inits = tuple(jnp.asarray(v, real) for v in (-jnp.inf, jnp.inf, 0))
    largest, smallest, x_check = jax.lax.reduce(
        operands,
        inits,
        lambda u, v: (jnp.maximum(u[0], v[0]), jnp.minimum(u[1], v[1]), u[2] + v[2]),
        (0,),
    )
    eps = jnp.finfo(real).eps
    pivots_ok = jnp.isfinite(largest) & (smallest > 32 * eps * largest)
    return RESULTS.where(
        pivots_ok,
        RESULTS.where(jnp.isfinite(x_check), RESULTS.successful, RESULTS.nonfinite_input),
        RESULTS.singular,
    )


def matrix_diagonal(matrix: jax.Array) -> jax.Array:
    """The diagonal of a square matrix as a strided slice of its flattening (cheaper to compile
    than `jnp.diagonal`, which lowers to a gather)."""
    n = matrix.shape[0]
    return matrix.reshape(-1)[:: n + 1]


def finite_factor_result(*arrays: jax.Array, solution: jax.Array) -> Any:
    """`RESULTS.nonfinite_input` unless every entry of `arrays` (a solver's factors or stored
    diagonals) and of `solution` is finite (`linear_solve` reports `singular` if the inputs are
    finite). The factors are checked too because an infinite entry can still give a finite
    solution (`x = b / inf = 0`)."""
    real = _widest_real(*arrays, solution)
    checks = [_zero_if_finite(a, real) for a in (*arrays, solution)]
    ok = jnp.isfinite(jnp.sum(jnp.concatenate(checks)))
    return RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite_input)


def matrix_dtype(operator: AbstractLinearOperator):
    return _tree.common_dtype(
        _tree.structure_dtype(operator.in_structure()),
        _tree.structure_dtype(operator.out_structure()),
    )


def structures(operator: AbstractLinearOperator) -> tuple:
    """Hashable `(input, output)` structures of `operator`, for a solver state to unflatten with.
    A transposed state swaps them."""
    return (
        _tree.freeze_structure(operator.in_structure()),
        _tree.freeze_structure(operator.out_structure()),
    )


def solution_structure(structs: tuple, dtype: Any = None) -> Any:
    """The structure a solver returns its solution in, given the `structures` of its operator and
    the `dtype` the solve ran in (see `widen_structure`)."""
    in_structure = _tree.thaw_structure(structs[0])
    if dtype is None:
        return in_structure
    return widen_structure(in_structure, _tree.thaw_structure(structs[1]), dtype)


def widen_structure(in_structure: Any, out_structure: Any, dtype: Any) -> Any:
    """The structure of the solution of a solve that ran in `dtype`: the operator's input
    structure, dtypes included (Lineax's convention), when `dtype` is no wider than the operator's
    own (the common dtype of its structures). A wider one comes from the right-hand side (float64
    for a float32 operator, complex for a real one): then every leaf is promoted with it, so that
    the solution has the promoted dtype and no precision or imaginary part of the vector is
    dropped."""
    operator_dtype = _tree.common_dtype(
        _tree.structure_dtype(in_structure), _tree.structure_dtype(out_structure)
    )
    if _tree.common_dtype(operator_dtype, dtype) == operator_dtype:
        return in_structure
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, _tree.common_dtype(s.dtype, dtype)), in_structure
    )


def swap(structs: tuple) -> tuple:
    return (structs[1], structs[0])


def rhs(vector: Any, dtype: Any) -> jax.Array:
    """Flatten the right-hand side, promoting to the factorization's dtype (or complex if the vector is)."""
    # A dense factorization solves with the whole vector: one sharded over `Explicit` mesh axes
    # is gathered first (the primitive places the solution back as the vector was).
    b = gathered(_tree.ravel(vector))
    return b.astype(_tree.common_dtype(b.dtype, dtype))
