"""Parallel sampling in the simulator: a SimInstance (the real scheduler and KV manager, the
simulator's executor and cost model) shares an n > 1 request's prompt blocks as the engine does.

The simulator's workloads have no n > 1 requests yet, so the samples are added as make_requests
builds them (ids "{i}_{parent}", one sibling_group)."""

from __future__ import annotations

import pytest

from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.instance import SimInstance
from tests.sim.helpers import instance

PROMPT = list(range(1, 71))  # 4 full blocks of 16, 6 tokens more


def run_samples(n: int, **scheduler_fields) -> tuple[SimInstance, dict[str, float], int]:
    """Run one n-sample request to the end on the virtual clock (step = 10 ms + 1 ms per token).
    Returns the instance, each sample's first-token time, and the most blocks held at once."""
    now = [0.0]
    sim = SimInstance(0, instance(**scheduler_fields), clock=lambda: now[0])
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    for index in range(n):
        sim.add_request(
            Request(
                f"{index}_p", PROMPT, params, max_model_len=1024, arrival_time=0.0,
                sibling_group="p",
            )
        )  # fmt: skip
    first_token_s: dict[str, float] = {}
    max_blocks_held = 0
    while sim.scheduler.has_unfinished_requests():
        planned = sim.begin_step(now[0])
        assert planned is not None
        kv, requests = sim.kv, sim.scheduler.requests
        held = {block for rid in requests for block in kv.block_ids(rid)}
        max_blocks_held = max(max_blocks_held, len(held))
        now[0] += planned[1].step_time_s
        for update in sim.end_step(*planned):
            if update.new_token_ids:
                first_token_s.setdefault(update.request_id, now[0])
        kv.check_integrity()
    return sim, first_token_s, max_blocks_held


def test_simulated_samples_compute_the_prompt_once():
    shared, ttft, blocks = run_samples(4)
    # Step 1: one sample's 70 prompt tokens (80 ms). Step 2: its decode + 3 tails of 6 tokens
    # after the 4 shared blocks (29 ms). Then 6 decode steps of 4 tokens and one of 3 (the first
    # sample finished a step earlier).
    assert ttft == pytest.approx({"0_p": 0.080, "1_p": 0.109, "2_p": 0.109, "3_p": 0.109})
    assert shared.num_batched_tokens == 70 + (1 + 3 * 6) + 6 * 4 + 3
    assert blocks == 4 + 4  # the full prompt blocks once, each sample's partial block
    assert shared.scheduler.kv.stats.prefix_hit_tokens == 3 * 64

    unshared, ttft_off, blocks_off = run_samples(4, share_sibling_prompts=False)
    # Step 1: the four prompts at once (290 ms).
    assert ttft_off == pytest.approx({f"{i}_p": 0.290 for i in range(4)})
    assert unshared.num_batched_tokens == 4 * 70 + 7 * 4
    assert blocks_off == 4 * 5
    assert unshared.busy_time_s > shared.busy_time_s
