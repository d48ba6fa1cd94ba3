"""`LRUCache`: the bounded memo behind linopx's tracing and dispatch caches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRUCache:
    """A dict bounded to `size` entries (and, given `weigh`, to `max_bytes` of what `weigh`
    reports per value) that forgets the least recently used entries first.

    Evicted values are dropped at once, so whatever only the cache kept alive (compiled programs,
    traced jaxprs and their constants) is freed by the next garbage collection at the latest.
    A value heavier than `max_bytes` on its own is returned but not kept. Thread-safe; `make()`
    runs outside the lock (it may compile, which can re-enter linopx), so two threads that miss
    the same key at once may both make it, and the first one kept wins.
    """

    def __init__(self, size: int, max_bytes: int | None = None, weigh: Callable[[Any], int] | None = None):
        self.size = size
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._entries: OrderedDict = OrderedDict()
        self._weights: dict = {}
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value for `key`, made by `make()` and remembered if it is not there yet."""
        with self._lock:
            try:
                value = self._entries[key]
            except KeyError:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
                return value
        value = make()
        weight = 0 if self._weigh is None else int(self._weigh(value))
        with self._lock:
            if key in self._entries:  # another thread made it meanwhile: share one copy
                self._entries.move_to_end(key)
                return self._entries[key]
            if self.max_bytes is not None and weight > self.max_bytes:
                return value
            self._entries[key] = value
            self._weights[key] = weight
            self._bytes += weight
            self._evict_locked()
        return value

    def _evict_locked(self) -> None:
        while self._entries and (
            len(self._entries) > self.size
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            key, _ = self._entries.popitem(last=False)
            self._bytes -= self._weights.pop(key)
            self.evictions += 1

    def values(self) -> list:
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def info(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._entries),
                "size": self.size,
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weights.clear()
            self._bytes = 0
