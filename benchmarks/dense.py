"""Dense benchmarks: linopx against `jnp.linalg` and Lineax, side by side in one run.

    python benchmarks/dense.py           # full run
    python benchmarks/dense.py --quick   # small sizes, a smoke test

Each figure is the median of interleaved repetitions after warm-up, of jitted functions on this
machine's CPU; ratios are linopx / alternative (below 1 means linopx is faster).
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import linopx as lx  # noqa: E402
from benchmarks._timing import compile_times, fmt_time, interleaved, row, suite_main  # noqa: E402
from linopx._compat import geqrf  # noqa: E402

try:
    import lineax
except ImportError:  # benchmark-only dependency
    lineax = None


def square_cases(rng, sizes, repeats):
    rows = []
    for n in sizes:
        a = jnp.asarray(rng.normal(size=(n, n)) + n**0.5 * np.eye(n))
        b = jnp.asarray(rng.normal(size=n))
        fwd = {
            "linopx": jax.jit(
                lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value
            ),
            "jnp": jax.jit(jnp.linalg.solve),
        }
        loss = {
            "linopx": lambda a, b: jnp.sum(
                lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value ** 2
            ),
            "jnp": lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2),
        }
        if lineax is not None:
            fwd["lineax"] = jax.jit(
                lambda a, b: (
                    lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value
                )
            )
            loss["lineax"] = lambda a, b: jnp.sum(
                lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value ** 2
            )
        grad = {k: jax.jit(jax.grad(f, argnums=(0, 1))) for k, f in loss.items()}
        rows.append(
            row(
                "LU solve",
                f"n={n}",
                interleaved({k: (lambda f=f: f(a, b)) for k, f in fwd.items()}, repeats),
            )
        )
        rows.append(
            row(
                "LU grad",
                f"n={n}",
                interleaved({k: (lambda f=f: f(a, b)) for k, f in grad.items()}, repeats),
            )
        )
    return rows


def eager_case(rng, n, repeats):
    """A solve called outside `jax.jit`, as in a notebook or a script: each library's own
    per-call work (linopx and Lineax compile themselves once per signature)."""
    a = jnp.asarray(rng.normal(size=(n, n)) + n**0.5 * np.eye(n))
    b = jnp.asarray(rng.normal(size=n))
    fns = {
        "linopx": lambda: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value,
        "jnp": lambda: jnp.linalg.solve(a, b),
    }
    if lineax is not None:
        fns["lineax"] = lambda: (
            lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value
        )
    return [row("LU solve, eager (no jit)", f"n={n}", interleaved(fns, repeats))]


def multi_rhs_case(rng, n, k, repeats):
    a = jnp.asarray(rng.normal(size=(n, n)) + n**0.5 * np.eye(n))
    B = jnp.asarray(rng.normal(size=(n, k)))
    fns = {
        "linopx": jax.jit(
            lambda a, B: jax.vmap(
                lambda b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value, 1, 1
            )(B)
        ),
        "jnp": jax.jit(jnp.linalg.solve),
    }
    if lineax is not None:
        fns["lineax"] = jax.jit(
            lambda a, B: jax.vmap(
                lambda b: lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value,
                1,
                1,
            )(B)
        )
    ref = np.linalg.solve(np.asarray(a), np.asarray(B))
    for name, f in fns.items():
        err = np.abs(np.asarray(f(a, B)) - ref).max()
        assert err < 1e-8, (name, err)
    times = interleaved({k2: (lambda f=f: f(a, B)) for k2, f in fns.items()}, repeats)
    return [row(f"{k} RHS by vmap", f"n={n}", times)]


def compile_case(rng, n, repeats):
    a = jnp.asarray(rng.normal(size=(n, n)) + n**0.5 * np.eye(n))
    b = jnp.asarray(rng.normal(size=n))
    makers = {
        "linopx": lambda: (
            lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value
        ),
        "linopx throw=False": lambda: (
            lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU(), throw=False).value
        ),
        "jnp": lambda: lambda a, b: jnp.linalg.solve(a, b),
    }
    if lineax is not None:
        makers["lineax"] = lambda: (
            lambda a, b: lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value
        )
    times = compile_times(makers, (a, b), repeats)
    return [row("compile LU", f"n={n}", times)]


def least_squares_cases(rng, m, n, rank, repeats):
    rows = []
    a = jnp.asarray(rng.normal(size=(m, n)))
    b = jnp.asarray(rng.normal(size=m))
    fwd = {
        "linopx": jax.jit(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b).value),
        "jnp": jax.jit(lambda a, b: jnp.linalg.lstsq(a, b)[0]),
    }
    loss = {
        "linopx": lambda a, b: jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), b).value ** 2)
    }
    if lineax is not None:
        fwd["lineax"] = jax.jit(
            lambda a, b: (
                lineax.linear_solve(
                    lineax.MatrixLinearOperator(a), b, lineax.AutoLinearSolver(well_posed=None)
                ).value
            )
        )
        loss["lineax"] = lambda a, b: jnp.sum(
            lineax.linear_solve(
                lineax.MatrixLinearOperator(a), b, lineax.AutoLinearSolver(well_posed=None)
            ).value
            ** 2
        )
    ref = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0]
    assert np.abs(np.asarray(fwd["linopx"](a, b)) - ref).max() < 1e-10
    grad = {k: jax.jit(jax.grad(f, argnums=(0, 1))) for k, f in loss.items()}
    # Timed in the same rounds, reported as notes: the first step of any Householder QR alone
    # (LAPACK geqrf, the floor for linopx's QR here), and the normal equations, which linopx offers
    # as `Normal(Cholesky())` (faster, but with error growing like cond(A)², not cond(A)).
    extra = {
        "LAPACK geqrf alone": jax.jit(lambda a, b: geqrf(a)),
        "linopx Normal(Cholesky())": jax.jit(
            lambda a, b: (
                lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.Normal(lx.Cholesky())).value
            )
        ),
    }
    times = interleaved({k: (lambda f=f: f(a, b)) for k, f in {**fwd, **extra}.items()}, repeats)
    notes = {k: fmt_time(times.pop(k)) for k in extra}
    rows.append(row("lstsq", f"{m}x{n}", times, **notes))
    rows.append(
        row(
            "lstsq grad",
            f"{m}x{n}",
            interleaved({k: (lambda f=f: f(a, b)) for k, f in grad.items()}, repeats),
        )
    )

    # Rank-deficient: well_posed=False.
    d = jnp.asarray(rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)))
    fwd = {
        "linopx": jax.jit(
            lambda a, b: (
                lx.linear_solve(
                    lx.MatrixLinearOperator(a), b, lx.AutoLinearSolver(well_posed=False)
                ).value
            )
        ),
        "jnp": jax.jit(lambda a, b: jnp.linalg.lstsq(a, b)[0]),
    }
    if lineax is not None:
        fwd["lineax"] = jax.jit(
            lambda a, b: (
                lineax.linear_solve(
                    lineax.MatrixLinearOperator(a), b, lineax.AutoLinearSolver(well_posed=False)
                ).value
            )
        )
    ref = np.linalg.lstsq(np.asarray(d), np.asarray(b), rcond=None)[0]
    err = np.abs(np.asarray(fwd["linopx"](d, b)) - ref).max() / np.abs(ref).max()
    assert err < 1e-8, err
    times = interleaved({k: (lambda f=f: f(d, b)) for k, f in fwd.items()}, repeats)
    rows.append(
        row(
            f"rank-deficient (rank {rank})",
            f"{m}x{n}",
            times,
            **{"rel. diff vs numpy": f"{err:.1e}"},
        )
    )
    return rows


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs; each thunk returns a list of rows (see `_timing.row`)."""
    rng = np.random.default_rng(0)
    repeats = 5 if quick else 30
    out = []
    for n in [50] if quick else [100, 1000]:
        out.append((f"LU n={n}", lambda n=n: square_cases(rng, [n], repeats)))
    out.append(("eager LU n=100", lambda: eager_case(rng, 100, repeats)))
    n_rhs = 100 if quick else 500
    out.append((f"100 RHS n={n_rhs}", lambda: multi_rhs_case(rng, n_rhs, 100, repeats)))
    out.append(("compile LU n=50", lambda: compile_case(rng, 50, 3 if quick else 9)))
    out.append(("least squares 400x100", lambda: least_squares_cases(rng, 400, 100, 80, repeats)))
    return out


if __name__ == "__main__":
    suite_main(
        __doc__,
        cases,
        []
        if lineax is not None
        else ["note: lineax is not installed; its columns are skipped (pip install lineax)"],
    )
