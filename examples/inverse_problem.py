"""An inverse problem: recover the diagonal of an operator from the solution it produces.

The unknown operator is `A = diag(d)`. Solving `A x = b` with `b = 1` gives `x = 1 / d`; we observe
the target `x* = [1/2, 1/4, 1/8]` and recover `d = [2, 4, 8]` by gradient descent, differentiating
through `lx.linear_solve`. The parameters are `log d` (so `d` stays positive) and the loss is the
misfit of the logarithms, `sum((log x - log x*)²)`: it weighs every component alike (the targets
span a factor of four), so one fixed step size suits all three. Exits non-zero if the answer is
wrong.

    python examples/inverse_problem.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp

import linopx as lx

TRUE = jnp.array([2.0, 4.0, 8.0])
TARGET = 1.0 / TRUE
B = jnp.ones(3)


def loss(log_d):
    operator = lx.DiagonalLinearOperator(jnp.exp(log_d))
    x = lx.linear_solve(operator, B).value
    return jnp.sum((jnp.log(x) - jnp.log(TARGET)) ** 2)


@jax.jit
def descend(log_d):
    def step(_, log_d):
        return log_d - 0.25 * jax.grad(loss)(log_d)

    return jax.lax.fori_loop(0, 100, step, log_d)


def main() -> None:
    log_d = descend(jnp.zeros(3))  # start from d = [1, 1, 1]
    d = jnp.exp(log_d)
    error = float(jnp.max(jnp.abs(d - TRUE) / TRUE))
    print(f"recovered d = {d}  (true {TRUE}), loss {float(loss(log_d)):.2e}")
    print(f"max relative error {error:.2e}")
    if not error < 1e-10:
        raise SystemExit("FAILED: the diagonal was not recovered")
    print("ok")


if __name__ == "__main__":
    main()
