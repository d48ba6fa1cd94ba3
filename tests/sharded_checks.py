"""Checks on 8 virtual CPU devices, run by `test_sharding.py` in a subprocess (the device count
must be set before JAX starts). Prints one JSON object per line: `{"case": ..., "ok": ..., ...}`.

Each case is a program a user writes: arrays placed with `NamedSharding` on an `Auto` or
`Explicit` mesh, then `jit`, `vmap`, `grad` or `shard_map` around `lx.linear_solve`. References
are NumPy/SciPy in float64; the compiled programs are read for collectives."""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json
import re
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

jax.config.update("jax_enable_x64", True)

import linopx as lx  # noqa: E402


def report(case, **fields):
    fields = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in fields.items()}
    print(json.dumps({"case": case, **fields}), flush=True)


def run(case, fn):
    # Marks where each case's messages from XLA start, for the test to attribute its warnings.
    print(f"### case {case}", file=sys.stderr, flush=True)
    try:
        fields = fn()
        report(case, **fields)
    except Exception as err:  # noqa: BLE001 - reported to the test, which fails with it
        report(
            case, error=f"{type(err).__name__}: {err}"[:2000], trace=traceback.format_exc()[-3000:]
        )


def collectives(compiled_text):
    """The shapes of the all-gathers and all-reduces in a compiled program."""
    gathers = re.findall(r"= (\S+) all-gather\(", compiled_text)
    reduces = re.findall(r"= (\S+) all-reduce\(", compiled_text)
    return gathers, reduces


def largest_reduce(reduces):
    """The largest number of elements in one all-reduce (tuple results count all their parts)."""
    best = 0
    for shape in reduces:
        sizes = re.findall(r"\[([\d,]*)\]", shape)
        total = sum(int(np.prod([int(d) for d in s.split(",") if d])) if s else 1 for s in sizes)
        best = max(best, total)
    return best


def mesh_for(kind, name="x"):
    axis = AxisType.Explicit if kind == "explicit" else AxisType.Auto
    return jax.make_mesh((8,), (name,), axis_types=(axis,))


# ---------------------------------------------------------------------------------------------
# Dense solvers on a batch of systems, the batch sharded.

RNG = np.random.default_rng(0)
BATCH, M = 8, 6
A_GEN = RNG.standard_normal((BATCH, M, M))
A_SPD = A_GEN @ np.swapaxes(A_GEN, 1, 2) + M * np.eye(M)
A_GEN = A_GEN + 3 * np.eye(M)
B_BATCH = RNG.standard_normal((BATCH, M))

DENSE = {
    "LU": (lx.LU(), A_GEN, ()),
    "QR": (lx.QR(), A_GEN, ()),
    "SVD": (lx.SVD(), A_GEN, ()),
    "Cholesky": (lx.Cholesky(), A_SPD, (lx.positive_semidefinite_tag,)),
    "Auto": (lx.AutoLinearSolver(well_posed=None), A_GEN, ()),
}


def dense_case(kind, name, how):
    solver, a_np, tags = DENSE[name]
    mesh = mesh_for(kind, "batch")

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a, tags), b, solver).value

    def loss(a, b):
        return jnp.sum(jax.vmap(solve)(a, b) ** 2)

    expected = np.linalg.solve(a_np, B_BATCH[..., None])[..., 0]
    # d/db Σ|x|² = 2 A⁻ᵀ x;  d/dA = -A⁻ᵀ (2x) xᵀ
    w = np.linalg.solve(np.swapaxes(a_np, 1, 2), 2 * expected[..., None])[..., 0]
    grad_a = -w[:, :, None] * expected[:, None, :]

    with jax.set_mesh(mesh):
        a = jax.device_put(a_np, NamedSharding(mesh, P("batch")))
        b = jax.device_put(B_BATCH, NamedSharding(mesh, P("batch")))
        if how == "vmap":
            f = jax.jit(jax.vmap(solve))
        else:  # shard_map with its default checks, vmap inside each shard
            f = jax.jit(
                jax.shard_map(
                    jax.vmap(solve), mesh=mesh, in_specs=(P("batch"),) * 2, out_specs=P("batch")
                )
            )
        x = f(a, b)
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))
        ga, gb = g(a, b)
        gathers, _ = collectives(g.lower(a, b).compile().as_text())
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - expected).max()),
            err_grad_a=float(np.abs(np.asarray(ga) - grad_a).max()),
            err_grad_b=float(np.abs(np.asarray(gb) - w).max()),
            out_spec=str(x.sharding.spec),
            grad_spec=str(ga.sharding.spec),
            gathers=len(gathers),
        )


# ---------------------------------------------------------------------------------------------
# Krylov solvers on a sharded vector: eight independent shifted periodic 1-D Laplacians, one per
# device block, so that the operator itself communicates nothing.

N = 8 * 256
SHIFT = 0.3
B_VEC = RNG.standard_normal(N)


def block_mv(v, s):
    u = v.reshape(8, N // 8)
    out = (2.0 + s) * u - jnp.roll(u, 1, axis=1) - jnp.roll(u, -1, axis=1)
    return out.reshape(N)


def block_reference():
    m = N // 8
    t = (2 + SHIFT) * np.eye(m) - np.roll(np.eye(m), 1, axis=0) - np.roll(np.eye(m), -1, axis=0)
    blocks = B_VEC.reshape(8, m)
    x = np.concatenate([np.linalg.solve(t, blocks[i]) for i in range(8)])
    # d/ds Σ|x|² = -2 xᵀ A⁻¹ x (dA/ds = I);  d/db = 2 A⁻¹ x (A symmetric)
    ainv_x = np.concatenate([np.linalg.solve(t, x.reshape(8, m)[i]) for i in range(8)])
    return x, -2 * x @ ainv_x, 2 * ainv_x


KRYLOV = {
    "CG": lambda: lx.CG(rtol=1e-11, atol=0.0),
    "GMRES": lambda: lx.GMRES(rtol=1e-11, atol=0.0, restart=40),
    "BiCGStab": lambda: lx.BiCGStab(rtol=1e-11, atol=0.0),
    "MINRES": lambda: lx.MINRES(rtol=1e-11, atol=0.0),
    "LSMR": lambda: lx.LSMR(rtol=1e-11, atol=0.0),
    "LSQR": lambda: lx.LSQR(rtol=1e-11, atol=0.0),
}


def krylov_case(kind, name, throw):
    mesh = mesh_for(kind)
    struct = jax.ShapeDtypeStruct((N,), jnp.float64)
    solver = KRYLOV[name]()
    x_ref, ds_ref, db_ref = block_reference()

    def solve(b, s):
        op = lx.FunctionLinearOperator(
            lambda v: block_mv(v, s), struct, lx.positive_semidefinite_tag
        )
        return lx.linear_solve(op, b, solver, throw=throw).value

    def loss(b, s):
        return jnp.sum(solve(b, s) ** 2)

    with jax.set_mesh(mesh):
        b = jax.device_put(B_VEC, NamedSharding(mesh, P("x")))
        s = jnp.asarray(SHIFT)
        f = jax.jit(solve)
        g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        x = f(b, s)
        _, (gb, gs) = g(b, s)
        gathers_f, reduces_f = collectives(f.lower(b, s).compile().as_text())
        gathers_g, reduces_g = collectives(g.lower(b, s).compile().as_text())
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - x_ref).max() / np.abs(x_ref).max()),
            err_grad_s=float(abs(float(gs) - ds_ref) / abs(ds_ref)),
            err_grad_b=float(np.abs(np.asarray(gb) - db_ref).max() / np.abs(db_ref).max()),
            out_spec=str(x.sharding.spec),
            grad_spec=str(gb.sharding.spec),
            gathers=len(gathers_f) + len(gathers_g),
            largest_reduce=largest_reduce(reduces_f + reduces_g),
        )


def krylov_vmap_case(kind, name):
    """`vmap` of a Krylov solve over two right-hand sides, each sharded along its length."""
    mesh = mesh_for(kind)
    struct = jax.ShapeDtypeStruct((N,), jnp.float64)
    solver = KRYLOV[name]()
    x_ref, _, _ = block_reference()
    op = lx.FunctionLinearOperator(
        lambda v: block_mv(v, SHIFT), struct, lx.positive_semidefinite_tag
    )
    bs = np.stack([B_VEC, 2 * B_VEC])

    def solve(b):
        return lx.linear_solve(op, b, solver).value

    with jax.set_mesh(mesh):
        b = jax.device_put(bs, NamedSharding(mesh, P(None, "x")))
        f = jax.jit(jax.vmap(solve))
        x = f(b)
        g = jax.jit(jax.grad(lambda b: jnp.sum(jax.vmap(solve)(b) ** 2)))
        gb = g(b)
        gathers, reduces = collectives(g.lower(b).compile().as_text())
        expected = np.stack([x_ref, 2 * x_ref])
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - expected).max() / np.abs(expected).max()),
            out_spec=str(x.sharding.spec),
            grad_spec=str(gb.sharding.spec),
            gathers=len(gathers),
        )


def krylov_shard_map_case(name):
    """The same solve written per shard: each device solves its own block (no communication)."""
    mesh = mesh_for("explicit")
    m = N // 8
    struct = jax.ShapeDtypeStruct((m,), jnp.float64)
    solver = KRYLOV[name]()
    x_ref, _, _ = block_reference()

    def local(b, s):
        op = lx.FunctionLinearOperator(
            lambda v: (2.0 + s) * v - jnp.roll(v, 1) - jnp.roll(v, -1),
            struct,
            lx.positive_semidefinite_tag,
        )
        return lx.linear_solve(op, b, solver).value

    with jax.set_mesh(mesh):
        b = jax.device_put(B_VEC, NamedSharding(mesh, P("x")))
        s = jnp.asarray(SHIFT)
        f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("x"), P()), out_specs=P("x")))
        x = f(b, s)
        g = jax.jit(jax.grad(lambda b, s: jnp.sum(f(b, s) ** 2), argnums=1))(b, s)
        _, ds_ref, _ = block_reference()
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - x_ref).max() / np.abs(x_ref).max()),
            err_grad_s=float(abs(float(g) - ds_ref) / abs(ds_ref)),
            out_spec=str(x.sharding.spec),
        )


# ---------------------------------------------------------------------------------------------
# A failed solve with throw=True raises on every device (no device left waiting for another).


def failure_case(where):
    n = 64
    a = (
        np.diag(np.full(n, 3.0))
        + np.diag(np.full(n - 1, -1.0), 1)
        + np.diag(np.full(n - 1, -1.0), -1)
    )
    b_np = np.ones(n)
    b_np[5] = np.nan
    kind = "explicit" if "explicit" in where else "auto"
    mesh = mesh_for(kind)
    op = lx.FunctionLinearOperator(
        lambda v: jnp.asarray(a) @ v,
        jax.ShapeDtypeStruct((n,), jnp.float64),
        lx.positive_semidefinite_tag,
    )

    def program():
        b = jax.device_put(b_np, NamedSharding(mesh, P("x")))
        f = jax.jit(
            lambda b: jnp.sum(lx.linear_solve(op, b, lx.CG(rtol=1e-8, atol=0.0)).value ** 2)
        )
        return jax.block_until_ready(f(b))

    try:
        if "nomesh" in where:
            program()
        else:
            with jax.set_mesh(mesh):
                program()
    except Exception as err:  # noqa: BLE001
        return dict(ok=True, raised=type(err).__name__, message=str(err)[-300:])
    return dict(ok=True, raised=None)


# ---------------------------------------------------------------------------------------------
# Sparse direct solves: the callback reads the values and the vector whole, gathered once.


def sparse_case(kind, how):
    mesh = mesh_for(kind)
    if how == "direct":
        solver, tags = lx.SparseLU(), ()
    else:  # a Krylov solve on the sparse operator: its products gather the vector (Explicit)
        solver, tags = lx.CG(rtol=1e-13, atol=0.0), (lx.positive_semidefinite_tag,)
    side = 16
    one = sp.diags([-np.ones(side - 1), 2 * np.ones(side), -np.ones(side - 1)], [-1, 0, 1])
    a = (sp.kron(one, sp.identity(side)) + sp.kron(sp.identity(side), one)).tocoo()
    op0 = lx.SparseCOOLinearOperator.from_scipy(a)
    b_np = RNG.standard_normal(side * side)
    x_ref = spla.spsolve(a.tocsc(), b_np)
    w_ref = 2 * spla.spsolve(a.T.tocsc(), x_ref)
    with jax.set_mesh(mesh):
        b = jax.device_put(b_np, NamedSharding(mesh, P("x")))
        values = jnp.asarray(op0.values)

        def solve(values, b):
            op = lx.SparseCOOLinearOperator(values, op0.rows, op0.cols, op0.shape, tags)
            return lx.linear_solve(op, b, solver).value

        x = jax.jit(solve)(values, b)
        gv, gb = jax.jit(jax.grad(lambda v, b: jnp.sum(solve(v, b) ** 2), argnums=(0, 1)))(
            values, b
        )
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - x_ref).max()),
            err_grad_b=float(np.abs(np.asarray(gb) - w_ref).max()),
            err_grad_values=float(np.abs(np.asarray(gv) + w_ref[op0.rows] * x_ref[op0.cols]).max()),
            out_spec=str(x.sharding.spec),
        )


# ---------------------------------------------------------------------------------------------
# One system with its right-hand side sharded, and a shard_map over some of the mesh's axes.


def single_system_case(kind, name):
    """One dense system (the matrix replicated) with its right-hand side sharded: the solve
    gathers the vector; eagerly (no `jit`) and under `jit(grad)`."""
    mesh = mesh_for(kind)
    n = 64
    q = np.linalg.qr(RNG.standard_normal((n, n)))[0]
    a_np = q @ np.diag(np.linspace(1.0, 10.0, n)) @ q.T
    b_np = RNG.standard_normal(n)
    solver = {"Auto": lx.AutoLinearSolver(well_posed=True), "CG": lx.CG(rtol=1e-12, atol=0.0)}[name]
    op = lx.MatrixLinearOperator(jnp.asarray(a_np), lx.positive_semidefinite_tag)
    x_ref = np.linalg.solve(a_np, b_np)
    w_ref = np.linalg.solve(a_np.T, 2 * x_ref)
    with jax.set_mesh(mesh):
        b = jax.device_put(b_np, NamedSharding(mesh, P("x")))
        x = lx.linear_solve(op, b, solver).value  # eager
        gb = jax.jit(jax.grad(lambda b: jnp.sum(lx.linear_solve(op, b, solver).value ** 2)))(b)
        return dict(
            ok=True,
            err=float(np.abs(np.asarray(x) - x_ref).max()),
            err_grad_b=float(np.abs(np.asarray(gb) - w_ref).max()),
            out_spec=str(x.sharding.spec),
        )


def partial_shard_map_case():
    """`shard_map` over one axis of a 2-D mesh (the other left to the compiler), a batch of
    dense solves inside; then a NaN with throw=True, which must raise."""
    mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b).value

    expected = np.linalg.solve(A_GEN, B_BATCH[..., None])[..., 0]
    with jax.set_mesh(mesh):
        place = NamedSharding(mesh, P("a"))
        a = jax.device_put(A_GEN, place)
        f = jax.jit(
            jax.shard_map(
                jax.vmap(solve),
                mesh=mesh,
                in_specs=(P("a"),) * 2,
                out_specs=P("a"),
                axis_names={"a"},
            )
        )
        x = f(a, jax.device_put(B_BATCH, place))
        bad = B_BATCH.copy()
        bad[3, 2] = np.nan
        try:
            jax.block_until_ready(f(a, jax.device_put(bad, place)))
            raised, message = None, ""
        except Exception as err:  # noqa: BLE001
            raised, message = type(err).__name__, str(err)[-300:]
    return dict(
        ok=True, err=float(np.abs(np.asarray(x) - expected).max()), raised=raised, message=message
    )


def full_manual_failure_case(bad):
    """A batch of dense solves in a `shard_map` manual over all 8 devices, one system per device,
    followed by a `psum`. Each device checks its own solve; a failure must raise on every device
    (one raising alone would leave the others waiting in the `psum`, and XLA would abort the
    process). `bad`: device -> "nan" or "singular"; the first failed device's diagnosis is
    raised."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    a = A_GEN.copy()
    b = B_BATCH.copy()
    for device, kind in bad.items():
        if kind == "nan":
            b[device, 1] = np.nan
        else:
            a[device] = np.outer(np.arange(1.0, M + 1), np.ones(M))

    def body(a, b):
        x = jax.vmap(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b).value)(a, b)
        return jax.lax.psum(jnp.sum(x**2), "x")[None]

    with jax.set_mesh(mesh):
        place = NamedSharding(mesh, P("x"))
        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("x"),) * 2, out_specs=P("x")))
        try:
            a, b = jax.device_put(a, place), jax.device_put(b, place)
            out = np.asarray(jax.block_until_ready(f(a, b)))
            raised, message = None, ""
        except Exception as err:  # noqa: BLE001
            raised, message, out = type(err).__name__, str(err)[-300:], None
    expected = float(np.sum(np.linalg.solve(A_GEN, B_BATCH[..., None]) ** 2))
    err = None if out is None else float(np.abs(out - expected).max() / expected)
    return dict(ok=True, raised=raised, message=message, err=err)


def main():
    which = sys.argv[1:] or ["dense", "krylov", "failure", "sparse"]
    if "dense" in which:
        for kind in ("auto", "explicit"):
            for name in DENSE:
                run(f"dense-{kind}-{name}-vmap", lambda: dense_case(kind, name, "vmap"))
            run(f"dense-{kind}-LU-shard_map", lambda: dense_case(kind, "LU", "shard_map"))
        run("dense-partial-shard_map", partial_shard_map_case)
        for kind in ("auto", "explicit"):
            for name in ("Auto", "CG"):
                run(f"single-{kind}-{name}", lambda: single_system_case(kind, name))
    if "krylov" in which:
        # Auto first, then Explicit in the same process: a cache keyed without the sharding
        # would replay the Auto program on the Explicit mesh.
        for kind in ("auto", "explicit"):
            for name in KRYLOV:
                run(f"krylov-{kind}-{name}", lambda: krylov_case(kind, name, True))
        run("krylov-explicit-CG-nothrow", lambda: krylov_case("explicit", "CG", False))
        for kind in ("auto", "explicit"):
            for name in ("CG", "GMRES"):
                run(f"krylov-vmap-{kind}-{name}", lambda: krylov_vmap_case(kind, name))
        for name in ("CG", "GMRES", "MINRES"):
            run(f"krylov-shard_map-{name}", lambda: krylov_shard_map_case(name))
    if "failure" in which:
        for where in ("auto-nomesh", "auto", "explicit"):
            run(f"failure-{where}", lambda: failure_case(where))
        for name, bad in (
            ("none", {}),
            ("nan", {5: "nan"}),
            ("singular-then-nan", {2: "singular", 5: "nan"}),
        ):
            run(f"full-manual-{name}", lambda: full_manual_failure_case(bad))
    if "sparse" in which:
        for kind in ("auto", "explicit"):
            for how in ("direct", "cg"):
                run(f"sparse-{how}-{kind}", lambda: sparse_case(kind, how))
    report("done", ok=True)


if __name__ == "__main__":
    main()
