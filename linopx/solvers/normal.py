"""`Normal`: solve through the normal equations with any inner solver."""

from __future__ import annotations

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _tree
from ..linops.base import AbstractLinearOperator
from ..linops.composite import TaggedLinearOperator
from ..linops.functions import conj as conj_operator
from ..linops.functions import linearise
from ..linops.tags import positive_semidefinite_tag, symmetric_tag
from . import _krylov as K
from ._misc import widen_structure
from .base import AbstractLinearSolver
from .cg import CG


def _adjoint(operator: AbstractLinearOperator) -> AbstractLinearOperator:
    return conj_operator(operator.transpose())


def _apply(operator: AbstractLinearOperator, vector: Any) -> Any:
    """`operator.mv(vector)` for a vector whose dtype may differ from the operator's (a float64
    right-hand side for a float32 operator, a complex one for a real operator): computed in their
    common dtype, as the Krylov solvers do, instead of failing under strict dtype promotion."""
    dtype = K.working_dtype(operator, vector)
    xs, ys = K.spaces(operator, dtype, square=False)
    return K.space_mv(operator, xs, ys)(xs.pack(vector))


def _as_solution(x: Any, operator: AbstractLinearOperator, vector: Any) -> Any:
    """`x` in the structure and dtypes a direct solve of `A x = b` returns (`widen_structure`), not
    those of the normal equations' intermediate vectors (e.g. all in the working dtype)."""
    dtype = K.working_dtype(operator, vector)
    structure = widen_structure(operator.in_structure(), operator.out_structure(), dtype)

    def cast(leaf, s):
        keep_complex = jnp.iscomplexobj(leaf) and not jnp.issubdtype(s.dtype, jnp.complexfloating)
        return leaf.astype(_tree.common_dtype(s.dtype, leaf.dtype) if keep_complex else s.dtype)

    return jax.tree_util.tree_map(cast, x, structure)


def _gram(operator: AbstractLinearOperator, tall: bool) -> AbstractLinearOperator:
    """`BᴴB` (tall) or `BBᴴ` (wide) for `B = operator`, tagged positive semidefinite (and
    symmetric when real)."""
    adj = _adjoint(operator)
    gram = adj @ operator if tall else operator @ adj
    complex_ = _tree.is_complex_structure(operator.in_structure()) or _tree.is_complex_structure(
        operator.out_structure()
    )
    tags = (positive_semidefinite_tag,) if complex_ else (positive_semidefinite_tag, symmetric_tag)
    return TaggedLinearOperator(gram, tags)


def _normal_operator(operator: AbstractLinearOperator, tall: bool) -> AbstractLinearOperator:
    """`AᴴA` (tall) or `AAᴴ` (wide)."""
    return _gram(operator, tall)


def _inner_options(options: dict, tall: bool) -> dict:
    """The inner solver's options from Normal's own, which are about `A x = b` (Lineax's
    convention): a preconditioner `M ≈ A⁺` becomes `M Mᴴ ≈ (AᴴA)⁻¹` (tall) or `Mᴴ M ≈ (AAᴴ)⁻¹`
    (wide); an initial guess `x0` stays `x0` (tall) or becomes `Mᴴ x0`, the inner unknown `y` of
    `x = Aᴴ y` (wide; without a preconditioner there is no cheap `y0`, and `y0` only changes the
    iteration count, so it is not used)."""
    out = {k: v for k, v in options.items() if k not in ("preconditioner", "y0")}
    m = options.get("preconditioner")
    m_adj = None
    if m is not None:
        m = linearise(m)
        m_adj = _adjoint(m)
        # M maps A's output space to its input space, so M Mᴴ is the Gram matrix of Mᴴ.
        out["preconditioner"] = _gram(m_adj, tall=True) if tall else _gram(m, tall=True)
    y0 = options.get("y0")
    if y0 is not None:
        if tall:
            out["y0"] = y0
        elif m_adj is not None:
            out["y0"] = _apply(m_adj, y0)
    return out


class _NormalState(eqx.Module):
    inner_state: Any
    operator: AbstractLinearOperator
    tall: bool = eqx.field(static=True)


class Normal(AbstractLinearSolver):
    """Solve the normal equations: `x = (AᴴA)⁻¹ Aᴴ b` for a tall (or square) operator, `x = Aᴴ (AAᴴ)⁻¹ b`
    for a wide one, with `inner_solver` on the (positive semidefinite-tagged) normal operator.

    Squares the condition number, so prefer `QR` for ill-conditioned problems; useful with a
    matrix-free operator and an iterative inner solver (`lx.Normal(lx.CG(...))`), or `lx.Cholesky()`
    for small, well-conditioned least squares.

    **Arguments:**

    - `inner_solver`: any solver for the normal operator, e.g. `lx.Cholesky()`, `lx.LU()`, `lx.CG(...)`.

    **Options** (for an iterative inner solver), about `A x = b` itself, as in Lineax:

    - `"preconditioner"`: an operator `M ≈ A⁺`, mapping `A`'s output structure to its input
      structure. The inner solver gets `M Mᴴ ≈ (AᴴA)⁻¹` (tall) or `Mᴴ M ≈ (AAᴴ)⁻¹` (wide).
    - `"y0"`: an initial guess for `x`. For a wide operator it is passed on as `Mᴴ y0`, and only
      with a preconditioner (it changes how fast the solve converges, not its answer).
    """

    inner_solver: AbstractLinearSolver

    def __check_init__(self):
        if not isinstance(self.inner_solver, AbstractLinearSolver):
            raise TypeError("Normal(inner_solver) needs a linopx solver, e.g. `lx.Normal(lx.Cholesky())`.")

    def init(self, operator, options):
        K.check_options("Normal", operator, options, least_squares=False)
        tall = operator.out_size() >= operator.in_size()
        inner_options = _inner_options(options, tall)
        inner_state = self.inner_solver.init(_normal_operator(operator, tall), inner_options)
        return _NormalState(inner_state, operator, tall)

    def compute(self, state: _NormalState, vector, options):
        adj = _adjoint(state.operator)
        inner_options = _inner_options(options, state.tall)
        if state.tall:
            rhs = _apply(adj, vector)
            x, result, stats = self.inner_solver.compute(state.inner_state, rhs, inner_options)
        else:
            y, result, stats = self.inner_solver.compute(state.inner_state, vector, inner_options)
            x = _apply(adj, y)
        return _as_solution(x, state.operator, vector), result, stats

    def transpose(self, state: _NormalState, options):
        # (AᴴA) for A becomes conj(AᴴA) = (Aᵀ)(Aᵀ)ᴴ for Aᵀ, and vice versa: conjugate the inner
        # state. The options are Normal's own (about A), so they transpose as for any solver:
        # `M ≈ A⁺` becomes `Mᵀ ≈ (Aᵀ)⁺`, whose inner `Mᵀ conj(M)` is then the conjugate of the
        # inner preconditioner `M Mᴴ` (and vice versa), matching the conjugated inner state.
        inner_options = _inner_options(options, state.tall)
        inner_state, _ = self.inner_solver.conj(state.inner_state, inner_options)
        operator = state.operator.transpose()
        options = K.transpose_options(options, operator, least_squares=False)
        return _NormalState(inner_state, operator, not state.tall), options

    def conj(self, state: _NormalState, options):
        inner_options = _inner_options(options, state.tall)
        inner_state, _ = self.inner_solver.conj(state.inner_state, inner_options)
        return (
            _NormalState(inner_state, conj_operator(state.operator), state.tall),
            K.conj_options(options),
        )

    def _inner_allows_singular(self, operator) -> bool:
        tall = operator.out_size() >= operator.in_size()
        normal = _normal_operator(operator, tall)
        return self.inner_solver.allow_dependent_rows(normal) and self.inner_solver.allow_dependent_columns(
            normal
        )

    def allow_dependent_rows(self, operator):
        return operator.out_size() > operator.in_size() or self._inner_allows_singular(operator)

    def allow_dependent_columns(self, operator):
        return operator.out_size() < operator.in_size() or self._inner_allows_singular(operator)


def NormalCG(*args: Any, **kwargs: Any) -> Normal:
    """Lineax's `NormalCG(rtol, atol, ...)`: CG on the normal equations, that is
    `lx.Normal(lx.CG(rtol, atol, ...))`, which it returns (all arguments go to `CG`).

    Kept for code written against Lineax, which deprecates it in favour of `lx.Normal(lx.CG(...))`;
    like Lineax's it emits a `DeprecationWarning` saying so.

    ```python
    solver = lx.NormalCG(rtol=1e-8, atol=1e-8)      # == lx.Normal(lx.CG(rtol=1e-8, atol=1e-8))
    ```
    """
    warnings.warn(
        "`NormalCG(...)` is deprecated (as in Lineax): use `lx.Normal(lx.CG(...))`, which it returns.",
        DeprecationWarning,
        stacklevel=2,
    )
    return Normal(CG(*args, **kwargs))
