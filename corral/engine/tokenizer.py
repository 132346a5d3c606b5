"""Tokenizer: text <-> token ids and chat templates, from a model directory's tokenizer files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Used when the model directory has no chat template: plain role-tagged turns.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class Tokenizer:
    """A Hugging Face fast tokenizer loaded from local files only (never from a hub)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self.path = str(path)
        try:
            self.hf = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as error:  # transformers raises many types here
            raise ValueError(f"cannot load a tokenizer from {self.path}: {error}") from error
        self.has_chat_template = bool(getattr(self.hf, "chat_template", None))
        self.vocab_size = len(self.hf)
        self.eos_token_id: int | None = self.hf.eos_token_id
        self.bos_token_id: int | None = self.hf.bos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token's text as it would appear in a decode (for logprob listings)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render a conversation with the model's own template (or the default one) to text."""
        template = chat_template or (None if self.has_chat_template else DEFAULT_CHAT_TEMPLATE)
        return self.hf.apply_chat_template(
            messages,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_kwargs,
        )

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        """Template then tokenize; the template already holds any BOS, so none is added."""
        return self.encode(self.apply_chat_template(messages, **kwargs), add_special_tokens=False)
