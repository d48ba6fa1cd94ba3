"""`PyTreeLinearOperator`: a dense operator between pytrees, stored block by block."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _tree
from .base import AbstractLinearOperator, check_tags
from .tags import transpose_tags


class PyTreeLinearOperator(AbstractLinearOperator):
    """A dense operator between pytrees, given as a "pytree of pytrees" of blocks.

    `pytree` has the tree structure of `output_structure`; in place of each output leaf of shape `so`
    stands a pytree with the input's structure whose leaves have shape `so + si` (`si` the shape of
    the matching input leaf). This is the layout `jax.jacfwd` returns for a pytree-to-pytree function.

    **Arguments:**

    - `pytree`: the blocks, as described above. Integer or boolean blocks are cast to JAX's
      default float dtype; blocks of different dtypes are promoted to a common one (float32 and
      float64 blocks make a float64 operator).
    - `output_structure`: a pytree of `jax.ShapeDtypeStruct` for the output (only its tree and
      shapes are used; the dtype is that of the blocks).
    - `tags`: structural promises.
    """

    pytree: PyTree
    output_frozen: tuple = eqx.field(static=True)
    input_frozen: tuple = eqx.field(static=True)
    tags: frozenset = eqx.field(static=True)

    def __init__(self, pytree: Any, output_structure: Any, tags: Any = ()):
        output_frozen = _tree.freeze_structure(output_structure)
        out_leaves, out_treedef = output_frozen
        try:
            blocks = out_treedef.flatten_up_to(pytree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "PyTreeLinearOperator: `pytree` must have the tree structure of `output_structure` "
                f"at its top level ({out_treedef}). Original error: {e}"
            ) from None
        in_treedef = None
        in_shapes = None
        new_blocks = []
        for so, block in zip(out_leaves, blocks):
            leaves, treedef = jax.tree_util.tree_flatten(block)
            leaves = [_tree.as_inexact_array(x, "pytree") for x in leaves]
            for leaf in leaves:
                if tuple(leaf.shape[: len(so.shape)]) != tuple(so.shape):
                    raise ValueError(
                        f"PyTreeLinearOperator: a block of shape {leaf.shape} does not start with "
                        f"the shape {so.shape} of its output leaf; each block must have the shape "
                        "`output leaf shape + input leaf shape` (the layout `jax.jacfwd` returns)."
                    )
            shapes = [tuple(leaf.shape[len(so.shape) :]) for leaf in leaves]
            if in_treedef is None:
                in_treedef, in_shapes = treedef, shapes
            elif treedef != in_treedef or shapes != in_shapes:
                raise ValueError(
                    "PyTreeLinearOperator: every output leaf's block must have the same input "
                    f"structure; got {in_treedef} with {in_shapes} and {treedef} with {shapes}."
                )
            new_blocks.append(jax.tree_util.tree_unflatten(treedef, leaves))
        if in_treedef is None:
            raise ValueError("PyTreeLinearOperator needs at least one output leaf.")
        # An explicit conversion to one dtype (float32 and float64 blocks make a float64 operator),
        # which must not depend on `jax_numpy_dtype_promotion`.
        block_leaves = jax.tree_util.tree_leaves(new_blocks)
        dtype = _tree.common_dtype(*block_leaves) if block_leaves else _tree.default_float_dtype()
        self.pytree = jax.tree_util.tree_unflatten(
            out_treedef, [jax.tree_util.tree_map(lambda x: x.astype(dtype), b) for b in new_blocks]
        )
        self.output_frozen = (
            tuple(jax.ShapeDtypeStruct(s.shape, dtype) for s in out_leaves),
            out_treedef,
        )
        self.input_frozen = (
            tuple(jax.ShapeDtypeStruct(s, dtype) for s in in_shapes),
            in_treedef,
        )
        self.tags = check_tags(tags, self.in_structure(), self.out_structure(), "PyTreeLinearOperator")

    def _blocks(self) -> list[list[jax.Array]]:
        out_treedef = self.output_frozen[1]
        return [jax.tree_util.tree_leaves(b) for b in out_treedef.flatten_up_to(self.pytree)]

    def mv(self, vector):
        in_leaves = self.input_frozen[1].flatten_up_to(vector)
        outs = []
        for so, row in zip(self.output_frozen[0], self._blocks()):
            acc = None
            for block, v in zip(row, in_leaves):
                term = jnp.tensordot(block, v, axes=jnp.ndim(v), precision=jax.lax.Precision.HIGHEST)
                acc = term if acc is None else acc + term
            outs.append(acc if acc is not None else jnp.zeros(so.shape, so.dtype))
        return jax.tree_util.tree_unflatten(self.output_frozen[1], outs)

    def as_matrix(self):
        # Explicit sizes, not `reshape(m, -1)`, which cannot infer the `-1` of a zero-sized block.
        in_sizes = [math.prod(si.shape) for si in self.input_frozen[0]]
        rows = []
        for so, row in zip(self.output_frozen[0], self._blocks()):
            m = math.prod(so.shape)
            rows.append(
                jnp.concatenate([b.reshape(m, k) for b, k in zip(row, in_sizes)], axis=1)
                if row
                else jnp.zeros((m, 0), so.dtype)
            )
        return jnp.concatenate(rows, axis=0)

    def transpose(self):
        out_leaves, out_treedef = self.output_frozen
        in_leaves, in_treedef = self.input_frozen
        blocks = self._blocks()
        new = []
        for j, si in enumerate(in_leaves):
            col = []
            for i, so in enumerate(out_leaves):
                b = blocks[i][j]
                no, ni = len(so.shape), len(si.shape)
                perm = tuple(range(no, no + ni)) + tuple(range(no))
                col.append(jnp.transpose(b, perm))
            new.append(jax.tree_util.tree_unflatten(out_treedef, col))
        pytree = jax.tree_util.tree_unflatten(in_treedef, new)
        return PyTreeLinearOperator(pytree, self.in_structure(), transpose_tags(self.tags))

    def in_structure(self):
        return _tree.thaw_structure(self.input_frozen)

    def out_structure(self):
        return _tree.thaw_structure(self.output_frozen)
