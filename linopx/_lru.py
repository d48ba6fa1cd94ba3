"""`LRUCache`: the bounded memo behind linopx's tracing and dispatch caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRUCache:
    """A dict bounded to `size` entries that forgets the least recently used one."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value for `key`, made by `make()` and remembered if it is not there yet."""
        try:
            value = self._entries[key]
        except KeyError:
            value = self._entries[key] = make()
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return value
        self._entries.move_to_end(key)
        return value

    def values(self) -> list:
        return list(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
