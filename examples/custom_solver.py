"""Write your own solver: six methods, and `jit`, `vmap`, forward and reverse mode come for free.

`EighSolver` solves symmetric systems through an eigendecomposition `A = V diag(w) Vᵀ`. It has no
derivative code of its own: `lx.linear_solve` differentiates any solver through its primitive,
using only `transpose`, `conj` and the two `allow_dependent_*` flags. The gradient is checked
against central finite differences and against the same gradient computed with `lx.LU()`.
Exits non-zero if a check fails.

    python examples/custom_solver.py
"""

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import linopx as lx


class _EighState(eqx.Module):
    eigenvalues: jax.Array
    eigenvectors: jax.Array


class EighSolver(lx.AbstractLinearSolver):
    """Solve a symmetric (real) system through its eigendecomposition."""

    def init(self, operator, options):
        if not lx.is_symmetric(operator):
            raise ValueError("EighSolver needs an operator tagged `lx.symmetric_tag`.")
        w, v = jnp.linalg.eigh(operator.as_matrix())
        return _EighState(w, v)

    def compute(self, state, vector, options):
        v = state.eigenvectors
        x = v @ ((v.T @ vector) / state.eigenvalues)
        ok = jnp.all(state.eigenvalues != 0)
        result = lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.singular)
        return x, result, {}

    def transpose(self, state, options):
        return state, options  # A is symmetric: Aᵀ = A.

    def conj(self, state, options):
        return _EighState(state.eigenvalues, jnp.conj(state.eigenvectors)), options

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False


def main() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 5))
    sym = jnp.asarray(m + m.T + 10 * np.eye(5))
    b = jnp.asarray(rng.standard_normal(5))

    def loss(matrix, solver):
        # Symmetrise inside, so that every perturbation of `matrix` keeps the operator symmetric.
        a = (matrix + matrix.T) / 2
        x = lx.linear_solve(lx.MatrixLinearOperator(a, lx.symmetric_tag), b, solver).value
        return jnp.sum(jnp.cos(x))

    x = lx.linear_solve(lx.MatrixLinearOperator(sym, lx.symmetric_tag), b, EighSolver()).value
    residual = float(jnp.linalg.norm(sym @ x - b))

    grad = jax.jit(jax.grad(loss), static_argnums=1)(sym, EighSolver())
    grad_lu = jax.grad(loss)(sym, lx.LU())
    direction = jnp.asarray(rng.standard_normal((5, 5)))
    h = 1e-6
    fd = (loss(sym + h * direction, EighSolver()) - loss(sym - h * direction, EighSolver())) / (
        2 * h
    )
    fd_error = float(abs(jnp.vdot(grad, direction) - fd))
    lu_error = float(jnp.max(jnp.abs(grad - grad_lu)))

    print(f"residual |A x - b|                 {residual:.2e}")
    print(f"grad vs finite difference          {fd_error:.2e}")
    print(f"grad vs the same gradient with LU  {lu_error:.2e}")
    # Central differences with h = 1e-6 are accurate to about h² · |f'''| + eps / h ≈ 1e-10.
    if not (residual < 1e-12 and fd_error < 1e-7 and lu_error < 1e-12):
        raise SystemExit("FAILED")
    print("ok")


if __name__ == "__main__":
    main()
