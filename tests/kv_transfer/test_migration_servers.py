"""Live migration between real `corral serve --kv-role both` processes behind `corral router
--migration`: a request moved mid-generation (streamed or not, completions or chat) gives the
client the same answer as an unmoved one, KV fetched rather than recomputed; draining a replica
moves its requests to the other and takes it out of the rotation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from corral.engine.fault_injection import FAULT_ENV
from tests.kv_transfer.test_disaggregation_servers import metric, model_of
from tests.serve.conftest import STARTUP_TIMEOUT_S, ServerProcess, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]

PROMPT = "Once upon a time, in a land far away, there lived a curious fox. " * 3
NUM_TOKENS = 360
STEP_DELAY_S = 0.004


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    # Every step of the replicas takes at least STEP_DELAY_S (CORRAL_FAULT=slow): a request
    # then runs for seconds, so a move asked for mid-generation finds it still running however
    # fast the engine and however late the client reads the stream (it once had finished).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, f"slow@1:{STEP_DELAY_S}")
        replicas = [
            ServerProcess(tiny_model, tmp_path_factory.mktemp(f"r{i}") / "log", "--kv-role", "both")
            for i in range(2)
        ]
    port = free_port()
    log = open(tmp_path_factory.mktemp("router") / "log", "wb")  # noqa: SIM115
    argv = [sys.executable, "-m", "corral.cli", "router", "--port", str(port), "--migration"]
    argv += ["--policy", "round-robin", "--poll-interval-s", "0.2", "--no-access-log"]
    for replica in replicas:
        argv += ["--backend", replica.base_url]
    router = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        for replica in replicas:
            replica.wait_ready()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert router.poll() is None, "the router exited"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield url, [replica.base_url for replica in replicas]
    finally:
        router.terminate()
        router.wait(30)
        log.close()
        for replica in replicas:
            replica.stop()


def metric_sum(url: str, name: str) -> float:
    """The sum of a series over its labels."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith((name + "_total{", name + "_total ", name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def body_for(route: str, model: str, stream: bool) -> dict:
    body = {"model": model, "max_tokens": NUM_TOKENS, "temperature": 0, "ignore_eos": True}
    body |= {"stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if route == "/v1/completions":
        return body | {"prompt": PROMPT}
    return body | {"messages": [{"role": "user", "content": PROMPT}]}


def text_of(answer: dict) -> str:
    choice = answer["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def move_out(replica_urls: list[str]) -> list[str]:
    """Ask every replica to move one request out until one does; the ids moved."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for url in replica_urls:
            answer = httpx.post(url + "/corral/migrate_out", json={"max_num_requests": 1})
            assert answer.status_code == 200, answer.text
            if answer.json()["migrated"]:
                return answer.json()["migrated"]
        time.sleep(0.005)
    raise AssertionError("no replica had a request to move")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_moved_mid_generation_reads_as_one(cluster, route):
    url, replica_urls = cluster
    model = model_of(url)
    expected = httpx.post(replica_urls[0] + route, json=body_for(route, model, False), timeout=120)
    expected_text = text_of(expected.json())
    pieces, roles, usage, finish = [], 0, None, None
    with httpx.stream("POST", url + route, json=body_for(route, model, True), timeout=120) as r:
        assert r.status_code == 200
        moved: list[str] = []
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "corral_migration" not in event and "error" not in event, event
            if event.get("usage"):
                usage = event["usage"]
            for choice in event["choices"]:
                delta = choice.get("delta", {})
                roles += bool(delta.get("role"))
                pieces.append(choice.get("text") or delta.get("content") or "")
                finish = choice.get("finish_reason") or finish
            if not moved and len(pieces) >= 3:
                moved = move_out(replica_urls)
    assert moved
    assert "".join(pieces) == expected_text
    assert finish == "length"
    assert usage["completion_tokens"] == NUM_TOKENS
    assert roles == (1 if route.endswith("chat/completions") else 0)
    assert metric_sum(url, "corral:router_migrations_continued") >= 1


def test_a_whole_answer_moved_mid_generation_is_the_same(cluster):
    url, replica_urls = cluster
    model = model_of(url)
    route = "/v1/completions"
    expected = httpx.post(replica_urls[1] + route, json=body_for(route, model, False), timeout=120)
    result: dict = {}

    def send() -> None:
        result["answer"] = httpx.post(url + route, json=body_for(route, model, False), timeout=120)

    sender = threading.Thread(target=send)
    sender.start()
    moved = move_out(replica_urls)
    sender.join(120)
    answer = result["answer"]
    assert moved and answer.status_code == 200, answer.text
    assert text_of(answer.json()) == text_of(expected.json())
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    assert answer.json()["usage"]["completion_tokens"] == NUM_TOKENS
    # The continuing replica fetched the KV: it computed at most one block of the prompt+output.
    fetched = [metric_sum(u, "corral:kv_transfer_fetches_ok") for u in replica_urls]
    assert sum(fetched) >= 1


def test_draining_moves_requests_and_takes_the_replica_out(cluster):
    url, replica_urls = cluster
    model = model_of(url)
    route = "/v1/completions"
    expected = text_of(
        httpx.post(replica_urls[0] + route, json=body_for(route, model, False), timeout=120).json()
    )
    results: list[httpx.Response] = []
    senders = [
        threading.Thread(
            target=lambda: results.append(
                httpx.post(url + route, json=body_for(route, model, False), timeout=120)
            )
        )
        for _ in range(2)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 20  # round robin: one of the two runs on replica 0
    while metric(replica_urls[0], "corral:num_requests_running") < 1:
        assert time.monotonic() < deadline
    drained = httpx.post(url + "/admin/drain", json={"url": replica_urls[0]}, timeout=30)
    assert drained.status_code == 200, drained.text
    for sender in senders:
        sender.join(120)
    assert [text_of(r.json()) for r in results] == [expected, expected]
    assert metric_sum(url, "corral:router_migrations_requested") >= 1
    assert metric(replica_urls[0], "corral:num_requests_running") == 0
    before = metric_sum(replica_urls[1], "corral:request_success")
    for _ in range(2):  # new requests go to the other replica only
        httpx.post(url + route, json=body_for(route, model, False) | {"max_tokens": 4}, timeout=60)
    assert metric_sum(replica_urls[1], "corral:request_success") >= before + 2
    back = httpx.post(url + "/admin/drain", json={"url": replica_urls[0], "drain": False})
    assert back.json()["draining"] is False
    unknown = httpx.post(url + "/admin/drain", json={"url": "http://nowhere:1"})
    assert unknown.status_code == 404 and "nowhere" in unknown.text


def test_a_rebalancing_move_precopies_then_stops_for_the_rest(cluster):
    url, replica_urls = cluster
    model = model_of(url)
    route = "/v1/completions"
    expected = text_of(
        httpx.post(replica_urls[0] + route, json=body_for(route, model, False), timeout=120).json()
    )
    fetches_before = sum(metric_sum(u, "corral:kv_transfer_fetches_ok") for u in replica_urls)
    pieces: list[str] = []
    moved = 0
    with httpx.stream("POST", url + route, json=body_for(route, model, True), timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            pieces.extend(choice["text"] for choice in event["choices"])
            # From the third piece on until one replica moves it (a fast engine can finish the
            # request while a single late attempt is on its way).
            if not moved and len(pieces) >= 3:
                for replica_url in replica_urls:  # the router moves it from where it runs
                    answer = httpx.post(url + "/admin/migrate", json={"url": replica_url})
                    assert answer.status_code == 200, answer.text
                    moved += answer.json()["migrated"]
                    if moved:
                        break
    assert moved == 1
    assert "".join(pieces) == expected
    fetches = sum(metric_sum(u, "corral:kv_transfer_fetches_ok") for u in replica_urls)
    assert fetches - fetches_before == 2  # the pre-copy's prefetch, then the final copy
    assert metric_sum(url, "corral:router_migrations_requested") >= 1
