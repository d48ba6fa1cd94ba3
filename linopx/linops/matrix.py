"""`MatrixLinearOperator`: a dense 2-D matrix."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

from .. import _tree
from .base import AbstractLinearOperator, check_tags
from .tags import transpose_tags


class MatrixLinearOperator(AbstractLinearOperator):
    """A dense matrix `A` of shape `(m, n)`, acting on vectors of shape `(n,)`.

    **Arguments:**

    - `matrix`: a 2-D array. Integer or boolean matrices are cast to JAX's default float dtype
      (float64 when `jax_enable_x64` is on).
    - `tags`: structural promises such as `lx.symmetric_tag` or `lx.positive_semidefinite_tag`.

    ```python
    A = lx.MatrixLinearOperator(jnp.array([[2.0, 1.0], [1.0, 3.0]]), lx.positive_semidefinite_tag)
    lx.linear_solve(A, jnp.array([1.0, 2.0])).value
    ```
    """

    matrix: Inexact[Array, "m n"]
    tags: frozenset = eqx.field(static=True)

    def __init__(self, matrix: Any, tags: Any = ()):
        matrix = _tree.as_inexact_array(matrix, "matrix")
        if matrix.ndim != 2:
            raise ValueError(
                f"MatrixLinearOperator needs a 2-D matrix, got shape {matrix.shape}. Reshape it to "
                "(m, n), or use `lx.PyTreeLinearOperator` for higher-dimensional inputs/outputs."
            )
        self.matrix = matrix
        m, n = matrix.shape
        self.tags = check_tags(
            tags,
            jax.ShapeDtypeStruct((n,), matrix.dtype),
            jax.ShapeDtypeStruct((m,), matrix.dtype),
            "MatrixLinearOperator",
        )

    def mv(self, vector):
        return jnp.matmul(self.matrix, vector, precision=jax.lax.Precision.HIGHEST)

    def as_matrix(self):
        return self.matrix

    def transpose(self):
        return MatrixLinearOperator(self.matrix.T, transpose_tags(self.tags))

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[1],), self.matrix.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[0],), self.matrix.dtype)
