"""Prefix-aware routing on reported blocks held in a replica's host or disk tier: a tier-only
prefix still counts, weighted by its medium, and a removal from one medium keeps a block that
another medium holds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from corral.cluster.kv_view import ExternalHashIndex
from corral.cluster.prefix_index import UNKNOWN_MEDIUM_WEIGHT, ReportedPrefixIndex
from corral.cluster.routing import RoutingRequest, make_router, prompt_block_hashes
from corral.core.kv_events import MEDIUM_DEVICE, MEDIUM_DISK, MEDIUM_HOST, external_block_hash

PROMPT = RoutingRequest(list(range(24)))  # 6 blocks of 4
HASHES = prompt_block_hashes(PROMPT, 4)


@dataclass
class Load:
    num_outstanding_requests: int = 0
    kv_load: float = 0.0
    num_blocks: int = 1000
    block_size: int = 4


def router_over(*outstanding: int, index: ReportedPrefixIndex | None = None):
    index = index if index is not None else ReportedPrefixIndex()
    replicas = [Load(n) for n in outstanding]
    return make_router("prefix-aware", replicas, prefix_index=index, max_imbalance=4), index


def test_a_prefix_held_only_in_a_host_or_disk_tier_still_attracts_its_request():
    for medium in (MEDIUM_HOST, MEDIUM_DISK):
        router, index = router_over(2, 0)
        index.on_stored(0, HASHES[:4], medium)
        assert index.match(HASHES) == {0: 4}
        assert router.select(PROMPT) == 0, medium  # busier by 2, within max_imbalance 4


def test_lower_tier_blocks_weigh_less_than_device_blocks():
    router, index = router_over(0, 0)
    index.on_stored(0, HASHES[:4], MEDIUM_DISK)  # 4 x 0.5
    index.on_stored(1, HASHES[:3], MEDIUM_DEVICE)  # 3 x 1.0
    assert index.match_scores(HASHES) == {0: 2.0, 1: 3.0}
    assert router.select(PROMPT) == 1  # longer on disk, but the device prefix saves more
    index.on_stored(0, HASHES[:4], MEDIUM_HOST)  # now 4 x 0.8: the best medium counts
    assert index.match_scores(HASHES) == pytest.approx({0: 3.2, 1: 3.0})
    assert router.select(PROMPT) == 0


def test_equal_scores_go_to_the_less_loaded_replica():
    router, index = router_over(1, 0)
    index.on_stored(0, HASHES[:4], MEDIUM_DEVICE)  # 4 x 1.0
    index.on_stored(1, HASHES[:5], MEDIUM_HOST)  # 5 x 0.8, the same up to rounding
    assert index.match_scores(HASHES) == pytest.approx({0: 4.0, 1: 4.0})
    assert router.select(PROMPT) == 1
    router.replicas[0].num_outstanding_requests = 0
    router.replicas[1].num_outstanding_requests = 1
    assert router.select(PROMPT) == 0
    index.on_stored(1, HASHES[:1], MEDIUM_DEVICE)  # 1.0 + 4 x 0.8 = 4.2: more than a tie
    assert router.select(PROMPT) == 1


def test_removal_from_one_medium_keeps_a_block_another_holds():
    index = ReportedPrefixIndex()
    index.on_stored(0, HASHES[:2])  # medium None: the device pool
    index.on_stored(0, HASHES[:2], MEDIUM_HOST)
    index.on_removed(0, HASHES[:2], MEDIUM_DEVICE)
    assert index.match(HASHES) == {0: 2} and index.held_media(0, HASHES[0]) == {MEDIUM_HOST}
    index.on_removed(0, HASHES[:1], MEDIUM_DISK)  # a medium that never held it: no change
    assert index.match(HASHES) == {0: 2}
    index.on_removed(0, HASHES[:1], MEDIUM_HOST)
    assert index.match(HASHES) == {} and index.num_blocks_held(0) == 1
    index.on_stored(0, HASHES[:1], MEDIUM_DISK)
    index.on_cleared(0)  # every medium at once
    assert index.match(HASHES) == {} and index.num_blocks_held(0) == 0


def test_unknown_media_weigh_as_a_lower_tier_and_weights_are_checked():
    index = ReportedPrefixIndex()
    index.on_stored(0, HASHES[:2], "STORAGE")
    assert index.match_scores(HASHES) == {0: 2 * UNKNOWN_MEDIUM_WEIGHT}
    equal = ReportedPrefixIndex({MEDIUM_DEVICE: 1.0, MEDIUM_HOST: 1.0, MEDIUM_DISK: 1.0})
    equal.on_stored(0, HASHES[:2], MEDIUM_DISK)
    assert equal.match_scores(HASHES) == {0: 2.0}
    with pytest.raises(ValueError, match="CPU"):
        ReportedPrefixIndex({MEDIUM_HOST: 1.5})


def test_the_wire_hash_index_scores_the_routers_hashes():
    index = ExternalHashIndex("int")
    index.on_stored(3, [external_block_hash(h) for h in HASHES[:2]], MEDIUM_HOST)
    assert index.match(HASHES) == {3: 2}
    assert index.match_scores(HASHES) == pytest.approx({3: 1.6})


def test_router_flag_sets_the_medium_weights():
    import argparse

    import httpx

    from corral.cluster.replica_pool import build_pool
    from corral.cluster.router_app import RouterConfig
    from corral.cluster.router_cli import parse_medium_weights
    from corral.cluster.router_metrics import RouterMetrics

    assert parse_medium_weights("DISK=0.9, CPU=1") == (("DISK", 0.9), ("CPU", 1.0))
    for bad in ("DISK", "DISK=2", "=0.5", "CPU=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not MEDIUM=W"):
            parse_medium_weights(bad)
    config = RouterConfig(backend_urls=("http://a", "http://b"), kv_medium_weights=(("DISK", 0.9),))
    pool = build_pool(
        config,
        config.backend_urls,
        ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"),
        RouterMetrics(),
        httpx.AsyncClient(),
        headers={},
    )
    index = pool.feeds.index
    assert index.medium_weights == {MEDIUM_DEVICE: 1.0, MEDIUM_HOST: 0.8, MEDIUM_DISK: 0.9}
