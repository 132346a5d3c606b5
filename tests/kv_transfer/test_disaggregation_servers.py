"""Disaggregation between real `corral serve` processes (tiny model): a prefill server with
--kv-role prefill lends the prompt KV, a decode server with --kv-role decode fetches it over
the transfer socket; the decode answer equals a single server's, streamed or not, completions
and chat; the metrics count the transfer; bad kv_transfer_params get a 400 naming them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.conftest import ServerProcess, free_port, stop_servers

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
        stop_servers(started.values())


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
        if line.startswith((name + "_total{", name + "_total ", name + "{", name + " ")):
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


def start(args: list[str], log_path) -> subprocess.Popen:
    env = dict(os.environ, CORRAL_API_KEY="", TOKENIZERS_PARALLELISM="false")
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "corral.cli", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


def wait_healthy(url: str, process: subprocess.Popen, log_path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-4000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def routed_answer(url: str, body: dict) -> tuple[str, float]:
    """The text through a disaggregated router, and its count of remote prefills."""
    response = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    remote = metric(url, "corral:router_remote_prefills")
    return response.json()["choices"][0]["text"], remote


def test_through_the_router_and_the_launcher(servers, tiny_model, tmp_path):
    """`corral router --prefill-backend --decode-backend` over the prefill and decode servers,
    and `corral serve --replicas 2 --prefill-replicas 1` (one command): the single server's
    text, the prompt prefilled remotely."""
    model = model_of(servers["single"])
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    body["ignore_eos"] = True
    expected = httpx.post(servers["single"] + "/v1/completions", json=body, timeout=60).json()
    expected_text = expected["choices"][0]["text"]

    # The launcher starts first: its slow start-up (two replicas) overlaps the router's part.
    launcher = None
    if len(os.sched_getaffinity(0)) >= 2:  # its two replicas need two cores
        launcher_port = free_port()
        launcher_args = ["serve", "--replicas", "2", "--prefill-replicas", "1"]
        launcher_args += ["--port", str(launcher_port), "--model", str(tiny_model)]
        launcher_args += ["--dtype", "float32", "--max-model-len", "512"]
        launcher = start(launcher_args, tmp_path / "launcher.log")
    try:
        port = free_port()
        router_args = ["router", "--port", str(port), "--prefill-backend", servers["prefill"]]
        router_args += ["--decode-backend", servers["decode"]]
        router = start(router_args, tmp_path / "router.log")
        try:
            wait_healthy(f"http://127.0.0.1:{port}", router, tmp_path / "router.log")
            text, remote = routed_answer(f"http://127.0.0.1:{port}", body)
            assert text == expected_text and remote >= 1
        finally:
            assert stop(router) == 0

        if launcher is None:
            pytest.skip("the launcher's two replicas need two cores")
        url = f"http://127.0.0.1:{launcher_port}"
        wait_healthy(url, launcher, tmp_path / "launcher.log")
        text, remote = routed_answer(url, body)
        assert text == expected_text and remote >= 1
    finally:
        if launcher is not None:
            assert stop(launcher) == 0, (tmp_path / "launcher.log").read_text()[-4000:]
