"""Routing policies shared by the router and the simulator (corral/cluster/routing.py): decisions
on scripted replica loads, availability, prefix indexes, block hashes equal to the KV manager's,
and the simulator making the very same decisions."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

import corral.sim.cluster as sim_cluster
from corral.cluster.prefix_index import EstimatedPrefixIndex, ReportedPrefixIndex
from corral.cluster.routing import (
    ROUTER_POLICIES,
    RouterPolicy,
    RoutingRequest,
    make_router,
    prompt_block_hashes,
)
from corral.core.kv_cache import KVCacheManager
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.config import ClusterSpec
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.sim.helpers import instance, run

POLICIES = ["round-robin", "least-outstanding", "least-kv", "power-of-two", "prefix-aware"]


@dataclass
class Load:
    num_outstanding_requests: int = 0
    kv_load: float = 0.0
    num_blocks: int = 1000
    block_size: int = 4


def loads(*outstanding: int) -> list[Load]:
    return [Load(n) for n in outstanding]


def req(token_ids, adapter_id=None, cache_salt=None) -> RoutingRequest:
    return RoutingRequest(list(token_ids), adapter_id, cache_salt)


def picks(router: RouterPolicy, n: int, tokens=(1,)) -> list[int]:
    return [router.select(req(tokens)) for _ in range(n)]


def test_registry_holds_every_policy():
    assert ROUTER_POLICIES.names() == sorted(POLICIES)
    with pytest.raises(ValueError, match="unknown router policy 'nope'"):
        make_router("nope", loads(0))
    with pytest.raises(ValueError, match="at least one replica"):
        make_router("round-robin", [])
    with pytest.raises(ValueError, match="no option"):
        make_router("round-robin", loads(0), max_imbalance=3)
    with pytest.raises(ValueError, match="prefix_hash"):
        make_router("prefix-aware", loads(0), prefix_hash="md5")


# ----- decisions on scripted loads ------------------------------------------------------------


def test_round_robin_goes_in_turn_whatever_the_load():
    assert picks(make_router("round-robin", loads(9, 0, 0)), 7) == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_picks_fewest_then_lower_kv_then_in_turn():
    assert picks(make_router("least-outstanding", loads(3, 1, 2)), 2) == [1, 1]
    kv_tie = [Load(1, 0.5), Load(1, 0.2), Load(1, 0.9)]
    assert picks(make_router("least-outstanding", kv_tie), 2) == [1, 1]
    exact_ties = make_router("least-outstanding", loads(0, 0, 0))
    assert picks(exact_ties, 6) == [0, 1, 2, 0, 1, 2]


def test_least_kv_picks_lowest_kv_then_fewest_outstanding():
    replicas = [Load(0, 0.7), Load(5, 0.1), Load(1, 0.1)]
    assert make_router("least-kv", replicas).select(req([1])) == 2
    replicas[2].kv_load = 1.3  # queued demand may push the load past 1
    assert make_router("least-kv", replicas).select(req([1])) == 1


def test_power_of_two_is_seeded_and_takes_the_lighter_of_two():
    replicas = loads(9, 2, 3, 4)
    first = picks(make_router("power-of-two", replicas, seed=7), 200)
    assert first == picks(make_router("power-of-two", replicas, seed=7), 200)
    assert first != picks(make_router("power-of-two", replicas, seed=8), 200)
    assert 0 not in first  # the busiest loses every pair it is drawn in
    assert 1 in first and 2 in first and 3 in first


def test_prefix_aware_sends_a_conversation_back_to_its_replica():
    replicas = loads(0, 0, 0)
    router = make_router("prefix-aware", replicas)
    turn_1 = list(range(100, 130))  # system prompt + first question (7 full blocks of 4)
    first = router.select(req(turn_1))
    replicas[first].num_outstanding_requests = 4  # now the busiest, within max_imbalance (8)
    turn_2 = turn_1 + [500, 501, 502, 503, 504] + [600, 601, 602]  # answer + next question
    assert router.select(req(turn_2)) == first
    assert router.select(req([7] * 16)) != first  # unrelated prompt: least outstanding
    # Past max_imbalance outstanding above the least loaded replica, load wins.
    replicas[first].num_outstanding_requests = 9
    assert router.select(req(turn_2 + [1, 2, 3, 4])) != first


def test_prefix_aware_prefers_the_longest_match_then_the_least_loaded():
    replicas = loads(1, 3, 0)
    router = make_router("prefix-aware", replicas)
    shared = list(range(16))
    router.prefix_index.on_routed(0, prompt_block_hashes(req(shared[:8] + [90] * 8), 4))
    router.prefix_index.on_routed(1, prompt_block_hashes(req(shared + [91] * 4), 4))
    assert router.select(req(shared + [92] * 4)) == 1  # 4 blocks beat 2, though busier
    router.prefix_index.on_routed(0, prompt_block_hashes(req(shared), 4))
    assert router.select(req(shared + [93] * 4)) == 0  # 4 blocks each: fewer outstanding


def test_prefix_aware_keys_prefixes_by_adapter_and_salt():
    replicas = loads(0, 0)
    router = make_router("prefix-aware", replicas)
    tokens = list(range(40))
    first = router.select(req(tokens, adapter_id="a"))
    replicas[first].num_outstanding_requests = 1
    # Same tokens under another adapter or salt share no KV: routed by load, elsewhere.
    assert router.select(req(tokens, adapter_id="b")) != first
    assert router.select(req(tokens, adapter_id="a", cache_salt="s")) != first
    assert router.select(req(tokens, adapter_id="a")) == first


def test_estimated_index_keeps_at_most_num_blocks_per_replica():
    replicas = [Load(num_blocks=3), Load(num_blocks=100)]
    index = EstimatedPrefixIndex(replicas)
    hashes = prompt_block_hashes(req(range(20)), 4)  # 5 blocks
    index.on_routed(0, hashes)
    index.on_routed(1, hashes)
    assert index.num_blocks_held(0) == 3 and index.num_blocks_held(1) == 5
    # Replica 0 kept the 3 most recent (blocks 2..4): no leading block, no match.
    assert index.match(hashes) == {1: 5}
    index.on_stored(0, hashes)  # ignored: the estimate comes from routing alone
    assert index.match(hashes) == {1: 5}
    index.on_cleared(1)
    assert index.match(hashes) == {} and index.num_blocks_held(1) == 0


# ----- availability ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
def test_an_unavailable_replica_is_never_chosen(name):
    replicas = loads(5, 0, 1)  # replica 1 would win every load-based choice
    router = make_router(name, replicas, seed=3)
    router.set_available(1, False)
    chosen = [router.select(req(range(i, i + 12))) for i in range(30)]
    assert 1 not in chosen and set(chosen) <= {0, 2}
    router.set_available(1, True)
    assert 1 in [router.select(req(range(1000 + i, 1012 + i))) for i in range(30)]


def test_round_robin_skips_unavailable_replicas_in_order():
    router = make_router("round-robin", loads(0, 0, 0, 0))
    router.set_available(1, False)
    router.set_available(2, False)
    assert picks(router, 4) == [0, 3, 0, 3]
    router.set_available(2, True)
    assert picks(router, 4) == [0, 2, 3, 0]


def test_prefix_aware_ignores_matches_on_unavailable_replicas():
    replicas = loads(0, 0, 0)
    router = make_router("prefix-aware", replicas)
    prompt = list(range(32))
    first = router.select(req(prompt))
    router.set_available(first, False)
    second = router.select(req(prompt + [1, 2, 3, 4]))
    assert second != first
    replicas[second].num_outstanding_requests = 2
    assert router.select(req(prompt + [5, 6, 7, 8])) == second  # its own match now counts


@pytest.mark.parametrize("name", POLICIES)
def test_no_replica_available_is_a_clear_error(name):
    router = make_router(name, loads(0, 0))
    router.set_available(0, False)
    router.set_available(1, False)
    with pytest.raises(RuntimeError, match="no replica available"):
        router.select(req([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="outside"):
        router.set_available(2, False)


# ----- the reported prefix index --------------------------------------------------------------


def test_reported_index_follows_stored_removed_and_cleared_events():
    index = ReportedPrefixIndex()
    replicas = loads(0, 0, 0)
    router = make_router("prefix-aware", replicas, prefix_index=index)
    prompt = req(range(24))  # 6 blocks
    hashes = prompt_block_hashes(prompt, 4)
    router.select(prompt)
    assert index.match(hashes) == {}  # routing alone adds nothing: only reports count
    index.on_stored(2, hashes[:4])
    index.on_stored(1, hashes[:2])
    assert index.match(hashes) == {2: 4, 1: 2}
    replicas[2].num_outstanding_requests = 3
    assert router.select(prompt) == 2  # the longest reported prefix, though busiest
    index.on_removed(2, [hashes[1]])  # a hole after block 0: only the leading run counts
    assert index.match(hashes) == {2: 1, 1: 2}
    assert router.select(prompt) == 1
    index.on_cleared(1)  # restarted: it holds nothing
    assert index.match(hashes) == {2: 1} and index.num_blocks_held(1) == 0
    index.on_removed(0, hashes)  # removing what a replica never reported is a no-op
    assert index.num_blocks_held(2) == 3


# ----- block hashes equal to the KV manager's -------------------------------------------------


@pytest.mark.parametrize("prefix_hash", ["sha256", "builtin"])
@pytest.mark.parametrize(
    "adapter_id, cache_salt", [(None, None), ("adapter-a", None), (None, "salt"), ("a", "s")]
)
def test_prompt_block_hashes_equal_the_kv_managers(prefix_hash, adapter_id, cache_salt):
    tokens = [(7 * i) % 97 for i in range(43)]  # 10 full blocks of 4 and 3 tokens
    manager = KVCacheManager(32, 4, prefix_hash=prefix_hash)
    request = Request(
        "r",
        tokens,
        SamplingParams(max_tokens=4),
        max_model_len=128,
        adapter_id=adapter_id,
        cache_salt=cache_salt,
    )
    assert manager.match_prefix(request).num_tokens == 0
    assert manager.allocate_slots(request, len(tokens)) is not None
    request.num_computed_tokens = len(tokens)
    manager.cache_blocks(request)
    assert len(request.block_hashes) == 10
    routing = RoutingRequest(tokens, adapter_id, cache_salt)
    assert prompt_block_hashes(routing, 4, prefix_hash) == request.block_hashes
    # A later request with the same prompt hits exactly those blocks (all but the last token).
    again = Request(
        "q",
        tokens,
        SamplingParams(),
        max_model_len=128,
        adapter_id=adapter_id,
        cache_salt=cache_salt,
    )
    assert manager.match_prefix(again).num_tokens == 40
    if (adapter_id, cache_salt) != (None, None):
        plain = prompt_block_hashes(RoutingRequest(tokens), 4, prefix_hash)
        assert all(a != b for a, b in zip(plain, request.block_hashes))


# ----- one code path: the simulator's decisions are the policy's --------------------------


class Recorder:
    """Wraps the simulator's router: records each select's request, the loads it saw, and the
    choice."""

    def __init__(self, inner: RouterPolicy) -> None:
        self.inner = inner
        self.calls: list[tuple[RoutingRequest, list[Load], int]] = []

    def select(self, request: RoutingRequest) -> int:
        seen = [
            Load(r.num_outstanding_requests, r.kv_load, r.num_blocks, r.block_size)
            for r in self.inner.replicas
        ]
        choice = self.inner.select(request)
        self.calls.append((request, seen, choice))
        return choice


@pytest.mark.parametrize("name", POLICIES)
def test_the_simulator_makes_the_policys_decisions_on_a_recorded_trace(name, monkeypatch):
    work = build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=16,
            num_turns=3,
            input_len=40,
            output_len=8,
            think_time_s=0.05,
            arrival=ArrivalOptions("poisson", rate=50.0),
            vocab_size=500,
        )
    )
    recorders: list[Recorder] = []
    real_make_router = sim_cluster.make_router

    def recording_make_router(*args, **kwargs):
        recorder = Recorder(real_make_router(*args, **kwargs))
        recorders.append(recorder)
        return recorder

    monkeypatch.setattr(sim_cluster, "make_router", recording_make_router)
    spec = ClusterSpec(tuple([instance()] * 3), router=name, seed=4)
    result = run(spec, work)
    (recorder,) = recorders
    assert type(recorder.inner) is ROUTER_POLICIES.get(name)
    # The trace the simulator routed: every request once, with its prompt (routes keeps the
    # order of routing).
    calls = recorder.calls
    specs = {s.request_id: s for s in work.specs}
    assert len(calls) == len(specs) == len(result.routes)
    for (request, _, choice), request_id in zip(calls, result.routes):
        assert list(request.prompt_token_ids) == work.token_ids(specs[request_id])
        assert result.routes[request_id] == [choice]
    # Replayed through make_router directly, with the loads scripted as the simulator saw
    # them, the policy makes the same choices.
    scripted = [Load() for _ in range(3)]
    replay = make_router(name, scripted, seed=4, prefix_hash=instance().prefix_hash)
    for request, seen, choice in calls:
        for target, source in zip(scripted, seen):
            target.__dict__.update(source.__dict__)
        assert replay.select(request) == choice
    if name == "prefix-aware":  # later turns went back to their conversation's replica
        assert sum(i.kv.stats.prefix_hit_tokens for i in result.instances) > 0


def test_routing_imports_no_torch():
    script = (
        "import sys, corral.cluster.routing, corral.cluster.prefix_index\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('corral.model',"
        " 'corral.engine'))]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
