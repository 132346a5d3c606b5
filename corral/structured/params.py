"""What a request asks of its output's shape (torch-free, library-free): a JSON schema, any JSON
object, a regex, one of some choices, a grammar, or an xgrammar structural tag; and, for
reasoning models, where the reasoning ends and how long it may run.

These are plain values that cross process boundaries; a grammar backend (backend.py) compiles
them. `cache_key()` names what a compile depends on, so equal requests share one compile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

GrammarSyntax = Literal["ebnf", "lark"]
Whitespace = Literal["compact", "any"]


@dataclass(frozen=True, slots=True)
class StructuredOutputParams:
    """Exactly one of json, json_object, regex, choice, grammar, structural_tag.

    json: a JSON Schema (a dict, or its JSON text). json_object: any JSON object. choice: the
    output is one of these strings, verbatim. grammar: EBNF (GBNF-style, xgrammar's dialect) or
    Lark, per grammar_syntax. structural_tag: an xgrammar structural tag (JSON text); tool calls
    are forced with one. whitespace: "compact" allows one space after ':' and ',' in JSON (what
    most models write, and it keeps a weak model from padding forever); "any" allows any JSON
    whitespace. Schemas are enforced strictly (as OpenAI's strict mode): an object takes only
    the properties its schema names, unless the schema sets additionalProperties.
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    grammar_syntax: GrammarSyntax = "ebnf"
    structural_tag: str | None = None
    whitespace: Whitespace = "compact"
    # Where the constraint came from (a request field), for error messages; not compiled.
    source: str | None = None

    def __post_init__(self) -> None:
        if self.choice is not None and not isinstance(self.choice, tuple):
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [name for name in _KINDS if _is_given(getattr(self, name))]
        if len(given) != 1:
            raise ValueError(
                "structured output needs exactly one of json, json_object, regex, choice, "
                f"grammar, structural_tag; got {', '.join(given) or 'none'}"
            )
        choice = self.choice
        if choice is not None and (
            not choice or any(not isinstance(c, str) or not c for c in choice)
        ):
            raise ValueError(f"choice must be non-empty strings, got {list(self.choice)!r}")
        if self.grammar_syntax not in ("ebnf", "lark"):
            raise ValueError(
                f"grammar_syntax must be 'ebnf' or 'lark', got {self.grammar_syntax!r}"
            )
        if self.whitespace not in ("compact", "any"):
            raise ValueError(f"whitespace must be 'compact' or 'any', got {self.whitespace!r}")

    @property
    def kind(self) -> str:
        """Which field is set: json, json_object, regex, choice, grammar or structural_tag."""
        return next(name for name in _KINDS if _is_given(getattr(self, name)))

    def spec_text(self) -> str:
        """The constraint as one string (JSON text for schemas, choices and tags)."""
        value = getattr(self, self.kind)
        if self.kind == "json":
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if self.kind == "choice":
            return json.dumps(list(value))
        if self.kind == "json_object":
            return ""
        return str(value)

    def cache_key(self) -> tuple[str, ...]:
        """Everything a compiled grammar depends on (with the tokenizer, fixed per engine)."""
        key = (self.kind, self.spec_text(), self.whitespace)
        return key + ((self.grammar_syntax,) if self.kind == "grammar" else ())


_KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


def _is_given(value: object) -> bool:
    return value is not None and value is not False


@dataclass(frozen=True, slots=True)
class ReasoningParams:
    """A reasoning model's thinking block, as token ids (see reasoning_parsers/).

    starts_in_reasoning: the prompt already opened the block (the output begins inside it);
    otherwise the block begins when the output starts with start_token_ids. The block ends when
    the output ends with end_token_ids. max_reasoning_tokens: once the block holds this many
    tokens, end_token_ids are forced. A structured output constraint applies after the block.
    """

    end_token_ids: tuple[int, ...]
    start_token_ids: tuple[int, ...] = field(default_factory=tuple)
    starts_in_reasoning: bool = False
    max_reasoning_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.end_token_ids:
            raise ValueError("reasoning needs the token ids that end the reasoning block")
        if not self.starts_in_reasoning and not self.start_token_ids:
            raise ValueError("reasoning needs start_token_ids unless starts_in_reasoning")
        if self.max_reasoning_tokens is not None and self.max_reasoning_tokens < 0:
            raise ValueError(f"max_reasoning_tokens must be >= 0, got {self.max_reasoning_tokens}")
