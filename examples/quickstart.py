"""linopx quick start: solve a square system and a least-squares problem, and differentiate
through both. Checks its own answers against NumPy and finite differences, and exits non-zero if
any check fails.

    python examples/quickstart.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import linopx as lx


def main() -> None:
    rng = np.random.default_rng(0)
    failures = []

    def check(name: str, error: float, tol: float) -> None:
        ok = error <= tol
        print(f"  {name:<44} {error:9.2e}  (tolerance {tol:.0e})  {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(name)

    # 1. A square, well-posed system.
    a = jnp.asarray(rng.normal(size=(6, 6)) + 3 * np.eye(6))
    b = jnp.asarray(rng.normal(size=6))
    sol = lx.linear_solve(lx.MatrixLinearOperator(a), b)
    print(
        f"Square 6x6 system, solver chosen: {lx.AutoLinearSolver().select_solver(lx.MatrixLinearOperator(a))!r}"
    )
    check("residual |A x - b|", float(jnp.linalg.norm(a @ sol.value - b)), 1e-12)

    # Gradient of a scalar loss of the solution with respect to the matrix, by reverse mode,
    # checked against a central finite difference in one random direction.
    def loss(a):
        x = lx.linear_solve(lx.MatrixLinearOperator(a), b).value
        return jnp.sum(jnp.sin(x))

    grad = jax.jit(jax.grad(loss))(a)
    direction = jnp.asarray(rng.normal(size=a.shape))
    h = 1e-6
    fd = (loss(a + h * direction) - loss(a - h * direction)) / (2 * h)
    check("grad vs finite difference (square)", float(abs(jnp.vdot(grad, direction) - fd)), 1e-7)

    # 2. An overdetermined least-squares problem: 20 equations, 4 unknowns.
    m = jnp.asarray(rng.normal(size=(20, 4)))
    y = jnp.asarray(rng.normal(size=20))
    op = lx.MatrixLinearOperator(m)
    x = lx.linear_solve(op, y).value  # AutoLinearSolver(well_posed=None) -> QR for a tall matrix
    print(f"Least squares 20x4, solver chosen: {lx.AutoLinearSolver().select_solver(op)!r}")
    ref = np.linalg.lstsq(np.asarray(m), np.asarray(y), rcond=None)[0]
    check("|x - numpy.linalg.lstsq|", float(np.abs(np.asarray(x) - ref).max()), 1e-12)
    check("normal equations |Aᵀ(A x - b)|", float(jnp.linalg.norm(m.T @ (m @ x - y))), 1e-11)

    def ls_loss(m, y):
        x = lx.linear_solve(lx.MatrixLinearOperator(m), y).value
        return jnp.sum(x**2)

    gm, gy = jax.jit(jax.grad(ls_loss, argnums=(0, 1)))(m, y)
    dm = jnp.asarray(rng.normal(size=m.shape))
    dy = jnp.asarray(rng.normal(size=y.shape))
    fd = (ls_loss(m + h * dm, y + h * dy) - ls_loss(m - h * dm, y - h * dy)) / (2 * h)
    check(
        "grad vs finite difference (least squares)",
        float(abs(jnp.vdot(gm, dm) + jnp.vdot(gy, dy) - fd)),
        1e-7,
    )

    # 3. vmap: many right-hand sides, one factorization.
    B = jnp.asarray(rng.normal(size=(5, 6)))
    X = jax.vmap(lambda b: lx.linear_solve(lx.MatrixLinearOperator(a), b).value)(B)
    check(
        "vmap over 5 right-hand sides",
        float(np.abs(np.asarray(X) - np.linalg.solve(a, B.T).T).max()),
        1e-12,
    )

    if failures:
        raise SystemExit(f"quickstart: {len(failures)} check(s) failed: {failures}")
    print("All checks passed.")


if __name__ == "__main__":
    main()
