"""Structured operators stored by their nonzero bands: diagonal, tridiagonal, identity."""

from __future__ import annotations

import math
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

    Integer or boolean bands are cast to JAX's default float dtype, and the three bands are
    promoted to one common dtype.
    """

    diagonal: Inexact[Array, " n"]
    lower_diagonal: Inexact[Array, " n-1"]
    upper_diagonal: Inexact[Array, " n-1"]

    def __init__(self, diagonal: Any, lower_diagonal: Any, upper_diagonal: Any):
        d = _tree.as_inexact_array(diagonal, "diagonal")
        lo = _tree.as_inexact_array(lower_diagonal, "lower_diagonal")
        up = _tree.as_inexact_array(upper_diagonal, "upper_diagonal")
        if d.ndim != 1 or lo.ndim != 1 or up.ndim != 1:
            raise ValueError(
                "TridiagonalLinearOperator needs three 1-D arrays, got shapes "
                f"{d.shape}, {lo.shape} and {up.shape}."
            )
        n = d.shape[0]
        # n = 0 is the empty operator (both off-diagonals empty too), as for the other operators.
        if lo.shape[0] != max(n - 1, 0) or up.shape[0] != max(n - 1, 0):
            raise ValueError(
                f"TridiagonalLinearOperator: a diagonal of length {n} needs lower and upper diagonals "
                f"of length {max(n - 1, 0)}, got {lo.shape[0]} and {up.shape[0]}."
            )
        # An explicit conversion to one dtype, independent of `jax_numpy_dtype_promotion`.
        dtype = _tree.common_dtype(d, lo, up)
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
      Integer or boolean leaves are taken as JAX's default float dtype, as integer data is
      elsewhere (the identity acts on floating or complex vectors).
    - `output_structure`: defaults to `input_structure`.
    """

    input_frozen: tuple = eqx.field(static=True)
    output_frozen: tuple = eqx.field(static=True)

    def __init__(self, input_structure: Any, output_structure: Any = None):
        if output_structure is None:
            output_structure = input_structure
        self.input_frozen = _inexact_structure(input_structure, "input_structure")
        self.output_frozen = _inexact_structure(output_structure, "output_structure")

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
        # A vector of the input's dtypes comes out with exactly the output's dtypes (a complex
        # entry landing in a real output leaf keeps its real part, as in Lineax: the structures
        # say that leaf is real). A vector wider than the input structure (complex for a real
        # identity, float64 for a float32 one) widens the output leaves instead of losing it.
        in_dtype = _tree.structure_dtype(self.in_structure())
        wider = _tree.common_dtype(in_dtype, flat.dtype) != in_dtype
        leaves, treedef = jax.tree_util.tree_flatten(out_structure)
        out, start = [], 0
        for leaf in leaves:
            size = math.prod(leaf.shape)
            piece = flat[start : start + size].reshape(leaf.shape)
            start += size
            dtype = _tree.common_dtype(leaf.dtype, flat.dtype) if wider else jnp.dtype(leaf.dtype)
            if jnp.iscomplexobj(piece) and not jnp.issubdtype(dtype, jnp.complexfloating):
                piece = jnp.real(piece)
            out.append(piece.astype(dtype))
        return jax.tree_util.tree_unflatten(treedef, out)

    def as_matrix(self):
        dtype = _tree.common_dtype(
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


def _inexact_structure(structure: Any, name: str) -> tuple:
    """`freeze_structure`, with integer and boolean leaves taken as the default float dtype, and a
    clear error for leaves that are not arrays or `jax.ShapeDtypeStruct`s."""
    leaves, treedef = jax.tree_util.tree_flatten(structure)
    out = []
    for leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise TypeError(
                    f"IdentityLinearOperator: `{name}` must be a pytree of `jax.ShapeDtypeStruct` "
                    f"(or of arrays), got a leaf {leaf!r:.60} of type {type(leaf).__name__}; pass "
                    "e.g. `jax.ShapeDtypeStruct((n,), jnp.float64)`, not a shape."
                )
            leaf = jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)
        dtype = jnp.dtype(leaf.dtype)
        if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
            raise TypeError(
                f"IdentityLinearOperator: `{name}` has a leaf of dtype {dtype}; pass floating or "
                "complex `jax.ShapeDtypeStruct`s."
            )
        if not jnp.issubdtype(dtype, jnp.inexact):
            dtype = _tree.default_float_dtype()
        out.append(jax.ShapeDtypeStruct(tuple(leaf.shape), dtype))
    return tuple(out), treedef
