"""StatsSeries: Prometheus series fed a component's cumulative stats snapshots (a dataclass of
counters and gauges): counters move by the increase since the last snapshot, gauges take the
value. KV transfer and session pins publish theirs through it."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class StatsSeries:
    """counters and gauges: snapshot field -> (series name, help)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        values: dict[str, str],
        counters: dict[str, tuple[str, str]],
        gauges: dict[str, tuple[str, str]],
        initial: Any,
    ) -> None:
        labels = list(values)
        self._counters = {
            field: Counter(name, doc, labels, registry=registry).labels(**values)
            for field, (name, doc) in counters.items()
        }
        self._gauges = {
            field: Gauge(name, doc, labels, registry=registry).labels(**values)
            for field, (name, doc) in gauges.items()
        }
        self._last = initial

    def observe(self, stats: Any) -> None:
        """Apply one snapshot."""
        for field, metric in self._counters.items():
            now, before = getattr(stats, field), getattr(self._last, field)
            if now > before:
                metric.inc(now - before)
        for field, gauge in self._gauges.items():
            gauge.set(getattr(stats, field))
        self._last = stats
