"""KV transfer (disaggregation) series on /metrics, fed the scheduler's cumulative
KVTransferStats snapshots."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from corral.kv_transfer.messages import KVTransferStats
from corral.serve.stats_series import StatsSeries

# KVTransferStats field -> (series, help).
_COUNTERS = {
    "num_leases": ("corral:kv_transfer_leases", "Prompt KV leases lent to decode engines."),
    "num_leases_acked": (
        "corral:kv_transfer_leases_acked",
        "Leases whose decode engine acknowledged a verified copy.",
    ),
    "num_leases_expired": (
        "corral:kv_transfer_leases_expired",
        "Leases freed after --kv-lease-timeout-s without a fetch.",
    ),
    "num_leases_failed": (
        "corral:kv_transfer_leases_failed",
        "Leases refused or not delivered (the decode engine recomputed).",
    ),
    "num_fetches": ("corral:kv_transfer_fetches", "Prompt KV fetches started."),
    "num_fetches_ok": ("corral:kv_transfer_fetches_ok", "Fetches installed as prefix blocks."),
    "num_fetches_failed": (
        "corral:kv_transfer_fetches_failed",
        "Fetches refused, corrupt or unreachable: the prompt was computed here.",
    ),
    "num_fetches_skipped": (
        "corral:kv_transfer_fetches_skipped",
        "Leases not fetched (another model or layout, no free blocks): computed here.",
    ),
    "fetched_bytes": ("corral:kv_transfer_fetched_bytes", "Bytes of KV fetched."),
    "fetch_seconds": (
        "corral:kv_transfer_fetch_seconds",
        "Time spent fetching (connect to verified copy), summed over fetches.",
    ),
}


class KVTransferMetrics(StatsSeries):
    def __init__(self, registry: CollectorRegistry, values: dict[str, str]) -> None:
        super().__init__(registry, values, _COUNTERS, {}, KVTransferStats())
