"""Solves on sharded arrays over 8 devices: batches of dense systems, Krylov solves on sharded
vectors, `shard_map` with its default checks, failures with `throw=True`, and sparse direct solves.

The device count must be set before JAX starts, so the programs run in one subprocess
(`tests/sharded_checks.py`, which prints one JSON line per case) and each test here reads its
case. What is checked: the answer and the gradient against NumPy/SciPy in float64, the output's
sharding, the compiled programs' collectives (no all-gather; the all-reduces of Krylov solvers
carry scalars, or GMRES's column of inner products), a failure raising rather than leaving the
devices waiting, and no "Involuntary full rematerialization" warning from XLA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

DENSE = ["LU", "QR", "SVD", "Cholesky", "Auto"]
KRYLOV = ["CG", "GMRES", "BiCGStab", "MINRES", "LSMR", "LSQR"]


def _run_checks(*groups: str, **env_extra: str):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "sharded_checks.py"), *groups],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    cases = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            cases[record["case"]] = record
    assert "done" in cases, (
        f"the subprocess did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return cases, proc.stderr


@pytest.fixture(scope="module")
def sharded():
    return _run_checks()


@pytest.fixture(scope="module")
def sharded_fallback():
    """The failure cases with the native kernels off: every check is the `cond` + callback."""
    return _run_checks("failure", LINOPX_NATIVE="0")


def case(sharded, name):
    cases, _ = sharded
    record = cases[name]
    assert "error" not in record, f"{name}: {record['error']}\n{record.get('trace', '')}"
    return record


def _warnings_by_case(stderr):
    out, name = {}, None
    for line in stderr.splitlines():
        if line.startswith("### case "):
            name = line[len("### case ") :]
        elif "Involuntary full rematerialization" in line:
            out.setdefault(name, []).append(line)
    return out


def test_no_involuntary_rematerialization(sharded):
    # XLA warns when it has to replicate a sharded value to reshard it: a gather of a whole
    # vector that the program did not ask for. No solve may cause one. (A sparse direct solve
    # brings its solution from the host callback's device to all devices, which is what a
    # broadcast is; XLA may warn about that one transfer on `Explicit` meshes. It is excluded.)
    _, stderr = sharded
    bad = {k: v for k, v in _warnings_by_case(stderr).items() if k != "sparse-direct-explicit"}
    assert not bad, bad


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("name", DENSE)
def test_dense_batch_vmap(sharded, kind, name):
    r = case(sharded, f"dense-{kind}-{name}-vmap")
    assert r["err"] < 1e-12
    # SVD's derivative goes through a pseudoinverse of a 6 x 6 matrix: a few ulps more.
    assert r["err_grad_a"] < 1e-10 and r["err_grad_b"] < 1e-10
    assert r["out_spec"].startswith("P('batch'")
    assert r["grad_spec"].startswith("P('batch'")
    assert r["gathers"] == 0


@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_dense_batch_shard_map_default_checks(sharded, kind):
    r = case(sharded, f"dense-{kind}-LU-shard_map")
    assert r["err"] < 1e-12 and r["err_grad_a"] < 1e-10 and r["err_grad_b"] < 1e-10
    assert r["out_spec"].startswith("P('batch'")


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("name", KRYLOV)
def test_krylov_sharded_vector(sharded, kind, name):
    r = case(sharded, f"krylov-{kind}-{name}")
    # rtol 1e-11 on a system with condition number ~ 1.6e1: the relative error is ~1e-11.
    assert r["err"] < 1e-9
    assert r["err_grad_s"] < 1e-8 and r["err_grad_b"] < 1e-8
    assert r["out_spec"] == "P('x',)" and r["grad_spec"] == "P('x',)"
    # No gather of a vector anywhere in the forward or the gradient program: the inner
    # products are all-reduces of scalars (GMRES: its projections, restart + 1 of them at once).
    assert r["gathers"] == 0
    assert r["largest_reduce"] <= (41 if name == "GMRES" else 2)


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("name", ["CG", "GMRES"])
def test_krylov_vmap_over_sharded_vectors(sharded, kind, name):
    r = case(sharded, f"krylov-vmap-{kind}-{name}")
    assert r["err"] < 1e-9
    assert r["out_spec"] in ("P(None, 'x')",) and r["grad_spec"] == "P(None, 'x')"
    assert r["gathers"] == 0


def test_krylov_throw_false(sharded):
    r = case(sharded, "krylov-explicit-CG-nothrow")
    assert r["err"] < 1e-9 and r["gathers"] == 0 and r["largest_reduce"] <= 2


@pytest.mark.parametrize("name", ["CG", "GMRES", "MINRES"])
def test_krylov_inside_shard_map(sharded, name):
    r = case(sharded, f"krylov-shard_map-{name}")
    assert r["err"] < 1e-9 and r["err_grad_s"] < 1e-8
    assert r["out_spec"] == "P('x',)"


@pytest.mark.parametrize("native", [True, False], ids=["default", "LINOPX_NATIVE=0"])
@pytest.mark.parametrize("where", ["auto-nomesh", "auto", "explicit"])
def test_failure_raises_on_every_device(sharded, sharded_fallback, where, native):
    # A NaN in the right-hand side with throw=True: the solve raises with the RESULTS message
    # (if one device raised alone, the others would wait for it and XLA would abort the process,
    # and the subprocess would not reach "done").
    r = case(sharded if native else sharded_fallback, f"failure-{where}")
    assert r["raised"] is not None
    assert "NaN or infinity" in r["message"]


@pytest.mark.parametrize("native", [True, False], ids=["default", "LINOPX_NATIVE=0"])
def test_full_manual_shard_map_failure_raises_on_every_device(sharded, sharded_fallback, native):
    # One solve per device inside a `shard_map` over all axes, then a `psum`: the devices agree on
    # a failure before raising, so none is left waiting in the `psum` (XLA would abort the process,
    # and the subprocess would not reach "done"); every device raises the first failed device's
    # diagnosis.
    sharded = sharded if native else sharded_fallback
    ok = case(sharded, "full-manual-none")
    assert ok["raised"] is None and ok["err"] < 1e-12
    nan = case(sharded, "full-manual-nan")
    assert nan["raised"] is not None and "NaN or infinity" in nan["message"]
    first = case(sharded, "full-manual-singular-then-nan")
    assert first["raised"] is not None and "singular" in first["message"]


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("how", ["direct", "cg"])
def test_sparse_operator(sharded, kind, how):
    # direct: the host callback reads the vector and values whole, gathered once per solve.
    # cg: the sparse product gathers the vector on Explicit axes (no sharding rule for its
    # gathers), and works on the sharded vector as it is on Auto ones.
    r = case(sharded, f"sparse-{how}-{kind}")
    assert r["err"] < 1e-12 and r["err_grad_b"] < 1e-10 and r["err_grad_values"] < 1e-10
    if kind == "explicit":
        # The callback reads the vector whole; the solution is placed back like it.
        assert r["out_spec"] == "P('x',)"
