"""SessionPins: a conversation paused for a tool call keeps its KV on the device (InferCept's
"preserve"), so that its next turn finds the whole history in the prefix cache.

When a request of session S ends normally, the full blocks it registered in the prefix cache are
held under S (a KV hold, as a transfer lease is: a reference outside any request table) until
S's next turn is admitted (a pin hit: the turn now references them itself), the pin is older than
ttl_s (expired), or the pool needs the blocks (reclaimed). Pinned blocks are therefore never
evicted as cold cache is: unpinned cached blocks go first, and only when running or admitted
requests need more than the free and evictable blocks does the scheduler reclaim a pin, before
it would preempt anyone.

Which pin goes first follows InferCept's waste rule, with the pause length learnt from the pins
whose next turn came (an average of the time from a pin to its session's next turn arriving):
keeping a paused context costs its memory for the rest of its pause, so among the pins still
inside a typical pause the one holding the most block-seconds until its expected return
(num_blocks x (expected pause - time paused so far)) goes first; but a pin paused for more than
twice the expected pause is overdue (its conversation may be over: a last turn is pinned too)
and goes before any of them, oldest first. A client that knows its tool's latency says so
(Request.session_pause_s): that pin then uses the announced pause instead of the learnt one, and
a turn announcing a pause longer than ttl_s is not pinned at all. A pin whose next turn has
arrived and waits in the queue is claimed: it goes last. Released blocks stay in the prefix
cache as evictable entries: the next turn may still hit them, and with a host tier they are
spilled to host memory when evicted (swap rather than drop). Torch-free; the simulator runs the
same code.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.core.kv_cache import KVCacheManager
    from corral.request import Request


@dataclass(slots=True)
class SessionPinStats:
    num_pinned: int = 0  # pins made (cumulative)
    num_hits: int = 0  # a session's next turn admitted while its pin held
    num_expired: int = 0  # released at the TTL
    num_reclaimed: int = 0  # released because the pool needed the blocks
    num_active: int = 0  # pins held now
    num_pinned_blocks: int = 0  # blocks held by pins now

    def copy(self) -> SessionPinStats:
        return SessionPinStats(
            self.num_pinned, self.num_hits, self.num_expired, self.num_reclaimed,
            self.num_active, self.num_pinned_blocks,
        )  # fmt: skip


@dataclass(slots=True)
class _Pin:
    pinned_s: float
    expiry_s: float
    num_blocks: int
    generation: int
    announced_pause_s: float | None  # the client's expected pause (None: the learnt one)
    claimed: bool = False  # the session's next turn has arrived and waits for admission


# Weight of the newest observed pause in the running estimate; pins past this many expected
# pauses are overdue.
PAUSE_EWMA_WEIGHT = 0.2
OVERDUE_FACTOR = 2.0


class SessionPins:
    """The pins of one KV manager (see the module docstring)."""

    def __init__(self, kv: KVCacheManager, ttl_s: float, clock: Callable[[], float]) -> None:
        if not ttl_s > 0:
            raise ValueError(f"the session KV TTL must be > 0 seconds, got {ttl_s}")
        self.kv = kv
        self.ttl_s = ttl_s
        self.clock = clock
        self.stats = SessionPinStats()
        self._pins: dict[str, _Pin] = {}
        # (expiry, generation, session) for expiry in O(log n); stale entries are skipped.
        self._expiries: list[tuple[float, int, str]] = []
        self._generation = 0
        # The typical time from a pin to its session's next turn (None until a hit).
        self.expected_pause_s: float | None = None

    @staticmethod
    def holder_id(session_id: str, generation: int) -> str:
        """The KV hold of a session's pin (one per pin, so that a newer pin can take its hold
        before the older one drops its own)."""
        return f"session:{session_id}:{generation}"

    def on_finished(self, request: Request) -> None:
        """A request ended normally: pin its cached blocks under its session (replacing the
        session's older pin, whose blocks are a prefix of these when the turns chain)."""
        session_id = request.session_id
        if session_id is None:
            return
        num_blocks = self.kv.num_cached_blocks(request.request_id)
        announced = request.session_pause_s
        if num_blocks == 0 or (announced is not None and announced > self.ttl_s):
            self._release(session_id)
            return
        # Take the new hold before dropping the old one, so that shared blocks never become
        # evictable in between.
        self._generation += 1
        self.kv.hold_request_blocks(
            self.holder_id(session_id, self._generation), request, num_blocks
        )
        old = self._pins.pop(session_id, None)
        if old is not None:
            self.kv.release_held(self.holder_id(session_id, old.generation))
            self.stats.num_pinned_blocks -= old.num_blocks
        now = self.clock()
        pin = _Pin(now, now + self.ttl_s, num_blocks, self._generation, announced)
        self._pins[session_id] = pin
        heapq.heappush(self._expiries, (pin.expiry_s, pin.generation, session_id))
        self.stats.num_pinned += 1
        self.stats.num_pinned_blocks += num_blocks
        self.stats.num_active = len(self._pins)

    def on_arrival(self, request: Request) -> None:
        """The session's next turn arrived: its pin is claimed (reclaimed last, never overdue),
        and the pause it ended teaches the expected one (pauses without an announcement)."""
        session_id = request.session_id
        pin = self._pins.get(session_id) if session_id is not None else None
        if pin is None or pin.claimed:
            return
        pin.claimed = True
        if pin.announced_pause_s is None:
            pause_s = self.clock() - pin.pinned_s
            estimate = self.expected_pause_s
            self.expected_pause_s = (
                pause_s if estimate is None else estimate + PAUSE_EWMA_WEIGHT * (pause_s - estimate)
            )

    def on_admitted(self, request: Request) -> None:
        """The session's next turn holds its own references now: drop the pin (a hit)."""
        session_id = request.session_id
        if session_id is not None and session_id in self._pins:
            self.on_arrival(request)  # admitted without passing through the queue's arrival
            self.stats.num_hits += 1
            self._release(session_id)

    def expire(self) -> None:
        """Release the pins whose TTL has passed."""
        now = self.clock()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, generation, session_id = heapq.heappop(expiries)
            pin = self._pins.get(session_id)
            if pin is None or pin.generation != generation:
                continue
            if pin.claimed:  # its next turn waits in the queue: keep it another TTL
                pin.expiry_s = now + self.ttl_s
                heapq.heappush(expiries, (pin.expiry_s, generation, session_id))
                continue
            self.stats.num_expired += 1
            self._release(session_id)

    def reclaim(self) -> bool:
        """Release one pin (see the module docstring for which); False when none is held."""
        if not self._pins:
            return False
        session_id = min(self._pins, key=self._keep_value)
        self.stats.num_reclaimed += 1
        self._release(session_id)
        return True

    def _keep_value(self, session_id: str) -> tuple[int, float]:
        """Smallest first: overdue pins (oldest first), then the largest expected waste; a
        claimed pin (its next turn is queued) last."""
        pin = self._pins[session_id]
        if pin.claimed:
            return (2, -pin.pinned_s)
        paused_s = self.clock() - pin.pinned_s
        expected = pin.announced_pause_s
        if expected is None:
            expected = self.expected_pause_s
        if expected is not None and paused_s > OVERDUE_FACTOR * expected:
            return (0, pin.pinned_s)
        remaining_s = max(0.0, (expected if expected is not None else self.ttl_s) - paused_s)
        return (1, -pin.num_blocks * remaining_s)

    def _release(self, session_id: str) -> None:
        pin = self._pins.pop(session_id, None)
        if pin is None:
            return
        self.kv.release_held(self.holder_id(session_id, pin.generation))
        self.stats.num_pinned_blocks -= pin.num_blocks
        self.stats.num_active = len(self._pins)
