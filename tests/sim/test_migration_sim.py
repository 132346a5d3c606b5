"""Live migration in the simulator: the router's rebalancing rule moves running requests from
a KV-loaded instance to an idle one with the engine's own migrate_out and the KV connector; every
request still gets all its tokens, leases are acked, nothing leaks, and the loaded instance
stops preempting."""

from __future__ import annotations

import pytest

from corral.core.migration import pick_rebalance
from corral.sim.config import ClusterSpec
from tests.sim.helpers import instance, run, spec, workload
from tests.sim.test_disaggregation import assert_all_released


def skewed():
    # Round robin puts the long requests (A, C, E) on instance 0 and the short ones on 1: 3 x
    # (32 + 300) tokens need 63 blocks of instance 0's 40; instance 1 idles after its short ones.
    requests = []
    for index, name in enumerate("ABCDEF"):
        num_output = 300 if index % 2 == 0 else 4
        requests.append(spec(name, 0.001 * index, 32, num_output))
    return workload(*requests)


def cluster(**fields) -> ClusterSpec:
    return ClusterSpec(
        (instance(num_blocks=40, max_model_len=400), instance(num_blocks=40, max_model_len=400)),
        router="round-robin",
        check_integrity=True,
        kv_transfer_bandwidth_bytes_per_s=1e8,
        **fields,
    )


def test_rebalancing_moves_requests_to_the_idle_instance_and_ends_preemption():
    still = run(cluster(), skewed())
    moved = run(cluster(rebalance_kv_usage=0.7, rebalance_interval_s=0.05), skewed())
    for result in (still, moved):
        assert [r.num_output_tokens for r in result.records] == [300, 4] * 3
    assert_all_released(moved)
    assert still.instances[0].scheduler.num_preemptions > 0
    assert (
        moved.instances[0].scheduler.num_preemptions < still.instances[0].scheduler.num_preemptions
    )
    routes = [moved.routes[name] for name in "ACE"]
    assert [0, 1] in routes  # a long request went on at instance 1
    lent = moved.instances[0].scheduler.connector.stats
    fetched = moved.instances[1].scheduler.connector.stats
    assert lent.num_leases >= 1 and lent.num_leases_acked == lent.num_leases
    assert fetched.num_fetches_ok == lent.num_leases and fetched.fetched_bytes > 0
    # The moved requests' KV arrived: instance 1 computed far fewer tokens than they held.
    assert moved.instances[1].kv.stats.prefix_hit_tokens >= 16 * lent.num_leases


def test_without_pressure_nothing_moves():
    result = run(cluster(rebalance_kv_usage=0.99), workload(spec("A", 0.0, 32, 8)))
    assert result.routes["A"] == [0]
    assert result.instances[0].scheduler.connector.stats.num_leases == 0


@pytest.mark.parametrize(
    ("usages", "expected"),
    [([0.9, 0.2], (0, 1)), ([0.2, 0.95, 0.5], (1, 0)), ([0.9, 0.8], None), ([0.5, 0.1], None),
     ([0.9], None)],
)  # fmt: skip
def test_pick_rebalance(usages, expected):
    assert pick_rebalance(usages, 0.85, 0.2) == expected


def test_bad_rebalance_settings_are_refused():
    with pytest.raises(ValueError, match="rebalance_kv_usage"):
        cluster(rebalance_kv_usage=1.5)


def test_pick_rebalance_moves_only_off_an_instance_with_requests_waiting():
    assert pick_rebalance([0.95, 0.3], 0.85, 0.2, [0, 0]) is None  # well used, no pressure
    assert pick_rebalance([0.95, 0.3], 0.85, 0.2, [2, 0]) == (0, 1)
    assert pick_rebalance([0.95, 0.3], 0.85, 0.2, [2, 1]) is None  # the target queues too
    assert pick_rebalance([0.95, 0.9, 0.3], 0.85, 0.2, [0, 3, 0]) == (1, 2)
