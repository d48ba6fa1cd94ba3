"""Machinery shared by the iterative (Krylov) solvers.

Every iterative solver works on flat 1-D vectors: the right-hand side, the initial guess and the
operator's action are raveled once per call (for a single-leaf structure that is a free reshape), so
that the loop bodies are plain array code with a minimal carry. Only `operator.mv` and
`operator.transpose().mv` are ever used, never `as_matrix`.

All solvers but CG share a two-level loop (CG keeps one loop and checks the true residual once
after it; see its docstring):

- an inner `lax.while_loop` runs the method's recurrences until their *estimate* of the residual
  meets the tolerance (or `max_steps` is spent, or the method breaks down);
- an outer `lax.while_loop` then computes the *true* residual `b - A x` (one extra product) and, if
  rounding has made the recurrence drift so that the true residual still misses the tolerance,
  restarts the method from the current `x`. It stops with `stagnation` when a round fails to reduce
  the true residual at all. So a solve is reported successful only if its true residual meets the
  tolerance. Usually the outer loop runs once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .. import _tree
from .._compat import varying_axes
from .._solution import RESULTS
from ..linops.base import AbstractLinearOperator
from ..linops.functions import conj as conj_operator
from ..linops.sparse import in_solver_loop
from ._misc import check_real_scalar, widen_structure

# ---------------------------------------------------------------------------------------------
# Field checks



def while_loop(cond, body, init):
    """`lax.while_loop`, with the initial carry marked as varying over the manual mesh axes
    (inside `shard_map`) that the body makes it vary over: a carry that starts as a constant (a
    zero, an identity matrix) and is updated from a per-shard vector would otherwise change type
    between iterations, which `check_vma` rejects. Outside `shard_map` it is `lax.while_loop`."""
    body = _in_solver_loop(body)
    if not jax.sharding.get_abstract_mesh().manual_axes:
        return lax.while_loop(cond, body, init)
    for _ in range(2):  # a second pass for carries that vary only through other carries
        out = jax.eval_shape(body, init)
        init = jax.tree_util.tree_map(_vary_as, init, out)
    return lax.while_loop(cond, body, init)


def _in_solver_loop(body):
    """`body`, traced with sparse products marked as repeated with fixed values (see
    `linopx.linops.sparse.in_solver_loop`)."""

    def wrapped(carry):
        with in_solver_loop():
            return body(carry)

    return wrapped


def _vary_as(x, like):
    missing = varying_axes(like) - varying_axes(x)
    if not missing:
        return x
    return jax.lax.pcast(x, tuple(sorted(missing)), to="varying")


def _is_concrete_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) or (
        isinstance(x, (jax.Array,)) and not isinstance(x, jax.core.Tracer) and x.ndim == 0
    )


# Loop counters are int32: a larger `max_steps` could never be reached (and would not fit).
MAX_STEPS_CAP = 2**31 - 1


def check_tolerances(name: str, rtol: Any, atol: Any, max_steps: Any) -> None:
    """Raise a `ValueError` saying what to pass instead, for invalid common fields.

    Tolerances must be finite and non-negative (0 switches that test off; both 0 means a fixed
    number of iterations, `fixed_iterations`, so it must come with an explicit `max_steps`, as in
    Lineax). `max_steps` must be a positive int or None: `0` and
    negative values raise rather than returning an unsolved `y0` (SciPy's `maxiter=0` reports
    success without iterating); values above `2**31 - 1` are treated as `2**31 - 1`."""
    example = f"{name}(rtol=1e-8, atol=1e-8)"
    for field, value in (("rtol", rtol), ("atol", atol)):
        check_real_scalar(name, field, value, example)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral):
            raise ValueError(
                f"{name}: `max_steps` must be a positive Python int or None (for the default), "
                f"got {max_steps!r}."
            )
        if max_steps < 1:
            raise ValueError(
                f"{name}: `max_steps` must be at least 1, got {max_steps}. Pass None for the "
                "default, or a positive number of iterations."
            )
    elif (
        _is_concrete_number(rtol) and _is_concrete_number(atol) and float(rtol) == float(atol) == 0
    ):
        raise ValueError(
            f"{name}: `rtol` and `atol` are both 0, a tolerance no solve can meet short of an "
            f"exact zero residual. Pass a positive tolerance, e.g. `{example}`, or an explicit "
            "`max_steps` to run exactly that many iterations."
        )


# ---------------------------------------------------------------------------------------------
# State and options


class KrylovState(eqx.Module):
    """What an iterative solver keeps between `init` and `compute`: just the operator (there is
    nothing to factorize). `negate` marks a negative semidefinite operator that `CG` solves as
    `(-A) x = -b`."""

    operator: AbstractLinearOperator
    negate: bool = eqx.field(static=True, default=False)


def _fits(a: Any, b: Any) -> bool:
    """Whether structure `a` has the same tree and leaf shapes as structure `b`."""
    return _tree.same_shapes(a, b)


def transpose_options(
    options: dict, transposed: AbstractLinearOperator, least_squares: bool
) -> dict:
    """Options for solving with `transposed` (= `Aᵀ`): the preconditioner becomes `Mᵀ` and `y0` is
    kept, each only if its structure fits the transposed problem (else it is dropped)."""
    out = dict(options)
    m = options.get("preconditioner")
    if m is not None:
        mt = m.transpose()
        if _preconditioner_fits(mt, transposed, least_squares):
            out["preconditioner"] = mt
        else:
            del out["preconditioner"]
    y0 = options.get("y0")
    if y0 is not None:
        if _fits(_tree.structure_of(y0), transposed.in_structure()):
            out["y0"] = y0
        else:
            del out["y0"]
    return out


def conj_options(options: dict) -> dict:
    """Options for solving with `conj(A)`: conjugate the preconditioner and `y0`."""
    out = dict(options)
    if options.get("preconditioner") is not None:
        out["preconditioner"] = conj_operator(options["preconditioner"])
    if options.get("y0") is not None:
        out["y0"] = _tree.tree_conj(options["y0"])
    return out


def transposed(state: KrylovState, options: dict, least_squares: bool) -> tuple[KrylovState, dict]:
    """`solver.transpose` for every Krylov solver: the transposed operator, with the options
    transposed to fit it (`least_squares` for the right preconditioners of LSQR/LSMR)."""
    operator = state.operator.transpose()
    return KrylovState(operator, state.negate), transpose_options(options, operator, least_squares)


def conjugated(state: KrylovState, options: dict) -> tuple[KrylovState, dict]:
    """`solver.conj` for every Krylov solver: the conjugated operator and options."""
    return KrylovState(conj_operator(state.operator), state.negate), conj_options(options)


def _preconditioner_fits(m: Any, operator: AbstractLinearOperator, least_squares: bool) -> bool:
    """A preconditioner `M ≈ A⁻¹` maps the output space of `A` to its input space; for least
    squares (`LSQR`, `LSMR`) it is a right preconditioner, mapping the input space to itself."""
    if not isinstance(m, AbstractLinearOperator):
        return False
    src = operator.in_structure() if least_squares else operator.out_structure()
    return _fits(m.in_structure(), src) and _fits(m.out_structure(), operator.in_structure())


def check_options(name: str, operator: AbstractLinearOperator, options: dict, least_squares: bool):
    """Validate `y0` and `preconditioner` against the operator, with messages saying what to pass."""
    m = options.get("preconditioner")
    if m is not None and not _preconditioner_fits(m, operator, least_squares):
        if not isinstance(m, AbstractLinearOperator):
            kind = "an array" if hasattr(m, "shape") else type(m).__name__
            raise TypeError(
                f"{name}: options['preconditioner'] must be a linopx operator (an approximation "
                f"of A⁻¹), got {kind}; wrap a matrix in `lx.MatrixLinearOperator` or a function "
                "in `lx.FunctionLinearOperator`."
            )
        want_in = operator.in_structure() if least_squares else operator.out_structure()
        raise ValueError(
            f"{name}: the preconditioner must map {_tree.describe(want_in)} to "
            f"{_tree.describe(operator.in_structure())}, but it maps "
            f"{_tree.describe(m.in_structure())} to {_tree.describe(m.out_structure())}."
        )
    y0 = options.get("y0")
    if y0 is not None and not _fits(_tree.structure_of(y0), operator.in_structure()):
        raise ValueError(
            f"{name}: options['y0'] must have the operator's input structure "
            f"{_tree.describe(operator.in_structure())}, got "
            f"{_tree.describe(_tree.structure_of(y0))}."
        )


# ---------------------------------------------------------------------------------------------
# Vectors
#
# Vectors are kept in the operator's own pytree structure whenever the method allows (one array of
# shape (128, 128) stays that shape): raveling to a flat vector and back inside the loop measurably
# slows XLA's fused stencil code down (~1.5x on a 2-D Laplacian on CPU). A square method (CG,
# BiCGStab, GMRES, MINRES) mixes input- and output-space vectors, so when those two structures
# differ it falls back to flat vectors. All leaves are cast to one working dtype.


def real_dtype(dtype: Any):
    return jnp.finfo(dtype).dtype


def is_complex_dtype(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.complexfloating)


def _cast_to(tree: Any, structure: Any) -> Any:
    """Cast leaves to the structure's dtypes, keeping complex values complex for a real structure
    (a complex structure gets its own dtype exactly: a complex64 operator is applied to complex64
    vectors even in a complex128 solve, as its `mv` expects)."""
    return jax.tree_util.tree_map(
        lambda x, s: x.astype(
            _tree.common_dtype(s.dtype, x.dtype)
            if is_complex_dtype(x.dtype) and not is_complex_dtype(s.dtype)
            else s.dtype
        ),
        tree,
        structure,
    )


def cast(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x).astype(dtype), tree)


class Space(eqx.Module):
    """How vectors of one side of an operator are represented: natively (`flat=False`, the
    structure's own pytree with leaves cast to `dtype`) or as one flat array."""

    frozen: tuple = eqx.field(static=True)
    flat: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    # The structure a solution in this space is returned in, if not `frozen` (see
    # `_misc.widen_structure`: a vector wider than the operator widens the solution).
    solution_frozen: tuple | None = eqx.field(static=True, default=None)

    def structure(self) -> Any:
        return _tree.thaw_structure(self.frozen)

    def pack(self, tree: Any) -> Any:
        """A pytree with this space's structure -> a working vector."""
        if self.flat:
            return _tree.ravel(tree, self.dtype)
        return cast(tree, self.dtype)

    def unpack(self, vec: Any) -> Any:
        """A working vector -> a pytree with this space's structure and dtypes (complex kept)."""
        if self.flat:
            return _tree.unravel(vec, self.structure())
        return _cast_to(vec, self.structure())

    def unpack_solution(self, vec: Any) -> Any:
        """A working vector -> the solution: as `unpack`, in the widened structure if any."""
        if self.solution_frozen is None:
            return self.unpack(vec)
        structure = _tree.thaw_structure(self.solution_frozen)
        if self.flat:
            return _tree.unravel(vec, structure)
        return _cast_to(vec, structure)

    def zeros(self, like: Any = None) -> Any:
        """A zero working vector. With `like` (a working vector of the same shapes, e.g. the
        right-hand side of a square method), placed as `like` is: on `Explicit` mesh axes the
        sharding is part of the type, and a loop's carry must keep its type."""
        if like is not None:
            return jax.tree_util.tree_map(lambda x: jnp.zeros_like(x, self.dtype), like)
        if self.flat:
            return jnp.zeros(_tree.structure_size(self.structure()), self.dtype)
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, self.dtype), self.structure())


def spaces(operator: AbstractLinearOperator, dtype: Any, square: bool) -> tuple[Space, Space]:
    """`(input space, output space)` for `operator`. For a square method both must be the same
    representation: native only when the two structures have the same tree and shapes."""
    in_s, out_s = operator.in_structure(), operator.out_structure()
    same = _tree.same_shapes(in_s, out_s)
    flat = square and not same
    solution = widen_structure(in_s, out_s, dtype)
    solution_frozen = None if solution is in_s else _tree.freeze_structure(solution)
    return (
        Space(_tree.freeze_structure(in_s), flat, jnp.dtype(dtype), solution_frozen),
        Space(_tree.freeze_structure(out_s), flat, jnp.dtype(dtype)),
    )


def working_dtype(operator: AbstractLinearOperator, vector: Any):
    """The dtype of the solve: that of the operator and the vector (complex if either is)."""
    leaves = jax.tree_util.tree_leaves(vector)
    return jnp.dtype(
        _tree.common_dtype(
            _tree.structure_dtype(operator.in_structure()),
            _tree.structure_dtype(operator.out_structure()),
            *[jnp.result_type(x) for x in leaves],
        )
    )


def space_mv(operator: AbstractLinearOperator, src: Space, dst: Space) -> Callable[[Any], Any]:
    """`v ↦ A v` on working vectors (`src` = the operator's input space, `dst` its output space).

    A real operator applied to a complex vector is applied to the real and imaginary parts
    separately: a real matrix-free operator may not accept complex input (and strict dtype
    promotion forbids mixing them in a matrix product)."""
    dtype = src.dtype
    split = is_complex_dtype(dtype) and not (
        _tree.is_complex_structure(operator.in_structure())
        or _tree.is_complex_structure(operator.out_structure())
    )
    if not split:
        return lambda v: dst.pack(operator.mv(src.unpack(v)))
    rdst = Space(dst.frozen, dst.flat, real_dtype(dtype))

    def mv_split(v):
        re = rdst.pack(operator.mv(src.unpack(tree_real(v))))
        im = rdst.pack(operator.mv(src.unpack(tree_imag(v))))
        return jax.tree_util.tree_map(lax.complex, re, im)

    return mv_split


def space_adjoint_mv(operator: AbstractLinearOperator, src: Space, dst: Space) -> Callable:
    """`u ↦ Aᴴ u` from the plain transpose, `Aᴴ u = conj(Aᵀ conj(u))`; `src`/`dst` are the
    operator's input/output spaces (so this maps `dst` vectors to `src` vectors)."""
    mv_t = space_mv(operator.transpose(), dst, src)
    if not is_complex_dtype(src.dtype):
        return mv_t
    return lambda u: tree_conj(mv_t(tree_conj(u)))


# Tree arithmetic on working vectors. Scalars must already have the working dtype (strict
# promotion): callers cast them with `.astype(dtype)`.


def tree_real(x):
    return jax.tree_util.tree_map(jnp.real, x)


def tree_imag(x):
    return jax.tree_util.tree_map(jnp.imag, x)


def tree_conj(x):
    return jax.tree_util.tree_map(jnp.conj, x)


def add(x, y):
    return jax.tree_util.tree_map(jnp.add, x, y)


def sub(x, y):
    return jax.tree_util.tree_map(jnp.subtract, x, y)


def neg(x):
    return jax.tree_util.tree_map(jnp.negative, x)


def scale(a, x):
    return jax.tree_util.tree_map(lambda xi: a * xi, x)


def axpy(a, x, y):
    """`a x + y`."""
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)


def _rdot_leaf(x, y):
    if is_complex_dtype(x.dtype):
        return _tree.vdot(jnp.real(x), jnp.real(y)) + _tree.vdot(jnp.imag(x), jnp.imag(y))
    return _tree.vdot(x, y)


def rdot(x, y) -> jax.Array:
    """`Re(xᴴ y)`, without computing the imaginary part."""
    leaves = [
        _rdot_leaf(a, b) for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y))
    ]
    return sum(leaves[1:], leaves[0])


def cdot(x, y) -> jax.Array:
    """`xᴴ y` (conjugating the first argument)."""
    leaves = [
        _tree.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y))
    ]
    return sum(leaves[1:], leaves[0])


def norm(x) -> jax.Array:
    return jnp.sqrt(rdot(x, x))


def preconditioner_mv(options: dict, src: Space, dst: Space) -> Callable | None:
    """`M` on working vectors, mapping `src` vectors to `dst` vectors, or None."""
    m = options.get("preconditioner")
    return None if m is None else space_mv(m, src, dst)


def tolerance(rtol: Any, atol: Any, bnorm: jax.Array) -> jax.Array:
    """`max(rtol |b|, atol)`, in the real dtype of `bnorm`."""
    dt = bnorm.dtype
    return jnp.maximum(jnp.asarray(rtol, dt) * bnorm, jnp.asarray(atol, dt))


def tolerance_squared(rtol: Any, atol: Any, bb: jax.Array) -> jax.Array:
    """`tolerance(rtol, atol, |b|)²` from `bb = |b|²`, without a square root."""
    dt = bb.dtype
    return jnp.maximum(jnp.asarray(rtol, dt) ** 2 * bb, jnp.asarray(atol, dt) ** 2)


def fixed_iterations(rtol: Any, atol: Any) -> bool:
    """Whether both tolerances are (concrete) zeros: then the solver runs a fixed number of
    iterations, `max_steps` (`check_tolerances` makes sure it is given), and reports `successful`
    unless it breaks down or meets a non-finite number, as in Lineax. Inexact Newton methods with
    a fixed inner iteration count rely on that. Decided at trace time, so traced tolerances (even
    zero ones) count as tolerances."""
    return (
        _is_concrete_number(rtol)
        and _is_concrete_number(atol)
        and float(rtol) == 0
        and float(atol) == 0
    )


def default_max_steps(max_steps: int | None, size: int, factor: int = 10) -> int:
    steps = factor * max(size, 1) if max_steps is None else int(max_steps)
    return min(steps, MAX_STEPS_CAP)


# ---------------------------------------------------------------------------------------------
# The outer (true-residual) loop


def initial_guess(options: dict, xs: "Space", b: Any, mv: Callable) -> tuple[Any, Any]:
    """`(x0, r0)`: the initial guess from `options["y0"]` (zero by default) and its residual
    `b - A x0` (no product for a zero guess)."""
    y0 = options.get("y0")
    if y0 is None:
        return xs.zeros(like=b), b
    x0 = xs.pack(y0)
    return x0, sub(b, mv(x0))


def true_residual_check(b: Any, mv: Callable, tol: jax.Array, squared: bool) -> Callable:
    """A `check` for `refine` on the true residual `b - A x`, restarting from `(r, |r|²)` and
    comparing `|r|²` with `tol` if `squared`, else from `(r, |r|)` and comparing `|r|`."""

    def check(x, aux):
        r = sub(b, mv(x))
        rr = rdot(r, r)
        rnorm = jnp.sqrt(rr)
        size = rr if squared else rnorm
        return (r, size), size <= tol, rnorm[None], rnorm

    return check


def refine(
    inner: Callable,
    check: Callable,
    x0: jax.Array,
    start: Any,
    converged0: jax.Array,
    measure0: jax.Array,
    max_steps: int,
    steps_dtype=jnp.int32,
    fixed: bool = False,
):
    """Run `inner` rounds until the true residual meets the tolerance.

    - `inner(x, start, k) -> (x, k, broke, aux)`: run the method from `x` (with `start` the data it
      restarts from, e.g. the true residual) until its own estimate converges, `k` reaches
      `max_steps` or it breaks down (`broke`); `aux` is passed on to `check`.
    - `check(x, aux) -> (start, converged, measure, residual_norm)`: the true residual and whether
      it meets the tolerance; `measure` is a 1-D array of quantities that a useful round decreases
      (a round that decreases none of them counts as stagnation).

    Returns `(x, result, stats)`.

    The loop always ends: a round that takes no step would be repeated identically, so it counts as
    stagnation, and a non-finite true residual (NaN or infinity in the operator, the right-hand
    side, `y0` or the preconditioner, or an overflow) ends it with `nonfinite_input` (which
    `linear_solve` reports as `singular` if the inputs are finite). Success needs a finite residual:
    an infinite `b` makes the tolerance infinite too, and must not pass for converged.

    With `fixed` (both tolerances zero, see `fixed_iterations`) the rounds go on until `max_steps`
    iterations are spent (or the residual is exactly zero, or a round takes no step), restarting
    however little a round gains, and the result is `successful` unless the method broke down or
    the residual is not finite.
    """
    k0 = jnp.zeros((), steps_dtype)
    false = jnp.zeros((), bool)
    rnorm0 = measure0[0]
    finite0 = jnp.isfinite(rnorm0)

    def cond(c):
        _, _, k, done, broke, stalled, _, rnorm = c
        return jnp.logical_not(done | broke | stalled) & (k < max_steps) & jnp.isfinite(rnorm)

    def body(c):
        x, start, k_before, _, _, _, measure, _ = c
        x, k, broke, aux = inner(x, start, k_before)
        start, done, new_measure, rnorm = check(x, aux)
        done = done & jnp.isfinite(rnorm)
        no_progress = (
            (k <= k_before) if fixed else (jnp.all(new_measure >= measure) | (k <= k_before))
        )
        # A round cut short by `max_steps` is not judged: the result is then `max_steps_reached`
        # (as for CG), also when that round's residual did not decrease (BiCGStab's need not).
        stalled = no_progress & jnp.logical_not(done) & (k < max_steps)
        return x, start, k, done, broke, stalled, jnp.minimum(new_measure, measure), rnorm

    init = (x0, start, k0, converged0 & finite0, false, false, measure0, rnorm0)
    x, _, k, done, broke, stalled, _, rnorm = while_loop(cond, body, init)
    if fixed:
        result = RESULTS.where(
            jnp.logical_not(jnp.isfinite(rnorm)),
            RESULTS.nonfinite_input,
            RESULTS.where(broke & jnp.logical_not(done), RESULTS.breakdown, RESULTS.successful),
        )
        return x, result, {"num_steps": k, "residual_norm": rnorm}
    result = RESULTS.where(
        done,
        RESULTS.successful,
        RESULTS.where(
            jnp.logical_not(jnp.isfinite(rnorm)),
            RESULTS.nonfinite_input,
            RESULTS.where(
                broke,
                RESULTS.breakdown,
                RESULTS.where(stalled, RESULTS.stagnation, RESULTS.max_steps_reached),
            ),
        ),
    )
    return x, result, {"num_steps": k, "residual_norm": rnorm}


def refine_from_residual(
    inner: Callable,
    b: Any,
    mv: Callable,
    tol: jax.Array,
    options: dict,
    xs: "Space",
    max_steps: int,
    fixed: bool,
) -> tuple[Any, Any, dict]:
    """`refine` for the methods whose inner loop starts from `(r0, |r0|)` and whose true-residual
    check is unsquared (GMRES, MINRES): the initial guess, its residual, and the loop."""
    check = true_residual_check(b, mv, tol, squared=False)
    x0, r0 = initial_guess(options, xs, b, mv)
    rnorm0 = norm(r0)
    return refine(
        inner, check, x0, (r0, rnorm0), rnorm0 <= tol, rnorm0[None], max_steps, fixed=fixed
    )
