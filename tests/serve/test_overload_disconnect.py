"""Overload (bounded queue: 503 + Retry-After, admitted requests unharmed) and client disconnects
(the request is aborted and its KV blocks come back, integrity holding).

The engine process is paused with SIGSTOP while requests arrive, so that which requests wait and
which run does not depend on timing; the HTTP process keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY, auth
from tests.serve.test_openai_api import _metric_values

QUEUE_BOUND = 6  # the package server's --max-queued-requests


@contextlib.contextmanager
def engine_paused(server):
    pid = server.engine_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def kv_state(server) -> dict:
    return httpx.get(server.base_url + "/debug/kv", headers=auth()).json()


def aborted_count(server) -> float:
    text = httpx.get(server.base_url + "/metrics", headers=auth()).text
    key = 'corral:request_success_total{finished_reason="abort",model_name="tiny"}'
    return _metric_values(text).get(key, 0.0)


def assert_kv_pool_clean(server) -> None:
    """No request left, every block free (cached blocks count as free), integrity holds."""

    def clean():
        state = kv_state(server)
        return state["num_requests"] == 0 and state["num_free_blocks"] == state["num_blocks"]

    wait_for(clean, "the KV blocks to return to the free pool")


def test_overload_rejects_past_the_queue_bound_and_admitted_requests_complete(server):
    num_requests = QUEUE_BOUND + 4
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)

    async def one(index: int):
        try:
            result = await client.completions.create(
                model="tiny",
                prompt=f"request {index}",
                max_tokens=5,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return result
        except openai.APIStatusError as error:
            return error

    async def burst():
        tasks = [asyncio.create_task(one(i)) for i in range(num_requests)]
        with engine_paused(server):
            # While the engine is paused nothing can be scheduled: exactly the queue bound is
            # admitted and the rest are refused at once.
            deadline = time.monotonic() + 60
            while sum(t.done() for t in tasks) < num_requests - QUEUE_BOUND:
                assert time.monotonic() < deadline, "the 503s did not come back"
                await asyncio.sleep(0.05)
            assert not any(t.done() and not isinstance(t.result(), Exception) for t in tasks)
        return await asyncio.gather(*tasks)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) == num_requests - QUEUE_BOUND
    assert len(served) == QUEUE_BOUND
    for error in refused:
        assert error.status_code == 503
        assert int(error.response.headers["retry-after"]) >= 1
        assert "overloaded" in error.message and f"bound: {QUEUE_BOUND}" in error.message
    for result in served:
        assert result.usage.completion_tokens == 5
        assert result.choices[0].finish_reason == "length"
    text = httpx.get(server.base_url + "/metrics", headers=auth()).text
    assert (
        _metric_values(text)['corral:request_rejected_total{model_name="tiny",status="503"}'] >= 4
    )
    assert_kv_pool_clean(server)


def test_disconnect_mid_stream_aborts_and_frees_the_blocks(server):
    before = aborted_count(server)
    body = {"prompt": "The quick fox", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json=body, headers=auth(), timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"text"' in first
        with engine_paused(server):  # the request cannot finish on its own from here
            response.close()
            wait_for(lambda: aborted_count(server) == before + 1, "the abort")
    assert_kv_pool_clean(server)


def test_disconnect_while_waiting_for_a_full_answer_aborts(server):
    before = aborted_count(server)
    with engine_paused(server):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                server.base_url + "/v1/completions",
                json={"prompt": "Natalia sold clips", "max_tokens": 300},
                headers=auth(),
                timeout=httpx.Timeout(1.0),
            )
        wait_for(lambda: aborted_count(server) == before + 1, "the abort")
    assert_kv_pool_clean(server)
    ok = httpx.post(
        server.base_url + "/v1/completions",
        json={"prompt": "Natalia sold clips", "max_tokens": 3},
        headers=auth(),
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
