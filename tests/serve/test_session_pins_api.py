"""session_id through the server: with --session-kv-ttl-s a paused conversation's prompt KV
survives traffic that evicts everything unpinned, and its next turn is served from it (usage's
cached_tokens, /metrics' pin series); without the TTL the same traffic evicts it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import in_process_client

TURN_1 = list(range(3, 3 + 80))  # five full 16-token blocks


def _app(tiny_model, ttl_s: float) -> TestClient:
    return in_process_client(tiny_model, num_blocks=24, session_kv_ttl_s=ttl_s)


def _complete(client: TestClient, prompt: list[int], **fields) -> dict:
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _metric(client: TestClient, name: str) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def _conversation(client: TestClient) -> int:
    """Turn 1, then traffic that needs every unpinned block, then turn 2: its cached tokens."""
    _complete(client, TURN_1, session_id="conv-1")
    for index in range(3):
        _complete(client, [200 + 10 * index + i % 7 for i in range(160)])
    follow_up = _complete(client, TURN_1 + [400 + i for i in range(16)], session_id="conv-1")
    return follow_up["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_next_turn_is_served_from_the_pinned_kv(tiny_model):
    with _app(tiny_model, ttl_s=60.0) as client:
        assert _conversation(client) == 80
        assert _metric(client, "corral:session_pin_hits_total") == 1
        assert _metric(client, "corral:session_pins_total") == 2  # both turns pinned
        assert _metric(client, "corral:session_pins_active") == 1
        assert _metric(client, "corral:session_pins_reclaimed_total") == 0


def test_without_pins_the_same_traffic_evicts_it(tiny_model):
    with _app(tiny_model, ttl_s=0.0) as client:
        assert _conversation(client) == 0
        assert _metric(client, "corral:session_pins_active") is None  # no series when off


def test_bad_session_ids_are_refused(tiny_model):
    with _app(tiny_model, ttl_s=60.0) as client:
        response = client.post("/v1/completions", json={"prompt": "hi", "session_id": "x" * 300})
        assert response.status_code == 400 and "session_id" in response.json()["error"]["message"]
        response = client.post(
            "/v1/completions", json={"prompt": "hi", "session_id": "s", "n": 2, "max_tokens": 2}
        )
        assert response.status_code == 400
        assert "session_id needs n == 1" in response.json()["error"]["message"]


@pytest.mark.parametrize("ttl", ["-1", "inf"])
def test_bad_ttls_are_refused_at_start(ttl, tiny_model):
    from corral.cli import main

    # Refused while building the engine's configuration, before anything loads or listens.
    assert main(["serve", "--model", str(tiny_model), "--session-kv-ttl-s", ttl]) == 2


def test_session_pause_needs_a_session_and_a_sane_value(tiny_model):
    with _app(tiny_model, ttl_s=60.0) as client:
        for fields, message in (
            ({"session_pause_s": 1.0}, "session_pause_s needs a session_id"),
            ({"session_id": "s", "session_pause_s": -1.0}, "session_pause_s"),
            ({"session_id": "s", "session_pause_s": 1e9}, "session_pause_s"),
        ):
            response = client.post("/v1/completions", json={"prompt": "hi", **fields})
            assert response.status_code == 400, (fields, response.text)
            assert message in response.json()["error"]["message"]
        ok = client.post(
            "/v1/completions",
            json={"prompt": "hi", "session_id": "s", "session_pause_s": 2.5, "max_tokens": 2},
        )
        assert ok.status_code == 200, ok.text
