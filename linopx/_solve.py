"""`linear_solve` and `invert`: the entry points."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from . import _tree
from ._lru import LRUCache
from ._solution import Solution
from .autodiff._checks import classify, raise_if_failed, run_eagerly
from .autodiff.primitive import bind_solve
from .linops.base import AbstractLinearOperator
from .solvers._damped import is_damped, undamp
from .solvers.auto import AutoLinearSolver
from .solvers.base import AbstractLinearSolver

_KNOWN_OPTIONS = frozenset({"y0", "preconditioner"})


def _stop_gradient(tree: Any) -> Any:
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


def _check_operator(operator: Any) -> None:
    if not isinstance(operator, AbstractLinearOperator):
        kind = type(operator).__name__
        hint = (
            "pass `lx.MatrixLinearOperator(matrix)`, not a raw array"
            if hasattr(operator, "shape")
            else "wrap it in a linopx operator (e.g. `lx.FunctionLinearOperator(fn, structure)`)"
        )
        raise TypeError(f"`operator` must be a linopx operator, got {kind}: {hint}.")


def _prepare_vector(operator: AbstractLinearOperator, vector: Any) -> Any:
    """Check the vector against the operator's output structure and promote its dtypes."""
    out_structure = operator.out_structure()
    leaves, treedef = jax.tree_util.tree_flatten(vector)
    out_leaves, out_treedef = jax.tree_util.tree_flatten(out_structure)
    shapes = [tuple(jnp.shape(x)) for x in leaves]
    if treedef != out_treedef or shapes != [tuple(s.shape) for s in out_leaves]:
        got = _tree.describe(_tree.structure_of(vector)) if leaves else repr(vector)
        raise ValueError(
            "The vector does not match the operator's output structure: expected "
            f"{_tree.describe(out_structure)}, got {got}."
        )
    new = []
    for x, s in zip(leaves, out_leaves):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(_tree.default_float_dtype())
        new.append(x.astype(_tree.common_dtype(x.dtype, s.dtype)))
    return jax.tree_util.tree_unflatten(treedef, new)


def _check_options(options: Any) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}.")
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise ValueError(
            f"Unknown options {sorted(unknown)}; linear_solve understands {sorted(_KNOWN_OPTIONS)}."
        )
    return dict(options)


def linear_solve(
    operator: AbstractLinearOperator,
    vector: PyTree,
    solver: AbstractLinearSolver = AutoLinearSolver(well_posed=None),
    *,
    options: dict[str, Any] | None = None,
    state: Any = None,
    throw: bool = True,
) -> Solution:
    """Solve `A x = b` and return the pseudoinverse solution `x = A⁺ b`.

    For a square nonsingular `A` this is the solution; for a tall full-rank `A` it is the least-squares
    solution; for a wide one the minimum-norm solution; in general (with a solver that allows it, such
    as `lx.SVD()` or `lx.AutoLinearSolver(well_posed=False)`) the minimum-norm least-squares solution.

    Works under `jax.jit`, `jax.vmap`, `jax.grad`, `jax.jvp`, `jax.jacfwd`/`jacrev` and their
    compositions. Derivatives reuse the state (factorization) of the forward solve.

    **Arguments:**

    - `operator`: a linopx operator `A` (wrap arrays in `lx.MatrixLinearOperator`).
    - `vector`: `b`, with the structure of `operator.out_structure()`.
    - `solver`: how to solve; by default chosen from the operator's tags and shape.
    - `options`: a dict with `"y0"` (initial guess) and/or `"preconditioner"` (an operator) for
      iterative solvers. Options get zero derivatives.
    - `state`: the output of `solver.init(operator, options)` computed earlier, to reuse a
      factorization across solves (it must come from the same operator values).
    - `throw`: if `True` (the default), raise at run time when the solve fails (singular matrix,
      non-convergence, NaN input). If `False`, return the `Solution` with its `result` set, and let the
      caller check `sol.result == lx.RESULTS.successful`; derivative solves then don't raise either.

    **Returns:** a `lx.Solution` with `value`, `result`, `stats` and `state`.

    ```python
    A = lx.MatrixLinearOperator(jnp.array([[3.0, 1.0], [1.0, 2.0]]))
    x = lx.linear_solve(A, jnp.array([9.0, 8.0])).value     # [2., 3.]
    ```
    """
    _check_operator(operator)
    if not isinstance(solver, AbstractLinearSolver):
        raise TypeError(
            f"`solver` must be a linopx solver such as `lx.LU()`, got {type(solver).__name__}."
        )
    args = (operator, vector, solver, options, state, throw)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    if not any(isinstance(x, jax.core.Tracer) for x in leaves):
        # Called outside any transformation: compile the whole solve once per signature (as
        # `jax.numpy` functions do), rather than dispatching its operations one by one.
        return _eager_linear_solve(leaves, treedef, throw)
    return _linear_solve(*args)


_EAGER_SOLVES = LRUCache(256)


def _eager_linear_solve(leaves: list, treedef: Any, throw: bool) -> Solution:
    """`_linear_solve` compiled once per signature: the tree structure, the non-array leaves
    (functions, tags, Python numbers) and the arrays' shapes and dtypes are the key, the arrays the
    arguments. A plain `jax.jit` keyed here dispatches in about half the time of
    `equinox.filter_jit`, which is the fallback for signatures that cannot be hashed. The
    non-array parts of the `Solution` (e.g. functions inside `state`) are kept per key."""
    dynamic = tuple(i for i, x in enumerate(leaves) if eqx.is_array(x))
    dynamic_set = set(dynamic)
    static = tuple(None if i in dynamic_set else x for i, x in enumerate(leaves))
    arrays = [leaves[i] for i in dynamic]
    avals = tuple((x.shape, x.dtype, getattr(x, "weak_type", False)) for x in arrays)
    key = (treedef, dynamic, static, avals)
    try:
        hash(key)
    except TypeError:  # an unhashable leaf
        args = jax.tree_util.tree_unflatten(treedef, leaves)
        return run_eagerly(_linear_solve_jit, *args) if throw else _linear_solve_jit(*args)

    def compile_solve():
        out_static: list = []

        def run(*arrays):
            full = list(static)
            for i, x in zip(dynamic, arrays):
                full[i] = x
            out_leaves, out_treedef = jax.tree_util.tree_flatten(
                _linear_solve(*jax.tree_util.tree_unflatten(treedef, full))
            )
            keep = [None if eqx.is_array(x) else x for x in out_leaves]
            out_static[:] = [out_treedef, keep]
            return [x for x in out_leaves if eqx.is_array(x)]

        return jax.jit(run), out_static

    fn, out_static = _EAGER_SOLVES.get(key, compile_solve)
    out_arrays = iter(run_eagerly(fn, *arrays) if throw else fn(*arrays))
    out_treedef, keep = out_static
    out_leaves = [next(out_arrays) if x is None else x for x in keep]
    return jax.tree_util.tree_unflatten(out_treedef, out_leaves)


def _linear_solve(operator, vector, solver, options, state, throw) -> Solution:
    vector = _prepare_vector(operator, vector)
    if is_damped(solver):
        # Damped LSQR/LSMR minimise |Ax - b|² + damp²|x|², whose solution is not A⁺b. Solve the
        # equivalent undamped least-squares problem for [A; damp I] and (b, 0) instead, so that the
        # pseudoinverse derivative rules are exact (see `solvers/_damped.py`). A `state` built for
        # the unstacked operator does not fit; iterative solvers' `init` is cheap, so rebuild it.
        operator, vector, solver = undamp(operator, vector, solver)
        state = None
    options = _stop_gradient(_check_options(options))
    if state is None:
        state = solver.init(_stop_gradient(operator), options)
    else:
        state = _stop_gradient(state)
    value, result, solver_result, stats = bind_solve(
        operator, state, vector, options, solver, throw, check=False
    )
    operator_leaves = jax.tree_util.tree_leaves(eqx.filter(operator, eqx.is_array))
    vector_leaves = jax.tree_util.tree_leaves(vector)
    if throw:
        # Raises (on the host, with the diagnosis) if the solve failed; a returned solve succeeded.
        value = raise_if_failed(value, result, solver_result, operator_leaves, vector_leaves)
    else:
        # Compiled in, and dropped again by XLA if the caller never reads `result`.
        result = classify(result, solver_result, operator_leaves, vector_leaves)
    return Solution(value=value, result=result, stats=stats, state=state)


_linear_solve_jit = eqx.filter_jit(_linear_solve)


class _InverseLinearOperator(AbstractLinearOperator):
    """`A⁺` as an operator; see `invert`."""

    operator: AbstractLinearOperator
    solver: AbstractLinearSolver
    state: Any
    options: dict

    def mv(self, vector):
        return linear_solve(
            self.operator, vector, self.solver, options=self.options, state=self.state
        ).value

    def as_matrix(self):
        from .linops.function import matrix_from_mv

        return matrix_from_mv(self.mv, self.in_structure(), self.out_structure())

    def transpose(self):
        state, options = self.solver.transpose(self.state, self.options)
        return _InverseLinearOperator(self.operator.transpose(), self.solver, state, options)

    def in_structure(self):
        return self.operator.out_structure()

    def out_structure(self):
        return self.operator.in_structure()


def invert(
    operator: AbstractLinearOperator,
    solver: AbstractLinearSolver = AutoLinearSolver(well_posed=None),
    *,
    options: dict[str, Any] | None = None,
) -> AbstractLinearOperator:
    """Return a linear operator that applies `A⁺`, factorizing `A` once, here.

    Each `mv` of the result is a `linear_solve` that reuses the factorization, and is differentiable.

    ```python
    Ainv = lx.invert(lx.MatrixLinearOperator(a))
    x1, x2 = Ainv.mv(b1), Ainv.mv(b2)     # one factorization, two solves
    ```
    """
    _check_operator(operator)
    options = _check_options(options)
    state = solver.init(_stop_gradient(operator), _stop_gradient(options))
    return _InverseLinearOperator(operator, solver, state, options)


def _register_inverse() -> None:
    """Teach the operator functions about `_InverseLinearOperator`: the inverse of a symmetric,
    definite, diagonal or triangular operator has the same property."""
    from .linops import functions as F

    for pred in (
        F.is_symmetric,
        F.is_diagonal,
        F.is_lower_triangular,
        F.is_upper_triangular,
        F.is_positive_semidefinite,
        F.is_negative_semidefinite,
    ):
        pred.register(_InverseLinearOperator)(lambda op, p=pred: p(op.operator))
    F.is_tridiagonal.register(_InverseLinearOperator)(lambda op: F.is_diagonal(op.operator))
    F.has_unit_diagonal.register(_InverseLinearOperator)(
        lambda op: (
            F.has_unit_diagonal(op.operator)
            and (F.is_lower_triangular(op.operator) or F.is_upper_triangular(op.operator))
        )
    )
    F.materialise.register(_InverseLinearOperator)(lambda op: op)
    F.linearise.register(_InverseLinearOperator)(lambda op: op)
    F.diagonal.register(_InverseLinearOperator)(F._probe_diagonal)
    F.tridiagonal.register(_InverseLinearOperator)(
        lambda op: F._tridiagonal_from_matrix(op.as_matrix())
    )

    @F.conj.register(_InverseLinearOperator)
    def _(op):
        state, options = op.solver.conj(op.state, op.options)
        return _InverseLinearOperator(F.conj(op.operator), op.solver, state, options)


_register_inverse()
