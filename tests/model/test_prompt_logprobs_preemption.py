"""Prompt logprobs are scored once per prompt position, even when a request is preempted by
recompute and its prompt runs through the model again (issue 13, defect 2)."""

from __future__ import annotations

import random

import pytest

from corral import LLM, SamplingParams
from corral.core.messages import RequestUpdate, TokenLogprobs
from corral.engine.output_processor import OutputProcessor
from tests.model.oracle import TEST_DEVICE, hf_prompt_logprobs

PROMPT_LEN = 40


def _generate(path, prompts, **options):
    llm = LLM(device=TEST_DEVICE, model=str(path), dtype="float32", block_size=16, **options)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, prompt_logprobs=2)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return llm, outputs


def test_prompt_logprobs_once_per_position_after_recompute_preemption(tiny_model):
    rng = random.Random(7)
    prompts = [[rng.randrange(3, 500) for _ in range(PROMPT_LEN)] for _ in range(2)]
    # 6 blocks of 16 hold both prompts (3 blocks each) but not both 80-token sequences.
    small, preempted = _generate(tiny_model, prompts, num_blocks=6, max_num_batched_tokens=64)
    assert small.engine.scheduler.num_preemptions > 0
    _, reference = _generate(tiny_model, prompts, num_blocks=64)
    for prompt, output, expected in zip(prompts, preempted, reference):
        assert output.outputs[0].token_ids == expected.outputs[0].token_ids
        assert len(output.prompt_logprobs) == PROMPT_LEN
        assert output.prompt_logprobs[0] is None
        oracle = hf_prompt_logprobs(tiny_model, prompt)
        for position in range(1, PROMPT_LEN):
            token = prompt[position]
            entry, alone = output.prompt_logprobs[position], expected.prompt_logprobs[position]
            assert next(iter(entry)) == token
            assert entry[token].rank == alone[token].rank
            assert abs(entry[token].logprob - alone[token].logprob) < 1e-5
            assert abs(entry[token].logprob - oracle[position - 1, token].item()) < 1e-4


def _update(token_ids: list[int]) -> RequestUpdate:
    entries = [TokenLogprobs([t], [-1.0], [1]) for t in token_ids]
    return RequestUpdate("r", [], prompt_logprobs=entries)


def _processor() -> OutputProcessor:
    processor = OutputProcessor(None)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    processor.add_request("r", ["r"], None, [5, 6, 7], params, 0.0)
    return processor


def test_output_processor_refuses_prompt_positions_reported_twice():
    processor = _processor()
    processor.process([_update([6, 7])])
    with pytest.raises(RuntimeError, match="4 prompt logprob positions for a prompt of 3"):
        processor.process([_update([6])])


def test_output_processor_refuses_prompt_logprobs_of_another_token():
    with pytest.raises(RuntimeError, match="position 2 score token 6, not the prompt's 7"):
        _processor().process([_update([6, 6])])


def test_n_samples_score_the_prompt_once_with_the_same_values(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", device=TEST_DEVICE)
    prompt = [5, 6, 7, 8, 9, 10]
    params = {"max_tokens": 3, "prompt_logprobs": 2, "temperature": 0.5, "seed": 1}
    one = llm.generate([prompt], SamplingParams(**params))[0]
    two = llm.generate([prompt], SamplingParams(n=2, **params))[0]
    assert len(two.prompt_logprobs) == len(prompt)
    for ours, alone in zip(two.prompt_logprobs[1:], one.prompt_logprobs[1:]):
        assert list(ours) == list(alone)  # the same tokens, in the same order
        for token_id, logprob in ours.items():
            assert logprob.logprob == pytest.approx(alone[token_id].logprob, abs=1e-5)
    scored = []
    original = llm.engine.executor.execute

    def recording(scheduler_output):
        output = original(scheduler_output)
        scored.extend(output.prompt_logprobs)
        return output

    llm.engine.executor.execute = recording
    llm.generate([prompt], SamplingParams(n=3, **params))
    assert scored and all(request_id.startswith("0_") for request_id in scored)
