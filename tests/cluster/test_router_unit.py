"""The router's parts without a model: metrics parsing, health transitions, core shares, flag
inheritance, and the router app over mock replicas (failover, streams cut, errors passed on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from corral.cluster.launcher import inherited_flags, split_cores
from corral.cluster.replicas import HealthState, Replica, parse_metrics
from corral.cluster.router_app import RouterConfig, build_router_app

CORRAL_METRICS = """\
# TYPE corral:num_requests_running gauge
corral:num_requests_running{model_name="m"} 3.0
# TYPE corral:num_requests_waiting gauge
corral:num_requests_waiting{model_name="m"} 2.0
# TYPE corral:kv_cache_usage_perc gauge
corral:kv_cache_usage_perc{model_name="m"} 0.25
"""
VLLM_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",num_gpu_blocks="777"} 1.0
"""


def test_parse_metrics_reads_corral_names():
    scraped = parse_metrics(CORRAL_METRICS)
    assert (scraped.num_running, scraped.num_waiting, scraped.kv_usage) == (3.0, 2.0, 0.25)
    assert scraped.block_size is None and scraped.num_blocks is None


def test_parse_metrics_prefers_vllm_names_and_reads_cache_geometry():
    scraped = parse_metrics(CORRAL_METRICS + VLLM_METRICS)
    assert (scraped.num_running, scraped.num_waiting, scraped.kv_usage) == (1.0, 0.0, 0.5)
    assert (scraped.block_size, scraped.num_blocks) == (32, 777)


def test_replica_load_is_in_flight_plus_external():
    replica = Replica(0, "http://r", HealthState(3, 2))
    replica.num_in_flight = 2
    replica.apply_scrape(parse_metrics(CORRAL_METRICS))  # 5 running + waiting, 2 of them ours
    assert replica.num_outstanding_requests == 5 and replica.kv_load == 0.25
    replica.num_in_flight = 0  # ours finished after the scrape: 3 others remain
    assert replica.num_outstanding_requests == 3


def test_health_state_joins_leaves_and_rejoins():
    health = HealthState(unhealthy_after=3, healthy_after=2)
    assert health.record(True) is True  # never healthy before: joins at once
    assert [health.record(False) for _ in range(3)] == [None, None, False]
    assert health.record(True) is None and health.record(True) is True
    assert health.record(False) is None and health.record(True) is None  # streak reset
    assert health.eject() is True and not health.is_available
    assert health.record(True) is None and health.record(True) is True


def test_split_cores_disjoint_and_even():
    assert split_cores([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split_cores([3, 1], 2) == [[1], [3]]
    with pytest.raises(ValueError, match="needs at least 3 cores"):
        split_cores([0, 1], 3)


def test_inherited_flags_round_trip():
    from corral.serve.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--model", "/m", "--dtype", "float32", "--api-key", "a", "--api-key", "b"]
    argv += ["--no-prefix-caching", "--lora-modules", "x=/x", "y=/y", "--replicas", "2"]
    argv += ["--port", "9000", "--num-threads", "4", "--policy", "round-robin"]
    args = parser.parse_args(argv)
    flags = inherited_flags(parser, args)
    again = parser.parse_args(flags)
    for dest in ("model", "dtype", "api_key", "no_prefix_caching", "lora_modules"):
        assert getattr(again, dest) == getattr(args, dest)
    for flag in ("--replicas", "--port", "--num-threads", "--policy", "--host"):
        assert flag not in flags


# --- the router app over mock replicas -------------------------------------------------------


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


def _chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"text": text}]}).encode() + b"\n\n"


class MockReplicas:
    """Replicas r0, r1, ... answering through one handler per replica (None: down)."""

    def __init__(self, count: int) -> None:
        self.urls = [f"http://r{i}" for i in range(count)]
        self.handlers: dict[str, Callable[[httpx.Request], httpx.Response] | None] = {
            url: self.ok for url in self.urls
        }
        self.seen: list[tuple[str, httpx.Request]] = []

    @staticmethod
    def ok(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text=CORRAL_METRICS.replace("3.0", "0.0"))
        return httpx.Response(200, json={"served_by": request.url.host})

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        url = f"http://{request.url.host}"
        handler = self.handlers[url]
        if handler is None:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "POST":
            self.seen.append((url, request))
        return handler(request)


@contextlib.asynccontextmanager
async def router(replicas: MockReplicas, **options) -> AsyncIterator[httpx.AsyncClient]:
    options.setdefault("policy", "round-robin")
    config = RouterConfig(backend_urls=tuple(replicas.urls), poll_interval_s=60, **options)
    app = build_router_app(config, transport=httpx.MockTransport(replicas))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and labels.items() <= item.labels.items():
                return item.value
    return None


def run(coroutine):
    return asyncio.run(coroutine)


def test_round_robin_forwards_body_and_authorization():
    replicas = MockReplicas(2)

    async def scenario():
        async with router(replicas) as client:
            for _ in range(4):
                response = await client.post(
                    "/v1/completions",
                    content=b'{"prompt": "hi"}',
                    headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
                )
                assert response.status_code == 200
            metrics = (await client.get("/metrics")).text
        return metrics

    metrics = run(scenario())
    assert [url for url, _ in replicas.seen] == ["http://r0", "http://r1"] * 2
    for _, request in replicas.seen:
        assert request.headers["authorization"] == "Bearer k"
        assert request.content == b'{"prompt": "hi"}'
    assert sample(metrics, "corral:router_requests_total", replica="1") == 2.0


def test_connect_error_retries_elsewhere_and_ejects():
    replicas = MockReplicas(2)

    async def scenario():
        async with router(replicas) as client:
            replicas.handlers["http://r0"] = None  # dies after the start-up check
            statuses = [
                (await client.post("/v1/completions", content=b"{}")).status_code for _ in range(3)
            ]
            replica_set = client.app.state.replica_set
            available = [r.is_available for r in replica_set.replicas]
            return statuses, available, (await client.get("/health")).status_code

    statuses, available, health = run(scenario())
    assert statuses == [200, 200, 200]
    assert available == [False, True] and health == 200
    # The first request tried r0 (refused), then r1; the rest went straight to r1.
    assert [url for url, _ in replicas.seen] == ["http://r1"] * 3


def test_overloaded_503_retried_but_replica_stays():
    replicas = MockReplicas(2)
    replicas.handlers["http://r0"] = lambda request: (
        MockReplicas.ok(request)
        if request.url.path in ("/health", "/metrics")
        else httpx.Response(503, json={"error": {"message": "busy", "code": "overloaded"}})
    )

    async def scenario():
        async with router(replicas) as client:
            response = await client.post("/v1/completions", content=b"{}")
            available = [r.is_available for r in client.app.state.replica_set.replicas]
            return response, available

    response, available = run(scenario())
    assert response.status_code == 200 and response.json() == {"served_by": "r1"}
    assert available == [True, True]


def test_client_errors_pass_through_unchanged():
    replicas = MockReplicas(1)
    body = {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}
    }
    replicas.handlers["http://r0"] = lambda request: (
        MockReplicas.ok(request)
        if request.url.path in ("/health", "/metrics")
        else httpx.Response(400, json=body)
    )

    async def scenario():
        async with router(replicas) as client:
            return await client.post("/v1/chat/completions", content=b"{}")

    response = run(scenario())
    assert response.status_code == 400 and response.json() == body
    assert len(replicas.seen) == 1  # a 4xx is the answer: not retried


def _streaming(chunks: list[bytes], error: Exception | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/health", "/metrics"):
            return MockReplicas.ok(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Stream(chunks, error)
        )

    return handler


def _events(text: str) -> list[str]:
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


@pytest.mark.parametrize("cut", ["reset", "early_close"])
def test_cut_stream_ends_with_error_event(cut):
    replicas = MockReplicas(1)
    # The replica sends one whole event and half of the next, then fails or just closes.
    chunks = [_chunk("a"), _chunk("b")[:10]]
    error = httpx.ReadError("connection reset") if cut == "reset" else None
    replicas.handlers["http://r0"] = _streaming(chunks, error)

    async def scenario():
        async with router(replicas) as client:
            response = await client.post("/v1/completions", content=b'{"stream": true}')
            in_flight = client.app.state.replica_set.replicas[0].num_in_flight
            return response, in_flight

    response, in_flight = run(scenario())
    events = _events(response.text)
    assert response.status_code == 200 and in_flight == 0
    assert json.loads(events[0]) == {"choices": [{"text": "a"}]}  # the half event is dropped
    error = json.loads(events[1])["error"]
    assert error["code"] == "replica_disconnected" and "incomplete" in error["message"]
    assert error["type"] == "server_error"
    assert events[2:] == ["[DONE]"]


def test_whole_stream_relayed_unchanged():
    replicas = MockReplicas(1)
    chunks = [_chunk("a")[:7], _chunk("a")[7:] + _chunk("b"), b"data: [DONE]\n\n"]
    replicas.handlers["http://r0"] = _streaming(chunks)

    async def scenario():
        async with router(replicas) as client:
            return await client.post("/v1/completions", content=b'{"stream": true}')

    response = run(scenario())
    assert response.content == b"".join(chunks)
    assert response.headers["content-type"].startswith("text/event-stream")


def test_non_streaming_body_cut_is_502():
    replicas = MockReplicas(1)
    replicas.handlers["http://r0"] = lambda request: (
        MockReplicas.ok(request)
        if request.url.path in ("/health", "/metrics")
        else httpx.Response(
            200,
            headers={"content-type": "application/json"},
            stream=_Stream([b'{"choi'], httpx.ReadError("reset")),
        )
    )

    async def scenario():
        async with router(replicas) as client:
            return await client.post("/v1/completions", content=b"{}")

    response = run(scenario())
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "replica_disconnected"


def test_no_replica_is_503_and_health_503():
    replicas = MockReplicas(2)
    replicas.handlers = {url: None for url in replicas.urls}

    async def scenario():
        async with router(replicas) as client:
            return (
                await client.post("/v1/completions", content=b"{}"),
                await client.get("/health"),
            )

    response, health = run(scenario())
    assert response.status_code == 503 and health.status_code == 503
    assert response.json()["error"]["code"] == "no_replica_available"


def test_rejoin_after_healthy_checks():
    replicas = MockReplicas(2)

    async def scenario():
        async with router(replicas, healthy_after=2) as client:
            replica_set = client.app.state.replica_set
            poller = client.app.state.poller
            replicas.handlers["http://r0"] = None
            await client.post("/v1/completions", content=b"{}")  # refused: r0 ejected
            assert not replica_set.replicas[0].is_available
            replicas.handlers["http://r0"] = MockReplicas.ok
            await poller.check(replica_set.replicas[0])
            first = replica_set.replicas[0].is_available
            await poller.check(replica_set.replicas[0])
            return first, replica_set.replicas[0].is_available

    assert run(scenario()) == (False, True)


def test_failed_health_checks_take_a_replica_out_of_policy_and_health():
    replicas = MockReplicas(2)

    async def scenario():
        async with router(replicas, unhealthy_after=3) as client:
            replica_set, poller = client.app.state.replica_set, client.app.state.poller
            replicas.handlers["http://r1"] = lambda request: httpx.Response(
                503, json={"error": {"message": "the engine is not running", "code": "dead"}}
            )
            states = []
            for _ in range(3):
                await poller.check(replica_set.replicas[1])
                states.append(replica_set.policy.is_available(1))
            statuses = [
                (await client.post("/v1/completions", content=b"{}")).status_code for _ in range(2)
            ]
            return states, statuses, replica_set.replicas[1].last_error

    states, statuses, reason = run(scenario())
    assert states == [True, True, False]
    assert statuses == [200, 200] and [url for url, _ in replicas.seen] == ["http://r0"] * 2
    assert "503" in reason and "not running" in reason


def test_router_imports_no_torch():
    """The router process loads torch only through a tokenizer (prefix-aware)."""
    import subprocess
    import sys

    modules = ["corral.cluster.router_cli", "corral.cluster.router_app", "corral.cluster.launcher"]
    script = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    script += "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 0
