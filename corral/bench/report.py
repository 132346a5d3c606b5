"""The report of a `corral bench serve` run: the shared summary table (corral.workloads.metrics)
plus what only a client sees (how output tokens were counted, outputs that missed their forced
length, how late requests went out, the server's speculative decoding acceptance over the run
when it exports those counters), and the JSON document with every record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from corral.bench.client import ServeRun
from corral.bench.spec_decode import SpecDecodeCounts
from corral.core.slo_target import SLO
from corral.workloads.metrics import MetricsSummary, format_summary, summarize


@dataclass(frozen=True, slots=True)
class ServeReport:
    summary: MetricsSummary
    run: ServeRun
    token_sources: dict[str, int]  # usage | chunks -> completed requests counted that way
    num_wrong_length: int  # completed requests whose output differs from the forced length
    send_delay_ms: tuple[float, float, float]  # mean, p99, max over every sent request
    # The server's speculative decoding counters over the run (/metrics after - before); None
    # when it exports none (speculation off, or no /metrics).
    spec_decode: SpecDecodeCounts | None = None

    def format(self, title: str, max_num_error_lines: int = 8) -> str:
        """The summary table with the client's own lines appended; the most frequent
        max_num_error_lines distinct errors are listed (every one is in to_dict's records)."""
        summary = self.summary
        if len(summary.errors) > max_num_error_lines:
            ranked = sorted(summary.errors.items(), key=lambda item: (-item[1], item[0]))
            shown = dict(ranked[:max_num_error_lines])
            rest = ranked[max_num_error_lines:]
            shown[f"... {len(rest)} more distinct errors (see --result-json)"] = sum(
                count for _, count in rest
            )
            summary = replace(summary, errors=shown)
        sources = ", ".join(f"{name} {count}" for name, count in sorted(self.token_sources.items()))
        mean, p99, peak = self.send_delay_ms
        lines = [
            format_summary(summary, title),
            f"{'Output tokens counted from:':<40}{sources or '-'}",
            f"{'Outputs not of the forced length:':<40}{self.num_wrong_length}",
            f"{'Send delay vs plan (ms) mean/p99/max:':<40}{mean:.1f} / {p99:.1f} / {peak:.1f}",
            f"{'Max requests in flight:':<40}{self.run.max_in_flight}",
        ]
        spec = self.spec_decode
        if spec is not None:
            rate, length = spec.acceptance_rate, spec.mean_accepted_length
            positions = " / ".join(f"{value:.2f}" for value in spec.per_position_acceptance)
            lines += [
                f"{'Spec decode acceptance rate:':<40}{'-' if rate is None else f'{rate:.3f}'}",
                f"{'Spec decode mean accepted length:':<40}"
                f"{'-' if length is None else f'{length:.2f}'}",
                f"{'Spec decode drafts / draft tokens:':<40}"
                f"{spec.num_drafts} / {spec.num_draft_tokens}",
                f"{'Spec decode acceptance per position:':<40}{positions or '-'}",
            ]
        return "\n".join(lines)

    def to_dict(self, *, with_records: bool = True, **metadata: Any) -> dict[str, Any]:
        """JSON-ready: metadata, the summary, the client's extras, and every request's record."""
        mean, p99, peak = self.send_delay_ms
        document = {
            **metadata,
            "summary": self.summary.to_dict(),
            "output_token_sources": self.token_sources,
            "num_wrong_output_length": self.num_wrong_length,
            "send_delay_ms": {"mean": mean, "p99": p99, "max": peak},
            "max_in_flight": self.run.max_in_flight,
            "spec_decode": self.spec_decode.to_dict() if self.spec_decode is not None else None,
        }
        if with_records:
            document["records"] = [record.to_dict() for record in self.run.records]
        return document


def build_report(
    run: ServeRun,
    slo: SLO | None = None,
    *,
    force_output_len: bool = True,
    spec_decode: SpecDecodeCounts | None = None,
) -> ServeReport:
    """Summarize a run over its measured wall time (start to the end of the last request);
    spec_decode: the server's speculative decoding counters over the run, if it has them."""
    records = [record.record for record in run.records]
    summary = summarize(records, duration_s=run.duration_s, slo=slo)
    done = [record for record in run.records if record.record.is_ok]
    sources = Counter(record.output_token_source for record in done)
    wrong = 0
    if force_output_len:
        wrong = sum(
            record.record.num_output_tokens != record.num_expected_output_tokens for record in done
        )
    delays = np.array([record.send_delay_s * 1e3 for record in run.records], dtype=np.float64)
    delay = (
        (float(delays.mean()), float(np.percentile(delays, 99)), float(delays.max()))
        if delays.size
        else (0.0, 0.0, 0.0)
    )
    return ServeReport(summary, run, dict(sources), wrong, delay, spec_decode)
