"""Determinism and conservation: same seed same metrics; every request finishes once; token
and block counts add up at every instance."""

from __future__ import annotations

import pytest

from corral.core.slo_target import SLO
from corral.sim.config import ClusterSpec
from corral.sim.report import build_report
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.sim.helpers import instance, run


def random_workload(seed: int = 0, num_requests: int = 120, **fields):
    options = dict(
        dataset="random",
        num_requests=num_requests,
        input_len=60,
        output_len=12,
        range_ratio=0.9,
        seed=seed,
        arrival=ArrivalOptions("gamma", rate=40.0, cv=2.0),
        vocab_size=500,
    )
    options.update(fields)
    return build_workload(WorkloadOptions(**options))


def cluster(router: str = "power-of-two", num_instances: int = 3, **instance_fields):
    return ClusterSpec(
        tuple([instance(**instance_fields)] * num_instances),
        router=router,
        seed=11,
        check_integrity=True,
    )


def test_same_seed_same_metrics_to_the_last_digit():
    first = build_report(run(cluster(), random_workload()), SLO(ttft_s=0.1, tpot_s=0.03))
    second = build_report(run(cluster(), random_workload()), SLO(ttft_s=0.1, tpot_s=0.03))
    assert first.summary.to_dict() == second.summary.to_dict()
    assert first.instances == second.instances
    other = build_report(run(cluster(), random_workload(seed=1)), SLO(ttft_s=0.1, tpot_s=0.03))
    assert other.summary.to_dict() != first.summary.to_dict()


@pytest.mark.parametrize("router", ["round-robin", "least-kv", "prefix-aware"])
def test_every_request_finishes_once_with_its_tokens(router):
    work = random_workload()
    result = run(cluster(router), work)
    assert [r.request_id for r in result.records] == [s.request_id for s in work]
    for record, spec in zip(result.records, work):
        assert record.num_output_tokens == spec.num_output_tokens
        assert len(record.token_times_s) == spec.num_output_tokens
        assert list(record.token_times_s) == sorted(record.token_times_s)
        assert record.token_times_s[0] >= record.arrival_time_s
    assert sum(i.num_assigned for i in result.instances) == len(work)


def test_computed_tokens_add_up_without_caching_or_preemption():
    work = random_workload()
    result = run(cluster("round-robin", enable_prefix_caching=False), work)
    expected = sum(s.num_prompt_tokens + s.num_output_tokens - 1 for s in work)
    assert sum(i.num_batched_tokens for i in result.instances) == expected
    for inst in result.instances:
        assert inst.scheduler.num_preemptions == 0
        assert inst.kv.pool.check_integrity() == (inst.kv.num_blocks, 0, 0)


def test_blocks_add_up_under_heavy_preemption():
    # 16 blocks x 16 tokens per instance, prompts up to ~114 tokens: constant preemption.
    work = random_workload(num_requests=80)
    result = run(cluster("least-outstanding", num_blocks=16, max_model_len=256), work)
    assert sum(i.scheduler.num_preemptions for i in result.instances) > 0
    for inst in result.instances:
        num_free, num_cached, num_in_use = inst.kv.pool.check_integrity()
        assert num_in_use == 0 and num_free + num_cached == 16
        assert not inst.scheduler.has_unfinished_requests()
    for record, spec in zip(result.records, work):
        assert record.num_output_tokens == spec.num_output_tokens


def test_disaggregated_tokens_add_up():
    # Prefill instances compute every prompt (no prefix cache); decode instances compute each
    # prompt but its prefix hits (the fetched blocks) and every output token but the last.
    work = random_workload()
    pools = tuple(
        [instance(role="prefill", enable_prefix_caching=False)] * 2 + [instance(role="decode")] * 2
    )
    result = run(ClusterSpec(pools, router="least-outstanding", check_integrity=True), work)
    prefills = [i for i in result.instances if i.spec.role == "prefill"]
    decodes = [i for i in result.instances if i.spec.role == "decode"]
    assert sum(i.num_batched_tokens for i in prefills) == sum(s.num_prompt_tokens for s in work)
    assert sum(i.scheduler.num_preemptions for i in decodes) == 0
    hits = sum(i.kv.stats.prefix_hit_tokens for i in decodes)
    assert sum(i.kv.num_external_tokens for i in decodes) == sum(
        (s.num_prompt_tokens - 1) // 16 * 16 for s in work
    )
    total = sum(s.num_prompt_tokens + s.num_output_tokens - 1 for s in work)
    assert sum(i.num_batched_tokens for i in decodes) == total - hits
    for record, spec in zip(result.records, work):
        assert record.num_output_tokens == spec.num_output_tokens
    for inst in result.instances:
        assert inst.kv.pool.check_integrity()[2] == 0  # no block in use
        assert not inst.scheduler.has_unfinished_requests()


def test_multi_turn_follow_ups_wait_for_their_parent():
    work = build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=12,
            num_turns=3,
            input_len=20,
            output_len=6,
            think_time_s=0.5,
            arrival=ArrivalOptions("poisson", rate=5.0),
            vocab_size=500,
        )
    )
    result = run(cluster("prefix-aware"), work)
    records = {r.request_id: r for r in result.records}
    for spec in work:
        if spec.parent_request_id:
            parent = records[spec.parent_request_id]
            assert records[spec.request_id].arrival_time_s == pytest.approx(
                parent.token_times_s[-1] + 0.5
            )
    # Prefix-aware routing keeps a conversation on one instance: later turns hit the cache.
    assert sum(i.kv.stats.prefix_hit_tokens for i in result.instances) > 0


def test_too_long_requests_are_refused_up_front():
    work = random_workload(input_len=2000, range_ratio=0.0)
    with pytest.raises(ValueError, match="max_model_len 1024"):
        run(cluster(), work)
