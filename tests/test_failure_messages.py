"""A failed solve says what went wrong, once: a clean `lx.LinearSolveError` outside `jit`, the
`RESULTS` text inside the error that `jit` raises, and nothing written to stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import linopx as lx

SINGULAR = jnp.array([[1.0, 2.0], [2.0, 4.0]])


def _singular_message() -> str:
    from linopx._compat import enum_index, enum_message

    return enum_message(lx.RESULTS, int(enum_index(lx.RESULTS.singular)))


def test_eager_failure_is_a_clean_linear_solve_error():
    with pytest.raises(lx.LinearSolveError) as info:
        lx.linear_solve(lx.MatrixLinearOperator(SINGULAR), jnp.ones(2))
    message = str(info.value)
    assert message == _singular_message()
    assert "Traceback" not in message and "CpuCallback" not in message
    # Code written for Lineax catches Equinox's runtime error; plain RuntimeError catches it too.
    assert isinstance(info.value, eqx.EquinoxRuntimeError)
    assert isinstance(info.value, RuntimeError)


def test_eager_gradient_failure_is_a_clean_linear_solve_error():
    def loss(a):
        return jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2), lx.LU()).value)

    with pytest.raises(lx.LinearSolveError, match=r"^The linear system is singular"):
        jax.grad(loss)(SINGULAR)


def test_eager_nonfinite_and_iterative_failures():
    with pytest.raises(lx.LinearSolveError, match=r"^The operator or the right-hand side contains NaN"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(2)), jnp.array([1.0, jnp.nan]))
    a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    with pytest.raises(lx.LinearSolveError, match=r"^The iterative solver did not reach"):
        lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2), lx.GMRES(rtol=1e-12, atol=0, max_steps=1, restart=1))


def test_jitted_failure_names_the_result():
    f = jax.jit(lambda a: lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2)).value)
    with pytest.raises(RuntimeError, match="The linear system is singular"):
        jax.block_until_ready(f(SINGULAR))


def test_throw_false_raises_nothing():
    sol = lx.linear_solve(lx.MatrixLinearOperator(SINGULAR), jnp.ones(2), throw=False)
    assert sol.result == lx.RESULTS.singular


def test_failed_solves_write_nothing_to_stderr():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import linopx as lx
        s = jnp.array([[1.0, 2.0], [2.0, 4.0]])
        op = lx.MatrixLinearOperator(s)
        caught = 0
        for call in (
            lambda: lx.linear_solve(op, jnp.ones(2)),
            lambda: jax.block_until_ready(jax.jit(lambda a: lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2)).value)(s)),
            lambda: jax.block_until_ready(jax.vmap(lambda b: lx.linear_solve(op, b).value)(jnp.ones((3, 2)))),
            lambda: jax.grad(lambda a: jnp.sum(lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2)).value))(s),
        ):
            try:
                call()
            except RuntimeError as err:
                assert "singular" in str(err), err
                caught += 1
        print("caught", caught)
        """
    )
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "caught 4"
    assert out.stderr == "", out.stderr
