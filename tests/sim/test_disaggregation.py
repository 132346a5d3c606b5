"""Prefill/decode disaggregation: the instances run corral's KV connector scheduler half, the
simulated worker half moves the lent blocks in virtual time (hand-computed times)."""

from __future__ import annotations

import pytest

from corral.sim.cluster import SimResult
from corral.sim.config import ClusterSpec
from tests.sim.helpers import instance, run, spec, workload
from tests.sim.test_cli_and_profile import main

BLOCK_SIZE = 16  # tests.sim.helpers.instance
KV_BYTES_PER_TOKEN = 1000


def disaggregated(num_prefill: int = 1, num_decode: int = 1, **cluster_fields) -> ClusterSpec:
    pools = [instance(role="prefill")] * num_prefill + [instance(role="decode")] * num_decode
    return ClusterSpec(tuple(pools), check_integrity=True, **cluster_fields)


def connector_stats(result: SimResult, role: str):
    return [i.scheduler.connector.stats for i in result.instances if i.spec.role == role]


def assert_all_released(result: SimResult) -> None:
    """No request, lease or fetch left; every block free (or cached-evictable) everywhere."""
    for inst in result.instances:
        num_free, num_cached, num_in_use = inst.kv.pool.check_integrity()
        assert num_in_use == 0 and num_free + num_cached == inst.num_blocks
        assert not inst.scheduler.has_unfinished_requests()
        worker = inst.executor.connector
        assert worker.leases.num_open() == 0 and worker.fetches.num_active() == 0


def test_prefill_leg_then_fetch_then_the_decode_instance_generates_every_token():
    # 10 ms + 1 ms/token steps; KV is 1000 bytes/token at 1 MB/s plus 1 ms latency.
    #   prefill instance: 33 tokens, max_tokens 1 -> done at 43 ms (its token is not the
    #   client's); it lends the prompt's 2 full blocks
    #   fetch: 2 blocks = 32 tokens = 32 000 bytes -> 32 ms + 1 ms -> arrives at 76 ms
    #   decode instance: 32 prompt tokens are prefix hits, it computes the last one and
    #   samples the first token (11 ms) -> 87 ms, then one token per 11 ms step -> 98, 109 ms
    cluster = disaggregated(kv_transfer_bandwidth_bytes_per_s=1e6, kv_transfer_latency_s=0.001)
    result = run(cluster, workload(spec("A", 0.0, 33, 3)))
    (record,) = result.records
    assert list(record.token_times_s) == pytest.approx([0.087, 0.098, 0.109])
    prefill, decode = result.instances
    assert prefill.num_batched_tokens == 33 and decode.num_batched_tokens == 1 + 2
    assert decode.kv.num_external_tokens == 32 and decode.kv.stats.prefix_hit_tokens == 32
    assert result.routes["A"] == [0, 1]
    (lent,) = connector_stats(result, "prefill")
    (fetched,) = connector_stats(result, "decode")
    assert (lent.num_leases, lent.num_leases_acked) == (1, 1)
    assert (fetched.num_fetches, fetched.num_fetches_ok) == (1, 1)
    assert fetched.fetched_bytes == 32_000 and fetched.fetch_seconds == pytest.approx(0.033)
    assert result.end_time_s == pytest.approx(0.109)
    assert_all_released(result)


def test_a_prompt_of_whole_blocks_recomputes_its_last_block():
    # 32 tokens: the prefill lends 2 blocks, but a prefix hit never covers the last token, so
    # the decode instance fetches 1 block (17 ms) and computes 16 tokens (26 ms): 43 + 26 = 85.
    cluster = disaggregated(kv_transfer_bandwidth_bytes_per_s=1e6, kv_transfer_latency_s=0.001)
    result = run(cluster, workload(spec("A", 0.0, 32, 3)))
    assert list(result.records[0].token_times_s) == pytest.approx([0.085, 0.096, 0.107])
    assert result.instances[1].num_batched_tokens == 16 + 2
    assert result.instances[1].kv.num_external_tokens == 16
    assert_all_released(result)


def test_one_token_requests_take_their_token_from_the_decode_instance():
    # prefill 20 tokens (30 ms); fetch 1 block (16 000 bytes at 50 GB/s); decode 4 tokens (14 ms)
    result = run(disaggregated(), workload(spec("A", 0.0, 20, 1)))
    assert list(result.records[0].token_times_s) == pytest.approx([0.030 + 16_000 / 50e9 + 0.014])
    assert [i.num_assigned for i in result.instances] == [1, 1]
    assert_all_released(result)


def test_leases_and_fetches_follow_the_block_rules():
    # A prefill lends (prompt_len - 1) // 16 full blocks (a hit never covers the last token, so
    # the block holding it is not lent; none at all for prompts of 16 tokens or fewer), and a
    # decode instance fetches every lent block.
    prompt_lens = [10, 16, 17, 32, 40, 64, 100, 15, 48]
    work = workload(
        *[spec(f"r{i}", 0.01 * i, n, 5, token_seed=i) for i, n in enumerate(prompt_lens)]
    )
    result = run(disaggregated(2, 2, router="round-robin", kv_lease_timeout_s=0.5), work)
    assert [r.num_output_tokens for r in result.records] == [5] * len(prompt_lens)
    assert all(len(r.token_times_s) == 5 for r in result.records)
    lent = connector_stats(result, "prefill")
    fetched = connector_stats(result, "decode")
    assert sum(s.num_leases for s in lent) == sum(n > BLOCK_SIZE for n in prompt_lens)
    assert sum(s.num_leases_acked for s in lent) == sum(n > BLOCK_SIZE for n in prompt_lens)
    assert sum(s.num_leases_expired for s in lent) == 0
    assert sum(s.num_fetches_ok for s in fetched) == sum(n > BLOCK_SIZE for n in prompt_lens)
    assert sum(s.num_fetches_skipped for s in fetched) == 0
    assert sum(s.num_fetches_failed for s in fetched) == 0
    fetched_tokens = sum((n - 1) // BLOCK_SIZE * BLOCK_SIZE for n in prompt_lens)
    decodes = [i for i in result.instances if i.spec.role == "decode"]
    assert sum(i.kv.num_external_tokens for i in decodes) == fetched_tokens
    assert sum(s.fetched_bytes for s in fetched) == fetched_tokens * KV_BYTES_PER_TOKEN
    # The fetched blocks are the decode instances' prefix hits (the prompts share nothing).
    assert sum(i.kv.stats.prefix_hit_tokens for i in decodes) == fetched_tokens
    # Decode computes the rest of each prompt and every output token but the last one's KV.
    computed = sum(n + 5 - 1 for n in prompt_lens) - fetched_tokens
    assert sum(i.num_batched_tokens for i in decodes) == computed
    assert_all_released(result)


def test_the_transfer_time_is_in_ttft():
    # One request at a time (1 s apart): each TTFT holds exactly one transfer.
    work = workload(*[spec(f"r{i}", float(i), 64 + i, 4) for i in range(8)])

    def mean_ttft_s(latency_s: float) -> float:
        result = run(disaggregated(kv_transfer_latency_s=latency_s), work)
        assert_all_released(result)
        return sum(r.token_times_s[0] - r.arrival_time_s for r in result.records) / len(work)

    assert mean_ttft_s(0.05) - mean_ttft_s(0.0) == pytest.approx(0.05)


def test_decode_side_preemption_resumes_from_the_decode_instances_cache():
    # The decode pool is tiny (6 blocks of 16): two 40-token requests cannot both keep growing,
    # so one is preempted (by recompute) on the decode instance when both fill 3 blocks.
    cluster = ClusterSpec(
        (instance(role="prefill"), instance(role="decode", num_blocks=6, max_model_len=96)),
        check_integrity=True,
    )
    result = run(cluster, workload(spec("A", 0.0, 40, 40), spec("B", 0.0, 40, 40)))
    decode = result.instances[1]
    assert decode.scheduler.num_preemptions > 0
    assert [r.num_output_tokens for r in result.records] == [40, 40]
    # 8 prompt tokens past the 2 fetched blocks + 39 decodes each: preempted at a block
    # boundary, the victim resumes with its own cached blocks as prefix hits.
    assert decode.num_batched_tokens == 2 * (8 + 39)
    assert result.records[0].token_times_s[-1] != result.records[1].token_times_s[-1]
    assert_all_released(result)


def test_command_line_run_disaggregated(capsys):
    argv = ["simulate", "run", "--dataset", "random", "--num-requests", "30"]
    argv += ["--input-len", "200", "--output-len", "20", "--request-rate", "20"]
    argv += ["--model", "smollm-135m", "--hardware", "a100", "--kv-lease-timeout-s", "5"]
    assert main([*argv, "--num-prefill-instances", "1", "--num-decode-instances", "2"]) == 0
    text = capsys.readouterr().out
    assert "Requests completed / failed:            30 / 0" in text
    assert "prefill" in text and "decode" in text


def test_mixed_and_disaggregated_instances_cannot_be_combined():
    with pytest.raises(ValueError, match="prefill and decode instances only"):
        ClusterSpec((instance(role="prefill"), instance()))
    with pytest.raises(ValueError, match="kv_lease_timeout_s must be > 0"):
        disaggregated(kv_lease_timeout_s=0.0)
