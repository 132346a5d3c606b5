"""The client's records and the summary for a known schedule, on virtual time: every latency
below is exact (what the scripted server did), not measured."""

from __future__ import annotations

import pytest

from corral.bench.report import build_report
from corral.core.slo_target import SLO
from tests.bench.scripted import Script, run_scripted, text_specs, token_script

# r_i arrives at 0.5 * i; its first token after TTFTS[i], then one token every GAPS[i].
TTFTS = [0.1, 0.2, 0.3, 0.4, 1.0]
GAPS = [0.01, 0.02, 0.03, 0.04, 0.05]
NUM_TOKENS = 5


def schedule(path: str, payload: dict) -> Script:
    index = int(payload["prompt"][1:])
    return token_script(TTFTS[index], GAPS[index], NUM_TOKENS, num_prompt=10 + index)


def test_known_schedule_gives_exact_ttft_tpot_percentiles_and_goodput():
    workload = text_specs([0.0, 0.5, 1.0, 1.5, 2.0], num_output=NUM_TOKENS)
    run, transport = run_scripted(workload, schedule)
    # Requests left exactly at their arrival times, in order.
    assert [t for t, _, _ in transport.requests] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    records = [r.record for r in run.records]
    assert [r.ttft_s for r in records] == pytest.approx(TTFTS)
    assert [r.tpot_s for r in records] == pytest.approx(GAPS)
    assert [r.e2e_s for r in records] == pytest.approx([t + 4 * g for t, g in zip(TTFTS, GAPS)])
    assert [r.num_prompt_tokens for r in records] == [10, 11, 12, 13, 14]  # from usage
    assert {r.output_token_source for r in run.records} == {"usage"}
    # The last request ends at 2.0 + 1.0 + 4 * 0.05 = 3.2 s.
    assert run.duration_s == pytest.approx(3.2)

    report = build_report(run, SLO(ttft_s=0.35, tpot_s=0.035))
    s = report.summary
    assert s.num_completed == 5 and s.num_failed == 0
    assert s.ttft.mean_ms == pytest.approx(400)
    assert s.ttft.median_ms == pytest.approx(300)
    assert s.ttft.p90_ms == pytest.approx(760)  # 400 + 0.6 * (1000 - 400)
    assert s.ttft.p99_ms == pytest.approx(976)  # 400 + 0.96 * 600
    assert s.tpot.mean_ms == pytest.approx(30)
    assert s.tpot.p90_ms == pytest.approx(46)
    assert s.tpot.p99_ms == pytest.approx(49.6)
    assert s.itl.count == 20 and s.itl.max_ms == pytest.approx(50)
    # r0, r1, r2 meet both bounds; r3 and r4 miss TTFT.
    assert s.num_slo_met == 3
    assert s.goodput == pytest.approx(3 / 3.2)
    assert s.request_throughput == pytest.approx(5 / 3.2)
    assert s.output_throughput == pytest.approx(25 / 3.2)
    assert s.input_throughput == pytest.approx(60 / 3.2)
    assert report.num_wrong_length == 0
    assert report.send_delay_ms == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)


def test_chunks_with_several_tokens_use_the_usage_count_for_tpot():
    def script(path: str, payload: dict) -> Script:
        # 10 tokens in 4 chunks (3, 3, 3, 1) at 0.2, 0.5, 0.8, 1.1 s.
        return token_script(0.2, 0.3, 10, tokens_per_chunk=3)

    run, _ = run_scripted(text_specs([0.0], num_output=10), script)
    record = run.records[0]
    assert record.record.num_output_tokens == 10 and record.num_chunks == 4
    assert record.record.tpot_s == pytest.approx((1.1 - 0.2) / 9)
    summary = build_report(run).summary
    assert summary.itl.count == 3 and summary.itl.mean_ms == pytest.approx(300)


def test_without_usage_tokens_are_counted_from_chunks_and_the_record_says_so():
    run, _ = run_scripted(
        text_specs([0.0], num_output=6), lambda p, b: token_script(0.1, 0.1, 6, with_usage=False)
    )
    record = run.records[0]
    assert record.output_token_source == "chunks"
    assert record.record.num_output_tokens == 6
    assert record.record.num_prompt_tokens == 10  # the workload's count, lacking usage
    report = build_report(run)
    assert report.token_sources == {"chunks": 1}
    assert "chunks 1" in report.format("t")


def test_short_outputs_are_reported_when_lengths_are_forced():
    run, transport = run_scripted(
        text_specs([0.0, 0.0], num_output=8), lambda p, b: token_script(0.1, 0.1, 5)
    )
    assert all(
        payload["ignore_eos"] and payload["max_tokens"] == 8 for _, _, payload in transport.requests
    )
    assert build_report(run).num_wrong_length == 2


def test_max_concurrency_holds_requests_until_a_slot_frees():
    # Four requests at t = 0, each taking 1 s (TTFT 0.5 s), two slots.
    run, transport = run_scripted(
        text_specs([0.0] * 4), lambda p, b: token_script(0.5, 0.25, 3), max_concurrency=2
    )
    sends = sorted(t for t, _, _ in transport.requests)
    assert sends == pytest.approx([0.0, 0.0, 1.0, 1.0])
    assert run.max_in_flight == 2
    # TTFT counts from the send, not from the planned arrival; the wait is the send delay.
    assert [r.record.ttft_s for r in run.records] == pytest.approx([0.5] * 4)
    assert sorted(r.send_delay_s for r in run.records) == pytest.approx([0, 0, 1, 1])
    assert run.duration_s == pytest.approx(2.0)
