"""Faults: the engine process killed, its loop stalled, the server told to stop (SIGTERM).
Each test starts its own server, since each ends one."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from corral import SamplingParams
from corral.engine.async_llm import AsyncLLM
from corral.engine.core_client import EngineDeadError
from corral.llm import engine_config_from_kwargs
from corral.sampling_params import OutputKind
from tests.serve.test_overload_disconnect import wait_for

pytestmark = pytest.mark.slow

SERVER_ARGS = {
    "kill": ("--heartbeat-timeout-s", "30", "--num-kv-blocks", "64"),
    "stall": ("--heartbeat-timeout-s", "2", "--num-kv-blocks", "64"),
    "drain": ("--num-kv-blocks", "64"),
}


@pytest.fixture(scope="module")
def servers(start_server):
    """The three servers start together (their start-ups overlap); each test ends one."""
    return {name: start_server(*args, wait=False) for name, args in SERVER_ARGS.items()}


def _status(server, path: str = "/health") -> httpx.Response | None:
    try:
        return httpx.get(server.base_url + path, timeout=5)
    except httpx.HTTPError:
        return None


def _is_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def _post_in_thread(url: str, body: dict) -> tuple[threading.Thread, list]:
    result: list = []

    def post() -> None:
        try:
            result.append(httpx.post(url, json=body, timeout=120))
        except httpx.HTTPError as error:
            result.append(error)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def test_killed_engine_fails_requests_in_flight_and_health(servers):
    server = servers["kill"]
    server.wait_ready()
    body = {"prompt": "The quick", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json=body, timeout=120
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        pid = server.engine_pid()
        os.kill(pid, signal.SIGSTOP)  # keeps both requests pending until the kill
        thread, result = _post_in_thread(
            server.base_url + "/v1/completions", {"prompt": "Natalia", "max_tokens": 50}
        )
        os.kill(pid, signal.SIGKILL)
        rest = [line for line in lines if line.startswith("data: ")]
    errors = [line for line in rest if '"error"' in line]
    assert errors and "engine" in errors[0] and "exit code" in errors[0]
    thread.join(120)
    assert not thread.is_alive()
    response = result[0]
    assert response.status_code == 503
    assert "engine" in response.json()["error"]["message"]
    health = wait_for(
        lambda: (r := _status(server)) is not None and r.status_code == 503 and r, "503"
    )
    assert "exit code" in health.json()["error"]["message"]
    refused = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert refused.status_code == 503


def test_stalled_engine_loop_is_declared_dead_within_the_heartbeat_timeout(servers):
    server = servers["stall"]
    server.wait_ready()
    body = {"prompt": "The quick", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json=body, timeout=120
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        pid = server.engine_pid()
        os.kill(pid, signal.SIGSTOP)  # alive, but its loop makes no progress
        rest = [line for line in lines if line.startswith("data: ")]
    errors = [line for line in rest if '"error"' in line]
    assert errors and "stalled" in errors[0] and "heartbeat" in errors[0]
    assert rest[-1] == "data: [DONE]"
    health = _status(server)
    assert health is not None and health.status_code == 503
    assert "stalled" in health.json()["error"]["message"]
    wait_for(lambda: _is_gone(pid), "the stalled engine process to be killed")


def test_sigterm_drains_running_requests_then_exits(servers):
    server = servers["drain"]
    server.wait_ready()
    body = {"prompt": "The quick", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json=body, timeout=120
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        pid = server.engine_pid()
        os.kill(pid, signal.SIGSTOP)  # the request cannot finish before the server is told
        server.process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                new = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x"})
            except httpx.ConnectError:
                return True
            return new.status_code == 503

        wait_for(refused, "new requests to be refused")
        os.kill(pid, signal.SIGCONT)
        chunks = [line for line in lines if line.startswith("data: ")]
    assert chunks[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in chunks[-2]
    assert not any('"error"' in chunk for chunk in chunks)
    assert server.process.wait(60) == 0
    assert "Traceback" not in server.log()


def test_a_step_past_the_step_timeout_declares_the_engine_dead(tiny_model):
    """The multi-process client without HTTP: normal requests, then a loop stuck in one
    iteration (the core's `sleep` utility) past step_timeout_s."""
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256
    )
    greedy = SamplingParams(temperature=0, max_tokens=6, output_kind=OutputKind.FINAL_ONLY)
    pending = SamplingParams(max_tokens=200, ignore_eos=True, output_kind=OutputKind.DELTA)

    async def main():
        engine = await AsyncLLM.create(
            config, multiprocess=True, heartbeat_timeout_s=10, step_timeout_s=1.0
        )
        try:
            done = [o async for o in engine.generate("The quick", greedy, "ok")]
            stream = engine.add_request("pending", "The quick", pending)
            stuck = asyncio.ensure_future(engine.client.call_utility("sleep", 60.0))
            with pytest.raises(EngineDeadError, match="step timeout 1 s"):
                async for _ in engine.iterate(stream):
                    pass
            with pytest.raises(EngineDeadError):
                await stuck
            assert not engine.is_healthy
            return done
        finally:
            await engine.shutdown()

    done = asyncio.run(asyncio.wait_for(main(), 500))
    assert done[-1].finished and len(done[-1].outputs[0].token_ids) == 6
