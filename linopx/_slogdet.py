"""`slogdet`: log-determinants read off a solver's factorization, differentiable; and the
stochastic estimators a user can opt into (`Hutchinson`, `StochasticLanczos`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _tree
from ._solve import _check_options as _check_solve_options
from ._solve import (
    _check_dtypes,
    _check_operator,
    _check_solver,
    _check_state,
    _is_empty,
    _stop_gradient,
)
from .autodiff.primitive import _is_leaf_none, bind_solve
from .linops.base import AbstractLinearOperator
from .linops.functions import is_positive_semidefinite
from .solvers._misc import flat, unflat
from .solvers.auto import AutoLinearSolver
from .solvers.base import AbstractLinearSolver

_KNOWN_OPTIONS = frozenset({"estimator", "preconditioner", "y0"})


class Hutchinson(eqx.Module):
    """Opt-in: estimate the *derivative* of `log|det A|` stochastically; the value stays exact.

    The derivative `tr(A⁻¹ A')` is estimated by Hutchinson's estimator with `num_probes` Rademacher
    vectors `z` (entries ±1, drawn from `key`): `mean(uᵀ A' z)` with `u = A⁻ᵀ z`, one transposed
    solve per probe with the solver's existing factorization. Unbiased (exactly, given exact
    solves); its standard deviation falls like `1/sqrt(num_probes)`. Use it where the exact
    derivative is too costly (a very large sparse matrix):

    ```python
    est = lx.Hutchinson(num_probes=64, key=jax.random.key(0))
    sign, logdet = lx.slogdet(A, lx.SparseLU(), options={"estimator": est})
    ```

    The probes are fixed by `key`: the same key gives the same estimate (pass a fresh key per
    optimisation step for an unbiased stochastic gradient)."""

    num_probes: int = eqx.field(static=True)
    key: Any

    def __check_init__(self):
        _check_count("Hutchinson", "num_probes", self.num_probes)


class StochasticLanczos(eqx.Module):
    """Opt-in: estimate `log det A` of a matrix-free symmetric positive definite operator by
    stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017), and its derivative with the same
    probes.

    For each of `num_probes` Rademacher probes `z` (drawn from `key`), `num_steps` steps of Lanczos
    (with full reorthogonalisation) started at `z` give a Gauss quadrature of `zᵀ log(A) z`;
    their mean estimates `tr(log A) = log det A`. The derivative `tr(A⁻¹ A')` is estimated by
    `mean(uᵀ A' z)` with `u = A⁻¹ z` from the solver passed to `lx.slogdet` (e.g. `lx.CG`). Costs
    `num_probes * (num_steps + solver iterations)` products with `A`; memory `num_probes *
    num_steps` vectors. The estimate's error falls like `1/sqrt(num_probes)` once `num_steps` is
    enough for the spectrum (the quadrature error falls geometrically in `num_steps`).

    ```python
    est = lx.StochasticLanczos(num_probes=64, num_steps=30, key=jax.random.key(0))
    sign, logdet = lx.slogdet(A, lx.CG(rtol=1e-8, atol=1e-8), options={"estimator": est})
    ```

    The operator must be tagged `lx.positive_semidefinite_tag` (and be definite)."""

    num_probes: int = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    key: Any

    def __check_init__(self):
        _check_count("StochasticLanczos", "num_probes", self.num_probes)
        _check_count("StochasticLanczos", "num_steps", self.num_steps)


def _check_count(name: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: `{field}` must be a positive integer, got {value!r}.")


def _solvers_with_logdet() -> str:
    from . import solvers

    names = [
        name
        for name in dir(solvers)
        if isinstance(getattr(solvers, name), type)
        and issubclass(getattr(solvers, name), AbstractLinearSolver)
        and getattr(solvers, name).logdet is not AbstractLinearSolver.logdet
        and name != "AutoLinearSolver"
    ]
    return ", ".join(f"`lx.{n}()`" for n in sorted(names))


def _check_options(options: Any) -> dict:
    options = _check_solve_options(options, _KNOWN_OPTIONS, "slogdet")
    estimator = options.get("estimator")
    if estimator is not None and not isinstance(estimator, (Hutchinson, StochasticLanczos)):
        raise TypeError(
            "options['estimator'] must be `lx.Hutchinson(...)` (stochastic derivative, exact "
            "value) or `lx.StochasticLanczos(...)` (stochastic value and derivative, matrix-free), "
            f"got {type(estimator).__name__}."
        )
    return options


def slogdet(
    operator: AbstractLinearOperator,
    solver: AbstractLinearSolver = AutoLinearSolver(well_posed=True),
    *,
    state: Any = None,
    options: dict[str, Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Return `(sign, logabsdet)` with `det A = sign * exp(logabsdet)`, as `jnp.linalg.slogdet`
    does, read off the solver's factorization of the square operator `A`.

    - `sign` has the operator's dtype: `±1` for a real operator, a unit-modulus phase for a complex
      one, `0` for a singular matrix (then `logabsdet = -inf`). `logabsdet` is real.
    - `state=solver.init(operator, options)` shares one factorization between `lx.linear_solve(...,
      state=state)` and `lx.slogdet(..., state=state)` (a Gaussian process's `yᵀK⁻¹y` and `log|K|`).
    - Works under `jit`, `vmap`, `grad`, `jvp` and their compositions. The derivative is
      `d log|det A| = Re tr(A⁻¹ A')` (and `d sign = i Im tr(A⁻¹ A') sign` for complex operators),
      computed by each solver from its factorization, never by refactorizing: `O(n³)` for dense
      factorizations (it forms `A⁻¹`, as `jnp.linalg.slogdet`'s derivative does), `O(n)` for
      `Diagonal` and `Tridiagonal`, and on the nonzeros only for `SparseLU`.
    - Solvers with a log-determinant: `LU`, `Cholesky`, `QR` (square), `SVD`, `Diagonal`,
      `Triangular`, `Tridiagonal`, `SparseLU`, and `AutoLinearSolver` (whichever it picks). Matrix-free
      (iterative) solvers have no factorization: they give one only through the opt-in estimator
      `options={"estimator": lx.StochasticLanczos(...)}`. A custom solver gets `slogdet` by
      implementing `logdet` (and optionally `logdet_tangent`) of `lx.AbstractLinearSolver`.
    - `options={"estimator": lx.Hutchinson(...)}` keeps the exact value and estimates the derivative
      stochastically (for sparse matrices too large for the exact one). Nothing is estimated unless
      asked for.

    ```python
    K = lx.MatrixLinearOperator(k, lx.positive_semidefinite_tag)
    solver = lx.Cholesky()
    state = solver.init(K, {})
    alpha = lx.linear_solve(K, y, solver, state=state).value
    nll = 0.5 * y @ alpha + 0.5 * lx.slogdet(K, solver, state=state)[1]
    ```
    """
    _check_operator(operator)
    _check_solver(solver)
    options = _check_options(options)
    m, n = operator.out_size(), operator.in_size()
    if m != n:
        raise ValueError(
            f"slogdet needs a square operator, got {m} x {n}: a determinant is defined for square "
            "matrices only."
        )
    _check_dtypes(operator)
    estimator = options.get("estimator")
    lanczos = isinstance(estimator, StochasticLanczos)
    if not lanczos and type(solver).logdet is AbstractLinearSolver.logdet:
        raise TypeError(
            f"{type(solver).__name__} has no log-determinant (no `logdet` method). Solvers that "
            f"read one off their factorization: {_solvers_with_logdet()}; for a matrix-free "
            "positive definite operator pass `options={'estimator': lx.StochasticLanczos(...)}` "
            "with an iterative solver such as `lx.CG()`."
        )
    if lanczos and not is_positive_semidefinite(operator):
        raise ValueError(
            "StochasticLanczos estimates log-determinants of symmetric positive definite "
            "operators: tag the operator `lx.positive_semidefinite_tag` (for an indefinite one use "
            "a direct solver)."
        )
    args = (operator, solver, state, options)
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
        return _slogdet_jit(*args)
    return _slogdet(*args)


def _slogdet(operator, solver, state, options):
    dtype = _tree.structure_dtype(operator.out_structure())
    if _is_empty(operator):  # the determinant of a 0 x 0 matrix is 1
        return jnp.ones((), dtype), jnp.zeros((), jnp.finfo(dtype).dtype)
    options = _stop_gradient(options)
    if state is None:
        state = solver.init(_stop_gradient(operator), options)
    else:
        _check_state(solver, operator, options, state)
        state = _stop_gradient(state)
    return _slogdet_custom(operator, state=state, options=options, solver=solver)


_slogdet_jit = eqx.filter_jit(_slogdet)


@eqx.filter_custom_jvp
def _slogdet_custom(operator, *, state, options, solver):
    estimator = options.get("estimator")
    if isinstance(estimator, StochasticLanczos):
        return _lanczos_slogdet(operator, estimator)
    sign, logabsdet = solver.logdet(state, options)
    dtype = _tree.structure_dtype(operator.out_structure())
    return jnp.asarray(sign).astype(dtype), jnp.asarray(logabsdet).astype(jnp.finfo(dtype).dtype)


@_slogdet_custom.def_jvp
def _slogdet_jvp(primals, tangents, *, state, options, solver):
    (operator,) = primals
    (op_t,) = tangents
    sign, logabsdet = _slogdet_custom(operator, state=state, options=options, solver=solver)
    if op_t is None or all(
        t is None for t in jax.tree_util.tree_leaves(op_t, is_leaf=_is_leaf_none)
    ):
        return (sign, logabsdet), (None, None)
    # Symbolic zeros (`None`) of differentiable leaves become arrays of zeros for `filter_jvp`.
    op_t = jax.tree_util.tree_map(
        lambda p, t: (
            jnp.zeros(jnp.shape(p), jnp.result_type(p))
            if t is None and eqx.is_inexact_array(p)
            else t
        ),
        operator,
        op_t,
        is_leaf=_is_leaf_none,
    )

    def tangent(fn):
        return eqx.filter_jvp(fn, (operator,), (op_t,))[1]

    if options.get("estimator") is not None:
        t = _hutchinson_tangent(options["estimator"], solver, state, operator, tangent, options)
    else:
        t = solver.logdet_tangent(state, operator, tangent, options)
    t = jnp.asarray(t)
    d_logabsdet = jnp.real(t).astype(logabsdet.dtype)
    if jnp.iscomplexobj(sign):
        d_sign = sign * jax.lax.complex(jnp.zeros_like(jnp.imag(t)), jnp.imag(t)).astype(sign.dtype)
    else:
        d_sign = None
    return (sign, logabsdet), (d_sign, d_logabsdet)


# ---------------------------------------------------------------------------------------------
# Estimators


def _probes(key, num_probes: int, n: int, dtype) -> jax.Array:
    """`(num_probes, n)` Rademacher vectors (±1) in `dtype`."""
    return jax.random.rademacher(key, (num_probes, n), dtype=jnp.finfo(dtype).dtype).astype(dtype)


def _hutchinson_tangent(estimator, solver, state, operator, tangent, options):
    """`mean_z uᵀ A' z` with `u = A⁻ᵀ z`: an unbiased estimate of `tr(A⁻¹ A')`."""
    in_structure, out_structure = operator.in_structure(), operator.out_structure()
    dtype = _tree.common_dtype(
        _tree.structure_dtype(in_structure), _tree.structure_dtype(out_structure)
    )
    n = operator.in_size()
    z = _probes(estimator.key, estimator.num_probes, n, dtype)
    state_t, options_t = solver.transpose(state, options)
    operator_t = operator.transpose()

    def solve_t(zi):
        value = bind_solve(operator_t, state_t, unflat(zi, out_structure), options_t, solver, False)
        return flat(value[0], dtype)

    # u = A⁻ᵀ z: one transposed solve per probe with the existing state (through the solve
    # primitive, so that the estimate can be differentiated again).
    u = jax.vmap(solve_t)(z)
    # A' z for every probe: linear in the tangent, so reverse mode transposes it (for a sparse
    # operator onto its nonzeros only).
    a_dot_z = jax.vmap(lambda zi: flat(tangent(lambda op: op.mv(unflat(zi, in_structure))), dtype))(
        z
    )
    return jnp.mean(jnp.sum(u * a_dot_z, axis=-1))


def _lanczos_slogdet(operator, estimator: StochasticLanczos):
    """Stochastic Lanczos quadrature for `log det A`, `A` symmetric positive definite."""
    in_structure = operator.in_structure()
    dtype = _tree.structure_dtype(in_structure)
    real = jnp.finfo(dtype).dtype
    n = operator.in_size()
    steps = min(estimator.num_steps, n)
    z = _probes(estimator.key, estimator.num_probes, n, dtype)

    def mv(v):
        return flat(operator.mv(unflat(v, in_structure)), dtype)

    def quadrature(zi):
        alpha, beta = _lanczos(mv, zi, steps)
        t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
        theta, vecs = jnp.linalg.eigh(t)
        weights = jnp.abs(vecs[0]) ** 2
        # zᵀ log(A) z ≈ |z|² Σ_k w_k log θ_k (Gauss quadrature of the spectral measure of z); the
        # zero rows after a breakdown carry no weight.
        terms = jnp.where(weights > 0, weights * jnp.log(jnp.where(theta > 0, theta, 1)), 0)
        terms = jnp.where((weights > jnp.finfo(real).eps) & (theta <= 0), jnp.nan, terms)
        return jnp.sum(jnp.abs(zi) ** 2).real * jnp.sum(terms)

    logabsdet = jnp.mean(jax.vmap(quadrature)(z)).astype(real)
    return jnp.ones((), dtype), logabsdet


def _lanczos(mv, z, steps: int):
    """`steps` steps of Lanczos from `z` with full reorthogonalisation; returns the tridiagonal
    `(alpha (steps,), beta (steps-1,))`. On breakdown (an invariant subspace found: the quadrature
    is then exact) the remaining steps run on the zero vector, adding decoupled zero rows whose
    quadrature weights are zero."""
    n = z.shape[0]
    dtype = z.dtype
    real = jnp.finfo(dtype).dtype
    tol = jnp.finfo(real).eps * n
    basis = jnp.zeros((steps, n), dtype)
    v0 = z / jnp.linalg.norm(z)

    def body(k, carry):
        basis, v, alpha, beta, scale = carry
        basis = basis.at[k].set(v)
        w = mv(v)
        a = jnp.real(jnp.vdot(v, w))
        for _ in range(2):  # classical Gram-Schmidt twice is enough (Giraud et al. 2005)
            w = w - basis.T @ (jnp.conj(basis) @ w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a))
        broke = b <= tol * scale
        v_next = jnp.where(broke, 0, w / jnp.where(broke, 1, b).astype(dtype))
        alpha = alpha.at[k].set(a)
        beta = beta.at[k].set(jnp.where(broke, 0, b))
        return basis, v_next, alpha, beta, scale

    init = (basis, v0, jnp.zeros((steps,), real), jnp.zeros((steps,), real), jnp.zeros((), real))
    _, _, alpha, beta, _ = jax.lax.fori_loop(0, steps, body, init)
    return alpha, beta[: steps - 1]


__all__ = ["Hutchinson", "StochasticLanczos", "slogdet"]
