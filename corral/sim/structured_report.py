"""The simulation report's constrained-decoding part: how many requests carried a grammar, how
long their compiles held them back, what the masks cost, and their time to first token beside
the unconstrained requests'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.sim.grammar_step import SimStructuredStats
from corral.sim.structured import StructuredSimConfig
from corral.workloads.metrics import RequestRecord


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True, slots=True)
class StructuredReport:
    config: dict  # StructuredSimConfig.describe()
    num_requests: int
    num_constrained_requests: int
    stats: SimStructuredStats  # summed over the instances
    mean_ttft_constrained_s: float | None  # over completed requests (None: none)
    mean_ttft_unconstrained_s: float | None

    @classmethod
    def of(
        cls,
        config: StructuredSimConfig,
        stats: SimStructuredStats,
        records: Sequence[RequestRecord],
        grammars: Mapping[str, int],
    ) -> StructuredReport:
        constrained: list[float] = []
        unconstrained: list[float] = []
        for record in records:
            if record.is_ok:
                ttft_s = record.token_times_s[0] - record.arrival_time_s
                (constrained if record.request_id in grammars else unconstrained).append(ttft_s)
        return cls(
            config.describe(),
            len(records),
            sum(1 for record in records if record.request_id in grammars),
            stats,
            _mean(constrained),
            _mean(unconstrained),
        )


def _ms(value_s: float | None) -> str:
    return "-" if value_s is None else f"{value_s * 1e3:.3f} ms"


def format_structured_report(report: StructuredReport, busy_time_s: float) -> list[str]:
    stats = report.stats
    share = report.num_constrained_requests / report.num_requests if report.num_requests else 0
    mask_share = f", {stats.mask_time_s / busy_time_s:.2%} of busy time" if busy_time_s else ""
    return [
        f"structured output: {report.num_constrained_requests} of {report.num_requests} "
        f"requests carry a grammar ({share:.1%}; {report.config['num_grammars']} distinct)",
        f"  compiles: {stats.num_cold_compiles} cold, {stats.num_cached_compiles} cached; wait "
        f"mean {_ms(stats.mean_compile_wait_s)}, max {_ms(stats.max_compile_wait_s)}",
        f"  masks: {stats.num_mask_rows} rows in {stats.num_mask_steps} steps, "
        f"{stats.mask_time_s:.3f} s{mask_share}",
        f"  TTFT mean: constrained {_ms(report.mean_ttft_constrained_s)}, unconstrained "
        f"{_ms(report.mean_ttft_unconstrained_s)}",
    ]
