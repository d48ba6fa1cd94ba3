"""Iterative-solver benchmarks: linopx's CG and GMRES against `jax.scipy.sparse.linalg` and Lineax.

    python benchmarks/iterative.py           # full run
    python benchmarks/iterative.py --quick   # smaller problems, fewer repetitions

Each figure is the median of interleaved repetitions after warm-up, of jitted functions on this
machine's CPU; ratios are linopx / alternative (below 1 means linopx is faster). All solvers get
the same tolerance (`|b - A x| <= rtol |b|`); iteration counts are linopx's `stats["num_steps"]`.
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import linopx as lx
from benchmarks._timing import compile_times, interleaved, row, suite_main

try:
    import lineax
    from lineax._norm import two_norm  # SciPy's norm, for equal stopping tests
except ImportError:  # benchmark-only dependency
    lineax = None


def poisson(n):
    """The 5-point Laplacian on an n x n grid with zero boundary values (positive definite)."""

    def fn(u):
        p = jnp.pad(u, 1)
        return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]

    return fn


def cg_case(n, rtol, repeats, compile_repeats):
    fn = poisson(n)
    struct = jax.ShapeDtypeStruct((n, n), jnp.float64)
    b = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))

    def ours(b, throw=False):
        op = lx.FunctionLinearOperator(fn, struct, lx.positive_semidefinite_tag)
        return lx.linear_solve(op, b, lx.CG(rtol=rtol, atol=0.0), throw=throw)

    makers = {
        "linopx": lambda: lambda b: ours(b).value,
        "linopx throw": lambda: lambda b: ours(b, True).value,
        "jax.scipy": lambda: lambda b: jax.scipy.sparse.linalg.cg(fn, b, tol=rtol, atol=0.0)[0],
    }
    if lineax is not None:
        makers["lineax"] = lambda: (
            lambda b: (
                lineax.linear_solve(
                    lineax.FunctionLinearOperator(fn, struct, lineax.positive_semidefinite_tag),
                    b,
                    lineax.CG(rtol=rtol, atol=0.0, norm=two_norm),
                    throw=False,
                ).value
            )
        )
    stats = jax.jit(lambda b: ours(b).stats)(b)
    fns = {k: jax.jit(m()) for k, m in makers.items() if k != "linopx throw"}
    ref = np.asarray(fns["jax.scipy"](b))
    diff = float(np.abs(np.asarray(fns["linopx"](b)) - ref).max() / np.abs(ref).max())
    run = interleaved({k: (lambda f=f: f(b)) for k, f in fns.items()}, repeats)
    comp = compile_times(makers, (b,), compile_repeats)
    notes = {"steps": int(stats["num_steps"]), "rel_diff_vs_jax": f"{diff:.1e}"}
    size = f"{n}^2"
    return [row("CG Poisson run", size, run, **notes), row("CG Poisson compile", size, comp)]


def gmres_case(n, rtol, repeats, compile_repeats):
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(n, n)) / np.sqrt(n) + 2.0 * np.eye(n))
    b = jnp.asarray(rng.normal(size=n))

    def ours(a, b, throw=False):
        return lx.linear_solve(
            lx.MatrixLinearOperator(a), b, lx.GMRES(rtol=rtol, atol=0.0, restart=20), throw=throw
        )

    makers = {
        "linopx": lambda: lambda a, b: ours(a, b).value,
        "linopx throw": lambda: lambda a, b: ours(a, b, True).value,
        "jax.scipy": lambda: (
            lambda a, b: jax.scipy.sparse.linalg.gmres(
                lambda v: a @ v, b, tol=rtol, atol=0.0, restart=20
            )[0]
        ),
    }
    if lineax is not None:
        makers["lineax"] = lambda: (
            lambda a, b: (
                lineax.linear_solve(
                    lineax.MatrixLinearOperator(a),
                    b,
                    lineax.GMRES(rtol=rtol, atol=0.0, restart=20, norm=two_norm),
                    throw=False,
                ).value
            )
        )
    stats = jax.jit(lambda a, b: ours(a, b).stats)(a, b)
    fns = {k: jax.jit(m()) for k, m in makers.items() if k != "linopx throw"}
    ref = np.linalg.solve(np.asarray(a), np.asarray(b))
    diff = float(np.abs(np.asarray(fns["linopx"](a, b)) - ref).max() / np.abs(ref).max())
    run = interleaved({k: (lambda f=f: f(a, b)) for k, f in fns.items()}, repeats)
    comp = compile_times(makers, (a, b), compile_repeats)
    notes = {"steps": int(stats["num_steps"]), "rel_diff_vs_numpy": f"{diff:.1e}"}
    size = f"n={n}"
    return [row("GMRES dense run", size, run, **notes), row("GMRES dense compile", size, comp)]


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs; each thunk returns a list of rows."""
    repeats = 5 if quick else 20
    compile_repeats = 3 if quick else 9
    out = []
    for n in [64] if quick else [128, 512]:
        out.append((f"CG Poisson {n}²", lambda n=n: cg_case(n, 1e-6, repeats, compile_repeats)))
    m = 200 if quick else 500
    out.append((f"GMRES n={m}", lambda: gmres_case(m, 1e-8, repeats, compile_repeats)))
    return out


if __name__ == "__main__":
    suite_main(
        __doc__,
        cases,
        []
        if lineax is not None
        else ["note: lineax is not installed; its columns are skipped (pip install lineax)"],
    )
