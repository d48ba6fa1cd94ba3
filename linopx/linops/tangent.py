"""`TangentLinearOperator`: the derivative `A'` of an operator along a tangent direction."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import AbstractLinearOperator
from .functions import (
    conj,
    diagonal,
    has_unit_diagonal,
    is_diagonal,
    is_lower_triangular,
    is_negative_semidefinite,
    is_positive_semidefinite,
    is_symmetric,
    is_tridiagonal,
    is_upper_triangular,
    linearise,
    materialise,
    tridiagonal,
)


def _is_none(x: Any) -> bool:
    return x is None


def _fill_zeros(primal_out: Any, tangent_out: Any) -> Any:
    """`tangent_out` with its symbolic zeros (`None`: parts that do not depend on the operator's
    differentiated leaves) replaced by zeros shaped like `primal_out`."""
    return jax.tree_util.tree_map(
        lambda p, t: jnp.zeros(jnp.shape(p), jnp.result_type(p)) if t is None else t,
        primal_out,
        tangent_out,
        is_leaf=_is_none,
    )


def _jvp(fn, operator: TangentLinearOperator):
    return eqx.filter_jvp(fn, (operator.primal,), (operator.tangent,))


class TangentLinearOperator(AbstractLinearOperator):
    """The tangent `A'` of an operator `A(θ)` in the direction `θ'`: `A'.mv(v) = d/dε A(θ + ε θ').mv(v)`.

    `primal` is the operator and `tangent` its tangent as a pytree of the same type (what
    `equinox.filter_jvp` gives for a function returning an operator; leaves that carry no tangent
    are `None`). `mv`, `as_matrix` and `transpose` are JVPs of the primal's; `in_structure` and
    `out_structure` are the primal's. linopx's own solve derivative applies `A'` this way; the class
    exists for code written against Lineax, which exports it.

    **Arguments:**

    - `primal`: the operator `A`.
    - `tangent`: the tangent of `A`, a pytree of the same type as `primal`.

    ```python
    op, t_op = eqx.filter_jvp(lambda m: lx.MatrixLinearOperator(m), (a,), (da,))
    lx.TangentLinearOperator(op, t_op).as_matrix()     # == da
    ```
    """

    primal: AbstractLinearOperator
    tangent: Any

    def __check_init__(self):
        if not isinstance(self.primal, AbstractLinearOperator):
            raise TypeError(
                "TangentLinearOperator: `primal` must be a linopx operator, got "
                f"{type(self.primal).__name__}."
            )
        if type(self.tangent) is not type(self.primal):
            raise TypeError(
                "TangentLinearOperator: `tangent` must be a tangent of `primal`, a pytree of the "
                f"same type ({type(self.primal).__name__}), as `equinox.filter_jvp` returns; got "
                f"{type(self.tangent).__name__}."
            )

    def mv(self, vector):
        out, t_out = _jvp(lambda op: op.mv(vector), self)
        return _fill_zeros(out, t_out)

    def as_matrix(self):
        out, t_out = _jvp(lambda op: op.as_matrix(), self)
        return _fill_zeros(out, t_out)

    def transpose(self):
        return TangentLinearOperator(*_jvp(lambda op: op.transpose(), self))

    def in_structure(self):
        return self.primal.in_structure()

    def out_structure(self):
        return self.primal.out_structure()


# Structural properties (a pattern of zeros, symmetry) hold for every member of a family
# `A(θ)` that has them, so also for its tangent. Value properties do not: the tangent of a
# positive definite or unit-diagonal operator is in general neither.
for _pred in (is_symmetric, is_diagonal, is_tridiagonal, is_lower_triangular, is_upper_triangular):
    _pred.register(TangentLinearOperator)(lambda op, p=_pred: p(op.primal))

for _pred in (is_positive_semidefinite, is_negative_semidefinite, has_unit_diagonal):
    _pred.register(TangentLinearOperator)(lambda op: False)


@materialise.register(TangentLinearOperator)
def _(op):
    return TangentLinearOperator(*_jvp(materialise, op))


@linearise.register(TangentLinearOperator)
def _(op):
    return TangentLinearOperator(*_jvp(linearise, op))


@conj.register(TangentLinearOperator)
def _(op):
    # Conjugation is real-linear, so d conj(A) = conj(dA).
    return TangentLinearOperator(*_jvp(conj, op))


@diagonal.register(TangentLinearOperator)
def _(op):
    out, t_out = _jvp(diagonal, op)
    return _fill_zeros(out, t_out)


@tridiagonal.register(TangentLinearOperator)
def _(op):
    out, t_out = _jvp(tridiagonal, op)
    return _fill_zeros(out, t_out)
