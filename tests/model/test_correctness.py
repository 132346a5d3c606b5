"""Tier 3: corral against transformers on tiny random-weight models of every family."""

from __future__ import annotations

import random

import pytest

from corral import LLM, SamplingParams
from tests.conftest import TINY_MODELS
from tests.model.oracle import TEST_DEVICE, assert_greedy_matches, hf_greedy, hf_prompt_logprobs

MAX_TOKENS = 12


def mixed_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    """8+ prompts of mixed lengths, 1 to 300 tokens."""
    rng = random.Random(seed)
    lengths = [1, 2, 7, 16, 33, 64, 129, 300, 45]
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def corral_greedy(llm: LLM, prompts, max_tokens=MAX_TOKENS, logprobs=None):
    params = SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs
    )
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def family(request, tiny_model_factory):
    """(name, model dir, oracle outputs) per family; oracle computed once per module."""
    path = tiny_model_factory(request.param)
    llm = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=256, block_size=16)
    prompts = mixed_prompts(llm.engine.vocab_size)
    oracle = [hf_greedy(path, prompt, MAX_TOKENS) for prompt in prompts]
    return request.param, path, prompts, oracle, llm


def test_greedy_matches_transformers_with_close_logprobs(family):
    name, _, prompts, oracle, llm = family
    outputs = corral_greedy(llm, prompts, logprobs=0)
    assert_greedy_matches(name, prompts, outputs, oracle)
    for output in outputs:
        assert all(next(iter(p.values())).rank == 1 for p in output.outputs[0].logprobs)


@pytest.mark.parametrize(
    "options",
    [
        dict(max_num_batched_tokens=32),  # chunked prefill: prompts split across steps
        dict(max_num_batched_tokens=64, long_prefill_token_threshold=24, max_num_seqs=3),
        dict(num_blocks=80, block_size=4),  # too few blocks: preemption by recompute
        dict(num_blocks=48, block_size=8, enable_prefix_caching=False),
    ],
    ids=["chunked", "threshold-and-few-seqs", "preemption", "no-prefix-cache"],
)
def test_greedy_identical_under_scheduling_pressure(family, options):
    name, path, prompts, oracle, _ = family
    llm = LLM(
        device=TEST_DEVICE, model=str(path), dtype="float32", **{"num_blocks": 256, **options}
    )
    llm.engine.config  # noqa: B018
    outputs = corral_greedy(llm, prompts)
    for prompt, output, (tokens, _) in zip(prompts, outputs, oracle):
        assert output.outputs[0].token_ids == tokens, f"{name}: prompt of {len(prompt)} tokens"
    # Mistral's window (64 tokens) lets its blocks go as it advances: no pressure there
    # (tests/model/test_sliding_window.py forces it).
    if options.get("num_blocks") == 80 and llm.engine.scheduler.kv_window is None:
        assert llm.engine.scheduler.num_preemptions > 0
    llm.engine.kv_manager.check_integrity()
    assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks


def test_prompt_logprobs_match_transformers(tiny_model):
    llm = LLM(
        device=TEST_DEVICE,
        model=str(tiny_model),
        dtype="float32",
        num_blocks=64,
        max_num_batched_tokens=16,
    )
    prompt = mixed_prompts(llm.engine.vocab_size)[5]  # 64 tokens, computed in 4 chunks
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=3)
    output = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    reference = hf_prompt_logprobs(tiny_model, prompt)
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
    for position in range(1, len(prompt)):
        entry = output.prompt_logprobs[position]
        expected = reference[position - 1]
        chosen = entry[prompt[position]]
        assert abs(chosen.logprob - expected[prompt[position]].item()) < 1e-4
        assert chosen.rank == int((expected > expected[prompt[position]]).sum()) + 1
        top = expected.topk(3).indices.tolist()
        assert set(top) <= set(entry)


def test_bf16_diverges_only_between_near_ties(tiny_model_factory):
    path = tiny_model_factory("llama")
    llm = LLM(device=TEST_DEVICE, model=str(path), dtype="bfloat16", num_blocks=256)
    prompts = mixed_prompts(llm.engine.vocab_size, seed=3)
    outputs = corral_greedy(llm, prompts, logprobs=5)
    for prompt, output in zip(prompts, outputs):
        ours = output.outputs[0]
        theirs, their_logprobs = hf_greedy(path, prompt, MAX_TOKENS, dtype="bfloat16")
        if ours.token_ids == theirs:
            continue
        first = next(i for i, (a, b) in enumerate(zip(ours.token_ids, theirs)) if a != b)
        assert theirs[first] in ours.logprobs[first], "their token is in our top 5"
        assert ours.token_ids[first] in their_logprobs[first].topk(5).indices.tolist()


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_model):
    prompt = {"prompt_token_ids": [5, 17, 33, 2, 9, 101, 77]}
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16)
    alone_llm = LLM(device=TEST_DEVICE, model=str(tiny_model), dtype="float32", num_blocks=128)
    alone = alone_llm.generate(prompt, seeded, use_tqdm=False)[0].outputs[0]
    busy_llm = LLM(
        device=TEST_DEVICE,
        model=str(tiny_model),
        dtype="float32",
        num_blocks=128,
        max_num_batched_tokens=40,
    )
    vocab = busy_llm.engine.vocab_size
    others = [
        {"prompt_token_ids": [(i * 31 + j) % vocab for j in range(3 + 11 * i)]} for i in range(7)
    ]
    mates = [
        SamplingParams(temperature=0.8, max_tokens=20, seed=None if i % 2 else i) for i in range(7)
    ]
    results = busy_llm.generate(
        others[:3] + [prompt] + others[3:], mates[:3] + [seeded] + mates[3:], use_tqdm=False
    )
    assert results[3].outputs[0].token_ids == alone.token_ids
    assert results[3].outputs[0].text == alone.text


def test_greedy_identical_without_cpu_kernels(family, monkeypatch):
    """The PyTorch fallback path (no C++ toolchain) gives the same tokens."""
    from corral.model.layers import attention, linear
    from corral.model.models import llama

    for module in (attention, linear, llama):
        monkeypatch.setattr(module, "cpu_kernels", lambda: None)
    name, path, prompts, oracle, _ = family
    llm = LLM(
        device=TEST_DEVICE,
        model=str(path),
        dtype="float32",
        num_blocks=64,
        block_size=16,
        max_num_batched_tokens=48,
    )
    outputs = corral_greedy(llm, prompts)
    for prompt, output, (tokens, _) in zip(prompts, outputs, oracle):
        assert output.outputs[0].token_ids == tokens, f"{name}: prompt of {len(prompt)} tokens"
