"""Prefix caching gives the same greedy tokens as no caching, and never crosses salts/adapters."""

from __future__ import annotations

import random

import pytest

from corral import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def prompts_sharing_prefixes(vocab_size: int) -> list[list[int]]:
    rng = random.Random(7)
    system = [rng.randrange(3, vocab_size) for _ in range(40)]  # 2 full blocks + 8 tokens
    partial = system[:20]  # 1 full block + a partial one
    prompts = [system + [rng.randrange(3, vocab_size) for _ in range(n)] for n in (1, 5, 17, 30)]
    prompts += [partial + [rng.randrange(3, vocab_size) for _ in range(n)] for n in (0, 3, 12)]
    prompts += [list(system), system[:32], system[:33]]  # exactly 2 blocks, and one past
    return prompts


def generate(llm, prompts):
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def reference(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=256, enable_prefix_caching=False)
    return prompts_sharing_prefixes(llm.engine.vocab_size), llm


@pytest.mark.parametrize("num_blocks", [256, 14], ids=["roomy", "evicting"])
def test_same_tokens_with_caching_on_including_same_step_arrivals(
    tiny_model, reference, num_blocks
):
    prompts, uncached = reference
    expected = generate(uncached, prompts)
    llm = LLM(
        model=str(tiny_model), dtype="float32", num_blocks=num_blocks, debug_check_integrity=True
    )
    assert generate(llm, prompts) == expected  # all arrive in the same step
    assert generate(llm, prompts) == expected  # again: now hitting the cache
    stats = llm.engine.scheduler.stats()
    assert stats.prefix_hit_tokens > 0
    if num_blocks == 14:
        assert stats.prefix_cache_evictions > 0


def test_salt_and_adapter_never_share(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=64)
    engine = llm.engine
    prompt = {"prompt_token_ids": list(range(10, 60))}

    def run(request_id, **fields):
        before = engine.kv_manager.stats.prefix_hit_tokens
        engine.add_request(request_id, prompt, GREEDY, **fields)
        tokens = []
        while engine.has_unfinished_requests():
            for output in engine.step():
                tokens = output.outputs[0].token_ids
        return tokens, engine.kv_manager.stats.prefix_hit_tokens - before

    first, hits = run("a", cache_salt="tenant-a")
    assert hits == 0
    same_tenant, hits = run("b", cache_salt="tenant-a")
    assert hits == 48 and same_tenant == first
    other_tenant, hits = run("c", cache_salt="tenant-b")
    assert hits == 0 and other_tenant == first
    unsalted, hits = run("d")
    assert hits == 0
    request = engine.input_processor.make_requests("e", list(range(10, 60)), GREEDY)[0]
    request.adapter_id = "lora-7"
    assert engine.kv_manager.match_prefix(request).num_tokens == 0
