"""Selected inversion: entries of `B⁻¹` read off a sparse LU factorization `B = L U`, without
forming anything `n x n` (what `SparseLU.logdet_tangent` needs: `A⁻ᵀ` on the pattern of `A`).

**Equations** (Takahashi, Fagan and Chen 1973; Erisman and Tinney 1975). With `L` unit lower
triangular, `U` upper triangular and `Z = B⁻¹ = U⁻¹ L⁻¹`, a 2 x 2 block split of the indices into a
leading block `J` and the trailing rest `R` gives

    Z_RJ = -Z_RR L_RJ L_JJ⁻¹
    Z_JR = -U_JJ⁻¹ U_JR Z_RR
    Z_JJ =  U_JJ⁻¹ L_JJ⁻¹ - U_JJ⁻¹ U_JR Z_RJ

so the entries of `Z` are computed from the last block of columns to the first, each block from
the `Z_RR` of the blocks after it. When `R` is only the rows (columns) where `L_{.,J}` (`U_{J,.}`)
is nonzero, the sums involve nothing else. For those `Z_RR` to have been computed, the pattern on
which `Z` is computed must be closed under the recurrences; we take the symmetric pattern of
`L + U` (plus the requested positions), completed with the fill of a symbolic Cholesky
factorization in the identity order (its column structures then satisfy `struct(j) \\ {p} ⊂
struct(p)` for the first entry `p` below the diagonal: the rows `R` of each block form a dense
clique whose `Z_RR` lives in one later block). Factor entries missing from that pattern are zeros.
The completion is checked (and, after a little fill, finished) with vectorized sparse-matrix passes;
SciPy drops factor entries that came out exactly zero, and pivoting makes `L` and `Uᵀ` differ, and
then a column sweep in the elimination tree finishes it.

**Blocks.** The columns are relabelled in a postorder of the elimination tree (an equivalent
ordering: `Q L Qᵀ` and `Q U Qᵀ` stay triangular, `Q Z Qᵀ` is the inverse of `Q B Qᵀ`, the completed
pattern stays closed), so that chains of columns sharing their structure are contiguous. Those
chains (fundamental supernodes), merged with their parent where that adds few explicit zeros (so
that tiny blocks do not dominate the Python-level loop), are the blocks `J`; for each, a dense "front"
`Z[J ∪ R, J ∪ R]` is assembled from its parent's front by a relative-index gather and three dense
products (BLAS), and the requested entries are read off it. A front is dropped once all its
children have used it. The cost is of the order of the factorization's flop count (dense products
of the same shapes as the factorization's updates), the memory that of the largest fronts along
a path of the elimination tree; nothing is `n x n` unless the factors themselves are dense.

The analysis (pattern completion, elimination tree, blocks, relative indices, where each factor
entry goes) depends only on the structure of the factors and the requested positions, and is
memoised on a digest of them, so repeated calls on factorizations of one pattern with the same
pivoting redo only the numerical part.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from ..._lru import LRUCache

# Blocks (supernodes) of at most this many columns are merged with their parent block when they are
# contiguous with it and the explicit zeros this adds stay below `_RELAX_FRACTION` of the merged
# block's entries: fewer, larger dense products instead of many tiny ones.
_RELAX_COLUMNS = 32
_RELAX_FRACTION = 0.5
_MAX_CLOSURE_ROUNDS = 2


class Analysis:
    """The structure-only part of a selected inversion (see the module docstring)."""

    __slots__ = (
        "children",
        "heights",
        "l_flat",
        "n",
        "out_flat",
        "out_index",
        "out_offsets",
        "panel_offsets",
        "parent",
        "rel",
        "rel_offsets",
        "starts",
        "total",
        "u_flat",
        "widths",
    )


def _pattern(n: int, indptr: np.ndarray, indices: np.ndarray) -> sp.csc_matrix:
    return sp.csc_matrix(
        (np.ones(indices.shape[0], np.int32), indices, indptr), shape=(n, n), copy=False
    )


def _close(lower: sp.csc_matrix) -> sp.csc_matrix:
    """The lower-triangular pattern (diagonal included, canonical CSC) completed with the fill of a
    symbolic Cholesky factorization in the identity order: until `struct(j) \\ {p_j} ⊂ struct(p_j)`
    for every column `j`, with `p_j` its first row below the diagonal, add the missing entries.
    Each round is a few sparse-matrix passes; a pattern that came out of a factorization is
    usually closed at the first check (it is, exactly, for a structurally symmetric matrix whose
    factorization did not pivot and produced no exact zeros)."""
    n = lower.shape[0]
    for _ in range(_MAX_CLOSURE_ROUNDS):
        indptr, rows = lower.indptr, lower.indices
        counts = np.diff(indptr)
        col = np.repeat(np.arange(n), counts)
        at = np.arange(rows.shape[0]) - indptr[col]
        parent = np.full(n, -1, np.int64)
        has = counts >= 2
        parent[has] = rows[indptr[:-1][has] + 1]
        need = at >= 2
        if not need.any():
            return lower
        need_rows = rows[need]
        need_cols = parent[col[need]]
        needed = sp.csc_matrix(
            (np.ones(need_rows.shape[0], np.int32), (need_rows, need_cols)), shape=(n, n)
        )
        needed.sum_duplicates()
        if needed.multiply(lower).nnz == needed.nnz:
            return lower
        lower = lower + needed
        lower.sum_duplicates()
        lower.sort_indices()
    # Fill propagates one level of the elimination tree per round: after pivoting, or with an
    # unsymmetric pattern, the column sweep is faster than many rounds.
    return _close_by_columns(lower)


def _close_by_columns(lower: sp.csc_matrix) -> sp.csc_matrix:
    """`_close` by the textbook column sweep: `struct(j)` is column `j`'s own entries below the
    diagonal together with the structures of its children in the elimination tree (minus `j`).
    One sorted merge per column (`O(nnz log nnz)` in all, in C), plus `O(n)` Python steps."""
    n = lower.shape[0]
    indptr, rows = lower.indptr, lower.indices.astype(np.int64)
    structs: list = [None] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for j in range(n):
        own = rows[indptr[j] : indptr[j + 1]]
        own = own[own > j]
        kids = children[j]
        if kids:
            # A child's structure starts with its parent, j.
            own = np.unique(np.concatenate([own] + [structs[c][1:] for c in kids]))
        structs[j] = own
        if own.size:
            children[int(own[0])].append(j)
    sizes = np.fromiter((s.size for s in structs), np.int64, n)
    below = np.concatenate(structs) if n else np.zeros(0, np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]] if n else np.zeros(0, np.int64)
    r = np.insert(below, starts, np.arange(n))  # the diagonal entry first in each column
    indptr_out = np.r_[0, np.cumsum(sizes + 1)]
    out = sp.csc_matrix((np.ones(r.shape[0], np.int32), r, indptr_out), shape=(n, n))
    out.has_sorted_indices = True  # each column: j, then its sorted structure
    return out


def _tree(lower: sp.csc_matrix):
    """`(indptr, rows, parent, below)` of a closed lower pattern: the elimination tree's parent of
    each column (its first row below the diagonal, -1 for a root) and its count below the diagonal."""
    n = lower.shape[0]
    indptr, rows = lower.indptr.astype(np.int64), lower.indices.astype(np.int64)
    below = np.diff(indptr) - 1
    parent = np.full(n, -1, np.int64)
    has = below >= 1
    parent[has] = rows[indptr[:-1][has] + 1]
    return indptr, rows, parent, below


def _postorder(indptr, rows, parent, below) -> np.ndarray:
    """A postorder of the elimination tree, computed on its chains of nested columns (fundamental
    blocks, which stay contiguous), as the new label of each old column."""
    n = parent.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    j = np.arange(n - 1)
    joined = (parent[:-1] == j + 1) & (below[:-1] == below[1:] + 1)
    starts = np.flatnonzero(np.r_[True, ~joined])
    widths = np.diff(np.r_[starts, n])
    block = np.repeat(np.arange(starts.shape[0]), widths)
    last_parent = parent[starts + widths - 1]
    bpar = np.where(last_parent >= 0, block[np.maximum(last_parent, 0)], -1)
    nb = starts.shape[0]
    # Subtree sizes (in columns) bottom-up, then each subtree's range of new labels top-down: a
    # block takes the end of its range, its children's subtrees the rest, one after another.
    # Parents have larger labels than their children, so plain ascending / descending sweeps do.
    size = widths.tolist()
    par = bpar.tolist()
    for b in range(nb):
        p = par[b]
        if p >= 0:
            size[p] += size[b]
    first = [0] * nb
    cursor = [0] * nb
    roots = 0
    for b in range(nb - 1, -1, -1):
        p = par[b]
        if p < 0:
            first[b] = roots
            roots += size[b]
        else:
            first[b] = cursor[p]
            cursor[p] += size[b]
        cursor[b] = first[b]
    own_first = np.asarray(first, np.int64) + np.asarray(size, np.int64) - widths
    new_of_old = np.repeat(own_first - starts, widths) + np.arange(n)
    return new_of_old


def _relabel(lower: sp.csc_matrix, new_of: np.ndarray) -> sp.csc_matrix:
    """The pattern with column and row `i` renamed `new_of[i]` (a topological order of the tree,
    so it stays lower triangular)."""
    n = lower.shape[0]
    coo = lower.tocoo()
    out = sp.csc_matrix((coo.data, (new_of[coo.row], new_of[coo.col])), shape=(n, n))
    out.sort_indices()
    return out


def _blocks(parent: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Block (supernode) boundaries. Column `j` joins `j + 1` when `j + 1` is its parent and their
    structures nest (`|struct(j)| = |struct(j + 1)| + 1`, which with the closure means
    `struct(j) = {j + 1} ∪ struct(j + 1)`). Then, from the last block backwards, a block is merged
    into the block right after it when that block holds its parent (so the merged block's rows
    below it are still those of the later block) and the merge adds few explicit zeros: at most
    `_RELAX_COLUMNS` columns, zeros at most `_RELAX_FRACTION` of the merged panel."""
    n = parent.shape[0]
    if n == 0:
        return np.zeros(1, np.int64)
    j = np.arange(n - 1)
    joined = (parent[:-1] == j + 1) & (below[:-1] == below[1:] + 1)
    starts = np.flatnonzero(np.r_[True, ~joined]).tolist()
    ends = starts[1:] + [n]
    par = parent[np.asarray(ends) - 1].tolist()
    hgt = below[np.asarray(ends) - 1].tolist()
    kept = [len(starts) - 1]
    # The block being grown (the first kept one after block k): its end, width, height, zeros.
    cur_end, cur_w, cur_h, cur_z = ends[-1], ends[-1] - starts[-1], hgt[-1], 0
    for k in range(len(starts) - 2, -1, -1):
        w_k = ends[k] - starts[k]
        merged = w_k + cur_w
        if ends[k] <= par[k] < cur_end and merged <= _RELAX_COLUMNS:
            zeros = cur_z + w_k * (cur_w + cur_h - hgt[k])
            if zeros <= _RELAX_FRACTION * merged * (merged + cur_h):
                kept[-1] = k
                cur_w, cur_z = merged, zeros
                continue
        kept.append(k)
        cur_end, cur_w, cur_h, cur_z = ends[k], w_k, hgt[k], 0
    out = np.asarray([starts[k] for k in reversed(kept)] + [n], np.int64)
    return out


def analyse(
    n: int,
    l_pattern: tuple[np.ndarray, np.ndarray],
    u_pattern: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
    cols: np.ndarray,
) -> Analysis:
    """The structure-only part of `selected_inverse` for factors with the CSC patterns
    `l_pattern`, `u_pattern` (`(indptr, indices)` each) and the requested positions
    `(rows, cols)` of `Z = B⁻¹`."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    lo = _pattern(n, *l_pattern)
    up = _pattern(n, *u_pattern).T.tocsc()
    req = sp.csc_matrix(
        (np.ones(rows.shape[0], np.int32), (np.maximum(rows, cols), np.minimum(rows, cols))),
        shape=(n, n),
    )
    # L and Uᵀ are lower triangular (SciPy's L has its unit diagonal stored); the sum is canonical.
    lower = (lo + up + req + sp.eye(n, dtype=np.int32, format="csc")).tocsc()
    lower.sum_duplicates()
    lower.sort_indices()
    lower = _close(lower)

    # Relabel the columns in a postorder of the elimination tree (an equivalent ordering: the
    # factors stay triangular and the completed pattern closed), so that a block's last child
    # comes right before it and small blocks can be merged into their parents.
    new_of = _postorder(*_tree(lower))
    lower = _relabel(lower, new_of)
    indptr, prow, parent, below = _tree(lower)
    bounds = _blocks(parent, below)
    starts = bounds[:-1]
    ns = starts.shape[0]
    widths = np.diff(bounds)
    last = bounds[1:] - 1
    heights = below[last] if ns else np.zeros(0, np.int64)
    sizes = widths + heights
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    block_of = np.repeat(np.arange(ns), widths)

    # Row lists: block K's columns, then R_K (the structure of its last column below it).
    total = int(offsets[-1])
    owner = np.repeat(np.arange(ns), sizes)
    local = np.arange(total) - offsets[owner]
    own = local < widths[owner]
    rowlist = np.empty(total, np.int64)
    rowlist[own] = starts[owner[own]] + local[own]
    rest = ~own
    rowlist[rest] = prow[indptr[last[owner[rest]]] + 1 + (local[rest] - widths[owner[rest]])]
    # position(K, x): where row x sits in block K's row list. A point lookup in the (blocks x n)
    # sparse matrix of (position + 1)s: a binary search within one row list (SciPy's C++ sampler,
    # several times faster than one global search over all row lists).
    lookup = sp.csr_array((local + 1, rowlist, offsets), shape=(ns, n))

    def position(block, x):
        at = lookup[block, x] if block.size else np.zeros(0, np.int64)
        if np.any(at == 0):
            raise RuntimeError("selected inversion: a position outside the completed pattern")
        return at - 1

    # Relative indices: R_K inside its parent block's row list.
    first_r = np.where(
        heights > 0, rowlist[np.minimum(offsets[:-1] + widths, max(total - 1, 0))], 0
    )
    block_parent = np.where(heights > 0, block_of[first_r] if ns else first_r, -1)
    rel = position(block_parent[owner[rest]], rowlist[rest])
    rel_offsets = np.r_[0, np.cumsum(heights)].astype(np.int64)

    # Where each factor entry goes: L panels are (w + r) x w, U panels w x (w + r), row-major.
    # (All in the new labels.)
    l_indptr, l_indices = l_pattern
    l_col = new_of[np.repeat(np.arange(n), np.diff(l_indptr))]
    l_row = new_of[l_indices]
    kb = block_of[l_col]
    panel = widths * sizes
    panel_offsets = np.r_[0, np.cumsum(panel)].astype(np.int64)
    l_flat = panel_offsets[kb] + position(kb, l_row) * widths[kb] + (l_col - starts[kb])
    u_indptr, u_indices = u_pattern
    u_col = new_of[np.repeat(np.arange(n), np.diff(u_indptr))]
    u_row = new_of[u_indices]
    kb = block_of[u_row]
    u_flat = panel_offsets[kb] + (u_row - starts[kb]) * sizes[kb] + position(kb, u_col)

    # Requested entries, read off the front of the block holding min(row, col).
    rows, cols = new_of[rows], new_of[cols]
    kb = block_of[np.minimum(rows, cols)]
    flat = position(kb, rows) * sizes[kb] + position(kb, cols)
    order = np.argsort(kb, kind="stable")
    out = Analysis()
    out.n = n
    out.starts = starts
    out.widths = widths
    out.heights = heights
    out.parent = block_parent
    out.children = (
        np.bincount(block_parent[block_parent >= 0], minlength=ns) if ns else np.zeros(0, np.int64)
    )
    out.rel = rel
    out.rel_offsets = rel_offsets
    out.panel_offsets = panel_offsets
    out.total = int(panel_offsets[-1])
    out.l_flat = l_flat
    out.u_flat = u_flat
    out.out_index = order
    out.out_flat = flat[order]
    out.out_offsets = np.searchsorted(kb[order], np.arange(ns + 1))
    return out


def numeric(info: Analysis, l_data: np.ndarray, u_data: np.ndarray, dtype) -> np.ndarray:
    """The requested entries of `Z = B⁻¹`, in the order they were requested."""
    dtype = np.dtype(dtype)
    lp = np.zeros(info.total, dtype)
    lp[info.l_flat] = l_data
    upn = np.zeros(info.total, dtype)
    upn[info.u_flat] = u_data
    (trtri,) = lapack.get_lapack_funcs(("trtri",), (lp,))
    result = np.empty(info.out_index.shape[0], dtype)
    fronts: dict[int, np.ndarray] = {}
    pending = info.children.copy()
    starts_out = info.out_offsets
    widths, heights = info.widths.tolist(), info.heights.tolist()
    offsets = info.panel_offsets.tolist()
    parents = info.parent.tolist()
    rel_off = info.rel_offsets.tolist()
    has_children = (info.children > 0).tolist()
    out_off = starts_out.tolist()
    for k in range(len(widths) - 1, -1, -1):
        w, r = widths[k], heights[k]
        m = w + r
        o = offsets[k]
        ld = lp[o : o + m * w].reshape(m, w)
        ud = upn[o : o + m * w].reshape(w, m)
        linv, info_l = trtri(ld[:w], lower=1, unitdiag=1)
        uinv, info_u = trtri(ud[:, :w], lower=0, unitdiag=0)
        if info_l or info_u:
            raise np.linalg.LinAlgError("selected inversion: a zero pivot in the factors")
        front = np.empty((m, m), dtype)
        if r:
            p = parents[k]
            rel = info.rel[rel_off[k] : rel_off[k + 1]]
            s = front[w:, w:]  # Z_RR, gathered from the parent's front
            s[...] = fronts[p][rel[:, None], rel]
            y = ld[w:] @ linv
            x = uinv @ ud[:, w:]
            zrj = s @ y
            np.negative(zrj, out=zrj)
            front[w:, :w] = zrj
            front[:w, w:] = -(x @ s)
            front[:w, :w] = uinv @ linv - x @ zrj
            pending[p] -= 1
            if pending[p] == 0:
                del fronts[p]
        else:
            front[:w, :w] = uinv @ linv
        a, b = out_off[k], out_off[k + 1]
        if b > a:
            result[info.out_index[a:b]] = front.reshape(-1)[info.out_flat[a:b]]
        if has_children[k]:
            fronts[k] = front
    return result


def _analysis_bytes(info: Analysis) -> int:
    return sum(
        getattr(info, name).nbytes
        for name in Analysis.__slots__
        if isinstance(getattr(info, name), np.ndarray)
    )


# A few recent analyses (a gradient loop over one pattern reuses one), at most 256 MiB of them.
_ANALYSES = LRUCache(4, max_bytes=256 * 2**20, weigh=_analysis_bytes)


def clear() -> None:
    """Forget the memoised analyses."""
    _ANALYSES.clear()


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.view(np.uint8))
    return h.hexdigest()


def selected_inverse(L, U, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`(L U)⁻¹[rows, cols]` for a unit lower triangular `L` and an upper triangular `U` (SciPy CSC
    matrices, as `scipy.sparse.linalg.splu` returns them), computed exactly by selected inversion
    (see the module docstring)."""
    n = L.shape[0]
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    dtype = np.result_type(L.dtype, U.dtype)
    if n == 0 or rows.size == 0:
        return np.zeros(rows.shape[0], dtype)
    key = (n, _digest(L.indptr, L.indices, U.indptr, U.indices, rows, cols))
    info = _ANALYSES.get(
        key, lambda: analyse(n, (L.indptr, L.indices), (U.indptr, U.indices), rows, cols)
    )
    return numeric(info, L.data, U.data, dtype)
