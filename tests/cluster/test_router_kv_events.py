"""The router's prefix-aware policy fed by the replicas' KV events (`corral router --kv-events`):
two real `corral serve --kv-events-config` processes; a prompt's continuation goes to the
replica that reported caching its blocks, as the replica's hashes say, not the router's guess."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.test_router_replicas import RouterThread
from tests.serve.conftest import ServerProcess, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ZMQ over loopback TCP"),
]


@pytest.fixture(scope="module")
def replicas(tiny_model, tmp_path_factory) -> Iterator[list[tuple[ServerProcess, str]]]:
    from corral.model.kernels import cpu_kernels

    cpu_kernels()
    started = []
    try:
        for _ in range(2):
            port, replay = free_port(), free_port()
            config = (
                f'{{"enable_kv_cache_events": true, "endpoint": "tcp://*:{port}", '
                f'"replay_endpoint": "tcp://*:{replay}"}}'
            )
            log = tmp_path_factory.mktemp("replica") / "server.log"
            server = ServerProcess(tiny_model, log, "--kv-events-config", config)
            started.append((server, f"tcp://127.0.0.1:{port},tcp://127.0.0.1:{replay}"))
        for server, _ in started:
            server.wait_ready()
        yield started
    finally:
        for server, _ in started:
            server.stop()


def _complete(base_url: str, prompt: list[int]) -> None:
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
    response = httpx.post(base_url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text


def test_prefix_aware_routes_by_the_blocks_replicas_report(replicas, tiny_model):
    from corral.engine.tokenizer import Tokenizer

    router = RouterThread(
        [server.base_url for server, _ in replicas],
        "prefix-aware",
        Tokenizer(tiny_model),
        kv_events=tuple(spec for _, spec in replicas),
    )
    try:
        index = router.app.state.prefix_index
        assert index is not None
        prompts = [[(7 * i + k) % 200 + 3 for i in range(48)] for k in (1, 2)]
        first = []
        for prompt in prompts:
            before = router.counts()
            _complete(router.base_url, prompt)
            after = router.counts()
            (replica,) = [i for i in after if after[i] != before.get(i, 0)]
            first.append(replica)
        assert sorted(first) == [0, 1]  # nothing reported yet: spread by load
        deadline = time.monotonic() + 30
        while not all(index.num_blocks_held(r) >= 3 for r in first):
            assert time.monotonic() < deadline, "no KV events reached the router"
            time.sleep(0.05)
        from corral.cluster.routing import RoutingRequest, prompt_block_hashes

        for prompt, replica in zip(prompts, first):
            # The router's hashes of the prompt are the ones its replica reported.
            matched = index.match(prompt_block_hashes(RoutingRequest(prompt), 16))
            assert matched == {replica: 3}
            for _ in range(2):  # turn 2 and 3 of each conversation
                prompt = prompt + [11, 12, 13, 14]
                before = router.counts()
                _complete(router.base_url, prompt)
                after = router.counts()
                assert after[replica] == before.get(replica, 0) + 1
    finally:
        router.stop()
