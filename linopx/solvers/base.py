"""The solver interface: `AbstractLinearSolver`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeAlias

import equinox as eqx
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
