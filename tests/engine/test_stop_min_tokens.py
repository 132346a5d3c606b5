"""A stop string does not end a request before min_tokens output tokens exist, as a stop token id
does not (issue 13, defect 10a)."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.engine.detokenizer import IncrementalDetokenizer
from corral.engine.tokenizer import Tokenizer

PROMPT = "Serving large"
MIN_TOKENS = 6


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256)


def _greedy(llm: LLM, **options) -> object:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, **options)
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def test_stop_string_in_the_first_tokens_waits_for_min_tokens(llm):
    free = _greedy(llm)
    tokenizer = llm.get_tokenizer()
    stop = tokenizer.decode(free.token_ids[:1]).strip() or tokenizer.decode(free.token_ids[:2])
    assert stop and stop in free.text
    early = _greedy(llm, stop=[stop])
    assert early.finish_reason == "stop" and len(early.token_ids) < MIN_TOKENS  # the premise
    held = _greedy(llm, stop=[stop], min_tokens=MIN_TOKENS)
    assert len(held.token_ids) >= MIN_TOKENS
    assert held.token_ids == free.token_ids[: len(held.token_ids)]
    assert free.text.startswith(held.text)
    if held.finish_reason == "stop":
        assert held.stop_reason == stop and free.text[len(held.text) :].startswith(stop)
        # The match ends in the text of the MIN_TOKENS-th token or a later one.
        before_min = tokenizer.decode(free.token_ids[: MIN_TOKENS - 1])
        assert len(held.text) + len(stop) > len(before_min)
    else:
        assert held.finish_reason == "length" and len(held.token_ids) == 20


def _stop_at(tokenizer: Tokenizer, token_ids: list[int], min_tokens: int) -> tuple[int, str]:
    """(number of tokens added when the stop fired, the text then)."""
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=["apples"], min_tokens=min_tokens)
    for count, token_id in enumerate(token_ids, 1):
        if detokenizer.add_tokens([token_id]) is not None:
            return count, detokenizer.output_text
    raise AssertionError("the stop string never fired")


def test_detokenizer_counts_output_tokens_for_min_tokens(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    token_ids = tokenizer.encode(" apples apples apples apples", add_special_tokens=False)
    first, text = _stop_at(tokenizer, token_ids, 0)
    assert text == " "
    assert first < len(token_ids)
    count, text = _stop_at(tokenizer, token_ids, len(token_ids))
    assert count == len(token_ids)
    assert text == tokenizer.decode(token_ids)[: -len("apples")]


def test_a_short_stop_string_completed_before_min_tokens_never_counts(tokenizer_dir):
    """With stop strings of different lengths, the search window of the longer one must not
    find a shorter one that an earlier token (before min_tokens) completed (found by the soak:
    the request then stopped at min_tokens and cut its text back)."""
    tokenizer = Tokenizer(tokenizer_dir)
    token_ids = tokenizer.encode(" a = b c d e f g h", add_special_tokens=False)
    text = tokenizer.decode(token_ids)
    first_eq = next(
        count
        for count in range(1, len(token_ids) + 1)
        if "=" in tokenizer.decode(token_ids[:count])
    )
    detokenizer = IncrementalDetokenizer(
        tokenizer, [], stop=["=", " apples and pears"], min_tokens=first_eq + 2
    )
    for token_id in token_ids:
        assert detokenizer.add_tokens([token_id]) is None
    assert detokenizer.output_text == text
