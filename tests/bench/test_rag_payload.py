"""corral bench serve --send-rag-chunks: the rag workload's retrieved chunks go out as token-id
rag_chunks beside a token-id prompt, and corral serve --rag-chunk-reuse takes them."""

from __future__ import annotations

import pytest

from corral.bench.payload import RequestOptions, build_payload
from corral.workloads import build_workload
from corral.workloads.options import WorkloadOptions
from tests.serve.conftest import in_process_client


def rag_workload(vocab_size: int = 500):
    return build_workload(
        WorkloadOptions(
            dataset="rag", num_requests=3, num_groups=4, num_rag_chunks=3, prefix_len=24,
            input_len=8, output_len=2, vocab_size=vocab_size,
        )
    )  # fmt: skip


def test_chunks_are_the_prompt_slices_the_spec_names():
    workload = rag_workload()
    options = RequestOptions(send_rag_chunks=True)
    for spec in workload:
        body, _ = build_payload(spec, workload, options, None)
        ids = workload.token_ids(spec)
        assert body["prompt"] == ids
        assert len(body["rag_chunks"]) == 3
        for (first, count), chunk in zip(spec.rag_chunk_spans, body["rag_chunks"], strict=True):
            assert chunk == ids[first : first + count] and count > 0
        plain, _ = build_payload(spec, workload, RequestOptions(), None)
        assert "rag_chunks" not in plain


def test_chunks_need_token_id_completions():
    with pytest.raises(ValueError, match="--send-rag-chunks"):
        RequestOptions(endpoint="chat", send_rag_chunks=True)
    with pytest.raises(ValueError, match="--send-rag-chunks"):
        RequestOptions(prompt_format="text", send_rag_chunks=True)


def test_the_server_reuses_the_sent_chunks(tiny_model):
    with in_process_client(
        tiny_model, num_blocks=128, max_model_len=512, rag_chunk_reuse=True
    ) as client:
        workload = rag_workload(vocab_size=300)
        options = RequestOptions(send_rag_chunks=True)
        for spec in workload:
            body, _ = build_payload(spec, workload, options, None)
            body = {key: value for key, value in body.items() if key != "model"}
            response = client.post("/v1/completions", json={**body, "stream": False})
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["prompt_tokens"] == spec.num_prompt_tokens
