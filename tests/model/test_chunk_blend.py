"""RAG chunk reuse (--rag-chunk-reuse): the exact part (a chunk's stored keys, re-rotated to a
new position, equal a fresh computation there), the approximate part (recompute ratio 1.0 is
full recomputation; 0.15 stays within a stated bound of it and beats 0), store hits and
misses, block integrity, and refusals."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from corral import LLM, SamplingParams
from corral.core.chunk_reuse_plan import ChunkCopy, ChunkPrefill
from corral.model.chunk_blend import read_kv
from tests.conftest import TINY_SHAPE, _load_tokenizer
from tests.model.oracle import assert_greedy_matches, hf_greedy

BLOCK_SIZE = 16
VOCAB = 512


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random llama with 4 layers (blending recomputes layers 1..3). Initializer range
    0.1, not 0.2: at 0.2 random attention spreads each chunk's error evenly over its tokens
    (measured: deviation-picked and randomly picked tokens then fix about as much), which
    leaves selective recompute nothing to select."""
    from corral.demo.random_model import build_random_model

    path = tmp_path_factory.mktemp("model-deep")
    build_random_model(
        path,
        architecture="llama",
        seed=99,
        dtype="float32",
        initializer_range=0.1,
        tokenizer=_load_tokenizer(tokenizer_dir),
        **{**TINY_SHAPE, "num_hidden_layers": 4},
    )
    return path


def _random_ids(rng: random.Random, num_tokens: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(num_tokens)]


class RagWorkload:
    """A system prefix, retrieved chunks in shuffled orders, a question."""

    def __init__(self, seed: int = 0, num_chunks: int = 4) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.system = _random_ids(rng, 20)
        self.chunks = [_random_ids(rng, rng.randrange(30, 60)) for _ in range(num_chunks)]
        self.question = _random_ids(rng, 9)

    def request(self, order: list[int]) -> tuple[list[int], list[list[int]]]:
        prompt = list(self.system)
        for index in order:
            prompt += self.chunks[index]
        return prompt + self.question, [self.chunks[index] for index in order]

    def shuffled_orders(self, num_orders: int) -> list[list[int]]:
        orders = []
        for _ in range(num_orders):
            order = list(range(len(self.chunks)))
            self.rng.shuffle(order)
            orders.append(order)
        return orders


def _llm(path: Path, ratio: float | None, **kwargs) -> LLM:
    if ratio is None:
        return LLM(model=str(path), dtype="float32", num_blocks=256, **kwargs)
    return LLM(
        model=str(path),
        dtype="float32",
        num_blocks=kwargs.pop("num_blocks", 256),
        rag_chunk_reuse=True,
        rag_recompute_ratio=ratio,
        debug_check_integrity=True,
        **kwargs,
    )


def _generate(llm: LLM, prompt: list[int], chunks: list[list[int]], max_tokens: int = 6):
    params = SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=0, rag_chunks=chunks
    )
    return llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]


# ----- the exact part -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "llama3-rope", "qwen2"])
def test_rerotated_chunk_keys_equal_a_fresh_computation_at_the_new_position(
    tiny_model_factory, name
):
    llm = _llm(tiny_model_factory(name), 0.0, num_blocks=64)
    blender = llm.engine.executor.blender
    rng = random.Random(3)
    prefix, chunk = _random_ids(rng, 21), _random_ids(rng, 37)
    stored, in_context, target = [1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]
    blender.prefill_chunks([ChunkPrefill(chunk, stored), ChunkPrefill(prefix + chunk, in_context)])
    # The whole chunk at position 21, and its last 30 tokens (from chunk position 7) at 28.
    copies = [ChunkCopy(stored, 0, 21, 37, 0)]
    blender.copy_chunks(target, copies, first_layer=0)

    def slots(block_ids, first, num):
        positions = torch.arange(first, first + num)
        return torch.tensor(block_ids)[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % 16

    cache = llm.engine.executor.kv_caches[0]  # layer 0: K/V depend on token and position only
    fresh_keys, fresh_values = read_kv(cache, slots(in_context, 21, 37))
    copied_keys, copied_values = read_kv(cache, slots(target, 21, 37))
    torch.testing.assert_close(copied_keys, fresh_keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(copied_values, fresh_values, atol=0, rtol=0)
    stored_keys, _ = read_kv(cache, slots(stored, 0, 37))
    assert (stored_keys - fresh_keys).abs().max() > 0.1  # the rotation is what makes them equal

    blender.copy_chunks(target, [ChunkCopy(stored, 7, 28, 30, 0)], first_layer=0)
    copied_keys, _ = read_kv(cache, slots(target, 28, 30))
    torch.testing.assert_close(copied_keys, fresh_keys[7:], atol=1e-5, rtol=1e-5)


# ----- the approximate part -------------------------------------------------------------------


def test_recompute_ratio_one_is_full_recomputation(deep_model):
    workload = RagWorkload(seed=1)
    llm = _llm(deep_model, 1.0)
    orders = [[0, 1, 2, 3], *workload.shuffled_orders(3)]
    prompts, outputs = [], []
    for order in orders:
        prompt, chunks = workload.request(order)
        prompts.append(prompt)
        outputs.append(_generate(llm, prompt, chunks))
    oracle = [hf_greedy(deep_model, prompt, 6) for prompt in prompts]
    assert_greedy_matches("ratio 1.0", prompts, outputs, oracle)
    stats = llm.engine.scheduler.stats().rag_chunks
    assert stats.num_blended_requests == len(orders)
    assert stats.num_chunk_hits == 4 * (len(orders) - 1)


def _first_token_logprobs(llm: LLM, prompt: list[int], chunks: list[list[int]]) -> torch.Tensor:
    """log-softmax of the logits the request's first token is sampled from."""
    model = llm.engine.executor.model
    captured = []
    original = model.compute_logits

    def capture(hidden):
        logits = original(hidden)
        captured.append(logits)
        return logits

    model.compute_logits = capture
    try:
        _generate(llm, prompt, chunks, max_tokens=1)
    finally:
        model.compute_logits = original
    return torch.log_softmax(captured[-1][-1].double(), dim=-1)


# Mean first-token KL(full || blended) over the shuffled requests, measured on this model: ratio
# 0 0.112, ratio 0.15 0.074 (0.085 with the same number of tokens picked at random).
MAX_MEAN_KL_AT_015 = 0.1


def test_selective_recompute_stays_close_to_full_recomputation(deep_model):
    workload = RagWorkload(seed=2, num_chunks=5)
    orders = workload.shuffled_orders(6)
    full = _llm(deep_model, None)
    llms = {ratio: _llm(deep_model, ratio) for ratio in (0.0, 0.15, 1.0)}
    warm_prompt, warm_chunks = workload.request(list(range(5)))
    for llm in llms.values():  # every chunk in the store
        _generate(llm, warm_prompt, warm_chunks, max_tokens=1)
    kl = {ratio: [] for ratio in llms}
    for order in orders:
        prompt, chunks = workload.request(order)
        reference = _first_token_logprobs(full, prompt, [])
        for ratio, llm in llms.items():
            blended = _first_token_logprobs(llm, prompt, chunks)
            kl[ratio].append(float((reference.exp() * (reference - blended)).sum()))
    mean_kl = {ratio: sum(values) / len(values) for ratio, values in kl.items()}
    assert mean_kl[1.0] < 1e-6
    assert mean_kl[0.15] < MAX_MEAN_KL_AT_015, mean_kl
    assert mean_kl[0.15] < 0.85 * mean_kl[0.0], mean_kl
    for ratio, llm in llms.items():
        llm.engine.kv_manager.check_integrity()
        stats = llm.engine.scheduler.stats().rag_chunks
        assert stats.num_chunk_misses == 5 and stats.num_chunk_hits == 5 * len(orders), ratio


# ----- the store, the prefix cache, integrity -------------------------------------------------


def test_store_hits_misses_and_blocks_kept_out_of_the_prefix_cache(deep_model):
    workload = RagWorkload(seed=4)
    llm = _llm(deep_model, 0.15)
    stats = lambda: llm.engine.scheduler.stats()  # noqa: E731
    prompt, chunks = workload.request([0, 1])
    first = _generate(llm, prompt, chunks).outputs[0].token_ids
    assert (stats().rag_chunks.num_chunk_misses, stats().rag_chunks.num_chunk_hits) == (2, 0)
    prompt2, chunks2 = workload.request([1, 2, 0])
    _generate(llm, prompt2, chunks2)
    assert (stats().rag_chunks.num_chunk_misses, stats().rag_chunks.num_chunk_hits) == (3, 2)
    # The same request again: the prefix cache serves only the blocks before its first chunk
    # (the system prompt's one full block); the blend is repeated with the same result.
    hits_before = stats().prefix_hit_tokens
    again = _generate(llm, prompt, chunks).outputs[0].token_ids
    assert stats().prefix_hit_tokens - hits_before == BLOCK_SIZE
    assert again == first
    llm.engine.kv_manager.check_integrity()


def test_a_small_pool_evicts_stored_chunks_and_stays_consistent(deep_model):
    workload = RagWorkload(seed=5, num_chunks=6)
    reference = _llm(deep_model, 1.0)
    small = _llm(deep_model, 1.0, num_blocks=26)  # one request and its chunks, little more
    for order in workload.shuffled_orders(6):
        prompt, chunks = workload.request(order[:3])
        expected = _generate(reference, prompt, chunks).outputs[0].token_ids
        assert _generate(small, prompt, chunks).outputs[0].token_ids == expected
    stats = small.engine.scheduler.stats()
    assert stats.prefix_cache_evictions > 0
    assert (
        stats.rag_chunks.num_chunk_misses
        > reference.engine.scheduler.stats().rag_chunks.num_chunk_misses
    )
    small.engine.kv_manager.check_integrity()


def test_stored_chunks_evicted_to_the_host_tier_come_back(deep_model):
    workload = RagWorkload(seed=5, num_chunks=6)
    reference = _llm(deep_model, 1.0)
    tiered = _llm(deep_model, 1.0, num_blocks=26, host_cache_memory=4 << 20)
    device_only = _llm(deep_model, 1.0, num_blocks=26)
    for order in workload.shuffled_orders(6):
        prompt, chunks = workload.request(order[:3])
        expected = _generate(reference, prompt, chunks).outputs[0].token_ids
        assert _generate(tiered, prompt, chunks).outputs[0].token_ids == expected
        _generate(device_only, prompt, chunks)
    stats = tiered.engine.scheduler.stats()
    assert stats.kv_host_loads > 0
    misses = stats.rag_chunks.num_chunk_misses
    assert misses < device_only.engine.scheduler.stats().rag_chunks.num_chunk_misses
    assert misses == 6  # each chunk computed once, however often evicted since
    tiered.engine.kv_manager.check_integrity()


# ----- the API --------------------------------------------------------------------------------


def test_a_chunk_missing_from_the_prompt_is_refused_by_name(deep_model):
    llm = _llm(deep_model, 0.15)
    params = SamplingParams(max_tokens=2, rag_chunks=["The quick brown fox", "lazy cat"])
    with pytest.raises(ValueError, match="lazy cat"):
        llm.generate("The quick brown fox jumps over the lazy dog.", params, use_tqdm=False)
    with pytest.raises(ValueError, match="do not contain the chunk of 3 tokens"):
        llm.generate(
            [{"prompt_token_ids": [5, 6, 7, 8]}],
            SamplingParams(max_tokens=2, rag_chunks=[[6, 8, 9]]),
            use_tqdm=False,
        )
    with pytest.raises(ValueError, match="rag_chunks must be"):
        SamplingParams(rag_chunks=[""])


def test_text_chunks_are_tokenized_alone_and_reused(deep_model):
    llm = _llm(deep_model, 0.15)
    docs = [
        "Natalia sold clips to 48 of her friends in April.",
        "A train leaves the station at noon.",
        "How many apples are left in the basket?",
    ]
    for order in ([0, 1, 2], [2, 0, 1]):
        text = "Context: " + " ".join(docs[i] for i in order) + " Question: what?"
        params = SamplingParams(temperature=0, max_tokens=3, rag_chunks=[docs[i] for i in order])
        assert llm.generate(text, params, use_tqdm=False)[0].outputs[0].token_ids
    stats = llm.engine.scheduler.stats().rag_chunks
    assert (stats.num_chunk_misses, stats.num_chunk_hits) == (3, 3)


def test_off_by_default_and_chunks_are_then_ignored(deep_model):
    workload = RagWorkload(seed=6)
    plain = _llm(deep_model, None)
    prompt, chunks = workload.request([1, 0])
    with_chunks = _generate(plain, prompt, chunks).outputs[0].token_ids
    assert with_chunks == _generate(plain, prompt, []).outputs[0].token_ids
    assert plain.engine.scheduler.stats().rag_chunks is None
