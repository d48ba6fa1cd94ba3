"""The one place where linopx reaches into JAX internals.

JAX exposes `ormqr` (apply the Q of a QR factorization without forming it) publicly, but the
factorizations that produce its input, `geqrf` and the column-pivoted `geqp3`, only as the internal
primitives behind `jax.lax.linalg.qr`. Using them directly lets `QR` and `PivotedQR` skip forming Q
(LAPACK `orgqr`), which is about half the cost of a tall QR. If a JAX upgrade moves them, only this
file needs to change.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from jax._src.lax.linalg import geqp3 as _geqp3, geqrf as _geqrf


def geqrf(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Householder QR in LAPACK's compact form: `(reflectors with R in the upper triangle, taus)`.

    JAX defines no derivative for these primitives. Solver states carry no derivatives anyway
    (`linear_solve` differentiates through the operator, not the state), so the input is cut from
    differentiation here; a state built by `solver.init` on a traced operator then still works."""
    return _geqrf(jax.lax.stop_gradient(a))


def geqp3(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Column-pivoted Householder QR: `(reflectors/R, 0-based column permutation, taus)`, so that
    `a[:, perm] = Q R`."""
    jpvt = jnp.zeros(a.shape[-1:], jnp.int32)
    r, perm, taus = _geqp3(jax.lax.stop_gradient(a), jpvt)
    return r, perm - 1, taus


# Equinox exposes an enumeration item's comparison (`item == RESULTS.x`) but not its integer index
# or the message of an index, which the host-side error check needs (`autodiff/_checks.py`).
def enum_index(item) -> jax.Array:
    """The integer index of an `eqx.Enumeration` item (an int32 array under `jit`)."""
    return item._value


def enum_message(enumeration, index: int) -> str:
    """The message of the `index`-th member of an `eqx.Enumeration` class."""
    return enumeration._index_to_message[index]


# A failed solve raises from inside a `jax.pure_callback`; JAX logs every exception raised there
# (`logger.exception("jax.pure_callback failed")` in `jax/_src/callback.py`, logger name
# "jax._src.callback") before re-raising it, which prints a traceback to stderr. Our failures are
# expected, reported values: drop exactly those records, leave every other one alone.
_CALLBACK_LOGGER = "jax._src.callback"


def silence_callback_log(exception_type: type) -> None:
    """Stop JAX from logging exceptions of `exception_type` raised inside host callbacks."""

    def keep(record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, exception_type)

    logging.getLogger(_CALLBACK_LOGGER).addFilter(keep)


# Which devices a host callback runs on is decided from the lowering context, which JAX does not
# expose publicly (`jax/_src/callback.py`, `_callback_op_sharding`): on a program partitioned over
# several devices (`jit` with shardings) a callback runs once, on the first device; inside a fully
# manual `shard_map` it runs on every device.
def per_device_mesh(ctx):
    """`(mesh, axis_names)` to run a raising host callback on every device with, by a `shard_map`
    over those axes of that mesh (`axis_names` None: all of them), or `None` if the callback
    already runs on every device (inside a fully manual `shard_map`) or there is only one.

    `ctx` is a lowering rule's context."""
    from jax._src import sharding_impls

    axis_context = ctx.module_context.axis_context
    if isinstance(axis_context, sharding_impls.SPMDAxisContext):
        # Inside a `shard_map` over some of the mesh's axes: callbacks are refused there, so the
        # check goes through a `shard_map` over the other axes.
        rest = frozenset(axis_context.mesh.axis_names) - frozenset(axis_context.manual_axes)
        return (jax.sharding.get_abstract_mesh(), rest) if rest else None
    if isinstance(axis_context, sharding_impls.ShardingContext):
        if axis_context.num_devices <= 1:
            return None
        mesh = axis_context.abstract_mesh
        if mesh is None or mesh.empty:
            mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            # Lowered without a mesh (`Auto` shardings, no `jax.set_mesh`): one axis over all
            # the program's devices. Which devices is not known here, and not needed.
            mesh = jax.sharding.AbstractMesh((axis_context.num_devices,), ("devices",))
        return mesh, None
    return None


def fully_manual_axes(ctx) -> tuple | None:
    """The mesh axes (in mesh order) of a `shard_map` that is manual over all of them, on more
    than one device, or `None` elsewhere. There a raising check runs on every device by itself,
    each on its own data: a device that raises alone leaves the others waiting in the next
    collective, so the check must agree across these axes first.

    `ctx` is a lowering rule's context."""
    from jax._src import sharding_impls

    axis_context = ctx.module_context.axis_context
    if not isinstance(axis_context, sharding_impls.SPMDAxisContext):
        return None
    mesh = axis_context.mesh
    manual = frozenset(axis_context.manual_axes)
    if frozenset(mesh.axis_names) - manual or mesh.size <= 1:
        return None
    return tuple(name for name in mesh.axis_names if name in manual)


# JAX's own operations (`lax.mul`, ...) make their operands agree on the manual mesh axes they
# vary over inside `shard_map` (`core.auto_insert_reshard`, inserting `pvary`) before binding their
# primitive. A traced program replayed primitive by primitive (`linops/function.py`) must do the
# same, or a closed-over constant times a per-shard vector fails the `check_vma` type check.
def vary_alike(args: list) -> list:
    """`args` with every array marked as varying over the union of the manual axes that any of
    them varies over (a no-op outside `shard_map`)."""
    from jax._src import core

    return list(core.auto_insert_reshard(*args))


def varying_axes(x) -> frozenset:
    """The manual mesh axes (inside `shard_map`) that `x` varies over; empty elsewhere."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    return frozenset(getattr(mat, "varying", ()) or ())
