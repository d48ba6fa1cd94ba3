"""Matrix-free operators: `FunctionLinearOperator` and `JacobianLinearOperator`."""

from __future__ import annotations

from typing import Any, Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _tree
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
        self.fn = eqx.filter_closure_convert(fn, input_structure)
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
        transposed = jax.linear_transpose(self.fn, self.in_structure())
        return FunctionLinearOperator(
            lambda w: transposed(w)[0], self.out_structure(), transpose_tags(self.tags)
        )

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
