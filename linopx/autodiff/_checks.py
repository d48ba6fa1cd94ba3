"""Failure checks around a solve: turning a failed solve into `RESULTS.nonfinite_input` when its
inputs are not finite, and raising at run time for `throw=True`.

Why it is split this way: every check compiled into a program costs compile time (each reduction
is a kernel for XLA to build, about 10-20 ms apiece on a CPU), and a check over the operator costs
a pass over the whole matrix at run time. So a solve itself only decides *whether* it failed (the
solver's own verdict plus one finiteness check of the solution: non-finite inputs give a non-finite
solution or a failed solver). *Why* it failed is worked out only where someone looks:

- `classify` builds it into the program, for `throw=False`, where XLA drops it again if the caller
  never reads `Solution.result`;
- `raise_if_failed` (for `throw=True`) works it out only when the solve has failed. On the CPU,
  within one device, that is one call of the compiled `linopx_check` handler (`_native/checks.cc`):
  it returns at once when nothing failed, and otherwise reads the inputs where they lie, with no
  `cond` in the program and no Python at run time. Elsewhere (several devices, other platforms,
  no C++ compiler) it is a `cond` whose branch reduces the inputs to flags and raises from a host
  callback.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax.sharding import PartitionSpec as P

from .. import _native, _tree
from .._compat import (
    enum_index,
    enum_message,
    fully_manual_axes,
    per_device_mesh,
    silence_callback_log,
)
from .._lru import LRUCache
from .._solution import RESULTS, LinearSolveError
from .._sharding import broadcast_batch

_SUCCESSFUL = int(enum_index(RESULTS.successful))
_NONFINITE = int(enum_index(RESULTS.nonfinite_input))
_SINGULAR = int(enum_index(RESULTS.singular))


silence_callback_log(LinearSolveError)

_FAILURE = re.compile(r"LinearSolveError: (.*)", re.DOTALL)


def clean_failure(err: BaseException) -> LinearSolveError | None:
    """The `LinearSolveError` that a JAX runtime error carries (raised by `_host_raise` inside a
    callback, and wrapped by JAX with the callback's traceback), or `None` if it carries none."""
    if isinstance(err, LinearSolveError):
        return err
    matches = _FAILURE.findall(str(err))
    if not matches:
        return None
    return LinearSolveError(matches[-1].strip())


def run_eagerly(fn, *args):
    """`fn(*args)` (a compiled solve), waiting for its outputs so that a failed solve raises here,
    as a clean `LinearSolveError` without JAX's wrapping."""
    try:
        return jax.block_until_ready(fn(*args))
    except (jax.errors.JaxRuntimeError, ValueError) as err:
        # JAX wraps an exception raised in a callback as its runtime error, or (on some eager
        # paths, e.g. `jax.jacrev`) as a `ValueError` with the same text.
        clean = clean_failure(err)
        if clean is None:
            raise
        raise clean from None


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


def _host_raise(code):
    """Runs on the host, only when a solve failed: raise with the message of `code`, the
    diagnosis of the first failed member (a scalar)."""
    raise LinearSolveError(enum_message(RESULTS, int(np.asarray(code))))


def _diagnosis(code, solver_code, flags, n_operator: int):
    """The code of the first failed member, classified as `classify` does, as one scalar.

    `flags` hold, per inspected array, whether each member's entries are all finite (with that
    array's batch axes, of size 1 where it is unbatched). Everything here is elementwise over the
    members or a reduction to a scalar, so on sharded inputs it is local work and a scalar
    all-reduce: no input, and no per-member array, is gathered."""
    members = jnp.arange(code.size, dtype=jnp.int32).reshape(code.shape)

    def all_of(group):
        out = jnp.ones(code.shape, bool)
        for f in group:
            out = out & f
        return out

    operator_ok, vector_ok = all_of(flags[:n_operator]), all_of(flags[n_operator:])
    failed = code != _SUCCESSFUL
    blames_matrix = (solver_code != _SUCCESSFUL) & (solver_code != _NONFINITE)
    nonfinite = ~operator_ok | (~vector_ok & ~blames_matrix)
    classified = jnp.where(
        nonfinite, _NONFINITE, jnp.where(code == _NONFINITE, _SINGULAR, code)
    ).astype(jnp.int32)
    first = jnp.min(jnp.where(failed, members, code.size), initial=code.size)
    return jnp.sum(jnp.where(members == first, classified, 0))


def _guard_impl(
    *operands,
    n_values: int,
    n_operator: int,
    member_ndims: tuple,
    per_device_mesh=None,
    manual_axes=None,
):
    """What `check_p` computes: the values, unchanged, once the host has confirmed that no member
    failed. `code` carries one leading axis per `vmap` level; so does every value, and so does every
    array (of size 1 where unbatched at that level).

    `per_device_mesh` (set by the lowering when the program spans several devices: a mesh and
    the axes to map over, all if None): run the host call on every device rather than on one. A
    callback that raises on one device while the others wait for its result in a collective leaves
    them waiting, and XLA then aborts the whole process; when every device raises the same error at
    the same point, the program fails cleanly.

    `manual_axes` (set inside a `shard_map` manual over all axes of a mesh of several devices,
    where each device checks its own part): the devices first agree, by collectives over these
    axes, on whether any failed, and on the diagnosis of the first one that did (in device order),
    so that every device raises that same error there too."""
    values = list(operands[:n_values])
    code, solver_code = operands[n_values], operands[n_values + 1]
    arrays = list(operands[n_values + 2 :])

    failed = jnp.any(code != _SUCCESSFUL)
    if manual_axes is not None:
        device = jax.lax.axis_index(manual_axes)
        n_devices = jax.lax.psum(1, manual_axes)
        first_device = jax.lax.pmin(jnp.where(failed, device, n_devices), manual_axes)
        failed = first_device < n_devices

    def look():
        # Each input is reduced to one flag per member, in the program, and the members to one
        # diagnosis: the host gets a scalar, not the operator (no copy of the matrix into the
        # layout a callback needs, no gather of a sharded one).
        flags = [
            _tree.all_finite(a, axis=tuple(range(a.ndim - nd, a.ndim)))
            for a, nd in zip(arrays, member_ndims)
        ]
        diagnosis = _diagnosis(code, solver_code, flags, n_operator)
        if manual_axes is not None:
            # Every device takes this branch together (its predicate is agreed), so the
            # collective is safe here; each gets the first failed device's diagnosis.
            diagnosis = jax.lax.psum(
                jnp.where(device == first_device, diagnosis, 0), manual_axes
            )

        def call(d):
            return jax.pure_callback(
                _host_raise, jax.ShapeDtypeStruct((), jnp.int32), d, vmap_method="sequential"
            )

        if per_device_mesh is None:
            return call(diagnosis)
        mesh, axis_names = per_device_mesh
        return jax.shard_map(
            call,
            mesh=mesh,
            in_specs=P(),
            out_specs=P(),
            check_vma=False,
            **({} if axis_names is None else {"axis_names": set(axis_names)}),
        )(diagnosis)

    # The predicate is a single boolean, so the look at the inputs, and the callback, only run
    # when a solve failed.
    token = jax.lax.cond(failed, look, lambda: jnp.zeros((), jnp.int32))
    # Tie the values to the check so that neither can be dropped or reordered before it: the
    # callback never returns (it raises), so `token` is 0 whenever the values are used.
    ok = token == 0
    return [jnp.where(ok, v, jnp.full_like(v, jnp.nan)) for v in values]


# `check_p(*values, code, solver_code, *arrays)` returns `values`, raising at run time if `code`
# says a solve failed. It is a primitive of its own, rather than the `cond`/`where` it lowers to, so
# that it is linear in `values` as JAX sees it: its JVP and transpose pass the values' tangents and
# cotangents straight through, and `jax.linear_transpose` of a solve (and the transposition that
# libraries such as Optimistix and Diffrax do of linearised programs) never has to transpose the
# check. The transposed solve carries its own check (`_solve_value` in the primitive's transpose).
check_p = Primitive("linopx_check")
check_p.multiple_results = True


def _check_abstract_eval(*avals, n_values, **_):
    # The values' types unchanged: shape, dtype and sharding (part of the type on `Explicit` meshes).
    return [a.update(weak_type=False) for a in avals[:n_values]]


def _check_lowering(ctx, *args, **params):
    fn = functools.partial(
        _guard_impl,
        per_device_mesh=per_device_mesh(ctx),
        manual_axes=fully_manual_axes(ctx),
        **params,
    )
    return mlir.lower_fun(fn, multiple_results=True)(ctx, *args)


# The input dtypes the native check reads (`checks.cc`); a check of any other falls back.
_NATIVE_DTYPES = frozenset(
    jnp.dtype(t)
    for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64, jnp.complex128)
)


def _messages() -> str:
    texts = [enum_message(RESULTS, i) for i in range(len(RESULTS._index_to_message))]
    assert not any("\x1e" in t for t in texts)
    return "\x1e".join(texts)


def _native_guard(*operands, n_values: int, n_operator: int, member_ndims: tuple):
    """`_guard_impl` as one call of the compiled `linopx_check` handler: no `cond`, no Python at
    run time. It returns at once when no member failed; only when one did does it read the inputs
    (on the host, where they already are); see `checks.cc`. The call has a side effect, so XLA keeps
    it whether or not the values are used after it, and its failure fails the whole program, so the
    values need no tie to it."""
    values = list(operands[:n_values])
    code, solver_code = operands[n_values], operands[n_values + 1]
    arrays = list(operands[n_values + 2 :])
    token = jax.ShapeDtypeStruct((), jnp.int32)
    jax.ffi.ffi_call(_native.CHECK_TARGET, token, has_side_effect=True)(
        code.astype(jnp.int32),
        solver_code.astype(jnp.int32),
        *arrays,
        n_operator=np.int64(n_operator),
        successful=np.int64(_SUCCESSFUL),
        nonfinite=np.int64(_NONFINITE),
        singular=np.int64(_SINGULAR),
        member_ndims=np.asarray(member_ndims, np.int64),
        messages=_messages(),
    )
    return values


def _check_lowering_cpu(ctx, *args, n_values, **params):
    """On the CPU, within one device, the compiled check when it is built; else the `cond` and
    callback of `_guard_impl` (which on several devices makes them agree). The compiled
    check compiles faster (no `cond`, no reductions over the inputs in the program) and keeps
    Python out of the running program, which runs faster (`benchmarks/single_thread.py`)."""
    arrays = ctx.avals_in[n_values + 2 :]
    if (
        per_device_mesh(ctx) is None
        and fully_manual_axes(ctx) is None
        and all(jnp.dtype(a.dtype) in _NATIVE_DTYPES for a in arrays)
        and _native.available()
    ):
        fn = functools.partial(_native_guard, n_values=n_values, **params)
        return mlir.lower_fun(fn, multiple_results=True)(ctx, *args)
    return _check_lowering(ctx, *args, n_values=n_values, **params)


# Compiled eager checks, one per parameter set (see `_check_impl`); `lx.clear_caches()` empties it.
EAGER_CHECKS = LRUCache(64)


def _check_eager(params: tuple):
    kw = dict(params)
    return EAGER_CHECKS.get(params, lambda: jax.jit(lambda *xs: check_p.bind(*xs, **kw)))


def _check_impl(*args, **params):
    return run_eagerly(_check_eager(tuple(sorted(params.items()))), *args)


def _check_jvp(primals, tangents, *, n_values, **params):
    out = check_p.bind(*primals, n_values=n_values, **params)
    return out, list(tangents[:n_values])


def _check_transpose(cts, *args, n_values, **params):
    return list(cts[:n_values]) + [None] * (len(args) - n_values)


def _check_batch(args, dims, *, n_values, **params):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)

    like, like_axis = next((a, d) for a, d in zip(args, dims) if d is not None)

    def full(x, d):  # every member along a new leading axis
        if d is None:
            return broadcast_batch(x, size, like, like_axis)
        return jnp.moveaxis(x, d, 0)

    def lead(x, d):  # a leading axis for this level: size 1 (a reshape, not a copy) if unbatched
        return jnp.expand_dims(x, 0) if d is None else jnp.moveaxis(x, d, 0)

    n_full = n_values + 2  # the values and both codes; the inspected arrays only get a lead axis
    new = [full(a, d) if i < n_full else lead(a, d) for i, (a, d) in enumerate(zip(args, dims))]
    return check_p.bind(*new, n_values=n_values, **params), [0] * n_values


check_p.def_abstract_eval(_check_abstract_eval)
check_p.def_impl(_check_impl)
mlir.register_lowering(check_p, _check_lowering)
mlir.register_lowering(check_p, _check_lowering_cpu, platform="cpu")
ad.primitive_jvps[check_p] = _check_jvp
ad.primitive_transposes[check_p] = _check_transpose
batching.primitive_batchers[check_p] = _check_batch


def raise_if_failed(value, result, solver_result, operator_leaves, vector_leaves):
    """Return `value`, raising at run time if `result` is a failure (with the message of
    `classify`'s diagnosis). The inputs are only inspected, on the host, when the solve failed."""
    operator_arrays = _inexact(operator_leaves)
    vector_arrays = _inexact(vector_leaves)
    arrays = operator_arrays + vector_arrays
    values, treedef = jax.tree_util.tree_flatten(value)
    out = check_p.bind(
        *values,
        enum_index(result),
        enum_index(solver_result),
        *arrays,
        n_values=len(values),
        n_operator=len(operator_arrays),
        member_ndims=tuple(jnp.ndim(a) for a in arrays),
    )
    return jax.tree_util.tree_unflatten(treedef, out)
