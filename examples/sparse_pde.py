"""A diffusion problem with a differentiable coefficient field, solved by `SparseLU` and
differentiated with respect to the coefficients.

On an n x n grid of cells in the unit square, solve `-div(k grad u) = 1` with `u = 0` on the
boundary, by a five-point finite-volume scheme: the conductance between two neighbouring cells is
the harmonic mean of their coefficients `k`. The matrix is assembled as a
`lx.SparseCOOLinearOperator` whose pattern is fixed and whose values are a differentiable function
of `k`. The loss is the mean temperature; its gradient with respect to every cell's `k` comes from
one factorization (reused by the backward solve), and is checked against central finite
differences in a random direction. The solution is checked against `scipy.sparse.linalg.spsolve`.
Exits non-zero if a check fails.

    python examples/sparse_pde.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

import linopx as lx

N = 40  # cells per side: N² = 1600 unknowns


NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def cells(n, di, dj):
    """The cells that have a neighbour at offset (di, dj), as a 2D slice."""
    return slice(max(-di, 0), n - max(di, 0)), slice(max(-dj, 0), n - max(dj, 0))


def pattern(n):
    """Rows and columns of the five-point matrix: the diagonal, then each neighbour offset."""
    idx = np.arange(n * n).reshape(n, n)
    rows, cols = [idx.ravel()], [idx.ravel()]
    for di, dj in NEIGHBOURS:
        si, sj = cells(n, di, dj)
        rows.append(idx[si, sj].ravel())
        cols.append(idx[si.start + di : si.stop + di, sj.start + dj : sj.stop + dj].ravel())
    return np.concatenate(rows), np.concatenate(cols)


ROWS, COLS = pattern(N)


def assemble(k):
    """Matrix values for the coefficient field `k` (n x n, positive), in the order of `pattern`."""
    n = k.shape[0]
    h2 = (1.0 / n) ** 2
    kp = jnp.pad(k, 1, mode="edge")  # boundary faces see the cell's own coefficient
    diag = jnp.zeros_like(k)
    off = []
    for di, dj in NEIGHBOURS:
        neighbour = kp[1 + di : n + 1 + di, 1 + dj : n + 1 + dj]
        conductance = 2 * k * neighbour / (k + neighbour) / h2  # harmonic mean over the face
        diag = diag + conductance  # faces on the boundary: Dirichlet u = 0 outside
        off.append(-conductance[cells(n, di, dj)].ravel())
    return jnp.concatenate([diag.ravel(), *off])


def mean_temperature(k):
    values = assemble(k)
    operator = lx.SparseCOOLinearOperator(
        values, ROWS, COLS, (N * N, N * N), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )
    u = lx.linear_solve(operator, jnp.ones(N * N), lx.SparseLU()).value
    return jnp.mean(u), u


def main() -> None:
    rng = np.random.default_rng(0)
    k = jnp.asarray(np.exp(0.5 * rng.standard_normal((N, N))))

    (loss, u), grad = jax.jit(jax.value_and_grad(mean_temperature, has_aux=True))(k)
    matrix = scipy.sparse.coo_matrix(
        (np.asarray(assemble(k)), (ROWS, COLS)), shape=(N * N, N * N)
    ).tocsc()
    reference = scipy.sparse.linalg.spsolve(matrix, np.ones(N * N))
    solve_error = float(np.max(np.abs(np.asarray(u) - reference)) / np.max(np.abs(reference)))

    direction = jnp.asarray(rng.standard_normal((N, N)))
    h = 1e-5
    fd = (mean_temperature(k + h * direction)[0] - mean_temperature(k - h * direction)[0]) / (2 * h)
    directional = float(jnp.vdot(grad, direction))
    grad_error = abs(directional - float(fd)) / abs(float(fd))

    print(f"{N * N} unknowns, mean temperature {float(loss):.6e}")
    print(f"relative difference from scipy spsolve       {solve_error:.2e}")
    print(f"gradient · direction {directional:.8e}, finite difference {float(fd):.8e}")
    print(f"relative difference                          {grad_error:.2e}")
    # Central differences with h = 1e-5 on a smooth function: truncation ~h² and rounding
    # ~eps/h relative to the loss, so agreement to 1e-6 is a meaningful check.
    if not (solve_error < 1e-10 and grad_error < 1e-6):
        raise SystemExit("FAILED")
    print("ok")


if __name__ == "__main__":
    main()
