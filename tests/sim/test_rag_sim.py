"""RAG chunk reuse in the simulator: the rag workload names each request's retrieved chunks, the
scheduler's ChunkReuse (the engine's code) blends them, the cost model prices what runs; same
seed same metrics, blocks add up, and reuse lowers the simulated TTFT."""

from __future__ import annotations

from corral.core.slo_target import SLO
from corral.sim.config import ClusterSpec
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.report import build_report
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.sim.helpers import instance, run

# step time = 5 ms + 0.2 ms per prefill token + 0.01 ms per decode context token
PROFILE = ProfiledCostModel(
    ["intercept", "prefill_tokens", "decode_context_tokens"], [0.005, 0.0002, 0.00001]
)


def rag_workload(seed: int = 0):
    return build_workload(
        WorkloadOptions(
            dataset="rag",
            num_requests=60,
            num_groups=12,
            num_rag_chunks=5,
            prefix_len=40,
            input_len=10,
            output_len=8,
            seed=seed,
            arrival=ArrivalOptions("poisson", rate=5.0),
            vocab_size=1000,
        )
    )


def _cluster(**fields):
    spec = instance(PROFILE, num_blocks=512, max_model_len=1024, **fields)
    return ClusterSpec((spec,), seed=3, check_integrity=True)


def test_the_rag_workload_names_chunks_that_are_its_prompt_tokens():
    work = rag_workload()
    documents: dict[tuple[int, ...], int] = {}
    for spec in work:
        assert len(spec.rag_chunk_spans) == 5
        for start, length in spec.rag_chunk_spans:
            chunk = spec.prompt_token_ids[start : start + length]
            documents[chunk] = documents.get(chunk, 0) + 1
    assert len(documents) == 12  # the pool, each document seen several times


def test_chunk_reuse_runs_the_same_control_plane_and_lowers_ttft():
    slo = SLO(ttft_s=0.1, tpot_s=0.05)
    work = rag_workload()
    off = build_report(run(_cluster(), work), slo)
    result = run(_cluster(rag_chunk_reuse=True), work)
    on = build_report(result, slo)
    again = build_report(run(_cluster(rag_chunk_reuse=True), rag_workload()), slo)
    assert on.summary.to_dict() == again.summary.to_dict()
    (inst,) = result.instances
    stats = inst.scheduler.stats().rag_chunks
    assert stats.num_blended_requests == len(work)
    assert stats.num_chunk_misses == 12 and stats.num_chunk_hits == 5 * len(work) - 12
    num_free, num_cached, num_in_use = inst.kv.pool.check_integrity()
    assert num_in_use == 0 and num_free + num_cached == 512
    for record, spec in zip(result.records, work):
        assert record.num_output_tokens == spec.num_output_tokens
    assert on.summary.to_dict()["ttft"]["mean_ms"] < 0.6 * off.summary.to_dict()["ttft"]["mean_ms"]
