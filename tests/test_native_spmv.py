"""The native CPU kernel of the sparse product (`linopx/_native`): which programs use it, its
results against SciPy in every dtype and storage order, its derivatives and batching against the
pure-XLA path and finite differences, and the fallbacks (switched off, no compiler, a failed build,
several devices), each of those in a fresh subprocess.

References are SciPy's CSR products in float64/complex128 (and float32/complex64 compared with a
tolerance of a few units of float32 rounding per entry, relative to the largest entry).
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import force_xla_sparse_products, uses_native_spmv

import linopx as lx
from linopx._native import spmv as native

pytestmark = pytest.mark.skipif(
    not lx.native_info()["available"],
    reason=f"native kernels unavailable: {lx.native_info()['reason']}",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(got, ref) -> float:
    ref = np.asarray(ref)
    return float(np.max(np.abs(np.asarray(got) - ref)) / max(np.max(np.abs(ref)), 1e-300))


def random_matrix(rng, m, n, dtype, order="rows", density=0.15, duplicates=0):
    a = sp.random(m, n, density=density, random_state=rng, format="coo")
    rows, cols, data = a.row, a.col, a.data
    if duplicates:
        pick = rng.integers(0, rows.size, duplicates)
        rows, cols = np.append(rows, rows[pick]), np.append(cols, cols[pick])
    data = rng.normal(size=rows.size)
    if np.issubdtype(dtype, np.complexfloating):
        data = data + 1j * rng.normal(size=rows.size)
    key = {"rows": np.lexsort((cols, rows)), "cols": np.lexsort((rows, cols))}
    order_ = key.get(order, rng.permutation(rows.size))
    return sp.coo_matrix((data[order_].astype(dtype), (rows[order_], cols[order_])), (m, n))


@pytest.mark.parametrize("order, form", [("rows", 0), ("cols", 1), ("shuffled", 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_products_match_scipy(order, form, dtype, rng):
    a = random_matrix(rng, 37, 23, dtype, order, duplicates=5)
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    assert native.plan_of(op.pattern).form == form
    x = (rng.normal(size=23) + (1j * rng.normal(size=23) if a.dtype.kind == "c" else 0)).astype(
        dtype
    )
    u = rng.normal(size=37).astype(dtype)
    mv = jax.jit(lambda v, x: lx.SparseCOOLinearOperator(v, op.pattern).mv(x))
    rmv = jax.jit(lambda v, u: lx.SparseCOOLinearOperator(v, op.pattern).transpose().mv(u))
    assert uses_native_spmv(mv, op.values, x) and uses_native_spmv(rmv, op.values, u)
    ref = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64).tocsr()
    tol = 1e-6 if dtype in (np.float32, np.complex64) else 1e-14
    assert mv(op.values, x).dtype == dtype
    assert rel_err(mv(op.values, x), ref @ x.astype(ref.dtype)) < tol
    assert rel_err(rmv(op.values, u), ref.T @ u.astype(ref.dtype)) < tol
    # Eagerly too (the primitive's own compiled implementation).
    assert rel_err(op.mv(x), ref @ x.astype(ref.dtype)) < tol


def test_edge_shapes(rng):
    # Empty rows and columns, a matrix with no entries, a 1 x 1 matrix, a wide and a tall one.
    cases = [
        sp.coo_matrix((np.ones(2), ([0, 4], [3, 3])), (6, 5)),
        sp.coo_matrix((np.zeros(0), (np.zeros(0, int), np.zeros(0, int))), (4, 3)),
        sp.coo_matrix(([2.5], ([0], [0])), (1, 1)),
        random_matrix(rng, 3, 200, np.float64),
        random_matrix(rng, 200, 3, np.float64, "shuffled"),
    ]
    for a in cases:
        op = lx.SparseCOOLinearOperator.from_scipy(a)
        x = rng.normal(size=a.shape[1])
        u = rng.normal(size=a.shape[0])
        y = jax.jit(lambda x: op.mv(x))(x)
        np.testing.assert_allclose(y, a.tocsr() @ x, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(op.transpose().mv(u), a.T.tocsr() @ u, rtol=1e-14, atol=1e-15)


def test_int64_indices(rng):
    # Patterns with a dimension of 2³¹ or more store int64 indices; the kernel takes both widths.
    a = random_matrix(rng, 30, 20, np.float64)
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    p32 = native.plan_of(op.pattern)
    p64 = native.Plan(
        p32.form,
        p32.a.astype(np.int64),
        p32.b.astype(np.int64),
        p32.c.astype(np.int64),
        p32.rows.astype(np.int64),
        p32.cols.astype(np.int64),
        (p32.m, p32.n),
        key=("int64", p32.key),
    )
    x = rng.normal(size=20)
    y = jax.jit(lambda v, x: native.spmv_p.bind(v, x, plan=p64))(op.values, jnp.asarray(x))
    np.testing.assert_allclose(y, a.tocsr() @ x, rtol=1e-14)


@pytest.mark.parametrize("order", ["rows", "cols", "shuffled"])
def test_derivatives_match_the_xla_path_and_finite_differences(order, rng, monkeypatch):
    a = random_matrix(rng, 25, 25, np.float64, order, duplicates=3)
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    p = op.pattern
    x = jnp.asarray(rng.normal(size=25))

    def make_loss():  # a new function per path: traces are cached per function
        def loss(v, x):
            y = lx.SparseCOOLinearOperator(v, p).mv(x)
            z = lx.SparseCOOLinearOperator(v, p).transpose().mv(jnp.sin(y))
            return jnp.sum(z**2) + jnp.sum(jnp.cos(y))

        return loss

    loss = make_loss()
    assert uses_native_spmv(loss, op.values, x)
    val, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(op.values, x)

    def hvp(loss):  # Hessian-vector product in x: forward over reverse
        return jax.jit(lambda v, x, t: jax.jvp(jax.grad(loss, 1), (v, x), (v * 0, t))[1])

    t = jnp.asarray(rng.normal(size=25))
    h_native = hvp(loss)(op.values, x, t)
    # Central differences of the loss, along random directions, in float64.
    eps = 1e-6
    for d_v, d_x in (
        (rng.normal(size=a.nnz), np.zeros(25)),
        (np.zeros(a.nnz), rng.normal(size=25)),
    ):
        fd = loss(op.values + eps * d_v, x + eps * d_x) - loss(op.values - eps * d_v, x - eps * d_x)
        fd = fd / (2 * eps)
        np.testing.assert_allclose(grads[0] @ d_v + grads[1] @ d_x, fd, rtol=1e-6)
    force_xla_sparse_products(monkeypatch)
    loss = make_loss()
    assert not uses_native_spmv(loss, op.values, x)
    val_x, grads_x = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(op.values, x)
    np.testing.assert_allclose(val, val_x, rtol=1e-13)
    for g, gx in zip(grads, grads_x):
        np.testing.assert_allclose(g, gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_native, hvp(loss)(op.values, x, t), rtol=1e-12, atol=1e-12)


def test_complex_gradient_and_linear_transpose(rng):
    a = random_matrix(rng, 20, 16, np.complex128, "rows")
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    x = jnp.asarray(rng.normal(size=16) + 1j * rng.normal(size=16))
    w = jnp.asarray(rng.normal(size=20) + 1j * rng.normal(size=20))
    # jax.linear_transpose of the product is the plain transpose Aᵀ (no conjugate).
    (lt,) = jax.linear_transpose(op.mv, x)(w)
    np.testing.assert_allclose(lt, a.tocsr().T @ np.asarray(w), rtol=1e-13)

    # A real loss of a complex product: the gradient on the nonzeros is conj(∂L/∂values).
    def loss(v):
        return jnp.sum(jnp.abs(lx.SparseCOOLinearOperator(v, op.pattern).mv(x)) ** 2)

    g = jax.grad(loss)(op.values)
    y = a.tocsr() @ np.asarray(x)
    expected = 2 * y[op.rows] * np.conj(np.asarray(x)[op.cols])
    np.testing.assert_allclose(g, np.conj(expected), rtol=1e-12)


def test_batching(rng):
    a = random_matrix(rng, 30, 24, np.float64, "cols")
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    p = op.pattern
    vs = op.values[None] * jnp.asarray(rng.uniform(0.5, 2, (3, 1)))
    xs = jnp.asarray(rng.normal(size=(4, 24)))

    def f(v, x):
        return lx.SparseCOOLinearOperator(v, p).mv(x)

    mats = [sp.coo_matrix((np.asarray(v), (p.rows, p.cols)), p.shape).tocsr() for v in vs]
    # Over vectors, over values, over both, and nested both ways (batch axes not leading too).
    np.testing.assert_allclose(jax.vmap(f, (None, 0))(vs[0], xs), (mats[0] @ xs.T).T, rtol=1e-13)
    np.testing.assert_allclose(
        jax.vmap(f, (0, None))(vs, xs[0]), np.stack([m @ xs[0] for m in mats]), rtol=1e-13
    )
    np.testing.assert_allclose(
        jax.vmap(f)(vs, xs[:3]), np.stack([m @ x for m, x in zip(mats, xs[:3])]), rtol=1e-13
    )
    nested = jax.jit(jax.vmap(jax.vmap(f, (None, 0)), (0, None)))(vs, xs)
    nested_t = jax.jit(jax.vmap(jax.vmap(f, (0, None)), (None, 1), out_axes=2))(vs, xs.T)
    for i in range(3):
        np.testing.assert_allclose(nested[i], (mats[i] @ xs.T).T, rtol=1e-13)
        np.testing.assert_allclose(nested_t[i], mats[i] @ xs.T, rtol=1e-13)
    # Gradient of a batched product with respect to unbatched values sums over the batch.
    g = jax.grad(lambda v: jnp.sum(jax.vmap(f, (None, 0))(v, xs) ** 2))(op.values)
    ys = np.asarray(xs) @ a.tocsr().T
    expected = sum(2 * ys[j][p.rows] * np.asarray(xs[j])[p.cols] for j in range(4))
    np.testing.assert_allclose(g, expected, rtol=1e-12)


def test_lowering_for_other_platforms_matches_scipy(rng):
    # Off the CPU the primitive lowers to XLA operations (`_xla_product`); checked here directly,
    # batched as the kernel is (values and/or vectors with the output's batch, or unbatched).
    a = random_matrix(rng, 21, 17, np.float64, "shuffled", duplicates=2)
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    plan = native.plan_of(op.pattern)
    vs = np.asarray(op.values)[None] * rng.uniform(0.5, 2, (3, 1))
    xs = rng.normal(size=(3, 17))
    mats = [sp.coo_matrix((v, (op.rows, op.cols)), a.shape).tocsr() for v in vs]
    product = jax.jit(native._xla_product, static_argnames="plan")
    np.testing.assert_allclose(product(vs[0], xs[0], plan=plan), mats[0] @ xs[0], rtol=1e-13)
    both = product(vs, xs, plan=plan)
    only_values = product(vs, xs[0], plan=plan)
    only_x = product(vs[0], xs, plan=plan)
    for i in range(3):
        np.testing.assert_allclose(both[i], mats[i] @ xs[i], rtol=1e-13)
        np.testing.assert_allclose(only_values[i], mats[i] @ xs[0], rtol=1e-13)
        np.testing.assert_allclose(only_x[i], mats[0] @ xs[i], rtol=1e-13)


def test_solves_through_the_kernel(rng):
    # CG and GMRES, forward and reverse, on products in the kernel, against SciPy's direct solve.
    a = sp.diags([-1.0, 2.5, -1.2], [-1, 0, 1], (60, 60)).tocoo()
    b = rng.normal(size=60)
    for tags, solver in ((lx.positive_semidefinite_tag, lx.CG), ((), lx.GMRES)):
        sym = (a + a.T) / 2 if solver is lx.CG else a
        op = lx.SparseCOOLinearOperator.from_scipy(sp.coo_matrix(sym), tags)
        s = solver(rtol=1e-12, atol=0.0)
        want = sp.linalg.spsolve(sp.csc_matrix(sym), b)
        f = jax.jit(
            lambda v, b: (
                lx.linear_solve(lx.SparseCOOLinearOperator(v, op.pattern, tags=tags), b, s).value
            )
        )
        np.testing.assert_allclose(f(op.values, b), want, rtol=1e-9)
        # d/db of c·x is A⁻ᵀ c.
        c = rng.normal(size=60)
        g = jax.grad(lambda b: jnp.vdot(c, f(op.values, b)))(jnp.asarray(b))
        np.testing.assert_allclose(g, sp.linalg.spsolve(sp.csc_matrix(sym).T, c), rtol=1e-8)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


PROBE = """
    import warnings
    warnings.simplefilter("always")
    import jax, jax.numpy as jnp, numpy as np, scipy.sparse as sp
    jax.config.update("jax_enable_x64", True)
    import linopx as lx
    a = sp.random(40, 30, density=0.2, random_state=0, format="coo")
    op = lx.SparseCOOLinearOperator.from_scipy(a)
    x = np.random.default_rng(0).normal(size=30)
    f = jax.jit(lambda v, x: lx.SparseCOOLinearOperator(v, op.pattern).mv(x))
    err = np.max(np.abs(f(op.values, x) - a.tocsr() @ x))
    info = lx.native_info()
    used = "linopx_spmv" in f.lower(op.values, x).as_text()
    print("RESULT", info["available"], used, err < 1e-13)
    print("REASON", info["reason"])
"""


def result_of(proc):
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    reason = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REASON"))
    return line.split()[1:], reason


def test_switched_off_by_environment():
    (available, used, right), reason = result_of(run_python(PROBE, LINOPX_NATIVE="0"))
    assert (available, used, right) == ("False", "False", "True")
    assert "LINOPX_NATIVE=0" in reason


def test_no_compiler_falls_back_quietly(tmp_path):
    # No compiler on the path and none named: the XLA path, no warning, and the reason said.
    env = {"PATH": str(tmp_path), "CXX": "", "LINOPX_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_python(PROBE, **env)
    (available, used, right), reason = result_of(proc)
    assert (available, used, right) == ("False", "False", "True")
    assert "no C++ compiler" in reason
    assert "RuntimeWarning" not in proc.stderr


def test_failed_build_warns_once_and_falls_back(tmp_path):
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'fatal error: simulated' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc = run_python(PROBE, CXX=str(fake), LINOPX_CACHE_DIR=str(tmp_path / "cache"))
    (available, used, right), reason = result_of(proc)
    assert (available, used, right) == ("False", "False", "True")
    assert "simulated" in reason
    assert proc.stderr.count("could not build its native kernels") == 1


def test_concurrent_first_builds_share_one_cache(tmp_path):
    # Two processes building into an empty cache at once (as test workers do): both load a whole
    # library, and one file is left.
    env = {**os.environ, "LINOPX_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PROBE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "RESULT True True True" in out
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_several_devices_keep_the_xla_path():
    # With several devices XLA's partitioner must be able to split the product: no foreign kernel.
    proc = run_python(
        PROBE.replace('print("RESULT"', 'assert jax.device_count() == 8\n    print("RESULT"'),
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    (available, used, right), _ = result_of(proc)
    assert (available, used, right) == ("True", "False", "True")


def test_solver_loops_keep_the_diagonal_form_for_stencils(rng):
    # Inside linopx's solver loops a stencil pattern takes XLA's diagonal form (its layout is
    # hoisted out of the loop and the shifted products fuse with the vector updates); a pattern
    # without a diagonal layout keeps the kernel there too. Outside loops both use the kernel.
    from linopx.linops.sparse import _IN_SOLVER_LOOP, in_solver_loop
    from linopx.solvers import _krylov

    stencil = lx.SparseCOOLinearOperator.from_scipy(
        sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (50, 50))
    )
    scattered = lx.SparseCOOLinearOperator.from_scipy(random_matrix(rng, 50, 50, np.float64))
    x = rng.normal(size=50)
    for op, in_loop in ((stencil, False), (scattered, True)):
        assert uses_native_spmv(
            lambda v, x: lx.SparseCOOLinearOperator(v, op.pattern).mv(x), op.values, x
        )
        with in_solver_loop():
            used = uses_native_spmv(
                lambda v, x: lx.SparseCOOLinearOperator(v, op.pattern).mv(x), op.values, x
            )
        assert used == in_loop
    seen = []

    def body(c):
        seen.append(_IN_SOLVER_LOOP.get())
        return c + 1

    _krylov.while_loop(lambda c: c < 3, body, 0)
    assert seen and all(seen) and not _IN_SOLVER_LOOP.get()
