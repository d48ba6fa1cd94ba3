"""Sparse direct-solve benchmarks: linopx's `SparseLU` and `SparseCholesky` against the same
factorizers called directly (SuperLU, PARDISO, CHOLMOD, UMFPACK), klujax and
`jax.experimental.sparse.linalg.spsolve`, on Poisson matrices.

    python benchmarks/sparse.py           # 2-D Poisson 300² and 1000², 3-D Poisson 30³ and 40³
    python benchmarks/sparse.py --quick   # 300² and 30³ only

How it measures:

- Every (problem, method) pair runs in its own subprocess, so that one method's memory and
  library start-up (MKL, klujax's global JAX settings) cannot affect another's figures.
- Times are medians of a few runs after one warm-up run (which includes compilation). A method
  whose single run takes over a second is timed once.
- linopx's factorization cache is cleared before every timed run, so a forward is a full
  factorization + solve, and a gradient (w.r.t. the values and `b`) is one full forward + backward
  from a cold cache: the cache can only help *within* a gradient (reusing the forward factorization
  for the backward solve), which is its purpose.
- "peak MiB" is the growth of the process's peak resident set size (`resource.getrusage(
  RUSAGE_SELF).ru_maxrss`, host memory, which on CPU includes JAX's buffers) over its value after
  the problem was built and everything imported and compiled: the extra memory the timed solves
  needed at their peak (for linopx and klujax: the larger of forward and gradient).
- The direct baselines get the matrix already in their input format (CSC for SuperLU, CSR for
  PARDISO); linopx's figures include its own COO-to-compressed conversion and the hashing of the
  values for the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBLEMS = {
    "2D Poisson 300²": ("2d", 300),
    "2D Poisson 1000²": ("2d", 1000),
    "3D Poisson 30³": ("3d", 30),
    "3D Poisson 40³": ("3d", 40),
}
QUICK = ["2D Poisson 300²", "3D Poisson 30³"]
METHODS = [
    "linopx-superlu", "linopx-pardiso", "linopx-superlu-traced", "linopx-pardiso-traced",
    "linopx-cholmod", "linopx-umfpack",
    "splu", "pypardiso", "cholmod", "umfpack", "klujax", "jax-spsolve",
]  # fmt: skip
# The SuiteSparse libraries called directly (through kvxopt, as linopx calls them).
DIRECT = {
    "superlu": "splu", "pardiso": "pypardiso", "cholmod": "cholmod", "umfpack": "umfpack",
}  # fmt: skip
# KLU and jax's spsolve (SuperLU with SciPy's default COLAMD ordering) take minutes on 10⁶ unknowns.
# A traced pattern (indices passed into `jit`) is measured on 2D Poisson 300² only.
SKIP = {("2D Poisson 1000²", "klujax"), ("2D Poisson 1000²", "jax-spsolve")} | {
    (p, f"linopx-{b}-traced") for p in PROBLEMS if p != "2D Poisson 300²" for b in ("superlu", "pardiso")
}


def poisson(kind: str, k: int):
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    if kind == "2d":
        return (sp.kron(eye, t) + sp.kron(t, eye)).tocoo()
    return (
        sp.kron(sp.kron(eye, eye), t)
        + sp.kron(sp.kron(eye, t), eye)
        + sp.kron(sp.kron(t, eye), eye)
    ).tocoo()


def _peak_mib() -> float:
    """The peak resident set size of this process: `VmHWM` on Linux (`ru_maxrss` would also count
    the peak of the `python -m benchmarks` parent, see `benchmarks/sparse_memory.py`), else
    `ru_maxrss`."""
    from benchmarks.sparse_memory import _peak_mib as peak

    return peak()


_CALLS = [0]


def _time(fn, before=None, repeats: int = 3) -> float:
    """Median seconds of `fn()` (blocking), after one warm-up; `before()` runs untimed each time.
    The number of calls made (warm-up included) is left in `_CALLS[0]`."""
    if before:
        before()
    t0 = time.perf_counter()
    _block(fn())
    first = time.perf_counter() - t0
    n = repeats if first < 1.0 else 1
    out = []
    for _ in range(n):
        if before:
            before()
        t0 = time.perf_counter()
        _block(fn())
        out.append(time.perf_counter() - t0)
    _CALLS[0] = 1 + n
    return statistics.median(out)


def _block(x):
    import jax

    return jax.tree_util.tree_map(lambda a: getattr(a, "block_until_ready", lambda: a)(), x)


def child(problem: str, method: str, repeats: int) -> dict:
    """Measure one method on one problem; runs inside its own process."""
    import numpy as np

    kind, k = PROBLEMS[problem]
    a = poisson(kind, k)
    n = a.shape[0]
    rng = np.random.default_rng(0)
    b_np = rng.normal(size=n)
    w_np = rng.normal(size=n)
    out: dict = {"problem": problem, "method": method, "n": n, "nnz": int(a.nnz)}

    if method.startswith("linopx"):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        sys.path.insert(0, ROOT)
        import linopx as lx
        from linopx.solvers import sparse as S

        backend = method.split("-")[1]
        if backend in ("cholmod", "umfpack"):
            from linopx.solvers.sparse import _suitesparse

            if not _suitesparse.available():
                return {**out, "note": 'not installed (pip install "linopx[suitesparse]")'}
        # CHOLMOD is a Cholesky: the operator carries the positive definite tag it needs.
        tags = (lx.positive_semidefinite_tag,) if backend == "cholmod" else ()
        op = lx.SparseCOOLinearOperator.from_scipy(a, *tags)
        solver = lx.SparseCholesky(backend) if backend == "cholmod" else lx.SparseLU(backend)
        b, w = jnp.asarray(b_np), jnp.asarray(w_np)
        # "-traced": the indices are arguments of the jitted function (a traced pattern, as with a
        # BCOO passed into `jit`), rebuilt and looked up by digest on the host at every call.
        index = (jnp.asarray(op.rows), jnp.asarray(op.cols)) if method.endswith("-traced") else ()

        def solve(v, b, *index):
            rows, cols = index if index else (op.rows, op.cols)
            o = lx.SparseCOOLinearOperator(v, rows, cols, op.shape, *tags)
            return lx.linear_solve(o, b, solver).value

        # Compile ahead of time and start the factorizer on a tiny matrix, so that the baseline
        # below includes compiled code and library start-up but no solve of this problem.
        fwd_c = jax.jit(solve).lower(op.values, b, *index).compile()
        loss = lambda v, b, *index: jnp.dot(w, solve(v, b, *index))
        grad_c = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(op.values, b, *index).compile()
        fwd = lambda v, b: fwd_c(v, b, *index)  # noqa: E731
        grad = lambda v, b: grad_c(v, b, *index)  # noqa: E731
        tiny = lx.SparseCOOLinearOperator(
            jnp.array([2.0, 3.0]), np.array([0, 1]), np.array([0, 1]), (2, 2), *tags
        )
        _block(lx.linear_solve(tiny, jnp.ones(2), solver).value)
        S.clear_cache()
        base = _peak_mib()
        out["forward"] = _time(lambda: fwd(op.values, b), S.clear_cache, repeats)
        S.reset_counters()
        out["grad"] = _time(lambda: grad(op.values, b), S.clear_cache, repeats)
        info = S.cache_info()
        out["factorizations per grad"] = sum(info["factorizations"].values()) / _CALLS[0]
        x = np.asarray(fwd(op.values, b))
    elif method == "splu":
        from scipy.sparse.linalg import splu

        csc = a.tocsc()
        base = _peak_mib()
        out["forward"] = _time(
            lambda: splu(csc, permc_spec="MMD_AT_PLUS_A").solve(b_np), None, repeats
        )
        x = splu(csc, permc_spec="MMD_AT_PLUS_A").solve(b_np)
    elif method == "pypardiso":
        import pypardiso

        csr = a.tocsr()
        solver = pypardiso.PyPardisoSolver()
        tiny = a.tocsr()[:2, :2]
        solver.factorize(tiny)  # MKL start-up, outside the baseline
        solver.solve(tiny, np.ones(2))

        def run():
            solver.factorize(csr)  # always phase 12: a fresh analysis and factorization
            return solver.solve(csr, b_np)

        base = _peak_mib()
        out["forward"] = _time(run, None, repeats)
        x = run()
    elif method in ("cholmod", "umfpack"):
        try:
            from kvxopt import cholmod, matrix, spmatrix, umfpack
        except ImportError:
            return {**out, "note": 'kvxopt not installed (pip install "linopx[suitesparse]")'}
        # The matrix in kvxopt's format is built outside the timing (CHOLMOD reads the lower
        # triangle), as SciPy's CSC is for splu.
        m = a.tocoo()
        if method == "cholmod":
            keep = m.row >= m.col
            m = type(m)((m.data[keep], (m.row[keep], m.col[keep])), shape=m.shape)
        kv = spmatrix(
            matrix(m.data), matrix(m.row.astype(np.int64)), matrix(m.col.astype(np.int64)), m.shape
        )

        def run():
            rhs = matrix(b_np)
            if method == "cholmod":
                f = cholmod.symbolic(kv, uplo="L")
                cholmod.numeric(kv, f)
                cholmod.solve(f, rhs)
            else:
                umfpack.solve(kv, umfpack.numeric(kv, umfpack.symbolic(kv)), rhs)
            return np.array(rhs).ravel()

        base = _peak_mib()
        out["forward"] = _time(run, None, repeats)
        x = run()
    elif method == "klujax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        try:
            import klujax  # after setup: it switches on x64 and the CPU platform process-wide
        except ImportError:
            return {**out, "note": "klujax not installed (pip install klujax)"}
        ai, aj = jnp.asarray(a.row, jnp.int32), jnp.asarray(a.col, jnp.int32)
        ax, b, w = jnp.asarray(a.data), jnp.asarray(b_np), jnp.asarray(w_np)

        def solve(ax, b):
            return klujax.solve(ai, aj, ax, b[:, None])[:, 0]

        fwd = jax.jit(solve).lower(ax, b).compile()
        loss = lambda ax, b: jnp.dot(w, solve(ax, b))
        grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(ax, b).compile()
        base = _peak_mib()
        out["forward"] = _time(lambda: fwd(ax, b), None, repeats)
        out["grad"] = _time(lambda: grad(ax, b), None, repeats)
        x = np.asarray(fwd(ax, b))
    elif method == "jax-spsolve":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        try:
            from jax.experimental.sparse.linalg import spsolve
        except ImportError:
            return {**out, "note": "jax.experimental.sparse.linalg.spsolve absent"}
        csr = a.tocsr()
        data, idx, ptr = (jnp.asarray(x) for x in (csr.data, csr.indices, csr.indptr))
        b = jnp.asarray(b_np)
        fwd = jax.jit(lambda d, b: spsolve(d, idx, ptr, b)).lower(data, b).compile()
        base = _peak_mib()
        out["forward"] = _time(lambda: fwd(data, b), None, repeats)
        out["note"] = "forward only: its gradient re-factorizes the explicit transpose"
        x = np.asarray(fwd(data, b))
    else:
        raise ValueError(method)
    out["peak MiB"] = _peak_mib() - base
    r = a.tocsr() @ x - b_np
    out["residual"] = float(np.linalg.norm(r) / np.linalg.norm(b_np))
    return out


def _fmt(t):
    if t is None:
        return ""
    return f"{t * 1e3:.0f} ms" if t < 10 else f"{t:.1f} s"


def measure(problem: str, repeats: int) -> list[dict]:
    """Every method on one problem, each in its own subprocess."""
    results = []
    for method in METHODS:
        if (problem, method) in SKIP:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", problem, method, str(repeats)]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"problem": problem, "method": method, "note": f"failed: {err[:90]}"})
            continue
        results.append(json.loads(lines[-1]))
    return results


def run(quick: bool = False) -> list[dict]:
    problems = QUICK if quick else list(PROBLEMS)
    repeats = 3 if quick else 5
    return [r for problem in problems for r in measure(problem, repeats)]


def report_rows(results: list[dict]) -> list[dict]:
    """The results as rows of the benchmark report (`benchmarks/_timing.row`): per problem and
    linopx backend, the forward against the same factorizer called directly, klujax and jax's
    spsolve, and the gradient against klujax's; notes carry grad/forward, factorizations per
    gradient and peak memory."""
    from benchmarks._timing import row

    out = []
    by = {(r["problem"], r["method"]): r for r in results}
    for problem, (kind, k) in PROBLEMS.items():
        size = f"{k}^{2 if kind == '2d' else 3}"
        for backend, direct in DIRECT.items():
            mine = by.get((problem, f"linopx-{backend}"), {})
            if "forward" not in mine:
                continue
            fwd = {"linopx": mine["forward"]}
            # The SuiteSparse rows also show SuperLU called directly (the goal is a multiple of it).
            extra = ("splu",) if backend in ("cholmod", "umfpack") else ()
            for name in (direct, *extra, "klujax", "jax-spsolve"):
                if "forward" in by.get((problem, name), {}):
                    fwd[name] = by[(problem, name)]["forward"]
            notes = {
                "peak MiB": f"{mine.get('peak MiB', float('nan')):.0f}",
                "direct's peak MiB": f"{by.get((problem, direct), {}).get('peak MiB', float('nan')):.0f}",
            }
            case = f"{kind.upper()} Poisson, {backend}"
            out.append(row(f"{case}: forward", size, fwd, **notes))
            traced = by.get((problem, f"linopx-{backend}-traced"), {})
            for what in ("forward", "grad"):
                if what in traced and what in mine:
                    out.append(
                        row(
                            f"{case}: {what}, traced pattern vs concrete",
                            size,
                            {"linopx traced": traced[what], "linopx": mine[what]},
                            base="linopx traced",
                        )
                    )
            if "grad" in mine:
                grad = {"linopx": mine["grad"]}
                if "grad" in by.get((problem, "klujax"), {}):
                    grad["klujax"] = by[(problem, "klujax")]["grad"]
                notes = {
                    "grad/forward": f"{mine['grad'] / mine['forward']:.2f}",
                    "factorizations per grad": f"{mine.get('factorizations per grad', float('nan')):.1f}",
                }
                out.append(row(f"{case}: grad", size, grad, **notes))
    return out


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs for `python -m benchmarks`."""
    repeats = 3 if quick else 5
    return [
        (problem, lambda problem=problem: report_rows(measure(problem, repeats)))
        for problem in (QUICK if quick else list(PROBLEMS))
    ]


def table(results: list[dict]) -> list[dict]:
    rows = []
    by = {(r["problem"], r["method"]): r for r in results}
    for r in results:
        row = {
            "problem": r["problem"],
            "method": r["method"],
            "forward": _fmt(r.get("forward")),
            "grad": _fmt(r.get("grad")),
            "grad/fwd": f"{r['grad'] / r['forward']:.2f}" if "grad" in r else "",
            "peak MiB": f"{r['peak MiB']:.0f}" if "peak MiB" in r else "",
            "rel. residual": f"{r['residual']:.1e}" if "residual" in r else "",
            "note": r.get("note", ""),
        }
        direct = {
            "linopx-superlu": "splu",
            "linopx-pardiso": "pypardiso",
            "linopx-cholmod": "cholmod",
            "linopx-umfpack": "umfpack",
            "linopx-superlu-traced": "linopx-superlu",
            "linopx-pardiso-traced": "linopx-pardiso",
        }.get(r["method"])
        ref = by.get((r["problem"], direct)) if direct else None
        if ref and "forward" in ref and "forward" in r:
            row["fwd vs direct"] = f"{r['forward'] / ref['forward']:.2f}"
        klu = by.get((r["problem"], "klujax"))
        if r["method"].startswith("linopx") and klu and "forward" in klu:
            row["fwd vs klujax"] = f"{r['forward'] / klu['forward']:.2f}"
            row["grad vs klujax"] = f"{r['grad'] / klu['grad']:.2f}"
        splu_ref = by.get((r["problem"], "splu"))
        if r["method"] in ("linopx-cholmod", "linopx-umfpack") and splu_ref and "forward" in r:
            row["fwd vs splu"] = f"{r['forward'] / splu_ref['forward']:.2f}"
        if "factorizations per grad" in r:
            row["factorizations/grad"] = f"{r['factorizations per grad']:.1f}"
        rows.append(row)
    return rows


def _print_table(rows: list[dict], columns: list[str]) -> None:
    """A Markdown table of the columns that have any value."""
    columns = [c for c in columns if any(r.get(c) for r in rows)]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|-" + "-|-".join("-" * widths[c] for c in columns) + "-|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smaller problems only")
    parser.add_argument(
        "--child", nargs=3, metavar=("PROBLEM", "METHOD", "REPEATS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        problem, method, repeats = args.child
        print(json.dumps(child(problem, method, int(repeats))))
        return
    results = run(args.quick)
    columns = [
        "problem", "method", "forward", "grad", "grad/fwd", "fwd vs direct", "fwd vs splu",
        "fwd vs klujax",
        "grad vs klujax", "factorizations/grad", "peak MiB", "rel. residual", "note",
    ]  # fmt: skip
    print(f"{os.cpu_count()} CPU cores; ratios are linopx / other (below 1: linopx faster)")
    _print_table(table(results), columns)


if __name__ == "__main__":
    main()
