"""Operators built from other operators: tagging, sums, scalings, negation and composition.

These are what the arithmetic on `AbstractLinearOperator` returns; nothing is multiplied out
until `as_matrix` is called.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _tree
from .base import AbstractLinearOperator, check_scalar, check_tags, origin
from .tags import transpose_tags


def _promote(structure: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, _tree.common_dtype(s.dtype, dtype)), structure
    )


def _promote_pair(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, y: jax.ShapeDtypeStruct(x.shape, _tree.common_dtype(x.dtype, y.dtype)), a, b
    )


def _scalar_sign(scalar: Any) -> int | None:
    """+1/-1/0 for a real Python number; None when the sign is unknown at trace time."""
    if isinstance(scalar, numbers.Real):
        if math.isnan(scalar):  # NaN has no sign (and the `0 * A` rule must not apply to it)
            return None
        # `int(...)`: for NumPy scalars (also `numbers.Real`) the comparisons give `np.bool_`,
        # which cannot be subtracted.
        return int(scalar > 0) - int(scalar < 0)
    return None


def _scaled_structure(structure: Any, scalar: Any) -> Any:
    """The structure of `x * scalar` for `x` of `structure`: the dtype JAX gives the product, which
    honours weak types (Python numbers, and arrays and tracers made from them, as a Python float
    leaf becomes under `jax.jit`) and the strong dtypes of NumPy scalars and typed arrays."""
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, jnp.result_type(s.dtype, scalar)), structure
    )


class TaggedLinearOperator(AbstractLinearOperator):
    """Wrap `operator`, adding `tags` to it (for example to promise symmetry of a `FunctionLinearOperator`
    built elsewhere)."""

    operator: AbstractLinearOperator
    tags: frozenset = eqx.field(static=True)

    def __init__(self, operator: AbstractLinearOperator, tags: Any):
        _check_operator(operator, "TaggedLinearOperator")
        self.operator = operator
        self.tags = check_tags(
            tags, operator.in_structure(), operator.out_structure(), "TaggedLinearOperator"
        )

    def mv(self, vector):
        return self.operator.mv(vector)

    def as_matrix(self):
        return self.operator.as_matrix()

    def transpose(self):
        return TaggedLinearOperator(self.operator.transpose(), transpose_tags(self.tags))

    def in_structure(self):
        return self.operator.in_structure()

    def out_structure(self):
        return self.operator.out_structure()


class AddLinearOperator(AbstractLinearOperator):
    """`operator1 + operator2`; both must map the same input structure to the same output structure."""

    operator1: AbstractLinearOperator
    operator2: AbstractLinearOperator

    def __check_init__(self):
        a, b = self.operator1, self.operator2
        _check_operator(a, "AddLinearOperator")
        _check_operator(b, "AddLinearOperator")
        if not (
            _tree.same_shapes(a.in_structure(), b.in_structure())
            and _tree.same_shapes(a.out_structure(), b.out_structure())
        ):
            raise ValueError(
                "Cannot add operators with different structures: "
                f"{_tree.describe(a.in_structure())} -> {_tree.describe(a.out_structure())} and "
                f"{_tree.describe(b.in_structure())} -> {_tree.describe(b.out_structure())}; both "
                "must map the same input structure to the same output structure."
            )

    def mv(self, vector):
        return _tree.tree_add(self.operator1.mv(vector), self.operator2.mv(vector))

    def as_matrix(self):
        return self.operator1.as_matrix() + self.operator2.as_matrix()

    def transpose(self):
        return AddLinearOperator(self.operator1.transpose(), self.operator2.transpose())

    def in_structure(self):
        return _promote_pair(self.operator1.in_structure(), self.operator2.in_structure())

    def out_structure(self):
        return _promote_pair(self.operator1.out_structure(), self.operator2.out_structure())


class MulLinearOperator(AbstractLinearOperator):
    """`operator * scalar`. A real Python scalar's sign is remembered so that tags can follow it
    (a positive semidefinite operator times `-2.0` is negative semidefinite)."""

    operator: AbstractLinearOperator
    scalar: Any
    sign: int | None = eqx.field(static=True)

    def __init__(self, operator: AbstractLinearOperator, scalar: Any):
        _check_operator(operator, "MulLinearOperator")
        self.operator = operator
        self.scalar = check_scalar(scalar, "multiply")
        self.sign = _scalar_sign(self.scalar)

    def mv(self, vector):
        return _tree.tree_scale(self.operator.mv(vector), self.scalar)

    def as_matrix(self):
        return self.operator.as_matrix() * self.scalar

    def transpose(self):
        # `tree_at` keeps the static `sign`: under `jax.jit` a Python scalar leaf is a tracer, and
        # rebuilding with `MulLinearOperator(...)` would forget the sign (and the tags it carries).
        return eqx.tree_at(lambda op: op.operator, self, self.operator.transpose())

    def in_structure(self):
        # Scaling changes the output's dtype, not what the operator accepts (a real
        # `FunctionLinearOperator` times `1j` still takes only real vectors).
        return self.operator.in_structure()

    def out_structure(self):
        return _scaled_structure(self.operator.out_structure(), self.scalar)


class DivLinearOperator(AbstractLinearOperator):
    """`operator / scalar`."""

    operator: AbstractLinearOperator
    scalar: Any
    sign: int | None = eqx.field(static=True)

    def __init__(self, operator: AbstractLinearOperator, scalar: Any):
        _check_operator(operator, "DivLinearOperator")
        self.operator = operator
        self.scalar = check_scalar(scalar, "divide")
        if isinstance(self.scalar, numbers.Number) and self.scalar == 0:
            raise ValueError(
                "Cannot divide an operator by zero; pass a nonzero scalar (`0 * A` is the zero "
                "operator)."
            )
        self.sign = _scalar_sign(self.scalar)

    def mv(self, vector):
        return jax.tree_util.tree_map(lambda x: x / self.scalar, self.operator.mv(vector))

    def as_matrix(self):
        return self.operator.as_matrix() / self.scalar

    def transpose(self):
        # `tree_at` keeps the static `sign` (see `MulLinearOperator.transpose`).
        return eqx.tree_at(lambda op: op.operator, self, self.operator.transpose())

    def in_structure(self):
        # Scaling changes the output's dtype, not what the operator accepts (a real
        # `FunctionLinearOperator` times `1j` still takes only real vectors).
        return self.operator.in_structure()

    def out_structure(self):
        return _scaled_structure(self.operator.out_structure(), self.scalar)


class NegLinearOperator(AbstractLinearOperator):
    """`-operator`."""

    operator: AbstractLinearOperator

    def __check_init__(self):
        _check_operator(self.operator, "NegLinearOperator")

    def mv(self, vector):
        return _tree.tree_neg(self.operator.mv(vector))

    def as_matrix(self):
        return -self.operator.as_matrix()

    def transpose(self):
        return NegLinearOperator(self.operator.transpose())

    def in_structure(self):
        return self.operator.in_structure()

    def out_structure(self):
        return self.operator.out_structure()


class ComposedLinearOperator(AbstractLinearOperator):
    """`operator1 @ operator2`: apply `operator2`, then `operator1`.

    `gram` (static) records that one factor is the adjoint of the other, as in `A.T @ A` or
    `A @ A.T` (real) and `lx.conj(A.T) @ A` (complex): such a product is positive semidefinite, so
    `AutoLinearSolver` takes `Cholesky` (dense) and `CG` accepts it. It is worked out when the
    product is built, from `A.T`/`lx.conj` having been applied to that very operator; pass
    `gram=True` to assert it for factors built otherwise."""

    operator1: AbstractLinearOperator
    operator2: AbstractLinearOperator
    gram: bool = eqx.field(static=True, default=False)

    def __init__(self, operator1, operator2, gram: bool | None = None):
        self.operator1 = operator1
        self.operator2 = operator2
        if gram is None:
            gram = _adjoint_of(operator1, operator2) or _adjoint_of(operator2, operator1)
        self.gram = bool(gram)

    def __check_init__(self):
        a, b = self.operator1, self.operator2
        _check_operator(a, "ComposedLinearOperator")
        _check_operator(b, "ComposedLinearOperator")
        if not _tree.same_shapes(a.in_structure(), b.out_structure()):
            raise ValueError(
                "Cannot compose `A @ B`: A's input is "
                f"{_tree.describe(a.in_structure())} but B's output is "
                f"{_tree.describe(b.out_structure())}; B's output must match A's input."
            )

    def mv(self, vector):
        return self.operator1.mv(self.operator2.mv(vector))

    def as_matrix(self):
        return jnp.matmul(
            self.operator1.as_matrix(),
            self.operator2.as_matrix(),
            precision=jax.lax.Precision.HIGHEST,
        )

    def transpose(self):
        # (Aᴴ A)ᵀ = conj(Aᴴ A): a Gram product stays one.
        return ComposedLinearOperator(
            self.operator2.transpose(), self.operator1.transpose(), gram=self.gram
        )

    def in_structure(self):
        # What `operator2` accepts; `operator1`'s dtype only affects the output.
        return self.operator2.in_structure()

    def out_structure(self):
        dtype = _tree.structure_dtype(self.operator2.out_structure())
        return _promote(self.operator1.out_structure(), dtype)


def _adjoint_of(a: Any, b: Any) -> bool:
    """Whether `a` was made as the adjoint of `b`: `b.T` for a real `b`; `conj(b.T)` or
    `conj(b).T` for a complex one (recorded by `transpose()` and `lx.conj`)."""
    if not isinstance(b, AbstractLinearOperator):
        return False
    real = not (
        _tree.is_complex_structure(b.in_structure()) or _tree.is_complex_structure(b.out_structure())
    )
    # For a real `b` its adjoint is its transpose, however reached (`b.T`, `conj(b).T`).
    return origin(a, "adjoint") is b or (real and origin(a, "transpose") is b)


def _check_operator(operator: Any, name: str) -> None:
    if not isinstance(operator, AbstractLinearOperator):
        raise TypeError(
            f"{name} needs a linopx operator, got {type(operator).__name__}; wrap arrays in "
            "`lx.MatrixLinearOperator`."
        )
