"""SimAutoscaleSpec: how the cluster simulator autoscales (policy, cold start, decision interval),
and the default cold start: the one measured by benchmarks/cold_start.py on the machine that
wrote docs/figures/cold_start.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from corral.cluster.autoscaling import AutoscalingConfig

# Used when docs/figures/cold_start.json is absent or unreadable (an installed package without
# the repository's docs): an assumption, not a measurement.
FALLBACK_COLD_START_S = 10.0
COLD_START_FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures" / "cold_start.json"
# The run of benchmarks/cold_start.py whose time to /health is the default.
DEFAULT_COLD_START_MODEL = "corral-demo"


def measured_cold_start_s(path: Path = COLD_START_FIGURES) -> float | None:
    """The median time from `corral serve` process start to its first 200 on /health of the
    demo model in the figures file (None when the file or that run is absent)."""
    try:
        document = json.loads(path.read_text())
        value = float(document["runs"][DEFAULT_COLD_START_MODEL]["ready_s"]["median"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def default_cold_start_s() -> float:
    """measured_cold_start_s(), else FALLBACK_COLD_START_S."""
    measured = measured_cold_start_s()
    return FALLBACK_COLD_START_S if measured is None else measured


@dataclass(frozen=True, slots=True)
class SimAutoscaleSpec:
    """An autoscaled simulated cluster: the policy's config, the replicas it starts with (in
    [min_replicas, max_replicas], ready at time 0), the virtual seconds from a start decision to
    the instance taking requests (cold start), and the virtual seconds between decisions."""

    config: AutoscalingConfig
    initial_replicas: int
    cold_start_s: float
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        config = self.config
        if not config.min_replicas <= self.initial_replicas <= config.max_replicas:
            raise ValueError(
                f"initial_replicas {self.initial_replicas} is outside "
                f"[{config.min_replicas}, {config.max_replicas}]"
            )
        if not (self.cold_start_s >= 0 and math.isfinite(self.cold_start_s)):
            raise ValueError(f"cold_start_s must be >= 0, got {self.cold_start_s}")
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ValueError(f"the autoscaling interval must be > 0 s, got {self.interval_s}")
