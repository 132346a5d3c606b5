"""The reasoning workload (GSM8K prompts, n samples each) in the simulator: a request's samples
fan out as the engine's do (corral/core/sample_fanout.py) and share the prompt's blocks, and the
peak KV blocks with and without sharing are those of the real engine on the same workload."""

from __future__ import annotations

import json

import pytest

from corral.sim.api import simulate_result
from corral.sim.cluster import ClusterSimulator
from corral.sim.config import ClusterSpec
from corral.sim.deployment import DeploymentOptions
from corral.workloads import WorkloadOptions, build_workload
from tests.sim.helpers import instance

NUM_SAMPLES = 4
BLOCK_SIZE = 16
SCHEDULER = dict(max_num_seqs=64, max_num_batched_tokens=256)


@pytest.fixture(autouse=True)
def _gsm8k(tiny_gsm8k_dir):
    """The preset reads GSM8K's test split: a small one of the tests' own."""


def reasoning(vocab_size: int = 1000, num_requests: int = 3, **fields):
    options = WorkloadOptions(
        dataset="reasoning",
        num_requests=num_requests,
        samples_per_request=NUM_SAMPLES,
        reasoning_output_len=40,
        vocab_size=vocab_size,
        **fields,
    )
    return build_workload(options)


def simulated(work, share: bool) -> tuple[int, ClusterSimulator]:
    """(peak KV blocks in use after a step was scheduled, the finished simulator)."""
    spec = instance(num_blocks=256, max_model_len=1024, share_sibling_prompts=share, **SCHEDULER)
    sim = ClusterSimulator(ClusterSpec(instances=(spec,), check_integrity=True), work)
    result = sim.run()
    only = result.instances[0]
    return round(only.max_kv_usage * only.num_blocks), sim


def test_samples_share_the_prompt_blocks_in_the_simulator():
    work = reasoning()
    assert {spec.samples_per_request for spec in work} == {NUM_SAMPLES}
    peak_shared, shared = simulated(work, share=True)
    peak_unshared, unshared = simulated(work, share=False)
    for sim in (shared, unshared):
        records = list(sim.records.values())
        # One record per request, with every sample's tokens.
        assert [r.num_output_tokens for r in records] == [
            s.num_output_tokens * NUM_SAMPLES for s in work
        ]
        assert all(r.num_samples == NUM_SAMPLES for r in records)
        assert sim.instances[0].samples.num_requests == 0  # every sample group finished
    # Shared, the other samples take the prompt's full blocks as prefix hits: (n - 1) x the
    # prompt's full-block tokens per request (never its last token's block).
    shared_tokens = sum((s.num_prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE for s in work)
    stats = shared.instances[0].kv.stats
    assert stats.prefix_hit_tokens == (NUM_SAMPLES - 1) * shared_tokens
    assert unshared.instances[0].kv.stats.prefix_hit_tokens < stats.prefix_hit_tokens
    assert peak_shared < peak_unshared
    # The same requests, the same work: only the prompt tokens computed differ.
    assert shared.instances[0].num_batched_tokens == (
        unshared.instances[0].num_batched_tokens
        - (stats.prefix_hit_tokens - unshared.instances[0].kv.stats.prefix_hit_tokens)
    )


def test_report_counts_samples():
    report_result = simulate_result(
        reasoning(num_requests=2), DeploymentOptions(num_blocks=512, max_model_len=1024)
    )
    from corral.sim.report import build_report

    summary = build_report(report_result).summary
    assert summary.num_completed == 2
    assert summary.total_samples == 2 * NUM_SAMPLES
    assert summary.sample_throughput == pytest.approx(
        summary.request_throughput * NUM_SAMPLES, rel=1e-9
    )


def test_disaggregated_deployment_refuses_samples():
    options = DeploymentOptions(num_prefill_instances=1, num_decode_instances=1)
    with pytest.raises(ValueError, match="samples_per_request 1 only"):
        simulate_result(reasoning(num_requests=1), options)


def engine_peak_blocks(tiny_model, work, share: bool) -> tuple[int, int]:
    """(peak KV blocks in use after a step was scheduled, prefix-hit tokens) of the real engine
    on the workload, every request added before the first step as the simulator's burst."""
    from corral import LLM, SamplingParams

    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=256,
        block_size=BLOCK_SIZE,
        max_model_len=1024,
        share_sibling_prompts=share,
        **SCHEDULER,
    )
    engine = llm.engine
    scheduler, kv = engine.scheduler, engine.scheduler.kv
    peak = 0
    schedule = scheduler.schedule

    def schedule_and_measure(*args, **kwargs):
        nonlocal peak
        output = schedule(*args, **kwargs)
        peak = max(peak, kv.pool.num_blocks - kv.pool.num_free_blocks)
        return output

    scheduler.schedule = schedule_and_measure
    for spec in work:
        params = SamplingParams(
            n=spec.samples_per_request,
            temperature=1.0,
            seed=7,
            max_tokens=spec.num_output_tokens,
            ignore_eos=True,
        )
        engine.add_request(spec.request_id, {"prompt_token_ids": work.token_ids(spec)}, params)
    while engine.has_unfinished_requests():
        engine.step()
    return peak, kv.stats.prefix_hit_tokens


def test_simulated_peak_kv_blocks_match_the_engine(tiny_model):
    vocab_size = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    work = reasoning(vocab_size=vocab_size)
    for share in (True, False):
        engine_peak, engine_hits = engine_peak_blocks(tiny_model, work, share)
        sim_peak, sim = simulated(work, share)
        assert sim_peak == engine_peak, share
        assert sim.instances[0].kv.stats.prefix_hit_tokens == engine_hits, share
