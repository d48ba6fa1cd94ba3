"""Shared test helpers: random matrices, and every operator kind built from one dense matrix.

Import it as `from helpers import ...` (pytest puts `tests/` on `sys.path`; `tests/` is not a
package). Everything here is independent of linopx's own flattening code (`linopx._tree`), so that
tests can compare linopx against plain NumPy.

**Random matrices.** `make_matrix(rng, shape, dtype, kind)` returns a reproducible, well-conditioned
NumPy matrix of the given `kind` (see `MATRIX_KINDS`): "general", "spd", "nsd", "symmetric", "lower",
"upper", "unit_lower", "diagonal", "tridiagonal", or "rank_deficient(r)" (also accepted as the tuple
`("rank_deficient", r)`). Full-rank kinds have singular values in [1, 3]; "rank_deficient(r)" has exactly
`r` nonzero singular values in [1, 3]. For complex dtypes "spd"/"nsd" are Hermitian (semi)definite and
"symmetric" is complex symmetric (`A == A.T`, not Hermitian). `tags_for_kind(kind, dtype)` gives the
linopx tags that a matrix of that kind may honestly carry. Square-only kinds raise `ValueError` for a
non-square shape.

**Operator builders.** `OPERATOR_BUILDERS` is a list of `(name, builder)` pairs for
`pytest.mark.parametrize("name, builder", OPERATOR_BUILDERS)`. Each `builder(matrix, tags)` takes a
dense `(m, n)` matrix (NumPy or JAX; JAX tracers are fine, so builders work under `jax.vmap`/`jax.jit`)
and returns a `Built`: a named tuple

    (operator, to_flat_in, from_flat_in, to_flat_out, from_flat_out, in_structure, out_structure)

where `operator` acts like `matrix` (its `as_matrix()` equals `matrix`), `from_flat_in(v)` turns a flat
`(n,)` vector into the pytree the operator accepts, `to_flat_out(y)` flattens its output to `(m,)`
(and the `*_out`/`*_in` counterparts for the transpose), and `in_structure`/`out_structure` are the
`jax.ShapeDtypeStruct` pytrees the builder meant to create (built here, not read from linopx). So a test
reads

    op, to_in, from_in, to_out, from_out, *_ = builder(a, ())
    np.testing.assert_allclose(to_out(op.mv(from_in(v))), a @ v, **tolerances(a.dtype))

`tags` is anything linopx accepts as tags; a builder passes them to the operator(s) it wraps, so the
properties the tags promise survive where linopx can prove they do (e.g. `0.5 * A + 0.5 * A`). The
Jacobian builders use `fn(x, (x0, b)) = a @ x + (b @ (x - x0))**2`, linearised at `x0`, whose
Jacobian is exactly `a`; the `jac="bwd"` one hides the square behind a `jax.custom_vjp` without a JVP
rule, so it only works if linopx really uses reverse mode.

The builders are: "matrix" (`MatrixLinearOperator`), "function" (`FunctionLinearOperator` closing
over the matrix), "jacobian_fwd" and "jacobian_bwd" (`JacobianLinearOperator`), "pytree"
(`PyTreeLinearOperator` from a dict input to a tuple output, or dict to dict when square; see
`pytree_structures`), "tagged" (`TaggedLinearOperator` around an untagged `FunctionLinearOperator`),
and the composites "sum_of_halves" (`0.5 * A + A * 0.5`), "identity_composed" (`I @ A @ I`),
"scaled_divided" (`(2 * A) / 2`), "double_negation" (`-(-A)`) and "double_transpose"
(`MatrixLinearOperator(a.T).T`). Scaling and negation lose `unit_diagonal_tag` (linopx cannot prove
that it survives); everything else keeps its tags. The composites only scale by powers of two, so
each equals `matrix` exactly.

`STRUCTURED_BUILDERS` is a list of `(name, make)` pairs with `make(rng, n, dtype) -> (Built, dense)`
for the structured operators (diagonal with an array or a pytree diagonal, tridiagonal, square,
padding, truncating and pytree identities, `D @ A`, tridiagonal + diagonal), `dense` being the NumPy
matrix they equal.

**Pytree vectors.** `tree_to_flat(tree)` and `flat_to_tree(flat, structure)` convert between pytrees
of arrays and flat vectors (leaves in `jax.tree_util` order, each raveled in C order). Concrete
values are converted with NumPy (`tree_to_flat` then returns a NumPy array), traced ones with
`jax.numpy`.

**Tolerances.** `tolerances(dtype)` gives `rtol`/`atol` keyword arguments for `assert_allclose`.

**Derivative references.** `pinv_jvp(a, b, da, db)` and `pinv_vjp(a, b, u)` give `A⁺ b` with its
JVP, and its VJP in JAX's (unconjugated) convention, computed in NumPy from the closed-form
derivative of the pseudoinverse.

**Counting factorizations.** `compiled_custom_calls(fn, *args)` lists the custom calls (LAPACK
routines, callbacks) of the optimised program `jax.jit(fn)` compiles to, and
`count_compiled_calls(fn, routine, *args)` counts one routine (`LAPACK_FACTORIZATION` names them):
the compiled program, unlike a jaxpr, includes what a solver does inside the solve primitive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import linopx as lx

# ---------------------------------------------------------------------------------------------
# Tolerances

# The NumPy reference is computed in float64/complex128 from the *same* (already rounded) matrix
# and vectors, so the only error is linopx's own rounding: a handful of operations per entry on
# vectors of at most a few dozen entries. float32's unit roundoff is 6e-8; 1e-4 leaves room for
# ~1000 ulps (sums of n products, the extra additions of the composite builders, the extra
# operations autodiff adds in the Jacobian builders). float64's is 1.1e-16; 1e-10 is as generous.
# complex64/complex128 share their real counterparts' precision.
_TOLERANCES = {
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-4},
    np.dtype(np.complex64): {"rtol": 1e-4, "atol": 1e-4},
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-10},
    np.dtype(np.complex128): {"rtol": 1e-10, "atol": 1e-10},
}


def tolerances(dtype: Any) -> dict:
    """`rtol`/`atol` for comparing a result of the given dtype with a float64 NumPy reference."""
    return dict(_TOLERANCES[np.dtype(dtype)])


def is_complex(dtype: Any) -> bool:
    return np.issubdtype(np.dtype(dtype), np.complexfloating)


# ---------------------------------------------------------------------------------------------
# Counting factorizations in the compiled program

# The solve is a JAX primitive: a jaxpr shows what `init` did (outside it) but not what `compute`
# does inside it, so a solver that factorized again in `compute` would look fine there. The
# compiled program has the primitive lowered and inlined, and XLA's optimisations applied (dead
# code removed, identical computations merged): its LAPACK calls are what actually runs.
_CUSTOM_CALL = re.compile(r"= (.*?) custom-call\(.*custom_call_target=\"(\w+)\"")

# The LAPACK routine each dense factorization compiles to on the CPU (the custom-call target is
# e.g. "lapack_dgetrf_ffi" or "lapack_zgetrf_ffi", so a substring names it for every dtype).
LAPACK_FACTORIZATION = {
    "lu": "getrf",
    "cholesky": "potrf",
    "qr": "geqrf",
    "pivoted_qr": "geqp3",
    "svd": "gesdd",
}


def compiled_custom_calls(fn: Callable, *args: Any) -> list[tuple[str, str]]:
    """`(target, result shape)` of every custom call in the optimised program that
    `jax.jit(fn)(*args)` compiles to, e.g.
    `("lapack_dgetrf_ffi", "(f64[4,4]{0,1}, s32[4]{0}, s32[])")`."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return [(m.group(2), m.group(1)) for m in map(_CUSTOM_CALL.search, text.splitlines()) if m]


def uses_native_spmv(fn: Callable, *args: Any) -> bool:
    """Whether the compiled `jax.jit(fn)(*args)` calls linopx's native sparse product. A fresh
    function each time: jit's caches are keyed on the function."""
    calls = compiled_custom_calls(lambda *a: fn(*a), *args)
    return any(target == "linopx_spmv" for target, _ in calls)


def force_xla_sparse_products(monkeypatch) -> None:
    """Switch the native sparse product off for one test (the pure-XLA path, its fallback)."""
    import linopx.linops.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "_native_product_applies", lambda x: False)


def count_compiled_calls(fn: Callable, routine: str, *args: Any) -> int:
    """How many calls to the LAPACK `routine` (e.g. "getrf") the compiled `jax.jit(fn)(*args)`
    makes."""
    return sum(routine in target for target, _ in compiled_custom_calls(fn, *args))


# ---------------------------------------------------------------------------------------------
# Random matrices

MATRIX_KINDS = (
    "general",
    "spd",
    "nsd",
    "symmetric",
    "lower",
    "upper",
    "unit_lower",
    "diagonal",
    "tridiagonal",
    "rank_deficient(1)",
    "rank_deficient(2)",
)
SQUARE_KINDS = frozenset(
    {"spd", "nsd", "symmetric", "lower", "upper", "unit_lower", "diagonal", "tridiagonal"}
)


def _parse_kind(kind: Any) -> tuple[str, int | None]:
    if isinstance(kind, tuple):
        name, rank = kind
        return name, int(rank)
    match = re.fullmatch(r"rank_deficient\((\d+)\)", kind)
    if match:
        return "rank_deficient", int(match.group(1))
    return kind, None


def _normal(rng: np.random.Generator, shape: tuple, complex_: bool) -> np.ndarray:
    x = rng.standard_normal(shape)
    if complex_:
        x = x + 1j * rng.standard_normal(shape)
    return x


def _orthonormal_columns(rng: np.random.Generator, m: int, k: int, complex_: bool) -> np.ndarray:
    """An `(m, k)` matrix with orthonormal (unitary, if complex) columns."""
    q, r = np.linalg.qr(_normal(rng, (m, max(k, 1)), complex_))
    # Fix the phases so that the result is a deterministic function of the random draw.
    d = np.diagonal(r)
    q = q * (d / np.where(np.abs(d) == 0, 1, np.abs(d)))
    return q[:, :k]


def _spectrum(rng: np.random.Generator, k: int) -> np.ndarray:
    """`k` magnitudes in [1, 3]: condition number at most 3."""
    return rng.uniform(1.0, 3.0, size=k)


def _unit_scalars(rng: np.random.Generator, k: int, complex_: bool) -> np.ndarray:
    """`k` random numbers of modulus one: random signs, or random phases if complex."""
    if complex_:
        return np.exp(2j * np.pi * rng.uniform(size=k))
    return rng.choice([-1.0, 1.0], size=k)


def make_matrix(
    rng: np.random.Generator, shape: tuple[int, int], dtype: Any, kind: Any = "general"
) -> np.ndarray:
    """A reproducible, well-conditioned random matrix of `kind` (see the module docstring)."""
    dtype = np.dtype(dtype)
    cplx = is_complex(dtype)
    m, n = shape
    name, rank = _parse_kind(kind)
    if name in SQUARE_KINDS and m != n:
        raise ValueError(f"make_matrix: kind {kind!r} needs a square shape, got {shape}.")
    if name == "general":
        k = min(m, n)
        u = _orthonormal_columns(rng, m, k, cplx)
        v = _orthonormal_columns(rng, n, k, cplx)
        a = (u * _spectrum(rng, k)) @ v.conj().T
    elif name == "rank_deficient":
        if rank is None or not 0 <= rank <= min(m, n):
            raise ValueError(f"make_matrix: rank {rank} impossible for shape {shape}.")
        u = _orthonormal_columns(rng, m, rank, cplx)
        v = _orthonormal_columns(rng, n, rank, cplx)
        a = (u * _spectrum(rng, rank)) @ v.conj().T
    elif name in ("spd", "nsd"):
        q = _orthonormal_columns(rng, n, n, cplx)
        a = (q * _spectrum(rng, n)) @ q.conj().T
        a = (a + a.conj().T) / 2  # exactly Hermitian despite rounding
        if name == "nsd":
            a = -a
    elif name == "symmetric":
        # Q diag(s) Q^T with Q unitary: symmetric (not Hermitian, if complex), and as Q and Q^T are
        # both unitary its singular values are |s|, in [1, 3].
        q = _orthonormal_columns(rng, n, n, cplx)
        s = _spectrum(rng, n) * _unit_scalars(rng, n, cplx)
        a = (q * s) @ q.T
        a = (a + a.T) / 2
    elif name in ("lower", "upper", "unit_lower"):
        # Small off-diagonal entries keep a triangular matrix well-conditioned.
        a = np.tril(_normal(rng, (n, n), cplx), -1) * (0.5 / max(n, 1))
        if name == "unit_lower":
            diag = np.ones(n)
        else:
            diag = rng.uniform(1.0, 2.0, size=n) * _unit_scalars(rng, n, cplx)
        a = a + np.diag(diag)
        if name == "upper":
            a = a.T
    elif name == "diagonal":
        a = np.diag(rng.uniform(1.0, 2.0, size=n) * _unit_scalars(rng, n, cplx))
    elif name == "tridiagonal":
        # Diagonally dominant: |d| >= 2, off-diagonals below 0.5 in modulus.
        d = rng.uniform(2.0, 3.0, size=n) * _unit_scalars(rng, n, cplx)
        lo = rng.uniform(-0.5, 0.5, size=n - 1) * _unit_scalars(rng, n - 1, cplx)
        up = rng.uniform(-0.5, 0.5, size=n - 1) * _unit_scalars(rng, n - 1, cplx)
        a = np.diag(d) + np.diag(lo, -1) + np.diag(up, 1)
    else:
        raise ValueError(f"make_matrix: unknown kind {kind!r}; expected one of {MATRIX_KINDS}.")
    if not cplx:
        a = np.real(a)
    return np.ascontiguousarray(a.astype(dtype))


def tags_for_kind(kind: Any, dtype: Any) -> frozenset:
    """The linopx tags a matrix of `kind` and `dtype` (from `make_matrix`) may carry."""
    name, _ = _parse_kind(kind)
    cplx = is_complex(dtype)
    if name == "spd":
        return frozenset({lx.positive_semidefinite_tag} | (set() if cplx else {lx.symmetric_tag}))
    if name == "nsd":
        return frozenset({lx.negative_semidefinite_tag} | (set() if cplx else {lx.symmetric_tag}))
    return {
        "symmetric": frozenset({lx.symmetric_tag}),
        "lower": frozenset({lx.lower_triangular_tag}),
        "upper": frozenset({lx.upper_triangular_tag}),
        "unit_lower": frozenset({lx.lower_triangular_tag, lx.unit_diagonal_tag}),
        "diagonal": frozenset({lx.diagonal_tag}),
        "tridiagonal": frozenset({lx.tridiagonal_tag}),
    }.get(name, frozenset())


def random_vector(rng: np.random.Generator, n: int, dtype: Any) -> np.ndarray:
    """A random `(n,)` NumPy vector of `dtype` (complex entries if `dtype` is complex)."""
    return _normal(rng, (n,), is_complex(dtype)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# NumPy references for derivatives of the pseudoinverse solution


def pinv_jvp(a, b, da, db, rcond=1e-10):
    """`x = A⁺ b` and its derivative along (dA, db), in NumPy: the derivative of the pseudoinverse
    of a matrix of constant rank (Golub & Pereyra 1973),
    dA⁺ = -A⁺ dA A⁺ + A⁺ A⁺ᴴ dAᴴ (I - A A⁺) + (I - A⁺ A) dAᴴ A⁺ᴴ A⁺.
    Singular values below `rcond` times the largest count as zero."""
    p = np.linalg.pinv(a, rcond=rcond)
    m, n = a.shape
    dah = da.conj().T
    dp = (
        -p @ da @ p
        + p @ p.conj().T @ dah @ (np.eye(m) - a @ p)
        + (np.eye(n) - p @ a) @ dah @ p.conj().T @ p
    )
    return p @ b, dp @ b + p @ db


def pinv_vjp(a, b, u, rcond=1e-10):
    """The cotangents `(gA, gb)` of `x = A⁺ b` for the cotangent `u`, in JAX's convention
    Re Σ u dx = Re Σ gA dA + Re Σ gb db (no conjugation), assembled entry by entry from
    `pinv_jvp` along each real and imaginary unit direction (the sizes here are tiny)."""
    units = (1, 1j) if np.iscomplexobj(a) or np.iscomplexobj(b) else (1,)

    def pairing(da, db):
        return np.real(np.sum(u * pinv_jvp(a, b, da, db, rcond)[1]))

    def gradient(shape, direction):
        g = np.zeros(shape, np.complex128 if len(units) == 2 else np.float64)
        for idx in np.ndindex(shape):
            e = np.zeros(shape)
            e[idx] = 1
            # Re(g e) = Re(u dx(e)) and Re(g i e) = -Im(g) = Re(u dx(i e)).
            g[idx] = sum(np.conj(unit) * pairing(*direction(unit * e)) for unit in units)
        return g

    zero_a, zero_b = np.zeros_like(a), np.zeros_like(b)
    return (
        gradient(a.shape, lambda e: (e, zero_b)),
        gradient(b.shape, lambda e: (zero_a, e)),
    )


# ---------------------------------------------------------------------------------------------
# Pytree vectors <-> flat vectors


def _traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


# Concrete values are converted with NumPy (a JAX operation would be compiled afresh for every new
# shape and dtype, which is most of the cost of a test run); traced ones (under `jit`/`vmap`) with
# `jax.numpy`.


def tree_to_flat(tree: Any) -> Any:
    """Concatenate the leaves of `tree` (in `jax.tree_util` order, each raveled) into one vector:
    a NumPy array for concrete leaves, a JAX array for traced ones."""
    leaves = jax.tree_util.tree_leaves(tree)
    if _traced(*leaves):
        return jnp.concatenate([jnp.ravel(x) for x in leaves])
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def flat_to_tree(flat: Any, structure: Any) -> Any:
    """Split a flat vector into a pytree of JAX arrays with the shapes and dtypes of `structure`."""
    leaves, treedef = jax.tree_util.tree_flatten(structure)
    traced = _traced(flat)
    if not traced:
        flat = np.asarray(flat)
    out, start = [], 0
    for leaf in leaves:
        size = math.prod(leaf.shape)
        piece = flat[start : start + size]
        if traced:
            out.append(jnp.reshape(piece, leaf.shape).astype(leaf.dtype))
        else:
            out.append(jnp.asarray(np.reshape(piece, leaf.shape).astype(leaf.dtype)))
        start += size
    if start != flat.shape[0]:
        raise ValueError(
            f"flat_to_tree: vector of size {flat.shape[0]} for a structure of size {start}."
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def structure_size(structure: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(structure))


# ---------------------------------------------------------------------------------------------
# Operator builders


class Built(NamedTuple):
    operator: lx.AbstractLinearOperator
    to_flat_in: Callable[[Any], jax.Array]
    from_flat_in: Callable[[Any], Any]
    to_flat_out: Callable[[Any], jax.Array]
    from_flat_out: Callable[[Any], Any]
    in_structure: Any
    out_structure: Any


def _flat_struct(size: int, dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((size,), jnp.dtype(dtype))


def built_from_structures(
    operator: lx.AbstractLinearOperator, in_structure: Any, out_structure: Any
) -> Built:
    """A `Built` whose converters follow the given (expected) structures."""
    return Built(
        operator,
        tree_to_flat,
        lambda v: flat_to_tree(v, in_structure),
        tree_to_flat,
        lambda w: flat_to_tree(w, out_structure),
        in_structure,
        out_structure,
    )


def _flat_built(operator: lx.AbstractLinearOperator, matrix: Any) -> Built:
    m, n = matrix.shape
    return built_from_structures(
        operator, _flat_struct(n, matrix.dtype), _flat_struct(m, matrix.dtype)
    )


def _matrix(matrix: Any) -> jax.Array:
    return jnp.asarray(matrix)


def build_matrix(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    return _flat_built(lx.MatrixLinearOperator(a, tags), a)


def build_function(matrix, tags=()) -> Built:
    a = _matrix(matrix)

    def fn(v):
        return jnp.matmul(a, v, precision=jax.lax.Precision.HIGHEST)

    return _flat_built(lx.FunctionLinearOperator(fn, _flat_struct(a.shape[1], a.dtype), tags), a)


def _jacobian_point(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A fixed point `x0` and a fixed `(m, n)` matrix `b` for the nonlinear term."""
    m, n = a.shape
    r = np.random.default_rng(1234)
    x0 = r.standard_normal(n)
    b = r.standard_normal((m, n))
    if is_complex(a.dtype):
        x0 = x0 + 1j * r.standard_normal(n)
        b = b + 1j * r.standard_normal((m, n))
    return jnp.asarray(x0.astype(a.dtype)), jnp.asarray(b.astype(a.dtype))


@jax.custom_vjp
def _square_vjp_only(y):
    """`y**2` with a custom VJP and no JVP rule: forward mode through it raises."""
    return y**2


def _square_fwd(y):
    return y**2, y


def _square_bwd(y, ct):
    # Unconjugated (holomorphic) cotangent rule, as JAX uses for complex functions.
    return (2 * y * ct,)


_square_vjp_only.defvjp(_square_fwd, _square_bwd)


def _build_jacobian(matrix, tags, jac):
    a = _matrix(matrix)
    x0, b = _jacobian_point(a)
    square = _square_vjp_only if jac == "bwd" else jnp.square

    def fn(x, args):
        x0_, b_ = args
        linear = jnp.matmul(a, x, precision=jax.lax.Precision.HIGHEST)
        return linear + square(jnp.matmul(b_, x - x0_, precision=jax.lax.Precision.HIGHEST))

    op = lx.JacobianLinearOperator(fn, x0, (x0, b), tags=tags, jac=jac)
    return _flat_built(op, a)


def build_jacobian_fwd(matrix, tags=()) -> Built:
    return _build_jacobian(matrix, tags, None)


def build_jacobian_bwd(matrix, tags=()) -> Built:
    return _build_jacobian(matrix, tags, "bwd")


def pytree_structures(m: int, n: int, dtype: Any) -> tuple[Any, Any]:
    """The input (a dict) and output (a tuple) structures the pytree builder splits vectors into.

    The input is `{"s": scalar, "v": (n - 1,)}` (just `{"s": scalar}` when n == 1). For a square
    matrix the output has the same structure (so that square-only tags can be used); otherwise it is
    `((m - m // 2,), (m // 2, 1))` (just `((m,),)` when m == 1): a scalar leaf, a 1-D leaf and a 2-D
    leaf between them."""
    dtype = jnp.dtype(dtype)
    in_s = {"s": jax.ShapeDtypeStruct((), dtype)}
    if n > 1:
        in_s["v"] = jax.ShapeDtypeStruct((n - 1,), dtype)
    if m == n:
        out_s = dict(in_s)
    elif m > 1:
        out_s = (
            jax.ShapeDtypeStruct((m - m // 2,), dtype),
            jax.ShapeDtypeStruct((m // 2, 1), dtype),
        )
    else:
        out_s = (jax.ShapeDtypeStruct((m,), dtype),)
    return in_s, out_s


def pytree_blocks(matrix: Any, in_structure: Any, out_structure: Any) -> Any:
    """Cut a dense matrix into `PyTreeLinearOperator`'s pytree-of-pytrees layout."""
    a = _matrix(matrix)
    in_leaves, in_treedef = jax.tree_util.tree_flatten(in_structure)
    out_leaves, out_treedef = jax.tree_util.tree_flatten(out_structure)
    rows, r = [], 0
    for so in out_leaves:
        mo = math.prod(so.shape)
        cols, c = [], 0
        for si in in_leaves:
            ni = math.prod(si.shape)
            cols.append(jnp.reshape(a[r : r + mo, c : c + ni], tuple(so.shape) + tuple(si.shape)))
            c += ni
        rows.append(jax.tree_util.tree_unflatten(in_treedef, cols))
        r += mo
    return jax.tree_util.tree_unflatten(out_treedef, rows)


def build_pytree(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    in_s, out_s = pytree_structures(*a.shape, a.dtype)
    op = lx.PyTreeLinearOperator(pytree_blocks(a, in_s, out_s), out_s, tags)
    return built_from_structures(op, in_s, out_s)


def build_tagged(matrix, tags=()) -> Built:
    # Wrap an untagged matrix-free operator, so that every property comes from the wrapper's tags.
    inner = build_function(matrix, ()).operator
    return _flat_built(lx.TaggedLinearOperator(inner, tags), _matrix(matrix))


def build_sum_of_halves(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    m = lx.MatrixLinearOperator(a, tags)
    return _flat_built(0.5 * m + m * 0.5, a)


def build_identity_composed(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    m, n = a.shape
    left = lx.IdentityLinearOperator(_flat_struct(m, a.dtype)) @ lx.MatrixLinearOperator(a, tags)
    return _flat_built(left @ lx.IdentityLinearOperator(_flat_struct(n, a.dtype)), a)


def build_scaled_divided(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    return _flat_built((2 * lx.MatrixLinearOperator(a, tags)) / 2, a)


def build_double_negation(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    return _flat_built(-(-lx.MatrixLinearOperator(a, tags)), a)  # noqa: B002


def build_double_transpose(matrix, tags=()) -> Built:
    a = _matrix(matrix)
    inner = lx.MatrixLinearOperator(a.T, lx.transpose_tags(tags))
    return _flat_built(inner.T, a)


OPERATOR_BUILDERS: list[tuple[str, Callable[..., Built]]] = [
    ("matrix", build_matrix),
    ("function", build_function),
    ("jacobian_fwd", build_jacobian_fwd),
    ("jacobian_bwd", build_jacobian_bwd),
    ("pytree", build_pytree),
    ("tagged", build_tagged),
    ("sum_of_halves", build_sum_of_halves),
    ("identity_composed", build_identity_composed),
    ("scaled_divided", build_scaled_divided),
    ("double_negation", build_double_negation),
    ("double_transpose", build_double_transpose),
]
BUILDER_NAMES = [name for name, _ in OPERATOR_BUILDERS]
BUILDERS = dict(OPERATOR_BUILDERS)


# ---------------------------------------------------------------------------------------------
# Structured operators


def make_diagonal(rng, n, dtype) -> tuple[Built, np.ndarray]:
    d = make_matrix(rng, (n, n), dtype, "diagonal")
    op = lx.DiagonalLinearOperator(jnp.asarray(np.diagonal(d).copy()))
    return _flat_built(op, d), d


def make_pytree_diagonal(rng, n, dtype) -> tuple[Built, np.ndarray]:
    """A diagonal given as `{"a": (k,), "b": (n - k,)}` with k = (n + 1) // 2 (just "a" if n == 1)."""
    d = np.diagonal(make_matrix(rng, (n, n), dtype, "diagonal")).copy()
    k = (n + 1) // 2
    structure = {"a": jax.ShapeDtypeStruct((k,), jnp.dtype(dtype))}
    if n > k:
        structure["b"] = jax.ShapeDtypeStruct((n - k,), jnp.dtype(dtype))
    op = lx.DiagonalLinearOperator(flat_to_tree(d, structure))
    return built_from_structures(op, structure, structure), np.diag(d)


def make_tridiagonal(rng, n, dtype) -> tuple[Built, np.ndarray]:
    t = make_matrix(rng, (n, n), dtype, "tridiagonal")
    bands = [np.diagonal(t, k).copy() for k in (0, -1, 1)]
    op = lx.TridiagonalLinearOperator(*map(jnp.asarray, bands))
    return _flat_built(op, t), t


def make_identity(rng, n, dtype) -> tuple[Built, np.ndarray]:
    del rng
    op = lx.IdentityLinearOperator(_flat_struct(n, dtype))
    return _flat_built(op, np.eye(n, dtype=dtype)), np.eye(n, dtype=dtype)


def make_rectangular_identity(rng, n, dtype) -> tuple[Built, np.ndarray]:
    """`eye(n + 1, n)`: a zero-padding identity from `(n,)` to `(n + 1,)`."""
    del rng
    op = lx.IdentityLinearOperator(_flat_struct(n, dtype), _flat_struct(n + 1, dtype))
    return built_from_structures(op, _flat_struct(n, dtype), _flat_struct(n + 1, dtype)), np.eye(
        n + 1, n, dtype=dtype
    )


def make_truncating_identity(rng, n, dtype) -> tuple[Built, np.ndarray]:
    """`eye(n, n + 1)`: drops the last entry of an `(n + 1,)` vector."""
    del rng
    op = lx.IdentityLinearOperator(_flat_struct(n + 1, dtype), _flat_struct(n, dtype))
    return built_from_structures(op, _flat_struct(n + 1, dtype), _flat_struct(n, dtype)), np.eye(
        n, n + 1, dtype=dtype
    )


def make_pytree_identity(rng, n, dtype) -> tuple[Built, np.ndarray]:
    del rng
    in_s, _ = pytree_structures(n, n, dtype)
    op = lx.IdentityLinearOperator(in_s)
    return built_from_structures(op, in_s, in_s), np.eye(n, dtype=dtype)


def make_diagonal_times_matrix(rng, n, dtype) -> tuple[Built, np.ndarray]:
    """`D @ A`, a composite of a structured and a dense operator."""
    (dbuilt, d) = make_diagonal(rng, n, dtype)
    a = make_matrix(rng, (n, n), dtype)
    return _flat_built(dbuilt.operator @ lx.MatrixLinearOperator(a), a), d @ a


def make_tridiagonal_plus_diagonal(rng, n, dtype) -> tuple[Built, np.ndarray]:
    (tbuilt, t) = make_tridiagonal(rng, n, dtype)
    (dbuilt, d) = make_diagonal(rng, n, dtype)
    return _flat_built(tbuilt.operator + dbuilt.operator, t), t + d


STRUCTURED_BUILDERS: list[tuple[str, Callable[..., tuple[Built, np.ndarray]]]] = [
    ("diagonal", make_diagonal),
    ("pytree_diagonal", make_pytree_diagonal),
    ("tridiagonal", make_tridiagonal),
    ("identity", make_identity),
    ("identity_padding", make_rectangular_identity),
    ("identity_truncating", make_truncating_identity),
    ("identity_pytree", make_pytree_identity),
    ("diagonal_at_matrix", make_diagonal_times_matrix),
    ("tridiagonal_plus_diagonal", make_tridiagonal_plus_diagonal),
]
STRUCTURED_NAMES = [name for name, _ in STRUCTURED_BUILDERS]


class InverseSolver(lx.AbstractLinearSolver):
    """Solves with an explicit inverse: no derivative code."""

    def init(self, operator, options):
        return jnp.linalg.inv(operator.as_matrix())

    def compute(self, state, vector, options):
        return state @ vector, lx.RESULTS.successful, {}

    def transpose(self, state, options):
        return state.T, options

    def conj(self, state, options):
        return jnp.conj(state), options

    def allow_dependent_rows(self, operator):
        return False

    def allow_dependent_columns(self, operator):
        return False
