"""The xgrammar backend (https://github.com/mlc-ai/xgrammar).

Chosen over llguidance by measurement on this project's CPU (benchmarks/structured_output.py,
docs/structured-output-benchmarks.md): 2.5 to 4.5 us per token to fill a mask and accept the
token on JSON schemas against 18 to 30 us, with valid output on the same schema set; it also
brings EBNF, Lark, regex and structural tags (the shape of forced tool calls).
"""

from __future__ import annotations

import json
import re
from typing import Any

from corral.structured.backend import GRAMMAR_BACKENDS, GrammarBackend, GrammarError
from corral.structured.params import StructuredOutputParams
from corral.structured.schema_check import unsupported_schema_problem

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
# xgrammar 0.2.9 writes the characters of a length-bounded string as [^"\\\r\n], which lets
# raw control characters (invalid in JSON strings) through; JSON's own class replaces it.
_LOOSE_STRING_CHARS = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHARS = '[^\\0-\\x1f\\"\\\\]'


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
    try:
        problem = unsupported_schema_problem(loaded)
    except RecursionError:
        problem = "the schema is nested too deeply"
    if problem is not None:
        raise GrammarError(field, problem)
    return json.dumps(loaded)


def _json_grammar(schema: str, whitespace: str) -> Any:
    """The grammar of a JSON schema (strict: undeclared properties refused), with JSON's own
    string characters."""
    import xgrammar as xgr

    options = {} if whitespace == "any" else _COMPACT
    grammar = xgr.Grammar.from_json_schema(schema, strict_mode=True, **options)
    text = str(grammar)
    fixed = text.replace(_LOOSE_STRING_CHARS, _JSON_STRING_CHARS)
    return grammar if fixed == text else xgr.Grammar.from_ebnf(fixed)


def _json_as_grammar(text: str, whitespace: str) -> str:
    """A structural tag whose plain json_schema contents are replaced by their grammar (the
    whitespace rule and string characters of _json_grammar); text that is not JSON is left for
    the library to refuse."""
    try:
        tag = json.loads(text)
    except json.JSONDecodeError:
        return text

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(value) for value in node]
        if not isinstance(node, dict):
            return node
        if node.get("type") == "json_schema" and set(node) <= {"type", "json_schema"}:
            schema = json.dumps(node["json_schema"])
            return {"type": "grammar", "grammar": str(_json_grammar(schema, whitespace))}
        return {key: visit(value) for key, value in node.items()}

    return json.dumps(visit(tag))


def _choice_ebnf(choices: tuple[str, ...]) -> str:
    # JSON string literals are valid EBNF literals in xgrammar's dialect (same escapes).
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def _grammar(params: StructuredOutputParams) -> Any:
    """The xgrammar Grammar of a constraint (no tokenizer involved)."""
    import xgrammar as xgr

    kind = params.kind
    field = params.source or _FIELDS[kind]
    try:
        if kind == "json":
            return _json_grammar(_schema(params), params.whitespace)
        if kind == "json_object":
            return _json_grammar('{"type": "object"}', params.whitespace)
        if kind == "regex":
            return xgr.Grammar.from_regex(params.regex)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(_choice_ebnf(params.choice or ()))
        if kind == "grammar":
            text = params.grammar or ""
            if params.grammar_syntax == "lark":
                return xgr.Grammar.from_lark(text)
            return xgr.Grammar.from_ebnf(text)
        return xgr.Grammar.from_structural_tag(
            _json_as_grammar(params.structural_tag or "", params.whitespace)
        )
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

    def matcher(self, compiled: Any, stop_token_ids: list[int]) -> Any:
        import xgrammar as xgr

        return _XGrammarMatcher(
            xgr.GrammarMatcher(
                compiled,
                override_stop_tokens=list(stop_token_ids) or None,
            )  # rollback depth is unlimited in xgrammar >= 0.2
        )


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
