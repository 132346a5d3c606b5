"""rag_chunks on /v1/completions and /v1/chat/completions: reused with --rag-chunk-reuse, a chunk
the (templated) prompt does not contain is a 400 naming it."""

from __future__ import annotations

from tests.serve.conftest import in_process_client

DOCS = [
    "Natalia sold clips to 48 of her friends in April.",
    "A train leaves the station at noon.",
    "How many apples are left in the basket?",
]


def test_completions_and_chat_reuse_chunks_and_refuse_missing_ones(tiny_model):
    with in_process_client(
        tiny_model, num_blocks=96, max_model_len=512, rag_chunk_reuse=True
    ) as client:
        for order in ([0, 1, 2], [2, 0, 1]):
            prompt = "Context: " + " ".join(DOCS[i] for i in order) + " Question: what?"
            body = {"prompt": prompt, "max_tokens": 2, "rag_chunks": [DOCS[i] for i in order]}
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
        chat = {
            "messages": [{"role": "user", "content": DOCS[1] + " " + DOCS[0] + " Why?"}],
            "max_tokens": 2,
            "rag_chunks": [DOCS[0], DOCS[1]],
        }
        response = client.post("/v1/chat/completions", json=chat)
        assert response.status_code == 200, response.text
        bad = {"prompt": "Context: nothing.", "max_tokens": 2, "rag_chunks": ["a lazy cat"]}
        response = client.post("/v1/completions", json=bad)
        assert response.status_code == 400
        assert "a lazy cat" in response.json()["error"]["message"]
        bad_chat = {**chat, "rag_chunks": ["a lazy cat"]}
        response = client.post("/v1/chat/completions", json=bad_chat)
        assert response.status_code == 400
        assert "a lazy cat" in response.json()["error"]["message"]
        empty = {**bad, "rag_chunks": [""]}
        assert client.post("/v1/completions", json=empty).status_code == 400
