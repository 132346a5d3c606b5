"""Speculative decoding counters on /metrics (corral:spec_decode_*, vLLM's names): a live
`corral serve --speculative-method ngram` whose engine core runs in its own process, so the
counters cross the process boundary inside the scheduler's stats."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from corral.core.messages import SchedulerStats
from corral.engine.request_stats import IterationStats
from corral.serve.metrics import ServerMetrics
from corral.spec.stats import SpecDecodeStats
from tests.serve.conftest import auth

K = 3
SPEC_ARGS = ("--speculative-method", "ngram", "--num-speculative-tokens", str(K))
SPEC_ARGS += ("--speculative-tokens-rule", "fixed", "--served-model-name", "tiny")
# Prompt lookup finds these n-grams again in the prompt (and in a looping greedy output).
PROMPT = " ".join(["the cat sat on the mat and the dog sat on the log"] * 4)
NAMES = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def spec_counters(text: str) -> tuple[dict[str, float], dict[int, float]]:
    """({num_drafts, num_draft_tokens, num_accepted_tokens}, {position: accepted}) on /metrics."""
    totals = {}
    for name in NAMES:
        match = re.search(rf"^corral:spec_decode_{name}_total{{[^}}]*}} (\S+)$", text, re.M)
        if match is not None:
            totals[name] = float(match[1])
    pattern = (
        r'^corral:spec_decode_num_accepted_tokens_per_pos_total{[^}]*position="(\d+)"[^}]*} (\S+)$'
    )
    per_pos = {int(p): float(v) for p, v in re.findall(pattern, text, re.M)}
    return totals, per_pos


def check_consistent(totals: dict[str, float], per_pos: dict[int, float]) -> None:
    assert set(totals) == set(NAMES), totals
    assert sorted(per_pos) == list(range(len(per_pos))) and len(per_pos) >= K
    assert totals["num_accepted_tokens"] <= totals["num_draft_tokens"]
    assert totals["num_draft_tokens"] <= K * totals["num_drafts"]
    counts = [per_pos[j] for j in range(len(per_pos))]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert sum(counts) == totals["num_accepted_tokens"]
    assert counts[0] <= totals["num_drafts"]


@pytest.fixture(scope="module")
def spec_server(start_server):
    return start_server(*SPEC_ARGS)


def scrape(server) -> str:
    response = httpx.get(server.base_url + "/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def test_counters_are_exported_and_monotone(spec_server):
    before = spec_counters(scrape(spec_server))
    # Registered at start-up with K positions, all zero until a request speculates.
    assert before == (dict.fromkeys(NAMES, 0.0), dict.fromkeys(range(K), 0.0))
    client = openai.OpenAI(base_url=spec_server.base_url + "/v1", api_key="x", max_retries=0)
    for _ in range(3):
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)
    first = spec_counters(scrape(spec_server))
    check_consistent(*first)
    totals, per_pos = first
    assert totals["num_drafts"] > 0 and totals["num_draft_tokens"] > 0
    assert totals["num_accepted_tokens"] > 0, "n-gram lookup never matched the greedy output"
    stream = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stream=True, n=2
    )
    assert sum(len(chunk.choices) for chunk in stream) > 0
    second = spec_counters(scrape(spec_server))
    check_consistent(*second)
    for name in NAMES:
        assert second[0][name] >= totals[name]
    assert second[0]["num_drafts"] > totals["num_drafts"]
    assert all(second[1][j] >= count for j, count in per_pos.items())
    assert "Traceback" not in spec_server.log()


def test_no_spec_series_without_speculation(server):
    text = httpx.get(server.base_url + "/metrics", headers=auth(), timeout=30).text
    assert "corral:prefix_cache_queries_total" in text
    assert "spec_decode" not in text


def _stats(spec: SpecDecodeStats | None) -> IterationStats:
    return IterationStats(SchedulerStats(0, 0, 0.0, 0, 0, 0, spec_decode=spec))


def test_cumulative_snapshots_become_counter_increments():
    metrics = ServerMetrics("m", num_speculative_tokens=2)
    spec = SpecDecodeStats()
    spec.record(2, 1)
    metrics.observe(_stats(spec.copy()))
    metrics.observe(_stats(spec.copy()))  # the same snapshot again (an abort): no change
    spec.record(4, 4)  # a longer draft than announced: positions 2 and 3 appear
    metrics.observe(_stats(spec.copy()))
    totals, per_pos = spec_counters(metrics.render(True).decode())
    assert totals == {"num_drafts": 2, "num_draft_tokens": 6, "num_accepted_tokens": 5}
    assert per_pos == {0: 2, 1: 1, 2: 1, 3: 1}
    off = ServerMetrics("m")
    off.observe(_stats(None))
    assert "spec_decode" not in off.render(True).decode()
