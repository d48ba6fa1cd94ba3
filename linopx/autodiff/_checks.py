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


def _inexact(leaves) -> list:
    return [x for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def classify(result, solver_result, operator_leaves, vector_leaves):
    """Refine a failed `result` to `nonfinite_input` when the inputs are not finite.

    A non-finite operator always counts. A non-finite right-hand side counts unless the solver
    itself reported the failure (`solver_result`): in the solves that derivatives make, the
    right-hand side holds the primal solution, which is not finite exactly when the primal system
    was singular, and "singular" is then the right diagnosis."""
    failed = result != RESULTS.successful
    operator_bad = jnp.logical_not(_tree.tree_all_finite(_inexact(operator_leaves)))
    vector_bad = jnp.logical_not(_tree.tree_all_finite(_inexact(vector_leaves)))
    solver_failed = solver_result != RESULTS.successful
    nonfinite = failed & (operator_bad | (vector_bad & jnp.logical_not(solver_failed)))
    return RESULTS.where(nonfinite, RESULTS.nonfinite_input, result)


def _host_check(code, solver_code, *arrays, n_operator: int):
    """Runs on the host, only for failed solves (or under `vmap`, for every batch): raise with the
    message of the first failed member, classified as `classify` does."""
    code, solver_code = np.asarray(code), np.asarray(solver_code)
    for idx in np.ndindex(code.shape):
        c = int(code[idx])
        if c == _SUCCESSFUL:
            continue
        member = [np.asarray(a)[idx] if np.ndim(a) >= len(idx) else np.asarray(a) for a in arrays]
        operator_ok = all(np.isfinite(a).all() for a in member[:n_operator])
        vector_ok = all(np.isfinite(a).all() for a in member[n_operator:])
        if not operator_ok or (not vector_ok and int(solver_code[idx]) == _SUCCESSFUL):
            c = _NONFINITE
        raise RuntimeError(enum_message(RESULTS, c))
    return np.zeros(code.shape, np.int32)


def raise_if_failed(value, result, solver_result, operator_leaves, vector_leaves):
    """Return `value`, raising at run time if `result` is a failure (with the message of
    `classify`'s diagnosis). The inputs are only inspected, on the host, when the solve failed."""
    operator_arrays = [jax.lax.stop_gradient(x) for x in _inexact(operator_leaves)]
    vector_arrays = [jax.lax.stop_gradient(x) for x in _inexact(vector_leaves)]
    code = enum_index(result)
    solver_code = enum_index(solver_result)
    host = functools.partial(_host_check, n_operator=len(operator_arrays))

    def on_failure(_):
        return jax.pure_callback(
            host,
            jax.ShapeDtypeStruct((), jnp.int32),
            code,
            solver_code,
            *operator_arrays,
            *vector_arrays,
            vmap_method="broadcast_all",
        )

    token = jax.lax.cond(code != _SUCCESSFUL, on_failure, lambda _: jnp.zeros((), jnp.int32), None)
    # Tie the value to the check so that neither can be dropped or reordered before it: the token
    # is always 0 when the callback returns (it raises otherwise).
    return jax.tree_util.tree_map(
        lambda v: jnp.where(token == 0, v, jnp.full_like(v, jnp.nan)), value
    )
