"""The demo models' corpus: GSM8K word problems as chat turns (question -> step-by-step answer).

Each record of ../shared/data/gsm8k/{train,test}.jsonl becomes one conversation: the question as
the user turn, the answer as the assistant turn with its `<<expr=value>>` calculator annotations
removed and its closing `#### N` line rewritten as the sentence "The answer is N.".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from corral.workloads.data import gsm8k_records

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_FINAL_ANSWER = re.compile(r"\n?####\s*(.+?)\s*$")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


class Example(NamedTuple):
    """One word problem: the user's question and the assistant's worked answer."""

    question: str
    answer: str


def clean_answer(answer: str) -> str:
    """Drop calculator annotations and turn the final '#### N' line into a sentence."""
    text = _ANNOTATION.sub("", answer)
    match = _FINAL_ANSWER.search(text)
    if match:
        text = text[: match.start()].rstrip() + f"\nThe answer is {match.group(1)}."
    return text.strip()


def load_gsm8k(
    split: str, data_dir: str | Path | None = None, max_num_examples: int | None = None
) -> list[Example]:
    """The cleaned examples of one split, in file order (FileNotFoundError when absent)."""
    return [
        Example(record["question"].strip(), clean_answer(record["answer"]))
        for record in gsm8k_records(split, data_dir, max_num_examples)
    ]


def to_messages(example: Example, *, with_answer: bool = True) -> list[dict[str, str]]:
    """The chat messages of one example (the user turn only when with_answer is False)."""
    messages = [{"role": "user", "content": example.question}]
    if with_answer:
        messages.append({"role": "assistant", "content": example.answer})
    return messages


def plain_texts(examples: Iterable[Example]) -> list[str]:
    """Questions and answers as separate texts (the tokenizer's training data)."""
    return [text for example in examples for text in example]


class EncodedExample(NamedTuple):
    """A conversation's token ids and the index where the assistant's answer starts."""

    token_ids: list[int]
    answer_start: int


def encode_examples(tokenizer: Any, examples: Sequence[Example]) -> list[EncodedExample]:
    """Render each example with the tokenizer's own chat template, then tokenize it.

    token_ids[answer_start:] is the answer followed by <|end|>; token_ids[:answer_start] is the
    prompt that `apply_chat_template(..., add_generation_prompt=True)` produces.
    """
    encoded = []
    for example in examples:
        prompt = tokenizer.apply_chat_template(
            to_messages(example, with_answer=False), add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(
            to_messages(example), add_generation_prompt=False, tokenize=False
        )
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        token_ids = tokenizer.encode(full, add_special_tokens=False)
        if token_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template's prompt is not a token prefix of the conversation")
        encoded.append(EncodedExample(token_ids, len(prompt_ids)))
    return encoded


def corpus_words(examples: Iterable[Example]) -> set[str]:
    """The lower-cased words (letters, with an inner apostrophe) that occur in the examples."""
    return {
        word.lower() for example in examples for text in example for word in _WORD.findall(text)
    }


def words_of(text: str) -> list[str]:
    """The lower-cased words of a text, by the same rule as corpus_words."""
    return [word.lower() for word in _WORD.findall(text)]
