"""`SparseCOOLinearOperator`: a sparse matrix in coordinate (COO) form.

Two kinds of pattern (`rows`, `cols`):

- **Concrete** (NumPy arrays, or JAX arrays outside any transformation): the fast path. The pattern
  is static structure, held as NumPy arrays with a hash and an equality on their bytes, and only
  `values` is an array leaf. A sparse direct solver then decides things about the pattern at trace
  time (is it structurally symmetric? which fill-reducing ordering? has its symbolic analysis been
  done already?) and uses it as a cache key.
- **Traced** (index arrays or a `jax.experimental.sparse.BCOO` passed into `jax.jit`, as JAX users
  hold sparse matrices): the indices are integer array leaves next to the values. `mv` and the
  other operator functions work on them in the graph; a sparse direct solve sends them to the host
  with the values, where the pattern is rebuilt and analysed, cached by a digest of the indices.
  Integer leaves carry no derivatives, so gradients still live on the values only.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact

from .. import _tree
from .._native import available as native_available
from .._native.spmv import spmv as native_spmv
from .._native.spmv import supports as native_supports
from .._sharding import gathered, placed_like, sharded_explicitly
from .base import AbstractLinearOperator, check_tags
from .functions import (
    conj,
    diagonal,
    linearise,
    materialise,
    register_tagged,
    tridiagonal,
)
from .tags import transpose_tags

_HASH_BLOCK = 2**20


def _hash_int64(h, index: np.ndarray) -> None:
    """Feed `index`'s values as int64 bytes to the hash `h`, a block at a time (the same digest as
    hashing the whole int64 copy, without making it)."""
    for start in range(0, index.shape[0], _HASH_BLOCK):
        h.update(np.ascontiguousarray(index[start : start + _HASH_BLOCK], np.int64))


def position_keys(major: np.ndarray, minor: np.ndarray, n_minor: int) -> np.ndarray:
    """`major * n_minor + minor` as a new int64 array (one allocation: the product and the sum are
    formed in place), the position of each entry in a `major`-major order."""
    keys = major.astype(np.int64)
    keys *= n_minor
    keys += minor
    return keys


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of the 1-D integer array `keys`, sorted; `keys` is sorted in place
    and, when it has no duplicates, returned itself.

    Not `np.unique`: since NumPy 2.3 it collects the values in a hash set, which for millions of
    int64 keys holds about 50 bytes per key (a 2.4 million-entry pattern's index analysis peaked
    134 MiB above its 19 MiB input) and is over ten times slower than sorting."""
    keys.sort()
    if keys.shape[0] < 2:
        return keys
    new = np.empty(keys.shape, bool)
    new[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    return keys if new.all() else keys[new]


class SparsityPattern:
    """The static part of a COO matrix: `rows`, `cols` (read-only NumPy integer arrays) and `shape`.

    Hashable and comparable by content (a BLAKE2b digest of the index bytes), so two operators built
    from the same pattern share compiled code and host-side caches. Host-side helpers computed from
    the pattern (CSC/CSR layouts, the structural-symmetry check) are memoised on the instance; they
    only ever save time, never change a result.
    """

    __slots__ = ("_lock", "_memo", "cols", "key", "rows", "shape")

    def __init__(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
        # int32 indices halve the size of the gather/scatter constants; int64 only when needed.
        itype = np.int32 if max(shape) < 2**31 - 1 else np.int64
        rows = np.ascontiguousarray(rows, dtype=itype)
        cols = np.ascontiguousarray(cols, dtype=itype)
        rows.flags.writeable = False
        cols.flags.writeable = False
        self.rows = rows
        self.cols = cols
        self.shape = (int(shape[0]), int(shape[1]))
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(self.shape, np.int64).tobytes())
        _hash_int64(h, rows)
        h.update(b"|")
        _hash_int64(h, cols)
        self.key = h.hexdigest()
        self._memo: dict = {}
        self._lock = threading.Lock()

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0])

    def transpose(self) -> SparsityPattern:
        out = self._memo.get("transpose")
        if out is None:
            out = SparsityPattern(self.cols, self.rows, (self.shape[1], self.shape[0]))
            out._memo["transpose"] = self
            self._memo["transpose"] = out
        return out

    def memo(self, name: Any, compute) -> Any:
        """Compute `compute()` once per pattern instance and keep it (thread-safe)."""
        try:
            return self._memo[name]
        except KeyError:
            pass
        with self._lock:
            if name not in self._memo:
                self._memo[name] = compute()
            return self._memo[name]

    @property
    def rows_sorted(self) -> bool:
        return self.memo("rows_sorted", lambda: bool(np.all(np.diff(self.rows) >= 0)))

    @property
    def cols_sorted(self) -> bool:
        return self.memo("cols_sorted", lambda: bool(np.all(np.diff(self.cols) >= 0)))

    def is_structurally_symmetric(self) -> bool:
        """Whether `(i, j)` in the pattern implies `(j, i)` in it (explicit zeros count)."""

        def compute():
            m, n = self.shape
            if m != n:
                return False
            a = sorted_unique(position_keys(self.rows, self.cols, n))
            b = sorted_unique(position_keys(self.cols, self.rows, n))
            return a.shape == b.shape and bool(np.array_equal(a, b))

        return self.memo("structurally_symmetric", compute)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, SparsityPattern)
            and self.key == other.key
            and self.shape == other.shape
            and np.array_equal(self.rows, other.rows)
            and np.array_equal(self.cols, other.cols)
        )

    def __repr__(self) -> str:
        return f"SparsityPattern(shape={self.shape}, nnz={self.nnz}, key={self.key[:8]})"


# ---------------------------------------------------------------------------------------------
# The diagonal (DIA) fast path of `mv`
#
# Matrices from stencils (finite differences, finite volumes on structured grids: 5 diagonals for
# the 2-D Laplacian, 7 in 3-D) have their entries on a few diagonals `cols - rows = o`. Stored by
# diagonal, as one length-`m` vector per offset `o` (zero where a row has no entry), the product is
# `y = Σ_o data_o * x[i + o]`: elementwise products of shifted vectors, one fused loop with no
# gather of `x` and no scatter into `y`. On a CPU XLA's gathers and scatters cost about as much per
# element as SciPy's whole CSR product, so the general path (a gather and a segment sum) takes
# about twice SciPy's time, where the shifted products alone take under half of it (issue 17).
#
# The diagonal layout is derived at trace time from a concrete pattern; `values` stay in the
# user's order and are moved into it inside the traced function. For a row-sorted pattern that move
# is one gather of a window of `k` consecutive values per row (`k` = the number of diagonals: a row
# has at most one entry per diagonal) plus a few static selects (which slot of the window holds
# which diagonal), cheaper than a gather per entry; otherwise it is a gather per slot. A product
# on its own pays for that move at every call; inside an iterative solver the move does not depend
# on the loop's vector, and XLA hoists it out of the loop, so each iteration does only the shifted
# products. Patterns with many diagonals, or whose diagonals are mostly empty, or with duplicate
# entries, keep the general path. Traced patterns always keep it.

# At most this many diagonals: the product unrolls one term per diagonal.
_DIA_MAX_DIAGONALS = 32
# At most this much padding: stored slots (diagonals x rows) over entries.
_DIA_MAX_FILL = 2.0
# At most this many selects per diagonal, on average, for the window form (else the gather form).
_DIA_MAX_SELECTS = 4


class DiagonalLayout:
    """Where each entry of a concrete pattern goes in the diagonal storage (see above).

    `offsets[d]` is the offset `cols - rows` of diagonal `d`; the storage is `(len(offsets), m)`,
    slot `(d, i)` holding the entry at `(i, i + offsets[d])` or zero. One of two ways to fill it
    from `values`:

    - window form (`base` set): row `i` owns the values `values[base[i] : base[i] + k]` (its own
      entries, and some of its neighbours'); `source[d, i]` is the position in that window of the
      entry of slot `(d, i)`, or -1. `choices[d]` lists the positions that occur for `d`.
    - gather form (`gather` set): `gather[d, i]` is the index of the entry in `values`, or `nnz`
      (a zero appended to the values) where there is none.
    """

    __slots__ = ("base", "choices", "gather", "offsets", "shape", "source")

    def __init__(self, offsets, shape, base=None, source=None, choices=None, gather=None):
        self.offsets = offsets
        self.shape = shape
        self.base = base
        self.source = source
        self.choices = choices
        self.gather = gather

    @property
    def num_diagonals(self) -> int:
        return len(self.offsets)


def diagonal_layout(pattern: SparsityPattern) -> DiagonalLayout | None:
    """The diagonal layout of `pattern`, or None where the general path suits it better (memoised
    on the pattern: computed once per pattern, at trace time)."""
    # `rows_sorted` is memoised too: read it before `memo` takes the pattern's (non-reentrant) lock.
    rows_sorted = pattern.rows_sorted
    return pattern.memo("dia_layout", lambda: _diagonal_layout(pattern, rows_sorted))


def _diagonal_layout(pattern: SparsityPattern, rows_sorted: bool) -> DiagonalLayout | None:
    m, n = pattern.shape
    nnz = pattern.nnz
    if nnz == 0 or m == 0 or n == 0:
        return None
    rows, cols = pattern.rows, pattern.cols
    # A cheap look at a prefix first, so that an unstructured pattern is rejected before sorting
    # all its offsets.
    head = cols[:4096].astype(np.int64) - rows[:4096]
    if sorted_unique(head).shape[0] > _DIA_MAX_DIAGONALS:
        return None
    offset = cols.astype(np.int64) - rows
    offsets = sorted_unique(offset.copy())
    k = int(offsets.shape[0])
    if k > _DIA_MAX_DIAGONALS or k * m > _DIA_MAX_FILL * nnz + 64:
        return None
    diag = np.searchsorted(offsets, offset).astype(np.int64)
    slot = diag * m + rows
    if sorted_unique(slot.copy()).shape[0] != nnz:
        return None  # duplicate entries: the storage has one slot per position
    offsets = tuple(int(o) for o in offsets)
    limit = _DIA_MAX_SELECTS * k
    if rows_sorted:
        counts = np.bincount(rows, minlength=m)
        start = np.cumsum(counts) - counts
        # Start each row's window so that its first entry sits at the position of its diagonal:
        # rows that only lack leading or trailing diagonals (a stencil's boundary rows) then hold
        # diagonal d at position d, as full rows do, and fewer selects are needed. If the entries
        # of a row are not in column order this may overrun the window: then start at the row.
        first = np.zeros(m, np.int64)
        has = counts > 0
        first[has] = diag[start[has]]
        position = np.arange(nnz) - start[rows] + first[rows]
        if position.max() >= k:
            first[:] = 0
            position = np.arange(nnz) - start[rows]
        # Windows that would reach outside the values (before the first, past the last) are moved
        # inside, and the positions follow, so that the values need no padded copy. They stay
        # below `k`: a row's window starts before 0 only if the row has fewer entries than the
        # diagonals it skips, and a window moved back from the end still ends at the last value.
        base = np.clip(start - first, 0, nnz - k)  # nnz >= k: every diagonal holds an entry
        position = np.arange(nnz) - base[rows]
        source = np.full((k, m), -1, np.int8)
        source[diag, rows] = position
        choices = tuple(
            tuple(int(c) for c in np.flatnonzero(np.bincount(src[src >= 0], minlength=k)))
            for src in source
        )
        if position.min() >= 0 and position.max() < k and sum(map(len, choices)) <= limit:
            return DiagonalLayout(
                offsets, (m, n), base=base.astype(np.int32), source=source, choices=choices
            )
    gather = np.full((k, m), nnz, np.int32 if nnz < 2**31 - 1 else np.int64)
    gather[diag, rows] = np.arange(nnz)
    return DiagonalLayout(offsets, (m, n), gather=gather)


_WINDOW = jax.lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
)


def _diagonal_data(layout: DiagonalLayout, values: jax.Array) -> list[jax.Array]:
    """`values` moved into the diagonal storage: one length-`m` vector per diagonal."""
    k = layout.num_diagonals
    if layout.gather is not None:
        padded = jnp.concatenate([values, jnp.zeros((1,), values.dtype)])
        data = padded.at[layout.gather].get(mode="promise_in_bounds")
        return [data[d] for d in range(k)]
    # One gather of `k` consecutive values per row (shape (m, k)), then per diagonal a select of
    # the window position that holds it (static masks).
    window = jax.lax.gather(
        values,
        layout.base[:, None],
        _WINDOW,
        slice_sizes=(k,),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    out = []
    for d in range(k):
        src = layout.source[d]
        acc = jnp.zeros(layout.shape[0], values.dtype)
        for c in layout.choices[d]:
            acc = jnp.where(src == c, window[:, c], acc)
        out.append(acc)
    return out


def diagonal_mv(layout: DiagonalLayout, values: jax.Array, x: jax.Array) -> jax.Array:
    """`A x` for the `(m, n)` matrix of `layout` and `values`: `y[i] = Σ_d data_d[i] x[i + o_d]`."""
    m, n = layout.shape
    offs = layout.offsets
    # `x` padded with zeros so that every diagonal reads a full window `xp[lo + o : lo + o + m]`;
    # the storage holds zeros where a diagonal leaves the matrix, so the padding is never counted.
    # (Padding each product instead, `pad(data[r0:r1] * x[r0 + o : r1 + o])`, met an XLA CPU
    # miscompilation: a reduction fused with the sum of padded products, e.g. `|b - A x|`, came
    # out wrong, while the product itself was right.)
    lo, hi = max(0, -offs[0]), max(0, m + offs[-1] - n)
    xp = jnp.pad(x, (lo, hi))
    y = None
    for data, o in zip(_diagonal_data(layout, values), offs):
        term = data * xp[lo + o : lo + o + m]
        y = term if y is None else y + term
    return y


def diagonal_rmv(layout: DiagonalLayout, values: jax.Array, x: jax.Array) -> jax.Array:
    """`Aᵀ x` (plain transpose) for the `(m, n)` matrix of `layout`: entry `(i, i + o)` sends
    `data_o[i] x[i]` to `y[i + o]`, so `y[j] = Σ_d (data_d x)[j - o_d]`, shifted products."""
    m, n = layout.shape
    offs = layout.offsets
    lo, hi = max(0, offs[-1]), max(0, n - m - offs[0])
    y = None
    for data, o in zip(_diagonal_data(layout, values), offs):
        term = jnp.pad(data * x, (lo, hi))[lo - o : lo - o + n]
        y = term if y is None else y + term
    return y


# Set while linopx's iterative solvers trace their loop bodies (`in_solver_loop`): products there
# are repeated with the same values, so the diagonal layout is set up once before the loop (XLA
# hoists it) and each iteration is shifted products that XLA fuses with the solver's vector
# updates. Measured on 3-D Poisson 64³, CG took 0.35-0.38 s against 0.58-0.63 s with the native
# kernel in the loop. Outside such loops the native kernel is faster (no layout at every call).
_IN_SOLVER_LOOP = contextvars.ContextVar("linopx_in_solver_loop", default=False)


@contextlib.contextmanager
def in_solver_loop():
    """Mark the sparse products traced inside as repeated in a loop with fixed values."""
    token = _IN_SOLVER_LOOP.set(True)
    try:
        yield
    finally:
        _IN_SOLVER_LOOP.reset(token)


def _native_product_applies(x: jax.Array) -> bool:
    """Whether the sparse product of a concrete pattern runs in the native CPU kernel.

    On a process with one CPU device, for float32/64 and complex64/128, and when the kernel is
    available (`lx.native_info()`; built on first use). With several devices the product stays
    in XLA, whose partitioner can split it (a foreign kernel would be run whole on every device).
    """
    return (
        native_supports(x.dtype)
        and jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and native_available()
    )


def _diagonal_form(pattern: SparsityPattern) -> tuple[DiagonalLayout, bool] | None:
    """The diagonal layout that `mv` uses for `pattern`, laid out for whichever of the pattern and
    its transpose is sorted by row (a transposed operator reuses the layout of the operator it
    came from): `(layout, False)` for the pattern's own, `(layout, True)` for its transpose's (the
    product is then the transposed one), or None where the general path suits it better."""
    transposed = not pattern.rows_sorted and pattern.cols_sorted
    layout = diagonal_layout(pattern.transpose() if transposed else pattern)
    return None if layout is None else (layout, transposed)


class TracedIndices:
    """`rows` and `cols` as traced integer arrays (see the module docstring)."""

    __slots__ = ("cols", "rows")

    def __init__(self, rows: jax.Array, cols: jax.Array):
        self.rows = rows
        self.cols = cols


def _traced_indices(x: Any, name: str) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"SparseCOOLinearOperator: `{name}` must have an integer dtype, got {x.dtype}; "
            f"convert with `{name}.astype(jnp.int32)` if the values are whole numbers."
        )
    if x.ndim != 1:
        raise ValueError(f"SparseCOOLinearOperator: `{name}` must be 1-D, got shape {x.shape}.")
    return x


def _concrete_indices(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, (np.ndarray, jax.Array)):
        raise TypeError(
            f"SparseCOOLinearOperator: `{name}` must be a NumPy or JAX integer array, got "
            f"{type(x).__name__}; use e.g. `np.asarray({name})`."
        )
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"SparseCOOLinearOperator: `{name}` must be 1-D, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"SparseCOOLinearOperator: `{name}` must have an integer dtype, got {x.dtype}; "
            f"convert with `{name}.astype(np.int32)` if the values are whole numbers."
        )
    return x


def _check_lengths(n_values: int, n_rows: int, n_cols: int) -> None:
    if not (n_values == n_rows == n_cols):
        raise ValueError(
            "SparseCOOLinearOperator: `values`, `rows` and `cols` must have the same length, "
            f"got {n_values}, {n_rows} and {n_cols}."
        )


def check_index_range(rows: np.ndarray, cols: np.ndarray, shape, error: type = ValueError) -> None:
    """Raise `error`, naming the first offending index, if an index lies outside `shape`."""
    m, n = shape
    for name, idx, bound in (("rows", rows, m), ("cols", cols, n)):
        if idx.size and (idx.min() < 0 or idx.max() >= bound):
            bad = idx[(idx < 0) | (idx >= bound)][0]
            raise error(
                f"SparseCOOLinearOperator: `{name}` holds the index {int(bad)}, outside "
                f"[0, {bound}) for shape {(m, n)}. Fix the indices or the shape."
            )


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"SparseCOOLinearOperator: `shape` must be a pair (m, n), got {shape!r}.")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(
                f"SparseCOOLinearOperator: `shape` must hold two non-negative Python ints, got {shape!r}."
            )
        out.append(int(s))
    return out[0], out[1]


class SparseCOOLinearOperator(AbstractLinearOperator):
    """A sparse `(m, n)` matrix in coordinate form: entry `k` is `values[k]` at
    `(rows[k], cols[k])`. Entries that share a position add up.

    **Arguments:**

    - `values`: a 1-D float or complex array of length `nnz` (NumPy or JAX; may be traced, and is
      what derivatives are taken with respect to). Integer values are cast to JAX's default float
      dtype.
    - `rows`, `cols`: 1-D integer arrays of length `nnz`, the row and column of each value.
      Concrete (NumPy, or JAX outside transformations) is the fast path: the pattern is static and
      analysed at trace time, and out-of-range indices raise here. Traced indices (passed into
      `jax.jit`) are accepted too: the pattern then travels with the values and a sparse direct
      solve analyses it on the host (cached by a digest), where out-of-range indices raise; in
      `mv` JAX's scatter semantics apply to them (an out-of-range row is dropped), so check traced
      indices yourself if they may be wrong.
    - `shape`: the pair `(m, n)`.
    - `tags`: structural promises such as `lx.symmetric_tag` or `lx.positive_semidefinite_tag`
      (square operators only). They are not checked against the values; `lx.SparseLU` uses them to
      pick a symmetric or definite factorization where its backend has one.

    The operator acts on flat vectors of shape `(n,)`. `mv` and the transpose's `mv` cost O(nnz):
    a concrete pattern whose entries lie on a few diagonals (a stencil on a structured grid: 5
    diagonals for the 2-D Laplacian, 7 in 3-D) is stored by diagonal at trace time, and the product
    is a sum of shifted elementwise products (inside an iterative solver, about half the time of
    SciPy's CSR product per iteration); any other pattern, and every traced one, takes a gather and
    a segment sum. `transpose()` swaps `rows` and `cols` (O(1)); `as_matrix()` forms the dense
    matrix only when called. Solve with `lx.SparseLU()` (what `lx.AutoLinearSolver` picks for a
    square sparse operator) or with an iterative solver.

    Also: `SparseCOOLinearOperator.from_scipy(matrix)`, `.from_bcoo(bcoo)`, and `.to_scipy()`.

    ```python
    import numpy as np, scipy.sparse as sp
    A = lx.SparseCOOLinearOperator.from_scipy(sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (5, 5)))
    x = lx.linear_solve(A, jnp.ones(5)).value          # SparseLU, differentiable in A.values
    ```
    """

    values: Inexact[Array, " nnz"]
    # Traced patterns only: the `(rows, cols)` integer arrays (leaves). `None` when concrete.
    index: tuple | None
    # Concrete patterns only (static); `None` when traced.
    pattern: SparsityPattern | None = eqx.field(static=True)
    dims: tuple = eqx.field(static=True)
    tags: frozenset = eqx.field(static=True)

    def __init__(self, values: Any, rows: Any, cols: Any = None, shape: Any = None, tags: Any = ()):
        # `rows` may also be a `SparsityPattern` (then `cols` and `shape` are omitted): how
        # `transpose` and `conj` rebuild an operator without re-checking and re-hashing the indices;
        # or `TracedIndices` (then `shape` is given): the same for traced patterns.
        pattern = rows if isinstance(rows, SparsityPattern) else None
        traced = rows if isinstance(rows, TracedIndices) else None
        if pattern is None and traced is None and (
            isinstance(rows, jax.core.Tracer) or isinstance(cols, jax.core.Tracer)
        ):
            if not isinstance(rows, (np.ndarray, jax.Array)) or not isinstance(
                cols, (np.ndarray, jax.Array)
            ):
                raise TypeError("SparseCOOLinearOperator: `rows` and `cols` must be integer arrays.")
            traced = TracedIndices(
                _traced_indices(jnp.asarray(rows), "rows"), _traced_indices(jnp.asarray(cols), "cols")
            )
        if pattern is None and (cols is None or shape is None) and traced is None:
            raise TypeError("SparseCOOLinearOperator needs `values`, `rows`, `cols` and `shape`.")
        if not isinstance(values, (np.ndarray, jax.Array)):
            if hasattr(values, "tocoo"):
                raise TypeError(
                    "SparseCOOLinearOperator: got a SciPy sparse matrix as `values`; use "
                    "`lx.SparseCOOLinearOperator.from_scipy(matrix)`."
                )
            raise TypeError(
                f"SparseCOOLinearOperator: `values` must be a NumPy or JAX array, got "
                f"{type(values).__name__}; use e.g. `jnp.asarray(values)`."
            )
        values = _tree.as_inexact_array(values, "values")
        if values.ndim != 1:
            raise ValueError(
                f"SparseCOOLinearOperator: `values` must be 1-D (one value per entry), got shape "
                f"{values.shape}. To solve with many matrices sharing a pattern, `jax.vmap` over the values."
            )
        if traced is not None:
            m, n = _check_shape(shape)
            _check_lengths(values.shape[0], traced.rows.shape[0], traced.cols.shape[0])
        elif pattern is None:
            m, n = _check_shape(shape)
            r = _concrete_indices(rows, "rows")
            c = _concrete_indices(cols, "cols")
            _check_lengths(values.shape[0], r.shape[0], c.shape[0])
            check_index_range(r, c, (m, n))
            pattern = SparsityPattern(r, c, (m, n))
        elif values.shape[0] != pattern.nnz:
            raise ValueError("SparseCOOLinearOperator: values do not match the pattern's length.")
        self.values = values
        self.index = None if traced is None else (traced.rows, traced.cols)
        self.pattern = pattern
        m, n = (m, n) if pattern is None else pattern.shape
        self.dims = (m, n)
        self.tags = check_tags(
            tags,
            jax.ShapeDtypeStruct((n,), values.dtype),
            jax.ShapeDtypeStruct((m,), values.dtype),
            "SparseCOOLinearOperator",
        )

    # ---- constructors and conversions ------------------------------------------------------

    @classmethod
    def from_scipy(cls, matrix: Any, tags: Any = ()) -> SparseCOOLinearOperator:
        """Build from any SciPy sparse matrix or array (`coo`, `csr`, `csc`, ...). Stored entries,
        explicit zeros included, become the pattern; duplicates are kept (they add up).

        ```python
        A = lx.SparseCOOLinearOperator.from_scipy(scipy.sparse.random(50, 50, density=0.1) + 5 * scipy.sparse.eye(50))
        ```
        """
        if not hasattr(matrix, "tocoo"):
            raise TypeError(
                f"from_scipy needs a SciPy sparse matrix or array, got {type(matrix).__name__}; "
                "for a dense array use `scipy.sparse.coo_array(a)` first, or `lx.MatrixLinearOperator`."
            )
        coo = matrix.tocoo()
        return cls(np.asarray(coo.data), coo.row, coo.col, tuple(coo.shape), tags)

    @classmethod
    def from_bcoo(cls, bcoo: Any, tags: Any = ()) -> SparseCOOLinearOperator:
        """Build from a 2-D `jax.experimental.sparse.BCOO` without batch or dense dimensions.
        BCOO's padding entries (indices equal to the shape) are dropped (with traced indices: turned
        into explicit zeros); other concrete indices outside the shape, or negative, raise a
        `ValueError`. `bcoo.data` and `bcoo.indices` may both be traced, e.g. a BCOO passed
        into `jax.jit`."""
        n_batch = getattr(bcoo, "n_batch", None)
        n_dense = getattr(bcoo, "n_dense", None)
        if n_batch is None or not hasattr(bcoo, "indices"):
            raise TypeError(
                f"from_bcoo needs a `jax.experimental.sparse.BCOO`, got {type(bcoo).__name__}."
            )
        if len(bcoo.shape) != 2 or n_batch != 0 or n_dense != 0:
            raise ValueError(
                "from_bcoo needs a 2-D BCOO with n_batch=0 and n_dense=0, got shape "
                f"{bcoo.shape}, n_batch={n_batch}, n_dense={n_dense}."
            )
        m, n = int(bcoo.shape[0]), int(bcoo.shape[1])
        if isinstance(bcoo.indices, jax.core.Tracer):
            # A traced pattern. BCOO pads with entries whose indices equal the shape; with traced
            # indices they cannot be dropped, so they become explicit zeros at (0, 0), which
            # changes neither products nor factorizations (and takes a zero gradient).
            rows, cols = bcoo.indices[:, 0], bcoo.indices[:, 1]
            pad = (rows >= m) | (cols >= n)
            data = jnp.where(pad, jnp.zeros((), bcoo.data.dtype), bcoo.data)
            rows = jnp.where(pad, 0, rows)
            cols = jnp.where(pad, 0, cols)
            return cls(data, TracedIndices(rows, cols), shape=(m, n), tags=tags)
        indices = np.asarray(bcoo.indices)
        idx, idx_c = indices[:, 0], indices[:, 1]
        # Only padding is dropped (an index equal to its dimension, as BCOO pads); an index beyond
        # it, or a negative one, is a mistake that the constructor reports (a clear ValueError)
        # rather than an entry to lose silently.
        keep = (idx != m) & (idx_c != n)
        data = bcoo.data
        if not keep.all():
            data = data[np.flatnonzero(keep)]
        return cls(data, idx[keep], idx_c[keep], (m, n), tags)

    def to_scipy(self) -> Any:
        """Return a `scipy.sparse.coo_array` with the same entries (duplicates kept; `.tocsr()` sums
        them). Needs concrete values (not inside `jax.jit`)."""
        import scipy.sparse as sp

        if isinstance(self.values, jax.core.Tracer) or self.pattern is None:
            raise TypeError("to_scipy needs concrete values; call it outside `jax.jit`/`jax.vmap`.")
        return sp.coo_array(
            (np.asarray(self.values), (self.pattern.rows, self.pattern.cols)),
            shape=self.pattern.shape,
        )

    # ---- properties --------------------------------------------------------------------------

    @property
    def rows(self) -> Any:
        """The row indices: a read-only NumPy array, or a JAX array for a traced pattern."""
        return self.pattern.rows if self.pattern is not None else self.index[0]

    @property
    def cols(self) -> Any:
        return self.pattern.cols if self.pattern is not None else self.index[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.dims

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def is_traced(self) -> bool:
        """Whether the pattern is traced (integer array leaves) rather than static."""
        return self.pattern is None

    def _sorted_rows(self) -> bool:
        return self.pattern.rows_sorted if self.pattern is not None else False

    # ---- the operator interface --------------------------------------------------------------

    def _check_vector(self, vector: Any) -> jax.Array:
        n = self.dims[1]
        if not isinstance(vector, (np.ndarray, jax.Array)) or jnp.ndim(vector) != 1:
            shape = getattr(vector, "shape", type(vector).__name__)
            raise ValueError(
                f"SparseCOOLinearOperator.mv takes a flat vector of shape ({n},), got {shape}. For "
                "several vectors use `jax.vmap(A.mv)(xs)`."
            )
        if vector.shape[0] != n:
            raise ValueError(
                f"SparseCOOLinearOperator.mv: expected a vector of shape ({n},), got {vector.shape}."
            )
        return jnp.asarray(vector)

    def mv(self, vector):
        x = self._check_vector(vector)
        if sharded_explicitly(x):
            # On `Explicit` mesh axes JAX has no sharding rule for the gathers and shifted slices
            # of a sparse product: the vector is gathered, the product computed whole on every
            # device, and the result placed as the vector was (square) or left replicated.
            y = self._mv(gathered(self.values), gathered(x))
            return placed_like(y, x) if y.shape == x.shape else y
        return self._mv(self.values, x)

    def _mv(self, values, x):
        dtype = _tree.common_dtype(values.dtype, x.dtype)
        values, x = values.astype(dtype), x.astype(dtype)
        p = self.pattern
        if p is not None and _native_product_applies(x) and not self._diagonal_in_loop():
            # The compiled kernel (CSR order; see `linopx/_native/spmv.py`).
            return native_spmv(p, values, x)
        return self._xla_mv(values, x)

    def _diagonal_in_loop(self) -> bool:
        """Inside a solver's loop, a pattern with a diagonal layout keeps the XLA diagonal form."""
        return _IN_SOLVER_LOOP.get() and _diagonal_form(self.pattern) is not None

    def _xla_mv(self, values, x):
        """The product in XLA operations (any platform, sharding, traced patterns)."""
        form = _diagonal_form(self.pattern) if self.pattern is not None else None
        if form is not None:
            # A concrete pattern with its entries on a few diagonals: the diagonal fast path (see
            # `DiagonalLayout`).
            layout, transposed = form
            return (diagonal_rmv if transposed else diagonal_mv)(layout, values, x)
        # The general path. y[i] = sum_k values[k] x[cols[k]] over the k with rows[k] = i: a gather
        # and a segment sum, O(nnz) work and memory. Its transpose (reverse mode) is again a gather
        # and a segment sum.
        prod = values * x[self.cols]
        return jax.ops.segment_sum(
            prod, self.rows, num_segments=self.dims[0], indices_are_sorted=self._sorted_rows()
        )

    def as_matrix(self):
        m, n = self.dims
        return jnp.zeros((m, n), self.values.dtype).at[self.rows, self.cols].add(self.values)

    def transpose(self):
        if self.pattern is None:
            return SparseCOOLinearOperator(
                self.values,
                TracedIndices(self.index[1], self.index[0]),
                shape=(self.dims[1], self.dims[0]),
                tags=transpose_tags(self.tags),
            )
        return SparseCOOLinearOperator(
            self.values, self.pattern.transpose(), tags=transpose_tags(self.tags)
        )

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.dims[1],), self.values.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.dims[0],), self.values.dtype)


# ---------------------------------------------------------------------------------------------
# Operator functions


register_tagged(SparseCOOLinearOperator)
materialise.register(SparseCOOLinearOperator)(lambda op: op)
linearise.register(SparseCOOLinearOperator)(lambda op: op)


def _band(op, offset: int, length: int):
    """For a traced pattern: the entries with `cols - rows == offset` scatter-added by their row
    (by their column for offset < 0) into a vector of `length`; others are dropped."""
    rows, cols = op.index
    on = (cols - rows) == offset
    where = rows if offset >= 0 else cols
    where = jnp.where(on, where, length)  # out of range: dropped
    return jnp.zeros(length, op.values.dtype).at[where].add(op.values, mode="drop")


@diagonal.register(SparseCOOLinearOperator)
def _(op):
    # Scatter-add the entries on the diagonal into a length-min(m, n) vector: O(nnz), no n x n.
    if op.pattern is None:
        return _band(op, 0, min(op.dims))
    p = op.pattern
    k = min(p.shape)
    on_diag = p.memo("diag_idx", lambda: np.flatnonzero(p.rows == p.cols))
    return jnp.zeros(k, op.values.dtype).at[p.rows[on_diag]].add(op.values[on_diag])


@tridiagonal.register(SparseCOOLinearOperator)
def _(op):
    if op.dims[0] != op.dims[1]:
        raise ValueError("`lx.tridiagonal` needs a square operator.")
    if op.pattern is None:
        n = op.dims[0]
        k = max(n - 1, 0)
        return _band(op, 0, n), _band(op, -1, k), _band(op, 1, k)
    p = op.pattern
    n = p.shape[0]
    d = diagonal(op)
    lo_idx = p.memo("lower_band_idx", lambda: np.flatnonzero(p.rows == p.cols + 1))
    up_idx = p.memo("upper_band_idx", lambda: np.flatnonzero(p.cols == p.rows + 1))
    zeros = jnp.zeros(max(n - 1, 0), op.values.dtype)
    lower = zeros.at[p.cols[lo_idx]].add(op.values[lo_idx])
    upper = zeros.at[p.rows[up_idx]].add(op.values[up_idx])
    return d, lower, upper


@conj.register(SparseCOOLinearOperator)
def _(op):
    if not jnp.issubdtype(op.values.dtype, jnp.complexfloating):
        return op
    if op.pattern is None:
        return SparseCOOLinearOperator(
            jnp.conj(op.values), TracedIndices(*op.index), shape=op.dims, tags=op.tags
        )
    return SparseCOOLinearOperator(jnp.conj(op.values), op.pattern, tags=op.tags)


__all__ = ["SparseCOOLinearOperator", "SparsityPattern", "TracedIndices", "check_index_range"]
