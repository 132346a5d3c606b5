"""The official `openai` client against a live `corral serve` on loopback (one server for the
module): completions and chat, streaming and not, n > 1, logprobs, stop, seeds, usage, the
tokenizer endpoints, API keys and metrics."""

from __future__ import annotations

import httpx
import openai
import pytest

from corral import LLM, SamplingParams
from tests.serve.conftest import API_KEY, auth


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def offline(tiny_model) -> LLM:
    return LLM(model=str(tiny_model), dtype="float32", max_model_len=512, num_blocks=64)


PROMPT = "The quick brown fox"


def test_models_version_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server.base_url + "/version", headers=auth()).json()["version"]
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_completion_matches_the_offline_engine(client, offline):
    expected = offline.generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False
    )[0]
    result = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = result.choices[0]
    assert choice.text == expected.outputs[0].text
    assert choice.finish_reason == "length"
    assert result.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert result.usage.completion_tokens == 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12


def test_streamed_completion_adds_up_to_the_full_one(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0)
    full = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "How many apples are left?"}]
    full = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert full.choices[0].message.role == "assistant"
    assert 0 < full.usage.completion_tokens <= 10
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_n_samples_and_seeded_reproducibility(client):
    kwargs = dict(model="tiny", prompt="A train leaves", max_tokens=10, temperature=1.0, n=3)
    first = client.completions.create(**kwargs, seed=7, extra_body={"ignore_eos": True})
    again = client.completions.create(**kwargs, seed=7, extra_body={"ignore_eos": True})
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.completion_tokens == 30
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        n=2,
        max_tokens=5,
        seed=3,
        stream=True,
    )
    texts = {0: "", 1: ""}
    for chunk in chat:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(texts.values())


def test_logprobs_in_both_formats(client):
    result = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    for token, chosen, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert token.startswith("bytes:") or token in result.choices[0].text
        assert chosen <= 0 and 1 <= len(top) <= 4 and top[token] == chosen
        assert max(top.values()) >= chosen - 1e-6  # greedy: the chosen one is the most likely
    echoed = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=2, temperature=0, logprobs=1, echo=True
    )
    assert echoed.choices[0].text.startswith(PROMPT)
    assert echoed.choices[0].logprobs.token_logprobs[0] is None
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_stop_strings_and_token_prompts(server, client):
    free = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    text = free.choices[0].text
    stop = text[6:9]
    stopped = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]
    ids = httpx.post(server.base_url + "/tokenize", json={"prompt": PROMPT}, headers=auth()).json()[
        "tokens"
    ]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == text
    batch = client.completions.create(
        model="tiny", prompt=[PROMPT, "Serving large"], max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == text[: len(batch.choices[0].text)]
    detok = httpx.post(server.base_url + "/detokenize", json={"tokens": ids}, headers=auth())
    assert PROMPT in detok.json()["prompt"]


def test_api_key_guards_everything_but_health(server):
    for path in ("/v1/models", "/metrics", "/version"):
        assert httpx.get(server.base_url + path).status_code == 401
        wrong = httpx.get(server.base_url + path, headers=auth("wrong"))
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.base_url + path, headers=auth()).status_code == 200
    response = httpx.post(
        server.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}
    )
    assert response.status_code == 401
    assert httpx.get(server.base_url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="nope", max_retries=0).models.list()
    assert API_KEY not in server.log()


def test_metrics_are_exported_with_the_corral_prefix(server, client):
    long_prompt = " ".join([PROMPT] * 12)  # several full KV blocks: the second run hits
    for _ in range(2):
        client.completions.create(model="tiny", prompt=long_prompt, max_tokens=3, temperature=0)
    text = httpx.get(server.base_url + "/metrics", headers=auth()).text
    for name in (
        "corral:num_requests_running",
        "corral:num_requests_waiting",
        "corral:kv_cache_usage_perc",
        "corral:prefix_cache_queries_total",
        "corral:prefix_cache_hits_total",
        "corral:num_preemptions_total",
        "corral:time_to_first_token_seconds_bucket",
        "corral:inter_token_latency_seconds_bucket",
        "corral:time_per_output_token_seconds_bucket",
        "corral:e2e_request_latency_seconds_bucket",
        "corral:request_queue_time_seconds_bucket",
    ):
        assert name in text, name
    values = _metric_values(text)
    assert values['corral:request_success_total{finished_reason="length",model_name="tiny"}'] >= 1
    assert values['corral:prompt_tokens_total{model_name="tiny"}'] > 0
    assert values['corral:generation_tokens_total{model_name="tiny"}'] >= 3
    assert values['corral:time_to_first_token_seconds_count{model_name="tiny"}'] >= 1
    assert values['corral:prefix_cache_hits_total{model_name="tiny"}'] >= 16


def _metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
