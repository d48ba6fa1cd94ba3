"""Preconditioners for the iterative solvers."""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from .. import _tree
from ..linops.base import AbstractLinearOperator
from ..linops.composite import TaggedLinearOperator
from ..linops.diagonal import DiagonalLinearOperator
from ..linops.functions import (
    diagonal,
    is_negative_semidefinite,
    is_positive_semidefinite,
    is_symmetric,
)
from ..linops.matrix import MatrixLinearOperator
from ..linops.sparse import SparseCOOLinearOperator
from ..linops.tags import negative_semidefinite_tag, positive_semidefinite_tag, symmetric_tag
from . import _host_preconditioners as H


def jacobi_preconditioner(operator: AbstractLinearOperator) -> AbstractLinearOperator:
    """The Jacobi (diagonal) preconditioner `M = diag(A)⁻¹`, for `options={"preconditioner": M}`.

    Cheap and often effective for diagonally dominant operators and for operators whose rows are
    badly scaled. The diagonal comes from `lx.diagonal(operator)`, which reads it directly for
    diagonal, tridiagonal, dense, sparse and composite operators and probes matrix-free ones
    (one product per chunk of unit vectors, or one product if the operator is tagged diagonal).

    **Arguments:**

    - `operator`: a square operator with a nonzero diagonal.

    **Returns:** a `lx.DiagonalLinearOperator` with entries `1 / A[i, i]` and the operator's input
    structure. It is tagged positive (negative) semidefinite when `operator` is, so it can be
    used with `lx.CG` (and the positive one with `lx.MINRES`).

    **Zero diagonal entries.** With a concrete operator a zero (or non-finite) diagonal entry raises
    a `ValueError`: the Jacobi preconditioner does not exist, try another. Under `jit`/`vmap`
    (traced values) this cannot be checked at trace time; the entry `1 / 0` is then infinite and
    the solve reports `RESULTS.nonfinite_input` or `breakdown`.

    ```python
    A = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    M = lx.jacobi_preconditioner(A)
    sol = lx.linear_solve(A, b, lx.CG(rtol=1e-8, atol=1e-8), options={"preconditioner": M})
    ```
    """
    if not isinstance(operator, AbstractLinearOperator):
        raise TypeError(
            "jacobi_preconditioner takes a linopx operator; wrap arrays in "
            "`lx.MatrixLinearOperator`."
        )
    in_s, out_s = operator.in_structure(), operator.out_structure()
    if not _tree.same_shapes(in_s, out_s):
        raise ValueError(
            f"jacobi_preconditioner needs a square operator with matching input and output "
            f"structures, got {_tree.describe(in_s)} -> {_tree.describe(out_s)}."
        )
    d = diagonal(operator)
    if not isinstance(d, jax.core.Tracer):
        bad = ~jnp.isfinite(d) | (d == 0)
        if bool(jnp.any(bad)):
            first = int(jnp.argmax(bad))
            raise ValueError(
                f"jacobi_preconditioner: the diagonal has a zero or non-finite entry (index "
                f"{first}), so diag(A)⁻¹ does not exist. Use another preconditioner, or none."
            )
    inv = 1 / d
    dtype = _tree.structure_dtype(in_s)
    if not jnp.issubdtype(inv.dtype, jnp.complexfloating):
        inv = inv.astype(
            jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else inv.dtype
        )
    m = DiagonalLinearOperator(_tree.unravel(inv, in_s))
    if is_positive_semidefinite(operator):
        return TaggedLinearOperator(m, positive_semidefinite_tag)
    if is_negative_semidefinite(operator):
        return TaggedLinearOperator(m, negative_semidefinite_tag)
    return m


# ---------------------------------------------------------------------------------------------
# Host-side preconditioners for sparse operators: algebraic multigrid and incomplete LU


def _sparse_of(operator: Any, name: str):
    """The `SparseCOOLinearOperator` inside `operator` (possibly within `TaggedLinearOperator`s),
    checked to be square."""
    inner = operator
    while isinstance(inner, TaggedLinearOperator):
        inner = inner.operator
    if not isinstance(inner, SparseCOOLinearOperator):
        if isinstance(inner, MatrixLinearOperator):
            hint = (
                "convert a dense matrix explicitly with "
                "`lx.SparseCOOLinearOperator.from_scipy(scipy.sparse.csr_array(a))` (outside `jit`)"
            )
        else:
            hint = (
                "build one with `lx.SparseCOOLinearOperator.from_scipy(...)` or `.from_bcoo(...)`"
            )
        raise TypeError(
            f"{name} needs an `lx.SparseCOOLinearOperator` (optionally inside "
            f"`lx.TaggedLinearOperator`), got {type(inner).__name__}: {hint}. For matrix-free "
            "operators use `lx.jacobi_preconditioner`."
        )
    m, n = inner.shape
    if m != n:
        raise ValueError(f"{name} needs a square operator, got {m} x {n}.")
    if not jnp.issubdtype(inner.values.dtype, jnp.inexact):  # pragma: no cover - cast on build
        raise TypeError(f"{name}: the operator's values must be float or complex.")
    return inner


def _check_keywords(name: str, fn: Any, kwargs: dict, reserved: tuple, extra: tuple = ()) -> None:
    """Raise a `TypeError` now for a keyword `fn` does not take (rather than in a host callback
    inside `jit`). `extra`: keywords that `fn` passes on through its `**kwargs`."""
    params = inspect.signature(fn).parameters
    allowed = [
        k
        for k, p in params.items()
        if k not in reserved
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ] + list(extra)
    for key in kwargs:
        if key not in allowed:
            raise TypeError(
                f"{name}: unknown keyword argument {key!r} for `{fn.__module__}.{fn.__name__}`; "
                f"it takes {', '.join(allowed)}."
            )


def _setup_dtype(dtype: Any) -> str:
    return "complex128" if jnp.issubdtype(dtype, jnp.complexfloating) else "float64"


def _freeze_kwargs(name: str, kwargs: dict) -> tuple:
    try:
        return tuple(sorted((k, H.freeze(v)) for k, v in kwargs.items()))
    except TypeError:
        raise TypeError(
            f"{name}: keyword arguments must be numbers, strings, arrays, or lists, tuples and "
            "dicts of them (they become part of the operator's static description)."
        ) from None


def _symmetric_smoothing(kwargs: dict) -> bool:
    """Whether the V-cycle's smoothing is symmetric (post-smoother = adjoint of the pre-smoother,
    level by level), by pyamg's rule for `symmetric_smoothing`, for the smoothers that
    `amg_preconditioner` accepts; decided statically, so that the tags are."""
    default = ("gauss_seidel", {"sweep": "symmetric"})
    pre = H._smoother_list(kwargs.get("presmoother", default))
    post = H._smoother_list(kwargs.get("postsmoother", default))
    for i in range(max(len(pre), len(post))):
        n1, k1 = H._split_smoother(pre[min(i, len(pre) - 1)])
        n2, k2 = H._split_smoother(post[min(i, len(post) - 1)])
        if n1 != n2 or k1.get("iterations", 1) != k2.get("iterations", 1):
            return False
        sweeps = (k1.pop("sweep", "forward"), k2.pop("sweep", "forward"))
        # Otherwise the same step (same weights, same blocks), and for Gauss–Seidel/SOR sweeps
        # in opposite directions, or both symmetric. (Stricter than pyamg, which does not compare
        # the other options.)
        if k1 != k2:
            return False
        if n1 in H._SWEEPING and sweeps not in (
            ("forward", "backward"),
            ("backward", "forward"),
            ("symmetric", "symmetric"),
        ):
            return False
    return True


def amg_preconditioner(
    operator: AbstractLinearOperator, method: str = "smoothed_aggregation", **pyamg_kwargs: Any
) -> AbstractLinearOperator:
    """An algebraic multigrid preconditioner `M ≈ A⁻¹` for a sparse operator: one V-cycle of a
    [pyamg](https://github.com/pyamg/pyamg) hierarchy per application. Pass it as
    `options={"preconditioner": M}`.

    Multigrid is the preconditioner of choice for discretised elliptic problems (diffusion,
    elasticity, Poisson-type equations, also anisotropic or with jumping coefficients): the number
    of CG iterations stays nearly constant as the grid is refined, where for unpreconditioned or
    Jacobi-preconditioned CG it grows like the number of grid points per direction. With the default (symmetric
    Gauss–Seidel) smoothing and a symmetric positive definite `A`, the V-cycle is symmetric
    positive definite, so it can be used with `lx.CG` and `lx.MINRES` (the returned operator is
    then tagged positive semidefinite). It also works with `lx.GMRES` and `lx.BiCGStab`.

    Needs pyamg (MIT licence), an optional dependency: `pip install "linopx[amg]"`.

    **Arguments:**

    - `operator`: a square `lx.SparseCOOLinearOperator` (optionally inside
      `lx.TaggedLinearOperator`), real or complex, with a concrete or a traced pattern. Dense and
      matrix-free operators are not accepted: convert a dense matrix yourself with
      `lx.SparseCOOLinearOperator.from_scipy(scipy.sparse.csr_array(a))`.
    - `method`: `"smoothed_aggregation"` (default; pyamg's `smoothed_aggregation_solver`, robust
      for most elliptic problems) or `"ruge_stuben"` (classical AMG, `ruge_stuben_solver`, often
      better for strongly anisotropic M-matrices).
    - `**pyamg_kwargs`: passed to that pyamg function (e.g. `max_coarse=...`, `strength=...`,
      `presmoother=...`). The smoothers must be Gauss–Seidel, block Gauss–Seidel, SOR, Jacobi,
      block Jacobi or Richardson (or None): linopx needs the exact transpose of the V-cycle for
      the backward solve of a gradient, and knows it for these.

    **Returns:** a linear operator applying one V-cycle (from a zero initial guess, as pyamg's
    `ml.aspreconditioner(cycle="V")`). Its `transpose()` applies the exact transpose `Mᵀ`: `M`
    itself when `A` is symmetric and the smoothing is symmetric (the default), else the V-cycle of
    the transposed hierarchy (transposed levels, swapped pre- and post-smoothers with reversed
    sweeps), built on the host when first needed.

    **What runs where.** The hierarchy is built and each V-cycle is applied on the host (CPU), in
    SciPy/pyamg, through `jax.pure_callback`; the Krylov iteration around it runs wherever JAX
    runs. Called outside `jit` (concrete values; the normal use), the hierarchy is built at once,
    here, and every solve, its tangent and its backward (transposed) solve reuse it. Called inside
    `jit`, `vmap` or `grad` (traced values), it is built on the host by a callback when the
    computation runs, once per distinct set of values (a cache keyed by a digest of the values
    finds a hierarchy built earlier). Setups are kept in a bounded cache (8 setups, 2 GiB, least
    recently used first out); if one is evicted while still in use it is rebuilt from the values,
    so results never depend on the cache, only the speed. On a GPU every application copies the
    vector and the matrix values to the host and the result back: a round trip per iteration.

    **Derivatives.** The preconditioner is held constant (`lax.stop_gradient`): it changes the
    iteration count, never the solution, so the gradient of a preconditioned solve is the
    gradient of the solve. The backward solve uses `Mᵀ` from the same setup.

    **Failures.** NaN or infinite values do not raise: every application then returns NaN, and the
    solve reports a `RESULTS` failure (`nonfinite_input`). A non-square or non-sparse operator, an
    unknown `method` or keyword, or an unsupported smoother raise at once (`ValueError` or
    `TypeError`).

    ```python
    A = lx.SparseCOOLinearOperator.from_scipy(a_csr, lx.positive_semidefinite_tag)
    M = lx.amg_preconditioner(A)                       # set up once, on the host
    sol = lx.linear_solve(A, b, lx.CG(rtol=1e-8, atol=0.0), options={"preconditioner": M})
    ```
    """
    if method not in H.AMG_METHODS:
        raise ValueError(
            f"amg_preconditioner: unknown method {method!r}; use one of "
            f"{', '.join(map(repr, H.AMG_METHODS))}."
        )
    sparse = _sparse_of(operator, "amg_preconditioner")
    try:
        import pyamg
    except ImportError:
        raise ImportError(
            f"amg_preconditioner needs pyamg, an optional dependency: {H.AMG_HINT}"
        ) from None
    builder = (
        pyamg.smoothed_aggregation_solver
        if method == "smoothed_aggregation"
        else pyamg.ruge_stuben_solver
    )
    # The builders pass further keywords on to `pyamg.MultilevelSolver` (`coarse_solver`).
    _check_keywords("amg_preconditioner", builder, pyamg_kwargs, ("A",), ("coarse_solver",))
    H.check_smoothers(pyamg_kwargs)
    spec = H.Spec(
        "amg",
        method,
        _freeze_kwargs("amg_preconditioner", pyamg_kwargs),
        sparse.shape,
        _setup_dtype(sparse.values.dtype),
    )
    tags = ()
    if _symmetric_smoothing(pyamg_kwargs):
        if is_positive_semidefinite(operator):
            tags = (positive_semidefinite_tag,)
        elif is_symmetric(operator) and not jnp.issubdtype(
            sparse.values.dtype, jnp.complexfloating
        ):
            tags = (symmetric_tag,)
    return H.make(sparse, spec, tags)


def ilu_preconditioner(
    operator: AbstractLinearOperator,
    drop_tol: float = 1e-4,
    fill_factor: float = 10,
    **spilu_kwargs: Any,
) -> AbstractLinearOperator:
    """An incomplete LU preconditioner `M = (L U)⁻¹ ≈ A⁻¹` for a sparse operator, from
    SciPy's `scipy.sparse.linalg.spilu` (SuperLU's threshold ILU). Pass it as
    `options={"preconditioner": M}`.

    For general (nonsymmetric, indefinite) sparse systems with `lx.GMRES` or `lx.BiCGStab`:
    convection–diffusion, transport, circuit and other problems where multigrid does not apply.
    `M` is not symmetric, so it is not for `lx.CG` or `lx.MINRES` (use `lx.amg_preconditioner`
    there).

    **Arguments:**

    - `operator`: a square `lx.SparseCOOLinearOperator` (optionally inside
      `lx.TaggedLinearOperator`), real or complex, with a concrete or a traced pattern. Dense and
      matrix-free operators are not accepted (see `lx.amg_preconditioner`).
    - `drop_tol`: entries of the factors smaller than this (relative to their column) are dropped;
      smaller keeps more fill and gives a better, more expensive preconditioner.
    - `fill_factor`: the factors may hold at most about this many times the nonzeros of `A`.
    - `**spilu_kwargs`: further arguments of `spilu` (`drop_rule`, `permc_spec`,
      `diag_pivot_thresh`, `relax`, `panel_size`, `options`). Without `permc_spec` the column
      ordering is that of `lx.SparseLU`: minimum degree on `Aᵀ + A` (`"MMD_AT_PLUS_A"`) for a
      structurally symmetric pattern, else COLAMD. (SciPy's own default is COLAMD; on a 5-point
      convection–diffusion matrix its factors reach the `fill_factor` cap, SuperLU then drops
      more, and GMRES needed 157 iterations where it needs 3 with minimum degree.)

    **Returns:** a linear operator applying `(L U)⁻¹` (two sparse triangular solves with
    SuperLU's row and column permutations); its `transpose()` applies `(L U)⁻ᵀ` exactly, from
    the same factors.

    **What runs where.** The factorization and each application run on the host (CPU, SuperLU,
    single-threaded) through `jax.pure_callback`; the Krylov iteration runs wherever JAX runs.
    Called outside `jit` (concrete values; the normal use), the factorization is made at once and
    reused by every solve, its tangent and backward solves; inside `jit`, `vmap` or `grad` it is
    made on the host when the computation runs, once per distinct set of values, and kept in the
    same bounded cache as the multigrid setups (see `lx.amg_preconditioner`; results never depend
    on the cache). On a GPU every application is a round trip to the host.

    **Derivatives.** Held constant (`lax.stop_gradient`), as every preconditioner: the gradient of a
    preconditioned solve is the gradient of the solve.

    **Failures.** NaN or infinite values do not raise: the solve reports a `RESULTS` failure. A
    factorization that breaks down ("exactly singular" incomplete factor) raises a `ValueError`
    when set up outside `jit`; inside `jit` it makes every application return NaN, and the solve
    reports the failure.

    ```python
    A = lx.SparseCOOLinearOperator.from_scipy(a_csr)
    M = lx.ilu_preconditioner(A, drop_tol=1e-4, fill_factor=10)
    sol = lx.linear_solve(A, b, lx.GMRES(rtol=1e-8, atol=0.0), options={"preconditioner": M})
    ```
    """
    import scipy.sparse.linalg as sla

    sparse = _sparse_of(operator, "ilu_preconditioner")
    for field, value in (("drop_tol", drop_tol), ("fill_factor", fill_factor)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(
                f"ilu_preconditioner: `{field}` must be a non-negative number, got {value!r}."
            )
    _check_keywords(
        "ilu_preconditioner", sla.spilu, spilu_kwargs, ("A", "drop_tol", "fill_factor")
    )
    kwargs = dict(spilu_kwargs, drop_tol=float(drop_tol), fill_factor=float(fill_factor))
    spec = H.Spec(
        "ilu",
        "spilu",
        _freeze_kwargs("ilu_preconditioner", kwargs),
        sparse.shape,
        _setup_dtype(sparse.values.dtype),
    )
    return H.make(sparse, spec, ())
