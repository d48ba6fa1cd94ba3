"""The solver interface: `AbstractLinearSolver`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeAlias

import equinox as eqx
import numpy as np
from jaxtyping import PyTree

from ..linops.base import AbstractLinearOperator

State: TypeAlias = Any
Options: TypeAlias = dict[str, Any]


class AbstractLinearSolver(eqx.Module):
    """A way of solving `A x = b`.

    Implement the six methods below and `lx.linear_solve` gives you `jit`, `vmap`, and forward- and
    reverse-mode derivatives with no derivative code of your own: derivatives are solves with the
    same (transposed, conjugated) state.

    - `init` does the expensive, right-hand-side-independent work once (e.g. a factorization).
    - `compute` applies the solve to one right-hand side.
    - `transpose` / `conj` turn a state for `A` into a state for `Aᵀ` / `conj(A)` cheaply (never by
      refactorizing).
    - `allow_dependent_rows` / `allow_dependent_columns` say whether the solver returns the
      pseudoinverse solution when `A` has linearly dependent rows / columns. They select which terms
      of the pseudoinverse derivative are needed, so they must be truthful.

    Optional: `reformulate` (solve an equivalent problem instead; see its docstring).
    """

    # Set by built-in solvers whose `compute` already reports a non-finite solution in its result,
    # so that the solve does not add a second finiteness check (each costs compile time).
    _verdict_checks_solution: ClassVar[bool] = False

    @abc.abstractmethod
    def init(self, operator: AbstractLinearOperator, options: Options) -> State:
        """Return the state for solving with `operator` (any pytree; arrays in it are leaves)."""

    @abc.abstractmethod
    def compute(self, state: State, vector: PyTree, options: Options) -> tuple[PyTree, Any, dict]:
        """Return `(value, result, stats)`: the solution with the operator's input structure, a
        `lx.RESULTS` value, and a dict of statistics (may be empty)."""

    @abc.abstractmethod
    def transpose(self, state: State, options: Options) -> tuple[State, Options]:
        """Return `(state, options)` for solving with the plain transpose `Aᵀ` (no conjugation)."""

    @abc.abstractmethod
    def conj(self, state: State, options: Options) -> tuple[State, Options]:
        """Return `(state, options)` for solving with the elementwise conjugate `conj(A)`."""

    @abc.abstractmethod
    def allow_dependent_rows(self, operator: AbstractLinearOperator) -> bool:
        """Return whether the solver gives the pseudoinverse solution when `A`'s rows are dependent."""

    @abc.abstractmethod
    def allow_dependent_columns(self, operator: AbstractLinearOperator) -> bool:
        """Return whether the solver gives the pseudoinverse solution when `A`'s columns are dependent."""

    # -----------------------------------------------------------------------------------------
    # Optional: log-determinants (`lx.slogdet`)

    def logdet(self, state: State, options: Options) -> tuple[Any, Any]:
        """Optional. Return `(sign, logabsdet)` of the (square) operator that `state` was made
        from, read off the factorization in `state`, as `jnp.linalg.slogdet` gives them: `sign` in
        the operator's dtype (`±1`, or a unit-modulus phase for complex; `0` for a singular
        matrix, with `logabsdet = -inf`), `logabsdet` real. Runs under `jit` and `vmap`.

        A solver that implements this gets `lx.slogdet` with `jit`, `vmap` and derivatives: the
        derivative comes from `logdet_tangent`, whose default reuses `compute`."""
        raise NotImplementedError

    def logdet_tangent(
        self,
        state: State,
        operator: AbstractLinearOperator,
        tangent: Any,
        options: Options,
    ) -> Any:
        """Optional. Return `tr(A⁻¹ A')`, the derivative of `log det A` in the direction `A'`.

        `tangent(fn)` returns the JVP of `fn(operator)` in the direction `A'` (for example
        `tangent(lambda op: op.as_matrix())` is the matrix of `A'`). The result must be linear in
        what `tangent` returns, so that reverse mode can transpose it; what it multiplies should
        depend on `operator` differentiably (not only on `state`, which carries no derivative),
        so that second derivatives are right.

        The default forms `A⁻¹` by solving with the identity's columns through `lx.linear_solve`'s
        primitive (reusing `state`: one batched solve, no refactorization; differentiable, so
        higher derivatives come out right) and pairs it with the matrix of `A'`: `O(n³)` time and
        `O(n²)` memory, right for dense operators. Structured and sparse solvers override it."""
        from ._logdet import inverse_transpose, pair

        return pair(
            inverse_transpose(self, state, operator, options),
            tangent(lambda op: op.as_matrix()),
        )

    # -----------------------------------------------------------------------------------------
    # Optional: reformulating the problem (`lx.linear_solve`)

    def reformulate(
        self, operator: AbstractLinearOperator, vector: PyTree, options: Options
    ) -> tuple[AbstractLinearOperator, PyTree, AbstractLinearSolver, bool]:
        """Optional. Return `(operator, vector, solver, rebuild_state)`: the problem that
        `lx.linear_solve` solves in place of `A x = b` with this solver. The default returns
        `(operator, vector, self, False)`: nothing changes.

        Use it when what the solver computes is not `A⁺ b` but is the pseudoinverse solution of
        an equivalent problem, so that the solve primitive's derivative rules (which assume
        `x = A⁺ b`) hold for the problem actually solved. `LSQR` and `LSMR` with `damp = d`
        return the stacked operator `[A; d I]`, the vector `(b, 0)` and themselves with
        `damp = 0`.

        **When it is called:** by `lx.linear_solve`, once per call, while tracing: after the
        operator, vector and options are checked, before `init` is called (or a passed `state` is
        checked); not for an operator with no rows or no columns. `lx.invert` does not call it
        itself: it calls `self.init` on the original operator (which must therefore accept it),
        and each of its `mv`s is an `lx.linear_solve` with that state, which calls it.
        `lx.slogdet` never calls it. The returned solver's own `reformulate` is not called.

        **What it may change:** the operator, the vector and the solver. `options` (already
        checked, with gradients stopped) are passed unchanged to the new problem, so the returned
        operator must keep the input structure of `operator`: its pseudoinverse solution is
        returned as the solution, and `init`, `compute` and the derivative rules see only the
        reformulated problem. Derivatives flow through this method to the operator, the vector
        and the solver's array fields, so write it in JAX operations and decide what to do from
        static information (types, shapes, tags, Python numbers), not from traced values.

        `rebuild_state=True` says that a `state` made by `self.init` for the original operator
        does not fit the new problem: a `state` the caller passed is then discarded and the
        returned solver's `init` builds one for the returned operator. With `False`, a passed
        `state` is used (and checked) with the returned solver and operator."""
        return operator, vector, self, False

    def assume_full_rank(self, operator: AbstractLinearOperator | None = None) -> bool:
        """Whether the solver assumes full rank (rank `min(m, n)`): Lineax's name for what
        `allow_dependent_rows`/`allow_dependent_columns` say, derived from them (not to override).

        A solver assumes full rank for an `m x n` operator when it allows no dependence beyond what
        the shape forces: not dependent rows if `m <= n`, not dependent columns if `n <= m` (the
        rows of a tall matrix are always dependent, so `QR` on one still assumes full rank). With
        no `operator`, as Lineax's `assume_full_rank()` is called, the answer is for a square one:
        `True` iff neither dependent rows nor dependent columns are allowed.

        ```python
        lx.LU().assume_full_rank()       # True
        lx.SVD().assume_full_rank()      # False
        ```
        """
        if operator is None:
            operator = _square_probe()
        m, n = operator.out_size(), operator.in_size()
        rows = m <= n and self.allow_dependent_rows(operator)
        columns = n <= m and self.allow_dependent_columns(operator)
        return not (rows or columns)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A solver written against Lineax >= 0.1 implements `assume_full_rank()` instead of the
        # two `allow_dependent_*` methods. Derive those from it, so that such a solver works
        # unchanged: assuming full rank, only the dependence the shape forces is allowed (the
        # rows of a tall operator, the columns of a wide one); otherwise any.
        if "assume_full_rank" not in cls.__dict__:
            return
        for name, shape_forces in (
            ("allow_dependent_rows", lambda m, n: m > n),
            ("allow_dependent_columns", lambda m, n: n > m),
        ):
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False):

                def derived(self, operator, _forced=shape_forces):
                    if not self.assume_full_rank():
                        return True
                    return _forced(operator.out_size(), operator.in_size())

                derived.__name__ = derived.__qualname__ = name
                setattr(cls, name, derived)


def _square_probe() -> AbstractLinearOperator:
    """A 2 x 2 untagged dense operator: what `assume_full_rank()` asks the solver about when no
    operator is given (solvers decide from tags and shapes, never from values)."""
    from ..linops.matrix import MatrixLinearOperator

    return MatrixLinearOperator(np.zeros((2, 2)))
