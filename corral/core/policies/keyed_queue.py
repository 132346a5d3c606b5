"""KeyedQueue: waiting requests in the order of a static key (a heap with lazy deletion)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

from corral.request import Request

# heap entry: (key, tie-breaking sequence number, request)
_Entry = tuple[Any, int, Request]


class KeyedQueue:
    """Requests ordered by a key fixed when they are pushed: push and pop in O(log n), removal
    in O(1) (the heap entry goes stale and is skipped later), membership in O(1).

    Invariant: a request is queued iff its id maps to an entry in _live; a heap entry is live
    iff it is that very entry. Stale entries are dropped lazily, and the heap is rebuilt when
    they outnumber the live ones, so memory stays O(live).
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[str, _Entry] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request: Request) -> bool:
        return request.request_id in self._live

    def push(self, request: Request, key: Any) -> None:
        """Queue request under key (replacing its entry if it is already queued)."""
        entry = (key, next(self._sequence), request)
        self._live[request.request_id] = entry
        heapq.heappush(self._heap, entry)
        self._maybe_compact()

    def peek(self) -> Request | None:
        """The request with the smallest key (ties: pushed first), or None."""
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2].request_id) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def peek_key(self) -> Any:
        """The smallest key, or None when empty."""
        return self._heap[0][0] if self.peek() is not None else None

    def pop(self) -> Request:
        """Remove and return the request with the smallest key. Raises IndexError when empty."""
        request = self.peek()
        if request is None:
            raise IndexError("pop from an empty KeyedQueue")
        heapq.heappop(self._heap)
        del self._live[request.request_id]
        return request

    def remove(self, request: Request) -> bool:
        """Forget request; False if it was not queued."""
        if self._live.pop(request.request_id, None) is None:
            return False
        self._maybe_compact()
        return True

    def __iter__(self) -> Iterator[Request]:
        """Queued requests in key order (sorts: for inspection, not for hot paths)."""
        return (entry[2] for entry in sorted(self._live.values(), key=lambda e: e[:2]))

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)
