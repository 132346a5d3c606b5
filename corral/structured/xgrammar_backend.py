"""The xgrammar backend (https://github.com/mlc-ai/xgrammar).

Chosen over llguidance by measurement on this project's CPU (benchmarks/structured_output.py,
docs/structured-output.md): about 4 us per token to compute a mask against 18 us, with the same
coverage of the JSON Schema test set; it also brings EBNF, Lark, regex and structural tags (the
shape of forced tool calls).
"""

from __future__ import annotations

import json
import re
from typing import Any

from corral.structured.backend import GRAMMAR_BACKENDS, GrammarBackend, GrammarError
from corral.structured.params import StructuredOutputParams

# xgrammar's C++ errors start "[hh:mm:ss] /path/file.cc:123: "; the rest is the reason.
_LOCATION = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")
_FIELDS = {
    "json": "json_schema",
    "json_object": "response_format",
    "regex": "regex",
    "choice": "choice",
    "grammar": "grammar",
    "structural_tag": "structural_tag",
}
_COMPACT = {"any_whitespace": False, "separators": (", ", ": ")}


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _LOCATION.sub("", text)


def _schema(params: StructuredOutputParams) -> str:
    """The JSON schema text, checked to be JSON (a str) or serializable (a dict)."""
    field = params.source or "json_schema"
    value = params.json
    if isinstance(value, str):
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError as error:
            raise GrammarError(field, f"not valid JSON: {error}") from None
    else:
        loaded = value
    if not isinstance(loaded, (dict, bool)):
        raise GrammarError(field, f"must be an object, got {type(loaded).__name__}")
    return json.dumps(loaded)


def _compact_tag(text: str) -> str:
    """A structural tag whose JSON contents allow one whitespace character at a time (unless
    they say otherwise); text that is not JSON is left for the library to refuse."""
    try:
        tag = json.loads(text)
    except json.JSONDecodeError:
        return text

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and "max_whitespace_cnt" not in node:
                node["max_whitespace_cnt"] = 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(tag)
    return json.dumps(tag)


def _choice_ebnf(choices: tuple[str, ...]) -> str:
    # JSON string literals are valid EBNF literals in xgrammar's dialect (same escapes).
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def _grammar(params: StructuredOutputParams) -> Any:
    """The xgrammar Grammar of a constraint (no tokenizer involved)."""
    import xgrammar as xgr

    kind = params.kind
    field = params.source or _FIELDS[kind]
    whitespace = {} if params.whitespace == "any" else _COMPACT
    try:
        if kind == "json":
            return xgr.Grammar.from_json_schema(_schema(params), strict_mode=True, **whitespace)
        if kind == "json_object":
            return xgr.Grammar.from_json_schema('{"type": "object"}', **whitespace)
        if kind == "regex":
            return xgr.Grammar.from_regex(params.regex)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(_choice_ebnf(params.choice or ()))
        if kind == "grammar":
            text = params.grammar or ""
            if params.grammar_syntax == "lark":
                return xgr.Grammar.from_lark(text)
            return xgr.Grammar.from_ebnf(text)
        tag = params.structural_tag or ""
        if params.whitespace == "compact":
            tag = _compact_tag(tag)
        return xgr.Grammar.from_structural_tag(tag)
    except GrammarError:
        raise
    except Exception as error:  # the library raises RuntimeError, ValueError, pydantic errors
        raise GrammarError(field, _reason(error)) from None


@GRAMMAR_BACKENDS.register("xgrammar")
class XGrammarBackend(GrammarBackend):
    """Compiles with one xgrammar GrammarCompiler per engine (the token tables are built once)."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], max_num_cached: int = 256
    ) -> None:
        import xgrammar as xgr

        super().__init__(tokenizer, vocab_size, stop_token_ids, max_num_cached)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids or None
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    def _compile(self, params: StructuredOutputParams) -> Any:
        grammar = _grammar(params)
        try:
            return self._compiler.compile_grammar(grammar)
        except Exception as error:
            raise GrammarError(params.source or _FIELDS[params.kind], _reason(error)) from None

    @staticmethod
    def check(params: StructuredOutputParams) -> None:
        _grammar(params)

    def matcher(self, compiled: Any, stop_token_ids: list[int], max_rollback_tokens: int) -> Any:
        import xgrammar as xgr

        return _XGrammarMatcher(
            xgr.GrammarMatcher(
                compiled,
                override_stop_tokens=list(stop_token_ids) or None,
                max_rollback_tokens=max_rollback_tokens,
            )
        )

    @staticmethod
    def bitmask(num_rows: int, vocab_size: int) -> Any:
        import xgrammar as xgr

        return xgr.allocate_token_bitmask(num_rows, vocab_size)

    @staticmethod
    def apply_bitmask(logits: Any, bitmask: Any, row_indices: list[int]) -> None:
        import xgrammar as xgr

        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=row_indices)


class _XGrammarMatcher:
    __slots__ = ("_matcher",)

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        return bool(self._matcher.accept_token(token_id))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self._matcher.rollback(num_tokens)

    def is_terminated(self) -> bool:
        return bool(self._matcher.is_terminated())
