"""Memory soak: resident memory over many solve (+ gradient) calls, for every sparse backend and for
eager dense calls on many shapes.

    python benchmarks/soak.py                # 10,000 calls per case (about 25 min on 2 cores)
    python benchmarks/soak.py --quick        # 500 calls per case, a smoke test (about 1-2 min)
    python benchmarks/soak.py --calls 3000   # any number of calls
    python benchmarks/soak.py --out DIR      # also write DIR/soak-memory.png

Cases (float64, `jax_enable_x64` on):

- "sparse grad 30x30, <backend>": a jitted `jax.grad` of `sum(x**2)` with respect to the matrix
  values, through `lx.linear_solve(lx.SparseCOOLinearOperator(values, rows, cols, (n, n)), b,
  lx.SparseLU(backend=<backend>)).value`, on the 2-D 5-point Poisson matrix of a 30x30 grid
  (n = 900), with fresh values at every call (the Poisson values times 1 + 0.1 * uniform(0, 1)),
  so that every call factorizes afresh and the factorization cache keeps evicting. One case per
  installed backend: "superlu" always, "pardiso" when `pypardiso` imports, "cudss" only when
  nvmath-python is installed and JAX sees a GPU; the others are skipped with a note.
- "sparse forward 30x30, superlu": the jitted forward solve alone, same matrix and fresh values.
- "sparse grad 100x100, <backend>": the gradient case on a 100x100 grid (n = 10,000), over a fifth
  of the calls (a call takes about 10x longer). At 30x30 on a 2-core CPU machine XLA ran every
  callback on the calling thread, so a bug that depends on callbacks running on other threads (as
  SciPy's SuperLU freeing factors only on the thread that created them did) does not show there;
  at 100x100 some callbacks run on XLA's worker threads. (On that machine, with the code before
  that fix, the 30x30 gradient grew 4 MiB over calls 1,000 -> 3,000, the 100x100 one 600 MiB over
  500 calls.)
- "dense eager, many shapes": eager (not jitted) `lx.linear_solve(lx.MatrixLinearOperator(A), b)`
  with fresh random A and b at every call. Every 8th call uses the next of 600 signatures (n = 1 to
  150 in float64, complex128, float32 and complex64, in a cycle), which is more than linopx's
  per-signature caches of compiled programs hold (256 eager solves, 512 traced programs), so from
  then on each of these calls compiles afresh and evicts; the other calls use three fixed
  signatures (n = 8, 32, 100, float64), which stay cached. Not all of this case's memory is
  linopx's: JAX keeps per-shape caches of its own (of the jitted functions that a solve calls).
  On a 2-core CPU machine, 300 signatures took about 5.3 MiB each; `lx.clear_caches()` then gave
  back about 390 MiB and `jax.clear_caches()` a further 1 GiB. For comparison, eager
  `jnp.linalg.solve` over 300 signatures (n = 1 to 100; float64, float32, complex128) grew 4.6 MiB
  per signature in the same way, linopx's `linear_solve` 4.8 MiB. Those JAX caches stop growing once
  the cycle has been seen whole (call 4,800), so a plateau after that shows that linopx's evictions
  free what linopx held, not that memory is bounded for a stream of ever-new shapes.

How it measures: each case runs in its own fresh subprocess, so that one case's memory cannot
colour another's. The process reads its resident set size from `/proc/self/statm` (Linux) before
the first call and after every hundredth of the calls (every 100th call in a full run); the first
call includes compilation. Where there is no `/proc/self/statm`, the
series is the *peak* resident size from `resource.getrusage` (which can only grow), and the report
says so; where neither exists the case is skipped. A case stops early, with a note, if its
resident memory grows by more than 6 GiB.

"growth" is the resident size at the end minus that at call 1,000 (a tenth of the calls in a
shorter run): the early calls fill caches (JAX's, linopx's, the allocator's) and are left out.
"growth over the last half" is from the middle call to the end; for the dense case that comes after
linopx's caches have filled (call 2,048 for the 256 eager solves, 4,096 for the 512 traced programs)
and after every signature of the cycle has been seen once (call 4,800). The bar, for the 30x30
sparse gradient cases only: at most 20 MiB of growth over calls 1,000 to 10,000. "time per call" is
the wall time of the whole run over the number of calls (fresh values included), a by-product, not
a benchmark: on a shared machine it moves with the load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# case -> (kind, backend, grid side, share of the calls)
CASES = {
    "sparse grad 30x30, superlu": ("grad", "superlu", 30, 1),
    "sparse grad 30x30, pardiso": ("grad", "pardiso", 30, 1),
    "sparse grad 30x30, cudss": ("grad", "cudss", 30, 1),
    "sparse forward 30x30, superlu": ("forward", "superlu", 30, 1),
    "sparse grad 100x100, superlu": ("grad", "superlu", 100, 0.2),
    "sparse grad 100x100, pardiso": ("grad", "pardiso", 100, 0.2),
    "dense eager, many shapes": ("dense", None, None, 1),
}
BAR_MIB = 20.0  # for the 30x30 gradient cases: growth over calls 1,000 -> 10,000
BAR_GRID = 30
FULL_CALLS, QUICK_CALLS = 10_000, 500
SAMPLES = 100  # readings per case (plus one before the first call)
STOP_GROWTH_MIB = 6144.0  # a case stops early if its memory grows by more than this
# Dense eager case: signature cycle and schedule (see the module docstring).
DENSE_SIZES = range(1, 151)
DENSE_DTYPES = ("float64", "complex128", "float32", "complex64")
DENSE_HOT = (8, 32, 100)
DENSE_COLD_EVERY = 8


def start_call(calls: int) -> int:
    """The call from which growth is measured: 1,000, or a tenth of a shorter run."""
    return min(1000, calls // 10)


def has_bar(case: str) -> bool:
    kind, _, grid, _ = CASES[case]
    return kind == "grad" and grid == BAR_GRID


# ---- the child: one case in its own process ---------------------------------------------------


def _rss_reader():
    """`(read, kind)`: a function returning the resident set size in MiB, and what it reads."""
    try:
        with open("/proc/self/statm") as f:
            f.read()
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> float:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page / 2**20

        return read, "RSS (/proc/self/statm)"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource
    except ImportError:
        return None, "no /proc/self/statm and no resource module"
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, else KiB

    def read_peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale

    return read_peak, "peak RSS (resource.getrusage; no /proc/self/statm)"


def poisson_2d(k: int):
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (k, k), dtype=float)
    eye = sp.eye(k, dtype=float)
    return (sp.kron(eye, t) + sp.kron(t, eye)).tocoo()


def _sparse_step(kind: str, backend: str, grid: int, rng, out: dict):
    """`(step, finish)` for a sparse case (`step(i)` makes one call with fresh values), or a skip
    note."""
    if backend == "pardiso":
        try:
            import pypardiso  # noqa: F401
        except Exception as e:  # noqa: BLE001 (any import failure means: not usable)
            return f"skipped: pypardiso does not import ({type(e).__name__})"
    import jax
    import jax.numpy as jnp
    import numpy as np

    if backend == "cudss":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if importlib.util.find_spec("nvmath") is None or not gpus:
            return "skipped: needs nvmath-python with cuDSS and a GPU"

    import linopx as lx
    from linopx.solvers import sparse as S

    a = poisson_2d(grid)
    n, rows, cols, base = a.shape[0], a.row, a.col, np.asarray(a.data)
    out.update(n=n, nnz=int(a.nnz))
    b = jnp.asarray(rng.normal(size=n))
    solver = lx.SparseLU(backend=backend)

    def solve(v):
        op = lx.SparseCOOLinearOperator(v, rows, cols, (n, n))
        return lx.linear_solve(op, b, solver).value

    if kind == "grad":
        fn = jax.jit(jax.grad(lambda v: jnp.sum(solve(v) ** 2)))
    else:
        fn = jax.jit(solve)

    def step(i: int):
        values = base * (1.0 + 0.1 * rng.uniform(size=base.shape))
        return fn(values).block_until_ready()

    def finish() -> None:
        info = S.cache_info()
        out["factorizations"] = sum(info["factorizations"].values())
        out["cache entries at end"] = info["entries"]

    S.reset_counters()
    return step, finish


def _dense_step(rng, out: dict):
    import jax.numpy as jnp
    import numpy as np

    import linopx as lx

    cold = [(n, dt) for n in DENSE_SIZES for dt in DENSE_DTYPES]
    hot = [(n, "float64") for n in DENSE_HOT]
    seen: set = set()

    def step(i: int):
        if i % DENSE_COLD_EVERY == 0:
            n, dtype = cold[(i // DENSE_COLD_EVERY) % len(cold)]
        else:
            n, dtype = hot[i % len(hot)]
        seen.add((n, dtype))
        a = rng.normal(size=(n, n)) + n * np.eye(n)
        b = rng.normal(size=n)
        if dtype.startswith("complex"):
            a = a + 1j * rng.normal(size=(n, n))
            b = b + 1j * rng.normal(size=n)
        a, b = jnp.asarray(a.astype(dtype)), jnp.asarray(b.astype(dtype))
        return lx.linear_solve(lx.MatrixLinearOperator(a), b).value.block_until_ready()

    def finish() -> None:
        out["distinct signatures"] = len(seen)
        out["signatures in the cycle"] = len(cold)

    return step, finish


def child(case: str, calls: int, every: int) -> dict:
    """Run one case; returns the series of (call count, resident MiB) and a few facts."""
    read, rss_kind = _rss_reader()
    out: dict = {"case": case, "calls": calls, "every": every, "rss kind": rss_kind}
    if read is None:
        return {**out, "note": f"skipped: {rss_kind}"}
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    sys.path.insert(0, ROOT)
    kind, backend, grid, _ = CASES[case]
    rng = np.random.default_rng(0)
    if kind == "dense":
        made = _dense_step(rng, out)
    else:
        made = _sparse_step(kind, backend, grid, rng, out)
    if isinstance(made, str):
        return {**out, "note": made}
    step, finish = made
    series = [(0, read())]
    t0 = time.perf_counter()
    for i in range(calls):
        step(i)
        if (i + 1) % every == 0 or i + 1 == calls:
            series.append((i + 1, read()))
            if series[-1][1] - series[0][1] > STOP_GROWTH_MIB:
                out["note"] = f"stopped at call {i + 1:,}: grew over {STOP_GROWTH_MIB:.0f} MiB"
                break
    out["seconds"] = time.perf_counter() - t0
    out["calls made"] = series[-1][0]
    finish()
    out["series"] = series
    out["jax backend"] = jax.default_backend()
    return out


# ---- the parent: subprocesses, rows, report, plot -------------------------------------------


def _installed_note(case: str) -> str | None:
    """A skip note for a backend that is plainly not installed, without starting a process."""
    backend = CASES[case][1]
    if backend == "pardiso" and importlib.util.find_spec("pypardiso") is None:
        return "skipped: pypardiso not installed"
    if backend == "cudss" and importlib.util.find_spec("nvmath") is None:
        return "skipped: needs nvmath-python with cuDSS and a GPU (CPU-only here)"
    return None


def measure(case: str, calls: int, every: int, timeout: float = 4 * 3600) -> dict:
    """One case in a fresh subprocess. Raises if the subprocess fails."""
    note = _installed_note(case)
    if note:
        return {"case": case, "calls": calls, "note": note}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(calls), str(every)]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"soak case {case!r} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def _rss_at(series: list, call: int) -> float:
    """The first sample at or after `call` (the last one if none)."""
    return next((r for c, r in series if c >= call), series[-1][1])


def summary(result: dict) -> dict:
    """Growth figures of one case's result."""
    series = result.get("series")
    if not series:
        return {}
    start = start_call(result["calls"])
    rss0, rss1 = _rss_at(series, start), series[-1][1]
    half = rss1 - _rss_at(series, result["calls"] // 2)
    return {
        "from call": start, "rss start": rss0, "rss end": rss1, "growth": rss1 - rss0,
        "growth last half": half,
    }  # fmt: skip


def report_row(result: dict) -> dict:
    """The result as a row of the benchmark report (`benchmarks/_timing.row`), with the series kept
    under `"series"` for the plot."""
    from benchmarks._timing import row

    case = result["case"]
    kind, _, grid, _ = CASES[case]
    size = "n=1..150" if kind == "dense" else f"{grid}^2"
    s = summary(result)
    bar = has_bar(case)
    if not s:
        notes = {"calls": f"{result['calls']:,}", "note": result.get("note", "")}
        return {**row(case, size, {}, base="time per call", **notes), "series": []}
    if not bar:
        verdict = ""
    elif result["calls made"] < FULL_CALLS:  # the bar is over calls 1,000 -> 10,000
        verdict = "n/a (short run)"
    else:
        verdict = "yes" if s["growth"] <= BAR_MIB else "NO"
    notes = {
        "calls": f"{result['calls made']:,}",
        "RSS at start (MiB)": f"{s['rss start']:.1f} (call {s['from call']:,})",
        "RSS at end (MiB)": f"{s['rss end']:.1f}",
        "growth (MiB)": f"{s['growth']:+.1f}",
        "growth over the last half (MiB)": f"{s['growth last half']:+.1f}",
        "bar (MiB)": f"{BAR_MIB:.0f}" if bar else "none",
        "within bar": verdict,
    }
    if "factorizations" in result:
        notes["facts"] = (
            f"{result['factorizations']:,} factorizations, "
            f"{result['cache entries at end']} cached at end"
        )
    elif "distinct signatures" in result:
        notes["facts"] = (
            f"{result['distinct signatures']} distinct signatures "
            f"(cycle of {result['signatures in the cycle']})"
        )
    extra = [result["note"]] if result.get("note") else []
    if not result["rss kind"].startswith("RSS"):
        extra.append(result["rss kind"])
    if extra:
        notes["note"] = "; ".join(extra)
    times = {"time per call": result["seconds"] / result["calls made"]}
    r = row(case, size, times, base="time per call", **notes)
    r["series"] = result["series"]
    r["growth_mib"] = s["growth"]
    r["growth_last_half_mib"] = s["growth last half"]
    r["bar_mib"] = BAR_MIB if bar else None
    return r


def cases(quick: bool = False, calls: int | None = None) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs for `python -m benchmarks`; each case is one thunk
    (and one subprocess), returning one row."""
    calls = calls or (QUICK_CALLS if quick else FULL_CALLS)
    out = []
    for case, (*_, share) in CASES.items():
        n = max(1, round(calls * share))
        k = max(1, n // SAMPLES)
        out.append((case, lambda case=case, n=n, k=k: [report_row(measure(case, n, k))]))
    return out


def report_notes(rows: list[dict]) -> list[str]:
    """Markdown lines shown under the suite's table in the report."""
    measured = [r for r in rows if r.get("series")]
    text = (
        'Resident memory of a fresh process per case; "growth" is from the call shown under '
        '"RSS at start" to the last call, "growth over the last half" from the middle call to '
        f"the last. The bar (30x30 gradient cases only): at most {BAR_MIB:.0f} MiB over calls "
        "1,000 -> 10,000. Sparse: 2-D Poisson, jitted, fresh values every call (100x100 over a "
        "fifth of the calls: there, unlike at 30x30, some callbacks run on XLA's worker threads). "
        "Dense: eager calls, every 8th on the next of 600 signatures in a cycle (more than the "
        "caches hold), the others on 3 fixed ones. Details in `benchmarks/soak.py`."
    )
    lines = [text, ""]
    if measured:
        lines += ["![Resident memory against call count](soak-memory.png)", ""]
    return lines


def plot(rows: list[dict], out: str, plt) -> list[str]:
    """`soak-memory.png`: resident MiB against call count, one line per case (left, log scale),
    and for the sparse cases the change since each one's start call, with the bar (right)."""
    measured = [r for r in rows if r.get("series")]
    if not measured:
        return []
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    start = start_call(max(r["series"][-1][0] for r in measured))
    for r in measured:
        calls, rss = zip(*r["series"])
        (line,) = ax.plot(calls, rss, label=r["case"])
        if not r["case"].startswith("dense"):
            base = _rss_at(r["series"], start_call(calls[-1]))
            ax2.plot(calls, [x - base for x in rss], label=r["case"], color=line.get_color())
    for a in (ax, ax2):
        a.axvline(start, color="gray", linestyle=":", linewidth=1)
        a.set_xlabel("calls")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax2.axhline(BAR_MIB, color="red", linestyle="--", linewidth=1, label=f"bar ({BAR_MIB:.0f} MiB)")
    grown = [x - _rss_at(r["series"], start_call(r["series"][-1][0])) for r in measured
             if not r["case"].startswith("dense") for _, x in r["series"][1:]]  # fmt: skip
    ax2.set_ylim(min(-20.0, *grown) * 1.1, max(2 * BAR_MIB, *grown) * 1.1)
    ax.set_ylabel("resident memory (MiB, log scale)")
    ax2.set_ylabel("change since the start call (MiB)")
    ax.set_title("resident memory, every case")
    ax2.set_title("sparse cases: change since the start call")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "soak-memory.png"), dpi=110)
    plt.close(fig)
    return ["soak-memory.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls per case")
    parser.add_argument("--calls", type=int, default=None, help="calls per case")
    parser.add_argument("--out", default=None, help="also write soak-memory.png into this folder")
    parser.add_argument(
        "--child", nargs=3, metavar=("CASE", "CALLS", "EVERY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        case, calls, every = args.child
        print(json.dumps(child(case, int(calls), int(every))))
        return
    sys.path.insert(0, ROOT)
    from benchmarks._timing import print_table

    rows = []
    for case, thunk in cases(args.quick, args.calls):
        print(f"running: {case}", file=sys.stderr)
        rows += thunk()
    print_table(rows)
    print("\n".join(report_notes(rows)))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(args.out, exist_ok=True)
        plot(rows, args.out, plt)


if __name__ == "__main__":
    main()
