"""Single-threaded figures: the cost of the default `throw=True` check.

    python benchmarks/single_thread.py           # full run
    python benchmarks/single_thread.py --quick   # smaller, fewer repetitions

Two cases, where the check's cost shows most, against the JAX routines that have no check:

- the compile time of a jitted CG solve of a `MatrixLinearOperator` (the 1-D Laplacian, n = 200,
  tagged positive semidefinite) against `jax.scipy.sparse.linalg.cg`: the median over fresh
  functions (nothing reused from JAX's caches) of tracing, lowering and compiling;
- the run time of `jax.grad` of `sum(x**2)` with respect to `(A, b)` of an LU solve at n = 1000
  against `jax.grad` of the same through `jnp.linalg.solve`: the median of interleaved calls, each
  on fresh values (four random matrices and vectors, in turn).

Each case runs in a fresh subprocess on one CPU with one XLA and BLAS thread (as in
`benchmarks/large_sparse.py`). linopx is timed with `throw=True` (its default, the column
"linopx") and `throw=False`. The case runs twice: as linopx runs by default (its check is then the
compiled `linopx_check` call) and with `LINOPX_NATIVE=0`, where the check falls back to a `cond`
and a Python callback (what runs without a C++ compiler, on several devices or off the CPU). Each
row's ratios are within its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.large_sparse import SINGLE_THREAD_ENV, pin_one_cpu  # noqa: E402

CAP_SECONDS = 900
PATHS = {"native check": {}, "LINOPX_NATIVE=0": {"LINOPX_NATIVE": "0"}}


def child_compile(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import linopx as lx
    from benchmarks._timing import compile_times

    n = 200
    a = jnp.asarray(2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1))
    b = jnp.asarray(np.random.default_rng(0).normal(size=n))

    def ours(throw):
        def f(a, b):
            op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
            return lx.linear_solve(op, b, lx.CG(rtol=1e-6, atol=0.0), throw=throw).value

        return f

    makers = {
        "linopx": lambda: ours(True),
        "linopx throw=False": lambda: ours(False),
        "jax.scipy": lambda: (
            lambda a, b: jax.scipy.sparse.linalg.cg(lambda x: a @ x, b, tol=1e-6, atol=0.0)[0]
        ),
    }
    try:
        import lineax

        makers["lineax"] = lambda: (
            lambda a, b: lineax.linear_solve(
                lineax.MatrixLinearOperator(a, lineax.positive_semidefinite_tag),
                b,
                lineax.CG(rtol=1e-6, atol=0.0),
            ).value
        )
    except ImportError:
        pass
    # Check the answers once before timing.
    ref = np.linalg.solve(np.asarray(a), np.asarray(b))
    for name in ("linopx", "jax.scipy"):
        x = np.asarray(jax.jit(makers[name]())(a, b))
        assert np.abs(x - ref).max() / np.abs(ref).max() < 1e-4, name
    times = compile_times(makers, (a, b), 5 if quick else 15)
    return {"times": times, "native": lx.native_info()["available"]}


def child_lu_grad(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import linopx as lx
    from benchmarks._timing import interleaved

    n = 200 if quick else 1000
    rng = np.random.default_rng(0)
    mats = [jnp.asarray(rng.normal(size=(n, n)) + n**0.5 * np.eye(n)) for _ in range(4)]
    vecs = [jnp.asarray(rng.normal(size=n)) for _ in range(4)]

    def ours(throw):
        def loss(a, b):
            x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU(), throw=throw).value
            return jnp.sum(x**2)

        return loss

    losses = {
        "linopx": ours(True),
        "linopx throw=False": ours(False),
        "jnp": lambda a, b: jnp.sum(jnp.linalg.solve(a, b) ** 2),
    }
    try:
        import lineax

        losses["lineax"] = lambda a, b: jnp.sum(
            lineax.linear_solve(lineax.MatrixLinearOperator(a), b, lineax.LU()).value ** 2
        )
    except ImportError:
        pass
    grads = {k: jax.jit(jax.grad(f, argnums=(0, 1))) for k, f in losses.items()}
    ref = grads["jnp"](mats[0], vecs[0])
    for name, g in grads.items():
        got = g(mats[0], vecs[0])
        for x, y in zip(got, ref):
            assert np.abs(np.asarray(x) - np.asarray(y)).max() <= 1e-8 * np.abs(y).max(), name
    calls = {k: 0 for k in grads}

    def call(name):
        i = calls[name] % 4
        calls[name] += 1
        return grads[name](mats[i], vecs[i])

    times = interleaved({k: (lambda k=k: call(k)) for k in grads}, 7 if quick else 31)
    return {"times": times, "n": n, "native": lx.native_info()["available"]}


CHILDREN = {"compile": child_compile, "lu_grad": child_lu_grad}


def _run_child(what: str, quick: bool, extra_env: dict) -> dict:
    env = {**os.environ, **SINGLE_THREAD_ENV, **extra_env}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=CAP_SECONDS
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _rows(what: str, quick: bool) -> list[dict]:
    from benchmarks._timing import row

    out = []
    for path, extra_env in PATHS.items():
        res = _run_child(what, quick, extra_env)
        expected = path == "native check"
        if res["native"] != expected:
            raise RuntimeError(f"{path}: the native kernels were {'not ' * expected}in use")
        if what == "compile":
            out.append(row("compile of a jitted CG solve", f"n=200, {path}", res["times"]))
        else:
            out.append(row("LU grad", f"n={res['n']}, {path}", res["times"]))
    return out


def cases(quick: bool = False) -> list[tuple[str, object]]:
    """The suite as `(label, thunk)` pairs; each thunk returns a list of rows."""
    return [
        ("CG compile n=200", lambda: _rows("compile", quick)),
        ("LU grad", lambda: _rows("lu_grad", quick)),
    ]


def report_notes(rows: list[dict]) -> list[str]:
    return [
        "Single-threaded (`benchmarks/single_thread.py`): each case in a fresh process on one "
        "CPU with one XLA and BLAS thread. \"linopx\" is the default, `throw=True`. Rows marked "
        "`LINOPX_NATIVE=0` run the check's fallback (a `cond` and a Python callback) instead of "
        "the compiled `linopx_check` call. Compile: the median over fresh functions of trace, "
        "lower and compile. LU grad: the median of interleaved calls on fresh values.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, fewer repetitions")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pin_one_cpu()
        print(json.dumps(CHILDREN[args.child](args.quick)))
        return
    from benchmarks._timing import print_suite

    print_suite(cases, args.quick, report_notes)


if __name__ == "__main__":
    main()
