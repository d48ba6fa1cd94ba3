"""The host-side factorization cache shared by the sparse backends.

Why a cache: `jax.pure_callback` cannot return a Python object (a factorization) to JAX, so the
forward solve, its JVP solves and its backward (transposed) solve are separate callbacks that each
receive the matrix values again. To avoid refactorizing in a gradient, each callback looks the
factorization up here, keyed on `(backend, kind, dtype, pattern key, digest of the values' bytes)`,
and factorizes only on a miss.

Why results never depend on it: a hit is confirmed by comparing the values the entry was made from
with the incoming values byte for byte (so even a digest collision cannot return the wrong factors),
and a miss recomputes exactly what a hit would have returned. Only the speed depends on the cache.
The entry holds those values as a copy, or, for the values a JAX callback received (immutable, and
referred to by nothing else), as a reference to them: no second copy.

Bounds: at most `max_entries` factorizations and `max_bytes` of estimated factor memory (least
recently used first out). A factorization larger than `max_bytes` on its own is used once and not
kept. Thread-safe: one lock guards the table, and concurrent callbacks asking for the same missing key
wait for one factorization instead of each doing their own.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ._common import note_freed

DEFAULT_MAX_ENTRIES = 16
DEFAULT_MAX_BYTES = 4 * 2**30


def digest(values: np.ndarray) -> str:
    """A 128-bit BLAKE2b digest of the values' bytes (xxhash is not a dependency; BLAKE2b runs at
    roughly 1 GB/s, negligible next to a sparse factorization)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(values).view(np.uint8))
    return h.hexdigest()


class _Entry:
    __slots__ = ("factor", "nbytes", "values")

    def __init__(self, factor: Any, values: np.ndarray, nbytes: int):
        self.factor = factor
        self.values = values
        self.nbytes = nbytes


def _kept(values: np.ndarray, frozen: bool) -> np.ndarray:
    """What an entry keeps to confirm hits: `values` itself when the caller vouches that it is
    frozen (and it is read-only and contiguous, so the byte comparison views it as is), else a
    copy."""
    if frozen and not values.flags.writeable and values.flags.c_contiguous:
        return values
    return np.array(values, copy=True)


def _release(factor: Any, nbytes: int = 0) -> None:
    close = getattr(factor, "close", None)
    if close is not None:
        close()
    note_freed(nbytes)


class FactorCache:
    """A bounded, thread-safe LRU table of factorizations; see the module docstring."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._inflight: dict[tuple, threading.Event] = {}
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.factorizations: dict[str, int] = {}

    # ---- configuration -------------------------------------------------------------------

    def set_limits(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        if max_entries is not None:
            if int(max_entries) < 0:
                raise ValueError(f"max_entries must be >= 0, got {max_entries}.")
            self.max_entries = int(max_entries)
        if max_bytes is not None:
            if int(max_bytes) < 0:
                raise ValueError(f"max_bytes must be >= 0, got {max_bytes}.")
            self.max_bytes = int(max_bytes)
        with self._lock:
            evicted = self._evict_locked()
        for e in evicted:
            _release(e.factor, e.nbytes)

    def clear(self) -> None:
        with self._lock:
            evicted = list(self._entries.values())
            self._entries.clear()
        for e in evicted:
            _release(e.factor, e.nbytes)

    def reset_counters(self) -> None:
        with self._lock:
            self.hits = 0
            self.misses = 0
            self.factorizations = {}

    def info(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": sum(e.nbytes for e in self._entries.values()),
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "factorizations": dict(self.factorizations),
            }

    # ---- use -----------------------------------------------------------------------------

    def _evict_locked(self) -> list[_Entry]:
        out = []
        total = sum(e.nbytes for e in self._entries.values())
        while self._entries and (len(self._entries) > self.max_entries or total > self.max_bytes):
            _, e = self._entries.popitem(last=False)
            total -= e.nbytes
            out.append(e)
        return out

    def count_factorization(self, backend: str) -> None:
        with self._lock:
            self.factorizations[backend] = self.factorizations.get(backend, 0) + 1

    def run(
        self,
        key_prefix: tuple,
        values: np.ndarray,
        factorize: Callable[[], tuple[Any, int]],
        use: Callable[[Any], Any],
        frozen: bool = False,
    ) -> Any:
        """Return `use(factor)` with the factorization of `values`, from the cache or from
        `factorize()` (which returns `(factor, nbytes)`). `use` runs while the entry cannot be
        released by another thread.

        A new entry keeps the values it was made from, to confirm later hits byte for byte. With
        `frozen=True` the caller promises that `values` is a read-only view of memory that nothing
        will ever write (the private copy that a JAX host callback receives: a JAX array, immutable,
        that no one else refers to), and the entry keeps a reference to it instead of a copy (one
        less copy of the values held; the confirmation is the same). Otherwise it keeps a copy."""
        key = key_prefix + (digest(values),)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and np.array_equal(
                    entry.values.view(np.uint8), np.ascontiguousarray(values).view(np.uint8)
                ):
                    self.hits += 1
                    self._entries.move_to_end(key)
                    # Held under the lock, so eviction (which also takes the lock) cannot release
                    # the factor mid-solve. Solves are short next to factorizations.
                    return use(entry.factor)
                if entry is not None:  # a digest collision: never trust it, never cache over it
                    key = None
                    break
                waiter = self._inflight.get(key)
                if waiter is None:
                    self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            waiter.wait()
        if key is None:
            factor, nbytes = factorize()
            try:
                return use(factor)
            finally:
                _release(factor, nbytes)
        try:
            factor, nbytes = factorize()
            nbytes = int(nbytes) + values.nbytes
            result = use(factor)
            keep = self.max_entries > 0 and nbytes <= self.max_bytes
            evicted: list[_Entry] = []
            if keep:
                with self._lock:
                    self._entries[key] = _Entry(factor, _kept(values, frozen), nbytes)
                    evicted = self._evict_locked()
            else:
                _release(factor, nbytes)
            for e in evicted:
                _release(e.factor, e.nbytes)
            return result
        finally:
            with self._lock:
                event = self._inflight.pop(key, None)
            if event is not None:
                event.set()


CACHE = FactorCache()
