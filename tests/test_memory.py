"""Memory stays flat over long runs: each case runs in a fresh subprocess (so what other tests
allocated cannot colour it) and compares resident memory after a warm-up with resident memory at
the end of many more calls with fresh values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from linopx.solvers.sparse import _pardiso

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads resident memory from /proc/self/statm"
)

# Shared by every script: resident memory, and a 2D 5-point Poisson matrix in COO form.
PRELUDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import scipy.sparse as sp
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import linopx as lx

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def poisson(k):
        t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
        a = (sp.kron(sp.identity(k), t) + sp.kron(t, sp.identity(k))).tocoo()
        return a.data, a.row.astype(np.int32), a.col.astype(np.int32), k * k
    """
)


def run_script(body: str, timeout: float = 600) -> dict:
    """Run PRELUDE + body in a fresh interpreter; the body prints one JSON line last."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SPARSE_BACKENDS = ["superlu"] + (["pardiso"] if _pardiso.is_x86() and _pardiso.available() else [])


@pytest.mark.slow
@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_sparse_solve_loop_memory_is_flat(backend):
    # 100 x 100 Poisson (n = 10,000): one SuperLU factorization holds about 5 MiB, so a loop that
    # kept one factorization per call (the bug this guards against: SciPy frees a SuperLU object's
    # factors only on the thread that created it) would grow by gigabytes over these calls.
    # Forward and gradient alternate, fresh values every call; throw=False joins in every 4th call.
    # The cache holds at most 16 factorizations (~80 MiB) and is full before the first reading.
    res = run_script(
        f"""
        data, rows, cols, n = poisson(100)
        b = jnp.ones(n)
        solver = lx.SparseLU(backend="{backend}")

        def solve(v, b, throw):
            op = lx.SparseCOOLinearOperator(v, rows, cols, (n, n))
            return lx.linear_solve(op, b, solver, throw=throw).value

        fwd = jax.jit(lambda v, b: solve(v, b, True))
        fwd_nothrow = jax.jit(lambda v, b: solve(v, b, False))
        grad = jax.jit(jax.grad(lambda v, b: jnp.sum(solve(v, b, True) ** 2)))
        FUNCS = (grad, fwd, grad, fwd_nothrow)
        rng = np.random.default_rng(0)
        readings = []
        for i in range(600):
            v = jnp.asarray(data * (1.0 + 0.1 * rng.random(data.shape[0])))
            f = FUNCS[i % len(FUNCS)]
            jax.block_until_ready(f(v, b))
            if i in (99, 599):
                readings.append(rss_mib())
        print(json.dumps({{"rss": readings, "info": lx.SparseLU.cache_info()}}))
        """
    )
    before, after = res["rss"]
    assert res["info"]["entries"] <= 16
    # 40 MiB: well under one leaked factorization per ten calls (500 calls x 5 MiB / 10 = 250 MiB),
    # well above the run-to-run noise of a flat process (a few MiB measured).
    assert after - before < 40, (before, after, res["info"])
