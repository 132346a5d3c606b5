"""stop_when_agreed and answer_pattern through the server: the response carries the vote, the
samples stopped early say so, and bad values are refused naming the field."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.serve.conftest import in_process_client


def _client(tiny_model) -> TestClient:
    return in_process_client(tiny_model, num_blocks=128)


def test_the_vote_comes_back_and_early_stops_say_agreed(tiny_model):
    body = {
        "prompt": [5, 6, 7, 8],
        "n": 5,
        "stop_when_agreed": 2,
        "answer_pattern": "(.)",
        "temperature": 0,
        "max_tokens": 10,
    }
    with _client(tiny_model) as client:
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        consensus = answer["consensus"]
        assert consensus["votes"] >= 2 and consensus["answer"] is not None
        texts = {c["text"][-1:] for c in answer["choices"] if c["stop_reason"] != "agreed"}
        assert texts == {consensus["answer"]}  # greedy: every sample that finished agrees
        chat_body = {k: v for k, v in body.items() if k != "prompt"}
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "2+2?"}], **chat_body},
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["consensus"]["votes"] >= 2
        plain = client.post("/v1/completions", json={"prompt": [5, 6], "max_tokens": 2})
        assert plain.json()["consensus"] is None


def test_bad_values_are_refused(tiny_model):
    with _client(tiny_model) as client:
        for fields, name in (
            ({"n": 2, "stop_when_agreed": 3}, "stop_when_agreed"),
            ({"n": 1, "stop_when_agreed": 2}, "stop_when_agreed"),
            ({"n": 2, "stop_when_agreed": 1}, "stop_when_agreed"),
            ({"n": 2, "answer_pattern": "(a)(b)"}, "answer_pattern"),
            ({"n": 2, "answer_pattern": "["}, "answer_pattern"),
        ):
            response = client.post("/v1/completions", json={"prompt": "hi", **fields})
            assert response.status_code == 400, (fields, response.text)
            assert name in response.json()["error"]["message"], response.text
