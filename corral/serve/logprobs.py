"""Engine logprobs (per position: token id -> Logprob, the chosen token first) in OpenAI's two
formats: the legacy completions one and the chat one.

A token that is only part of a UTF-8 character has no text of its own; as OpenAI does, it is
shown as "bytes:\\xNN..." (and with its real bytes in the chat format), so that distinct tokens
keep distinct keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.outputs import Logprob, PositionLogprobs
from corral.serve.responses import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

_REPLACEMENT = "\ufffd"


def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's map from the printable character that stands for a byte to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    kept = set(printable)
    byte_values, chars = list(printable), list(printable)
    for byte in range(256):
        if byte not in kept:
            byte_values.append(byte)
            chars.append(256 + len(chars) - len(printable))
    return {chr(char): byte for byte, char in zip(byte_values, chars)}


_BYTE_DECODER = _byte_level_decoder()


class TokenTexts:
    """Each token's display text and UTF-8 bytes, cached per token id."""

    def __init__(self, tokenizer: Any) -> None:  # corral.engine.tokenizer.Tokenizer
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> str:
        return self.entry(token_id)[0]

    def entry(self, token_id: int) -> tuple[str, bytes]:
        cached = self._cache.get(token_id)
        if cached is None:
            text = self.tokenizer.token_text(token_id)
            raw = text.encode()
            if _REPLACEMENT in text:
                raw = self._raw_bytes(token_id) or raw
                text = "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
            cached = self._cache[token_id] = (text, raw)
        return cached

    def _raw_bytes(self, token_id: int) -> bytes | None:
        piece = self.tokenizer.hf.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str) or any(char not in _BYTE_DECODER for char in piece):
            return None
        return bytes(_BYTE_DECODER[char] for char in piece)


def _chosen(position: PositionLogprobs, token_id: int) -> Logprob:
    """The engine puts the token at each position into that position's logprobs; a miss means
    positions and tokens are misaligned (a bug), never a value to substitute."""
    chosen = position.get(token_id)
    if chosen is None:
        raise RuntimeError(
            f"internal error: no logprob for token {token_id} at its position "
            f"(the position holds tokens {sorted(position)})"
        )
    return chosen


def _top(position: PositionLogprobs, num_top: int) -> list[tuple[int, Logprob]]:
    """The num_top most likely tokens at a position, most likely first."""
    entries = [(token_id, entry) for token_id, entry in position.items() if entry.rank <= num_top]
    return sorted(entries, key=lambda item: item[1].rank)


def completion_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobs | None],
    num_top: int,
    texts: TokenTexts,
    text_offset: int = 0,
) -> CompletionLogprobs:
    """Legacy format: tokens, token_logprobs, top_logprobs (the top num_top plus the chosen token)
    and each token's character offset. A position without logprobs (a prompt's first) is None."""
    result = CompletionLogprobs()
    for token_id, position in zip(token_ids, positions):
        text = texts(token_id)
        result.tokens.append(text)
        if not position:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
        else:
            chosen = _chosen(position, token_id)
            result.token_logprobs.append(chosen.logprob)
            top = {texts(t): entry.logprob for t, entry in _top(position, num_top)}
            top.setdefault(text, chosen.logprob)
            result.top_logprobs.append(top)
        result.text_offset.append(text_offset)
        text_offset += len(text)
    return result


def chat_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobs],
    num_top: int,
    texts: TokenTexts,
) -> ChatLogprobs:
    """Chat format: per sampled token its text, logprob, UTF-8 bytes and the top num_top."""
    content = []
    for token_id, position in zip(token_ids, positions):
        chosen = _chosen(position, token_id)
        text, raw = texts.entry(token_id)
        top = []
        for top_id, entry in _top(position, num_top):
            top_text, top_raw = texts.entry(top_id)
            top.append(TopLogprob(token=top_text, logprob=entry.logprob, bytes=list(top_raw)))
        content.append(
            TokenLogprob(token=text, logprob=chosen.logprob, bytes=list(raw), top_logprobs=top)
        )
    return ChatLogprobs(content=content)
