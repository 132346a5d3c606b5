"""Incremental detokenization with stop strings: text grows one token at a time, never with a
broken UTF-8 sequence, and stops at a stop string even when it spans token boundaries."""

from __future__ import annotations

from corral.engine.tokenizer import Tokenizer

# Prompt tokens decoded with the output so that the first output token's leading space survives.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes a window [prefix_offset, len) and emits only what is past the previous window's
    text, holding back while the tail is an incomplete multi-byte character."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        *,
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.output_text = ""
        self.stop = stop or []
        self.include_stop = include_stop_str_in_output
        # Stop strings end a request only once min_tokens output tokens exist (as stop token ids
        # do, corral/core/stop.py): one completed by the min_tokens-th token counts.
        self.min_tokens = min_tokens
        self.num_output_tokens = 0
        self.max_stop_len = max(map(len, self.stop)) if self.stop else 0
        # Characters withheld from streaming: they might turn out to start a stop string.
        self.holdback = 0 if self.include_stop or not self.stop else self.max_stop_len - 1

    def add_tokens(self, token_ids: list[int]) -> str | None:
        """Append tokens; returns the stop string if one now appears (text is cut at it)."""
        for token_id in token_ids:
            self.token_ids.append(token_id)
            self.num_output_tokens += 1
            delta = self._decode_delta()
            if not delta:
                continue
            num_old_chars = len(self.output_text)
            self.output_text += delta
            if self.num_output_tokens < self.min_tokens:
                continue
            stop = self._find_stop(num_old_chars)
            if stop is not None:
                return stop
        return None

    def flush(self) -> None:
        """At the end: emit what was held back waiting for more bytes."""
        window = self.token_ids[self.prefix_offset :]
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(window)
        if len(full) > len(prefix):
            self.output_text += full[len(prefix) :]
            self.prefix_offset = self.read_offset = len(self.token_ids)

    def streamable_text(self, finished: bool) -> str:
        """The text safe to show now: all of it once finished, else minus the held-back tail."""
        if finished or not self.holdback:
            return self.output_text
        return self.output_text[: max(0, len(self.output_text) - self.holdback)]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def _decode_delta(self) -> str:
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return full[len(prefix) :]

    def _find_stop(self, num_old_chars: int) -> str | None:
        """Cut the text at the earliest stop string that the newest characters (those after
        num_old_chars) complete. Only those count: one completed earlier either ended the
        request then or, before min_tokens, did not count."""
        found = None
        for stop in self.stop:
            index = self.output_text.find(stop, max(0, num_old_chars - len(stop) + 1))
            if index >= 0 and (found is None or index < found[0]):
                found = (index, stop)
        if found is None:
            return None
        index, stop = found
        self.output_text = self.output_text[: index + len(stop) if self.include_stop else index]
        return stop
