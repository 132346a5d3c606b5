"""The shared metrics: exact values for scripted records."""

from __future__ import annotations

import pytest

from corral.core.slo_target import SLO, parse_slo
from corral.workloads.metrics import RequestRecord, format_summary, summarize


def scripted() -> list[RequestRecord]:
    return [
        # TTFT 0.1, E2E 0.4, TPOT (0.4 - 0.1) / 3 = 0.1, ITL 0.1, 0.1, 0.1
        RequestRecord("a", 0.0, 10, 4, [0.1, 0.2, 0.3, 0.4]),
        # TTFT 0.3, E2E 0.5, TPOT 0.2, ITL 0.2
        RequestRecord("b", 1.0, 20, 2, [1.3, 1.5]),
        # one token: no TPOT, no ITL
        RequestRecord("c", 2.0, 30, 1, [2.05]),
        RequestRecord("d", 2.5, 40, 0, [], error="HTTP 503"),
    ]


def test_exact_latencies_and_throughputs():
    summary = summarize(scripted())
    assert summary.num_completed == 3 and summary.num_failed == 1
    assert summary.errors == {"HTTP 503": 1}
    assert summary.duration_s == pytest.approx(2.05)  # first arrival 0 to last token 2.05
    assert summary.total_input_tokens == 60 and summary.total_output_tokens == 7
    assert summary.request_throughput == pytest.approx(3 / 2.05)
    assert summary.output_throughput == pytest.approx(7 / 2.05)
    assert summary.total_token_throughput == pytest.approx(67 / 2.05)
    assert summary.ttft.mean_ms == pytest.approx((100 + 300 + 50) / 3)
    assert summary.ttft.median_ms == pytest.approx(100)
    assert summary.ttft.p90_ms == pytest.approx(260)  # linear: 100 + 0.8 * (300 - 100)
    assert summary.tpot.count == 2
    assert summary.tpot.mean_ms == pytest.approx(150)
    assert summary.itl.count == 4
    assert summary.itl.mean_ms == pytest.approx(125)
    assert summary.itl.p99_ms == pytest.approx(197, rel=1e-6)  # 100 + 0.97 * 100
    assert summary.e2e.max_ms == pytest.approx(500)
    assert summary.goodput is None


def test_goodput_counts_requests_meeting_every_bound():
    summary = summarize(scripted(), slo=SLO(ttft_s=0.2, tpot_s=0.15))
    # a meets both; b misses TTFT; c has no TPOT (met) and TTFT 50
    assert summary.num_slo_met == 2
    assert summary.goodput == pytest.approx(2 / 2.05)
    summary = summarize(scripted(), duration_s=4.0, slo=SLO(e2e_s=0.45))
    assert summary.num_slo_met == 2 and summary.goodput == pytest.approx(0.5)


def test_summary_table_names_every_metric():
    text = format_summary(summarize(scripted(), slo=SLO(ttft_s=0.2)), "test")
    for label in ("TTFT", "TPOT", "ITL", "E2E", "Goodput", "error x1: HTTP 503"):
        assert label in text


def test_slo_parsing():
    assert parse_slo("ttft_ms=200, tpot_ms=50") == SLO(ttft_s=0.2, tpot_s=0.05)
    assert parse_slo("").is_empty
    with pytest.raises(ValueError, match="ttft_ms=MS"):
        parse_slo("latency=3")
    with pytest.raises(ValueError, match="not a number"):
        parse_slo("ttft_ms=fast")
    with pytest.raises(ValueError, match="> 0"):
        parse_slo("tpot_ms=-1")
