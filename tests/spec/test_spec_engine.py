"""Tier 3 with speculative decoding on: greedy outputs token-identical to transformers for every
proposer (chunked prefill, preemption, prefix caching, n > 1 in the batch); sampling, penalties
and logprobs exactly as without speculation; seeded text independent of the batch."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from tests.model.oracle import TEST_DEVICE, hf_greedy
from tests.model.test_correctness import mixed_prompts

MAX_TOKENS = 16


def repetitive_prompts(vocab_size: int) -> list[list[int]]:
    """Prompts whose text repeats (n-gram and suffix proposers find matches), and a shared
    prefix for the prefix cache."""
    pattern = [(7 * i + 3) % vocab_size for i in range(9)]
    shared = [(11 * i + 5) % vocab_size for i in range(40)]
    return [pattern * 4, shared + pattern, shared + pattern[::-1], pattern * 2 + [5]]


@pytest.fixture(scope="module")
def setup(tiny_model_factory):
    path = tiny_model_factory("llama")
    other = tiny_model_factory("llama3-rope")  # another random model: a poor draft
    probe = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=64)
    vocab = probe.engine.vocab_size
    prompts = mixed_prompts(vocab) + repetitive_prompts(vocab)
    oracle = [hf_greedy(path, prompt, MAX_TOKENS)[0] for prompt in prompts]
    return path, other, prompts, oracle


METHODS = {
    "ngram": dict(speculative_method="ngram", speculative_ngram_min=1),
    "suffix": dict(speculative_method="suffix"),
    "draft-self": dict(speculative_method="draft", speculative_model="SELF"),
    "draft-other": dict(speculative_method="draft", speculative_model="OTHER"),
}
PRESSURE = {
    "plain": dict(num_blocks=256),
    "chunked": dict(num_blocks=256, max_num_batched_tokens=32),
    "preemption": dict(num_blocks=80, block_size=4),
    "swap": dict(num_blocks=80, block_size=4, host_cache_memory="8MiB", preemption_mode="swap"),
}


def make_llm(setup, method: str, rule: str = "fixed", **options) -> LLM:
    path, other, _, _ = setup
    spec = dict(METHODS[method])
    if spec.get("speculative_model") == "SELF":
        spec["speculative_model"] = str(path)
    elif spec.get("speculative_model") == "OTHER":
        spec["speculative_model"] = str(other)
    return LLM(
        device=TEST_DEVICE,
        model=str(path),
        dtype="float32",
        num_speculative_tokens=3,
        speculative_tokens_rule=rule,
        debug_check_integrity=True,
        **spec,
        **options,
    )


def greedy(llm: LLM, prompts, n: int = 1, **params):
    sampling = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, n=n, **params)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)


@pytest.mark.parametrize("pressure", sorted(PRESSURE))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_greedy_identical_to_transformers(setup, method, pressure):
    _, _, prompts, oracle = setup
    llm = make_llm(setup, method, **PRESSURE[pressure])
    outputs = greedy(llm, prompts, n=2)
    for prompt, output, tokens in zip(prompts, outputs, oracle):
        for completion in output.outputs:
            assert completion.token_ids == tokens, f"{method}: prompt of {len(prompt)} tokens"
    stats = llm.engine.scheduler.stats().spec_decode
    assert stats.num_draft_tokens > 0
    if method == "draft-self":
        assert stats.num_accepted_tokens > 0.9 * stats.num_draft_tokens
    if pressure in ("preemption", "swap"):
        assert llm.engine.scheduler.num_preemptions > 0
    if pressure == "swap":
        assert llm.engine.scheduler.stats().kv_swap_outs > 0
    kv = llm.engine.kv_manager
    kv.check_integrity()
    assert kv.num_free_blocks == kv.num_blocks


def test_adaptive_rule_is_still_exact(setup):
    _, _, prompts, oracle = setup
    llm = make_llm(setup, "draft-self", rule="adaptive", num_blocks=256)
    for output, tokens in zip(greedy(llm, prompts), oracle):
        assert output.outputs[0].token_ids == tokens


@pytest.mark.parametrize("method", ["ngram", "draft-other", "draft-self"])
def test_processing_and_logprobs_as_without_speculation(setup, method):
    """Repetition penalty, logit bias, min_tokens with EOS and logprobs, verified tokens scored
    exactly as without speculation."""
    path, _, prompts, _ = setup
    plain = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=256)
    eos = sorted(plain.engine.input_processor.eos_token_ids)[0]
    params = dict(
        repetition_penalty=1.3,
        frequency_penalty=0.2,
        logit_bias={eos: 5.0, 9: 1.0},
        min_tokens=6,
        logprobs=2,
    )
    sampling = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, **params)
    batch = [{"prompt_token_ids": p} for p in prompts]
    expected = plain.generate(batch, sampling, use_tqdm=False)
    llm = make_llm(setup, method, num_blocks=256)
    got = llm.generate(batch, sampling, use_tqdm=False)
    for ours, theirs in zip(got, expected):
        a, b = ours.outputs[0], theirs.outputs[0]
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert len(a.token_ids) >= 6
        for mine, reference in zip(a.logprobs, b.logprobs):
            assert mine.keys() == reference.keys()
            for token_id in mine:
                assert abs(mine[token_id].logprob - reference[token_id].logprob) < 1e-4


@pytest.mark.parametrize("method", ["draft-other", "ngram"])
def test_seeded_sampling_does_not_depend_on_the_batch(setup, method):
    prompt = {"prompt_token_ids": [5, 17, 33, 2, 9, 101, 77] * 3}
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=24)
    alone = make_llm(setup, method, num_blocks=128).generate(prompt, seeded, use_tqdm=False)
    busy = make_llm(setup, method, num_blocks=128, max_num_batched_tokens=40)
    vocab = busy.engine.vocab_size
    others = [
        {"prompt_token_ids": [(i * 31 + j) % vocab for j in range(3 + 11 * i)]} for i in range(5)
    ]
    mates = [
        SamplingParams(temperature=0.8, max_tokens=20, seed=None if i % 2 else i) for i in range(5)
    ]
    results = busy.generate(
        others[:2] + [prompt] + others[2:], mates[:2] + [seeded] + mates[2:], use_tqdm=False
    )
    assert results[2].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert busy.engine.scheduler.stats().spec_decode.num_draft_tokens > 0
    # Coupled verification: the very text the request gets without speculation.
    path = setup[0]
    plain = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=128)
    assert plain.generate(prompt, seeded, use_tqdm=False)[0].outputs[0].token_ids == (
        alone[0].outputs[0].token_ids
    )


def test_draft_model_must_share_the_vocabulary(setup, tiny_model_factory, tmp_path):
    from corral.demo.random_model import build_random_model
    from tests.conftest import TINY_SHAPE

    path, _, _, _ = setup
    small_vocab = tmp_path / "small-vocab"
    build_random_model(
        small_vocab,
        architecture="llama",
        seed=1,
        dtype="float32",
        **{**TINY_SHAPE, "vocab_size": 64},
    )
    with pytest.raises(ValueError, match="vocabulary"):
        LLM(model=str(path), speculative_method="draft", speculative_model=str(small_vocab))


def test_bad_speculative_options_are_refused():
    with pytest.raises(ValueError, match="unknown speculative method 'medusa'"):
        LLM(speculative_method="medusa")
    with pytest.raises(ValueError, match="needs a draft model"):
        LLM(speculative_method="draft")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        LLM(speculative_method="ngram", num_speculative_tokens=0)


def test_hidden_states_reach_a_proposer_that_asks(setup):
    """The interface left open for EAGLE-style heads: a proposer with needs_hidden_states gets
    the target's final hidden states at the positions verified this step, one per token."""
    llm = make_llm(setup, "draft-self", num_blocks=256)
    proposer = llm.engine.core.executor.proposer
    proposer.needs_hidden_states = True
    seen: list[tuple[int, int, int]] = []
    original = proposer.propose

    def recording(requests):
        for request in requests:
            seen.append((len(request.token_ids), *request.hidden_states.shape))
        return original(requests)

    proposer.propose = recording
    greedy(llm, repetitive_prompts(llm.engine.vocab_size)[:1])
    hidden_size = llm.engine.arch.hidden_size
    assert seen and all(width == hidden_size for _, _, width in seen)
    # Consecutive proposals of one request: the rows are the tokens added in between.
    lengths = [length for length, _, _ in seen]
    rows = [count for _, count, _ in seen]
    assert all(rows[i + 1] == lengths[i + 1] - lengths[i] for i in range(len(seen) - 1))
    assert max(rows) > 1  # rounds accepted drafts (the draft is the target itself)
