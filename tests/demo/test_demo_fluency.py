"""The default demo model answers held-out GSM8K questions with readable text: nearly every word
is an English word of the training corpus, no block of tokens loops, and the reply ends by
itself. Whether the answer is right is not checked. Decoding is greedy with the settings that
generation_config.json recommends (plain greedy decoding loops on some questions; the model card
gives both rates)."""

from __future__ import annotations

import pytest

from corral.demo.corpus import corpus_words
from corral.demo.fluency import known_word_share, max_loop_repeats
from corral.demo.report import RECOMMENDED_SAMPLING

NUM_QUESTIONS = 4
MIN_KNOWN_WORD_SHARE = 0.9
MAX_LOOP_REPEATS = 3  # a block of tokens seen 4+ times back to back is a loop


@pytest.fixture(scope="module")
def replies(target_dir, gsm8k_test, gsm8k_train):
    from corral import LLM, SamplingParams

    train_questions = {example.question for example in gsm8k_train}
    questions = [e.question for e in gsm8k_test[:NUM_QUESTIONS]]
    assert not train_questions.intersection(questions)
    llm = LLM(dtype="float32", num_blocks=128)  # the bundled default model
    outputs = llm.chat(
        [[{"role": "user", "content": question}] for question in questions],
        SamplingParams(temperature=0, max_tokens=320, **RECOMMENDED_SAMPLING),
        use_tqdm=False,
    )
    return [output.outputs[0] for output in outputs]


@pytest.fixture(scope="module")
def vocabulary(gsm8k_train) -> set[str]:
    return corpus_words(gsm8k_train)


@pytest.mark.parametrize("index", range(NUM_QUESTIONS))
def test_reply_is_fluent(replies, vocabulary, index: int) -> None:
    reply = replies[index]
    assert reply.finish_reason == "stop", reply.text
    assert len(reply.text.split()) >= 8, reply.text
    assert known_word_share(reply.text, vocabulary) >= MIN_KNOWN_WORD_SHARE, reply.text
    assert max_loop_repeats(reply.token_ids) <= MAX_LOOP_REPEATS, reply.text
