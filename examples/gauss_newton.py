"""Gauss-Newton for a nonlinear least-squares fit, with the whole loop under `jax.jit`.

Model: `y = a · exp(-k t) + c`. Each step linearises the residual `r(p)` at the current
parameters with `lx.JacobianLinearOperator` and solves the least-squares problem `J δ = -r` (a
20 x 3 tall system: `AutoLinearSolver` picks QR). The fitted parameters are checked against
`scipy.optimize.least_squares` on the same data. Exits non-zero if they disagree.

    python examples/gauss_newton.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import scipy.optimize

import linopx as lx


def model(params, t):
    a, k, c = params
    return a * jnp.exp(-k * t) + c


def residual(params, data):
    t, y = data
    return model(params, t) - y


@jax.jit
def gauss_newton(params, data):
    def step(_, params):
        jac = lx.JacobianLinearOperator(residual, params, data)
        delta = lx.linear_solve(jac, -residual(params, data)).value
        return params + delta

    return jax.lax.fori_loop(0, 25, step, params)


def main() -> None:
    rng = np.random.default_rng(0)
    t = jnp.linspace(0.0, 4.0, 20)
    true = jnp.array([2.5, 1.3, 0.5])
    y = model(true, t) + 0.01 * jnp.asarray(rng.standard_normal(20))
    data = (t, y)

    start = jnp.array([1.0, 1.0, 0.0])
    fitted = gauss_newton(start, data)

    reference = scipy.optimize.least_squares(
        lambda p: np.asarray(residual(jnp.asarray(p), data)),
        np.asarray(start),
        jac=lambda p: np.asarray(jax.jacfwd(residual)(jnp.asarray(p), data)),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    ).x
    gap = float(np.max(np.abs(np.asarray(fitted) - reference)))
    print(f"fitted (a, k, c) = {np.asarray(fitted)}  (data made with {np.asarray(true)})")
    print(f"scipy.optimize.least_squares: {reference}")
    print(f"max difference {gap:.2e}")
    # Both minimise the same smooth function to machine precision; 1e-8 leaves room for the
    # conditioning of the 3-parameter fit.
    if not gap < 1e-8:
        raise SystemExit("FAILED: Gauss-Newton disagrees with scipy.optimize.least_squares")
    print("ok")


if __name__ == "__main__":
    main()
