"""Multi-LoRA through the server: `model` selects an adapter, GET /v1/models lists them, POST
/v1/load_lora_adapter and /v1/unload_lora_adapter change them at run time (with
--allow-runtime-lora-updating), /metrics counts them. Outputs are checked against the offline
engine with the same adapter (fp32, greedy), so an adapter that is named but not applied fails."""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from corral import LLM, SamplingParams
from corral.core.adapter_residency import AdapterStats
from corral.core.messages import SchedulerStats
from corral.engine.async_llm import AsyncLLM
from corral.engine.request_stats import IterationStats
from corral.llm import engine_config_from_kwargs
from corral.lora.adapter import AdapterError, LoRARequest
from corral.serve.app import build_app
from corral.serve.config import ServerConfig
from corral.serve.errors import APIError
from corral.serve.metrics import ServerMetrics
from corral.serve.state import ServerState
from tests.lora.adapters import ADAPTERS, build_adapter

pytestmark = pytest.mark.slow

BASE = "tiny"
MAX_TOKENS = 12
# Long enough for full KV blocks, so that a repeated prompt hits the prefix cache.
PROMPT = " ".join(["The quick brown fox jumps over the lazy dog while the farmer counts."] * 4)
GREEDY = dict(temperature=0, max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """name -> directory: servable adapters (alpha at start-up, beta and two versions of gamma
    loaded at run time) and refused ones."""
    root = tmp_path_factory.mktemp("lora-api")
    r8 = ADAPTERS["all-r8"]
    built = {
        name: build_adapter(tiny_model, root / name, seed=seed, **r8)
        for name, seed in (("alpha", 1), ("beta", 2), ("gamma-v1", 3), ("gamma-v2", 4))
    }
    built["rank16"] = build_adapter(tiny_model, root / "rank16", seed=5, **ADAPTERS["mlp-r16"])
    # For a base whose hidden size is half the tiny model's: lora_A of q_proj is [8, 32].
    wrong = built["wrong-shape"] = root / "wrong-shape"
    shutil.copytree(built["alpha"], wrong)
    tensors = load_file(wrong / "adapter_model.safetensors")
    for name in tensors:
        if name.endswith("q_proj.lora_A.weight"):
            tensors[name] = tensors[name][:, :32].contiguous()
    save_file(tensors, wrong / "adapter_model.safetensors")
    no_config = built["no-config"] = root / "no-config"
    no_config.mkdir()
    shutil.copy(built["alpha"] / "adapter_model.safetensors", no_config)
    return built


@pytest.fixture(scope="module")
def oracle(tiny_model, adapters):
    """oracle(adapter or None, prompt, max_tokens) -> the offline engine's greedy text."""
    llm = LLM(model=str(tiny_model), dtype="float32", num_threads=1, enable_lora=True)
    cache: dict[tuple, str] = {}

    def text(adapter: str | None, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> str:
        key = (adapter, prompt, max_tokens)
        if key not in cache:
            params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
            lora = LoRARequest(adapter, str(adapters[adapter])) if adapter else None
            [output] = llm.generate([prompt], params, use_tqdm=False, lora_request=lora)
            cache[key] = output.outputs[0].text
        return cache[key]

    return text


@pytest.fixture(scope="module")
def lora_server(start_server, adapters):
    return start_server(
        "--served-model-name",
        BASE,
        "--lora-modules",
        f"alpha={adapters['alpha']}",
        "--max-lora-rank",
        "8",
        "--max-loras",
        "2",
        "--allow-runtime-lora-updating",
    )


@pytest.fixture(scope="module")
def client(lora_server):
    return openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key="x", max_retries=0)


def complete(client, model: str, prompt: str = PROMPT, **options):
    return client.completions.create(model=model, prompt=prompt, **{**GREEDY, **options})


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=60)


def load(server, name: str, path, **extra) -> httpx.Response:
    return post(
        server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), **extra}
    )


def unload(server, name: str) -> httpx.Response:
    return post(server, "/v1/unload_lora_adapter", {"lora_name": name})


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_models_lists_base_and_adapters(client, adapters):
    cards = {card.id: card for card in client.models.list().data}
    assert set(cards) == {BASE, "alpha"}
    alpha = cards["alpha"].model_dump()
    assert alpha["parent"] == BASE and alpha["root"] == str(adapters["alpha"])
    assert alpha["max_model_len"] == cards[BASE].model_dump()["max_model_len"] == 512
    assert cards[BASE].model_dump()["parent"] is None
    # created: when the model's (adapter's) directory was written, the same on every request
    # and every replica serving it.
    assert alpha["created"] == int(os.path.getmtime(adapters["alpha"]))
    root = cards[BASE].model_dump()["root"]
    assert cards[BASE].model_dump()["created"] == int(os.path.getmtime(root))
    again = {card.id: card.model_dump()["created"] for card in client.models.list().data}
    assert again == {name: card.model_dump()["created"] for name, card in cards.items()}


def test_adapter_is_applied_and_echoed(client, oracle):
    base = complete(client, BASE)
    alpha = complete(client, "alpha")
    assert base.model == BASE and alpha.model == "alpha"
    assert base.choices[0].text == oracle(None)
    assert alpha.choices[0].text == oracle("alpha")
    assert alpha.choices[0].text != base.choices[0].text
    assert complete(client, None).choices[0].text == base.choices[0].text  # no model: the base


def test_chat_streaming_with_an_adapter(client):
    messages = [{"role": "user", "content": "Count the sheep."}]
    whole = client.chat.completions.create(model="alpha", messages=messages, **GREEDY)
    assert whole.model == "alpha"
    chunks = list(
        client.chat.completions.create(model="alpha", messages=messages, stream=True, **GREEDY)
    )
    assert chunks and {chunk.model for chunk in chunks} == {"alpha"}
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    base = client.chat.completions.create(model=BASE, messages=messages, **GREEDY)
    assert base.choices[0].message.content != streamed
    # A streamed completion echoes the adapter too.
    stream = complete(client, "alpha", stream=True)
    assert {chunk.model for chunk in stream} == {"alpha"}


def test_unknown_model_is_404(client, lora_server):
    with pytest.raises(openai.NotFoundError) as raised:
        complete(client, "nope")
    assert raised.value.body["code"] == "model_not_found"
    assert "'nope'" in raised.value.body["message"] and "/v1/models" in raised.value.body["message"]
    # The tokenizer endpoints take adapter names too.
    response = post(lora_server, "/tokenize", {"model": "alpha", "prompt": "Hi"})
    assert response.status_code == 200, response.text
    assert post(lora_server, "/tokenize", {"model": "nope", "prompt": "Hi"}).status_code == 404


def test_load_use_and_unload_at_run_time(client, lora_server, adapters, oracle):
    response = load(lora_server, "beta", adapters["beta"])
    assert response.status_code == 200, response.text
    assert response.json() == {"lora_name": "beta", "status": "loaded"}
    cards = {card.id: card.model_dump() for card in client.models.list().data}
    assert cards["beta"]["parent"] == BASE and cards["beta"]["root"] == str(adapters["beta"])
    beta = complete(client, "beta")
    assert beta.model == "beta" and beta.choices[0].text == oracle("beta")
    assert beta.choices[0].text != oracle("alpha")

    response = unload(lora_server, "beta")
    assert response.status_code == 200, response.text
    assert response.json() == {"lora_name": "beta", "status": "unloaded"}
    with pytest.raises(openai.NotFoundError):
        complete(client, "beta")
    assert "beta" not in {card.id for card in client.models.list().data}
    response = unload(lora_server, "beta")
    assert response.status_code == 404 and error_of(response)["param"] == "lora_name"


def test_running_requests_finish_on_an_unloaded_adapter(client, lora_server, adapters, oracle):
    assert load(lora_server, "beta", adapters["beta"]).status_code == 200
    stream = complete(client, "beta", max_tokens=160, stream=True)
    first = next(iter(stream))
    assert unload(lora_server, "beta").status_code == 200
    with pytest.raises(openai.NotFoundError):
        complete(client, "beta")
    text = first.choices[0].text + "".join(chunk.choices[0].text for chunk in stream)
    assert text == oracle("beta", max_tokens=160)


def test_reload_under_the_same_name_uses_the_new_weights(client, lora_server, adapters, oracle):
    assert load(lora_server, "gamma", adapters["gamma-v1"]).status_code == 200
    first = complete(client, "gamma")
    again = complete(client, "gamma")
    assert first.choices[0].text == again.choices[0].text == oracle("gamma-v1")
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the prefix cache is on

    # Taken without load_inplace; replaced with it; then unloaded and loaded anew.
    response = load(lora_server, "gamma", adapters["gamma-v2"])
    assert response.status_code == 400 and error_of(response)["param"] == "lora_name"
    assert "already loaded" in error_of(response)["message"]
    assert load(lora_server, "gamma", adapters["gamma-v2"], load_inplace=True).status_code == 200
    second = complete(client, "gamma")
    assert second.choices[0].text == oracle("gamma-v2") != first.choices[0].text
    # Nothing of v1's KV is reused for v2 (blocks are keyed by the adapter's content hash).
    assert second.usage.prompt_tokens_details.cached_tokens == 0

    assert unload(lora_server, "gamma").status_code == 200
    assert load(lora_server, "gamma", adapters["gamma-v1"]).status_code == 200
    third = complete(client, "gamma")
    assert third.choices[0].text == first.choices[0].text
    assert unload(lora_server, "gamma").status_code == 200


@pytest.mark.parametrize(
    "adapter, problem",
    [
        ("rank16", "above max_lora_rank 8"),
        ("wrong-shape", "another base model"),
        ("no-config", "has no adapter_config.json"),
        ("missing", "is not a directory"),
    ],
)
def test_bad_adapters_are_refused(lora_server, adapters, tmp_path, adapter, problem):
    path = adapters.get(adapter, tmp_path / "does-not-exist")
    response = load(lora_server, "refused", path)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == "lora_path" and problem in error["message"], error
    assert (
        post(lora_server, "/v1/completions", {"model": "refused", "prompt": "x"}).status_code == 404
    )


def test_bad_names_are_refused(lora_server, adapters):
    for name, problem in [("alpha", "already loaded"), (BASE, "served model's name"), ("a@b", "@")]:
        response = load(lora_server, name, adapters["beta"])
        assert response.status_code == 400, response.text
        assert (
            error_of(response)["param"] == "lora_name" and problem in error_of(response)["message"]
        )
    response = post(lora_server, "/v1/load_lora_adapter", {"lora_name": "x"})
    assert response.status_code == 400 and error_of(response)["param"] == "lora_path"


def test_metrics_count_adapters(client, lora_server):
    complete(client, "alpha")
    text = httpx.get(lora_server.base_url + "/metrics", timeout=30).text

    def value(series: str) -> float:
        match = re.search(rf"^{re.escape(series)}{{[^}}]*}} (\S+)$", text, re.M)
        assert match is not None, series
        return float(match[1])

    assert value("corral:lora_loads_total") >= 1
    assert value("corral:lora_load_bytes_total") > 0
    assert value("corral:lora_adapters_resident") >= 1
    for series in ("disk_loads", "slot_evictions", "host_evictions", "bypasses"):
        value(f"corral:lora_{series}_total")
    value("corral:lora_adapters_in_use")
    info = re.findall(r"^corral:lora_requests_info{([^}]*)} \S+$", text, re.M)
    assert len(info) == 1 and 'max_lora="2"' in info[0] and 'waiting_lora_adapters=""' in info[0]


def test_lora_metrics_from_snapshots():
    metrics = ServerMetrics("m", max_loras=4)

    def observe(**lora) -> str:
        metrics.observe(
            IterationStats(SchedulerStats(0, 0, 0.0, 0, 0, 0, lora=AdapterStats(**lora)))
        )
        return metrics.render(True).decode()

    text = observe(num_loads=2, load_bytes=100, running_adapter_names=("b", "a", "a"))
    assert 'corral:lora_loads_total{model_name="m"} 2.0' in text
    assert 'running_lora_adapters="a,b"' in text and 'max_lora="4"' in text
    text = observe(num_loads=5, load_bytes=100, num_resident=2, running_adapter_names=())
    assert 'corral:lora_loads_total{model_name="m"} 5.0' in text
    assert 'corral:lora_adapters_resident{model_name="m"} 2.0' in text
    assert len(re.findall(r"^corral:lora_requests_info{", text, re.M)) == 1  # the old one went
    assert 'running_lora_adapters=""' in text
    assert "lora" not in ServerMetrics("m").render(True).decode()


def test_routes_refuse_without_the_flag_or_without_lora(tiny_model):
    config = engine_config_from_kwargs(model=str(tiny_model), dtype="float32")
    engine = AsyncLLM(config, multiprocess=False)  # never started: the routes answer first
    body = {"lora_name": "x", "lora_path": "/nowhere"}
    off = TestClient(build_app(engine, ServerConfig(), start_engine=False))
    response = off.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 404
    assert "--allow-runtime-lora-updating" in response.json()["error"]["message"]
    assert off.post("/v1/unload_lora_adapter", json={"lora_name": "x"}).status_code == 404
    assert "/v1/load_lora_adapter" not in off.get("/openapi.json").json()["paths"]

    on = TestClient(
        build_app(engine, ServerConfig(allow_runtime_lora_updating=True), start_engine=False)
    )
    response = on.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 400 and "--enable-lora" in response.json()["error"]["message"]
    paths = on.get("/openapi.json").json()["paths"]
    assert "/v1/load_lora_adapter" in paths and "/v1/unload_lora_adapter" in paths


def test_an_adapter_unloaded_before_admission_is_404():
    """Between select_model and the engine's admission (awaits in between: tokenizing, chat
    templates) an unload makes the engine refuse the name: the client sees 404, not 400."""

    class Engine:
        async def add_request_async(self, *args, **fields):
            raise AdapterError(f"no LoRA adapter named {fields['lora_request']!r} is loaded")

    state = ServerState(Engine(), ServerConfig(), BASE, None, ServerMetrics(BASE), None)
    with pytest.raises(APIError) as raised:
        asyncio.run(state.admit("id", ["Hi"], SamplingParams(), lora_request="gone"))
    assert raised.value.status_code == 404 and raised.value.code == "model_not_found"
