"""Large sparse systems, direct or iterative: time and peak memory of every way linopx solves a large
sparse system, against SciPy and pyamg, on Poisson problems of growing size.

    python benchmarks/large_sparse.py            # full sizes (about 15 min)
    python benchmarks/large_sparse.py --quick    # tiny sizes, a smoke test
    python -m benchmarks --suites large_sparse --out /tmp/ls   # as part of the report machinery

Problems: the Laplacian (5-point in 2-D, 7-point in 3-D; symmetric positive definite) on grids of
growing size, and a nonsymmetric 2-D convection-diffusion operator (the 5-point Laplacian plus a
first-order upwind convection term of unit grid Péclet number in both directions).

Methods, on the Poisson problems (right-hand side `b` random, relative tolerance 1e-8 with
`atol = 0`, the same stopping test `|b - A x| <= 1e-8 |b|` everywhere):

- "CG", "CG+Jacobi", "CG+AMG": `lx.CG` alone, with `lx.jacobi_preconditioner(A)` and with
  `lx.amg_preconditioner(A)` (pyamg's smoothed aggregation, one V-cycle per application; its
  setup on the host is included in the time and reported apart in the details);
- "SparseLU superlu" / "pardiso" / "umfpack" and "SparseCholesky cholmod": linopx's sparse direct
  solves with each installed backend (factorization + solve; the factorization cache cleared
  before every run);
- references: "scipy cg" (`scipy.sparse.linalg.cg`), "pyamg cg" (`pyamg`'s own
  `smoothed_aggregation_solver(A).solve(b, accel="cg")`, setup included) and "scipy spsolve"
  (SuperLU with SciPy's default ordering).

On the convection-diffusion problem: "GMRES+ILU" (`lx.GMRES(restart=30)` with
`lx.ilu_preconditioner(A, drop_tol=1e-4, fill_factor=10)`, setup included), "SparseLU superlu",
and the references "scipy gmres+spilu" (the same ILU through SciPy's `gmres`) and "scipy spsolve".

Plus the sparse matrix-vector product: SciPy's CSR `A @ x` (and its transposed product `A.T @ x`,
a CSC product) against linopx's jitted `A.mv(x)` and `A.T.mv(x)`, as they run by default (the
native CPU kernel, `linopx/_native/`) and on the pure-XLA path that is the fallback (the diagonal
form that a stencil matrix takes there).

How it measures:

- Every (problem, method) pair runs in a fresh subprocess restricted to one CPU
  (`os.sched_setaffinity`) with `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` = 1:
  single-threaded for real. (XLA's CPU client splits large elementwise loops over a thread pool
  as wide as the CPUs the process may use, whatever its flags say; on a loaded machine a split
  loop then waits for a descheduled thread, so one CPU is also the fair comparison with SciPy.)
- linopx's solves are jitted and compiled ahead of time, and each direct backend is started on a
  tiny matrix, before the baseline. Then one timed run; if it took under 2 s, two more, and the
  time is the median.
- "peak MiB" is the growth of the peak resident set size (`VmHWM`, lowered to the resident size
  at the baseline: see `benchmarks/sparse_memory.py`) over the baseline, taken after setup: the
  extra host memory the solves needed, matrix and right-hand side excluded.
- Direct solves whose fill would exceed this machine's budget are not run and say so in the
  report ("skipped: over cap"): SuperLU (linopx's and `spsolve`) on 3-D grids of 64³ and more,
  UMFPACK, PARDISO and CHOLMOD on 3-D grids of 96³. Any run over the time cap (`CAP_SECONDS` per
  subprocess) is stopped and reported the same way.
- SpMV: one subprocess per problem, the six products interleaved, each the mean of 20 calls;
  the figure is the minimum over 15 rounds.
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
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
}
RTOL = 1e-8
CAP_SECONDS = 150
SIZES = {"2d": (100, 200, 300, 500), "3d": (20, 40, 64, 96), "cd": (100, 200, 300)}
QUICK_SIZES = {"2d": (20, 40), "3d": (6, 10), "cd": (20,)}
KIND_NAMES = {"2d": "2D Poisson", "3d": "3D Poisson", "cd": "2D convection-diffusion"}
SPD_METHODS = (
    "CG",
    "CG+Jacobi",
    "CG+AMG",
    "SparseLU superlu",
    "SparseLU pardiso",
    "SparseLU umfpack",
    "SparseCholesky cholmod",
    "scipy cg",
    "pyamg cg",
    "scipy spsolve",
)
NONSYM_METHODS = ("GMRES+ILU", "SparseLU superlu", "scipy gmres+spilu", "scipy spsolve")
DIRECT = ("SparseLU superlu", "SparseLU pardiso", "SparseLU umfpack", "SparseCholesky cholmod")
ITERATIVE = ("CG", "CG+Jacobi", "CG+AMG")


def over_cap(kind: str, k: int, method: str) -> bool:
    """Direct solves whose fill is known to exceed the budget of this suite (see the docstring)."""
    if kind != "3d":
        return False
    if method in ("SparseLU superlu", "scipy spsolve"):
        return k >= 64
    if method in ("SparseLU umfpack", "SparseLU pardiso", "SparseCholesky cholmod"):
        return k >= 96
    return False


def size_label(kind: str, k: int) -> str:
    return f"{k}^3" if kind == "3d" else f"{k}^2"


# ---------------------------------------------------------------------------------------------
# Problems


def poisson(kind: str, k: int):
    """The Laplacian on a `k`-point grid per axis (2-D or 3-D), as a row-sorted COO matrix."""
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    if kind == "2d":
        a = sp.kron(eye, t) + sp.kron(t, eye)
    else:
        a = sp.kron(sp.kron(eye, eye), t) + sp.kron(sp.kron(eye, t), eye)
        a = a + sp.kron(sp.kron(t, eye), eye)
    return a.tocsr().tocoo()


def convection_diffusion(k: int):
    """The 5-point Laplacian plus first-order upwind convection `(u_i - u_{i-1})` along both axes
    (unit grid Péclet number): nonsymmetric, a nonsingular M-matrix."""
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    d = sp.diags([-1.0, 1.0], [-1, 0], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    return (sp.kron(eye, t + d) + sp.kron(t + d, eye)).tocsr().tocoo()


def problem(kind: str, k: int):
    return convection_diffusion(k) if kind == "cd" else poisson(kind, k)


# ---------------------------------------------------------------------------------------------
# Child processes


def pin_one_cpu() -> None:
    """Restrict this process to one CPU (Linux), before JAX starts its thread pool."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})
    except (AttributeError, OSError):
        pass


def _block(x):
    if "jax" not in sys.modules:  # a SciPy result: nothing to wait for (and no JAX to import,
        return x  # which would count in the peak memory)
    import jax

    return jax.tree_util.tree_map(lambda a: getattr(a, "block_until_ready", lambda: a)(), x)


def _timed(run, before=None) -> tuple[float, object]:
    """Median seconds of `run()` (one call; three if the first took under 2 s), and its result.
    `before()` runs untimed before each call."""
    times, out = [], None
    for i in range(3):
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = _block(run())
        times.append(time.perf_counter() - t0)
        if i == 0 and times[0] >= 2.0:
            break
    return statistics.median(times), out


def _linopx_solver(method: str, lx):
    if method in ITERATIVE:
        return lx.CG(rtol=RTOL, atol=0.0)
    if method == "GMRES+ILU":
        return lx.GMRES(rtol=RTOL, atol=0.0, restart=30)
    backend = method.split()[1]
    return lx.SparseCholesky(backend) if backend == "cholmod" else lx.SparseLU(backend)


def _scipy_run(method: str, a, b, counter: list):
    """A zero-argument callable solving `a x = b` with a SciPy or pyamg reference method; the
    number of iterations goes into `counter[0]`."""
    import scipy.sparse.linalg as spla

    n = a.shape[0]
    csr, csc = a.tocsr(), a.tocsc()

    def count(_):
        counter[0] += 1

    if method == "scipy cg":

        def run():
            counter[0] = 0
            return spla.cg(csr, b, rtol=RTOL, atol=0.0, maxiter=10 * n, callback=count)[0]

    elif method == "scipy gmres+spilu":

        def run():
            counter[0] = 0
            ilu = spla.spilu(csc, drop_tol=1e-4, fill_factor=10)
            m = spla.LinearOperator((n, n), ilu.solve)
            return spla.gmres(
                csr, b, M=m, rtol=RTOL, atol=0.0, restart=30, maxiter=n,
                callback=count, callback_type="pr_norm",
            )[0]  # fmt: skip

    elif method == "pyamg cg":
        import pyamg

        def run():
            residuals: list = []
            ml = pyamg.smoothed_aggregation_solver(csr)
            x = ml.solve(b, tol=RTOL, accel="cg", maxiter=10 * n, residuals=residuals)
            counter[0] = len(residuals) - 1
            return x

    elif method == "scipy spsolve":

        def run():
            return spla.spsolve(csc, b)

    else:
        raise ValueError(method)
    return run


def child_solve(kind: str, k: int, method: str) -> dict:
    """Solve one problem with one method in this (fresh) process; time and peak memory."""
    import numpy as np

    from benchmarks.sparse_memory import _peak_mib, _reset_peak

    a = problem(kind, k)
    n = a.shape[0]
    b_np = np.random.default_rng(0).normal(size=n)
    out: dict = {"kind": kind, "k": k, "method": method, "n": n, "nnz": int(a.nnz)}
    setups: list[float] = []  # preconditioner setup times, one per timed run

    if method.startswith("scipy") or method.startswith("pyamg"):
        counter = [0]
        # Run once on a tiny problem first: SciPy loads its submodules on first use, which would
        # otherwise count in the peak memory (about 120 MiB).
        _scipy_run(method, problem(kind, 4), np.ones(problem(kind, 4).shape[0]), counter)()
        run = _scipy_run(method, a, b_np, counter)
        base = _reset_peak(), _peak_mib()
        seconds, x = _timed(run)
        if method != "scipy spsolve":
            out["iterations"] = counter[0]
    else:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        import linopx as lx
        from linopx.solvers import sparse as S

        tags = () if kind == "cd" else (lx.positive_semidefinite_tag,)
        op = lx.SparseCOOLinearOperator.from_scipy(a, tags)
        pattern = op.pattern
        solver = _linopx_solver(method, lx)
        b = jnp.asarray(b_np)

        def solve(values, b, preconditioner):
            o = lx.SparseCOOLinearOperator(values, pattern, tags=op.tags)
            if method == "CG+Jacobi":
                preconditioner = lx.jacobi_preconditioner(o)
            options = None if preconditioner is None else {"preconditioner": preconditioner}
            return lx.linear_solve(o, b, solver, options=options, throw=False)

        def make_preconditioner():
            if method == "CG+AMG":
                if not hasattr(lx, "amg_preconditioner"):
                    raise ImportError("lx.amg_preconditioner is not available in this version")
                return lx.amg_preconditioner(op)
            if method == "GMRES+ILU":
                return lx.ilu_preconditioner(op, drop_tol=1e-4, fill_factor=10)
            return None

        try:
            m0 = make_preconditioner()
        except ImportError as e:
            return {**out, "note": f"skipped: {e}"}
        compiled = jax.jit(solve).lower(op.values, b, m0).compile()
        if method in DIRECT:
            tiny = lx.SparseCOOLinearOperator(
                jnp.array([2.0, 3.0]), np.array([0, 1]), np.array([0, 1]), (2, 2), tags
            )
            _block(lx.linear_solve(tiny, jnp.ones(2), solver).value)
        S.clear_cache()

        def run():
            # The preconditioner's setup is timed with the solve; the solve itself gets the first
            # one built (the same operator: a new one would be a new static structure for the
            # compiled function, and a compilation inside the timing).
            t0 = time.perf_counter()
            if make_preconditioner() is not None:
                setups.append(time.perf_counter() - t0)
            return compiled(op.values, b, m0)

        base = _reset_peak(), _peak_mib()
        seconds, sol = _timed(run, S.clear_cache if method in DIRECT else None)
        x = np.asarray(sol.value)
        if "num_steps" in sol.stats:
            out["iterations"] = int(sol.stats["num_steps"])
    out["seconds"] = seconds
    out["peak MiB"] = _peak_mib() - base[1]
    if not base[0]:
        out["note"] = "peak not reset (no /proc/self/clear_refs)"
    if setups:
        out["setup seconds"] = statistics.median(setups)
    out["residual"] = float(np.linalg.norm(b_np - a.tocsr() @ x) / np.linalg.norm(b_np))
    return out


def child_spmv(kind: str, k: int) -> dict:
    """SciPy's CSR products against linopx's `mv` and transposed `mv`, native kernel and XLA."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import linopx as lx

    a = poisson(kind, k)
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    csr = a.tocsr()
    csr_t = csr.T  # a CSC view: SciPy's own transposed product
    x_np = np.random.default_rng(0).normal(size=a.shape[1])
    x = jnp.asarray(x_np)

    def mv(values, x):
        return lx.SparseCOOLinearOperator(values, op.pattern).mv(x)

    def rmv(values, x):
        return lx.SparseCOOLinearOperator(values, op.pattern).transpose().mv(x)

    def xla_mv(values, x):  # the pure-XLA path (as with LINOPX_NATIVE=0): diagonal form here
        return lx.SparseCOOLinearOperator(values, op.pattern)._xla_mv(values, x)

    def xla_rmv(values, x):
        t = lx.SparseCOOLinearOperator(values, op.pattern).transpose()
        return t._xla_mv(values, x)

    fns = {"scipy CSR": lambda: csr @ x_np, "scipy CSR.T": lambda: csr_t @ x_np}
    fwd, bwd = csr @ x_np, csr_t @ x_np
    cases = (
        ("linopx mv", mv, fwd),
        ("linopx T.mv", rmv, bwd),
        ("XLA mv", xla_mv, fwd),
        ("XLA T.mv", xla_rmv, bwd),
    )
    error = 0.0
    for name, f, ref in cases:
        jf = jax.jit(f)
        y = np.asarray(jf(op.values, x))
        error = max(error, float(np.max(np.abs(y - ref)) / np.max(np.abs(ref))))
        fns[name] = lambda jf=jf: jf(op.values, x)
    for f in fns.values():
        _block(f())
    names = list(fns)
    best = {name: float("inf") for name in names}
    for i in range(15):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            for _ in range(20):
                y = fns[name]()
            _block(y)
            best[name] = min(best[name], (time.perf_counter() - t0) / 20)
    return {
        "kind": kind,
        "k": k,
        "n": a.shape[0],
        "nnz": int(a.nnz),
        "times": best,
        "error": error,
        "native": lx.native_info()["available"],
    }


def _run_child(args: list[str]) -> dict:
    env = {**os.environ, **SINGLE_THREAD_ENV}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env,
            timeout=CAP_SECONDS,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"note": f"skipped: over cap (stopped after {CAP_SECONDS} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"note": f"failed: {err[:160]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Rows of the report


def _fmt_mib(x: float) -> str:
    return f"{x:.0f}"


def solve_rows(kind: str, k: int) -> list[dict]:
    from benchmarks._timing import row

    methods = NONSYM_METHODS if kind == "cd" else SPD_METHODS
    results = []
    for method in methods:
        if over_cap(kind, k, method):
            results.append({"method": method, "note": "skipped: over cap"})
            continue
        r = _run_child(["solve", kind, str(k), method])
        results.append({**r, "method": method})
    times = {r["method"]: r["seconds"] for r in results if "seconds" in r}
    # Iterations and peak memory per method are in the detail table (`report_notes`).
    notes = {
        "not run": "; ".join(f"{r['method']}: {r['note']}" for r in results if "seconds" not in r),
    }
    base = "GMRES+ILU" if kind == "cd" else "CG+AMG"
    out = row(KIND_NAMES[kind], size_label(kind, k), times, base=base, **notes)
    out["detail"] = results
    return [out]


def spmv_rows(kind: str, k: int) -> list[dict]:
    from benchmarks._timing import row

    r = _run_child(["spmv", kind, str(k)])
    if "times" not in r:
        return [row(f"SpMV {KIND_NAMES[kind]}", size_label(kind, k), {}, note=r.get("note"))]
    t = r["times"]
    notes = {
        "T.mv / scipy CSR": f"{t['linopx T.mv'] / t['scipy CSR']:.2f}",
        "T.mv / scipy CSR.T": f"{t['linopx T.mv'] / t['scipy CSR.T']:.2f}",
        "XLA mv / scipy CSR": f"{t['XLA mv'] / t['scipy CSR']:.2f}",
        "XLA T.mv / scipy CSR": f"{t['XLA T.mv'] / t['scipy CSR']:.2f}",
        "max rel. error": f"{r['error']:.0e}",
    }
    if not r.get("native"):
        notes["note"] = "native kernel unavailable: linopx mv ran in XLA"
    return [row(f"SpMV {KIND_NAMES[kind]}", size_label(kind, k), t, base="linopx mv", **notes)]


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs; each thunk returns a list of rows (`_timing.row`)."""
    sizes = QUICK_SIZES if quick else SIZES
    out = []
    for kind in ("2d", "3d"):
        for k in sizes[kind]:
            label = f"{KIND_NAMES[kind]} {size_label(kind, k)}"
            out.append((f"SpMV {label}", lambda kind=kind, k=k: spmv_rows(kind, k)))
    for kind in ("2d", "3d", "cd"):
        for k in sizes[kind]:
            label = f"{KIND_NAMES[kind]} {size_label(kind, k)}"
            out.append((label, lambda kind=kind, k=k: solve_rows(kind, k)))
    return out


def _detail_table(rows: list[dict]) -> list[str]:
    from benchmarks._timing import fmt_time

    lines = [
        "| problem | size | method | time | peak MiB | iterations | rel. residual | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for d in r.get("detail", []):
            time_cell = fmt_time(d["seconds"]) if "seconds" in d else ""
            if "setup seconds" in d:
                time_cell += f" (setup {fmt_time(d['setup seconds'])})"
            cells = [
                r["case"],
                r["size"],
                d["method"],
                time_cell,
                _fmt_mib(d["peak MiB"]) if "peak MiB" in d else "",
                str(d.get("iterations", "")),
                f"{d['residual']:.1e}" if "residual" in d else "",
                d.get("note", ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_notes(rows: list[dict]) -> list[str]:
    lines = [
        "Large sparse systems (`benchmarks/large_sparse.py`): one fresh single-CPU process per "
        f"problem and method, relative tolerance {RTOL:g} for the iterative methods; times include "
        "preconditioner setup and factorization; peak MiB is the growth of the peak resident "
        "memory over the baseline after setup. SpMV: minimum over interleaved rounds, ratios "
        "linopx / SciPy CSR.",
        "",
        "Every solve, method by method:",
        "",
    ]
    return lines + _detail_table(rows) + [""]


def plot(rows: list[dict], out: str, plt) -> list[str]:
    """Time and peak memory against the number of unknowns, direct solves against CG (alone, with
    Jacobi, with AMG), for the 2-D and 3-D Poisson problems: where the lines cross."""
    solves = [r for r in rows if r["case"] in (KIND_NAMES["2d"], KIND_NAMES["3d"])]
    if not solves:
        return []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex="col")
    styles = {
        "CG+AMG": dict(color="tab:green", linewidth=2.5, marker="o"),
        "CG+Jacobi": dict(color="tab:olive", linewidth=1.2, marker="o", linestyle="--"),
        "CG": dict(color="tab:gray", linewidth=1.2, marker="o", linestyle=":"),
        "SparseCholesky cholmod": dict(color="tab:red", linewidth=2, marker="s"),
        "SparseLU pardiso": dict(color="tab:purple", linewidth=1.5, marker="s"),
        "SparseLU umfpack": dict(color="tab:brown", linewidth=1.2, marker="s"),
        "SparseLU superlu": dict(color="tab:orange", linewidth=1.2, marker="s"),
    }
    for col, kind in enumerate(("2d", "3d")):
        rs = [r for r in solves if r["case"] == KIND_NAMES[kind]]
        for method, style in styles.items():
            pts = []
            for r in rs:
                for d in r.get("detail", []):
                    if d["method"] == method and "seconds" in d:
                        pts.append((d["n"], d["seconds"], max(d["peak MiB"], 0.5)))
            if not pts:
                continue
            pts.sort()
            ns, ts, ms = zip(*pts)
            axes[0, col].loglog(ns, ts, label=method, **style)
            axes[1, col].loglog(ns, ms, label=method, **style)
        axes[0, col].set_title(f"{KIND_NAMES[kind]}: time (1 CPU)")
        axes[1, col].set_title(f"{KIND_NAMES[kind]}: peak memory growth")
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("MiB")
        axes[1, col].set_xlabel("unknowns n")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    name = "large_sparse-crossover.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return [name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pin_one_cpu()
        what, kind, k, *rest = args.child
        if what == "spmv":
            print(json.dumps(child_spmv(kind, int(k))))
        else:
            print(json.dumps(child_solve(kind, int(k), " ".join(rest))))
        return
    from benchmarks._timing import print_suite

    print_suite(cases, args.quick, report_notes)


if __name__ == "__main__":
    main()
