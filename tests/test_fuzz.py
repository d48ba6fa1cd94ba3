"""Bad input, fuzzed with hypothesis, across every public constructor and solver.

The contract (STYLE.md, "Errors"): for every input, linopx either

(a) raises a `ValueError` / `TypeError` whose message is non-empty and says what to do (names the
    expected shape/dtype, or what to use or pass instead), or `lx.LinearSolveError` for a run-time
    failure with `throw=True`, carrying the `RESULTS` text;
(b) returns a `Solution` whose `result` says why it failed (`nonfinite_input` for NaN/inf input,
    `singular` for a singular matrix, `max_steps_reached` when the step budget is spent); or
(c) returns a successful `Solution` whose value matches an independent float64 reference
    (`numpy.linalg.lstsq`, i.e. `A⁺ b`, for dense problems of every shape and rank).

Anything else (another exception type, a JAX internal error, a crash, a hang, a wrong number) is a
library bug. Every property below can fail: each generated case states its expected outcome up
front, from the inputs alone.

What the fuzzing found (and what now happens) is listed in the docstrings of the regression tests
at the end of this file. Decisions taken where the requirement was silent:

- Integer and boolean *data* (matrices, diagonals, bands, sparse values, Jacobian points, pytree
  blocks, identity structures, vectors) is cast to JAX's default float dtype. A
  `FunctionLinearOperator` *structure* (what `fn` is traced with) must be floating or complex, and
  so must any linear map's output: those raise `ValueError`.
- Half precision (float16, bfloat16) is outside the supported dtypes (API.md): solving raises a
  `TypeError` naming the cast, instead of an `Unsupported dtype` from LAPACK or a host crash.
- Empty operators (no rows or no columns) solve to the zero vector, `A⁺ b = 0`, as NumPy's `lstsq`
  does; square-only solvers still reject a non-square empty operator.
- Krylov fields: tolerances must be finite non-negative real scalars; 0 switches that test off, but
  `rtol = atol = 0` needs an explicit `max_steps` (as in Lineax). `max_steps` must be a positive
  int: 0 and negative raise `ValueError` in every Krylov solver (SciPy's `maxiter=0` reports
  success without iterating, which is the silent wrong answer this forbids); values above the
  int32 loop counter (2**31 - 1) are capped. `max_steps=1`, with a positive tolerance, on a
  system one step does not solve gives `max_steps_reached` in every Krylov solver (never
  `stagnation`: a round cut short by the budget is not judged).
- Tags are promises that are not checked against the values (tags.py): a lying tag gives the
  solution of the operator it promises (as SciPy's `solve_triangular`/`assume_a`), so those cases
  are not generated here; tags that are not tags, and square-only tags on non-square operators,
  are errors.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from jax.experimental import sparse as jsparse

import linopx as lx


def fuzz(max_examples: int) -> settings:
    """Each example may compile a JAX program: few examples, no deadline, deterministic for CI."""
    return settings(
        deadline=None,
        derandomize=True,
        database=None,
        max_examples=max_examples,
        suppress_health_check=[HealthCheck.too_slow],
    )


# A message "says what to do" if it names a remedy or the expected thing.
ADVICE = re.compile(
    r"\b(use|pass|wrap|cast|convert|fix|remove|reshape|return|choose|build|must|needs?|expected|"
    r"only|raise|loosen|tag)\b|e\.g\.",
    re.IGNORECASE,
)

RESULT_TEXT = {
    r: lx.RESULTS[getattr(lx.RESULTS, r)]
    for r in ("singular", "nonfinite_input", "max_steps_reached")
}

S = jax.ShapeDtypeStruct
ALL_TAGS = [
    lx.symmetric_tag,
    lx.diagonal_tag,
    lx.tridiagonal_tag,
    lx.unit_diagonal_tag,
    lx.lower_triangular_tag,
    lx.upper_triangular_tag,
    lx.positive_semidefinite_tag,
    lx.negative_semidefinite_tag,
]


def assert_raises(fn, exc, pattern):
    """`fn()` raises `exc` with a message matching `pattern` that also says what to do."""
    with pytest.raises(exc, match=pattern) as info:
        fn()
    message = str(info.value)
    assert message.strip(), "empty error message"
    assert ADVICE.search(message), f"the message does not say what to do: {message!r}"


def to_np(x):
    return np.asarray(jax.device_get(x))


# ---------------------------------------------------------------------------------------------
# Constructors


BAD_DTYPES = ["str", "object"]
DATA_DTYPES = ["float32", "float64", "complex64", "complex128", "int8", "int64", "uint8", "bool"]


def make_array(rng, shape, dtype):
    if dtype == "str":
        return np.full(shape, "a")
    if dtype == "object":
        return np.full(shape, None, dtype=object)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, 5, shape).astype(dtype)
    x = rng.standard_normal(shape)
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def as_float(x):
    """What linopx makes of numeric data: integer and bool become float64 (x64 is on)."""
    x = np.asarray(x)
    return x.astype(np.float64) if not np.issubdtype(x.dtype, np.inexact) else x


@fuzz(60)
@given(
    ndim=st.integers(0, 3),
    dims=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    dtype=st.sampled_from(DATA_DTYPES + BAD_DTYPES + ["list", "none"]),
    tags=st.lists(st.sampled_from(ALL_TAGS + ["symmetric", 3]), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_matrix_operator(ndim, dims, dtype, tags, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(dims[:ndim])
    if dtype == "list":
        raw = make_array(rng, shape, "float64").tolist()
        shape = np.shape(raw)  # nested lists lose empty trailing axes: [[]] is (1, 0)
        ndim = len(shape)
    elif dtype == "none":
        raw = None
    else:
        raw = make_array(rng, shape, dtype)
    build = lambda: lx.MatrixLinearOperator(raw, tags)
    if dtype in BAD_DTYPES or dtype == "none":
        assert_raises(build, TypeError, "numeric")
    elif ndim != 2:
        assert_raises(build, ValueError, r"2-D matrix.*Reshape")
    elif any(not isinstance(t, type(lx.symmetric_tag)) for t in tags):
        assert_raises(build, TypeError, "not a linopx tag")
    elif tags and shape[0] != shape[1]:
        assert_raises(build, ValueError, "Remove these tags for a non-square operator")
    else:
        op = build()
        expected = as_float(raw)
        assert jnp.issubdtype(op.as_matrix().dtype, jnp.inexact)
        assert op.as_matrix().dtype == expected.dtype
        np.testing.assert_array_equal(to_np(op.as_matrix()), expected)
        assert (op.in_size(), op.out_size()) == (shape[1], shape[0])


def _structure(draw_sizes, kind, dtype):
    """A structure of 1-2 leaves with the given sizes (zero-sized leaves included)."""
    leaves = [S((k,), dtype) for k in draw_sizes]
    if kind == "dict":
        return {f"x{i}": leaf for i, leaf in enumerate(leaves)}
    return tuple(leaves)


@fuzz(50)
@given(
    out_sizes=st.lists(st.integers(0, 2), min_size=1, max_size=2),
    in_sizes=st.lists(st.integers(0, 2), min_size=1, max_size=2),
    out_kind=st.sampled_from(["dict", "tuple"]),
    in_kind=st.sampled_from(["dict", "tuple"]),
    dtypes=st.lists(
        st.sampled_from(["float32", "float64", "complex128", "int64", "bool"]), min_size=1
    ),
    corrupt=st.sampled_from(
        ["none", "none", "top_level", "block_shape", "inner_structure", "non_numeric"]
    ),
    seed=st.integers(0, 2**16),
)
def test_pytree_operator(out_sizes, in_sizes, out_kind, in_kind, dtypes, corrupt, seed):
    """Includes zero-sized structures: the known `as_matrix()` ZeroDivisionError."""
    rng = np.random.default_rng(seed)
    out_s = _structure(out_sizes, out_kind, jnp.float64)
    in_s = _structure(in_sizes, in_kind, jnp.float64)
    out_leaves, out_def = jax.tree_util.tree_flatten(out_s)
    in_leaves, in_def = jax.tree_util.tree_flatten(in_s)
    blocks = [
        [
            make_array(rng, so.shape + si.shape, dtypes[(i + j) % len(dtypes)])
            for j, si in enumerate(in_leaves)
        ]
        for i, so in enumerate(out_leaves)
    ]
    dense = np.concatenate(
        [
            np.concatenate(
                [as_float(b).reshape(so.shape[0], si.shape[0]) for b, si in zip(row, in_leaves)],
                axis=1,
            )
            for row, so in zip(blocks, out_leaves)
        ],
        axis=0,
    )
    rows = [jax.tree_util.tree_unflatten(in_def, row) for row in blocks]
    if corrupt == "block_shape":
        rows[0] = jax.tree_util.tree_map(
            lambda b: np.ones((b.shape[0] + 1,) + b.shape[1:]), rows[0]
        )
    elif corrupt == "inner_structure" and len(out_leaves) > 1:
        rows[1] = {"other": np.ones(out_leaves[1].shape + (1,))}
    elif corrupt == "non_numeric":
        rows[0] = jax.tree_util.tree_map(lambda b: np.full(b.shape, "x"), rows[0])
    pytree = jax.tree_util.tree_unflatten(out_def, rows)
    if corrupt == "top_level":
        pytree = [pytree]
    build = lambda: lx.PyTreeLinearOperator(pytree, out_s)
    if corrupt == "top_level":
        assert_raises(build, ValueError, "tree structure of `output_structure`")
    elif corrupt == "block_shape":
        assert_raises(build, ValueError, "does not start with the shape")
    elif corrupt == "inner_structure" and len(out_leaves) > 1:
        assert_raises(build, ValueError, "must have the same input structure")
    elif corrupt == "non_numeric":
        assert_raises(build, TypeError, "numeric")
    else:
        op = build()
        matrix = op.as_matrix()
        assert matrix.shape == dense.shape
        # Blocks of several dtypes are promoted to one (never an error under strict promotion).
        np.testing.assert_allclose(to_np(matrix), dense, rtol=1e-6, atol=0)
        np.testing.assert_allclose(to_np(op.T.as_matrix()), dense.T, rtol=1e-6, atol=0)


@fuzz(50)
@given(
    n=st.integers(0, 3),
    lower_len=st.integers(-1, 1),
    upper_len=st.integers(-1, 1),
    dtypes=st.lists(st.sampled_from(DATA_DTYPES + ["str"]), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_tridiagonal_operator(n, lower_len, upper_len, dtypes, seed):
    rng = np.random.default_rng(seed)
    want = max(n - 1, 0)
    nl, nu = max(want + lower_len, 0), max(want + upper_len, 0)
    d, lo, up = (make_array(rng, (k,), t) for k, t in zip((n, nl, nu), dtypes))
    build = lambda: lx.TridiagonalLinearOperator(d, lo, up)
    if "str" in dtypes:
        assert_raises(build, TypeError, "numeric")
    elif (nl, nu) != (want, want):
        assert_raises(
            build, ValueError, f"needs lower and upper diagonals of length {max(n - 1, 0)}"
        )
    else:
        op = build()
        dense = np.diag(as_float(d)).astype(complex)
        if n > 1:
            dense += np.diag(as_float(lo), -1) + np.diag(as_float(up), 1)
        # Mixed band dtypes (float32 with float64, ...) are promoted, under strict promotion too.
        np.testing.assert_allclose(to_np(op.as_matrix()), dense, rtol=1e-6, atol=0)
        v = make_array(rng, (n,), "float64")
        np.testing.assert_allclose(
            to_np(op.mv(jnp.asarray(v, op.diagonal.dtype))), dense @ v, rtol=1e-5, atol=1e-6
        )


@fuzz(40)
@given(
    sizes=st.lists(st.integers(0, 3), max_size=2),
    container=st.sampled_from(["array", "dict", "tuple"]),
    dtype=st.sampled_from(DATA_DTYPES + ["str"]),
    seed=st.integers(0, 2**16),
)
def test_diagonal_operator(sizes, container, dtype, seed):
    rng = np.random.default_rng(seed)
    leaves = [make_array(rng, (k,), dtype) for k in sizes]
    if container == "array":
        diag = leaves[0] if leaves else None
    elif container == "dict":
        diag = {f"d{i}": leaf for i, leaf in enumerate(leaves)}
    else:
        diag = tuple(leaves)
    build = lambda: lx.DiagonalLinearOperator(diag)
    if not leaves:
        assert_raises(build, ValueError, "needs a non-empty diagonal")
    elif dtype == "str":
        assert_raises(build, TypeError, "numeric")
    else:
        op = build()
        flat = np.concatenate(
            [as_float(leaf) for leaf in (leaves if container != "array" else leaves[:1])]
        )
        np.testing.assert_array_equal(to_np(op.as_matrix()), np.diag(flat))


@fuzz(40)
@given(
    in_sizes=st.lists(st.integers(0, 3), min_size=1, max_size=2),
    out_sizes=st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=1, max_size=2)),
    dtype=st.sampled_from(["float32", "float64", "complex128", "int32", "bool"]),
    as_arrays=st.booleans(),
    leaf_kind=st.sampled_from(["struct", "struct", "python_int", "str"]),
)
def test_identity_operator(in_sizes, out_sizes, dtype, as_arrays, leaf_kind):
    def structure(sizes):
        if leaf_kind == "python_int":
            return tuple(sizes)  # a shape, not a structure
        if leaf_kind == "str":
            return "abc"
        if as_arrays:
            return [np.zeros((k,), dtype) for k in sizes]
        return [S((k,), jnp.dtype(dtype)) for k in sizes]

    build = lambda: lx.IdentityLinearOperator(
        structure(in_sizes), None if out_sizes is None else structure(out_sizes)
    )
    if leaf_kind in ("python_int", "str"):
        assert_raises(build, TypeError, r"jax\.ShapeDtypeStruct")
    else:
        op = build()
        # Integer and boolean structures are taken as the default float dtype.
        inexact = np.issubdtype(np.dtype(dtype), np.inexact)
        expect_dtype = np.dtype(dtype) if inexact else np.float64
        leaves = jax.tree_util.tree_leaves((op.in_structure(), op.out_structure()))
        assert all(leaf.dtype == expect_dtype for leaf in leaves)
        m, n = sum(out_sizes or in_sizes), sum(in_sizes)
        np.testing.assert_array_equal(to_np(op.as_matrix()), np.eye(m, n))


def _sparse_case(rng, m, n, nnz, fault):
    rows = rng.integers(0, max(m, 1), nnz)
    cols = rng.integers(0, max(n, 1), nnz)
    values = rng.standard_normal(nnz)
    shape = (m, n)
    if fault == "negative_row" and nnz:
        rows[rng.integers(nnz)] = -1 - rng.integers(3)
    elif fault == "row_too_big" and nnz:
        rows[rng.integers(nnz)] = m + rng.integers(3)
    elif fault == "col_too_big" and nnz:
        cols[rng.integers(nnz)] = n + rng.integers(3)
    elif fault == "length":
        cols = cols[:-1] if nnz else np.zeros(1, int)
    elif fault == "float_index":
        rows = rows.astype(np.float64)
    elif fault == "list_index":
        rows = rows.tolist()
    elif fault == "index_2d":
        rows = rows[None]
    elif fault == "shape_negative":
        shape = (m, -1)
    elif fault == "shape_float":
        shape = (float(m), n)
    elif fault == "shape_triple":
        shape = (m, n, 1)
    elif fault == "values_2d":
        values = values[None]
    elif fault == "values_int":
        values = rng.integers(-3, 4, nnz)
    return values, rows, cols, shape


OUT_OF_RANGE = (
    ValueError,
    r"`(rows|cols)` holds the index -?\d+, outside \[0, \d+\).*Fix the indices",
)
SPARSE_FAULTS = {
    "none": None,
    "values_int": None,
    "negative_row": OUT_OF_RANGE,
    "row_too_big": OUT_OF_RANGE,
    "col_too_big": OUT_OF_RANGE,
    "length": (ValueError, "must have the same length"),
    "float_index": (TypeError, r"integer dtype.*astype"),
    "list_index": (TypeError, r"np\.asarray"),
    "index_2d": (ValueError, "must be 1-D"),
    "shape_negative": (ValueError, "non-negative Python ints"),
    "shape_float": (ValueError, "non-negative Python ints"),
    "shape_triple": (TypeError, r"pair \(m, n\)"),
    "values_2d": (ValueError, "must be 1-D"),
}


@fuzz(60)
@given(
    m=st.integers(0, 3),
    n=st.integers(0, 3),
    nnz=st.integers(0, 6),
    fault=st.sampled_from(sorted(SPARSE_FAULTS)),
    as_jax=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sparse_constructor(m, n, nnz, fault, as_jax, seed):
    rng = np.random.default_rng(seed)
    values, rows, cols, shape = _sparse_case(rng, m, n, nnz, fault)
    if as_jax and fault not in ("list_index",):
        rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    build = lambda: lx.SparseCOOLinearOperator(values, rows, cols, shape)
    expected = SPARSE_FAULTS[fault]
    if expected is OUT_OF_RANGE and nnz == 0:
        expected = None  # no entry to put out of range
    if expected is None and (m == 0 or n == 0) and nnz > 0:
        expected = OUT_OF_RANGE  # any index into an empty dimension is out of range
    if expected is not None:
        assert_raises(build, *expected)
    else:
        op = build()
        dense = np.zeros((m, n))
        np.add.at(dense, (np.asarray(rows), np.asarray(cols)), as_float(values))
        assert op.values.dtype == jnp.float64
        np.testing.assert_allclose(to_np(op.as_matrix()), dense, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_np(op.T.as_matrix()), dense.T, rtol=1e-12, atol=1e-12)


@fuzz(20)
@given(
    m=st.integers(0, 3),
    n=st.integers(0, 3),
    dtype=st.sampled_from(["float64", "complex128", "int64", "bool", "float32"]),
    extra=st.sampled_from(["none", "padding", "beyond", "negative"]),
    seed=st.integers(0, 2**16),
)
def test_from_scipy_and_bcoo(m, n, dtype, extra, seed):
    rng = np.random.default_rng(seed)
    dense = make_array(rng, (m, n), dtype) * (rng.random((m, n)) < 0.6)
    op = lx.SparseCOOLinearOperator.from_scipy(sp.coo_array(dense))
    np.testing.assert_array_equal(to_np(op.as_matrix()), as_float(dense))
    assert jnp.issubdtype(op.values.dtype, jnp.inexact)
    # A BCOO with one extra entry: padding (indices equal to the shape) is dropped; an index beyond
    # the shape or a negative one is an error, not an entry silently lost.
    indices = np.argwhere(dense != 0).reshape(-1, 2)
    data = as_float(dense)[tuple(indices.T)]
    extra_index = {"none": None, "padding": [m, n], "beyond": [m + 1, n + 1], "negative": [-1, -1]}[
        extra
    ]
    if extra_index is not None:
        indices = np.concatenate([indices, [extra_index]])
        data = np.concatenate([data, np.ones(1, data.dtype)])
    bcoo = jsparse.BCOO((jnp.asarray(data), jnp.asarray(indices, jnp.int32)), shape=(m, n))
    build = lambda: lx.SparseCOOLinearOperator.from_bcoo(bcoo)
    if extra in ("beyond", "negative"):
        assert_raises(build, ValueError, r"`rows` holds the index -?\d+, outside")
    else:
        np.testing.assert_array_equal(to_np(build().as_matrix()), as_float(dense))
    assert_raises(lambda: lx.SparseCOOLinearOperator.from_scipy(dense), TypeError, "coo_array")
    assert_raises(lambda: lx.SparseCOOLinearOperator.from_bcoo(dense), TypeError, "BCOO")


@fuzz(30)
@given(
    n=st.integers(0, 3),
    in_dtype=st.sampled_from(["float64", "complex128", "float32", "int32", "bool"]),
    out_kind=st.sampled_from(["linear", "linear", "integer", "none"]),
    jac=st.sampled_from([None, "fwd", "bwd", "rev"]),
    seed=st.integers(0, 2**16),
)
def test_function_and_jacobian_operators(n, in_dtype, out_kind, jac, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, n))

    def fn(v):
        if out_kind == "integer":
            return jnp.round(jnp.real(v)).astype(jnp.int32)
        if out_kind == "none":
            return None
        return jnp.asarray(a, v.dtype) @ v

    inexact = np.issubdtype(np.dtype(in_dtype), np.inexact)
    build_fn = lambda: lx.FunctionLinearOperator(fn, S((n,), jnp.dtype(in_dtype)))
    if not inexact:
        assert_raises(build_fn, ValueError, r"not floating or complex.*ShapeDtypeStruct")
    elif out_kind == "integer":
        assert_raises(build_fn, ValueError, "returns a leaf of dtype int32")
    else:
        op = build_fn()
        expected = a if out_kind == "linear" else np.zeros((0, n))
        np.testing.assert_allclose(to_np(op.as_matrix()), expected, rtol=1e-6, atol=1e-6)
    # The Jacobian of `fn` at an integer or boolean point: the point is cast to float.
    x = make_array(rng, (n,), in_dtype)
    build_jac = lambda: lx.JacobianLinearOperator(lambda x, _: fn(x), x, jac=jac)
    if jac == "rev":
        assert_raises(build_jac, ValueError, '`jac` must be None, "fwd" or "bwd"')
    elif out_kind == "integer":
        assert_raises(build_jac, ValueError, "returns a leaf of dtype int32")
    elif out_kind == "linear":
        np.testing.assert_allclose(to_np(build_jac().as_matrix()), a, rtol=1e-6, atol=1e-6)


@fuzz(40)
@given(
    first=st.sampled_from([(3, 3), (2, 3), (3, 2)]),
    second=st.sampled_from([(3, 3), (2, 3), (3, 2)]),
    op=st.sampled_from(["add", "sub", "matmul", "mul", "div", "tag"]),
    scalar=st.sampled_from([2.0, 0, "x", np.ones(3), True, jnp.asarray(2.0)]),
    tags=st.lists(st.sampled_from(ALL_TAGS + ["psd", None]), max_size=2),
)
def test_composites_and_tagged(first, second, op, scalar, tags):
    a = lx.MatrixLinearOperator(np.arange(math.prod(first), dtype=float).reshape(first) + 1)
    b = lx.MatrixLinearOperator(np.ones(second))
    A, B = np.asarray(a.matrix), np.asarray(b.matrix)
    if op in ("add", "sub"):
        build = (lambda: a + b) if op == "add" else (lambda: a - b)
        if first != second:
            assert_raises(build, ValueError, "must map the same")
        else:
            np.testing.assert_array_equal(
                to_np(build().as_matrix()), A + B if op == "add" else A - B
            )
    elif op == "matmul":
        if first[1] != second[0]:
            assert_raises(lambda: a @ b, ValueError, "must match A's input")
        else:
            np.testing.assert_array_equal(to_np((a @ b).as_matrix()), A @ B)
        assert_raises(lambda: a @ np.ones(3), TypeError, r"A\.mv\(x\)")
    elif op in ("mul", "div"):
        build = (lambda: a * scalar) if op == "mul" else (lambda: a / scalar)
        if isinstance(scalar, (bool, str)):
            assert_raises(build, TypeError, "boolean|pass a scalar")
        elif isinstance(scalar, np.ndarray):
            assert_raises(build, ValueError, "DiagonalLinearOperator")
        elif op == "div" and isinstance(scalar, (int, float)) and scalar == 0:
            assert_raises(build, ValueError, "by zero")
        else:
            s = float(scalar)
            np.testing.assert_array_equal(
                to_np(build().as_matrix()), A * s if op == "mul" else A / s
            )
    else:
        build = lambda: lx.TaggedLinearOperator(a, tags)
        if any(not isinstance(t, type(lx.symmetric_tag)) for t in tags):
            assert_raises(build, TypeError, "not a linopx tag")
        elif tags and first[0] != first[1]:
            assert_raises(build, ValueError, "Remove these tags")
        else:
            assert build().tags == frozenset(tags)
        assert_raises(lambda: lx.TaggedLinearOperator(A, ()), TypeError, "MatrixLinearOperator")


# ---------------------------------------------------------------------------------------------
# Solver fields

TOLERANCES = [
    1e-8, 0.0, -0.0, 1, np.float32(1e-6), np.int64(0), jnp.asarray(1e-6),  # valid
    -1e-8, -1.0, math.inf, -math.inf, math.nan, "1e-8", None, True, 1j,
    jnp.asarray(-1.0), jnp.full(2, 1e-6),
]  # fmt: skip
MAX_STEPS = [None, 1, 7, np.int64(3), 2**31, 10**30, 0, -1, 1.5, True, jnp.asarray(3)]
RESTARTS = [20, 1, 0, -3, 2.5, True]


def _valid_tolerance(x) -> bool:
    if isinstance(x, (bool, str, complex)) or x is None:
        return False
    if hasattr(x, "shape") and np.shape(x) != ():
        return False
    return math.isfinite(float(x)) and float(x) >= 0


def _valid_max_steps(x) -> bool:
    return x is None or (isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1)


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")
@fuzz(80)
@given(
    cls=st.sampled_from([lx.CG, lx.BiCGStab, lx.GMRES, lx.MINRES, lx.LSQR, lx.LSMR]),
    rtol=st.sampled_from(TOLERANCES),
    atol=st.sampled_from(TOLERANCES),
    max_steps=st.sampled_from(MAX_STEPS),
    extra=st.sampled_from(RESTARTS + TOLERANCES),
)
def test_krylov_fields(cls, rtol, atol, max_steps, extra):
    """Negative, NaN, infinite, non-scalar or non-real tolerances, `max_steps` 0 or negative or not an
    int, and `rtol = atol = 0` without `max_steps`, are `ValueError`s naming the field, in every
    Krylov solver alike."""
    kwargs = {"rtol": rtol, "atol": atol, "max_steps": max_steps}
    field = None
    if cls is lx.GMRES:
        extra = extra if any(extra is r for r in RESTARTS) else 20
        kwargs["restart"] = extra
    elif cls in (lx.LSQR, lx.LSMR):
        kwargs["damp"] = extra
    if not _valid_tolerance(rtol):
        field = "`rtol` must be"
    elif not _valid_tolerance(atol):
        field = "`atol` must be"
    elif not _valid_max_steps(max_steps):
        field = "`max_steps` must"
    elif max_steps is None and float(rtol) == 0 and float(atol) == 0:
        field = "both 0.*max_steps"
    elif cls is lx.GMRES and not (
        isinstance(extra, int) and not isinstance(extra, bool) and extra >= 1
    ):
        field = "`restart` must be"
    elif cls in (lx.LSQR, lx.LSMR) and not _valid_tolerance(extra):
        field = "`damp` must be"
    if field is None:
        solver = cls(**kwargs)
        assert solver.max_steps is max_steps
    else:
        assert_raises(lambda: cls(**kwargs), ValueError, field)


@fuzz(40)
@given(
    cls=st.sampled_from([lx.SVD, lx.PivotedQR, lx.Diagonal]),
    rcond=st.sampled_from([None, 0.0, 1e-10, 1, -1.0, math.nan, math.inf, "1e-3", jnp.ones(2)]),
    well_posed=st.sampled_from([False, True, None, "no", 1]),
    backend=st.sampled_from(["auto", "superlu", "mumps", None]),
)
def test_direct_solver_fields(cls, rcond, well_posed, backend):
    rcond_ok = rcond is None or (not isinstance(rcond, str) and _valid_tolerance(rcond))
    if not rcond_ok:
        assert_raises(lambda: cls(rcond=rcond), ValueError, "`rcond` must be")
    else:
        assert cls(rcond=rcond).rcond is rcond
    if cls is lx.Diagonal and rcond_ok:
        if isinstance(well_posed, bool):
            assert lx.Diagonal(well_posed=well_posed, rcond=rcond).well_posed is well_posed
        else:
            assert_raises(
                lambda: lx.Diagonal(well_posed=well_posed), TypeError, "must be True or False"
            )
    if well_posed in (True, False, None):
        assert lx.AutoLinearSolver(well_posed=well_posed).well_posed is well_posed
    else:
        assert_raises(
            lambda: lx.AutoLinearSolver(well_posed=well_posed), ValueError, "must be True"
        )
    if backend in ("auto", "superlu"):
        assert lx.SparseLU(backend).backend == backend
    else:
        assert_raises(lambda: lx.SparseLU(backend), ValueError, "choose one of")
    assert_raises(lambda: lx.Normal(cls), TypeError, r"lx\.Normal\(lx\.Cholesky\(\)\)")


# ---------------------------------------------------------------------------------------------
# Solving


class SolverSpec:
    def __init__(
        self, make, kind, tag=None, square=False, pinv=False, iterative=False, sparse=False
    ):
        self.make, self.kind, self.tag, self.square = make, kind, tag, square
        self.pinv, self.iterative, self.sparse = pinv, iterative, sparse


PSD = lx.positive_semidefinite_tag
SOLVERS = {
    "LU": SolverSpec(lambda tol: lx.LU(), "general", square=True),
    "QR": SolverSpec(lambda tol: lx.QR(), "general"),
    "PivotedQR": SolverSpec(lambda tol: lx.PivotedQR(), "general", pinv=True),
    "SVD": SolverSpec(lambda tol: lx.SVD(), "general", pinv=True),
    "Cholesky": SolverSpec(lambda tol: lx.Cholesky(), "spd", PSD, square=True),
    "Triangular": SolverSpec(
        lambda tol: lx.Triangular(), "lower", lx.lower_triangular_tag, square=True
    ),
    "Diagonal": SolverSpec(
        lambda tol: lx.Diagonal(), "diagonal", lx.diagonal_tag, square=True, pinv=True
    ),
    "Tridiagonal": SolverSpec(
        lambda tol: lx.Tridiagonal(), "tridiagonal", lx.tridiagonal_tag, square=True
    ),
    "Normal": SolverSpec(lambda tol: lx.Normal(lx.Cholesky()), "general"),
    "Auto": SolverSpec(lambda tol: lx.AutoLinearSolver(well_posed=None), "general"),
    "AutoFalse": SolverSpec(
        lambda tol: lx.AutoLinearSolver(well_posed=False), "general", pinv=True
    ),
    "CG": SolverSpec(
        lambda tol, k=None: lx.CG(tol, tol, k), "spd", PSD, square=True, iterative=True
    ),
    "BiCGStab": SolverSpec(
        lambda tol, k=None: lx.BiCGStab(tol, tol, k), "general", square=True, iterative=True
    ),
    "GMRES": SolverSpec(  # full GMRES for n <= 3: restarted GMRES(m < n) may stall, honestly
        lambda tol, k=None: lx.GMRES(tol, tol, k), "general", square=True, iterative=True
    ),
    "MINRES": SolverSpec(
        lambda tol, k=None: lx.MINRES(tol, tol, k), "symmetric", "sym", square=True, iterative=True
    ),
    "LSQR": SolverSpec(
        lambda tol, k=None: lx.LSQR(tol, tol, k), "general", pinv=True, iterative=True
    ),
    "LSMR": SolverSpec(
        lambda tol, k=None: lx.LSMR(tol, tol, k), "general", pinv=True, iterative=True
    ),
    "SparseLU": SolverSpec(lambda tol: lx.SparseLU(), "general", square=True, sparse=True),
}
MISSING_TAG = {
    "Cholesky": "positive_semidefinite_tag",
    "CG": "positive_semidefinite_tag",
    "MINRES": "symmetric",
    "Triangular": "triangular_tag",
    "Diagonal": "diagonal",
    "Tridiagonal": "tridiagonal",
}
OPERATOR_KINDS = ["matrix", "pytree", "function", "jacobian", "sparse", "tagged"]


def _orthogonal(rng, n, complex_):
    z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if complex_ else 0)
    q, _ = np.linalg.qr(z)
    return q


def make_matrix(rng, m, n, kind, dtype):
    """A well-conditioned matrix (singular values in [1, 3], or diagonally dominant) of `kind`."""
    if dtype in ("int64", "bool"):
        return _int_matrix(rng, m, n, kind)
    complex_ = np.issubdtype(np.dtype(dtype), np.complexfloating)
    k = min(m, n)
    if kind == "general":
        s = rng.uniform(1, 3, k)
        a = (_orthogonal(rng, m, complex_)[:, :k] * s) @ _orthogonal(rng, n, complex_)[:k, :]
    elif kind in ("spd", "symmetric"):
        q = _orthogonal(rng, n, complex_)
        s = rng.uniform(1, 3, n)
        if kind == "symmetric" and not complex_:
            s = s * rng.choice([-1.0, 1.0], n)
        a = (q * s) @ (q.T if kind == "symmetric" and not complex_ else q.conj().T)
        a = (a + (a.T if kind == "symmetric" and not complex_ else a.conj().T)) / 2
    elif kind == "lower":
        a = np.tril(rng.uniform(-0.5, 0.5, (n, n)), -1) + np.diag(rng.uniform(2, 3, n))
    elif kind == "diagonal":
        a = np.diag(rng.uniform(1, 3, n) * rng.choice([-1.0, 1.0], n))
    else:  # tridiagonal, diagonally dominant
        a = (
            np.diag(rng.uniform(3, 4, n))
            + np.diag(rng.uniform(-1, 1, n - 1), -1)
            + np.diag(rng.uniform(-1, 1, n - 1), 1)
            if n
            else np.zeros((0, 0))
        )
    if complex_ and kind in ("lower", "diagonal", "tridiagonal"):
        a = (
            a * np.exp(1j * rng.uniform(0, 0.3))
            if kind != "diagonal"
            else a * np.exp(1j * rng.uniform(0, 6, n))
        )
    return a.astype(dtype)


def _int_matrix(rng, m, n, kind):
    """Integer matrices that are nonsingular by diagonal dominance (off-diagonal row sums <= 4)."""
    r = rng.integers(-1, 2, (m, n))
    if kind == "general":
        return np.eye(m, n, dtype=np.int64) * 5 + r * (1 - np.eye(m, n, dtype=np.int64))
    r = r[:n, :n]
    off = np.tril(r, -1)
    if kind == "spd":
        return 6 * np.eye(n, dtype=np.int64) + off + off.T
    if kind == "symmetric":
        return np.diag(rng.choice([-6, 6], n)) + off + off.T
    if kind == "lower":
        return 5 * np.eye(n, dtype=np.int64) + off
    if kind == "diagonal":
        return np.diag(rng.integers(1, 6, n) * rng.choice([-1, 1], n))
    return 5 * np.eye(n, dtype=np.int64) + np.tril(np.triu(r, -1), 1) * (
        1 - np.eye(n, dtype=np.int64)
    )


def _split(size):
    """The pytree operator's structure: {"a": (k,), "b": (size - k,)} (a zero-sized "b" included)."""
    return min(1, size)


def build_operator(kind, a, tags, m, n):
    """An operator of `kind` acting as `a`, with converters from/to flat vectors."""
    dtype = jnp.dtype(a.dtype)
    if kind == "pytree":
        ki, ko = _split(n), _split(m)
        in_s = {"a": S((ki,), dtype), "b": S((n - ki,), dtype)}
        square = m == n
        out_s = in_s if square else (S((ko,), dtype), S((m - ko,), dtype))
        row_blocks = [a[:ko], a[ko:]]
        blocks = [{"a": r[:, :ki], "b": r[:, ki:]} for r in row_blocks]
        pytree = {"a": blocks[0], "b": blocks[1]} if square else tuple(blocks)
        op = lx.PyTreeLinearOperator(pytree, out_s, tags)
        to_out = (lambda b: {"a": b[:ko], "b": b[ko:]}) if square else (lambda b: (b[:ko], b[ko:]))
        return op, to_out
    if kind == "matrix":
        return lx.MatrixLinearOperator(a, tags), lambda b: b
    if kind == "sparse":
        rows, cols = np.nonzero(np.ones((m, n)))  # the full pattern, explicit zeros included
        return lx.SparseCOOLinearOperator(a[rows, cols], rows, cols, (m, n), tags), lambda b: b
    # Matrix-free kinds compute in the matrix's float dtype (integer data is cast as the
    # constructors do).
    fa = jnp.asarray(as_float(a))
    structure = S((n,), fa.dtype)
    if kind == "jacobian":
        op = lx.JacobianLinearOperator(lambda x, mat: mat @ x, jnp.zeros(n, fa.dtype), fa, tags)
        return op, lambda b: b
    if kind == "function":
        return lx.FunctionLinearOperator(lambda v: fa @ v, structure, tags), lambda b: b
    inner = lx.FunctionLinearOperator(lambda v: fa @ v, structure)
    return lx.TaggedLinearOperator(inner, tags), lambda b: b


def _flat(tree):
    return np.concatenate(
        [np.ravel(to_np(x)) for x in jax.tree_util.tree_leaves(tree)] or [np.zeros(0)]
    )


def _modes(spec, name):
    modes = ["ok", "ok", "nan_matrix", "inf_matrix", "nan_vector", "inf_vector", "vector_shape",
             "vector_tree", "half", "empty", "int_data", "mixed_vector", "throw_ok"]  # fmt: skip
    if spec.square:
        modes.append("non_square")
    if spec.tag is not None:
        modes.append("missing_tag")
    if not (spec.iterative and spec.square) and name != "MINRES":
        modes.append("singular")
    if spec.iterative:
        modes += ["nan_y0", "nan_precond", "max_steps_1", "y0", "precond"]
    return modes


@fuzz(70)
@given(data=st.data(), name=st.sampled_from(sorted(SOLVERS)), seed=st.integers(0, 2**16))
def test_solve(data, name, seed):
    spec = SOLVERS[name]
    mode = data.draw(st.sampled_from(_modes(spec, name)), label="mode")
    kind = "sparse" if spec.sparse and data.draw(st.booleans(), label="sparse op") else None
    kind = kind or data.draw(st.sampled_from(OPERATOR_KINDS), label="operator kind")
    dtype = data.draw(st.sampled_from(["float64", "complex128", "float32"]), label="dtype")
    throw = mode == "throw_ok" or data.draw(st.sampled_from([False, False, True]), label="throw")
    rng = np.random.default_rng(seed)

    # Shapes: 1 or 3 unknowns; non-square only where the solver takes it (or to test that it
    # refuses); empty shapes for "empty".
    if mode == "empty":
        m, n = data.draw(st.sampled_from([(0, 0), (0, 2), (2, 0)]), label="shape")
    elif mode == "non_square" or (
        not spec.square and spec.kind == "general" and rng.random() < 0.5
    ):
        m, n = data.draw(st.sampled_from([(3, 2), (2, 3)]), label="shape")
    else:
        # (A 1 x 1 operator is diagonal and tridiagonal without tags, as in Lineax.)
        m = n = 3 if mode == "missing_tag" else data.draw(st.sampled_from([1, 3]), label="n")
    matrix_kind = spec.kind if m == n else "general"
    if spec.kind == "symmetric" and dtype == "complex128" and m == n:
        matrix_kind = "spd"  # complex MINRES needs Hermitian (a psd tag), not complex symmetric
    data_dtype = {"int_data": "int64", "half": "float16"}.get(mode, dtype)
    a = make_matrix(rng, m, n, matrix_kind, data_dtype if data_dtype != "float16" else "float64")
    if data_dtype == "float16":
        a = a.real.astype(np.float16)
    if mode == "singular" and min(m, n) > 0:
        a[-1, :] = 0
        a[:, -1] = 0
    if mode in ("nan_matrix", "inf_matrix") and min(m, n) > 0:
        a[0, 0] = np.nan if mode == "nan_matrix" else np.inf

    tag = spec.tag
    if tag == "sym":
        tag = lx.symmetric_tag if matrix_kind == "symmetric" else PSD
    tags = () if (tag is None or mode == "missing_tag" or m != n) else (tag,)
    op, to_out = build_operator(kind, a, tags, m, n)
    # The structured operator types, where the matrix has their structure (they need no tag).
    if m == n and mode != "missing_tag" and data.draw(st.booleans(), label="structured type"):
        if matrix_kind == "diagonal":
            op, to_out, kind = lx.DiagonalLinearOperator(np.diagonal(a)), (lambda v: v), "diagonal"
        elif matrix_kind == "tridiagonal":
            bands = (np.diagonal(a), np.diagonal(a, -1), np.diagonal(a, 1))
            op, to_out, kind = lx.TridiagonalLinearOperator(*bands), (lambda v: v), "tridiagonal"

    b = make_array(rng, (m,), "int64" if mode == "int_data" else dtype).astype(
        "int64" if mode == "int_data" else dtype
    )
    if mode == "mixed_vector":
        b = b.astype("float64") if dtype == "float32" else (b + 1j * rng.standard_normal(m))
    if mode in ("nan_vector", "inf_vector") and m > 0:
        b[0] = np.nan if mode == "nan_vector" else np.inf
    vector = to_out(jnp.asarray(b))
    if mode == "vector_shape":
        vector = jnp.ones(m + 1, b.dtype)
    elif mode == "vector_tree":
        vector = (vector,)

    real = "float32" if dtype == "float32" else "float64"
    tol = 1e-5 if real == "float32" else 1e-10
    solver = spec.make(tol, 1) if mode == "max_steps_1" else spec.make(tol)
    options = {}
    in_s = op.in_structure()
    # From `y0`, LSQR/LSMR converge to A⁺b + (I - A⁺A) y0 (documented): A⁺b only for m >= n.
    if mode == "nan_y0" or (mode == "y0" and (m >= n or spec.square)):
        y0 = jax.tree_util.tree_map(
            lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), in_s
        )
        if mode == "nan_y0":
            y0 = _poison(y0)
        options["y0"] = y0
    if mode in ("precond", "nan_precond"):
        d = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 2.0, s.dtype), in_s)
        options["preconditioner"] = lx.DiagonalLinearOperator(
            _poison(d) if mode == "nan_precond" else d
        )

    solve = lambda: lx.linear_solve(op, vector, solver, options=options, throw=throw)

    # The expected outcome, from the inputs alone.
    if mode in ("vector_shape", "vector_tree"):
        return assert_raises(solve, ValueError, "does not match the operator's output structure")
    if mode == "half":
        return assert_raises(solve, TypeError, r"float32, float64, complex64 or complex128.*Cast")
    if spec.sparse and kind != "sparse":
        return assert_raises(solve, ValueError, r"SparseLU needs an `lx\.SparseCOOLinearOperator`")
    if spec.square and m != n:
        return assert_raises(solve, ValueError, r"needs a square operator.*use")
    if mode == "missing_tag":
        return assert_raises(solve, ValueError, MISSING_TAG[name])
    # The reference A⁺b (not for NaN/inf input: LAPACK's SVD can loop forever on infinities).
    finite = np.all(np.isfinite(as_float(a))) and np.all(np.isfinite(b))
    ref = (
        np.linalg.lstsq(as_float(a).astype(complex), b.astype(complex), rcond=None)[0]
        if finite
        else None
    )
    if mode == "empty":
        expected = None
    elif mode in ("nan_matrix", "inf_matrix", "nan_vector", "inf_vector", "nan_y0", "nan_precond"):
        expected = "nonfinite_input"
    elif mode == "singular" and not spec.pinv:
        expected = "singular"
    elif mode == "max_steps_1":
        expected = "max_steps_reached"  # or a success that matches the reference
    else:
        expected = None
    # Tolerances. The matrices have condition numbers <= ~5 (<= 25 for Normal, which squares
    # them), so a direct solve is within ~100 ulps of the reference; an iterative one stops at a
    # relative residual of `tol`, so its error is within a few times `tol`.
    check_tol = (
        (1e-3 if spec.iterative else 1e-4)
        if real == "float32"
        else (1e-7 if spec.iterative else 1e-9)
    )
    if mode == "mixed_vector" and real == "float32":
        check_tol = 1e-3

    def check_value(sol):
        x = _flat(sol.value)
        assert x.shape == (n,)
        scale = max(1.0, float(np.max(np.abs(ref), initial=0)))
        np.testing.assert_allclose(x, ref, rtol=0, atol=check_tol * scale)

    if throw:
        if expected is None:
            check_value(jax.block_until_ready(solve()))
        elif mode == "max_steps_1":
            _value_or_error(solve, check_value, RESULT_TEXT[expected])
        else:
            with pytest.raises(lx.LinearSolveError, match=re.escape(RESULT_TEXT[expected])):
                jax.block_until_ready(solve().value)
        return None
    sol = solve()
    got = lx.RESULTS[sol.result]
    if expected is None or (mode == "max_steps_1" and got == ""):
        assert got == "", f"expected success, got {got!r}"
        check_value(sol)
    else:
        assert got == RESULT_TEXT[expected], f"expected {expected}, got {got!r}"
    return None


def _value_or_error(solve, check_value, text):
    try:
        sol = jax.block_until_ready(solve())
    except lx.LinearSolveError as err:
        assert str(err) == text
    else:
        check_value(sol)


def _poison(tree):
    """`tree` with a NaN in its first non-empty leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for i, leaf in enumerate(leaves):
        if leaf.size:
            leaves[i] = leaf.at[0].set(jnp.nan)
            break
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------
# Regressions: what the fuzzing found, one deterministic test per bug (before -> now)

KRYLOV = {
    "CG": lambda **kw: lx.CG(1e-10, 1e-10, **kw),
    "BiCGStab": lambda **kw: lx.BiCGStab(1e-10, 1e-10, **kw),
    "GMRES": lambda **kw: lx.GMRES(1e-10, 1e-10, **kw),
    "MINRES": lambda **kw: lx.MINRES(1e-10, 1e-10, **kw),
    "LSQR": lambda **kw: lx.LSQR(1e-10, 1e-10, **kw),
    "LSMR": lambda **kw: lx.LSMR(1e-10, 1e-10, **kw),
}
A3 = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 5.0]])  # SPD, condition ~2.4
B3 = np.array([1.0, 2.0, 3.0])


def _spd_op(a=A3):
    return lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)


def test_zero_sized_pytree_as_matrix():
    """The known case. Before: `ZeroDivisionError: integer modulo by zero` (`reshape(0, -1)`).
    Now: the `(0, k)` / `(k, 0)` matrix."""
    op = lx.PyTreeLinearOperator({"a": {"x": np.zeros((0, 2))}}, {"a": S((0,), jnp.float64)})
    assert op.as_matrix().shape == (0, 2)
    op = lx.PyTreeLinearOperator(
        {"a": {"x": np.zeros((0, 0)), "y": np.ones((0, 1))}}, {"a": S((0,), jnp.float64)}
    )
    assert op.as_matrix().shape == (0, 1)
    empty_out = lx.FunctionLinearOperator(lambda v: None, S((2,), jnp.float64))
    assert empty_out.as_matrix().shape == (0, 2)  # before: "Need at least one array to concatenate"


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_empty_operators(name):
    """Before: QR on a 0 x 3 operator killed the process (SIGFPE in LAPACK's ormqr), PivotedQR
    raised IndexError, Tridiagonal a JAX TypeError, SparseLU a host-callback crash, LSQR/LSMR with
    an empty structure an IndexError. Now: `A⁺ b = 0`; square-only solvers reject 0 x 3."""
    spec = SOLVERS[name]
    tol = 1e-10
    solver = spec.make(tol)
    tag = {"sym": lx.symmetric_tag}.get(spec.tag, spec.tag)
    for m, n in [(0, 0), (0, 3), (3, 0)]:
        tags = (tag,) if tag is not None and m == n else ()
        if spec.sparse:
            op = lx.SparseCOOLinearOperator(
                np.zeros(0), np.zeros(0, int), np.zeros(0, int), (m, n), tags
            )
        else:
            op = lx.MatrixLinearOperator(np.zeros((m, n)), tags)
        if spec.square and m != n:
            assert_raises(
                lambda op=op, m=m: lx.linear_solve(op, jnp.ones(m), solver), ValueError, "square"
            )
            continue
        sol = lx.linear_solve(op, jnp.ones(m), solver)
        assert sol.result == lx.RESULTS.successful
        np.testing.assert_array_equal(to_np(sol.value), np.zeros(n))
        np.testing.assert_array_equal(to_np(lx.invert(op, solver).mv(jnp.ones(m))), np.zeros(n))


def test_krylov_and_svd_nonfinite_input_never_hangs():
    """Before: BiCGStab and GMRES looped forever on NaN or infinity in the operator, the vector,
    `y0` or the preconditioner (the restart loop re-ran rounds that took no step), and SVD hung in
    LAPACK's gesdd on a matrix with an infinite off-diagonal entry (NumPy's `svd` hangs on it too).
    Now: `nonfinite_input`. Run in a subprocess with a timeout, so that a regression fails here
    instead of hanging the test run."""
    code = textwrap.dedent(
        """
        import json, jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_numpy_dtype_promotion", "strict")
        import linopx as lx
        a = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 5.0]])
        b = np.array([1.0, 2.0, 3.0])
        out = {}
        for name, solver in [("BiCGStab", lx.BiCGStab(1e-10, 1e-10)), ("GMRES", lx.GMRES(1e-10, 1e-10))]:
            bad_a = a.copy(); bad_a[1, 1] = np.nan
            bad_b = b.copy(); bad_b[0] = np.inf
            cases = {
                "operator": (bad_a, b, {}),
                "vector": (a, bad_b, {}),
                "y0": (a, b, {"y0": jnp.array([0.0, np.nan, 0.0])}),
                "preconditioner": (a, b, {"preconditioner": lx.DiagonalLinearOperator(jnp.array([1.0, np.nan, 1.0]))}),
            }
            for where, (aa, bb, opts) in cases.items():
                sol = lx.linear_solve(lx.MatrixLinearOperator(aa), bb, solver, options=opts, throw=False)
                out[f"{name} {where}"] = lx.RESULTS[sol.result]
        inf_a = a.copy(); inf_a[2, 0] = np.inf
        for name, solver in [("SVD", lx.SVD()), ("AutoFalse", lx.AutoLinearSolver(well_posed=False))]:
            sol = lx.linear_solve(lx.MatrixLinearOperator(inf_a), b, solver, throw=False)
            out[f"{name} inf"] = lx.RESULTS[sol.result]
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out) == 10
    for case, text in out.items():
        assert text == RESULT_TEXT["nonfinite_input"], (case, text)


@pytest.mark.parametrize("name", sorted(KRYLOV))
def test_krylov_infinite_rhs_is_not_success(name):
    """Before: an infinite `b` made the tolerance `rtol |b|` infinite, and every Krylov solver
    returned `x = 0` as `successful` (a silent wrong number). Now: `nonfinite_input`."""
    b = B3.copy()
    b[1] = np.inf
    solver = KRYLOV[name]()
    sol = lx.linear_solve(_spd_op(), b, solver, throw=False)
    assert lx.RESULTS[sol.result] == RESULT_TEXT["nonfinite_input"]
    if name == "GMRES":  # throw=True compiles another program: one solver is enough for it
        with pytest.raises(lx.LinearSolveError, match=re.escape(RESULT_TEXT["nonfinite_input"])):
            lx.linear_solve(_spd_op(), b, solver)


@pytest.mark.parametrize("name", sorted(KRYLOV))
def test_max_steps_one_is_consistent(name):
    """`max_steps=1` on a 3 x 3 system that one step cannot solve: `max_steps_reached`, in every
    Krylov solver, with one step taken; 0 and negative values raise (decision: see the module
    docstring). Before: `max_steps >= 2**31` (meaning "no limit") overflowed the int32 counter, so
    BiCGStab/GMRES/MINRES/LSQR/LSMR took no step and returned `x = 0` (or raised OverflowError
    for 10**30); now it is capped."""
    sol = lx.linear_solve(_spd_op(), B3, KRYLOV[name](max_steps=1), throw=False)
    assert lx.RESULTS[sol.result] == RESULT_TEXT["max_steps_reached"]
    assert int(sol.stats["num_steps"]) == 1
    for bad in (0, -1):
        assert_raises(
            lambda bad=bad: KRYLOV[name](max_steps=bad),
            ValueError,
            r"`max_steps` must be at least 1.*Pass",
        )


@pytest.mark.parametrize("name", ["GMRES", "LSQR"])
def test_huge_max_steps(name):
    sol = lx.linear_solve(_spd_op(), B3, KRYLOV[name](max_steps=10**30), throw=False)
    assert sol.result == lx.RESULTS.successful
    np.testing.assert_allclose(to_np(sol.value), np.linalg.solve(A3, B3), rtol=1e-8)


@pytest.mark.parametrize(
    "op_dtype, vec_dtype, solver",
    [
        ("complex64", "float64", lx.GMRES(1e-6, 1e-6)),
        ("complex64", "complex128", lx.LSMR(1e-6, 1e-6)),
        ("complex64", "float64", lx.CG(1e-6, 1e-6)),
        ("float32", "float64", lx.Normal(lx.Cholesky())),
        ("complex64", "complex128", lx.Normal(lx.CG(1e-6, 1e-6))),
        ("float64", "complex128", lx.Normal(lx.Cholesky())),
    ],
    ids=[
        "gmres-c64-f64",
        "lsmr-c64-c128",
        "cg-c64-f64",
        "normal-f32-f64",
        "normalcg-c64-c128",
        "normal-f64-c128",
    ],
)
def test_mixed_precision(op_dtype, vec_dtype, solver):
    """Before: a JAX `TypePromotionError` under strict promotion: Krylov solvers applied a
    complex64 operator to complex128 vectors, and `Normal` applied Aᴴ to the raw vector. Now: the
    operator sees its own dtype, and the answer matches the reference."""
    b = B3.astype(vec_dtype) + (
        0.5j if np.issubdtype(np.dtype(vec_dtype), np.complexfloating) else 0
    )
    sol = lx.linear_solve(_spd_op(A3.astype(op_dtype)), b, solver)
    np.testing.assert_allclose(to_np(sol.value), np.linalg.solve(A3, b), rtol=1e-4, atol=1e-5)


def test_half_precision_is_a_clear_error():
    """Before: `NotImplementedError: Unsupported dtype float16` from LAPACK (dense solvers), a
    host-callback crash (SparseLU), a `TypePromotionError` (Diagonal). Now: a `TypeError` naming
    the supported dtypes and the cast, in `linear_solve` and `invert`."""
    for dtype in (jnp.float16, jnp.bfloat16):
        a = jnp.asarray(A3, dtype)
        ops = [
            lx.MatrixLinearOperator(a),
            lx.DiagonalLinearOperator(jnp.diagonal(a)),
            lx.SparseCOOLinearOperator(
                a.ravel(), np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3), (3, 3)
            ),
        ]
        for op in ops:
            for solver in (lx.AutoLinearSolver(well_posed=None), lx.GMRES(1e-3, 1e-3)):
                assert_raises(
                    lambda op=op, solver=solver: lx.linear_solve(op, B3, solver),
                    TypeError,
                    r"float32, float64.*Cast",
                )
            assert_raises(lambda op=op: lx.invert(op), TypeError, r"float32, float64.*Cast")


def test_strict_promotion_in_constructors():
    """Before: `TypePromotionError` under strict promotion for float32 and float64 parts of one
    operator (tridiagonal bands, pytree blocks) and for a float32 -> float64 identity's
    `as_matrix`. Now: promoted explicitly, as documented."""
    tri = lx.TridiagonalLinearOperator(np.ones(3, np.float32), np.ones(2), np.ones(2))
    assert tri.as_matrix().dtype == jnp.float64
    blocks = {"a": {"x": np.eye(2, dtype=np.float32), "y": np.ones((2, 1))}}
    assert (
        lx.PyTreeLinearOperator(blocks, {"a": S((2,), jnp.float64)}).as_matrix().dtype
        == jnp.float64
    )
    ident = lx.IdentityLinearOperator(S((2,), jnp.float32), S((3,), jnp.float64))
    np.testing.assert_array_equal(to_np(ident.as_matrix()), np.eye(3, 2))


def test_integer_identity_structure():
    """Before: an identity on an int32 structure returned `[0, 1]` for `b = [0.5, 1.5]` (the
    solution cast to int32: a silent wrong number), LU raised a JAX dtype error. Now: integer
    structures are taken as float, as integer data is."""
    op = lx.IdentityLinearOperator(S((2,), jnp.int32))
    for solver in (lx.AutoLinearSolver(well_posed=None), lx.LU()):
        np.testing.assert_array_equal(
            to_np(lx.linear_solve(op, np.array([0.5, 1.5]), solver).value), [0.5, 1.5]
        )
    assert_raises(lambda: lx.IdentityLinearOperator((3,)), TypeError, r"jax\.ShapeDtypeStruct")


def test_non_numeric_input():
    """Before: JAX's "Error interpreting argument to stage as a JAX value" or "data type 'ab' not
    understood". Now: a `TypeError` naming the argument."""
    assert_raises(lambda: lx.MatrixLinearOperator(None), TypeError, "`matrix` must be numeric")
    assert_raises(
        lambda: lx.MatrixLinearOperator(np.array([["a"]])), TypeError, "`matrix` must be numeric"
    )
    assert_raises(
        lambda: lx.JacobianLinearOperator(lambda x, _: x, "abc"), TypeError, "`x` must be numeric"
    )
    assert_raises(
        lambda: lx.linear_solve(lx.MatrixLinearOperator(A3), "abc"),
        TypeError,
        "pytree of numeric arrays",
    )


def test_nonfinite_options_and_scalars_are_nonfinite_input():
    """Before: a NaN `y0` or preconditioner gave `breakdown`/`max_steps_reached`/`stagnation`, and
    `A * nan` (a Python float) gave `singular`. Now: `nonfinite_input`, the inputs being NaN."""
    y0 = {"y0": jnp.array([0.0, np.nan, 0.0])}
    for solver in (KRYLOV["CG"](), KRYLOV["LSQR"]()):
        sol = lx.linear_solve(_spd_op(), B3, solver, options=y0, throw=False)
        assert lx.RESULTS[sol.result] == RESULT_TEXT["nonfinite_input"]
    sol = lx.linear_solve(lx.MatrixLinearOperator(A3) * math.nan, B3, lx.LU(), throw=False)
    assert lx.RESULTS[sol.result] == RESULT_TEXT["nonfinite_input"]


def test_auto_sparse_least_squares_float32():
    """Before: `AutoLinearSolver` solved a float32 sparse least-squares problem with
    `LSMR(rtol=1e-10)`, which float32 cannot reach: `stagnation` (an error with `throw=True`)
    despite an accurate answer. Now: the tolerance is at least `100 eps`."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((5, 3)) + 3 * np.eye(5, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    op = lx.SparseCOOLinearOperator.from_scipy(sp.coo_array(a))
    x = lx.linear_solve(op, b).value
    ref = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(to_np(x), ref, rtol=1e-4, atol=1e-5)


def test_mismatched_state_solver_and_throw():
    """Before: a state from another solver raised `AttributeError: '_LUState' object has no
    attribute 'h'`; a state from a 2 x 2 operator silently returned a vector of length 2 for a
    3 x 3 system; `invert(op, "LU")` raised AttributeError; `throw="no"` meant `throw=True`."""
    op = lx.MatrixLinearOperator(A3)
    lu_state = lx.LU().init(op, {})
    assert_raises(
        lambda: lx.linear_solve(op, B3, lx.QR(), state=lu_state),
        ValueError,
        r"`state` is a _LUState.*pass",
    )
    assert_raises(
        lambda: lx.linear_solve(op, B3, lx.LU(), state=3), ValueError, "pass the state of"
    )
    small = lx.LU().init(lx.MatrixLinearOperator(np.eye(2)), {})
    assert_raises(
        lambda: lx.linear_solve(op, B3, lx.LU(), state=small),
        ValueError,
        "made for another operator",
    )
    complex_state = lx.LU().init(lx.MatrixLinearOperator(A3.astype(complex)), {})
    assert_raises(
        lambda: lx.linear_solve(op, B3, lx.LU(), state=complex_state),
        ValueError,
        "made for another",
    )
    assert_raises(lambda: lx.invert(op, "LU"), TypeError, r"such as `lx\.LU\(\)`")
    assert_raises(
        lambda: lx.linear_solve(op, B3, throw="no"), TypeError, "`throw` must be True or False"
    )
    assert_raises(
        lambda: lx.linear_solve(
            _spd_op(), B3, lx.CG(1e-8, 1e-8), options={"preconditioner": np.eye(3)}
        ),
        TypeError,
        r"got an array; wrap a matrix in `lx\.MatrixLinearOperator`",
    )


def test_sparse_lu_without_entries_is_singular():
    op = lx.SparseCOOLinearOperator(np.zeros(0), np.zeros(0, int), np.zeros(0, int), (3, 3))
    sol = lx.linear_solve(op, jnp.ones(3), lx.SparseLU(), throw=False)
    assert lx.RESULTS[sol.result] == RESULT_TEXT["singular"]
