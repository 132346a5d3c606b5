"""The pieces the demo-model figures and checks rest on: corpus cleaning, the speculative
decoding replay, and the fluency checks themselves (so that they can fail)."""

from __future__ import annotations

import pytest

from corral.demo.corpus import Example, clean_answer, corpus_words, load_gsm8k
from corral.demo.evaluate import tokens_per_step
from corral.demo.fluency import known_word_share, max_loop_repeats


def test_clean_answer_drops_annotations_and_rewrites_the_final_line() -> None:
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"
    assert clean_answer(raw) == (
        "Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.\nThe answer is 72."
    )


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="validation"):
        load_gsm8k("validation")


@pytest.mark.parametrize(
    "matches, k, expected",
    [
        ([True] * 8, 4, (8, 2)),  # 4 accepted + 1 target token, twice
        ([False] * 5, 4, (5, 5)),  # every step yields only the target's token
        ([True, True, False, True], 2, (4, 2)),  # 2 + 1, then 1 (the bonus ends the output)
        ([True, False, True, True, True, True], 3, (6, 2)),  # 1 + 1, then 3 + 1
        ([], 3, (0, 0)),
    ],
)
def test_speculative_replay_counts_target_steps(matches, k, expected) -> None:
    assert tokens_per_step(matches, k) == expected


def test_loop_detector() -> None:
    assert max_loop_repeats([5, 6, 5, 6, 5, 6]) == 3
    assert max_loop_repeats([7] * 10) == 10
    assert max_loop_repeats(list(range(50))) == 1
    assert max_loop_repeats([1, 2, 3] * 4 + [9]) == 4


def test_word_share() -> None:
    vocabulary = corpus_words([Example("She has 3 apples.", "She ate one apple's core.")])
    assert vocabulary == {"she", "has", "apples", "ate", "one", "apple's", "core"}
    assert known_word_share("She has apples, 4 of them", vocabulary) == pytest.approx(3 / 5)
    assert known_word_share("xqzt vrrk", vocabulary) == 0.0
    assert known_word_share("12 + 3 = 15", vocabulary) == 0.0
