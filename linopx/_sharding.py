"""Keeping the arrays that the solve's rules create typed like the ones they sit beside.

On a mesh whose axes are `Explicit`, an array's sharding is part of its type: an array the rules
build themselves (a broadcast right-hand side, a zero cotangent) must carry the sharding of the
operands it is combined with, or `vmap` and the elementwise operations refuse the mix. On `Auto`
meshes, and on one device, these functions are the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _explicit(sharding) -> bool:
    return not sharding.mesh.empty and bool(sharding.mesh.explicit_axes)


def sharded_explicitly(x) -> bool:
    """Whether `x` is split over some `Explicit` mesh axis (its sharding part of its type)."""
    sharding = jax.typeof(x).sharding
    return _explicit(sharding) and any(s is not None for s in sharding.spec)


def zeros_of(aval):
    """Zeros of `aval`'s type, sharding included."""
    return typed_like(jnp.zeros(aval.shape, aval.dtype), aval)


def typed_like(x, aval):
    """`x` placed as `aval` says, where its sharding is part of its type (mesh axes `Explicit`) and
    differs; the identity otherwise. E.g. a cotangent that JAX built unsharded for a sharded
    output, which `vmap` cannot then map together with sharded members."""
    want = aval.sharding
    have = jax.typeof(x).sharding
    if have == want or not _explicit(want):
        return x
    return jax.sharding.reshard(x, want.spec)


def broadcast_batch(x, size: int, like, axis: int):
    """`x` repeated along a new leading axis of `size`, sharded as axis `axis` of the array `like`
    is, where shardings are types."""
    out = jnp.broadcast_to(x, (size, *jnp.shape(x)))
    sharding = jax.typeof(like).sharding
    if not _explicit(sharding) or sharding.spec[axis] is None:
        return out
    rest = jax.typeof(x).sharding.spec if _explicit(jax.typeof(x).sharding) else (None,) * x.ndim
    return jax.sharding.reshard(out, P(sharding.spec[axis], *rest))


def gathered(x):
    """`x` replicated on every device, before a host callback reads it whole.

    A callback runs on one device; XLA would move a sharded operand there by an inefficient
    "involuntary full rematerialization". Gathering it first, where the mesh is known (its axes
    `Explicit`, or a mesh set with `jax.set_mesh`), is one all-gather. Elsewhere (an `Auto`
    sharding and no mesh set) `x` is returned as it is and XLA moves it."""
    if _explicit(jax.typeof(x).sharding):
        return jax.sharding.reshard(x, P(*([None] * x.ndim))) if sharded_explicitly(x) else x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes or not mesh.auto_axes:
        # No mesh, or inside `shard_map` (each device holds its own vector): nothing to gather.
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, P()))


def placed_like(x, like):
    """`x` sharded as `like` is, where shardings are types; as it is elsewhere."""
    sharding = jax.typeof(like).sharding
    if not _explicit(sharding) or jax.typeof(x).sharding == sharding:
        return x
    return jax.sharding.reshard(x, sharding.spec)


def from_host(x, like):
    """A host callback's result `x`, sharded as the input `like` where shardings are types.

    On an `Auto` mesh set with `jax.set_mesh` it is marked replicated: the callback's result sits
    on one device, and from there XLA moves it to a sharded consumer only by an "involuntary full
    rematerialization", while from a replicated value each device takes its part locally."""
    if _explicit(jax.typeof(like).sharding):
        # Replicated first (its type says so already; the constraint tells XLA), then sliced.
        mesh = jax.typeof(like).sharding.mesh
        x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, P()))
        return placed_like(x, like)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes or not mesh.auto_axes:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, P()))
