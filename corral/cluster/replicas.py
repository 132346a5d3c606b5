"""The router's view of its replicas: load (the routing policies' ReplicaLoad), health, and the
numbers scraped from each replica's /metrics.

Load: num_outstanding_requests is the router's own count of requests in flight to the replica
(exact and instant), plus the requests the last /metrics scrape saw beyond those (other
clients of the same replica); kv_load is the scraped KV usage. Health: see HealthState.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

# Used until (or unless) a replica reports its KV geometry in /metrics (a *:cache_config_info
# series with block_size and num_gpu_blocks labels, as vLLM exports): corral's default block
# size, and a pool size that only bounds the prefix-aware policy's estimate of each cache.
DEFAULT_BLOCK_SIZE = 16
DEFAULT_NUM_BLOCKS = 4096

# Metric names, without their prefix; vllm: names are preferred to corral: ones when both exist.
METRIC_PREFIXES = ("vllm:", "corral:")
_RUNNING, _WAITING, _KV_USAGE, _CACHE_INFO = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_perc",
    "cache_config_info",
)


class ScrapedMetrics:
    """The numbers the router reads from one /metrics page (None: not in the page)."""

    __slots__ = ("num_running", "num_waiting", "kv_usage", "block_size", "num_blocks")

    def __init__(self) -> None:
        self.num_running: float | None = None
        self.num_waiting: float | None = None
        self.kv_usage: float | None = None
        self.block_size: int | None = None
        self.num_blocks: int | None = None


def parse_metrics(text: str) -> ScrapedMetrics:
    """Read running, waiting, KV usage and the KV geometry from Prometheus text, under the
    vllm: or the corral: names (vllm: wins); several label sets (models) are summed (requests)
    or maxed (KV usage). Raises ValueError on text that is not Prometheus exposition."""
    found: dict[str, dict[str, list[tuple[dict[str, str], float]]]] = {}
    for family in text_string_to_metric_families(text):
        prefix = next((p for p in METRIC_PREFIXES if family.name.startswith(p)), None)
        if prefix is None:
            continue
        name = family.name[len(prefix) :]
        if name in (_RUNNING, _WAITING, _KV_USAGE, _CACHE_INFO):
            samples = [(s.labels, s.value) for s in family.samples if s.name == family.name]
            found.setdefault(name, {})[prefix] = samples
    scraped = ScrapedMetrics()

    def preferred(name: str) -> list[tuple[dict[str, str], float]] | None:
        by_prefix = found.get(name, {})
        return next((by_prefix[p] for p in METRIC_PREFIXES if p in by_prefix), None)

    if (running := preferred(_RUNNING)) is not None:
        scraped.num_running = sum(value for _, value in running)
    if (waiting := preferred(_WAITING)) is not None:
        scraped.num_waiting = sum(value for _, value in waiting)
    if usage := preferred(_KV_USAGE):
        scraped.kv_usage = max(value for _, value in usage)
    for labels, _ in preferred(_CACHE_INFO) or ():
        scraped.block_size = _positive_int(labels.get("block_size")) or scraped.block_size
        blocks = labels.get("num_gpu_blocks") or labels.get("num_blocks")
        scraped.num_blocks = _positive_int(blocks) or scraped.num_blocks
    return scraped


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(float(text)) if text else None
    except ValueError:
        return None
    return value if value and value > 0 else None


@dataclass(slots=True)
class HealthState:
    """Consecutive health checks and what they decide.

    A replica that has never been healthy joins at its first healthy check. Once in, it leaves
    after unhealthy_after failed checks in a row (or at once, on eject(): the router could not
    connect to it); once out, it rejoins after healthy_after healthy checks in a row.
    """

    unhealthy_after: int
    healthy_after: int
    is_available: bool = False
    has_been_healthy: bool = False
    num_failures_in_row: int = 0
    num_successes_in_row: int = 0

    def record(self, is_healthy: bool) -> bool | None:
        """Count one check; returns the new availability when it changed, else None."""
        if is_healthy:
            self.num_failures_in_row = 0
            self.num_successes_in_row += 1
            threshold = self.healthy_after if self.has_been_healthy else 1
            if not self.is_available and self.num_successes_in_row >= threshold:
                self.is_available = self.has_been_healthy = True
                return True
        else:
            self.num_successes_in_row = 0
            self.num_failures_in_row += 1
            if self.is_available and self.num_failures_in_row >= self.unhealthy_after:
                self.is_available = False
                return False
        return None

    def eject(self) -> bool:
        """Out of the rotation now (a connection to it failed); True if it was in."""
        self.num_successes_in_row = 0
        self.num_failures_in_row = max(self.num_failures_in_row, self.unhealthy_after)
        was_available, self.is_available = self.is_available, False
        return was_available


@dataclass(slots=True)
class Replica:
    """One backend: its URL, its load as the routing policies read it, and its health."""

    index: int
    url: str
    health: HealthState
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int = DEFAULT_NUM_BLOCKS
    kv_load: float = 0.0
    # Requests the router has sent and not yet seen finish (responses or streams still open).
    num_in_flight: int = 0
    # Requests the last scrape saw running or waiting beyond the router's own at that moment.
    num_external: int = 0
    last_error: str | None = field(default=None, repr=False)
    # The pool it serves in a disaggregated router ("prefill" or "decode"); "" otherwise.
    pool: str = ""
    # Taken out of the rotation by an operator (POST /admin/drain): its requests move out.
    is_draining: bool = False
    # Requests waiting (queued or preempted) at the last scrape: KV pressure when above 0.
    num_waiting: int = 0

    @property
    def num_outstanding_requests(self) -> int:
        return self.num_in_flight + self.num_external

    @property
    def is_available(self) -> bool:
        return self.health.is_available and not self.is_draining

    def apply_scrape(self, scraped: ScrapedMetrics) -> None:
        """Take a scrape's numbers; those the page lacks keep their last values."""
        if scraped.num_running is not None or scraped.num_waiting is not None:
            total = (scraped.num_running or 0) + (scraped.num_waiting or 0)
            self.num_external = max(0, round(total) - self.num_in_flight)
            self.num_waiting = round(scraped.num_waiting or 0)
        if scraped.kv_usage is not None:
            self.kv_load = min(1.0, max(0.0, scraped.kv_usage))
        if scraped.block_size is not None:
            self.block_size = scraped.block_size
        if scraped.num_blocks is not None:
            self.num_blocks = scraped.num_blocks


def make_replicas(
    urls: Iterable[str],
    *,
    unhealthy_after: int,
    healthy_after: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    num_blocks: int = DEFAULT_NUM_BLOCKS,
    pool: str = "",
) -> list[Replica]:
    """One Replica per URL (trailing slashes dropped), out of the rotation until checked;
    pool names the pool they form in a disaggregated router."""
    if unhealthy_after < 1 or healthy_after < 1:
        raise ValueError(
            f"unhealthy_after and healthy_after must be >= 1, got {unhealthy_after} and "
            f"{healthy_after}"
        )
    return [
        Replica(
            index,
            url.rstrip("/"),
            HealthState(unhealthy_after, healthy_after),
            block_size=block_size,
            num_blocks=num_blocks,
            pool=pool,
        )
        for index, url in enumerate(urls)
    ]
