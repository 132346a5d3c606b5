"""`corral router` in disaggregated mode over fake prefill and decode replicas (small Starlette
apps under uvicorn on loopback): what each leg gets, what the client gets, the failure rules,
the metrics, and the --prefill-backend / --decode-backend flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.cluster.disaggregated import decode_body, prefill_body, skip_reason
from corral.cluster.router_cli import add_arguments, backend_pools, router_config_from_args, run
from tests.cluster.test_router_replicas import RouterThread
from tests.cluster.test_router_unit import sample
from tests.serve.conftest import free_port

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
EVENTS = [
    b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n',
    b'data: {"choices": [{"index": 0, "text": "b"}]}\n\n',
    b"data: [DONE]\n\n",
]
BAD_REQUEST = {
    "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}
}


Answer = Callable[["FakeBackend", bytes], Response]


class FakeBackend:
    """A fake replica under uvicorn in a thread: /health 200, /metrics and /v1/models, and the
    completion routes answered by answer(backend, body); bodies recorded in arrival order.
    answer None: nothing listens on its port (connections refused)."""

    def __init__(self, name: str, answer: Answer | None) -> None:
        import uvicorn

        self.name, self.answer = name, answer
        self.bodies: list[bytes] = []
        self.answered_params: list[object] = []  # kv_transfer_params a prefill answered
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = None
        if answer is None:
            return
        routes = [
            Route("/health", lambda _: Response(status_code=200)),
            Route("/metrics", lambda _: PlainTextResponse("")),
            Route("/v1/models", lambda _: JSONResponse({"data": [{"id": "m", "root": "m"}]})),
            *(Route(path, self._completion, methods=["POST"]) for path in (COMPLETIONS, CHAT)),
        ]
        config = uvicorn.Config(Starlette(routes=routes), port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, f"{name} not started"
            time.sleep(0.01)

    @property
    def payloads(self) -> list[dict]:
        return [json.loads(body) for body in self.bodies]

    async def _completion(self, request: Request) -> Response:
        body = await request.body()
        self.bodies.append(body)
        assert self.answer is not None
        return self.answer(self, body)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(30)


def prefill_ok(backend: FakeBackend, body: bytes) -> Response:
    params = {"transfer_id": f"{backend.name}-{len(backend.bodies)}", "from": backend.name}
    backend.answered_params.append(params)
    choice = {"index": 0, "text": "P", "finish_reason": "length"}
    return JSONResponse({"id": "prefill", "choices": [choice], "kv_transfer_params": params})


def prefill_without_kv(backend: FakeBackend, body: bytes) -> Response:
    return JSONResponse({"id": "prefill", "choices": [], "kv_transfer_params": None})


def answering(status: int, content: dict) -> Answer:
    return lambda backend, body: JSONResponse(content, status_code=status)


def decode_ok(backend: FakeBackend, body: bytes) -> Response:
    try:
        payload = json.loads(body)
    except ValueError:
        return JSONResponse(BAD_REQUEST, status_code=400)
    if payload.get("stream"):

        async def events() -> AsyncIterator[bytes]:
            for event in EVENTS:
                yield event
                await asyncio.sleep(0)

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({"served_by": backend.name, "choices": [{"text": "decoded"}]})


@dataclass
class Cluster:
    router: RouterThread
    prefill: list[FakeBackend]
    decode: list[FakeBackend]

    def post(self, route: str, body: dict | bytes) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
        return httpx.post(self.router.base_url + route, content=content, headers=headers)

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(httpx.get(self.router.base_url + "/metrics").text, name, **labels)


class _ByteTokenizer:
    """Prompt text to its UTF-8 bytes: enough tokens for prefix-aware's block hashes."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


@pytest.fixture
def cluster() -> Iterator[Callable[..., Cluster]]:
    started: list[FakeBackend | RouterThread] = []

    def make(
        prefill_answers: list[Answer | None] | None = None,
        num_decode: int = 1,
        policy: str = "round-robin",
        tokenizer: object = None,
    ) -> Cluster:
        prefill = [
            FakeBackend(f"p{i}", answer) for i, answer in enumerate(prefill_answers or [prefill_ok])
        ]
        decode = [FakeBackend(f"d{i}", decode_ok) for i in range(num_decode)]
        started.extend([*prefill, *decode])
        router = RouterThread(
            [backend.url for backend in decode],
            policy,
            tokenizer,
            prefill_urls=tuple(backend.url for backend in prefill),
            poll_interval_s=60.0,  # only the start-up check: the tests decide who is up
        )
        started.append(router)
        return Cluster(router, prefill, decode)

    yield make
    for each in reversed(started):
        each.stop()


def test_completion_runs_prefill_then_decode_with_its_kv(cluster):
    c = cluster()
    original = {"model": "m", "prompt": "hello there", "max_tokens": 7, "temperature": 0.5}
    response = c.post(COMPLETIONS, original)
    assert response.status_code == 200
    assert response.json() == {"served_by": "d0", "choices": [{"text": "decoded"}]}
    [prefill] = c.prefill[0].payloads
    assert prefill == {
        **original,
        "max_tokens": 1,
        "stream": False,
        "n": 1,
        "kv_transfer_params": {"do_remote_decode": True},
    }
    [decode] = c.decode[0].payloads
    assert decode == {**original, "kv_transfer_params": c.prefill[0].answered_params[0]}
    assert c.metric("corral:router_remote_prefills_total") == 1.0
    assert c.metric("corral:router_prefill_latency_seconds_count") == 1.0
    prefill_labels = {"pool": "prefill", "replica": "0", "route": COMPLETIONS}
    assert c.metric("corral:router_requests_total", **prefill_labels) == 1.0
    assert c.metric("corral:router_requests_total", pool="decode", replica="0") == 1.0


def test_streamed_chat_relayed_unchanged_and_prefill_not_streamed(cluster):
    c = cluster()
    original = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 20,
        "min_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = c.post(CHAT, original)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"".join(EVENTS)
    [prefill] = c.prefill[0].payloads
    assert prefill["max_tokens"] == prefill["max_completion_tokens"] == 1
    assert prefill["stream"] is False and prefill["n"] == 1
    assert "stream_options" not in prefill and "min_tokens" not in prefill
    assert prefill["messages"] == original["messages"]
    [decode] = c.decode[0].payloads
    assert decode == {**original, "kv_transfer_params": c.prefill[0].answered_params[0]}


@pytest.mark.parametrize("failure", ["dead", "status_500", "status_503"])
def test_failed_prefill_replica_is_replaced_by_another(cluster, failure):
    first = prefill_ok
    if failure != "dead":
        first = answering(int(failure[-3:]), {"error": {"message": "no", "code": "overloaded"}})
    c = cluster([first, prefill_ok])
    if failure == "dead":
        c.prefill[0].stop()  # after the router's start-up check: it is in the rotation
    for _ in range(2):
        assert c.post(COMPLETIONS, {"prompt": "x"}).status_code == 200
    # Round robin sends the first request to p0, which fails; p1 prefills both.
    assert len(c.prefill[1].bodies) == 2
    sent = [decode["kv_transfer_params"] for decode in c.decode[0].payloads]
    assert sent == c.prefill[1].answered_params
    assert c.metric("corral:router_remote_prefills_total") == 2.0
    retries = c.metric("corral:router_retries_total", pool="prefill", replica="0")
    assert retries is not None and retries >= 1.0


@pytest.mark.parametrize("failure", ["stopped", "never_up", "status_500"])
def test_no_prefill_replica_answering_falls_back_to_decode(cluster, failure):
    # never_up: out of the rotation from the start, so not even tried.
    answers = {"stopped": prefill_ok, "never_up": None}
    c = cluster([answers.get(failure, answering(500, {"error": {"message": "boom"}}))])
    if failure == "stopped":  # after the router's start-up check: it is in the rotation
        c.prefill[0].stop()
    original = b'{"prompt": "hello", "max_tokens": 3}'
    response = c.post(COMPLETIONS, original)
    assert response.status_code == 200 and response.json()["served_by"] == "d0"
    assert c.decode[0].bodies == [original]  # the client's bytes, no kv_transfer_params
    reason = "no_prefill_replica" if failure == "never_up" else "prefill_failed"
    assert c.metric("corral:router_prefill_fallbacks_total", reason=reason) == 1.0
    assert c.metric("corral:router_remote_prefills_total") == 0.0
    assert c.metric("corral:router_prefill_latency_seconds_count") == 0.0


def test_prefill_without_kv_sends_decode_the_client_body_without_params(cluster):
    c = cluster([prefill_without_kv])
    original = {"prompt": "hi", "kv_transfer_params": {"do_remote_decode": True}}
    assert c.post(COMPLETIONS, original).status_code == 200
    # The router owns kv_transfer_params: the client's own reaches no replica.
    assert c.prefill[0].payloads[0]["kv_transfer_params"] == {"do_remote_decode": True}
    assert c.decode[0].payloads == [{"prompt": "hi"}]
    assert c.metric("corral:router_prefill_fallbacks_total", reason="no_kv_transfer_params") == 1
    assert c.metric("corral:router_prefill_latency_seconds_count") == 1.0


def test_prefill_client_error_is_the_answer_and_decode_is_not_called(cluster):
    c = cluster([answering(400, BAD_REQUEST)])
    response = c.post(CHAT, {"messages": "not a list", "stream": True})
    assert response.status_code == 400 and response.json() == BAD_REQUEST
    assert len(c.prefill[0].bodies) == 1 and c.decode[0].bodies == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"prompt": "hi", "n": 2}, "several_sequences"),
        ({"prompt": "hi", "best_of": 3}, "several_sequences"),
        ({"prompt": ["one", "two"]}, "several_prompts"),
        (b"{not json", "unreadable_body"),
    ],
)
def test_requests_the_prefill_leg_cannot_serve_go_straight_to_decode(cluster, body, reason):
    c = cluster()
    response = c.post(COMPLETIONS, body)
    assert response.status_code == (400 if reason == "unreadable_body" else 200)
    assert c.prefill[0].bodies == []
    expected = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert c.decode[0].bodies == [expected]
    assert c.metric("corral:router_prefill_skipped_total", reason=reason) == 1.0


def test_other_routes_go_to_decode_replicas(cluster):
    c = cluster()
    models = httpx.get(c.router.base_url + "/v1/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "m"
    assert httpx.get(c.router.base_url + "/health").status_code == 200
    assert c.metric("corral:router_replica_healthy", pool="prefill", replica="0") == 1.0
    assert c.metric("corral:router_replica_healthy", pool="decode", replica="0") == 1.0


def test_prefix_aware_keeps_each_conversation_on_its_prefill_replica(cluster):
    c = cluster([prefill_ok, prefill_ok], num_decode=2, policy="prefix-aware",
                tokenizer=_ByteTokenizer())  # fmt: skip
    conversations = {
        "a": "Conversation A talks about the weather in spring, at length. ",
        "b": "Conversation B is about trains leaving stations at noon, twice. ",
    }
    served: dict[str, list[str]] = {"a": [], "b": []}
    for turn in range(3):
        for name, prefix in conversations.items():
            before = [len(backend.bodies) for backend in c.prefill]
            assert c.post(COMPLETIONS, {"prompt": prefix * (turn + 1)}).status_code == 200
            after = [len(backend.bodies) for backend in c.prefill]
            [chosen] = [b.name for b, n, m in zip(c.prefill, before, after, strict=True) if m > n]
            served[name].append(chosen)
    assert len(set(served["a"])) == 1 and len(set(served["b"])) == 1
    assert served["a"][0] != served["b"][0]


# --- flags --------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_make_a_disaggregated_config():
    args = _parse(
        ["--prefill-backend", "http://p0", "--prefill-backend", "http://p1"]
        + ["--decode-backend", "http://d0", "--prefill-kv-events", "tcp://p0:5557"]
        + ["--prefill-kv-events", "tcp://p1:5557", "--policy", "prefix-aware"]
    )
    backend_urls, prefill_urls = backend_pools(args)
    assert (backend_urls, prefill_urls) == (("http://d0",), ("http://p0", "http://p1"))
    config = router_config_from_args(
        args, backend_urls, prefill_urls=prefill_urls, prefill_kv_events=("a", "b")
    )
    assert config.is_disaggregated and config.policy == "prefix-aware"
    plain = _parse(["--backend", "http://r0"])
    assert backend_pools(plain) == (("http://r0",), ())
    assert not router_config_from_args(plain, ("http://r0",)).is_disaggregated


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "http://r0", "--prefill-backend", "http://p0"], "cannot be mixed"),
        (["--backend", "http://r0", "--decode-backend", "http://d0"], "cannot be mixed"),
        (["--prefill-backend", "http://p0"], "needs --decode-backend"),
        (["--decode-backend", "http://d0"], "needs --prefill-backend"),
        ([], "give --backend URL"),
        (["--backend", "http://r0", "--prefill-kv-events", "tcp://p:1"], "--prefill-kv-events"),
    ],
)
def test_flag_errors_are_clear(argv, message, capsys):
    args = _parse(argv)
    with pytest.raises(ValueError, match=message):
        backend_pools(args)
    assert run(args) == 2
    assert message in capsys.readouterr().err


# --- the bodies ---------------------------------------------------------------------------------


def test_bodies_and_skip_reasons():
    payload = {"prompt": "p", "n": 1, "stream": True, "kv_transfer_params": {"x": 1}}
    assert json.loads(prefill_body(payload))["kv_transfer_params"] == {"do_remote_decode": True}
    assert "max_completion_tokens" not in json.loads(prefill_body(payload))
    original = b'{"prompt":  "p"}'
    assert decode_body({"prompt": "p"}, original, None) is original
    assert json.loads(decode_body({"prompt": "p"}, original, {"t": 1})) == {
        "prompt": "p",
        "kv_transfer_params": {"t": 1},
    }
    assert skip_reason({"prompt": "p", "n": 1}) is None
    assert skip_reason({"prompt": [1, 2, 3]}) is None and skip_reason({"prompt": ["p"]}) is None
    assert skip_reason({"prompt": "p", "n": True}) == "several_sequences"
    assert skip_reason([1]) == "unreadable_body"
