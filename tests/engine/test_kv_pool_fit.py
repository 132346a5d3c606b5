"""Requests that can never fit the KV pool are refused at admission, a running request that
outgrows the pool finishes as "length", and nothing behind them waits forever (issue 13,
defect 1)."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.core.kv_capacity import POOL_SIZE_FLAGS, kv_pool_refusal
from corral.core.scheduler import KV_POOL_FULL

MAX_STEPS = 2_000  # far more than any request below needs; a hang shows as reaching it


def _run(llm: LLM) -> dict[str, object]:
    engine, finished = llm.engine, {}
    for _ in range(MAX_STEPS):
        if not engine.has_unfinished_requests():
            return finished
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    raise AssertionError(f"requests still unfinished after {MAX_STEPS} steps")


def _ids(start: int, num: int) -> dict[str, list[int]]:
    return {"prompt_token_ids": list(range(start, start + num))}


def test_a_prompt_larger_than_the_pool_is_refused_and_blocks_nothing(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=4, block_size=16)
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    with pytest.raises(ValueError) as error:
        llm.engine.add_request("big", _ids(10, 100), params)
    message = str(error.value)
    assert "100 tokens" in message and "64 tokens" in message and POOL_SIZE_FLAGS in message
    llm.engine.add_request("small", _ids(10, 3), params)
    finished = _run(llm)
    assert len(finished["small"].outputs[0].token_ids) == 5
    llm.engine.kv_manager.check_integrity()
    assert llm.engine.kv_manager.num_free_blocks == 4


def test_a_request_that_outgrows_the_pool_finishes_as_length(tiny_model):
    llm = LLM(model=str(tiny_model), dtype="float32", num_blocks=4, block_size=16)
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    llm.engine.add_request("grows", _ids(10, 50), params)
    llm.engine.add_request("after", _ids(200, 3), SamplingParams(max_tokens=4, ignore_eos=True))
    finished = _run(llm)
    grown = finished["grows"].outputs[0]
    # 50 prompt tokens + k outputs need 50 + k - 1 slots of the pool's 64.
    assert grown.finish_reason == "length" and len(grown.token_ids) == 15
    assert grown.stop_reason == KV_POOL_FULL
    assert len(finished["after"].outputs[0].token_ids) == 4
    assert llm.engine.kv_manager.num_free_blocks == 4


def test_max_reservation_refuses_a_worst_case_larger_than_the_pool(tiny_model):
    llm = LLM(
        model=str(tiny_model), dtype="float32", num_blocks=4, block_size=16, kv_reservation="max"
    )
    with pytest.raises(ValueError, match="max_tokens 30"):
        llm.engine.add_request("worst", _ids(10, 50), SamplingParams(max_tokens=30))
    llm.engine.add_request("fits", _ids(10, 50), SamplingParams(max_tokens=15, ignore_eos=True))
    assert len(_run(llm)["fits"].outputs[0].token_ids) == 15


def test_predicted_reservation_larger_than_the_pool_is_still_admitted(tiny_model):
    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        num_blocks=4,
        block_size=16,
        kv_reservation="predicted",
    )
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    llm.engine.add_request("a", _ids(10, 40), params, predicted_num_output_tokens=500)
    llm.engine.add_request("b", _ids(100, 8), params, predicted_num_output_tokens=500)
    finished = _run(llm)
    assert {len(finished[r].outputs[0].token_ids) for r in ("a", "b")} == {10}


@pytest.mark.parametrize(
    "prompt, max_tokens, reservation, refused",
    [(64, 100, "none", False), (65, 1, "none", True), (60, 5, "max", False), (60, 6, "max", True)],
)
def test_the_rule_at_its_boundaries(prompt, max_tokens, reservation, refused):
    assert (kv_pool_refusal(prompt, max_tokens, 4, 16, reservation) is not None) == refused
