"""One instance with the `profiled` model of a fixed synthetic profile: hand-computed times."""

from __future__ import annotations

import pytest

from corral.sim.config import ClusterSpec
from corral.workloads.metrics import summarize
from tests.sim.helpers import instance, run, spec, workload


def test_two_requests_reproduce_hand_computed_times():
    # Step time = 10 ms + 1 ms per computed token.
    #   t=0      A (32 prompt, 4 out) arrives; step 1: A's prefill, 32 tokens -> 42 ms
    #   t=5 ms   B (16 prompt, 3 out) arrives during step 1 and waits for step 2
    #   t=42     A token 1; step 2: A decode + B prefill = 17 tokens -> 27 ms
    #   t=69     A token 2, B token 1; step 3: 2 decodes -> 12 ms
    #   t=81     A token 3, B token 2; step 4: 2 decodes -> 12 ms
    #   t=93     A token 4 (done), B token 3 (done)
    result = run(
        ClusterSpec((instance(),)),
        workload(spec("A", 0.0, 32, 4), spec("B", 0.005, 16, 3)),
    )
    a, b = result.records
    assert list(a.token_times_s) == pytest.approx([0.042, 0.069, 0.081, 0.093])
    assert list(b.token_times_s) == pytest.approx([0.069, 0.081, 0.093])
    assert a.ttft_s == pytest.approx(0.042) and b.ttft_s == pytest.approx(0.064)
    assert a.tpot_s == pytest.approx(0.051 / 3) and b.tpot_s == pytest.approx(0.012)
    summary = summarize(result.records)
    assert summary.ttft.mean_ms == pytest.approx(53.0)
    assert summary.e2e.max_ms == pytest.approx(93.0)
    assert summary.duration_s == pytest.approx(0.093)
    (only,) = result.instances
    assert only.num_steps == 4 and only.busy_time_s == pytest.approx(0.093)
    assert only.num_batched_tokens == 32 + 17 + 2 + 2


def test_chunked_prefill_and_idle_gap():
    # Budget 24 tokens: A's 40-token prompt takes two chunks (24 -> 34 ms, 16 -> 26 ms).
    # A finishes at 60 + 11 = 71 ms; the instance idles; B arrives at 1 s: 8-token prefill
    # (18 ms), then one decode (11 ms).
    result = run(
        ClusterSpec((instance(max_num_batched_tokens=24),)),
        workload(spec("A", 0.0, 40, 2), spec("B", 1.0, 8, 2)),
    )
    a, b = result.records
    assert list(a.token_times_s) == pytest.approx([0.060, 0.071])
    assert list(b.token_times_s) == pytest.approx([1.018, 1.029])
    assert result.instances[0].busy_time_s == pytest.approx(0.071 + 0.029)


def test_prefix_cache_hit_skips_the_shared_blocks():
    # B shares A's first 32 tokens (two full blocks) and arrives after A finished: only its
    # last 8 tokens are computed (18 ms instead of 50 ms).
    shared = tuple(range(1, 33))
    result = run(
        ClusterSpec((instance(),)),
        workload(
            spec("A", 0.0, 40, 1, prompt_token_ids=shared + tuple(range(100, 108))),
            spec("B", 1.0, 40, 1, prompt_token_ids=shared + tuple(range(200, 208))),
        ),
    )
    assert result.records[1].ttft_s == pytest.approx(0.018)
    assert result.instances[0].kv.stats.prefix_hit_tokens == 32


def test_request_hook_sees_every_request_before_routing():
    from corral.sim.cluster import ClusterSimulator

    seen = []

    def hook(request, request_spec):
        seen.append((request.request_id, request_spec.num_output_tokens, request.num_tokens))
        request.priority = 7

    simulator = ClusterSimulator(
        ClusterSpec((instance(),)),
        workload(spec("A", 0.0, 32, 4), spec("B", 0.005, 16, 3)),
        request_hook=hook,
    )
    simulator.run()
    assert seen == [("A", 4, 32), ("B", 3, 16)]
