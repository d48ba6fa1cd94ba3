"""Matrix-free operators: `FunctionLinearOperator` and `JacobianLinearOperator`."""

from __future__ import annotations

import types
from typing import Any, Callable, Literal

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _tree
from .._compat import vary_alike
from .base import AbstractLinearOperator, check_tags
from .tags import transpose_tags


def matrix_from_mv(mv: Callable, in_structure: Any, out_structure: Any) -> jax.Array:
    """Form the dense `(out_size, in_size)` matrix of a linear map by applying it to a basis."""
    n = _tree.structure_size(in_structure)
    dtype = _tree.structure_dtype(in_structure)
    basis = jnp.eye(n, dtype=dtype)

    def column(e):
        return _tree.ravel(mv(_tree.unravel(e, in_structure)))

    return jax.vmap(column, out_axes=1)(basis)


def _non_inexact_leaf(frozen: tuple):
    """The first integer or boolean leaf of a frozen structure, or None."""
    return next((x for x in frozen[0] if not jnp.issubdtype(x.dtype, jnp.inexact)), None)


def _check_inexact_output(frozen: tuple, name: str, what: str) -> None:
    """Raise if a linear map's output has an integer or boolean leaf: such a map is not linear (and
    has no derivative to apply), so it is a mistake, not something to cast."""
    leaf = _non_inexact_leaf(frozen)
    if leaf is not None:
        raise ValueError(
            f"{name}: {what} returns a leaf of dtype {leaf.dtype} (shape {leaf.shape}); a linear "
            "map returns floating or complex arrays. Return e.g. `y.astype(jnp.float64)`, or "
            "drop the rounding/comparison that made the output an integer."
        )


_INLINED = frozenset({"jit", "pjit", "closed_call", "core_call"})


def _replay(jaxpr, consts, args) -> list:
    """Evaluate `jaxpr` on `args` by binding its primitives afresh, and with nested `jit`s inlined.

    `jax.core.eval_jaxpr` binds a nested `jit` (which `jnp.roll` and many `jnp` functions are)
    with the program it was traced with, whose types are those of the example input. On sharded
    inputs that program computes the right values but on replicated types, so XLA gathers the
    whole vector to feed it. Inlined, each primitive sees the input's sharding and propagates it,
    as in a fresh trace of the function."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        if eqn.primitive.name in _INLINED and "jaxpr" in eqn.params:
            inner = eqn.params["jaxpr"]
            inner_jaxpr = getattr(inner, "jaxpr", inner)
            outs = _replay(inner_jaxpr, getattr(inner, "consts", ()), values)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            if len(values) > 1:
                values = vary_alike(values)
            outs = eqn.primitive.bind(*values, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


class _ClosureConverted(eqx.Module):
    """`fn` as a traced program whose closed-over arrays (JAX tracers included) are leaves, so
    that an operator holding it is a pytree of arrays and can cross `jit`, `vmap` and the solve
    primitive.

    It accepts any input with the example's tree structure, shapes and dtypes, whatever its
    sharding: the program is replayed on the input, so that shardings (part of the type on
    `Explicit` mesh axes) propagate through it as through any JAX function. A call with another
    structure, shape or dtype raises."""

    jaxpr: Any = eqx.field(static=True)
    consts: list
    in_tree: Any = eqx.field(static=True)
    in_types: tuple = eqx.field(static=True)
    out_tree: Any = eqx.field(static=True)
    # A plain function that closes over nothing cannot hold tracers: it is kept as it is and
    # called directly (no program is traced here; arrays it reads from globals stay constants).
    plain: Callable | None = eqx.field(static=True)

    def __init__(self, fn: Callable, structure: Any):
        structs, in_tree = jax.tree_util.tree_flatten(structure)
        self.in_tree = in_tree
        self.in_types = tuple((tuple(s.shape), jnp.dtype(s.dtype)) for s in structs)
        if isinstance(fn, types.FunctionType) and fn.__closure__ is None:
            self.plain, self.jaxpr, self.consts, self.out_tree = fn, None, [], None
            return
        self.plain = None
        out_tree = []

        def flat(*leaves):
            out = fn(jax.tree_util.tree_unflatten(in_tree, leaves))
            out_leaves, treedef = jax.tree_util.tree_flatten(out)
            out_tree.append(treedef)
            return out_leaves

        closed = jax.make_jaxpr(flat)(*structs)
        self.jaxpr = closed.jaxpr
        self.consts = list(closed.consts)
        self.out_tree = out_tree[0]

    def __call__(self, vector):
        leaves, tree = jax.tree_util.tree_flatten(vector)
        given = tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves)
        if tree != self.in_tree or given != self.in_types:
            expected = jax.tree_util.tree_unflatten(
                self.in_tree, [jax.ShapeDtypeStruct(*t) for t in self.in_types]
            )
            raise ValueError(
                "FunctionLinearOperator: the operator was built for inputs of structure "
                f"{_tree.describe(expected)}, and was given "
                f"{_tree.describe(_tree.structure_of(vector))}. Pass a vector of the operator's "
                "input structure (`op.in_structure()`)."
            )
        if self.plain is not None:
            return self.plain(vector)
        out = _replay(self.jaxpr, self.consts, leaves)
        return jax.tree_util.tree_unflatten(self.out_tree, out)


class _Transposed(eqx.Module):
    """The transpose of a closure-converted linear function, transposed afresh at each call.

    Transposing once, when the operator is built, would fix the types of the transposed program
    to those of the example input; on vectors sharded over `Explicit` mesh axes it would then
    compute on replicated types and gather the vector. Here each call transposes the forward
    program for the vector it is given. The forward program's input is taken to be placed like
    that vector when the two have the same shapes (a square operator acting on one space), and
    replicated otherwise."""

    forward: _ClosureConverted
    in_frozen: tuple = eqx.field(static=True)
    square: bool = eqx.field(static=True)

    def __call__(self, vector):
        structure = _tree.thaw_structure(self.in_frozen)
        if self.square:
            structure = jax.tree_util.tree_map(_placed_like, structure, vector)
        return jax.linear_transpose(self.forward, structure)(vector)[0]


def _placed_like(struct, x):
    """`struct` with the sharding of `x` where shardings are types (`Explicit` mesh axes), and
    the manual mesh axes `x` varies over (inside `shard_map`)."""
    aval = jax.typeof(x)
    sharding = aval.sharding
    if sharding.mesh.empty or not (sharding.mesh.explicit_axes or sharding.mesh.manual_axes):
        return struct
    return jax.ShapeDtypeStruct(
        struct.shape, struct.dtype, sharding=sharding, manual_axis_type=aval.mat
    )


class FunctionLinearOperator(AbstractLinearOperator):
    """A linear function `fn` as an operator. Nothing is materialised unless `as_matrix` is called.

    **Arguments:**

    - `fn`: a linear function of one pytree argument. Arrays it closes over (including JAX tracers)
      become leaves of the operator, so it can be created inside `jit`/`grad` and passed around.
    - `input_structure`: a pytree of `jax.ShapeDtypeStruct` describing `fn`'s input. Its dtypes
      must be floating or complex (an integer or boolean dtype raises `ValueError`: unlike integer
      *data*, which is cast, a structure's dtype is what `fn` is traced with), and so must be those
      of `fn`'s output.
    - `tags`: structural promises.

    ```python
    op = lx.FunctionLinearOperator(lambda v: jnp.cumsum(v), jax.ShapeDtypeStruct((5,), jnp.float64),
                                   lx.lower_triangular_tag)
    ```
    """

    fn: Callable
    input_frozen: tuple = eqx.field(static=True)
    output_frozen: tuple = eqx.field(static=True)
    tags: frozenset = eqx.field(static=True)

    def __init__(self, fn: Callable, input_structure: Any, tags: Any = ()):
        input_frozen = _tree.freeze_structure(input_structure)
        input_structure = _tree.thaw_structure(input_frozen)
        leaf = _non_inexact_leaf(input_frozen)
        if leaf is not None:
            raise ValueError(
                f"FunctionLinearOperator: input dtype {leaf.dtype} is not floating or complex; "
                "linear operators act on inexact vectors. Pass `input_structure` as a pytree of "
                "`jax.ShapeDtypeStruct(shape, jnp.float64)` (or another float or complex dtype)."
            )
        if not callable(fn):
            raise TypeError(
                f"FunctionLinearOperator needs a function as `fn`, got {type(fn).__name__}; for a "
                "matrix use `lx.MatrixLinearOperator`."
            )
        # A function that is already a pytree of arrays (the transpose of another operator) needs
        # no conversion.
        self.fn = fn if isinstance(fn, (_ClosureConverted, _Transposed)) else _ClosureConverted(fn, input_structure)
        self.input_frozen = input_frozen
        self.output_frozen = _tree.freeze_structure(jax.eval_shape(self.fn, input_structure))
        _check_inexact_output(self.output_frozen, "FunctionLinearOperator", "`fn`")
        self.tags = check_tags(
            tags, input_structure, self.out_structure(), "FunctionLinearOperator"
        )

    def mv(self, vector):
        return self.fn(vector)

    def as_matrix(self):
        return matrix_from_mv(self.mv, self.in_structure(), self.out_structure())

    def transpose(self):
        if isinstance(self.fn, _Transposed):
            fn = self.fn.forward
        else:
            fn = _Transposed(
                self.fn,
                self.input_frozen,
                _tree.same_shapes(self.in_structure(), self.out_structure()),
            )
        return FunctionLinearOperator(fn, self.out_structure(), transpose_tags(self.tags))

    def in_structure(self):
        return _tree.thaw_structure(self.input_frozen)

    def out_structure(self):
        return _tree.thaw_structure(self.output_frozen)


class JacobianLinearOperator(AbstractLinearOperator):
    """The Jacobian `∂fn/∂x` of `fn(x, args)` at `x`, applied by automatic differentiation.

    The Jacobian is never formed unless `as_matrix` (or `materialise`) is called. Each `mv`
    costs one JVP of `fn`; call `lx.linearise(op)` first to pay for the primal computation once.

    **Arguments:**

    - `fn`: a function `(x, args) -> y` of pytrees.
    - `x`: the point at which to linearise. Integer or boolean leaves are cast to JAX's default
      float dtype. `fn`'s output must be floating or complex.
    - `args`: extra, non-differentiated arguments of `fn`.
    - `tags`: structural promises.
    - `jac`: `None` or `"fwd"` applies the Jacobian by forward mode (`jax.jvp`); `"bwd"` by
      transposing reverse mode (`jax.vjp`), for functions that only define a custom VJP.
    """

    fn: Callable
    x: PyTree
    args: PyTree
    tags: frozenset = eqx.field(static=True)
    jac: Literal["fwd", "bwd"] | None = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable,
        x: Any,
        args: Any = None,
        tags: Any = (),
        jac: Literal["fwd", "bwd"] | None = None,
    ):
        if jac not in (None, "fwd", "bwd"):
            raise ValueError(f'`jac` must be None, "fwd" or "bwd", got {jac!r}.')
        x = jax.tree_util.tree_map(lambda a: _tree.as_inexact_array(a, "x"), x)
        self.fn = eqx.filter_closure_convert(fn, x, args)
        self.x = x
        self.args = args
        self.jac = jac
        out = jax.eval_shape(lambda x: self.fn(x, args), x)
        _check_inexact_output(
            _tree.freeze_structure(out), "JacobianLinearOperator", "`fn(x, args)`"
        )
        self.tags = check_tags(tags, _tree.structure_of(x), out, "JacobianLinearOperator")

    def _f(self, x):
        return self.fn(x, self.args)

    def mv(self, vector):
        if self.jac == "bwd":
            _, vjp = jax.vjp(self._f, self.x)
            transposed = jax.linear_transpose(lambda w: vjp(w)[0], self.out_structure())
            return transposed(vector)[0]
        return jax.jvp(self._f, (self.x,), (vector,))[1]

    def as_matrix(self):
        if self.jac == "bwd":
            return self.transpose().as_matrix().T
        return matrix_from_mv(self.mv, self.in_structure(), self.out_structure())

    def transpose(self):
        _, vjp = jax.vjp(self._f, self.x)
        return FunctionLinearOperator(
            lambda w: vjp(w)[0], self.out_structure(), transpose_tags(self.tags)
        )

    def in_structure(self):
        return _tree.structure_of(self.x)

    def out_structure(self):
        return jax.eval_shape(self._f, self.x)
