from __future__ import annotations

import random

import pytest

from corral.engine.detokenizer import IncrementalDetokenizer
from corral.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer(tokenizer_dir)


def stream(tokenizer, token_ids, **kwargs):
    detokenizer = IncrementalDetokenizer(tokenizer, [], **kwargs)
    pieces = []
    stop = None
    for token_id in token_ids:
        before = detokenizer.streamable_text(False)
        stop = detokenizer.add_tokens([token_id])
        after = detokenizer.streamable_text(stop is not None)
        assert after.startswith(before), "emitted text is never taken back"
        pieces.append(after[len(before) :])
        if stop is not None:
            break
    if stop is None:
        detokenizer.flush()
    return detokenizer, pieces, stop


@pytest.mark.parametrize("seed", range(5))
def test_incremental_text_equals_the_full_decode_and_never_breaks_utf8(tokenizer, seed):
    rng = random.Random(seed)
    text = "".join(
        rng.choice(["café ", "日本語", "🙂🙃", " naïve", "Ελληνικά ", "42 + 7 = 49. "])
        for _ in range(12)
    )
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer, pieces, _ = stream(tokenizer, token_ids)
    assert detokenizer.output_text == tokenizer.decode(token_ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text


def test_random_byte_tokens_end_equal_to_the_full_decode(tokenizer):
    rng = random.Random(0)
    token_ids = [rng.randrange(6, tokenizer.vocab_size) for _ in range(200)]
    detokenizer, _, _ = stream(tokenizer, token_ids)
    assert detokenizer.output_text == tokenizer.decode(token_ids)


def test_stop_string_across_token_boundaries(tokenizer):
    text = "The answer is 42. She paid $3.50 for each notebook."
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    stop = "swer is 4"
    assert not any(stop in tokenizer.decode([t]) for t in token_ids), "must span tokens"
    detokenizer, pieces, found = stream(tokenizer, token_ids, stop=[stop, "never"])
    assert found == stop
    assert detokenizer.output_text == "The an"
    assert "".join(pieces) == "The an"
    included, _, _ = stream(tokenizer, token_ids, stop=[stop], include_stop_str_in_output=True)
    assert included.output_text == "The answer is 4"


def test_earliest_stop_string_wins(tokenizer):
    token_ids = tokenizer.encode("alpha beta gamma", add_special_tokens=False)
    detokenizer, _, found = stream(tokenizer, token_ids, stop=["gamma", "beta"])
    assert found == "beta" and detokenizer.output_text == "alpha "
