"""Multi-LoRA series on /metrics, fed the scheduler's cumulative AdapterStats snapshots."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from corral.core.adapter_residency import AdapterStats

# AdapterStats counter -> (series, help).
_COUNTERS = {
    "num_loads": ("corral:lora_loads", "LoRA adapters copied into a compute slot."),
    "num_disk_loads": (
        "corral:lora_disk_loads",
        "LoRA adapter loads read from disk (not found in the host cache).",
    ),
    "load_bytes": ("corral:lora_load_bytes", "Bytes of LoRA weights copied into compute slots."),
    "num_slot_evictions": (
        "corral:lora_slot_evictions",
        "Idle LoRA adapters evicted from a compute slot for another.",
    ),
    "num_host_evictions": (
        "corral:lora_host_evictions",
        "LoRA adapters evicted from the host-memory cache.",
    ),
    "num_bypasses": (
        "corral:lora_bypasses",
        "Admissions that started ahead of a request waiting for an adapter slot.",
    ),
}


class LoRAMetrics:
    """vLLM's lora_requests_info (as corral:lora_requests_info: one series whose labels name the
    running adapters, the waiting ones (always empty here) and max_lora, its value the time of
    the last update), corral's adapter counters (corral:lora_*) and the gauges of adapters
    resident in compute slots and in use by running requests."""

    def __init__(
        self, registry: CollectorRegistry, values: dict[str, str], max_loras: int | None
    ) -> None:
        """Registers every series at zero (max_loras: the configured compute slots; None:
        unknown, an empty max_lora label)."""
        labels = list(values)
        self._values = values
        self._max_lora = "" if max_loras is None else str(max_loras)
        self._counters = {
            field: Counter(name, doc, labels, registry=registry).labels(**values)
            for field, (name, doc) in _COUNTERS.items()
        }
        self.num_resident = Gauge(
            "corral:lora_adapters_resident",
            "LoRA adapters in compute slots.",
            labels,
            registry=registry,
        ).labels(**values)
        self.num_in_use = Gauge(
            "corral:lora_adapters_in_use",
            "LoRA adapters with running requests.",
            labels,
            registry=registry,
        ).labels(**values)
        self._info = Gauge(
            "corral:lora_requests_info",
            "Running stats on LoRA requests (the value: when they were last updated).",
            [*labels, "running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            registry=registry,
        )
        self._info_labels: tuple[str, ...] | None = None
        self._last = AdapterStats()
        self._set_info(())

    def observe(self, stats: AdapterStats) -> None:
        """Apply one cumulative snapshot (counters move by the increase since the last one)."""
        for field, metric in self._counters.items():
            now, before = getattr(stats, field), getattr(self._last, field)
            if now > before:
                metric.inc(now - before)
        self.num_resident.set(stats.num_resident)
        self.num_in_use.set(stats.num_in_use)
        self._set_info(stats.running_adapter_names)
        self._last = stats

    def _set_info(self, running: tuple[str, ...]) -> None:
        # One series: the previous label set goes when the running adapters change. The same
        # name may run twice (old and reloaded weights): named once.
        labels = (*self._values.values(), ",".join(sorted(set(running))), "", self._max_lora)
        if self._info_labels is not None and labels != self._info_labels:
            self._info.remove(*self._info_labels)
        self._info_labels = labels
        self._info.labels(*labels).set_to_current_time()
