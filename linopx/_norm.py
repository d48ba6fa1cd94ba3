"""Norms and dtype helpers on pytrees of arrays, with the names and semantics of Lineax's
`lineax.internal` (which Optimistix and Diffrax import); re-exported by `linopx.internal`.

Each treats a pytree as the flat vector of its leaves (in `jax.tree_util` order). Unlike Lineax's,
they accept leaves of different dtypes under `jax_numpy_dtype_promotion="strict"`: the reduction
promotes explicitly (float32 with float64 gives float64), as the rest of linopx does.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from . import _tree


def default_floating_dtype() -> Any:
    """JAX's default floating dtype: `jnp.float64` if `jax_enable_x64` is on, else `jnp.float32`."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32  # pyright: ignore


def complex_to_real_dtype(dtype: Any) -> Any:
    """The real dtype of the same precision: complex64 -> float32, complex128 -> float64 (a real
    dtype is returned unchanged)."""
    return jnp.finfo(dtype).dtype


def _real_dtype_of(leaves: list) -> Any:
    if not leaves:
        return default_floating_dtype()
    return complex_to_real_dtype(_tree.common_dtype(*[jnp.result_type(x) for x in leaves]))


def tree_dot(tree1: PyTree, tree2: PyTree) -> Array:
    """The inner product `Σᵢ conj(xᵢ) yᵢ` of two pytrees with the same structure, seen as flat
    vectors (the first argument is conjugated, as in `jnp.vdot`).

    Raises `ValueError` if the tree structures differ. Two empty trees give `0` in the default
    floating dtype.
    """
    leaves1, treedef1 = jax.tree_util.tree_flatten(tree1)
    leaves2, treedef2 = jax.tree_util.tree_flatten(tree2)
    if treedef1 != treedef2:
        raise ValueError(
            f"tree_dot needs two pytrees of the same structure, got {treedef1} and {treedef2}."
        )
    if not leaves1:
        return jnp.zeros((), default_floating_dtype())
    dtype = _tree.common_dtype(*[jnp.result_type(x) for x in leaves1 + leaves2])
    dots = [
        jnp.dot(
            jnp.conj(jnp.reshape(jnp.asarray(a).astype(dtype), -1)),
            jnp.reshape(jnp.asarray(b).astype(dtype), -1),
            precision=jax.lax.Precision.HIGHEST,
            out_sharding=_tree.replicated_result(a, b),
        )
        for a, b in zip(leaves1, leaves2)
    ]
    return functools.reduce(jnp.add, dots)


def sum_squares(x: PyTree) -> Array:
    """`Σᵢ |xᵢ|²` over all entries of all leaves (a real scalar)."""
    return jnp.real(tree_dot(x, x))


def two_norm(x: PyTree) -> Array:
    """The Euclidean norm `sqrt(Σᵢ |xᵢ|²)` of all entries of all leaves.

    Its derivative is taken to be zero where the norm is zero or infinite (instead of NaN), so it
    is safe to differentiate at the origin, e.g. in a convergence test.
    """
    return _two_norm(x)


def _two_norm_value(x: PyTree) -> Array:
    leaves = jax.tree_util.tree_leaves(x)
    if sum(jnp.size(leaf) for leaf in leaves) == 1:
        # One entry: its modulus, without squaring (which could overflow) and rooting.
        (leaf,) = [leaf for leaf in leaves if jnp.size(leaf) == 1]
        return jnp.abs(jnp.reshape(leaf, ()))
    return jnp.sqrt(sum_squares(x))


@jax.custom_jvp
def _two_norm(x: PyTree) -> Array:
    return _two_norm_value(x)


@_two_norm.defjvp
def _two_norm_jvp(primals, tangents):
    (x,), (tx,) = primals, tangents
    out = _two_norm_value(x)
    # d|x| = Re⟨x / |x|, dx⟩; defined as 0 at |x| = 0 (no direction) and |x| = inf.
    degenerate = (out == 0) | jnp.isinf(out)
    safe = jnp.where(degenerate, jnp.ones_like(out), out)
    direction = jax.tree_util.tree_map(lambda leaf: leaf / safe.astype(jnp.result_type(leaf)), x)
    t_out = jnp.real(tree_dot(direction, tx)).astype(out.dtype)
    return out, jnp.where(degenerate, jnp.zeros_like(t_out), t_out)


def rms_norm(x: PyTree) -> Array:
    """The root-mean-square norm `sqrt(Σᵢ |xᵢ|² / n)` over the `n` entries of all leaves (`0` for a
    pytree with no entries, in its real dtype)."""
    leaves = jax.tree_util.tree_leaves(x)
    size = sum(jnp.size(leaf) for leaf in leaves)
    if size == 0:
        return jnp.zeros((), _real_dtype_of(leaves))
    out = two_norm(x)
    return out / jnp.asarray(math.sqrt(size), out.dtype)


def max_norm(x: PyTree) -> Array:
    """The infinity norm `maxᵢ |xᵢ|` over all entries of all leaves (`0` for a pytree with no
    entries, in its real dtype). Its derivative is taken to be zero where the norm is zero."""
    leaves = jax.tree_util.tree_leaves(x)
    maxima = [jnp.max(jnp.abs(leaf)) for leaf in leaves if jnp.size(leaf) > 0]
    if not maxima:
        return jnp.zeros((), _real_dtype_of(leaves))
    dtype = _tree.common_dtype(*maxima)
    out = functools.reduce(jnp.maximum, [m.astype(dtype) for m in maxima])
    return _zero_derivative_at_zero(out)


@jax.custom_jvp
def _zero_derivative_at_zero(x: Array) -> Array:
    return x


@_zero_derivative_at_zero.defjvp
def _zero_derivative_at_zero_jvp(primals, tangents):
    (x,), (tx,) = primals, tangents
    return x, jnp.where(x == 0, jnp.zeros_like(tx), tx)


__all__ = [
    "complex_to_real_dtype",
    "default_floating_dtype",
    "max_norm",
    "rms_norm",
    "sum_squares",
    "tree_dot",
    "two_norm",
]
