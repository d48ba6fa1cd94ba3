"""Conjugate gradients across two processes, and its gradient, on JAX's own distributed engine.

This script starts itself twice. Each copy is one process with four CPU devices; the two join
through `jax.distributed.initialize` on localhost (CPU collectives over gloo) into one mesh of
eight devices. On it they solve the 2D Poisson problem

    (-Δ + c I) x = b    on an N x N grid, zero Dirichlet boundary (5-point stencil),

with the grid's rows sharded over all eight devices, by `lx.CG` on a matrix-free operator, and
differentiate `|x|²` with respect to `c` and to `b`. The operator's shifts along the sharded axis
are the only communication besides CG's inner products (scalars): XLA exchanges one boundary row
with each neighbour per product. Each process then checks the solution and both derivatives
against a single-process sparse direct solve with SciPy.

    python examples/distributed_cg.py          # starts the two processes and waits for them

Exit status 0 means both processes agreed with the reference. The same code runs across hosts:
give every process the coordinator's address, the number of processes and its own id.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

N = 128  # grid side; n = N² unknowns
C = 0.5  # the shift c
PROCESSES = 2
LOCAL_DEVICES = 4


def spawn() -> int:
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    env.pop("JAX_PLATFORMS", None)
    start = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--process", str(i), "--port", str(port)], env=env
        )
        for i in range(PROCESSES)
    ]
    try:
        codes = [child.wait(timeout=600) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    print(
        f"{PROCESSES} processes finished in {time.perf_counter() - start:.1f} s, exit codes {codes}"
    )
    return 0 if all(c == 0 for c in codes) else 1


def reference(b_grid):
    """x, d|x|²/dc and d|x|²/db from SciPy's sparse LU, in one process."""
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    one_d = sp.diags([-np.ones(N - 1), 2 * np.ones(N), -np.ones(N - 1)], [-1, 0, 1])
    eye = sp.identity(N)
    a = (sp.kron(one_d, eye) + sp.kron(eye, one_d) + C * sp.identity(N * N)).tocsc()
    lu = spla.splu(a)
    x = lu.solve(b_grid.ravel())
    a_inv_x = lu.solve(x)  # A is symmetric
    # x = A⁻¹b, dA/dc = I:  d|x|²/dc = -2 xᵀA⁻¹x,  d|x|²/db = 2 A⁻ᵀx.
    return x.reshape(N, N), -2.0 * x @ a_inv_x, 2.0 * a_inv_x.reshape(N, N)


def worker(process_id: int, port: int) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=PROCESSES,
        process_id=process_id,
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    import linopx as lx

    assert jax.device_count() == PROCESSES * LOCAL_DEVICES, jax.devices()
    # An `Auto` mesh axis: XLA works out the communication of the operator's shifts (on an
    # `Explicit` one, slicing across device blocks is not implemented in jax 0.10.2; an operator
    # there states its communication itself, e.g. with `jax.shard_map` and `jax.lax.ppermute`).
    mesh = jax.make_mesh((jax.device_count(),), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
    grid = NamedSharding(mesh, P("rows", None))

    def laplacian(u):
        """The 5-point -Δ on the grid, zero outside. Shifts along axis 0 cross device blocks."""
        up = jnp.pad(u[1:], ((0, 1), (0, 0)))
        down = jnp.pad(u[:-1], ((1, 0), (0, 0)))
        left = jnp.pad(u[:, 1:], ((0, 0), (0, 1)))
        right = jnp.pad(u[:, :-1], ((0, 0), (1, 0)))
        return 4 * u - up - down - left - right

    structure = jax.ShapeDtypeStruct((N, N), jnp.float64)

    def solve(b, c):
        operator = lx.FunctionLinearOperator(
            lambda u: laplacian(u) + c * u, structure, lx.positive_semidefinite_tag
        )
        return lx.linear_solve(operator, b, lx.CG(rtol=1e-11, atol=0.0)).value

    def loss(c, b):
        return jnp.sum(solve(b, c) ** 2)

    # Every process builds the same global right-hand side and places its own rows.
    b_grid = np.random.default_rng(0).standard_normal((N, N))
    b = jax.make_array_from_callback((N, N), grid, lambda index: b_grid[index])
    c = jnp.asarray(C)

    x = jax.jit(solve)(b, c)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    value, (dc, db) = value_and_grad(c, b)
    assert x.sharding.spec == P("rows", None) or x.sharding.is_equivalent_to(grid, 2), x.sharding
    assert db.sharding.is_equivalent_to(grid, 2), db.sharding

    compiled = value_and_grad.lower(c, b).compile().as_text()
    gathers = compiled.count("all-gather(")

    x_all = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    db_all = np.asarray(multihost_utils.process_allgather(db, tiled=True))
    x_ref, dc_ref, db_ref = reference(b_grid)
    err_x = np.abs(x_all - x_ref).max() / np.abs(x_ref).max()
    err_dc = abs(float(dc) - dc_ref) / abs(dc_ref)
    err_db = np.abs(db_all - db_ref).max() / np.abs(db_ref).max()
    ok = err_x < 1e-8 and err_dc < 1e-7 and err_db < 1e-7 and gathers == 0
    print(
        f"process {process_id}: {jax.local_device_count()} local of {jax.device_count()} devices; "
        f"relative errors against SciPy: x {err_x:.1e}, d|x|²/dc {err_dc:.1e}, "
        f"d|x|²/db {err_db:.1e}; all-gathers in the compiled gradient: {gathers}"
        + ("" if ok else "  <-- FAILED"),
        flush=True,
    )
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    if "--process" in sys.argv:
        pid = int(sys.argv[sys.argv.index("--process") + 1])
        port = int(sys.argv[sys.argv.index("--port") + 1])
        sys.exit(worker(pid, port))
    sys.exit(spawn())
