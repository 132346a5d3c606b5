"""Parallel sampling end to end on a tiny model: the n samples of one request share the prompt's
full KV blocks, and each sample's tokens equal a solo run (n = 1) with its seed (seed + i)."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams

PROMPT = [(7 * i + 3) % 500 + 5 for i in range(75)]  # 4 full blocks of 16 and 11 tokens more


def make_llm(tiny_model, **kwargs) -> LLM:
    options = dict(dtype="float32", num_blocks=128, max_model_len=512, debug_check_integrity=True)
    return LLM(model=str(tiny_model), **{**options, **kwargs})


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return make_llm(tiny_model)


def solo_outputs(llm: LLM, params: SamplingParams, n: int) -> list[list[int]]:
    """Each sample i as a request of its own, seed + i (prefix cache reset before each)."""
    outputs = []
    for index in range(n):
        llm.engine.core.kv_manager.reset_prefix_cache()
        seed = None if params.seed is None else params.seed + index
        solo = params.clone(n=1, seed=seed)
        result = llm.generate({"prompt_token_ids": PROMPT}, solo, use_tqdm=False)[0]
        outputs.append(result.outputs[0].token_ids)
    return outputs


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=4, temperature=1.0, seed=21, max_tokens=12, ignore_eos=True),
        SamplingParams(n=4, temperature=0.7, top_p=0.9, seed=5, max_tokens=12, ignore_eos=True),
        SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True),
    ],
    ids=["seeded", "seeded-top-p", "greedy"],
)
def test_each_sample_equals_its_solo_run(llm, params):
    llm.engine.core.kv_manager.reset_prefix_cache()
    stats_before = llm.engine.scheduler.kv.stats.prefix_hit_tokens
    result = llm.generate({"prompt_token_ids": PROMPT}, params, use_tqdm=False)[0]
    hits = llm.engine.scheduler.kv.stats.prefix_hit_tokens - stats_before
    assert hits == (params.n - 1) * 64  # the other samples took the 4 full blocks as hits
    together = [completion.token_ids for completion in result.outputs]
    assert together == solo_outputs(llm, params, params.n)
    if params.temperature > 0:
        assert len({tuple(tokens) for tokens in together}) > 1


def test_first_step_holds_the_prompt_full_blocks_once(llm):
    engine = llm.engine
    engine.core.kv_manager.reset_prefix_cache()
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=4, ignore_eos=True)
    engine.add_request("shared", {"prompt_token_ids": PROMPT}, params)
    engine.step()
    kv, scheduler = engine.kv_manager, engine.scheduler
    tables = {rid: kv.block_ids(rid) for rid in scheduler.requests}
    assert sum(len(table) for table in tables.values()) == 5  # one sample: 4 full + 1 partial
    engine.step()  # the others start on the 4 full blocks
    tables = {rid: kv.block_ids(rid) for rid in scheduler.requests}
    assert len(tables) == 4 and len({b for t in tables.values() for b in t}) == 4 + 4
    shared = tables["0_shared"][:4]
    assert all(kv.pool.blocks[b].ref_count == 4 for b in shared)
    while engine.has_unfinished_requests():
        engine.step()


def test_abort_and_preemption_never_hang_the_waiting_samples(tiny_model):
    """A small pool and chunked prompts: the leading sample is aborted while the others wait,
    and in a second request samples are preempted; every sample left finishes, equal to its
    solo run."""
    small = make_llm(tiny_model, num_blocks=14, max_num_batched_tokens=32)
    engine = small.engine
    params = SamplingParams(n=3, temperature=1.0, seed=9, max_tokens=6, ignore_eos=True)
    engine.add_request("a", {"prompt_token_ids": PROMPT}, params)
    engine.step()
    assert engine.scheduler.num_running == 1 and engine.scheduler.num_waiting == 2
    engine.core.finish_requests(["0_a"])
    while engine.has_unfinished_requests():
        engine.step()
    long = params.clone(n=4, max_tokens=40)
    result = small.generate({"prompt_token_ids": PROMPT}, long, use_tqdm=False)[0]
    assert engine.scheduler.num_preemptions > 0
    assert [c.token_ids for c in result.outputs] == solo_outputs(small, long, 4)
