"""Router policies (corral/cluster/routing.py) on a scripted imbalance, and in the simulator."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from corral.cluster.routing import RoutingRequest, make_router
from corral.sim.config import ClusterSpec
from tests.sim.helpers import instance, run, spec, workload


@dataclass
class Load:
    num_outstanding_requests: int
    kv_load: float
    num_blocks: int = 1000
    block_size: int = 4


def request(token_ids) -> RoutingRequest:
    return RoutingRequest(list(token_ids))


# Instance 0 is swamped with requests, 1 is nearly full of KV but has few, 2 is light.
IMBALANCE = [Load(9, 0.5), Load(2, 0.95), Load(3, 0.1)]


def test_round_robin_cycles_whatever_the_load():
    router = make_router("round-robin", IMBALANCE)
    assert [router.select(request([1])) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_outstanding_picks_fewest_requests():
    assert make_router("least-outstanding", IMBALANCE).select(request([1])) == 1


def test_least_outstanding_breaks_exact_ties_in_turn():
    router = make_router("least-outstanding", [Load(0, 0.0)] * 3)
    assert sorted(router.select(request([1])) for _ in range(3)) == [0, 1, 2]


def test_least_kv_picks_lowest_kv_load():
    assert make_router("least-kv", IMBALANCE).select(request([1])) == 2


def test_power_of_two_picks_the_better_of_two_samples():
    router = make_router("power-of-two", IMBALANCE, seed=3)
    picks = [router.select(request([1])) for _ in range(300)]
    # The busiest instance (0) loses every comparison; 1 beats 2 whenever both are drawn.
    assert 0 not in picks
    assert picks.count(1) == pytest.approx(200, abs=30)  # drawn with 0 or with 2: 2 of 3 pairs
    assert picks.count(2) == pytest.approx(100, abs=30)


def test_prefix_aware_follows_the_prefix_until_it_is_overloaded():
    loads = [Load(0, 0.0), Load(0, 0.0), Load(0, 0.0)]
    router = make_router("prefix-aware", loads)
    shared = list(range(100, 116))  # four full blocks of 4 tokens
    first = router.select(request(shared + [1, 2, 3, 4]))
    loads[first].num_outstanding_requests = 5
    # Same prefix goes to the same instance although it is now the busiest ...
    assert router.select(request(shared + [9, 9, 9, 9])) == first
    # ... an unrelated prompt goes to the least loaded ...
    assert router.select(request([7] * 16)) != first
    # ... and past max_imbalance (8) outstanding above the least loaded, load wins.
    loads[first].num_outstanding_requests = 20
    assert router.select(request(shared + [5, 5, 5, 5])) != first


def test_unknown_router_is_refused():
    with pytest.raises(ValueError, match="unknown router policy"):
        make_router("random-walk", IMBALANCE)


def test_policies_on_a_busy_instance_end_to_end():
    # A long request occupies instance 0 (many KV blocks); three short ones arrive later.
    # least-outstanding: s0 -> 1 (0 vs 1 requests), s1 -> 1 (1 vs 1, but 0 holds more KV),
    # s2 -> 0 (1 vs 2 requests). least-kv: all to 1 (its KV stays below the long prompt's).
    # round robin ignores load: 1, 0, 1.
    requests = [spec("long", 0.0, 500, 200)] + [
        spec(f"s{i}", 0.5 + 0.001 * i, 20, 2) for i in range(3)
    ]
    cases = {"least-outstanding": [1, 1, 0], "least-kv": [1, 1, 1], "round-robin": [1, 0, 1]}
    for router, expected in cases.items():
        result = run(ClusterSpec((instance(), instance()), router=router), workload(*requests))
        assert [result.routes[rid][0] for rid in ("s0", "s1", "s2")] == expected, router
