"""/metrics under vLLM's names (vllm:num_requests_running, ...) for routers such as llm-d, Dynamo
and the vLLM router: the names, types and labels vLLM's PrometheusStatLogger exports, with the
values of corral's own series."""

from __future__ import annotations

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from corral.core.messages import SchedulerStats
from corral.engine.request_stats import IterationStats
from corral.serve.metrics import ServerMetrics
from tests.serve.conftest import API_KEY, auth

# vLLM's family name -> Prometheus type (counters are scraped as <name>_total).
VLLM_SERIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
}


def series(text: str) -> dict[str, tuple[str, dict[str, str], float]]:
    """family name -> (type, labels, value) of its one sample (the _total one for counters)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in VLLM_SERIES or family.name.replace("corral:", "vllm:") in VLLM_SERIES:
            (sample,) = [s for s in family.samples if not s.name.endswith("_created")]
            suffix = "_total" if family.type == "counter" else ""
            assert sample.name == family.name + suffix
            found[family.name] = (family.type, sample.labels, sample.value)
    return found


def assert_twins(text: str, model_name: str) -> dict[str, float]:
    """Every vllm: series has vLLM's type and labels and its corral: twin's value."""
    found = series(text)
    values = {}
    for name, kind in VLLM_SERIES.items():
        assert name in found, f"{name} missing"
        vllm_kind, labels, value = found[name]
        assert vllm_kind == kind
        assert labels == {"model_name": model_name, "engine": "0"}
        corral_kind, corral_labels, corral_value = found[name.replace("vllm:", "corral:")]
        assert (corral_kind, corral_labels) == (kind, {"model_name": model_name})
        assert value == corral_value, name
        values[name] = value
    return values


def test_vllm_series_carry_the_corral_values():
    metrics = ServerMetrics('a "quoted" model')
    metrics.observe(IterationStats(SchedulerStats(3, 2, 0.25, 1, 100, 40)))
    metrics.observe(IterationStats(SchedulerStats(1, 0, 0.5, 4, 164, 80)))
    text = metrics.render(True).decode()
    assert "vllm:prefix_cache_queries_total{" in text and "vllm:num_preemptions_total{" in text
    assert assert_twins(text, 'a "quoted" model') == {
        "vllm:num_requests_running": 1,
        "vllm:num_requests_waiting": 0,
        "vllm:kv_cache_usage_perc": 0.5,
        "vllm:prefix_cache_queries": 164,
        "vllm:prefix_cache_hits": 80,
        "vllm:num_preemptions": 4,
    }
    # Only the series routers read are duplicated.
    assert "vllm:time_to_first_token_seconds" not in text
    assert "vllm:prefix_cache_evictions" not in text


def test_a_live_server_exports_them(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    for _ in range(2):  # the second run hits the prefix cache
        client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
    text = httpx.get(server.base_url + "/metrics", headers=auth(), timeout=30).text
    values = assert_twins(text, "tiny")
    assert values["vllm:prefix_cache_queries"] > 0
    assert 0 < values["vllm:prefix_cache_hits"] <= values["vllm:prefix_cache_queries"]
    assert 0 <= values["vllm:kv_cache_usage_perc"] <= 1
    # The KV pool's geometry, as vLLM's cache_config_info labels (routers size their view of
    # each replica's prefix cache from it).
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ("vllm:cache_config_info", "corral:cache_config_info"):
        (sample,) = families[name].samples
        assert sample.value == 1
        assert int(sample.labels["block_size"]) > 0 and int(sample.labels["num_gpu_blocks"]) > 0
