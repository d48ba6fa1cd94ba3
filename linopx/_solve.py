"""`linear_solve` and `invert`: the entry points."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _tree
from ._lru import LRUCache
from ._solution import RESULTS, Solution
from .autodiff._checks import classify, raise_if_failed, run_eagerly
from .autodiff.primitive import bind_solve
from .linops.base import AbstractLinearOperator
from .solvers._misc import widen_structure
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
    for x in leaves:
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
            raise TypeError(
                "The vector must be a pytree of numeric arrays with the operator's output "
                f"structure {_tree.describe(out_structure)}; it holds {type(x).__name__} {x!r:.40}."
            )
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


def _check_options(
    options: Any, known: frozenset = _KNOWN_OPTIONS, who: str = "linear_solve"
) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}.")
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"Unknown options {sorted(unknown)}; {who} understands {sorted(known)}.")
    return dict(options)


# The dtypes linopx solves in (API.md); LAPACK has no half-precision factorizations.
_SOLVE_DTYPES = frozenset(map(jnp.dtype, ("float32", "float64", "complex64", "complex128")))


def _check_solver(solver: Any) -> None:
    if not isinstance(solver, AbstractLinearSolver):
        raise TypeError(
            f"`solver` must be a linopx solver such as `lx.LU()`, got {type(solver).__name__}."
        )


def _check_dtypes(operator: AbstractLinearOperator) -> None:
    """Reject operators in a dtype no solver handles (float16, bfloat16), naming the cast."""
    for side, structure in (
        ("input", operator.in_structure()),
        ("output", operator.out_structure()),
    ):
        for leaf in jax.tree_util.tree_leaves(structure):
            if jnp.dtype(leaf.dtype) not in _SOLVE_DTYPES:
                raise TypeError(
                    f"linopx solves in float32, float64, complex64 or complex128, but the "
                    f"operator's {side} is {_tree.describe(structure)}. Cast the operator's "
                    "arrays (e.g. `matrix.astype(jnp.float32)`) or its structure to one of those."
                )


def _is_inexact(x: Any) -> bool:
    """A floating or complex array, or a Python float or complex (e.g. the `x` of `A * x`)."""
    return eqx.is_inexact_array(x) or (isinstance(x, (float, complex)) and not isinstance(x, bool))


def _is_empty(operator: AbstractLinearOperator) -> bool:
    return operator.in_size() == 0 or operator.out_size() == 0


def _empty_solve(operator, vector, solver, options) -> Solution:
    """`A⁺ b` for an operator with no rows or no columns: the zero vector of its input structure
    (nothing to solve, or nothing to solve for). No factorization is run: LAPACK does not survive
    every empty input (`ormqr` on a 3 x 0 matrix raises SIGFPE). The solver still checks at trace
    time that it accepts the operator (square, tags), abstractly."""
    eqx.filter_eval_shape(solver.init, operator, options)
    # The dtypes a nonempty solve would give (`widen_structure`).
    vdtype = _tree.structure_dtype(_tree.structure_of(vector))
    structure = widen_structure(operator.in_structure(), operator.out_structure(), vdtype)
    value = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    return Solution(value=value, result=RESULTS.successful, stats={}, state=None)


def _check_state(solver, operator, options, state) -> None:
    """A `state` passed in must be what `solver.init` makes (a state of another solver fails
    inside `compute` with an attribute error otherwise)."""
    expected = eqx.filter_eval_shape(solver.init, operator, options)
    if type(state) is not type(expected):
        raise ValueError(
            f"`state` is a {type(state).__name__}, but {type(solver).__name__}.init makes a "
            f"{type(expected).__name__}: pass the state of `solver.init(operator, options)` for "
            "this solver and operator (or `state=None`)."
        )


def _check_value(operator, vector, value) -> None:
    """The solution must have the operator's input structure (and be real for a real problem); a
    mismatch means a `state` made for another operator (or a solver that does not keep to the
    interface)."""
    expected = operator.in_structure()
    real_problem = not (
        _tree.is_complex_structure(expected)
        or _tree.is_complex_structure(operator.out_structure())
        or _tree.is_complex_structure(_tree.structure_of(vector))
    )
    if not _tree.same_shapes(_tree.structure_of(value), expected) or (
        real_problem and _tree.is_complex_structure(_tree.structure_of(value))
    ):
        raise ValueError(
            f"The solver returned {_tree.describe(_tree.structure_of(value))}, but the operator's "
            f"input is {_tree.describe(expected)}. If you passed `state`, it was made for another "
            "operator: pass the state of `solver.init(operator, options)` for this operator."
        )


def _reformulate(solver, operator, vector, options) -> tuple:
    """Call `solver.reformulate` and check what it returns."""
    out = solver.reformulate(operator, vector, options)
    if not (isinstance(out, tuple) and len(out) == 4):
        raise TypeError(
            f"{type(solver).__name__}.reformulate must return a tuple `(operator, vector, solver, "
            f"rebuild_state)`, got {type(out).__name__}."
        )
    operator, vector, new_solver, rebuild_state = out
    _check_operator(operator)
    _check_solver(new_solver)
    if not isinstance(rebuild_state, (bool, np.bool_)):
        raise TypeError(
            f"{type(solver).__name__}.reformulate must return `rebuild_state` as True or False, "
            f"got {rebuild_state!r}."
        )
    return operator, vector, new_solver, bool(rebuild_state)


def linear_solve(
    operator: AbstractLinearOperator,
    vector: PyTree,
    solver: AbstractLinearSolver = AutoLinearSolver(well_posed=None),  # noqa: B008
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

    The operator must be in float32, float64, complex64 or complex128 (float16 and bfloat16 raise
    a `TypeError` naming the cast); an integer or boolean `vector` is cast to JAX's default float
    dtype. An operator with no rows or no columns gives `A⁺ b = 0` (nothing is factorized; `stats`
    is empty and `state` is None).

    ```python
    A = lx.MatrixLinearOperator(jnp.array([[3.0, 1.0], [1.0, 2.0]]))
    x = lx.linear_solve(A, jnp.array([9.0, 8.0])).value     # [2., 3.]
    ```
    """
    _check_operator(operator)
    _check_solver(solver)
    if not isinstance(throw, (bool, np.bool_)):
        raise TypeError(f"`throw` must be True or False, got {throw!r}.")
    throw = bool(throw)
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
    # The arrays' whole types: shape, dtype, weak type, and on `Explicit` mesh axes the sharding.
    avals = tuple(jax.typeof(x) for x in arrays)
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
    _check_dtypes(operator)
    if _is_empty(operator):
        return _empty_solve(operator, vector, solver, _check_options(options))
    options = _stop_gradient(_check_options(options))
    # The solver may solve an equivalent problem whose pseudoinverse solution is what it computes,
    # so that the derivative rules of the primitive are exact for it (see
    # `AbstractLinearSolver.reformulate`). If a `state` made for the original operator does not
    # fit the new problem, the solver says so and the state is rebuilt.
    operator, vector, solver, rebuild_state = _reformulate(solver, operator, vector, options)
    if rebuild_state:
        state = None
    if state is None:
        state = solver.init(_stop_gradient(operator), options)
    else:
        _check_state(solver, operator, options, state)
        state = _stop_gradient(state)
    value, result, solver_result, stats = bind_solve(
        operator, state, vector, options, solver, throw
    )
    _check_value(operator, vector, value)
    # What a failed solve is blamed on: the operator's values (Python float scalars of `A * x`
    # included) and the options' (a NaN `y0` or preconditioner is a non-finite input too).
    operator_leaves = jax.tree_util.tree_leaves(eqx.filter((operator, options), _is_inexact))
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
        if self.state is None:  # an empty operator: nothing was factorized
            return _InverseLinearOperator(
                self.operator.transpose(), self.solver, None, self.options
            )
        state, options = self.solver.transpose(self.state, self.options)
        return _InverseLinearOperator(self.operator.transpose(), self.solver, state, options)

    def in_structure(self):
        return self.operator.out_structure()

    def out_structure(self):
        return self.operator.in_structure()


def invert(
    operator: AbstractLinearOperator,
    solver: AbstractLinearSolver = AutoLinearSolver(well_posed=None),  # noqa: B008
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
    _check_solver(solver)
    _check_dtypes(operator)
    options = _check_options(options)
    if _is_empty(operator):
        # Nothing to factorize (see `_empty_solve`); each `mv` returns zeros.
        eqx.filter_eval_shape(solver.init, operator, options)
        return _InverseLinearOperator(operator, solver, None, options)
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
        if op.state is None:  # an empty operator: nothing was factorized
            return _InverseLinearOperator(F.conj(op.operator), op.solver, None, op.options)
        state, options = op.solver.conj(op.state, op.options)
        return _InverseLinearOperator(F.conj(op.operator), op.solver, state, options)


_register_inverse()
