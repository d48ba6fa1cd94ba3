"""The `throw=True` check as a compiled handler (`linopx_check`, `linopx/_native/checks.cc`).

On the CPU, within one device, a failed solve is reported by a native FFI call rather than by a
`cond` and a Python callback. These tests hold it to the same diagnoses as the callback path (the
message of the first failed member, classified the same way), check that it adds no pass over the
matrix to a gradient, and that the callback path takes over when the kernels are off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compiled_custom_calls

import linopx as lx
from linopx import _native
from linopx._compat import enum_index, enum_message
from linopx.autodiff import _checks

pytestmark = pytest.mark.skipif(
    not _native.available(), reason=f"native kernels not available: {lx.native_info()['reason']}"
)


def _text(name: str) -> str:
    return enum_message(lx.RESULTS, int(enum_index(getattr(lx.RESULTS, name))))


SINGULAR = _text("singular")
NONFINITE = _text("nonfinite_input")
MAX_STEPS = _text("max_steps_reached")


# The check path the current test runs on (set by the `path` fixture).
_PATH = {"now": None}


@pytest.fixture(params=["native", "callback"])
def path(request, monkeypatch):
    """Run a test on both check paths: the compiled handler, and the `cond` + callback fallback
    (what runs without a compiler, on several devices or off the CPU)."""
    if request.param == "callback":
        monkeypatch.setattr(_checks._native, "available", lambda: False)
    monkeypatch.setitem(_PATH, "now", request.param)
    return request.param


def _targets(fn, *args) -> list[str]:
    # A fresh function each time: jit caches by function.
    return [t for t, _ in compiled_custom_calls(lambda *a: fn(*a), *args)]


def _on_path(targets: list[str]) -> bool:
    """Whether a compiled program's custom calls show the check of the current path."""
    if _PATH["now"] == "native":
        return "linopx_check" in targets and not any("callback" in t for t in targets)
    return "linopx_check" not in targets and any("callback" in t for t in targets)


def _raised(fn, *args) -> str:
    """The message a jitted `fn(*args)` fails with, after checking that the program holds the
    current path's check."""
    assert _on_path(_targets(fn, *args))
    with pytest.raises(RuntimeError) as info:
        jax.block_until_ready(jax.jit(lambda *a: fn(*a))(*args))
    return str(info.value)


def _solve(a, b, solver=None):
    return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver or lx.LU()).value


def _assert_names(message: str, expected: str, *others: str):
    assert expected in message
    for other in others:
        assert other not in message


def test_the_program_calls_the_handler_and_no_python(path):
    targets = _targets(_solve, jnp.eye(3), jnp.ones(3))
    assert _on_path(targets)
    if path == "native":
        assert targets.count("linopx_check") == 1


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (jnp.array([[1.0, 2.0], [2.0, 4.0]]), jnp.ones(2), SINGULAR),
        (jnp.array([[1.0, jnp.nan], [0.0, 1.0]]), jnp.ones(2), NONFINITE),
        (jnp.array([[1.0, 0.0], [0.0, jnp.inf]]), jnp.ones(2), NONFINITE),
        (jnp.eye(2), jnp.array([1.0, -jnp.inf]), NONFINITE),
    ],
    ids=["singular", "nan-in-matrix", "inf-in-matrix", "inf-in-vector"],
)
def test_diagnosis_matches_on_both_paths(path, a, b, expected):
    _assert_names(_raised(_solve, a, b), expected, *({SINGULAR, NONFINITE} - {expected}))
    # The value of a successful solve is untouched by the check.
    good = jax.jit(lambda a, b: _solve(a, b))(jnp.eye(2) * 2.0, jnp.ones(2))
    np.testing.assert_array_equal(np.asarray(good), 0.5)


def test_non_convergence(path):
    a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    gmres = lx.GMRES(rtol=1e-12, atol=0.0, max_steps=1, restart=1)
    _assert_names(_raised(lambda a, b: _solve(a, b, gmres), a, jnp.ones(2)), MAX_STEPS)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.complex64, jnp.complex128])
def test_every_dtype(path, dtype):
    nan = jnp.array([[1.0, 0.0], [0.0, jnp.nan]], dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        # A non-finite imaginary part alone makes the matrix non-finite.
        nan = jnp.array([[1.0, 0.0], [0.0, complex(0.0, float("inf"))]], dtype)
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]], dtype)
    b = jnp.ones(2, dtype)
    _assert_names(_raised(_solve, nan, b), NONFINITE, SINGULAR)
    _assert_names(_raised(_solve, singular, b), SINGULAR, NONFINITE)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_half_precision_inputs(path, dtype, bad):
    # No solver factorizes half precision; the check itself reads it (by its bits, natively).
    value = jnp.ones(3)
    singular = lx.RESULTS.singular

    def check(x):
        return _checks.raise_if_failed(value, singular, singular, [x], [])

    _assert_names(_raised(check, jnp.array([1.0, bad, 2.0], dtype)), NONFINITE, SINGULAR)
    _assert_names(_raised(check, jnp.array([1.0, 65504.0, -2.0], dtype)), SINGULAR, NONFINITE)


def test_first_failed_member_is_reported(path):
    nan = jnp.eye(2).at[0, 0].set(jnp.nan)
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]])
    good = jnp.eye(2)
    f = jax.vmap(_solve, in_axes=(0, None))
    b = jnp.ones(2)
    _assert_names(_raised(f, jnp.stack([good, nan, singular]), b), NONFINITE, SINGULAR)
    _assert_names(_raised(f, jnp.stack([good, singular, nan]), b), SINGULAR, NONFINITE)
    # Only the vector batched: the shared matrix is read once per member (a size-1 axis).
    g = jax.vmap(_solve, in_axes=(None, 0))
    bs = jnp.ones((3, 2)).at[2, 1].set(jnp.nan)
    _assert_names(_raised(g, good, bs), NONFINITE, SINGULAR)
    _assert_names(_raised(g, singular, jnp.ones((3, 2))), SINGULAR, NONFINITE)


def test_nested_vmap_finds_the_member(path):
    # Two levels: matrices batched on the outer one, vectors on the inner one (along axis 1, not
    # leading). The third vector is not finite; the third matrix is singular.
    mats = jnp.stack([jnp.eye(2), jnp.eye(2), jnp.array([[1.0, 2.0], [2.0, 4.0]])])
    vecs = jnp.ones((2, 3)).at[1, 2].set(jnp.inf)
    inner = jax.vmap(_solve, in_axes=(None, 1))
    outer = jax.vmap(lambda a, v: inner(a, v), in_axes=(0, None))
    # Every outer member sees the bad vector: the first failure in row-major order is (0, 2), a
    # non-finite input; with finite vectors it is (2, 0), the singular matrix.
    _assert_names(_raised(outer, mats, vecs), NONFINITE, SINGULAR)
    _assert_names(_raised(outer, mats, jnp.ones((2, 3))), SINGULAR, NONFINITE)


def test_derivative_solves_are_checked(path):
    # A singular matrix with throw=True: the gradient program fails in the forward solve already.
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]])

    def loss(a):
        return jnp.sum(_solve(a, jnp.ones(2)) ** 2)

    _assert_names(_raised(jax.grad(loss), singular), SINGULAR)
    # The transposed solve on its own (no forward solve in the program): its check inspects the
    # untransposed matrix and names a non-finite one as such.
    nan = jnp.eye(2).at[1, 0].set(jnp.nan)

    def transposed(a, ct):
        return jax.linear_transpose(lambda b: _solve(a, b), jnp.ones(2))(ct)[0]

    _assert_names(_raised(transposed, nan, jnp.ones(2)), NONFINITE, SINGULAR)
    _assert_names(_raised(transposed, singular, jnp.ones(2)), SINGULAR, NONFINITE)
    x = jax.jit(transposed)(jnp.array([[2.0, 1.0], [0.0, 1.0]]), jnp.ones(2))
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve([[2.0, 0.0], [1.0, 1.0]], [1.0, 1.0]))


def _square_ops(text: str, n: int) -> int:
    """How many instructions of the optimised program produce an n x n array."""
    entry = text[text.index("ENTRY") :]
    lines = [line for line in entry.splitlines() if "=" in line]
    return sum(f"[{n},{n}]" in line.split("=", 1)[1][:40] for line in lines)


def test_gradient_check_adds_no_pass_over_the_matrix():
    # The check of the transposed solve inspects the untransposed matrix: no transposed copy is
    # laid out for it, so throw=True compiles to as many n x n operations as throw=False.
    n = 50
    a = jnp.eye(n) * 2.0
    b = jnp.ones(n)

    def loss(throw):
        def f(a, b):
            x = lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU(), throw=throw).value
            return jnp.sum(x**2)

        return jax.grad(f, argnums=(0, 1))

    texts = {
        throw: jax.jit(loss(throw)).lower(a, b).compile().as_text() for throw in (True, False)
    }
    assert "linopx_check" in texts[True]
    assert _square_ops(texts[True], n) == _square_ops(texts[False], n)


def test_kernels_off_use_the_callback_in_a_subprocess():
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        import linopx as lx
        f = jax.jit(lambda a: lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(2)).value)
        text = f.lower(jnp.eye(2)).compile().as_text()
        assert "linopx_check" not in text and "callback" in text
        try:
            jax.block_until_ready(f(jnp.array([[1.0, 2.0], [2.0, 4.0]])))
        except RuntimeError as e:
            assert "The linear system is singular" in str(e)
            print("raised")
        """
    )
    env = {**os.environ, "LINOPX_NATIVE": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "raised"
