"""Prompts with retrieved chunks (SamplingParams.rag_chunks): piecewise tokenization, so that
each chunk's tokens depend on its text alone, and the chunks' token spans (docs/rag.md)."""

from __future__ import annotations

from corral.engine.tokenizer import Tokenizer


def chunk_token_ids(tokenizer: Tokenizer, chunk: str | list[int]) -> list[int]:
    """A chunk's token ids: a text chunk tokenized alone, without special tokens."""
    if isinstance(chunk, str):
        return tokenizer.encode(chunk, add_special_tokens=False)
    return list(chunk)


def tokenize_with_chunks(
    tokenizer: Tokenizer, text: str, chunks: list[str | list[int]], add_special_tokens: bool
) -> list[int]:
    """The prompt's token ids, tokenized piecewise at each text chunk's first occurrence (the
    text between chunks alone, each chunk alone). ValueError naming a text chunk the prompt
    does not contain."""
    cuts: list[tuple[int, int]] = []
    for chunk in chunks:
        if not isinstance(chunk, str):
            continue
        at = text.find(chunk)
        if at < 0:
            raise ValueError(f"rag_chunks: the prompt does not contain the chunk {_short(chunk)!r}")
        cuts.append((at, at + len(chunk)))
    cuts.sort()
    token_ids: list[int] = []
    if add_special_tokens and tokenizer.bos_token_id is not None:
        probe = tokenizer.encode("", add_special_tokens=True)
        token_ids += probe  # the BOS the whole prompt's encoding would start with
    cursor = 0
    for start, end in cuts:
        if start < cursor:
            continue  # overlapping chunks: the first one's tokens stand
        if start > cursor:
            token_ids += tokenizer.encode(text[cursor:start], add_special_tokens=False)
        token_ids += tokenizer.encode(text[start:end], add_special_tokens=False)
        cursor = end
    if cursor < len(text):
        token_ids += tokenizer.encode(text[cursor:], add_special_tokens=False)
    return token_ids


def find_chunk_spans(token_ids: list[int], chunks: list[list[int]]) -> tuple[tuple[int, int], ...]:
    """(first position, num_tokens) of each chunk's first occurrence in token_ids that overlaps
    no span found before; ValueError naming a chunk not found."""
    taken: list[tuple[int, int]] = []
    for chunk in chunks:
        span = _find(token_ids, chunk, taken)
        if span is None:
            raise ValueError(
                f"rag_chunks: the prompt's tokens do not contain the chunk of {len(chunk)} "
                f"tokens starting {chunk[:8]} (a text chunk must be tokenized alone: give the "
                "prompt as text, or tokenize it piecewise)"
            )
        taken.append(span)
    return tuple(taken)


def _find(
    token_ids: list[int], chunk: list[int], taken: list[tuple[int, int]]
) -> tuple[int, int] | None:
    first, length = chunk[0], len(chunk)
    at = -1
    while True:
        try:
            at = token_ids.index(first, at + 1)
        except ValueError:
            return None
        if token_ids[at : at + length] != chunk:
            continue
        if all(at + length <= start or at >= start + num for start, num in taken):
            return at, length


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
