"""Preconditioners for the iterative solvers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _tree
from ..linops.base import AbstractLinearOperator
from ..linops.composite import TaggedLinearOperator
from ..linops.diagonal import DiagonalLinearOperator
from ..linops.functions import diagonal, is_negative_semidefinite, is_positive_semidefinite
from ..linops.tags import negative_semidefinite_tag, positive_semidefinite_tag


def jacobi_preconditioner(operator: AbstractLinearOperator) -> AbstractLinearOperator:
    """The Jacobi (diagonal) preconditioner `M = diag(A)⁻¹`, for `options={"preconditioner": M}`.

    Cheap and often effective for diagonally dominant operators and for operators whose rows are
    badly scaled. The diagonal comes from `lx.diagonal(operator)`, which reads it directly for
    diagonal, tridiagonal, dense, sparse and composite operators and probes matrix-free ones
    (one product per chunk of unit vectors, or one product if the operator is tagged diagonal).

    **Arguments:**

    - `operator`: a square operator with a nonzero diagonal.

    **Returns:** a `lx.DiagonalLinearOperator` with entries `1 / A[i, i]` and the operator's input
    structure. It is tagged positive (negative) semidefinite when `operator` is, so it can be
    used with `lx.CG` (and the positive one with `lx.MINRES`).

    **Zero diagonal entries.** With a concrete operator a zero (or non-finite) diagonal entry raises
    a `ValueError`: the Jacobi preconditioner does not exist, try another. Under `jit`/`vmap`
    (traced values) this cannot be checked at trace time; the entry `1 / 0` is then infinite and
    the solve reports `RESULTS.nonfinite_input` or `breakdown`.

    ```python
    A = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    M = lx.jacobi_preconditioner(A)
    sol = lx.linear_solve(A, b, lx.CG(rtol=1e-8, atol=1e-8), options={"preconditioner": M})
    ```
    """
    if not isinstance(operator, AbstractLinearOperator):
        raise TypeError(
            "jacobi_preconditioner takes a linopx operator; wrap arrays in "
            "`lx.MatrixLinearOperator`."
        )
    in_s, out_s = operator.in_structure(), operator.out_structure()
    if not _tree.same_shapes(in_s, out_s):
        raise ValueError(
            f"jacobi_preconditioner needs a square operator with matching input and output "
            f"structures, got {_tree.describe(in_s)} -> {_tree.describe(out_s)}."
        )
    d = diagonal(operator)
    if not isinstance(d, jax.core.Tracer):
        bad = ~jnp.isfinite(d) | (d == 0)
        if bool(jnp.any(bad)):
            first = int(jnp.argmax(bad))
            raise ValueError(
                f"jacobi_preconditioner: the diagonal has a zero or non-finite entry (index "
                f"{first}), so diag(A)⁻¹ does not exist. Use another preconditioner, or none."
            )
    inv = 1 / d
    dtype = _tree.structure_dtype(in_s)
    if not jnp.issubdtype(inv.dtype, jnp.complexfloating):
        inv = inv.astype(
            jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else inv.dtype
        )
    m = DiagonalLinearOperator(_tree.unravel(inv, in_s))
    if is_positive_semidefinite(operator):
        return TaggedLinearOperator(m, positive_semidefinite_tag)
    if is_negative_semidefinite(operator):
        return TaggedLinearOperator(m, negative_semidefinite_tag)
    return m
