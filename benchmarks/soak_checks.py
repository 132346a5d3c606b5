"""Completeness checks of one soak response: every choice present and finished, token counts
consistent with usage, logprobs and max_tokens, stop strings honoured. Streaming responses are
folded into the same per-choice form first, with the stream's own rules checked on the way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from benchmarks.soak_mix import Plan

FINISH_REASONS = ("stop", "length")


@dataclass(slots=True)
class Choice:
    text: str = ""
    finish_reason: str | None = None
    stop_reason: Any = None
    logprob_entries: int | None = None  # None: the response held no logprobs for it
    num_finishes: int = 0
    has_role: bool = False


def _count_logprobs(logprobs: Any, is_chat: bool) -> int | None:
    if not logprobs:
        return None
    return len(logprobs.get("content") or []) if is_chat else len(logprobs.get("tokens") or [])


def _add_logprobs(choice: Choice, count: int | None) -> None:
    if count is not None:
        choice.logprob_entries = (choice.logprob_entries or 0) + count


def fold_json(plan: Plan, body: dict[str, Any]) -> tuple[dict[int, Choice], dict | None, list[str]]:
    """A non-streaming body -> (choices by index, usage, problems)."""
    choices: dict[int, Choice] = {}
    problems: list[str] = []
    for raw in body.get("choices") or []:
        index = raw.get("index")
        if index in choices:
            problems.append(f"choice {index} appears twice")
        choice = choices[index] = Choice()
        if plan.is_chat:
            message = raw.get("message") or {}
            choice.text = message.get("content") or ""
            choice.has_role = message.get("role") == "assistant"
        else:
            choice.text = raw.get("text") or ""
            choice.has_role = True
        choice.finish_reason = raw.get("finish_reason")
        choice.stop_reason = raw.get("stop_reason")
        choice.num_finishes = int(choice.finish_reason is not None)
        _add_logprobs(choice, _count_logprobs(raw.get("logprobs"), plan.is_chat))
    usage = body.get("usage")
    if usage is None:
        problems.append("no usage in a non-streaming response")
    return choices, usage, problems


def fold_stream(plan: Plan, lines: list[bytes]) -> tuple[dict[int, Choice], dict | None, list[str]]:
    """SSE lines -> (choices by index, the usage chunk's usage, problems)."""
    choices: dict[int, Choice] = {}
    problems: list[str] = []
    usage: dict | None = None
    ids: set[str] = set()
    done = False
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if done:
            problems.append(f"data after [DONE]: {line[:80]!r}")
            break
        if not line.startswith(b"data: "):
            problems.append(f"not an SSE data line: {line[:80]!r}")
            continue
        data = line[len(b"data: ") :]
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            problems.append(f"undecodable event: {data[:80]!r}")
            continue
        if "error" in chunk:
            problems.append(f"error event: {json.dumps(chunk['error'])[:300]}")
            continue
        if usage is not None:
            problems.append("a chunk after the usage chunk")
        ids.add(chunk.get("id"))
        if chunk.get("usage") is not None and not chunk.get("choices"):
            usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            _fold_chunk_choice(plan, choices.setdefault(raw.get("index"), Choice()), raw, problems)
    if not done:
        problems.append("the stream ended without [DONE]")
    if len(ids) > 1:
        problems.append(f"chunks carry {len(ids)} different ids")
    include_usage = (plan.body.get("stream_options") or {}).get("include_usage")
    if include_usage and usage is None:
        problems.append("stream_options.include_usage set but no usage chunk")
    return choices, usage, problems


def _fold_chunk_choice(plan: Plan, choice: Choice, raw: dict, problems: list[str]) -> None:
    if plan.is_chat:
        delta = raw.get("delta") or {}
        text = delta.get("content") or ""
        choice.has_role = choice.has_role or delta.get("role") == "assistant"
    else:
        text = raw.get("text") or ""
        choice.has_role = True
    count = _count_logprobs(raw.get("logprobs"), plan.is_chat)
    if choice.finish_reason is not None and (text or count):
        problems.append(f"choice {raw.get('index')}: content after its finish_reason")
    choice.text += text
    _add_logprobs(choice, count)
    if raw.get("finish_reason") is not None:
        choice.finish_reason = raw["finish_reason"]
        choice.stop_reason = raw.get("stop_reason")
        choice.num_finishes += 1


def check_response(plan: Plan, choices: dict[int, Choice], usage: dict | None) -> list[str]:
    """The problems of a completed response (empty: complete and consistent)."""
    problems: list[str] = []
    if sorted(choices, key=str) != sorted(range(plan.num_choices), key=str):
        problems.append(f"choice indices {sorted(choices, key=str)}, expected {plan.num_choices}")
    for index, choice in choices.items():
        if choice.num_finishes != 1 or choice.finish_reason not in FINISH_REASONS:
            problems.append(
                f"choice {index}: finish_reason {choice.finish_reason!r} "
                f"({choice.num_finishes} given)"
            )
        if not choice.has_role:
            problems.append(f"choice {index}: no assistant role")
        problems += _check_text(plan, index, choice)
    if usage is not None:
        problems += _check_usage(plan, choices, usage)
    elif not plan.stream:
        problems.append("no usage")
    return problems


def _generated_text(plan: Plan, index: int, text: str) -> tuple[str | None, list[str]]:
    """The choice's generated text without its echoed prompt (None for an echoed token-id
    prompt, which comes back detokenized), and the problems found."""
    if not plan.body.get("echo"):
        return text, []
    prompt = plan.body["prompt"]
    if isinstance(prompt, list) and isinstance(prompt[0], str):
        prompt = prompt[index // plan.body.get("n", 1)]
    if not isinstance(prompt, str):
        return None, []
    if not text.startswith(prompt):
        return None, [f"choice {index}: echoed text does not start with the prompt"]
    return text[len(prompt) :], []


def _check_text(plan: Plan, index: int, choice: Choice) -> list[str]:
    generated, problems = _generated_text(plan, index, choice.text)
    if generated is None:
        return problems
    stops = plan.body.get("stop") or []
    include = plan.body.get("include_stop_str_in_output", False)
    reason = choice.stop_reason
    if choice.finish_reason == "stop" and isinstance(reason, str):
        if reason not in stops:
            problems.append(f"choice {index}: stop_reason {reason!r} not among {stops}")
        elif include and not generated.endswith(reason):
            problems.append(
                f"choice {index}: included stop string {reason!r} not at the end of "
                f"{generated[-60:]!r}"
            )
    if plan.body.get("min_tokens"):
        return problems  # a stop string within the first min_tokens tokens does not stop
    body_text = generated[: -len(reason)] if include and isinstance(reason, str) else generated
    for stop in stops:
        if stop in body_text:
            problems.append(f"choice {index}: stop string {stop!r} inside the text {generated!r}")
    return problems


def _hit_max_tokens(choice: Choice) -> bool:
    """Finished for length by max_tokens (not because the request outgrew the KV pool)."""
    return choice.finish_reason == "length" and choice.stop_reason != "kv_pool_full"


def _check_usage(plan: Plan, choices: dict[int, Choice], usage: dict) -> list[str]:
    body = plan.body
    problems = []
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return [f"usage without token counts: {usage}"]
    if usage.get("total_tokens") != prompt + completion:
        problems.append(f"usage total {usage.get('total_tokens')} != {prompt} + {completion}")
    if prompt < 1:
        problems.append(f"usage.prompt_tokens {prompt}")
    if plan.prompt_token_counts is not None and prompt != sum(plan.prompt_token_counts):
        problems.append(f"usage.prompt_tokens {prompt}, sent {plan.prompt_token_counts}")
    max_tokens = body["max_tokens"]
    n = plan.num_choices
    min_tokens = body.get("min_tokens", 0)  # stop strings, EOS and stop ids wait for it
    all_length = all(_hit_max_tokens(c) for c in choices.values())
    stops_for_length_only = body.get("ignore_eos") and not body.get("stop")
    if stops_for_length_only and any(c.finish_reason != "length" for c in choices.values()):
        problems.append("ignore_eos without stop strings, yet a choice did not stop for length")
    if not n * max(min_tokens, 1) <= completion <= n * max_tokens:
        problems.append(f"completion_tokens {completion} outside [{n}, {n} x {max_tokens}]")
    if all_length and completion != n * max_tokens:
        problems.append(
            f"all choices hit length, yet completion_tokens {completion} != {n} x {max_tokens}"
        )
    wants_logprobs = body.get("logprobs") not in (None, False)
    if not wants_logprobs:
        return problems
    echo_tokens = prompt if body.get("echo") else 0
    single_prompt = not (
        isinstance(body.get("prompt"), list) and isinstance(body["prompt"][0], str)
    )
    total = 0
    for index, choice in choices.items():
        if choice.logprob_entries is None:
            problems.append(f"choice {index}: logprobs requested, none returned")
            continue
        total += choice.logprob_entries
        if not single_prompt and echo_tokens:
            continue  # per-prompt lengths unknown: the total is checked below
        generated = choice.logprob_entries - echo_tokens
        if not max(min_tokens, 1) <= generated <= max_tokens:
            problems.append(
                f"choice {index}: {generated} tokens with logprobs, max_tokens {max_tokens}"
            )
        if _hit_max_tokens(choice) and generated != max_tokens:
            problems.append(f"choice {index}: finish 'length' after {generated} of {max_tokens}")
    expected = completion + (echo_tokens * body.get("n", 1))
    if total != expected:
        problems.append(f"{total} logprob entries, expected {expected} (usage {usage})")
    return problems
