"""Peak memory of a sparse direct solve and its gradient: linopx's `SparseLU(backend="superlu")`
against SciPy's `splu` called directly, on the 2-D Poisson matrix (5-point Laplacian).

    python benchmarks/sparse_memory.py            # 700² (n = 490,000), the issue's problem
    python benchmarks/sparse_memory.py --k 300    # another grid
    python benchmarks/sparse_memory.py --quick    # 300² only

How it measures:

- Each case runs in its own fresh subprocess, single-threaded (`OMP_NUM_THREADS`,
  `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` = 1, XLA's CPU client without multithreaded Eigen
  and with one intra-op thread).
- "peak MiB" is the growth of the process's peak resident set size (host memory, which on CPU
  includes JAX's buffers) over its value at the baseline, taken after setup: the extra memory the
  solve needed at its peak. The peak is `ru_maxrss`'s own source, the memory map's high-water mark
  (`VmHWM` in `/proc/self/status`; `ru_maxrss` itself where there is no `/proc`): `ru_maxrss` also
  counts the peak of the parent process (see `_peak_mib`). At the baseline the high-water mark is
  lowered to the current resident size (`/proc/self/clear_refs`), so that setup's own transient
  peak (building the matrix, compiling) cannot hide part of the solve's. "over setup peak MiB" is
  the same growth without that reset (over setup's peak, as `benchmarks/sparse.py` measures it;
  it undercounts by however far setup's peak was above its resident memory at the end).
- linopx: JAX (x64) and linopx imported, the matrix built as `lx.SparseCOOLinearOperator.
  from_scipy`, `jax.value_and_grad` of `w @ lx.linear_solve(A(values), b, SparseLU("superlu"))`
  with respect to `(values, b)` jitted and compiled ahead of time, SuperLU warmed up on a tiny
  matrix; then the baseline, then one call (factorization, forward solve, backward solve with the
  same factors, the gradient's `-λ[rows] x[cols]`).
- splu: NumPy/SciPy only, the same matrix as CSC; then the baseline, then
  `splu(A, permc_spec="MMD_AT_PLUS_A")` (the ordering linopx picks for a structurally symmetric
  pattern), a solve and a transposed solve (`trans="T"`, what the gradient's backward solve is).
- Besides the peak, each child reports its resident memory after the call and the size of the
  factors (`lu.nnz` entries; for linopx the cache's estimate), so that the two sides can be read
  against each other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
CASES = ("linopx", "splu")
SIZES = (700,)
QUICK_SIZES = (300,)


def poisson(k: int):
    """The 2-D Poisson matrix on a `k x k` grid (5-point Laplacian), in COO form."""
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    return (sp.kron(eye, t) + sp.kron(t, eye)).tocoo()


def _status_mib(field: str) -> float | None:
    """A `VmXXX:` line of `/proc/self/status` in MiB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_mib() -> float:
    """The process's peak resident set size. On Linux the memory map's high-water mark (`VmHWM`):
    `ru_maxrss` is the larger of it and the peak of the process that spawned this one (the kernel
    carries the parent's over `exec` after a `vfork`, which is how `subprocess` starts children),
    so in a child of a large process (`python -m benchmarks`) it would hide the child's own peak.
    Elsewhere `ru_maxrss` (KiB on Linux and most Unixes)."""
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mib() -> float:
    """The current resident set size (Linux), NaN elsewhere."""
    rss = _status_mib("VmRSS")
    return float("nan") if rss is None else rss


def _reset_peak() -> bool:
    """Lower the peak resident set size to the current one (Linux: `clear_refs` 5 resets the
    high-water mark, `VmHWM`), so that setup's own peak cannot hide what comes next."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Baseline:
    """The peak before and after setup's reset, and the resident memory, at the baseline."""

    def __init__(self):
        self.setup_peak = _peak_mib()
        self.reset = _reset_peak()
        self.peak = _peak_mib()
        self.rss = _rss_mib()

    def figures(self) -> dict:
        peak = _peak_mib()
        return {
            # The growth of the peak over its value at the baseline (after setup; reset to the
            # resident memory there where the system allows it).
            "peak MiB": peak - self.peak,
            # The same without the reset: over setup's own peak (how the figures were taken).
            "peak over setup peak MiB": max(peak, self.setup_peak) - self.setup_peak,
            "after MiB": _rss_mib() - self.rss,
            "peak reset": self.reset,
            "baseline RSS MiB": self.rss,
            "setup peak MiB": self.setup_peak,
        }


def child(case: str, k: int) -> dict:
    """Measure one case in this (fresh) process."""
    import numpy as np

    a = poisson(k)
    n = a.shape[0]
    rng = np.random.default_rng(0)
    b_np = rng.normal(size=n)
    w_np = rng.normal(size=n)
    out: dict = {"case": case, "k": k, "n": n, "nnz": int(a.nnz)}
    if case == "linopx":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        sys.path.insert(0, ROOT)
        import linopx as lx
        from linopx.solvers import sparse as S

        A = lx.SparseCOOLinearOperator.from_scipy(a)
        rows, cols, shape = A.rows, A.cols, A.shape
        solver = lx.SparseLU(backend="superlu")
        values, b, w = A.values, jnp.asarray(b_np), jnp.asarray(w_np)
        del A

        def loss(v, b):
            op = lx.SparseCOOLinearOperator(v, rows, cols, shape)
            return w @ lx.linear_solve(op, b, solver).value

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(values, b).compile()
        tiny = lx.SparseCOOLinearOperator(
            jnp.array([2.0, 3.0]), np.array([0, 1]), np.array([0, 1]), (2, 2)
        )
        jax.block_until_ready(lx.linear_solve(tiny, jnp.ones(2), solver).value)
        S.clear_cache()
        S.reset_counters()
        del a
        base = _Baseline()
        t0 = time.perf_counter()
        loss_value, (g_values, g_b) = jax.block_until_ready(fn(values, b))
        out["seconds"] = time.perf_counter() - t0
        out.update(base.figures())
        info = S.cache_info()
        out["factorizations"] = sum(info["factorizations"].values())
        out["factor MiB"] = info["bytes"] / 2**20  # the cache's estimate (factors + kept values)
        out["check"] = float(np.linalg.norm(np.asarray(g_b)))
        out["gradient norm"] = float(np.linalg.norm(np.asarray(g_values)))
        out["loss"] = float(loss_value)
    elif case == "splu":
        from scipy.sparse.linalg import splu

        csc = a.tocsc()
        del a
        base = _Baseline()
        t0 = time.perf_counter()
        lu = splu(csc, permc_spec="MMD_AT_PLUS_A")
        x = lu.solve(b_np)
        lam = lu.solve(w_np, trans="T")
        out["seconds"] = time.perf_counter() - t0
        out.update(base.figures())
        out["factor nnz"] = int(lu.nnz)
        out["factor MiB"] = lu.nnz * 12 / 2**20  # a float64 value and an int32 index per entry
        out["check"] = float(np.linalg.norm(lam))
        out["loss"] = float(w_np @ x)
    else:
        raise ValueError(case)
    return out


def measure(case: str, k: int) -> dict:
    """One case in a fresh, single-threaded subprocess."""
    env = {**os.environ, **SINGLE_THREAD_ENV}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(k)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"case": case, "k": k, "note": f"failed: {err[:120]}"}
    return json.loads(lines[-1])


def run(sizes=SIZES) -> list[dict]:
    return [measure(case, k) for k in sizes for case in CASES]


def report_rows(results: list[dict]) -> list[dict]:
    """The results as rows of the benchmark report (`benchmarks/_timing.row`): per grid, the wall
    time of the one measured call (linopx: solve + gradient; splu: factorization + solve +
    transposed solve) and, in the notes, both peak-memory growths and their ratio."""
    from benchmarks._timing import row

    out = []
    by = {(r["case"], r["k"]): r for r in results}
    for k in sorted({r["k"] for r in results}):
        mine, ref = by.get(("linopx", k), {}), by.get(("splu", k), {})
        times = {
            name: r["seconds"] for name, r in (("linopx", mine), ("splu", ref)) if "seconds" in r
        }
        notes = {}
        for key, label in (
            ("peak MiB", "peak MiB"),
            ("peak over setup peak MiB", "over setup peak MiB"),
            ("after MiB", "RSS after MiB"),
        ):
            for name, r in (("linopx", mine), ("splu", ref)):
                notes[f"{name} {label}"] = f"{r[key]:.0f}" if key in r else r.get("note", "")
            if key != "after MiB" and key in mine and ref.get(key, 0) > 0:
                notes[f"{label.removesuffix(' MiB')} ratio"] = f"{mine[key] / ref[key]:.2f}"
        if "factor MiB" in ref:
            notes["splu factor MiB"] = f"{ref['factor MiB']:.0f}"
        if "factorizations" in mine:
            notes["linopx factorizations"] = str(mine["factorizations"])
        case = "2D Poisson, superlu: solve + grad peak memory (1 thread)"
        out.append(row(case, f"{k}^2", times, **notes))
    return out


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs, as the other benchmark scripts give it."""
    return [
        (f"2D Poisson {k}²", lambda k=k: report_rows(run((k,))))
        for k in (QUICK_SIZES if quick else SIZES)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, action="append", help="grid side (repeatable)")
    parser.add_argument("--quick", action="store_true", help="300² only")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, k = args.child
        print(json.dumps(child(case, int(k))))
        return
    sizes = tuple(args.k) if args.k else (QUICK_SIZES if args.quick else SIZES)
    results = run(sizes)
    print(
        "single-threaded, each case in a fresh process. peak: growth of the peak resident memory "
        "(VmHWM, what ru_maxrss reports) over the resident memory after setup (the high-water "
        "mark reset there); over setup peak: growth over setup's own peak (no reset); RSS after: "
        "resident memory after the call, over the baseline"
    )
    header = [
        "grid", "n", "nnz", "case", "peak MiB", "over setup peak MiB", "RSS after MiB",
        "factor MiB", "factorizations", "seconds", "note",
    ]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [
            f"{r['k']}²",
            str(r.get("n", "")),
            str(r.get("nnz", "")),
            r["case"],
            *(
                f"{r[key]:.0f}" if key in r else ""
                for key in ("peak MiB", "peak over setup peak MiB", "after MiB", "factor MiB")
            ),
            str(r.get("factorizations", "")),
            f"{r['seconds']:.2f}" if "seconds" in r else "",
            r.get("note", "")
            if r.get("peak reset", True)
            else "peak not reset: " + r.get("note", ""),
        ]
        print("| " + " | ".join(cells) + " |")
    for k in sizes:
        by = {r["case"]: r for r in results if r["k"] == k}
        for key, what in (("peak MiB", "peak"), ("peak over setup peak MiB", "over setup peak")):
            if all(key in by.get(c, {}) for c in CASES) and by["splu"][key] > 0:
                mine, ref = by["linopx"][key], by["splu"][key]
                print(
                    f"{k}², {what}: linopx {mine:.0f} MiB vs splu {ref:.0f} MiB: {mine / ref:.2f}x"
                )


if __name__ == "__main__":
    main()
