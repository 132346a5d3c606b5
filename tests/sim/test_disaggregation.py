"""Prefill/decode disaggregation: hand-computed times with a KV transfer."""

from __future__ import annotations

import pytest

from corral.sim.config import ClusterSpec
from tests.sim.helpers import instance, run, spec, workload


def test_first_token_from_prefill_then_transfer_then_decode():
    # 10 ms + 1 ms/token steps; KV is 1000 bytes/token at 1 MB/s plus 1 ms latency.
    #   prefill instance: 32 tokens -> first token at 42 ms
    #   transfer: 32 000 bytes -> 32 ms + 1 ms -> arrives at 75 ms
    #   decode instance: one token per step (11 ms) -> 86 ms, 97 ms
    cluster = ClusterSpec(
        (instance(role="prefill"), instance(role="decode")),
        kv_transfer_bandwidth_bytes_per_s=1e6,
        kv_transfer_latency_s=0.001,
        check_integrity=True,
    )
    result = run(cluster, workload(spec("A", 0.0, 32, 3)))
    (record,) = result.records
    assert list(record.token_times_s) == pytest.approx([0.042, 0.086, 0.097])
    prefill, decode = result.instances
    assert prefill.num_batched_tokens == 32 and decode.num_batched_tokens == 2
    assert decode.kv.num_external_tokens == 32
    assert result.routes["A"] == [0, 1]


def test_one_token_requests_never_reach_the_decode_pool():
    cluster = ClusterSpec((instance(role="prefill"), instance(role="decode")))
    result = run(cluster, workload(spec("A", 0.0, 20, 1)))
    assert list(result.records[0].token_times_s) == pytest.approx([0.030])
    assert result.instances[1].num_assigned == 0


def test_decode_side_preemption_recomputes_locally():
    # The decode pool is tiny (6 blocks of 16): two 40-token requests cannot both keep growing,
    # so one is preempted and recomputed from scratch on the decode instance.
    cluster = ClusterSpec(
        (instance(role="prefill"), instance(role="decode", num_blocks=6, max_model_len=96)),
        check_integrity=True,
    )
    result = run(cluster, workload(spec("A", 0.0, 40, 40), spec("B", 0.0, 40, 40)))
    decode = result.instances[1]
    assert decode.scheduler.num_preemptions > 0
    assert [r.num_output_tokens for r in result.records] == [40, 40]
    assert decode.num_batched_tokens > 2 * 39  # the recomputation shows


def test_mixed_and_disaggregated_instances_cannot_be_combined():
    with pytest.raises(ValueError, match="prefill and decode instances only"):
        ClusterSpec((instance(role="prefill"), instance()))
