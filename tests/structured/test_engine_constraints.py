"""The engine's handling of output constraints: a slow compile never holds up other requests,
a grammar that allows no token ends its request with an error, a thinking budget closes the
reasoning block and the grammar applies after it, and a compile failure is an error output."""

from __future__ import annotations

import threading

import pytest

from corral import LLM, SamplingParams
from corral.structured.backend import GRAMMAR_BACKENDS
from corral.structured.params import ReasoningParams, StructuredOutputParams
from corral.structured.xgrammar_backend import XGrammarBackend
from tests.model.oracle import TEST_DEVICE

RELEASE = threading.Event()


@GRAMMAR_BACKENDS.register("test-slow")
class SlowBackend(XGrammarBackend):
    """Compiles only once RELEASE is set."""

    def _compile(self, params):
        assert RELEASE.wait(60)
        return super()._compile(params)


class _Deadlocked:
    """A matcher that allows nothing."""

    def fill_bitmask(self, bitmask, row):
        bitmask[row].zero_()

    def accept(self, token_id):
        return False

    def rollback(self, num_tokens):
        pass


@GRAMMAR_BACKENDS.register("test-deadlocked")
class DeadlockedBackend(XGrammarBackend):
    def matcher(self, compiled, stop_token_ids):
        return _Deadlocked()


def _llm(path, **kwargs) -> LLM:
    return LLM(device=TEST_DEVICE, model=str(path), dtype="float32", num_blocks=64, **kwargs)


def test_a_slow_compile_does_not_hold_up_other_requests(tiny_model):
    llm = _llm(tiny_model, structured_output_backend="test-slow")
    engine = llm.engine
    RELEASE.clear()
    constrained = SamplingParams(
        max_tokens=8, temperature=0.0, structured_output=StructuredOutputParams(regex="[a-z]{3}")
    )
    engine.add_request("slow", {"prompt_token_ids": [5, 6, 7]}, constrained)
    engine.add_request("plain", {"prompt_token_ids": [8, 9]}, SamplingParams(max_tokens=4))
    finished = {}
    for _ in range(50):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        if "plain" in finished:
            break
    assert "plain" in finished and "slow" not in finished
    RELEASE.set()
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    text = finished["slow"].outputs[0].text
    assert len(text) == 3 and text.isalpha() and text.islower()


def test_a_grammar_that_allows_no_token_ends_the_request_with_an_error(tiny_model):
    llm = _llm(tiny_model, structured_output_backend="test-deadlocked")
    params = SamplingParams(max_tokens=8, structured_output=StructuredOutputParams(regex="a+"))
    plain = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(
        [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7, 8]}],
        [params, plain],
        use_tqdm=False,
    )
    failed = outputs[0].outputs[0]
    assert failed.finish_reason == "error"
    assert "allows no token" in str(failed.stop_reason)
    assert failed.token_ids == []
    assert len(outputs[1].outputs[0].token_ids) == 5  # its batch mate is unaffected


@pytest.mark.parametrize("budget", [0, 3, 9])
def test_a_thinking_budget_closes_the_block_then_the_grammar_applies(tiny_model, budget):
    llm = _llm(tiny_model)
    tokenizer = llm.get_tokenizer()
    end_ids = tuple(tokenizer.encode("</think>", add_special_tokens=False))
    reasoning = ReasoningParams(
        end_token_ids=end_ids, starts_in_reasoning=True, max_reasoning_tokens=budget
    )
    choices = ("yes", "no")
    params = SamplingParams(
        max_tokens=40,
        temperature=1.0,
        seed=11,
        reasoning=reasoning,
        structured_output=StructuredOutputParams(choice=choices),
    )
    for output in llm.generate(
        [{"prompt_token_ids": [5 + i, 9]} for i in range(3)], params, use_tqdm=False
    ):
        token_ids = list(output.outputs[0].token_ids)
        ends = [
            i for i in range(len(token_ids)) if tuple(token_ids[i : i + len(end_ids)]) == end_ids
        ]
        assert ends, token_ids
        assert ends[0] <= budget  # the block holds at most `budget` tokens
        after = tokenizer.decode(token_ids[ends[0] + len(end_ids) :])
        assert after in choices
        assert output.outputs[0].finish_reason == "stop"


def test_a_budget_without_a_grammar_only_closes_the_block(tiny_model):
    llm = _llm(tiny_model)
    end_ids = tuple(llm.get_tokenizer().encode("</think>", add_special_tokens=False))
    params = SamplingParams(
        max_tokens=12,
        temperature=0.0,
        ignore_eos=True,
        reasoning=ReasoningParams(
            end_token_ids=end_ids, starts_in_reasoning=True, max_reasoning_tokens=4
        ),
    )
    token_ids = list(llm.generate([[5, 6, 7]], params, use_tqdm=False)[0].outputs[0].token_ids)
    plain = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    free = list(llm.generate([[5, 6, 7]], plain, use_tqdm=False)[0].outputs[0].token_ids)
    assert token_ids[:4] == free  # unconstrained inside the budget
    # Then the rest of the end sequence is forced: whatever part of it the free tokens already
    # end with is not written again (the greedy tokens here never close the block by themselves).
    assert not any(tuple(free[i : i + len(end_ids)]) == end_ids for i in range(len(free)))
    written = max(
        (n for n in range(len(end_ids)) if n and tuple(free[-n:]) == end_ids[:n]), default=0
    )
    num_forced = len(end_ids) - written
    assert tuple(token_ids[4 : 4 + num_forced]) == end_ids[written:]
    # After the block the output goes on to max_tokens (ignore_eos).
    assert len(token_ids) == 12


def test_bad_constraints_are_refused_at_admission(tiny_model):
    llm = _llm(tiny_model)
    for constraint, field in [
        (StructuredOutputParams(json={"type": "objekt"}), "json_schema"),
        (StructuredOutputParams(regex="(a"), "regex"),
        (StructuredOutputParams(grammar="root ::= missing"), "grammar"),
        (StructuredOutputParams(json='{"type": "object"'), "json_schema"),
    ]:
        with pytest.raises(ValueError, match=field):
            llm.generate(["hi"], SamplingParams(structured_output=constraint), use_tqdm=False)
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputParams(regex="a", choice=("a",))
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, structured_output=StructuredOutputParams(regex="a"))
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured_output=StructuredOutputParams(regex="a"))
