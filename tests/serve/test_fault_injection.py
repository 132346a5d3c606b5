"""CORRAL_FAULT makes the engine core fail at a given step: the request in flight gets an
error (never a complete answer), /health turns 503, and new requests are refused (issue 13)."""

from __future__ import annotations

import httpx
import pytest

from corral.engine.fault_injection import FAULT_ENV, FAULT_EXIT_CODE, Fault
from tests.serve.test_overload_disconnect import wait_for


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("raise@3", Fault("raise", 3)),
        ("stall@2:1.5", Fault("stall", 2, 1.5)),
        ("slow@5:0.01", Fault("slow", 5, 0.01)),
        ("exit@1", Fault("exit", 1)),
    ],
)
def test_fault_specs_parse(spec, expected):
    assert Fault.parse(spec) == expected


@pytest.mark.parametrize(
    "bad", ["boom@1", "raise", "raise@0", "stall@2", "slow@3", "slow@1:-1", "exit@x"]
)
def test_bad_fault_specs_are_refused(bad):
    with pytest.raises(ValueError, match=FAULT_ENV):
        Fault.parse(bad)


def test_a_slow_fault_sleeps_on_every_step_from_its_first(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("corral.engine.fault_injection.time.sleep", slept.append)
    fault = Fault.parse("slow@3:0.25")
    for step_number in range(1, 7):
        fault.before_step(step_number)
    assert slept == [0.25] * 4
    stall = Fault.parse("stall@3:0.5")
    for step_number in range(1, 7):
        stall.before_step(step_number)
    assert slept == [0.25] * 4 + [0.5]


@pytest.fixture(scope="module")
def faulty_servers(start_server):
    """Two servers whose cores fail at their 4th step, started together."""
    servers = {}
    with pytest.MonkeyPatch.context() as patch:
        for spec in ("raise@4", "exit@4"):
            patch.setenv(FAULT_ENV, spec)
            servers[spec] = start_server("--num-kv-blocks", "64", wait=False)
    return servers


def _health(server) -> httpx.Response | None:
    try:
        return httpx.get(server.base_url + "/health", timeout=5)
    except httpx.HTTPError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("spec, reason", [("raise@4", "injected fault"), ("exit@4", "exit code")])
def test_a_faulty_core_fails_the_request_in_flight(faulty_servers, spec, reason):
    server = faulty_servers[spec]
    server.wait_ready()
    body = {"prompt": "The quick", "max_tokens": 40, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body, timeout=120) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert any('"error"' in event for event in events)
    assert not any('"finish_reason":"length"' in event.replace(" ", "") for event in events)
    health = wait_for(
        lambda: (h := _health(server)) is not None and h.status_code == 503 and h, "503"
    )
    message = health.json()["error"]["message"]
    assert reason in message
    if spec.startswith("exit"):
        assert str(FAULT_EXIT_CODE) in message
    refused = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert refused.status_code == 503
