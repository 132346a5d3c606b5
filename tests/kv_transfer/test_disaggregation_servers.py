"""Disaggregation between real `corral serve` processes (tiny model): a prefill server with
--kv-role prefill lends the prompt KV, a decode server with --kv-role decode fetches it over
the transfer socket; the decode answer equals a single server's, streamed or not, completions
and chat; the metrics count the transfer; bad kv_transfer_params get a 400 naming them."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from tests.serve.conftest import ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals"),
]

PROMPT = "Once upon a time, in a land far away, there lived a curious fox. " * 4
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    started = {}
    for name, flags in (
        ("single", ()),
        ("prefill", ("--kv-role", "prefill")),
        ("decode", ("--kv-role", "decode")),
    ):
        log = tmp_path_factory.mktemp(name) / "server.log"
        started[name] = ServerProcess(tiny_model, log, *flags)
    try:
        for server in started.values():
            server.wait_ready()
        yield {name: server.base_url for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def model_of(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def disaggregated(servers: dict[str, str], route: str, body: dict) -> httpx.Response:
    """The router's two legs by hand: max_tokens 1 on the prefill server, then the original
    body with the lease on the decode server."""
    first = dict(body, max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True})
    lent = httpx.post(servers["prefill"] + route, json=first, timeout=60)
    assert lent.status_code == 200, lent.text
    params = lent.json()["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["num_blocks"] >= 2
    return httpx.post(
        servers["decode"] + route, json=dict(body, kv_transfer_params=params), timeout=60
    )


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "_total{") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on {url}/metrics")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_disaggregated_answer_equals_one_server(servers, route):
    model = model_of(servers["single"])
    body = {"model": model, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    body |= {"prompt": PROMPT} if route == "/v1/completions" else {"messages": MESSAGES}
    expected = httpx.post(servers["single"] + route, json=body, timeout=60).json()
    answer = disaggregated(servers, route, body)
    assert answer.status_code == 200, answer.text
    result = answer.json()

    def text(response: dict) -> str:
        choice = response["choices"][0]
        return choice["text"] if "text" in choice else choice["message"]["content"]

    assert text(result) == text(expected)
    assert result["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    assert result["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # fetched, not computed
    streamed = disaggregated(servers, route, dict(body, stream=True))
    assert streamed.status_code == 200
    pieces = []
    for line in streamed.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                pieces.append(
                    choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                )
    assert "".join(pieces) == text(result)


def test_transfer_metrics_and_bad_params(servers):
    assert metric(servers["decode"], "corral:kv_transfer_fetches_ok") >= 1
    assert metric(servers["prefill"], "corral:kv_transfer_leases_acked") >= 1
    model = model_of(servers["single"])
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4}
    for url, params, message in (
        (servers["single"], {"do_remote_decode": True}, "--kv-role"),
        (servers["prefill"], {"do_remote_prefill": True}, "transfer_id"),
        (servers["prefill"], "yes", "kv_transfer_params"),
    ):
        response = httpx.post(
            url + "/v1/completions", json=dict(body, kv_transfer_params=params), timeout=60
        )
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]
