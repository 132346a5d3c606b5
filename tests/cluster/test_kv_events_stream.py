"""KV events end to end: a real LLMEngine on the tiny model publishing on free loopback ports
(--kv-events-config's keys), KVEventsSubscriber views that must equal the engine's prefix cache,
and one raw message checked against vLLM's KVEventBatch layout."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import msgpack
import pytest
import zmq

from corral.cluster.kv_events_client import KVEventsSubscriber
from corral.config import CacheConfig, EngineConfig, KVEventsConfig, ModelConfig, SchedulerConfig
from corral.core.block_hash import sha256_block_hash
from corral.core.kv_events import external_block_hash
from corral.sampling_params import SamplingParams

pytestmark = pytest.mark.slow  # runs the real engine
BLOCK_SIZE = 4
NUM_BLOCKS = 16
TOPIC = "kv-events"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class View:
    """A router's view of one replica, fed by a KVEventsSubscriber."""

    def __init__(self, endpoint: str, replay_endpoint: str) -> None:
        self.hashes: set[int] = set()
        self.removed: list[int] = []
        self.num_cleared = 0
        self.subscriber = KVEventsSubscriber(
            endpoint,
            replay_endpoint,
            TOPIC,
            on_stored=lambda hashes, medium: self.hashes.update(hashes),
            on_removed=self._removed,
            on_cleared=self._cleared,
        ).start()
        assert self.subscriber.synced.wait(20), "no snapshot"

    def _removed(self, hashes: list[int], medium: str | None) -> None:
        self.removed.extend(hashes)
        self.hashes.difference_update(hashes)

    def _cleared(self) -> None:
        self.num_cleared += 1
        self.hashes.clear()


@pytest.fixture
def engine(tiny_model):
    from corral.engine.llm_engine import LLMEngine

    port, replay_port = free_port(), free_port()
    kv_events = KVEventsConfig.from_json(
        f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{port}", '
        f'"replay_endpoint": "tcp://*:{replay_port}", "topic": "{TOPIC}"}}'
    )
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_model), dtype="float32", max_model_len=128),
        cache=CacheConfig(block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64),
        kv_events=kv_events,
    )
    engine = LLMEngine(config)
    engine.endpoints = (f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay_port}")
    yield engine
    engine.core.flush()


def run(engine, request_id: str, prompt: list[int], max_tokens: int = 3):
    """Run one request to the end; its scheduler Request (block_hashes and all)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    request = engine.scheduler.requests[request_id]
    while engine.has_unfinished_requests():
        engine.step()
    return request


def cached(engine) -> set[int]:
    """The engine's prefix cache, as wire hashes."""
    pool = engine.kv_manager.pool
    return {external_block_hash(b.block_hash) for b in pool.blocks if b.block_hash is not None}


def test_views_follow_the_cache_through_stores_evictions_snapshot_and_reset(engine):
    endpoint, replay_endpoint = engine.endpoints
    context = zmq.Context.instance()
    raw = context.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
    raw.connect(endpoint)
    view = View(endpoint, replay_endpoint)
    assert view.subscriber.last_seq == -1 and not view.hashes  # nothing published yet
    time.sleep(0.2)  # let the raw SUB's subscription reach the publisher

    first = run(engine, "first", [(7 * i) % 90 + 1 for i in range(18)])
    # 18 prompt + 2 computed output tokens: 5 full blocks, stored under the scheduler's hashes.
    expected = [external_block_hash(h) for h in first.block_hashes]
    assert len(expected) == 5
    wait_for(lambda: view.hashes == cached(engine), "the view to match the cache")
    assert set(expected) == view.hashes

    # One raw message, decoded with msgpack alone: vLLM's KVEventBatch layout.
    assert raw.poll(5000)
    topic, seq_bytes, payload = raw.recv_multipart()
    assert topic == TOPIC.encode() and len(seq_bytes) == 8
    seq = int.from_bytes(seq_bytes, "big")  # 0 unless the subscription was late
    batch = msgpack.unpackb(payload)
    assert isinstance(batch, list) and len(batch) == 3  # [ts, events, data_parallel_rank]
    ts, events, rank = batch
    assert isinstance(ts, float) and abs(ts - time.time()) < 60 and rank == 0
    stored = events[0]
    # ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
    #  lora_name]
    assert stored[0] == "BlockStored" and len(stored) == 8
    tag, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = stored
    assert all(isinstance(h, int) and 0 <= h < 2**64 for h in hashes)
    start = expected.index(hashes[0])  # 0 in batch 0
    assert start == 0 or seq > 0
    assert hashes == expected[start : start + len(hashes)]
    assert parent == (expected[start - 1] if start else None)
    tokens = first.all_token_ids
    assert token_ids == tokens[start * BLOCK_SIZE : (start + len(hashes)) * BLOCK_SIZE]
    assert (block_size, lora_id, medium, lora_name) == (BLOCK_SIZE, None, "GPU", None)

    # A long prompt needs more blocks than are free: the first request's blocks are evicted.
    second = run(engine, "second", [(11 * i) % 80 + 3 for i in range(50)], max_tokens=2)
    wait_for(lambda: view.hashes == cached(engine), "the view after evictions")
    assert set(view.removed) & set(expected), "no eviction was published"
    assert {external_block_hash(h) for h in second.block_hashes} <= view.hashes

    # A late subscriber learns the cache from the snapshot, at the same sequence number.
    late = View(endpoint, replay_endpoint)
    assert late.hashes == cached(engine) and late.num_cleared == 1
    assert late.subscriber.num_snapshots == 1
    assert late.subscriber.last_seq == view.subscriber.last_seq > 0

    # vLLM's replay protocol: [b"", start] in, [b"", seq, payload] per batch, then [b"", -1, b""]
    # (a DEALER: a REQ socket takes only the first of several replies).
    replay = context.socket(zmq.DEALER)
    replay.connect(replay_endpoint)
    replay.send_multipart((b"", (1).to_bytes(8, "big")))
    replies = []
    while True:
        assert replay.poll(5000)
        delimiter, seq_bytes, payload = replay.recv_multipart()
        assert delimiter == b""
        if not payload:
            assert int.from_bytes(seq_bytes, "big", signed=True) == -1
            break
        replies.append(int.from_bytes(seq_bytes, "big"))
    assert replies == list(range(1, view.subscriber.last_seq + 1))

    # reset_prefix_cache with nothing running: AllBlocksCleared, sent by the idle stats path.
    assert engine.kv_manager.reset_prefix_cache() > 0
    engine.core.stats()
    wait_for(lambda: view.num_cleared == 2 and late.num_cleared == 2, "the clear")
    assert view.hashes == late.hashes == cached(engine) == set()
    for one in (view, late):
        assert one.subscriber.is_running and one.subscriber.num_gaps == 0
        one.subscriber.close()
        assert not one.subscriber.is_running
    raw.close(linger=0)
    replay.close(linger=0)


def test_a_missed_batch_is_repaired_from_the_replay_buffer(engine):
    endpoint, replay_endpoint = engine.endpoints
    view = View(endpoint, replay_endpoint)
    subscriber = view.subscriber
    run(engine, "a", list(range(1, 14)))
    wait_for(lambda: view.hashes == cached(engine), "the first request's blocks")
    # Lose the next live batch, as a slow subscriber past the PUB high-water mark would.
    apply, lost = subscriber._apply, []

    def lose_one(seq: int, payload: bytes) -> None:
        if not lost:
            lost.append(seq)
            return
        apply(seq, payload)

    subscriber._apply = lose_one
    run(engine, "b", list(range(30, 43)))
    wait_for(lambda: bool(lost), "a lost batch")
    assert view.hashes != cached(engine)
    run(engine, "c", list(range(50, 63)))  # its batch shows the gap
    wait_for(lambda: view.hashes == cached(engine), "the repaired view")
    assert subscriber.num_gaps == 1 and subscriber.last_seq > lost[0]
    assert subscriber.num_snapshots == 1  # repaired by replay, not by a new snapshot
    subscriber.close()


def test_corral_serve_publishes_hashes_a_router_can_compute(tiny_model, tmp_path):
    """`corral serve --kv-events-config` (engine core in its own process): the hashes a router
    computes from a prompt's token ids (corral.core.block_hash, then external_block_hash) are
    the ones the replica publishes."""
    from corral.model.kernels import cpu_kernels
    from tests.serve.conftest import ServerProcess

    cpu_kernels()  # compiled here, not inside the server's start-up
    port, replay_port = free_port(), free_port()
    config = (
        f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{port}", '
        f'"replay_endpoint": "tcp://*:{replay_port}", "topic": "{TOPIC}"}}'
    )
    server = ServerProcess(tiny_model, tmp_path / "server.log", "--kv-events-config", config)
    try:
        server.wait_ready()
        view = View(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay_port}")
        prompt = [(5 * i) % 97 + 2 for i in range(40)]  # 2 full blocks of 16 once computed
        model = httpx.get(server.base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0}
        response = httpx.post(server.base_url + "/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        expected, parent = [], None
        for start in range(0, 32, 16):
            parent = sha256_block_hash(parent, prompt[start : start + 16], ())
            expected.append(external_block_hash(parent))
        wait_for(lambda: view.hashes == set(expected), "the prompt's blocks")
        view.subscriber.close()
        assert "Traceback" not in server.log()
    finally:
        server.stop()
