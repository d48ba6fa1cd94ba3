"""Structured operators stored by their nonzero bands: diagonal, tridiagonal, identity."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, PyTree

from .. import _tree
from .base import AbstractLinearOperator


class DiagonalLinearOperator(AbstractLinearOperator):
    """A diagonal operator `v -> d * v` (elementwise), for a diagonal `d` that is an array or a pytree of
    arrays; the operator acts on vectors of the same structure.

    ```python
    D = lx.DiagonalLinearOperator(jnp.array([2.0, 4.0, 8.0]))
    lx.linear_solve(D, jnp.ones(3)).value   # [0.5, 0.25, 0.125]
    ```
    """

    diagonal: PyTree[Inexact[Array, "..."]]

    def __init__(self, diagonal: Any):
        self.diagonal = jax.tree_util.tree_map(
            lambda d: _tree.as_inexact_array(d, "diagonal"), diagonal
        )
        if not jax.tree_util.tree_leaves(self.diagonal):
            raise ValueError("DiagonalLinearOperator needs a non-empty diagonal.")

    def mv(self, vector):
        return jax.tree_util.tree_map(jnp.multiply, self.diagonal, vector)

    def as_matrix(self):
        return jnp.diag(_tree.ravel(self.diagonal))

    def transpose(self):
        return self

    def in_structure(self):
        return _tree.structure_of(self.diagonal)

    def out_structure(self):
        return _tree.structure_of(self.diagonal)


class TridiagonalLinearOperator(AbstractLinearOperator):
    """A tridiagonal `(n, n)` operator given by its three bands.

    **Arguments:**

    - `diagonal`: shape `(n,)`, the main diagonal `A[i, i]`.
    - `lower_diagonal`: shape `(n - 1,)`, the subdiagonal `A[i + 1, i]`.
    - `upper_diagonal`: shape `(n - 1,)`, the superdiagonal `A[i, i + 1]`.
    """

    diagonal: Inexact[Array, " n"]
    lower_diagonal: Inexact[Array, " n-1"]
    upper_diagonal: Inexact[Array, " n-1"]

    def __init__(self, diagonal: Any, lower_diagonal: Any, upper_diagonal: Any):
        d = _tree.as_inexact_array(diagonal, "diagonal")
        lo = _tree.as_inexact_array(lower_diagonal, "lower_diagonal")
        up = _tree.as_inexact_array(upper_diagonal, "upper_diagonal")
        if d.ndim != 1 or lo.ndim != 1 or up.ndim != 1:
            raise ValueError("TridiagonalLinearOperator needs three 1-D arrays.")
        n = d.shape[0]
        if n < 1 or lo.shape[0] != n - 1 or up.shape[0] != n - 1:
            raise ValueError(
                f"TridiagonalLinearOperator: a diagonal of length {n} needs lower and upper diagonals "
                f"of length {max(n - 1, 0)}, got {lo.shape[0]} and {up.shape[0]}."
            )
        dtype = jnp.result_type(d, lo, up)
        self.diagonal = d.astype(dtype)
        self.lower_diagonal = lo.astype(dtype)
        self.upper_diagonal = up.astype(dtype)

    def mv(self, vector):
        out = self.diagonal * vector
        out = out.at[1:].add(self.lower_diagonal * vector[:-1])
        out = out.at[:-1].add(self.upper_diagonal * vector[1:])
        return out

    def as_matrix(self):
        return (
            jnp.diag(self.diagonal)
            + jnp.diag(self.lower_diagonal, k=-1)
            + jnp.diag(self.upper_diagonal, k=1)
        )

    def transpose(self):
        return TridiagonalLinearOperator(self.diagonal, self.upper_diagonal, self.lower_diagonal)

    def in_structure(self):
        return jax.ShapeDtypeStruct(self.diagonal.shape, self.diagonal.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct(self.diagonal.shape, self.diagonal.dtype)


class IdentityLinearOperator(AbstractLinearOperator):
    """The identity. With an `output_structure` different from `input_structure` it is the
    rectangular identity `eye(out_size, in_size)` on the flattened vectors (truncating or zero-padding).

    **Arguments:**

    - `input_structure`: a pytree of `jax.ShapeDtypeStruct` (or of arrays, whose shapes and dtypes are used).
    - `output_structure`: defaults to `input_structure`.
    """

    input_frozen: tuple = eqx.field(static=True)
    output_frozen: tuple = eqx.field(static=True)

    def __init__(self, input_structure: Any, output_structure: Any = None):
        if output_structure is None:
            output_structure = input_structure
        self.input_frozen = _tree.freeze_structure(input_structure)
        self.output_frozen = _tree.freeze_structure(output_structure)

    def mv(self, vector):
        if self.input_frozen == self.output_frozen:
            return vector
        out_structure = self.out_structure()
        flat = _tree.ravel(vector)
        n_out = _tree.structure_size(out_structure)
        if flat.shape[0] >= n_out:
            flat = flat[:n_out]
        else:
            flat = jnp.concatenate([flat, jnp.zeros(n_out - flat.shape[0], flat.dtype)])
        flat = flat.astype(_tree.structure_dtype(out_structure))
        return _tree.unravel(flat, out_structure)

    def as_matrix(self):
        dtype = jnp.result_type(
            _tree.structure_dtype(self.in_structure()), _tree.structure_dtype(self.out_structure())
        )
        return jnp.eye(self.out_size(), self.in_size(), dtype=dtype)

    def transpose(self):
        return IdentityLinearOperator(self.out_structure(), self.in_structure())

    def in_structure(self):
        return _tree.thaw_structure(self.input_frozen)

    def out_structure(self):
        return _tree.thaw_structure(self.output_frozen)

    @property
    def tags(self) -> frozenset:
        return frozenset()
