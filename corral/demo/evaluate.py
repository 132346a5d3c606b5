"""Held-out measures of the demo models: perplexity, and the draft's greedy agreement with the
target (the acceptance rate that speculative decoding would see)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from corral.demo.corpus import EncodedExample


class Perplexity(NamedTuple):
    """exp(mean negative log-likelihood) over the answer tokens given the question (the answer
    and its closing <|end|>), and over every token after BOS."""

    answer: float
    all_tokens: float
    num_answer_tokens: int
    num_tokens: int


def _batches(examples: Sequence[EncodedExample], batch_size: int):
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].token_ids))
    for begin in range(0, len(order), batch_size):
        yield [examples[i] for i in order[begin : begin + batch_size]]


def negative_log_likelihood(
    model: Any, examples: Sequence[EncodedExample], batch_size: int = 16
) -> tuple[float, int, float, int]:
    """(summed NLL of answer tokens, their count, summed NLL of all tokens after BOS, count);
    each example is scored alone from its BOS, as it is served."""
    import torch

    pad_id = 0
    answer_nll = all_nll = 0.0
    num_answer = num_all = 0
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            width = max(len(example.token_ids) for example in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            answer_mask = torch.zeros((len(batch), width - 1), dtype=torch.bool)
            for row, example in enumerate(batch):
                length = len(example.token_ids)
                input_ids[row, :length] = torch.tensor(example.token_ids)
                mask[row, :length] = 1
                # target index j predicts token j + 1: answer tokens are j + 1 >= answer_start
                answer_mask[row, example.answer_start - 1 : length - 1] = True
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), input_ids[:, 1:], reduction="none"
            )
            valid = mask[:, 1:].bool()
            all_nll += float(nll[valid].sum())
            num_all += int(valid.sum())
            answer_nll += float(nll[answer_mask].sum())
            num_answer += int(answer_mask.sum())
    return answer_nll, num_answer, all_nll, num_all


def perplexity(model: Any, examples: Sequence[EncodedExample], batch_size: int = 16) -> Perplexity:
    """Held-out perplexity of model on the examples."""
    answer_nll, num_answer, all_nll, num_all = negative_log_likelihood(model, examples, batch_size)
    return Perplexity(
        math.exp(answer_nll / num_answer), math.exp(all_nll / num_all), num_answer, num_all
    )


class Agreement(NamedTuple):
    """How often the draft's greedy token equals the target's greedy token.

    per_position[i] is the agreement rate at the i-th generated token over the prompts whose
    target output reached it (num_at_position[i]); tokens_per_target_step[k] is the mean number
    of tokens one target forward pass yields in greedy speculative decoding with k draft tokens.
    """

    rate: float
    num_tokens: int
    num_prompts: int
    per_position: list[float]
    num_at_position: list[int]
    tokens_per_target_step: dict[int, float]


def tokens_per_step(matches: Sequence[bool], num_speculative: int) -> tuple[int, int]:
    """(tokens, target steps) of greedy speculative decoding along one target output, where
    matches[i] says whether the draft proposes output token i given the exact prefix.

    Each step accepts the run of matches from the current position (at most num_speculative),
    then the target adds one token of its own (the correction or the bonus token).
    """
    position = num_steps = 0
    while position < len(matches):
        accepted = 0
        while (
            accepted < num_speculative
            and position + accepted < len(matches)
            and matches[position + accepted]
        ):
            accepted += 1
        position += accepted + 1
        num_steps += 1
    return len(matches), num_steps


def greedy_agreement(
    target: Any,
    draft: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: int,
    max_speculative: int = 8,
) -> Agreement:
    """Run the target greedily on each prompt (up to EOS or max_new_tokens), then score the
    draft's greedy next token after every prefix of that output (teacher-forced)."""
    import torch

    per_position: list[list[bool]] = []
    all_matches: list[list[bool]] = []
    with torch.inference_mode():
        for prompt in prompts:
            input_ids = torch.tensor([list(prompt)])
            output = target.generate(
                input_ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                repetition_penalty=1.0,  # plain greedy, whatever generation_config recommends
                eos_token_id=eos_token_id,
                pad_token_id=eos_token_id,
            )[0, len(prompt) :].tolist()
            if eos_token_id in output:
                output = output[: output.index(eos_token_id) + 1]
            sequence = torch.tensor([list(prompt) + output])
            logits = draft(input_ids=sequence).logits[0, len(prompt) - 1 : -1]
            matches = (logits.argmax(dim=-1) == sequence[0, len(prompt) :]).tolist()
            all_matches.append(matches)
            for index, match in enumerate(matches):
                if index == len(per_position):
                    per_position.append([])
                per_position[index].append(match)
    num_tokens = sum(len(matches) for matches in all_matches)
    speedups = {}
    for k in range(1, max_speculative + 1):
        counts = [tokens_per_step(matches, k) for matches in all_matches]
        speedups[k] = sum(c[0] for c in counts) / sum(c[1] for c in counts)
    return Agreement(
        rate=sum(sum(matches) for matches in all_matches) / num_tokens,
        num_tokens=num_tokens,
        num_prompts=len(prompts),
        per_position=[sum(column) / len(column) for column in per_position],
        num_at_position=[len(column) for column in per_position],
        tokens_per_target_step=speedups,
    )


class ReplyQuality(NamedTuple):
    """Fluency of replies to held-out questions: how many loop (a block of tokens repeated more
    than max_loop_repeats times back to back), end by themselves, and their known-word share."""

    num_replies: int
    num_looping: int
    num_stopped: int
    mean_word_share: float
    min_word_share: float


def generate_replies(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    **generate_kwargs: Any,
) -> list[tuple[list[int], str, bool]]:
    """(token ids, text, stopped at EOS) of greedy chat replies, batched with left padding;
    generate_kwargs (e.g. repetition_penalty) override the model's generation_config."""
    import torch

    replies = []
    with torch.inference_mode():
        for begin in range(0, len(questions), batch_size):
            prompts = [
                tokenizer.encode(
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
                    ),
                    add_special_tokens=False,
                )
                for q in questions[begin : begin + batch_size]
            ]
            width = max(map(len, prompts))
            input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            output = model.generate(
                input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                **generate_kwargs,
            )[:, width:].tolist()  # fmt: skip
            for token_ids in output:
                stopped = tokenizer.eos_token_id in token_ids
                if stopped:
                    token_ids = token_ids[: token_ids.index(tokenizer.eos_token_id)]
                text = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
                replies.append((token_ids, text, stopped))
    return replies


def reply_quality(
    replies: Sequence[tuple[list[int], str, bool]], vocabulary: set[str], max_loop_repeats: int = 3
) -> ReplyQuality:
    """Summarise generate_replies' output with the checks of corral.demo.fluency."""
    from corral.demo import fluency

    shares = [fluency.known_word_share(text, vocabulary) for _, text, _ in replies]
    return ReplyQuality(
        num_replies=len(replies),
        num_looping=sum(fluency.max_loop_repeats(ids) > max_loop_repeats for ids, _, _ in replies),
        num_stopped=sum(stopped for _, _, stopped in replies),
        mean_word_share=sum(shares) / len(shares),
        min_word_share=min(shares),
    )
