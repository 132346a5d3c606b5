"""The router over real `corral serve` processes on loopback (the tiny model, float32): answers
equal direct ones, the policies route as specified, and a replica killed mid-run loses no
request that had not started and fails the started stream with an error event."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.test_router_unit import sample
from tests.serve.conftest import ServerProcess, free_port, stop_servers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and POSIX signals"),
]

SYSTEM = (
    "You are a careful assistant. Serving large language models efficiently needs batching, "
    "paging and careful scheduling; answer in one short sentence."
)


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels_built() -> None:
    from corral.model.kernels import cpu_kernels

    cpu_kernels()


class RouterThread:
    """`corral router`'s app under uvicorn in a thread of this process (its state inspectable)."""

    def __init__(self, urls: list[str], policy: str, tokenizer=None, **options) -> None:  # noqa: ANN001
        import uvicorn

        from corral.cluster.router_app import RouterConfig, build_router_app

        port = free_port()
        config = RouterConfig(backend_urls=tuple(urls), policy=policy, port=port, **options)
        self.app = build_router_app(config, tokenizer)
        self.base_url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "router did not start"
            time.sleep(0.05)

    @property
    def replicas(self):  # noqa: ANN201
        return self.app.state.replica_set.replicas

    def counts(self) -> dict[int, float]:
        return self.app.state.metrics.requests_by_replica()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory) -> Iterator[list[ServerProcess]]:
    started = [
        ServerProcess(tiny_model, tmp_path_factory.mktemp("replica") / "server.log")
        for _ in range(2)
    ]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        stop_servers(started)


@pytest.fixture
def make_router(servers) -> Iterator:
    routers: list[RouterThread] = []

    def make(policy: str, urls: list[str] | None = None, **options) -> RouterThread:
        urls = urls or [server.base_url for server in servers]
        router = RouterThread(urls, policy, **options)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.stop()


def _complete(base_url: str, prompt: str, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **extra}
    response = httpx.post(base_url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _chat(base_url: str, messages: list[dict], **extra) -> dict:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, **extra}
    response = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _stream(base_url: str, prompt: str) -> tuple[str, list[str | None]]:
    """The streamed text and the chunks' finish reasons; asserts the stream ends with [DONE]."""
    body = {"prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    texts, reasons, events = [], [], []
    url = base_url + "/v1/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        choice = json.loads(event)["choices"][0]
        texts.append(choice["text"])
        reasons.append(choice["finish_reason"])
    return "".join(texts), [reason for reason in reasons if reason]


def _served_by(router: RouterThread, send) -> int:  # noqa: ANN001
    """The replica the request `send()` went to, by the router's counters."""
    before = router.counts()
    send()
    after = router.counts()
    changed = [i for i in after if after[i] != before.get(i, 0)]
    assert len(changed) == 1, (before, after)
    return changed[0]


def test_answers_through_router_equal_direct(servers, make_router):
    router = make_router("round-robin")
    direct = servers[0].base_url
    for prompt in ("The quick brown fox", "How many apples are left"):
        expected = _complete(direct, prompt)["choices"][0]["text"]
        for _ in range(2):  # once on each replica
            assert _complete(router.base_url, prompt)["choices"][0]["text"] == expected
    messages = [{"role": "user", "content": "Natalia sold clips to 48 of her friends"}]
    expected = _chat(direct, messages)["choices"][0]["message"]["content"]
    for _ in range(2):
        assert _chat(router.base_url, messages)["choices"][0]["message"]["content"] == expected
    assert router.counts() == {0: 3.0, 1: 3.0}


def test_streaming_through_router_equals_direct(servers, make_router):
    router = make_router("round-robin")
    prompt = "A train leaves the station at noon"
    # Chunk boundaries depend on timing (a slow reader gets merged deltas): the text and the
    # finish reason are what must match.
    expected = _stream(servers[0].base_url, prompt)
    assert expected[0] and expected[1] == ["length"]
    for _ in range(2):
        assert _stream(router.base_url, prompt) == expected


def test_models_health_and_errors_pass_through(servers, make_router):
    router = make_router("round-robin")
    assert httpx.get(router.base_url + "/health").status_code == 200
    models = httpx.get(router.base_url + "/v1/models").json()
    assert models == httpx.get(servers[0].base_url + "/v1/models").json()
    # The KV geometry each replica reports (corral:cache_config_info) is the router's view.
    for server, replica in zip(servers, router.replicas):
        text = httpx.get(server.base_url + "/metrics").text
        info = next(line for line in text.splitlines() if line.startswith("corral:cache_config"))
        assert f'num_gpu_blocks="{replica.num_blocks}"' in info
        assert f'block_size="{replica.block_size}"' in info
    bad = {"prompt": "x", "max_tokens": -1}
    via_router = httpx.post(router.base_url + "/v1/completions", json=bad)
    direct = httpx.post(servers[0].base_url + "/v1/completions", json=bad)
    assert via_router.status_code == direct.status_code == 400
    assert via_router.json() == direct.json()


def test_round_robin_alternates(make_router):
    router = make_router("round-robin")
    order = [
        _served_by(router, lambda: _complete(router.base_url, "The lazy dog")) for _ in range(4)
    ]
    assert order in ([0, 1, 0, 1], [1, 0, 1, 0])


def test_least_outstanding_picks_the_idle_replica(make_router):
    router = make_router("least-outstanding")
    body = {"prompt": "Serving", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", router.base_url + "/v1/completions", json=body, timeout=120) as long:
        lines = long.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # it runs now
        busy = [r.index for r in router.replicas if r.num_in_flight == 1]
        assert len(busy) == 1, "the long request finished before the check"
        # Only requests routed while the long one still runs count (on a fast machine it may
        # end before all three were sent); at least the first is.
        idle = []
        for _ in range(3):
            if router.replicas[busy[0]].num_in_flight != 1:
                break
            idle.append(
                _served_by(router, lambda: _complete(router.base_url, "Unicode text", max_tokens=2))
            )
        assert idle and idle == [1 - busy[0]] * len(idle)
        for _ in lines:  # read it to its end
            pass


def _prefix_hits(server: ServerProcess) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("corral:prefix_cache_hits_total")
    )


def test_prefix_aware_sends_turn_two_where_turn_one_ran(servers, make_router, tiny_model):
    from corral.engine.tokenizer import Tokenizer

    router = make_router("prefix-aware", tokenizer=Tokenizer(tiny_model))
    # Different from their first block on (a shared system prompt would be a shared prefix).
    conversations = [
        [{"role": "system", "content": opening + SYSTEM}, {"role": "user", "content": question}]
        for opening, question in (
            ("Tom counts apples. ", "How many apples are left?"),
            ("Natalia sells clips. ", "Who sold clips in April?"),
        )
    ]
    first, answers = [], []
    for messages in conversations:
        first.append(
            _served_by(router, lambda m=messages: answers.append(_chat(router.base_url, m)))
        )
        answer = answers[-1]["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": "And then?"})
    assert sorted(first) == [0, 1]  # nothing cached yet: spread by load
    for _ in range(3):  # other traffic between the turns
        _complete(router.base_url, "The quick brown fox jumps over the lazy dog")
    for messages, replica in zip(conversations, first):
        hits = _prefix_hits(servers[replica])
        assert _served_by(router, lambda m=messages: _chat(router.base_url, m)) == replica
        assert _prefix_hits(servers[replica]) > hits  # it reused turn 1's blocks there


def test_killed_replica_fails_started_stream_and_retries_the_rest(
    servers, make_router, tiny_model, tmp_path
):
    victim = ServerProcess(tiny_model, tmp_path / "victim.log")
    try:
        victim.wait_ready()
        engine_pid = victim.engine_pid()
        # The victim first: round robin sends it the stream.
        router = make_router(
            "round-robin", urls=[victim.base_url, servers[0].base_url], poll_interval_s=60
        )
        body = {"prompt": "Serving", "max_tokens": 480, "ignore_eos": True, "stream": True}
        url = router.base_url + "/v1/completions"
        with httpx.stream("POST", url, json=body, timeout=120) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            assert router.replicas[0].num_in_flight == 1
            os.kill(victim.process.pid, signal.SIGKILL)
            os.kill(engine_pid, signal.SIGKILL)
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "replica_disconnected" and victim.base_url in error["message"]
        # Requests after the kill: the one routed to the victim is refused there and moved
        # (the victim leaves the rotation at once); none fails.
        for index in range(4):
            assert _complete(router.base_url, f"Request {index} after the kill")["choices"]
        assert router.counts() == {0: 2.0, 1: 4.0}  # the stream and the moved request
        assert not router.replicas[0].is_available and router.replicas[1].is_available
        assert httpx.get(router.base_url + "/health").status_code == 200
        metrics = httpx.get(router.base_url + "/metrics").text
        victim_labels = {"replica": "0", "url": victim.base_url}
        assert sample(metrics, "corral:router_replica_healthy", **victim_labels) == 0.0
        retries = sample(metrics, "corral:router_retries_total", **victim_labels, reason="connect")
        cuts = sample(metrics, "corral:router_failures_total", **victim_labels, reason="stream_cut")
        assert retries == 1.0 and cuts == 1.0
    finally:
        victim.stop()


def test_client_leaving_a_stream_aborts_it_on_the_replica(servers, make_router):
    router = make_router("round-robin")
    replica = _served_by(router, lambda: _complete(router.base_url, "warm up"))  # then the other
    server = servers[1 - replica]

    def aborted() -> float:
        text = httpx.get(server.base_url + "/metrics").text
        return sample(text, "corral:request_success_total", finished_reason="abort") or 0.0

    before = aborted()
    body = {"prompt": "Serving", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", router.base_url + "/v1/completions", json=body, timeout=120) as s:
        next(line for line in s.iter_lines() if line.startswith("data: "))
    # The client closed its connection: the router closes its own, the replica aborts.
    deadline = time.monotonic() + 30
    while aborted() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert aborted() == before + 1
    assert router.replicas[1 - replica].num_in_flight == 0
