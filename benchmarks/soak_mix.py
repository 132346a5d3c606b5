"""The soak's request mix: one seeded plan per request (body, expected choices and status, and
whether and when the client disconnects).

Prompt lengths are kept within the context without asking the server per request: each shared
prefix is measured once with /tokenize, and a suffix of B bytes adds at most B tokens (byte-level
BPE, and every suffix starts at a word boundary), so prefix + suffix + template + max_tokens fits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

# Tokens a chat template may add around the messages, and slack for boundary effects.
TEMPLATE_MARGIN_TOKENS = 24
MAX_SUFFIX_BYTES = 64
PREFIX_FRACTIONS = (0.2, 0.35, 0.5, 0.6)  # of the context length, one shared prefix each
MAX_TOKENS_CHOICES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
STOP_STRINGS = (".", " the", "\n", "?", "s ", "0", " apples", "=")

_NAMES = ("Tom", "Natalia", "Aisha", "Ben", "Carmen", "Dev", "Elena", "Farid", "Grace", "Hugo")
_ITEMS = ("apples", "pencils", "marbles", "books", "stickers", "cookies", "coins", "shells")
_VERBS = ("buys", "sells", "finds", "gives away", "collects", "loses", "bakes", "trades")


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection after_s seconds after sending, or (streaming) after after_events SSE
    events, whichever comes first; None: not by that trigger."""

    after_s: float | None
    after_events: int | None


@dataclass(frozen=True, slots=True)
class Plan:
    index: int
    path: str
    body: dict[str, Any]
    num_choices: int  # prompts x n
    expect_status: int  # 200, or 400 for a deliberately invalid request
    disconnect: Disconnect | None
    prompt_token_counts: tuple[int, ...] | None  # exact, for token-id prompts

    @property
    def is_chat(self) -> bool:
        return self.path == CHAT

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(frozen=True, slots=True)
class Prefix:
    text: str
    token_ids: list[int]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    model: str
    max_model_len: int
    prefixes: list[Prefix]


def sentence(rng: random.Random) -> str:
    name, item, verb = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_VERBS)
    count, more = rng.randint(2, 60), rng.randint(1, 9)
    return f"{name} has {count} {item} and {verb} {more} of them each day."


def prefix_texts(seed: int, count: int) -> list[str]:
    """count long texts, each to be cut to its own target length once measured."""
    rng = random.Random(f"prefix-{seed}")
    return [f"Set {i}. " + " ".join(sentence(rng) for _ in range(120)) for i in range(count)]


def suffix(rng: random.Random) -> str:
    """A short question starting at a word boundary, at most MAX_SUFFIX_BYTES bytes."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    days = rng.randint(2, 9)
    text = f"\nQ{rng.randint(0, 9999)}: How many {item} does {name} have after {days} days?"
    return text.encode()[:MAX_SUFFIX_BYTES].decode(errors="ignore")


class MixBuilder:
    """Seeded request plans for one server (its model name, context length and prefixes)."""

    def __init__(
        self, info: ServerInfo, seed: int, disconnect_fraction: float, invalid_fraction: float
    ) -> None:
        self.info = info
        self.rng = random.Random(seed)
        self.disconnect_fraction = disconnect_fraction
        self.invalid_fraction = invalid_fraction

    def plans(self, count: int) -> list[Plan]:
        return [self.plan(index) for index in range(count)]

    def plan(self, index: int) -> Plan:
        rng = self.rng
        if rng.random() < self.invalid_fraction:
            return self._invalid(index)
        is_chat = rng.random() < 0.45
        body: dict[str, Any] = {"model": self.info.model, "stream": rng.random() < 0.5}
        prompt_bound, num_prompts, counts = self._prompt(body, is_chat)
        room = self.info.max_model_len - prompt_bound
        body["max_tokens"] = min(rng.choice(MAX_TOKENS_CHOICES), room)
        n = rng.choice((1, 1, 1, 2, 2, 3, 4)) if num_prompts == 1 else rng.choice((1, 2))
        if n > 1 or rng.random() < 0.1:
            body["n"] = n
        self._sampling(body, is_chat)
        if body["stream"] and rng.random() < 0.8:
            body["stream_options"] = {"include_usage": True}
        return Plan(
            index=index,
            path=CHAT if is_chat else COMPLETIONS,
            body=body,
            num_choices=num_prompts * n,
            expect_status=200,
            disconnect=self._disconnect(body),
            prompt_token_counts=counts,
        )

    def _prompt(
        self, body: dict[str, Any], is_chat: bool
    ) -> tuple[int, int, tuple[int, ...] | None]:
        """Fill the prompt or messages; (token bound of the longest prompt, prompts, exact
        counts for token-id prompts)."""
        rng = self.rng
        shared = rng.random() < 0.65
        prefix = rng.choice(self.info.prefixes) if shared else None
        base_text = prefix.text if prefix else sentence(rng)
        base_tokens = len(prefix.token_ids) if prefix else len(base_text.encode())
        bound = base_tokens + MAX_SUFFIX_BYTES + TEMPLATE_MARGIN_TOKENS
        if is_chat:
            messages = [{"role": "user", "content": base_text + suffix(rng)}]
            if prefix and rng.random() < 0.5:
                messages = [
                    {"role": "system", "content": prefix.text},
                    {"role": "user", "content": suffix(rng).lstrip("\n")},
                ]
            body["messages"] = messages
            return bound, 1, None
        kind = rng.random()
        if prefix and kind < 0.15:
            cut = rng.randint(len(prefix.token_ids) // 2, len(prefix.token_ids))
            body["prompt"] = prefix.token_ids[:cut]
            return cut, 1, (cut,)
        if kind < 0.25:
            prompts = [base_text + suffix(rng) for _ in range(rng.randint(2, 3))]
            body["prompt"] = prompts
            return bound, len(prompts), None
        body["prompt"] = base_text + suffix(rng)
        return bound, 1, None

    def _sampling(self, body: dict[str, Any], is_chat: bool) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            body["temperature"] = 0
        else:
            body["temperature"] = round(rng.uniform(0.5, 1.2), 2)
            if rng.random() < 0.5:
                body["seed"] = rng.randint(0, 2**31 - 1)
            if rng.random() < 0.3:
                body["top_p"] = round(rng.uniform(0.5, 1.0), 2)
        if rng.random() < 0.3:
            if is_chat:
                body["logprobs"] = True
                body["top_logprobs"] = rng.randint(0, 5)
            else:
                body["logprobs"] = rng.randint(0, 5)
                if rng.random() < 0.5:
                    body["echo"] = True  # echo + logprobs: the prompt's logprobs too
        elif not is_chat and rng.random() < 0.1:
            body["echo"] = True
        if rng.random() < 0.3:
            body["stop"] = rng.sample(STOP_STRINGS, rng.randint(1, 3))
            if rng.random() < 0.3:
                body["include_stop_str_in_output"] = True
        elif rng.random() < 0.3:
            body["ignore_eos"] = True
        if rng.random() < 0.15:
            body["min_tokens"] = rng.randint(0, body["max_tokens"])

    def _disconnect(self, body: dict[str, Any]) -> Disconnect | None:
        rng = self.rng
        if rng.random() >= self.disconnect_fraction:
            return None
        if body["stream"] and rng.random() < 0.6:
            return Disconnect(after_s=None, after_events=rng.randint(1, body["max_tokens"] + 1))
        delay_s = rng.choice((0.001, 0.005, 0.02, 0.1, 0.3, 1.0))
        return Disconnect(after_s=delay_s, after_events=None)

    def _invalid(self, index: int) -> Plan:
        """A request the server must refuse with 400."""
        rng = self.rng
        model = self.info.model
        too_long = "word " * (self.info.max_model_len + 8)
        body = rng.choice(
            [
                {"model": model, "prompt": "hi", "n": 0},
                {"model": model, "prompt": "hi", "temperature": 3},
                {"model": model, "prompt": "hi", "max_tokens": -1},
                {"model": model, "prompt": too_long, "max_tokens": 4},
                {"model": model, "messages": [], "max_tokens": 4},
                {"model": model, "prompt": "hi", "logprobs": 50},
                {"model": model, "prompt": "hi", "unknown_field": 1},
            ]
        )
        body = dict(body, stream=rng.random() < 0.5)
        path = CHAT if "messages" in body else COMPLETIONS
        return Plan(index, path, body, 0, 400, None, None)
