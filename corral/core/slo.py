"""Scheduling accounting shared by every policy: queue waits, starvation and SLO attainment.

The scheduler reports each request's arrival, (re)admission, preemption, tokens and end; the
tracker keeps O(1) state per live request (its RequestTimes and since when it waits) and counters
per SLO class (Request.priority), and snapshot() returns a frozen SLOStats that the server's
metrics can export (as_metrics).

Times are on the scheduler's clock (virtual in tests and the simulator). A request meets its SLO
when it finishes (not aborted) within every bound that applies: its class's SLO (ttft_s, tpot_s,
e2e_s; TPOT is first to last token over the output tokens after the first, met by one-token
outputs) and its own deadline_s (seconds after arrival, overriding the class's e2e_s).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from corral.core.request_times import RequestTimes
from corral.core.slo_target import SLO
from corral.request import Request

# Distinct class labels kept before the rest fold into "other" (priority is user input).
MAX_NUM_CLASSES = 64


@dataclass(slots=True)
class ClassStats:
    """Counters of one SLO class. attained/num_with_slo is the class's attainment."""

    num_finished: int = 0
    num_aborted: int = 0
    num_with_slo: int = 0
    num_attained: int = 0
    num_preemptions: int = 0
    sum_queue_wait_s: float = 0.0
    max_queue_wait_s: float = 0.0
    sum_ttft_s: float = 0.0
    sum_e2e_s: float = 0.0
    max_e2e_s: float = 0.0

    @property
    def attainment(self) -> float | None:
        return self.num_attained / self.num_with_slo if self.num_with_slo else None


@dataclass(frozen=True, slots=True)
class SLOStats:
    """A snapshot: the longest wait seen, the longest current wait, and per-class counters."""

    max_queue_wait_s: float
    oldest_waiting_s: float
    num_waiting: int
    classes: Mapping[str, ClassStats] = field(default_factory=dict)

    def as_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) triples, ready for a Prometheus gauge per name."""
        metrics: list[tuple[str, dict[str, str], float]] = [
            ("scheduler_max_queue_wait_seconds", {}, self.max_queue_wait_s),
            ("scheduler_oldest_waiting_seconds", {}, self.oldest_waiting_s),
        ]
        for name, stats in sorted(self.classes.items()):
            labels = {"slo_class": name}
            metrics += [
                ("slo_requests_finished", labels, float(stats.num_finished)),
                ("slo_requests_aborted", labels, float(stats.num_aborted)),
                ("slo_requests_with_target", labels, float(stats.num_with_slo)),
                ("slo_requests_attained", labels, float(stats.num_attained)),
                ("slo_preemptions", labels, float(stats.num_preemptions)),
                ("slo_max_queue_wait_seconds", labels, stats.max_queue_wait_s),
                ("slo_max_e2e_seconds", labels, stats.max_e2e_s),
            ]
            if stats.attainment is not None:
                metrics.append(("slo_attainment_ratio", labels, stats.attainment))
        return metrics

    def by_class(self) -> dict[str, dict[str, float]]:
        """class -> {series name without its slo_ prefix: value}: the per-class rows of
        as_metrics (the dashboard's SLO table)."""
        table: dict[str, dict[str, float]] = {}
        for name, labels, value in self.as_metrics():
            if "slo_class" in labels:
                table.setdefault(labels["slo_class"], {})[name.removeprefix("slo_")] = value
        return table


class _Live:
    """Per-request state: since when it waits (None: running), its timeline."""

    __slots__ = ("queued_at", "times")

    def __init__(self, queued_at: float, arrival_s: float) -> None:
        self.queued_at: float | None = queued_at
        self.times = RequestTimes(arrival_s)


class SLOTracker:
    """Counts waits, preemptions and SLO attainment per class. O(1) per event, O(log n) for the
    oldest-waiting heap (lazy deletion)."""

    def __init__(
        self,
        clock: Callable[[], float],
        targets: Mapping[int, SLO] | None = None,
        default_target: SLO | None = None,
    ) -> None:
        self.clock = clock
        self.targets = dict(targets or {})
        self.default_target = default_target or SLO()
        self.classes: dict[str, ClassStats] = {}
        self.max_queue_wait_s = 0.0
        self._live: dict[str, _Live] = {}
        # (queued_at, request_id); live iff _live[id].queued_at == queued_at
        self._queued: list[tuple[float, str]] = []

    def class_of(self, request: Request) -> ClassStats:
        name = str(request.priority)
        stats = self.classes.get(name)
        if stats is None:
            if len(self.classes) >= MAX_NUM_CLASSES:
                name = "other"
            stats = self.classes.setdefault(name, ClassStats())
        return stats

    # ----- events (called by the scheduler) ------------------------------------------------

    def on_arrival(self, request: Request) -> None:
        self._enqueue(request, request.arrival_time)

    def on_preempted(self, request: Request) -> None:
        self.class_of(request).num_preemptions += 1
        self._enqueue(request, self.clock())

    def on_admitted(self, request: Request) -> None:
        live = self._live.get(request.request_id)
        if live is None or live.queued_at is None:
            return
        wait_s = max(self.clock() - live.queued_at, 0.0)
        live.queued_at = None
        stats = self.class_of(request)
        stats.sum_queue_wait_s += wait_s
        stats.max_queue_wait_s = max(stats.max_queue_wait_s, wait_s)
        self.max_queue_wait_s = max(self.max_queue_wait_s, wait_s)

    def on_token(self, request: Request) -> None:
        live = self._live.get(request.request_id)
        if live is not None:
            times = live.times
            times.add_tokens(self.clock(), request.num_output_tokens - times.num_output_tokens)

    def on_finished(self, request: Request, aborted: bool) -> None:
        live = self._live.pop(request.request_id, None)
        if live is None:
            return
        stats = self.class_of(request)
        if aborted:
            stats.num_aborted += 1
            return
        times = live.times
        e2e_s = times.finish(self.clock())
        ttft_s = times.ttft_s if times.ttft_s is not None else e2e_s
        stats.num_finished += 1
        stats.sum_e2e_s += e2e_s
        stats.sum_ttft_s += ttft_s
        stats.max_e2e_s = max(stats.max_e2e_s, e2e_s)
        target = self.targets.get(request.priority, self.default_target)
        deadline_s = request.deadline_s
        if deadline_s is None and target.is_empty:
            return
        stats.num_with_slo += 1
        if deadline_s is not None:
            target = replace(target, e2e_s=None)
        met_deadline = deadline_s is None or e2e_s <= deadline_s
        stats.num_attained += int(met_deadline and target.is_met(ttft_s, times.tpot_s, e2e_s))

    # ----- reading -------------------------------------------------------------------------

    def oldest_waiting_s(self) -> float:
        """How long the longest-waiting queued request has waited (0 when none waits)."""
        heap = self._queued
        while heap:
            queued_at, request_id = heap[0]
            live = self._live.get(request_id)
            if live is not None and live.queued_at == queued_at:
                return max(self.clock() - queued_at, 0.0)
            heapq.heappop(heap)
        return 0.0

    def snapshot(self) -> SLOStats:
        num_waiting = sum(1 for live in self._live.values() if live.queued_at is not None)
        classes = {name: replace(stats) for name, stats in self.classes.items()}
        return SLOStats(self.max_queue_wait_s, self.oldest_waiting_s(), num_waiting, classes)

    def _enqueue(self, request: Request, queued_at: float) -> None:
        request_id = request.request_id
        live = self._live.get(request_id)
        if live is None:
            self._live[request_id] = _Live(queued_at, request.arrival_time)
        else:
            live.queued_at = queued_at
        heapq.heappush(self._queued, (queued_at, request_id))
        if len(self._queued) > 2 * len(self._live) + 64:
            self._queued = [
                (live.queued_at, rid)
                for rid, live in self._live.items()
                if live.queued_at is not None
            ]
            heapq.heapify(self._queued)
