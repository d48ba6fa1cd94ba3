"""Failure checks around a solve: turning a failed solve into `RESULTS.nonfinite_input` when its
inputs are not finite, and raising at run time for `throw=True`.

Why it is split this way: every check compiled into a program costs compile time (each reduction
is a kernel for XLA to build, about 10-20 ms apiece on a CPU), and a check over the operator costs
a pass over the whole matrix at run time. So a solve itself only decides *whether* it failed (the
solver's own verdict plus one finiteness check of the solution: non-finite inputs give a non-finite
solution or a failed solver). *Why* it failed is worked out only where someone looks:

- `classify` builds it into the program, for `throw=False`, where XLA drops it again if the caller
  never reads `Solution.result`;
- `raise_if_failed` works it out on the host, inside the error callback, which only runs when the
  solve has failed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import _tree
from .._compat import enum_index, enum_message
from .._solution import RESULTS

_SUCCESSFUL = int(enum_index(RESULTS.successful))
_NONFINITE = int(enum_index(RESULTS.nonfinite_input))
_SINGULAR = int(enum_index(RESULTS.singular))


def _inexact(leaves) -> list:
    return [x for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def classify(result, solver_result, operator_leaves, vector_leaves):
    """Say why a failed `result` failed: `nonfinite_input` when the inputs are not finite.

    A non-finite operator always counts. A non-finite right-hand side counts unless the solver
    blamed the matrix itself (`solver_result` a failure other than `nonfinite_input`): in the solves
    that derivatives make, the right-hand side holds the primal solution, which is not finite exactly
    when the primal system was singular, and "singular" is then the right diagnosis. A solver may
    report `nonfinite_input` for a non-finite solution from a sound factorization; with finite
    inputs that is an overflow of a (numerically) singular system, reported as `singular`."""
    failed = result != RESULTS.successful
    operator_bad = jnp.logical_not(_tree.tree_all_finite(_inexact(operator_leaves)))
    vector_bad = jnp.logical_not(_tree.tree_all_finite(_inexact(vector_leaves)))
    blames_matrix = (solver_result != RESULTS.successful) & (
        solver_result != RESULTS.nonfinite_input
    )
    nonfinite = failed & (operator_bad | (vector_bad & jnp.logical_not(blames_matrix)))
    overflow = result == RESULTS.nonfinite_input
    return RESULTS.where(
        nonfinite,
        RESULTS.nonfinite_input,
        RESULTS.where(overflow, RESULTS.singular, result),
    )


def _host_check(code, solver_code, *arrays, n_operator: int, member_ndims: tuple):
    """Runs on the host: raise with the message of the first failed member, classified as
    `classify` does. `code` carries every batch axis; an array carries those it is batched along,
    leading and left-aligned with `code`'s (size 1 where unbatched at that level)."""
    code, solver_code = np.asarray(code), np.asarray(solver_code)
    solver_code = np.broadcast_to(solver_code, code.shape)
    for idx in np.ndindex(code.shape):
        c = int(code[idx])
        if c == _SUCCESSFUL:
            continue
        member = []
        for a, nd in zip(arrays, member_ndims):
            a = np.asarray(a)
            batch = a.shape[: a.ndim - nd]
            member.append(a[tuple(i if d > 1 else 0 for i, d in zip(idx, batch))])
        operator_ok = all(np.isfinite(a).all() for a in member[:n_operator])
        vector_ok = all(np.isfinite(a).all() for a in member[n_operator:])
        blames_matrix = int(solver_code[idx]) not in (_SUCCESSFUL, _NONFINITE)
        if not operator_ok or (not vector_ok and not blames_matrix):
            c = _NONFINITE
        elif c == _NONFINITE:
            c = _SINGULAR
        raise RuntimeError(enum_message(RESULTS, c))
    return np.zeros(code.shape, np.int32)


def raise_if_failed(value, result, solver_result, operator_leaves, vector_leaves):
    """Return `value`, raising at run time if `result` is a failure (with the message of
    `classify`'s diagnosis). The inputs are only inspected, on the host, when the solve failed."""
    operator_arrays = [jax.lax.stop_gradient(x) for x in _inexact(operator_leaves)]
    vector_arrays = [jax.lax.stop_gradient(x) for x in _inexact(vector_leaves)]
    arrays = operator_arrays + vector_arrays
    host = functools.partial(
        _host_check,
        n_operator=len(operator_arrays),
        member_ndims=tuple(jnp.ndim(a) for a in arrays),
    )

    @jax.custom_batching.custom_vmap
    def guard(code, solver_code, *arrays):
        # `code` has one axis per `vmap` level (none outside `vmap`). The predicate is a single
        # boolean, so the callback, and the look at the inputs, only run when a solve failed.
        return jax.lax.cond(
            jnp.any(code != _SUCCESSFUL),
            lambda: jax.pure_callback(
                host,
                jax.ShapeDtypeStruct(code.shape, jnp.int32),
                code,
                solver_code,
                *arrays,
                vmap_method="sequential",
            ),
            lambda: jnp.zeros(code.shape, jnp.int32),
        )

    @guard.def_vmap
    def _(axis_size, in_batched, code, solver_code, *arrays):
        # A `cond` on a batched predicate would run both branches and broadcast every operand (a
        # whole matrix per batch member) to the batch. Instead, give every argument a leading axis
        # for this level (size 1 where unbatched: a reshape, not a copy) and check again.
        def lead(x, batched):
            return x if batched else jnp.expand_dims(x, 0)

        if not in_batched[0]:
            code = jnp.broadcast_to(code, (axis_size, *jnp.shape(code)))
        solver_code = jnp.broadcast_to(lead(solver_code, in_batched[1]), code.shape)
        arrays = [lead(a, b) for a, b in zip(arrays, in_batched[2:])]
        return guard(code, solver_code, *arrays), True

    token = guard(enum_index(result), enum_index(solver_result), *arrays)
    # Tie the value to the check so that neither can be dropped or reordered before it: the token
    # is always 0 when the callback returns (it raises otherwise).
    return jax.tree_util.tree_map(
        lambda v: jnp.where(token == 0, v, jnp.full_like(v, jnp.nan)), value
    )
