"""Fit a Gaussian process's hyperparameters by gradient descent on its negative log likelihood,
with one Cholesky factorization shared by the solve and the log-determinant.

For observations `y` at inputs `x`, a zero-mean Gaussian process with an RBF kernel plus noise has
covariance `K = s² exp(-|x_i - x_j|² / (2 l²)) + σ² I` and negative log likelihood

    NLL = ½ yᵀ K⁻¹ y + ½ log|K| + (n/2) log 2π.

Both terms come from one factorization of `K`: `state = solver.init(K, {})` is passed to
`lx.linear_solve` (for `K⁻¹ y`) and to `lx.slogdet` (for `log|K|`), and the gradient with respect
to the three log-hyperparameters (`log l`, `log s²`, `log σ²`) reuses it as well (the solve's
backward pass is one more solve with the same factor, the log-determinant's derivative is
`tr(K⁻¹ K')` from the same factor). The value and gradient are checked against a hand-written
`jax.scipy.linalg.cho_factor` / `cho_solve` version before and after the fit, and the traced
value-and-gradient program is checked to contain a single Cholesky factorization (it would hold two
if `linear_solve` and `slogdet` each made their own state). Exits non-zero if a check fails.

    python examples/gaussian_process.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.extend
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

import linopx as lx

N = 200  # observations
STEPS = 300  # gradient-descent steps
LEARNING_RATE = 0.05  # on the log-hyperparameters, for the NLL divided by N
TRUE = {"lengthscale": 0.3, "signal variance": 1.5, "noise variance": 0.01}


def kernel(log_params, x):
    log_lengthscale, log_signal, log_noise = log_params
    sq_dist = (x[:, None] - x[None, :]) ** 2
    k = jnp.exp(log_signal) * jnp.exp(-0.5 * sq_dist / jnp.exp(2 * log_lengthscale))
    return k + jnp.exp(log_noise) * jnp.eye(x.shape[0])


def nll(log_params, x, y):
    """The negative log likelihood through linopx: one factorization for the solve and the
    log-determinant."""
    K = lx.MatrixLinearOperator(kernel(log_params, x), lx.positive_semidefinite_tag)
    solver = lx.Cholesky()
    state = solver.init(K, {})
    alpha = lx.linear_solve(K, y, solver, state=state).value
    _sign, logdet = lx.slogdet(K, solver, state=state)  # sign = +1: K is positive definite
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def nll_reference(log_params, x, y):
    """The same, by hand with `jax.scipy.linalg`: log|K| = 2 Σ log L_ii."""
    factor = jsl.cho_factor(kernel(log_params, x), lower=True)
    alpha = jsl.cho_solve(factor, y)
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(factor[0])))
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


value_and_grad = jax.jit(jax.value_and_grad(nll))
value_and_grad_reference = jax.jit(jax.value_and_grad(nll_reference))


@jax.jit
def fit(log_params, x, y):
    """`STEPS` steps of plain gradient descent on NLL / N, all inside one compiled loop."""

    def step(log_params, _):
        value, grad = jax.value_and_grad(nll)(log_params, x, y)
        return log_params - LEARNING_RATE * grad / x.shape[0], value

    return jax.lax.scan(step, log_params, None, length=STEPS)


def count_primitives(jaxpr, name):
    """How many times the primitive `name` occurs in a jaxpr, counting nested jaxprs."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += count_primitives(sub.jaxpr, name)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += count_primitives(sub, name)
    return count


def main() -> None:
    rng = np.random.default_rng(0)
    failures = []

    def check(name: str, error: float, tol: float) -> None:
        ok = error <= tol
        print(f"  {name:<52} {error:9.2e}  (tolerance {tol:.0e})  {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(name)

    # Synthetic data: one draw from the Gaussian process with the true hyperparameters.
    x = jnp.asarray(np.sort(rng.uniform(0.0, 5.0, N)))
    true = jnp.log(jnp.asarray(list(TRUE.values())))
    factor = np.linalg.cholesky(np.asarray(kernel(true, x)))
    y = jnp.asarray(factor @ rng.standard_normal(N))

    def compare(label, log_params):
        # Both sides factorize the same matrix with LAPACK's Cholesky in float64 and differ only
        # in rounding, of relative size about cond(K) · eps. Here cond(K) ≤ 1 + N s² / σ², about
        # 2e3 at the start and 2e4 at the fitted values, so about 5e-12 at worst: 1e-9 leaves a
        # margin of 200, and still catches a wrong term (a missing ½, a log|K| off by a factor,
        # a gradient missing the log-determinant's part) by many orders of magnitude.
        value, grad = value_and_grad(log_params, x, y)
        ref_value, ref_grad = value_and_grad_reference(log_params, x, y)
        scale = float(jnp.max(jnp.abs(ref_grad)))
        check(f"{label}: NLL vs cho_factor/cho_solve (relative)",
              float(abs(value - ref_value) / abs(ref_value)), 1e-9)  # fmt: skip
        check(f"{label}: gradient vs cho_factor/cho_solve (relative)",
              float(jnp.max(jnp.abs(grad - ref_grad))) / scale, 1e-9)  # fmt: skip
        return float(value)

    start = jnp.log(jnp.asarray([1.0, 1.0, 0.1]))  # lengthscale, signal variance, noise variance
    print(f"Gaussian process, {N} points, RBF kernel + noise; {STEPS} gradient-descent steps")
    nll_start = compare("start", start)

    # One factorization per evaluation: a single Cholesky in the whole value-and-gradient program.
    jaxpr = jax.make_jaxpr(jax.value_and_grad(nll))(start, x, y).jaxpr
    check("Cholesky factorizations per value-and-gradient - 1",
          abs(count_primitives(jaxpr, "cholesky") - 1), 0)  # fmt: skip

    fitted, history = fit(start, x, y)
    nll_end = compare("end", fitted)

    print(f"NLL: {nll_start:.4f} at the start -> {nll_end:.4f} after the fit")
    check("NLL increase over the fit (end - start, if > 0)", max(nll_end - nll_start, 0.0), 0.0)
    # Gradient descent with a small enough step never increases the objective; 1e-9 allows for
    # rounding in NLL values of order 100.
    check("largest step-to-step NLL increase (if > 0)",
          max(float(jnp.max(jnp.diff(history))), 0.0), 1e-9)  # fmt: skip
    fitted_values = np.exp(np.asarray(fitted))
    print(f"  {'hyperparameter':<18} {'start':>8} {'fitted':>8} {'true':>8}")
    for (name, true_value), s, f in zip(TRUE.items(), np.exp(np.asarray(start)), fitted_values):
        print(f"  {name:<18} {s:8.4f} {f:8.4f} {true_value:8.4f}")

    if failures:
        raise SystemExit(f"gaussian_process: {len(failures)} check(s) failed: {failures}")
    print("All checks passed.")


if __name__ == "__main__":
    main()
