"""Prometheus metrics, named like vLLM's with a `corral:` prefix (vllm:x -> corral:x), so that
existing dashboards translate by a prefix. The series routers read (llm-d, Dynamo, the vLLM
router: queue, running batch, KV usage, prefix cache, preemptions) are also exported under their
vLLM names and labels (model_name, engine="0"), with the same values. Each server has its own
registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from corral.core.messages import SchedulerStats
from corral.core.slo import SLOStats
from corral.engine.request_stats import IterationStats
from corral.serve.kv_transfer_metrics import KVTransferMetrics
from corral.serve.lora_metrics import LoRAMetrics
from corral.serve.moe_metrics import MoEMetrics
from corral.spec.stats import SpecDecodeStats

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_TOKEN_LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


# Series also exported as vllm:<name>, as vLLM's PrometheusStatLogger names them (counters gain
# _total on the page, from prometheus_client, in both prefixes).
VLLM_NAMES = frozenset(
    (
        "num_requests_running",
        "num_requests_waiting",
        "kv_cache_usage_perc",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "num_preemptions",
    )
)
# vLLM's labels: the served model and the engine index (corral: one engine per server).
VLLM_LABELS = ("model_name", "engine")
VLLM_ENGINE = "0"


class _Twins:
    """A corral: series and its vllm: twin, moved together (one update, two series)."""

    __slots__ = ("series",)

    def __init__(self, *series: Any) -> None:
        self.series = series

    def set(self, value: float) -> None:
        for one in self.series:
            one.set(value)

    def inc(self, amount: float = 1) -> None:
        for one in self.series:
            one.inc(amount)


_SLO_DOCS = {
    "scheduler_max_queue_wait_seconds": "Longest queue wait seen so far.",
    "scheduler_oldest_waiting_seconds": "How long the oldest waiting request has waited.",
    "slo_requests_finished": "Finished requests of the class (cumulative).",
    "slo_requests_aborted": "Aborted requests of the class (cumulative).",
    "slo_requests_with_target": "Finished requests of the class that had an SLO target.",
    "slo_requests_attained": "Finished requests of the class that met every bound.",
    "slo_preemptions": "Preemptions of the class's requests (cumulative).",
    "slo_max_queue_wait_seconds": "Longest queue wait of the class.",
    "slo_max_e2e_seconds": "Longest end-to-end latency of the class.",
    "slo_attainment_ratio": "attained / with target, for the class (--slo, --slo-class).",
}


class ServerMetrics:
    """The server's metrics; `observe` is an AsyncLLM stat logger."""

    def __init__(
        self,
        model_name: str,
        num_speculative_tokens: int | None = None,
        max_loras: int | None = None,
    ) -> None:
        """num_speculative_tokens: the server's K when speculative decoding is on (its
        corral:spec_decode_* counters exist from the start, positions 0..K-1 at zero); None: off,
        and no spec_decode series at all (as vLLM, which registers them only with a spec config).
        max_loras: the engine's adapter slots when LoRA is on (the corral:lora_* series exist
        from the start); None: off, no lora series.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        values = {"model_name": model_name}
        registry = self.registry

        vllm_values = {"model_name": model_name, "engine": VLLM_ENGINE}

        def with_vllm_twin(kind: Any, name: str, doc: str) -> Any:
            series = kind(name, doc, labels, registry=registry).labels(**values)
            short = name.removeprefix("corral:")
            if short not in VLLM_NAMES:
                return series
            twin = kind("vllm:" + short, doc, VLLM_LABELS, registry=registry)
            return _Twins(series, twin.labels(**vllm_values))

        def gauge(name: str, doc: str) -> Any:
            return with_vllm_twin(Gauge, name, doc)

        def counter(name: str, doc: str) -> Any:
            return with_vllm_twin(Counter, name, doc)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry).labels(**values)

        self._values = values
        self.num_running = gauge("corral:num_requests_running", "Requests in the running batch.")
        self.num_waiting = gauge("corral:num_requests_waiting", "Requests waiting to run.")
        self.kv_usage = gauge("corral:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).")
        self.engine_healthy = gauge("corral:engine_healthy", "1 while the engine core is alive.")
        self.prefix_queries = counter(
            "corral:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter(
            "corral:prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self.preemptions = counter("corral:num_preemptions", "Preemptions (cumulative).")
        self.prefix_evictions = counter(
            "corral:prefix_cache_evictions", "Cached blocks evicted from the device pool."
        )
        # SchedulerStats field -> counter, for the KV tiers too (zero without them).
        self._cumulative = {
            "num_preemptions": self.preemptions,
            "prefix_query_tokens": self.prefix_queries,
            "prefix_hit_tokens": self.prefix_hits,
            "prefix_cache_evictions": self.prefix_evictions,
            "kv_host_loads": counter(
                "corral:kv_host_tier_loads", "Blocks loaded back from the host-memory tier."
            ),
            "kv_disk_reads": counter(
                "corral:kv_disk_tier_reads", "Blocks read from the disk tier."
            ),
            "kv_host_saves": counter(
                "corral:kv_host_tier_saves", "Blocks spilled from the device pool to host memory."
            ),
            "kv_disk_writes": counter("corral:kv_disk_tier_writes", "Blocks written to disk."),
            "kv_swap_outs": counter("corral:kv_swap_outs", "Requests swapped out to host memory."),
        }
        self.prompt_tokens = counter("corral:prompt_tokens", "Prompt tokens of started requests.")
        self.generation_tokens = counter("corral:generation_tokens", "Generated tokens.")
        self.request_success = Counter(
            "corral:request_success",
            "Finished requests by finish reason.",
            ["model_name", "finished_reason"],
            registry=registry,
        )
        self.request_rejected = Counter(
            "corral:request_rejected",
            "Requests refused before admission, by HTTP status.",
            ["model_name", "status"],
            registry=registry,
        )
        self.ttft = histogram(
            "corral:time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS_S
        )
        self.itl = histogram(
            "corral:inter_token_latency_seconds", "Time between tokens.", _TOKEN_LATENCY_BUCKETS_S
        )
        self.tpot = histogram(
            "corral:time_per_output_token_seconds",
            "Mean time per output token of each finished request.",
            _TOKEN_LATENCY_BUCKETS_S,
        )
        self.e2e = histogram(
            "corral:e2e_request_latency_seconds",
            "Arrival to finish.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.queue_time = histogram(
            "corral:request_queue_time_seconds",
            "Arrival to first scheduled.",
            _REQUEST_LATENCY_BUCKETS_S,
        )
        self.prompt_len = histogram(
            "corral:request_prompt_tokens", "Prompt tokens per request.", _token_buckets()
        )
        self.generation_len = histogram(
            "corral:request_generation_tokens", "Generated tokens per request.", _token_buckets()
        )
        self._last: SchedulerStats | None = None
        self.spec_decode: SpecDecodeMetrics | None = None
        if num_speculative_tokens is not None:
            self.spec_decode = SpecDecodeMetrics(registry, values, num_speculative_tokens)
        self.kv_transfer: KVTransferMetrics | None = None
        self.moe: MoEMetrics | None = None
        self.session_pins: Any = None  # SessionPinMetrics, from the first stats that have pins
        self.lora: LoRAMetrics | None = None
        if max_loras is not None:
            self.lora = LoRAMetrics(registry, values, max_loras)
        self._slo_gauges: dict[str, Any] = {}
        self.engine_healthy.set(1)

    def observe(self, stats: IterationStats) -> None:
        """Apply one batch of engine stats (an AsyncLLM stat logger)."""
        if stats.scheduler is not None:
            self._scheduler(stats.scheduler)
        if stats.num_prompt_tokens:
            self.prompt_tokens.inc(stats.num_prompt_tokens)
        if stats.num_generation_tokens:
            self.generation_tokens.inc(stats.num_generation_tokens)
        for value in stats.time_to_first_tokens_s:
            self.ttft.observe(value)
        for value in stats.inter_token_latencies_s:
            self.itl.observe(value)
        for finished in stats.finished:
            self.request_success.labels(
                finished_reason=finished.finish_reason, **self._values
            ).inc()
            self.e2e.observe(finished.e2e_latency_s)
            if finished.queue_time_s is not None:
                self.queue_time.observe(finished.queue_time_s)
            if finished.time_per_output_token_s is not None:
                self.tpot.observe(finished.time_per_output_token_s)
            self.prompt_len.observe(finished.num_prompt_tokens)
            self.generation_len.observe(finished.num_generation_tokens)

    def _scheduler(self, stats: SchedulerStats) -> None:
        self.num_running.set(stats.num_running)
        self.num_waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        last = self._last
        # The scheduler's counters are cumulative; Prometheus counters take increments.
        for field_name, metric in self._cumulative.items():
            now = getattr(stats, field_name)
            before = getattr(last, field_name) if last else 0
            if now > before:
                metric.inc(now - before)
        if stats.spec_decode is not None:
            if self.spec_decode is None:  # not announced at construction: series from now on
                self.spec_decode = SpecDecodeMetrics(self.registry, self._values, 0)
            self.spec_decode.observe(stats.spec_decode)
        if stats.lora is not None:
            if self.lora is None:  # not announced at construction
                self.lora = LoRAMetrics(self.registry, self._values, None)
            self.lora.observe(stats.lora)
        if stats.kv_transfer is not None:
            if self.kv_transfer is None:
                self.kv_transfer = KVTransferMetrics(self.registry, self._values)
            self.kv_transfer.observe(stats.kv_transfer)
        if stats.session_pins is not None:
            if self.session_pins is None:
                from corral.serve.session_metrics import SessionPinMetrics

                self.session_pins = SessionPinMetrics(self.registry, self._values)
            self.session_pins.observe(stats.session_pins)
        if stats.expert_tokens is not None:
            if self.moe is None:
                self.moe = MoEMetrics(self.registry, self._values)
            self.moe.observe(stats.expert_tokens)
        self._last = stats

    def set_cache_config(self, block_size: int, num_blocks: int) -> None:
        """The KV pool's geometry as vLLM's cache_config_info (an info gauge at 1 whose labels
        carry block_size and num_gpu_blocks), under vllm: and corral:, for routers that size
        their view of each replica's prefix cache from it."""
        info = {"block_size": str(block_size), "num_gpu_blocks": str(num_blocks)}
        for prefix, base in (
            ("vllm:", {**self._values, "engine": VLLM_ENGINE}),
            ("corral:", self._values),
        ):
            gauge = Gauge(
                prefix + "cache_config_info",
                "KV cache geometry (labels); value 1.",
                [*base, *info],
                registry=self.registry,
            )
            gauge.labels(**base, **info).set(1)

    def count_rejected(self, error: Any) -> None:
        status = getattr(error, "status_code", 500)
        self.request_rejected.labels(status=str(status), **self._values).inc()

    def set_slo(self, slo: SLOStats) -> None:
        """The scheduler's waits and per-class SLO attainment (corral:slo_*{slo_class=...}),
        read from the core when /metrics is scraped (nothing on the step path)."""
        for name, labels, value in slo.as_metrics():
            key = "corral:" + name
            gauge = self._slo_gauges.get(key)
            if gauge is None:
                gauge = Gauge(
                    key, _SLO_DOCS.get(name, name), ["model_name", *labels], registry=self.registry
                )
                self._slo_gauges[key] = gauge
            gauge.labels(**self._values, **labels).set(value)

    def render(self, engine_alive: bool) -> bytes:
        self.engine_healthy.set(1 if engine_alive else 0)
        return generate_latest(self.registry)


class SpecDecodeMetrics:
    """vLLM's speculative decoding counters (vllm:spec_decode_* -> corral:spec_decode_*), fed
    the scheduler's cumulative SpecDecodeStats snapshots: drafts (verification rounds), draft
    tokens scored, draft tokens accepted, and accepted tokens per draft position."""

    def __init__(
        self, registry: CollectorRegistry, values: dict[str, str], num_positions: int
    ) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, list(values), registry=registry).labels(**values)

        self._values = values
        self.num_drafts = counter(
            "corral:spec_decode_num_drafts", "Speculative verification rounds (request-steps)."
        )
        self.num_draft_tokens = counter(
            "corral:spec_decode_num_draft_tokens", "Draft tokens scored by the target model."
        )
        self.num_accepted_tokens = counter(
            "corral:spec_decode_num_accepted_tokens", "Draft tokens accepted."
        )
        self._per_pos = Counter(
            "corral:spec_decode_num_accepted_tokens_per_pos",
            "Rounds whose draft token at position (0-based) was accepted.",
            [*values, "position"],
            registry=registry,
        )
        self.accepted_per_pos: list[Any] = []
        self._grow(num_positions)
        self._last = SpecDecodeStats()

    def _grow(self, num_positions: int) -> None:
        while len(self.accepted_per_pos) < num_positions:
            position = str(len(self.accepted_per_pos))
            self.accepted_per_pos.append(self._per_pos.labels(position=position, **self._values))

    def observe(self, stats: SpecDecodeStats) -> None:
        """Apply one cumulative snapshot (counters move by the increase since the last one)."""
        last = self._last
        for metric, now, before in (
            (self.num_drafts, stats.num_drafts, last.num_drafts),
            (self.num_draft_tokens, stats.num_draft_tokens, last.num_draft_tokens),
            (self.num_accepted_tokens, stats.num_accepted_tokens, last.num_accepted_tokens),
        ):
            if now > before:
                metric.inc(now - before)
        per_pos, last_per_pos = stats.num_accepted_tokens_per_pos, last.num_accepted_tokens_per_pos
        self._grow(len(per_pos))
        for position, now in enumerate(per_pos):
            before = last_per_pos[position] if position < len(last_per_pos) else 0
            if now > before:
                self.accepted_per_pos[position].inc(now - before)
        self._last = stats


def _token_buckets() -> tuple[float, ...]:
    buckets, value = [], 1
    while value <= 2**20:
        buckets += [value, 2 * value, 5 * value]
        value *= 10
    return tuple(float(b) for b in buckets)
