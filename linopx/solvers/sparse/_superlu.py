"""SuperLU (through `scipy.sparse.linalg.splu`): always available, single-threaded, all four dtypes.

SuperLU does its ordering, symbolic and numeric factorization in one call, so a repeated pattern
cannot reuse the symbolic analysis here; only the ordering choice and the CSC layout are reused
(memoised on the pattern). Transposed solves use `SuperLU.solve(trans="T")` with the same factors.

**Thread affinity.** SciPy's SuperLU wrapper records every block it allocates in a registry that
belongs to the allocating thread, and its `free` releases a block only if it finds it in the
*current* thread's registry (`superlu_python_module_free` in SciPy's `_superlu_utils.c`; the
registry exists so that an aborted factorization can free what it had allocated). A `SuperLU`
object destroyed on another thread than the one that created it therefore keeps its L and U
factors for ever. `jax.pure_callback` runs its callbacks on whichever XLA thread is free, and the
factorization cache evicts an entry on whichever thread inserts the next one, so without care a
loop of solves leaks about one factorization per call. Every `SuperLU` object is therefore created
on, and destroyed on, one of a few dedicated owner threads (`_Owner`); solves (whose work arrays
are allocated and freed within the call) run on the caller's thread.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...linops.sparse import SparsityPattern
from . import _layout
from ._common import SINGULAR, condition_check, release_memory

NAME = "superlu"


def available() -> bool:
    return True


def factor_dtype(dtype) -> np.dtype:
    # SuperLU has single and double precision, real and complex: no conversion needed.
    return np.dtype(dtype)


def ordering(pattern: SparsityPattern) -> str:
    """The column ordering for `splu`. On a structurally symmetric pattern, minimum degree on
    `Aᵀ + A` keeps the symmetric structure and typically fills in much less than COLAMD (FIELD-NOTES:
    1.2-3x faster on Poisson matrices); COLAMD is SuperLU's choice for unsymmetric patterns."""
    return "MMD_AT_PLUS_A" if pattern.is_structurally_symmetric() else "COLAMD"


class _Owner:
    """A single thread on which `SuperLU` objects are created and destroyed (see the module
    docstring). A few of them, handed out in turn, let Python threads factorize concurrently."""

    def __init__(self, index: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"linopx-superlu-{index}")
        self._ident: int | None = None

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    def run(self, fn, *args):
        """`fn(*args)` on the owner thread, waiting for its result."""
        if self._ident is None:
            self._pool.submit(self._mark).result()
        if threading.get_ident() == self._ident:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    def post(self, fn, *args) -> None:
        """`fn(*args)` on the owner thread, without waiting (releases need no answer)."""
        if threading.get_ident() == self._ident:
            fn(*args)
        else:
            self._pool.submit(fn, *args)


_OWNER_COUNT = max(1, min(4, os.cpu_count() or 1))
_owners: list[_Owner] = []
_owners_lock = threading.Lock()
_next_owner = itertools.count()


def _owner() -> _Owner:
    with _owners_lock:
        if not _owners:
            _owners.extend(_Owner(i) for i in range(_OWNER_COUNT))
        return _owners[next(_next_owner) % len(_owners)]


def sync() -> None:
    """Wait until every owner thread has done what was posted to it (`clear_cache` calls this so
    that the memory it measures as released is released)."""
    with _owners_lock:
        owners = list(_owners)
    for owner in owners:
        owner.run(lambda: None)


def _drop(box: list) -> None:
    box.clear()  # the last reference to the `SuperLU` object goes here, on its owner thread


class SuperLUFactor:
    """A `SuperLU` object with the thread it must die on. `close()` (called by the cache when it
    releases the entry) destroys it there; `__del__` does the same for a factor dropped unclosed."""

    __slots__ = ("_box", "owner")

    def __init__(self, lu, owner: _Owner):
        # Only the list refers to the `SuperLU` object, so clearing it on the owner thread frees it
        # there, however many Python references to this wrapper remain elsewhere.
        self._box = [lu]
        self.owner = owner

    @property
    def lu(self):
        return self._box[0]

    def solve(self, b: np.ndarray, transposed: bool) -> np.ndarray:
        return self._box[0].solve(b, trans="T" if transposed else "N")

    def close(self) -> None:
        box = self._box
        if box:
            self._box = []
            self.owner.post(_drop, box)

    def __del__(self):
        try:
            self.close()
        except RuntimeError:  # interpreter shutdown: the owner threads are gone
            pass


def factorize(pattern: SparsityPattern, values: np.ndarray, dtype, kind: str):
    """Return `(factor, nbytes)`; `factor` is `SINGULAR` for a singular matrix."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    del kind  # SuperLU has no symmetric variant: tags do not change the factorization
    layout = _layout.csc(pattern)
    permc_spec = ordering(pattern)
    # The pattern's first factorization built the layout and the ordering above: the arrays they
    # sorted are free now, but still held by this thread's malloc arena, which SuperLU (allocating
    # on its owner thread, from another arena) cannot reuse. Hand them back before it starts.
    pattern.memo("superlu_released", release_memory)
    data = layout.data(values, dtype)
    a = sp.csc_matrix((data, layout.indices, layout.indptr), shape=pattern.shape)
    owner = _owner()

    def make():
        try:
            return [splu(a, permc_spec=permc_spec)]
        except RuntimeError as err:  # "Factor is exactly singular"
            if "singular" in str(err).lower():
                return None
            raise

    box = owner.run(make)
    if box is None:
        return SINGULAR, 0
    lu = box.pop()
    # `lu.nnz` counts the entries of L and U; each costs a value and (about) one int32 index.
    nbytes = int(lu.nnz) * (np.dtype(dtype).itemsize + 4) + 16 * pattern.shape[0]
    factor = SuperLUFactor(lu, owner)
    del box, lu
    if not condition_check(a, factor, dtype):
        factor.close()
        return SINGULAR, 0
    return factor, nbytes


# ---------------------------------------------------------------------------------------------
# Reading the factors (`lx.slogdet` and its derivative)


def permutation_sign(perm: np.ndarray) -> int:
    """The sign (`+1`/`-1`) of a permutation, `(-1)^(n - number of cycles)`. A permutation and its
    inverse have the same sign, so it does not matter which way `perm` maps. The cycles are labelled
    by their smallest member with pointer doubling: `O(n log n)` vectorized work."""
    perm = np.asarray(perm, np.int64)
    n = perm.shape[0]
    label = np.arange(n)
    step = perm.copy()
    for _ in range(max(1, int(n).bit_length())):
        label = np.minimum(label, label[step])
        step = step[step]
    cycles = int(np.count_nonzero(label == np.arange(n)))
    return -1 if (n - cycles) % 2 else 1


def slogdet(factor: SuperLUFactor) -> tuple[complex, float]:
    """`(sign, log|det A|)` read off SciPy's `splu` factors: `Pr A Pc = L U` with `L` unit lower
    triangular (SciPy documents `Pr = csc((1, (perm_r, arange)))`, `Pc = csc((1, (arange, perm_c)))`;
    `splu` calls SuperLU's `gstrf` directly, so there is no equilibration to undo), hence
    `det A = sign(perm_r) sign(perm_c) Π U_ii`. The sign is `±1` for real matrices and the unit
    phase `Π U_ii / |U_ii|` (times the permutation signs) for complex ones; the log-modulus is summed
    in float64. Reading `U` makes SciPy keep CSC copies of `L` and `U` on the `SuperLU` object (about
    doubling the factor's memory while it stays cached). Cost: `O(nnz(L + U))` for that copy, then
    `O(n log n)`."""
    lu = factor.lu
    d = lu.U.diagonal()
    sign = permutation_sign(lu.perm_r) * permutation_sign(lu.perm_c)
    modulus = np.abs(d)
    if np.any(modulus == 0):  # pragma: no cover - SuperLU reports exact singularity itself
        return 0.0, -np.inf
    logabs = float(np.sum(np.log(modulus.astype(np.float64))))
    if d.dtype.kind == "c":
        phase = np.exp(1j * float(np.sum(np.angle(d.astype(np.complex128)))))
        return complex(sign * phase), logabs
    negative = int(np.count_nonzero(d < 0))
    return float(sign * (-1 if negative % 2 else 1)), logabs


def factors(factor: SuperLUFactor):
    """`(L, U, perm_r, perm_c)` of the factorization (SciPy CSC matrices and index arrays), which
    stay valid after the factor is released."""
    lu = factor.lu
    return lu.L, lu.U, np.asarray(lu.perm_r), np.asarray(lu.perm_c)
