"""Session KV pin series on /metrics (`--session-kv-ttl-s`), fed the scheduler's
SessionPinStats snapshots (corral/core/session_pins.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from corral.core.session_pins import SessionPinStats
from corral.serve.stats_series import StatsSeries

# SessionPinStats field -> (series, help).
_COUNTERS = {
    "num_pinned": ("corral:session_pins", "Finished turns whose KV was pinned for the next turn."),
    "num_hits": ("corral:session_pin_hits", "Next turns admitted while their session's pin held."),
    "num_expired": ("corral:session_pins_expired", "Pins released at --session-kv-ttl-s."),
    "num_reclaimed": (
        "corral:session_pins_reclaimed",
        "Pins released because running or admitted requests needed the blocks.",
    ),
}
_GAUGES = {
    "num_active": ("corral:session_pins_active", "Paused conversations whose KV is pinned now."),
    "num_pinned_blocks": ("corral:session_pinned_blocks", "KV blocks held by session pins now."),
}


class SessionPinMetrics(StatsSeries):
    def __init__(self, registry: CollectorRegistry, values: dict[str, str]) -> None:
        super().__init__(registry, values, _COUNTERS, _GAUGES, SessionPinStats())
