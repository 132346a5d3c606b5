"""The router's side of live migration against fake replicas: a stream or answer that ends in a
migration goes on at another replica with the Resume as kv_transfer_params, one stream to the
client; only single-sequence requests are marked movable; draining takes a replica out; the
flags make the config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.cluster.launcher import replica_roles
from corral.cluster.migration import MAX_MOVES, MigrationConfig, is_movable
from corral.cluster.router_cli import router_config_from_args
from corral.serve.migration import MIGRATABLE_HEADER
from tests.cluster.test_router_disaggregated import COMPLETIONS, FakeBackend, _parse
from tests.cluster.test_router_replicas import RouterThread

RESUME = {"resume_output_token_ids": [5, 6]}


def source(backend: FakeBackend, body: bytes) -> Response:
    """Two chunks, then it moves the request out (stream), or answers "migrated" (whole)."""
    if json.loads(body).get("stream"):

        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
            yield b'data: {"choices": [{"index": 0, "text": "b"}]}\n\n'
            moved = {"corral_migration": RESUME, "request_id": "cmpl-1"}
            yield f"data: {json.dumps(moved)}\n\ndata: [DONE]\n\n".encode()
            await asyncio.sleep(0)

        return StreamingResponse(events(), media_type="text/event-stream")
    choice = {"index": 0, "text": "ab", "finish_reason": "migrated"}
    return JSONResponse({"id": "cmpl-1", "choices": [choice], "kv_transfer_params": RESUME})


def target(backend: FakeBackend, body: bytes) -> Response:
    if json.loads(body).get("stream"):

        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"choices": [{"index": 0, "text": "c"}]}\n\n'
            yield b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\n\n'
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    choice = {"index": 0, "text": "abc", "finish_reason": "length"}
    return JSONResponse({"id": "cmpl-2", "choices": [choice]})


class HeaderBackend(FakeBackend):
    """A fake replica that also records the migratable header of each completion."""

    def __init__(self, name: str, answer) -> None:  # noqa: ANN001
        self.seen: list[str | None] = []
        super().__init__(name, answer)

    async def _completion(self, request: Request) -> Response:
        self.seen.append(request.headers.get(MIGRATABLE_HEADER))
        return await super()._completion(request)


@pytest.fixture
def pair() -> Iterator[tuple[RouterThread, FakeBackend, FakeBackend]]:
    moving, continuing = HeaderBackend("s", source), HeaderBackend("t", target)
    router = RouterThread(
        [moving.url, continuing.url],
        "round-robin",
        poll_interval_s=60.0,
        migration=MigrationConfig(enabled=True),
    )
    yield router, moving, continuing
    for each in (router, moving, continuing):
        each.stop()


def post(router: RouterThread, body: dict, **kwargs) -> httpx.Response:  # noqa: ANN003
    return httpx.post(router.base_url + COMPLETIONS, json=body, timeout=30, **kwargs)


def test_a_moved_stream_continues_on_the_other_replica(pair):
    router, moving, continuing = pair
    body = {"model": "m", "prompt": "p", "max_tokens": 8, "stream": True}
    answer = post(router, body)  # round robin: the first request goes to the source
    events = [line for line in answer.text.split("\n\n") if line]
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events if e != "data: [DONE]"]
    assert texts == ["a", "b", "c", ""]
    assert events[-1] == "data: [DONE]" and "corral_migration" not in answer.text
    (sent,) = continuing.payloads
    assert sent == body | {"kv_transfer_params": RESUME}  # the client's body, the Resume added
    counted = httpx.get(router.base_url + "/metrics").text
    assert 'corral:router_migrations_continued_total{outcome="ok"} 1.0' in counted


def test_a_moved_whole_answer_is_the_continuing_replicas(pair):
    router, moving, continuing = pair
    answer = post(router, {"model": "m", "prompt": "p", "max_tokens": 8})
    assert answer.status_code == 200
    assert answer.json()["choices"][0] == {"index": 0, "text": "abc", "finish_reason": "length"}
    assert continuing.payloads[0]["kv_transfer_params"] == RESUME


def test_only_single_sequence_requests_are_marked_movable(pair):
    router, moving, continuing = pair
    post(router, {"model": "m", "prompt": "p", "n": 2})  # round robin: to the source
    post(router, {"model": "m", "prompt": ["a", "b"], "max_tokens": 1})  # to the other
    assert moving.seen == [None] and continuing.seen == [None]
    post(router, {"model": "m", "prompt": [1, 2], "max_tokens": 1, "stream": True})
    assert moving.seen == [None, "1"]
    assert not is_movable({"prompt": ["a", "b"]}) and is_movable({"prompt": [1, 2]})
    assert not is_movable([1]) and not is_movable({"best_of": 3})


def test_draining_takes_a_replica_out_and_unknown_ones_are_404(pair):
    router, moving, continuing = pair
    answer = httpx.post(router.base_url + "/admin/drain", json={"url": moving.url})
    assert answer.status_code == 200 and answer.json()["draining"] is True
    for _ in range(3):
        post(router, {"model": "m", "prompt": "p", "max_tokens": 1})
    assert len(moving.bodies) == 0 and len(continuing.bodies) == 3
    back = httpx.post(router.base_url + "/admin/drain", json={"url": moving.url, "drain": False})
    assert back.json()["draining"] is False
    assert httpx.post(router.base_url + "/admin/drain", json={"url": "x"}).status_code == 404
    assert httpx.post(router.base_url + "/admin/drain", json={}).status_code == 400


def test_migration_flags():
    args = _parse(["--backend", "http://r0", "--migration", "--rebalance-kv-usage", "0.9"])
    config = router_config_from_args(args, ("http://r0",)).migration
    assert config.enabled and config.kv_usage_high == 0.9 and config.precopy
    args = _parse(["--backend", "http://r0", "--migration", "--no-precopy"])
    assert not router_config_from_args(args, ("http://r0",)).migration.precopy
    with pytest.raises(ValueError, match="--rebalance-kv-usage needs --migration"):
        router_config_from_args(_parse(["--backend", "r", "--rebalance-kv-usage", "0.9"]), ("r",))
    with pytest.raises(ValueError, match="rebalance-kv-usage"):
        MigrationConfig(enabled=True, kv_usage_high=1.5)
    assert replica_roles(2, 0, migration=True) == ["both", "both"]
    assert replica_roles(3, 1, migration=True) == ["prefill", "both", "both"]
    assert replica_roles(2, 0) == ["", ""]


def test_a_request_moved_too_often_stays_where_it_lands():
    def restless(backend: FakeBackend, body: bytes) -> Response:
        if backend.seen[-1] == "1":  # still movable: it moves again at once
            return source(backend, json.dumps(json.loads(body) | {"stream": False}).encode())
        return target(backend, body)

    replicas = [HeaderBackend(f"x{i}", restless) for i in range(2)]
    router = RouterThread(
        [r.url for r in replicas], "round-robin", poll_interval_s=60.0,
        migration=MigrationConfig(enabled=True),
    )  # fmt: skip
    try:
        answer = post(router, {"model": "m", "prompt": "p", "max_tokens": 8})
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "abc"
        seen = replicas[0].seen + replicas[1].seen
        assert seen.count("1") == MAX_MOVES and seen.count(None) == 1
    finally:
        for each in (router, *replicas):
            each.stop()
