"""The one JAX primitive that carries every linear solve.

`linear_solve_p` takes the array leaves of `(operator, state, vector, options, solver)` as operands and
everything else (tree structures, tags, the solver's static fields) as a hashable parameter. It is:

- evaluated by calling `solver.compute(state, vector, options)`;
- differentiated by the pseudoinverse derivative (see `_tangent`), whose solves are again binds of this
  primitive, so higher derivatives work;
- linear in `vector`, with transpose `vector ↦ (Aᵀ)⁺ vector` computed from `solver.transpose(state)`,
  which gives reverse mode without refactorizing;
- batched by recording one tuple of `in_axes` per `vmap` level and replaying them with `jax.vmap` of
  `compute` at evaluation time, so that the batched primitive is still this primitive (and so still
  differentiable by the rules above).
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .. import _tree
from .._lru import LRUCache
from .._solution import RESULTS
from ..linops.functions import conj as conj_operator
from ._checks import raise_if_failed
from .._sharding import broadcast_batch, placed_like, typed_like, zeros_of

# ---------------------------------------------------------------------------------------------
# Static (non-array) parameters


def _hashable(x: Any) -> Any:
    try:
        hash(x)
        return x
    except TypeError:
        return ("__id__", id(x))


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an exotic `==` (arrays, NaN-safe objects): fall back to identity
        return False


class _Static:
    """The non-array part of `(operator, state, vector, options, solver)`, hashable so that it can be a
    primitive parameter. `counts` says how many array leaves each of the five parts has."""

    __slots__ = ("leaves", "static_treedef", "dynamic_treedef", "counts", "_hash")

    def __init__(self, leaves, static_treedef, dynamic_treedef, counts):
        self.leaves = tuple(leaves)
        self.static_treedef = static_treedef
        self.dynamic_treedef = dynamic_treedef
        self.counts = tuple(counts)
        self._hash = hash(
            (tuple(_hashable(x) for x in self.leaves), static_treedef, dynamic_treedef, self.counts)
        )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, _Static)
            and self._hash == other._hash
            and self.static_treedef == other.static_treedef
            and self.dynamic_treedef == other.dynamic_treedef
            and self.counts == other.counts
            and len(self.leaves) == len(other.leaves)
            and all(_same(a, b) for a, b in zip(self.leaves, other.leaves))
        )

    def combine(self, dynamic_leaves):
        # Primal values may arrive as JAX literals rather than arrays: make them arrays again so
        # that `eqx.is_array`-based filtering sees the same leaves as at bind time.
        dynamic_leaves = [jnp.asarray(x) for x in dynamic_leaves]
        dynamic = jax.tree_util.tree_unflatten(self.dynamic_treedef, dynamic_leaves)
        static = jax.tree_util.tree_unflatten(self.static_treedef, list(self.leaves))
        return eqx.combine(dynamic, static)

    def slices(self):
        """Index ranges of the operator, state, vector, options and solver leaves."""
        out, start = [], 0
        for c in self.counts:
            out.append(slice(start, start + c))
            start += c
        return out


def _is_leaf_none(x):
    return x is None


def _split(operator, state, vector, options, solver) -> tuple[list, _Static]:
    parts = (operator, state, vector, options, solver)
    dynamic, static = eqx.partition(parts, eqx.is_array)
    counts = [len(jax.tree_util.tree_leaves(p)) for p in dynamic]
    leaves, dynamic_treedef = jax.tree_util.tree_flatten(dynamic)
    static_leaves, static_treedef = jax.tree_util.tree_flatten(static)
    return leaves, _Static(static_leaves, static_treedef, dynamic_treedef, counts)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _compute_unbatched(leaves, static: _Static):
    """One (unbatched) solve. Returns `(value, (result, solver_result), stats)`: `solver_result` is
    the solver's own verdict, `result` adds `singular` for a non-finite solution. Why a failure
    happened (e.g. non-finite inputs) is worked out only where it is looked at; see `_checks.py`."""
    operator, state, vector, options, solver = static.combine(leaves)
    value, solver_result, stats = solver.compute(state, vector, options)
    value = _placed_like_vector(value, vector)
    if type(solver)._verdict_checks_solution:
        result = solver_result
    else:
        value_ok = _tree.tree_all_finite(value)
        result = RESULTS.where(
            (solver_result == RESULTS.successful) & jnp.logical_not(value_ok),
            RESULTS.singular,
            solver_result,
        )
    return value, (result, solver_result), stats


def _placed_like_vector(value, vector):
    """The solution sharded as the right-hand side, leaf by leaf, where shardings are types and
    the two have the same structure and shapes (a dense solver computes on a gathered vector)."""
    if jax.tree_util.tree_structure(value) != jax.tree_util.tree_structure(vector):
        return value
    return jax.tree_util.tree_map(
        lambda x, b: placed_like(x, b) if jnp.shape(x) == jnp.shape(b) else x, value, vector
    )


def _flat_outputs(value, result, stats):
    # `result` is a pytree whose single leaf is its integer code.
    return [jnp.asarray(x) for x in jax.tree_util.tree_leaves((value, result, stats))]


def _member_fn(static: _Static, batch: tuple, record: list | None = None):
    """The flat-output function of one bind (vmapped once per level of `batch`). `record`, if
    given, receives the tree structure of one member's `(value, result, stats)`."""

    def f(leaves):
        out = _compute_unbatched(leaves, static)
        if record is not None:
            record.append(jax.tree_util.tree_structure(out))
        return _flat_outputs(*out)

    for axes in batch:
        f = jax.vmap(f, in_axes=(list(axes),), out_axes=0)
    return f


def _impl(*leaves, static: _Static, batch: tuple, throw: bool):
    return _member_fn(static, batch)(list(leaves))


# Per `(static, avals, batch)`: the output tree structure of one member, the output avals,
# and the traced program, which the lowering below reuses rather than tracing the solver again
# (tracing is a sizeable part of compile time). A program that captured large constants is not
# kept: the cache must not hold on to users' arrays; and all the constants kept together are
# bounded too (64 MiB), so a long run over many signatures cannot pile them up.
_MAX_CACHED_CONST_BYTES = 1 << 20


def _consts_bytes(closed) -> int:
    return 0 if closed is None else sum(getattr(c, "nbytes", 0) for c in closed.consts)


_TRACE_CACHE = LRUCache(512, max_bytes=64 << 20, weigh=lambda entry: _consts_bytes(entry[2]))


def _aval(x):
    """The type of an operand as the primitive sees it, sharding included."""
    return jax.typeof(x).update(weak_type=False)


def _struct(aval):
    """A `ShapeDtypeStruct` with everything `aval` says: shape, dtype, sharding (on an `Explicit`
    mesh, part of the type) and the manual axes it varies over (inside `shard_map`)."""
    return jax.ShapeDtypeStruct(
        aval.shape, aval.dtype, sharding=aval.sharding, manual_axis_type=aval.mat
    )


def _key_avals(avals) -> tuple:
    # The whole type, less weak typing: shape, dtype, and what changes the program on many
    # devices (the sharding with its mesh, the manual axes it varies over inside `shard_map`, the
    # memory kind). Avals are interned, so this key hashes and compares cheaply.
    return tuple(a.update(weak_type=False) for a in avals)


def _out_info(static: _Static, avals: tuple, batch: tuple):
    """`(treedef, out_avals, jaxpr)`: the tree structure of one (unbatched) member's
    `(value, result, stats)`, the batched output avals, and the traced program (a closed jaxpr,
    or None if it was not kept). Cached."""

    def trace():
        structs = [_struct(a) for a in avals]
        record: list = []
        closed = jax.make_jaxpr(_member_fn(static, batch, record))(structs)
        consts_bytes = _consts_bytes(closed)
        return (
            record[0],
            tuple(a.update(weak_type=False) for a in closed.out_avals),
            closed if consts_bytes <= _MAX_CACHED_CONST_BYTES else None,
        )

    return _TRACE_CACHE.get((static, _key_avals(avals), batch), trace)


def _abstract_eval(*avals, static, batch, throw):
    return _out_info(static, avals, batch)[1]


def _lowering(ctx, *args, static, batch, throw):
    closed = _out_info(static, ctx.avals_in, batch)[2]
    if closed is None:
        fn = functools.partial(_impl, static=static, batch=batch, throw=throw)
    else:
        fn = jax_core.jaxpr_as_fun(closed)
    return mlir.lower_fun(fn, multiple_results=True)(ctx, *args)


_EAGER_CACHE = LRUCache(512)


def _eager(*leaves, static: _Static, batch: tuple, throw: bool):
    """Evaluate a bind outside `jit` (e.g. in the solves of an eager `jax.grad`) by compiling the
    primitive once per signature, as JAX does for its own primitives, rather than dispatching the
    solver's operations one by one."""

    def compile_bind():
        return jax.jit(
            lambda *xs: linear_solve_p.bind(*xs, static=static, batch=batch, throw=throw)
        )

    return _EAGER_CACHE.get((static, batch, throw), compile_bind)(*leaves)


linear_solve_p = Primitive("linopx_linear_solve")
linear_solve_p.multiple_results = True
linear_solve_p.def_impl(_eager)
linear_solve_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(linear_solve_p, _lowering)


def bind_solve(operator, state, vector, options, solver, throw: bool):
    """Solve through the primitive. Returns `(value, result, solver_result, stats)`.

    `throw` says whether the solves that derivatives make raise on failure. The primitive never
    raises itself: `linear_solve` checks its own result after it, and the derivative rules check
    theirs (`_solve_value`)."""
    leaves, static = _split(operator, state, vector, options, solver)
    avals = tuple(_aval(x) for x in leaves)
    treedef = _out_info(static, avals, ())[0]
    out = linear_solve_p.bind(*leaves, static=static, batch=(), throw=throw)
    value, (result, solver_result), stats = jax.tree_util.tree_unflatten(treedef, out)
    return value, result, solver_result, stats


def _array_leaves(tree) -> list:
    # An operator's leaves may include functions and traced programs (`JacobianLinearOperator`).
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def _solve_value(operator, state, vector, options, solver, throw, inspected=None):
    """The value of a solve that a derivative makes, checked (for `throw`) as `linear_solve`
    checks its own, outside the primitive (`check_p` is linear: it is differentiated and
    transposed as the identity on the values).

    A failure's diagnosis looks at the entries of `inspected` (default: `operator`). The transpose
    rule passes the untransposed operator: the same entries, where inspecting the transposed
    one's would make XLA lay out a transposed copy of the matrix for the check on every call
    (the check reads its inputs only when the solve failed, but they must exist)."""
    value, result, solver_result, _ = bind_solve(operator, state, vector, options, solver, throw)
    if throw:
        value = raise_if_failed(
            value,
            result,
            solver_result,
            _array_leaves(operator if inspected is None else inspected),
            _array_leaves(vector),
        )
    return value


# ---------------------------------------------------------------------------------------------
# JVP: the pseudoinverse derivative


def _zero_tangent_like(x):
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def _instantiate_zeros(tangent, structure):
    """`tangent` with its symbolic zeros (`None`: the parts of an output that do not depend on the
    differentiated inputs, e.g. `J @ y` in `(J @ y, sqrt(lam) * y)` differentiated in `lam`)
    replaced by arrays of zeros of `structure`."""
    return jax.tree_util.tree_map(
        lambda s, t: jnp.zeros(s.shape, s.dtype) if t is None else t,
        structure,
        tangent,
        is_leaf=_is_leaf_none,
    )


def _apply(fn, v, structure):
    """`fn(v)` for a linear `fn` that accepts vectors of `structure`, where `v` may be wider
    (float64 for a float32 operator, complex for a real one, as a solution of a mixed-dtype solve
    is): `v` is cast to the structure's dtypes, and a complex `v` for a real structure is applied
    to its real and imaginary parts separately (under strict dtype promotion a real operator
    cannot take a complex vector). The product is in the operator's precision, as every product
    with it is."""

    def cast(tree):
        return jax.tree_util.tree_map(lambda x, s: x.astype(s.dtype), tree, structure)

    if not _tree.is_complex_structure(structure) and _tree.is_complex_structure(
        _tree.structure_of(v)
    ):
        re = fn(cast(jax.tree_util.tree_map(jnp.real, v)))
        im = fn(cast(jax.tree_util.tree_map(jnp.imag, v)))
        return jax.tree_util.tree_map(jax.lax.complex, re, im)
    return fn(cast(v))


def _promote(*trees):
    """`trees` (pytrees of one structure) cast leaf by leaf to their common dtype, so that they
    can be added under strict dtype promotion."""
    leaves = [jax.tree_util.tree_leaves(t) for t in trees]
    dtypes = [_tree.common_dtype(*group) for group in zip(*leaves)]
    return [
        jax.tree_util.tree_map(
            lambda x, d: x.astype(d),
            t,
            jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(t), dtypes),
        )
        for t in trees
    ]


def _sum(*trees):
    return functools.reduce(_tree.tree_add, _promote(*trees))


def _tangent(operator, state, vector, options, solver, x, op_t, vec_t, throw):
    """Tangent of `x = A⁺ b` for one (unbatched) solve.

    With `A'`, `b'` the tangents of the operator and the vector (either may be absent):

        x' = A⁺(−A'x + A⁺ᴴA'ᴴ(b − Ax) − Az + b') + z,    z = A'ᴴA⁺ᴴx

    (Golub & Pereyra 1973; the form used by Lineax, Rader et al. 2023). The residual term is needed
    only if `A` may have dependent rows (b outside the range of A); the `z` terms only if `A` may have
    dependent columns (a null space). Which applies is decided at trace time from the solver's
    `allow_dependent_rows/columns`. `A'` is applied as a JVP of `mv`, never materialised.

    Products with `A` and `A'` go through `_apply`, since `x` (and so every vector here) may be
    wider than the operator in a mixed-dtype solve; sums are promoted explicitly.
    """
    terms = []
    z = None
    in_structure, out_structure = operator.in_structure(), operator.out_structure()
    complex_ = _tree.is_complex_structure(in_structure) or _tree.is_complex_structure(out_structure)
    if vec_t is not None:
        terms.append(vec_t)
    if op_t is not None:

        def a_dot(v):
            def fn(u):
                out = eqx.filter_jvp(lambda o: o.mv(u), (operator,), (op_t,))[1]
                return _instantiate_zeros(out, out_structure)

            return _apply(fn, v, in_structure)

        def a_dot_h(w):
            # A'ᴴ w = conj(A'ᵀ conj(w)); (A')ᵀ = (Aᵀ)' as the transpose is linear.
            def fn(u):
                out = eqx.filter_jvp(lambda o: o.transpose().mv(u), (operator,), (op_t,))[1]
                return _instantiate_zeros(out, in_structure)

            w = _tree.tree_conj(w) if complex_ else w
            out = _apply(fn, w, out_structure)
            return _tree.tree_conj(out) if complex_ else out

        def a_mv(v):
            return _apply(operator.mv, v, in_structure)

        terms.append(_tree.tree_neg(a_dot(x)))
        rows = solver.allow_dependent_rows(operator)
        cols = solver.allow_dependent_columns(operator)
        if rows or cols:
            state_h, options_h = solver.transpose(state, options)
            operator_h = operator.transpose()
            if complex_:
                state_h, options_h = solver.conj(state_h, options_h)
                operator_h = conj_operator(operator_h)

            def solve_h(w):
                return _solve_value(
                    operator_h, state_h, w, options_h, solver, throw, inspected=operator
                )

            if rows:
                residual = _sum(vector, _tree.tree_neg(a_mv(x)))
                terms.append(solve_h(a_dot_h(residual)))
            if cols:
                z = a_dot_h(solve_h(x))
                terms.append(_tree.tree_neg(a_mv(z)))
    rhs = _sum(*terms)
    rhs = jax.tree_util.tree_map(
        lambda r, s: r.astype(_tree.common_dtype(r.dtype, s.dtype)), rhs, out_structure
    )
    out = _solve_value(operator, state, rhs, options, solver, throw)
    if z is not None:
        out = _sum(out, z)
    return out


def _jvp(primals, tangents, *, static: _Static, batch: tuple, throw: bool):
    out = linear_solve_p.bind(*primals, static=static, batch=batch, throw=throw)
    s_op, _, s_vec, _, _ = static.slices()
    op_tangents = tangents[s_op]
    vec_tangents = tangents[s_vec]
    has_op = any(type(t) is not ad.Zero for t in op_tangents)
    has_vec = any(type(t) is not ad.Zero for t in vec_tangents)

    avals = tuple(_aval(p) for p in primals)
    treedef, out_avals, _ = _out_info(static, avals, batch)
    n_value = treedef.children()[0].num_leaves
    zeros_out = [ad.Zero(a.to_tangent_aval()) for a in out_avals]
    if not (has_op or has_vec):
        return out, zeros_out

    op_idx = [i for i, t in enumerate(op_tangents) if type(t) is not ad.Zero]
    vec_idx = [i for i, t in enumerate(vec_tangents) if type(t) is not ad.Zero]
    op_t_given = [op_tangents[i] for i in op_idx]
    vec_t_given = [vec_tangents[i] for i in vec_idx]
    value_leaves = list(out[:n_value])

    def member(primal_leaves, op_t_given, vec_t_given, value_leaves):
        primal_leaves = [jnp.asarray(x) for x in primal_leaves]
        operator, state, vector, options, solver = static.combine(primal_leaves)
        x = jax.tree_util.tree_unflatten(treedef.children()[0], value_leaves)
        op_t = None
        if op_idx:
            op_primal_leaves = primal_leaves[s_op]
            full = [None] * len(op_primal_leaves)
            for i, t in zip(op_idx, op_t_given):
                full[i] = t
            full = [
                t
                if t is not None
                else (
                    _zero_tangent_like(p)
                    if jnp.issubdtype(jnp.result_type(p), jnp.inexact)
                    else None
                )
                for p, t in zip(op_primal_leaves, full)
            ]
            op_treedef = static.dynamic_treedef.children()[0]
            op_dynamic = jax.tree_util.tree_unflatten(op_treedef, op_primal_leaves)
            op_t = jax.tree_util.tree_unflatten(op_treedef, full)
            # Integer leaves (e.g. sparse indices) carry no tangent.
            op_t = jax.tree_util.tree_map(
                lambda p, t: t if (t is not None and eqx.is_inexact_array(p)) else None,
                op_dynamic,
                op_t,
                is_leaf=_is_leaf_none,
            )
        vec_t = None
        if vec_idx:
            vec_primal = primal_leaves[s_vec]
            full = [_zero_tangent_like(p) for p in vec_primal]
            for i, t in zip(vec_idx, vec_t_given):
                full[i] = t
            vec_t = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(vector), full)
        tangent = _tangent(operator, state, vector, options, solver, x, op_t, vec_t, throw)
        return jax.tree_util.tree_leaves(tangent)

    f = member
    for axes in batch:
        op_axes = [axes[s_op][i] for i in op_idx]
        vec_axes = [axes[s_vec][i] for i in vec_idx]
        f = jax.vmap(f, in_axes=(list(axes), op_axes, vec_axes, [0] * n_value), out_axes=0)
    value_tangents = f(list(primals), op_t_given, vec_t_given, value_leaves)
    value_tangents = [
        t.astype(a.dtype) if t.dtype != a.dtype else t
        for t, a in zip(value_tangents, out_avals[:n_value])
    ]
    return out, list(value_tangents) + zeros_out[n_value:]


ad.primitive_jvps[linear_solve_p] = _jvp


# ---------------------------------------------------------------------------------------------
# Transpose: reverse mode


def _transpose(cts, *primals, static: _Static, batch: tuple, throw: bool):
    s_op, s_state, s_vec, s_opt, s_solver = static.slices()
    for i, p in enumerate(primals):
        if ad.is_undefined_primal(p) and not (s_vec.start <= i < s_vec.stop):
            raise NotImplementedError(
                "linopx: a linear solve is linear in its right-hand side only; this transpose "
                "was asked for with respect to the operator or the solver state. Please report "
                "this as a bug."
            )
    vec_avals = [p.aval for p in primals[s_vec]]
    avals = tuple(
        p.aval
        if ad.is_undefined_primal(p)
        else _aval(p)
        for p in primals
    )
    treedef, out_avals, _ = _out_info(static, avals, batch)
    n_value = treedef.children()[0].num_leaves
    value_cts = [
        zeros_of(a) if type(ct) is ad.Zero else typed_like(ct, a)
        for ct, a in zip(cts[:n_value], out_avals[:n_value])
    ]
    if all(type(ct) is ad.Zero for ct in cts[:n_value]):
        return (
            [None] * len(primals[: s_vec.start])
            + [ad.Zero(a) for a in vec_avals]
            + [None] * (len(primals) - s_vec.stop)
        )

    const_idx = [i for i, p in enumerate(primals) if not ad.is_undefined_primal(p)]
    const_leaves = [primals[i] for i in const_idx]

    def member(const_leaves, value_cts):
        leaves = [None] * len(primals)
        for i, c in zip(const_idx, const_leaves):
            leaves[i] = c
        # The vector's leaves are undefined here; they are not needed for the transposed solve.
        for i in range(s_vec.start, s_vec.stop):
            leaves[i] = jnp.zeros(1)
        operator, state, _, options, solver = static.combine(leaves)
        ct_value = jax.tree_util.tree_unflatten(treedef.children()[0], value_cts)
        state_t, options_t = solver.transpose(state, options)
        ct_vector = _solve_value(
            operator.transpose(), state_t, ct_value, options_t, solver, throw, inspected=operator
        )
        return jax.tree_util.tree_leaves(ct_vector)

    f = member
    for axes in batch:
        f = jax.vmap(f, in_axes=([axes[i] for i in const_idx], [0] * n_value), out_axes=0)
    ct_vec = f(const_leaves, value_cts)
    ct_vec = [c.astype(a.dtype) if c.dtype != a.dtype else c for c, a in zip(ct_vec, vec_avals)]
    return [None] * s_vec.start + list(ct_vec) + [None] * (len(primals) - s_vec.stop)


ad.primitive_transposes[linear_solve_p] = _transpose


# ---------------------------------------------------------------------------------------------
# Batching


def _batch(args, dims, *, static: _Static, batch: tuple, throw: bool):
    size, like, like_axis = next((a.shape[d], a, d) for a, d in zip(args, dims) if d is not None)
    s_vec = static.slices()[2]
    new_args, axes = [], []
    for i, (a, d) in enumerate(zip(args, dims)):
        if d is None:
            if s_vec.start <= i < s_vec.stop:
                # Keep the right-hand side batched whenever anything is, so that reverse mode
                # (whose cotangents are batched) has matching shapes. Cheap: a vector, not a matrix.
                # Its new axis is placed like the batched operands' (on an `Explicit` mesh the
                # members of one `vmap` must be sharded alike).
                a = broadcast_batch(a, size, like, like_axis)
                axes.append(0)
            else:
                axes.append(None)
        else:
            a = jnp.moveaxis(a, d, 0) if d != 0 else a
            axes.append(0)
        new_args.append(a)
    out = linear_solve_p.bind(
        *new_args, static=static, batch=batch + (tuple(axes),), throw=throw
    )
    return out, [0] * len(out)


batching.primitive_batchers[linear_solve_p] = _batch

__all__ = ["bind_solve", "linear_solve_p"]
