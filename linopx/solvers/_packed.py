"""Packed structures: the `(output, input)` structures of an operator, kept in a solver state so
that `compute` can flatten the right-hand side and unflatten the solution. Lineax's names
(`lineax.internal.pack_structures` & co.), for solvers written against Lineax; linopx's own solvers
keep the same information in `_misc.structures`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from .. import _tree
from ..linops.base import AbstractLinearOperator


class PackedStructures(eqx.Module):
    """The output and input structures of an operator, hashable and static (no array leaves), so
    a solver state can hold it. `value` is `(leaves, treedef)` of `(out_structure, in_structure)`,
    as in Lineax. Build it with `pack_structures(operator)`."""

    value: tuple = eqx.field(static=True)


def _structures(packed: PackedStructures) -> tuple[Any, Any]:
    leaves, treedef = packed.value
    return jax.tree_util.tree_unflatten(treedef, list(leaves))


def pack_structures(operator: AbstractLinearOperator) -> PackedStructures:
    """Pack `operator`'s output and input structures (weak types dropped) for a solver state."""
    structures = (
        _tree.thaw_structure(_tree.freeze_structure(operator.out_structure())),
        _tree.thaw_structure(_tree.freeze_structure(operator.in_structure())),
    )
    leaves, treedef = jax.tree_util.tree_flatten(structures)
    return PackedStructures((tuple(leaves), treedef))


def ravel_vector(pytree: Any, packed_structures: PackedStructures) -> jax.Array:
    """Flatten a right-hand side with the packed output structure into one 1-D array, in the
    common dtype of its leaves.

    Raises `ValueError` if its tree or leaf shapes differ from the output structure. Its dtypes may
    be wider than the operator's (`linear_solve` passes a float64 vector for a float32 operator
    through as it is), where Lineax requires them to be equal.
    """
    out_structure, _ = _structures(packed_structures)
    if not _tree.same_shapes(_tree.structure_of(pytree), out_structure):
        raise ValueError(
            "ravel_vector: the vector does not match the operator's output structure "
            f"{_tree.describe(out_structure)}; got {_tree.describe(_tree.structure_of(pytree))}."
        )
    return _tree.ravel(pytree)


def unravel_solution(solution: jax.Array, packed_structures: PackedStructures) -> Any:
    """Split a flat solution into the packed input structure, casting each leaf to its dtype
    (an imaginary part is kept, giving a complex leaf, where the structure is real: linopx never
    drops it silently, where Lineax does)."""
    _, in_structure = _structures(packed_structures)
    return _tree.unravel(solution, in_structure)


def transpose_packed_structures(packed_structures: PackedStructures) -> PackedStructures:
    """The packed structures of the transposed operator (output and input swapped)."""
    out_structure, in_structure = _structures(packed_structures)
    leaves, treedef = jax.tree_util.tree_flatten((in_structure, out_structure))
    return PackedStructures((tuple(leaves), treedef))
