"""CG on sharded vectors: time and communication per iteration on 1, 2, 4 and 8 devices.

    python benchmarks/sharded.py           # full sizes
    python benchmarks/sharded.py --quick   # small sizes, a smoke test
    python -m benchmarks --suites sharded --out /tmp/sharded

The problem: the 2D Poisson operator (5-point -Δ plus 0.01 I, zero Dirichlet boundary) on an
N x N grid as a matrix-free `lx.FunctionLinearOperator`, its rows sharded over the devices of a
1-D `Auto` mesh (`NamedSharding(mesh, P("rows", None))`); `lx.CG` runs a fixed 100 iterations
(`rtol = atol = 0`, `max_steps = 100`) and the time is divided by the iteration count. Devices
are virtual CPU devices (`--xla_force_host_platform_device_count=8`) in a child process: on a
machine with fewer cores than devices the devices share the cores, so time does not fall with
the device count here; the figure that must behave is the communication.

"collective bytes / iteration" is read from the compiled program: the bytes of the results of the
all-reduce, all-gather, collective-permute, all-to-all and reduce-scatter operations in the body
of CG's iteration loop (the loop whose body holds the most collectives), per device. CG's inner
products are scalar all-reduces (8 bytes each, two per iteration) and the operator's shifts along
the sharded axis exchange one grid row with each neighbour (2 x N x 8 bytes): O(N) = O(√n), not
O(n), and no all-gather of a vector. The same solve with `jax.scipy.sparse.linalg.cg` on 8 devices
is measured beside it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (64, 128)
DEVICES = (1, 2, 4, 8)
QUICK_DEVICES = (1, 8)
STEPS = 100
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "c128": 16, "c64": 8}


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
        size = 1
        for d in dims.split(","):
            if d:
                size *= int(d)
        total += size * _DTYPE_BYTES.get(dtype, 8)
    return total


def loop_collective_bytes(hlo: str) -> tuple[int, dict]:
    """`(bytes, counts)` of the collectives in the while-loop body that holds the most of them
    (including the computations it calls, except nested loops' bodies)."""
    computations = {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            computations[name].append(line)
    bodies = set()
    for lines in computations.values():
        for line in lines:
            m = re.search(r"\bwhile\(.*body=%?([\w.\-]+)", line)
            if m:
                bodies.add(m.group(1))

    def tally(comp, seen):
        total, counts = 0, {}
        for line in computations.get(comp, []):
            for op in COLLECTIVES:
                m = re.search(rf"= (\S+|\([^=]*\)) {op}(?:-start)?\(", line)
                if m:
                    total += _shape_bytes(m.group(1))
                    counts[op] = counts.get(op, 0) + 1
            for callee in re.findall(
                r"(?:calls|to_apply|branch_computations)=\{?%?([\w.\-]+)", line
            ):
                if callee not in bodies and callee not in seen:
                    seen.add(callee)
                    t, c = tally(callee, seen)
                    total += t
                    for k, v in c.items():
                        counts[k] = counts.get(k, 0) + v
        return total, counts

    best = (0, {})
    for body in bodies:
        t, c = tally(body, {body})
        if sum(c.values()) > sum(best[1].values()):
            best = (t, c)
    return best


def child(sizes, devices) -> list[dict]:
    import time

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.scipy.sparse.linalg as jsla
    import numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

    import linopx as lx

    def laplacian(u):
        up = jnp.pad(u[1:], ((0, 1), (0, 0)))
        down = jnp.pad(u[:-1], ((1, 0), (0, 0)))
        left = jnp.pad(u[:, 1:], ((0, 0), (0, 1)))
        right = jnp.pad(u[:, :-1], ((0, 0), (1, 0)))
        return 4.01 * u - up - down - left - right

    def best_time(fn, *args, repeats=3):
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t0)
        return best

    out = []
    for n_side in sizes:
        structure = jax.ShapeDtypeStruct((n_side, n_side), jnp.float64)
        operator = lx.FunctionLinearOperator(laplacian, structure, lx.positive_semidefinite_tag)
        solver = lx.CG(rtol=0.0, atol=0.0, max_steps=STEPS)
        b_np = np.random.default_rng(0).standard_normal((n_side, n_side))
        for d in devices:
            mesh = Mesh(np.array(jax.devices()[:d]), ("rows",), axis_types=(AxisType.Auto,))
            b = jax.device_put(b_np, NamedSharding(mesh, P("rows", None)))
            record = {"N": n_side, "devices": d}
            impls = {"linopx": jax.jit(lambda b: lx.linear_solve(operator, b, solver).value)}
            if d == max(devices):
                impls["jax.scipy cg"] = jax.jit(
                    lambda b: jsla.cg(laplacian, b, tol=0.0, atol=0.0, maxiter=STEPS)[0]
                )
            for name, fn in impls.items():
                hlo = fn.lower(b).compile().as_text()
                nbytes, counts = loop_collective_bytes(hlo)
                record[name] = {
                    "seconds per iteration": best_time(fn, b) / STEPS,
                    "collective bytes per iteration": nbytes,
                    "collectives per iteration": counts,
                    "all-gathers in program": hlo.count(" all-gather("),
                }
            out.append(record)
            print(json.dumps(record), flush=True)
    return out


def measure(sizes, devices) -> list[dict]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(devices)}"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps([sizes, devices])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 and not records:
        raise RuntimeError(proc.stderr[-2000:])
    return records


def rows_of(records: list[dict]) -> list[dict]:
    from benchmarks._timing import row

    out = []
    for n_side in sorted({r["N"] for r in records}):
        recs = sorted((r for r in records if r["N"] == n_side), key=lambda r: r["devices"])
        times, notes = {}, {}
        for r in recs:
            label = "linopx" if r["devices"] == 1 else f"linopx, {r['devices']} devices"
            times[label] = r["linopx"]["seconds per iteration"]
            notes[f"bytes/it, {r['devices']} dev"] = str(
                r["linopx"]["collective bytes per iteration"]
            )
            notes[f"all-gathers, {r['devices']} dev"] = str(r["linopx"]["all-gathers in program"])
        case = "CG per iteration, 2D Poisson, rows sharded (Auto mesh)"
        out.append(row(case, f"n={n_side * n_side}", times, **notes))
        last = recs[-1]
        if "jax.scipy cg" in last:
            d = last["devices"]
            mine, ref = last["linopx"], last["jax.scipy cg"]
            out.append(
                row(
                    f"CG per iteration on {d} devices, against jax.scipy",
                    f"n={n_side * n_side}",
                    {
                        "linopx": mine["seconds per iteration"],
                        "jax.scipy cg": ref["seconds per iteration"],
                    },
                    **{
                        "linopx bytes/it": str(mine["collective bytes per iteration"]),
                        "jax.scipy bytes/it": str(ref["collective bytes per iteration"]),
                        "linopx collectives/it": json.dumps(mine["collectives per iteration"]),
                        "jax.scipy collectives/it": json.dumps(ref["collectives per iteration"]),
                    },
                )
            )
    return out


def cases(quick: bool = False):
    sizes = QUICK_SIZES if quick else SIZES
    devices = QUICK_DEVICES if quick else DEVICES
    return [(f"N={n}", lambda n=n: rows_of(measure((n,), devices))) for n in sizes]


def report_notes(rows: list[dict]) -> list[str]:
    return [
        f"Each CG iteration: {STEPS} fixed iterations timed, divided by {STEPS}; the best of 3 "
        "runs. Virtual CPU devices share this machine's cores, so time does not fall with the "
        "device count here. The communication per iteration (bytes/it, per device, read from "
        "the compiled loop body) grows with the grid side N (one halo row per neighbour), not "
        "with n = N², and the programs hold no all-gather.",
        "",
    ]


def plot(rows: list[dict], out: str, plt) -> list[str]:
    points = {}
    for r in rows:
        if not r["case"].startswith("CG per iteration, 2D"):
            continue
        n = int(r["size"].split("=")[1])
        for key, value in r["notes"].items():
            m = re.match(r"bytes/it, (\d+) dev", key)
            if m:
                points.setdefault(int(m.group(1)), []).append((n, int(value)))
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for d, pts in sorted(points.items()):
        if d == 1:  # nothing to communicate (0 bytes: off a log scale)
            continue
        pts.sort()
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{d} devices")
    ns = sorted({p[0] for pts in points.values() for p in pts})
    ax.loglog(ns, [8 * n for n in ns], "k--", linewidth=1, label="one whole vector (8n bytes)")
    ax.set_xlabel("unknowns n")
    ax.set_ylabel("collective bytes per CG iteration")
    ax.set_title("sharded: communication per iteration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "sharded-communication-per-iteration.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return [name]


if __name__ == "__main__":
    if "--child" in sys.argv:
        sizes, devices = json.loads(sys.argv[sys.argv.index("--child") + 1])
        child(tuple(sizes), tuple(devices))
        raise SystemExit(0)
    from benchmarks._timing import suite_main

    suite_main(__doc__, cases, [])
