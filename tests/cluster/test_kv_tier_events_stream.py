"""Tier-aware KV events on the wire: a KVEventsPublisher on loopback ports, its snapshot read raw
(msgpack alone) and a KVEventsSubscriber feeding the router's ReportedPrefixIndex, which keeps a
block while any medium still holds it; then (slow) a real engine's three tiers, as published."""

from __future__ import annotations

import sys
import time

import msgpack
import pytest
import zmq

from corral.cluster.kv_events_client import KVEventsSubscriber
from corral.cluster.prefix_index import ReportedPrefixIndex
from corral.config import KVEventsConfig
from corral.core.kv_events import (
    MEDIUM_DISK,
    MEDIUM_HOST,
    BlockRemoved,
    BlockStored,
)
from corral.sampling_params import SamplingParams
from corral.serve.kv_events_publisher import KVEventsPublisher
from tests.cluster.test_kv_events_stream import free_port, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ZMQ over loopback TCP"
)
TOPIC = "tiers"


def tier_stored(medium: str, *hashes: int) -> BlockStored:
    return BlockStored(tuple(hashes), None, (), 2, None, None, medium)


@pytest.fixture
def publisher():
    port, replay = free_port(), free_port()
    config = KVEventsConfig(
        enable_kv_cache_events=True,
        endpoint=f"tcp://*:{port}",
        replay_endpoint=f"tcp://*:{replay}",
        topic=TOPIC,
    )
    publisher = KVEventsPublisher(config)
    publisher.endpoints = (f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay}")
    yield publisher
    publisher.shutdown()


def raw_snapshot(replay_endpoint: str) -> tuple[int, list]:
    """The snapshot's seq and events as plain msgpack objects."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    try:
        dealer.connect(replay_endpoint)
        dealer.send_multipart((b"", (-1).to_bytes(8, "big", signed=True)))
        assert dealer.poll(5000), "no snapshot answer"
        _, seq_bytes, payload = dealer.recv_multipart()
        assert dealer.poll(5000) and dealer.recv_multipart()[-1] == b""  # the end marker
    finally:
        dealer.close(linger=0)
    _, events, _ = msgpack.unpackb(payload, raw=False)
    return int.from_bytes(seq_bytes, "big", signed=True), events


def test_tier_events_reach_the_router_and_the_snapshot(publisher):
    # Batch 0: a device chain 1 -> 2, block 3 in the host tier, block 4 on disk.
    publisher.publish(
        1.0,
        [
            BlockStored((1, 2), None, (5, 6, 7, 8), 2),
            tier_stored(MEDIUM_HOST, 3),
            tier_stored(MEDIUM_DISK, 4),
        ],
    )
    wait_for(lambda: len(publisher.cached.tiers) == 2, "the publisher to apply batch 0")
    endpoint, replay_endpoint = publisher.endpoints
    seq, events = raw_snapshot(replay_endpoint)
    assert seq == 0
    assert events == [
        ["AllBlocksCleared"],
        ["BlockStored", [1], None, [5, 6], 2, None, "GPU", None],
        ["BlockStored", [2], 1, [7, 8], 2, None, "GPU", None],
        ["BlockStored", [3], None, [], 2, None, "CPU", None],
        ["BlockStored", [4], None, [], 2, None, "DISK", None],
    ]

    index = ReportedPrefixIndex()
    calls: list[tuple[str, list[int], str | None]] = []

    def stored(hashes: list[int], medium: str | None) -> None:
        calls.append(("stored", hashes, medium))
        index.on_stored(0, hashes, medium)

    def removed(hashes: list[int], medium: str | None) -> None:
        calls.append(("removed", hashes, medium))
        index.on_removed(0, hashes, medium)

    subscriber = KVEventsSubscriber(
        endpoint,
        replay_endpoint,
        TOPIC,
        on_stored=stored,
        on_removed=removed,
        on_cleared=lambda: index.on_cleared(0),
    ).start()
    try:
        assert subscriber.synced.wait(20), "no snapshot"
        assert calls == [
            ("stored", [1], "GPU"),
            ("stored", [2], "GPU"),
            ("stored", [3], "CPU"),
            ("stored", [4], "DISK"),
        ]
        assert index.match([3]) == {0: 1} and index.match([4]) == {0: 1}
        time.sleep(0.2)  # let the SUB socket's subscription reach the publisher

        # Batch 1: the device evicts 1 and 2, the host tier keeps both.
        publisher.publish(2.0, [BlockRemoved((1, 2)), tier_stored(MEDIUM_HOST, 1, 2)])
        wait_for(lambda: subscriber.last_seq == 1, "batch 1")
        assert index.match([1, 2]) == {0: 2}
        assert index.held_media(0, 1) == {"CPU"}
        # Batch 2: the host tier evicts 1 too: it is gone, and the prefix with it.
        publisher.publish(3.0, [BlockRemoved((1,), MEDIUM_HOST)])
        wait_for(lambda: subscriber.last_seq == 2, "batch 2")
        assert index.match([1, 2]) == {} and index.held_media(0, 2) == {"CPU"}
    finally:
        subscriber.close()
    _, events = raw_snapshot(replay_endpoint)
    assert events == [
        ["AllBlocksCleared"],
        ["BlockStored", [3, 2], None, [], 2, None, "CPU", None],
        ["BlockStored", [4], None, [], 2, None, "DISK", None],
    ]


@pytest.mark.slow  # runs the real engine
def test_a_real_engines_tiers_are_reported_per_medium(tiny_model, tmp_path):
    from corral import LLM
    from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from corral.core.kv_events import external_block_hash
    from corral.engine.llm_engine import LLMEngine

    block_size = 4
    probe = LLM(model=str(tiny_model), dtype="float32", num_blocks=1, block_size=block_size)
    bytes_per_block = probe.engine.executor.storage.spec.bytes_per_block()
    del probe
    port, replay = free_port(), free_port()
    engine = LLMEngine(
        EngineConfig(
            model=ModelConfig(model=str(tiny_model), dtype="float32", max_model_len=64),
            cache=CacheConfig(
                block_size=block_size,
                num_blocks=8,
                host_cache_memory=3 * bytes_per_block,
                disk_cache_dir=str(tmp_path),
                disk_cache_max_bytes=4 * bytes_per_block,
            ),
            scheduler=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=64),
            kv_events=KVEventsConfig(
                enable_kv_cache_events=True,
                endpoint=f"tcp://*:{port}",
                replay_endpoint=f"tcp://*:{replay}",
                topic=TOPIC,
            ),
        )
    )
    views: dict[str | None, set[int]] = {}
    subscriber = KVEventsSubscriber(
        f"tcp://127.0.0.1:{port}",
        f"tcp://127.0.0.1:{replay}",
        TOPIC,
        on_stored=lambda hashes, medium: views.setdefault(medium, set()).update(hashes),
        on_removed=lambda hashes, medium: views.setdefault(medium, set()).difference_update(hashes),
        on_cleared=views.clear,
    ).start()
    try:
        assert subscriber.synced.wait(20), "no snapshot"
        time.sleep(0.2)  # let the SUB socket's subscription reach the publisher
        params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
        for index in range(6):  # 17-token prompts: each evicts the one before from the device
            prompt = [(index * 13 + i) % 90 + 3 for i in range(17)]
            engine.add_request(f"r{index}", {"prompt_token_ids": prompt}, params)
            while engine.has_unfinished_requests():
                engine.step()
        manager = engine.kv_manager
        host, disk = manager.offloader.host, manager.offloader.disk

        def wire(hashes) -> set[int]:
            return {external_block_hash(h) for h in hashes}

        # The tiers' own books (private: the tiers list their entries nowhere else).
        truth = {
            "GPU": wire(b.block_hash for b in manager.pool.blocks if b.block_hash is not None),
            "CPU": wire(host._cached),
            "DISK": wire(disk._entries),
        }
        assert truth["CPU"] and truth["DISK"], "the prompts did not reach both tiers"
        wait_for(lambda: views == truth, "the views to equal the tiers")
    finally:
        subscriber.close()
        engine.core.flush()
